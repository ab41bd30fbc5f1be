//! Applying committed entries to the chunk files, in log order, and serving the reads the
//! applied index then covers; stalling (never skipping) at an entry that meets a full disk
//! or a corrupt block, but for a merge of layers, optional work skipped on a full disk (only
//! there: a passing shortage makes it wait like any entry). A scrub's repair is not
//! optional: it stalls like a write (a full disk may have left its blocks torn, which only
//! its retry rewrites). Marks the node's scrub watches dirty before an entry changes blocks
//! (see `crate::scrub`).
//!
//! Must never: apply an entry out of order or skip one that a read could see (writes);
//! acknowledge, as a leader that cannot apply, a write whose read it could not serve.

use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{Entry, EntryType};
use tessera_engine::ChunkStore;
use tessera_engine::chunk::{BlockKind, FillsExcluded, MergeRange};
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::data::{BlockState, Op, Reply, Request};

use super::Group;
use crate::scrub::{self, Watches};

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

    /// Applies queued committed entries in order, then serves the reads the new applied
    /// index covers. Stops at the first entry that cannot be applied (full disk, a corrupt
    /// chain of links; a partial write or a whole-chunk copy over a block failing its
    /// checksum applies, its result left failing: see the engine's `write` and
    /// `copy_runs`): it is retried later, never skipped, so replicas never diverge. An I/O error is returned: the node must stop.
    pub(crate) fn apply(&mut self) -> Result<(), crate::Fatal> {
        // While a snapshot's chunk data is being copied in, older entries must not land on
        // top of it (a block copied at the snapshot's state would be overwritten with an
        // older one); the snapshot covers them anyway.
        if self.fetching {
            // Not stalled: waiting for a snapshot's copy, which covers what it could not apply.
            self.note_stall(None);
            self.unfilled = None;
            return Ok(());
        }
        // A fill outside the log (the storage node's answer to an apply stalled on unfilled
        // blocks, from another thread) is running: applied at the next tick or event, never
        // interleaved with it (see the engine's `hydrate`). Not a stall either.
        let chunks = self.chunks.clone();
        let Some(excluded) = chunks.try_exclude_fills() else {
            self.serve_reads();
            return Ok(());
        };
        let before = self.applied;
        let mut stall = None;
        let mut waiting = false;
        let mut unfilled = None;
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
                EntryType::EntryNormal => {
                    apply_entry((&chunks, &excluded, &self.watches), self.id, e)
                }
                _ => Ok(()),
            };
            let result = skip_optional_work(self.id, e, result);
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
                // A partial-block write over a restored block not filled yet (the storage
                // node fills such blocks before it proposes the write, but a Link may
                // commit before it knows): stalled, never completed from zeroes. No later
                // entry can fill them first: the poller tells the storage node's hook,
                // which fills them outside the log, and the apply is retried.
                Err(tessera_engine::Error::Unfilled(u)) => {
                    tracing::warn!(
                        group = self.id,
                        index = e.index,
                        blocks = ?u.blocks,
                        "apply stalled: an entry needs restored blocks not filled yet"
                    );
                    unfilled = Command::decode(&e.data)
                        .ok()
                        .map(|c| (c.volume, c.chunk, u.blocks.clone()));
                    stall = Some(format!(
                        "entry {} needs {} restored block(s) not filled yet",
                        e.index,
                        u.blocks.len()
                    ));
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
        drop(excluded);
        if self.applied != before {
            self.raw.advance_apply_to(self.applied);
            self.chunks.start_writeback();
        }
        if !waiting {
            self.note_stall(stall);
        }
        if unfilled.is_none() && !waiting {
            self.unfilled_told = None;
        }
        if !waiting {
            self.unfilled = unfilled;
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

fn apply_entry(
    (chunks, excluded, watches): (&ChunkStore, &FillsExcluded<'_>, &Watches),
    group: u64,
    e: &Entry,
) -> tessera_engine::Result<()> {
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
    let (v, c) = (cmd.volume, cmd.chunk);
    let res = apply_command(
        (chunks, excluded, watches),
        group,
        e.index,
        &cmd,
        (v, c),
        (off, len),
    );
    // The manager's operations may meet a chunk in a state they do not fit (a link to a
    // second parent, a flatten or a hydrate past the chunk's end): the engine refuses those the same on
    // every replica, so skipping the entry keeps the replicas identical, where stopping
    // would stop every replica of the group. A `DropMerged` is the exception: it checks
    // this replica's merge, which a full disk may have skipped here and not elsewhere
    // (see `skip_optional_work`), so its refusal may differ between replicas; that leaves
    // them holding the same data in different layers, and the manager merges again.
    match res {
        Err(err)
            if matches!(
                cmd.op,
                CmdOp::Link
                    | CmdOp::Flatten
                    | CmdOp::Unlink
                    | CmdOp::Rollback
                    | CmdOp::Merge
                    | CmdOp::DropMerged
                    | CmdOp::Hydrate
            ) && refused(&err) =>
        {
            if cmd.op == CmdOp::DropMerged {
                // Expected after a merge skipped on a full disk: not a bug.
                tracing::warn!(
                    group,
                    index = e.index,
                    "DropMerged of volume {v} chunk {c} refused, layers kept: {err}"
                );
            } else {
                tracing::error!(
                    group,
                    index = e.index,
                    "{:?} of volume {v} chunk {c} refused by the chunk store, not applied: {err}",
                    cmd.op
                );
            }
            Ok(())
        }
        other => other,
    }
}

/// A merge (`Merge`, `DropMerged`) that meets a full disk is skipped rather than stalling
/// the group: it is optional work that changes no read (`DropMerged` checks that the merge
/// it follows is whole, so a skipped piece only makes it refuse), and the manager merges
/// the chunk again once every replica's layers are counted. Every other failure keeps
/// `result`: a write must stall, never be skipped, and a shortage of descriptors or a torn
/// block (`Exhausted`) passes, so the merge waits for it like any other entry. Replicas may
/// then hold the chunk's blocks in different layers, never different data.
///
/// A `Repair` is a write here: a full disk part way through it may leave its block torn
/// (read as `Exhausted` forever, which no read repair fixes, and trusted as torn by a later
/// partial write), so it stalls until its retry rewrites the block whole.
fn skip_optional_work(
    group: u64,
    e: &Entry,
    result: tessera_engine::Result<()>,
) -> tessera_engine::Result<()> {
    let Err(tessera_engine::Error::DiskFull(msg)) = &result else {
        return result;
    };
    match Command::decode(&e.data) {
        Ok(cmd) if matches!(cmd.op, CmdOp::Merge | CmdOp::DropMerged) => {
            tracing::warn!(
                group,
                index = e.index,
                "{:?} of volume {} chunk {} skipped, not applied: {msg}",
                cmd.op,
                cmd.volume,
                cmd.chunk
            );
            Ok(())
        }
        _ => result,
    }
}

/// Whether the chunk store refused an operation for what it asked, rather than failed at
/// it: the same on every replica, but for a `DropMerged`, which checks this replica's own
/// merge (one skipped here on a full disk makes it refuse here only).
fn refused(e: &tessera_engine::Error) -> bool {
    matches!(
        e,
        tessera_engine::Error::OutOfRange(_) | tessera_engine::Error::Refused(_)
    )
}

// A Link entry carries the wire's parent to the engine as it is: a restored chunk's
// (RESTORED_PARENT) must be the engine's RESTORED, or its blocks would read as a volume's.
const _: () = assert!(tessera_engine::chunk::RESTORED == tessera_proto::control::RESTORED_PARENT);

fn apply_command(
    (chunks, excluded, watches): (&ChunkStore, &FillsExcluded<'_>, &Watches),
    group: u64,
    index: u64,
    cmd: &Command,
    (v, c): (u64, u64),
    (off, len): (u64, u64),
) -> tessera_engine::Result<()> {
    // Before the entry changes anything (see `crate::scrub`).
    watches.before_apply(group, cmd);
    match cmd.op {
        // Each into the layer of its sequence (see `tessera_proto::command`).
        CmdOp::Write => chunks.write_seq(v, c, off, &cmd.data, cmd.seq),
        CmdOp::WriteZeroes => chunks.write_zeroes_seq(v, c, off, len, cmd.seq),
        CmdOp::Discard => chunks.discard_seq(v, c, off, len, cmd.seq),
        CmdOp::DropChunk => chunks.drop_chunk(v, c),
        CmdOp::Hydrate => chunks.hydrate_excluded(excluded, v, c, off, &cmd.data),
        // The floors were raised when the entry reached the log (see `fence.rs`).
        CmdOp::Fence => Ok(()),
        CmdOp::ScrubMark => {
            scrub::apply_mark(watches, chunks, group, index, cmd);
            Ok(())
        }
        CmdOp::Repair => scrub::apply_repair(watches, chunks, group, index, cmd),
        CmdOp::Link => match cmd.link_parent() {
            Some((parent, parent_seq)) => chunks.link(v, c, parent, parent_seq),
            None => {
                // `Command::decode` checked the data's length: a bug, never a guess.
                tracing::error!(group, index, "link without a parent; not applied");
                Ok(())
            }
        },
        CmdOp::Flatten => chunks.flatten(v, c, off, len, cmd.seq),
        CmdOp::Unlink => chunks.unlink(v, c),
        CmdOp::Merge | CmdOp::DropMerged => match cmd.merge_range() {
            Some((low, top, live)) => {
                let range = MergeRange { low, top, live };
                if cmd.op == CmdOp::Merge {
                    chunks.merge_layers(v, c, off, len, range)
                } else {
                    chunks.drop_merged(v, c, range)
                }
            }
            None => {
                tracing::error!(group, index, "{:?} without a range; not applied", cmd.op);
                Ok(())
            }
        },
        CmdOp::Rollback => match cmd.rollback_to() {
            Some(to) => chunks.rollback(v, c, to, cmd.seq),
            None => {
                tracing::error!(group, index, "rollback without a target; not applied");
                Ok(())
            }
        },
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

/// Serves a read or a block status from the applied state: live (`seq` 0) or as of the
/// snapshot `req.seq`.
pub(super) fn serve_read(chunks: &ChunkStore, req: &Request) -> Reply {
    let (v, c) = (req.addr.volume, req.addr.chunk);
    let (off, len) = (u64::from(req.offset), u64::from(req.len));
    let res = match req.op {
        Op::BlockStatus => chunks
            .block_status(v, c, off, len, req.seq)
            .map(|kinds| Bytes::from(kinds.into_iter().map(state_byte).collect::<Vec<u8>>())),
        _ => chunks.read_as_of(v, c, off, len, req.seq),
    };
    match res {
        Ok(data) => Reply::Ok(data),
        Err(e) => engine_reply(&e),
    }
}

/// One block's byte of a block status answer.
fn state_byte(k: BlockKind) -> u8 {
    (match k {
        BlockKind::Hole => BlockState::Hole,
        BlockKind::Zero => BlockState::Zero,
        // The backup's block: reported as data (it may hold some).
        BlockKind::Data | BlockKind::Unfilled => BlockState::Data,
    }) as u8
}

fn engine_reply(e: &tessera_engine::Error) -> Reply {
    use tessera_engine::Error as E;
    match e {
        E::DiskFull(m) => Reply::DiskFull(m.clone()),
        E::Corrupt(m) => Reply::Corrupt(m.clone()),
        E::OutOfRange(m) => Reply::OutOfRange(m.clone()),
        E::Exhausted(m) => Reply::Unavailable(m.clone()),
        E::Unfilled(u) => Reply::Unfilled {
            data: u.data.clone(),
            blocks: u.blocks.clone(),
        },
        other => Reply::Io(other.to_string()),
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
