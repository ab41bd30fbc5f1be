//! A client request reaching a group: reads served from the applied state (under the lease
//! or after a heartbeat round), writes proposed once (a retry is answered with its first
//! attempt's outcome), and what is pending answered when leadership is lost.
//!
//! Must never: propose a retry whose first attempt is in the log or applied; answer a
//! write before its entry is committed; tell a client a request will never be applied
//! unless this leader has committed in its term.

use std::time::Instant;

use bytes::Bytes;
use raft::eraftpb::{Entry, Message, MessageType};
use tessera_proto::command::{CmdOp, Command};
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
        if req.op == Op::Read {
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
            Op::Read => unreachable!("reads returned above"),
            Op::BlockStatus => {
                respond(Reply::BadRequest(
                    "block status is not supported by this node yet".into(),
                ));
                return;
            }
            Op::SnapList | Op::SnapChecksums | Op::SnapRead => {
                respond(Reply::BadRequest(
                    "snapshot transfers are served by the data port, not by Raft".into(),
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
            seq: req.seq,
            data: req.data,
        };
        // Its id is noted when the entry reaches the log (`process_readies`, for every entry
        // appended, proposed here or received): a retry cannot arrive before that, since a
        // client sends one attempt at a time and this one is answered no earlier. Its
        // epoch raises the floor now, not then: a write of an older epoch handled in the
        // same round must not be proposed after this fence.
        self.fences.raise(cmd.volume, cmd.epoch);
        self.propose(cmd.encode(), respond);
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

    pub(crate) fn propose(&mut self, data: Bytes, respond: Respond) {
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
        match self.raw.step(m) {
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
