//! The managers' membership: adding a manager as a learner, promoting it once caught up,
//! applying membership changes with the addresses they carry, and what a manager with no
//! membership yet (joining) may step.
//!
//! Membership changes only through the log, one at a time. Must never make a voter a
//! learner again, give an id or address twice, or let a manager with no membership vote.

use protobuf::Message as _;
use raft::StateRole;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, Message, MessageType};
use tracing::{debug, error, info};

use tessera_proto::control::ControlError;

use crate::error::Error;

use super::RaftLoop;

/// Ticks between two looks at whether a learner can be promoted.
const PROMOTE_TICKS: u64 = 5;
/// A learner this close to the commit index is promoted to voter.
const PROMOTE_LAG: u64 = 100;

impl RaftLoop {
    /// Whether adding manager `id` at `addr` is a change to propose (`false`: it is a member
    /// at that address already), against the membership raft-rs holds now.
    pub(super) fn check_add(&self, id: u64, addr: &str) -> Result<bool, ControlError> {
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
    pub(super) fn blank_may_step(&mut self, m: &mut Message) -> bool {
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

    pub(super) async fn apply_conf_change(&mut self, e: &Entry) -> Result<(), Error> {
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

    /// Leader only: proposes making a learner that has caught up a voter (one change at a
    /// time, as raft-rs allows).
    pub(super) fn promote_learners(&mut self) {
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
}
