#!/usr/bin/env bash
# Installs what wrun needs that cargo does not fetch by itself. Idempotent,
# and run by both README commands, so a fresh machine needs nothing by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

# rust-toolchain.toml pins the toolchain and lists the wasm target, but with
# RUSTUP_AUTO_INSTALL=0 (as on our machines) rustup does not add a listed
# target by itself (docs/ARCHITECTURE.md, "Measured facts").
rustup target add wasm32-wasip1 >/dev/null
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add clippy rustfmt >/dev/null
fi

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
updated=""
apt_install() {
  if [ -z "$updated" ]; then
    $sudo apt-get update -qq >/dev/null
    updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The Cap'n Proto compiler: host/wrun-proto's build.rs compiles
# schema/wrun.capnp with it (schema/README.md says why it is not checked in).
if ! command -v capnp >/dev/null 2>&1; then
  apt_install capnproto
fi

# `--tests`: what the test suite needs besides. MPICH for the `wrun mpi`
# tests (Slurm itself is installed and started by
# deploy/slurm/dev/start-local-slurm.sh, which scripts/test.sh runs); clang,
# lld, wasi-libc and the wasm32 compiler runtime for the C task module that
# tests/build.rs compiles by guest-sdk/ABI.md's recipe.
if [ "${1:-}" = "--tests" ]; then
  command -v mpiexec.mpich >/dev/null 2>&1 || apt_install mpich
  c_guest="clang lld wasi-libc libclang-rt-dev-wasm32"
  # shellcheck disable=SC2086
  dpkg -s $c_guest >/dev/null 2>&1 || apt_install $c_guest
  # The dashboard is tested in a real headless browser, and /metrics by a
  # real Prometheus server and `promtool check metrics`.
  command -v chromium >/dev/null 2>&1 || apt_install chromium
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || apt_install prometheus
fi
