#!/usr/bin/env bash
# What one relay hop between cluster nodes costs (issue 17), side by side with the same
# measure on the owner, in one run: two release media-server nodes in cluster mode on a fresh
# PostgreSQL database and Redis key prefix (MS_TEST_PG_URL / MS_TEST_REDIS_URL, defaults
# postgres://postgres@127.0.0.1:5432/test and redis://127.0.0.1:6379).
#   - latency publisher → RTMP player on the owner (a) and on the other node (b, through the
#     relay), p50/p95 (examples/loadgen.rs `latency`: the send time rides in an H.264 SEI);
#   - RTMP players of one stream before one falls > 1 s behind: on the owner, and on node b
#     relaying it (the node under test pinned to core 0, the generator and the other node to
#     core 1);
#   - the owner's CPU (core 0) with one local RTMP player vs with node b relaying the stream
#     to 2,000 players (what one remote node costs the owner).
# Usage: bash benches/cluster-relay.sh   (QUICK=1: bigger steps)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log() { printf '\n==> %s\n' "$*" >&2; }
command -v ffmpeg >/dev/null && command -v taskset >/dev/null && command -v psql >/dev/null || {
  echo "needs ffmpeg, taskset and psql (bash tests/run.sh installs them)" >&2; exit 1; }
pg_admin=${MS_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
redis=${MS_TEST_REDIS_URL:-redis://127.0.0.1:6379}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "building release binaries"
cargo build --release --locked --bin media-server --example loadgen >&2
work=$(mktemp -d /tmp/cluster-relay.XXXXXX)
out=$root/target/cluster-relay; rm -rf "$out"; mkdir -p "$out"
db=msbench_$$_$RANDOM
psql -q "$pg_admin" -c "CREATE DATABASE $db" >/dev/null
db_url=${pg_admin%/*}/$db
prefix=msbench:$$:$RANDOM
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

flv=$work/600k.flv
bash "$root/benches/support/make-600k-flv.sh" "$flv"
token=cluster-bench-token-0123456789
secret=cluster-bench-secret-0123456789abcdef
loadgen=(taskset -c 1 "$root/target/release/examples/loadgen" --flv "$flv")

# start NODE N CORE: a cluster node; sets pid_NODE.
start() {
  local dir=$work/$1; mkdir -p "$dir"
  cat > "$dir/node.toml" <<EOF
[server]
data_dir = "$dir/data"
[http]
listen = "127.0.0.1:1848$2"
max_connections = 20000
[rtmp]
listen = "127.0.0.1:1198$2"
max_connections = 20000
[auth]
admin_token = "$token"
[api]
rate_limit_per_token = 10000000
[webrtc]
enabled = false
[store]
url = "$db_url"
[cluster]
enabled = true
node_id = "$1"
advertise_url = "http://127.0.0.1:1848$2"
redis_url = "$redis"
redis_prefix = "$prefix"
secret = "$secret"
EOF
  RUST_LOG=warn taskset -c "$3" "$root/target/release/media-server" --config "$dir/node.toml" >"$dir/log" 2>&1 &
  local p=$!; pids+=("$p"); eval "pid_$1=$p"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:1848$2/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "node $1 did not start: $(cat "$dir/log")" >&2; exit 1
}
start a 1 0
start b 2 0
api=(--api "http://127.0.0.1:18481" --token "$token")
pub="rtmp://127.0.0.1:11981/live/{key}"

log "latency: player on the owner, then on the other node"
"${loadgen[@]}" --batch-ms 0 "${api[@]}" latency --publish "$pub" --play "rtmp://127.0.0.1:11981/live/{id}" --secs 20 \
  2>&1 | tee "$out/latency-owner.txt" >&2
"${loadgen[@]}" --batch-ms 0 "${api[@]}" latency --publish "$pub" --play "rtmp://127.0.0.1:11982/live/{id}" --secs 20 \
  2>&1 | tee "$out/latency-relay.txt" >&2

if [ -n "${QUICK:-}" ]; then step=2000; secs=4; else step=1000; secs=6; fi
log "players on the owner (a on core 0; b idle, generator on core 1)"
taskset -p -c 1 "$pid_b" >/dev/null
"${loadgen[@]}" --pid "$pid_a" "${api[@]}" players --publish "$pub" --play "rtmp://127.0.0.1:11981/live/{id}" \
  --step $step --step-secs $secs --max 18000 2>"$out/players-owner.err" | tee "$out/players-owner.txt" >&2
log "players on the other node (b on core 0; a and the generator on core 1)"
taskset -p -c 1 "$pid_a" >/dev/null; taskset -p -c 0 "$pid_b" >/dev/null
"${loadgen[@]}" --pid "$pid_b" "${api[@]}" players --publish "$pub" --play "rtmp://127.0.0.1:11982/live/{id}" \
  --step $step --step-secs $secs --max 18000 2>"$out/players-relay.err" | tee "$out/players-relay.txt" >&2
log "the owner's CPU: one local RTMP player, then 2,000 players on node b (one relay)"
taskset -p -c 0 "$pid_a" >/dev/null; taskset -p -c 1 "$pid_b" >/dev/null
"${loadgen[@]}" --pid "$pid_a" "${api[@]}" players --publish "$pub" --play "rtmp://127.0.0.1:11981/live/{id}" \
  --step 1 --step-secs 10 --max 1 2>"$out/owner-cost-local.err" | tee "$out/owner-cost-local.txt" >&2
"${loadgen[@]}" --pid "$pid_a" "${api[@]}" players --publish "$pub" --play "rtmp://127.0.0.1:11982/live/{id}" \
  --step 2000 --step-secs 10 --max 2000 2>"$out/owner-cost-relay.err" | tee "$out/owner-cost-relay.txt" >&2
echo "step tables and RESULT lines in $out" >&2
grep -h "^RESULT" "$out"/*.txt
