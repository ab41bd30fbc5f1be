//! A seeded simulation of one replica group on three nodes: real pollers over real shared
//! logs and chunk files, driven round by round by the test on one virtual clock
//! (`crate::clock`), with a network the test owns (it drops, duplicates, reorders and
//! partitions messages) and faults chosen by a seeded generator: crashes and restarts,
//! partitions, leadership transfers. Clients run a register workload (one sequential
//! client per block, retrying writes with their request id); every answer is checked
//! against what a linearizable register may return. A failing schedule prints its seed;
//! `TESSERA_SIM_SEED` replays it, `TESSERA_SIM_SCHEDULES` runs more of them.
//!
//! The logs' writer threads and the chunk flushers are real: each round waits until they
//! answered (see `Node::settle`). A seed replays the same choices, but not yet exactly the
//! same run: when a log's answer lands between two of a poller's rounds changes how its
//! Readies batch, so the messages (and the generator's draws after them) differ. Driving the
//! log writer inline under the harness is the next step.
//!
//! What it does not do yet: a crash here is a clean stop after the log's last fdatasync
//! (torn batches are the poller tests' `log::tear` cases); membership changes and snapshot
//! catch-up are not scheduled; one sequential client per block cannot see a write applied
//! twice (the nemesis, with several clients a block, does); real fdatasyncs make a
//! schedule cost seconds, not milliseconds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_proto::data::{ChunkAddr, Op, RaftBatch, Reply, Request};

use super::tests::{Node, spec};
use crate::Event;
use crate::clock::virtual_clock;

const NODES: u64 = 3;
const GROUP: u64 = 1;
const BLOCKS: u64 = 4;
const TICK: Duration = Duration::from_millis(100);
/// One simulation step.
const STEP: Duration = Duration::from_millis(20);
/// A client gives up on an attempt after this long (the write's outcome is then unknown).
const ATTEMPT: Duration = Duration::from_secs(2);

type Slot = Arc<Mutex<Option<Reply>>>;

struct Pending {
    req: Request,
    /// The write's value (0 for a read).
    value: u32,
    to: u64,
    answer: Slot,
    sent: Instant,
}

/// One block's register, as its sequential client sees it. A write answered `Ok` took
/// effect before its answer; one never answered may take effect at any later time, once.
#[derive(Default)]
struct Register {
    current: u32,
    /// Unanswered writes that no read has seen yet.
    maybe: HashSet<u32>,
}

impl Register {
    fn read(&mut self, v: u32) -> Result<(), String> {
        if v == self.current || self.maybe.remove(&v) {
            self.current = v;
            return Ok(());
        }
        Err(format!(
            "read {v:#x}, but the register holds {:#x} (or one of {:?})",
            self.current, self.maybe
        ))
    }

    fn wrote(&mut self, v: u32, acked: bool) {
        if acked {
            self.maybe.remove(&v);
            self.current = v;
        } else {
            self.maybe.insert(v);
        }
    }
}

fn block_of(v: u32) -> Bytes {
    Bytes::from(v.to_le_bytes().repeat(1024))
}

struct Sim {
    rng: StdRng,
    nodes: Vec<Option<Node>>,
    /// Messages in flight: (from, to, message).
    net: Vec<(u64, u64, Message)>,
    /// Node pairs that cannot talk (both directions), until the step given.
    cut: HashMap<(u64, u64), usize>,
    registers: Vec<Register>,
    pending: Vec<Option<Pending>>,
    leader_hint: u64,
    next_value: u32,
    next_id: u128,
    acked: usize,
    reads: usize,
    faults: usize,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        virtual_clock::start();
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let mut n = Node::open_as(tempfile::tempdir().unwrap(), id, TICK);
            n.poller.votes_after = virtual_clock::now();
            n.poller.handle(Event::CreateGroup(spec(&[1, 2, 3])));
            n.settle();
            nodes.push(Some(n));
        }
        Sim {
            rng: StdRng::seed_from_u64(seed),
            nodes,
            net: Vec::new(),
            cut: HashMap::new(),
            registers: (0..BLOCKS).map(|_| Register::default()).collect(),
            pending: (0..BLOCKS).map(|_| None).collect(),
            leader_hint: 1,
            next_value: 1,
            next_id: 1,
            acked: 0,
            reads: 0,
            faults: 0,
        }
    }

    fn node(&mut self, id: u64) -> Option<&mut Node> {
        self.nodes[(id - 1) as usize].as_mut()
    }

    fn connected(&self, a: u64, b: u64) -> bool {
        !self.cut.contains_key(&(a.min(b), a.max(b)))
    }

    /// One step: time moves on, the nodes tick, the network delivers, clients act.
    fn step(&mut self, step: usize, faults: bool) -> Result<(), String> {
        let now = virtual_clock::advance(STEP);
        self.cut.retain(|_, until| *until > step);
        for id in 1..=NODES {
            if let Some(n) = self.node(id) {
                if now >= n.poller.next_tick {
                    n.poller.tick(now);
                }
                n.settle();
            }
        }
        for id in 1..=NODES {
            if let Some(n) = self.node(id) {
                let sent = n.take_sent();
                self.net.extend(sent.into_iter().map(|(to, m)| (id, to, m)));
            }
        }
        let mut net = std::mem::take(&mut self.net);
        // In a deterministic order first (a node's outbox is a hash map), then shuffled:
        // reordered; some lost, some duplicated, some held back a step.
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
            let r: f64 = self.rng.r#gen();
            if r < 0.03 || !self.connected(from, to) {
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
        let mut targets: Vec<u64> = batches.keys().copied().collect();
        targets.sort_unstable();
        for to in targets {
            let msgs = batches.remove(&to).unwrap_or_default();
            if let Some(n) = self.node(to) {
                for (from, m) in msgs {
                    let bytes = Bytes::from(m.write_to_bytes().unwrap());
                    n.poller.handle(Event::Raft(RaftBatch {
                        from_node: from,
                        msgs: vec![(GROUP, bytes)],
                    }));
                }
                n.settle();
            }
        }
        if faults {
            self.fault(step);
        }
        self.clients(now)
    }

    fn fault(&mut self, step: usize) {
        let r: f64 = self.rng.r#gen();
        if r < 0.008 {
            // Crash and restart (everything the log had been handed is on disk: a crash
            // after its last fdatasync).
            let id = self.rng.gen_range(1..=NODES);
            if let Some(n) = self.nodes[(id - 1) as usize].take() {
                let mut n = n.restart_as(id, TICK);
                n.settle();
                self.nodes[(id - 1) as usize] = Some(n);
                self.faults += 1;
            }
        } else if r < 0.02 {
            let a = self.rng.gen_range(1..=NODES);
            let b = self.rng.gen_range(1..=NODES);
            if a != b {
                let until = step + self.rng.gen_range(10..150);
                self.cut.insert((a.min(b), a.max(b)), until);
                self.faults += 1;
            }
        } else if r < 0.035 {
            let to = self.rng.gen_range(1..=NODES);
            for id in 1..=NODES {
                if let Some(n) = self.node(id)
                    && n.poller.groups.get(&GROUP).is_some_and(|g| g.is_leader())
                {
                    n.poller.handle(Event::TransferLeader {
                        group: GROUP,
                        to,
                        respond: Box::new(|_| {}),
                    });
                    n.settle();
                }
            }
            self.faults += 1;
        }
    }

    /// Each block's client: take its answer, or give up on it, or send the next request.
    fn clients(&mut self, now: Instant) -> Result<(), String> {
        for b in 0..BLOCKS as usize {
            if let Some(p) = self.pending[b].take() {
                let answer = p.answer.lock().unwrap().take();
                match answer {
                    Some(Reply::Ok(data)) if p.req.op == Op::Read => {
                        let v = data
                            .get(..4)
                            .and_then(|w| w.try_into().ok())
                            .map_or(0, u32::from_le_bytes);
                        if data.len() != 4096 || data != block_of(v) {
                            return Err(format!("block {b}: torn or short read"));
                        }
                        self.registers[b]
                            .read(v)
                            .map_err(|e| format!("block {b}: {e}"))?;
                        self.reads += 1;
                    }
                    Some(Reply::Ok(_)) => {
                        self.registers[b].wrote(p.value, true);
                        self.acked += 1;
                    }
                    Some(Reply::NotLeader { hint }) => {
                        self.leader_hint = if hint != 0 { hint } else { p.to % NODES + 1 };
                        self.send(b, p.req, p.value, now);
                    }
                    Some(_) => {
                        self.leader_hint = p.to % NODES + 1;
                        self.send(b, p.req, p.value, now);
                    }
                    None if now.saturating_duration_since(p.sent) > ATTEMPT => {
                        // Retried elsewhere: the same request (id) again.
                        self.leader_hint = p.to % NODES + 1;
                        self.send(b, p.req, p.value, now);
                    }
                    None => self.pending[b] = Some(p),
                }
                continue;
            }
            if self.rng.gen_bool(0.3) {
                let addr = ChunkAddr {
                    group: GROUP,
                    volume: 1,
                    chunk: 0,
                };
                let off = b as u32 * 4096;
                if self.rng.gen_bool(0.5) {
                    let v = self.next_value;
                    self.next_value += 1;
                    let mut req = Request::write(addr, off, block_of(v));
                    req.id = self.next_id;
                    self.next_id += 1;
                    self.send(b, req, v, now);
                } else {
                    let req = Request::other(Op::Read, addr, off, 4096);
                    self.send(b, req, 0, now);
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, b: usize, req: Request, value: u32, now: Instant) {
        let to = self.leader_hint;
        let answer: Slot = Arc::new(Mutex::new(None));
        let a2 = answer.clone();
        if let Some(n) = self.node(to) {
            n.poller.handle(Event::Request(
                req.clone(),
                Box::new(move |r| *a2.lock().unwrap() = Some(r)),
                Instant::now(),
            ));
        }
        self.pending[b] = Some(Pending {
            req,
            value,
            to,
            answer,
            sent: now,
        });
    }

    /// Writes never answered may or may not have taken effect.
    fn abandon_pending(&mut self) {
        for b in 0..BLOCKS as usize {
            if let Some(p) = self.pending[b].take()
                && p.req.op == Op::Write
            {
                self.registers[b].wrote(p.value, false);
            }
        }
    }
}

/// Runs one schedule: faults for a while, then a calm spell in which every block's client
/// must still be served correctly.
fn run(seed: u64) -> Result<(usize, usize, usize), String> {
    let mut sim = Sim::new(seed);
    for step in 0..600 {
        sim.step(step, true)?;
        // A write given up on stays possible forever: its register knows it.
        for b in 0..BLOCKS as usize {
            if let Some(p) = &sim.pending[b]
                && p.req.op == Op::Write
                && virtual_clock::now().saturating_duration_since(p.sent) > ATTEMPT * 5
            {
                let v = p.value;
                sim.pending[b] = None;
                sim.registers[b].wrote(v, false);
            }
        }
    }
    sim.cut.clear();
    for step in 600..900 {
        sim.step(step, false)?;
    }
    sim.abandon_pending();
    Ok((sim.acked, sim.reads, sim.faults))
}

fn env(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Every schedule keeps each block a linearizable register: no acknowledged write lost, no
/// stale or torn read, across crashes, partitions, lossy networks and transfers.
#[test]
fn random_schedules_keep_every_block_linearizable() {
    let (first, count) = match env("TESSERA_SIM_SEED") {
        Some(seed) => (seed, 1),
        None => (
            rand::random::<u64>() >> 16,
            env("TESSERA_SIM_SCHEDULES").unwrap_or(2),
        ),
    };
    let started = Instant::now();
    let (mut acked, mut reads, mut faults) = (0, 0, 0);
    let mut seen = HashSet::new();
    for seed in first..first + count {
        seen.insert(seed);
        match run(seed) {
            Ok((a, r, f)) => {
                acked += a;
                reads += r;
                faults += f;
            }
            Err(e) => panic!("schedule {seed:#x} failed (TESSERA_SIM_SEED={seed:#x}): {e}"),
        }
    }
    eprintln!(
        "simulated {count} schedules from seed {first:#x} in {:.1}s: {acked} writes \
         acknowledged, {reads} reads checked, {faults} faults",
        started.elapsed().as_secs_f64()
    );
    assert!(
        acked >= count as usize * 20,
        "too few writes acknowledged: {acked}"
    );
    assert!(reads >= count as usize * 20, "too few reads: {reads}");
}
