//! One replica group hosted on this node: its RawNode, the proposals waiting for their
//! entries to apply, the reads waiting for the applied index, and applying committed
//! entries to the chunk store.
//!
//! Everything here runs in the poller task that owns the group; nothing here blocks on
//! the network or waits for an fsync.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState,
};
use raft::{Config, RawNode, ReadOnlyOption, StateRole};
use tessera_engine::ChunkStore;
use tessera_proto::command::Command;
use tessera_proto::control::{GroupSpec, GroupState, Role};
use tessera_proto::data::Request;

use crate::Respond;
use crate::dedup::Dedup;
use crate::fence::{Fences, SnapshotData};
use crate::log_tail::{GroupStorage, MemLog};

mod apply;
mod election;
mod lease;
mod request;
mod scrub;

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
    /// The node's scrub watches (see `crate::scrub`), marked by apply.
    pub(crate) watches: Arc<crate::scrub::Watches>,
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
    /// The stall is at restored blocks not filled yet: `(volume, chunk, blocks)` for the
    /// storage node's hook, and when the poller last called it (see `poller::ready`).
    pub(crate) unfilled: Option<(u64, u64, Vec<u32>)>,
    pub(crate) unfilled_told: Option<Instant>,
    /// Vote grants not yet handed to raft-rs (see `election.rs`).
    pub(crate) held_votes: HeldVotes,
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

/// What a group starts from: a new group (nothing applied) or what the log recovered.
pub(crate) struct GroupInit {
    pub(crate) spec: GroupSpec,
    /// The configuration last applied, if any conf change or snapshot was (otherwise the
    /// spec's peers are the voters, or nobody for a joining replica).
    pub(crate) conf: Option<(u64, ConfState)>,
    pub(crate) chunks: Arc<ChunkStore>,
    pub(crate) watches: Arc<crate::scrub::Watches>,
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
            watches: init.watches,
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
            unfilled: None,
            unfilled_told: None,
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
            joint: !r.prs().conf().to_conf_state().voters_outgoing.is_empty(),
            stuck: None,
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

/// The grants of one (pre-)election (the response type and term they answer): who granted,
/// and the grants not yet handed to raft-rs.
#[derive(Default)]
pub(crate) struct HeldVotes {
    kind: Option<(raft::eraftpb::MessageType, u64)>,
    granted: BTreeSet<u64>,
    held: Vec<raft::eraftpb::Message>,
    /// The grants made a majority of the newest configuration: later ones go through.
    released: bool,
}
