//! A client request reaching a group: reads served from the applied state (under the lease
//! or after a heartbeat round), writes proposed once (a retry is answered with its first
//! attempt's outcome), and what is pending answered when leadership is lost.
//!
//! Must never: propose a retry whose first attempt is in the log or applied; answer a
//! write before its entry is committed; tell a client a request will never be applied
//! unless this leader has committed in its term.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use raft::eraftpb::{Entry, Message, MessageType};
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::control::GroupOp;
use tessera_proto::data::{Op, Reply, Request};

use super::apply::serve_read;
use super::{Group, PendingRead, Proposal};
use crate::Respond;
use crate::dedup::Seen;

impl Group {
    /// A client request for this group. Writes are proposed; reads are served from the
    /// applied state once it covers the commit index seen now (lease read: see module docs
    /// of the crate for why no round trip is needed).
    pub(crate) fn request(&mut self, req: Request, respond: Respond, disk_full: bool) {
        if !self.is_leader() {
            respond(Reply::NotLeader {
                hint: self.raw.raft.leader_id,
            });
            return;
        }
        // A leader that cannot apply could acknowledge writes but never serve the reads
        // that follow them. Refused before any retry lookup: a retry answered `Ok` here
        // would be just such an acknowledgement. The client tries the other replicas.
        if let Some(refusal) = self.stalled_refusal() {
            return respond(refusal);
        }
        if matches!(req.op, Op::Read | Op::BlockStatus) {
            if req.op == Op::BlockStatus
                && let Err(why) = whole_blocks(&req)
            {
                return respond(Reply::BadRequest(why));
            }
            if !self.raw.raft.commit_to_current_term() {
                respond(Reply::Unavailable(format!(
                    "group {} has a new leader that has not committed yet",
                    self.id
                )));
                return;
            }
            let index = self.raw.raft.raft_log.committed;
            let now = crate::clock::now();
            let confirm_after = if self.lease_valid(now) {
                None
            } else {
                // No lease: confirm leadership with a round of heartbeats sent from now on
                // (one round for every read that arrives before it goes out).
                self.ping_due = true;
                Some(now)
            };
            if confirm_after.is_none() && self.applied >= index && self.reads.is_empty() {
                respond(serve_read(&self.chunks, &req));
            } else {
                self.reads.push_back(PendingRead {
                    index,
                    req,
                    respond,
                    confirm_after,
                });
            }
            return;
        }
        let op = match req.op {
            Op::Write => CmdOp::Write,
            Op::WriteZeroes => CmdOp::WriteZeroes,
            Op::Discard => CmdOp::Discard,
            Op::Fence => CmdOp::Fence,
            Op::Read | Op::BlockStatus => {
                return respond(Reply::BadRequest(
                    "reads are served above, never proposed".into(),
                ));
            }
            Op::CatchUpList | Op::CatchUpChecksums | Op::CatchUpRead => {
                respond(Reply::BadRequest(
                    "catch-up copies are served by the data port, not by Raft".into(),
                ));
                return;
            }
        };
        if !cfg!(tessera_unfixed = "retry_dedup") {
            match self.retry_outcome(req.id) {
                None => {}
                Some(None) => return respond(Reply::Ok(Bytes::new())),
                Some(Some((index, term))) => {
                    // Answered with the first attempt's entry, in index order.
                    let at = self.proposals.partition_point(|p| p.index <= index);
                    self.proposals.insert(
                        at,
                        Proposal {
                            index,
                            term,
                            respond,
                            proposed: Instant::now(),
                        },
                    );
                    return;
                }
            }
        }
        // A retry whose first attempt is in the log was answered above: refusing it here
        // would say "not applied" of an entry that may still commit.
        // Write-zeroes allocates too (it keeps the range provisioned); discard frees space
        // and a fence allocates nothing, so neither is refused.
        let allocates = req.op == Op::Write
            || (req.op == Op::WriteZeroes && !cfg!(tessera_unfixed = "zeroes_floor"));
        if disk_full && allocates {
            respond(Reply::DiskFull(format!(
                "node {} has too little free space to accept writes",
                self.raw.raft.id
            )));
            return;
        }
        // Both refusals below tell the client its request will never be applied, which it
        // takes for its earlier attempts too (the lookup above found none). Only a leader
        // that committed in its term knows its log holds every committed entry: a new one
        // may lack an attempt a previous leader appended that will still commit.
        let settles = self.raw.raft.commit_to_current_term();
        // A write of an attachment the manager ended: after a newer writer's fence in this
        // log, never. (A retry whose first attempt is in the log was answered above with
        // that attempt's outcome: it entered the log before the fence.)
        if op != CmdOp::Fence
            && let Err(floor) = self.fences.admits(req.addr.volume, req.epoch)
        {
            if !settles {
                return respond(Reply::Unavailable(format!(
                    "group {} has a new leader that has not committed yet",
                    self.id
                )));
            }
            return respond(Reply::Fenced(format!(
                "volume {} is attached by a newer writer (epoch {floor}); this request's \
                 epoch {} is fenced in group {}",
                req.addr.volume, req.epoch, self.id
            )));
        }
        // A write of a sequence a snapshot closed in this log (or of a client from before
        // snapshots, once one was taken): never, it would land in a layer below the cut.
        // The client adopts the floor and sends it again (see `fence.rs`).
        if op != CmdOp::Fence
            && let Err(floor) = self.fences.admits_seq(req.addr.volume, req.seq)
        {
            if !settles {
                return respond(Reply::Unavailable(format!(
                    "group {} has a new leader that has not committed yet",
                    self.id
                )));
            }
            return respond(Reply::Resequence { seq: floor });
        }
        // The client gives up on an attempt at its deadline and retries: proposed later, this
        // attempt could land after the retry and a newer write to the same range.
        if req.expired() && !cfg!(tessera_unfixed = "deadlines") {
            if !settles {
                return respond(Reply::Unavailable(format!(
                    "group {} has a new leader that has not committed yet",
                    self.id
                )));
            }
            return respond(Reply::Expired(format!(
                "request to group {} reached its leader after its deadline; not applied",
                self.id
            )));
        }
        let cmd = Command {
            op,
            volume: req.addr.volume,
            chunk: req.addr.chunk,
            offset: req.offset,
            len: req.len,
            id: req.id,
            epoch: req.epoch,
            // Sequences 0 and 1 name the same layer: stored as 0, the entry of a volume
            // that never had a snapshot stays in the layout followers from before
            // sequences apply (they would skip one carrying the flag).
            seq: if req.seq <= 1 { 0 } else { req.seq },
            data: req.data,
        };
        // Its id is noted when the entry reaches the log (`process_readies`, for every entry
        // appended, proposed here or received): a retry cannot arrive before that, since a
        // client sends one attempt at a time and this one is answered no earlier. Its
        // epoch raises the floor now, not then: a write of an older epoch handled in the
        // same round must not be proposed after this fence.
        // So does its sequence.
        self.fences.raise(cmd.volume, cmd.epoch);
        self.fences.raise_seq(cmd.volume, cmd.seq);
        self.propose(cmd.encode(), respond);
    }

    /// Proposes the manager's `ops` in order (leader only) and answers once the last one
    /// is committed: a read that comes after is served only once everything committed
    /// before it is applied. A fence raises the floors now, as a request's does.
    pub(crate) fn propose_ops(&mut self, ops: Vec<GroupOp>, respond: Respond) {
        if !self.is_leader() {
            return respond(Reply::NotLeader {
                hint: self.raw.raft.leader_id,
            });
        }
        if let Some(refusal) = self.stalled_refusal() {
            return respond(refusal);
        }
        let mut cmds = Vec::with_capacity(ops.len());
        for op in ops {
            match op_command(op) {
                Ok(c) => cmds.push(c),
                Err(why) => return respond(Reply::BadRequest(why)),
            }
        }
        if let Err(why) = self
            .rollbacks_are_current(&cmds)
            .and_then(|()| self.merges_are_fenced(&cmds))
        {
            return respond(Reply::BadRequest(why));
        }
        let n = cmds.len();
        for (i, cmd) in cmds.into_iter().enumerate() {
            self.fences.raise(cmd.volume, cmd.epoch);
            self.fences.raise_seq(cmd.volume, cmd.seq);
            if i + 1 == n {
                return self.propose(cmd.encode(), respond);
            }
            if let Err(e) = self.step_proposal(cmd.encode()) {
                return respond(Reply::Unavailable(format!(
                    "group {} dropped the proposal: {e}",
                    self.id
                )));
            }
        }
        // No op: nothing to wait for.
        respond(Reply::Ok(Bytes::new()))
    }

    /// Proposes a restore's fill of `data` at `offset` of a chunk (`CmdOp::Hydrate`, see
    /// `RaftNode::hydrate`), answered at commit. Refused as a write is when this leader
    /// cannot apply or the node is short of space; never by a fence: it carries no writer
    /// epoch and no sequence (the engine writes it only where nothing else is).
    pub(crate) fn propose_hydrate(
        &mut self,
        (volume, chunk): (u64, u64),
        offset: u32,
        data: Bytes,
        respond: Respond,
        disk_full: bool,
    ) {
        if !self.is_leader() {
            return respond(Reply::NotLeader {
                hint: self.raw.raft.leader_id,
            });
        }
        if let Err(why) = hydrate_range(offset, data.len()) {
            return respond(Reply::BadRequest(format!(
                "hydrate of volume {volume} chunk {chunk} in group {}: {why}",
                self.id
            )));
        }
        if let Some(refusal) = self.stalled_refusal() {
            return respond(refusal);
        }
        if disk_full {
            return respond(Reply::DiskFull(format!(
                "node {} has too little free space to accept writes",
                self.raw.raft.id
            )));
        }
        let cmd = Command {
            op: CmdOp::Hydrate,
            volume,
            chunk,
            offset,
            len: data.len() as u32,
            id: 0,
            epoch: 0,
            seq: 0,
            data,
        };
        self.propose(cmd.encode(), respond);
    }

    /// A `Rollback` rewrites the live layer: it is proposed only right after a fence of
    /// the same volume whose writer epoch is still the newest the group knows, and into a
    /// layer no snapshot was cut at since. A rollback's ops arriving late (a deposed
    /// manager's, a retry of one given up on) after a newer writer attached and fenced would
    /// otherwise rewrite that writer's acknowledged writes.
    fn rollbacks_are_current(&self, cmds: &[Command]) -> Result<(), String> {
        for (i, cmd) in cmds.iter().enumerate() {
            if cmd.op != CmdOp::Rollback {
                continue;
            }
            let fence = i
                .checked_sub(1)
                .map(|j| &cmds[j])
                .filter(|f| f.op == CmdOp::Fence && f.volume == cmd.volume && f.epoch != 0);
            let Some(fence) = fence else {
                return Err(format!(
                    "group {}: a rollback of volume {} must follow its writer fence",
                    self.id, cmd.volume
                ));
            };
            if let Err(floor) = self.fences.admits(cmd.volume, fence.epoch) {
                return Err(format!(
                    "group {}: volume {} has writer epoch {floor}, newer than the rollback's \
                     {}: a writer attached since; the rollback is refused",
                    self.id, cmd.volume, fence.epoch
                ));
            }
            if let Err(floor) = self.fences.admits_seq(cmd.volume, cmd.seq) {
                return Err(format!(
                    "group {}: volume {} has snapshot sequence {floor}, newer than the \
                     rollback's {}: the rollback is refused",
                    self.id, cmd.volume, cmd.seq
                ));
            }
        }
        Ok(())
    }

    /// A `Merge` or `DropMerged` rewrites layers `low..=top`: it is proposed only once the
    /// volume's sequence floor, as the fences before it in the batch leave it, keeps every
    /// write out of the range (above `top`), or, for the live range, out of the layers
    /// below `top` (at least `top`: clients write `top` itself, and the live merge never
    /// overwrites what they wrote). A merge of a frozen range racing a write into it could
    /// copy a block over the newer write; the manager always sends its fence first.
    fn merges_are_fenced(&self, cmds: &[Command]) -> Result<(), String> {
        // The floors as the batch raises them, op by op (only the volumes it raises).
        let mut raised: HashMap<u64, u64> = HashMap::new();
        for cmd in cmds {
            let floor = raised
                .get(&cmd.volume)
                .copied()
                .unwrap_or_else(|| self.fences.seq_floor(cmd.volume));
            if cmd.seq > floor {
                raised.insert(cmd.volume, cmd.seq);
            }
            let Some((low, top, live)) = cmd.merge_range() else {
                continue;
            };
            let fenced = if live { floor >= top } else { floor > top };
            if !fenced {
                let (shape, need) = if live {
                    ("live", format!("at least {top}"))
                } else {
                    ("frozen", format!("above {top}"))
                };
                return Err(format!(
                    "group {}: volume {} has snapshot sequence floor {floor}; a {:?} of the \
                     {shape} layers {low}..={top} of chunk {} needs one {need} (a fence first)",
                    self.id, cmd.volume, cmd.op, cmd.chunk
                ));
            }
        }
        Ok(())
    }

    /// Whether request `id` was seen before (see `dedup.rs`): `None` if not (propose it);
    /// `Some(None)` if its entry is committed (answer `Ok`); `Some(Some((index, term)))` if
    /// its entry is in this leader's log, not yet committed (answer with that entry).
    fn retry_outcome(&mut self, id: u128) -> Option<Option<(u64, u64)>> {
        let index = match self.dedup.lookup(id) {
            Seen::Never => return None,
            Seen::Applied => return Some(None),
            Seen::InLog(index) => index,
        };
        let log = &self.raw.raft.raft_log;
        // A later leader's entries may have cut this log short of the index (raft-rs's
        // `slice` panics past the last index).
        let in_log = index >= log.first_index() && index <= log.last_index();
        let entry = in_log
            .then(|| {
                log.slice(
                    index,
                    index + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                )
                .ok()
            })
            .flatten()
            .and_then(|v| v.into_iter().next());
        match entry {
            Some(e) if Command::peek_id(&e.data) == id => {
                if index <= log.committed {
                    Some(None)
                } else {
                    Some(Some((index, e.term)))
                }
            }
            _ => {
                // Overwritten by another leader's entry: the first attempt never commits.
                self.dedup.drop_logged(id);
                None
            }
        }
    }

    /// Steps one proposal into raft-rs (nobody waits for its entry).
    fn step_proposal(&mut self, data: Bytes) -> raft::Result<()> {
        // Step a MsgPropose ourselves rather than `RawNode::propose`, which takes a Vec and
        // would copy the payload.
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.raw.raft.id;
        let e = Entry {
            data,
            ..Default::default()
        };
        m.set_entries(vec![e].into());
        self.raw.step(m)
    }

    pub(crate) fn propose(&mut self, data: Bytes, respond: Respond) {
        match self.step_proposal(data) {
            Ok(()) => self.proposals.push_back(Proposal {
                proposed: std::time::Instant::now(),
                index: self.raw.raft.raft_log.last_index(),
                term: self.raw.raft.term,
                respond,
            }),
            Err(e) => respond(Reply::Unavailable(format!(
                "group {} dropped the proposal: {e}",
                self.id
            ))),
        }
    }

    /// Leadership was lost: nothing pending here can be answered by this node any more.
    /// A write answered this way may still commit under the new leader; the client retries
    /// it there with the same request id, which that leader finds in its log (or among the
    /// ids it applied) rather than propose it a second time (see `dedup.rs`).
    pub(crate) fn fail_pending(&mut self) {
        // Answers to an old term's heartbeats must not make a lease in a later one.
        self.contact.clear();
        let hint = self.raw.raft.leader_id;
        for p in self.proposals.drain(..) {
            (p.respond)(Reply::NotLeader { hint });
        }
        for r in self.reads.drain(..) {
            (r.respond)(Reply::NotLeader { hint });
        }
    }
}

/// Why a block status request does not name whole blocks (`Err`), if it does not.
fn whole_blocks(req: &Request) -> Result<(), String> {
    let bs = tessera_engine::chunk::BLOCK_SIZE;
    let (off, len) = (u64::from(req.offset), u64::from(req.len));
    if off % bs != 0 || len % bs != 0 {
        return Err(format!(
            "block status of {len} bytes at {off}: not whole blocks of {bs} bytes"
        ));
    }
    Ok(())
}

/// Whether a hydrate of `len` bytes at `offset` could apply: whole blocks, at most
/// `MAX_IO`, inside the chunk limit (the engine would refuse it on every replica).
fn hydrate_range(offset: u32, len: usize) -> Result<(), String> {
    let bs = tessera_engine::chunk::BLOCK_SIZE;
    let (off, n) = (u64::from(offset), len as u64);
    if n > u64::from(tessera_proto::data::MAX_IO) {
        return Err(format!(
            "{n} bytes, more than {}",
            tessera_proto::data::MAX_IO
        ));
    }
    if off % bs != 0 || n % bs != 0 {
        return Err(format!(
            "{n} bytes at {off}: not whole blocks of {bs} bytes"
        ));
    }
    if off + n > tessera_engine::chunk::MAX_CHUNK {
        return Err(format!("{n} bytes at {off}: past the chunk"));
    }
    Ok(())
}

/// The log entry of one of the manager's group operations; `Err` for one that could
/// never apply (the engine would refuse it on every replica).
pub(crate) fn op_command(op: GroupOp) -> Result<Command, String> {
    let cmd = |op, volume, chunk| Command {
        op,
        volume,
        chunk,
        offset: 0,
        len: 0,
        id: 0,
        epoch: 0,
        seq: 0,
        data: Bytes::new(),
    };
    Ok(match op {
        GroupOp::Fence {
            volume_id,
            epoch,
            seq,
        } => Command {
            epoch,
            seq,
            ..cmd(CmdOp::Fence, volume_id, 0)
        },
        GroupOp::Link {
            volume_id,
            chunk,
            parent_volume,
            parent_seq,
        } => {
            if parent_volume == volume_id {
                return Err(format!("volume {volume_id} cannot be its own parent"));
            }
            Command {
                data: Command::link_data(parent_volume, parent_seq),
                ..cmd(CmdOp::Link, volume_id, chunk)
            }
        }
        GroupOp::Flatten {
            volume_id,
            chunk,
            offset,
            len,
            seq,
        } => {
            if offset.checked_add(len).is_none() {
                return Err(format!("flatten of {len} bytes at {offset} overflows"));
            }
            Command {
                offset,
                len,
                seq,
                ..cmd(CmdOp::Flatten, volume_id, chunk)
            }
        }
        GroupOp::Unlink { volume_id, chunk } => cmd(CmdOp::Unlink, volume_id, chunk),
        GroupOp::Merge {
            volume_id,
            chunk,
            offset,
            len,
            low,
            top,
            live,
        } => {
            if offset.checked_add(len).is_none() || low > top {
                return Err(format!(
                    "merge of layers {low}..={top}, {len} bytes at {offset}, is not a range"
                ));
            }
            Command {
                offset,
                len,
                data: Command::merge_data(low, top, live),
                ..cmd(CmdOp::Merge, volume_id, chunk)
            }
        }
        GroupOp::DropMerged {
            volume_id,
            chunk,
            low,
            top,
            live,
        } => {
            if low > top {
                return Err(format!(
                    "drop of merged layers {low}..={top} is not a range"
                ));
            }
            Command {
                data: Command::merge_data(low, top, live),
                ..cmd(CmdOp::DropMerged, volume_id, chunk)
            }
        }
        GroupOp::Rollback {
            volume_id,
            chunk,
            to,
            seq,
        } => {
            if to == 0 || seq.max(1) <= to {
                return Err(format!(
                    "rollback of volume {volume_id} to {to} must write a newer sequence, not {seq}"
                ));
            }
            Command {
                seq,
                data: Bytes::copy_from_slice(&to.to_le_bytes()),
                ..cmd(CmdOp::Rollback, volume_id, chunk)
            }
        }
    })
}
