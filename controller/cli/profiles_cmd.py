"""`modctl profiles list | show | validate | schema`.

Light at import: `profiles list` reads only each shipped file's id, model and modality (plain
YAML, no validation: `profiles validate` is the check), so it starts without pydantic. Every
command that uses a profile (`show`, `validate`, sessions) loads it fully validated.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.cli.common import EXIT_INVALID, EXIT_OK, error
from controller.cli.table import print_table

if TYPE_CHECKING:
    from controller.profiles.model import Profile

# The package the shipped profiles are installed in (controller.profiles.loader's too).
PROFILE_PACKAGE = "device_profiles"
# What `profiles list` reads of each file, all strings.
LISTED_KEYS = ("id", "model", "modality")
# Parameter units as a clinician writes them (the profiles use ASCII).
UNIT_TEXT = {"degC": "°C", "W/cm2": "W/cm²", "cm2": "cm²", "us": "µs", "uC": "µC",
             "percent": "%", "ohm": "Ω"}

VALUE_KINDS = {"integer": "whole numbers", "number": "any number"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("profiles", help="list, show, validate device profiles",
                       description="Device profiles: one YAML file per device model.")
    ps = p.add_subparsers(dest="profiles_cmd", required=True, metavar="COMMAND")
    ps.add_parser("list", help="shipped profiles: id, model, modality, source file",
                  description="List the shipped device profiles (id, model and modality as "
                              "each file states them; `profiles validate` checks a file "
                              "in full).").set_defaults(run=_list)
    show = ps.add_parser("show", help="a profile's summary: identity, link, parameters, "
                                      "limits, safety timing",
                         description="Summarise a validated profile: identity, serial link, "
                                     "parameters with their units and effective ranges, the "
                                     "limits of each tier, safety timing and calibration. "
                                     "--full prints the whole validated profile as YAML with "
                                     "the effective limits; --json the same as JSON.")
    show.add_argument("profile", metavar="PROFILE",
                      help="shipped profile id (modctl profiles list) or a YAML file")
    how = show.add_mutually_exclusive_group()
    how.add_argument("--full", action="store_true",
                     help="everything: the validated profile as YAML (register map, "
                          "operations, faults...) and the effective limits")
    how.add_argument("--json", action="store_true",
                     help="everything as one JSON document: source, profile, effective limits")
    show.set_defaults(run=_show)
    val = ps.add_parser("validate", help="check profile files (exit 0 when all are valid)",
                        description="Validate profile files; exit 0 when all are valid, "
                                    "1 otherwise.")
    val.add_argument("files", metavar="FILE", nargs="+", help="profile YAML files to check")
    val.set_defaults(run=_validate)
    ps.add_parser("schema", help="JSON Schema of the profile format",
                  description="Print the JSON Schema of the profile format, for editor "
                              "completion.").set_defaults(run=_schema)


def shipped_profile_paths() -> dict[str, Path]:
    """Shipped profile files by id (file stem), as controller.profiles.loader finds them,
    without importing the loader (pydantic)."""
    root = resources.files(PROFILE_PACKAGE)
    found = {entry.name.removesuffix(".yaml"): Path(str(entry))
             for entry in root.iterdir() if entry.name.endswith(".yaml")}
    return dict(sorted(found.items()))


def listing_fields(path: Path) -> tuple[str, str, str]:
    """(id, model, modality) as the file states them; ValueError saying what is wrong."""
    import yaml
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read it as YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping of profile sections")
    missing = [k for k in LISTED_KEYS if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} (a text value each)")
    return data["id"], data["model"], data["modality"]


def _list(args: argparse.Namespace) -> int:
    rows: list[tuple[str, str, str, str]] = []
    status = EXIT_OK
    for pid, path in shipped_profile_paths().items():
        try:
            _, model, modality = listing_fields(path)
            rows.append((pid, model, modality, str(path)))
        except ValueError as exc:
            rows.append((pid, "INVALID", "-", str(path)))
            error(f"{exc} (check it with: modctl profiles validate {path})")
            status = EXIT_INVALID
    print_table(("ID", "MODEL", "MODALITY", "SOURCE"), rows)
    return status


def _show(args: argparse.Namespace) -> int:
    from controller.profiles.loader import resolve_profile
    loaded = resolve_profile(args.profile)
    prof = loaded.profile
    if args.json:
        print(json.dumps({"source": str(loaded.source), "profile": prof.model_dump(mode="json"),
                          "effective_limits": _effective(prof)}, indent=2, ensure_ascii=False))
    elif args.full:
        import yaml
        print(f"# source: {loaded.source}")
        print(yaml.safe_dump(prof.model_dump(mode="python"),
                             sort_keys=False, allow_unicode=True, width=100), end="")
        print("\n# effective limits (tightest of absolute and clinical tiers)")
        print(yaml.safe_dump({"effective_limits": _effective(prof)}, sort_keys=False), end="")
    else:
        print("\n".join(summary_lines(prof, str(loaded.source))))
        print(f"\nEverything (register map, operations, faults): modctl profiles show "
              f"{args.profile} --full")
    return EXIT_OK


def _effective(prof: Profile) -> dict[str, dict[str, str]]:
    from controller.modality.limits import effective_bound
    from controller.profiles.model import DURATION
    out: dict[str, dict[str, str]] = {}
    regimes: list[list[str]] = [[], *[[r] for r in prof.limits.regimes]]
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


# -- profiles show: the summary --------------------------------------------------------------

def summary_lines(prof: Profile, source: str) -> list[str]:
    """What a technician checks of a profile, without a line of nulls: identity, link,
    parameters with units and effective ranges, limits by tier, safety timing, calibration."""
    from controller.profiles.model import DURATION
    link = prof.link
    lines = [f"{prof.id}: {prof.vendor} {prof.model} ({prof.modality})", f"source: {source}",
             f"spec: {prof.spec_version}"]
    if prof.description.strip():
        lines.append(f"description: {' '.join(prof.description.split())}")
    lines += ["", f"link: {link.baudrate} baud, {link.bytesize}{link.parity}{link.stopbits}, "
                  f"reply timeout {_ms(link.reply_timeout_s)}, write timeout "
                  f"{_ms(link.write_timeout_s)}; protocol {prof.protocol.family}"]
    lines += ["", "parameters (effective range: the tightest tier applies):"]
    names = [DURATION, *prof.parameters]
    lines += _indented(("NAME", "UNIT", "DEFAULT", "VALUES", "EFFECTIVE RANGE", "DESCRIPTION"),
                       [_parameter_row(prof, name) for name in names])
    tiers = _tier_columns(prof)
    lines += ["", "limits by tier:"]
    limited = [(name, *(_bound_text(b.get(name)) for _, b in tiers))
               for name in names + sorted(set(prof.limits.derived) - set(names))]
    lines += _indented(("NAME", *(t for t, _ in tiers)),
                       [row for row in limited if any(row[1:])])
    for rname, regime in prof.limits.regimes.items():
        when = regime.when
        test = (f"below {when.below:g}" if when.below is not None
                else f"at or above {when.at_or_above:g}")
        lines.append(f"  regime {rname}: when {when.parameter} is {test}"
                     + (f" ({regime.description})" if regime.description else ""))
    interlocks = {k: f"{v:g}" for k, v in prof.limits.interlocks.items()}
    for rname, regime in prof.limits.regimes.items():
        for k, v in regime.interlocks.items():
            interlocks[k] = f"{interlocks[k]} ({rname}: {v:g})" if k in interlocks \
                else f"{v:g} ({rname})"
    if interlocks:
        lines.append("  interlocks (a measured value past these ends the session): "
                     + ", ".join(f"{k} {v}" for k, v in interlocks.items()))
    safety = prof.safety
    lines += ["", f"safety timing: device watchdog {safety.watchdog_s:g} s, poll every "
                  f"{_ms(safety.poll_period_s)}, telemetry stale after "
                  f"{_ms(safety.stale_after_s)}, {safety.retry_budget} retries per exchange, "
                  f"device timer = planned time + {safety.timer_margin_s:g} s, stop confirmed "
                  f"within {_ms(safety.stop_confirm_timeout_s)}"]
    cal = prof.calibration
    if cal is not None:
        how = "; ".join(t for t in (cal.method, cal.reference and f"with a {cal.reference}")
                        if t)
        lines.append(f"calibration: every {cal.interval_days} days" + (f"; {how}" if how else ""))
    else:
        lines.append("calibration: not required by this profile")
    return lines


def _indented(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    from controller.cli.table import table_lines
    return ["  " + line for line in table_lines(header, rows)]


def _parameter_row(prof: Profile, name: str) -> tuple[str, ...]:
    from controller.modality.limits import effective_bound
    from controller.profiles.model import DURATION
    if name == DURATION:
        unit, default, values, text = "s", "", "", "treatment time"
    else:
        par = prof.parameters[name]
        unit = UNIT_TEXT.get(par.unit, par.unit)
        default = "" if par.default is None else (f"{par.default:g}" if isinstance(
            par.default, float) else str(par.default))
        if par.choices:
            values = "one of " + ", ".join(par.choices)
        elif par.allowed:
            values = "one of " + ", ".join(f"{v:g}" for v in par.allowed)
        else:
            values = f"step {par.step:g}" if par.step else VALUE_KINDS.get(par.type, par.type)
        text = " ".join(par.description.split())
    ranges: list[str] = []
    for active in [[], *[[r] for r in prof.limits.regimes]]:
        bound = effective_bound(prof, name, active)
        if bound is not None:
            shown = bound.text() if not active else f"{active[0]} {bound.text()}"
            if not active or bound.text() != ranges[0]:
                ranges.append(shown)
    return (name, unit, default, values, "; ".join(ranges), text)


def _tier_columns(prof: Profile) -> list[tuple[str, dict[str, Any]]]:
    limits = prof.limits
    tiers: list[tuple[str, dict[str, Any]]] = [("ABSOLUTE", dict(limits.absolute)),
                                               ("CLINICAL", dict(limits.clinical))]
    tiers += [(f"CLINICAL ({r})", dict(reg.clinical)) for r, reg in limits.regimes.items()]
    if limits.derived:
        tiers.append(("DERIVED (per session)", dict(limits.derived)))
    return tiers


def _bound_text(bound: Any) -> str:
    if bound is None:
        return ""
    lo = "" if bound.min is None else f"{bound.min:g}"
    hi = "" if bound.max is None else f"{bound.max:g}"
    return f"{lo}..{hi}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


def _validate(args: argparse.Namespace) -> int:
    from controller.profiles.loader import ProfileError
    status = EXIT_OK
    for path in args.files:
        try:
            prof = load_profile_file(path).profile
            print(f"{path}: ok ({prof.id}, {prof.model}, {prof.modality})")
        except ProfileError as exc:
            print(str(exc), file=sys.stderr)
            status = EXIT_INVALID
    return status


def load_profile_file(path: str | Path) -> Any:
    """controller.profiles.loader.load_profile_file, imported when a command needs it."""
    from controller.profiles.loader import load_profile_file as load
    return load(path)


def _schema(args: argparse.Namespace) -> int:
    from controller.profiles.model import Profile
    print(json.dumps(Profile.model_json_schema(), indent=2))
    return EXIT_OK
