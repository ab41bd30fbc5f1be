//! The network side: accepting connections, reading request frames, answering them, and the
//! background delivery of drop orders after a delete.
//!
//! Each connection is served by its own task, one request at a time in arrival order
//! (pipelined requests are answered in order). Requests run on the blocking pool under one
//! lock, because a change waits for an fsync and must not stall the async workers; what a
//! request then waits for from storage nodes (group ops applied, layer usage) is awaited
//! after the lock is released.
//!
//! Raft messages from the other managers ([`Kind::ManagerRaft`] frames) arrive on the same
//! port and go straight to the Raft task, never behind that lock: a request holding it may
//! be waiting for exactly those messages to commit its change. The applier task applies
//! committed entries whenever no request does (always, on a follower).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use tessera_net::{Expect, FrameReader, NetError, call, rpc_reply, write_frame};
use tessera_proto::control::{self, ControlError, ManagerReply, ManagerRequest};
use tessera_proto::frame::Kind;

use crate::backup_jobs::Settings;
use crate::config::ManagerConfig;
use crate::consensus::{Consensus, RaftTask};
use crate::db::Db;
use crate::error::Error;
use crate::liveness::Liveness;
use crate::pace::Pace;
use crate::peer::Parts;
use crate::raft_log::RaftLog;
use crate::service::{Now, Reply, Service};
use crate::stores::Stores;

/// How long a request's group ops (a snapshot's fences, a clone's links, a rollback) may
/// take before it is answered `Unavailable` (what is done stays done; asking again
/// finishes it).
const GROUP_OPS_DEADLINE: Duration = Duration::from_secs(20);

type Shared = Arc<Mutex<Service>>;

/// A running manager. Dropping it without [`Manager::shutdown`] leaves the serving task
/// running until the runtime stops.
pub struct Manager {
    local_addr: SocketAddr,
    service: Shared,
    consensus: Consensus,
    raft: RaftTask,
    stop: watch::Sender<bool>,
    acceptor: JoinHandle<()>,
    applier: JoinHandle<()>,
}

impl Manager {
    /// Opens the database (refusing a data directory another manager holds), binds the
    /// listener and starts serving. Returns once listening.
    pub async fn start(config: ManagerConfig) -> Result<Manager, Error> {
        config.validate()?;
        // Before anything else: a store refusing its credentials stops the start.
        let stores = Arc::new(
            Stores::open_and_check(
                &config.stores,
                config.default_store.as_deref(),
                &config.zone,
            )
            .await?,
        );
        let started = Instant::now();
        let dir = config.data_dir.clone();
        let (db, state, applied, log, loaded) = tokio::task::spawn_blocking(move || {
            let (db, state) = Db::open(&dir)?;
            let applied = db.applied_index()?;
            let (log, loaded) = RaftLog::open(db.database(), db.path())?;
            Ok::<_, Error>((db, state, applied, log, loaded))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        info!(
            db = %db.path().display(),
            nodes = state.nodes().count(),
            groups = state.groups().count(),
            volumes = state.volume_count(),
            "manager state loaded"
        );
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen.clone(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        if loaded.conf_state.is_none() && !config.join {
            refuse_a_second_group(&config).await?;
        }
        let opts = crate::consensus::Options {
            id: config.id,
            members: config.members(),
            join: config.join,
            log_keep: config.log_keep,
            security: config.security.clone(),
        };
        let (consensus, raft) = Consensus::start(opts, log, loaded, applied)?;
        let live = Liveness::new(started, config.suspect_after, config.down_after);
        let service = Arc::new(Mutex::new(
            Service::new(
                db,
                state,
                live,
                config.replicas,
                config.groups_per_node,
                consensus.clone(),
                applied,
            )
            .with_stores(stores.clone()),
        ));
        let (stop, stopped) = watch::channel(false);
        spawn_backup_loops(&service, &config, &stores, &stopped);
        tokio::spawn(crate::reconcile_loop::run(
            service.clone(),
            config.security.clone(),
            config.limits(),
            config.reconcile_every,
            stopped.clone(),
        ));
        tokio::spawn(crate::snapshot_loop::run(
            service.clone(),
            config.security.clone(),
            config.reconcile_every,
            config.flatten_bytes_per_sec,
            stopped.clone(),
        ));
        let acceptor = tokio::spawn(accept_loop(
            listener,
            Door::new(config.ingress.clone()),
            config.security.clone(),
            service.clone(),
            consensus.clone(),
            stopped.clone(),
        ));
        tokio::spawn(crate::revocation::run(
            service.clone(),
            config.security.clone(),
            stopped.clone(),
        ));
        let applier = tokio::spawn(apply_loop(service.clone(), consensus.clone(), stopped));
        info!(addr = %local_addr, id = config.id, "manager listening");
        Ok(Manager {
            local_addr,
            service,
            consensus,
            raft,
            stop,
            acceptor,
            applier,
        })
    }

    /// Whether this manager leads the managers' Raft group now.
    pub fn is_leader(&self) -> bool {
        self.consensus.status().is_leader
    }

    /// The address this manager serves on (the bound one, when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, ends every connection, waits for requests in flight, and closes the
    /// database (releasing its lock).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.acceptor.await {
            warn!(error = %e, "manager accept task failed");
        }
        self.raft.stop().await;
        let _ = self.applier.await;
        let service = self.service;
        let closed = tokio::task::spawn_blocking(move || {
            let mut s = service.lock().unwrap_or_else(|p| p.into_inner());
            s.close();
        })
        .await;
        if let Err(e) = closed {
            warn!(error = %e, "closing the manager database failed");
        }
        info!(addr = %self.local_addr, "manager stopped");
    }
}

/// Starts the leading manager's backup loops: uploads and copies (paced together),
/// the collector, the restore fill. Each works only while this manager leads (its tasks
/// are aborted when it stops) and ends when `stopped` turns true.
fn spawn_backup_loops(
    service: &Shared,
    config: &ManagerConfig,
    stores: &Stores,
    stopped: &watch::Receiver<bool>,
) {
    let opened: crate::backup_jobs::Stores = Arc::new(
        stores
            .specs()
            .iter()
            .filter_map(|spec| {
                let store = stores.store(&spec.name)?.clone();
                Some((spec.name.clone(), (spec.clone(), store)))
            })
            .collect(),
    );
    let settings = Settings::new(
        config.backup_chunks_in_flight.max(1) as usize,
        config.backup_window.max(1),
    )
    .dialling(config.security.clone());
    let pace = Arc::new(Pace::new(config.backup_bytes_per_sec));
    tokio::spawn(crate::backup_loop::run(
        service.clone(),
        opened.clone(),
        settings.clone(),
        pace.clone(),
        stopped.clone(),
    ));
    tokio::spawn(crate::copy_loop::run(
        service.clone(),
        opened.clone(),
        settings.clone(),
        pace,
        stopped.clone(),
    ));
    tokio::spawn(crate::gc_loop::run(
        service.clone(),
        opened.clone(),
        config.gc_grace.as_secs(),
        stopped.clone(),
    ));
    tokio::spawn(crate::restore_loop::run(
        service.clone(),
        opened,
        settings,
        config.restore_bytes_per_sec,
        stopped.clone(),
    ));
}

/// How long a manager founding a group waits for each peer's answer.
const ASK_PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// A manager with an empty database and `join` unset founds a group of its configured
/// peers. If one of them already belongs to a group that does not count this manager as a
/// voter (it was started to be added, and `join` was forgotten), founding would make a
/// second cluster: refuse to start instead. A peer that does not answer cannot be asked:
/// that gap stays (a cluster id in every Raft message would close it).
async fn refuse_a_second_group(config: &ManagerConfig) -> Result<(), Error> {
    let mut asking = JoinSet::new();
    for peer in config.members() {
        if peer.id == config.id {
            continue;
        }
        let security = config.security.clone();
        asking.spawn(async move {
            let (req, expect) = (ManagerRequest::Managers, Expect::Manager(peer.id));
            let asked =
                call::<_, ManagerReply>(&security, &peer.addr, expect, &req, ASK_PEER_TIMEOUT)
                    .await;
            (peer, asked)
        });
    }
    while let Some(done) = asking.join_next().await {
        let Ok((peer, asked)) = done else { continue };
        match asked {
            Ok(ManagerReply::Managers { voters, learners }) => {
                let founded = !voters.is_empty() || !learners.is_empty();
                if founded && !voters.iter().any(|(v, _)| *v == config.id) {
                    return Err(Error::Config(format!(
                        "manager {} at {} already belongs to a cluster (voters {:?}) that \
                         this manager {} is not a voter of: start this manager with \
                         join = true and add it with `tessera cluster add-manager`",
                        peer.id,
                        peer.addr,
                        voters.iter().map(|v| v.0).collect::<Vec<_>>(),
                        config.id
                    )));
                }
            }
            Ok(other) => {
                debug!(peer = peer.id, reply = ?other, "manager peer did not say its group");
            }
            Err(e) => {
                warn!(peer = peer.id, addr = %peer.addr, error = %e, "could not ask a manager \
                      peer whether it already belongs to a cluster; founding regardless");
            }
        }
    }
    Ok(())
}

static REFUSED_CONNECTIONS: tessera_metrics::LazyCounter = tessera_metrics::LazyCounter::new(
    "tessera_manager_refused_connections_total",
    "Connections refused: past a cap (connections, handshakes, in all or from one address), \
     or at the TLS handshake (no certificate of the cluster, or none at all)",
);

/// The API port's caps and the budget of request bodies being read: a connection is
/// served one request at a time, so its answers wait for it to read them.
struct Door {
    ingress: Arc<tessera_net::Ingress>,
    limits: tessera_net::ReadLimits,
}

impl Door {
    fn new(limits: tessera_net::IngressLimits) -> Door {
        let bodies = tessera_net::Budget::new(
            limits.memory_bytes / 4 * 3,
            u64::from(tessera_proto::frame::MAX_BODY),
        );
        Door {
            limits: tessera_net::ReadLimits {
                idle: limits.idle(),
                frame: limits.frame(),
                budget: Some(bodies),
                // The managers' own replication never waits behind clients' bodies.
                exempt: &[Kind::ManagerRaft],
            },
            ingress: tessera_net::Ingress::new(limits),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    door: Door,
    security: tessera_net::Security,
    service: Shared,
    consensus: Consensus,
    mut stopped: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Past a cap the connection is closed at once, before its handshake.
                    let admitted = match door.ingress.admit(peer) {
                        Ok(a) => a,
                        Err(why) => {
                            REFUSED_CONNECTIONS.add(1);
                            debug!(%peer, "refused a connection: {why}");
                            continue;
                        }
                    };
                    conns.spawn(serve_connection(
                        stream,
                        peer,
                        (admitted, door.limits.clone()),
                        security.clone(),
                        service.clone(),
                        consensus.clone(),
                    ));
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Applies committed entries when told there are some, unless a request already did.
async fn apply_loop(service: Shared, consensus: Consensus, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            () = consensus.committed() => {}
        }
        let service = service.clone();
        let consensus = consensus.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(mut s) = service.lock() else {
                return;
            };
            match s.apply_committed() {
                Ok(Some((index, volumes))) if !consensus.status().is_leader => {
                    // Plain text on purpose: a follower answers no request, so its log is
                    // where operators (and tests) see it keep up.
                    info!("applied the managers' log up to index {index}; {volumes} volumes");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "applying the managers' log"),
            }
        })
        .await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    (mut admitted, limits): (tessera_net::Admitted, tessera_net::ReadLimits),
    security: tessera_net::Security,
    service: Shared,
    consensus: Consensus,
) {
    // The handshake runs on the connection's own task: a peer that never finishes it holds
    // that task until the deadline, never the accept loop.
    let (conn, who) = match security.accept(stream).await {
        Ok(accepted) => accepted,
        Err(e) => {
            REFUSED_CONNECTIONS.add(1);
            debug!(%peer, error = %e, "refused a connection");
            return;
        }
    };
    admitted.handshake_done();
    let (r, w) = conn.into_split();
    let frame_deadline = limits.frame;
    let mut reader = FrameReader::with_limits(r, limits);
    let mut w = BufWriter::new(w);
    let mut parts = Parts::default();
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(NetError::Io(e)) => {
                debug!(%peer, error = %e, "connection lost");
                return;
            }
            Err(e @ NetError::Stalled { .. }) => {
                debug!(%peer, error = %e, "dropping connection");
                return;
            }
            Err(e) => {
                warn!(%peer, error = %e, "dropping connection: bad frame");
                return;
            }
        };
        if frame.kind == Kind::ManagerRaft {
            // Only managers speak Raft here, each as itself.
            let from = match &who {
                None => None,
                Some(tessera_net::Identity::Manager(m)) => Some(*m),
                Some(other) => {
                    crate::authz::refused_raft();
                    warn!(%peer, "dropping connection: {other} sent a managers' Raft message");
                    return;
                }
            };
            if let Err(e) = consensus.receive(&frame.body, &mut parts, from) {
                if e.contains(" as manager ") {
                    crate::authz::refused_raft();
                }
                warn!(%peer, error = %e, "dropping connection: bad raft message");
                return;
            }
            continue;
        }
        let res = if frame.kind != Kind::Rpc {
            Err(ControlError::Invalid(format!(
                "the manager serves control requests only, not {:?} frames",
                frame.kind
            )))
        } else {
            match control::decode::<ManagerRequest>(&frame.body) {
                // Any manager answers, leader or not, and without the service lock.
                Ok(ManagerRequest::Managers) => Ok(crate::service::managers(&consensus)),
                Ok(req) => handle(&service, &security, who.as_ref(), req)
                    .await
                    .map(|reply| crate::authz::filter(who.as_ref(), reply)),
                Err(e) => Err(ControlError::Invalid(format!("malformed request: {e}"))),
            }
        };
        let reply = rpc_reply(frame.request_id, &res);
        // A peer that does not take its answer within a frame's deadline is dropped.
        let write = async {
            write_frame(&mut w, &reply).await?;
            w.flush().await
        };
        match tokio::time::timeout(frame_deadline, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "connection lost while answering");
                return;
            }
            Err(_) => {
                debug!(%peer, "dropping connection: it does not read its answers");
                return;
            }
        }
    }
}

async fn handle(
    shared: &Shared,
    security: &tessera_net::Security,
    who: Option<&tessera_net::Identity>,
    req: ManagerRequest,
) -> Result<ManagerReply, ControlError> {
    let service = shared.clone();
    let caller = who;
    let who = who.cloned();
    let sec = security.clone();
    let done = tokio::task::spawn_blocking(move || {
        let now = Now {
            instant: Instant::now(),
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        // A panic while holding the lock would leave state half-changed: refuse to go on.
        let mut s = service.lock().map_err(|_| {
            ControlError::Internal("manager state is unusable after an internal error".into())
        })?;
        if let Err(e) = crate::authz::check(who.as_ref(), &req, s.state()) {
            warn!(who = ?who, error = %e, "refused a request");
            return Ok((Reply::Done(Err(e)), Vec::new()));
        }
        let req = crate::authz::bind(who.as_ref(), req);
        if let Err(e) = s.lead() {
            return Ok((Reply::Done(Err(e)), Vec::new()));
        }
        if let ManagerRequest::PublishCrl { pem } = req {
            let checked = crate::revocation::check(&sec, &pem)?;
            return Ok((Reply::Done(s.publish_crl(checked)), Vec::new()));
        }
        if let ManagerRequest::AddManager { id, addr } = req {
            // Waits for a commit: not under the lock every other request needs.
            let consensus = s.consensus();
            drop(s);
            return Ok((
                Reply::Done(crate::service::add_manager(&consensus, id, addr)),
                Vec::new(),
            ));
        }
        Ok::<_, ControlError>(s.handle(req, now))
    })
    .await;
    let (reply, orders) = match done {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(e),
        Err(e) => {
            return Err(ControlError::Internal(format!(
                "request handler failed: {e}"
            )));
        }
    };
    for order in orders {
        tokio::spawn(crate::group_calls::deliver_drop(security.clone(), order));
    }
    match reply {
        Reply::Done(res) => res,
        Reply::After(pending) => {
            crate::group_calls::finish(shared, security, pending, GROUP_OPS_DEADLINE).await
        }
        Reply::Usage(query) => crate::usage::answer(security, query).await,
        Reply::Scrub(call) => {
            crate::scrub::forward(security, call, crate::scrub::SCRUB_CALL_TIMEOUT).await
        }
        Reply::Sign {
            volume_id,
            epoch,
            fence_only,
        } => crate::capability::sign(security, caller, volume_id, epoch, fence_only),
    }
}
