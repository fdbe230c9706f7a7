#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# One profile for everything (wasmtime is ~10x slower in debug, STACK.md).
# The end-to-end tests run the real `wrun` binary, so build it first.
cargo build --release --workspace --bins
cargo test --release --workspace
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
echo "lint: cargo fmt and clippy clean"
