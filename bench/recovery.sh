#!/usr/bin/env bash
# Re-replication after a node is lost for good, measured.
#
#   bench/recovery.sh [--size SIZE] [--rate BYTES_PER_SEC] [--nodes N]
#
# Starts a manager (suspect 1 s, down 3 s) and N storage nodes (one rack each, default 4),
# fills a volume of SIZE (default 2GiB) with random data, measures client write latency
# (4 KiB, QD1, loadgen) while healthy, SIGKILLs the node holding the most replicas, and
# measures, from detection (the node marked down) to every group being back to three
# replicas without it: bytes copied into the receiving nodes (from their logs), the rate
# per receiving node, and client write latency meanwhile. Prints fio's sequential write
# rate on the same filesystem beside it. RATE is each node's recovery_bytes_per_sec.
set -euo pipefail
# Plain TCP (--insecure), as before TLS existed, so its numbers compare with earlier runs;
# bench/run.sh measures what TLS costs.
export TESSERA_INSECURE=true
root=$(cd "$(dirname "$0")/.." && pwd)
size=2GiB rate=$((1 << 30)) nodes=4
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift ;;
    --rate) rate=$2; shift ;;
    --nodes) nodes=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v fio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }

(cd "$root" && cargo build --release --locked -q -p tessera && cargo build --release --locked -q -p tessera-client --example loadgen)
bin="$root/target/release/tessera" loadgen="$root/target/release/examples/loadgen"
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/tessera-recovery.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
now() { date +%s.%N; }

mport=18400
m=127.0.0.1:$mport
printf 'listen = "%s"\ndata_dir = "%s/manager"\nsuspect_after_ms = 1000\ndown_after_ms = 3000\nreconcile_ms = 500\n' $m "$work" > "$work/manager.toml"
"$bin" manager --config "$work/manager.toml" 2>"$work/manager.log" & pids+=($!)
wait_port $mport
declare -A node_pid
for i in $(seq 1 "$nodes"); do
  printf 'rack = "rack%s"\ndata_dir = "%s/node%s"\nlisten = "127.0.0.1:%s"\nmanagers = ["%s"]\nheartbeat_ms = 200\nrecovery_bytes_per_sec = %s\n' \
    "$i" "$work" "$i" $((18500 + i)) $m "$rate" > "$work/storage$i.toml"
  "$bin" storage --config "$work/storage$i.toml" 2>"$work/node$i.log" & pids+=($!); node_pid[$i]=$!
done
for i in $(seq 1 "$nodes"); do wait_port $((18500 + i)); done
status() { "$bin" --manager $m --output json cluster status; }
for _ in $(seq 100); do
  status 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["groups"] and all(g["leader"] for g in s["groups"]) else 1)' && break
  sleep 0.2
done
"$bin" --manager $m volume create rec --size "$size" >/dev/null
head -c "$(numfmt --from=iec-i "${size%B}")" /dev/urandom > "$work/fill.img"
"$bin" --manager $m volume import rec "$work/fill.img" >/dev/null
rm -f "$work/fill.img"
sleep 2

echo "healthy: 4 KiB writes, QD1, 10 s"
"$loadgen" $m rec write 4096 1 10 | tee "$work/healthy.txt"

victim=$(status | python3 -c '
import json,sys
s=json.load(sys.stdin)
best=max(s["nodes"], key=lambda n: n["replicas"])
print(best["addr"].rsplit(":",1)[1], best["node_id"], best["replicas"])')
read -r vport vid vreplicas <<<"$victim"
vi=$((vport - 18500))
echo "killing node $vid (rack$vi, $vreplicas replicas)"
"$loadgen" $m rec write 4096 1 "${DURING_SECS:-20}" > "$work/during.txt" & lg=$!
kill -9 "${node_pid[$vi]}"
t_kill=$(now)
until status | python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if any(n['node_id']==$vid and n['state']=='down' for n in s['nodes']) else 1)"; do sleep 0.1; done
t_detect=$(now)
until status | python3 -c "
import json,sys
s=json.load(sys.stdin)
ok=all(len(g['replicas'])==3 and all(r['node_id']!=$vid for r in g['replicas']) and not g['moving_to'] for g in s['groups'])
sys.exit(0 if ok else 1)"; do sleep 0.2; done
t_done=$(now)
wait $lg

moved=0 receivers=0
for i in $(seq 1 "$nodes"); do
  [ "$i" = "$vi" ] && continue
  b=$(grep -o 'snapshot copied.*bytes[^ ]*=[^ ]*[0-9]*' "$work/node$i.log" | grep -o '[0-9]*$' | paste -sd+ | bc 2>/dev/null || echo 0)
  b=${b:-0}
  [ "$b" -gt 0 ] && receivers=$((receivers + 1))
  moved=$((moved + b))
done
fio --name=seq --filename="$work/fio.tmp" --rw=write --bs=1M --size=1G --direct=1 --ioengine=libaio \
  --iodepth=4 --output-format=json > "$work/fio.json" 2>/dev/null
disk=$(python3 -c "import json; j=json.load(open('$work/fio.json')); print(round(j['jobs'][0]['write']['bw_bytes']/1e6))")
python3 - "$t_kill" "$t_detect" "$t_done" "$moved" "$receivers" "$disk" <<'EOF'
import sys
k, d, f, moved, recv, disk = map(float, sys.argv[1:])
secs = f - d
rate = moved / 1e6 / secs / max(recv, 1)
print(f"detected {d-k:.1f} s after the kill; healed {secs:.1f} s after detection")
print(f"moved {moved/2**30:.2f} GiB into {int(recv)} nodes: {rate:.0f} MB/s per receiving node "
      f"(fio sequential write on this disk: {disk:.0f} MB/s)")
EOF
echo "client writes from the kill on (${DURING_SECS:-20} s, spanning detection and recovery):"
cat "$work/during.txt"
