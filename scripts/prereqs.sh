#!/usr/bin/env bash
# Installs what building Atoll needs beyond a Rust toolchain: a C++ compiler,
# libclang (RocksDB's bindgen) and protoc (the etcd client the harness and
# the benchmarks drive compiles etcd's protos; atoll-proto uses a vendored
# protoc). Sourced by scripts/run-dev.sh and scripts/test.sh.
set -euo pipefail

# bindgen loads libclang.so itself; libclang-cpp (present on many images) is
# a different library and does not do.
atoll_have_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null
}

# atoll_apt_install WHAT PACKAGE...: installs the packages, if any, with apt.
atoll_apt_install() {
    local what=$1
    shift
    [ $# -gt 0 ] || return 0
    echo "installing $what prerequisites: $*" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

atoll_install_prereqs() {
    local missing=()
    command -v cargo >/dev/null || { echo "cargo is missing: install Rust (https://rustup.rs) first" >&2; exit 1; }
    command -v c++ >/dev/null || missing+=(g++)
    atoll_have_libclang || missing+=(libclang-dev)
    command -v protoc >/dev/null || missing+=(protobuf-compiler)
    atoll_apt_install build "${missing[@]}"
}

# What the tests need beyond the build: the fault-injection harness puts
# nodes in network namespaces (iproute2) and cuts traffic with iptables, and
# proves itself against etcd (Debian's etcd-server); its clock faults use
# libfaketime (faketime). Root is needed for the namespaces and for lazyfs's
# FUSE mounts (/dev/fuse).
atoll_install_test_prereqs() {
    local missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v iptables >/dev/null || missing+=(iptables)
    [ -x /usr/bin/etcd ] || missing+=(etcd-server)
    command -v faketime >/dev/null || missing+=(faketime)
    atoll_apt_install test "${missing[@]}"
}

# One target dir outside the clone, shared by the run and test commands (and
# by CI runs on the same machine), so RocksDB's C++ is compiled once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/atoll-target}"
