#!/usr/bin/env bash
# Starts a local Atoll cluster: three nodes on three islands, on 127.0.0.1
# ports 7001-7003, data in ./atoll-dev-data. Extra arguments go to `atoll dev`
# (e.g. --fresh). The first run builds RocksDB (about 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
atoll_install_prereqs
cargo build --bins
echo "atollctl is at $CARGO_TARGET_DIR/debug/atollctl" >&2
exec "$CARGO_TARGET_DIR/debug/atoll" dev "$@"
