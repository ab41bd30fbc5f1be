#!/usr/bin/env bash
# Shows that the simulation finds a bug: for each NAME, builds the Raft crate with that safety
# fix turned off (`--cfg tessera_unfixed="NAME"`, values listed in the root Cargo.toml), runs
# up to SCHEDULES schedules of the simulation's first shard until one fails, prints the
# failing seed, then replays that seed on the normal (fixed) build, where it must pass.
#
#   bench/sim-unfixed.sh [--schedules N] NAME...
#
# e.g. bench/sim-unfixed.sh install_compaction lease_transfer removal_slots fresh_votes
set -euo pipefail
cd "$(dirname "$0")/.."
schedules=2000
if [ "${1:-}" = "--schedules" ]; then schedules=$2; shift 2; fi
[ $# -gt 0 ] || { sed -n '2,9p' "$0"; exit 2; }
test_name=sim::random_schedules_keep_every_block_linearizable_0
for name in "$@"; do
  start=$(date +%s)
  out=$(RUSTFLAGS="--cfg tessera_unfixed=\"$name\"" CARGO_TARGET_DIR=target/unfixed \
    TESSERA_SIM_SCHEDULES=$((schedules * 4)) \
    cargo test -q -p tessera-raft --features failpoints --lib "$test_name" -- --nocapture 2>&1 \
    | grep -E "^simulated|schedule 0x" | head -1 || true)
  echo "== $name, fix off ($(( $(date +%s) - start ))s with the build): $out"
  seed=$(echo "$out" | grep -o "TESSERA_SIM_SEED=0x[0-9a-f]*" | cut -d= -f2 || true)
  if [ -n "$seed" ]; then
    fixed=$(TESSERA_SIM_SEED=$seed cargo test -q -p tessera-raft --features failpoints --lib \
      "$test_name" -- --nocapture 2>&1 | grep -E "^simulated|schedule 0x" | head -1 || true)
    echo "   fix on, same seed: $fixed"
  fi
done
