#!/usr/bin/env bash
# Builds atoll-lazyfs (jepsen/lazyfs, its own workspace) and prints the
# binary's path. The harness's lose-unsynced nemesis mounts each node's data
# dir on it; mounting needs root and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
target="$CARGO_TARGET_DIR/lazyfs"
CARGO_TARGET_DIR="$target" cargo build --quiet --manifest-path jepsen/lazyfs/Cargo.toml
echo "$target/debug/atoll-lazyfs"
