#!/usr/bin/env bash
# Runs every check of chatpipe: formatting, clippy (warnings are errors),
# unit and property tests, and the integration and end-to-end tests against a
# real Tansu broker and a real PostgreSQL. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
export CHATPIPE_SETUP_CHROMIUM=1
source scripts/setup.sh

step() { printf '\n\033[1;32m==> %s\033[0m\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building all binaries"
cargo build --workspace --bins --locked

# A shared broker for the tests (each test makes its own topics), with file
# storage: Tansu 0.6.0's memory engine misreports end offsets and cannot
# fetch from inside a multi-record batch. Tests that
# stop and restart a broker start their own.
state=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
step "starting the test broker on 127.0.0.1:$port"
( cd "$state" && exec tansu broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine sqlite://tansu.db \
    >"$state/tansu.log" 2>&1 ) &
broker_pid=$!
cleanup() { kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; rm -rf "$state"; }
trap cleanup EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
export CHATPIPE_TEST_KAFKA="127.0.0.1:$port"

# Databases left behind by an interrupted earlier run.
psql -h 127.0.0.1 -U postgres -d postgres -tAc \
  "select datname from pg_database where datname like 'cp_test_%'" | while read -r db; do
  [ -n "$db" ] && psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists \"$db\" with (force)" >/dev/null
done

step "tests (unit, property, integration, end to end)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
