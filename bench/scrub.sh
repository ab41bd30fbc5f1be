#!/usr/bin/env bash
# What scrubbing costs a client: write and read p99 with every node scrubbing at its default
# rate against scrubbing off, as interleaved pairs, and the scrub MB/s each node reached.
#
#   bench/scrub.sh [--mib N] [--secs SECS] [--pairs P] [--period SECS] [--toggle restart|pause]
#
# Builds the release binary, starts a manager, three storage nodes (one rack each, each
# with a metrics endpoint) and the NBD gateway as separate processes, and writes N MiB
# (default 1536) into volume `data` (fio, 1 MiB sequential writes through the gateway), so
# that a pass has far more to read than a measurement lasts. Then P pairs (default 5) of
# runs, interleaved: off, on, off, on, ... Each run sets every node's `[scrub]` table and
# restarts the three nodes (SIGTERM, then start; --toggle pause keeps them running and uses
# `tessera scrub pause|start` instead):
#   off: `bytes_per_sec = 0` (scrubbing disabled);
#   on:  no `bytes_per_sec` (the default rate, 4 MiB/s) and `period_secs` = --period
#        (default 30: shorter than a pass, so one is always running), then
#        `tessera scrub start` on every node so a pass runs now.
# waits until every group has a leader plus 5 s of settling, then runs fio QD1 4 KiB random
# writes for SECS seconds (default 20), then QD1 4 KiB random reads for SECS seconds, on
# `data`. Prints each run's write and read p50/p99, the median p99 of each side, the ratio
# on/off (the issue's bound: the median rises by at most 10 %), and each node's scrub MB/s
# over each run (`tessera_scrub_bytes_checked_total` from its metrics, or `scrub status`'s
# bytes_checked if the metric is absent).
set -euo pipefail
# Plain TCP (--insecure), as before TLS existed, so its numbers compare with earlier runs;
# bench/run.sh measures what TLS costs.
export TESSERA_INSECURE=true
root=$(cd "$(dirname "$0")/.." && pwd)
mib=1536 secs=20 pairs=5 period=30 toggle=restart
while [ $# -gt 0 ]; do
  case "$1" in
    --mib) mib=$2; shift ;;
    --secs) secs=$2; shift ;;
    --pairs) pairs=$2; shift ;;
    --period) period=$2; shift ;;
    --toggle) toggle=$2; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
case "$toggle" in restart|pause) ;; *) echo "--toggle is restart or pause" >&2; exit 2 ;; esac
[ "$pairs" -ge 1 ] || { echo "--pairs must be at least 1" >&2; exit 2; }

command -v fio >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
}
fio --enghelp=nbd >/dev/null 2>&1 || { echo "this fio has no nbd engine" >&2; exit 1; }

(cd "$root" && cargo build --release --locked -q -p tessera --bin tessera)
bin="$root/target/release/tessera"
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/tessera-scrubbench.XXXXXX")
nodes=3
mport=18100 nbdport=18190
node_port() { echo $((18110 + $1)); }
metrics_port() { echo $((18180 + $1)); }
pids=()
node_pid=()
cleanup() {
  for p in "${pids[@]}" "${node_pid[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
now_ms() { date +%s%3N; }
tess() { "$bin" --manager 127.0.0.1:$mport "$@"; }

printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s/manager"\n' $mport "$work" > "$work/manager.toml"
"$bin" manager --config "$work/manager.toml" 2>"$work/manager.log" & pids+=($!)
wait_port $mport

# storage.toml of node $1 with scrubbing $2 (off | on).
node_config() {
  local i=$1 side=$2
  printf 'rack = "rack%s"\ndata_dir = "%s/node%s"\nlisten = "127.0.0.1:%s"\nmanagers = ["127.0.0.1:%s"]\nmetrics_listen = "127.0.0.1:%s"\n' \
    "$i" "$work" "$i" "$(node_port "$i")" $mport "$(metrics_port "$i")"
  if [ "$side" = off ]; then
    printf '[scrub]\nbytes_per_sec = 0\nperiod_secs = %s\n' "$period"
  else
    printf '[scrub]\nperiod_secs = %s\n' "$period"
  fi
}
start_nodes() { # side
  for i in $(seq 1 $nodes); do
    node_config "$i" "$1" > "$work/storage$i.toml"
    "$bin" storage --config "$work/storage$i.toml" 2>>"$work/node$i.log" &
    node_pid[$i]=$!
  done
  for i in $(seq 1 $nodes); do wait_port "$(node_port "$i")"; done
}
stop_nodes() {
  for i in $(seq 1 $nodes); do kill -TERM "${node_pid[$i]}" 2>/dev/null || true; done
  for i in $(seq 1 $nodes); do
    for _ in $(seq 100); do kill -0 "${node_pid[$i]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${node_pid[$i]}" 2>/dev/null || true
    wait "${node_pid[$i]}" 2>/dev/null || true
  done
}
wait_leaders() { # every group led, every node up and reporting, then 5 s to settle
  for _ in $(seq 300); do
    tess --output json cluster status 2>/dev/null | python3 -c '
import json,sys; s=json.load(sys.stdin)
ok = s["groups"] and all(g["leader"] for g in s["groups"]) and len(s["nodes"]) >= int(sys.argv[1]) \
     and all(n["state"] == "up" and (n["last_heartbeat_ms_ago"] if n["last_heartbeat_ms_ago"] is not None else 10**9) < 2000 for n in s["nodes"])
sys.exit(0 if ok else 1)' $nodes && { sleep 5; return 0; }
    sleep 0.2
  done
  echo "the cluster did not settle" >&2; exit 1
}
node_ids() { tess --output json cluster status | python3 -c '
import json,sys; print(" ".join(str(n["node_id"]) for n in json.load(sys.stdin)["nodes"]))'; }
scrub_all() { # start | pause
  for id in $(node_ids); do tess scrub "$1" "$id" >/dev/null; done
}
# Bytes each node has checked so far, one "port bytes" line per node: from its metrics
# (tessera_scrub_bytes_checked_total), else from `scrub status` (by address).
checked() {
  local status; status=$(tess --output json scrub status 2>/dev/null || echo '[]')
  for i in $(seq 1 $nodes); do
    python3 - "http://127.0.0.1:$(metrics_port "$i")/metrics" "127.0.0.1:$(node_port "$i")" "$status" <<'PY'
import json, sys, urllib.request
url, addr, status = sys.argv[1], sys.argv[2], sys.argv[3]
total = None
try:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    vals = [float(l.split()[-1]) for l in text.splitlines()
            if l.startswith("tessera_scrub_bytes_checked_total")]
    total = int(sum(vals)) if vals else None
except Exception:
    pass
if total is None:
    try:
        for n in json.loads(status):
            if n["addr"] == addr and n.get("stats"):
                total = n["stats"]["bytes_checked"]
    except Exception:
        pass
print(addr, -1 if total is None else total)
PY
  done
}

start_nodes on
wait_leaders
tess volume create data --size "${mib}M" >/dev/null
"$bin" nbd --manager 127.0.0.1:$mport --listen 127.0.0.1:$nbdport 2>"$work/nbd.log" & pids+=($!)
wait_port $nbdport
uri="nbd://127.0.0.1:$nbdport/data"
echo "writing $mib MiB into data..." >&2
fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1m --iodepth=8 --size="${mib}M" \
    --refill_buffers --output-format=json >/dev/null

run=0
: > "$work/runs"
for p in $(seq 1 "$pairs"); do
  for side in off on; do
    run=$((run + 1))
    if [ "$toggle" = restart ]; then
      stop_nodes; start_nodes "$side"; wait_leaders
      if [ "$side" = on ]; then scrub_all start; fi
    else
      if [ "$side" = on ]; then scrub_all start; else scrub_all pause; fi
      sleep 2
    fi
    echo "pair $p, scrubbing $side: ${secs}s of QD1 4 KiB random writes, then reads..." >&2
    checked > "$work/checked.$run.before"
    t0=$(now_ms)
    for rw in randwrite randread; do
      fio --name="$rw" --ioengine=nbd --uri="$uri" --rw="$rw" --bs=4k --iodepth=1 \
          --size="${mib}M" --runtime="$secs" --time_based --randrepeat=0 --norandommap \
          --output-format=json > "$work/$run.$rw.json"
    done
    t1=$(now_ms)
    checked > "$work/checked.$run.after"
    echo "$run $p $side $t0 $t1" >> "$work/runs"
  done
done
stop_nodes

python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
def lat(path, side):
    text = open(path).read()
    j = json.loads(text[text.index("{"):])["jobs"][0][side]  # the nbd engine prints a line first
    p = j["clat_ns"].get("percentile", {})
    return p.get("50.000000", 0) / 1000, p.get("99.000000", 0) / 1000, j["iops"]
def checked(path):
    return {a: int(b) for a, b in (l.split() for l in open(path) if l.strip())}
runs = [l.split() for l in open(f"{work}/runs") if l.strip()]
rows = {"off": [], "on": []}
print(f"{'pair':>4} {'scrub':>5} | {'write p50':>9} {'p99':>7} {'IOPS':>6} | {'read p50':>8} {'p99':>7} {'IOPS':>6} | scrub MB/s per node")
for run, pair, side, t0, t1 in runs:
    w50, w99, wi = lat(f"{work}/{run}.randwrite.json", "write")
    r50, r99, ri = lat(f"{work}/{run}.randread.json", "read")
    secs = (int(t1) - int(t0)) / 1000
    b, a = checked(f"{work}/checked.{run}.before"), checked(f"{work}/checked.{run}.after")
    mbs = {n: ((a[n] - b[n]) / secs / 1e6 if a.get(n, -1) >= 0 and b.get(n, -1) >= 0 else None) for n in a}
    rows[side].append({"w99": w99, "r99": r99, "mbs": mbs})
    per = " ".join(f"{n}={'?' if v is None else f'{v:.1f}'}" for n, v in sorted(mbs.items()))
    print(f"{pair:>4} {side:>5} | {w50:>9.0f} {w99:>7.0f} {wi:>6.0f} | {r50:>8.0f} {r99:>7.0f} {ri:>6.0f} | {per}")
med = lambda side, k: statistics.median(r[k] for r in rows[side])
print("\nlatencies in microseconds (fio clat, QD1 4 KiB)")
for k, what in (("w99", "write"), ("r99", "read")):
    off, on = med("off", k), med("on", k)
    ratio = on / off if off else float("nan")
    print(f"{what} p99 median: off {off:.0f} us, on {on:.0f} us, on/off {ratio:.3f} "
          f"({(ratio - 1) * 100:+.1f} %; the bound is +10 %)")
nodes = sorted({n for r in rows["on"] for n in r["mbs"]})
for n in nodes:
    on = [r["mbs"][n] for r in rows["on"] if r["mbs"].get(n) is not None]
    off = [r["mbs"][n] for r in rows["off"] if r["mbs"].get(n) is not None]
    if on:
        off_text = f"{statistics.median(off):.2f} while off" if off else "no reading while off"
        print(f"scrub MB/s of {n}: median {statistics.median(on):.1f} while on "
              f"(runs: {', '.join(f'{x:.1f}' for x in on)}); {off_text}")
    else:
        print(f"scrub MB/s of {n}: no counter (neither the metric nor scrub status)")
PY
