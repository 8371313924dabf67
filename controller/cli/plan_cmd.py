"""`modctl plan list | show PLAN | validate PLAN... | run PLAN --device ROLE=PORT ...`."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import TYPE_CHECKING

from controller.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REJECTED,
    UsageError,
    error,
    patient_option,
)
from controller.cli.table import print_table
from controller.plans.plan import (
    EXAMPLE_WARNING,
    Plan,
    PlanError,
    format_duration,
    load_plan,
    load_plan_file,
    preset_paths,
)

if TYPE_CHECKING:
    from controller.plans.plan import PlanReport

# The session stack (sessions, records, roles, gates) is imported by `plan run` only.

# Width that `plan show` wraps notes and descriptions to.
TEXT_WIDTH = 88


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help="treatment plans: list, show, validate, run",
                       description="Treatment plans: several timed steps on several devices. "
                                   "PLAN is a preset name (see `plan list`) or a YAML file.")
    ps = p.add_subparsers(dest="plan_cmd", required=True, metavar="COMMAND")
    ps.add_parser("list", help="the shipped presets (examples for a clinician to review)",
                  description="List the shipped plan presets.").set_defaults(run=_list)
    show = ps.add_parser("show", help="steps, devices and total time of a plan",
                         description="Print a validated plan: devices, steps, pauses, "
                                     "total time and notes.")
    show.add_argument("plan", metavar="PLAN", help="preset name or YAML path")
    show.set_defaults(run=_show)
    val = ps.add_parser("validate", help="check plans against their profiles' limits",
                        description="Validate plans: format, every step against its "
                                    "device profile's limits, and the summed dose of each "
                                    "modality's steps against one session's budget (doses that "
                                    "need a device fact, the ultrasound energy, are summed at "
                                    "`plan run`). Exit 0 when all are valid, 1 otherwise, with "
                                    "every problem listed.")
    val.add_argument("plans", metavar="PLAN", nargs="+",
                     help="preset names or YAML paths to check")
    val.set_defaults(run=_validate)
    run = ps.add_parser(
        "run", help="run a plan, one session per step",
        description="Run a plan. Every step is checked against its limits and every device "
                    "is identified before the first step starts. Before each step you may "
                    "start it, pause, skip it or stop the plan (or give --yes to run "
                    "straight through, waiting out the planned pauses). Ctrl-C during a "
                    "step stops that step and the plan. Exit status: 0 every step completed "
                    "(or skipped by the operator), 2 usage error (a --patient that is not a "
                    "pseudonymous id included), 3 refused before anything started (a limit, "
                    "the summed dose of a modality's steps, a device, its calibration, the "
                    "clinician role, the patient's minimum interval), 4 "
                    "stopped by the operator or the patient, 5 a fault.")
    run.add_argument("plan", metavar="PLAN", help="preset name or YAML path")
    run.add_argument("--device", dest="devices", action="append", default=[],
                     metavar="ROLE=PORT", help="the port of one of the plan's device roles "
                     "(repeat for each role)")
    run.add_argument("--yes", action="store_true",
                     help="no prompts: run the steps one after another")
    run.add_argument("--json", action="store_true",
                     help="print the plan report as JSON on the last line of stdout")
    from controller.cli.session_cmd import add_record_options  # the session's own options
    add_record_options(run)
    run.set_defaults(run=_run)


def parse_devices(pairs: list[str]) -> dict[str, str]:
    """`ROLE=PORT` strings to a dict; UsageError naming every bad one."""
    out: dict[str, str] = {}
    problems: list[str] = []
    for pair in pairs:
        role, sep, port = (part.strip() for part in pair.partition("="))
        if not sep or not role or not port:
            problems.append(f"--device '{pair}': expected ROLE=PORT (e.g. heat=/dev/ttyUSB0)")
        elif role in out:
            problems.append(f"--device {role} is given twice ({out[role]} and {port})")
        else:
            out[role] = port
    if problems:
        raise UsageError("; ".join(problems))
    return out


def _list(args: argparse.Namespace) -> int:
    status = EXIT_OK
    rows: list[tuple[str, str, str, str]] = []
    for name, path in preset_paths().items():
        try:
            plan = load_plan_file(path)
            rows.append((name, _total(plan), "yes" if plan.example else "no", plan.name))
        except PlanError as exc:
            rows.append((name, "-", "-", "INVALID"))
            error(str(exc))
            status = EXIT_INVALID
    print_table(("PRESET", "TIME", "EXAMPLE", "NAME"), rows)
    if rows:
        print("\nPresets are examples for a clinician to review and adapt; see "
              "`modctl plan show PRESET`.")
    return status


def _show(args: argparse.Namespace) -> int:
    try:
        plan = load_plan(args.plan)
    except PlanError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    print(f"plan: {plan.name}")
    print(f"source: {plan.source}")
    if plan.example:
        print(f"\n*** {EXAMPLE_WARNING} ***\n")
    _para("", plan.spec.description)
    print("devices:")
    for role, dev in plan.spec.devices.items():
        prof = plan.profiles[role]
        extra = f" - {dev.notes}" if dev.notes else ""
        print(f"  {role}: {prof.id} ({prof.vendor} {prof.model}, {prof.modality}){extra}")
    print("steps:")
    for step in plan.steps:
        settings = " ".join(f"{k}={v}" for k, v in step.settings.items()) or \
            "(profile defaults)"
        print(f"  {step.index}. {step.name} - {step.role} ({step.profile.id}) for "
              f"{format_duration(step.duration_s)}: {settings}")
        _para("     ", step.notes)
        if step.pause_after_s:
            print(f"     then pause {format_duration(step.pause_after_s)}")
    print(f"total: {_total(plan)}")
    _para("notes: ", plan.spec.notes)
    return EXIT_OK


def _total(plan: Plan) -> str:
    text = f"{format_duration(plan.treatment_s())} of treatment"
    if plan.pauses_s():
        text += (f" + {format_duration(plan.pauses_s())} of pauses = "
                 f"{format_duration(plan.treatment_s() + plan.pauses_s())}")
    return text


def _para(prefix: str, text: str) -> None:
    if text.strip():
        print(textwrap.fill(" ".join(text.split()), TEXT_WIDTH, initial_indent=prefix,
                            subsequent_indent=" " * len(prefix)))


def _validate(args: argparse.Namespace) -> int:
    from controller.modality.dose_budget import plan_budget_problems
    status = EXIT_OK
    for ref in args.plans:
        try:
            plan = load_plan(ref)
        except PlanError as exc:
            print(str(exc), file=sys.stderr)
            status = EXIT_INVALID
            continue
        over = plan_budget_problems(plan)
        if over:
            print("\n".join(f"{plan.source}: {p}" for p in over), file=sys.stderr)
            status = EXIT_INVALID
            continue
        kind = ", an example for a clinician to review" if plan.example else ""
        print(f"{ref}: ok ('{plan.name}', {len(plan.steps)} steps, {_total(plan)}{kind})")
    return status


def _run(args: argparse.Namespace) -> int:
    from controller.cli.session_cmd import clinic_rules, note_interrupted, terminal_runner
    from controller.clinic.roles import RoleRefused, RolesError, load_roles
    from controller.plans.gates import calibration_gate, interval_gate
    from controller.plans.runner import run_plan_ref
    from controller.records.store import RecordsError, RecordStore, default_db_path
    from controller.session.service import SessionStarter
    patient = patient_option(args.patient)  # a usage error, before anything is opened
    ports = parse_devices(args.devices)
    interactive = not args.yes
    if interactive and not sys.stdin.isatty():
        raise UsageError("standard input is not a terminal, so nobody can answer the prompts "
                         "between steps: give --yes to run the steps one after another")
    try:
        config = load_roles()
        operator = config.require("clinician", args.operator, "run a treatment plan")
    except (RoleRefused, RolesError) as exc:
        error(f"refused: {exc}")
        return EXIT_REJECTED
    try:
        store = RecordStore(default_db_path(args.db))
    except RecordsError as exc:
        error(f"refused: {exc}; the plan does not start")
        return EXIT_REJECTED
    starter = SessionStarter(store, clinic_rules(config))
    with store:
        note_interrupted(starter)
        report = run_plan_ref(args.plan, ports, store, operator=operator,
                              patient=patient, interactive=interactive,
                              run_step=terminal_runner(
                                  starter, sys.stdout.isatty() and not args.json),
                              out=sys.stderr if args.json else sys.stdout,
                              device_check=calibration_gate(starter),
                              plan_check=interval_gate(starter, patient))
    _print_json(report, args.json)
    return report.exit_status


def _print_json(report: PlanReport, as_json: bool) -> None:
    """The JSON report; a closed stdout (`| head`) must not change the exit status."""
    if not as_json:
        return
    try:
        print(report.to_json(), flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
