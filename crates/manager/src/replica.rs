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
//! - no log compaction and no snapshots: the whole log is kept (on disk, and mirrored in a
//!   raft-rs `MemStorage` for the `RawNode` to read), so a restarted or lagging manager
//!   catches up from the log. Mutations are small; compaction is for when logs grow large.
//!   Membership is the configured peers, fixed when the group is first created.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Entry, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use tessera_proto::control::ControlError;

use crate::Error;
use crate::config::ManagerPeer;
use crate::peer::{decode_batch, peer_loop};
use crate::raft_log::{Loaded, RaftLog};

/// One Raft tick.
pub const TICK: Duration = Duration::from_millis(100);
/// Ticks without a leader before a follower campaigns (randomised up to twice that).
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 1024;

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
}

enum Input {
    Step(Box<Message>),
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(u64, u64), ControlError>>,
    },
}

struct Shared {
    id: u64,
    members: Vec<ManagerPeer>,
    inbox: mpsc::UnboundedSender<Input>,
    /// Committed entries not yet taken by the applier, in log order.
    committed: Mutex<VecDeque<Entry>>,
    more_committed: Condvar,
    wake_applier: Notify,
    status: Mutex<Status>,
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
        id: u64,
        members: Vec<ManagerPeer>,
        log: RaftLog,
        loaded: Loaded,
        applied: u64,
    ) -> Result<(Replica, RaftTask), Error> {
        let ids: Vec<u64> = {
            let mut v: Vec<u64> = members.iter().map(|p| p.id).collect();
            v.sort_unstable();
            v
        };
        let conf_state = match loaded.conf_state {
            Some(cs) => {
                let mut stored = cs.voters.clone();
                stored.sort_unstable();
                if stored != ids {
                    return Err(Error::Config(format!(
                        "the managers' Raft group was created with members {stored:?}, the \
                         configuration lists {ids:?}; changing members is not supported"
                    )));
                }
                cs
            }
            None => {
                let cs = ConfState {
                    voters: ids.clone(),
                    ..Default::default()
                };
                log.save(&[], None, Some(&cs))?;
                cs
            }
        };
        let last_index = loaded.entries.last().map_or(0, |e| e.index);
        let mut hs = loaded.hard_state;
        // An entry is only applied once committed, and the commit index is not always saved
        // before it is applied (it is re-learned from the leader).
        hs.commit = hs.commit.max(applied).min(last_index);
        let applied = applied.min(hs.commit);
        let storage = MemStorage::new();
        {
            let mut w = storage.wl();
            w.set_conf_state(conf_state);
            w.append(&loaded.entries)
                .map_err(|e| Error::Task(format!("restoring the raft log: {e}")))?;
            w.set_hardstate(hs);
        }
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
        if ids == [id] {
            // Alone: no one to wait for, lead at once.
            let _ = raw.campaign();
        }
        let (inbox, inputs) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            id,
            members: members.clone(),
            inbox,
            committed: Mutex::new(VecDeque::new()),
            more_committed: Condvar::new(),
            wake_applier: Notify::new(),
            status: Mutex::new(Status::default()),
        });
        let peers = members
            .iter()
            .filter(|p| p.id != id)
            .map(|p| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                tokio::spawn(peer_loop(id, p.id, p.addr.clone(), rx));
                (p.id, tx)
            })
            .collect();
        info!(
            id,
            members = ?ids,
            last_index,
            applied,
            term = raw.raft.term,
            "managers' raft group restored"
        );
        let (stop, stopped) = watch::channel(false);
        let raft = RaftLoop {
            raw,
            storage,
            log: Arc::new(log),
            shared: shared.clone(),
            peers,
        };
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
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.addr.clone())
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

    /// Steps a `ManagerRaft` frame body from another manager.
    pub fn receive(&self, body: &[u8]) -> Result<(), String> {
        for m in decode_batch(body)? {
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
    raw: RawNode<MemStorage>,
    storage: MemStorage,
    log: Arc<RaftLog>,
    shared: Arc<Shared>,
    peers: HashMap<u64, mpsc::Sender<Message>>,
}

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
                if let Err(e) = self.raw.step(*m) {
                    debug!(error = %e, "raft message refused");
                }
            }
            Input::Propose { data, reply } => {
                let res = if self.raw.raft.state != StateRole::Leader {
                    Err(ControlError::NotLeader(
                        Some(self.raw.raft.leader_id)
                            .filter(|l| *l != 0)
                            .and_then(|l| self.shared.members.iter().find(|p| p.id == l))
                            .map(|p| p.addr.clone()),
                    ))
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

    async fn ready(&mut self) -> Result<(), Error> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            // Nobody sends one: the log is never compacted.
            error!("unexpected raft snapshot ignored");
        }
        self.deliver(rd.take_committed_entries());
        let entries = rd.entries().clone();
        let hs = rd.hs().cloned();
        if !entries.is_empty() || hs.is_some() {
            let log = self.log.clone();
            let (es, h) = (entries.clone(), hs.clone());
            tokio::task::spawn_blocking(move || log.save(&es, h.as_ref(), None))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
            let mut w = self.storage.wl();
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
            self.storage.wl().mut_hard_state().commit = commit;
        }
        self.send(light.take_messages());
        self.deliver(light.take_committed_entries());
        self.raw.advance_apply();
        Ok(())
    }

    fn deliver(&self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        if let Ok(mut q) = self.shared.committed.lock() {
            q.extend(entries);
        }
        self.shared.more_committed.notify_all();
        self.shared.wake_applier.notify_one();
    }

    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let Some(peer) = self.peers.get(&m.to) else {
                continue;
            };
            if peer.try_send(m).is_err() {
                debug!("queue to a manager peer is full; raft message dropped");
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
    }
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
