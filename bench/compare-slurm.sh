#!/usr/bin/env bash
# wrun against dask-jobqueue on the same (local) Slurm, side by side:
#   1. `wrun slurm up --workers 2` until both workers are ready, vs
#      SLURMCluster + scale(jobs=2) + wait_for_workers(2);
#   2. sbatch of the batch template until its first result line, for
#      deploy/slurm/wrun-batch.sbatch and bench/slurm/dask-batch.sbatch.
# Needs a running Slurm (deploy/slurm/dev/start-local-slurm.sh) and the Dask
# venv of bench/compare-dask.sh with dask-jobqueue (installed if missing).
#   RUNS=5 bench/compare-slurm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DASK_VENV:-/tmp/dask-bench/venv}
PY="$VENV/bin/python"
RUNS=${RUNS:-3}
PARTITION=${WRUN_SLURM_PARTITION:-debug}
cargo build --release --bins -q
wrun=$PWD/target/release/wrun
module=$($wrun build examples/seed-tasks 2>/dev/null | tail -n 1)
if ! "$PY" -c 'import dask_jobqueue' 2>/dev/null; then
  "$VENV/bin/pip" install -q "dask[distributed]==2026.8.0" psutil dask-jobqueue
fi
work=$(mktemp -d /tmp/wrun-slurm-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
since() { printf '%.3f' "$(echo "$(now) - $1" | bc)"; }

# Waits for a job's output file to have a line equal to $2; prints seconds since $3.
first_line() {
  local out=$1 want=$2 t0=$3
  local deadline=$(( $(date +%s) + 180 ))
  until [ -f "$out" ] && grep -qx "$want" "$out"; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "no result line '$want' in $out after 180 s:" >&2; cat "$out" >&2 || true; exit 1
    fi
    sleep 0.01
  done
  since "$t0"
}
wait_gone() { while squeue -h -j "$1" 2>/dev/null | grep -q .; do sleep 0.1; done; }
# Each timed part starts on an idle node: jobs of the previous part that are
# still completing would hold CPUs and delay the next job to Slurm's next
# scheduling pass, whoever's turn it is.
wait_idle() { while squeue -h 2>/dev/null | grep -q .; do sleep 0.1; done; }

for run in $(seq 1 "$RUNS"); do
  f=$work/w$run/scheduler.json
  wait_idle
  t0=$(now)
  $wrun slurm up --workers 2 --cores 1 --memory 512MiB --walltime 00:10:00 \
    --partition "$PARTITION" --scheduler-file "$f" >/dev/null
  up=$(since "$t0")
  $wrun submit --scheduler-file "$f" "$module" add 1 2 >/dev/null
  first=$(since "$t0")
  $wrun slurm down --scheduler-file "$f" >/dev/null
  echo "wrun slurm up: ready $up s, first result $first s"
  echo "{\"tool\": \"wrun\", \"up_to_ready_s\": $up, \"up_to_first_result_s\": $first}" >> "$work/up.jsonl"

  wait_idle
  (cd "$work" && "$PY" "$OLDPWD/bench/slurm/jobqueue_up.py" 2 "$PARTITION" 2>>"$work/dask.log") \
    | sed 's/^{/{"tool": "dask-jobqueue", /' | tee -a "$work/up.jsonl"

  wait_idle
  t0=$(now)
  id=$(cd "$work" && WRUN=$wrun sbatch --parsable -o "$work/wb-%j.out" \
    "$OLDPWD/deploy/slurm/wrun-batch.sbatch" "$module" add 1 2)
  t=$(first_line "$work/wb-$id.out" 3 "$t0"); wait_gone "$id"
  echo "wrun batch template: first result $t s"
  echo "{\"tool\": \"wrun\", \"batch_first_result_s\": $t}" >> "$work/batch.jsonl"

  wait_idle
  t0=$(now)
  id=$(cd "$work" && PYTHON=$PY sbatch --parsable -o "$work/db-%j.out" \
    "$OLDPWD/bench/slurm/dask-batch.sbatch")
  t=$(first_line "$work/db-$id.out" 2 "$t0"); wait_gone "$id"
  echo "dask batch template: first result $t s"
  echo "{\"tool\": \"dask\", \"batch_first_result_s\": $t}" >> "$work/batch.jsonl"
done

python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
rows = [json.loads(l) for f in ("up.jsonl", "batch.jsonl") for l in open(f"{work}/{f}")]
def med(tool, key):
    xs = [r[key] for r in rows if r["tool"].startswith(tool) and key in r]
    return statistics.median(xs) if xs else float("nan")
print(f"{'measure (median)':<34} {'dask':>9} {'wrun':>9} {'ratio':>7}")
for key, dask in (("up_to_ready_s", "dask-jobqueue"), ("up_to_first_result_s", "dask-jobqueue"),
                  ("batch_first_result_s", "dask")):
    d, w = med(dask, key), med("wrun", key)
    print(f"{key:<34} {d:>8.3f}s {w:>8.3f}s {d / w:>6.1f}x")
print(json.dumps({k: {"dask": med(t, k), "wrun": med("wrun", k)} for k, t in
                  (("up_to_ready_s", "dask-jobqueue"), ("up_to_first_result_s", "dask-jobqueue"),
                   ("batch_first_result_s", "dask"))}))
PY
