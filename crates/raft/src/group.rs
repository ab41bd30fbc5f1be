//! One replica group hosted on this node: its RawNode, the proposals waiting for their
//! entries to apply, the reads waiting for the applied index, and applying committed
//! entries to the chunk store.
//!
//! Everything here runs on the poller thread that owns the group; nothing here blocks on
//! the network or waits for an fsync.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message,
    MessageType,
};
use raft::{Config, RawNode, ReadOnlyOption, StateRole};
use tessera_engine::{ChunkStore, EntryKind, LogEntry};
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::control::{GroupSpec, GroupState, Role};
use tessera_proto::data::{Op, Reply, Request};

use crate::Respond;
use crate::dedup::{Dedup, Seen};
use crate::fence::{Fences, SnapshotData};
use crate::store::{GroupStorage, MemLog};

/// Per-group values kept in the shared log's slots.
pub(crate) const SLOT_HARD_STATE: u8 = 0;
pub(crate) const SLOT_APPLIED: u8 = 1;
pub(crate) const SLOT_MEMBERSHIP: u8 = 2;
/// The Raft configuration as of the last applied conf change: its index (u64 LE) then the
/// protobuf `ConfState`.
pub(crate) const SLOT_CONF: u8 = 3;
/// The writer epoch floors (see `fence.rs`).
pub(crate) const SLOT_FENCES: u8 = 4;

/// Where a new group's log starts (index and term), as in TiKV: entries 1..=5 never exist,
/// so a replica added later (whose log is empty) can never be sent entries from the start of
/// a log it has no configuration for; it always gets a snapshot first.
pub(crate) const INIT_INDEX: u64 = 5;

struct Proposal {
    index: u64,
    term: u64,
    respond: Respond,
    proposed: std::time::Instant,
}

struct PendingRead {
    index: u64,
    req: Request,
    respond: Respond,
    /// Without a valid lease, a read waits for a quorum to answer heartbeats sent after it
    /// arrived (the ReadIndex check, Raft thesis §6.4): proof that no other leader could
    /// have committed anything before it.
    confirm_after: Option<Instant>,
}

pub(crate) struct Group {
    pub(crate) id: u64,
    pub(crate) raw: RawNode<GroupStorage>,
    pub(crate) store: GroupStorage,
    pub(crate) spec: GroupSpec,
    /// This replica's chunk files.
    pub(crate) chunks: Arc<ChunkStore>,
    /// Index of the last conf change applied (entries at or below it are not re-applied
    /// after a restart: the configuration persisted with it already includes them).
    pub(crate) conf_index: u64,
    /// Per-group values to persist with the next log write (conf changes applied).
    pub(crate) slot_writes: Vec<(u8, Bytes)>,
    /// The membership changed: peers' addresses must be refreshed.
    pub(crate) peers_changed: bool,
    /// A conf change just removed this replica from its group (noted once, then cleared:
    /// the replica stays until the manager destroys it).
    pub(crate) removed: bool,
    /// A snapshot is being fetched for this replica (its MsgSnapshot waits).
    pub(crate) fetching: bool,
    /// A snapshot was installed whose Ready (number, index) is not yet durable: raft's
    /// applied index moves to it once it is.
    pub(crate) installed: Option<(u64, u64)>,
    /// Last time a peer fetched chunk data of this group from this node, and when each
    /// peer was first seen waiting for a snapshot (see `check_snapshots`).
    pub(crate) snap_activity: Option<Instant>,
    pub(crate) snap_waiting: std::collections::HashMap<u64, (u64, Instant)>,
    proposals: VecDeque<Proposal>,
    reads: VecDeque<PendingRead>,
    /// Committed entries handed out by raft, not yet applied (apply can stall on a full
    /// disk; it never skips an entry).
    to_apply: VecDeque<Entry>,
    pub(crate) applied: u64,
    pub(crate) applied_term: u64,
    /// Applied index known durable in the chunk files (persisted in the apply slot).
    pub(crate) flushed: u64,
    /// Log writes handed to the shared log and not yet durable.
    pub(crate) persisting: u32,
    /// The hard state last handed to the log.
    pub(crate) persisted_hs: HardState,
    /// Entries up to here were in the log at start: re-applying them may meet torn blocks.
    pub(crate) replay_upto: u64,
    pub(crate) replay_term: u64,
    /// Send time of the latest heartbeat each peer answered (see `Poller`'s stamps).
    contact: std::collections::HashMap<u64, Instant>,
    /// How long an answer keeps counting for the read lease.
    lease: Duration,
    /// A term in which this node, as leader, started a leadership transfer: its lease is
    /// void for the rest of that term. The transferee campaigns with a forced vote that
    /// followers grant inside any lease they gave, and the `MsgTimeoutNow` that starts it
    /// may arrive at any time after it was sent, even after the transfer was abandoned here.
    pub(crate) lease_void_term: u64,
    /// Reads wait for a heartbeat round: the poller sends one with this round's messages.
    pub(crate) ping_due: bool,
    /// Request ids in the log and recently applied: a retry is never proposed twice.
    pub(crate) dedup: Dedup,
    /// Each volume's writer epoch floor, from the log: older writes are not proposed.
    pub(crate) fences: Fences,
    /// Apply is stopped at a committed entry it cannot apply (full disk, corrupt block):
    /// since when (the first failure) and why. Reads wait on the applied index, so such a
    /// replica serves nothing: as leader it refuses requests and hands leadership over (see
    /// `poller/stuck.rs`).
    pub(crate) stalled: Option<(Instant, String)>,
    /// When this replica, stalled as leader, last asked for a leadership transfer.
    pub(crate) stall_transfer: Option<Instant>,
    /// Vote grants not yet handed to raft-rs (see `election.rs`).
    pub(crate) held_votes: crate::election::HeldVotes,
}

pub(crate) fn raft_config(node_id: u64, applied: u64, election_tick: usize) -> Config {
    // raft-rs draws election timeouts from its own thread RNG; a deterministic simulation
    // gives each node a fixed, distinct one instead.
    #[cfg(test)]
    let (min_election_tick, max_election_tick) = if crate::clock::virtual_clock::simulated() {
        let min = election_tick + 3 * (node_id as usize % 4);
        (min, min + 1)
    } else {
        (0, 0)
    };
    #[cfg(not(test))]
    let (min_election_tick, max_election_tick) = (0, 0);
    Config {
        min_election_tick,
        max_election_tick,
        id: node_id,
        election_tick,
        heartbeat_tick: (election_tick / 5).max(1),
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::LeaseBased,
        ..Default::default()
    }
}

pub(crate) fn encode_hard_state(hs: &HardState) -> Bytes {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&hs.term.to_le_bytes());
    b.extend_from_slice(&hs.vote.to_le_bytes());
    b.extend_from_slice(&hs.commit.to_le_bytes());
    Bytes::from(b)
}

fn u64s<const N: usize>(b: &[u8]) -> Option<[u64; N]> {
    if b.len() != N * 8 {
        return None;
    }
    let mut out = [0u64; N];
    for (i, v) in out.iter_mut().enumerate() {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i * 8..i * 8 + 8]);
        *v = u64::from_le_bytes(a);
    }
    Some(out)
}

pub(crate) fn decode_hard_state(b: &[u8]) -> Option<HardState> {
    let [term, vote, commit] = u64s::<3>(b)?;
    Some(HardState {
        term,
        vote,
        commit,
        ..Default::default()
    })
}

pub(crate) fn encode_applied(index: u64, term: u64) -> Bytes {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&term.to_le_bytes());
    Bytes::from(b)
}

pub(crate) fn decode_applied(b: &[u8]) -> Option<(u64, u64)> {
    let [index, term] = u64s::<2>(b)?;
    Some((index, term))
}

pub(crate) fn to_log_entry(e: &Entry) -> LogEntry {
    LogEntry {
        term: e.term,
        index: e.index,
        kind: match e.get_entry_type() {
            EntryType::EntryNormal => EntryKind::Normal,
            EntryType::EntryConfChange => EntryKind::ConfChange,
            EntryType::EntryConfChangeV2 => EntryKind::ConfChangeV2,
        },
        data: e.data.clone(),
    }
}

pub(crate) fn from_log_entry(e: &LogEntry) -> Entry {
    let mut out = Entry {
        term: e.term,
        index: e.index,
        data: e.data.clone(),
        ..Default::default()
    };
    out.set_entry_type(match e.kind {
        EntryKind::Normal => EntryType::EntryNormal,
        EntryKind::ConfChange => EntryType::EntryConfChange,
        EntryKind::ConfChangeV2 => EntryType::EntryConfChangeV2,
    });
    out
}

/// What a group starts from: a new group (nothing applied) or what the log recovered.
pub(crate) struct GroupInit {
    pub(crate) spec: GroupSpec,
    /// The configuration last applied, if any conf change or snapshot was (otherwise the
    /// spec's peers are the voters, or nobody for a joining replica).
    pub(crate) conf: Option<(u64, ConfState)>,
    pub(crate) chunks: Arc<ChunkStore>,
    pub(crate) hard_state: HardState,
    pub(crate) applied: (u64, u64),
    pub(crate) entries: Vec<Entry>,
    pub(crate) fences: Fences,
}

impl Group {
    /// `lease`: how long a peer's answer keeps a leader's reads valid; it must stay well
    /// below the election timeout, after which followers may elect someone else.
    pub(crate) fn new(
        node_id: u64,
        election_tick: usize,
        lease: Duration,
        init: GroupInit,
    ) -> raft::Result<Group> {
        let (applied, applied_term) = init.applied;
        let mut mem = MemLog {
            compacted_index: applied,
            compacted_term: applied_term,
            ..Default::default()
        };
        let conf_index = init.conf.as_ref().map_or(0, |(i, _)| *i);
        mem.conf_state = match init.conf {
            Some((_, cs)) => cs,
            None if init.spec.joining => ConfState::default(),
            None => ConfState {
                voters: init.spec.peers.iter().map(|p| p.node_id).collect(),
                ..Default::default()
            },
        };
        mem.applied = (applied, applied_term);
        let mut fences = init.fences;
        let ents = init.entries;
        match ents.first() {
            // The log kept a tail below the applied index (for lagging peers: see
            // `compactable`): keep it, its first entry standing in for the compaction point.
            // Only if the entry at the applied index is the real one (its term, and not the
            // empty marker a snapshot install leaves there): then, by log matching, so is
            // every entry before it. Dropping the tail is always safe.
            Some(first)
                if first.index <= applied
                    && ents.iter().any(|e| {
                        e.index == applied && e.term == applied_term && !e.data.is_empty()
                    }) =>
            {
                mem.compacted_index = first.index;
                mem.compacted_term = first.term;
                mem.append(&ents[1..]);
            }
            _ => {
                let newer: Vec<Entry> = ents.into_iter().filter(|e| e.index > applied).collect();
                mem.append(&newer);
            }
        }
        let mut dedup = Dedup::default();
        for e in &mem.entries {
            dedup.logged(Command::peek_id(&e.data), e.index);
            fences.logged(&e.data);
        }
        fences.take_changed();
        mem.snapshot_data = SnapshotData::encode(&init.spec, &fences);
        let mut hs = init.hard_state;
        // A joining replica starts at the term its creator knew the group had reached (see
        // `GroupSpec::min_term`), derived again from the durable spec at every start.
        if hs.term < init.spec.min_term && !cfg!(tessera_unfixed = "joining_term") {
            hs.term = init.spec.min_term;
            hs.vote = 0;
        }
        // The commit index is persisted lazily; never let it fall behind what was applied
        // or run past the log we actually have.
        hs.commit = hs.commit.max(applied).min(mem.last_index());
        mem.hard_state = hs.clone();
        let replay_upto = mem.last_index();
        let replay_term = mem.term_of(replay_upto).unwrap_or(0);
        let store = GroupStorage::new(mem);
        let cfg = raft_config(node_id, applied, election_tick);
        let raw = RawNode::new(
            &cfg,
            store.clone(),
            &crate::logger::logger(init.spec.group_id),
        )?;
        Ok(Group {
            id: init.spec.group_id,
            raw,
            store,
            spec: init.spec,
            chunks: init.chunks,
            conf_index,
            slot_writes: Vec::new(),
            peers_changed: false,
            removed: false,
            fetching: false,
            installed: None,
            snap_activity: None,
            snap_waiting: std::collections::HashMap::new(),
            proposals: VecDeque::new(),
            reads: VecDeque::new(),
            to_apply: VecDeque::new(),
            applied,
            applied_term,
            flushed: applied,
            persisting: 0,
            persisted_hs: hs,
            replay_upto,
            replay_term,
            contact: std::collections::HashMap::new(),
            lease,
            lease_void_term: 0,
            ping_due: false,
            dedup,
            fences,
            stalled: None,
            stall_transfer: None,
            held_votes: Default::default(),
        })
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// This replica is a voter in its own configuration and takes part in a live group:
    /// it leads, or follows a leader it hears from. A removed replica that missed its
    /// removal hears from no leader (a leader sends only to its configuration's members).
    pub(crate) fn live_voter(&self) -> bool {
        let r = &self.raw.raft;
        let voter = r.prs().conf().voters().contains(r.id);
        voter
            && (r.state == StateRole::Leader
                || (r.state == StateRole::Follower && r.leader_id != raft::INVALID_ID))
    }

    /// Leader: follower `peer` rejected an append anchored at `anchor` (at or past what it
    /// acknowledged before) saying its log ends at `last`, below that. It lost its log (its
    /// replica was destroyed and hosted anew, or its disk replaced). raft-rs would take the
    /// rejection for a stale one forever and never send it a snapshot; start over from what
    /// it has.
    pub(crate) fn note_rejection(&mut self, peer: u64, anchor: u64, last: u64) {
        let group = self.id;
        if let Some(pr) = self.raw.raft.mut_prs().get_mut(peer)
            && last < pr.matched
            && anchor >= pr.matched
        {
            tracing::warn!(
                group,
                peer,
                acknowledged = pr.matched,
                last,
                "a follower lost entries it acknowledged; replicating to it from scratch"
            );
            pr.matched = last;
            pr.become_probe();
        }
    }

    /// A peer answered a heartbeat this node sent at `sent`.
    pub(crate) fn note_contact(&mut self, peer: u64, sent: Instant) {
        let t = self.contact.entry(peer).or_insert(sent);
        *t = (*t).max(sent);
    }

    /// Whether a quorum (counting this node) answered heartbeats sent within the lease: only
    /// then may a leader serve reads from its own state. A follower that answered a heartbeat
    /// sent at `t` votes for no one else before `t` + an election timeout, so a lease of half
    /// that, counted from the send time, holds even if the answers sat in a queue. Raft's
    /// `check_quorum` alone steps a cut-off leader down only after one to two election
    /// timeouts, and not at all while its poller is stalled.
    ///
    /// Void while a leadership transfer is pending and for the rest of a term in which one
    /// was started (see `lease_void_term`).
    pub(crate) fn lease_valid(&self, now: Instant) -> bool {
        let r = &self.raw.raft;
        if !cfg!(tessera_unfixed = "lease_transfer")
            && (r.lead_transferee.is_some() || self.lease_void_term == r.term)
        {
            return false;
        }
        self.in_contact(now)
    }

    /// Whether a quorum of the configuration in force answered this term's heartbeats within
    /// the last lease period: this node still leads a configuration the group has not left
    /// (a leader cut off from the group hears nobody of its term). Unlike a lease, it holds
    /// during a leadership transfer: the transferee takes over the same configuration.
    pub(crate) fn in_contact(&self, now: Instant) -> bool {
        match now.checked_sub(self.lease) {
            Some(oldest) => self.quorum_heard_since(oldest, false),
            None => false,
        }
    }

    /// Whether a quorum of every configuration in force (both halves of a joint one)
    /// answered heartbeats sent at or after `since` (strictly after if `!inclusive`). This
    /// node counts as having answered.
    pub(crate) fn quorum_heard_since(&self, since: Instant, inclusive: bool) -> bool {
        let me = self.raw.raft.id;
        let heard = |id: u64| {
            id == me
                || self
                    .contact
                    .get(&id)
                    .is_some_and(|t| if inclusive { *t >= since } else { *t > since })
        };
        if cfg!(tessera_unfixed = "joint_lease") {
            let all: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
            return all.iter().filter(|id| heard(**id)).count() > all.len() / 2;
        }
        let majority = |ids: &[u64]| {
            ids.is_empty() || ids.iter().filter(|id| heard(**id)).count() > ids.len() / 2
        };
        // The configuration raft-rs runs with, as last applied (kept beside the log, so no
        // copy is made on every read).
        let mem = self.store.lock();
        let cs = &mem.conf_state;
        !cs.voters.is_empty() && majority(&cs.voters) && majority(&cs.voters_outgoing)
    }

    /// Asks raft-rs to hand leadership to `to`; if it started a transfer (it ignores one to
    /// a learner or a stranger), the lease is void for the rest of this term.
    pub(crate) fn start_transfer(&mut self, to: u64) {
        // Not while the membership changes, nor to a replica the change removes: raft-rs
        // counts votes by the configuration a replica has *applied*, and a transferee that
        // has not applied the change yet would campaign in the old one, whose majority may
        // no longer overlap the new one's (the simulation found two leaders committing at
        // one index that way, seed 0x73dea6c039f6).
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let settled = cs.voters_outgoing.is_empty()
            && self.raw.raft.pending_conf_index <= self.applied
            && !self.unapplied_conf_change();
        if (!settled || !cs.voters.contains(&to)) && !cfg!(tessera_unfixed = "stale_config") {
            tracing::info!(
                group = self.id,
                to,
                "leadership transfer refused: the membership is changing, or {to} is not a voter"
            );
            return;
        }
        self.raw.transfer_leader(to);
        if self.raw.raft.lead_transferee == Some(to) {
            self.lease_void_term = self.raw.raft.term;
        }
    }

    /// Whether this replica's log holds a membership change it has not applied yet.
    pub(crate) fn unapplied_conf_change(&self) -> bool {
        let applied = self.applied;
        self.store
            .lock()
            .entries
            .iter()
            .any(|e| e.index > applied && e.get_entry_type() != EntryType::EntryNormal)
    }

    /// What the membership changes in this replica's log, beyond what it applied, do to
    /// this replica (in log order): each change naming it, by type.
    fn unapplied_changes_of_me(&self) -> Vec<ConfChangeType> {
        let (me, applied) = (self.raw.raft.id, self.applied);
        let mut out = Vec::new();
        for e in self
            .store
            .lock()
            .entries
            .iter()
            .filter(|e| e.index > applied)
        {
            match e.get_entry_type() {
                EntryType::EntryConfChangeV2 => {
                    if let Ok(cc) = ConfChangeV2::parse_from_bytes(&e.data) {
                        out.extend(
                            cc.changes
                                .iter()
                                .filter(|c| c.node_id == me)
                                .map(|c| c.get_change_type()),
                        );
                    }
                }
                EntryType::EntryConfChange => {
                    if let Ok(cc) = ConfChange::parse_from_bytes(&e.data)
                        && cc.node_id == me
                    {
                        out.push(cc.get_change_type());
                    }
                }
                EntryType::EntryNormal => {}
            }
        }
        out
    }

    /// Whether this replica is a learner in the configuration it applied, and no change in
    /// its log (not applied yet) makes it a voter: a replica being added, perhaps a new
    /// incarnation on a node that was a member before. (A replica that applied its own
    /// removal is neither: it is the old incarnation, and members still in a joint
    /// configuration may need its vote.)
    pub(crate) fn learner_only(&self) -> bool {
        let me = self.raw.raft.id;
        let conf = self.raw.raft.prs().conf();
        (conf.learners().contains(&me) || conf.learners_next().contains(&me))
            && !self
                .unapplied_changes_of_me()
                .contains(&ConfChangeType::AddNode)
    }

    /// Whether this replica's log holds, beyond what it applied, a membership change that
    /// removes it (or makes it a learner). Such a replica must not campaign: the
    /// configuration it applied still counts it, but the group is leaving it, and a majority
    /// of the old configuration need not meet one of the new (see `Poller::tick`).
    pub(crate) fn leaving(&self) -> bool {
        !cfg!(tessera_unfixed = "stale_config")
            && self
                .unapplied_changes_of_me()
                .iter()
                .any(|t| *t != ConfChangeType::AddNode)
    }

    /// Whether re-applying the log tail found at start is over (or that tail was replaced).
    pub(crate) fn replay_done(&self) -> bool {
        self.applied >= self.replay_upto
            || self.store.lock().term_of(self.replay_upto).ok() != Some(self.replay_term)
    }

    pub(crate) fn state(&self) -> GroupState {
        let r = &self.raw.raft;
        GroupState {
            group_id: self.id,
            role: match r.state {
                StateRole::Leader => Role::Leader,
                StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
                StateRole::Follower => Role::Follower,
            },
            term: r.term,
            leader: r.leader_id,
            commit: r.raft_log.committed,
            applied: self.applied,
            voters: r.prs().conf().voters().ids().iter().collect(),
            learners: r.prs().conf().learners().iter().copied().collect(),
            stuck: None,
        }
    }

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

    /// What a snapshot of this replica carries besides its chunk files, refreshed when the
    /// membership or a floor changes.
    pub(crate) fn refresh_snapshot_data(&self) {
        self.store.lock().snapshot_data = SnapshotData::encode(&self.spec, &self.fences);
    }

    pub(crate) fn mem(&self) -> std::sync::MutexGuard<'_, MemLog> {
        self.store.lock()
    }

    /// How far the in-memory log may be compacted. Never past what is flushed to the chunk
    /// files. Until replicas can be rebuilt from chunk snapshots, the log is all a lagging
    /// peer can catch up from, so some of it is kept in memory: every replica keeps a recent
    /// tail (it may lead tomorrow), and a leader keeps what its slowest peer still lacks, up
    /// to a cap so a dead peer cannot grow memory without bound.
    pub(crate) fn compactable(&self) -> u64 {
        const SNAPSHOT_PEER_BYTES: u64 = 256 << 20;
        let (tail_bytes, lagging_peer_bytes): (u64, u64) = (1 << 20, 16 << 20);
        // The simulation keeps tiny tails, so that lagging peers need snapshots.
        #[cfg(test)]
        let (tail_bytes, lagging_peer_bytes) = if crate::clock::virtual_clock::simulated() {
            (8 << 10, 16 << 10)
        } else {
            (tail_bytes, lagging_peer_bytes)
        };
        let mem = self.store.lock();
        let mut to = mem.index_keeping(self.flushed, tail_bytes);
        if self.is_leader() {
            let slowest = self
                .raw
                .raft
                .prs()
                .iter()
                .map(|(_, pr)| pr.matched)
                .min()
                .unwrap_or(0);
            let cap = mem.index_keeping(self.flushed, lagging_peer_bytes);
            to = to.min(slowest.max(cap));
            // A peer copying a snapshot continues from the entry after it: keep that
            // (up to a bigger cap: past it the copy starts over from a newer snapshot).
            let pending = self
                .raw
                .raft
                .prs()
                .iter()
                .filter(|(_, pr)| pr.state == raft::ProgressState::Snapshot)
                .map(|(_, pr)| pr.pending_snapshot)
                .min();
            if let Some(p) = pending {
                to = to.min(p.max(mem.index_keeping(self.flushed, SNAPSHOT_PEER_BYTES)));
            }
        }
        to
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

fn serve_read(chunks: &ChunkStore, req: &Request) -> Reply {
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

pub(crate) fn engine_reply(e: &tessera_engine::Error) -> Reply {
    use tessera_engine::Error as E;
    match e {
        E::DiskFull(m) => Reply::DiskFull(m.clone()),
        E::Corrupt(m) => Reply::Corrupt(m.clone()),
        E::OutOfRange(m) => Reply::OutOfRange(m.clone()),
        E::Exhausted(m) => Reply::Unavailable(m.clone()),
        other => Reply::Io(other.to_string()),
    }
}
