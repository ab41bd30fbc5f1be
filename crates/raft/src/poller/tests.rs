//! One real poller over a real shared log and real chunk files, its peers played by the
//! test: every message they send is written here, so each case reaches exactly the
//! interleaving it is about (a snapshot installed over acknowledged entries, a removal, a
//! forged packet, a transfer, a restart) and a crash is a torn log batch (the `log::tear`
//! fail point) followed by a reopen.
//!
//! This file is the harness (a node, its peers' messages, helpers); the cases are in
//! `tests/`, one file a concern.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, Message, MessageType, Snapshot,
};
use tessera_engine::{ChunkStores, Log, LogOptions};
use tessera_proto::control::{self, GroupSpec, PeerInfo};
use tessera_proto::data::{ChunkAddr, Op, RaftBatch, Reply, Request};
use tokio::sync::mpsc;

use super::Poller;
use crate::group::INIT_INDEX;
use crate::{Event, FetchJob, NodeConfig, SnapshotFetcher, Transport};

mod admission;
mod elections;
mod leases;
mod membership;
mod merges;
mod replay;
mod requests;
mod scrubs;
mod sequences;
mod snapshots;
mod unfilled;

const ME: u64 = 1;

const GROUP: u64 = 1;

/// Every message a poller sends, kept for the test (or the simulation) to deliver.
#[derive(Default)]
pub(super) struct Wire(pub(super) Mutex<Vec<(u64, Message)>>);

impl Transport for Wire {
    fn send(&self, to: u64, batch: RaftBatch) {
        let mut sent = self.0.lock().unwrap();
        for (_, b) in batch.msgs {
            sent.push((to, Message::parse_from_bytes(&b).unwrap()));
        }
    }
    fn set_peer(&self, _: u64, _: &str) {}
}

/// A poller over `log` and `chunks` (not yet recovered), its events, its sent messages and
/// the reason it stopped, if it did.
pub(super) struct Started {
    pub(super) poller: Poller,
    pub(super) rx: mpsc::UnboundedReceiver<Event>,
    pub(super) wire: Arc<Wire>,
    pub(super) fatal: Arc<Mutex<Option<String>>>,
}

pub(super) fn start(
    dir: &std::path::Path,
    id: u64,
    tick: Duration,
    log: Log,
    chunks: Arc<ChunkStores>,
    fetcher: Arc<dyn SnapshotFetcher>,
) -> Started {
    let (tx, rx) = mpsc::unbounded_channel();
    let wire = Arc::new(Wire::default());
    let fatal = Arc::new(Mutex::new(None));
    let f = fatal.clone();
    let mut cfg = NodeConfig::new(id, dir.to_path_buf());
    cfg.min_free_bytes = 0;
    cfg.tick = tick;
    let poller = Poller::new(
        cfg,
        log,
        (chunks, crate::scrub::Watches::new()),
        wire.clone(),
        fetcher,
        tx,
        Arc::new(move |m: &crate::Fatal| *f.lock().unwrap() = Some(m.to_string())),
    )
    .unwrap();
    Started {
        poller,
        rx,
        wire,
        fatal,
    }
}

/// Every copy succeeds at once (the chunk data is not what these cases are about).
struct InstantCopy;

impl SnapshotFetcher for InstantCopy {
    fn fetch(&self, _: FetchJob, done: Box<dyn FnOnce(Result<(), crate::FetchError>) + Send>) {
        done(Ok(()))
    }
}

pub(super) struct Node {
    pub(super) dir: tempfile::TempDir,
    pub(super) poller: Poller,
    rx: mpsc::UnboundedReceiver<Event>,
    wire: Arc<Wire>,
    pub(super) fatal: Arc<Mutex<Option<String>>>,
}

pub(super) fn opts() -> LogOptions {
    LogOptions {
        segment_size: 1 << 20,
    }
}

impl Node {
    fn open(dir: tempfile::TempDir) -> Node {
        // Leases of ten seconds: the test's own pace never lets one run out.
        Node::open_as(dir, ME, Duration::from_secs(2))
    }

    pub(super) fn open_as(dir: tempfile::TempDir, id: u64, tick: Duration) -> Node {
        let (log, recovered) = Log::open(&dir.path().join("log"), opts()).unwrap();
        let chunks = Arc::new(ChunkStores::open(&dir.path().join("groups")).unwrap());
        let parts = start(dir.path(), id, tick, log, chunks, Arc::new(InstantCopy));
        let Started {
            mut poller,
            rx,
            wire,
            fatal,
        } = parts;
        poller.recover(recovered);
        Node {
            dir,
            poller,
            rx,
            wire,
            fatal,
        }
    }

    /// A node hosting a new replica of a group of nodes 2, 1, 3 (node 2 listed first, so
    /// this one does not campaign), its creation durable.
    fn follower() -> Node {
        let mut n = Node::open(tempfile::tempdir().unwrap());
        n.poller.handle(Event::CreateGroup(spec(&[2, 1, 3])));
        n.settle();
        n
    }

    /// Runs rounds until the log has answered everything and nothing is left to do.
    pub(super) fn settle(&mut self) {
        self.settle_for(Duration::from_secs(30));
    }

    /// As [`Node::settle`], giving up after `limit` (a log waiting for a full disk).
    pub(super) fn settle_for(&mut self, limit: Duration) {
        let mut quiet_since = Instant::now();
        let deadline = Instant::now() + limit;
        // The log and the destroy thread answer from their threads: however loaded the
        // machine, wait for them (a quiet spell alone is not enough).
        let waiting = |p: &Poller| {
            p.groups.values().any(|g| g.persisting > 0)
                || !p.destroying.is_empty()
                || !p.copying.is_empty()
                || p.flushing
        };
        while (quiet_since.elapsed() < Duration::from_millis(2) || waiting(&self.poller))
            && !self.poller.stopped
            && Instant::now() < deadline
        {
            let mut busy = false;
            while let Ok(ev) = self.rx.try_recv() {
                self.poller.handle(ev);
                busy = true;
            }
            if !self.poller.to_apply.is_empty() {
                self.poller.apply_committed();
                busy = true;
            }
            if !self.poller.dirty.is_empty() || !self.poller.pending_writes.is_empty() {
                self.poller.process_readies();
                busy = true;
            }
            if busy {
                quiet_since = Instant::now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    fn deliver(&mut self, from: u64, msg: Message) {
        let msgs = vec![(GROUP, Bytes::from(msg.write_to_bytes().unwrap()))];
        self.poller.handle(Event::Raft(RaftBatch {
            from_node: from,
            msgs,
        }));
        self.settle();
    }

    pub(super) fn take_sent(&self) -> Vec<(u64, Message)> {
        std::mem::take(&mut *self.wire.0.lock().unwrap())
    }

    /// Stops the node as a crash would (nothing more reaches the log) and starts it again
    /// from what its log and chunk files hold.
    fn restart(self) -> Node {
        let tick = self.poller.cfg.tick;
        let id = self.poller.cfg.node_id;
        self.restart_as(id, tick)
    }

    pub(super) fn restart_as(self, id: u64, tick: Duration) -> Node {
        let Node { dir, poller, .. } = self;
        poller.log.shutdown();
        drop(poller);
        Node::open_as(dir, id, tick)
    }

    pub(super) fn last_index(&self) -> u64 {
        self.poller.groups[&GROUP].raw.raft.raft_log.last_index()
    }
}

pub(super) fn spec(order: &[u64]) -> GroupSpec {
    GroupSpec {
        group_id: GROUP,
        peers: order
            .iter()
            .map(|&n| PeerInfo {
                node_id: n,
                addr: format!("127.0.0.1:{}", 7500 + n),
            })
            .collect(),
        joining: false,
        min_term: 0,
    }
}

/// Node 2's `MsgSnapshot` in term 6, at `index`, carrying `peers` and `conf`.
fn snapshot_msg(index: u64, peers: &[u64], conf: ConfState) -> Message {
    let mut snap = Snapshot {
        data: control::encode(&spec(peers)),
        ..Default::default()
    };
    snap.mut_metadata().index = index;
    snap.mut_metadata().term = 6;
    snap.mut_metadata().set_conf_state(conf);
    let mut m = msg(MessageType::MsgSnapshot, 2, 6);
    m.set_snapshot(snap);
    m
}

pub(super) fn msg(t: MessageType, from: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = ME;
    m.term = term;
    m
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Default::default()
    }
}

/// Node 2, leading term 6, sends entries `from..=to` after the group's first index.
fn append(from: u64, to: u64, commit: u64) -> Message {
    let mut m = msg(MessageType::MsgAppend, 2, 6);
    m.index = from - 1;
    m.log_term = if from - 1 == INIT_INDEX {
        INIT_INDEX
    } else {
        6
    };
    m.commit = commit;
    m.set_entries((from..=to).map(|i| entry(i, 6)).collect::<Vec<_>>().into());
    m
}

fn acked(sent: &[(u64, Message)]) -> u64 {
    sent.iter()
        .filter(|(to, m)| {
            *to == 2 && m.get_msg_type() == MessageType::MsgAppendResponse && !m.reject
        })
        .map(|(_, m)| m.index)
        .max()
        .unwrap_or(0)
}

pub(super) fn read() -> Request {
    Request {
        seq: 0,
        op: Op::Read,
        addr: ChunkAddr {
            group: GROUP,
            volume: 1,
            chunk: 0,
        },
        epoch: 0,
        deadline_ms: 0,
        id: 0,
        offset: 0,
        len: 4096,
        data: Bytes::new(),
    }
}

/// Makes node 1 the leader of term 6 (nodes 2 and 3 vote for it and acknowledge its
/// entries), with fresh heartbeat answers from both.
pub(super) fn leader() -> Node {
    let mut n = Node::open(tempfile::tempdir().unwrap());
    n.poller.votes_after = Instant::now();
    n.poller.handle(Event::CreateGroup(spec(&[1, 2, 3])));
    n.settle();
    grant_votes(&mut n);
    assert!(n.poller.groups[&GROUP].is_leader(), "node 1 leads");
    // Acknowledge the leader's first entry, then answer a heartbeat round.
    for (to, m) in n.take_sent() {
        if m.get_msg_type() == MessageType::MsgAppend {
            let mut r = msg(MessageType::MsgAppendResponse, to, m.term);
            r.index = m.index + m.entries.len() as u64;
            n.deliver(to, r);
        }
    }
    heartbeat_round(&mut n);
    n
}

/// Nodes 2 and 3 grant node 1's pre-vote, then its vote.
fn grant_votes(n: &mut Node) {
    for _ in 0..2 {
        for (to, m) in n.take_sent() {
            let t = match m.get_msg_type() {
                MessageType::MsgRequestPreVote => MessageType::MsgRequestPreVoteResponse,
                MessageType::MsgRequestVote => MessageType::MsgRequestVoteResponse,
                _ => continue,
            };
            n.deliver(to, msg(t, to, m.term));
        }
    }
}

/// Sends a heartbeat round and has nodes 2 and 3 answer it.
fn heartbeat_round(n: &mut Node) {
    n.poller.groups.get_mut(&GROUP).unwrap().raw.ping();
    n.poller.dirty.insert(GROUP);
    n.settle();
    for (to, m) in n.take_sent() {
        if m.get_msg_type() == MessageType::MsgHeartbeat {
            let mut r = msg(MessageType::MsgHeartbeatResponse, to, m.term);
            r.context = m.context.clone();
            n.deliver(to, r);
        }
    }
}

pub(super) fn submit_read(n: &mut Node) -> Arc<Mutex<Option<Reply>>> {
    let got = Arc::new(Mutex::new(None));
    let g2 = got.clone();
    n.poller.handle(Event::Request(
        read(),
        Box::new(move |r| *g2.lock().unwrap() = Some(r)),
        Instant::now(),
    ));
    n.settle();
    got
}

pub(super) fn submit(n: &mut Node, req: Request) -> Arc<Mutex<Option<Reply>>> {
    let got = Arc::new(Mutex::new(None));
    let g2 = got.clone();
    n.poller.handle(Event::Request(
        req,
        Box::new(move |r| *g2.lock().unwrap() = Some(r)),
        Instant::now(),
    ));
    n.settle();
    got
}

pub(super) fn write(id: u128, byte: u8) -> Request {
    let mut r = Request::write(read().addr, 0, Bytes::from(vec![byte; 4096]));
    r.id = id;
    r
}

/// Nodes 2 and 3 acknowledge everything the leader sent them.
pub(super) fn ack_appends(n: &mut Node) {
    for (to, m) in n.take_sent() {
        if m.get_msg_type() == MessageType::MsgAppend && !m.entries.is_empty() {
            let mut r = msg(MessageType::MsgAppendResponse, to, m.term);
            r.index = m.index + m.entries.len() as u64;
            n.deliver(to, r);
        }
    }
}

pub(super) fn ok(r: &Arc<Mutex<Option<Reply>>>) -> bool {
    matches!(*r.lock().unwrap(), Some(Reply::Ok(_)))
}
