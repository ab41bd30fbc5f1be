//! One real poller over a real shared log and real chunk files, its peers played by the
//! test: every message they send is written here, so each case reaches exactly the
//! interleaving it is about (a snapshot installed over acknowledged entries, a removal, a
//! forged packet, a transfer, a restart) and a crash is a torn log batch (the `log::tear`
//! fail point) followed by a reopen.

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
        chunks,
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

    fn last_index(&self) -> u64 {
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

/// Finding 1: a replica that acknowledged entries 6..=10 installs a snapshot at 20, and
/// power fails part way through the install's log batch. Whatever prefix of the batch
/// survives, the restarted replica still holds (or has applied) everything it
/// acknowledged and is not quarantined; before the fix, the compaction mark at 20 could
/// reach the disk first and replay forgot entries 6..=10 while the applied point stayed 5.
#[cfg(feature = "failpoints")]
#[test]
fn a_crash_while_installing_a_snapshot_never_forgets_acknowledged_entries() {
    let scenario = fail::FailScenario::setup();
    for keep in 0..=7 {
        let mut n = Node::follower();
        n.deliver(2, append(INIT_INDEX + 1, 10, INIT_INDEX));
        assert_eq!(
            acked(&n.take_sent()),
            10,
            "the follower acknowledges 6..=10"
        );

        let m = snapshot_msg(
            20,
            &[2, 1, 3],
            ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            },
        );
        fail::cfg("log::tear", &format!("return({keep})")).unwrap();
        n.deliver(2, m);
        fail::remove("log::tear");
        assert!(
            n.fatal.lock().unwrap().is_some(),
            "the torn batch stops the node"
        );

        let n = n.restart();
        assert!(
            !n.poller.quarantined.contains_key(&GROUP),
            "torn after {keep} records: the replica was quarantined"
        );
        let g = &n.poller.groups[&GROUP];
        assert!(
            g.applied >= 10 || n.last_index() >= 10,
            "torn after {keep} records: applied {} and last index {} are below the \
             acknowledged 10",
            g.applied,
            n.last_index()
        );
    }
    scenario.teardown();
}

/// A joining replica (no configuration yet) crashes while installing its first snapshot,
/// which lists it as a learner. Whatever prefix of the install's log batch survives, the
/// restarted replica must not count itself a voter: restored with the leader's membership
/// but not the snapshot's configuration, it took every listed peer for a voter and voted
/// (the simulation found a removed replica elected with that vote, serving stale reads).
#[cfg(feature = "failpoints")]
#[test]
fn a_torn_first_install_never_makes_a_learner_a_voter() {
    let scenario = fail::FailScenario::setup();
    for keep in 0..=6 {
        let mut n = Node::open(tempfile::tempdir().unwrap());
        let mut joining = spec(&[2, 3, 4, 1]);
        joining.joining = true;
        n.poller.handle(Event::CreateGroup(joining));
        n.settle();
        let m = snapshot_msg(
            20,
            &[2, 3, 4, 1],
            ConfState {
                voters: vec![2, 3, 4],
                learners: vec![ME],
                ..Default::default()
            },
        );
        fail::cfg("log::tear", &format!("return({keep})")).unwrap();
        n.deliver(2, m);
        fail::remove("log::tear");
        let n = n.restart();
        if let Some(g) = n.poller.groups.get(&GROUP) {
            let voters = g.mem().conf_state.voters.clone();
            assert!(
                !voters.contains(&ME),
                "torn after {keep} records: the learner restarted as a voter of {voters:?}"
            );
        }
    }
    scenario.teardown();
}

/// The simulation's second split at one index (seeds 0x328a3d8251a2, 0xd0155267eda): a
/// replica holding a deposed leader's uncommitted entries installs a newer leader's
/// snapshot and crashes part way through the install batch. Whatever prefix survives, it
/// must not restart with the snapshot's commit index over its old tail (it would apply
/// entries the group never committed): either the snapshot's applied point came with the
/// commit index, or neither did.
#[cfg(feature = "failpoints")]
#[test]
fn a_torn_install_never_commits_the_old_tail() {
    let scenario = fail::FailScenario::setup();
    for keep in 0..=7 {
        let mut n = Node::follower();
        // Node 2, leading term 6, sends 6..=25; nothing of it is committed.
        n.deliver(2, append(INIT_INDEX + 1, 25, INIT_INDEX));
        let mut m = snapshot_msg(
            20,
            &[2, 1, 3],
            ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            },
        );
        // From node 3, which leads term 7 with other entries.
        m.from = 3;
        m.term = 7;
        m.mut_snapshot().mut_metadata().term = 7;
        fail::cfg("log::tear", &format!("return({keep})")).unwrap();
        n.deliver(3, m);
        fail::remove("log::tear");

        let n = n.restart();
        let g = &n.poller.groups[&GROUP];
        let committed = g.raw.raft.raft_log.committed;
        assert!(
            committed <= INIT_INDEX || g.applied >= 20,
            "torn after {keep} records: commit index {committed} over an old tail (applied {})",
            g.applied
        );
    }
    scenario.teardown();
}

/// Finding 5: a replica applies the conf change that removes it. It stays (its vote may
/// still be needed: see `apply_committed`), keeps its term across a restart, and once the
/// manager destroys it, nothing of it comes back from the log: before the fix its new
/// membership could reach the log after its tombstone, and replay brought the group back
/// with a default hard state (its term and vote forgotten: it could vote twice in a term).
#[test]
fn a_removed_replica_stays_removed_after_a_restart() {
    let mut n = Node::follower();
    let mut cc = ConfChangeV2::default();
    let mut c = ConfChangeSingle::default();
    c.set_change_type(ConfChangeType::RemoveNode);
    c.node_id = ME;
    cc.mut_changes().push(c);
    cc.set_transition(ConfChangeTransition::Auto);
    let mut e = entry(INIT_INDEX + 1, 6);
    e.set_entry_type(EntryType::EntryConfChangeV2);
    e.data = Bytes::from(cc.write_to_bytes().unwrap());
    let mut m = append(INIT_INDEX + 1, INIT_INDEX + 1, INIT_INDEX + 1);
    m.set_entries(vec![e].into());
    n.deliver(2, m);
    let mut n = n.restart();
    let g = &n.poller.groups[&GROUP];
    assert!(!g.raw.raft.prs().conf().voters().contains(ME));
    assert_eq!(g.raw.raft.term, 6, "the removed replica forgot its term");

    n.poller.handle(Event::RemoveGroup(GROUP));
    n.settle();
    assert!(!n.poller.groups.contains_key(&GROUP));
    let n = n.restart();
    assert!(
        !n.poller.groups.contains_key(&GROUP) && !n.poller.quarantined.contains_key(&GROUP),
        "a destroyed replica came back from the log"
    );
}

/// The simulation's stuck group (seed 0xd5bd18ce08e2): the leader of a move that removes
/// it committed the step out of the joint configuration, then destroyed its replica before
/// any follower learned of that commit. The two members left still counted it in the
/// joint configuration's outgoing half, where the third voter was a replica far behind
/// that did not know one of them: no election could ever succeed. Now a leader that
/// applies its own removal steps down (raft-rs would stop the node on the next answer it
/// got) and stays, able to vote, until the manager destroys it.
#[test]
fn a_leader_that_applies_its_own_removal_steps_down_and_stays() {
    let mut n = leader();
    let mut cc = ConfChangeV2::default();
    let mut c = ConfChangeSingle::default();
    c.set_change_type(ConfChangeType::RemoveNode);
    c.node_id = ME;
    cc.mut_changes().push(c);
    cc.set_transition(ConfChangeTransition::Auto);
    let g = n.poller.groups.get_mut(&GROUP).unwrap();
    g.raw.propose_conf_change(vec![], cc).unwrap();
    n.poller.dirty.insert(GROUP);
    n.settle();
    ack_appends(&mut n);
    ack_appends(&mut n);
    let g = &n.poller.groups[&GROUP];
    assert!(
        !g.raw.raft.prs().conf().voters().contains(ME),
        "removal not applied"
    );
    assert_ne!(g.raw.raft.state, raft::StateRole::Leader);
    // A late answer from a follower reaches a replica that no longer leads: no assertion.
    let term = g.raw.raft.term;
    let mut late = msg(MessageType::MsgAppendResponse, 2, term);
    late.index = n.last_index();
    n.deliver(2, late);
    assert!(!n.poller.stopped);
    // It still votes for a member that has its log.
    let mut vote = msg(MessageType::MsgRequestVote, 2, term + 1);
    vote.index = n.last_index();
    vote.log_term = term;
    n.poller.votes_after = Instant::now();
    n.deliver(2, vote);
    let granted = n.take_sent().into_iter().any(|(to, m)| {
        to == 2 && m.get_msg_type() == MessageType::MsgRequestVoteResponse && !m.reject
    });
    assert!(granted, "the removed replica did not vote");
    assert!(n.poller.groups.contains_key(&GROUP));
}

/// Finding 7: a forged heartbeat (a stranger's node id, a huge term and commit index)
/// and one from a member committing past this replica's log are refused and counted; the
/// node keeps serving, and a later honest message still works.
#[test]
fn forged_or_impossible_raft_messages_are_refused_and_the_node_keeps_serving() {
    let mut n = Node::follower();
    let before = crate::metrics::REFUSED_MESSAGES.get();
    let mut stranger = msg(MessageType::MsgHeartbeat, 99, 1 << 40);
    stranger.commit = 1 << 50;
    n.deliver(99, stranger);
    let mut past_log = msg(MessageType::MsgHeartbeat, 2, 6);
    past_log.commit = 1_000;
    n.deliver(2, past_log);
    let mut campaign = msg(MessageType::MsgHup, 2, 0);
    campaign.to = ME;
    n.deliver(2, campaign);
    let mut gap = append(INIT_INDEX + 1, INIT_INDEX + 2, INIT_INDEX);
    gap.mut_entries()[1].index = 100;
    n.deliver(2, gap);
    assert!(crate::metrics::REFUSED_MESSAGES.get() >= before + 4);
    assert!(n.fatal.lock().unwrap().is_none() && !n.poller.stopped);
    let g = &n.poller.groups[&GROUP];
    assert_eq!(
        g.raw.raft.term, INIT_INDEX,
        "no refused message moved the term"
    );
    assert_eq!(g.raw.raft.state, raft::StateRole::Follower);

    n.deliver(2, append(INIT_INDEX + 1, 8, INIT_INDEX));
    assert_eq!(
        acked(&n.take_sent()),
        8,
        "an honest leader is still followed"
    );
}

/// Finding 2 (restart): a follower may have answered a leader's heartbeat just before it
/// restarted, promising to vote for no one else for an election timeout. For that long
/// after it starts it grants no vote (a transfer's forced campaign aside).
#[test]
fn a_restarted_follower_does_not_vote_inside_a_lease_it_may_have_granted() {
    let n = Node::follower();
    let mut n = n.restart();
    n.take_sent();
    let mut vote = msg(MessageType::MsgRequestVote, 3, 7);
    vote.index = 100;
    vote.log_term = 6;
    n.deliver(3, vote.clone());
    let granted = |sent: &[(u64, Message)]| {
        sent.iter()
            .any(|(_, m)| m.get_msg_type() == MessageType::MsgRequestVoteResponse && !m.reject)
    };
    assert!(!granted(&n.take_sent()), "voted right after a restart");
    // Once an election timeout has passed, it votes as usual.
    n.poller.votes_after = Instant::now();
    n.deliver(3, vote);
    assert!(
        granted(&n.take_sent()),
        "a vote after the lease was refused"
    );
}

pub(super) fn read() -> Request {
    Request {
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

/// Finding 2 (transfer): once a leader starts handing leadership over, its lease is void
/// for the rest of its term: the transferee's forced campaign wins votes inside any lease
/// the followers granted, and may win after the transfer was given up here. A read then
/// needs a heartbeat round sent after it arrived (ReadIndex), not the lease.
#[test]
fn a_leader_transferring_leadership_serves_no_read_from_its_lease() {
    let mut n = leader();
    let got = submit_read(&mut n);
    assert!(
        matches!(*got.lock().unwrap(), Some(Reply::Ok(_))),
        "a read under a fresh lease is served at once"
    );

    let answered = Arc::new(Mutex::new(false));
    let a2 = answered.clone();
    n.poller.handle(Event::TransferLeader {
        group: GROUP,
        to: 2,
        respond: Box::new(move |_| *a2.lock().unwrap() = true),
    });
    n.settle();
    assert!(*answered.lock().unwrap());
    let got = submit_read(&mut n);
    assert!(
        got.lock().unwrap().is_none(),
        "a read was served from the lease while a transfer was pending"
    );
    // The transfer is given up (node 2 never answered); the lease stays void this term.
    let g = n.poller.groups.get_mut(&GROUP).unwrap();
    g.raw.raft.abort_leader_transfer();
    let got2 = submit_read(&mut n);
    assert!(
        got2.lock().unwrap().is_none(),
        "a read was served from a voided lease"
    );
    // A heartbeat round sent after the reads arrived confirms the leadership: both are served.
    heartbeat_round(&mut n);
    assert!(matches!(*got.lock().unwrap(), Some(Reply::Ok(_))));
    assert!(matches!(*got2.lock().unwrap(), Some(Reply::Ok(_))));
}

/// Finding 2 (joint consensus): a lease needs a majority of each configuration. Voters
/// {1, 2, 3} joining from {1, 4, 5}: answers from 2 and 3 make three of five, but only one
/// of the outgoing three.
#[test]
fn a_lease_in_a_joint_configuration_needs_a_majority_of_each_half() {
    let mut n = Node::open(tempfile::tempdir().unwrap());
    let dir = n.dir.path().to_path_buf();
    let chunks = ChunkStores::open(&dir.join("g"))
        .unwrap()
        .get(GROUP)
        .unwrap();
    let init = crate::group::GroupInit {
        spec: spec(&[1, 2, 3, 4, 5]),
        conf: Some((
            INIT_INDEX,
            ConfState {
                voters: vec![1, 2, 3],
                voters_outgoing: vec![1, 4, 5],
                ..Default::default()
            },
        )),
        chunks,
        hard_state: Default::default(),
        applied: (INIT_INDEX, INIT_INDEX),
        entries: Vec::new(),
        fences: Default::default(),
    };
    let mut g = crate::group::Group::new(ME, 10, Duration::from_secs(1), init).unwrap();
    let now = Instant::now();
    g.note_contact(2, now);
    g.note_contact(3, now);
    assert!(
        !g.quorum_heard_since(now, true),
        "the outgoing half has not answered"
    );
    g.note_contact(4, now);
    assert!(g.quorum_heard_since(now, true));
    n.poller.stopped = true;
}

/// A crash after a snapshot install at 20 was durable but before its compaction mark was:
/// replay finds an older tail reaching 19 (possibly an uncommitted one of an old term)
/// followed by the install's empty marker at 20. The replica must not keep that tail (it
/// could send it to a lagging follower as if it were the committed log), nor treat the
/// marker as the real entry 20.
#[test]
fn a_log_tail_below_an_installed_snapshot_is_not_kept_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = ChunkStores::open(dir.path()).unwrap().get(GROUP).unwrap();
    let mut entries: Vec<Entry> = (15..20)
        .map(|i| Entry {
            data: Bytes::from_static(b"old"),
            ..entry(i, 5)
        })
        .collect();
    entries.push(entry(20, 6));
    let init = crate::group::GroupInit {
        spec: spec(&[2, 1, 3]),
        conf: None,
        chunks,
        hard_state: Default::default(),
        applied: (20, 6),
        entries,
        fences: Default::default(),
    };
    let g = crate::group::Group::new(ME, 10, Duration::from_secs(1), init).unwrap();
    let mem = g.mem();
    assert_eq!(
        (mem.compacted_index, mem.compacted_term, mem.last_index()),
        (20, 6, 20),
        "the tail below the snapshot was kept"
    );
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

/// A retry of write A (same request id) arriving after a newer write B to the same block
/// must not become a second entry: committed after B, it would undo B, an acknowledged
/// write (the nemesis test found this: a leader change answers A `NotLeader` while A still
/// commits, and the client retries A). The retry is answered with A's own entry, before
/// and after A committed.
#[test]
fn a_retried_write_takes_effect_once_and_never_after_a_newer_write() {
    let mut n = leader();
    let a = submit(&mut n, write(0xA, 0xaa));
    let b = submit(&mut n, write(0xB, 0xbb));
    let last = n.last_index();
    let a_again = submit(&mut n, write(0xA, 0xaa));
    assert_eq!(
        n.last_index(),
        last,
        "the retry of A was proposed again, after B"
    );
    ack_appends(&mut n);
    assert!(ok(&a) && ok(&b) && ok(&a_again), "all three answered Ok");
    // Long after A was applied, one more retry is still answered without a new entry.
    let a_late = submit(&mut n, write(0xA, 0xaa));
    assert!(ok(&a_late));
    assert_eq!(n.last_index(), last);
    let got = submit_read(&mut n);
    match &*got.lock().unwrap() {
        Some(Reply::Ok(data)) => assert!(data.iter().all(|&x| x == 0xbb), "B was undone"),
        other => panic!("read: {other:?}"),
    };
}

/// A leader's uncommitted writes are cut off by the next leader's log, and it leads again
/// with a shorter log: a retry of a write whose entry was past the new end is proposed
/// anew, not looked up beyond the log (raft-rs panics there; the simulation found it).
#[test]
fn a_retry_of_a_write_cut_from_the_log_is_proposed_again() {
    let mut n = leader();
    let _ = submit(&mut n, write(0xA, 0xaa));
    let _ = submit(&mut n, write(0xB, 0xbb));
    let _ = submit(&mut n, write(0xC, 0xcc));
    n.take_sent();
    let term = n.poller.groups[&GROUP].raw.raft.term;
    let first = n.last_index() - 2;
    // Node 2 leads term + 1 and overwrites A's index: B and C are gone.
    let mut m = msg(MessageType::MsgAppend, 2, term + 1);
    m.index = first - 1;
    m.log_term = n.poller.groups[&GROUP]
        .raw
        .raft
        .raft_log
        .term(first - 1)
        .unwrap();
    m.commit = first - 1;
    m.set_entries(vec![entry(first, term + 1)].into());
    n.deliver(2, m);
    assert_eq!(n.last_index(), first);
    // Node 1 leads again (term + 2), its no-op entry at first + 1: C was at first + 2.
    n.poller
        .groups
        .get_mut(&GROUP)
        .unwrap()
        .raw
        .campaign()
        .unwrap();
    n.poller.dirty.insert(GROUP);
    n.settle();
    grant_votes(&mut n);
    assert!(n.poller.groups[&GROUP].is_leader(), "node 1 leads again");
    assert_eq!(n.last_index(), first + 1);
    let c = submit(&mut n, write(0xC, 0xcc));
    assert_eq!(n.last_index(), first + 2, "C proposed again");
    for _ in 0..3 {
        ack_appends(&mut n);
    }
    assert!(
        ok(&c),
        "C answered once its new entry committed: {:?}",
        c.lock().unwrap()
    );
}

/// Node `from` asks this node for a pre-vote and a vote in term 9, its log ending at 40
/// (term 8, newer than anything here): the grants sent back.
fn votes_granted(n: &mut Node, from: u64) -> Vec<(u64, Message)> {
    for t in [MessageType::MsgRequestPreVote, MessageType::MsgRequestVote] {
        let mut m = msg(t, from, 9);
        m.index = 40;
        m.log_term = 8;
        n.deliver(from, m);
    }
    n.take_sent()
        .into_iter()
        .filter(|(_, m)| {
            matches!(
                m.get_msg_type(),
                MessageType::MsgRequestVoteResponse | MessageType::MsgRequestPreVoteResponse
            ) && !m.reject
        })
        .collect()
}

/// A new replica, hosted to join the group, knows no configuration until its first
/// snapshot. Its node may have been a voter of the group before (removed, then added back):
/// a stale member still counting that voter must not win the empty log's vote (the
/// simulation found a stale member elected over committed entries this way).
#[test]
fn a_replica_that_knows_no_configuration_does_not_vote() {
    let mut n = Node::open(tempfile::tempdir().unwrap());
    n.poller.votes_after = Instant::now();
    let mut joining = spec(&[2, 1, 3]);
    joining.joining = true;
    n.poller.handle(Event::CreateGroup(joining));
    n.settle();
    let granted = votes_granted(&mut n, 2);
    assert!(granted.is_empty(), "votes granted: {granted:?}");
}

/// The simulation's split brain (seed 0x306acf872edd): node 1 was removed from the group,
/// then added back as a new empty replica; a leader the group had left behind (term 6,
/// still counting node 1 as a voter) gave it a snapshot, and the two made a majority of
/// the old configuration while the group ran term 9 under another. The manager now
/// creates a joining replica at the term it recorded for the group's last membership
/// change: the stale leader's snapshot is ignored (also after a restart), the current
/// leader's installed.
#[test]
fn a_joining_replica_ignores_leaders_older_than_the_term_it_was_created_at() {
    let mut n = Node::open(tempfile::tempdir().unwrap());
    let mut joining = spec(&[2, 1, 3, 4]);
    joining.joining = true;
    joining.min_term = 9;
    n.poller.handle(Event::CreateGroup(joining));
    n.settle();
    let old_conf = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    let stale = |n: &mut Node| {
        n.deliver(2, snapshot_msg(20, &[1, 2, 3], old_conf.clone()));
        let mut m = append(21, 21, 21);
        m.log_term = 6;
        n.deliver(2, m);
    };
    stale(&mut n);
    let mut n = n.restart();
    stale(&mut n);
    let raft = &n.poller.groups[&GROUP].raw.raft;
    assert_eq!(raft.term, 9);
    assert!(
        raft.prs().conf().voters().ids().is_empty(),
        "took the stale snapshot"
    );
    assert_eq!(
        acked(&n.take_sent()),
        0,
        "acknowledged the stale leader's entries"
    );
    // The current leader (node 3, term 9) is followed.
    let mut m = snapshot_msg(
        30,
        &[2, 1, 3, 4],
        ConfState {
            voters: vec![2, 3, 4],
            learners: vec![1],
            ..Default::default()
        },
    );
    m.from = 3;
    m.term = 9;
    m.mut_snapshot().mut_metadata().term = 9;
    n.deliver(3, m);
    let g = &n.poller.groups[&GROUP];
    assert_eq!(g.applied, 30);
    assert!(g.raw.raft.prs().conf().learners().contains(&ME));
}

/// Suspected, and confirmed: a follower's report that its snapshot copy failed, sent over
/// the network, was dropped (`RawNode::step` refuses `MsgSnapStatus` as a local message),
/// so the leader offered a new snapshot only after its 30 s stall timeout. The leader now
/// takes the report and offers a new snapshot at the next heartbeat.
#[test]
fn a_failed_snapshot_copy_reported_by_the_follower_is_offered_again_at_once() {
    let mut n = leader();
    for _ in 0..3 {
        let _ = submit(&mut n, write(0xA, 0xaa));
        ack_appends(&mut n);
    }
    let last = n.last_index();
    n.poller.groups[&GROUP].mem().compact(last);
    // Node 2 lost its log: the leader starts over with it, and only a snapshot will do.
    let mut r = msg(MessageType::MsgAppendResponse, 2, 6);
    r.term = n.poller.groups[&GROUP].raw.raft.term;
    r.reject = true;
    r.index = last;
    r.reject_hint = 0;
    n.deliver(2, r);
    heartbeat_round(&mut n);
    let snapshots = |sent: &[(u64, Message)]| {
        sent.iter()
            .filter(|(to, m)| *to == 2 && m.get_msg_type() == MessageType::MsgSnapshot)
            .count()
    };
    let mut sent = n.take_sent();
    if snapshots(&sent) == 0 {
        heartbeat_round(&mut n);
        sent = n.take_sent();
    }
    assert_eq!(snapshots(&sent), 1, "the leader offers node 2 a snapshot");
    let progress = |n: &Node| n.poller.groups[&GROUP].raw.raft.prs().get(2).unwrap().state;
    assert_eq!(progress(&n), raft::ProgressState::Snapshot);
    // Node 2's copy failed: it says so, as `snapshot_fetched` does (a report of an older
    // copy is ignored).
    let offered = sent
        .iter()
        .find(|(to, m)| *to == 2 && m.get_msg_type() == MessageType::MsgSnapshot)
        .map(|(_, m)| m.clone())
        .unwrap();
    let mut failed = Message::default();
    failed.set_msg_type(MessageType::MsgSnapStatus);
    failed.from = 2;
    failed.to = ME;
    failed.term = offered.term;
    failed.index = offered.get_snapshot().get_metadata().index - 1;
    failed.reject = true;
    n.deliver(2, failed.clone());
    assert_eq!(
        progress(&n),
        raft::ProgressState::Snapshot,
        "a stale report counted"
    );
    failed.index += 1;
    n.deliver(2, failed);
    assert_eq!(
        progress(&n),
        raft::ProgressState::Probe,
        "the report of a failed copy was dropped"
    );
    heartbeat_round(&mut n);
    let sent = n.take_sent();
    assert_eq!(snapshots(&sent), 1, "a new snapshot at the next heartbeat");
}

/// Suspected, and confirmed: one group that cannot finish its replay (its tail is not
/// committed: no leader reachable) kept the whole node in replay mode, where every group's
/// read-modify-writes take a block failing its checksum as torn and rewrite it, hiding
/// real corruption. Replay mode is now per group.
#[test]
fn a_group_that_cannot_finish_its_replay_keeps_no_other_group_in_replay_mode() {
    let mut n = Node::follower();
    let mut other = spec(&[2, 1, 3]);
    other.group_id = 2;
    n.poller.handle(Event::CreateGroup(other));
    n.settle();
    // Both groups get entries 6..=8, committed only up to 5.
    for gid in [GROUP, 2] {
        let m = append(INIT_INDEX + 1, INIT_INDEX + 3, INIT_INDEX);
        n.poller.handle(Event::Raft(RaftBatch {
            from_node: 2,
            msgs: vec![(gid, Bytes::from(m.write_to_bytes().unwrap()))],
        }));
        n.settle();
    }
    let mut n = n.restart();
    let store = |n: &Node, gid: u64| n.poller.groups[&gid].chunks.clone();
    assert!(store(&n, GROUP).replaying() && store(&n, 2).replaying());
    // Group 2's leader commits its tail; group 1's never comes back.
    let mut hb = msg(MessageType::MsgHeartbeat, 2, 6);
    hb.commit = INIT_INDEX + 3;
    n.poller.handle(Event::Raft(RaftBatch {
        from_node: 2,
        msgs: vec![(2, Bytes::from(hb.write_to_bytes().unwrap()))],
    }));
    n.settle();
    n.poller.tick(Instant::now() + Duration::from_secs(1));
    n.settle();
    assert!(
        n.poller.groups[&2].applied >= INIT_INDEX + 3,
        "group 2 applied its tail"
    );
    assert!(
        !store(&n, 2).replaying(),
        "group 2 finished its replay and is still in replay mode"
    );
    assert!(store(&n, GROUP).replaying(), "group 1 has not finished");
}

/// A leader cut off from its quorum may hold a configuration the group has left, and the
/// manager destroys the replicas a "done" leaves out: the simulation found a stale leader
/// answering done, and a healthy voter destroyed (its committed entries then lived on one
/// replica). Done is said only while a quorum answers this term's heartbeats, and still
/// after a leadership transfer voided the lease (else a change could not finish for the
/// rest of a term in which a transfer was tried).
#[test]
fn a_leader_out_of_contact_never_says_a_membership_change_is_done() {
    crate::clock::virtual_clock::start();
    let mut n = leader();
    let ask = |n: &mut Node| {
        let got = Arc::new(Mutex::new(None));
        let g2 = got.clone();
        n.poller.handle(Event::ChangeMembers {
            group: GROUP,
            peers: spec(&[1, 2, 3]).peers,
            respond: Box::new(move |r| *g2.lock().unwrap() = Some(r)),
        });
        n.settle();
        let r = got.lock().unwrap().take();
        match r {
            Some(Ok(state)) => state.done,
            other => panic!("membership answer: {other:?}"),
        }
    };
    assert!(
        ask(&mut n),
        "under a lease, the current configuration is done"
    );
    n.poller.handle(Event::TransferLeader {
        group: GROUP,
        to: 2,
        respond: Box::new(|_| {}),
    });
    n.settle();
    heartbeat_round(&mut n);
    assert!(
        ask(&mut n),
        "a transfer voided the lease, but the quorum still answers: done"
    );
    // Nobody answers for longer than an election timeout.
    crate::clock::virtual_clock::advance(Duration::from_secs(60));
    assert!(!ask(&mut n), "a leader without a lease said done");
}

/// A snapshot no newer than what a follower applied has nothing to copy. It used to be
/// dropped unanswered, and the leader waited in its snapshot state for the 30 s stall
/// timeout (the simulation found a group stuck so); raft-rs now declines it and answers.
#[test]
fn a_snapshot_no_newer_than_the_applied_index_is_answered() {
    let mut n = Node::follower();
    n.deliver(2, append(INIT_INDEX + 1, INIT_INDEX + 3, INIT_INDEX + 3));
    assert!(n.poller.groups[&GROUP].applied >= INIT_INDEX + 3);
    n.take_sent();
    let m = snapshot_msg(
        INIT_INDEX + 2,
        &[2, 1, 3],
        ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        },
    );
    n.deliver(2, m);
    let answered = n
        .take_sent()
        .into_iter()
        .any(|(to, m)| to == 2 && m.get_msg_type() == MessageType::MsgAppendResponse && !m.reject);
    assert!(answered, "the leader got no answer to its snapshot");
}

/// A request that reaches its leader after its deadline was given up on by its client,
/// which retries: proposed, it could land after the retry and a newer write to the same
/// block (a frame stalled in a storage node's queue past the client's timeout). It is
/// answered `Expired` and never proposed; the same request within its deadline is.
#[test]
fn a_request_past_its_deadline_is_never_proposed() {
    // A leader that has not committed in its term yet cannot tell the client its earlier
    // attempts are not in the group's log (a previous leader may have appended one that
    // will commit): it says "try again", not "expired".
    let mut n = Node::open(tempfile::tempdir().unwrap());
    n.poller.votes_after = Instant::now();
    n.poller.handle(Event::CreateGroup(spec(&[1, 2, 3])));
    n.settle();
    grant_votes(&mut n);
    assert!(n.poller.groups[&GROUP].is_leader());
    let mut late = write(0xC, 0xcc);
    late.deadline_ms = 1;
    let got = submit(&mut n, late);
    assert!(
        matches!(*got.lock().unwrap(), Some(Reply::Unavailable(_))),
        "answered {:?}",
        got.lock().unwrap()
    );

    let mut n = leader();
    let last = n.last_index();
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut late = write(0xD, 0xdd);
    late.deadline_ms = unix_ms - 1;
    let got = submit(&mut n, late.clone());
    assert!(
        matches!(*got.lock().unwrap(), Some(Reply::Expired(_))),
        "answered {:?}",
        got.lock().unwrap()
    );
    assert_eq!(n.last_index(), last, "a late request was proposed");
    late.deadline_ms = unix_ms + 60_000;
    let got = submit(&mut n, late);
    assert_eq!(n.last_index(), last + 1);
    ack_appends(&mut n);
    assert!(ok(&got));
}

/// A follower that lost its log (its replica destroyed on the manager's word and hosted
/// anew while the leader still tracked it) rejects the leader's appends with a last index
/// below what it had acknowledged. The leader must start over with it (in the end, a
/// snapshot) rather than take every rejection for a stale one and leave it stuck.
#[test]
fn a_follower_that_lost_its_log_is_replicated_from_scratch() {
    let mut n = leader();
    let matched = n.poller.groups[&GROUP]
        .raw
        .raft
        .prs()
        .get(2)
        .unwrap()
        .matched;
    assert!(matched > INIT_INDEX);
    let mut r = msg(MessageType::MsgAppendResponse, 2, 6);
    r.reject = true;
    r.index = matched;
    r.reject_hint = 0;
    r.term = n.poller.groups[&GROUP].raw.raft.term;
    n.deliver(2, r);
    let pr = n.poller.groups[&GROUP]
        .raw
        .raft
        .prs()
        .get(2)
        .unwrap()
        .clone();
    assert_eq!(
        pr.matched, 0,
        "the leader still believes the follower holds {matched}"
    );
    assert_ne!(pr.state, raft::ProgressState::Replicate);
}

/// Finding 6 (storage side): the manager's word alone does not destroy a replica that its
/// own configuration lists as a voter while it leads (or hears from a leader).
#[test]
fn a_live_voter_is_not_destroyed_on_the_managers_word() {
    let mut n = leader();
    n.poller.handle(Event::RemoveGroup(GROUP));
    n.settle();
    assert!(
        n.poller.groups.contains_key(&GROUP),
        "a leading voter was destroyed"
    );
}

/// A flush that began before a replica was destroyed and hosted anew must not record its
/// applied point for the new replica (which has applied nothing: a crash would then
/// restart it past data it does not hold).
#[test]
fn a_flush_answer_past_a_replicas_applied_index_is_ignored() {
    let mut n = Node::follower();
    let applied = n.poller.groups[&GROUP].applied;
    n.poller.pending_writes.clear();
    n.poller
        .handle(Event::Flushed(vec![(GROUP, applied + 100, 6)]));
    assert!(
        n.poller.pending_writes.is_empty() && n.poller.pending_compacts.is_empty(),
        "a stale flush would record applied {}",
        applied + 100
    );
}

fn with_epoch(mut r: Request, epoch: u64) -> Request {
    r.epoch = epoch;
    r
}

fn fence(epoch: u64) -> Request {
    with_epoch(Request::other(Op::Fence, read().addr, 0, 0), epoch)
}

fn fenced(r: &Arc<Mutex<Option<Reply>>>) -> bool {
    matches!(*r.lock().unwrap(), Some(Reply::Fenced(_)))
}

/// One writer per volume: once a new writer's fence (epoch 2) is in the log, writes of
/// the old attachment (epoch 1) and unattached ones are refused, never proposed; the new
/// writer's go through. The floor survives a restart (from its slot and the log) and
/// reaches a replica that catches up by snapshot.
#[test]
fn writes_of_an_older_epoch_are_refused_after_a_fence() {
    let mut n = leader();
    let old = submit(&mut n, with_epoch(write(0xA, 0xaa), 1));
    ack_appends(&mut n);
    assert!(ok(&old), "before any fence, epoch 1 writes");
    let f = submit(&mut n, fence(2));
    ack_appends(&mut n);
    assert!(ok(&f), "the fence is answered once applied");
    let last = n.last_index();
    let stale = submit(&mut n, with_epoch(write(0xB, 0xbb), 1));
    let unattached = submit(&mut n, write(0xC, 0xcc));
    assert!(fenced(&stale) && fenced(&unattached));
    assert_eq!(n.last_index(), last, "a fenced write was proposed");
    // A retry of a write that entered the log before the fence gets its outcome.
    let retry = submit(&mut n, with_epoch(write(0xA, 0xaa), 1));
    assert!(ok(&retry));
    let new = submit(&mut n, with_epoch(write(0xD, 0xdd), 2));
    ack_appends(&mut n);
    assert!(ok(&new));
    // A fence and an older write handled in the same round (before any Ready): the write
    // is still refused, never proposed after the fence.
    let answer = |n: &mut Node, req: Request| {
        let got = Arc::new(Mutex::new(None));
        let g2 = got.clone();
        n.poller.handle(Event::Request(
            req,
            Box::new(move |r| *g2.lock().unwrap() = Some(r)),
            Instant::now(),
        ));
        got
    };
    let f3 = answer(&mut n, fence(3));
    let same_round = answer(&mut n, with_epoch(write(0xE, 0xee), 2));
    n.settle();
    ack_appends(&mut n);
    assert!(
        ok(&f3) && fenced(&same_round),
        "{:?}",
        same_round.lock().unwrap()
    );
    match &*submit_read(&mut n).lock().unwrap() {
        Some(Reply::Ok(data)) => assert!(data.iter().all(|&x| x == 0xdd)),
        other => panic!("read: {other:?}"),
    };

    let n = n.restart();
    let g = &n.poller.groups[&GROUP];
    assert_eq!(g.fences.admits(read().addr.volume, 2), Err(3));
    let data = g.mem().snapshot_data.clone();

    // A replica that learns the group from a snapshot knows the floor, also after a crash.
    let mut f = Node::follower();
    let mut snap = snapshot_msg(
        40,
        &[2, 1, 3],
        ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        },
    );
    snap.mut_snapshot().data = data;
    f.deliver(2, snap);
    assert_eq!(f.poller.groups[&GROUP].applied, 40);
    let f = f.restart();
    assert_eq!(
        f.poller.groups[&GROUP].fences.admits(read().addr.volume, 2),
        Err(3)
    );
}

/// The simulation's split brain at one index (seed 0x73dea6c039f6): a leadership transfer
/// reached a replica whose log held a membership change it had not applied (it did not know
/// it was committed). raft-rs counts votes by the applied configuration, so it campaigned
/// in the old one and won with another stale replica, while the new configuration's
/// majority committed other entries at the same index. A replica now refuses to campaign
/// on a transfer while its log holds an unapplied membership change; the leader refuses
/// to start one during a change.
#[test]
fn no_transfer_campaign_while_a_membership_change_is_unapplied() {
    let mut n = Node::follower();
    n.poller.votes_after = Instant::now();
    let mut cc = ConfChangeV2::default();
    let mut c = ConfChangeSingle::default();
    c.set_change_type(ConfChangeType::RemoveNode);
    c.node_id = 3;
    cc.mut_changes().push(c);
    let mut e = entry(INIT_INDEX + 1, 6);
    e.set_entry_type(EntryType::EntryConfChangeV2);
    e.data = Bytes::from(cc.write_to_bytes().unwrap());
    // Appended, not known committed.
    let mut m = append(INIT_INDEX + 1, INIT_INDEX + 1, INIT_INDEX);
    m.set_entries(vec![e].into());
    n.deliver(2, m);
    let _ = n.take_sent();
    n.deliver(2, msg(MessageType::MsgTimeoutNow, 2, 6));
    let g = &n.poller.groups[&GROUP];
    assert_eq!(g.raw.raft.state, raft::StateRole::Follower);
    let votes = n
        .take_sent()
        .into_iter()
        .filter(|(_, m)| m.get_msg_type() == MessageType::MsgRequestVote)
        .count();
    assert_eq!(
        votes, 0,
        "campaigned in a configuration the group may have left"
    );
    // Once it learns the change is committed and applies it, a transfer works again.
    let mut m = append(INIT_INDEX + 2, INIT_INDEX + 1, INIT_INDEX + 1);
    m.set_entries(Vec::<Entry>::new().into());
    m.index = INIT_INDEX + 1;
    m.log_term = 6;
    n.deliver(2, m);
    n.deliver(2, msg(MessageType::MsgTimeoutNow, 2, 6));
    assert_ne!(
        n.poller.groups[&GROUP].raw.raft.state,
        raft::StateRole::Follower
    );
}

/// The simulation's split brain through a learner's vote (seed 0x9b6c547583c9): node 1,
/// added back to a group it had left, held only the leader's configuration (a torn first
/// install) in which it is a learner. A member cut off since before it left still counted
/// node 1 as a voter and won its vote, then a majority of the old configuration. A replica
/// that is not a voter (in its applied configuration, or in a change its log holds) does not
/// vote.
#[test]
fn a_learner_does_not_vote() {
    let mut n = Node::open(tempfile::tempdir().unwrap());
    n.poller.votes_after = Instant::now();
    let mut joining = spec(&[2, 1, 3, 4]);
    joining.joining = true;
    n.poller.handle(Event::CreateGroup(joining));
    n.settle();
    n.deliver(
        2,
        snapshot_msg(
            20,
            &[2, 1, 3, 4],
            ConfState {
                voters: vec![2, 3, 4],
                learners: vec![1],
                ..Default::default()
            },
        ),
    );
    assert_eq!(n.poller.groups[&GROUP].applied, 20);
    // Restarted: it knows no leader (so no lease refuses the candidate).
    let mut n = n.restart();
    n.poller.votes_after = Instant::now();
    let _ = n.take_sent();
    let granted = votes_granted(&mut n, 3);
    assert!(granted.is_empty(), "a learner granted votes: {granted:?}");
}

/// Issue 12: below the free-space floor every request that allocates is refused with
/// `DiskFull` (write-zeroes provisions its range with FALLOC_FL_ZERO_RANGE, so it
/// allocates like a write), while a discard, which frees space, still goes through; once
/// space is back, writes are accepted again.
#[test]
fn below_the_free_space_floor_allocating_requests_are_refused_and_discards_are_not() {
    let mut n = leader();
    n.poller.cfg.min_free_bytes = u64::MAX;
    n.poller.next_space_check = Instant::now();
    let full =
        |r: &Arc<Mutex<Option<Reply>>>| matches!(*r.lock().unwrap(), Some(Reply::DiskFull(_)));
    let mut zeroes = Request::other(Op::WriteZeroes, read().addr, 0, 4096);
    zeroes.id = 0xB;
    let z = submit(&mut n, zeroes);
    assert!(full(&z), "write-zeroes: {:?}", z.lock().unwrap());
    let w = submit(&mut n, write(0xA, 0xaa));
    assert!(full(&w), "write: {:?}", w.lock().unwrap());
    let mut discard = Request::other(Op::Discard, read().addr, 0, 4096);
    discard.id = 0xC;
    let d = submit(&mut n, discard);
    ack_appends(&mut n);
    assert!(ok(&d), "discard: {:?}", d.lock().unwrap());

    n.poller.cfg.min_free_bytes = 0;
    n.poller.next_space_check = Instant::now();
    let w = submit(&mut n, write(0xD, 0xdd));
    ack_appends(&mut n);
    assert!(ok(&w), "write once space is back: {:?}", w.lock().unwrap());
}

/// A membership change entry (a joint one if it holds more than one change; leaving a
/// joint configuration if it holds none).
fn conf_entry(index: u64, changes: &[(u64, ConfChangeType)]) -> Entry {
    let mut cc = ConfChangeV2::default();
    for (id, t) in changes {
        let mut c = ConfChangeSingle::default();
        c.set_change_type(*t);
        c.node_id = *id;
        cc.mut_changes().push(c);
    }
    cc.set_transition(ConfChangeTransition::Auto);
    let mut e = entry(index, 6);
    e.set_entry_type(EntryType::EntryConfChangeV2);
    e.data = Bytes::from(cc.write_to_bytes().unwrap());
    e
}

/// Has the peers answer this node's (pre-)vote requests of the kind `t`: `grant` grant
/// them, the others refuse. Returns the nodes asked.
fn answer_votes(n: &mut Node, t: MessageType, grant: &[u64]) -> Vec<u64> {
    let resp = match t {
        MessageType::MsgRequestPreVote => MessageType::MsgRequestPreVoteResponse,
        _ => MessageType::MsgRequestVoteResponse,
    };
    let mut asked: Vec<(u64, u64)> = n
        .take_sent()
        .into_iter()
        .filter(|(_, m)| m.get_msg_type() == t)
        .map(|(to, m)| (to, m.term))
        .collect();
    // Grants first: a refusal first would make any count lose at once.
    asked.sort_by_key(|(to, _)| !grant.contains(to));
    for (to, term) in &asked {
        let reject = !grant.contains(to);
        // A refusal carries the voter's term: a pre-vote's is the one before it asks for.
        let pre = resp == MessageType::MsgRequestPreVoteResponse;
        let mut r = msg(resp, *to, if reject && pre { term - 1 } else { *term });
        r.reject = reject;
        n.deliver(*to, r);
    }
    asked.into_iter().map(|(to, _)| to).collect()
}

/// Raft thesis §4.1: a server decides elections by the newest configuration in its log,
/// committed or not; raft-rs counts votes by the one it applied. Group {1,2,3} replaces 3
/// with 4: node 1's log holds 4's addition as a learner (applied), the joint change and
/// the change leaving it (neither known committed here). Past the leave, {2,4} alone
/// commit. Node 1 campaigns: with the vote of removed node 3 it won a majority of
/// {1,2,3}, and led without what {2,4} committed. It now needs a majority of {1,2,4} too,
/// and asks node 4 for it.
#[test]
fn votes_are_counted_by_the_newest_configuration_in_the_log() {
    let mut n = Node::follower();
    n.poller.votes_after = Instant::now();
    let first = INIT_INDEX + 1;
    let mut m = append(first, first + 2, first);
    m.set_entries(
        vec![
            conf_entry(first, &[(4, ConfChangeType::AddLearnerNode)]),
            conf_entry(
                first + 1,
                &[
                    (4, ConfChangeType::AddNode),
                    (3, ConfChangeType::RemoveNode),
                ],
            ),
            conf_entry(first + 2, &[]),
        ]
        .into(),
    );
    n.deliver(2, m);
    {
        let g = &n.poller.groups[&GROUP];
        assert_eq!(g.applied, first, "only the learner's addition is applied");
        assert!(g.raw.raft.prs().conf().learners().contains(&4));
    }
    let _ = n.take_sent();
    let g = n.poller.groups.get_mut(&GROUP).unwrap();
    g.raw.campaign().unwrap();
    n.poller.dirty.insert(GROUP);
    n.settle();
    // Node 2 has entries past the leave and refuses; stale node 3 grants.
    let asked = answer_votes(&mut n, MessageType::MsgRequestPreVote, &[3]);
    let _ = answer_votes(&mut n, MessageType::MsgRequestVote, &[3]);
    assert!(
        !n.poller.groups[&GROUP].is_leader(),
        "elected by a majority of a configuration its log has left"
    );
    assert!(asked.contains(&4), "node 4 was not asked: {asked:?}");
    // Node 4 grants as well: a majority of both, elected.
    n.deliver(4, msg(MessageType::MsgRequestPreVoteResponse, 4, 7));
    let _ = answer_votes(&mut n, MessageType::MsgRequestVote, &[3, 4]);
    assert!(
        n.poller.groups[&GROUP].is_leader(),
        "not elected by {{1,3,4}}"
    );
}
