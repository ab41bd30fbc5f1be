//! Membership of one group: conf changes (proposed on the leader's side at the manager's
//! request, applied on every replica), snapshots installed on a new or far-behind replica,
//! and leadership transfer.
//!
//! A membership change replaces replicas without ever lowering redundancy: new nodes join
//! as learners, copy a snapshot (the chunk files, only the blocks that differ) and the log
//! after it, and only once every one of them has caught up does one joint-consensus change
//! make the requested peers the voters and drop the others. A leader asked to remove itself
//! first hands leadership to a peer that stays.
//!
//! Must never: apply a conf change twice (the configuration persisted with the last one
//! already includes it), drop a voter before its replacement is caught up, or install a
//! snapshot whose chunk data is not durable yet.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    Entry, EntryType, Snapshot,
};
use raft::{ProgressState, SnapshotStatus, StateRole};
use tessera_engine::{EntryKind, GroupWrite, LogEntry};
use tessera_proto::control::{self, GroupSpec, MembershipState, PeerInfo, PeerProgress};

use crate::fence::SnapshotData;
use crate::group::Group;
use crate::slots::{
    SLOT_APPLIED, SLOT_CONF, SLOT_FENCES, SLOT_HARD_STATE, SLOT_MEMBERSHIP, encode_applied,
    encode_conf, encode_hard_state, encode_membership,
};

/// A peer waiting for a snapshot while nobody fetched anything of the group for this long
/// has given up (crashed, restarted): the leader offers it a new one.
const SNAPSHOT_STALL: Duration = Duration::from_secs(30);
/// A learner within this many entries of the leader's commit index counts as caught up.
const CAUGHT_UP_SLACK: u64 = 64;

fn members_of(cs: &ConfState) -> BTreeSet<u64> {
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners_next)
        .copied()
        .collect()
}

impl Group {
    fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// Applies a committed conf change entry: the new configuration goes to Raft, to the
    /// persisted slots, and the peers' addresses it carries to the group's spec.
    pub(crate) fn apply_conf_change(&mut self, e: &Entry) {
        if e.index <= self.conf_index {
            return;
        }
        let cc: ConfChangeV2 = match e.get_entry_type() {
            EntryType::EntryConfChangeV2 => match ConfChangeV2::parse_from_bytes(&e.data) {
                Ok(cc) => cc,
                Err(err) => {
                    tracing::error!(group = self.id, index = e.index, "bad conf change: {err}");
                    return;
                }
            },
            EntryType::EntryConfChange => match ConfChange::parse_from_bytes(&e.data) {
                Ok(mut v1) => {
                    let mut cc = ConfChangeV2::default();
                    let mut c = ConfChangeSingle::default();
                    c.set_change_type(v1.get_change_type());
                    c.node_id = v1.node_id;
                    cc.mut_changes().push(c);
                    cc.set_context(v1.take_context());
                    cc
                }
                Err(err) => {
                    tracing::error!(group = self.id, index = e.index, "bad conf change: {err}");
                    return;
                }
            },
            EntryType::EntryNormal => return,
        };
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => {
                // Every replica meets the same error at the same entry: skipping it keeps
                // them identical.
                tracing::error!(
                    group = self.id,
                    index = e.index,
                    "conf change refused: {err}"
                );
                return;
            }
        };
        let mut peers = self.spec.peers.clone();
        if let Ok(more) = control::decode::<Vec<PeerInfo>>(&cc.context) {
            for p in more {
                match peers.iter_mut().find(|q| q.node_id == p.node_id) {
                    Some(q) => q.addr = p.addr,
                    None => peers.push(p),
                }
            }
        }
        let members = members_of(&cs);
        peers.retain(|p| members.contains(&p.node_id));
        peers.sort_by_key(|p| p.node_id);
        self.spec = GroupSpec {
            group_id: self.id,
            peers,
            joining: false,
            min_term: 0,
        };
        tracing::info!(
            group = self.id,
            index = e.index,
            voters = ?cs.voters,
            learners = ?cs.learners,
            outgoing = ?cs.voters_outgoing,
            "membership changed"
        );
        self.conf_index = e.index;
        self.store.lock().conf_state = cs.clone();
        self.refresh_snapshot_data();
        self.slot_writes
            .push((SLOT_MEMBERSHIP, encode_membership(&self.spec)));
        self.slot_writes
            .push((SLOT_CONF, encode_conf(e.index, &cs)));
        self.peers_changed = true;
        if !members.contains(&self.raw.raft.id) {
            self.removed = true;
            // raft-rs cannot lead a configuration it is not in (an answer from a follower
            // would reach an assertion): a leader that applied its own removal steps down,
            // and the remaining members elect one of themselves (with its vote, if they
            // still count it: see `apply_committed`).
            if self.raw.raft.state == StateRole::Leader {
                let term = self.raw.raft.term;
                self.raw.raft.become_follower(term, raft::INVALID_ID);
            }
        }
    }

    /// The membership as it stands (measured against the current voters).
    pub(crate) fn membership(&self) -> MembershipState {
        let voters = self.conf_state().voters.iter().copied().collect();
        self.membership_state(&voters)
    }

    /// What the leader sees of the membership, measured against `target`.
    fn membership_state(&self, target: &BTreeSet<u64>) -> MembershipState {
        let cs = self.conf_state();
        let voters: BTreeSet<u64> = cs.voters.iter().copied().collect();
        let joint = !cs.voters_outgoing.is_empty();
        let mut progress: Vec<PeerProgress> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, pr)| PeerProgress {
                node_id: *id,
                matched: pr.matched,
                state: match pr.state {
                    ProgressState::Probe => "probe",
                    ProgressState::Replicate => "replicate",
                    ProgressState::Snapshot => "snapshot",
                }
                .to_string(),
            })
            .collect();
        progress.sort_by_key(|p| p.node_id);
        MembershipState {
            group_id: self.id,
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            joint,
            done: !joint && cs.learners.is_empty() && &voters == target,
            last_index: self.raw.raft.raft_log.last_index(),
            term: self.raw.raft.term,
            progress,
        }
    }

    /// Leader only (`Err(hint)` otherwise): one step towards voters == `target`. Called
    /// again and again by the manager; each call proposes at most one conf change.
    pub(crate) fn change_members(&mut self, target: &[PeerInfo]) -> Result<MembershipState, u64> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(self.raw.raft.leader_id);
        }
        let want: BTreeSet<u64> = target.iter().map(|p| p.node_id).collect();
        let mut state = self.membership_state(&want);
        // "Done" is a promise the manager acts on (it destroys the replicas left out). A
        // leader cut off from its quorum may hold a configuration the group has left: it
        // says done only while a quorum of its configuration answers it (not its lease,
        // which a leadership transfer voids for the rest of the term).
        if state.done
            && !self.in_contact(crate::clock::now())
            && !cfg!(tessera_unfixed = "stale_done")
        {
            state.done = false;
            return Ok(state);
        }
        if state.done || want.is_empty() {
            return Ok(state);
        }
        let raft = &self.raw.raft;
        // One change at a time: raft-rs would turn a second one into an empty entry.
        if raft.pending_conf_index > raft.raft_log.applied {
            return Ok(state);
        }
        let cs = self.conf_state();
        let me = raft.id;
        let context = control::encode(&target.to_vec());
        let single = |id: u64, t: ConfChangeType| {
            let mut c = ConfChangeSingle::default();
            c.set_change_type(t);
            c.node_id = id;
            c
        };
        let mut cc = ConfChangeV2::default();
        cc.set_context(context);
        if !cs.voters_outgoing.is_empty() {
            // Stuck in a joint configuration (a leader change lost the automatic leave):
            // an empty change leaves it.
            self.propose_conf(cc);
            return Ok(state);
        }
        let voters: BTreeSet<u64> = cs.voters.iter().copied().collect();
        let learners: BTreeSet<u64> = cs.learners.iter().copied().collect();
        let missing: Vec<u64> = want
            .iter()
            .filter(|id| !voters.contains(id) && !learners.contains(id))
            .copied()
            .collect();
        let stray: Vec<u64> = learners.difference(&want).copied().collect();
        if !missing.is_empty() || !stray.is_empty() {
            for id in missing {
                cc.mut_changes()
                    .push(single(id, ConfChangeType::AddLearnerNode));
            }
            for id in stray {
                cc.mut_changes()
                    .push(single(id, ConfChangeType::RemoveNode));
            }
            self.propose_conf(cc);
            return Ok(state);
        }
        let committed = raft.raft_log.committed;
        let caught_up = learners.iter().all(|id| {
            raft.prs().get(*id).is_some_and(|pr| {
                // A learner that has everything committed stays in Probe until the next
                // entry; one that is replicating may trail by a little.
                pr.matched >= committed
                    || (pr.state == ProgressState::Replicate
                        && pr.matched + CAUGHT_UP_SLACK >= committed)
            })
        });
        if !caught_up {
            return Ok(state);
        }
        if !want.contains(&me) {
            // Hand over to the most up-to-date peer that stays, then let it finish.
            let to = want
                .iter()
                .filter(|id| voters.contains(id))
                .max_by_key(|id| raft.prs().get(**id).map_or(0, |pr| pr.matched))
                .copied();
            if let Some(to) = to {
                tracing::info!(
                    group = self.id,
                    to,
                    "leaving the group: transferring leadership"
                );
                self.start_transfer(to);
                return Err(to);
            }
            return Ok(state);
        }
        for id in want.difference(&voters) {
            cc.mut_changes().push(single(*id, ConfChangeType::AddNode));
        }
        for id in voters.difference(&want) {
            cc.mut_changes()
                .push(single(*id, ConfChangeType::RemoveNode));
        }
        cc.set_transition(ConfChangeTransition::Auto);
        self.propose_conf(cc);
        Ok(state)
    }

    fn propose_conf(&mut self, cc: ConfChangeV2) {
        tracing::info!(group = self.id, change = ?cc.changes, "proposing membership change");
        if let Err(e) = self.raw.propose_conf_change(Vec::new(), cc) {
            tracing::warn!(group = self.id, "membership change not proposed: {e}");
        }
    }

    /// Leader only: hand leadership to `to`.
    pub(crate) fn transfer_leader(&mut self, to: u64) -> Result<(), u64> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(self.raw.raft.leader_id);
        }
        if to != self.raw.raft.id {
            self.start_transfer(to);
        }
        Ok(())
    }

    /// Someone is copying this group's chunk data from this node.
    pub(crate) fn note_snapshot_activity(&mut self, now: Instant) {
        self.snap_activity = Some(now);
    }

    /// Leader: a peer waiting for a snapshot that nobody has been copying for a while has
    /// given up (it crashed or restarted): mark the snapshot failed so it is offered a new
    /// one rather than waiting forever.
    pub(crate) fn check_snapshots(&mut self, now: Instant) {
        if self.raw.raft.state != StateRole::Leader {
            self.snap_waiting.clear();
            return;
        }
        let waiting: Vec<(u64, u64)> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.state == ProgressState::Snapshot)
            .map(|(id, pr)| (*id, pr.pending_snapshot))
            .collect();
        self.snap_waiting
            .retain(|id, (idx, _)| waiting.contains(&(*id, *idx)));
        for (id, idx) in waiting {
            let since = self.snap_waiting.entry(id).or_insert((idx, now)).1;
            let last = self.snap_activity.map_or(since, |a| a.max(since));
            // The simulation's runs are seconds long: it gives up on a copy sooner.
            #[cfg(test)]
            let stall = if crate::clock::virtual_clock::simulated() {
                Duration::from_secs(2)
            } else {
                SNAPSHOT_STALL
            };
            #[cfg(not(test))]
            let stall = SNAPSHOT_STALL;
            if now.saturating_duration_since(last) > stall {
                tracing::warn!(
                    group = self.id,
                    peer = id,
                    "snapshot transfer stalled; retrying"
                );
                self.raw.report_snapshot(id, SnapshotStatus::Failure);
                self.snap_waiting.remove(&id);
            }
        }
    }

    /// Takes a snapshot raft-rs handed over in a Ready (its chunk data already copied and
    /// synced): the log restarts after it. Returns what must be made durable with the
    /// Ready: the membership, the configuration, the hard state and the applied point, then a
    /// marker entry at the snapshot's index (superseding any older tail in the shared log).
    /// In that order: a batch torn part way leaves the old state or the new one, never an
    /// applied point with a gap before the log (a quarantined replica) nor a log restarted
    /// past an applied point that does not cover it. The caller compacts the shared log at
    /// the snapshot's index only once all of it is durable.
    pub(crate) fn install_snapshot(&mut self, snap: &Snapshot) -> (GroupWrite, LogEntry) {
        let md = snap.get_metadata();
        let (index, term) = (md.index, md.term);
        let cs = md.get_conf_state().clone();
        let (mut spec, fences) = SnapshotData::decode(&snap.data)
            .unwrap_or_else(|| (self.spec.clone(), Default::default()));
        self.fences.merge(&fences);
        self.fences.take_changed();
        spec.group_id = self.id;
        spec.joining = false;
        spec.min_term = 0;
        let members = members_of(&cs);
        spec.peers.retain(|p| members.contains(&p.node_id));
        self.fail_pending();
        self.drop_unapplied();
        self.dedup.forget_log_upto(index);
        {
            let mut mem = self.store.lock();
            mem.entries.clear();
            mem.bytes = 0;
            mem.compacted_index = index;
            mem.compacted_term = term;
            mem.conf_state = cs.clone();
            mem.applied = (index, term);
            mem.hard_state.commit = mem.hard_state.commit.max(index);
        }
        self.applied = index;
        self.applied_term = term;
        self.flushed = index;
        self.conf_index = index;
        self.replay_upto = index;
        self.spec = spec;
        self.refresh_snapshot_data();
        self.peers_changed = true;
        tracing::info!(group = self.id, index, term, voters = ?cs.voters, learners = ?cs.learners, "snapshot installed");
        let hs = self.store.lock().hard_state.clone();
        self.persisted_hs = hs.clone();
        let slots = GroupWrite {
            group: self.id,
            entries: Vec::new(),
            // A torn write keeps a prefix. The membership last: a replica restored with the
            // leader's (non-joining) membership but without the configuration would take
            // every listed peer for a voter, itself included, and vote (the simulation found
            // a removed replica elected with such a vote). The applied point before the hard
            // state: the hard state's commit index is the snapshot's, and without the applied
            // point moving with it, the replica's old tail past its applied index (entries of
            // a deposed leader, never committed) would count as committed and be applied
            // (the simulation found two entries committed at one index that way).
            slots: if cfg!(tessera_unfixed = "install_slot_order") {
                vec![
                    (SLOT_MEMBERSHIP, encode_membership(&self.spec)),
                    (SLOT_CONF, encode_conf(index, &cs)),
                    (SLOT_HARD_STATE, encode_hard_state(&hs)),
                    (SLOT_APPLIED, encode_applied(index, term)),
                ]
            } else if cfg!(tessera_unfixed = "install_applied_order") {
                vec![
                    (SLOT_FENCES, self.fences.encode()),
                    (SLOT_CONF, encode_conf(index, &cs)),
                    (SLOT_HARD_STATE, encode_hard_state(&hs)),
                    (SLOT_APPLIED, encode_applied(index, term)),
                    (SLOT_MEMBERSHIP, encode_membership(&self.spec)),
                ]
            } else {
                vec![
                    (SLOT_FENCES, self.fences.encode()),
                    (SLOT_CONF, encode_conf(index, &cs)),
                    (SLOT_APPLIED, encode_applied(index, term)),
                    (SLOT_HARD_STATE, encode_hard_state(&hs)),
                    (SLOT_MEMBERSHIP, encode_membership(&self.spec)),
                ]
            },
        };
        let marker = LogEntry {
            term,
            index,
            kind: EntryKind::Normal,
            data: Bytes::new(),
        };
        (slots, marker)
    }
}
