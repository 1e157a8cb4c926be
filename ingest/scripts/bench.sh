#!/usr/bin/env bash
# Ingest benchmark: starts a Tansu broker of its own (storage `memory` or
# `sqlite`, first argument, default memory), a fresh Postgres database, the
# release `chatpipe-ingest`, and runs `chatpipe-loadgen` against it; prints
# the load generator's summary and the CPU seconds each process used.
# Extra arguments go to the load generator, e.g.
#   ingest/scripts/bench.sh memory --concurrency 256 --duration 20s
# Needs: tansu on PATH or ~/.cargo/bin, Postgres on 127.0.0.1:5432 (user
# postgres, trust), and `cargo build --release -p chatpipe-ingest -p chatpipe-tools`.
set -euo pipefail
cd "$(dirname "$0")/../.."
storage="${1:-memory}"; shift || true
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release"
tansu="$(command -v tansu || echo "$HOME/.cargo/bin/tansu")"
work="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kport=$(free_port); iport=$(free_port)
db="chatpipe_bench_$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
case "$storage" in
  memory) engine="memory://tansu/" ;;
  sqlite) engine="sqlite://tansu.db" ;;
  *) echo "storage must be memory or sqlite" >&2; exit 2 ;;
esac
(cd "$work" && exec "$tansu" broker --listener-url "tcp://127.0.0.1:$kport" \
  --advertised-listener-url "tcp://127.0.0.1:$kport" --storage-engine "$engine" >"$work/tansu.log" 2>&1) &
tansu_pid=$!; pids+=("$tansu_pid")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$kport") 2>/dev/null && break; sleep 0.1; done
export CHATPIPE_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/$db"
export CHATPIPE_KAFKA_BROKERS="127.0.0.1:$kport" CHATPIPE_KAFKA_TOPIC=chatpipe.events
"$bin/chatpipe-admin" --log warn migrate >/dev/null
"$bin/chatpipe-admin" --log warn ensure-topic --partitions 8 >/dev/null
CHATPIPE_LISTEN="127.0.0.1:$iport" CHATPIPE_LOG=warn "$bin/chatpipe-ingest" >"$work/ingest.log" 2>&1 &
ingest_pid=$!; pids+=("$ingest_pid")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$iport/readyz" >/dev/null && break; sleep 0.1; done

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
pg_ticks() { local t=0; for p in $(pgrep -u postgres postgres); do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
i0=$(ticks "$ingest_pid"); k0=$(ticks "$tansu_pid"); p0=$(pg_ticks)
echo "broker storage: $storage; machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -f "loadgen cpu: %U s user + %S s sys" \
  "$bin/chatpipe-loadgen" --url "http://127.0.0.1:$iport" "$@"
i1=$(ticks "$ingest_pid"); k1=$(ticks "$tansu_pid"); p1=$(pg_ticks)
hz=$(getconf CLK_TCK)
secs() { awk -v t="$1" -v hz="$hz" 'BEGIN{if (t < 0) print "n/a"; else printf "%.2f", t/hz}'; }
echo "cpu seconds (whole run incl. conversation set-up): ingest $(secs $((i1-i0))) tansu $(secs $((k1-k0))) postgres $(secs $((p1-p0))) (postgres: backends alive at both ends only)"
curl -s "http://127.0.0.1:$iport/metrics" | grep -E '^chatpipe_ingest_(requests_total|status_lookup_batch_size_(sum|count)|produce_failures_total)' || true
