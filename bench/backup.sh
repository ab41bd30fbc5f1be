#!/usr/bin/env bash
# What backups move and what they cost a writer: upload MB/s per node, hydration MB/s, and
# a client's write latency during uploads against without, in one run.
#
#   bench/backup.sh [--mib N] [--secs SECS] [--rounds R] [--nodes N] [--store dir|s3]
#
# Builds the release binary (and tessera-s3-server with --store s3), starts a manager and
# N storage nodes (one rack each, default 3) and the NBD gateway as separate processes;
# the manager has R+1 empty stores (directories, or prefixes of one tessera-s3-server),
# and its pacing is raised to 4 GiB/s so the numbers are the cluster's, not the pace's.
#  1. N MiB (default 1024) of random data into volume `data` (`volume import`), snapshot,
#     then `backup create` to store b0, timed: upload MB/s = bytes the groups read / wall
#     time, and per node: / the nodes leading the groups that hold the volume's chunks.
#  2. `volume create restored --from-backup ID`, timed until its filled bytes stop growing:
#     hydration MB/s.
#  3. fio (4 KiB random writes at QD1 on volume `lat`, through the gateway) runs through
#     R rounds (default 2) of: SECS seconds (default 10) without upload, then a full
#     upload of data@s1 to the fresh store bK; every write's latency is logged and
#     counted as "during upload" or "without" by its completion time. Same run, same fio.
#  4. Restore first-read latency: `volume create lazy --from-backup ID` (not waiting), then
#     at once 200 random 4 KiB reads at QD1 (fio through the gateway, each read's latency
#     logged) while its pre-warm runs; the same reads of the filled volume `restored` for
#     comparison; p50/p99 of each, and how much of `lazy` was filled when its reads ended.
set -euo pipefail
# Plain TCP (--insecure), as before TLS existed, so its numbers compare with earlier runs;
# bench/run.sh measures what TLS costs.
export TESSERA_INSECURE=true
root=$(cd "$(dirname "$0")/.." && pwd)
mib=1024 secs=10 rounds=2 nodes=3 kind=dir
while [ $# -gt 0 ]; do
  case "$1" in
    --mib) mib=$2; shift ;;
    --secs) secs=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --nodes) nodes=$2; shift ;;
    --store) kind=$2; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
case "$kind" in dir|s3) ;; *) echo "--store is dir or s3" >&2; exit 2 ;; esac

command -v fio >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
}
fio --enghelp=nbd >/dev/null 2>&1 || { echo "this fio has no nbd engine" >&2; exit 1; }

(cd "$root" && cargo build --release --locked -q -p tessera --bin tessera)
if [ "$kind" = s3 ]; then
  (cd "$root" && cargo build --release --locked -q -p tessera-backup --features s3-server --bin tessera-s3-server)
fi
bin="$root/target/release/tessera"
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/tessera-backupbench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
mport=17900 nbdport=17990 s3port=17995
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
now_ms() { date +%s%3N; }
tess() { "$bin" --manager 127.0.0.1:$mport "$@"; }
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print($1)"; }

if [ "$kind" = s3 ]; then
  "$root/target/release/tessera-s3-server" --root "$work/s3" --addr 127.0.0.1:$s3port \
    --access-key BENCHKEY --secret-key benchsecret >"$work/s3.log" 2>&1 & pids+=($!)
  wait_port $s3port
fi
{
  printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s/manager"\n' $mport "$work"
  printf 'backup_bytes_per_sec = 4294967296\nrestore_bytes_per_sec = 4294967296\n'
  for k in $(seq 0 "$rounds"); do
    if [ "$kind" = s3 ]; then
      printf '[[stores]]\nname = "b%s"\nzone = "zone1"\ns3 = { endpoint = "http://127.0.0.1:%s", bucket = "tessera", region = "us-east-1", access_key_id = "BENCHKEY", secret_access_key = "benchsecret", prefix = "b%s" }\n' "$k" $s3port "$k"
    else
      printf '[[stores]]\nname = "b%s"\nzone = "zone1"\npath = "%s/stores/b%s"\n' "$k" "$work" "$k"
    fi
  done
} > "$work/manager.toml"
"$bin" manager --config "$work/manager.toml" 2>"$work/manager.log" & pids+=($!)
wait_port $mport
for i in $(seq 1 "$nodes"); do
  printf 'rack = "rack%s"\ndata_dir = "%s/node%s"\nlisten = "127.0.0.1:%s"\nmanagers = ["127.0.0.1:%s"]\n' \
    "$i" "$work" "$i" $((17910 + i)) $mport > "$work/storage$i.toml"
  "$bin" storage --config "$work/storage$i.toml" 2>"$work/node$i.log" & pids+=($!)
done
for i in $(seq 1 "$nodes"); do wait_port $((17910 + i)); done
for _ in $(seq 100); do
  tess --output json cluster status 2>/dev/null |
    python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["groups"] and all(g["leader"] for g in s["groups"]) else 1)' && break
  sleep 0.2
done

# 1. The data, its snapshot, and a full upload with nothing else running.
echo "writing $mib MiB of random data..." >&2
head -c "$((mib << 20))" /dev/urandom > "$work/data.img"
tess volume create data --size "${mib}M" --chunk-size 64M >/dev/null
tess volume import data "$work/data.img" >/dev/null
rm -f "$work/data.img"
tess snapshot create data@s1 >/dev/null
leaders=$(tess --output json cluster status | python3 -c '
import json,sys; s=json.load(sys.stdin)
print(len({g["leader"] for g in s["groups"] if g["chunks"] > 0 and g["leader"]}))')
echo "backing up data@s1 to b0..." >&2
t0=$(now_ms)
tess --output json backup create data@s1 --store b0 > "$work/b0.json"
t1=$(now_ms)
b0=$(jq_py 'd["id"]' < "$work/b0.json")
read_bytes=$(jq_py 'd["read_bytes"]' < "$work/b0.json")
uploaded=$(jq_py 'd["uploaded_bytes"]' < "$work/b0.json")

# 2. A restore, watched until every block is filled: the time the fill's bytes last grew
# (`volume info`'s hydrated_bytes), not the end of the restore, which the manager records
# only once every chunk is unlinked, no sooner than 30 s after the restore was linked.
echo "restoring backup $b0..." >&2
t2=$(now_ms)
tess volume create restored --from-backup "$b0" --store b0 >/dev/null
t3=$t2
last=-1
while :; do
  info=$(tess --output json volume info restored)
  h=$(jq_py 'd["restore"]["hydrated_bytes"] if d.get("restore") else -1' <<<"$info")
  [ "$h" = -1 ] && break
  if [ "$h" != "$last" ]; then last=$h; t3=$(now_ms); fi
  sleep 0.1
done

# 3. One fio writer; rounds of quiet, then an upload. Every write's latency is logged with
# its completion time (Unix ms), classified afterwards against the uploads' windows.
tess volume create lat --size 1G >/dev/null
"$bin" nbd --manager 127.0.0.1:$mport --listen 127.0.0.1:$nbdport 2>"$work/nbd.log" & pids+=($!)
wait_port $nbdport
fio --name=lat --ioengine=nbd --uri="nbd://127.0.0.1:$nbdport/lat" --rw=randwrite --bs=4k \
    --iodepth=1 --size=256M --runtime=3600 --time_based --randrepeat=0 --norandommap \
    --write_lat_log="$work/lat" --log_unix_epoch=1 --output-format=json \
    > "$work/fio.json" 2>"$work/fio.err" &
fio_pid=$!
: > "$work/windows"
for r in $(seq 1 "$rounds"); do
  sleep "$secs"
  echo "round $r: uploading data@s1 to b$r under the writer..." >&2
  u0=$(now_ms)
  tess --output json backup create data@s1 --store "b$r" > "$work/b$r.json"
  u1=$(now_ms)
  echo "$u0 $u1 $(jq_py 'd["read_bytes"]' < "$work/b$r.json")" >> "$work/windows"
done
sleep "$secs"
kill -INT $fio_pid; wait $fio_pid || true

# 4. Random 4 KiB reads of a volume right after its restore was created (its blocks
# fetched from the store as they are read), then of the filled one. Each read's latency is
# logged (clat, per I/O).
randread() {
  fio --name="$2" --ioengine=nbd --uri="nbd://127.0.0.1:$nbdport/$1" --rw=randread --bs=4k \
      --iodepth=1 --size="${mib}M" --number_ios=200 --randrepeat=0 --norandommap \
      --write_lat_log="$work/$2" --log_unix_epoch=1 --output-format=json \
      > "$work/$2.json" 2>"$work/$2.err"
}
echo "restoring backup $b0 as lazy, reading it at once..." >&2
tess volume create lazy --from-backup "$b0" --store b0 >/dev/null
randread lazy rfirst || echo "reads of the restoring volume failed: $(tail -3 "$work/rfirst.err")" >&2
filled=$(tess --output json volume info lazy | jq_py '"%d/%d chunks" % (d["restore"]["chunks_done"], d["restore"]["chunks_total"]) if d.get("restore") else "all"') || filled=unknown
randread restored rfilled || echo "reads of the filled volume failed: $(tail -3 "$work/rfilled.err")" >&2

python3 - "$work" "$mib" "$nodes" "$leaders" "$kind" "$t0" "$t1" "$t2" "$t3" "$read_bytes" "$uploaded" "$filled" <<'PY'
import glob, sys
work, mib, nodes, leaders, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
t0, t1, t2, t3, read_bytes, uploaded = map(int, sys.argv[6:12])
filled = sys.argv[12]
def clat_us(prefix):
    out = []
    for path in glob.glob(f"{work}/{prefix}_clat*.log"):
        for line in open(path):
            f = [x.strip() for x in line.split(",")]
            if len(f) >= 2:
                out.append(int(f[1]) / 1000)
    return out
first, warm = clat_us("rfirst"), clat_us("rfilled")
windows = [tuple(map(int, l.split())) for l in open(f"{work}/windows") if l.strip()]
during, quiet = [], []
start = None
for path in glob.glob(f"{work}/lat_clat*.log"):
    for line in open(path):
        f = [x.strip() for x in line.split(",")]
        if len(f) < 2:
            continue
        t, ns = int(f[0]), int(f[1])
        start = t if start is None else min(start, t)
        (during if any(a <= t <= b for a, b, _ in windows) else quiet).append(ns / 1000)
def pct(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, round((len(v) - 1) * p))]
up_s, re_s = (t1 - t0) / 1000, (t3 - t2) / 1000
mb = lambda b: b / 1e6
total = mb(read_bytes) / up_s if up_s else 0
rows = [
    ("store", kind, ""),
    ("data", f"{mib} MiB random, {nodes} nodes, {leaders} leading the volume's groups", ""),
    ("upload (alone)", f"{up_s:.1f} s", f"{total:.0f} MB/s read; {total / max(leaders, 1):.0f} MB/s per leading node; {mb(uploaded):.0f} MB put"),
    ("hydration (restore fill)", f"{re_s:.1f} s", f"{mb(mib << 20) / re_s:.0f} MB/s" if re_s else "-"),
]
for i, (a, b, rb) in enumerate(windows, 1):
    s = (b - a) / 1000
    rows.append((f"upload under the writer, round {i}", f"{s:.1f} s", f"{mb(rb) / s:.0f} MB/s read" if s else "-"))
rows += [
    ("writes without upload", f"n={len(quiet)}", f"p50 {pct(quiet, .5):.0f} us  p99 {pct(quiet, .99):.0f} us"),
    ("writes during upload", f"n={len(during)}", f"p50 {pct(during, .5):.0f} us  p99 {pct(during, .99):.0f} us"),
    ("restore: reads right after create", f"n={len(first)}", f"p50 {pct(first, .5):.0f} us  p99 {pct(first, .99):.0f} us  (first {first[0] if first else float('nan'):.0f} us; filled when they ended: {filled})"),
    ("reads of the filled volume", f"n={len(warm)}", f"p50 {pct(warm, .5):.0f} us  p99 {pct(warm, .99):.0f} us"),
]
w = max(len(r[0]) for r in rows)
print(f"{'measure':<{w}}  {'time / count':<14}  rate")
print("-" * (w + 60))
for a, b, c in rows:
    print(f"{a:<{w}}  {b:<14}  {c}")
PY
