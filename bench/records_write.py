"""What a session's record write costs the session worker (issue 14): `add_event` on the
embedded SQLite file (a committed, fsynced transaction) and on PostgreSQL (an fsynced line in
the local journal; the writer thread sends it on), and how long the journal takes to drain.

    python bench/records_write.py [--events N] [--pg URL] [--json]

`--pg` names a PostgreSQL database (default postgresql://postgres@127.0.0.1:5432/test); the
benchmark works in a schema of its own and drops it. A plain script, never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.records.store import RecordStore

EVENTS = 500
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def session_writes(store: RecordStore, events: int) -> dict[str, float]:
    """Milliseconds per `add_event` while one session runs (median, p99, max)."""
    sid = store.open_session(profile="hc-200", port="/dev/pts/1", identity={}, operator="bench",
                             patient="P-0001", prescription={}, planned_s=60.0)
    times = []
    for i in range(events):
        began = time.perf_counter()
        store.add_event(sid, "state", {"i": i}, t_s=i * 0.01)
        times.append((time.perf_counter() - began) * 1000.0)
    store.close_session(sid, "completed", "bench", "controller", 1.0, None)
    times.sort()
    return {"median_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)], 3),
            "max_ms": round(times[-1], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=EVENTS, help=f"events ({EVENTS})")
    parser.add_argument("--pg", default=PG_URL, help=f"a PostgreSQL database ({PG_URL})")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    args = parser.parse_args()
    import psycopg
    out: dict[str, object] = {"events": args.events}
    folder = Path(tempfile.mkdtemp(prefix="modctl-bench-"))
    with RecordStore(folder / "records.sqlite3") as store:
        out["sqlite"] = session_writes(store, args.events)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg, autocommit=True) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS btree_gist SCHEMA public")
        admin.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in args.pg else "?"
        url = f"{args.pg}{sep}options={quote(f'-csearch_path={schema},public')}"
        try:
            with RecordStore(url, spool_dir=folder / "spool") as store:
                began = time.perf_counter()
                out["postgresql_journal"] = session_writes(store, args.events)
                ok = store.verify_audit().ok   # waits for the journal to be written first
                out["postgresql_drained_s"] = round(time.perf_counter() - began, 3)
                out["postgresql_chain_verified"] = ok
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name in ("sqlite", "postgresql_journal"):
            r = out[name]
            assert isinstance(r, dict)
            print(f"{name:20} add_event median {r['median_ms']:.2f} ms, p99 {r['p99_ms']:.2f} "
                  f"ms, max {r['max_ms']:.2f} ms")
        print(f"postgresql: {args.events} events written and the chain verified "
              f"{out['postgresql_drained_s']} s after the first")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
