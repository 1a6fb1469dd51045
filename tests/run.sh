#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (Debian
# packages: ffmpeg for interop, nasm for the camera encoder's fast path, curl, chromium,
# varnish as the shared cache in front of HLS (tests/hls_cache.rs),
# nginx with libnginx-mod-rtmp/-stream as the restream target;
# aiortc and schemathesis from PyPI into venvs under target/), checks formatting and
# lints, runs every test, then schemathesis against the live server. Interop tests fail
# (not skip) under CI=true when a program is missing. Usage: bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

need_apt=()
for pair in ffmpeg:ffmpeg ffprobe:ffmpeg nasm:nasm curl:curl python3:python3 chromium:chromium varnishd:varnish; do
  program=${pair%%:*}; package=${pair##*:}
  command -v "$program" >/dev/null 2>&1 || need_apt+=("$package")
done
# nginx-rtmp (and nginx's stream module as a TLS terminator) for the restream interop tests.
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ] || need_apt+=(libnginx-mod-rtmp)
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need_apt+=(libnginx-mod-stream)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need_apt[@]}" | sort -u) >/dev/null
fi
for program in ffmpeg ffprobe chromium nginx varnishd; do
  command -v "$program" >/dev/null 2>&1 || { echo "error: $program is still missing" >&2; exit 1; }
done

# aiortc (an independent WHIP publisher) for tests/webrtc.rs, in a venv under target/.
venv=target/py-venv
if ! "$venv/bin/python" -c 'import aiortc, numpy' >/dev/null 2>&1; then
  log "installing aiortc into $venv"
  python3 -m venv "$venv" 2>/dev/null || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check "aiortc==1.16.0" "av==18.1.0" "numpy==2.4.6"
fi

# hls.js (npm) for the browser test that plays WHIP's H.264 + Opus HLS over MSE.
if [ ! -f target/npm/node_modules/hls.js/dist/hls.min.js ] || [ ! -f target/npm/node_modules/playwright-core/package.json ]; then
  command -v npm >/dev/null 2>&1 || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y -qq --no-install-recommends npm >/dev/null
  }
  log "installing hls.js into target/npm"
  mkdir -p target/npm
  npm install --silent --no-audit --no-fund --prefix target/npm "hls.js@1.7.4" >/dev/null
fi
# playwright-core (npm) drives Debian's chromium for the page tests (tests/pages.rs).
if [ ! -f target/npm/node_modules/playwright-core/package.json ]; then
  log "installing playwright-core into target/npm"
  mkdir -p target/npm
  npm install --silent --no-audit --no-fund --prefix target/npm "playwright-core@1.57.0" >/dev/null
fi

# The flood test opens ~6,000 sockets: use the hard limit on open files.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

log "cargo test (unit, in-process integration, interop with ffmpeg)"
cargo test --all-targets --locked

log "schemathesis against the live server's OpenAPI document"
bash tests/schemathesis.sh

log "all tests passed"
