#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (Debian
# packages: ffmpeg for interop, nasm for the camera encoder's fast path, curl; schemathesis
# from PyPI into a venv), checks formatting and lints, runs every test, then schemathesis
# against the live server. Interop tests fail (not skip) under CI=true when a program
# is missing. Usage: bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

need_apt=()
for pair in ffmpeg:ffmpeg ffprobe:ffmpeg nasm:nasm curl:curl python3:python3 chromium:chromium; do
  program=${pair%%:*}; package=${pair##*:}
  command -v "$program" >/dev/null 2>&1 || need_apt+=("$package")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need_apt[@]}" | sort -u) >/dev/null
fi
for program in ffmpeg ffprobe chromium; do
  command -v "$program" >/dev/null 2>&1 || { echo "error: $program is still missing" >&2; exit 1; }
done

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

log "cargo test (unit, in-process integration, interop with ffmpeg)"
cargo test --all-targets --locked

log "schemathesis against the live server's OpenAPI document"
bash tests/schemathesis.sh

log "all tests passed"
