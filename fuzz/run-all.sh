#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60) over its scratch corpus and the
# checked-in regression corpus (fuzz/seeds/TARGET: valid inputs plus every input that once
# crashed a target, kept after the fix). Fails (exit 1) if any target crashes, leaks, times
# out or runs out of memory; the reproducer is in fuzz/artifacts/TARGET/.
#
#   bash fuzz/run-all.sh            # 60 s per target
#   bash fuzz/run-all.sh 600        # 10 min per target
#   TARGETS="rtmp_chunk amf0" bash fuzz/run-all.sh 30
#
# Needs cargo-fuzz (installed here if missing). A stable toolchain works with
# RUSTC_BOOTSTRAP=1 (set below). Output of each run: fuzz/target/logs/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=${TARGETS:-$(cargo fuzz list)}
mkdir -p fuzz/target/logs
failed=()
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  dirs=("fuzz/corpus/$t")
  [ -d "fuzz/seeds/$t" ] && dirs+=("fuzz/seeds/$t")
  log="fuzz/target/logs/$t.log"
  printf '==> %s: %s s ... ' "$t" "$secs"
  if nice -n 10 cargo fuzz run "$t" "${dirs[@]}" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    echo "ok ($runs runs)"
  else
    echo "FAILED (see $log; reproducer in fuzz/artifacts/$t/)"
    tail -n 25 "$log" | sed 's/^/    /'
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]}" >&2
  echo "fix the bug, then copy the reproducer into fuzz/seeds/TARGET/ as a regression input" >&2
  exit 1
fi
echo "all targets ran ${secs} s without a crash"
