//! The commit queue: committed entries, in log order, from the Raft task to whoever
//! applies them (the service, on every manager), and the gate that keeps a snapshot install
//! from happening in the middle of an apply.
//!
//! Never applies anything itself, and never drops or reorders an entry, except that an
//! installed snapshot replaces everything queued before it.

use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raft::eraftpb::{Entry, EntryType};

use crate::error::Error;

use super::{Consensus, RaftLoop};

impl Consensus {
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
}

impl RaftLoop {
    /// Queues committed entries for the applier, applying membership changes to the Raft
    /// group first (and making them durable with the addresses they carry).
    pub(super) async fn deliver(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
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
}
