#!/usr/bin/env bash
# Live latency: lines fed at a fixed rate, event time = arrival time (`feed --retime`), through
# the file follower or through Kafka; the engine reports p50/p99/max from a line being read to
# the decisions of its tick being written (see src/latency.rs).
#
#   scripts/bench-latency.sh file  SECONDS RATE...      e.g. scripts/bench-latency.sh file 30 10000 50000 100000
#   scripts/bench-latency.sh kafka SECONDS RATE...      (needs the tansu broker scripts/test.sh builds)
#
# Window 300 s, slide 100 ms, allowed lateness 0 (lines arrive in order; a deployment adds its
# chosen lateness to every figure), 2 workers. Input: the 1M-line generated file, looped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bench-lib.sh

MODE=${1:?file or kafka}
SECONDS_PER_RUN=${2:-30}
shift 2
RATES=("$@")
[ ${#RATES[@]} -eq 0 ] && RATES=(10000 50000 100000)

# ANTISPIDER_BIN compares another build (e.g. a copy of an earlier one) on the same traffic.
BIN=${ANTISPIDER_BIN:-target/release/antispider}
[ -n "${ANTISPIDER_BIN:-}" ] || cargo build --release --quiet
DATA=target/bench-data
mkdir -p "$DATA"
SRC="$DATA/gen-1000000-60m.cs.log"
[ -f "$SRC" ] || "$BIN" gen --lines 1000000 --minutes 60 -o "$SRC"
TOOLS=${ANTISPIDER_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/antispider-tools}

machine_header "mode=$MODE"
for rate in "${RATES[@]}"; do
  OUT="$DATA/latency-$MODE-$rate"
  rm -rf "$OUT"; mkdir -p "$OUT"
  CFG="$OUT/config.toml"
  BROKER_PID=
  if [ "$MODE" = kafka ]; then
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$TOOLS/bin/tansu" broker --listener-url "tcp://127.0.0.1:$PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine memory://tansu/ \
      > "$OUT/tansu.log" 2>&1 &
    BROKER_PID=$!
    sleep 1
    "$BIN" produce /dev/null --brokers "127.0.0.1:$PORT" --topic logs --partitions 2 2>/dev/null
    cat > "$CFG" <<EOF
[source]
kind = "kafka"
[kafka]
brokers = "127.0.0.1:$PORT"
group_id = "bench"
source_topics = [{ name = "logs", format = "cs" }]
EOF
  else
    : > "$OUT/live.log"
    cat > "$CFG" <<EOF
[source]
kind = "file"
path = "$OUT/live.log"
format = "cs"
follow = true
EOF
  fi
  cat >> "$CFG" <<EOF
[rules]
dir = "rules"
watch = false
[window]
length_ms = 300000
slide_ms = 100
allowed_lateness_ms = 0
[output]
dir = "$OUT"
[anomaly]
enabled = false
[engine]
workers = 2
EOF
  warm_input "$SRC"
  /usr/bin/time -v "$BIN" run --config "$CFG" > /dev/null 2> "$OUT/engine.txt" &
  ENGINE=$!
  sleep 1
  if [ "$MODE" = kafka ]; then
    "$BIN" feed "$SRC" --to /dev/stdout --rate "$rate" --seconds "$SECONDS_PER_RUN" --retime 2> "$OUT/feed.txt" \
      | "$BIN" produce - --brokers "127.0.0.1:$PORT" --topic logs --partitions 2 2> "$OUT/produce.txt"
  else
    "$BIN" feed "$SRC" --to "$OUT/live.log" --rate "$rate" --seconds "$SECONDS_PER_RUN" --retime 2> "$OUT/feed.txt"
  fi
  sleep 3
  # The engine is the child of `time`, whatever the binary is named (ANTISPIDER_BIN).
  kill -INT "$(pgrep -P "$ENGINE" || echo "$ENGINE")" 2>/dev/null || true
  wait "$ENGINE" || true
  [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null || true
  echo "rate=$rate lines/s mode=$MODE seconds=$SECONDS_PER_RUN"
  grep -E "achieved|lines/s" "$OUT/feed.txt" | tail -1 | sed 's/^/  feed: /'
  grep -E "^lines read|^latency|late " "$OUT/engine.txt" | sed 's/^/  /'
  grep -E "Maximum resident" "$OUT/engine.txt" | sed 's/^\s*/  /'
done
