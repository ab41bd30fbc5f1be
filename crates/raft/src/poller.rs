//! The poller: one tokio task that owns a set of groups and drives them in rounds.
//!
//! A round: take every queued event (messages from peers, client requests, log
//! completions), tick every group if a tick is due, then handle the Ready of every group
//! that changed. All the log writes of a round go to the shared log as one batch (one
//! fdatasync for all groups); all messages for one peer node go out as one frame. Messages
//! raft-rs may only send after persistence (votes, append responses) are sent by the log
//! writer thread the moment the batch is durable, without a trip back through this loop.
//!
//! This file holds the loop and the events it takes (`run`, `handle`); one file an
//! operation beside it: `ready.rs` (Readies to the log and the wire, applying committed
//! entries), `catchup.rs` (a snapshot's chunk data copied before it is stepped), `lifecycle.rs` (replicas recovered, created, destroyed), `tick.rs` (ticks,
//! replay end, chunk flushes), `stuck.rs` (replicas that cannot apply), `outbox.rs`
//! (messages batched per peer). Message admission
//! is `crate::admit`; `tests.rs` and `sim.rs` drive pollers round by round.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use bytes::Bytes;
use protobuf::Message as _;
use raft::StateRole;
use raft::eraftpb::{HardState, Message, MessageType};
use tessera_engine::{ChunkStores, GroupWrite, Log, Recovered};
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::control::{self, GroupSpec};
use tessera_proto::data::{RaftBatch, Reply};

use crate::admit::admit;
use crate::fence::Fences;
use crate::group::{Group, GroupInit, INIT_INDEX};
use crate::slots::{
    SLOT_APPLIED, SLOT_CONF, SLOT_FENCES, SLOT_HARD_STATE, SLOT_MEMBERSHIP, decode_applied,
    decode_conf, decode_hard_state, decode_membership, encode_applied, encode_hard_state,
    encode_membership, from_log_entry, to_log_entry,
};
use crate::{
    Event, Fatal, FetchError, FetchJob, MembershipError, NodeConfig, OnFatal, SnapshotFetcher,
    Transport,
};

mod catchup;
mod lifecycle;
mod outbox;
mod ready;
#[cfg(test)]
mod sim;
mod stuck;
#[cfg(test)]
mod stuck_tests;
#[cfg(test)]
mod tests;
mod tick;

use outbox::{Outbox, push_msgs, send_all};
use tick::spawn_flusher;

/// How many events one round takes before it handles Readies (bounds a round's latency).
const MAX_EVENTS_PER_ROUND: usize = 4096;
/// Flush early when the in-memory log tails hold this much.
const FLUSH_AT_BYTES: u64 = 256 << 20;

pub(crate) struct Poller {
    cfg: NodeConfig,
    log: Log,
    chunks: Arc<ChunkStores>,
    /// The node's scrub watches (see `crate::scrub`), handed to every group.
    watches: Arc<crate::scrub::Watches>,
    transport: Arc<dyn Transport>,
    fetcher: Arc<dyn SnapshotFetcher>,
    tx: mpsc::UnboundedSender<Event>,
    on_fatal: OnFatal,
    groups: HashMap<u64, Group>,
    /// Groups the log knows but could not restore, and why. Never re-created empty here: a
    /// replica that forgot its vote or its log could elect a second leader in a term.
    /// Reported stuck; destroyed on the manager's word once the group replaced it.
    quarantined: HashMap<u64, String>,
    /// Replicas counted in the stuck-replicas gauge (see `stuck.rs`).
    counted_stuck: HashSet<u64>,
    /// Replicas being destroyed (log tombstone, then files): not re-created meanwhile.
    destroying: HashSet<u64>,
    /// Groups with a snapshot copy in flight: it writes into the replica's files until it
    /// answers, so a destroyed replica's files go (and the group may be hosted anew) only
    /// after that.
    copying: HashSet<u64>,
    /// Destroyed replicas whose files wait for their copy to answer.
    remove_after_copy: HashSet<u64>,
    dirty: HashSet<u64>,
    /// Groups with committed entries to apply: applied at the start of the next round,
    /// once the network tasks have sent this round's answers and messages.
    to_apply: Vec<u64>,
    /// Log writes not tied to a Ready (membership of new groups, apply progress), sent with
    /// the next round's batch, and what to compact once they are durable.
    pending_writes: Vec<GroupWrite>,
    pending_compacts: Vec<(u64, u64)>,
    flusher: std::sync::mpsc::Sender<Vec<(u64, u64, u64)>>,
    flushing: bool,
    next_tick: Instant,
    next_flush: Instant,
    next_space_check: Instant,
    disk_full: bool,
    /// Groups whose log replay into chunk files has not caught up yet: each one's chunk
    /// store tolerates torn blocks until it has (see `ChunkStore::set_replaying`).
    replaying: HashSet<u64>,
    stopped: bool,
    /// Origin of the send-time stamps carried by heartbeats.
    epoch: Instant,
    /// Until then, vote requests are refused (see `admit`): this node just started.
    votes_after: Instant,
    /// The storage node's hook for applies stalled on unfilled blocks (see `ready.rs`).
    unfilled_hook: Option<crate::UnfilledHook>,
    /// Chunk flushes and file deletions run inline in the poller task, in order with its
    /// events (the deterministic simulation sets it; production uses helper threads).
    inline_io: bool,
}

impl Poller {
    pub(crate) fn new(
        cfg: NodeConfig,
        log: Log,
        (chunks, watches): (Arc<ChunkStores>, Arc<crate::scrub::Watches>),
        transport: Arc<dyn Transport>,
        fetcher: Arc<dyn SnapshotFetcher>,
        tx: mpsc::UnboundedSender<Event>,
        on_fatal: OnFatal,
    ) -> std::io::Result<Poller> {
        let flusher = spawn_flusher(cfg.node_id, chunks.clone(), tx.clone())?;
        let now = crate::clock::now();
        Ok(Poller {
            log,
            chunks,
            watches,
            transport,
            fetcher,
            tx,
            on_fatal,
            groups: HashMap::new(),
            quarantined: HashMap::new(),
            counted_stuck: HashSet::new(),
            destroying: HashSet::new(),
            copying: HashSet::new(),
            remove_after_copy: HashSet::new(),
            dirty: HashSet::new(),
            to_apply: Vec::new(),
            pending_writes: Vec::new(),
            pending_compacts: Vec::new(),
            flusher,
            flushing: false,
            next_tick: now + cfg.tick,
            next_flush: now + cfg.flush_interval,
            next_space_check: now,
            disk_full: false,
            replaying: HashSet::new(),
            stopped: false,
            epoch: now,
            votes_after: now + cfg.tick * cfg.election_ticks as u32,
            inline_io: false,
            unfilled_hook: None,
            cfg,
        })
    }

    /// Half an election timeout: followers vote for no one else until a full one has
    /// passed since they last heard from the leader.
    fn lease(&self) -> Duration {
        self.cfg.tick * self.cfg.election_ticks as u32 / 2
    }

    fn fail(&mut self, why: Fatal) {
        tracing::error!(
            node = self.cfg.node_id,
            "fatal storage error, stopping: {why}"
        );
        (self.on_fatal)(&why);
        self.stopped = true;
    }

    /// Refreshes `disk_full` if the last look is older than 10 ms. Writes are checked at
    /// this rate (a statvfs costs a microsecond or two) so that a fast writer cannot run
    /// through the reserve between two looks and fill the disk under the log.
    fn check_space(&mut self, now: Instant) {
        if now < self.next_space_check {
            return;
        }
        self.next_space_check = now + Duration::from_millis(10);
        match tessera_engine::fsutil::fs_space(&self.cfg.data_dir) {
            Ok((_, avail)) => self.disk_full = avail < self.cfg.min_free_bytes,
            Err(e) => tracing::warn!("checking free space: {e}"),
        }
    }

    pub(crate) async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        while !self.stopped {
            if self.dirty.is_empty() && self.to_apply.is_empty() {
                let tick = tokio::time::Instant::from_std(self.next_tick);
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => self.handle(ev),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(tick) => {}
                }
            } else {
                // Let the network tasks sharing this runtime run between busy rounds.
                tokio::task::yield_now().await;
            }
            if !self.to_apply.is_empty() {
                self.apply_committed();
                if self.stopped {
                    break;
                }
            }
            for _ in 0..MAX_EVENTS_PER_ROUND {
                match rx.try_recv() {
                    Ok(ev) => self.handle(ev),
                    Err(_) => break,
                }
            }
            if self.stopped {
                break;
            }
            let now = crate::clock::now();
            if now >= self.next_tick {
                self.tick(now);
            }
            self.process_readies();
        }
        for g in self.groups.values_mut() {
            g.fail_pending();
        }
        self.uncount_stuck();
        // Answer whatever is still queued.
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Event::Request(_, respond, _)
                | Event::DropChunks { respond, .. }
                | Event::GroupOps { respond, .. }
                | Event::Hydrate { respond, .. }
                | Event::Scrub { respond, .. } => {
                    respond(Reply::Unavailable("storage node is shutting down".into()))
                }
                Event::ChangeMembers { respond, .. } | Event::TransferLeader { respond, .. } => {
                    respond(Err(MembershipError::ShuttingDown))
                }
                Event::Status(f) => f(Vec::new()),
                _ => {}
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Raft(batch) => {
                for (gid, bytes) in batch.msgs {
                    let Some(g) = self.groups.get_mut(&gid) else {
                        tracing::debug!(
                            group = gid,
                            from = batch.from_node,
                            "message for a group not hosted here"
                        );
                        continue;
                    };
                    let msg = match Message::parse_from_carllerche_bytes(&bytes) {
                        Ok(m) => m,
                        Err(e) => {
                            crate::metrics::REFUSED_MESSAGES.add(1);
                            tracing::warn!(
                                group = gid,
                                from = batch.from_node,
                                "undecodable raft message: {e}"
                            );
                            continue;
                        }
                    };
                    let now = crate::clock::now();
                    if let Err(why) = admit(g, batch.from_node, &msg, now, self.votes_after) {
                        crate::metrics::REFUSED_MESSAGES.add(1);
                        tracing::debug!(
                            group = gid,
                            from = batch.from_node,
                            kind = ?msg.get_msg_type(),
                            "raft message refused: {why}"
                        );
                        continue;
                    }
                    if msg.get_msg_type() == MessageType::MsgSnapshot {
                        self.offer_snapshot(gid, msg);
                        continue;
                    }
                    if msg.get_msg_type() == MessageType::MsgSnapStatus {
                        // A follower's copy failed. raft-rs takes this report only from
                        // the application (`RawNode::step` refuses it as local). Only for
                        // the snapshot this leader offers now: a late or duplicated report
                        // of an older copy would abort a newer one.
                        let offered = g
                            .raw
                            .raft
                            .prs()
                            .get(msg.from)
                            .is_some_and(|pr| pr.pending_snapshot == msg.index);
                        if g.is_leader()
                            && msg.term == g.raw.raft.term
                            && offered
                            && !cfg!(tessera_unfixed = "snap_status")
                        {
                            g.raw
                                .report_snapshot(msg.from, raft::SnapshotStatus::Failure);
                            self.dirty.insert(gid);
                        }
                        continue;
                    }
                    if msg.get_msg_type() == MessageType::MsgAppendResponse
                        && msg.reject
                        && msg.term == g.raw.raft.term
                        && g.is_leader()
                    {
                        g.note_rejection(msg.from, msg.index, msg.reject_hint);
                    }
                    // Only answers in this term count towards a lease of this term.
                    if msg.get_msg_type() == MessageType::MsgHeartbeatResponse
                        && msg.term == g.raw.raft.term
                        && let Ok(stamp) = <[u8; 8]>::try_from(&msg.context[..])
                    {
                        let sent = self.epoch + Duration::from_nanos(u64::from_le_bytes(stamp));
                        g.note_contact(msg.from, sent.min(crate::clock::now()));
                    }
                    let step = |g: &mut Group, msg| {
                        if let Err(e) = g.raw.step(msg) {
                            tracing::debug!(group = gid, "step: {e}");
                        }
                    };
                    // Only vote grants may be held back: nothing else pays for the count.
                    if Group::is_vote_grant(&msg) {
                        for msg in g.count_vote(msg) {
                            step(g, msg);
                        }
                    } else {
                        step(g, msg);
                    }
                    self.dirty.insert(gid);
                }
            }
            Event::SnapshotFetched { group, msg, result } => {
                self.snapshot_fetched(group, *msg, result)
            }
            Event::SnapshotActivity(group) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.note_snapshot_activity(crate::clock::now());
                }
            }
            Event::ChangeMembers {
                group,
                peers,
                respond,
            } => {
                if !self.groups.contains_key(&group) {
                    return respond(Err(MembershipError::GroupNotFound));
                }
                // The leader must reach the new members before they are in its config.
                self.learn_peers(&peers);
                if let Some(g) = self.groups.get_mut(&group) {
                    let r = g.change_members(&peers);
                    self.dirty.insert(group);
                    respond(r.map_err(MembershipError::NotLeader));
                }
            }
            Event::TransferLeader { group, to, respond } => match self.groups.get_mut(&group) {
                Some(g) => {
                    let r = g.transfer_leader(to);
                    self.dirty.insert(group);
                    respond(match r {
                        Ok(()) => Ok(g.membership()),
                        Err(hint) => Err(MembershipError::NotLeader(hint)),
                    });
                }
                None => respond(Err(MembershipError::GroupNotFound)),
            },
            Event::RemoveGroup(gid) => {
                if let Some(g) = self.groups.get(&gid)
                    && g.live_voter()
                {
                    tracing::warn!(
                        group = gid,
                        "not destroying this replica on the manager's word: the group's \
                         configuration here lists it as a voter and a leader is in contact"
                    );
                    return;
                }
                self.destroy_group(gid)
            }
            Event::Destroyed(gid) => {
                if self.copying.contains(&gid) {
                    self.remove_after_copy.insert(gid);
                    return;
                }
                let chunks = self.chunks.clone();
                let tx = self.tx.clone();
                if self.inline_io {
                    if let Err(e) = chunks.remove(gid) {
                        tracing::warn!(group = gid, "deleting chunk files: {e}");
                    }
                    let _ = tx.send(Event::DestroyDone(gid));
                    return;
                }
                // Deleting a large replica's files takes a while: not on this task.
                let spawned = std::thread::Builder::new()
                    .name(format!("destroy-{gid}"))
                    .spawn(move || {
                        if let Err(e) = chunks.remove(gid) {
                            tracing::warn!(group = gid, "deleting chunk files: {e}");
                        }
                        let _ = tx.send(Event::DestroyDone(gid));
                    });
                if spawned.is_err() {
                    self.destroying.remove(&gid);
                }
            }
            Event::DestroyDone(gid) => {
                self.destroying.remove(&gid);
                tracing::info!(group = gid, "replica destroyed");
            }
            Event::Request(req, respond, queued) => {
                if matches!(
                    req.op,
                    tessera_proto::data::Op::Write | tessera_proto::data::Op::WriteZeroes
                ) {
                    self.check_space(crate::clock::now());
                }
                match self.groups.get_mut(&req.addr.group) {
                    Some(g) => {
                        crate::metrics::QUEUE.observe_since(queued);
                        let gid = g.id;
                        g.request(req, respond, self.disk_full);
                        self.dirty.insert(gid);
                    }
                    None => respond(Reply::GroupNotFound),
                }
            }
            Event::Persisted(list) => {
                for (gid, number) in list {
                    if let Some(g) = self.groups.get_mut(&gid) {
                        g.persisting = g.persisting.saturating_sub(1);
                        g.raw.on_persist_ready(number);
                        if let Some((n, index)) = g.installed
                            && number >= n
                        {
                            g.installed = None;
                            g.raw.advance_apply_to(index);
                        }
                        self.dirty.insert(gid);
                    }
                }
            }
            Event::Flushed(list) => {
                self.flushing = false;
                for (gid, index, term) in list {
                    // Not for a replica destroyed meanwhile (it would reappear in the log),
                    // nor behind a snapshot installed meanwhile (the applied point moved on),
                    // nor past what this replica applied (a replica destroyed and hosted
                    // anew since the flush started).
                    if self
                        .groups
                        .get(&gid)
                        .is_none_or(|g| index < g.flushed || index > g.applied)
                    {
                        continue;
                    }
                    // The chunk files hold everything up to `index` (synced): the applied
                    // index and then the compaction mark that depends on it go to the log
                    // as one checkpoint, which writes the mark no earlier than the index.
                    // Not as an append whose callback sends the compaction: while the log
                    // waits for a full disk that append would queue behind the waiting
                    // batch, and the compaction that frees the disk would never come. A
                    // checkpoint is written even then, into the reserve of the log.
                    let slots = vec![(SLOT_APPLIED, encode_applied(index, term))];
                    let tx = self.tx.clone();
                    self.log.checkpoint(
                        gid,
                        slots,
                        index,
                        Box::new(move |res| {
                            let _ = tx.send(match res {
                                Ok(()) => Event::Compact(vec![(gid, index)]),
                                Err(e) => Event::Fatal(Fatal::Log(e)),
                            });
                        }),
                    );
                }
            }
            Event::Compact(list) => {
                for (gid, index) in list {
                    if let Some(g) = self.groups.get_mut(&gid) {
                        g.flushed = g.flushed.max(index);
                        let to = g.compactable();
                        g.mem().compact(to);
                        // The shared log is compacted right up to the flush point: the tail
                        // kept for lagging peers lives in memory only. A retained tail on
                        // disk would pin its segment, and the log recycles oldest-first, so
                        // one quiet group would keep every newer segment too.
                        self.log.compact(gid, g.flushed);
                    }
                }
            }
            Event::CreateGroup(spec) => self.create_group(spec),
            Event::DropChunks {
                group,
                volume,
                chunks,
                respond,
            } => match self.groups.get_mut(&group) {
                Some(g) if g.is_leader() => {
                    let n = chunks.len();
                    let mut respond = Some(respond);
                    for (i, chunk) in chunks.into_iter().enumerate() {
                        let cmd = Command {
                            op: CmdOp::DropChunk,
                            volume,
                            chunk,
                            offset: 0,
                            len: 0,
                            id: 0,
                            epoch: 0,
                            seq: 0,
                            data: Bytes::new(),
                        };
                        let r: crate::Respond = match respond.take() {
                            Some(r) if i + 1 == n => r,
                            other => {
                                respond = other;
                                Box::new(|_| {})
                            }
                        };
                        g.propose(cmd.encode(), r);
                    }
                    if let Some(r) = respond {
                        r(Reply::Ok(Bytes::new()));
                    }
                    self.dirty.insert(group);
                }
                Some(g) => respond(Reply::NotLeader {
                    hint: g.raw.raft.leader_id,
                }),
                None => respond(Reply::GroupNotFound),
            },
            Event::GroupOps {
                group,
                ops,
                respond,
            } => match self.groups.get_mut(&group) {
                Some(g) => {
                    g.propose_ops(ops, respond);
                    self.dirty.insert(group);
                }
                None => respond(Reply::GroupNotFound),
            },
            Event::Scrub {
                group,
                cmd,
                respond,
            } => {
                self.check_space(crate::clock::now());
                match self.groups.get_mut(&group) {
                    Some(g) => {
                        g.propose_scrub(cmd, respond, self.disk_full);
                        self.dirty.insert(group);
                    }
                    None => respond(Reply::GroupNotFound),
                }
            }
            Event::Hydrate {
                group,
                volume,
                chunk,
                offset,
                data,
                respond,
            } => {
                self.check_space(crate::clock::now());
                match self.groups.get_mut(&group) {
                    Some(g) => {
                        g.propose_hydrate((volume, chunk), offset, data, respond, self.disk_full);
                        self.dirty.insert(group);
                    }
                    None => respond(Reply::GroupNotFound),
                }
            }
            Event::Status(f) => f(self.states(crate::clock::now())),
            Event::UnfilledHook(hook) => self.unfilled_hook = Some(hook),
            Event::Fatal(why) => self.fail(why),
            Event::Shutdown => self.stopped = true,
        }
    }
}
