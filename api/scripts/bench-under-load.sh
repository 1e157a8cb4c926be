#!/usr/bin/env bash
# Benchmarks GET /conversations/{id}/ while the ingest and the processor are
# under load: a private Tansu broker, a dedicated database, release builds
# of ingest, processor, api and loadgen, all on loopback. Prints the
# loadgen's and the bench's numbers. Everything started here is stopped on
# exit (by pid).
#
# Usage: api/scripts/bench-under-load.sh [loadgen rate msg/s, default 2000;
#        0 = no load, for a baseline with the same processes]
set -euo pipefail
RATE=${1:-2000}
T=${CARGO_TARGET_DIR:-$HOME/.cache/chatpipe/target}/release
TANSU=${CHATPIPE_TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
DB=postgres://postgres@127.0.0.1:5432/chatpipe_api_bench_load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BROKERS=127.0.0.1:$(free_port)
INGEST=127.0.0.1:$(free_port); API=127.0.0.1:$(free_port); PROC=127.0.0.1:$(free_port)
TOPIC=bench.events
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
alive() { for p in "${PIDS[@]}"; do kill -0 "$p" || { echo "process $p exited (port taken?)" >&2; exit 1; }; done; }
trap cleanup EXIT

psql -U postgres -h 127.0.0.1 -qc "DROP DATABASE IF EXISTS chatpipe_api_bench_load WITH (FORCE)"
CHATPIPE_POSTGRES_URL=$DB "$T/chatpipe-admin" migrate >/dev/null
(cd "$WORK"; exec "$TANSU" broker --listener-url tcp://$BROKERS --advertised-listener-url tcp://$BROKERS \
    --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1) & PIDS+=($!)
sleep 2; alive
CHATPIPE_KAFKA_BROKERS=$BROKERS CHATPIPE_KAFKA_TOPIC=$TOPIC "$T/chatpipe-admin" ensure-topic --partitions 4 >/dev/null
export CHATPIPE_POSTGRES_URL=$DB CHATPIPE_KAFKA_BROKERS=$BROKERS CHATPIPE_KAFKA_TOPIC=$TOPIC CHATPIPE_LOG=warn
CHATPIPE_LISTEN=$INGEST "$T/chatpipe-ingest" & PIDS+=($!)
CHATPIPE_LISTEN=$PROC CHATPIPE_PROCESSOR_REPLICAS=1 CHATPIPE_PROCESSOR_ORDINAL=0 "$T/chatpipe-processor" & PIDS+=($!)
CHATPIPE_LISTEN=$API "$T/chatpipe-api" & PIDS+=($!)
for addr in $INGEST $API $PROC; do
  for _ in $(seq 100); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.1; done
done
alive
LOADGEN=
if [ "$RATE" != 0 ]; then
"$T/chatpipe-loadgen" --url http://$INGEST --rate "$RATE" --conversations 2000 \
    --concurrency 32 --duration 40s >"$WORK/loadgen.out" 2>&1 & LOADGEN=$!; PIDS+=($LOADGEN)
sleep 6
fi
echo "== api under ingest+processor load (loadgen target $RATE msg/s)"
"$T/chatpipe-api-bench" --postgres-url "$DB" --fresh false --api-url http://$API \
    --duration 8s --conversations 1000
if [ -n "$LOADGEN" ]; then
  wait "$LOADGEN" || true
  echo "== loadgen"
  cat "$WORK/loadgen.out"
fi
echo "== processor metrics (excerpt)"
curl -s http://$PROC/metrics | grep -E '^chatpipe_processor_(records|replies|messages)[a-z_]*_total' | head -10 || true
