#!/usr/bin/env python3
"""Where the Atoll nodes' CPU goes, from a `perf record --call-graph dwarf`.

    perf record -a --call-graph dwarf,32768 -F 149 -o perf.data -- sleep 8
    perf script -i perf.data --no-inline | benches/profile.py

prints the share of the nodes' samples by task (the Raft core, the state
machine, each side of gRPC, ...) and by component (RocksDB, h2, malloc,
system calls). Only stacks with a frame in the `atoll` binary count, so the
load generator and the rest of the machine are left out. `--folded FILE`
also writes the stacks folded (one `frame;frame;... count` per line), the
input of flame graph tools.
"""

import argparse
import collections
import re
import sys

# A stack belongs to the first task whose pattern one of its frames matches.
TASKS = [
    ("state machine (apply)", r"sm::worker::Worker"),
    ("replication to followers", r"ReplicationCore"),
    ("Raft core (log append, commit)", r"RaftCore"),
    ("write proposer", r"proposer::Proposer"),
    ("gRPC server: request handlers", r"H2Stream"),
    ("gRPC server: connections", r"hyper::server::conn|serve_connection|h2::server"),
    ("gRPC client (Raft RPCs): connections", r"H2ClientFuture|h2::client::Connection|hyper::proto::h2::client"),
    ("gRPC client: request buffer", r"tower::buffer::worker"),
    ("WAL sync thread", r"^atoll-group-com"),
    ("background loops (TTL, leaders)", r"atoll_server::background"),
    ("tokio scheduler", r"tokio::runtime"),
]

# Shares of stacks with a frame matching each pattern (they overlap).
COMPONENTS = [
    ("RocksDB", r"^rocksdb::|^rocksdb_"),
    ("RocksDB writes", r"Engine>::write$"),
    ("RocksDB memtable inserts", r"rocksdb::MemTable::Add"),
    ("RocksDB WAL record writes", r"rocksdb::DBImpl::WriteGroupToWAL"),
    ("log scans", r"Engine>::scan$"),
    ("h2", r"^h2::"),
    ("prost", r"^prost::"),
    ("malloc and free", r"malloc|^cfree|_int_free|realloc"),
    ("memmove and memcpy", r"memmove|memcpy"),
    ("system calls", r"^do_syscall_64$"),
    ("writev", r"writev"),
    ("futex", r"futex"),
]

FRAME = re.compile(r"\s*[0-9a-f]+ (.*) \((.*)\)$")


def stacks(lines):
    """Yields (thread name and frames, root first; is a node's) per sample."""
    thread, frames, dsos = "", [], []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                yield [thread] + frames[::-1], any(d.endswith("/atoll") for d in dsos)
            frames, dsos = [], []
            continue
        if not line[0].isspace():
            thread = line.split()[0]
            continue
        m = FRAME.match(line)
        if m:
            frames.append(re.sub(r"\+0x[0-9a-f]+$", "", m.group(1)).replace(";", ":"))
            dsos.append(m.group(2))
    if frames:
        yield [thread] + frames[::-1], any(d.endswith("/atoll") for d in dsos)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folded", help="write the nodes' stacks folded to this file")
    args = parser.parse_args()

    folded = collections.Counter()
    every = 0
    for frames, ours in stacks(sys.stdin):
        every += 1
        if ours:
            folded[";".join(frames)] += 1
    total = sum(folded.values())
    if total == 0:
        sys.exit("no samples of the atoll binary (was perf run with --call-graph dwarf?)")
    print(f"{total} of {every} samples are the nodes' ({100 * total / every:.0f}%)\n")

    by_task = collections.Counter()
    for stack, n in folded.items():
        frames = stack.split(";")
        name = next((t for t, p in TASKS if any(re.search(p, f) for f in frames)), "other")
        by_task[name] += n
    print("| task | share of the nodes' CPU |\n|---|---:|")
    for name, n in by_task.most_common():
        print(f"| {name} | {100 * n / total:.1f}% |")

    print("\n| component (overlapping) | share of the nodes' CPU |\n|---|---:|")
    for name, pattern in COMPONENTS:
        p = re.compile(pattern)
        n = sum(c for s, c in folded.items() if any(p.search(f) for f in s.split(";")))
        print(f"| {name} | {100 * n / total:.1f}% |")

    if args.folded:
        with open(args.folded, "w") as out:
            for stack, n in folded.items():
                out.write(f"{stack} {n}\n")


if __name__ == "__main__":
    main()
