#!/usr/bin/env bash
# Measures Atoll against etcd 3.4 in one run (see benches/README.md).
# Installs what the build needs and Debian's etcd-server when missing,
# builds the release binaries, and runs atoll-bench with the arguments
# given; without arguments, the comparison the README reports.
#
#   scripts/bench.sh                         the full comparison (~25 min)
#   scripts/bench.sh --workloads w --clients 1 --duration 10s   (anything else)
#   scripts/bench.sh snapshot --mib 2048     a 2 GiB snapshot to a returning follower
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
atoll_install_prereqs
[ -x /usr/bin/etcd ] || atoll_apt_install bench etcd-server
cargo build --release --quiet -p atoll-server -p atoll-bench --bins
if [ $# -eq 0 ]; then
    set -- --target both --workloads w,a,b,c,cas,batch --clients 64 \
        --duration 20s --warmup 5s --rounds 2 --equal-load 0.7 --out bench-out
fi
exec "$CARGO_TARGET_DIR/release/atoll-bench" "$@"
