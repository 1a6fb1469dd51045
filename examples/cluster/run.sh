#!/usr/bin/env bash
# Three media-server nodes on one machine, sharing PostgreSQL and Redis, behind haproxy:
#   rtmp://127.0.0.1:1935/live/KEY   and   http://127.0.0.1:8080
#
#   bash examples/cluster/run.sh
#
# Needs PostgreSQL and Redis (MS_PG_URL, default postgres://postgres@127.0.0.1:5432/test;
# MS_REDIS_URL, default redis://127.0.0.1:6379) and haproxy (apt-get install haproxy).
# The admin token is printed by the first node on its first start. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
db=${MS_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
redis=${MS_REDIS_URL:-redis://127.0.0.1:6379}
secret=${MS_CLUSTER_SECRET:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}
cargo build --release
mkdir -p target/cluster-example
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
n=1
for node in a b c; do
  sed -e "s|@NODE@|$node|g" -e "s|@N@|$n|g" -e "s|@DB@|$db|" -e "s|@REDIS@|$redis|" \
      -e "s|@SECRET@|$secret|" examples/cluster/node.toml.in > "target/cluster-example/$node.toml"
  target/release/media-server --config "target/cluster-example/$node.toml" \
    > "target/cluster-example/$node.log" 2>&1 &
  pids+=($!)
  n=$((n + 1))
  sleep 1   # the first node creates the schema and the admin token
done
haproxy -f examples/cluster/haproxy.cfg -db &
pids+=($!)
echo "cluster up: rtmp://127.0.0.1:1935/live/KEY, http://127.0.0.1:8080 (logs in target/cluster-example/)"
grep -h "admin token" target/cluster-example/a.log || true
wait
