#!/usr/bin/env bash
# Fuzzes Tessera's targets with AFL++ (through cargo-afl, on the stable toolchain), one
# at a time, each for a bounded time, then prints per target what ran and what was found.
#
#   fuzz/run.sh --ci              every target for $FUZZ_CI_SECS seconds (default 35), the
#                                 slow manager target three times that
#   fuzz/run.sh --long SECS       every target for SECS seconds, resuming earlier long runs
#   fuzz/run.sh --ci nbd log      only the targets named
#
# Installs what it needs (cargo-afl, which builds AFL++), builds the targets instrumented
# into fuzz/target, starts each from its committed seeds (fuzz/corpus/<target>/) and
# writes AFL++'s state to fuzz/out/<target>/. Any crash or hang is copied to
# fuzz/crashes/<target>/ and the script exits 1; README.md says how one becomes a
# regression test. Builds at low priority: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")"

mode=${1:-}
case "$mode" in
  --ci) secs=${FUZZ_CI_SECS:-35}; slow_secs=$((secs * 3)); shift ;;
  --long) secs=${2:?"--long needs a number of seconds"}; slow_secs=$secs; shift 2 ;;
  *) echo "usage: $0 --ci | --long SECS  [TARGET...]" >&2; exit 2 ;;
esac
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame request nbd log raft manager)

started=$SECONDS
# AFL++ is C, built with make when cargo-afl is installed.
if ! command -v cc >/dev/null || ! command -v make >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq gcc make >/dev/null
fi
# cargo-afl builds AFL++ (without LLVM plugins: they need a nightly rustc) when installed;
# `config --build` does it again only if that was lost, and says so otherwise.
command -v cargo-afl >/dev/null || nice cargo install --locked cargo-afl --version 0.18.2
cargo afl config --build >/dev/null 2>&1 || true
{ cargo afl fuzz -h 2>&1 || true; } | grep -q '^Required parameters' ||
  { echo "AFL++ is not usable: see cargo afl config --build" >&2; exit 1; }

# Naming the host target keeps build scripts and proc macros out of the instrumented,
# optimised build (RUSTFLAGS then apply to the targets' code only): a faster build.
host=$(rustc -vV | sed -n 's/^host: //p')
bins=${CARGO_TARGET_DIR:-target}/$host/release
echo "== building ${targets[*]} (instrumented, into $bins)"
nice cargo afl build --release --locked --features afl --target "$host" \
  $(printf -- '--bin %s ' "${targets[@]}")
built=$SECONDS

# A container's defaults: no CPU frequency governor to check, cores shared (no pinning),
# no terminal, crashes not piped to a core handler.
export AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_FAST_CAL=1 AFL_QUIET=1
# The log target writes its segment files under TMPDIR: keep them in memory.
[ -d /dev/shm ] && export TMPDIR=/dev/shm
[ "$mode" = --long ] && export AFL_AUTORESUME=1

field() { sed -n "s/^$1 *: *//p" "$2"; }
# AFL++ names a finding `id:N,...,time:MS,execs:N,...`: when the first one came.
first() {
  local f
  f=$( (ls "$1"/default/crashes/id:000000* "$1"/default/hangs/id:000000* 2>/dev/null || true) | head -1)
  [ -n "$f" ] || { echo -; return; }
  echo "$(echo "$f" | sed -n 's/.*,time:\([0-9]*\).*/\1/p')ms/$(echo "$f" | sed -n 's/.*,execs:\([0-9]*\).*/\1/p')"
}
failed=0
mkdir -p out
summary=out/summary.txt
printf '\n%-8s %6s %11s %8s %7s %6s %6s %5s %s\n' target secs execs execs/s corpus edges crash hang "first (time/execs)" > "$summary"
for t in "${targets[@]}"; do
  out=out/$t
  [ "$mode" = --ci ] && rm -rf "$out"
  mkdir -p "$out"
  # Every input of `manager` starts a manager (a database, a Raft group): it runs slowly.
  t_secs=$secs; [ "$t" = manager ] && t_secs=$slow_secs
  echo "== fuzzing $t for ${t_secs}s"
  # -V stops after SECS; the timeout is a backstop. -t: an input running over 2 s is a hang.
  timeout $((t_secs + 120)) nice cargo afl fuzz -i "corpus/$t" -o "$out" -V "$t_secs" -t 2000 \
    -- "$bins/$t" >"$out/afl.log" 2>&1 || { tail -20 "$out/afl.log"; failed=1; continue; }
  # The log, raft and manager targets' scratch directories, one per process AFL++ started.
  rm -rf "${TMPDIR:-/tmp}"/tessera-fuzz-*
  s=$out/default/fuzzer_stats
  crashes=$(field saved_crashes "$s"); hangs=$(field saved_hangs "$s")
  printf '%-8s %6s %11s %8s %7s %6s %6s %5s %s\n' "$t" "$(field run_time "$s")" "$(field execs_done "$s")" \
    "$(field execs_per_sec "$s")" "$(field corpus_count "$s")" "$(field edges_found "$s")" \
    "$crashes" "$hangs" "$(first "$out")" >> "$summary"
  if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
    failed=1
    mkdir -p "crashes/$t"
    for f in "$out"/default/crashes/id:* "$out"/default/hangs/id:*; do
      [ -e "$f" ] || continue
      kind=$(basename "$(dirname "$f")")
      cp "$f" "crashes/$t/$kind-$(sha1sum "$f" | cut -c1-12)"
    done
    echo "   $t: $crashes crash(es), $hangs hang(s), inputs in fuzz/crashes/$t/"
  fi
done
cat "$summary"
echo "build $((built - started))s, fuzzing $((SECONDS - built))s, total $((SECONDS - started))s"
exit $failed
