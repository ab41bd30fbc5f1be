#!/usr/bin/env bash
# Tessera against the single-node limit of this machine, in one run.
#
#   bench/run.sh [--quick] [--runtime SECS] [--size SIZE] [--nodes N] [--json FILE] [--insecure]
#                [--only JOB[,JOB...]]
#
# Builds the release binary, starts a manager, N storage nodes (one rack each) and the NBD
# gateway as separate processes, and runs the same fio jobs (ioengine=nbd) against a fresh,
# prefilled Tessera volume and against qemu-nbd serving a raw file on the same filesystem
# (--cache=none; and, for writes, --cache=directsync: every write durable before it is
# answered, as Tessera's are; and for the QD1 write, --cache=none with a flush after every
# write, the baseline the performance goal names). Prints one table; --json writes it too.
# The cluster is secure (mutual TLS between every process, certificates made with
# `tessera cert`) unless --insecure: plain TCP, to measure what TLS costs. --only runs the
# named jobs alone (an A/B of one path). TESSERA_BIN=path benchmarks that binary instead of
# building this checkout's (an A/B of two builds, interleaved in one session).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runtime=20 size=2G nodes=3 json="" quick=0 insecure=0 only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; runtime=4; size=512M ;;
    --runtime) runtime=$2; shift ;;
    --size) size=$2; shift ;;
    --nodes) nodes=$2; shift ;;
    --json) json=$2; shift ;;
    --insecure) insecure=1 ;;
    --only) only=",$2,"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

need=()
command -v fio >/dev/null || need+=(fio)
command -v qemu-nbd >/dev/null || need+=(qemu-utils)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
fio --enghelp=nbd >/dev/null 2>&1 || { echo "this fio has no nbd engine" >&2; exit 1; }

if [ -n "${TESSERA_BIN:-}" ]; then
  bin=$(realpath "$TESSERA_BIN")
else
  (cd "$root" && cargo build --release --locked -q -p tessera)
  bin="$root/target/release/tessera"
fi
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/tessera-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

mport=17400 nbdport=17809 qport=17810 qdport=17811
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

if [ $insecure = 1 ]; then
  sec=(--insecure) mtls=""
  ntls() { :; }
else
  certs="$work/certs"
  "$bin" --certs-dir "$certs" cert init >/dev/null
  "$bin" --certs-dir "$certs" cert issue manager 1 >/dev/null
  "$bin" --certs-dir "$certs" cert issue client admin --role admin >/dev/null
  for i in $(seq 1 "$nodes"); do "$bin" --certs-dir "$certs" cert issue node "$i" >/dev/null; done
  sec=(--certs-dir "$certs") mtls="certs_dir = \"$certs\""
  ntls() { printf 'certs_dir = "%s"\ncert = "node-%s"\n' "$certs" "$1"; }
fi
printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s/manager"\n%s\n' $mport "$work" "$mtls" > "$work/manager.toml"
"$bin" manager "${sec[@]}" --config "$work/manager.toml" 2>"$work/manager.log" & pids+=($!)
wait_port $mport
storage_pids=()
for i in $(seq 1 "$nodes"); do
  printf 'rack = "rack%s"\ndata_dir = "%s/node%s"\nlisten = "127.0.0.1:%s"\nmanagers = ["127.0.0.1:%s"]\nmetrics_listen = "127.0.0.1:%s"\n' \
    "$i" "$work" "$i" $((17500 + i)) $mport $((17580 + i)) > "$work/storage$i.toml"
  ntls "$i" >> "$work/storage$i.toml"
  "$bin" storage "${sec[@]}" --config "$work/storage$i.toml" 2>"$work/node$i.log" & pids+=($!); storage_pids+=($!)
done
for i in $(seq 1 "$nodes"); do wait_port $((17500 + i)); done
for _ in $(seq 100); do
  "$bin" --manager 127.0.0.1:$mport "${sec[@]}" --output json cluster status 2>/dev/null |
    python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["groups"] and all(g["leader"] for g in s["groups"]) else 1)' && break
  sleep 0.2
done
"$bin" --manager 127.0.0.1:$mport "${sec[@]}" volume create bench --size "$size" >/dev/null
"$bin" nbd --manager 127.0.0.1:$mport "${sec[@]}" --listen 127.0.0.1:$nbdport --metrics 127.0.0.1:17580 2>"$work/nbd.log" & pids+=($!)
tess_pids=("${pids[@]}")   # manager, storage nodes, gateway
wait_port $nbdport

truncate -s "$size" "$work/raw.img"
qemu-nbd -f raw --cache=none --aio=native -x raw -b 127.0.0.1 -p $qport --persistent --shared=8 "$work/raw.img" & pids+=($!); qnone_pid=$!
qemu-nbd -f raw --cache=directsync --aio=native -x raw -b 127.0.0.1 -p $qdport --persistent --shared=8 "$work/raw.img" & pids+=($!); qsync_pid=$!
wait_port $qport; wait_port $qdport

tess="nbd://127.0.0.1:$nbdport/bench" limit="nbd://127.0.0.1:$qport/raw" durable="nbd://127.0.0.1:$qdport/raw"

cputicks() { # CPU time (user + system, clock ticks) of the given processes so far
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' /proc/"$p"/stat))); done
  echo $t
}
runfio() { # name uri rw bs iodepth [extra...]; also records the serving processes' CPU
  local name=$1 uri=$2 rw=$3 bs=$4 qd=$5; shift 5
  local serving
  case "$uri" in "$tess") serving=("${tess_pids[@]}") ;; "$durable") serving=($qsync_pid) ;; *) serving=($qnone_pid) ;; esac
  local before; before=$(cputicks "${serving[@]}")
  fio --name="$name" --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" \
      --size="$size" --runtime="$runtime" --time_based --randrepeat=0 --norandommap \
      --output-format=json "$@" > "$work/$name.json"
  echo $(( $(cputicks "${serving[@]}") - before )) $(getconf CLK_TCK) > "$work/$name.cpu"
}
echo "prefilling ($size on each target)..." >&2
fio --name=fill --ioengine=nbd --uri="$tess" --rw=write --bs=1m --iodepth=8 --size="$size" --output-format=json >/dev/null
fio --name=fill --ioengine=nbd --uri="$limit" --rw=write --bs=1m --iodepth=8 --size="$size" --output-format=json >/dev/null

jobs=(
  "randwrite-4k-qd1 randwrite 4k 1"
  "randread-4k-qd1 randread 4k 1"
  "randwrite-4k-qd32 randwrite 4k 32"
  "randread-4k-qd32 randread 4k 32"
  "seqwrite-1m-qd4 write 1m 4"
  "randrw70-4k-qd16 randrw 4k 16 --rwmixread=70"
)
scrape() { # out-file: every process's /metrics, concatenated
  for port in 17580 $(seq 17581 $((17580 + nodes))); do
    python3 -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
      "http://127.0.0.1:$port/metrics" || true
  done > "$1"
}
if [ -n "$only" ]; then
  picked=()
  for j in "${jobs[@]}"; do case "$only" in *",${j%% *},"*) picked+=("$j") ;; esac; done
  [ ${#picked[@]} -gt 0 ] || { echo "--only: no job named in $only" >&2; exit 2; }
  jobs=("${picked[@]}")
fi
for j in "${jobs[@]}"; do
  set -- $j
  name=$1; shift
  echo "running $name..." >&2
  scrape "$work/metrics.before.$name"
  runfio "tessera.$name" "$tess" "$@"
  scrape "$work/metrics.after.$name"
  runfio "limit.$name" "$limit" "$@"
  case "$1" in *write*|randrw) runfio "durable.$name" "$durable" "$@" ;; esac
  # The limit as the issue states it: qemu-nbd with a flush after every write.
  [ "$name" = randwrite-4k-qd1 ] && runfio "flushed.$name" "$limit" "$@" --fsync=1
done
case " ${jobs[*]} " in *" seqwrite-1m-qd4 "*)
echo "running disk.seqwrite-1m-qd4 (fio straight on a file)..." >&2
fio --name=disk --filename="$work/disk.dat" --rw=write --bs=1m --iodepth=4 --direct=1 \
    --ioengine=libaio --size="$size" --runtime="$runtime" --time_based --output-format=json > "$work/disk.json"
;; esac

rss=""
for p in "${storage_pids[@]}"; do
  rss+="$(awk '/VmHWM/ {print $2}' /proc/"$p"/status) "
done

python3 - "$work" "$json" "$rss" "${jobs[@]}" <<'PY'
import json, sys
work, out, rss = sys.argv[1], sys.argv[2], sys.argv[3].split()
names = [j.split()[0] for j in sys.argv[4:]]
def load(n):
    try:
        text = open(f"{work}/{n}.json").read()
        # The nbd engine prints a line before the JSON.
        return json.loads(text[text.index("{"):])["jobs"][0]
    except Exception:
        return None
def cpu_us(n, j):
    """CPU time of the serving processes (fio not counted) per I/O, in microseconds."""
    try:
        ticks, hz = map(int, open(f"{work}/{n}.cpu").read().split())
        ios = j["read"]["total_ios"] + j["write"]["total_ios"]
        return round(ticks / hz / ios * 1e6, 1) if ios else None
    except Exception:
        return None
def stats(j, n=None):
    if j is None:
        return None
    r, w = j["read"], j["write"]
    iops = r["iops"] + w["iops"]
    bw = (r["bw_bytes"] + w["bw_bytes"]) / 1e6
    side = w if w["iops"] >= r["iops"] else r
    p = side["clat_ns"].get("percentile", {})
    us = lambda k: p.get(k, 0) / 1000
    return {"iops": round(iops), "mb_s": round(bw, 1), "p50_us": round(us("50.000000")),
            "p99_us": round(us("99.000000")), "p999_us": round(us("99.900000")),
            "cpu_us_per_io": cpu_us(n, j) if n else None}
rows = []
for n in names:
    t, l, d = (stats(load(k + "." + n), k + "." + n) for k in ("tessera", "limit", "durable"))
    rows.append({"job": n, "tessera": t, "limit": l, "limit_durable": d,
                 "ratio_iops": round(t["iops"] / l["iops"], 2) if t and l and l["iops"] else None,
                 "ratio_iops_durable": round(t["iops"] / d["iops"], 2) if t and d and d["iops"] else None})
disk = stats(load("disk"))
hdr = f"{'job':<20} {'tessera IOPS':>12} {'MB/s':>7} {'p50':>6} {'p99':>7} {'p99.9':>7} | {'limit IOPS':>10} {'MB/s':>7} {'p50':>6} {'p99':>6} | {'durable IOPS':>12} {'p50':>6} | {'ratio':>5} {'r/dur':>5}"
print(hdr); print("-" * len(hdr))
for r in rows:
    t, l, d = r["tessera"], r["limit"], r["limit_durable"]
    dd = f"{d['iops']:>12} {d['p50_us']:>6}" if d else f"{'-':>12} {'-':>6}"
    print(f"{r['job']:<20} {t['iops']:>12} {t['mb_s']:>7} {t['p50_us']:>6} {t['p99_us']:>7} {t['p999_us']:>7} | "
          f"{l['iops']:>10} {l['mb_s']:>7} {l['p50_us']:>6} {l['p99_us']:>6} | {dd} | {r['ratio_iops']!s:>5} {r['ratio_iops_durable']!s:>5}")
seq = next((r["tessera"] for r in rows if r["job"] == "seqwrite-1m-qd4"), None)
if disk and seq:
    print(f"\ndisk (fio on a file, 1 MiB seq write qd4, O_DIRECT): {disk['mb_s']} MB/s; "
          f"tessera seqwrite / disk = {seq['mb_s'] / disk['mb_s']:.2f}")
print("latencies in microseconds; peak RSS of storage nodes (KiB): " + " ".join(rss))
cpu = lambda x, k: "-" if not x or x.get("cpu_us_per_io") is None else f"{x['cpu_us_per_io']:.1f}"
print("CPU per I/O of the serving processes (us; fio not counted): " + "; ".join(
    f"{r['job']} tessera {cpu(r['tessera'], 0)} / qemu-nbd {cpu(r['limit'], 0)}"
    + (f" (directsync {cpu(r['limit_durable'], 0)})" if r["limit_durable"] else "") for r in rows))

# QD1 writes against qemu-nbd (--cache=none) with a flush after every write: a write is
# durable once its flush returns, so its latency is the write's plus the flush's.
flushed = None
fj = load("flushed." + names[0])
if fj is not None:
    w, sy = fj["write"], fj.get("sync", {}).get("lat_ns", {})
    wp50 = w["clat_ns"].get("percentile", {}).get("50.000000", 0) / 1000
    sp50 = sy.get("percentile", {}).get("50.000000", 0) / 1000
    t = rows[0]["tessera"]
    flushed = {"iops": round(w["iops"]), "write_p50_us": round(wp50), "flush_p50_us": round(sp50),
               "durable_p50_us": round(wp50 + sp50),
               "mean_cycle_us": round(1e6 / w["iops"]) if w["iops"] else None,
               "ratio_p50": round(t["p50_us"] / (wp50 + sp50), 2) if wp50 + sp50 else None}
    print(f"\n{names[0]} against qemu-nbd with a flush after every write (fio --fsync=1): "
          f"{flushed['iops']} IOPS, write p50 {flushed['write_p50_us']} + flush p50 "
          f"{flushed['flush_p50_us']} = {flushed['durable_p50_us']} us to durable; "
          f"tessera p50 {t['p50_us']} us = {flushed['ratio_p50']}x")

import re
def hist(path):
    h = {}
    for line in open(path):
        m = re.match(r'(\w+)_(bucket\{le="([^"]+)"\}|sum|count) (\S+)', line)
        if not m:
            continue
        name, kind, le, v = m.group(1), m.group(2), m.group(3), float(m.group(4))
        e = h.setdefault(name, {"b": {}, "sum": 0.0, "count": 0.0})
        if le is not None:
            e["b"][le] = e["b"].get(le, 0) + v
        elif kind == "sum":
            e["sum"] += v
        else:
            e["count"] += v
    return h
stages = {}
job = names[0]
try:
    a, b = hist(f"{work}/metrics.before.{job}"), hist(f"{work}/metrics.after.{job}")
    print(f"\nstage latencies during {job} (all processes; mean and the p50/p99 bucket bound, us):")
    order = ["tessera_nbd_write_seconds", "tessera_client_write_seconds", "tessera_storage_write_seconds",
             "tessera_raft_queue_seconds", "tessera_raft_commit_seconds", "tessera_raft_apply_seconds",
             "tessera_log_write_seconds"]
    for n in order:
        if n not in b:
            continue
        cnt = b[n]["count"] - a.get(n, {}).get("count", 0)
        if cnt <= 0:
            continue
        mean = (b[n]["sum"] - a.get(n, {}).get("sum", 0)) / cnt * 1e6
        les = sorted((float("inf") if k == "+Inf" else float(k), k) for k in b[n]["b"])
        def q(p):
            for val, k in les:
                if b[n]["b"][k] - a.get(n, {}).get("b", {}).get(k, 0) >= p * cnt:
                    return val * 1e6
            return float("inf")
        stages[n] = {"count": int(cnt), "mean_us": round(mean), "p50_le_us": q(0.5), "p99_le_us": q(0.99)}
        print(f"  {n:<34} n={int(cnt):>7} mean={mean:>7.0f} p50<={q(0.5):>7.0f} p99<={q(0.99):>7.0f}")
except FileNotFoundError:
    pass
if out:
    json.dump({"jobs": rows, "disk": disk, "storage_peak_rss_kib": [int(x) for x in rss],
               "randwrite_4k_qd1_flush_per_write": flushed,
               "stages_" + names[0]: stages}, open(out, "w"), indent=2)
PY
