#!/usr/bin/env bash
# Compares two builds of antispider on the same replay: alternating runs, medians, and
# whether their outputs are the same.
#
#   scripts/compare-builds.sh BIN_A BIN_B [PAIRS] [LINES] [WORKERS] [FORMAT]
#   scripts/compare-builds.sh /tmp/antispider-before target/release/antispider 5 5000000 2 cs
#
# The wall time of one replay on a shared 2-core machine moves by 10-30 % within minutes, so
# one run per build says little about a change of a few per cent. This runs A B, B A, A B, ...
# (PAIRS pairs, default 3) over the same generated log (LINES lines over 60 minutes of event
# time, default 5M; WORKERS default 2; FORMAT default cs), prints each run's wall time, CPU
# time (user + system) and peak RSS, then the medians and B's change against A. CPU time moves
# less than the wall time; trust a change only when most pairs agree on its sign. Each run
# reads the log from the page cache (`warm_input`, scripts/bench-lib.sh).
#
# It then compares the outputs of both builds' last runs, sorted: indicators, dead letters and
# service anomalies byte for byte, the processed records without their highFrqIPGroup (which
# depends on timing), and the blacklist without its `wall_time`. A performance change should
# leave them identical; the script exits 1 if not.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bench-lib.sh

[ $# -ge 2 ] || { sed -n 2,19p "$0" | sed 's/^# \{0,1\}//'; exit 2; }
A=$(realpath "$1")
B=$(realpath "$2")
PAIRS=${3:-3}
LINES=${4:-5000000}
WORKERS=${5:-2}
FORMAT=${6:-cs}

need_gnu_time
DATA=target/bench-data
mkdir -p "$DATA"
LOG="$DATA/gen-${LINES}-60m.${FORMAT}.log"
[ -f "$LOG" ] || "$A" gen --lines "$LINES" --minutes 60 --format "$FORMAT" -o "$LOG"

# Outputs in memory where there is a tmpfs: the ~1.5 GB of processed records one run writes
# to disk would be written back while the next run (the other build's) is timed.
WORK=$(mktemp -d -p "$( [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")")
trap 'rm -rf "$WORK"' EXIT
machine_header
echo "# $LOG, $WORKERS worker(s), $PAIRS pairs; A=$A B=$B"
for i in $(seq 1 "$PAIRS"); do
  # A B, then B A: neither build always runs right after the other.
  order="A B"
  [ $((i % 2)) = 0 ] && order="B A"
  for side in $order; do
    bin=$A
    [ "$side" = B ] && bin=$B
    rm -rf "$WORK/out-$side"
    warm_input "$LOG"
    /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" \
      "$bin" replay "$LOG" --format "$FORMAT" -w "$WORKERS" --out "$WORK/out-$side" \
      >/dev/null 2>"$WORK/stderr" || { cat "$WORK/stderr" >&2; exit 1; }
    read -r wall user sys rss <"$WORK/time"
    echo "$side $wall $user $sys $rss" >>"$WORK/runs"
    awk -v s="$side" -v i="$i" -v w="$wall" -v u="$user" -v y="$sys" -v r="$rss" \
      'BEGIN { printf "%s pair %d: wall %6.2f s  cpu %6.2f s  peak RSS %4d MiB\n", s, i, w, u + y, r / 1024 }'
  done
done

python3 - "$WORK/runs" "$LINES" <<'PY'
import statistics, sys
runs = [l.split() for l in open(sys.argv[1])]
lines = int(sys.argv[2])
def med(side, f):
    return statistics.median(f(r) for r in runs if r[0] == side)
wall = {s: med(s, lambda r: float(r[1])) for s in "AB"}
cpu = {s: med(s, lambda r: float(r[2]) + float(r[3])) for s in "AB"}
rss = {s: med(s, lambda r: int(r[4]) / 1024) for s in "AB"}
for s in "AB":
    print(f"median {s}: wall {wall[s]:.2f} s ({lines / wall[s]:,.0f} lines/s)  cpu {cpu[s]:.2f} s  peak RSS {rss[s]:.0f} MiB")
pairs = [sorted((x, y)) for x, y in zip(runs[0::2], runs[1::2])]
pairs = [(float(a[1]), float(b[1])) for a, b in pairs]
faster = sum(b < a for a, b in pairs)
print(f"B against A: wall {100 * (wall['B'] / wall['A'] - 1):+.1f} %  cpu {100 * (cpu['B'] / cpu['A'] - 1):+.1f} %  "
      f"peak RSS {100 * (rss['B'] / rss['A'] - 1):+.1f} %  (B faster in {faster} of {len(pairs)} pairs)")
PY

same=1
for f in indicators.jsonl deadletter.jsonl service_anomalies.jsonl; do
  if ! cmp -s <(sort "$WORK/out-A/$f") <(sort "$WORK/out-B/$f"); then
    echo "outputs differ: $f"
    same=0
  fi
done
# A processed record's highFrqIPGroup (field 8) also says whether the engine had blacklisted
# the IP when the line was read: with more than one worker that depends on timing.
processed() { awk -F'#CS#' 'BEGIN { OFS = "#CS#" } { $8 = ""; print }' "$1" | sort; }
for f in processed_query.cs processed_book.cs; do
  if ! cmp -s <(processed "$WORK/out-A/$f") <(processed "$WORK/out-B/$f"); then
    echo "outputs differ: $f (highFrqIPGroup aside)"
    same=0
  fi
done
blacklist() { sed 's/"wall_time":"[^"]*",\{0,1\}//' "$1" | sort; }
if ! cmp -s <(blacklist "$WORK/out-A/blacklist.jsonl") <(blacklist "$WORK/out-B/blacklist.jsonl"); then
  echo "outputs differ: blacklist.jsonl (wall_time aside)"
  same=0
fi
[ "$same" = 1 ] && echo "outputs identical (processed records without highFrqIPGroup, blacklist without wall_time)"
[ "$same" = 1 ]
