#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests

# A real one-node Slurm for tests/tests/slurm.rs: started here unless one
# already answers, and then stopped again when the suite ends.
started_slurm=""
if ! sinfo -h >/dev/null 2>&1; then
  eval "$(deploy/slurm/dev/start-local-slurm.sh)"
  started_slurm=1
fi

# One profile for everything (wasmtime is ~10x slower in debug; docs/ARCHITECTURE.md).
# The end-to-end tests run the real `wrun` binary, so build it first.
cargo build --release --workspace --bins
log=$(mktemp)
cleanup() {
  rm -f "$log"
  if [ -n "$started_slurm" ]; then
    deploy/slurm/dev/stop-local-slurm.sh >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
cargo test --release --workspace 2>&1 | tee "$log"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
echo "lint: cargo fmt and clippy clean"
# One closing line with the totals of every test binary above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
