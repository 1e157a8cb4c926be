#!/usr/bin/env bash
# Runs the whole chatpipe pipeline locally: the Tansu broker, PostgreSQL
# (database `chatpipe`, migrated), ingest, processors and the api, from the
# ChatPipeline manifest examples/local.yaml (or the file given), with local
# mode (chatpipe-local). Installs what is missing first. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
manifest="${1:-examples/local.yaml}"
printf '\033[1;32m==> building release binaries\033[0m\n' >&2
cargo build --release --workspace --bins --locked
exec "$CARGO_TARGET_DIR/release/chatpipe-local" -f "$manifest"
