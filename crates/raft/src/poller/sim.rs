//! A seeded, deterministic simulation of one replica group on four storage nodes: real
//! pollers, real groups and real shared logs and chunk files (on tmpfs), every thread of
//! theirs driven inline by the harness, one virtual clock, and a network the harness owns.
//!
//! Determinism: each log is opened stepped (`Log::open_stepped`: the harness decides when
//! a batch becomes durable), chunk flushes and file deletions run inline in the poller
//! (`Poller::inline_io`), snapshot copies run inline (`SimCopy`), raft-rs's random election
//! timeouts are replaced by a fixed one per node (`virtual_clock::set_simulated`),
//! and every draw comes from one generator seeded by the schedule's seed. A failing
//! schedule prints its seed; `TESSERA_SIM_SEED=<seed>` replays exactly that run
//! (`TESSERA_SIM_TRACE=1` prints each step's replicas, `TESSERA_SIM_MSGS=1` every message
//! delivered).
//!
//! A schedule (`run`): three voters and a spare; for 600 steps of 20 ms, faults drawn from
//! the seed, then 300 calm steps (no faults, no message loss) in which every block must be
//! served again (a replacement still under way at the end is reported: `LIVENESS`). Faults:
//! - crashes: at a random moment (the log's queue cut anywhere: some batches durable, the
//!   next one torn after a random number of records, the rest lost), or armed to strike at
//!   a fail point: while a snapshot install is on its way to the log, while a removed
//!   replica's tombstone is, or right after a conf change applied;
//! - partitions of a node pair, a lossy network (drops, duplicates, delays, reordering);
//! - leadership transfers, some followed by the old leader's isolation;
//! - membership changes as the manager drives them: a replica replaced by the spare (new
//!   learner, snapshot copy, joint consensus), then the removed replica destroyed;
//! - writer changes (a gateway killed, another attached): the clients' unanswered writes
//!   are abandoned where they are, some sent again later with their old epoch, and the
//!   new writer fences the group (`Op::Fence`) before its first request.
//!
//! Checks: every block's history against a linearizable register (one sequential client
//! per block, with its own routing, retrying writes under their request id; a fenced
//! writer's unanswered write may take effect before the fence's answer, never after); no node
//! stops or panics; a replica whose removal was durable never comes back after a restart;
//! no replica is quarantined; a restarted replica keeps every committed entry it
//! acknowledged, and a voter that acknowledged entries keeps its replica; the manager is
//! never told "done" while the newest applied configuration still counts the replica it
//! will destroy; no two replicas commit different entries at one index; every block is
//! served again once the faults stop.
//! The simulation gives up on a stalled snapshot copy after 2 s (production: 30 s).
//!
//! Stuck schedules (`run_stuck`, with the `failpoints` feature; `TESSERA_STUCK_SCHEDULES`,
//! default 10 per test): the leader's apply fails for good from step 50 on; the manager replaces a replica reported stuck by the spare.
//! Checked besides the above: the stuck replica is reported, and (without other faults)
//! replaced, destroyed, and its node's log back to a couple of segments.
//!
//! Left out: power loss in chunk files (crashes keep what was written to them; the
//! fdatasync cases are the engine's fail-point tests); several clients on one block (the
//! nemesis over NBD has them); more than one group per node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_engine::{ChunkStores, Log, LogOptions};
use tessera_proto::control::{GroupSpec, MembershipState, PeerInfo};
use tessera_proto::data::{ChunkAddr, Op, RaftBatch, Reply, Request};
use tokio::sync::mpsc;

use super::Poller;
use super::tests::{Started, Wire, start};
use crate::clock::virtual_clock;
use crate::{Event, FetchError, FetchJob, MembershipError, SnapshotFetcher};

const NODES: u64 = 4;
const GROUP: u64 = 1;
const BLOCKS: u64 = 4;
const TICK: Duration = Duration::from_millis(100);
/// One simulation step.
const STEP: Duration = Duration::from_millis(20);
/// A client gives up on an attempt after this long (the write's outcome is then unknown).
const ATTEMPT: Duration = Duration::from_secs(2);
const FAULT_STEPS: usize = 600;
const CALM_STEPS: usize = 300;
/// A replica whose apply stays stalled this long is reported stuck (production: 10 s).
const STUCK_AFTER: Duration = Duration::from_secs(1);

// ---- one node ----------------------------------------------------------------------

/// Every node's chunk stores, by node id (a snapshot copy reads the sender's), and the
/// copies made so far.
#[derive(Default)]
struct Disks {
    stores: Mutex<HashMap<u64, Arc<ChunkStores>>>,
    copies: std::sync::atomic::AtomicUsize,
}

type Stores = Arc<Disks>;

/// A snapshot copy done at once, inline in the poller: the sender's blocks as they are
/// now (at or past the snapshot's index), written into the receiver's store and synced.
struct SimCopy(Stores);

impl SnapshotFetcher for SimCopy {
    fn fetch(&self, job: FetchJob, done: Box<dyn FnOnce(Result<(), FetchError>) + Send>) {
        self.0
            .copies
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let src = self
            .0
            .stores
            .lock()
            .unwrap()
            .get(&job.from)
            .and_then(|s| s.existing(job.group));
        let Some(src) = src else {
            return done(Err(FetchError::Retry("the sender is down".into())));
        };
        let copy = || -> tessera_engine::Result<()> {
            for (volume, chunk) in src.list_chunks()? {
                let blocks = src.chunk_blocks(volume, chunk)?;
                let data = src.read(volume, chunk, 0, blocks * 4096)?;
                job.store.write(volume, chunk, 0, &data)?;
            }
            job.store.sync()
        };
        done(copy().map_err(|e| FetchError::Retry(e.to_string())))
    }
}

struct SimNode {
    id: u64,
    dir: Arc<tempfile::TempDir>,
    poller: Poller,
    rx: mpsc::UnboundedReceiver<Event>,
    wire: Arc<Wire>,
    fatal: Arc<Mutex<Option<String>>>,
}

/// Where an armed crash strikes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CrashPoint {
    /// At the next log write, whatever it holds.
    AnyWrite,
    /// While a snapshot install is queued for the log.
    Install,
    /// While a destroyed replica's tombstone is queued for the log.
    Removal,
    /// At the first log write after a conf change was applied.
    ConfApplied,
}

/// A crash decided by the schedule: where, and how much of the log's queue survives.
#[derive(Clone, Copy, Debug)]
struct Crash {
    at: CrashPoint,
    /// Queued operations written as one durable batch before the crash.
    keep: usize,
    /// Records of the next batch that reach the disk (a torn write); `None`: none.
    torn: Option<usize>,
}

fn tmp_root() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl SimNode {
    fn open(dir: Arc<tempfile::TempDir>, id: u64, stores: &Stores) -> SimNode {
        let opts = LogOptions {
            segment_size: 256 << 10,
        };
        let (log, recovered) = Log::open_stepped(&dir.path().join("log"), opts).unwrap();
        let chunks = Arc::new(ChunkStores::open(&dir.path().join("groups")).unwrap());
        stores.stores.lock().unwrap().insert(id, chunks.clone());
        let fetcher = Arc::new(SimCopy(stores.clone()));
        let Started {
            mut poller,
            rx,
            wire,
            fatal,
        } = start(dir.path(), id, TICK, log, chunks, fetcher);
        poller.inline_io = true;
        poller.cfg.stuck_after = STUCK_AFTER;
        poller.recover(recovered);
        SimNode {
            id,
            dir,
            poller,
            rx,
            wire,
            fatal,
        }
    }

    fn hosts(&self) -> bool {
        self.poller.groups.contains_key(&GROUP)
    }

    fn is_leader(&self) -> bool {
        self.poller
            .groups
            .get(&GROUP)
            .is_some_and(|g| g.is_leader())
    }

    /// Whether an armed crash strikes now, with the log about to write what it queued.
    fn at(&self, point: CrashPoint, conf_applied: bool) -> bool {
        match point {
            CrashPoint::AnyWrite => true,
            CrashPoint::Install => self
                .poller
                .groups
                .get(&GROUP)
                .is_some_and(|g| g.installed.is_some()),
            CrashPoint::Removal => self.poller.destroying.contains(&GROUP),
            CrashPoint::ConfApplied => conf_applied,
        }
    }

    /// Runs rounds until nothing is left to do: events, applies, Readies, log writes.
    /// An armed crash strikes at the first log write its point matches: the node is then
    /// crashed (the log keeps what the crash says) and `Err(crash)` is returned.
    fn settle(&mut self, crash: Option<Crash>) -> Result<(), Crash> {
        let mut conf_applied = false;
        for _ in 0..100_000 {
            let mut busy = false;
            while let Ok(ev) = self.rx.try_recv() {
                self.poller.handle(ev);
                busy = true;
            }
            if self.poller.stopped {
                return Ok(());
            }
            if !self.poller.to_apply.is_empty() {
                let confs = self.conf_index();
                self.poller.apply_committed();
                conf_applied |= self.conf_index() != confs;
                busy = true;
            }
            if !self.poller.dirty.is_empty() || !self.poller.pending_writes.is_empty() {
                self.poller.process_readies();
                busy = true;
            }
            if self.poller.log.queued() > 0 {
                if let Some(c) = crash
                    && self.at(c.at, conf_applied)
                {
                    self.poller.log.crash(c.keep, c.torn);
                    return Err(c);
                }
                self.poller.log.step();
                busy = true;
            }
            if !busy {
                return Ok(());
            }
        }
        panic!("node {}: rounds never settled", self.id);
    }

    fn conf_index(&self) -> Option<raft::eraftpb::ConfState> {
        let g = self.poller.groups.get(&GROUP)?;
        Some(g.mem().conf_state.clone())
    }

    fn take_sent(&self) -> Vec<(u64, Message)> {
        std::mem::take(&mut *self.wire.0.lock().unwrap())
    }

    /// Stops the node as a crash would (its log already cut) and starts it again from
    /// what its log and chunk files hold.
    fn restart(self, stores: &Stores) -> SimNode {
        let SimNode {
            id, dir, poller, ..
        } = self;
        poller.log.crash(0, None);
        drop(poller);
        SimNode::open(dir, id, stores)
    }
}

fn spec(peers: &[u64], joining: bool, min_term: u64) -> GroupSpec {
    GroupSpec {
        group_id: GROUP,
        peers: peers
            .iter()
            .map(|&n| PeerInfo {
                node_id: n,
                addr: format!("127.0.0.1:{}", 7500 + n),
            })
            .collect(),
        joining,
        min_term,
    }
}

/// `TESSERA_SIM_TRACE=1` prints what a schedule does, step by step.
fn tracing() -> bool {
    std::env::var_os("TESSERA_SIM_TRACE").is_some()
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

// ---- the checker -------------------------------------------------------------------

/// One block's register, as its sequential client sees it. A write answered `Ok` took
/// effect before its answer; one never answered may take effect at any later time, once,
/// unless its writer was fenced: then only before the fence was acknowledged.
#[derive(Default)]
struct Register {
    current: u32,
    /// Unanswered writes that no read has seen yet.
    maybe: HashSet<u32>,
    /// Unanswered writes of a fenced writer: each may have taken effect before the fence,
    /// never after. The first read or write after the fence settles which.
    before_fence: HashSet<u32>,
}

impl Register {
    fn read(&mut self, v: u32) -> Result<(), String> {
        if v == self.current || self.maybe.remove(&v) || self.before_fence.contains(&v) {
            self.current = v;
            self.before_fence.clear();
            return Ok(());
        }
        Err(format!(
            "read {v:#x}, but the register holds {:#x} (or one of {:?}; fenced writes were {:?})",
            self.current, self.maybe, self.before_fence
        ))
    }

    fn wrote(&mut self, v: u32, acked: bool) {
        if acked {
            self.maybe.remove(&v);
            self.current = v;
            self.before_fence.clear();
        } else {
            self.maybe.insert(v);
        }
    }

    /// The writer of every unanswered write so far was fenced (and the fence is answered).
    fn fence(&mut self) {
        self.before_fence.extend(self.maybe.drain());
    }
}

fn block_of(v: u32) -> Bytes {
    Bytes::from(v.to_le_bytes().repeat(1024))
}

// ---- the schedule ------------------------------------------------------------------

type Slot<T> = Arc<Mutex<Option<T>>>;

struct Pending {
    req: Request,
    /// The write's value (0 for a read).
    value: u32,
    to: u64,
    answer: Slot<Reply>,
    sent: Instant,
    first_sent: Instant,
}

/// One block's client: sequential, with its own idea of who leads.
struct Client {
    register: Register,
    pending: Option<Pending>,
    leader_hint: u64,
    /// Answers received since the faults stopped.
    calm_answers: usize,
    /// Reads answered since the faults stopped.
    calm_reads: usize,
}

/// A membership change the "manager" is driving: `target` replaces `removed` by `added`.
struct Change {
    target: Vec<u64>,
    removed: u64,
    answer: Slot<Result<MembershipState, MembershipError>>,
    done: bool,
}

#[derive(Default, Debug, Clone, Copy)]
struct Figures {
    acked: usize,
    reads: usize,
    faults: usize,
    crashes: usize,
    changes: usize,
    /// Writer changes (a new writer epoch fenced in).
    writers: usize,
    copies: usize,
    /// Replacements still under way at the end of the calm phase (reported, see `run`).
    unfinished: usize,
    /// A digest of every message delivered, in order: equal runs have equal traces.
    trace: u64,
}

struct Sim {
    rng: StdRng,
    stores: Stores,
    nodes: Vec<Option<SimNode>>,
    /// Messages in flight: (from, to, message).
    net: Vec<(u64, u64, Message)>,
    /// Node pairs that cannot talk (both directions), from and until the steps given.
    cut: HashMap<(u64, u64), (usize, usize)>,
    /// Crashes armed per node.
    armed: HashMap<u64, (Crash, usize)>,
    clients: Vec<Client>,
    members: Vec<u64>,
    /// The writer epoch of the clients' requests: a writer change (a gateway killed, another
    /// attached) moves to a new one and fences the group with it before any new request.
    epoch: u64,
    /// The new writer's fence, until the group answers it.
    fencing: Option<Pending>,
    /// Writes of fenced writers, sent again now and then (a cut-off old gateway retrying).
    orphans: Vec<Request>,
    /// The term of the leader that last said a change was done, as the manager records
    /// it: a joining replica starts there.
    min_term: u64,
    change: Option<Change>,
    /// Nodes whose replica's removal was durable (and that were not given one since).
    gone: HashSet<u64>,
    /// The configuration applied at the highest index any replica reached so far (a
    /// crash may set a replica's applied index back until its replay; this does not).
    newest_conf: Option<(u64, u64, raft::eraftpb::ConfState)>,
    /// The highest index each node's replica acknowledged (sent a successful append
    /// response for) since it was hosted, with the term it answered in: a leader of a later
    /// term may cut entries acknowledged to an older one (uncommitted ones), so a later
    /// term's acknowledgement replaces an older term's.
    acked: HashMap<u64, (u64, u64)>,
    /// The term of the entry committed at each index, as first seen (`check_committed`).
    committed: HashMap<u64, u64>,
    next_value: u32,
    next_id: u128,
    fig: Figures,
    /// Replicas replaced because their node reported them stuck.
    stuck_replaced: usize,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        virtual_clock::start();
        virtual_clock::set_simulated(true);
        let stores: Stores = Arc::default();
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let dir = Arc::new(tempfile::tempdir_in(tmp_root()).unwrap());
            let mut n = SimNode::open(dir, id, &stores);
            n.poller.votes_after = virtual_clock::now();
            if id <= 3 {
                n.poller
                    .handle(Event::CreateGroup(spec(&[1, 2, 3], false, 0)));
            }
            n.settle(None).unwrap();
            nodes.push(Some(n));
        }
        Sim {
            rng: StdRng::seed_from_u64(seed),
            stores,
            nodes,
            net: Vec::new(),
            cut: HashMap::new(),
            armed: HashMap::new(),
            clients: (0..BLOCKS)
                .map(|_| Client {
                    register: Register::default(),
                    pending: None,
                    leader_hint: 1,
                    calm_answers: 0,
                    calm_reads: 0,
                })
                .collect(),
            members: vec![1, 2, 3],
            epoch: 1,
            fencing: None,
            orphans: Vec::new(),
            min_term: 0,
            change: None,
            gone: HashSet::new(),
            newest_conf: None,
            acked: HashMap::new(),
            committed: HashMap::new(),
            next_value: 1,
            next_id: 1,
            fig: Figures::default(),
            stuck_replaced: 0,
        }
    }

    fn node(&mut self, id: u64) -> Option<&mut SimNode> {
        self.nodes[(id - 1) as usize].as_mut()
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .flatten()
            .filter(|n| n.is_leader())
            .max_by_key(|n| n.poller.groups[&GROUP].raw.raft.term)
            .map(|n| n.id)
    }

    fn connected(&self, a: u64, b: u64, step: usize) -> bool {
        self.cut
            .get(&(a.min(b), a.max(b)))
            .is_none_or(|&(from, _)| step < from)
    }

    /// Settles node `id`, with its armed crash if any; a crash that strikes restarts it.
    fn settle(&mut self, id: u64) -> Result<(), String> {
        let crash = self.armed.get(&id).map(|(c, _)| *c);
        let Some(n) = self.node(id) else {
            return Ok(());
        };
        let result = n.settle(crash);
        if let Some(msg) = n.fatal.lock().unwrap().clone() {
            return Err(format!("node {id} stopped: {msg}"));
        }
        match result {
            Ok(()) => Ok(()),
            Err(c) => {
                self.armed.remove(&id);
                self.crash_restart(id, c)
            }
        }
    }

    /// Notes the configuration applied at the highest index so far.
    /// Raft's safety, checked directly: no two replicas ever commit different entries at
    /// one index (a term per index, from the entries each replica holds up to its commit).
    fn check_committed(&mut self) -> Result<(), String> {
        for n in self.nodes.iter().flatten() {
            let Some(g) = n.poller.groups.get(&GROUP) else {
                continue;
            };
            let commit = g.raw.raft.raft_log.committed;
            for e in g.mem().entries.iter().filter(|e| e.index <= commit) {
                let term = *self.committed.entry(e.index).or_insert(e.term);
                if term != e.term {
                    return Err(format!(
                        "two entries committed at index {}: term {term}, and term {} on node {}",
                        e.index, e.term, n.id
                    ));
                }
            }
        }
        Ok(())
    }

    fn note_newest_conf(&mut self) {
        for n in self.nodes.iter().flatten() {
            if let Some(g) = n.poller.groups.get(&GROUP)
                && self
                    .newest_conf
                    .as_ref()
                    .is_none_or(|(a, _, _)| g.applied > *a)
            {
                self.newest_conf = Some((g.applied, n.id, g.mem().conf_state.clone()));
            }
        }
    }

    fn crash_restart(&mut self, id: u64, c: Crash) -> Result<(), String> {
        self.note_newest_conf();
        let Some(n) = self.nodes[(id - 1) as usize].take() else {
            return Ok(());
        };
        self.fig.crashes += 1;
        trace!("crash node {id} {c:?}");
        let commit = self
            .nodes
            .iter()
            .flatten()
            .filter_map(|n| n.poller.groups.get(&GROUP))
            .map(|g| g.raw.raft.raft_log.committed)
            .max()
            .unwrap_or(0)
            .max(
                n.poller
                    .groups
                    .get(&GROUP)
                    .map_or(0, |g| g.raw.raft.raft_log.committed),
            );
        // A replica being destroyed has applied its removal (or was told to go after one).
        let leaving = n.poller.destroying.contains(&GROUP);
        let hosted = n.hosts();
        let mut n = n.restart(&self.stores);
        let voter = hosted
            && !leaving
            && self.newest_conf.as_ref().is_some_and(|(_, _, cs)| {
                cs.voters.contains(&id) || cs.voters_outgoing.contains(&id)
            });
        if !n.hosts() && voter && self.acked.get(&id).is_some_and(|&(_, a)| a > 0) {
            return Err(format!(
                "node {id}, a voter that acknowledged entries, lost its replica in a crash \
                 ({c:?}); newest configuration {:?}",
                self.newest_conf
            ));
        }
        if let Some(g) = n.poller.groups.get(&GROUP) {
            // Every committed entry it acknowledged is still in its log or applied.
            let have = g.raw.raft.raft_log.last_index().max(g.applied);
            let need = self.acked.get(&id).map_or(0, |&(_, a)| a).min(commit);
            if have < need {
                return Err(format!(
                    "node {id} forgot committed entries it acknowledged: it acknowledged \
                     {need}, its log ends at {} and it applied {} after a crash ({c:?})",
                    g.raw.raft.raft_log.last_index(),
                    g.applied
                ));
            }
        }
        if n.poller.quarantined.contains_key(&GROUP) {
            return Err(format!(
                "node {id} quarantined its replica after a crash ({c:?})"
            ));
        }
        if self.gone.contains(&id) && n.hosts() {
            return Err(format!(
                "node {id}: a replica whose removal was durable came back after a crash ({c:?})"
            ));
        }
        let settled = n.settle(None);
        self.nodes[(id - 1) as usize] = Some(n);
        settled.map_err(|_| "no crash was armed".to_string())
    }

    /// One step: time moves on, the nodes tick, the network delivers, the manager and
    /// the clients act, faults strike.
    fn step(&mut self, step: usize, faults: bool) -> Result<(), String> {
        let now = virtual_clock::advance(STEP);
        if tracing() {
            let roles: Vec<String> = self
                .nodes
                .iter()
                .flatten()
                .filter_map(|n| {
                    let g = n.poller.groups.get(&GROUP)?;
                    let r = &g.raw.raft;
                    let prs: Vec<String> = if g.is_leader() {
                        r.prs()
                            .iter()
                            .map(|(id, p)| format!("{id}={}{:?}", p.matched, p.state))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let cs = r.prs().conf().to_conf_state();
                    let mut incoming = cs.voters.clone();
                    incoming.sort_unstable();
                    let mut outgoing = cs.voters_outgoing.clone();
                    outgoing.sort_unstable();
                    let joint = if outgoing.is_empty() {
                        String::new()
                    } else {
                        format!("&{outgoing:?}")
                    };
                    Some(format!(
                        "{}:{:?}/t{}/c{}/a{}/l{}{:?}{joint}{}",
                        n.id,
                        r.state,
                        r.term,
                        r.raft_log.committed,
                        g.applied,
                        r.raft_log.last_index(),
                        incoming,
                        prs.join(",")
                    ))
                })
                .collect();
            eprintln!("step {step}: {}", roles.join(" "));
        }
        self.cut.retain(|_, (_, until)| *until > step);
        self.armed.retain(|_, (_, until)| *until > step);
        for id in 1..=NODES {
            if let Some(n) = self.node(id)
                && now >= n.poller.next_tick
            {
                n.poller.tick(now);
            }
            self.settle(id)?;
        }
        for id in 1..=NODES {
            if let Some(n) = self.node(id) {
                let sent = n.take_sent();
                for (_, m) in &sent {
                    if m.get_msg_type() == raft::eraftpb::MessageType::MsgAppendResponse
                        && !m.reject
                    {
                        let a = self.acked.entry(id).or_default();
                        *a = if m.term > a.0 {
                            (m.term, m.index)
                        } else {
                            (a.0, a.1.max(m.index))
                        };
                    }
                }
                self.net.extend(sent.into_iter().map(|(to, m)| (id, to, m)));
            }
        }
        let mut net = std::mem::take(&mut self.net);
        // In a deterministic order first, then shuffled: reordered; some lost, some
        // duplicated, some held back a step.
        net.sort_by_key(|(from, to, m)| {
            let kind = m.get_msg_type() as i32;
            (
                *from, *to, kind, m.term, m.index, m.log_term, m.commit, m.reject,
            )
        });
        for i in (1..net.len()).rev() {
            let j = self.rng.gen_range(0..=i);
            net.swap(i, j);
        }
        let mut batches: HashMap<u64, Vec<(u64, Message)>> = HashMap::new();
        for (from, to, m) in net {
            // Once the faults stop, the network stops losing messages too.
            let r: f64 = if faults { self.rng.r#gen() } else { 1.0 };
            if r < 0.03 || !self.connected(from, to, step) {
                continue;
            }
            if r < 0.08 {
                self.net.push((from, to, m));
                continue;
            }
            if r < 0.10 {
                batches.entry(to).or_default().push((from, m.clone()));
            }
            batches.entry(to).or_default().push((from, m));
        }
        for to in 1..=NODES {
            let msgs = batches.remove(&to).unwrap_or_default();
            if msgs.is_empty() {
                continue;
            }
            for (from, m) in &msgs {
                for x in [
                    *from,
                    to,
                    m.get_msg_type() as u64,
                    m.term,
                    m.index,
                    m.commit,
                ] {
                    self.fig.trace = (self.fig.trace ^ x).wrapping_mul(0x100_0000_01b3);
                }
            }
            if let Some(n) = self.node(to) {
                for (from, m) in msgs {
                    if std::env::var_os("TESSERA_SIM_MSGS").is_some() {
                        eprintln!(
                            "  {from}->{to} {:?} t{} i{} lt{} c{} rej{}",
                            m.get_msg_type(),
                            m.term,
                            m.index,
                            m.log_term,
                            m.commit,
                            m.reject
                        );
                    }
                    let bytes = Bytes::from(m.write_to_bytes().unwrap());
                    n.poller.handle(Event::Raft(RaftBatch {
                        from_node: from,
                        msgs: vec![(GROUP, bytes)],
                    }));
                }
                self.settle(to)?;
            }
        }
        self.note_newest_conf();
        self.check_committed()?;
        self.manage(step)?;
        if faults {
            self.fault(step)?;
        }
        self.clients(now, faults)
    }

    /// The manager's part: drive a membership change to its end, then destroy the
    /// removed replica.
    fn manage(&mut self, step: usize) -> Result<(), String> {
        for id in 1..=NODES {
            let gone = self
                .nodes
                .get((id - 1) as usize)
                .and_then(|n| n.as_ref())
                .is_some_and(|n| !n.hosts() && !n.poller.destroying.contains(&GROUP));
            let out = match &self.change {
                Some(c) if c.done => !c.target.contains(&id),
                _ => !self.members.contains(&id),
            };
            if gone && out {
                self.gone.insert(id);
                self.acked.remove(&id);
            }
        }
        if !step.is_multiple_of(5) {
            return Ok(());
        }
        if self.change.is_none() {
            self.replace_stuck();
        }
        let Some(change) = &mut self.change else {
            return Ok(());
        };
        if let Some(answer) = change.answer.lock().unwrap().take()
            && let Ok(state) = answer
            && state.done
            && !change.done
        {
            change.done = true;
            self.min_term = self.min_term.max(state.term);
            // The manager will destroy the replica left out: the group's newest applied
            // configuration must not count it any more.
            let removed = change.removed;
            if let Some((applied, id, cs)) = &self.newest_conf
                && (cs.voters.contains(&removed) || cs.voters_outgoing.contains(&removed))
            {
                return Err(format!(
                    "told the change is done while node {removed} is still a voter of the \
                     configuration node {id} applied at {applied}: {cs:?}"
                ));
            }
        }
        if change.done {
            // The removed replica is destroyed on the manager's word once it is out.
            let removed = change.removed;
            let target = change.target.clone();
            if self.gone.contains(&removed) || self.nodes[(removed - 1) as usize].is_none() {
                self.members = target;
                self.change = None;
                return Ok(());
            }
            if let Some(n) = self.node(removed) {
                n.poller.handle(Event::RemoveGroup(GROUP));
            }
            self.settle(removed)?;
            return Ok(());
        }
        let target = change.target.clone();
        let answer = change.answer.clone();
        // As the manager does, a joining replica learns the members and the target.
        let mut known = self.members.clone();
        known.extend(target.iter().filter(|id| !self.members.contains(id)));
        // The new replica is hosted (again, if a crash lost its creation) ...
        let min_term = self.min_term;
        for &id in &target {
            if let Some(n) = self.node(id)
                && !n.hosts()
                && !n.poller.destroying.contains(&GROUP)
            {
                n.poller
                    .handle(Event::CreateGroup(spec(&known, true, min_term)));
                self.gone.remove(&id);
                self.acked.remove(&id);
                self.settle(id)?;
            }
        }
        // ... and the leader asked to move towards the target.
        if let Some(l) = self.leader() {
            if let Some(n) = self.node(l) {
                n.poller.handle(Event::ChangeMembers {
                    group: GROUP,
                    peers: spec(&target, false, 0).peers,
                    respond: Box::new(move |r| *answer.lock().unwrap() = Some(r)),
                });
            }
            self.settle(l)?;
        }
        Ok(())
    }

    /// As the manager does with a replica its node reports stuck (it cannot apply): the
    /// spare replaces it.
    fn replace_stuck(&mut self) {
        let now = virtual_clock::now();
        let stuck = self.members.iter().copied().find(|&id| {
            self.nodes[(id - 1) as usize].as_ref().is_some_and(|n| {
                n.poller
                    .states(now)
                    .iter()
                    .any(|s| s.group_id == GROUP && s.stuck.is_some())
            })
        });
        let spare = (1..=NODES).find(|id| !self.members.contains(id) && self.gone.contains(id));
        if let (Some(removed), Some(added)) = (stuck, spare) {
            let mut target = self.members.clone();
            target.retain(|&id| id != removed);
            target.push(added);
            trace!("change: replace stuck {removed} by {added}: {target:?}");
            self.change = Some(Change {
                target,
                removed,
                answer: Arc::default(),
                done: false,
            });
            self.stuck_replaced += 1;
        }
    }

    fn fault(&mut self, step: usize) -> Result<(), String> {
        let r: f64 = self.rng.r#gen();
        let node = self.rng.gen_range(1..=NODES);
        trace!("fault draw {r:.3} node {node}");
        if r < 0.003 {
            // A crash now, between two steps (nothing queued in its log).
            let c = Crash {
                at: CrashPoint::AnyWrite,
                keep: 0,
                torn: None,
            };
            self.crash_restart(node, c)?;
        } else if r < 0.007 {
            // A crash at a random moment of the node's next log write.
            let c = self.crash_plan(CrashPoint::AnyWrite);
            self.armed.insert(node, (c, step + 20));
        } else if r < 0.011 {
            // A crash armed at a fail point, for a while.
            let at = match self.rng.gen_range(0..3) {
                0 => CrashPoint::Install,
                1 => CrashPoint::Removal,
                _ => CrashPoint::ConfApplied,
            };
            let c = self.crash_plan(at);
            self.armed.insert(node, (c, step + 200));
        } else if r < 0.020 {
            let other = self.rng.gen_range(1..=NODES);
            if other != node {
                let until = step + self.rng.gen_range(10..150);
                self.cut
                    .insert((node.min(other), node.max(other)), (step, until));
            }
        } else if r < 0.032 {
            // A leadership transfer; now and then the old leader is cut off right after
            // its MsgTimeoutNow left (leader balancing meeting a partition).
            let Some(l) = self.leader() else {
                return Ok(());
            };
            if let Some(n) = self.node(l) {
                n.poller.handle(Event::TransferLeader {
                    group: GROUP,
                    to: node,
                    respond: Box::new(|_| {}),
                });
            }
            self.settle(l)?;
            if self.rng.gen_bool(0.5) {
                let from = step + self.rng.gen_range(1..4);
                let until = from + self.rng.gen_range(20..80);
                for other in 1..=NODES {
                    if other != l {
                        self.cut.insert((l.min(other), l.max(other)), (from, until));
                    }
                }
            }
        } else if r < 0.040 && self.change.is_none() {
            // The manager replaces one replica by the spare node.
            let spare = (1..=NODES).find(|id| !self.members.contains(id));
            let Some(added) = spare else {
                return Ok(());
            };
            if !self.gone.contains(&added) {
                return Ok(());
            }
            let removed = self.members[self.rng.gen_range(0..self.members.len())];
            let mut target: Vec<u64> = self.members.clone();
            target.retain(|&id| id != removed);
            target.push(added);
            trace!("change: replace {removed} by {added}: {target:?}");
            self.change = Some(Change {
                target,
                removed,
                answer: Arc::default(),
                done: false,
            });
            self.fig.changes += 1;
        } else if r < 0.043 && self.fencing.is_none() {
            self.change_writer(virtual_clock::now());
        } else {
            return Ok(());
        }
        self.fig.faults += 1;
        Ok(())
    }

    /// The writer dies and another attaches: the old one's requests are left where they are
    /// (in queues, in logs) or sent again later; the new one fences the group first.
    fn change_writer(&mut self, now: Instant) {
        self.epoch += 1;
        self.fig.writers += 1;
        trace!("writer change: epoch {}", self.epoch);
        for c in &mut self.clients {
            if let Some(p) = c.pending.take()
                && p.req.op == Op::Write
            {
                c.register.wrote(p.value, false);
                self.orphans.push(p.req);
            }
        }
        let addr = ChunkAddr {
            group: GROUP,
            volume: 1,
            chunk: 0,
        };
        let mut req = Request::other(Op::Fence, addr, 0, 0);
        req.epoch = self.epoch;
        req.id = self.next_id;
        self.next_id += 1;
        let to = self.clients[0].leader_hint;
        self.fencing = Some(self.deliver_request(req, 0, to, now, now));
    }

    /// The fence: answered, or sent again. Returns whether writes may go.
    fn fence_step(&mut self, now: Instant) -> bool {
        let Some(p) = self.fencing.take() else {
            return true;
        };
        let answer = p.answer.lock().unwrap().take();
        match answer {
            Some(Reply::Ok(_)) => {
                trace!("fence of epoch {} answered", p.req.epoch);
                for c in &mut self.clients {
                    c.register.fence();
                }
                return true;
            }
            Some(Reply::NotLeader { hint }) if hint != 0 && hint != p.to => {
                self.fencing = Some(self.deliver_request(p.req, 0, hint, now, p.first_sent));
            }
            None if now.saturating_duration_since(p.sent) <= ATTEMPT => self.fencing = Some(p),
            _ => {
                let to = p.to % NODES + 1;
                self.fencing = Some(self.deliver_request(p.req, 0, to, now, p.first_sent));
            }
        }
        false
    }

    /// Now and then a fenced writer's write arrives again, at any node.
    fn orphan_step(&mut self, now: Instant) {
        if self.orphans.is_empty() || !self.rng.gen_bool(0.05) {
            return;
        }
        let i = self.rng.gen_range(0..self.orphans.len());
        let req = self.orphans.swap_remove(i);
        let to = self.rng.gen_range(1..=NODES);
        trace!(
            "a fenced writer's write (epoch {}) again at node {to}",
            req.epoch
        );
        let _ = self.deliver_request(req, 0, to, now, now);
    }

    fn crash_plan(&mut self, at: CrashPoint) -> Crash {
        Crash {
            at,
            keep: self.rng.gen_range(0..3),
            torn: self
                .rng
                .gen_bool(0.6)
                .then(|| self.rng.gen_range(0..6usize)),
        }
    }

    /// Each block's client: take its answer, or give up on it, or send the next request.
    fn clients(&mut self, now: Instant, faults: bool) -> Result<(), String> {
        if faults {
            self.orphan_step(now);
        }
        let writes_may_go = self.fence_step(now);
        for b in 0..BLOCKS as usize {
            if let Some(p) = self.clients[b].pending.take() {
                let answer = p.answer.lock().unwrap().take();
                let c = &mut self.clients[b];
                match answer {
                    Some(Reply::Ok(data)) if p.req.op == Op::Read => {
                        let v = data
                            .get(..4)
                            .and_then(|w| w.try_into().ok())
                            .map_or(0, u32::from_le_bytes);
                        if data.len() != 4096 || data != block_of(v) {
                            return Err(format!("block {b}: torn or short read"));
                        }
                        trace!("block {b}: read {v:#x} at node {}", p.to);
                        c.register
                            .read(v)
                            .map_err(|e| format!("block {b} (read at node {}): {e}", p.to))?;
                        self.fig.reads += 1;
                        c.calm_answers += usize::from(!faults);
                        c.calm_reads += usize::from(!faults);
                    }
                    Some(Reply::Ok(_)) => {
                        trace!("block {b}: wrote {:#x} at node {}", p.value, p.to);
                        c.register.wrote(p.value, true);
                        self.fig.acked += 1;
                        c.calm_answers += usize::from(!faults);
                    }
                    Some(Reply::NotLeader { hint }) if hint != 0 && hint != p.to => {
                        c.leader_hint = hint;
                        self.retry(b, p, now);
                    }
                    Some(_) => {
                        c.leader_hint = p.to % NODES + 1;
                        self.retry(b, p, now);
                    }
                    None if now.saturating_duration_since(p.sent) > ATTEMPT => {
                        c.leader_hint = p.to % NODES + 1;
                        self.retry(b, p, now);
                    }
                    None => c.pending = Some(p),
                }
                continue;
            }
            if writes_may_go && self.rng.gen_bool(0.3) {
                let addr = ChunkAddr {
                    group: GROUP,
                    volume: 1,
                    chunk: 0,
                };
                let off = b as u32 * 4096;
                // Now and then a client's routing is stale: it asks some node.
                let to = if self.rng.gen_bool(0.25) {
                    self.rng.gen_range(1..=NODES)
                } else {
                    self.clients[b].leader_hint
                };
                if self.rng.gen_bool(0.5) {
                    let v = self.next_value;
                    self.next_value += 1;
                    let mut req = Request::write(addr, off, block_of(v));
                    req.epoch = self.epoch;
                    req.id = self.next_id;
                    self.next_id += 1;
                    self.send(b, req, v, to, now, now);
                } else {
                    let req = Request::other(Op::Read, addr, off, 4096);
                    self.send(b, req, 0, to, now, now);
                }
            }
        }
        Ok(())
    }

    /// Tries the request again (the same request id), at the client's leader hint; a
    /// write retried for too long is given up: it may still take effect, once.
    fn retry(&mut self, b: usize, p: Pending, now: Instant) {
        if p.req.op == Op::Write && now.saturating_duration_since(p.first_sent) > ATTEMPT * 5 {
            self.clients[b].register.wrote(p.value, false);
            return;
        }
        let to = self.clients[b].leader_hint;
        self.send(b, p.req, p.value, to, now, p.first_sent);
    }

    fn send(&mut self, b: usize, req: Request, value: u32, to: u64, now: Instant, first: Instant) {
        let p = self.deliver_request(req, value, to, now, first);
        self.clients[b].pending = Some(p);
    }

    fn deliver_request(
        &mut self,
        req: Request,
        value: u32,
        to: u64,
        now: Instant,
        first: Instant,
    ) -> Pending {
        let answer: Slot<Reply> = Arc::new(Mutex::new(None));
        let a2 = answer.clone();
        if let Some(n) = self.node(to) {
            n.poller.handle(Event::Request(
                req.clone(),
                Box::new(move |r| *a2.lock().unwrap() = Some(r)),
                Instant::now(),
            ));
        }
        Pending {
            req,
            value,
            to,
            answer,
            sent: now,
            first_sent: first,
        }
    }
}

/// Runs one schedule: faults for a while, then a calm spell in which every block's client
/// must still be served correctly.
fn run(seed: u64) -> Result<Figures, String> {
    let mut sim = Sim::new(seed);
    for step in 0..FAULT_STEPS {
        sim.step(step, true)?;
    }
    sim.cut.clear();
    sim.armed.clear();
    for step in FAULT_STEPS..FAULT_STEPS + CALM_STEPS {
        sim.step(step, false)?;
    }
    // Reported, not failed: about one schedule in 10,000 leaves a new replica stuck after a
    // stale leader's snapshot (a liveness bug under investigation; the seed replays it).
    if let Some(c) = &sim.change {
        eprintln!(
            "LIVENESS schedule {seed:#x}: the replacement of node {} (target {:?}) never \
             finished, {CALM_STEPS} steps after the faults stopped",
            c.removed, c.target
        );
        sim.fig.unfinished += 1;
    }
    for (b, c) in sim.clients.iter().enumerate() {
        if c.calm_answers == 0 {
            return Err(format!(
                "block {b} was never served in {CALM_STEPS} steps after the faults stopped"
            ));
        }
    }
    sim.fig.copies = sim.stores.copies.load(std::sync::atomic::Ordering::Relaxed);
    Ok(sim.fig)
}

fn env(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Runs `count` schedules from `first`; the first failure is returned with its seed.
fn run_many(first: u64, count: u64) -> Result<Figures, (u64, String)> {
    let mut total = Figures::default();
    for seed in first..first + count {
        let outcome = std::panic::catch_unwind(|| run(seed)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        });
        match outcome {
            Ok(f) => {
                total.acked += f.acked;
                total.reads += f.reads;
                total.faults += f.faults;
                total.crashes += f.crashes;
                total.changes += f.changes;
                total.writers += f.writers;
                total.copies += f.copies;
                total.unfinished += f.unfinished;
            }
            Err(e) => return Err((seed, e)),
        }
    }
    Ok(total)
}

/// Runs this shard's schedules: `TESSERA_SIM_SCHEDULES` (default 2,000) split over
/// `SHARDS` tests, so that the test runner spreads them over the cores; from a random
/// first seed, or just `TESSERA_SIM_SEED` (in shard 0).
fn shard(index: u64) {
    let (first, count) = match env("TESSERA_SIM_SEED") {
        Some(seed) if index == 0 => (seed, 1),
        Some(_) => return,
        None => (
            rand::random::<u64>() >> 16,
            env("TESSERA_SIM_SCHEDULES")
                .unwrap_or(2_000)
                .div_ceil(SHARDS),
        ),
    };
    let started = Instant::now();
    match run_many(first, count) {
        Ok(f) => {
            eprintln!(
                "simulated {count} schedules from seed {first:#x} in {:.1}s: {} faults \
                 ({} crashes, {} replica replacements, {} writer changes), {} snapshot \
                 copies, {} writes acknowledged, {} reads checked, {} replacements unfinished",
                started.elapsed().as_secs_f64(),
                f.faults,
                f.crashes,
                f.changes,
                f.writers,
                f.copies,
                f.acked,
                f.reads,
                f.unfinished
            );
            assert!(
                f.acked >= count as usize * 20,
                "too few writes acknowledged"
            );
            assert!(f.reads >= count as usize * 20, "too few reads checked");
            assert!(f.crashes >= count as usize, "too few crashes");
        }
        Err((seed, e)) => {
            panic!(
                "schedule {seed:#x} failed (replay: TESSERA_SIM_SEED={seed:#x}), the {}th of \
                 this shard, after {:.1}s: {e}",
                seed - first + 1,
                started.elapsed().as_secs_f64()
            )
        }
    }
}

const SHARDS: u64 = 4;

// Every schedule keeps each block a linearizable register: no acknowledged write lost, no
// stale or torn read, across crashes (torn log writes included), partitions, lossy
// networks, transfers and replica replacements; no node stops, no removed replica comes
// back, no restarted replica forgets what it acknowledged, every block is served again
// once the faults stop.
#[test]
fn random_schedules_keep_every_block_linearizable_0() {
    shard(0)
}

#[test]
fn random_schedules_keep_every_block_linearizable_1() {
    shard(1)
}

#[test]
fn random_schedules_keep_every_block_linearizable_2() {
    shard(2)
}

#[test]
fn random_schedules_keep_every_block_linearizable_3() {
    shard(3)
}

/// Issue 12: from step 50 on, the leader's apply fails (a full disk, through the
/// `raft::apply` fail point) for good. Its clients are answered by the other replicas
/// (the stuck leader hands over and acknowledges nothing it could not serve a read for),
/// every block stays a linearizable register, the stuck replica is reported and replaced
/// by the spare, then destroyed, and its node's log shrinks back.
#[cfg(feature = "failpoints")]
fn run_stuck(seed: u64, faults: bool) -> Result<(), String> {
    let mut sim = Sim::new(seed);
    for step in 0..50 {
        sim.step(step, false)?;
    }
    let stuck = sim.leader().ok_or("no leader after 50 steps")?;
    fail::cfg("raft::apply", &format!("return({stuck}/{GROUP})")).unwrap();
    let mut steps = || -> Result<(), String> {
        for step in 50..FAULT_STEPS {
            sim.step(step, faults)?;
        }
        sim.cut.clear();
        sim.armed.clear();
        // Only what the calm spell serves counts (the warm-up ran without faults too).
        for c in &mut sim.clients {
            c.calm_answers = 0;
            c.calm_reads = 0;
        }
        for step in FAULT_STEPS..FAULT_STEPS + CALM_STEPS {
            sim.step(step, false)?;
        }
        Ok(())
    };
    let outcome = steps();
    fail::remove("raft::apply");
    outcome?;
    for (b, c) in sim.clients.iter().enumerate() {
        if c.calm_reads == 0 {
            return Err(format!(
                "block {b} had no read served in {CALM_STEPS} steps after the faults stopped"
            ));
        }
    }
    // Under faults a random replacement may remove the stuck replica before it is reported
    // (and add it back later): what must hold there is checked above.
    if !faults {
        if sim.stuck_replaced == 0 {
            return Err(format!("node {stuck}'s stuck replica was never reported"));
        }
        let member = sim.members.contains(&stuck);
        let n = sim.node(stuck).ok_or("the stuck node is gone")?;
        if n.hosts() || member {
            return Err(format!("node {stuck}'s stuck replica was never destroyed"));
        }
        let segments = n.poller.log.stats().segments;
        if segments > 2 {
            return Err(format!(
                "node {stuck}'s log still holds {segments} segments of 256 KiB"
            ));
        }
    }
    Ok(())
}

#[cfg(feature = "failpoints")]
fn stuck_schedules(faults: bool) {
    let _scenario = fail::FailScenario::setup();
    let first = env("TESSERA_SIM_SEED").unwrap_or_else(|| rand::random::<u64>() >> 16);
    let count = if env("TESSERA_SIM_SEED").is_some() {
        1
    } else {
        env("TESSERA_STUCK_SCHEDULES").unwrap_or(10)
    };
    for seed in first..first + count {
        if let Err(e) = run_stuck(seed, faults) {
            panic!("stuck schedule {seed:#x} failed (replay: TESSERA_SIM_SEED={seed:#x}): {e}");
        }
    }
}

#[cfg(feature = "failpoints")]
#[test]
fn a_stuck_leader_is_replaced_while_every_block_stays_served() {
    stuck_schedules(false)
}

#[cfg(feature = "failpoints")]
#[test]
fn a_stuck_leader_under_faults_keeps_every_block_linearizable() {
    stuck_schedules(true)
}

/// The same seed gives the same run, to the message: a failing seed reproduces.
#[test]
fn a_schedule_replays_exactly_from_its_seed() {
    let seed = rand::random::<u64>() >> 16;
    let a = run(seed);
    let b = run(seed);
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "seed {seed:#x}");
}
