//! Applying committed entries to the chunk files, in log order, and serving the reads the
//! applied index then covers; stalling (never skipping) at an entry that meets a full disk
//! or a corrupt block.
//!
//! Must never: apply an entry out of order or skip one; acknowledge, as a leader that
//! cannot apply, a write whose read it could not serve.

use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{Entry, EntryType};
use tessera_engine::ChunkStore;
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::data::{Reply, Request};

use super::Group;

impl Group {
    /// Committed entries not yet applied are covered by an installed snapshot.
    pub(crate) fn drop_unapplied(&mut self) {
        self.to_apply.clear();
    }

    /// Takes newly committed entries for applying, and answers their proposals now: a
    /// committed entry is durable on a majority and will be applied, in order, before any
    /// read that comes after it is served (reads wait for the applied index to reach the
    /// commit index they saw), so the client need not wait for the chunk-file write.
    pub(crate) fn queue_committed(&mut self, ents: Vec<Entry>) {
        let now = std::time::Instant::now();
        for e in &ents {
            while let Some(p) = self.proposals.front() {
                if p.index > e.index {
                    break;
                }
                let Some(p) = self.proposals.pop_front() else {
                    break;
                };
                crate::metrics::COMMIT.observe(now.saturating_duration_since(p.proposed));
                let reply = if p.index < e.index || p.term != e.term {
                    Reply::NotLeader {
                        hint: self.raw.raft.leader_id,
                    }
                } else if let Some(refusal) = self.stalled_refusal() {
                    // Committed, and applied in time by every replica that can; but not
                    // acknowledged by one that cannot serve its read. The client's retry
                    // (same id) finds it committed at the next leader.
                    refusal
                } else {
                    Reply::Ok(Bytes::new())
                };
                (p.respond)(reply);
            }
        }
        self.to_apply.extend(ents);
    }

    /// Applies queued committed entries in order, then serves the
    /// reads the new applied index covers. Stops at the first entry that cannot be applied
    /// (full disk, a corrupt block under a partial write): it is retried later, never
    /// skipped, so replicas never diverge. An I/O error is returned: the node must stop.
    pub(crate) fn apply(&mut self) -> Result<(), crate::Fatal> {
        // While a snapshot's chunk data is being copied in, older entries must not land on
        // top of it (a block copied at the snapshot's state would be overwritten with an
        // older one); the snapshot covers them anyway.
        if self.fetching {
            // Not stalled: waiting for a snapshot's copy, which covers what it could not apply.
            self.note_stall(None);
            return Ok(());
        }
        let before = self.applied;
        let mut stall = None;
        let mut waiting = false;
        while let Some(front) = self.to_apply.front() {
            if front.get_entry_type() != EntryType::EntryNormal {
                let e = front.clone();
                self.apply_conf_change(&e);
            }
            let Some(e) = self.to_apply.front() else {
                break;
            };
            let started = std::time::Instant::now();
            let result = match e.get_entry_type() {
                EntryType::EntryNormal if injected_stall(self.raw.raft.id, self.id) => Err(
                    tessera_engine::Error::DiskFull("injected: raft::apply fail point".into()),
                ),
                EntryType::EntryNormal => apply_entry(&self.chunks, self.id, e),
                _ => Ok(()),
            };
            crate::metrics::APPLY.observe_since(started);
            match result {
                Err(tessera_engine::Error::DiskFull(msg)) => {
                    tracing::error!(
                        group = self.id,
                        index = e.index,
                        "apply stalled: disk full: {msg}"
                    );
                    stall = Some(format!("entry {} meets a full disk: {msg}", e.index));
                    break;
                }
                Err(tessera_engine::Error::Corrupt(msg)) => {
                    tracing::error!(group = self.id, index = e.index, "apply stalled: {msg}");
                    stall = Some(format!("entry {} meets a corrupt block: {msg}", e.index));
                    break;
                }
                // Out of descriptors even after closing idle chunks: back-pressure, retried
                // when the next tick or message comes, never a reason to stop the node. Not
                // a stall: a shortage is node-wide and passing, and handing leadership over
                // for it would only churn.
                Err(tessera_engine::Error::Exhausted(msg)) => {
                    tracing::warn!(group = self.id, index = e.index, "apply waits: {msg}");
                    waiting = true;
                    break;
                }
                Err(source) => {
                    return Err(crate::Fatal::Apply {
                        group: self.id,
                        index: e.index,
                        source,
                    });
                }
                Ok(()) => {}
            }
            let (index, term) = (e.index, e.term);
            self.dedup.applied(Command::peek_id(&e.data), started);
            self.to_apply.pop_front();
            self.applied = index;
            self.applied_term = term;
            self.store.lock().applied = (index, term);
        }
        if self.applied != before {
            self.raw.advance_apply_to(self.applied);
            self.chunks.start_writeback();
        }
        if !waiting {
            self.note_stall(stall);
        }
        self.serve_reads();
        Ok(())
    }

    /// Records whether apply stopped at an entry it cannot apply: the first failure starts
    /// the stall (its age decides when the replica is reported stuck), an apply that
    /// drains its queue ends it.
    fn note_stall(&mut self, stall: Option<String>) {
        match stall {
            Some(why) if self.stalled.is_none() => {
                crate::metrics::APPLY_STALLS.add(1);
                self.stalled = Some((crate::clock::now(), why));
            }
            Some(_) => {}
            None => {
                if self.stalled.take().is_some() {
                    tracing::info!(group = self.id, "apply resumed");
                }
            }
        }
    }

    /// The answer of a stalled leader to a request it must not acknowledge.
    pub(crate) fn stalled_refusal(&self) -> Option<Reply> {
        if cfg!(tessera_unfixed = "stalled_leader") {
            return None;
        }
        let (_, why) = self.stalled.as_ref()?;
        Some(Reply::Unavailable(format!(
            "group {} cannot apply on node {} ({why}); its leadership is being handed over",
            self.id, self.raw.raft.id
        )))
    }

    /// Why this replica is to be reported stuck: stalled for at least `after`.
    pub(crate) fn stuck(&self, now: Instant, after: Duration) -> Option<String> {
        let (since, why) = self.stalled.as_ref()?;
        let age = now.saturating_duration_since(*since);
        (age >= after).then(|| format!("apply stalled for {}s: {why}", age.as_secs()))
    }

    /// Answers every waiting read with the stalled leader's refusal: the applied index they
    /// wait for does not move.
    pub(crate) fn refuse_reads(&mut self) {
        let Some(refusal) = self.stalled_refusal() else {
            return;
        };
        for r in std::mem::take(&mut self.reads) {
            (r.respond)(refusal.clone());
        }
    }

    /// Serves the waiting reads, in arrival order, that the applied index covers and whose
    /// leadership check (if they need one) has passed.
    pub(crate) fn serve_reads(&mut self) {
        while let Some(r) = self.reads.front() {
            if r.index > self.applied
                || r.confirm_after
                    .is_some_and(|t| !self.quorum_heard_since(t, true))
            {
                break;
            }
            let Some(r) = self.reads.pop_front() else {
                break;
            };
            (r.respond)(serve_read(&self.chunks, &r.req));
        }
    }
}

fn apply_entry(chunks: &ChunkStore, group: u64, e: &Entry) -> tessera_engine::Result<()> {
    if e.data.is_empty() {
        return Ok(());
    }
    let cmd = match Command::decode(&e.data) {
        Ok(c) => c,
        Err(err) => {
            // The log's checksums passed, so this is a bug or a newer format; applying
            // nothing is the only choice that keeps the node alive.
            tracing::error!(group, index = e.index, "undecodable committed entry: {err}");
            return Ok(());
        }
    };
    let (off, len) = (cmd.offset as u64, cmd.len as u64);
    match cmd.op {
        CmdOp::Write => chunks.write(cmd.volume, cmd.chunk, off, &cmd.data),
        CmdOp::WriteZeroes => chunks.write_zeroes(cmd.volume, cmd.chunk, off, len),
        CmdOp::Discard => chunks.discard(cmd.volume, cmd.chunk, off, len),
        CmdOp::DropChunk => chunks.drop_chunk(cmd.volume, cmd.chunk),
        // The floor was raised when the entry reached the log (see `fence.rs`).
        CmdOp::Fence => Ok(()),
        CmdOp::Link | CmdOp::Flatten | CmdOp::Unlink | CmdOp::Rollback => {
            tracing::error!(group, index = e.index, "{:?} is not supported yet", cmd.op);
            Ok(())
        }
    }
}

/// Whether the `raft::apply` fail point, configured `return(<node>/<group>)` (or
/// `return(<node>/*)`: every group of the node), makes this replica's entries meet a full
/// disk (never unless a test configured it).
fn injected_stall(node: u64, group: u64) -> bool {
    let _ = (node, group);
    fail::fail_point!("raft::apply", |arg: Option<String>| {
        arg.is_some_and(|a| a == format!("{node}/{group}") || a == format!("{node}/*"))
    });
    false
}

pub(super) fn serve_read(chunks: &ChunkStore, req: &Request) -> Reply {
    match chunks.read(
        req.addr.volume,
        req.addr.chunk,
        req.offset as u64,
        req.len as u64,
    ) {
        Ok(data) => Reply::Ok(data),
        Err(e) => engine_reply(&e),
    }
}

fn engine_reply(e: &tessera_engine::Error) -> Reply {
    use tessera_engine::Error as E;
    match e {
        E::DiskFull(m) => Reply::DiskFull(m.clone()),
        E::Corrupt(m) => Reply::Corrupt(m.clone()),
        E::OutOfRange(m) => Reply::OutOfRange(m.clone()),
        E::Exhausted(m) => Reply::Unavailable(m.clone()),
        other => Reply::Io(other.to_string()),
    }
}
