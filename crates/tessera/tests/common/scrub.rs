//! Scrubbing in the tier-2 harness: a cluster whose storage nodes scrub (the `[scrub]`
//! table of storage.toml), where one block of a chunk lives in each replica's files, damage
//! done to a replica's files while its node is stopped (a flipped byte; a block rewritten
//! together with its CRC32C, as a lost write leaves it), `tessera scrub status|start`, and
//! a reader hammering one block through the client while the rest goes on.
//!
//! Reaches the cluster only through its CLI, the client library and the control plane
//! (a leadership transfer, as the manager's balancer sends it); edits a replica's files
//! only while its node is killed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tessera_client::Volume;
use tessera_proto::control::{
    ChunkRoute, ManagerReply, ManagerRequest, NodeScrub, Role, ScrubStats, StorageReply,
    StorageRequest,
};

use super::backup::{BLOCK, cli_ok, text};
use super::cluster::{Cluster, Opts};

/// Scrubbing as fast as the disk goes (256 MiB/s) with a period of a day: a pass starts
/// when an operator asks (`tessera scrub start`), not by itself during a test.
pub const FAST: &str = "[scrub]\nbytes_per_sec = 268435456\nperiod_secs = 86400\n";

/// A three-node cluster (one manager) whose storage.toml ends with `scrub` (a `[scrub]`
/// table), ready.
pub async fn start(scrub: &str) -> Cluster {
    Cluster::start_ready(Opts {
        storage_extra: scrub.into(),
        ..Opts::default()
    })
    .await
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One block of one chunk of a volume, and where its replicas are.
#[derive(Debug, Clone)]
pub struct Target {
    pub volume: u64,
    pub group: u64,
    pub chunk: u64,
    /// The block's index in the chunk.
    pub block: u64,
    pub chunk_size: u64,
    /// The group's replicas, as harness node indexes.
    pub replicas: Vec<usize>,
    /// The replica the manager believes leads the group (a harness node index).
    pub leader: usize,
}

impl Target {
    /// Block `block` of chunk `chunk` of volume `name` (the chunk must be mapped).
    pub async fn of(c: &Cluster, name: &str, chunk: u64, block: u64) -> Target {
        let client = c.client().await;
        let info = client.volume_info(name).await.expect("volume info");
        // A leadership may be changing (the balancer): wait until the manager knows one.
        let deadline = Instant::now() + Duration::from_secs(20);
        let route = loop {
            let r = route(c, info.id, chunk).await;
            if r.leader.is_some() || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let status = c.status().await.expect("status");
        let replicas: Vec<usize> = route
            .peers
            .iter()
            .map(|p| c.node_index(&status, p.node_id))
            .collect();
        assert_eq!(replicas.len(), 3, "three replicas: {route:?}");
        let leader = c.node_index(&status, route.leader.expect("a known leader"));
        Target {
            volume: info.id,
            group: route.group_id,
            chunk,
            block,
            chunk_size: info.chunk_size,
            replicas,
            leader,
        }
    }

    /// Another block of the same chunk.
    pub fn at(&self, block: u64) -> Target {
        Target {
            block,
            ..self.clone()
        }
    }

    /// The block's byte offset in the volume.
    pub fn offset(&self) -> u64 {
        self.chunk * self.chunk_size + self.block * BLOCK
    }

    fn dir(&self, c: &Cluster, node: usize) -> PathBuf {
        c.nodes[node]
            .data_dir
            .join("groups")
            .join(format!("{:016x}", self.group))
            .join(format!("{:016x}", self.volume))
    }

    /// The chunk's data file on harness node `node`.
    pub fn dat(&self, c: &Cluster, node: usize) -> PathBuf {
        self.dir(c, node).join(format!("{:08x}.dat", self.chunk))
    }

    /// The chunk's checksum sidecar on harness node `node`.
    pub fn crc(&self, c: &Cluster, node: usize) -> PathBuf {
        self.dir(c, node).join(format!("{:08x}.crc", self.chunk))
    }

    /// The block as node `node`'s data file holds it (zeroes past the end).
    pub fn file_block(&self, c: &Cluster, node: usize) -> Vec<u8> {
        let bytes = std::fs::read(self.dat(c, node)).unwrap_or_default();
        let at = (self.block * BLOCK) as usize;
        let mut out = vec![0u8; BLOCK as usize];
        if at < bytes.len() {
            let n = (bytes.len() - at).min(BLOCK as usize);
            out[..n].copy_from_slice(&bytes[at..at + n]);
        }
        out
    }

    /// The block's stored CRC32C on node `node` (0 if the sidecar is short).
    pub fn file_crc(&self, c: &Cluster, node: usize) -> u32 {
        let bytes = std::fs::read(self.crc(c, node)).unwrap_or_default();
        let at = (self.block * 4) as usize;
        bytes
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// Flips one byte (`at` in the block) of node `node`'s data file; the CRC is left as it
    /// was, so the block fails it. The node must be stopped.
    pub fn flip_byte(&self, c: &Cluster, node: usize, at: usize) {
        let path = self.dat(c, node);
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let i = (self.block * BLOCK) as usize + at;
        assert!(
            i < bytes.len(),
            "{path:?} is shorter than block {}",
            self.block
        );
        bytes[i] ^= 0x5a;
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    }

    /// Writes `data` over the block in node `node`'s data file and its CRC32C into the
    /// sidecar: a consistent block, only different. The node must be stopped.
    pub fn rewrite_with_crc(&self, c: &Cluster, node: usize, data: &[u8]) {
        assert_eq!(data.len(), BLOCK as usize);
        let path = self.dat(c, node);
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let i = (self.block * BLOCK) as usize;
        assert!(i + data.len() <= bytes.len(), "{path:?} is short");
        bytes[i..i + data.len()].copy_from_slice(data);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let path = self.crc(c, node);
        let mut crcs = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let i = (self.block * 4) as usize;
        assert!(i + 4 <= crcs.len(), "{path:?} is short");
        crcs[i..i + 4].copy_from_slice(&crc32c::crc32c(data).to_le_bytes());
        std::fs::write(&path, crcs).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    }

    /// Waits until every replica's file holds `want` at the block with its CRC, every
    /// replica has applied everything, and then a little longer: chunk files are flushed
    /// (every 500 ms) and the log truncated behind them, so a restart replays nothing that
    /// would rewrite the block over damage done while the node is stopped.
    pub async fn settle(&self, c: &Cluster, want: &[u8]) {
        self.wait_caught_up(c).await;
        self.wait_replicas_hold(c, want, "the written block in every replica's file")
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    /// Waits (30 s at most) until every replica's file holds `want` at the block, with the
    /// CRC32C of `want` in its sidecar.
    pub async fn wait_replicas_hold(&self, c: &Cluster, want: &[u8], what: &str) {
        let crc = crc32c::crc32c(want);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let wrong: Vec<(usize, bool, bool)> = self
                .replicas
                .iter()
                .map(|&n| (n, self.file_block(c, n) == want, self.file_crc(c, n) == crc))
                .filter(|(_, data, sum)| !(*data && *sum))
                .collect();
            if wrong.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: block {} of chunk {} differs on (node, data ok, crc ok) {wrong:?}\n{}",
                self.block,
                self.chunk,
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every replica of the group is up, reports from its current process (a
    /// fresh heartbeat) and has applied what the others have.
    pub async fn wait_caught_up(&self, c: &Cluster) {
        let ids: Vec<String> = self
            .replicas
            .iter()
            .map(|&n| c.nodes[n].addr.clone())
            .collect();
        c.wait_status(
            "the group's replicas caught up",
            Duration::from_secs(60),
            |s| {
                let fresh =
                    s.nodes.iter().filter(|n| ids.contains(&n.addr)).all(|n| {
                        n.state == "up" && n.last_heartbeat_ms_ago.is_some_and(|ms| ms < 600)
                    });
                let Some(g) = s.groups.iter().find(|g| g.group_id == self.group) else {
                    return false;
                };
                let commit = g.replicas.iter().map(|r| r.commit).max().unwrap_or(0);
                fresh
                    && g.leader.is_some()
                    && g.replicas.len() == 3
                    && g.replicas
                        .iter()
                        .all(|r| r.role.is_some() && r.applied >= commit && commit > 0)
            },
        )
        .await;
    }

    /// Kills node `node`, has `damage` edit its files, restarts it and waits for the group
    /// to catch up; the block must still differ from `want` then (nothing replayed over
    /// the damage), so whatever repairs it afterwards is what the test is about.
    pub async fn damage(
        &self,
        c: &mut Cluster,
        node: usize,
        want: &[u8],
        damage: impl FnOnce(&Cluster, usize),
    ) {
        c.kill_node(node);
        damage(c, node);
        assert_ne!(self.file_block(c, node), want, "the damage changed nothing");
        c.restart_node(node);
        // Past the killed process's last heartbeat, so a fresh one is the new process's.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.wait_caught_up(c).await;
        assert_ne!(
            self.file_block(c, node),
            want,
            "the restart rewrote the damaged block of node {node} (a replay?): the test \
             proves nothing\n{}",
            c.logs()
        );
    }

    /// Makes harness node `node` the group's leader (a leadership transfer sent to the
    /// current leader, repeated until the manager's status shows it, 30 s at most).
    pub async fn make_leader(&self, c: &Cluster, node: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = c.status().await.expect("status");
            let to = c.node_id(&s, node);
            let g = s
                .groups
                .iter()
                .find(|g| g.group_id == self.group)
                .expect("the group");
            // The manager's view and the node's own report (it reports itself leading).
            let leads = g
                .replicas
                .iter()
                .any(|r| r.node_id == to && r.role == Some(Role::Leader));
            match g.leader {
                Some(l) if l == to && leads => return,
                Some(l) if l != to => {
                    let addr = &s.nodes.iter().find(|n| n.node_id == l).expect("node").addr;
                    let req = StorageRequest::TransferLeader {
                        group_id: self.group,
                        to,
                    };
                    let r = tessera_net::call::<_, StorageReply>(
                        &c.manager_security(),
                        addr,
                        tessera_net::Expect::Node(l),
                        &req,
                        Duration::from_secs(3),
                    )
                    .await;
                    eprintln!("transfer of group {} to node {to}: {r:?}", self.group);
                }
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "node {node} never came to lead group {}: {g:?}\n{}",
                self.group,
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The route of chunk `chunk` of volume `volume_id`.
pub async fn route(c: &Cluster, volume_id: u64, chunk: u64) -> ChunkRoute {
    let client = c.client().await;
    let req = ManagerRequest::Route {
        volume_id,
        chunk,
        allocate: false,
        epoch: 0,
    };
    match client.call(&req).await.expect("route") {
        ManagerReply::Route(Some(r)) => r,
        other => panic!("chunk {chunk} has no route: {other:?}"),
    }
}

/// `tessera --output json scrub status`, by harness node index (`None`: the node is not
/// in it, or has not reported its scrubbing yet).
pub fn status(c: &Cluster) -> Vec<Option<ScrubStats>> {
    let out = cli_ok(c, &["--output", "json", "scrub", "status"]);
    let nodes: Vec<NodeScrub> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "scrub status: not a list of NodeScrub ({e}): {}",
            text(&out)
        )
    });
    c.nodes
        .iter()
        .map(|n| {
            nodes
                .iter()
                .find(|s| s.addr == n.addr)
                .and_then(|s| s.stats.clone())
        })
        .collect()
}

/// `tessera scrub start ID` of harness node `node`: a pass starts now (or resumes).
pub async fn start_pass(c: &Cluster, node: usize) {
    let s = c.status().await.expect("status");
    let id = c.node_id(&s, node).to_string();
    cli_ok(c, &["scrub", "start", &id]);
}

/// [`start_pass`] on every node; the Unix ms just before (a pass done after it ended
/// later than that).
pub async fn start_all(c: &Cluster) -> u64 {
    let t = now_ms();
    for n in 0..c.nodes.len() {
        start_pass(c, n).await;
    }
    t
}

/// Whether node stats `s` show a pass ended after `since` (Unix ms) and none running.
pub fn done_since(s: &ScrubStats, since: u64) -> bool {
    !s.running && s.last_pass_done_ms >= since
}

/// The sum of `f` over every node that reported.
pub fn sum(stats: &[Option<ScrubStats>], f: impl Fn(&ScrubStats) -> u64) -> u64 {
    stats.iter().flatten().map(f).sum()
}

/// The scrub state harness node `node` persisted (its data directory's `scrub.json`), if
/// it wrote one that reads.
pub fn persisted(c: &Cluster, node: usize) -> Option<ScrubStats> {
    let b = std::fs::read(c.nodes[node].data_dir.join("scrub.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Polls node `node`'s persisted scrub state until `done` holds, or panics after
/// `timeout` with the last one and the logs.
pub async fn wait_persisted(
    c: &Cluster,
    node: usize,
    timeout: Duration,
    done: impl Fn(&ScrubStats) -> bool,
) -> ScrubStats {
    let deadline = Instant::now() + timeout;
    loop {
        let p = persisted(c, node);
        if let Some(p) = p.as_ref().filter(|p| done(p)) {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "node {node}'s persisted scrub state: not reached in {timeout:?}: {p:#?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `scrub status` until `done` holds (every node reported), or panics after
/// `timeout` with the last answer and the logs.
pub async fn wait(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[ScrubStats]) -> bool,
) -> Vec<ScrubStats> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(c);
        if s.iter().all(Option::is_some) {
            let s: Vec<ScrubStats> = s.into_iter().flatten().collect();
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached in {timeout:?}; scrub status: {s:#?}\n{}",
                c.logs()
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "{what}: a node never reported its scrubbing: {s:#?}\n{}",
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads one range through the client over and over until stopped, checking every answer
/// against the bytes written.
pub struct Reader {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl Reader {
    pub fn start(vol: Volume, off: u64, want: Vec<u8>) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (flag, counted) = (stop.clone(), count.clone());
        let task = tokio::spawn(async move {
            let (mut reads, mut failures) = (0u64, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let r =
                    tokio::time::timeout(Duration::from_secs(20), vol.read(off, want.len() as u64))
                        .await;
                reads += 1;
                match r {
                    Ok(Ok(got)) if got[..] == want[..] => {}
                    Ok(Ok(_)) => failures.push(format!("read {reads}: wrong bytes")),
                    Ok(Err(e)) => failures.push(format!("read {reads}: {e}")),
                    Err(_) => failures.push(format!("read {reads}: no answer in 20 s")),
                }
                counted.store(reads, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (reads, failures)
        });
        Reader {
            stop,
            reads: count,
            task,
        }
    }

    /// Waits until at least `n` reads were made (30 s at most).
    pub async fn wait_reads(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.reads.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "fewer than {n} reads in 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it: the reads made and every failure.
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("reader task")
    }
}

/// Starts a pass on every node and waits until every node finished one started after it
/// and `found` holds; if the passes end without it, starts them again (3 rounds at most): a
/// region whose mark a leadership change dropped is skipped by that pass (its group's new
/// leader may have passed it already), and found by the next. Prints the rounds needed.
pub async fn until_found(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    found: impl Fn(&[ScrubStats]) -> bool,
) -> Vec<ScrubStats> {
    for round in 1..=3 {
        let since = start_all(c).await;
        let s = wait(c, what, timeout, |s| {
            s.iter().all(|s| done_since(s, since)) && (found(s) || round < 3)
        })
        .await;
        if found(&s) {
            eprintln!("{what}: found in pass round {round}");
            return s;
        }
        // A replica's own counts come with its next heartbeat (every 200 ms).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let s: Vec<ScrubStats> = status(c).into_iter().flatten().collect();
        if s.len() == c.nodes.len() && found(&s) {
            eprintln!("{what}: found in pass round {round}");
            return s;
        }
        eprintln!("{what}: not found by pass round {round}; starting another");
    }
    unreachable!("the third round waits for `found`")
}
