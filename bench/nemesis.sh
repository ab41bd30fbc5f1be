#!/usr/bin/env bash
# The process-level nemesis in its long mode: the same test CI runs for about a minute
# (crates/tessera/tests/nemesis.rs), on a release build, with faults for SECS seconds.
#
#   bench/nemesis.sh [--secs SECS] [--seed SEED] [--keep]
#
# SECS defaults to 1800 (30 minutes). SEED (decimal or 0x hex) replays the random choices
# of a previous run; --keep keeps every process's log and the full history (history.txt)
# even when the run passes (a failing run always keeps them). Prints the nemesis timeline
# and its summary: operations, faults fired, violations; the whole output is also saved
# under $BENCH_DIR (default /var/tmp). Exits non-zero on a violation or a missed minimum.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=1800 seed="" keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) secs=$2; shift ;;
    --seed) seed=$2; shift ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || { echo "needs kill(1) (procps)" >&2; exit 1; }

out=$(mktemp "${BENCH_DIR:-/var/tmp}/tessera-nemesis.XXXXXX.log")
echo "nemesis: ${secs}s of faults; output in $out" >&2
export TESSERA_NEMESIS_SECS=$secs
[ -n "$seed" ] && export TESSERA_NEMESIS_SEED=$seed
[ -n "$keep" ] && export TESSERA_NEMESIS_KEEP=1
cd "$root"
cargo build --release --locked -q -p tessera
status=0
cargo test --release --locked -q -p tessera --all-features --test nemesis \
  every_block_stays_linearizable -- --nocapture --test-threads=1 2>&1 | tee "$out" \
  | grep -E '^(nemesis: |\[ *[0-9.]+s\] nemesis|checker self-test|VIOLATION|    |cluster files kept)' \
  || true
grep -q 'test result: ok' "$out" || status=1
echo
sed -n '/^nemesis summary/,/violations:/p' "$out"
[ $status -eq 0 ] && echo "PASS" || echo "FAIL (full output: $out)"
exit $status
