#!/usr/bin/env bash
# The main job: build wrun and the seed task module, then run the seed
# workloads: from the shell with `wrun submit` (an embedded cluster, no
# set-up), on a `wrun local` cluster through the Rust client library, and
# in the sandbox alone, printing answers and timings.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== building wrun (release; the first build takes a few minutes on 2 cores)" >&2
cargo build --release --bins
wrun=target/release/wrun
echo "== building the seed task module" >&2
module=$($wrun build examples/seed-tasks | tail -n 1)
$wrun inspect "$module"

echo
echo "== wrun submit, no cluster named (an embedded one runs for the call)"
echo "\$ wrun submit seed_tasks.wasm add 1 2"
$wrun submit "$module" add 1 2
echo "\$ wrun submit seed_tasks.wasm --map inc 1 2 3"
$wrun submit "$module" --map inc 1 2 3
darts_args=$(mktemp)
for seed in $(seq 0 99); do echo "[1000000, $seed]"; done > "$darts_args"
echo "\$ wrun submit seed_tasks.wasm throw_darts --args-file darts.jsonl   # 100 x 1M darts"
$wrun submit "$module" throw_darts --args-file "$darts_args" \
  | python3 -c 'import sys, json; c = [json.loads(l) for l in sys.stdin]; i = sum(x[0] for x in c); t = sum(x[1] for x in c); print(f"pi = {4 * i / t:.6f} from {t} darts in {len(c)} tasks")'
rm -f "$darts_args"

echo
echo "== a wrun local cluster (2 workers with nannies) and the client library"
sched=$(mktemp -u /tmp/wrun-seed-XXXXXX.json)
$wrun local --workers 2 --threads 1 --scheduler-file "$sched" > /dev/null &
local_pid=$!
trap 'kill $local_pid 2>/dev/null; wait $local_pid 2>/dev/null' EXIT
target/release/cluster-seed "$sched" "$module"
$wrun status --scheduler-file "$sched"

echo
echo "== the same workloads in the sandbox alone, one process"
target/release/sandbox-seed "$module"
