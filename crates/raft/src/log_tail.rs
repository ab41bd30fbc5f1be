//! One replica group's view of its Raft log, as raft-rs reads it.
//!
//! Owns the in-memory copy of the entries not yet compacted, the hard state and the
//! membership. Durability is not here: every change is also handed to the node's shared
//! log ([`tessera_engine::Log`]) by the poller, and this copy is rebuilt from that log at
//! start. Entries live here from the moment a Ready is handled (before they are durable, as
//! raft-rs requires for `advance_append_async`) until the chunk files holding their effect
//! are flushed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

#[derive(Default)]
pub(crate) struct MemLog {
    pub(crate) hard_state: HardState,
    pub(crate) conf_state: ConfState,
    /// Index and term of the last compacted entry (0, 0 for a new group).
    pub(crate) compacted_index: u64,
    pub(crate) compacted_term: u64,
    /// Entries from `compacted_index + 1`, contiguous.
    pub(crate) entries: VecDeque<Entry>,
    /// Payload bytes held in `entries` (to bound memory).
    pub(crate) bytes: u64,
    /// Index and term of the last applied entry: what a snapshot sent now stands for. The
    /// chunk files a peer then copies hold at least that much (they may hold more: the
    /// entries after it are re-applied on top, and applying a write twice is harmless).
    pub(crate) applied: (u64, u64),
    /// The group's membership with addresses (a JSON `GroupSpec`): a snapshot's data, so a
    /// new replica learns where its peers are.
    pub(crate) snapshot_data: bytes::Bytes,
}

impl MemLog {
    pub(crate) fn last_index(&self) -> u64 {
        self.compacted_index + self.entries.len() as u64
    }

    /// Appends entries that start at most one past the last index, dropping any conflicting
    /// suffix first (Raft log overwrite).
    pub(crate) fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        let keep = first.index.saturating_sub(self.compacted_index + 1) as usize;
        while self.entries.len() > keep {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= e.data.len() as u64;
            }
        }
        for e in ents {
            self.bytes += e.data.len() as u64;
            self.entries.push_back(e.clone());
        }
    }

    /// The compaction point at or below `upto` that keeps at most `bytes` of payload in
    /// the entries after it (up to `upto`).
    pub(crate) fn index_keeping(&self, upto: u64, bytes: u64) -> u64 {
        let upto = upto.min(self.last_index());
        if upto <= self.compacted_index {
            return self.compacted_index;
        }
        let mut kept = 0u64;
        let mut pos = (upto - self.compacted_index) as usize;
        while pos > 0 {
            let e = &self.entries[pos - 1];
            if kept + e.data.len() as u64 > bytes {
                return e.index;
            }
            kept += e.data.len() as u64;
            pos -= 1;
        }
        self.compacted_index
    }

    /// Drops entries up to and including `index` (never past the last entry).
    pub(crate) fn compact(&mut self, index: u64) {
        while let Some(front) = self.entries.front() {
            if front.index > index {
                break;
            }
            self.compacted_index = front.index;
            self.compacted_term = front.term;
            self.bytes -= front.data.len() as u64;
            self.entries.pop_front();
        }
    }

    pub(crate) fn term_of(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.compacted_index {
            return Ok(self.compacted_term);
        }
        if idx < self.compacted_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((idx - self.compacted_index - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

/// Shared handle: the RawNode reads through it, the poller writes through it. Both are only
/// ever used by the poller that owns the group, so the lock is never contended; it is there
/// so a group can move between threads.
#[derive(Clone, Default)]
pub(crate) struct GroupStorage(Arc<Mutex<MemLog>>);

impl GroupStorage {
    pub(crate) fn new(mem: MemLog) -> Self {
        GroupStorage(Arc::new(Mutex::new(mem)))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, MemLog> {
        // A panic while holding it would already have taken the poller down.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let m = self.lock();
        Ok(RaftState::new(m.hard_state.clone(), m.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let m = self.lock();
        if low <= m.compacted_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > m.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let start = (low - m.compacted_index - 1) as usize;
        let end = (high - m.compacted_index - 1) as usize;
        let mut out: Vec<Entry> = m.entries.range(start..end).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.lock().term_of(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.lock().compacted_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.lock().last_index())
    }

    /// Metadata only: the receiver copies the chunk files themselves from this node
    /// (only the blocks whose checksums differ) before it steps the snapshot into Raft.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let m = self.lock();
        let (index, term) = m.applied;
        if index == 0 || index < request_index || index < m.compacted_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot {
            data: m.snapshot_data.clone(),
            ..Default::default()
        };
        let md = snap.mut_metadata();
        md.index = index;
        md.term = term;
        md.set_conf_state(m.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: bytes::Bytes::from(vec![0u8; 10]),
            ..Default::default()
        }
    }

    #[test]
    fn append_overwrites_conflicting_suffix_and_compacts() {
        let s = GroupStorage::default();
        let mut m = s.lock();
        m.append(&(1..=10).map(|i| ent(i, 1)).collect::<Vec<_>>());
        m.append(&[ent(6, 2), ent(7, 2)]);
        assert_eq!(m.last_index(), 7);
        assert_eq!(m.term_of(6).unwrap(), 2);
        assert_eq!(m.bytes, 70);
        m.compact(3);
        assert_eq!(m.compacted_index, 3);
        assert_eq!(m.term_of(3).unwrap(), 1);
        assert!(m.term_of(2).is_err());
        drop(m);
        let got = s
            .entries(4, 8, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            [4, 5, 6, 7]
        );
        assert!(
            s.entries(3, 5, None, GetEntriesContext::empty(false))
                .is_err()
        );
    }

    #[test]
    fn index_keeping_retains_at_most_the_byte_budget() {
        let mut m = MemLog::default();
        m.append(&(1..=10).map(|i| ent(i, 1)).collect::<Vec<_>>());
        // Ten bytes an entry: 25 bytes keeps two entries after the point.
        assert_eq!(m.index_keeping(10, 25), 8);
        assert_eq!(m.index_keeping(10, 0), 10);
        assert_eq!(m.index_keeping(10, 1000), 0);
        assert_eq!(m.index_keeping(99, 10), 9);
        m.compact(4);
        assert_eq!(m.index_keeping(3, 10), 4);
    }
}
