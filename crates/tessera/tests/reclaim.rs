//! Reclaiming a deleted snapshot's space on a real cluster (one manager, three storage
//! nodes): `volume info` counts each snapshot's bytes; deleting a snapshot in the middle
//! of the history merges its layers into the lowest of the range (no layer file of its
//! range is left on any node) and deleting the newest merges them into the live layer
//! (one layer per chunk is left), every image reading exactly what it read before; on a
//! full disk writes fail cleanly, reads of the volume and its snapshot go on, and deleting
//! the snapshot and another volume makes room for writes again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Opts, TmpfsDisks, free_bytes};
use tessera_client::{Client, Error as ClientError, Volume};
use tessera_proto::control::{VolumeInfo, VolumeUsage};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The manager's background pass runs every `reconcile_ms`; merging is paced at
/// `flatten_bytes_per_sec`, raised here so that the waits are about correctness.
const FAST_RECLAIM: &str = "reconcile_ms = 300\nflatten_bytes_per_sec = 1073741824\n";
/// How long a reclaim (and the deletion of the dropped layers' files at the nodes' next
/// sync) may take.
const RECLAIM_WAIT: Duration = Duration::from_secs(60);

/// `volume info --output json`: the volume (as `VolumeInfo`, which ignores the added
/// key) and its `usage` (`None` if the manager could not have it).
fn volume_info(c: &Cluster, name: &str) -> (VolumeInfo, Option<VolumeUsage>) {
    let out = c.cli_ok(&["--output", "json", "volume", "info", name]);
    let mut json: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let json = json.remove(0);
    let usage = match &json["usage"] {
        serde_json::Value::Null => None,
        u => Some(serde_json::from_value(u.clone()).expect("usage JSON")),
    };
    let info = serde_json::from_value(json).expect("volume JSON");
    (info, usage)
}

/// Writes `len` bytes of `byte` at `off` through `v`.
async fn fill(v: &Volume, off: u64, len: u64, byte: u8) {
    v.write(off, Bytes::from(vec![byte; len as usize]))
        .await
        .unwrap_or_else(|e| panic!("write at {off}: {e}"));
    v.flush().await.expect("flush");
}

/// Checks that `name` (a volume or `VOL@SNAP`) reads `expected`: `(offset, len, byte)`.
async fn reads(client: &Client, name: &str, expected: &[(u64, u64, u8)]) {
    let v = client
        .open_read_only(name)
        .await
        .unwrap_or_else(|e| panic!("open {name}: {e}"));
    for &(start, len, byte) in expected {
        let mut off = start;
        while off < start + len {
            let n = (4 * MIB).min(start + len - off);
            let got = v
                .read(off, n)
                .await
                .unwrap_or_else(|e| panic!("read {name} at {off}: {e}"));
            if let Some(bad) = got.iter().position(|&b| b != byte) {
                panic!(
                    "{name}: byte {} reads {:#x}, not {byte:#x}",
                    off + bad as u64,
                    got[bad]
                );
            }
            off += n;
        }
    }
}

/// A hash of the whole of `name`, read through the client library.
async fn checksum(client: &Client, name: &str) -> u64 {
    let v = client
        .open_read_only(name)
        .await
        .unwrap_or_else(|e| panic!("open {name}: {e}"));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut off = 0;
    while off < v.size() {
        let n = (4 * MIB).min(v.size() - off);
        h.write(&v.read(off, n).await.expect("read"));
        off += n;
    }
    h.finish()
}

/// Per node, the layers each chunk of volume `volume_id` has files of, over every group:
/// `chunk -> {layer}` (layer 1: the base files `<chunk>.dat`; L: `<chunk>.L<L>.dat`).
fn layers_on(data_dir: &Path, volume_id: u64) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut out: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let Ok(groups) = std::fs::read_dir(data_dir.join("groups")) else {
        return out;
    };
    for g in groups.flatten() {
        let Ok(files) = std::fs::read_dir(g.path().join(format!("{volume_id:016x}"))) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".dat") else {
                continue;
            };
            let (chunk, layer) = match stem.split_once(".L") {
                None => (stem, 1),
                Some((chunk, layer)) => match u64::from_str_radix(layer, 16) {
                    Ok(l) => (chunk, l),
                    Err(_) => continue,
                },
            };
            if let Ok(chunk) = u64::from_str_radix(chunk, 16) {
                out.entry(chunk).or_default().insert(layer);
            }
        }
    }
    out
}

/// Waits until `name` has no reclaim pending and every node's layer files of it satisfy
/// `done` (files dropped are deleted at a node's next sync); panics naming what is left.
async fn wait_reclaimed(
    c: &Cluster,
    name: &str,
    what: &str,
    done: impl Fn(&BTreeMap<u64, BTreeSet<u64>>) -> bool,
) {
    let deadline = Instant::now() + RECLAIM_WAIT;
    loop {
        let (info, _) = volume_info(c, name);
        let layers: Vec<_> = c
            .nodes
            .iter()
            .map(|n| layers_on(&n.data_dir, info.id))
            .collect();
        if info.reclaims.is_empty() && layers.iter().all(&done) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reclaimed in {RECLAIM_WAIT:?}: reclaims {:?}, layers per node {layers:?}\n{}",
            info.reclaims,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Deleting a snapshot frees what only it held, and nothing any other image reads: the
/// middle snapshot's layers are merged down into the oldest (no layer file of its range
/// is left on any node; the next snapshot, a clone of it and the live volume read as
/// before), then the newest's are merged up into the live layer (each chunk keeps one
/// layer; the live volume reads the very same bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_snapshots_reclaims_their_layers_and_changes_no_image() {
    let c = Cluster::start_ready(Opts {
        manager_extra: FAST_RECLAIM.into(),
        ..Opts::default()
    })
    .await;
    c.create_volume("v", "16MiB", "1MiB");
    let client = c.client().await;
    let v = client.open("v").await.expect("open v");
    // Layer 1: A over chunks 0 and 1. Snapshot s1.
    fill(&v, 0, 2 * MIB, 0xaa).await;
    c.cli_ok(&["snapshot", "create", "v@s1"]);
    // B over the second half of chunk 0 and the first of chunk 1. Snapshot s2.
    fill(&v, 512 * KIB, MIB, 0xbb).await;
    c.cli_ok(&["snapshot", "create", "v@s2"]);
    // The live layer: C over the first half of chunk 1.
    fill(&v, MIB, 512 * KIB, 0xcc).await;
    let (info, _) = volume_info(&c, "v");
    let (s2_seq, live_seq) = (info.snapshots[1].seq, info.seq);
    assert!(live_seq > s2_seq && s2_seq > 1, "{info:?}");
    let s2_image = [
        (0, 512 * KIB, 0xaa),
        (512 * KIB, MIB, 0xbb),
        (1536 * KIB, 512 * KIB, 0xaa),
        (2 * MIB, 14 * MIB, 0),
    ];
    let live_image = [
        (0, 512 * KIB, 0xaa),
        (512 * KIB, 512 * KIB, 0xbb),
        (MIB, 512 * KIB, 0xcc),
        (1536 * KIB, 512 * KIB, 0xaa),
        (2 * MIB, 14 * MIB, 0),
    ];
    reads(&client, "v@s2", &s2_image).await;
    reads(&client, "v", &live_image).await;

    // Each snapshot, and the live image, holds bytes of its own (as measured at the
    // nodes' syncs: waited for).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, usage) = volume_info(&c, "v");
        let counted = usage.as_ref().is_some_and(|u| {
            u.snapshots.len() == 2
                && u.snapshots.iter().all(|s| s.bytes > 0)
                && u.live_bytes > 0
                && u.unreported_groups.is_empty()
        });
        if counted {
            break;
        }
        assert!(Instant::now() < deadline, "usage never counted: {usage:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let table = c.cli_ok(&["volume", "info", "v"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("written since the newest snapshot"),
        "{table}"
    );

    c.cli_ok(&["volume", "clone", "v@s2", "v-s2"]);
    let live_sum = checksum(&client, "v").await;
    let s2_sum = checksum(&client, "v@s2").await;

    // The middle of the history: s1's range (layers 1..=2) is merged into layer 1.
    c.cli_ok(&["snapshot", "delete", "v@s1"]);
    // Layers 2..=s2 are gone: their blocks are in layer 1 now.
    wait_reclaimed(&c, "v", "deleting v@s1", |layers| {
        !layers.is_empty()
            && layers
                .values()
                .all(|l| !l.iter().any(|&x| x > 1 && x <= s2_seq))
    })
    .await;
    reads(&client, "v@s2", &s2_image).await;
    reads(&client, "v", &live_image).await;
    reads(&client, "v-s2", &s2_image).await;
    assert_eq!(checksum(&client, "v@s2").await, s2_sum);
    assert_eq!(checksum(&client, "v").await, live_sum);
    let (_, usage) = volume_info(&c, "v");
    let usage = usage.expect("usage after the reclaim");
    assert_eq!(usage.snapshots.len(), 1, "{usage:?}");
    assert_eq!(usage.snapshots[0].name, "s2");

    // The newest snapshot (its clone gone first): its range merges into the live layer.
    c.cli_ok(&["volume", "delete", "v-s2"]);
    c.cli_ok(&["snapshot", "delete", "v@s2"]);
    wait_reclaimed(&c, "v", "deleting v@s2", |layers| {
        layers.len() == 2 && layers.values().all(|l| l.len() == 1)
    })
    .await;
    reads(&client, "v", &live_image).await;
    assert_eq!(checksum(&client, "v").await, live_sum);
    for n in &c.nodes {
        let layers = layers_on(&n.data_dir, info.id);
        // Chunk 0 was never written since s2: its merged layer 1 stays; chunk 1's live
        // layer took in what it lacked.
        assert_eq!(
            layers,
            BTreeMap::from([(0, BTreeSet::from([1])), (1, BTreeSet::from([live_seq]))]),
            "{}",
            n.data_dir.display()
        );
    }
    let (_, usage) = volume_info(&c, "v");
    let usage = usage.expect("usage");
    assert!(
        usage.snapshots.is_empty() && usage.live_bytes > 0,
        "{usage:?}"
    );
}

/// Storage nodes on small tmpfs mounts (needs root; skipped otherwise). A volume is
/// written, snapshotted and written over until the disks fill: the writes are refused
/// cleanly (`DiskFull`), the volume and its snapshot still read back, and no node stops.
/// Deleting the snapshot (whose reclaim needs a little room, which deleting another volume
/// gives) and that volume frees space: writes succeed again and every byte reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_freed_by_deleting_a_snapshot_and_a_volume() {
    const FLOOR: u64 = 48_000_000;
    // Room for the 48 MiB written first, the Raft log holding all of it (compaction may lag
    // on a busy machine) and still more than the snapshot's 16 MiB over it.
    let Some(disks) = TmpfsDisks::mount(3, "200m") else {
        eprintln!("SKIP: cannot mount tmpfs (not root?)");
        return;
    };
    let mounts = disks.mounts.clone();
    let mut c = Cluster::start(Opts {
        nodes: 0,
        manager_extra: FAST_RECLAIM.into(),
        ..Default::default()
    });
    disks.add_nodes(
        &mut c,
        &format!("min_free_bytes = {FLOOR}\nlog_segment_bytes = 65536\n"),
    );
    c.wait_ready(3).await;
    c.create_volume("other", "64MiB", "16MiB");
    c.create_volume("v", "1GiB", "16MiB");
    let client = c.client().await;
    let other = client.open("other").await.expect("open other");
    other
        .write(0, Bytes::from(vec![0x11; 32 * MIB as usize]))
        .await
        .expect("write other with room to spare");
    let vol = client.open("v").await.expect("open v");
    vol.write(0, Bytes::from(vec![0xaa; 16 * MIB as usize]))
        .await
        .expect("write v with room to spare");
    c.cli_ok(&["snapshot", "create", "v@s1"]);
    // Over the snapshot's blocks, then on, until the disks fill.
    let mut acked = 0u64;
    let full = loop {
        assert!(acked < 400, "the disks (200 MiB each) never filled");
        match vol
            .write(acked * MIB, Bytes::from(vec![0xbb; MIB as usize]))
            .await
        {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(full, ClientError::DiskFull(_)), "{full}");
    assert!(
        acked > 16,
        "only {acked} MiB written before the disk filled"
    );
    let r = vol.write(acked * MIB, Bytes::from(vec![1; 4096])).await;
    assert!(matches!(r, Err(ClientError::DiskFull(_))), "{r:?}");
    // Reads of the volume and of the snapshot go on; no node stopped.
    reads(&client, "v", &[(0, acked * MIB, 0xbb)]).await;
    reads(
        &client,
        "v@s1",
        &[(0, 16 * MIB, 0xaa), (16 * MIB, 16 * MIB, 0)],
    )
    .await;
    for (i, n) in c.nodes.iter_mut().enumerate() {
        let exited = n.child.as_mut().expect("running").try_wait().expect("wait");
        assert!(
            exited.is_none(),
            "node {i} stopped on a full disk: {exited:?}"
        );
    }

    // Room: the other volume goes, then the snapshot, whose reclaim merges its layer
    // into the live one (a little room needed) and drops it.
    drop(other);
    c.cli_ok(&["volume", "delete", "other"]);
    c.cli_ok(&["snapshot", "delete", "v@s1"]);
    let deadline = Instant::now() + RECLAIM_WAIT;
    let mut written = false;
    while !written {
        assert!(
            Instant::now() < deadline,
            "writes still refused after freeing space; free {:?}\n{}",
            mounts.iter().map(|m| free_bytes(m)).collect::<Vec<_>>(),
            c.logs()
        );
        match vol
            .write(acked * MIB, Bytes::from(vec![0xcc; MIB as usize]))
            .await
        {
            Ok(()) => written = true,
            Err(ClientError::DiskFull(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => panic!("write after freeing space: {e}"),
        }
    }
    wait_reclaimed(&c, "v", "deleting v@s1 on a full disk", |layers| {
        layers.values().all(|l| l.len() == 1)
    })
    .await;
    reads(
        &client,
        "v",
        &[(0, acked * MIB, 0xbb), (acked * MIB, MIB, 0xcc)],
    )
    .await;
}
