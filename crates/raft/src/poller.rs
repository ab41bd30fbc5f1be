//! The poller: one thread that owns a set of groups and drives them in rounds.
//!
//! A round: take every queued event (messages from peers, client requests, log
//! completions), tick every group if a tick is due, then handle the Ready of every group
//! that changed. All the log writes of a round go to the shared log as one batch (one
//! fdatasync for all groups); all messages for one peer node go out as one frame. Messages
//! raft-rs may only send after persistence (votes, append responses) are sent by the log
//! writer thread the moment the batch is durable, without a trip back through this loop.

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
use crate::group::{
    Group, GroupInit, INIT_INDEX, SLOT_APPLIED, SLOT_CONF, SLOT_HARD_STATE, SLOT_MEMBERSHIP,
    decode_applied, decode_hard_state, encode_applied, encode_hard_state, from_log_entry,
    to_log_entry,
};
use crate::membership::decode_conf;
use crate::{Event, FetchError, FetchJob, MembershipError, NodeConfig, SnapshotFetcher, Transport};

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

type Outbox = HashMap<u64, Vec<(u64, Bytes)>>;

/// How many events one round takes before it handles Readies (bounds a round's latency).
const MAX_EVENTS_PER_ROUND: usize = 4096;
/// Flush early when the in-memory log tails hold this much.
const FLUSH_AT_BYTES: u64 = 256 << 20;

pub(crate) struct Poller {
    cfg: NodeConfig,
    log: Log,
    chunks: Arc<ChunkStores>,
    transport: Arc<dyn Transport>,
    fetcher: Arc<dyn SnapshotFetcher>,
    tx: mpsc::UnboundedSender<Event>,
    on_fatal: Arc<dyn Fn(String) + Send + Sync>,
    groups: HashMap<u64, Group>,
    /// Groups the log knows but could not restore. Never re-created empty here: a replica
    /// that forgot its vote or its log could elect a second leader in a term.
    quarantined: HashSet<u64>,
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
    replaying: bool,
    stopped: bool,
    /// Origin of the send-time stamps carried by heartbeats.
    epoch: Instant,
    /// Until then, vote requests are refused (see `admit`): this node just started.
    votes_after: Instant,
}

fn encode_msg(m: &Message) -> Option<Bytes> {
    match m.write_to_bytes() {
        Ok(v) => Some(Bytes::from(v)),
        Err(e) => {
            tracing::error!("encoding a raft message: {e}");
            None
        }
    }
}

/// Queues messages for their peers. Heartbeats are stamped with their send time (nanoseconds
/// since `epoch`) in the context field, which followers echo in their responses: a leader's
/// read lease then counts from when the heartbeat a quorum answered was *sent*, never from
/// when a (possibly long-queued) answer was handled.
fn push_msgs(outbox: &mut Outbox, group: u64, msgs: Vec<Message>, epoch: Instant) {
    for mut m in msgs {
        if m.get_msg_type() == MessageType::MsgHeartbeat && m.context.is_empty() {
            let sent = crate::clock::now()
                .saturating_duration_since(epoch)
                .as_nanos() as u64;
            m.context = Bytes::copy_from_slice(&sent.to_le_bytes());
        }
        if let Some(b) = encode_msg(&m) {
            outbox.entry(m.to).or_default().push((group, b));
        }
    }
}

fn send_all(transport: &dyn Transport, from_node: u64, outbox: Outbox) {
    for (to, msgs) in outbox {
        transport.send(to, RaftBatch { from_node, msgs });
    }
}

fn spawn_flusher(
    node_id: u64,
    chunks: Arc<ChunkStores>,
    tx: mpsc::UnboundedSender<Event>,
) -> std::io::Result<std::sync::mpsc::Sender<Vec<(u64, u64, u64)>>> {
    let (ftx, frx) = std::sync::mpsc::channel::<Vec<(u64, u64, u64)>>();
    std::thread::Builder::new()
        .name(format!("chunk-flusher-{node_id}"))
        .spawn(move || {
            for list in frx {
                let ev = match chunks.sync() {
                    Ok(()) => Event::Flushed(list),
                    Err(e) => Event::Fatal(format!("flushing chunk files: {e}")),
                };
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })?;
    Ok(ftx)
}

impl Poller {
    pub(crate) fn new(
        cfg: NodeConfig,
        log: Log,
        chunks: Arc<ChunkStores>,
        transport: Arc<dyn Transport>,
        fetcher: Arc<dyn SnapshotFetcher>,
        tx: mpsc::UnboundedSender<Event>,
        on_fatal: Arc<dyn Fn(String) + Send + Sync>,
    ) -> std::io::Result<Poller> {
        let flusher = spawn_flusher(cfg.node_id, chunks.clone(), tx.clone())?;
        let now = crate::clock::now();
        Ok(Poller {
            log,
            chunks,
            transport,
            fetcher,
            tx,
            on_fatal,
            groups: HashMap::new(),
            quarantined: HashSet::new(),
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
            replaying: false,
            stopped: false,
            epoch: now,
            votes_after: now + cfg.tick * cfg.election_ticks as u32,
            cfg,
        })
    }

    /// Rebuilds the groups the shared log recovered.
    pub(crate) fn recover(&mut self, recovered: Recovered) {
        for (gid, rg) in recovered.groups {
            let Some(spec) = rg
                .slots
                .get(&SLOT_MEMBERSHIP)
                .and_then(|b| control::decode::<GroupSpec>(b).ok())
            else {
                tracing::warn!(
                    group = gid,
                    "recovered log has no membership for the group; ignoring it"
                );
                continue;
            };
            let hard_state = rg
                .slots
                .get(&SLOT_HARD_STATE)
                .and_then(|b| decode_hard_state(b))
                .unwrap_or_default();
            let applied = rg
                .slots
                .get(&SLOT_APPLIED)
                .and_then(|b| decode_applied(b))
                .unwrap_or((0, 0));
            let conf = rg.slots.get(&SLOT_CONF).and_then(|b| decode_conf(b));
            let entries: Vec<_> = rg.entries.iter().map(from_log_entry).collect();
            if let Some(first) = entries.iter().find(|e| e.index > applied.0)
                && first.index != applied.0 + 1
            {
                tracing::error!(
                    group = gid,
                    "log gap: applied up to {} but the next entry is {}; group quarantined",
                    applied.0,
                    first.index
                );
                self.quarantined.insert(gid);
                continue;
            }
            let chunks = match self.chunks.get(gid) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(group = gid, "cannot open chunk files: {e}; quarantined");
                    self.quarantined.insert(gid);
                    continue;
                }
            };
            let init = GroupInit {
                spec,
                conf,
                chunks,
                hard_state,
                applied,
                entries,
            };
            match Group::new(
                self.cfg.node_id,
                self.cfg.election_ticks,
                self.lease(),
                init,
            ) {
                Ok(g) => {
                    if g.replay_upto > g.applied {
                        self.replaying = true;
                    }
                    self.add_group(g);
                }
                Err(e) => {
                    tracing::error!(group = gid, "cannot restore group: {e}; quarantined");
                    self.quarantined.insert(gid);
                }
            }
        }
        self.chunks.set_replaying(self.replaying);
        // Chunk files whose group the log no longer knows belong to a replica destroyed
        // before its files were (the log's tombstone comes first).
        for space in self.chunks.spaces() {
            if !self.groups.contains_key(&space) && !self.quarantined.contains(&space) {
                tracing::warn!(group = space, "removing chunk files of a destroyed replica");
                if let Err(e) = self.chunks.remove(space) {
                    tracing::warn!(group = space, "removing chunk files: {e}");
                }
            }
        }
        tracing::info!(
            node = self.cfg.node_id,
            groups = self.groups.len(),
            "recovered replica groups"
        );
    }

    /// Half an election timeout: followers vote for no one else until a full one has
    /// passed since they last heard from the leader.
    fn lease(&self) -> Duration {
        self.cfg.tick * self.cfg.election_ticks as u32 / 2
    }

    fn fail(&mut self, msg: String) {
        tracing::error!(
            node = self.cfg.node_id,
            "fatal storage error, stopping: {msg}"
        );
        (self.on_fatal)(msg);
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

    fn add_group(&mut self, g: Group) {
        self.learn_peers(&g.spec.peers);
        self.dirty.insert(g.id);
        self.groups.insert(g.id, g);
    }

    fn learn_peers(&self, peers: &[control::PeerInfo]) {
        for p in peers {
            if p.node_id != self.cfg.node_id {
                self.transport.set_peer(p.node_id, &p.addr);
            }
        }
    }

    /// Destroys this node's replica of `gid`: pending requests fail over, the log forgets
    /// the group (a durable tombstone), then its chunk files are deleted.
    fn destroy_group(&mut self, gid: u64) {
        let Some(mut g) = self.groups.remove(&gid) else {
            return;
        };
        g.fail_pending();
        self.dirty.remove(&gid);
        self.to_apply.retain(|&id| id != gid);
        self.destroying.insert(gid);
        // Nothing of the group may reach the log after its tombstone: replay would bring
        // the group back from those slots with a default hard state (term and vote lost).
        if !cfg!(tessera_unfixed = "removal_slots") {
            self.pending_writes.retain(|w| w.group != gid);
            self.pending_compacts.retain(|&(id, _)| id != gid);
        }
        tracing::info!(group = gid, "destroying this replica: no longer a member");
        let tx = self.tx.clone();
        self.log.remove_group(
            gid,
            Box::new(move |res| match res {
                Ok(()) => {
                    let _ = tx.send(Event::Destroyed(gid));
                }
                Err(e) => {
                    let _ = tx.send(Event::Fatal(format!("removing group {gid}: {e}")));
                }
            }),
        );
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
        // Answer whatever is still queued.
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Event::Request(_, respond, _) | Event::DropChunks { respond, .. } => {
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
                        // The chunk data comes first, copied from the sender; the message
                        // is stepped once it is here and durable.
                        // Only from a leader of this term or a later one, only to a
                        // follower, and only if it would move this replica forward.
                        let current =
                            msg.term >= g.raw.raft.term && g.raw.raft.state != StateRole::Leader;
                        if current
                            && !g.fetching
                            && msg.get_snapshot().get_metadata().index > g.applied
                        {
                            g.fetching = true;
                            let snap = msg.get_snapshot();
                            let from_addr = control::decode::<GroupSpec>(&snap.data)
                                .ok()
                                .and_then(|s| s.peers.into_iter().find(|p| p.node_id == msg.from))
                                .or_else(|| {
                                    g.spec.peers.iter().find(|p| p.node_id == msg.from).cloned()
                                })
                                .map(|p| p.addr)
                                .unwrap_or_default();
                            let job = FetchJob {
                                group: gid,
                                from: msg.from,
                                from_addr,
                                index: snap.get_metadata().index,
                                store: g.chunks.clone(),
                            };
                            tracing::info!(
                                group = gid,
                                from = msg.from,
                                index = job.index,
                                "fetching a snapshot"
                            );
                            let tx = self.tx.clone();
                            let msg = Box::new(msg);
                            self.copying.insert(gid);
                            self.fetcher.fetch(
                                job,
                                Box::new(move |result| {
                                    let _ = tx.send(Event::SnapshotFetched {
                                        group: gid,
                                        msg,
                                        result,
                                    });
                                }),
                            );
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
                    if let Err(e) = g.raw.step(msg) {
                        tracing::debug!(group = gid, "step: {e}");
                    }
                    self.dirty.insert(gid);
                }
            }
            Event::SnapshotFetched { group, msg, result } => {
                self.copying.remove(&group);
                let Some(g) = self.groups.get_mut(&group) else {
                    // The replica was destroyed during the copy: its files can go now.
                    if self.remove_after_copy.remove(&group) {
                        let _ = self.tx.send(Event::Destroyed(group));
                    }
                    return;
                };
                g.fetching = false;
                match result {
                    Ok(()) => {
                        if let Err(e) = g.raw.step(*msg) {
                            tracing::warn!(group, "stepping a fetched snapshot: {e}");
                        }
                    }
                    Err(FetchError::Fatal(e)) => {
                        self.fail(format!("copying a snapshot of group {group}: {e}"));
                        return;
                    }
                    Err(FetchError::Retry(e)) => {
                        tracing::warn!(group, from = msg.from, "snapshot fetch failed: {e}");
                        // Tell the leader, so it offers a new snapshot rather than wait.
                        let mut m = Message::default();
                        m.set_msg_type(MessageType::MsgSnapStatus);
                        m.to = msg.from;
                        m.from = self.cfg.node_id;
                        m.reject = true;
                        let mut outbox = Outbox::new();
                        push_msgs(&mut outbox, group, vec![m], self.epoch);
                        send_all(&*self.transport, self.cfg.node_id, outbox);
                    }
                }
                self.dirty.insert(group);
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
                if req.op == tessera_proto::data::Op::Write {
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
                    self.pending_writes.push(GroupWrite {
                        group: gid,
                        entries: Vec::new(),
                        slots: vec![(SLOT_APPLIED, encode_applied(index, term))],
                    });
                    self.pending_compacts.push((gid, index));
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
            Event::Status(f) => {
                let mut states: Vec<_> = self.groups.values().map(|g| g.state()).collect();
                states.sort_by_key(|s| s.group_id);
                f(states)
            }
            Event::Fatal(msg) => self.fail(msg),
            Event::Shutdown => self.stopped = true,
        }
    }

    fn create_group(&mut self, spec: GroupSpec) {
        if self.groups.contains_key(&spec.group_id) {
            return;
        }
        if self.destroying.contains(&spec.group_id) {
            tracing::info!(
                group = spec.group_id,
                "not hosting a replica still being destroyed"
            );
            return;
        }
        if self.quarantined.contains(&spec.group_id) {
            tracing::warn!(
                group = spec.group_id,
                "not re-creating a quarantined replica: it needs replacing, not a fresh start"
            );
            return;
        }
        if !spec.peers.iter().any(|p| p.node_id == self.cfg.node_id) {
            tracing::warn!(
                group = spec.group_id,
                "asked to host a group this node is not a member of"
            );
            return;
        }
        let gid = spec.group_id;
        let chunks = match self.chunks.get(gid) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(group = gid, "cannot create chunk files: {e}");
                return;
            }
        };
        // A new group starts its log at INIT_INDEX; a joining replica starts empty and
        // waits for a snapshot.
        let (applied, hard_state) = if spec.joining {
            ((0, 0), HardState::default())
        } else {
            let hs = HardState {
                term: INIT_INDEX,
                commit: INIT_INDEX,
                ..Default::default()
            };
            ((INIT_INDEX, INIT_INDEX), hs)
        };
        let init = GroupInit {
            spec: spec.clone(),
            conf: None,
            chunks,
            hard_state: hard_state.clone(),
            applied,
            entries: Vec::new(),
        };
        let mut g = match Group::new(
            self.cfg.node_id,
            self.cfg.election_ticks,
            self.lease(),
            init,
        ) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(group = gid, "cannot create group: {e}");
                return;
            }
        };
        let mut slots = vec![(SLOT_MEMBERSHIP, control::encode(&spec))];
        if !spec.joining {
            slots.push((SLOT_HARD_STATE, encode_hard_state(&hard_state)));
            slots.push((SLOT_APPLIED, encode_applied(applied.0, applied.1)));
        }
        self.pending_writes.push(GroupWrite {
            group: gid,
            entries: Vec::new(),
            slots,
        });
        g.persisted_hs = hard_state;
        // The first member (the manager lists the least loaded first) starts the first
        // election at once rather than after a timeout.
        if !spec.joining && spec.peers.first().map(|p| p.node_id) == Some(self.cfg.node_id) {
            let _ = g.raw.campaign();
        }
        tracing::info!(
            group = gid,
            joining = spec.joining,
            "hosting a new replica group"
        );
        self.add_group(g);
    }

    fn tick(&mut self, now: Instant) {
        // Ticks missed while the poller was stalled are caught up, so a leader that stalled
        // longer than an election timeout notices it lost its quorum (bounded: past two
        // election timeouts more ticks change nothing).
        let behind = now.saturating_duration_since(self.next_tick).as_nanos()
            / self.cfg.tick.as_nanos().max(1);
        let ticks = (behind as usize + 1).min(2 * self.cfg.election_ticks + 1);
        self.next_tick = now + self.cfg.tick;
        for (gid, g) in self.groups.iter_mut() {
            // Ticks are cheap; a group that has something to do is handled this round.
            for _ in 0..ticks {
                g.raw.tick();
            }
            g.check_snapshots(now);
            self.dirty.insert(*gid);
        }
        self.check_space(now);
        if self.replaying && self.groups.values().all(|g| g.replay_done()) {
            self.replaying = false;
            self.chunks.set_replaying(false);
            tracing::info!(
                node = self.cfg.node_id,
                "log replay into chunk files complete"
            );
        }
        let held: u64 = self.groups.values().map(|g| g.store.lock().bytes).sum();
        if !self.flushing && (now >= self.next_flush || held >= FLUSH_AT_BYTES) {
            self.next_flush = now + self.cfg.flush_interval;
            let list: Vec<_> = self
                .groups
                .values()
                .filter(|g| {
                    g.applied > g.flushed || g.compactable() > g.store.lock().compacted_index
                })
                .map(|g| (g.id, g.applied, g.applied_term))
                .collect();
            if !list.is_empty() {
                self.flushing = self.flusher.send(list).is_ok();
            }
        }
    }

    fn process_readies(&mut self) {
        let mut writes = std::mem::take(&mut self.pending_writes);
        // Compacted once this round's writes are durable, never before: a mark that reached
        // the disk ahead of what it supersedes would drop acknowledged entries on replay.
        let mut compacts = std::mem::take(&mut self.pending_compacts);
        let mut numbers = Vec::new();
        let mut outbox = Outbox::new();
        let mut after_persist = Outbox::new();
        let dirty: Vec<u64> = self.dirty.drain().collect();
        for gid in dirty {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            self.to_apply.push(gid);
            if std::mem::take(&mut g.ping_due) && g.is_leader() {
                g.raw.ping();
            }
            if !g.raw.has_ready() {
                continue;
            }
            let mut rd = g.raw.ready();
            if let Some(ss) = rd.ss()
                && ss.raft_state != StateRole::Leader
            {
                g.fail_pending();
            }
            push_msgs(&mut outbox, gid, rd.take_messages(), self.epoch);
            let mut gw = GroupWrite {
                group: gid,
                ..Default::default()
            };
            let installed = !rd.snapshot().is_empty();
            if installed {
                let (slots, marker) = g.install_snapshot(rd.snapshot());
                if cfg!(tessera_unfixed = "install_compaction") {
                    self.log.compact(gid, marker.index);
                } else {
                    compacts.push((gid, marker.index));
                }
                writes.push(slots);
                gw.entries.push(marker);
            }
            g.queue_committed(rd.take_committed_entries());
            if !rd.entries().is_empty() {
                for e in rd.entries() {
                    g.dedup.logged(Command::peek_id(&e.data), e.index);
                }
                g.mem().append(rd.entries());
                gw.entries.extend(rd.entries().iter().map(to_log_entry));
            }
            if let Some(hs) = rd.hs() {
                g.mem().hard_state = hs.clone();
                // Term and vote must be durable before anything is sent; the commit index
                // alone need not be (it is re-learned from the leader), so it only rides
                // along with writes that happen anyway.
                let must = hs.term != g.persisted_hs.term || hs.vote != g.persisted_hs.vote;
                if must || !gw.entries.is_empty() {
                    gw.slots.push((SLOT_HARD_STATE, encode_hard_state(hs)));
                    g.persisted_hs = hs.clone();
                }
            }
            let persisted_msgs = rd.take_persisted_messages();
            let number = rd.number();
            if installed && let Some(e) = gw.entries.first() {
                g.installed = Some((number, e.index));
            }
            g.raw.advance_append_async(rd);
            if gw.entries.is_empty() && gw.slots.is_empty() && g.persisting == 0 {
                g.raw.on_persist_ready(number);
                push_msgs(&mut outbox, gid, persisted_msgs, self.epoch);
            } else {
                g.persisting += 1;
                writes.push(gw);
                numbers.push((gid, number));
                push_msgs(&mut after_persist, gid, persisted_msgs, self.epoch);
            }
        }
        // New entries go to the log and messages to peers before anything is applied, and
        // the applies wait for the next round (see `run`): chunk-file writes here would
        // delay every group's replication (on a follower, the apply of entry N sits in the
        // same round as the append of N+1) and, on a leader, the answers just queued.
        if !writes.is_empty() {
            let submitted = Instant::now();
            let tx = self.tx.clone();
            let transport = self.transport.clone();
            let from = self.cfg.node_id;
            self.log.append(
                writes,
                Box::new(move |res| match res {
                    Ok(()) => {
                        crate::metrics::LOG_WRITE.observe_since(submitted);
                        send_all(&*transport, from, after_persist);
                        if !numbers.is_empty() {
                            let _ = tx.send(Event::Persisted(numbers));
                        }
                        if !compacts.is_empty() {
                            let _ = tx.send(Event::Compact(compacts));
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Event::Fatal(format!("shared log write failed: {e}")));
                    }
                }),
            );
        }
        send_all(&*self.transport, self.cfg.node_id, outbox);
    }

    /// Applies the committed entries of the groups in `to_apply` to the chunk files.
    fn apply_committed(&mut self) {
        let mut changed = Vec::new();
        for gid in std::mem::take(&mut self.to_apply) {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            if let Err(msg) = g.apply() {
                // Nothing more leaves this node: its chunk store failed under it.
                self.fail(msg);
                return;
            }
            if g.raw.has_ready() {
                self.dirty.insert(gid);
            }
            if g.peers_changed || !g.slot_writes.is_empty() || g.removed {
                changed.push(gid);
            }
        }
        for gid in changed {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            let keep_slots = !g.removed || cfg!(tessera_unfixed = "removal_slots");
            if !g.slot_writes.is_empty() && keep_slots {
                self.pending_writes.push(GroupWrite {
                    group: gid,
                    entries: Vec::new(),
                    slots: std::mem::take(&mut g.slot_writes),
                });
                self.dirty.insert(gid);
            }
            let peers = std::mem::take(&mut g.peers_changed).then(|| g.spec.peers.clone());
            let removed = g.removed;
            if let Some(peers) = peers {
                self.learn_peers(&peers);
            }
            if removed {
                self.destroy_group(gid);
            }
        }
    }
}
