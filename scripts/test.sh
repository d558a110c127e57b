#!/usr/bin/env bash
# Runs Atoll's tests: unit, property, openraft storage conformance,
# in-process cluster and end-to-end process tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
atoll_install_prereqs
start=$(date +%s)
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast
echo "tests finished in $(( $(date +%s) - start ))s"
