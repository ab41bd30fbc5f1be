//! The cluster heals and reshapes itself: a dead node's replicas are rebuilt elsewhere, a new
//! node takes a share of replicas and leaderships, and a drained node ends with none, all
//! while data stays readable. Real processes; the manager runs with short timeouts
//! ([`common::FAST_RECOVERY`]).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, FAST_RECOVERY, Opts, fully_replicated};
use rand::{Rng, SeedableRng};
use tessera_client::Volume;
use tessera_proto::control::ClusterStatus;

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Down timeout (3 s) plus time to copy a few MiB and run the membership changes.
const HEAL: Duration = Duration::from_secs(60);

fn fill_of(block: u64) -> u8 {
    (block % 251) as u8 + 1
}

/// Writes one block every 64 KiB of the volume, each with its own fill byte.
async fn write_pattern(vol: &Volume) -> Vec<u64> {
    let blocks: Vec<u64> = (0..vol.size() / BLOCK).step_by(16).collect();
    for b in &blocks {
        vol.write(b * BLOCK, Bytes::from(vec![fill_of(*b); BLOCK as usize]))
            .await
            .unwrap_or_else(|e| panic!("write of block {b}: {e}"));
    }
    blocks
}

async fn check_pattern(vol: &Volume, blocks: &[u64]) {
    for b in blocks {
        let got = vol
            .read(b * BLOCK, BLOCK)
            .await
            .unwrap_or_else(|e| panic!("read of block {b}: {e}"));
        assert!(
            got.iter().all(|&x| x == fill_of(*b)),
            "block {b} does not read back what was written"
        );
    }
}

/// A group replica's chunk files (`.dat` data and `.crc` block checksums) by name, with
/// trailing zeroes dropped (a sparse tail may be longer on one replica and reads the same).
fn replica_files(data_dir: &std::path::Path, group: u64) -> Vec<(String, Vec<u8>)> {
    let gdir = data_dir.join("groups").join(format!("{group:016x}"));
    let mut out = Vec::new();
    for v in std::fs::read_dir(&gdir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(v.path()).into_iter().flatten().flatten() {
            let name = format!(
                "{}/{}",
                v.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            );
            let mut bytes = std::fs::read(f.path()).unwrap_or_default();
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            out.push((name, bytes));
        }
    }
    out.sort();
    out
}
/// Every group's replicas (as `healed` lists them) hold the same chunk files, layer and
/// link files included, byte for byte (waited for while chunk files are flushed); a group
/// with chunks mapped must have files, or the comparison proves nothing.
async fn replicas_hold_the_same_files(c: &Cluster, healed: &ClusterStatus) {
    for g in &healed.groups {
        let dirs: Vec<std::path::PathBuf> = g
            .replicas
            .iter()
            .map(|r| {
                let addr = &healed
                    .nodes
                    .iter()
                    .find(|n| n.node_id == r.node_id)
                    .expect("node")
                    .addr;
                c.nodes
                    .iter()
                    .find(|n| &n.addr == addr)
                    .expect("harness node")
                    .data_dir
                    .clone()
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let copies: Vec<_> = dirs.iter().map(|d| replica_files(d, g.group_id)).collect();
            let has_files = g.chunks == 0 || copies.iter().all(|c| !c.is_empty());
            if has_files && copies.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "group {}: replicas' chunk files differ: {:?}",
                g.group_id,
                copies
                    .iter()
                    .map(|c| c
                        .iter()
                        .map(|(n, b)| (n.clone(), b.len()))
                        .collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn replicas_on(s: &ClusterStatus, node: u64) -> usize {
    s.groups
        .iter()
        .filter(|g| g.replicas.iter().any(|r| r.node_id == node))
        .count()
}

fn leaders_on(s: &ClusterStatus, node: u64) -> usize {
    s.groups.iter().filter(|g| g.leader == Some(node)).count()
}

/// Four nodes on four racks. Replicas are copied listing one chunk per request, so every
/// copy of a group holding several chunks crosses pages of the chunk list.
fn four_racks() -> Cluster {
    Cluster::start(Opts {
        nodes: 4,
        storage_extra: "copy_list_page = 1".into(),
        manager_extra: FAST_RECOVERY.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_on_distinct_racks_and_data_survives() {
    let mut c = four_racks();
    c.wait_ready(4).await;
    c.create_volume("rr", "16MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("rr").await.expect("open");
    let blocks = write_pattern(&vol).await;

    let before = c
        .wait_status("ready before the kill", HEAL, |s| fully_replicated(s, 3))
        .await;
    // The node with the most replicas dies for good.
    let (victim_index, victim) = (0..c.nodes.len())
        .map(|i| (i, c.node_id(&before, i)))
        .max_by_key(|(_, id)| replicas_on(&before, *id))
        .expect("a node");
    assert!(replicas_on(&before, victim) > 0);
    c.kill_node(victim_index);

    let healed = c
        .wait_status(
            "every group back to 3 racks without the dead node",
            HEAL,
            |s| fully_replicated(s, 3) && replicas_on(s, victim) == 0,
        )
        .await;
    for g in &healed.groups {
        assert!(g.replicas.iter().all(|r| r.node_id != victim), "{g:?}");
        // Every replica reports the group: the new ones were really built.
        assert!(g.replicas.iter().all(|r| r.role.is_some()), "{g:?}");
    }
    let node = healed
        .nodes
        .iter()
        .find(|n| n.node_id == victim)
        .expect("the dead node stays registered");
    assert_eq!(node.state, "down");

    // The new replicas hold what the others hold: every chunk's data and block checksums
    // equal on all three (compared once the chunk files are flushed).
    replicas_hold_the_same_files(&c, &healed).await;

    // Read through a fresh client, routed by the new memberships.
    let fresh = c.client().await.open_read_only("rr").await.expect("reopen");
    check_pattern(&fresh, &blocks).await;
    check_pattern(&vol, &blocks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_receives_replicas_and_leaderships() {
    let mut c = four_racks();
    c.wait_ready(4).await;
    c.create_volume("nn", "16MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("nn").await.expect("open");
    let blocks = write_pattern(&vol).await;
    c.wait_status("ready before the new node", HEAL, |s| {
        fully_replicated(s, 3)
    })
    .await;

    c.add_node(4, "");
    let s = c
        .wait_status("the new node has replicas and leaderships", HEAL, |s| {
            let Some(new) = s.nodes.iter().find(|n| n.addr == c.nodes[4].addr) else {
                return false;
            };
            let counts: Vec<usize> = s.nodes.iter().map(|n| replicas_on(s, n.node_id)).collect();
            let (min, max) = (counts.iter().min(), counts.iter().max());
            fully_replicated(s, 3)
                && replicas_on(s, new.node_id) > 0
                && leaders_on(s, new.node_id) > 0
                && matches!((min, max), (Some(a), Some(b)) if b - a <= 1)
        })
        .await;
    let per_node: BTreeMap<u64, usize> = s
        .nodes
        .iter()
        .map(|n| (n.node_id, replicas_on(&s, n.node_id)))
        .collect();
    eprintln!("replicas per node after adding a node: {per_node:?}");
    check_pattern(&vol, &blocks).await;
    let fresh = c.client().await.open_read_only("nn").await.expect("reopen");
    check_pattern(&fresh, &blocks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_empties_it_while_clients_write_without_errors() {
    const WRITERS: u64 = 4;
    let c = four_racks();
    c.wait_ready(4).await;
    c.create_volume("dr", "16MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("dr").await.expect("open");
    let blocks = vol.size() / BLOCK;
    let before = c
        .wait_status("ready before the drain", HEAL, |s| fully_replicated(s, 3))
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..WRITERS {
        let (vol, stop, ops) = (vol.clone(), stop.clone(), ops.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            // Each writer owns the blocks congruent to its number: the model is exact.
            let mut model: BTreeMap<u64, u8> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                let block = rng.gen_range(0..blocks / WRITERS) * WRITERS + w;
                let fill = rng.gen_range(1..=255u8);
                vol.write(block * BLOCK, Bytes::from(vec![fill; BLOCK as usize]))
                    .await
                    .map_err(|e| format!("write of block {block}: {e}"))?;
                model.insert(block, fill);
                let got = vol
                    .read(block * BLOCK, BLOCK)
                    .await
                    .map_err(|e| format!("read of block {block}: {e}"))?;
                if got.iter().any(|&b| b != fill) {
                    return Err(format!("block {block} differs right after its write"));
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(model)
        }));
    }

    // Drain the node leading the most groups: leaderships must move first.
    let victim = before
        .nodes
        .iter()
        .max_by_key(|n| leaders_on(&before, n.node_id))
        .expect("a node")
        .node_id;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = c.cli_ok(&["node", "drain", &victim.to_string()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("draining"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let table = c.cli_ok(&["cluster", "status"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("draining"));

    let drained = c
        .wait_status("the drained node hosts and leads nothing", HEAL, |s| {
            fully_replicated(s, 3) && replicas_on(s, victim) == 0 && leaders_on(s, victim) == 0
        })
        .await;
    let node = drained
        .nodes
        .iter()
        .find(|n| n.node_id == victim)
        .expect("the drained node");
    assert!(node.draining);
    assert_eq!((node.replicas, node.leaders), (0, 0));
    let json = c.cli_ok(&["--output", "json", "cluster", "status"]);
    let parsed: ClusterStatus = serde_json::from_slice(&json.stdout).expect("status json");
    assert!(
        parsed
            .nodes
            .iter()
            .any(|n| n.node_id == victim && n.draining)
    );

    // Keep writing a little on the new memberships, then stop and verify everything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut model = BTreeMap::new();
    for w in workers {
        let m = w
            .await
            .expect("worker task")
            .unwrap_or_else(|e| panic!("client error during the drain: {e}\n{}", c.logs()));
        model.extend(m);
    }
    assert!(ops.load(Ordering::Relaxed) > 100, "too few operations");
    let fresh = c.client().await.open_read_only("dr").await.expect("reopen");
    for (block, fill) in &model {
        let got = fresh.read(block * BLOCK, BLOCK).await.expect("final read");
        assert!(got.iter().all(|b| b == fill), "block {block} lost a write");
    }

    // Undoing the drain makes the node a candidate again.
    c.cli_ok(&["node", "drain", &victim.to_string(), "--undo"]);
    c.wait_status("the node takes replicas again", HEAL, |s| {
        replicas_on(s, victim) > 0 && fully_replicated(s, 3)
    })
    .await;
    let racks: BTreeSet<String> = drained.nodes.iter().map(|n| n.rack.clone()).collect();
    assert_eq!(racks.len(), 4);
}

/// A replica rebuilt after its node died holds every layer of every snapshot and every
/// clone link: its group's files equal the other replicas' byte for byte, and the volume,
/// its snapshot and a clone of it read as before through the new memberships.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_replica_holds_every_snapshot_layer_and_clone_link() {
    let mut c = four_racks();
    c.wait_ready(4).await;
    c.create_volume("sl", "16MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("sl").await.expect("open");
    let blocks = write_pattern(&vol).await;
    c.cli_ok(&["snapshot", "create", "sl@s1"]);
    // Over the snapshot: new data, zeroes and a discard, each in a new layer.
    vol.write(0, Bytes::from(vec![0xee; 3 * BLOCK as usize]))
        .await
        .expect("write over the snapshot");
    vol.write_zeroes(5 * MIB, 64 * 1024).await.expect("zeroes");
    vol.discard(9 * MIB, 128 * 1024).await.expect("discard");
    c.cli_ok(&["volume", "clone", "sl@s1", "sl-clone"]);
    let clone = client.open("sl-clone").await.expect("open clone");
    clone
        .write(2 * MIB, Bytes::from(vec![0x77; BLOCK as usize]))
        .await
        .expect("write the clone");
    let image = |name: &'static str| {
        let client = client.clone();
        async move {
            let v = client.open_read_only(name).await.expect("open");
            v.read(0, v.size()).await.expect("read").to_vec()
        }
    };
    let before = (
        image("sl").await,
        image("sl@s1").await,
        image("sl-clone").await,
    );
    drop((vol, clone));

    let ready = c
        .wait_status("ready before the kill", HEAL, |s| fully_replicated(s, 3))
        .await;
    let (victim_index, victim) = (0..c.nodes.len())
        .map(|i| (i, c.node_id(&ready, i)))
        .max_by_key(|(_, id)| replicas_on(&ready, *id))
        .expect("a node");
    c.kill_node(victim_index);
    let healed = c
        .wait_status(
            "every group back to 3 racks without the dead node",
            HEAL,
            |s| fully_replicated(s, 3) && replicas_on(s, victim) == 0,
        )
        .await;
    replicas_hold_the_same_files(&c, &healed).await;
    // Some group holds a layer above the first and some a link: the copy was tested.
    let files: Vec<String> = (0..c.nodes.len())
        .filter(|&i| i != victim_index)
        .flat_map(|i| {
            let dir = c.nodes[i].data_dir.clone();
            healed
                .groups
                .iter()
                .flat_map(move |g| replica_files(&dir, g.group_id))
        })
        .map(|(n, _)| n)
        .collect();
    assert!(
        files.iter().any(|n| n.contains(".L")),
        "no layer file: {files:?}"
    );
    assert!(
        files.iter().any(|n| n.ends_with(".link")),
        "no link file: {files:?}"
    );

    let after = (
        image("sl").await,
        image("sl@s1").await,
        image("sl-clone").await,
    );
    assert!(before.0 == after.0, "the volume changed");
    assert!(before.1 == after.1, "the snapshot changed");
    assert!(before.2 == after.2, "the clone changed");
    check_pattern(
        &client.open_snapshot("sl", "s1").await.expect("snap"),
        &blocks,
    )
    .await;
}
