"""Start-up time of the fast `modctl` commands (issue 15): each run as a fresh process.

    python bench/cli_startup.py [--runs N] [--limit-ms MS] [--modctl PATH] [--json]

Runs `modctl --help`, `--version`, `profiles list` and `records list` N times each (default
10) as subprocesses of the venv's `modctl` script, with `records list` on a fresh, empty
records database (it opens and checks it, as a technician's first `records list` would), and
prints the median, minimum and maximum wall time per command with PASS/FAIL against the limit
(median <= 150 ms). `--json` prints one JSON document instead of the table. A plain script,
never part of the test run; the exit status is 0 when every command passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 10
LIMIT_MS = 150.0
# The commands of issue 15's start-up target. "{db}" becomes the benchmark's records file.
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("--help",),
    ("--version",),
    ("profiles", "list"),
    ("records", "list", "--db", "{db}"),
)
# One run before the measured ones: the first start reads the files from disk (bytecode,
# site-packages); a technician's terminal has them cached after the first command.
WARMUP_RUNS = 1
CREATE_DB = ("import sys; from controller.records.store import RecordStore; "
             "RecordStore(sys.argv[1]).close()")


def default_modctl() -> str:
    """The `modctl` script beside this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "modctl"
    return str(here) if here.exists() else "modctl"


def time_command(argv: list[str], env: dict[str, str]) -> float:
    """Wall time in ms of one run; a failing command is an error (its stderr is shown)."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = (time.perf_counter() - start) * 1000.0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def measure(modctl: str, runs: int, limit_ms: float, db: str) -> list[dict[str, object]]:
    env = dict(os.environ, MODCTL_DB=db, NO_COLOR="1")
    results: list[dict[str, object]] = []
    for command in COMMANDS:
        argv = [modctl, *(part.format(db=db) for part in command)]
        for _ in range(WARMUP_RUNS):
            time_command(argv, env)
        times = [time_command(argv, env) for _ in range(runs)]
        median = statistics.median(times)
        results.append({"command": "modctl " + " ".join(command).replace("{db}", "DB"),
                        "runs": runs, "median_ms": round(median, 1),
                        "min_ms": round(min(times), 1), "max_ms": round(max(times), 1),
                        "limit_ms": limit_ms, "pass": median <= limit_ms})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per command ({RUNS})")
    parser.add_argument("--limit-ms", type=float, default=LIMIT_MS,
                        help=f"the median each command must stay within ({LIMIT_MS:g} ms)")
    parser.add_argument("--modctl", default=default_modctl(),
                        help="the modctl executable (default: the venv's)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modctl-bench-") as tmp:
        db = str(Path(tmp) / "records.sqlite3")
        # Create the (empty) database once, so `records list` measures opening one.
        subprocess.run([sys.executable, "-c", CREATE_DB, db], check=True)
        results = measure(args.modctl, args.runs, args.limit_ms, db)
    ok = all(r["pass"] for r in results)
    if args.json:
        print(json.dumps({"benchmark": "cli_startup", "python": platform.python_version(),
                          "cpus": os.cpu_count(), "modctl": args.modctl, "results": results,
                          "pass": ok}, indent=2))
    else:
        width = max(len(str(r["command"])) for r in results)
        print(f"{'COMMAND'.ljust(width)}  {'MEDIAN':>8}  {'MIN':>8}  {'MAX':>8}  RESULT")
        for r in results:
            print(f"{str(r['command']).ljust(width)}  {r['median_ms']:>6} ms  "
                  f"{r['min_ms']:>6} ms  {r['max_ms']:>6} ms  "
                  f"{'PASS' if r['pass'] else 'FAIL'} (<= {args.limit_ms:g} ms)")
        print(f"SUMMARY cli_startup: {'PASS' if ok else 'FAIL'}, median of {args.runs} runs "
              f"each, {os.cpu_count()} CPUs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
