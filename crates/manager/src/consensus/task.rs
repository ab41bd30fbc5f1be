//! The Raft task: one tokio task owning the `RawNode`, ticking it, stepping inputs,
//! persisting each Ready before sending what must follow persistence, and publishing the
//! leadership status.
//!
//! The only code that drives the `RawNode`. Must never wait on the network: messages go
//! to each peer's bounded queue, and a message that does not fit is dropped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, ConfChangeType, Message, MessageType};
use raft::{SnapshotStatus, StateRole};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use tessera_proto::control::ControlError;

use crate::error::Error;
use crate::peer::peer_loop;
use crate::state_snapshot;

use super::{Input, RaftLoop, Status};

/// One Raft tick.
pub const TICK: Duration = Duration::from_millis(100);
/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 1024;

impl RaftLoop {
    pub(super) async fn run(
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

    pub(super) fn input(&mut self, input: Input) {
        match input {
            Input::Step(m) => {
                if m.get_msg_type() == MessageType::MsgSnapshot
                    && let Err(e) = state_snapshot::decode(&m.get_snapshot().data)
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

    pub(super) async fn ready(&mut self) -> Result<(), Error> {
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

    pub(super) fn addresses(&self) -> BTreeMap<u64, String> {
        self.shared
            .members
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub(super) fn set_addresses(&mut self, book: BTreeMap<u64, String>) {
        if let Ok(mut m) = self.shared.members.lock() {
            *m = book;
        }
        self.connect_peers();
    }

    /// Starts a sending task for every member with an address and none yet.
    pub(super) fn connect_peers(&mut self) {
        let id = self.shared.id;
        for (peer, addr) in self.addresses() {
            if peer == id || self.peers.contains_key(&peer) {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            tokio::spawn(peer_loop(id, peer, addr, rx, self.shared.security.clone()));
            self.peers.insert(peer, tx);
        }
    }

    pub(super) fn not_leader(&self) -> ControlError {
        let leader = Some(self.raw.raft.leader_id).filter(|l| *l != 0);
        ControlError::NotLeader(leader.and_then(|l| self.addresses().get(&l).cloned()))
    }

    pub(super) fn send(&mut self, msgs: Vec<Message>) {
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

    pub(super) fn publish_status(&self) {
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
