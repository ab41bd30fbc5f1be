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
//!
//! Layout: this file holds the harness's types, the schedule's entry points (`run`, the
//! tests) and its constants; `sim/` what they do: `node.rs` (one node), `world.rs` (the
//! network and one step of time), `faults.rs`, `manager.rs`, `clients.rs` (and the
//! linearizability checker), `check.rs` (the other invariants).

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

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

mod check;
mod clients;
mod faults;
mod hydrate;
mod manager;
mod node;
mod world;

use node::{spec, tmp_root};

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

/// `TESSERA_SIM_TRACE=1` prints what a schedule does, step by step.
fn tracing() -> bool {
    std::env::var_os("TESSERA_SIM_TRACE").is_some()
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
    // The stuck schedules stall every group of a node id through a process-wide fail
    // point: not while this run compares two runs of a seed.
    let _serial = fail::FailScenario::setup();
    let seed = rand::random::<u64>() >> 16;
    let a = run(seed);
    let b = run(seed);
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "seed {seed:#x}");
}
