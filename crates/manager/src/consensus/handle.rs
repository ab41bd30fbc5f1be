//! What the rest of the manager asks of the Raft group: leadership [`Status`], member
//! addresses, proposing mutations and new members, stepping messages from other managers.
//!
//! Every call only queues an input for the Raft task or reads what it published: must
//! never touch the `RawNode` nor wait on the network.

use std::collections::BTreeMap;

use tokio::sync::oneshot;
use tracing::warn;

use tessera_proto::control::ControlError;

use crate::peer::{Parts, decode_frame};

use super::{Consensus, Input, RaftTask, Status};

impl RaftTask {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            warn!(error = %e, "manager raft task failed");
        }
    }
}

impl Consensus {
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

    /// Steps a `ManagerRaft` frame body from another manager (`parts`: that connection's
    /// message arriving in parts, if any).
    pub fn receive(&self, body: &[u8], parts: &mut Parts, from: Option<u64>) -> Result<(), String> {
        for m in decode_frame(body, parts)? {
            if let Some(f) = from
                && m.from != f
            {
                return Err(format!(
                    "manager {f} sent a raft message as manager {}",
                    m.from
                ));
            }
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
