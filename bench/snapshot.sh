#!/usr/bin/env bash
# What snapshots cost a writer, how fast a clone flattens, and how fast deleting snapshots
# reclaims their space.
#
#   bench/snapshot.sh [--secs SECS] [--flatten-rate BYTES_PER_SEC]
#
# Builds the release binary and the `snapshot_bench` example, starts a manager and three
# storage nodes (one rack each) as separate processes, creates a 1 GiB volume and runs
# `snapshot_bench` on it (see its doc: QD1 4 KiB writes with a snapshot every second, then a
# flatten of a clone of the last snapshot). The flatten runs at --flatten-rate (default
# 1 GiB/s, i.e. as fast as the cluster copies; the manager's default is 64 MiB/s).
set -euo pipefail
# Plain TCP (--insecure), as before TLS existed, so its numbers compare with earlier runs;
# bench/run.sh measures what TLS costs.
export TESSERA_INSECURE=true
root=$(cd "$(dirname "$0")/.." && pwd)
secs=30 rate=$((1 << 30))
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) secs=$2; shift ;;
    --flatten-rate) rate=$2; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
(cd "$root" && cargo build --release --locked -q -p tessera --bin tessera --example snapshot_bench)
bin="$root/target/release/tessera"
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/tessera-snapbench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
mport=17700
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s/manager"\nflatten_bytes_per_sec = %s\n' $mport "$work" "$rate" > "$work/manager.toml"
"$bin" manager --config "$work/manager.toml" 2>"$work/manager.log" & pids+=($!)
wait_port $mport
for i in 1 2 3; do
  printf 'rack = "rack%s"\ndata_dir = "%s/node%s"\nlisten = "127.0.0.1:%s"\nmanagers = ["127.0.0.1:%s"]\n' \
    "$i" "$work" "$i" $((17710 + i)) $mport > "$work/storage$i.toml"
  "$bin" storage --config "$work/storage$i.toml" 2>"$work/node$i.log" & pids+=($!)
done
for i in 1 2 3; do wait_port $((17710 + i)); done
for _ in $(seq 100); do
  "$bin" --manager 127.0.0.1:$mport --output json cluster status 2>/dev/null |
    python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["groups"] and all(g["leader"] for g in s["groups"]) else 1)' && break
  sleep 0.2
done
"$bin" --manager 127.0.0.1:$mport volume create snapbench --size 1G >/dev/null
"$root/target/release/examples/snapshot_bench" 127.0.0.1:$mport snapbench "$secs"
