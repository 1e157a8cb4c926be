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

# Every test process starts its own Tansu broker (file storage, a free port,
# ended with the process): tests never share broker state or load. Set
# CHATPIPE_TEST_KAFKA=host:port to point all tests at one broker instead.

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
