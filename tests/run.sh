#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (Debian
# packages: ffmpeg for interop, nasm for the camera encoder's fast path, curl, chromium,
# varnish as the shared cache in front of HLS (tests/hls_cache.rs), PostgreSQL and Redis
# for the cluster tests (started under /tmp when the machine has none running),
# nginx with libnginx-mod-rtmp/-stream as the restream target; iptables and iproute2 for
# the WebRTC tests that put a browser in a network namespace (UDP blocked, packet loss);
# aiortc, moto (an S3-compatible server) and schemathesis from PyPI into venvs under
# target/), checks formatting and lints, runs every test, then schemathesis against the live
# server. Interop tests fail (not skip) under CI=true when a program is missing.
# Usage: bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

need_apt=()
for pair in ffmpeg:ffmpeg ffprobe:ffmpeg nasm:nasm curl:curl python3:python3 chromium:chromium varnishd:varnish psql:postgresql-client pg_isready:postgresql-client haproxy:haproxy iptables:iptables ss:iproute2 ip:iproute2; do
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

# moto's S3-compatible server for tests/recording_s3.rs (each test starts its own on a free
# port), in a venv of its own so the aiortc/av/numpy pins can't move.
moto_venv=target/moto-venv
if [ ! -x "$moto_venv/bin/moto_server" ]; then
  log "installing moto[server] into $moto_venv"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check "moto[server]==5.2.1"
fi
export MS_TEST_MOTO="$PWD/$moto_venv/bin/moto_server"

# ffmpeg 9 (PyPI imageio-ffmpeg: a static build with libx265, SVT-AV1, libopus and an FLV muxer
# that writes Enhanced RTMP) as an independent HEVC/AV1/VP9/Opus RTMP publisher and player for
# tests/codecs.rs; Debian's ffmpeg 5.1 speaks legacy RTMP only.
ffmpeg9_venv=target/ffmpeg9-venv
if ! "$ffmpeg9_venv/bin/python" -c 'import imageio_ffmpeg' >/dev/null 2>&1; then
  log "installing imageio-ffmpeg (ffmpeg 9) into $ffmpeg9_venv"
  python3 -m venv "$ffmpeg9_venv"
  "$ffmpeg9_venv/bin/pip" install -q --disable-pip-version-check "imageio-ffmpeg==0.8.1"
fi
MS_TEST_FFMPEG9="$("$ffmpeg9_venv/bin/python" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')"
export MS_TEST_FFMPEG9

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

# PostgreSQL and Redis for the cluster tests: the machine's own when they answer on
# loopback, else Debian's packages and throwaway servers (data under /tmp, loopback only).
# Every test then creates a database of its own (tests/common/services.rs).
as_service_user() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg_port=${MS_TEST_PG_PORT:-5432}
if ! { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p "$pg_port"; }; then
  if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    log "installing PostgreSQL"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)")
  pg_data=/tmp/media-server-test-pg-$pg_port
  log "starting a throwaway PostgreSQL on 127.0.0.1:$pg_port ($pg_data)"
  if [ ! -f "$pg_data/PG_VERSION" ]; then
    rm -rf "$pg_data"; mkdir -p "$pg_data"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$pg_data"
    as_service_user "$pg_bin/initdb" -D "$pg_data" -U root --auth=trust >/dev/null
  fi
  as_service_user "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_data" start >/dev/null
fi
if ! psql "postgres://root@127.0.0.1:$pg_port/postgres" -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
  psql "postgres://root@127.0.0.1:$pg_port/postgres" -qc "CREATE DATABASE test"
fi
export MS_TEST_PG_URL=${MS_TEST_PG_URL:-postgres://root@127.0.0.1:$pg_port/test}
redis_port=${MS_TEST_REDIS_PORT:-6379}
if ! (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; then
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing Redis"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  fi
  log "starting a throwaway Redis on 127.0.0.1:$redis_port"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
    --daemonize yes --dir /tmp --logfile "/tmp/media-server-test-redis-$redis_port.log"
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break; sleep 0.1; done
fi
export MS_TEST_REDIS_URL=${MS_TEST_REDIS_URL:-redis://127.0.0.1:$redis_port}

# A CI build starts from nothing and is thrown away: the incremental cache would only take
# disk (several GiB across the test binaries).
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi

# The flood test opens ~6,000 sockets: use the hard limit on open files.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

log "cargo test (unit, in-process integration, interop with ffmpeg)"
cargo test --all-targets --locked

log "the API suites again with PostgreSQL as the store (a fresh database per test)"
MS_TEST_STORE=postgres cargo test --locked --test api --test api_routes --test api_live \
  --test recording --test recording_s3 --test restream --test stats --test bad_input

log "schemathesis against the live server's OpenAPI document (SQLite, then PostgreSQL)"
bash tests/schemathesis.sh
MS_TEST_STORE=postgres bash tests/schemathesis.sh

log "all tests passed"
