"""`modctl profiles list | show | validate | schema`."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from controller.cli.common import EXIT_INVALID, EXIT_OK, error
from controller.modality.limits import effective_bound
from controller.profiles.loader import (
    ProfileError,
    load_profile_file,
    resolve_profile,
    shipped_profile_paths,
)
from controller.profiles.model import DURATION, Profile


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("profiles", help="list, show, validate device profiles",
                       description="Device profiles: one YAML file per device model.")
    ps = p.add_subparsers(dest="profiles_cmd", required=True, metavar="COMMAND")
    ps.add_parser("list", help="shipped profiles: id, model, modality, source file",
                  description="List the shipped device profiles.").set_defaults(run=_list)
    show = ps.add_parser("show", help="the effective profile, limits included",
                         description="Print a profile as validated, and the effective "
                                     "limit of every parameter.")
    show.add_argument("profile", metavar="PROFILE", help="shipped profile id or YAML path")
    show.set_defaults(run=_show)
    val = ps.add_parser("validate", help="check profile files (exit 0 when all are valid)",
                        description="Validate profile files; exit 0 when all are valid, "
                                    "1 otherwise.")
    val.add_argument("files", metavar="FILE", nargs="+")
    val.set_defaults(run=_validate)
    ps.add_parser("schema", help="JSON Schema of the profile format",
                  description="Print the JSON Schema of the profile format, for editor "
                              "completion.").set_defaults(run=_schema)


def _list(args: argparse.Namespace) -> int:
    rows: list[tuple[str, str, str, str]] = []
    status = EXIT_OK
    for pid, path in shipped_profile_paths().items():
        try:
            prof = load_profile_file(path).profile
            rows.append((pid, prof.model, prof.modality, str(path)))
        except ProfileError as exc:
            rows.append((pid, "INVALID", "-", str(path)))
            error(str(exc))
            status = EXIT_INVALID
    header = ("ID", "MODEL", "MODALITY", "SOURCE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    return status


def _show(args: argparse.Namespace) -> int:
    loaded = resolve_profile(args.profile)
    prof = loaded.profile
    print(f"# source: {loaded.source}")
    print(yaml.safe_dump(prof.model_dump(mode="python"),
                         sort_keys=False, allow_unicode=True, width=100), end="")
    print("\n# effective limits (tightest of absolute and clinical tiers)")
    print(yaml.safe_dump({"effective_limits": _effective(prof)}, sort_keys=False), end="")
    return EXIT_OK


def _effective(prof: Profile) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    regimes = [[], *[[r] for r in prof.limits.regimes]]
    for name in [DURATION, *prof.parameters]:
        for active in regimes:
            bound = effective_bound(prof, name, active)
            if bound is None:
                continue
            key = name if not active else f"{name} ({active[0]})"
            entry = {"range": bound.text()}
            if bound.low:
                entry["min_from"] = bound.low.source
            if bound.high:
                entry["max_from"] = bound.high.source
            if not active or out.get(name) != entry:
                out[key] = entry
    return out


def _validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.files:
        try:
            prof = load_profile_file(path).profile
            print(f"{path}: ok ({prof.id}, {prof.model}, {prof.modality})")
        except ProfileError as exc:
            print(str(exc), file=sys.stderr)
            status = EXIT_INVALID
    return status


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(Profile.model_json_schema(), indent=2))
    return EXIT_OK
