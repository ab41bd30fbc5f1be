#!/usr/bin/env bash
# The deterministic Raft simulation in its long mode: the schedules CI runs (2,000 of
# them, crates/raft/src/poller/sim.rs), on a release build, batch after batch from fresh
# random seeds until MINUTES have passed, on every core.
#
#   bench/sim.sh [--minutes MINUTES] [--batch SCHEDULES] [--seed SEED]
#
# MINUTES defaults to 60, SCHEDULES per batch to 20000. --seed SEED replays one schedule
# with its trace (TESSERA_SIM_TRACE). Prints each batch's figures (schedules, faults,
# crashes, replica replacements, snapshot copies, writes, reads); the first failing
# schedule stops the run with its seed (replay it with --seed). Output also saved under
# $BENCH_DIR (default /var/tmp). Exits non-zero on a failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
minutes=60 batch=20000 seed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift ;;
    --batch) batch=$2; shift ;;
    --seed) seed=$2; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$root"
test_args=(test --release --locked -q -p tessera-raft --features failpoints --lib)
if [ -n "$seed" ]; then
  TESSERA_SIM_SEED=$seed TESSERA_SIM_TRACE=1 cargo "${test_args[@]}" \
    sim::random_schedules_keep_every_block_linearizable_0 -- --nocapture
  exit
fi
out=$(mktemp "${BENCH_DIR:-/var/tmp}/tessera-sim.XXXXXX.log")
echo "sim: ${minutes} minutes of batches of $batch schedules; output in $out" >&2
end=$(( $(date +%s) + minutes * 60 ))
total=0
while [ "$(date +%s)" -lt "$end" ]; do
  if ! TESSERA_SIM_SCHEDULES=$batch cargo "${test_args[@]}" \
      sim::random_schedules_keep_every_block_linearizable -- --nocapture >>"$out" 2>&1; then
    grep -E 'schedule 0x.* failed' "$out" | tail -1
    echo "sim: FAILED after $total schedules; full output in $out" >&2
    exit 1
  fi
  total=$((total + batch))
  grep -E '^simulated' "$out" | tail -4
done
echo "sim: $total schedules passed; output in $out"
