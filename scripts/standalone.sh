#!/usr/bin/env bash
# Run shardcron standalone with the quickstart jobs (examples/quickstart): the
# embedded registry and SQLite history under ./shardcron-data. Ctrl-C stops it.
#
#   ./scripts/standalone.sh                      # the quickstart
#   ./scripts/standalone.sh --config my.toml     # your own config file
#
# The console: http://127.0.0.1:8080/ (the first start prints the admin password).
# In another terminal: ./target/release/shardcron history --history sqlite://shardcron-data/history.db
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# protoc is needed to build the etcd client.
ensure_pkg protoc protobuf-compiler

log "building shardcron (release)"
cargo build --release -p shardcron --bin shardcron
bin="${CARGO_TARGET_DIR:-target}/release/shardcron"
if [ "$#" -eq 0 ]; then
  set -- --config examples/quickstart/shardcron.toml
fi
log "$bin standalone $*"
exec "$bin" standalone "$@"
