#!/usr/bin/env bash
# Property/schema test of the live server against its own OpenAPI document with schemathesis
# (PyPI, in a venv under target/): every operation, generated and stateful requests; fails on
# any 5xx, any response that does not match the document, or a schema-violating request that
# is accepted. Called by tests/run.sh after `cargo test` (which built target/debug/media-server).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/schemathesis-venv
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==4.32.5"
fi

work=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(port); rtmp_port=$(port)
token="schemathesis-admin-token-$(date +%s)"
cat > "$work/media-server.toml" <<TOML
[server]
data_dir = "$work/data"
[http]
listen = "127.0.0.1:$http_port"
[rtmp]
listen = "127.0.0.1:$rtmp_port"
[auth]
admin_token = "$token"
[api]
rate_limit_per_token = 1000000
rate_limit_per_ip = 1000000
TOML
# MS_TEST_STORE=postgres: the same run on a fresh PostgreSQL database (tests/run.sh runs both).
if [ "${MS_TEST_STORE:-}" = postgres ]; then
  admin_url=${MS_TEST_PG_URL:-postgres://root@127.0.0.1:5432/test}
  db="ms_schemathesis_$(date +%s)_$$"
  psql "$admin_url" -qc "CREATE DATABASE $db"
  printf '[store]\nurl = "%s"\n' "${admin_url%/*}/$db" >> "$work/media-server.toml"
  echo "schemathesis on PostgreSQL (database $db)"
fi
target/debug/media-server --config "$work/media-server.toml" > "$work/server.log" 2>&1 &
server=$!
cleanup() {
  kill $server 2>/dev/null || true; wait $server 2>/dev/null || true
  if [ -n "${db:-}" ]; then psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true; fi
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

"$venv/bin/st" run "http://127.0.0.1:$http_port/api/v1/openapi.json" \
  --url "http://127.0.0.1:$http_port" \
  -H "Authorization: Bearer $token" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples 50 --seed 1 --no-color

if grep -E 'panicked' "$work/server.log"; then
  echo "error: the server panicked during the schemathesis run" >&2
  exit 1
fi
echo "schemathesis: no failures"
