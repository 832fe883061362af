#!/usr/bin/env bash
# Memory under IP churn: every request from a new IP, at a steady rate of event time.
#
#   scripts/bench-churn.sh [MINUTES...]          (default: 10 30)
#   RATE=1000 WORKERS=1 FORMAT=cs WINDOW_MIN=5 scripts/bench-churn.sh 10 30
#
# For each length it generates `antispider gen --churn` (RATE lines/s of event time, so
# RATE*60*MINUTES lines and as many distinct IPs) into target/bench-data/, replays it under
# /usr/bin/time -v and prints lines/s and peak RSS: bounded memory = the peak RSS does not grow
# with the length. Then it replays the longest file once more, sampling VmRSS every 0.5 s
# (samples in target/bench-data/churn-rss-*.csv), and prints min/median/max of the samples
# taken after the first window (by the replay's read position in the file, which is
# proportional to event time here): flat RSS under churn = max close to min.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bench-lib.sh

MINUTES=("$@")
[ ${#MINUTES[@]} -eq 0 ] && MINUTES=(10 30)
RATE=${RATE:-1000}
WORKERS=${WORKERS:-1}
FORMAT=${FORMAT:-cs}
WINDOW_MIN=${WINDOW_MIN:-5}

need_gnu_time
cargo build --release --quiet
BIN=target/release/antispider
DATA=target/bench-data
mkdir -p "$DATA"

machine_header "churn at $RATE lines/s of event time, $FORMAT, workers=$WORKERS"
LONGEST=0
for m in "${MINUTES[@]}"; do
  lines=$(( RATE * 60 * m ))
  LOG="$DATA/churn-$RATE-${m}m.$FORMAT.log"
  [ -f "$LOG" ] || "$BIN" gen --churn --lines "$lines" --minutes "$m" --format "$FORMAT" -o "$LOG"
  (( m > LONGEST )) && LONGEST=$m
  warm_input "$LOG"
  /usr/bin/time -v "$BIN" replay "$LOG" --format "$FORMAT" --out "$DATA/churn-out-$m" -w "$WORKERS" --json \
    > "$DATA/churn-summary-$m.json" 2> "$DATA/churn-time-$m.txt"
  python3 - "$DATA/churn-summary-$m.json" "$DATA/churn-time-$m.txt" "$m" "$lines" <<'PY'
import json, re, sys
s = json.load(open(sys.argv[1]))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(sys.argv[2]).read()).group(1))
print(f"minutes={sys.argv[3]} lines={sys.argv[4]} distinct_ips={sys.argv[4]} elapsed={s['elapsed_secs']:.1f}s "
      f"lines/s={s['lines_per_sec']:.0f} windowed={s['counters']['windowed']} peak_rss={rss/1024:.0f}MiB")
PY
done

# RSS over time during one replay of the longest file.
LOG="$DATA/churn-$RATE-${LONGEST}m.$FORMAT.log"
warm_input "$LOG"
python3 - "$BIN" "$LOG" "$FORMAT" "$WORKERS" "$DATA" "$LONGEST" "$WINDOW_MIN" <<'PY'
import os, statistics, subprocess, sys, time
bin_, log, fmt, workers, data, minutes, window = sys.argv[1:]
size = os.path.getsize(log)
real = os.path.realpath(log)
csv = f"{data}/churn-rss-{minutes}m.csv"
with open(f"{data}/churn-sampled-summary.json", "w") as out, open(f"{data}/churn-sampled-err.txt", "w") as err:
    p = subprocess.Popen([bin_, "replay", log, "--format", fmt, "--out", f"{data}/churn-out-sampled",
                          "-w", workers, "--json"], stdout=out, stderr=err)
    t0 = time.time()
    samples = []  # (seconds, fraction of the file read, rss MiB)
    while p.poll() is None:
        try:
            rss = next(int(l.split()[1]) for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS:"))
            pos = []
            for fd in os.listdir(f"/proc/{p.pid}/fd"):
                try:
                    if os.readlink(f"/proc/{p.pid}/fd/{fd}") == real:
                        pos.append(int(open(f"/proc/{p.pid}/fdinfo/{fd}").readline().split()[1]))
                except OSError:
                    pass
            # Each worker reads the whole file; the slowest one bounds the event time.
            frac = min(pos) / size if pos else (1.0 if samples else 0.0)
            samples.append((time.time() - t0, frac, rss / 1024))
        except (OSError, StopIteration):
            pass
        time.sleep(0.5)
    if p.returncode != 0:
        sys.exit(f"replay failed ({p.returncode}), see {data}/churn-sampled-err.txt")
with open(csv, "w") as f:
    f.write("seconds,file_fraction,rss_mib\n")
    for s in samples:
        f.write(f"{s[0]:.1f},{s[1]:.4f},{s[2]:.1f}\n")
first = float(window) / float(minutes)
after = [s[2] for s in samples if first <= s[1] < 1.0]
if len(after) < 2:
    sys.exit(f"too few samples after the first window ({len(after)}); use a longer file")
half = len(after) // 2
print(f"rss_over_time minutes={minutes} samples_after_first_window={len(after)} "
      f"min={min(after):.0f}MiB median={statistics.median(after):.0f}MiB max={max(after):.0f}MiB "
      f"median_first_half={statistics.median(after[:half]):.0f}MiB "
      f"median_second_half={statistics.median(after[half:]):.0f}MiB (samples: {csv})")
PY
