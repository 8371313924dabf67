#!/bin/sh
# Every benchmark in turn, as quoted in docs/performance.md. Raw JSON goes to
# bench/results/<name>.json, the one-line summaries to bench/results/SUMMARY.txt,
# progress lines to bench/results/<name>.log.
#   sh bench/run_all.sh            # full settings (about 65 minutes, plus the soak)
#   QUICK=--quick sh bench/run_all.sh
#   SOAK_MINUTES=0 sh bench/run_all.sh   # skip the soak
#   ONLY="stop_error scale" sh bench/run_all.sh   # some of them
# Run it as root to get `nice -n -10` (see docs/performance.md); otherwise at nice 0.
set -u
cd "$(dirname "$0")"
PY=${PYTHON:-python}
OUT=results
QUICK=${QUICK:-}
SOAK_MINUTES=${SOAK_MINUTES:-30}
mkdir -p "$OUT"
NICE=""
if nice -n -10 true 2>/dev/null; then NICE="nice -n -10"; fi

ONLY=${ONLY:-}

run() {  # name, script and arguments
    name=$1; shift
    case " ${ONLY:-$name} " in *" $name "*) ;; *) return ;; esac
    echo "== $name: $* (${NICE:-nice 0})"
    $NICE "$PY" "$@" $QUICK >"$OUT/$name.raw" 2>"$OUT/$name.log"
    echo "exit status $?" >>"$OUT/$name.log"
    grep -v '^SUMMARY' "$OUT/$name.raw" >"$OUT/$name.json"
    grep '^SUMMARY' "$OUT/$name.raw" | tee -a "$OUT/SUMMARY.txt"
    rm -f "$OUT/$name.raw"
}

run round_trip round_trip.py
run stop_error stop_error.py
run operator_stop operator_stop.py
# Devices at the slow end of their manuals, wake-up jobs as `session run` (issue 10).
run stop_error_slow stop_error.py --slow
run operator_stop_slow operator_stop.py --slow
run scale scale.py
# The clinic service (issue 12): `modctl serve` on 32 devices, 20 live streams, a GET flood.
run service_load service_load.py
run service_estop service_estop.py
run console_latency console_latency.py
if [ "$SOAK_MINUTES" != 0 ]; then
    if [ -n "$QUICK" ]; then run soak soak.py; else run soak soak.py --minutes "$SOAK_MINUTES"; fi
fi
