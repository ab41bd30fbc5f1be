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
use tessera_engine::{ChunkStore, GroupWrite, Log, Recovered};
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::control::{self, GroupSpec};
use tessera_proto::data::{RaftBatch, Reply};

use crate::group::{
    Group, GroupInit, SLOT_APPLIED, SLOT_HARD_STATE, SLOT_MEMBERSHIP, decode_applied,
    decode_hard_state, encode_applied, encode_hard_state, from_log_entry, to_log_entry,
};
use crate::{Event, NodeConfig, Transport};

type Outbox = HashMap<u64, Vec<(u64, Bytes)>>;

/// How many events one round takes before it handles Readies (bounds a round's latency).
const MAX_EVENTS_PER_ROUND: usize = 4096;
/// Flush early when the in-memory log tails hold this much.
const FLUSH_AT_BYTES: u64 = 256 << 20;

pub(crate) struct Poller {
    cfg: NodeConfig,
    log: Log,
    chunks: Arc<ChunkStore>,
    transport: Arc<dyn Transport>,
    tx: mpsc::UnboundedSender<Event>,
    on_fatal: Arc<dyn Fn(String) + Send + Sync>,
    groups: HashMap<u64, Group>,
    /// Groups the log knows but could not restore. Never re-created empty here: a replica
    /// that forgot its vote or its log could elect a second leader in a term.
    quarantined: HashSet<u64>,
    dirty: HashSet<u64>,
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
            let sent = epoch.elapsed().as_nanos() as u64;
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
    chunks: Arc<ChunkStore>,
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
        chunks: Arc<ChunkStore>,
        transport: Arc<dyn Transport>,
        tx: mpsc::UnboundedSender<Event>,
        on_fatal: Arc<dyn Fn(String) + Send + Sync>,
    ) -> std::io::Result<Poller> {
        let flusher = spawn_flusher(cfg.node_id, chunks.clone(), tx.clone())?;
        let now = Instant::now();
        Ok(Poller {
            log,
            chunks,
            transport,
            tx,
            on_fatal,
            groups: HashMap::new(),
            quarantined: HashSet::new(),
            dirty: HashSet::new(),
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
            let init = GroupInit {
                spec,
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
        for p in &g.spec.peers {
            if p.node_id != self.cfg.node_id {
                self.transport.set_peer(p.node_id, &p.addr);
            }
        }
        self.dirty.insert(g.id);
        self.groups.insert(g.id, g);
    }

    pub(crate) async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        while !self.stopped {
            if self.dirty.is_empty() {
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
            for _ in 0..MAX_EVENTS_PER_ROUND {
                match rx.try_recv() {
                    Ok(ev) => self.handle(ev),
                    Err(_) => break,
                }
            }
            if self.stopped {
                break;
            }
            let now = Instant::now();
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
                            tracing::warn!(
                                group = gid,
                                from = batch.from_node,
                                "undecodable raft message: {e}"
                            );
                            continue;
                        }
                    };
                    if msg.get_msg_type() == MessageType::MsgHeartbeatResponse
                        && let Ok(stamp) = <[u8; 8]>::try_from(&msg.context[..])
                    {
                        let sent = self.epoch + Duration::from_nanos(u64::from_le_bytes(stamp));
                        g.note_contact(msg.from, sent.min(Instant::now()));
                    }
                    if let Err(e) = g.raw.step(msg) {
                        tracing::debug!(group = gid, "step: {e}");
                    }
                    self.dirty.insert(gid);
                }
            }
            Event::Request(req, respond, queued) => {
                if req.op == tessera_proto::data::Op::Write {
                    self.check_space(Instant::now());
                }
                match self.groups.get_mut(&req.addr.group) {
                    Some(g) => {
                        crate::metrics::QUEUE.observe_since(queued);
                        let gid = g.id;
                        g.request(req, respond, self.disk_full, &self.chunks);
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
                        self.dirty.insert(gid);
                    }
                }
            }
            Event::Flushed(list) => {
                self.flushing = false;
                for (gid, index, term) in list {
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
        let init = GroupInit {
            spec: spec.clone(),
            hard_state: HardState::default(),
            applied: (0, 0),
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
        self.pending_writes.push(GroupWrite {
            group: gid,
            entries: Vec::new(),
            slots: vec![(SLOT_MEMBERSHIP, control::encode(&spec))],
        });
        // The lowest member starts the first election at once rather than after a timeout.
        if spec.peers.iter().map(|p| p.node_id).min() == Some(self.cfg.node_id) {
            let _ = g.raw.campaign();
        }
        tracing::info!(group = gid, "hosting a new replica group");
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
        let compacts = std::mem::take(&mut self.pending_compacts);
        let mut numbers = Vec::new();
        let mut outbox = Outbox::new();
        let mut after_persist = Outbox::new();
        let dirty: Vec<u64> = self.dirty.drain().collect();
        let mut fatal = None;
        for gid in dirty {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            if !g.raw.has_ready() {
                if let Err(msg) = g.apply(&self.chunks) {
                    fatal = Some(msg);
                    break;
                }
                continue;
            }
            let mut rd = g.raw.ready();
            if let Some(ss) = rd.ss()
                && ss.raft_state != StateRole::Leader
            {
                g.fail_pending();
            }
            push_msgs(&mut outbox, gid, rd.take_messages(), self.epoch);
            if !rd.snapshot().is_empty() {
                tracing::error!(group = gid, "unexpected raft snapshot ignored");
            }
            g.queue_committed(rd.take_committed_entries());
            let mut gw = GroupWrite {
                group: gid,
                ..Default::default()
            };
            if !rd.entries().is_empty() {
                g.mem().append(rd.entries());
                gw.entries = rd.entries().iter().map(to_log_entry).collect();
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
            if let Err(msg) = g.apply(&self.chunks) {
                fatal = Some(msg);
                break;
            }
            if g.raw.has_ready() {
                self.dirty.insert(gid);
            }
        }
        if let Some(msg) = fatal {
            // Nothing more leaves this node: its chunk store failed under it.
            self.fail(msg);
            return;
        }
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
}
