//! The data port: accepts connections from clients, peer nodes and the manager, and feeds
//! their frames to the Raft node. A connection that sends anything malformed at the frame
//! level is logged and dropped; nobody else notices.

use std::net::SocketAddr;
use std::sync::Arc;

use tessera_engine::ChunkStores;
use tessera_metrics::Lazy;
use tessera_net::FrameReader;
use tessera_proto::control::{
    self, ControlError, LayerBytes, MAX_GROUP_OPS, RecoveryStats, StorageReply, StorageRequest,
};
use tessera_proto::data::{Op, RaftBatch, Reply, Request};
use tessera_proto::frame::{Frame, Kind};
use tessera_raft::{MembersAnswer, RaftNode};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::authz::{Asked, check};
use crate::catch_up::{CopySources, serve_catch_up};
use crate::gate::{Gate, Held};
use crate::replies;

static REFUSED_CONNECTIONS: tessera_metrics::LazyCounter = tessera_metrics::LazyCounter::new(
    "tessera_storage_refused_connections_total",
    "Connections refused: past a cap (connections, handshakes, in all or from one address), \
     or at the TLS handshake (no certificate of the cluster, or none at all)",
);
static WRITE: Lazy = Lazy::new(
    "tessera_storage_write_seconds",
    "A write, zeroing or discard on the leader: request decoded to answer queued",
);
static READ: Lazy = Lazy::new(
    "tessera_storage_read_seconds",
    "A read or block status on the leader: request decoded to answer queued",
);

pub(crate) struct Shared {
    pub(crate) raft: RaftNode,
    pub(crate) node_id: u64,
    pub(crate) capacity: Box<dyn Fn() -> (u64, u64) + Send + Sync>,
    pub(crate) chunks: Arc<ChunkStores>,
    pub(crate) recovery: Arc<std::sync::Mutex<RecoveryStats>>,
    /// The process's descriptor limit, as raised at start.
    pub(crate) descriptors: u64,
    /// The object stores backups and restores use, opened on first use.
    pub(crate) stores: Arc<crate::backup::StoreCache>,
    /// The lazy fill of restored chunks (reads and partial writes of unfilled blocks), and
    /// the access record.
    pub(crate) lazy: Arc<crate::lazy::Lazy>,
    /// Backups and hydrations of chunks running now (see [`long_rpc`]).
    pub(crate) moving: std::sync::atomic::AtomicUsize,
    /// The scrubber: passes, scans for leaders, read repair.
    pub(crate) scrub: Arc<crate::scrub::Scrubber>,
    /// How this node accepts connections and dials its peers.
    pub(crate) security: tessera_net::Security,
    /// Connection caps, deadlines and memory budgets of the data port (`[ingress]`).
    pub(crate) gate: Gate,
}

impl Shared {
    fn backup_node(&self) -> crate::backup::Node<'_> {
        crate::backup::Node {
            id: self.node_id,
            raft: &self.raft,
            chunks: &self.chunks,
            stores: &self.stores,
            reads_waiting: &self.lazy.reads_waiting,
        }
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Past a cap the connection is closed at once, before its handshake.
                let mut admitted = match shared.gate.ingress.admit(peer) {
                    Ok(a) => a,
                    Err(why) => {
                        REFUSED_CONNECTIONS.add(1);
                        tracing::debug!(%peer, "refused a connection: {why}");
                        continue;
                    }
                };
                let shared = shared.clone();
                // The handshake runs on the connection's own task: a peer that never
                // finishes it holds that task until the deadline, never the accept loop.
                tokio::spawn(async move {
                    match shared.security.accept(stream).await {
                        Ok((conn, who)) => {
                            admitted.handshake_done();
                            serve(conn, peer, who, shared).await;
                            drop(admitted);
                        }
                        Err(e) => {
                            REFUSED_CONNECTIONS.add(1);
                            tracing::debug!(%peer, "refused a connection: {e}");
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

pub(crate) async fn serve(
    stream: tessera_net::Conn,
    peer: SocketAddr,
    who: Option<tessera_net::Identity>,
    shared: Arc<Shared>,
) {
    // Request and answer bytes this connection may have in flight (see `gate`): past its
    // share the connection is not read until answers go out, so a client pipelining faster
    // than the node commits, or not reading its answers, cannot grow its memory without
    // bound; one that makes no room within the gate's patience is dropped.
    let share = shared.gate.connection_budget();
    let patience = shared.gate.patience();
    let (r, w) = stream.into_split();
    // Each answer carries the budget its request took, released only once the answer is
    // written (buffered, or on the socket).
    // A peer that takes no answer bytes for the gate's patience ends the writer, and with
    // it the connection (its answers waiting behind are given up, with their budget).
    let (tx, mut rx) = mpsc::unbounded_channel::<(Frame, Held)>();
    let mut writer = tokio::spawn(async move {
        let mut w = tessera_net::FrameWriter::new(w).with_write_timeout(patience);
        if let Err(e) = w.write_queue(&mut rx).await {
            tracing::debug!(%peer, "dropping connection: writing answers: {e}");
        }
    });
    let mut reader = FrameReader::with_limits(r, shared.gate.read_limits(who.as_ref()));
    // Room for one more answer of `bytes`: waits for earlier answers to be written,
    // however long the node takes to commit them; the connection ends if its writer does
    // (a client not reading them).
    macro_rules! room {
        ($bytes:expr) => {
            tokio::select! {
                p = share.take($bytes as u64) => p,
                _ = &mut writer => {
                    tracing::warn!(%peer, "dropping connection: it does not read its answers");
                    break;
                }
            }
        };
    }
    let mut copied = CopySources::default();
    // The volumes this connection's client may reach, as its capabilities say.
    let mut caps = crate::capability::Capabilities::default();
    // Backups and hydrations of chunks this connection asked for: they run beside the loop
    // and are aborted when the connection ends (the manager gave up on them).
    let mut long = tokio::task::JoinSet::new();
    loop {
        while long.try_join_next().is_some() {}
        let f = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e @ tessera_net::NetError::Stalled { .. }) => {
                tracing::debug!(%peer, "dropping connection: {e}");
                break;
            }
            Err(e) => {
                tracing::warn!(%peer, "dropping connection: {e}");
                break;
            }
        };
        match f.kind {
            Kind::Write
            | Kind::Read
            | Kind::WriteZeroes
            | Kind::Discard
            | Kind::Fence
            | Kind::BlockStatus => {
                let id = f.request_id;
                if let Err(why) = check(who.as_ref(), &Asked::Io(f.kind)) {
                    // Answered, then the connection is dropped: a client streaming what
                    // it may not send costs one answer, not a queue of them.
                    tracing::warn!(%peer, "refused, dropping the connection: {why}");
                    let reply = Reply::BadRequest(format!("not allowed: {why}"));
                    let _ = tx.send((Frame::new(Kind::Reply, id, reply.encode()), Held::default()));
                    break;
                }
                match Request::decode(f.kind, &f.body) {
                    Ok(req) if let Err(why) = caps.allows(who.as_ref(), &req) => {
                        tracing::debug!(%peer, "refused: {why}");
                        let frame = Frame::new(Kind::Reply, id, Reply::Unauthorized(why).encode());
                        let own = room!(frame.body_len());
                        let _ = tx.send((frame, Held::new(own, None)));
                    }
                    Ok(req) => {
                        // A read's answer is as large as the read; a write's body is
                        // already held if large (taken when it was read).
                        let bytes = u64::from(req.len).max(f.body.len() as u64);
                        let own = room!(bytes);
                        let node = match reader.take_budget() {
                            Some(body) => body,
                            None => shared.gate.in_flight(bytes).await,
                        };
                        submit_data(&shared, req, id, tx.clone(), Held::new(own, Some(node)));
                    }
                    Err(e) => {
                        let reply = Reply::BadRequest(e.to_string());
                        let frame = Frame::new(Kind::Reply, id, reply.encode());
                        let own = room!(frame.body_len());
                        let _ = tx.send((frame, Held::new(own, None)));
                    }
                }
            }
            Kind::Capability => {
                let reply = match caps.present(&shared.security, who.as_ref(), &f.body) {
                    Ok(()) => Reply::Ok(bytes::Bytes::new()),
                    Err(why) => {
                        tracing::debug!(%peer, "refused a capability: {why}");
                        Reply::Unauthorized(why)
                    }
                };
                let frame = Frame::new(Kind::Reply, f.request_id, reply.encode());
                let own = room!(frame.body_len());
                let _ = tx.send((frame, Held::new(own, None)));
                if caps.hostile >= crate::capability::MAX_REFUSED {
                    tracing::warn!(%peer, "dropping connection: forged or stolen capabilities");
                    break;
                }
            }
            Kind::CatchUpList | Kind::CatchUpChecksums | Kind::CatchUpRead => {
                let id = f.request_id;
                if let Err(why) = check(who.as_ref(), &Asked::CatchUp) {
                    tracing::warn!(%peer, "dropping connection: {why}");
                    break;
                }
                let reply = match Request::decode(f.kind, &f.body) {
                    Ok(req) => {
                        shared.raft.snapshot_activity(req.addr.group);
                        match copied.source(&shared.chunks, req.addr.group) {
                            Some(store) => {
                                let chunks = shared.chunks.clone();
                                tokio::task::spawn_blocking(move || {
                                    serve_catch_up(&chunks, &store, &req)
                                })
                                .await
                                .unwrap_or_else(replies::lost_task)
                            }
                            None => Reply::GroupNotFound,
                        }
                    }
                    Err(e) => Reply::BadRequest(e.to_string()),
                };
                let (head, data) = reply.encode_parts();
                let frame = Frame::with_tail(Kind::Reply, id, head, data);
                let own = room!(frame.body_len());
                let _ = tx.send((frame, Held::new(own, None)));
            }
            Kind::RaftBatch => match RaftBatch::decode(&f.body) {
                Ok(b) => {
                    if let Err(why) = check(who.as_ref(), &Asked::Raft(b.from_node)) {
                        tracing::warn!(%peer, "dropping connection: {why}");
                        break;
                    }
                    shared.raft.step(b);
                }
                Err(e) => {
                    tracing::warn!(%peer, "dropping connection: bad raft batch: {e}");
                    break;
                }
            },
            Kind::Rpc => match control::decode::<StorageRequest>(&f.body) {
                Ok(req) => {
                    if let Err(why) = check(who.as_ref(), &Asked::Rpc(&req)) {
                        tracing::warn!(%peer, "refused, dropping the connection: {why}");
                        let res: Result<StorageReply, _> = Err(ControlError::Unauthorized(why));
                        let reply = tessera_net::rpc_reply(f.request_id, &res);
                        let _ = tx.send((reply, Held::default()));
                        break;
                    }
                    if matches!(
                        req,
                        StorageRequest::BackupChunk(_) | StorageRequest::HydrateChunk(_)
                    ) {
                        // Its answer is small; the room is taken now, while this
                        // connection can still be dropped for not reading.
                        let own = room!(1);
                        let (shared, tx, id) = (shared.clone(), tx.clone(), f.request_id);
                        long.spawn(async move {
                            let res = long_rpc(&shared, req).await;
                            let _ =
                                tx.send((tessera_net::rpc_reply(id, &res), Held::new(own, None)));
                        });
                    } else {
                        let res = rpc(&shared, req).await;
                        let reply = tessera_net::rpc_reply(f.request_id, &res);
                        let own = room!(reply.body_len());
                        let _ = tx.send((reply, Held::new(own, None)));
                    }
                }
                Err(e) => {
                    let res: Result<StorageReply, _> = Err(ControlError::Invalid(e.to_string()));
                    let reply = tessera_net::rpc_reply(f.request_id, &res);
                    let own = room!(reply.body_len());
                    let _ = tx.send((reply, Held::new(own, None)));
                }
            },
            Kind::Reply | Kind::RpcReply | Kind::ManagerRaft => {
                tracing::warn!(%peer, "dropping connection: unsolicited {:?} frame", f.kind);
                break;
            }
        }
    }
    // Closed (or dropped): whatever it asked for is given up, and answers nobody.
    long.abort_all();
    while long.join_next().await.is_some() {}
    drop(tx);
    // The answers already queued go out, unless the peer takes none for the patience
    // (the writer's own deadline ends it then); a writer that ended already is done.
    if !writer.is_finished() {
        let _ = (&mut writer).await;
    }
}

/// Where a connection's answers are queued, each with the budget it releases.
pub(crate) type Answers = mpsc::UnboundedSender<(Frame, Held)>;

/// A data request to the Raft node, its answer queued on `tx` with the budget `permit` it
/// took. A read answered `Unfilled` is completed from the backup by a task of the runtime
/// (`respond` runs on the Raft poller, which must never wait); a partial write waits for
/// its partial blocks to be found filled (or filled) first, and is answered without being
/// proposed if they cannot be (see `lazy`). Client reads served are counted in the access
/// record (cheap: one small shard lock on the poller).
pub(crate) fn submit_data(
    shared: &Arc<Shared>,
    req: Request,
    id: u64,
    tx: Answers,
    permit: impl Into<Held>,
) {
    let permit = permit.into();
    let arrived = std::time::Instant::now();
    let stage = match req.op {
        Op::Read | Op::BlockStatus => &READ,
        _ => &WRITE,
    };
    let send = move |reply: Reply| {
        stage.observe_since(arrived);
        let (head, data) = reply.encode_parts();
        let frame = Frame::with_tail(Kind::Reply, id, head, data);
        let _ = tx.send((frame, permit));
    };
    // A read keeps its request: one that meets a corrupt block is repaired and read again
    // (see `scrub`).
    let read = (req.op == Op::Read).then(|| {
        let rt = tokio::runtime::Handle::current();
        (shared.clone(), rt, req.clone())
    });
    let respond: tessera_raft::Respond = Box::new(move |reply: Reply| match (reply, read) {
        (Reply::Corrupt(msg), Some((shared, rt, req))) => {
            crate::scrub::repair_read(shared, &rt, req, msg, Box::new(send));
        }
        (Reply::Unfilled { data, blocks }, Some((shared, rt, req))) => {
            let (addr, offset) = (req.addr, req.offset);
            shared.lazy.count_read(addr.volume, addr.chunk);
            rt.spawn(async move {
                let lazy = &shared.lazy;
                send(
                    lazy.complete_read(&shared.raft, addr, offset, data, blocks)
                        .await,
                );
            });
        }
        (reply, read) => {
            if let (Reply::Ok(_), Some((shared, _, req))) = (&reply, read) {
                shared.lazy.count_read(req.addr.volume, req.addr.chunk);
            }
            send(reply);
        }
    });
    if crate::lazy::Lazy::needs_fill(&req) {
        let shared = shared.clone();
        tokio::spawn(async move {
            match shared.lazy.prepare_write(&shared.raft, &req).await {
                Ok(()) => shared.raft.submit(req, respond),
                Err(reply) => respond(reply),
            }
        });
    } else {
        shared.raft.submit(req, respond);
    }
}

/// A backup or a hydration of a chunk: minutes of moving bytes, counted in
/// `Shared::moving` while it runs. Runs as a task of its connection's, so that a
/// connection closed by a manager that gave up on it (its deadline passed) stops it:
/// otherwise it would carry on, and a retry would run beside it.
async fn long_rpc(shared: &Shared, req: StorageRequest) -> Result<StorageReply, ControlError> {
    struct Moving<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Moving<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    shared
        .moving
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _moving = Moving(&shared.moving);
    match req {
        StorageRequest::BackupChunk(req) => {
            let (volume, chunk) = (req.volume_id, req.chunk);
            let mut out = crate::backup::backup_chunk(shared.backup_node(), req).await;
            // The access record of the chunk, for a restore's pre-warm order.
            if let Ok(StorageReply::BackupChunk(u)) = &mut out {
                u.reads = shared.lazy.reads(volume, chunk);
            }
            out
        }
        StorageRequest::HydrateChunk(req) => {
            crate::backup::hydrate_chunk(shared.backup_node(), req).await
        }
        other => rpc(shared, other).await,
    }
}

pub(crate) async fn rpc(
    shared: &Shared,
    req: StorageRequest,
) -> Result<StorageReply, ControlError> {
    match req {
        StorageRequest::DropChunks {
            group_id,
            volume_id,
            chunks,
        } => {
            // Their reads no longer matter to any backup.
            shared.lazy.chunks_dropped(volume_id, &chunks);
            let (otx, orx) = oneshot::channel();
            shared.raft.drop_chunks(
                group_id,
                volume_id,
                chunks,
                Box::new(move |r| {
                    let _ = otx.send(r);
                }),
            );
            replies::chunks_dropped(shared.node_id, group_id, orx.await.ok())
        }
        StorageRequest::Status => Ok(StorageReply::Status(crate::heartbeat_of(shared).await)),
        StorageRequest::ChangeMembers { group_id, peers } => {
            membership(group_id, |answer| {
                shared.raft.change_members(group_id, peers, answer)
            })
            .await
        }
        StorageRequest::HostGroup { spec } => {
            shared.raft.create_group(spec);
            Ok(StorageReply::Done)
        }
        StorageRequest::TransferLeader { group_id, to } => {
            membership(group_id, |answer| {
                shared.raft.transfer_leader(group_id, to, answer)
            })
            .await
        }
        StorageRequest::LayerUsage {
            group_id,
            volume_id,
        } => layer_usage(&shared.chunks, shared.node_id, group_id, volume_id),
        req @ (StorageRequest::BackupChunk(_) | StorageRequest::HydrateChunk(_)) => {
            Box::pin(long_rpc(shared, req)).await
        }
        StorageRequest::ScrubRegion(req) => crate::scrub::scan_region(shared, req)
            .await
            .map(StorageReply::ScrubRegion),
        StorageRequest::Scrub { action } => {
            shared.scrub.act(action)?;
            Ok(StorageReply::Scrub(
                shared.scrub.stats(&shared.raft.watches()),
            ))
        }
        StorageRequest::Apply { group_id, ops } => {
            if ops.len() > MAX_GROUP_OPS {
                return Err(ControlError::Invalid(format!(
                    "{} group operations in one request; at most {MAX_GROUP_OPS}",
                    ops.len()
                )));
            }
            let (otx, orx) = oneshot::channel();
            shared.raft.apply_ops(
                group_id,
                ops,
                Box::new(move |r| {
                    let _ = otx.send(r);
                }),
            );
            replies::ops_applied(group_id, orx.await.ok())
        }
    }
}

/// Starts a membership operation of group `group_id` with `start` and turns its answer
/// into the control-plane reply.
async fn membership(
    group_id: u64,
    start: impl FnOnce(MembersAnswer),
) -> Result<StorageReply, ControlError> {
    let (otx, orx) = oneshot::channel();
    start(Box::new(move |r| {
        let _ = otx.send(r);
    }));
    replies::membership(group_id, orx.await.ok())
}

/// The answer to [`StorageRequest::LayerUsage`]: this replica's allocated bytes of every
/// layer of `volume_id`'s chunks in `group_id`, as last measured (the engine measures at
/// open and at each sync; no disk is touched here).
fn layer_usage(
    chunks: &ChunkStores,
    node_id: u64,
    group_id: u64,
    volume_id: u64,
) -> Result<StorageReply, ControlError> {
    let store = chunks.existing(group_id).ok_or_else(|| {
        ControlError::NotFound(format!(
            "node {node_id} holds no replica of group {group_id}"
        ))
    })?;
    let layers = store.volume_layer_bytes(volume_id);
    Ok(StorageReply::LayerUsage(
        layers
            .into_iter()
            .map(|(chunk, layer, bytes)| LayerBytes {
                chunk,
                layer,
                bytes,
            })
            .collect(),
    ))
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
