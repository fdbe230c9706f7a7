#!/usr/bin/env bash
# The main job: build wrun and the seed task module, then run the seed
# workloads through the sandbox, printing answers and timings.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== building wrun (release; the first build takes a few minutes on 2 cores)" >&2
cargo build --release --bins
echo "== building the seed task module" >&2
module=$(target/release/wrun build examples/seed-tasks | tail -n 1)
target/release/wrun inspect "$module"
echo
echo "== one task from the shell: wrun run $module add 1 2"
target/release/wrun run "$module" add 1 2
echo
target/release/sandbox-seed "$module"
