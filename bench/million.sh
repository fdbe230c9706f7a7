#!/usr/bin/env bash
# A 1,000,000-task no-op map from the shell, end to end: `wrun submit
# --args-file` against `wrun local --workers 2 --threads 1`, with the peak
# RSS of the scheduler (the `wrun local` process, VmHWM) and of the
# submitting client (/usr/bin/time). Prints a line for people, then JSON.
#   bench/million.sh            # 1,000,000 tasks
#   TASKS=100000 bench/million.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${WRUN:-}" ]; then
  cargo build --release --bins -q
  WRUN=$PWD/target/release/wrun
fi
TASKS=${TASKS:-1000000}
module=$("$WRUN" build examples/seed-tasks 2>/dev/null | tail -n 1)
work=$(mktemp -d /tmp/wrun-million-XXXXXX)
local_pid=
cleanup() {
  [ -n "$local_pid" ] && kill "$local_pid" 2>/dev/null && wait "$local_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
python3 -c "import sys; sys.stdout.write(''.join(f'[{i}]\n' for i in range($TASKS)))" > "$work/args.txt"
file=$work/sched.json
"$WRUN" local --workers 2 --threads 1 --scheduler-file "$file" --dashboard off \
  > "$work/local.log" 2>&1 &
local_pid=$!
deadline=$(( $(date +%s) + 120 ))
until [ "$("$WRUN" status --scheduler-file "$file" --json 2>/dev/null |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["workers"]))' 2>/dev/null)" = 2 ]; do
  if [ "$(date +%s)" -gt "$deadline" ]; then
    echo "2 workers did not join in 120 s; see $work/local.log" >&2
    exit 1
  fi
  sleep 0.2
done
"$WRUN" submit --scheduler-file "$file" "$module" identity --map 1 2 3 > /dev/null
t0=$(date +%s.%N)
/usr/bin/time -f '%M' -o "$work/client-kib" \
  "$WRUN" submit --scheduler-file "$file" "$module" identity --args-file "$work/args.txt" > "$work/out.txt"
t1=$(date +%s.%N)
lines=$(wc -l < "$work/out.txt")
[ "$lines" = "$TASKS" ] || { echo "got $lines results, not $TASKS" >&2; exit 1; }
[ "$(tail -n 1 "$work/out.txt")" = "$((TASKS - 1))" ] || { echo "the last result is wrong" >&2; exit 1; }
scheduler_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$local_pid/status")
client_kib=$(cat "$work/client-kib")
python3 -c "
import json
wall = $t1 - $t0
print(f'{$TASKS:,} tasks from the shell: {wall:.2f} s end to end, {$TASKS / wall:,.0f} tasks/s; peak RSS scheduler {$scheduler_kib / 1024:.0f} MiB, client {$client_kib / 1024:.0f} MiB')
print(json.dumps({'tasks': $TASKS, 'wall_s': round(wall, 3), 'tasks_per_s': round($TASKS / wall), 'scheduler_peak_rss_mib': round($scheduler_kib / 1024), 'client_peak_rss_mib': round($client_kib / 1024)}))"
