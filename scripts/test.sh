#!/usr/bin/env bash
# Runs Atoll's tests: unit, property, openraft storage conformance,
# in-process cluster and end-to-end process tests, the fault-injection
# harness's checkers and short runs, and atoll-lazyfs's own tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
atoll_install_prereqs
atoll_install_test_prereqs
start=$(date +%s)
cargo build --workspace --all-targets
# atoll-lazyfs is its own workspace (see its Cargo.toml).
lazyfs=(--manifest-path jepsen/lazyfs/Cargo.toml)
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/lazyfs" cargo build "${lazyfs[@]}" --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/lazyfs" cargo test "${lazyfs[@]}" --no-fail-fast 2>&1 | tee -a "$log"
lazyfs_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$lazyfs_status
set -e
# One closing line for the whole run (cargo prints one per test binary).
totals=$(awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } } END { printf "%d passed, %d failed", p, f }' "$log")
echo "tests finished in $(( $(date +%s) - start ))s"
echo "$totals"
exit "$status"
