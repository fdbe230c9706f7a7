#!/usr/bin/env bash
# The scheduler's CPU per task as the worker count grows: for each N given,
# `wrun local --workers N --threads 1` (the scheduler is that process; its
# workers are children, not counted), a 100,000-task no-op map, and the
# scheduler's own user+system time from /proc/PID/stat. The last line is
# the figures as JSON.
#   bench/scheduler-cost.sh 2 32
#   WRUN=/path/to/other/wrun bench/scheduler-cost.sh 2 32   # a build to compare
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${WRUN:-}" ]; then
  cargo build --release --bins -q
  WRUN=$PWD/target/release/wrun
fi
module=$("$WRUN" build examples/seed-tasks 2>/dev/null | tail -n 1)
work=$(mktemp -d /tmp/wrun-scheduler-cost-XXXXXX)
local_pid=
cleanup() {
  [ -n "$local_pid" ] && kill "$local_pid" 2>/dev/null && wait "$local_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
python3 -c "print('\n'.join(['[]'] * 100000))" > "$work/args.txt"
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

[ $# -eq 0 ] && set -- 2 32
figures=
for workers in "$@"; do
  file=$work/sched-$workers.json
  "$WRUN" local --workers "$workers" --threads 1 --scheduler-file "$file" \
    > "$work/local-$workers.log" 2>&1 &
  local_pid=$!
  deadline=$(( $(date +%s) + 120 ))
  until [ "$("$WRUN" status --scheduler-file "$file" --json 2>/dev/null |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin)["workers"]))' 2>/dev/null)" = "$workers" ]; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "$workers workers did not join in 120 s; see $work/local-$workers.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  # Warm up: every worker that runs a task has the module.
  "$WRUN" submit --scheduler-file "$file" "$module" noop --map '[]' > /dev/null
  cpu0=$(cpu "$local_pid"); t0=$(date +%s.%N)
  "$WRUN" submit --scheduler-file "$file" "$module" noop --args-file "$work/args.txt" > /dev/null
  t1=$(date +%s.%N); cpu1=$(cpu "$local_pid")
  python3 -c "
wall = $t1 - $t0; cpu = ($cpu1 - $cpu0) / $ticks
print(f'workers {$workers:>5}: wall {wall:6.2f} s, scheduler CPU {cpu:6.2f} s, {cpu / 1e5 * 1e6:6.1f} us per task')"
  figures="$figures{\"workers\": $workers, \"wall_s\": $(python3 -c "print(round($t1 - $t0, 3))"), \"us_per_task\": $(python3 -c "print(round(($cpu1 - $cpu0) / $ticks / 1e5 * 1e6, 2))")},"
  kill "$local_pid"; wait "$local_pid" 2>/dev/null || true; local_pid=
done
echo "{\"scheduler_cost\": [${figures%,}]}"
