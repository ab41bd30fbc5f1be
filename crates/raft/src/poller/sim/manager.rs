//! The manager's part: replacing a replica by the spare as the manager drives it, and
//! replacing a replica reported stuck.

use super::*;

impl Sim {
    /// The manager's part: drive a membership change to its end, then destroy the
    /// removed replica.
    pub(super) fn manage(&mut self, step: usize) -> Result<(), String> {
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
    pub(super) fn replace_stuck(&mut self) {
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
}
