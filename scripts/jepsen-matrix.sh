#!/usr/bin/env bash
# Runs the fault-injection harness RUNS times for every workload x nemesis
# pair and writes a table of the results. Long: about 25 s per run.
#
#   scripts/jepsen-matrix.sh [RUNS] [OUT]        (defaults: 10, jepsen-runs/matrix)
#
# Environment: TIME (client time per run, default 20s), PERIOD (fault
# period, default 3s), WORKLOADS and NEMESES (space-separated lists; a
# comma joins faults applied in turn in one run, e.g. move,kill), EXTRA
# (more harness arguments, e.g. "--raft snapshot_after_entries=200", so
# that the faults meet snapshot sends and installs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
atoll_install_prereqs
atoll_install_test_prereqs
runs="${1:-10}"
out="${2:-jepsen-runs/matrix}"
time="${TIME:-20s}"
period="${PERIOD:-3s}"
workloads="${WORKLOADS:-register register-ttl set bank}"
nemeses="${NEMESES:-kill pause partition island-loss lose-unsynced move move,kill move,partition move-crash split split,kill split,partition split,move drain drain,kill join join,kill silent}"
read -r -a extra <<< "${EXTRA:-}"

cargo build --quiet --workspace --bins
lazyfs=$(bash scripts/lazyfs.sh)
harness="$CARGO_TARGET_DIR/debug/atoll-jepsen"
mkdir -p "$out"
table="$out/results.md"
{
    echo "| workload | nemesis | run | ops | ok | fail | ambiguous | faults (hit a leader) | verdict |"
    echo "|---|---|---|---|---|---|---|---|---|"
} > "$table"
failed=0
for workload in $workloads; do
    for nemesis in $nemeses; do
        for run in $(seq 1 "$runs"); do
            dir="$out/$workload-$nemesis-$run"
            set +e
            "$harness" --workload "$workload" --nemesis "$nemesis" --time "$time" \
                --fault-period "$period" --nodes 5 --islands 3 --keys 8 \
                --lazyfs "$lazyfs" --out "$dir" "${extra[@]}" > "$dir.txt" 2>&1
            status=$?
            set -e
            line=$(head -1 "$dir.txt")
            ops=$(sed -n 's/.*; ops \([0-9]*\) (ok \([0-9]*\), fail \([0-9]*\), ambiguous \([0-9]*\)); faults \([0-9]*\) (\([0-9]*\) hit.*/\1 | \2 | \3 | \4 | \5 (\6)/p' <<< "$line")
            if [ "$status" -eq 0 ]; then
                verdict=valid
                # Keep the passing runs' summaries, not their data.
                rm -rf "$dir"
            else
                verdict="FAILED (exit $status, see $dir.txt)"
                failed=$((failed + 1))
            fi
            echo "| $workload | $nemesis | $run | ${ops:-? | ? | ? | ? | ?} | $verdict |" | tee -a "$table"
        done
    done
done
echo "$failed failed run(s); table: $table"
[ "$failed" -eq 0 ]
