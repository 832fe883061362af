#!/usr/bin/env bash
# Counts the instructions one replay executes, under valgrind's callgrind: a figure that stays
# the same however loaded the machine is (the wall time of a replay on the shared 2-core
# machine varies by ±20 % from run to run), to compare two builds of the per-line work or
# the dataflow.
#
#   scripts/count-instructions.sh [LINES] [MINUTES]
#
# Generates LINES lines over MINUTES of event time (default 300000 over 10 min: the window
# fills after 5), replays them with ONE worker (under valgrind the threads take turns, and a
# second worker would spin while it waits for the first), and prints the total and its split:
# the dataflow's steps, and the rest of the worker loop (reading, parsing, dataprocess, the
# processed-record output). About 2 minutes here. Needs valgrind (Debian package `valgrind`).
set -euo pipefail
lines=${1:-300000}
minutes=${2:-10}
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || {
  echo "count-instructions: needs valgrind (apt-get install valgrind)" >&2
  exit 1
}
cargo build --release --quiet
data=target/bench-data/gen-$lines-${minutes}m.cs.log
mkdir -p target/bench-data
[ -f "$data" ] || target/release/antispider gen --lines "$lines" --minutes "$minutes" --format cs -o "$data"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  target/release/antispider replay "$data" --format cs -w 1 --out "$work/out" >/dev/null 2>&1
callgrind_annotate --inclusive=yes "$work/callgrind.out" >"$work/inclusive.txt"
# The first (largest) inclusive count of a function, without separators.
count() { grep -m1 -E "$1" "$work/inclusive.txt" | awk '{gsub(",", "", $1); print $1}'; }
total=$(count 'PROGRAM TOTALS')
worker=$(count 'antispider::engine::worker_main')
# Every step of the dataflow, `Worker::step` included, runs through `step_or_park`.
stepped=$(count 'timely::worker::Worker::step_or_park')
awk -v t="$total" -v w="$worker" -v s="$stepped" -v l="$lines" 'BEGIN {
  printf "instructions: %.3f G in all (%.0f per line)\n", t / 1e9, t / l
  printf "  dataflow steps: %.3f G (%.1f %%)\n", s / 1e9, 100 * s / t
  printf "  rest of the worker loop (read, parse, dataprocess, outputs): %.3f G (%.1f %%)\n", (w - s) / 1e9, 100 * (w - s) / t
}'
