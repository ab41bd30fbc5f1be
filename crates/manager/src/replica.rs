//! The managers' own Raft group (raft-rs `RawNode`): replicates every `state::Mutation` to
//! all managers before it is applied anywhere. A manager with no configured peers is a group
//! of one and elects itself at start.
//!
//! Owns the Raft task (one tokio task: a 100 ms tick, elections after 1–2 s, pre-vote and
//! check-quorum) and its durability through `raft_log`; messages to the other managers go
//! through `peer` ([`tessera_proto::frame::Kind::ManagerRaft`] frames). It never touches
//! the state: committed entries are queued in commit order for whoever applies them — the
//! service, under its lock, on every manager (see `service::replicated`).
//!
//! Rules kept here:
//! - entries and hard state are durable (`RaftLog::save`, fsync) before the messages raft-rs
//!   marks as "after persistence" are sent, and before the Ready is advanced;
//! - the Raft task never waits on the network: each peer has its own task fed by a bounded
//!   queue, and a message that does not fit is dropped (Raft retransmits);
//! - the log is compacted once applied: at every tick where it holds more than twice
//!   `log_keep` entries past the applied index's predecessor, everything up to `log_keep`
//!   entries behind the applied index is deleted (on disk, then in the raft-rs `MemStorage`
//!   mirror the `RawNode` reads), at most `COMPACT_ROWS` a tick, and never past a snapshot
//!   being taken or sent. A peer needing entries that are gone gets a snapshot,
//!   taken on demand (`snapshot`) and installed in one transaction on the receiving side,
//!   with the committed queue emptied under the applier's gate so that nothing older is
//!   applied on top of it;
//! - membership starts as the configured peers (or this manager alone) and then changes only
//!   through the log: [`Replica::propose_add`] adds a learner whose address rides in the
//!   change's context, and the leader promotes it to voter once it has caught up (a voter
//!   added before it runs would leave a single manager unable to commit anything). A
//!   manager with no membership (started to `join`, its database empty) steps nothing but
//!   a snapshot and heartbeats until the leader's snapshot gives it one: it votes for no
//!   one, and rejects appends down to index 1 (a log replayed from there would not hold the
//!   founding members). Any leader seeing a peer probed down to 1 compacts its whole
//!   applied log, so that peer is sent a snapshot; nothing about it is remembered.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::storage::MemStorage;
use raft::{Config, RawNode, SnapshotStatus, StateRole, Storage};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use tessera_proto::control::ControlError;

use crate::Error;
use crate::config::ManagerPeer;
use crate::peer::{Parts, decode_frame, peer_loop};
use crate::raft_log::{Loaded, RaftLog};
use crate::snapshot::{self, LogStorage};

/// One Raft tick.
pub const TICK: Duration = Duration::from_millis(100);
/// Ticks without a leader before a follower campaigns (randomised up to twice that).
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 1024;
/// Ticks between two looks at whether a learner can be promoted.
const PROMOTE_TICKS: u64 = 5;
/// A learner this close to the commit index is promoted to voter.
const PROMOTE_LAG: u64 = 100;
/// How long the log is kept back for a snapshot sent to a peer (so that it can go on from
/// the log once installed) before compaction goes on regardless.
const SNAPSHOT_HOLD: Duration = Duration::from_secs(120);
/// Log rows deleted per tick at most: the first compaction of a long log must not stall the
/// Raft task (and its heartbeats) for seconds.
const COMPACT_ROWS: u64 = 10_000;

/// What this manager knows of the group's leadership.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub term: u64,
    /// Leader's id, if known.
    pub leader: Option<u64>,
    /// This manager leads `term`.
    pub is_leader: bool,
    /// When this manager became leader of `term`.
    pub leader_since: Option<Instant>,
    /// The group's voters as this manager last applied them.
    pub voters: Vec<u64>,
    /// Members being added: they receive the log but count for no majority yet.
    pub learners: Vec<u64>,
}

enum Input {
    Step(Box<Message>),
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(u64, u64), ControlError>>,
    },
    ProposeAdd {
        id: u64,
        addr: String,
        reply: oneshot::Sender<Result<Option<(u64, u64)>, ControlError>>,
    },
}

struct Shared {
    id: u64,
    /// Every member's address, this manager's included.
    members: Mutex<BTreeMap<u64, String>>,
    inbox: mpsc::UnboundedSender<Input>,
    /// Committed entries not yet taken by the applier, in log order.
    committed: Mutex<VecDeque<Entry>>,
    more_committed: Condvar,
    wake_applier: Notify,
    status: Mutex<Status>,
    /// Held while committed entries are applied, and while a snapshot replaces the state.
    apply_gate: Mutex<()>,
    /// A snapshot installed under the state: (index, term); taken by the applier.
    installed: Mutex<Option<(u64, u64)>>,
    /// The highest index whose effect is durable in the state tables (the applier says).
    applied: AtomicU64,
}

/// How the managers' Raft group is started.
pub struct Options {
    pub id: u64,
    /// From the configuration: the founding members, and addresses that override stored ones.
    pub members: Vec<ManagerPeer>,
    /// Wait for a leader's snapshot instead of founding a group (a manager being added).
    pub join: bool,
    /// Entries kept behind the applied index for lagging peers.
    pub log_keep: u64,
}

/// Handle on the Raft group. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    shared: Arc<Shared>,
}

/// The running Raft task; stop it with [`RaftTask::stop`].
pub struct RaftTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RaftTask {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            warn!(error = %e, "manager raft task failed");
        }
    }
}

impl Replica {
    /// Restores the group from `log` (creating it with `members` as voters on a new
    /// database) and starts the Raft task. `applied`: the last index whose effect is already
    /// in the state; committed entries after it are delivered again.
    pub fn start(
        opts: Options,
        log: RaftLog,
        loaded: Loaded,
        applied: u64,
    ) -> Result<(Replica, RaftTask), Error> {
        let Options {
            id,
            members,
            join,
            log_keep,
        } = opts;
        let configured: BTreeMap<u64, String> =
            members.iter().map(|p| (p.id, p.addr.clone())).collect();
        let mut book = loaded.managers.clone();
        book.extend(configured.clone());
        let conf_state = match loaded.conf_state {
            Some(cs) => {
                let mut stored = cs.voters.clone();
                stored.sort_unstable();
                let listed: Vec<u64> = configured.keys().copied().collect();
                if !join && stored != listed {
                    info!(
                        stored = ?stored,
                        configured = ?listed,
                        "the managers' membership changed since it was configured; the \
                         replicated one holds"
                    );
                }
                cs
            }
            None if join => {
                info!(
                    id,
                    "joining the managers: waiting for the leader's snapshot"
                );
                ConfState::default()
            }
            None => {
                let cs = ConfState {
                    voters: configured.keys().copied().collect(),
                    ..Default::default()
                };
                log.save_conf(&cs, &book)?;
                cs
            }
        };
        let (start_index, start_term) = loaded.log_start;
        let last_index = loaded.entries.last().map_or(start_index, |e| e.index);
        let mut hs = loaded.hard_state;
        // An entry is only applied once committed, and the commit index is not always saved
        // before it is applied (it is re-learned from the leader).
        hs.commit = hs.commit.max(applied).min(last_index);
        let applied = applied.min(hs.commit);
        let mem = MemStorage::new();
        {
            let mut w = mem.wl();
            if start_index > 0 {
                let mut snap = Snapshot::default();
                snap.mut_metadata().index = start_index;
                snap.mut_metadata().term = start_term;
                w.apply_snapshot(snap)
                    .map_err(|e| Error::Task(format!("restoring the raft log start: {e}")))?;
            }
            w.set_conf_state(conf_state.clone());
            w.append(&loaded.entries)
                .map_err(|e| Error::Task(format!("restoring the raft log: {e}")))?;
            w.set_hardstate(hs);
        }
        let storage = LogStorage::new(mem);
        let cfg = Config {
            id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()
            .map_err(|e| Error::Config(format!("raft: {e}")))?;
        let mut raw = RawNode::new(&cfg, storage.clone(), &logger(id))
            .map_err(|e| Error::Task(format!("starting the managers' raft group: {e}")))?;
        if conf_state.voters == [id] && conf_state.learners.is_empty() {
            // Alone: no one to wait for, lead at once.
            let _ = raw.campaign();
        }
        let (inbox, inputs) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            id,
            members: Mutex::new(book.clone()),
            inbox,
            committed: Mutex::new(VecDeque::new()),
            more_committed: Condvar::new(),
            wake_applier: Notify::new(),
            status: Mutex::new(Status::default()),
            apply_gate: Mutex::new(()),
            installed: Mutex::new(None),
            applied: AtomicU64::new(applied),
        });
        info!(
            id,
            voters = ?conf_state.voters,
            first_index = start_index + 1,
            last_index,
            applied,
            term = raw.raft.term,
            "managers' raft group restored"
        );
        let (stop, stopped) = watch::channel(false);
        let blank = conf_state.voters.is_empty() && conf_state.learners.is_empty();
        let mut raft = RaftLoop {
            raw,
            storage,
            log: Arc::new(log),
            shared: shared.clone(),
            peers: HashMap::new(),
            configured,
            conf_index: 0,
            sent_snapshots: HashMap::new(),
            log_keep: log_keep.max(1),
            ticks: 0,
            blank,
            snap_reports: Vec::new(),
            taking: None,
        };
        raft.connect_peers();
        // A group of one leads already: say so before the first request comes.
        raft.publish_status();
        let task = tokio::spawn(raft.run(inputs, stopped));
        Ok((Replica { shared }, RaftTask { stop, task }))
    }

    pub fn status(&self) -> Status {
        self.shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The client address of manager `id`.
    pub fn addr_of(&self, id: u64) -> Option<String> {
        self.shared
            .members
            .lock()
            .ok()
            .and_then(|m| m.get(&id).cloned())
    }

    /// Every known member address.
    pub fn addresses(&self) -> BTreeMap<u64, String> {
        self.shared
            .members
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Proposes adding manager `id`, serving on `addr`, as a learner, if this manager leads;
    /// returns the change's (index, term), or `None` if `id` is a member at `addr` already.
    /// Checked against the live membership in the Raft task: a voter is never made a
    /// learner again, and an id or address is never given twice. Blocks: call from a
    /// blocking thread.
    pub fn propose_add(&self, id: u64, addr: String) -> Result<Option<(u64, u64)>, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .inbox
            .send(Input::ProposeAdd { id, addr, reply })
            .map_err(|_| ControlError::Unavailable("manager raft group stopped".into()))?;
        rx.blocking_recv()
            .map_err(|_| ControlError::Unavailable("manager raft group stopped".into()))?
    }

    /// Held by whoever applies committed entries: a snapshot is never installed meanwhile.
    pub fn apply_gate(&self) -> MutexGuard<'_, ()> {
        self.shared
            .apply_gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A snapshot installed under the state since the last call: its (index, term).
    pub fn take_installed(&self) -> Option<(u64, u64)> {
        self.shared.installed.lock().ok().and_then(|mut i| i.take())
    }

    /// The applier says every entry up to `index` is durable in the state tables, so the
    /// log before it may be compacted.
    pub fn set_applied(&self, index: u64) {
        self.shared.applied.fetch_max(index, Ordering::Relaxed);
    }

    /// The answer for a request this manager cannot serve because it does not lead.
    pub fn not_leader(&self) -> ControlError {
        let leader = self.status().leader.filter(|l| *l != self.shared.id);
        ControlError::NotLeader(leader.and_then(|l| self.addr_of(l)))
    }

    /// Appends `data` to the log if this manager leads; returns its (index, term). Blocks:
    /// call from a blocking thread.
    pub fn propose(&self, data: Vec<u8>) -> Result<(u64, u64), ControlError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .inbox
            .send(Input::Propose { data, reply })
            .map_err(|_| ControlError::Unavailable("manager raft group stopped".into()))?;
        rx.blocking_recv()
            .map_err(|_| ControlError::Unavailable("manager raft group stopped".into()))?
    }

    /// Takes every committed entry not taken yet, in log order.
    pub fn take_committed(&self) -> Vec<Entry> {
        self.shared
            .committed
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default()
    }

    /// Queues `e` as if committed (tests of the applier).
    #[cfg(test)]
    pub(crate) fn push_committed(&self, e: Entry) {
        if let Ok(mut q) = self.shared.committed.lock() {
            q.push_back(e);
        }
    }

    /// Waits up to `timeout` for a committed entry to take. Blocking.
    pub fn wait_committed(&self, timeout: Duration) {
        let Ok(q) = self.shared.committed.lock() else {
            return;
        };
        if q.is_empty() {
            let _ = self.shared.more_committed.wait_timeout(q, timeout);
        }
    }

    /// Resolves when entries were committed since the last call (for the applier task).
    pub async fn committed(&self) {
        self.shared.wake_applier.notified().await;
    }

    /// Steps a `ManagerRaft` frame body from another manager (`parts`: that connection's
    /// message arriving in parts, if any).
    pub fn receive(&self, body: &[u8], parts: &mut Parts) -> Result<(), String> {
        for m in decode_frame(body, parts)? {
            if m.to != self.shared.id {
                return Err(format!(
                    "raft message for manager {} reached manager {}",
                    m.to, self.shared.id
                ));
            }
            let _ = self.shared.inbox.send(Input::Step(Box::new(m)));
        }
        Ok(())
    }
}

struct RaftLoop {
    raw: RawNode<LogStorage>,
    storage: LogStorage,
    log: Arc<RaftLog>,
    shared: Arc<Shared>,
    peers: HashMap<u64, mpsc::Sender<Message>>,
    /// Addresses from the configuration: they win over replicated ones.
    configured: BTreeMap<u64, String>,
    /// Index of the last membership change applied (or snapshot installed).
    conf_index: u64,
    /// Snapshots handed to peers: peer → (index, when). The log after `index` is kept until
    /// the peer matches it (or [`SNAPSHOT_HOLD`] passes), so it goes on from the log.
    sent_snapshots: HashMap<u64, (u64, Instant)>,
    log_keep: u64,
    ticks: u64,
    /// No membership yet (joining): take no log entries before a snapshot.
    blank: bool,
    /// Snapshots handed to (or refused by) the transport, to tell raft-rs after `advance`.
    snap_reports: Vec<(u64, SnapshotStatus)>,
    /// A snapshot being taken off the Raft task (reading a large state takes seconds, and
    /// the leader must keep heartbeating meanwhile): when it started, the applied index
    /// then (the snapshot's index is at least that: the log is kept from there), and the task.
    taking: Option<(Instant, u64, Taking)>,
}

/// A snapshot's content and its encoding.
type Taken = (snapshot::Payload, Vec<u8>);
/// The task reading and encoding a snapshot.
type Taking = JoinHandle<Result<Taken, Error>>;

impl RaftLoop {
    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                _ = tick.tick() => {
                    self.raw.tick();
                    self.ticks += 1;
                    self.promote_learners();
                    if let Err(e) = self.maintain().await {
                        error!(error = %e, "the managers' raft log cannot be compacted; this \
                               manager stops taking part until it is restarted");
                        break;
                    }
                }
                input = inputs.recv() => {
                    let Some(input) = input else { break };
                    self.input(input);
                    // Take whatever else arrived, so one Ready covers it all.
                    for _ in 0..256 {
                        match inputs.try_recv() {
                            Ok(i) => self.input(i),
                            Err(_) => break,
                        }
                    }
                }
            }
            if let Err(e) = self.ready().await {
                error!(error = %e, "the managers' raft log cannot be written; this manager \
                       stops taking part until it is restarted");
                break;
            }
            self.publish_status();
        }
        if let Ok(mut s) = self.shared.status.lock() {
            *s = Status::default();
        }
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Step(m) => {
                if m.get_msg_type() == MessageType::MsgSnapshot
                    && let Err(e) = snapshot::decode(&m.get_snapshot().data)
                {
                    warn!(from = m.from, error = %e, "malformed snapshot from a manager refused");
                    return;
                }
                let mut m = *m;
                if self.blank && !self.blank_may_step(&mut m) {
                    return;
                }
                if let Err(e) = self.raw.step(m) {
                    debug!(error = %e, "raft message refused");
                }
            }
            Input::ProposeAdd { id, addr, reply } => {
                let res = match self.check_add(id, &addr) {
                    Err(e) => Err(e),
                    Ok(false) => Ok(None),
                    Ok(true) => {
                        let cc = ConfChange {
                            change_type: ConfChangeType::AddLearnerNode,
                            node_id: id,
                            context: addr.into_bytes().into(),
                            ..Default::default()
                        };
                        match self.raw.propose_conf_change(Vec::new(), cc) {
                            Ok(()) => Ok(Some((
                                self.raw.raft.raft_log.last_index(),
                                self.raw.raft.term,
                            ))),
                            Err(e) => Err(ControlError::Unavailable(format!(
                                "manager leader cannot take the membership change now: {e}"
                            ))),
                        }
                    }
                };
                let _ = reply.send(res);
            }
            Input::Propose { data, reply } => {
                let res = if self.raw.raft.state != StateRole::Leader {
                    Err(self.not_leader())
                } else {
                    match self.raw.propose(Vec::new(), data) {
                        Ok(()) => Ok((self.raw.raft.raft_log.last_index(), self.raw.raft.term)),
                        Err(e) => Err(ControlError::Unavailable(format!(
                            "manager leader cannot take the change now: {e}"
                        ))),
                    }
                };
                let _ = reply.send(res);
            }
        }
    }

    /// Whether adding manager `id` at `addr` is a change to propose (`false`: it is a member
    /// at that address already), against the membership raft-rs holds now.
    fn check_add(&self, id: u64, addr: &str) -> Result<bool, ControlError> {
        let r = &self.raw.raft;
        if r.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        let book = self.addresses();
        let conf = r.prs().conf();
        let members: Vec<u64> = conf
            .voters()
            .ids()
            .iter()
            .chain(conf.learners().iter().copied())
            .collect();
        let known = book.get(&id).map(String::as_str);
        if members.contains(&id) {
            let what = if conf.learners().contains(&id) {
                "being added as a learner"
            } else {
                "a member"
            };
            return match known {
                Some(a) if a != addr => Err(ControlError::Invalid(format!(
                    "manager {id} is already {what} with address {a}, not {addr}"
                ))),
                _ => Ok(false),
            };
        }
        if let Some(other) = members
            .iter()
            .find(|m| book.get(m).is_some_and(|a| a == addr))
        {
            return Err(ControlError::Invalid(format!(
                "address {addr} belongs to manager {other} already"
            )));
        }
        if r.pending_conf_index > r.raft_log.applied {
            return Err(ControlError::Unavailable(
                "another membership change of the managers is under way; try again".into(),
            ));
        }
        Ok(true)
    }

    /// A manager with no membership (started to join, its database empty) takes only a snapshot:
    /// an empty log would grant any candidate its vote, and a log replayed from index 1
    /// would not hold the founding members. It rejects every append with hint 0, so that the
    /// leader probes back to 1 and sends a snapshot (see `maintain`), and takes heartbeats
    /// only up to its own log (raft-rs cannot commit past it). Whether `m` may be stepped.
    fn blank_may_step(&mut self, m: &mut Message) -> bool {
        match m.get_msg_type() {
            MessageType::MsgSnapshot => true,
            MessageType::MsgHeartbeat => {
                m.commit = m.commit.min(self.raw.raft.raft_log.last_index());
                true
            }
            MessageType::MsgAppend => {
                // An append from index 0 is dropped: the leader is already at 1 and
                // compacts; its next heartbeat reply probes again.
                if m.index > 0 {
                    let mut reject = Message::default();
                    reject.set_msg_type(MessageType::MsgAppendResponse);
                    reject.to = m.from;
                    reject.from = self.shared.id;
                    reject.term = m.term;
                    reject.index = m.index;
                    reject.reject = true;
                    reject.reject_hint = 0;
                    self.send(vec![reject]);
                }
                debug!(
                    from = m.from,
                    index = m.index,
                    "no membership yet: log entries refused until a snapshot"
                );
                false
            }
            t => {
                debug!(from = m.from, msg = ?t, "no membership yet: raft message ignored");
                false
            }
        }
    }

    async fn ready(&mut self) -> Result<(), Error> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            self.install(rd.snapshot().clone()).await?;
        }
        self.deliver(rd.take_committed_entries()).await?;
        let entries = rd.entries().clone();
        let hs = rd.hs().cloned();
        if !entries.is_empty() || hs.is_some() {
            let log = self.log.clone();
            let (es, h) = (entries.clone(), hs.clone());
            tokio::task::spawn_blocking(move || log.save(&es, h.as_ref(), None))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
            let mut w = self.storage.mem.wl();
            if !entries.is_empty() {
                w.append(&entries)
                    .map_err(|e| Error::Task(format!("raft log in memory: {e}")))?;
            }
            if let Some(hs) = hs {
                w.set_hardstate(hs);
            }
        }
        self.send(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.storage.mem.wl().mut_hard_state().commit = commit;
        }
        self.send(light.take_messages());
        self.deliver(light.take_committed_entries()).await?;
        self.raw.advance_apply();
        for (to, status) in std::mem::take(&mut self.snap_reports) {
            self.raw.report_snapshot(to, status);
        }
        Ok(())
    }

    /// Queues committed entries for the applier, applying membership changes to the Raft
    /// group first (and making them durable with the addresses they carry).
    async fn deliver(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in &entries {
            if e.get_entry_type() == EntryType::EntryConfChange {
                self.apply_conf_change(e).await?;
            }
        }
        if let Ok(mut q) = self.shared.committed.lock() {
            q.extend(entries);
        }
        self.shared.more_committed.notify_all();
        self.shared.wake_applier.notify_one();
        Ok(())
    }

    async fn apply_conf_change(&mut self, e: &Entry) -> Result<(), Error> {
        let cc = match ConfChange::parse_from_bytes(&e.data) {
            Ok(cc) => cc,
            Err(err) => {
                error!(index = e.index, error = %err, "membership change not decodable; ignored");
                return Ok(());
            }
        };
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => {
                error!(index = e.index, error = %err, "membership change refused");
                return Ok(());
            }
        };
        let mut book = self.addresses();
        if matches!(
            cc.get_change_type(),
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode
        ) && let Ok(addr) = std::str::from_utf8(&cc.context)
            && !addr.is_empty()
            && !self.configured.contains_key(&cc.node_id)
        {
            book.insert(cc.node_id, addr.to_string());
        }
        let log = self.log.clone();
        let (cs2, book2) = (cs.clone(), book.clone());
        tokio::task::spawn_blocking(move || log.save_conf(&cs2, &book2))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        self.storage.mem.wl().set_conf_state(cs.clone());
        self.set_addresses(book);
        self.conf_index = e.index;
        self.blank = cs.voters.is_empty() && cs.learners.is_empty();
        info!(index = e.index, voters = ?cs.voters, "the managers' membership changed");
        Ok(())
    }

    /// Replaces the state with a leader's snapshot (checked when it was received), durably,
    /// with nothing older left queued for the applier.
    async fn install(&mut self, snap: Snapshot) -> Result<(), Error> {
        let payload = snapshot::decode(&snap.data)
            .map_err(|e| Error::Task(format!("installing a snapshot: {e}")))?;
        let meta = snap.get_metadata().clone();
        let (db, path) = (self.log.database().clone(), self.log.path().to_path_buf());
        let shared = self.shared.clone();
        let managers = payload.managers.clone();
        let volumes = payload.image.volumes.len();
        let (index, term) = (meta.index, meta.term);
        tokio::task::spawn_blocking(move || {
            let _gate = shared
                .apply_gate
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Ok(mut q) = shared.committed.lock() {
                q.clear();
            }
            snapshot::install(&db, &path, &payload, &meta)?;
            if let Ok(mut i) = shared.installed.lock() {
                *i = Some((meta.index, meta.term));
            }
            shared.applied.fetch_max(meta.index, Ordering::Relaxed);
            Ok::<_, Error>(())
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        let cs = snap.get_metadata().get_conf_state().clone();
        self.storage
            .mem
            .wl()
            .apply_snapshot(snap)
            .map_err(|e| Error::Task(format!("raft log in memory: {e}")))?;
        let mut book = managers;
        book.extend(self.configured.clone());
        self.set_addresses(book);
        self.conf_index = index;
        self.blank = cs.voters.is_empty() && cs.learners.is_empty();
        info!(index, term, volumes, voters = ?cs.voters, "installed a snapshot of the managers' state");
        self.shared.more_committed.notify_all();
        self.shared.wake_applier.notify_one();
        Ok(())
    }

    /// Compacts the applied log when it is long, or wholly when a peer has nothing (so that
    /// it is sent a snapshot), and takes a snapshot when a peer asked for one. Every tick:
    /// deciding is a look at a few indexes, derived afresh (a new leader, or one restarted,
    /// knows as much as the one that added the peer).
    async fn maintain(&mut self) -> Result<(), Error> {
        let applied = self.shared.applied.load(Ordering::Relaxed);
        let wanted = self.storage.take_wanted();
        if wanted && self.taking.is_none() {
            let (db, path) = (self.log.database().clone(), self.log.path().to_path_buf());
            let task = tokio::task::spawn_blocking(move || {
                let p = snapshot::take(&db, &path)?;
                let data = snapshot::encode(&p);
                Ok::<_, Error>((p, data))
            });
            self.taking = Some((Instant::now(), applied, task));
        }
        if self
            .taking
            .as_ref()
            .is_some_and(|(_, _, t)| t.is_finished())
        {
            self.offer_snapshot().await?;
        }
        let first = self.storage.first_index().unwrap_or(1);
        let last = self.storage.last_index().unwrap_or(0);
        let needs_all = self.peer_has_nothing();
        let hold = self.snapshot_hold();
        if let Some(upto) = compaction_upto(applied, first, last, self.log_keep, needs_all, hold) {
            let term = self
                .storage
                .term(upto)
                .map_err(|e| Error::Task(format!("term of raft log entry {upto}: {e}")))?;
            let log = self.log.clone();
            tokio::task::spawn_blocking(move || log.compact(upto, term))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
            self.storage
                .compact(upto, term)
                .map_err(|e| Error::Task(format!("raft log in memory: {e}")))?;
            debug!(upto, applied, "compacted the managers' raft log");
        }
        Ok(())
    }

    /// Leader only: whether a peer rejected the log down to index 1 (a joining manager: see
    /// `blank_may_step`; or a founder with an empty log, which a snapshot serves as well).
    /// The log from 1 would not give a joining manager the membership, so it must be sent a
    /// snapshot, which raft-rs does only once the entry before what it needs is compacted
    /// away.
    fn peer_has_nothing(&self) -> bool {
        let r = &self.raw.raft;
        r.state == StateRole::Leader
            && r.prs()
                .iter()
                .any(|(id, p)| *id != self.shared.id && p.matched == 0 && p.next_idx <= 1)
    }

    /// The highest index compaction may reach without invalidating a snapshot being taken
    /// or one sent and not yet matched (a peer installing a large state would otherwise be
    /// sent another, forever).
    fn snapshot_hold(&mut self) -> u64 {
        let prs = self.raw.raft.prs();
        self.sent_snapshots
            .retain(|peer, (index, _)| prs.get(*peer).is_some_and(|p| p.matched < *index));
        // Held from the first snapshot sent to a peer that has not matched since: one that
        // keeps failing to install holds the log back no longer than that.
        let sent = self
            .sent_snapshots
            .values()
            .filter(|(_, at)| at.elapsed() < SNAPSHOT_HOLD)
            .map(|(index, _)| *index)
            .min();
        let taking = self.taking.as_ref().map(|(_, from, _)| *from);
        sent.into_iter().chain(taking).min().unwrap_or(u64::MAX)
    }

    /// Hands out the snapshot just taken, if the log and membership still agree with it.
    async fn offer_snapshot(&mut self) -> Result<(), Error> {
        let Some((started, _, task)) = self.taking.take() else {
            return Ok(());
        };
        let taken = task.await.map_err(|e| Error::Task(e.to_string()));
        let (payload, data) = match taken.and_then(|t| t) {
            Ok(t) => t,
            Err(e) => {
                // The peer asks again at its next probe; the Raft group goes on meanwhile.
                warn!(error = %e, "taking a snapshot of the managers' state failed; retried when asked again");
                return Ok(());
            }
        };
        let index = payload.image.applied_index;
        let first = self.storage.first_index().unwrap_or(1);
        if index < self.conf_index || index + 1 < first {
            // Not yet a cut the group's membership and log agree with: asked again soon.
            return Ok(());
        }
        let Ok(term) = self.storage.term(index) else {
            return Ok(());
        };
        let conf_state = self
            .storage
            .initial_state()
            .map(|s| s.conf_state)
            .map_err(|e| Error::Task(format!("raft conf state: {e}")))?;
        let bytes = data.len();
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(conf_state);
        self.storage.offer(snap);
        info!(
            index,
            term,
            bytes,
            volumes = payload.image.volumes.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "took a snapshot of the managers' state for a lagging peer"
        );
        Ok(())
    }

    /// Leader only: proposes making a learner that has caught up a voter (one change at a
    /// time, as raft-rs allows).
    fn promote_learners(&mut self) {
        let r = &self.raw.raft;
        if r.state != StateRole::Leader
            || r.pending_conf_index > r.raft_log.applied
            || !self.ticks.is_multiple_of(PROMOTE_TICKS)
        {
            return;
        }
        let committed = r.raft_log.committed;
        let ready = r.prs().conf().learners().iter().copied().find(|id| {
            r.prs()
                .get(*id)
                .is_some_and(|p| p.matched > 0 && p.matched + PROMOTE_LAG >= committed)
        });
        let Some(id) = ready else {
            return;
        };
        let cc = ConfChange {
            change_type: ConfChangeType::AddNode,
            node_id: id,
            ..Default::default()
        };
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => info!(id, "a learner manager caught up; promoting it to voter"),
            Err(e) => debug!(id, error = %e, "promoting a learner manager"),
        }
    }

    fn addresses(&self) -> BTreeMap<u64, String> {
        self.shared
            .members
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    fn set_addresses(&mut self, book: BTreeMap<u64, String>) {
        if let Ok(mut m) = self.shared.members.lock() {
            *m = book;
        }
        self.connect_peers();
    }

    /// Starts a sending task for every member with an address and none yet.
    fn connect_peers(&mut self) {
        let id = self.shared.id;
        for (peer, addr) in self.addresses() {
            if peer == id || self.peers.contains_key(&peer) {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            tokio::spawn(peer_loop(id, peer, addr, rx));
            self.peers.insert(peer, tx);
        }
    }

    fn not_leader(&self) -> ControlError {
        let leader = Some(self.raw.raft.leader_id).filter(|l| *l != 0);
        ControlError::NotLeader(leader.and_then(|l| self.addresses().get(&l).cloned()))
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let Some(peer) = self.peers.get(&m.to) else {
                continue;
            };
            let (to, is_snap) = (m.to, m.get_msg_type() == MessageType::MsgSnapshot);
            let index = m.get_snapshot().get_metadata().index;
            let sent = peer.try_send(m).is_ok();
            if is_snap && sent {
                self.sent_snapshots
                    .entry(to)
                    .and_modify(|s| s.0 = index)
                    .or_insert((index, Instant::now()));
            }
            if !sent {
                debug!("queue to a manager peer is full; raft message dropped");
            }
            if is_snap {
                // Handed over (or not): either way raft-rs probes the peer again, and sends
                // another snapshot if this one never arrived.
                let status = if sent {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.snap_reports.push((to, status));
            }
        }
    }

    fn publish_status(&self) {
        let r = &self.raw.raft;
        let is_leader = r.state == StateRole::Leader;
        let Ok(mut s) = self.shared.status.lock() else {
            return;
        };
        if is_leader && !(s.is_leader && s.term == r.term) {
            info!(id = self.shared.id, term = r.term, "this manager now leads");
            s.leader_since = Some(Instant::now());
        } else if !is_leader && s.is_leader {
            info!(
                id = self.shared.id,
                term = r.term,
                "this manager no longer leads"
            );
            s.leader_since = None;
        }
        s.term = r.term;
        s.leader = Some(r.leader_id).filter(|l| *l != 0);
        s.is_leader = is_leader;
        s.voters = r.prs().conf().voters().ids().iter().collect();
        s.voters.sort_unstable();
        s.learners = r.prs().conf().learners().iter().copied().collect();
        s.learners.sort_unstable();
    }
}

/// Up to which index to compact the log, if at all: the log holds entries `first..=last`,
/// `applied` of them are in the state tables. Down to `keep` entries behind the applied
/// index once more than twice that are applied (everything applied when a peer has
/// `nothing`), never past `hold`, and at most [`COMPACT_ROWS`] entries at once.
fn compaction_upto(
    applied: u64,
    first: u64,
    last: u64,
    keep: u64,
    nothing: bool,
    hold: u64,
) -> Option<u64> {
    let start = first.saturating_sub(1);
    let done = applied.min(last);
    let keep = if nothing { 0 } else { keep };
    let upto = done
        .saturating_sub(keep)
        .min(hold)
        .min(start + COMPACT_ROWS);
    (upto > start && (nothing || done - start > 2 * keep)).then_some(upto)
}

/// raft-rs logs through `slog`; this forwards to `tracing` (raft's info level is election
/// chatter: debug here).
fn logger(id: u64) -> slog::Logger {
    use slog::Drain;
    struct TracingDrain;
    impl Drain for TracingDrain {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, r: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            match r.level() {
                slog::Level::Critical | slog::Level::Error => {
                    error!(target: "manager_raft", "{}", r.msg())
                }
                slog::Level::Warning => warn!(target: "manager_raft", "{}", r.msg()),
                slog::Level::Info => debug!(target: "manager_raft", "{}", r.msg()),
                _ => tracing::trace!(target: "manager_raft", "{}", r.msg()),
            }
            Ok(())
        }
    }
    slog::Logger::root(TracingDrain.fuse(), slog::o!("manager" => id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use crate::peer::encode_batch;
    use tessera_net::FrameReader;

    #[test]
    fn compaction_keeps_its_bounds() {
        // (applied, first, last, keep, nothing, hold) -> upto
        let cases = [
            // Not yet twice `keep` applied: nothing; then down to `keep` behind.
            ((20, 1, 25, 10, false, u64::MAX), None),
            ((21, 1, 25, 10, false, u64::MAX), Some(11)),
            // A peer with nothing: everything applied, however short the log.
            ((3, 1, 5, 10, true, u64::MAX), Some(3)),
            ((0, 1, 5, 10, true, u64::MAX), None),
            // Never past a snapshot being taken or sent and not yet matched.
            ((500, 1, 500, 10, false, 300), Some(300)),
            ((500, 1, 500, 10, true, 300), Some(300)),
            ((500, 301, 500, 10, true, 300), None),
            // A long log goes in steps of COMPACT_ROWS.
            ((50_000, 1, 50_000, 10, false, u64::MAX), Some(COMPACT_ROWS)),
            (
                (50_000, COMPACT_ROWS + 1, 50_000, 10, false, u64::MAX),
                Some(2 * COMPACT_ROWS),
            ),
        ];
        for ((applied, first, last, keep, nothing, hold), want) in cases {
            assert_eq!(
                compaction_upto(applied, first, last, keep, nothing, hold),
                want,
                "applied {applied}, log {first}..={last}, keep {keep}, nothing {nothing}, \
                 hold {hold}"
            );
        }
    }

    fn msg(t: MessageType, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = 2;
        m.to = 3;
        m.term = term;
        m
    }

    /// Raft §5.2/§5.4: a vote is only for a candidate whose log is at least as up to date;
    /// a manager with no membership knows no log at all, so it must not vote, nor be told
    /// to commit what it does not hold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_manager_without_membership_votes_for_no_one_and_survives_a_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(dir.path()).unwrap();
        let (log, loaded) = RaftLog::open(db.database(), db.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let opts = Options {
            id: 3,
            members: vec![
                ManagerPeer {
                    id: 2,
                    addr: listener.local_addr().unwrap().to_string(),
                },
                ManagerPeer {
                    id: 3,
                    addr: "127.0.0.1:1".into(),
                },
            ],
            join: true,
            log_keep: 10,
        };
        let (replica, task) = Replica::start(opts, log, loaded, 0).unwrap();
        let mut vote = msg(MessageType::MsgRequestVote, 5);
        vote.index = 40;
        vote.log_term = 4;
        let mut pre_vote = msg(MessageType::MsgRequestPreVote, 6);
        pre_vote.index = 40;
        pre_vote.log_term = 4;
        let mut heartbeat = msg(MessageType::MsgHeartbeat, 5);
        heartbeat.commit = 50;
        let mut append = msg(MessageType::MsgAppend, 5);
        append.index = 39;
        append.log_term = 4;
        for m in [vote, pre_vote, heartbeat, append] {
            replica
                .receive(&encode_batch(&[m]), &mut Parts::default())
                .unwrap();
        }
        let (stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("no message from the blank manager")
            .unwrap();
        let mut reader = FrameReader::new(stream);
        let mut parts = Parts::default();
        let mut got = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Ok(Some(f))) = tokio::time::timeout_at(until, reader.next()).await {
            got.extend(decode_frame(&f.body, &mut parts).unwrap());
        }
        let kinds: Vec<MessageType> = got.iter().map(|m| m.get_msg_type()).collect();
        assert!(
            !kinds.contains(&MessageType::MsgRequestVoteResponse)
                && !kinds.contains(&MessageType::MsgRequestPreVoteResponse),
            "{got:?}"
        );
        assert!(
            kinds.contains(&MessageType::MsgHeartbeatResponse),
            "{got:?}"
        );
        // The append is refused down to index 0, so that the leader sends a snapshot.
        let reject = got
            .iter()
            .find(|m| m.get_msg_type() == MessageType::MsgAppendResponse)
            .expect("append not answered");
        assert!(reject.reject && reject.reject_hint == 0 && reject.term == 5);
        // Still running: it knows the leader from the heartbeat.
        assert_eq!(replica.status().leader, Some(2));
        task.stop().await;
    }
}
