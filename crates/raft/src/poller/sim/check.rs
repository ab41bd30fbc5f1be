//! Invariants checked as the schedule runs: no two replicas commit different entries at one
//! index; the newest applied configuration, for the manager's "done".

use super::*;

impl Sim {
    /// Notes the configuration applied at the highest index so far.
    /// Raft's safety, checked directly: no two replicas ever commit different entries at
    /// one index (a term per index, from the entries each replica holds up to its commit).
    pub(super) fn check_committed(&mut self) -> Result<(), String> {
        for n in self.nodes.iter().flatten() {
            let Some(g) = n.poller.groups.get(&GROUP) else {
                continue;
            };
            let commit = g.raw.raft.raft_log.committed;
            for e in g.mem().entries.iter().filter(|e| e.index <= commit) {
                let term = *self.committed.entry(e.index).or_insert(e.term);
                if term != e.term {
                    return Err(format!(
                        "two entries committed at index {}: term {term}, and term {} on node {}",
                        e.index, e.term, n.id
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn note_newest_conf(&mut self) {
        for n in self.nodes.iter().flatten() {
            if let Some(g) = n.poller.groups.get(&GROUP)
                && self
                    .newest_conf
                    .as_ref()
                    .is_none_or(|(a, _, _)| g.applied > *a)
            {
                self.newest_conf = Some((g.applied, n.id, g.mem().conf_state.clone()));
            }
        }
    }
}
