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

log() { printf '\n==> %s\n' "$*"; }

need_cmd() { command -v "$1" >/dev/null 2>&1; }

# System packages the tests start for real: etcd (the registry), protoc (etcd-client's
# build), MariaDB (history store tests). PostgreSQL 15 comes with the machine.
apt_updated=0
ensure_pkg() { # ensure_pkg COMMAND PACKAGE
  if ! need_cmd "$1" && [ ! -x "/usr/bin/$1" ] && [ ! -x "/usr/sbin/$1" ]; then
    if [ "$apt_updated" = 0 ]; then
      log "apt-get update"
      apt-get update -qq
      apt_updated=1
    fi
    log "installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
}
ensure_pkg etcd etcd-server
ensure_pkg protoc protobuf-compiler
ensure_pkg mariadbd mariadb-server

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
