#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, then checks
# formatting and lints and runs every test. Used by .ci/run.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -E 'test(conformance)'   # extra arguments go to cargo nextest
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds are slow on small machines: keep one target dir outside the clone so that
# repeated runs (and CI runs on the same machine) reuse it. Works from nothing too.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shardcron-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

. scripts/lib.sh

# System packages the tests start for real: etcd (the registry), protoc (etcd-client's
# build), MariaDB (history store tests), Chromium (the console's browser tests drive
# it headless), libfaketime (a skewed agent clock), iproute2 (`ip netns` and veth
# pairs for the partition test; the tests need root). PostgreSQL 15 comes with the
# machine.
ensure_pkg etcd etcd-server
ensure_pkg protoc protobuf-compiler
ensure_pkg mariadbd mariadb-server
ensure_pkg chromium chromium
ensure_pkg faketime faketime
ensure_pkg ip iproute2

if ! need_cmd cargo-nextest && ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
  log "installing clippy and rustfmt"
  rustup component add clippy rustfmt
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets --all-features (warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

log "cargo nextest run"
cargo nextest run --workspace --all-features --profile ci "$@"

log "doc tests"
cargo test --workspace --all-features --doc --quiet
