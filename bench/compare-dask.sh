#!/usr/bin/env bash
# Runs the Dask reference benchmarks (bench/dask) and `wrun bench
# cluster` on this machine, one after the other, and prints the ratios.
#
#   bench/compare-dask.sh                 # 3 runs per Dask script (about 30 min on 2 cores)
#   RUNS=1 bench/compare-dask.sh          # 1 run each (about 10 min)
#   SKIP_DASK=1 bench/compare-dask.sh     # reuse the Dask figures of the last run
#
# Both sides use 2 workers x 1 thread on the same machine. Compare at
# similar load: each side records the load average before it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
DASK_DIR=${DASK_BENCH_DIR:-bench/dask}
VENV=${DASK_VENV:-/tmp/dask-bench/venv}
PY="$VENV/bin/python"
RUNS=${RUNS:-3}
OUT=${OUT:-/tmp/wrun-compare}
mkdir -p "$OUT"

if [ "${SKIP_DASK:-0}" != 1 ]; then
  if [ ! -x "$PY" ]; then
    echo "== installing Dask into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "dask[distributed]==2026.8.0" psutil
  fi
  run() {  # run OUTPUT_NAME SCRIPT ARGS...
    local name=$1 script=$2; shift 2
    echo "== dask $script $* | $(uptime)" >&2
    timeout -k 10 1200 "$PY" "$DASK_DIR/$script.py" "$@" > "$OUT/dask-$name.json" 2>> "$OUT/dask.log" \
      || echo "{\"error\": \"$script exited $?\"}" > "$OUT/dask-$name.json"
  }
  run startup startup --runs "$RUNS"
  run seed_graph seed_graph --runs "$RUNS"
  run noop_10k noop_throughput --sizes 10000 --runs "$RUNS"
  run darts darts --runs "$RUNS"
  run tree_reduce tree_reduce --runs "$RUNS"
  run chain chain --runs "$RUNS"
  run data_transfer data_transfer --runs "$RUNS"
  run metg metg
  run noop_100k noop_throughput --sizes 100000 --runs 1 --per-run-limit 600
  run noop_100k_32w noop_throughput --workers 32 --sizes 100000 --runs 1 --per-run-limit 600
  run taskbench taskbench --runs 2
fi

scripts/setup.sh
cargo build --release --bins >&2
module=$(target/release/wrun build examples/seed-tasks | tail -n 1)
echo "== wrun bench cluster | $(uptime)" >&2
target/release/wrun bench cluster --module "$module" | tee "$OUT/wrun-table.txt" | tail -n 1 > "$OUT/wrun.json"
echo "== wrun bench taskbench | $(uptime)" >&2
target/release/wrun bench taskbench --module "$module" | tee -a "$OUT/wrun-table.txt" | tail -n 1 > "$OUT/wrun-taskbench.json"
echo "== bench/scheduler-cost.sh 2 32 | $(uptime)" >&2
WRUN=$PWD/target/release/wrun bench/scheduler-cost.sh 2 32 | tee -a "$OUT/wrun-table.txt" | tail -n 1 > "$OUT/wrun-scheduler-cost.json"
echo "== bench/million.sh | $(uptime)" >&2
WRUN=$PWD/target/release/wrun bench/million.sh | tee -a "$OUT/wrun-table.txt" | tail -n 1 > "$OUT/wrun-million.json"
python3 bench/compare.py "$OUT"
