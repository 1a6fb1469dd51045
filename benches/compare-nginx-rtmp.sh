#!/usr/bin/env bash
# Side-by-side load comparison of media-server and nginx-rtmp on this machine, in one run.
#
# Each server runs pinned to core 0 (taskset), the load generator (examples/loadgen.rs, one
# thread) and wrk on core 1. Installs what it needs (Debian's nginx + libnginx-mod-rtmp, wrk,
# ffmpeg), builds the release binaries, makes a 600 kbit/s FLV (H.264 + AAC, 2 s GOP) and
# measures, for both servers:
#   - players: RTMP players of one stream, added step by step until one falls more than 1 s
#     behind real time (or stalls 2 s, or fails);
#   - publishers: 600 kbit/s publishers with HLS on, added until one cannot send in real time;
#   - latency: publisher → RTMP player (both), → LL-HLS part (media-server; nginx-rtmp has no
#     LL-HLS);
#   - memory: RSS per idle publisher (one GOP sent, then silent) and per player of it;
#   - HLS delivery: wrk fetching a finished segment, a part and the media playlist (through a
#     viewer's session directory, the default mode's hot path: every request is counted) from
#     the live server vs nginx serving the same bytes as static files.
# The table goes to stdout and target/compare-nginx-rtmp/table.md (with the step tables).
#
# Usage: bash benches/compare-nginx-rtmp.sh            (full run, ~25 minutes)
#        QUICK=1 bash benches/compare-nginx-rtmp.sh    (smaller steps and caps, ~8 minutes)
#        SECTIONS="memory memory_active hls" ...        (some sections only)
#        SERVERS=ms MS_BIN=/path/to/media-server ...    (another build of media-server alone,
#                                                        e.g. the previous commit's, for before/after)
#        SERVERS=ms CODEC=hevc ...                      (the stream as HEVC over Enhanced RTMP)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n==> %s\n' "$*" >&2; }

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ] || need+=(libnginx-mod-rtmp)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fds=$(ulimit -n)
max_clients=$(( fds > 20000 ? 18000 : fds - 2000 ))

log "building release binaries"
cargo build --release --locked --bin media-server --example loadgen >&2

work=$(mktemp -d /tmp/compare-nginx-rtmp.XXXXXX)
# Step tables and results stay after the run.
out=$root/target/compare-nginx-rtmp
rm -rf "$out"; mkdir -p "$out"
servers=()
cleanup() {
  for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

flv=$work/600k.flv
if [ "${CODEC:-h264}" = hevc ]; then
  # CODEC=hevc: the same stream as HEVC over Enhanced RTMP (media-server only; nginx-rtmp
  # does not speak Enhanced RTMP).
  log "making a 600 kbit/s HEVC FLV"
  bash "$root/benches/support/make-600k-hevc-flv.sh" "$flv"
else
  log "making a 600 kbit/s FLV"
  bash "$root/benches/support/make-600k-flv.sh" "$flv"
fi

token=compare-admin-token-0123456789
ms_http=127.0.0.1:18480
ms_rtmp=127.0.0.1:11985
ng_http=127.0.0.1:28480
ng_rtmp=127.0.0.1:21985
loadgen=(taskset -c 1 "$root/target/release/examples/loadgen" --flv "$flv")

# start_ms WINDOW_SEGMENTS: media-server on core 0; sets $pid.
start_ms() {
  local dir=$work/ms
  rm -rf "$dir"; mkdir -p "$dir"
  cat > "$dir/media-server.toml" <<EOF
[server]
data_dir = "$dir/data"
[http]
listen = "$ms_http"
max_connections = 20000
[rtmp]
listen = "$ms_rtmp"
max_connections = 20000
[hls]
window_segments = $1
[auth]
admin_token = "$token"
[api]
rate_limit_per_token = 10000000
[webrtc]
enabled = false
EOF
  RUST_LOG=warn taskset -c 0 "${MS_BIN:-$root/target/release/media-server}" --config "$dir/media-server.toml" \
    >"$dir/log" 2>&1 &
  pid=$!
  servers+=("$pid")
  for _ in $(seq 100); do
    curl -sf "http://$ms_http/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "media-server did not start: $(cat "$dir/log")" >&2
  exit 1
}

# start_nginx: nginx-rtmp (one worker, HLS on, static files) on core 0; sets $pid.
start_nginx() {
  local dir=$work/nginx
  rm -rf "$dir"; mkdir -p "$dir/hls" "$dir/static"
  cat > "$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
events { worker_connections 19500; }
rtmp { server { listen $ng_rtmp; chunk_size 4096;
  application live { live on; record off; hls on; hls_path $dir/hls; hls_fragment 2s;
                     hls_playlist_length 12s; } } }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  types { video/mp4 m4s; video/mp2t ts; application/vnd.apple.mpegurl m3u8; }
  server { listen $ng_http; root $dir/static; } }
EOF
  taskset -c 0 nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
  pid=$!
  servers+=("$pid")
  for _ in $(seq 100); do
    (echo >/dev/tcp/${ng_rtmp%:*}/${ng_rtmp#*:}) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nginx did not start: $(cat "$dir/error.log")" >&2
  exit 1
}

stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; sleep 1; }

# result KIND KEY FILE: a value from the generator's RESULT line.
result() { { grep "^RESULT $1 " "$3" 2>/dev/null || true; } | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }

ms_api=(--api "http://$ms_http" --token "$token")
ms_pub="rtmp://$ms_rtmp/live/{key}"
ms_play="rtmp://$ms_rtmp/live/{id}"
ng_pub="rtmp://$ng_rtmp/live/load{n}"
ng_play="rtmp://$ng_rtmp/live/load{n}"
if [ -n "${QUICK:-}" ]; then
  player_step=2000; publisher_step=250; step_secs=4; max_publishers=2000
else
  player_step=1000; publisher_step=100; step_secs=6; max_publishers=$(( max_clients < 6000 ? max_clients : 6000 ))
fi

# SECTIONS picks parts of the run (default: all).
sections=" ${SECTIONS:-players publishers latency memory memory_active hls} "
want() { [[ "$sections" == *" $1 "* ]]; }

for server in ${SERVERS:-ms nginx}; do
  if want players; then
  log "$server: RTMP players of one stream"
  if [ $server = ms ]; then start_ms 6; else start_nginx; fi
  if [ $server = ms ]; then args=("${ms_api[@]}" players --publish "$ms_pub" --play "$ms_play")
  else args=(players --publish "$ng_pub" --play "$ng_play"); fi
  "${loadgen[@]}" --pid "$pid" "${args[@]}" --step $player_step --step-secs $step_secs \
    --max "$max_clients" 2>"$out/$server-players.err" | tee "$out/$server-players.txt" >&2
  stop
  fi

  if want publishers; then
  log "$server: publishers (HLS on)"
  if [ $server = ms ]; then start_ms 6; args=("${ms_api[@]}" publishers --publish "$ms_pub")
  else start_nginx; args=(publishers --publish "$ng_pub"); fi
  "${loadgen[@]}" --pid "$pid" "${args[@]}" --step $publisher_step --step-secs $step_secs \
    --max "$max_publishers" 2>"$out/$server-publishers.err" | tee "$out/$server-publishers.txt" >&2
  stop
  fi

  if want latency; then
  log "$server: latency"
  if [ $server = ms ]; then
    start_ms 6
    args=("${ms_api[@]}" latency --publish "$ms_pub" --play "$ms_play"
          --hls "http://$ms_http/hls/{id}/index.m3u8")
  else start_nginx; args=(latency --publish "$ng_pub" --play "$ng_play"); fi
  "${loadgen[@]}" --pid "$pid" --batch-ms 0 "${args[@]}" --secs 20 2>&1 | tee "$out/$server-latency.txt" >&2
  stop
  fi

  if want memory; then
  log "$server: memory per idle publisher and player"
  if [ $server = ms ]; then start_ms 6; args=("${ms_api[@]}" memory --publish "$ms_pub" --play "$ms_play")
  else start_nginx; args=(memory --publish "$ng_pub" --play "$ng_play"); fi
  "${loadgen[@]}" --pid "$pid" "${args[@]}" --publishers 200 --players 2000 \
    2>"$out/$server-memory.err" | tee "$out/$server-memory.txt" >&2
  stop
  fi

  if want memory_active; then
  log "$server: memory per publisher sending in real time (nobody watching) and per player of it"
  if [ $server = ms ]; then start_ms 6; args=("${ms_api[@]}" memory --publish "$ms_pub" --play "$ms_play")
  else start_nginx; args=(memory --publish "$ng_pub" --play "$ng_play"); fi
  "${loadgen[@]}" --pid "$pid" "${args[@]}" --active --publishers 200 --players 2000 \
    2>"$out/$server-memory-active.err" | tee "$out/$server-memory-active.txt" >&2
  stop
  fi
done

if want hls && [[ " ${SERVERS:-ms nginx} " == *" nginx "* ]]; then
log "HLS delivery: media-server's live segment, part and playlist vs nginx serving the same files"
start_ms 100
ms_pid=$pid
created=$(curl -sf -X POST "http://$ms_http/api/v1/streams" -H "Authorization: Bearer $token" \
  -H 'content-type: application/json' -d '{"title":"hls","app":"live","name":"hls"}')
key=$(printf '%s' "$created" | sed -n 's/.*"stream_key":"\([^"]*\)".*/\1/p')
id=$(printf '%s' "$created" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
taskset -c 1 ffmpeg -loglevel error -re -stream_loop -1 -i "$flv" -c copy -f flv \
  "rtmp://$ms_rtmp/live/$key" &
ff=$!
servers+=("$ff")
sleep 10
media=$(curl -sf "http://$ms_http/hls/$id/index.m3u8" | grep -v '^#' | head -1)
playlist_url="http://$ms_http/hls/$id/$media"
playlist=$(curl -sf "$playlist_url")
seg=$(printf '%s\n' "$playlist" | grep -v '^#' | grep 'seg' | head -1)
part=$(printf '%s\n' "$playlist" | sed -n 's/^#EXT-X-PART:.*URI="\([^"]*\)".*/\1/p' | head -1)
seg_url="http://$ms_http/hls/$id/$seg"
part_url="http://$ms_http/hls/$id/$part"
start_nginx
curl -sf "$seg_url" -o "$work/nginx/static/seg.m4s"
curl -sf "$part_url" -o "$work/nginx/static/part.m4s"
curl -sf "$playlist_url" -o "$work/nginx/static/media.m3u8"
seg_bytes=$(stat -c %s "$work/nginx/static/seg.m4s")
part_bytes=$(stat -c %s "$work/nginx/static/part.m4s")
playlist_bytes=$(stat -c %s "$work/nginx/static/media.m3u8")
# The playlist first: it grows a little as the stream goes on, the static copy does not.
taskset -c 1 wrk -t1 -c100 -d10s "$playlist_url" >"$out/wrk-ms-playlist-100.txt"
taskset -c 1 wrk -t1 -c100 -d10s "http://$ng_http/media.m3u8" >"$out/wrk-nginx-playlist-100.txt"
taskset -c 1 wrk -t1 -c100 -d10s "$part_url" >"$out/wrk-ms-part-100.txt"
taskset -c 1 wrk -t1 -c100 -d10s "http://$ng_http/part.m4s" >"$out/wrk-nginx-part-100.txt"
for c in 10 100; do
  taskset -c 1 wrk -t1 -c$c -d10s "$seg_url" >"$out/wrk-ms-$c.txt"
  taskset -c 1 wrk -t1 -c$c -d10s "http://$ng_http/seg.m4s" >"$out/wrk-nginx-$c.txt"
done
stop
pid=$ms_pid; stop
kill "$ff" 2>/dev/null || true
fi

rps() { if [ -f "$1" ]; then awk '/^Requests\/sec/ {print $2}' "$1"; fi; }
seg_bytes=${seg_bytes:-?}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
get() { result "$1" "$2" "$out/$3.txt"; }

{
  echo "| measure | media-server | nginx-rtmp 1.2.2 | ratio |"
  echo "|---|---|---|---|"
  a=$(get players max_players ms-players); b=$(get players max_players nginx-players)
  echo "| RTMP players of one 600 kbit/s stream, none > 1 s behind | **$a** (CPU $(get players server_cpu_percent ms-players) %, RSS $(get players server_rss_mib ms-players) MiB) | $b (CPU $(get players server_cpu_percent nginx-players) %, RSS $(get players server_rss_mib nginx-players) MiB) | $(ratio "$a" "$b") |"
  a=$(get publishers max_publishers ms-publishers); b=$(get publishers max_publishers nginx-publishers)
  echo "| 600 kbit/s publishers, HLS on, none > 1 s behind | **$a** (CPU $(get publishers server_cpu_percent ms-publishers) %, RSS $(get publishers server_rss_mib ms-publishers) MiB) | $b (CPU $(get publishers server_cpu_percent nginx-publishers) %, RSS $(get publishers server_rss_mib nginx-publishers) MiB) | $(ratio "$a" "$b") |"
  for c in 10 100; do
    a=$(rps "$out/wrk-ms-$c.txt"); b=$(rps "$out/wrk-nginx-$c.txt")
    echo "| HLS: one ${seg_bytes}-byte segment, wrk $c connections (requests/s) | **$a** (live, from memory) | $b (static file, sendfile) | $(ratio "$a" "$b") |"
  done
  a=$(rps "$out/wrk-ms-part-100.txt"); b=$(rps "$out/wrk-nginx-part-100.txt")
  echo "| HLS: one ${part_bytes:-?}-byte part, wrk 100 connections (requests/s) | **$a** | $b | $(ratio "$a" "$b") |"
  a=$(rps "$out/wrk-ms-playlist-100.txt"); b=$(rps "$out/wrk-nginx-playlist-100.txt")
  echo "| HLS: the ${playlist_bytes:-?}-byte media playlist (a viewer's session directory), wrk 100 connections (requests/s) | **$a** (live, rendered once per part) | $b (static file) | $(ratio "$a" "$b") |"
  echo "| latency publisher → RTMP player, p50 / p95 (ms) | **$(get latency rtmp_p50_ms ms-latency) / $(get latency rtmp_p95_ms ms-latency)** | $(get latency rtmp_p50_ms nginx-latency) / $(get latency rtmp_p95_ms nginx-latency) | |"
  echo "| latency publisher → LL-HLS part with the frame, p50 / p95 (ms) | **$(get latency part_newest_p50_ms ms-latency) / $(get latency part_newest_p95_ms ms-latency)** | no LL-HLS | |"
  echo "| RSS per idle publisher (GOP $(get memory gop_kib ms-memory) KiB) | **$(get memory kib_per_idle_publisher ms-memory) KiB** | $(get memory kib_per_idle_publisher nginx-memory) KiB | |"
  echo "| RSS per player of an idle stream | **$(get memory kib_per_idle_player ms-memory) KiB** | $(get memory kib_per_idle_player nginx-memory) KiB | |"
  echo "| RSS per 600 kbit/s publisher sending in real time, nobody watching | **$(get memory kib_per_idle_publisher ms-memory-active) KiB** | $(get memory kib_per_idle_publisher nginx-memory-active) KiB | |"
  echo "| RSS per RTMP player of a live 600 kbit/s stream (2,000 players) | **$(get memory kib_per_idle_player ms-memory-active) KiB** | $(get memory kib_per_idle_player nginx-memory-active) KiB | |"
} | tee "$out/table.md"
echo
echo "step tables:"
for f in "$out"/*-players.txt "$out"/*-publishers.txt "$out"/*-memory*.txt "$out"/wrk-*.txt; do
  [ -f "$f" ] || continue
  echo "--- $(basename "$f" .txt)"; cat "$f"
done | tee -a "$out/table.md"
