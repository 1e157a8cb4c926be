#!/usr/bin/env bash
# Installs what chatpipe needs on this machine and skips what is present:
# Debian packages for building, a running PostgreSQL on 127.0.0.1:5432 that
# accepts the `postgres` user from loopback, and the Tansu broker (pinned).
# Sourced by scripts/run.sh and scripts/test.sh; safe to run on its own.
#
#   CHATPIPE_SETUP_CHROMIUM=1   also install Debian's chromium (viewer tests)
set -euo pipefail

TANSU_VERSION=0.6.0
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[setup] %s\033[0m\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
export PATH="$HOME/.cargo/bin:$PATH"

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  if [ $apt_updated -eq 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- Rust toolchain ---------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup, Rust >= 1.85) first"

# --- Build dependencies (librdkafka is built from source by rdkafka-sys) ------
# libssl-dev: librdkafka's TLS and SASL/SCRAM (rdkafka's `ssl` feature);
# stunnel4: the TLS endpoint of the Kafka TLS test (tests/tests/kafka_tls.rs).
apt_install ca-certificates build-essential pkg-config perl python3 zlib1g-dev curl procps \
  libssl-dev stunnel4

# --- PostgreSQL -------------------------------------------------------------
pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready >/dev/null; then
  apt_install postgresql postgresql-client
fi
if ! pg_ready; then
  for ver in $(ls /etc/postgresql 2>/dev/null); do
    log "starting PostgreSQL $ver"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || true
  done
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
  pg_ready || die "PostgreSQL is not answering on 127.0.0.1:5432"
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
  # A fresh Debian cluster asks for a password on TCP; trust loopback for
  # this development machine, as the project's URLs assume.
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | head -n 1)
  [ -n "$hba" ] || die "cannot connect as postgres@127.0.0.1 and no pg_hba.conf found to fix it"
  log "allowing the postgres user from loopback (trust) in $hba"
  $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  ver=$(basename "$(dirname "$(dirname "$hba")")")
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
  sleep 1
  psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null || die "still cannot connect to PostgreSQL as postgres"
fi

# --- Tansu (Kafka-protocol broker) --------------------------------------------
tansu_ok() { command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; }
if ! tansu_ok; then
  log "installing tansu $TANSU_VERSION with cargo (about 10 minutes on 2 cores, once per machine)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
  tansu_ok || die "tansu $TANSU_VERSION did not install"
fi

# --- Chromium for the viewer test -------------------------------------------
if [ "${CHATPIPE_SETUP_CHROMIUM:-0}" = 1 ] && ! command -v chromium >/dev/null; then
  apt_install chromium
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chatpipe/target}"
log "ready (cargo target dir: $CARGO_TARGET_DIR)"
