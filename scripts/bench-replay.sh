#!/usr/bin/env bash
# Replay benchmark of the release binary: lines/s and peak RSS of `antispider replay`.
#
#   scripts/bench-replay.sh [LINES] [MINUTES] [FORMAT] [WORKERS...]
#   scripts/bench-replay.sh 1000000 60 cs 1 2
#
# Generates the input once into target/bench-data/ (deterministic, seed 42), then for each
# worker count runs the replay, and prints one result line per run. For the same file and
# worker count it then prints the parse-only floor (`antispider parse`: the file read and split
# `line_no % N` over N threads and parsed, no dataflow) and the floor with dataprocess
# (`antispider parse --process`), and how many times slower the full replay is. A floor run
# of the 5M-line log lasts 1-4 s and moved by up to 2x from run to run on a shared 2-core VM,
# so each floor is run FLOOR_RUNS times (default 3) and the median is compared. Each run reads
# the log from the page cache (`warm_input`, scripts/bench-lib.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bench-lib.sh

LINES=${1:-1000000}
MINUTES=${2:-60}
FORMAT=${3:-cs}
shift $(( $# > 3 ? 3 : $# ))
WORKERS=("$@")
[ ${#WORKERS[@]} -eq 0 ] && WORKERS=(1 2)
FLOOR_RUNS=${FLOOR_RUNS:-3}

need_gnu_time
cargo build --release --quiet
BIN=target/release/antispider
DATA=target/bench-data
mkdir -p "$DATA"
LOG="$DATA/gen-${LINES}-${MINUTES}m.${FORMAT}.log"
[ -f "$LOG" ] || "$BIN" gen --lines "$LINES" --minutes "$MINUTES" --format "$FORMAT" -o "$LOG"

machine_header
for w in "${WORKERS[@]}"; do
  OUT="$DATA/out-$w"
  warm_input "$LOG"
  /usr/bin/time -v "$BIN" replay "$LOG" --format "$FORMAT" --out "$OUT" -w "$w" --json \
    > "$DATA/summary-$w.json" 2> "$DATA/time-$w.txt"
  python3 - "$DATA/summary-$w.json" "$DATA/time-$w.txt" "$LINES" "$MINUTES" "$FORMAT" "$w" <<'PY'
import json, re, sys
s = json.load(open(sys.argv[1]))
t = open(sys.argv[2]).read()
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
# CPU seconds vary less than the wall time on a shared machine: compare builds with both.
cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", t).group(1)) for k in ("User", "System"))
c = s["counters"]
print(f"lines={sys.argv[3]} minutes={sys.argv[4]} format={sys.argv[5]} workers={sys.argv[6]} "
      f"elapsed={s['elapsed_secs']:.1f}s lines/s={s['lines_per_sec']:.0f} "
      f"windowed={c['windowed']} blacklisted_ips={s['ips_blacklisted']} peak_rss={rss/1024:.0f}MiB "
      f"cpu={cpu:.1f}s")
PY
  for run in $(seq "$FLOOR_RUNS"); do
    warm_input "$LOG"
    "$BIN" parse "$LOG" --format "$FORMAT" -w "$w" --json > "$DATA/floor-$w-$run.json"
    warm_input "$LOG"
    "$BIN" parse "$LOG" --format "$FORMAT" -w "$w" --process --json \
      > "$DATA/floor-process-$w-$run.json" 2>/dev/null
  done
  python3 - "$DATA/summary-$w.json" "$FLOOR_RUNS" "$DATA/floor-$w" "$DATA/floor-process-$w" <<'PY'
import json, statistics, sys
full = json.load(open(sys.argv[1]))["lines_per_sec"]
runs = int(sys.argv[2])
for prefix in sys.argv[3:]:
    fs = [json.load(open(f"{prefix}-{r}.json")) for r in range(1, runs + 1)]
    elapsed = sorted(f["elapsed_secs"] for f in fs)
    rate = statistics.median(f["lines_per_sec"] for f in fs)
    f = fs[0]
    print(f"  floor {f['stage']:<17} workers={f['workers']} median of {runs}: "
          f"elapsed={statistics.median(elapsed):.2f}s (runs {' '.join(f'{e:.2f}' for e in elapsed)}) "
          f"lines/s={rate:.0f} errors={f['errors']} replay_is={rate / full:.1f}x_slower")
PY
done
