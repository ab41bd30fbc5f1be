//! Snapshots and clones on a real cluster (one manager, three storage nodes, a `tessera nbd`
//! gateway): what a snapshot keeps while its volume is written over, what a clone reads
//! and what writing it leaves alone, a snapshot cut under a writer that never stops,
//! block status of thin volumes and clones through qemu-img and nbdinfo, and the errors
//! and exit codes of every bad request.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::backup::checksum;
use common::{Cluster, Opts, said, tool};
use tessera_nbd::testing::{Conn, EPERM, FLAG_READ_ONLY};
use tessera_proto::control::{SnapshotInfo, SnapshotState, VolumeInfo};

const MIB: u64 = 1 << 20;

/// Runs qemu-io with the given commands on `uri`: `Ok` with its output if it exited 0 and
/// reported no failure.
fn qemu_io(uri: &str, cmds: &[&str]) -> Result<String, String> {
    let mut args = vec!["-f", "raw", uri];
    // A snapshot's export is read-only: qemu-io must open it so (`-r`), or it is refused.
    if uri
        .rsplit('/')
        .next()
        .is_some_and(|export| export.contains('@'))
    {
        args.insert(0, "-r");
    }
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let o = tool("qemu-io", &args);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if o.status.success()
        && !out.contains("Pattern verification failed")
        && !out.contains("failed")
        && !out.contains("rror")
    {
        Ok(out)
    } else {
        Err(format!(
            "qemu-io {uri} {cmds:?}: status {:?}\n{out}",
            o.status
        ))
    }
}

/// A CLI command that must fail with `code`; its stderr.
fn cli_fails(c: &Cluster, args: &[&str], code: i32) -> String {
    let out = c.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: expected exit {code}: {}",
        said(&out)
    );
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    stderr
}

fn snapshot_json(c: &Cluster, args: &[&str]) -> SnapshotInfo {
    let out = c.cli_ok(&[&["--output", "json"], args].concat());
    let mut snaps: Vec<SnapshotInfo> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", said(&out)));
    assert_eq!(snaps.len(), 1, "{}", said(&out));
    snaps.remove(0)
}

fn volume_json(c: &Cluster, name: &str) -> VolumeInfo {
    let out = c.cli_ok(&["--output", "json", "volume", "info", name]);
    let mut vols: Vec<VolumeInfo> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", said(&out)));
    vols.remove(0)
}

/// (a) A snapshot keeps the volume's old bytes while the volume is written over; a clone
/// of it reads the snapshot's bytes, and writing the clone changes neither the parent nor
/// the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_keeps_old_data_and_a_clone_reads_it_until_written() {
    let c = Cluster::start_ready(Opts::default()).await;
    c.create_volume("base", "64MiB", "1MiB");
    let gw = c.gateway();
    let base = gw.uri("base");
    qemu_io(&base, &["write -P 0xaa 0 8M", "write -P 0x11 40M 4k"]).unwrap();

    let s1 = snapshot_json(&c, &["snapshot", "create", "base@s1"]);
    assert_eq!((s1.volume.as_str(), s1.name.as_str()), ("base", "s1"));
    assert_eq!(s1.state, SnapshotState::Ready);
    assert_eq!(s1.size, 64 * MIB);
    let info = volume_json(&c, "base");
    assert!(info.seq > s1.seq, "the volume moved on: {info:?}");

    // Over the snapshot's data, and into chunks that were thin when it was taken.
    qemu_io(
        &base,
        &[
            "write -P 0xbb 1M 2M",
            "write -P 0xcc 16M 1M",
            "write -z 6M 1M",
        ],
    )
    .unwrap();
    qemu_io(
        &base,
        &[
            "read -P 0xaa 0 1M",
            "read -P 0xbb 1M 2M",
            "read -P 0xaa 3M 3M",
            "read -P 0 6M 1M",
            "read -P 0xaa 7M 1M",
            "read -P 0xcc 16M 1M",
        ],
    )
    .unwrap();
    let snap = gw.uri("base@s1");
    qemu_io(
        &snap,
        &[
            "read -P 0xaa 0 8M",
            "read -P 0 8M 8M",
            "read -P 0 16M 1M",
            "read -P 0x11 40M 4k",
        ],
    )
    .unwrap();
    // The snapshot export is read-only: so flagged, and writes get EPERM.
    let (mut conn, size, flags) = Conn::open(gw.addr(), "base@s1", false)
        .await
        .expect("open the snapshot export");
    assert_eq!(size, 64 * MIB);
    assert_ne!(flags & FLAG_READ_ONLY, 0, "flags {flags:#x}");
    assert_eq!(conn.write(0, &[0xee; 4096]).await.unwrap(), EPERM);
    assert_eq!(conn.read(0, 4096).await.unwrap().unwrap(), vec![0xaa; 4096]);
    conn.close().await;
    let refused = qemu_io(&snap, &["write -P 0xee 0 4k"]).expect_err("a snapshot is read-only");
    assert!(
        refused.contains("ermission")
            || refused.contains("ermitted")
            || refused.contains("read-only"),
        "{refused}"
    );

    let client = c.client().await;
    let snap_sum = checksum(&client, "base@s1").await;
    let base_sum = checksum(&client, "base").await;
    assert_ne!(snap_sum, base_sum);

    let out = c.cli_ok(&["--output", "json", "volume", "clone", "base@s1", "c1"]);
    let clone: VolumeInfo = serde_json::from_slice(&out.stdout).unwrap();
    let parent = clone.parent.expect("a clone has a parent");
    assert_eq!(
        (parent.volume.as_str(), parent.snapshot.as_str()),
        ("base", "s1")
    );
    assert_eq!(clone.size, 64 * MIB);
    assert_eq!(
        checksum(&client, "c1").await,
        snap_sum,
        "the clone reads the snapshot"
    );
    assert_eq!(
        snapshot_json(&c, &["snapshot", "info", "base@s1"]).clones,
        ["c1"]
    );

    qemu_io(&gw.uri("c1"), &["write -P 0xdd 0 1M", "discard 4M 1M"]).unwrap();
    qemu_io(
        &gw.uri("c1"),
        &[
            "read -P 0xdd 0 1M",
            "read -P 0xaa 1M 3M",
            "read -P 0 4M 1M",
            "read -P 0xaa 5M 3M",
        ],
    )
    .unwrap();
    assert_eq!(
        checksum(&client, "base@s1").await,
        snap_sum,
        "snapshot changed"
    );
    assert_eq!(checksum(&client, "base").await, base_sum, "parent changed");
    assert_ne!(checksum(&client, "c1").await, snap_sum);

    // `volume info` shows the lineage in both forms.
    let table = c.cli_ok(&["volume", "info", "base"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("s1") && table.contains("c1"), "{table}");
    let table = c.cli_ok(&["volume", "info", "c1"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("clone of \"base@s1\""), "{table}");
}

/// (b) A snapshot taken while a writer writes without pause: the writer never sees an
/// error, and the snapshot is a prefix of its writes (crash-consistent) holding every
/// write acknowledged before the snapshot was asked for, and none sent after it answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_a_continuous_writer_is_a_prefix_and_the_writer_never_fails() {
    let c = Cluster::start_ready(Opts::default()).await;
    c.create_volume("busy", "128MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("busy").await.expect("attach");
    let blocks = vol.size() / 4096;
    let started = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Block i holds i (and its complement, so no block of a written i is all zero).
    let block = |i: u64| {
        let mut b = vec![0u8; 4096];
        for w in b.chunks_exact_mut(16) {
            w[..8].copy_from_slice(&i.to_le_bytes());
            w[8..].copy_from_slice(&(!i).to_le_bytes());
        }
        Bytes::from(b)
    };
    let writer = tokio::spawn({
        let (vol, started, acked, stop) =
            (vol.clone(), started.clone(), acked.clone(), stop.clone());
        async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < blocks {
                started.store(i + 1, Ordering::SeqCst);
                vol.write(i * 4096, block(i))
                    .await
                    .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
                acked.store(i + 1, Ordering::SeqCst);
                i += 1;
            }
            i
        }
    });
    let mut cuts = Vec::new();
    for name in ["s1", "s2"] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let before = acked.load(Ordering::SeqCst);
        let spec = format!("busy@{name}");
        tokio::task::block_in_place(|| c.cli_ok(&["snapshot", "create", &spec]));
        let after = started.load(Ordering::SeqCst);
        cuts.push((spec, before, after));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let written = writer.await.expect("the writer never fails");
    assert!(
        written > cuts[1].2,
        "the writer went on after the snapshots"
    );

    for (spec, before, after) in cuts {
        let snap = client.open_read_only(&spec).await.expect("open snapshot");
        let mut prefix = None;
        for i in 0..written {
            let got = snap.read(i * 4096, 4096).await.expect("read snapshot");
            let zero = got.iter().all(|&b| b == 0);
            match prefix {
                None if zero => prefix = Some(i),
                None => assert_eq!(got, block(i), "{spec}: block {i}"),
                Some(k) => assert!(zero, "{spec}: block {i} written after the cut at {k}"),
            }
        }
        let k = prefix.unwrap_or(written);
        assert!(
            before <= k && k <= after,
            "{spec}: holds {k} writes; {before} were acknowledged before it was asked for, \
             {after} sent before it answered"
        );
    }
    vol.close().await.expect("detach");
}

/// The descriptors of `nbdinfo --map` as (offset, length, description).
fn nbdinfo_map(uri: &str) -> Vec<(u64, u64, String)> {
    let o = tool("nbdinfo", &["--map", uri]);
    assert!(o.status.success(), "nbdinfo --map {uri}: {}", said(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let off = f.next()?.parse().ok()?;
            let len = f.next()?.parse().ok()?;
            let _type = f.next()?;
            Some((off, len, f.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// The data ranges `qemu-img map` reports, as (start, length).
fn qemu_img_data(uri: &str) -> Vec<(u64, u64)> {
    let o = tool("qemu-img", &["map", "--output=json", uri]);
    assert!(o.status.success(), "qemu-img map {uri}: {}", said(&o));
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).expect("map JSON");
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in entries {
        if e["data"] == serde_json::Value::Bool(true) {
            let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            match out.last_mut() {
                Some(last) if last.0 + last.1 == s => last.1 += l,
                _ => out.push((s, l)),
            }
        }
    }
    out
}

/// (c) Block status through NBD: a thin volume, its snapshot and a clone of it report
/// holes wherever nothing was written, to qemu-img map and nbdinfo --map alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_map_and_nbdinfo_map_show_the_holes_of_thin_volumes_and_clones() {
    let c = Cluster::start_ready(Opts::default()).await;
    c.create_volume("thin", "64MiB", "1MiB");
    let gw = c.gateway();
    qemu_io(
        &gw.uri("thin"),
        &[
            "write -P 0x42 2M 1M",
            "write -P 0x43 10M 4k",
            "write -P 0x44 40M 64k",
        ],
    )
    .unwrap();
    let written = vec![(2 * MIB, MIB), (10 * MIB, 4096), (40 * MIB, 65536)];
    assert_eq!(qemu_img_data(&gw.uri("thin")), written);

    c.cli_ok(&["snapshot", "create", "thin@s1"]);
    c.cli_ok(&["volume", "clone", "thin@s1", "thin-clone"]);
    assert_eq!(qemu_img_data(&gw.uri("thin@s1")), written);
    assert_eq!(qemu_img_data(&gw.uri("thin-clone")), written);

    // Written zeroes over the parent's data read as zeroes, never as the parent's data.
    qemu_io(
        &gw.uri("thin-clone"),
        &["write -z 2M 1M", "write -P 0x45 20M 4k"],
    )
    .unwrap();
    let map = nbdinfo_map(&gw.uri("thin-clone"));
    let at = |off: u64| {
        map.iter()
            .find(|(o, l, _)| *o <= off && off < o + l)
            .unwrap_or_else(|| panic!("no descriptor at {off}: {map:?}"))
            .2
            .clone()
    };
    assert_eq!(at(0), "hole,zero", "{map:?}");
    assert!(at(2 * MIB).contains("zero"), "{map:?}");
    assert_eq!(at(10 * MIB), "data", "{map:?}");
    assert_eq!(at(20 * MIB), "data", "{map:?}");
    assert_eq!(at(30 * MIB), "hole,zero", "{map:?}");
    assert_eq!(at(64 * MIB - 1), "hole,zero", "{map:?}");
    assert_eq!(map.iter().map(|d| d.1).sum::<u64>(), 64 * MIB);
    // The parent is as it was.
    assert_eq!(qemu_img_data(&gw.uri("thin")), written);
}

/// (d) Every bad request gets a clear error and the exit code of its class, and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshot_requests_get_clear_errors_and_exit_codes() {
    let c = Cluster::start_ready(Opts::default()).await;
    c.create_volume("v", "16MiB", "1MiB");
    let gw = c.gateway();
    qemu_io(&gw.uri("v"), &["write -P 0x61 0 1M"]).unwrap();
    c.cli_ok(&["snapshot", "create", "v@s1"]);

    // Unknown volume and snapshot: not found (3), naming what is missing.
    let e = cli_fails(&c, &["snapshot", "create", "nope@s1"], 3);
    assert!(e.contains("nope"), "{e}");
    let e = cli_fails(&c, &["snapshot", "info", "v@nope"], 3);
    assert!(e.contains("nope"), "{e}");
    cli_fails(&c, &["snapshot", "delete", "v@nope"], 3);
    cli_fails(&c, &["snapshot", "list", "nope"], 3);
    cli_fails(&c, &["volume", "clone", "v@nope", "x"], 3);
    cli_fails(&c, &["volume", "rollback", "v@nope"], 3);
    cli_fails(&c, &["volume", "flatten", "nope"], 3);
    assert!(
        qemu_io(&gw.uri("v@nope"), &["read 0 4k"]).is_err(),
        "an unknown snapshot is no export"
    );

    // A duplicate name: already exists (4).
    let e = cli_fails(&c, &["snapshot", "create", "v@s1"], 4);
    assert!(e.contains("s1"), "{e}");

    // Malformed VOL@SNAP: a usage error (2) before anything is asked.
    for bad in ["v", "v@", "@s1", "v@a@b"] {
        let e = cli_fails(&c, &["snapshot", "create", bad], 2);
        assert!(e.contains("VOLUME@SNAPSHOT"), "{bad}: {e}");
    }
    // Names the manager refuses: invalid (2).
    cli_fails(&c, &["snapshot", "create", "v@a/b"], 2);
    cli_fails(&c, &["volume", "clone", "v@s1", "x@y"], 2);
    cli_fails(&c, &["volume", "clone", "v@s1", "x/y"], 2);
    // A volume that is no clone cannot be flattened.
    cli_fails(&c, &["volume", "flatten", "v"], 2);

    // A snapshot with clones cannot be deleted (refused, 5, naming them), nor its volume.
    c.cli_ok(&["volume", "clone", "v@s1", "c1"]);
    let e = cli_fails(&c, &["snapshot", "delete", "v@s1"], 5);
    assert!(e.contains("c1"), "{e}");
    let e = cli_fails(&c, &["volume", "delete", "v"], 5);
    assert!(e.contains("c1"), "{e}");
    // A clone onto an existing name: already exists (4).
    cli_fails(&c, &["volume", "clone", "v@s1", "c1"], 4);
    cli_fails(&c, &["volume", "clone", "v@s1", "v"], 4);

    // Rollback with a writer attached: refused (5), naming the holder; the data stays.
    qemu_io(&gw.uri("v"), &["write -P 0x62 0 1M"]).unwrap();
    let client = c.client_as("rollback-blocker").await;
    // The gateway lets go of the volume when qemu-io's connection closes, in the
    // background: attach once it has.
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        match client.open("v").await {
            Ok(v) => break v,
            Err(tessera_client::Error::InUse(m)) if Instant::now() < deadline => {
                eprintln!("waiting for the gateway to detach: {m}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("attach: {e}"),
        }
    };
    let e = cli_fails(&c, &["volume", "rollback", "v@s1"], 5);
    assert!(e.contains("rollback-blocker"), "{e}");
    held.close().await.expect("detach");
    let first_mib = |name: &'static str| {
        let client = client.clone();
        async move {
            let v = client.open_read_only(name).await.expect("open");
            v.read(0, MIB).await.expect("read")
        }
    };
    assert!(first_mib("v").await.iter().all(|&b| b == 0x62));
    // Once detached it rolls back, and the snapshot stays.
    c.cli_ok(&["volume", "rollback", "v@s1"]);
    assert!(
        first_mib("v").await.iter().all(|&b| b == 0x61),
        "rolled back"
    );
    assert!(first_mib("v@s1").await.iter().all(|&b| b == 0x61));
    qemu_io(&gw.uri("v@s1"), &["read -P 0x61 0 1M"]).unwrap();

    // Deleting the clone frees the snapshot for deletion.
    c.cli_ok(&["volume", "delete", "c1"]);
    c.cli_ok(&["snapshot", "delete", "v@s1"]);
    cli_fails(&c, &["snapshot", "info", "v@s1"], 3);
    let out = c.cli_ok(&["--output", "json", "snapshot", "list", "v"]);
    let left: Vec<SnapshotInfo> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// A clone with snapshots of its own is flattened: the clone and each of its snapshots read
/// exactly as before, the link to the parent is gone (its snapshot can then be deleted),
/// and the parent is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flattening_a_clone_keeps_its_own_snapshots_and_frees_the_parent() {
    let c = Cluster::start_ready(Opts::default()).await;
    c.create_volume("p", "8MiB", "1MiB");
    let gw = c.gateway();
    // The parent: data over most of it, a hole at 6M, zeroes written at 7M.
    qemu_io(&gw.uri("p"), &["write -P 0xa1 0 6M", "write -z 7M 1M"]).unwrap();
    c.cli_ok(&["snapshot", "create", "p@base"]);
    c.cli_ok(&["volume", "clone", "p@base", "k"]);
    // The clone: a write and a discard over the parent's data, a snapshot, then more.
    qemu_io(&gw.uri("k"), &["write -P 0xb2 1M 1M", "discard 2M 512k"]).unwrap();
    c.cli_ok(&["snapshot", "create", "k@k1"]);
    qemu_io(
        &gw.uri("k"),
        &["write -P 0xc3 3M 4k", "write -P 0xc4 6M 1M"],
    )
    .unwrap();
    let client = c.client().await;
    let before = (
        checksum(&client, "k").await,
        checksum(&client, "k@k1").await,
        checksum(&client, "p").await,
    );

    c.cli_ok(&["volume", "flatten", "k"]);
    let t = Instant::now();
    while volume_json(&c, "k").parent.is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "flatten did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = (
        checksum(&client, "k").await,
        checksum(&client, "k@k1").await,
        checksum(&client, "p").await,
    );
    assert_eq!(
        before, after,
        "(clone, its snapshot, parent) changed by the flatten"
    );
    qemu_io(
        &gw.uri("k@k1"),
        &[
            "read -P 0xa1 0 1M",
            "read -P 0xb2 1M 1M",
            "read -P 0 2M 512k",
            "read -P 0xa1 2560k 3584k",
            "read -P 0 6M 2M",
        ],
    )
    .unwrap();
    // Nothing reads through to the parent's snapshot any more: it can go, and the clone
    // and its snapshot still read the same.
    c.cli_ok(&["snapshot", "delete", "p@base"]);
    assert_eq!(checksum(&client, "k").await, before.0);
    assert_eq!(checksum(&client, "k@k1").await, before.1);
}
