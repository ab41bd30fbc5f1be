//! The storage-node service.
//!
//! Owns: the node's data directory (locked for the life of the process), its identity
//! (`node.json`, the id the manager gave it), the data port (clients, peers, manager), the
//! registration and heartbeats to the manager, and the wiring of engine, Raft and network.
//!
//! Must never: serve from a data directory another process holds; keep running after the
//! shared log reported a failed fsync (see [`StorageNode::fatal`]).
//!
//! - this file: [`StorageConfig`], [`StorageNode`] (start, registration, heartbeats).
//! - `server`: the data port: TLS (or plain) connections from clients, peers and managers,
//!   their frames to the Raft node.
//! - `authz`: which frames the peer's certificate allows.
//! - `catch_up`: serving a peer's replica copy (a Raft catch-up) from the chunk files.
//! - `backup`: a group leader's side of backups in object storage: uploading one chunk's
//!   regions as of a snapshot (`BackupChunk`), filling a restored chunk from a store
//!   through the group's log (`HydrateChunk`), and the node's cache of open stores.
//! - `lazy/`: the lazy fill of restored chunks: reads of blocks not filled yet completed
//!   from the backup's stores, partial writes over them filled first, hydrates proposed;
//!   an apply stalled on unfilled blocks filled outside the log (the Raft node's unfilled
//!   hook, installed at start); the access record backups report.
//! - `replies`: engine and Raft answers as wire replies, in one place.
//! - `transport`: Raft messages to peer nodes, one `tessera_net` link per peer.
//! - `scrub/`: finding rotten or diverged blocks in the groups this node leads and
//!   repairing them through the log from the majority of replicas; a replica's scans for
//!   leaders; reads that met a corrupt block repaired and read again.
//! - `fetch/`: copying a replica from a peer (the receiving half of a Raft catch-up), paced
//!   and kept above the disk's free-space floor.
//!
//! Wire formats are never defined here: they live in `tessera_proto`.

#![warn(missing_docs)]

mod authz;
mod backup;
mod capability;
mod catch_up;
mod fetch;
mod gate;
mod lazy;
mod replies;
mod revocation;
mod scrub;
mod server;
mod transport;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_engine::chunk::FileBudget;
use tessera_engine::{ChunkStores, DirLock, Log, LogOptions};
use tessera_proto::control::{
    ControlError, Descriptors, ManagerReply, ManagerRequest, NodeHeartbeat, NodeRegistration,
};
use tessera_proto::identity::NodeIdentity;
use tessera_raft::{NodeConfig, RaftNode};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

pub use scrub::ScrubConfig;
use server::Shared;

/// `storage.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The zone this node is in (placement keeps a group's replicas apart by zone when it
    /// can).
    #[serde(default = "default_zone")]
    pub zone: String,
    /// The rack this node is in: a group's replicas go to three distinct racks.
    pub rack: String,
    /// Where the node keeps its identity, shared log and chunk files (locked while serving).
    pub data_dir: PathBuf,
    /// How the node dials and accepts: mutual TLS with its node certificate, or plain TCP
    /// (`--insecure`). Not in `storage.toml` itself: `tessera storage` loads it from the
    /// `certs_dir` there.
    #[serde(skip)]
    pub security: tessera_net::Security,
    /// The certificates directory (`tessera cert`): `ca.crt` and this node's certificate.
    /// Absent: the node starts only with `--insecure`.
    #[serde(default)]
    pub certs_dir: Option<PathBuf>,
    /// This node's certificate in `certs_dir`, by file stem: `node-3` for `node-3.crt`
    /// and `node-3.key` (as `tessera cert issue node 3` writes them).
    #[serde(default)]
    pub cert: Option<String>,
    /// Data port, e.g. `127.0.0.1:7500` (port 0 picks one).
    pub listen: String,
    /// Address peers and clients use to reach this node; defaults to the bound address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// The managers' addresses: registration and heartbeats go to whichever leads.
    pub managers: Vec<String>,
    /// Milliseconds between heartbeats to the manager (at least 50).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Below this much free space on the data directory, writes are refused (`DiskFull`).
    #[serde(default = "default_min_free")]
    pub min_free_bytes: u64,
    /// Size of one segment of the shared log.
    #[serde(default = "default_segment")]
    pub log_segment_bytes: u64,
    /// Where to serve `GET /metrics` (Prometheus text), e.g. `127.0.0.1:7580`; off if unset.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Bytes a second this node copies from peers to rebuild replicas (re-replication,
    /// catching up after an absence), so that client I/O keeps its latency.
    #[serde(default = "default_recovery_rate")]
    pub recovery_bytes_per_sec: u64,
    /// Chunks kept open at once (two descriptors each); idle ones past it are closed. By
    /// default what the descriptor limit affords (see `FileBudget::for_descriptors`).
    #[serde(default)]
    pub max_open_chunks: Option<usize>,
    /// Chunks asked for with one request of a peer's chunk list when copying a replica
    /// (at most, and by default, `tessera_proto::copy::MAX_LIST_PAGE`).
    #[serde(default = "default_copy_list_page")]
    pub copy_list_page: u32,
    /// How long a replica's apply may stay stopped (full disk, corrupt block) before it is
    /// reported stuck, so that the manager replaces it.
    #[serde(default = "default_stuck_after_ms")]
    pub stuck_after_ms: u64,
    /// Background scrubbing of the replicas (`[scrub]`: `bytes_per_sec`, `period_secs`).
    #[serde(default)]
    pub scrub: ScrubConfig,
    /// The data port's connection caps, deadlines and memory budget (`[ingress]`:
    /// `max_connections`, `max_connections_per_address`, `max_handshakes`,
    /// `max_handshakes_per_address`, `memory_bytes`, `idle_secs`, `frame_secs`).
    #[serde(default)]
    pub ingress: tessera_net::IngressLimits,
}

fn default_copy_list_page() -> u32 {
    tessera_proto::copy::MAX_LIST_PAGE
}

fn default_stuck_after_ms() -> u64 {
    10_000
}

fn default_recovery_rate() -> u64 {
    100 << 20
}

fn default_zone() -> String {
    "zone1".into()
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_min_free() -> u64 {
    256 << 20
}
fn default_segment() -> u64 {
    64 << 20
}

/// Why a storage node could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local engine failed: the data directory is locked by another process, or its log
    /// or chunk files could not be opened.
    #[error(transparent)]
    Engine(#[from] tessera_engine::Error),
    /// The data port could not be bound (in use, or not an address of this host).
    #[error("binding the data port {addr}: {source}")]
    Bind {
        /// The address from `listen`.
        addr: String,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// `node.json` could not be read or parsed: the node does not know who it is.
    #[error("reading node identity {path}: {msg}")]
    Identity {
        /// The identity file.
        path: PathBuf,
        /// What was wrong with it.
        msg: String,
    },
    /// The manager refused the registration, or answered it with something else.
    #[error("registering with the manager: {0}")]
    Register(String),
    /// The data directory holds chunk files in a layout this version cannot read.
    #[error(
        "{0} holds chunk files in the layout of an older Tessera (chunks/ rather than \
         groups/), which this version cannot read; move the directory away or start afresh"
    )]
    OldLayout(PathBuf),
    /// Any other local I/O failure at start.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A running storage node.
pub struct StorageNode {
    node_id: u64,
    addr: SocketAddr,
    raft: RaftNode,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    fatal: watch::Receiver<Option<String>>,
    _lock: DirLock,
}

impl StorageNode {
    /// Locks the data directory, replays the shared log, binds the data port, registers with
    /// the manager (retrying until one answers) and starts serving.
    pub async fn start(cfg: StorageConfig) -> Result<StorageNode, Error> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let lock = DirLock::acquire(&cfg.data_dir)?;
        // Serving zeroes where an older layout kept data would lose it silently: refuse.
        let old = cfg.data_dir.join("chunks");
        if std::fs::read_dir(&old).is_ok_and(|mut d| d.next().is_some()) {
            return Err(Error::OldLayout(cfg.data_dir.clone()));
        }
        let id_path = cfg.data_dir.join("node.json");
        let known_id = read_identity(&id_path)?;
        if cfg.certs_dir.is_some() && !cfg.security.is_secure() {
            return Err(Error::Register(
                "certs_dir is set but no certificate was loaded into the configuration".into(),
            ));
        }
        let disk = disk_token(&cfg.data_dir)?;

        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: cfg.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr()?;
        let advertise = cfg.advertise.clone().unwrap_or_else(|| addr.to_string());

        let descriptors = tessera_engine::fsutil::raise_descriptor_limit()?;
        let budget = match cfg.max_open_chunks {
            Some(n) => FileBudget::new(n),
            None => FileBudget::for_descriptors(descriptors),
        };
        tracing::info!(
            descriptors,
            open_chunks = budget.stats().limit,
            "descriptor limit"
        );
        let data_dir = cfg.data_dir.clone();
        let segment_size = cfg.log_segment_bytes;
        let (log, recovered, chunks) = tokio::task::spawn_blocking(move || {
            let (log, rec) = Log::open(&data_dir.join("log"), LogOptions { segment_size })?;
            // One directory per replica group (see `ChunkStores`).
            let chunks = ChunkStores::open_in(&data_dir.join("groups"), budget)?;
            Ok::<_, tessera_engine::Error>((log, rec, chunks))
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let chunks = Arc::new(chunks);

        let node_id = register(&cfg, known_id, disk, &advertise, &chunks).await?;
        if known_id != Some(node_id) {
            let body = NodeIdentity { node_id }.encode();
            tessera_engine::fsutil::write_file_atomic(&id_path, &body)?;
        }

        let transport = Arc::new(transport::TcpTransport::new(
            tokio::runtime::Handle::current(),
            cfg.security.clone(),
        ));
        let scrub = scrub::Scrubber::new(cfg.scrub.clone(), &cfg.data_dir, transport.clone());
        let (fatal_tx, fatal_rx) = watch::channel(None);
        let recovery = Arc::new(std::sync::Mutex::new(Default::default()));
        let fetcher = Arc::new(fetch::Fetcher {
            throttle: Arc::new(fetch::Throttle::new(cfg.recovery_bytes_per_sec)),
            stats: recovery.clone(),
            list_page: cfg.copy_list_page,
            security: cfg.security.clone(),
            floor: Arc::new(fetch::Floor {
                dir: cfg.data_dir.clone(),
                min_free_bytes: cfg.min_free_bytes,
            }),
        });
        let mut ncfg = NodeConfig::new(node_id, cfg.data_dir.clone());
        ncfg.min_free_bytes = cfg.min_free_bytes;
        ncfg.stuck_after = Duration::from_millis(cfg.stuck_after_ms);
        let raft = RaftNode::start(
            ncfg,
            log,
            recovered,
            chunks.clone(),
            transport,
            fetcher,
            Arc::new(move |why: &tessera_raft::Fatal| {
                let _ = fatal_tx.send(Some(why.to_string()));
            }),
        )?;

        let space_dir = cfg.data_dir.clone();
        let space_chunks = chunks.clone();
        let stores: Arc<backup::StoreCache> = Default::default();
        let lazy = Arc::new(lazy::Lazy::new(
            node_id,
            cfg.managers.clone(),
            cfg.security.clone(),
            stores.clone(),
        ));
        // Applies stalled on blocks of a restored chunk not filled yet are filled outside
        // the log (see `lazy`).
        lazy.on_unfilled(&raft, chunks.clone());
        let shared = Arc::new(Shared {
            raft: raft.clone(),
            node_id,
            capacity: Box::new(move || {
                let total = tessera_engine::fsutil::fs_space(&space_dir)
                    .map(|(t, _)| t)
                    .unwrap_or(0);
                (total, space_chunks.used_bytes())
            }),
            chunks,
            recovery,
            descriptors,
            stores,
            lazy,
            moving: Default::default(),
            scrub,
            security: cfg.security.clone(),
            gate: gate::Gate::new(cfg.ingress.clone()),
        });
        if let Some(m) = &cfg.metrics_listen {
            tessera_metrics::serve(m).await?;
        }
        let mut tasks = vec![tokio::spawn(server::accept_loop(listener, shared.clone()))];
        tasks.push(tokio::spawn(scrub::run(shared.clone())));
        tasks.push(tokio::spawn(heartbeat_loop(
            cfg.clone(),
            shared,
            advertise,
            disk,
        )));
        tracing::info!(node = node_id, %addr, rack = %cfg.rack, "storage node serving");
        Ok(StorageNode {
            node_id,
            addr,
            raft,
            tasks,
            fatal: fatal_rx,
            _lock: lock,
        })
    }

    /// The id the manager gave this node.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The address the data port is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolves with the reason if the node hit a fatal storage error (a failed fsync):
    /// the process must stop, since the kernel may have dropped dirty pages.
    pub async fn fatal(&self) -> String {
        let mut rx = self.fatal.clone();
        loop {
            if let Some(msg) = rx.borrow().clone() {
                return msg;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops serving and the Raft poller (the log is left as a crash would leave it: safe).
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.raft.shutdown().await;
    }
}

/// The data directory's token (`disk.id`, see [`NodeRegistration::disk`]): read, or drawn
/// and written (synced) before the node first registers.
fn disk_token(dir: &Path) -> Result<u64, Error> {
    let path = dir.join("disk.id");
    let bad = |msg: String| Error::Identity {
        path: path.clone(),
        msg,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|d| *d != 0)
            .ok_or_else(|| bad(format!("not a disk token: {s:?}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = rand::random::<u64>().max(1);
            tessera_engine::fsutil::write_file_atomic(&path, token.to_string().as_bytes())?;
            Ok(token)
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

fn read_identity(path: &Path) -> Result<Option<u64>, Error> {
    match std::fs::read(path) {
        Ok(b) => NodeIdentity::decode(&b)
            .map(|i| Some(i.node_id))
            .map_err(|e| Error::Identity {
                path: path.to_path_buf(),
                msg: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Identity {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }),
    }
}

/// A request to the manager leader among `cfg.managers` (see
/// [`tessera_net::call_managers`]: hints followed, dead managers skipped, retried for a while).
async fn call_manager(
    cfg: &StorageConfig,
    req: &ManagerRequest,
) -> Result<ManagerReply, tessera_net::NetError> {
    tessera_net::call_managers(&cfg.security, &cfg.managers, req, Duration::from_secs(5)).await
}

async fn register(
    cfg: &StorageConfig,
    known_id: Option<u64>,
    disk: u64,
    advertise: &str,
    chunks: &ChunkStores,
) -> Result<u64, Error> {
    let (capacity, _) = tessera_engine::fsutil::fs_space(&cfg.data_dir)?;
    let req = ManagerRequest::RegisterNode(NodeRegistration {
        node_id: known_id,
        zone: cfg.zone.clone(),
        rack: cfg.rack.clone(),
        addr: advertise.to_string(),
        capacity_bytes: capacity,
        used_bytes: chunks.used_bytes(),
        disk,
    });
    let mut backoff = Duration::from_millis(100);
    loop {
        match call_manager(cfg, &req).await {
            Ok(ManagerReply::Registered { node_id }) => return Ok(node_id),
            Ok(other) => return Err(Error::Register(format!("unexpected reply {other:?}"))),
            Err(tessera_net::NetError::Control(e)) => return Err(Error::Register(e.to_string())),
            Err(e) => {
                tracing::warn!("manager not reachable yet ({e}); retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

pub(crate) async fn heartbeat_of(shared: &Shared) -> NodeHeartbeat {
    let (otx, orx) = oneshot::channel();
    shared.raft.status(Box::new(move |s| {
        let _ = otx.send(s);
    }));
    let groups = orx.await.unwrap_or_default();
    let (capacity_bytes, used_bytes) = (shared.capacity)();
    let open = shared.chunks.budget().stats();
    NodeHeartbeat {
        node_id: shared.node_id,
        capacity_bytes,
        used_bytes,
        groups,
        recovery: shared
            .recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        descriptors: Descriptors {
            limit: shared.descriptors,
            chunks_open: open.open as u64,
            chunks_budget: open.limit as u64,
            chunks_closed: open.closed,
            chunks_closing: open.closing as u64,
        },
        scrub: shared.scrub.stats(&shared.raft.watches()),
    }
}

async fn heartbeat_loop(cfg: StorageConfig, shared: Arc<Shared>, advertise: String, disk: u64) {
    let every = Duration::from_millis(cfg.heartbeat_ms.max(50));
    let mut crl_applied = 0;
    loop {
        let hb = heartbeat_of(&shared).await;
        match call_manager(&cfg, &ManagerRequest::Heartbeat(hb)).await {
            Ok(ManagerReply::HeartbeatAck {
                create_groups,
                remove_groups,
                crl_version,
            }) => {
                for spec in create_groups {
                    shared.raft.create_group(spec);
                }
                for g in remove_groups {
                    shared.raft.remove_group(g);
                }
                revocation::follow(&cfg, crl_version, &mut crl_applied).await;
            }
            Ok(other) => tracing::warn!("unexpected heartbeat reply {other:?}"),
            Err(tessera_net::NetError::Control(ControlError::NotFound(_))) => {
                // The manager forgot us (its state was rebuilt): announce ourselves again.
                let req = ManagerRequest::RegisterNode(NodeRegistration {
                    node_id: Some(shared.node_id),
                    zone: cfg.zone.clone(),
                    rack: cfg.rack.clone(),
                    addr: advertise.clone(),
                    capacity_bytes: (shared.capacity)().0,
                    used_bytes: (shared.capacity)().1,
                    disk,
                });
                if let Err(e) = call_manager(&cfg, &req).await {
                    tracing::warn!("re-registering: {e}");
                }
                continue;
            }
            Err(e) => tracing::debug!("heartbeat failed: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_data_directory_in_the_old_layout_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("chunks").join("0000000000000001"))
            .expect("old layout");
        let cfg = StorageConfig {
            zone: default_zone(),
            rack: "rack1".into(),
            data_dir: tmp.path().to_path_buf(),
            security: tessera_net::Security::insecure(),
            certs_dir: None,
            cert: None,
            listen: "127.0.0.1:0".into(),
            advertise: None,
            managers: vec!["127.0.0.1:1".into()],
            heartbeat_ms: default_heartbeat_ms(),
            min_free_bytes: default_min_free(),
            log_segment_bytes: default_segment(),
            metrics_listen: None,
            recovery_bytes_per_sec: default_recovery_rate(),
            max_open_chunks: None,
            copy_list_page: default_copy_list_page(),
            stuck_after_ms: default_stuck_after_ms(),
            scrub: ScrubConfig::default(),
            ingress: Default::default(),
        };
        match StorageNode::start(cfg).await {
            Err(Error::OldLayout(p)) => assert_eq!(p, tmp.path()),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("started on an old-layout data directory"),
        }
    }
}
