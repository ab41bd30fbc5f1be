//! Retries of one client request must take effect once.
//!
//! A leader that loses leadership answers its pending writes `NotLeader`, yet their entries
//! may still commit under the next leader; a client whose attempt timed out cannot know
//! either. Its retry carries the same request id. Were it proposed as a new entry, it could
//! commit after newer writes to the same blocks were acknowledged and undo them (A, then B
//! acknowledged, then A again). So before proposing, a leader looks the id up: in its own
//! log (the first attempt's entry will commit with this leader's log, or never — in which
//! case no other entry of that id can commit either, as any leader's log holds it or not)
//! and among the ids it applied recently.
//!
//! Owns only memory: this is a leader-side filter, never part of what replicas apply (it
//! would differ between a replica that restarted and one that did not). Must never: answer
//! a retry `Ok` for an entry that is not committed with that id.
//!
//! Limits: applied ids are kept for [`KEEP_APPLIED`] (longer than a client retries one
//! request) and at most [`MAX_APPLIED`] per group; a replica that restarted knows only the
//! ids it applied since (the log replayed at start included).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Longer than a client keeps retrying one request (`tessera_client::RETRY_FOR`, 60 s).
pub(crate) const KEEP_APPLIED: Duration = Duration::from_secs(90);
/// Bounds memory per group (~60 bytes an id).
pub(crate) const MAX_APPLIED: usize = 1 << 20;

#[derive(Default)]
pub(crate) struct Dedup {
    /// Ids of entries in the log, not yet applied: id → index.
    in_log: HashMap<u128, u64>,
    applied: HashMap<u128, Instant>,
    applied_order: VecDeque<(Instant, u128)>,
}

/// Where a request id stands on this replica.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Never,
    /// Applied (so committed) within the window.
    Applied,
    /// An entry of the log at this index carries the id (the caller checks it still does).
    InLog(u64),
}

impl Dedup {
    /// An entry carrying `id` was appended to the log at `index`.
    pub(crate) fn logged(&mut self, id: u128, index: u64) {
        if id != 0 {
            self.in_log.insert(id, index);
        }
    }

    /// The entry carrying `id` was applied.
    pub(crate) fn applied(&mut self, id: u128, now: Instant) {
        if id == 0 {
            return;
        }
        self.in_log.remove(&id);
        self.applied.insert(id, now);
        self.applied_order.push_back((now, id));
        self.expire(now);
    }

    /// The log was replaced up to `index` (a snapshot installed): ids logged at or below it
    /// are either applied in the snapshot or gone.
    pub(crate) fn forget_log_upto(&mut self, index: u64) {
        self.in_log.retain(|_, i| *i > index);
    }

    pub(crate) fn lookup(&self, id: u128) -> Seen {
        if id == 0 {
            return Seen::Never;
        }
        if self.applied.contains_key(&id) {
            return Seen::Applied;
        }
        match self.in_log.get(&id) {
            Some(&index) => Seen::InLog(index),
            None => Seen::Never,
        }
    }

    /// The id's log entry was overwritten.
    pub(crate) fn drop_logged(&mut self, id: u128) {
        self.in_log.remove(&id);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.applied_order.front() {
            let old = now.saturating_duration_since(at) > KEEP_APPLIED;
            if !old && self.applied_order.len() <= MAX_APPLIED {
                break;
            }
            self.applied_order.pop_front();
            if self.applied.get(&id) == Some(&at) {
                self.applied.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_move_from_the_log_to_applied_and_expire() {
        let mut d = Dedup::default();
        let t = Instant::now();
        assert_eq!(d.lookup(7), Seen::Never);
        d.logged(7, 12);
        assert_eq!(d.lookup(7), Seen::InLog(12));
        d.applied(7, t);
        assert_eq!(d.lookup(7), Seen::Applied);
        d.applied(8, t + KEEP_APPLIED + Duration::from_secs(1));
        assert_eq!(d.lookup(7), Seen::Never, "expired");
        assert_eq!(d.lookup(8), Seen::Applied);
        d.logged(9, 20);
        d.forget_log_upto(20);
        assert_eq!(d.lookup(9), Seen::Never);
        assert_eq!(d.lookup(0), Seen::Never, "0 is no id");
    }
}
