//! Manager configuration, and its `manager.toml` form.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::stores::StoreConfig;

/// Default RPC address of a manager.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";

/// A manager's settings, validated by [`ManagerConfig::validate`] before it starts; read
/// from [`ManagerConfigFile`] or built in code (`tessera dev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// `host:port` to serve the control plane on (port 0: any free port).
    pub listen: String,
    /// Holds `manager.redb`; created if missing.
    pub data_dir: PathBuf,
    /// Replicas per group, each on its own rack.
    pub replicas: usize,
    /// Replicas every node should host at least. At scale the design aims at ~100 per disk;
    /// small clusters want few groups.
    pub groups_per_node: u32,
    /// No heartbeat for this long: the node is `suspect`.
    pub suspect_after: Duration,
    /// No heartbeat for this long: the node is `down` (no new groups, not a leader).
    pub down_after: Duration,
    /// Period of the reconcile pass (re-replication, draining, rebalancing, leaders).
    pub reconcile_every: Duration,
    /// Membership changes in flight in the whole cluster.
    pub max_moves: usize,
    /// Membership changes in flight adding a replica to one node.
    pub max_moves_per_node: usize,
    /// This manager's id in the managers' Raft group.
    pub id: u64,
    /// Every manager of the Raft group, this one included, with the address it serves on
    /// (clients are redirected there, and managers send each other Raft messages there).
    /// Empty: a group of this manager alone. Only founds the group: once it exists, its
    /// membership changes through the log (`tessera cluster add-manager`), and `peers`
    /// only supplies addresses.
    pub peers: Vec<ManagerPeer>,
    /// Start as a new member of an existing group instead of founding one: wait for the
    /// leader to add this manager and send it a snapshot. `peers` must list at least one
    /// current member to reply to. Without it, a manager with an empty database asks its
    /// peers first and refuses to start if one belongs to a group this manager is not a
    /// voter of (a forgotten `join` would found a second cluster); a peer that does not
    /// answer cannot be asked.
    pub join: bool,
    /// Raft log entries kept behind the applied index for managers that lag; the log is
    /// compacted to that once it holds twice as many.
    pub log_keep: u64,
    /// How fast a flatten copies a clone's parent data into the clone, in bytes per second
    /// (the whole cluster's flattens together, as the leading manager paces them).
    pub flatten_bytes_per_sec: u64,
    /// Object stores for backups (`[[stores]]`).
    pub stores: Vec<StoreConfig>,
    /// The store backups go to when none is named (absent: the first).
    pub default_store: Option<String>,
    /// This manager's zone: a restore reads a copy in a store of this zone if there is one.
    pub zone: String,
    /// How fast backups read the groups, in bytes per second (every upload together).
    pub backup_bytes_per_sec: u64,
    /// How fast restores fill volumes, in bytes per second (every restore together).
    pub restore_bytes_per_sec: u64,
    /// Chunk requests in flight per backup, copy or restore job.
    pub backup_chunks_in_flight: u32,
    /// Object uploads or fetches in flight per chunk request.
    pub backup_window: u32,
    /// How long a store's key stays unreferenced before the collector deletes it.
    pub gc_grace: Duration,
    /// How this manager accepts connections and dials managers and storage nodes: mutual
    /// TLS as its manager certificate, or plain TCP (`--insecure`). Loaded by the caller
    /// (from [`ManagerConfigFile::certs_dir`]).
    pub security: tessera_net::Security,
    /// The API port's connection caps, deadlines and memory budget (`[ingress]`).
    pub ingress: tessera_net::IngressLimits,
}

/// Default [`ManagerConfig::backup_bytes_per_sec`]: 256 MiB/s.
pub const DEFAULT_BACKUP_BYTES_PER_SEC: u64 = 256 << 20;
/// Default [`ManagerConfig::restore_bytes_per_sec`]: 128 MiB/s.
pub const DEFAULT_RESTORE_BYTES_PER_SEC: u64 = 128 << 20;

/// Default [`ManagerConfig::flatten_bytes_per_sec`]: 64 MiB/s.
pub const DEFAULT_FLATTEN_BYTES_PER_SEC: u64 = 64 << 20;

/// One member of the managers' Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerPeer {
    /// Its id in the managers' Raft group (at least 1).
    pub id: u64,
    /// `host:port` of its `listen` address, as reachable by clients and the other managers.
    pub addr: String,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            listen: DEFAULT_LISTEN.to_string(),
            data_dir: PathBuf::from("data/manager"),
            replicas: 3,
            groups_per_node: 8,
            suspect_after: Duration::from_secs(5),
            down_after: Duration::from_secs(30),
            reconcile_every: Duration::from_secs(1),
            max_moves: 8,
            max_moves_per_node: 2,
            id: 1,
            peers: Vec::new(),
            join: false,
            log_keep: 2000,
            flatten_bytes_per_sec: DEFAULT_FLATTEN_BYTES_PER_SEC,
            stores: Vec::new(),
            default_store: None,
            zone: String::new(),
            backup_bytes_per_sec: DEFAULT_BACKUP_BYTES_PER_SEC,
            restore_bytes_per_sec: DEFAULT_RESTORE_BYTES_PER_SEC,
            backup_chunks_in_flight: 8,
            backup_window: 8,
            gc_grace: Duration::from_secs(600),
            security: tessera_net::Security::insecure(),
            ingress: Default::default(),
        }
    }
}

impl ManagerConfig {
    pub(crate) fn limits(&self) -> crate::reconcile::Limits {
        crate::reconcile::Limits {
            max_moves: self.max_moves,
            max_moves_per_node: self.max_moves_per_node,
        }
    }

    /// Checks the settings agree with each other; [`Error::Config`] names the first that
    /// does not.
    pub fn validate(&self) -> Result<(), Error> {
        if self.replicas == 0 {
            return Err(Error::Config("replicas must be at least 1".into()));
        }
        if self.groups_per_node == 0 {
            return Err(Error::Config("groups_per_node must be at least 1".into()));
        }
        if self.suspect_after.is_zero() || self.suspect_after > self.down_after {
            return Err(Error::Config(format!(
                "suspect_after ({:?}) must be positive and at most down_after ({:?})",
                self.suspect_after, self.down_after
            )));
        }
        if self.reconcile_every.is_zero() || self.max_moves == 0 || self.max_moves_per_node == 0 {
            return Err(Error::Config(
                "reconcile_ms, max_moves and max_moves_per_node must be positive".into(),
            ));
        }
        if self.flatten_bytes_per_sec == 0 {
            return Err(Error::Config(
                "flatten_bytes_per_sec must be positive".into(),
            ));
        }
        if self.backup_bytes_per_sec == 0
            || self.restore_bytes_per_sec == 0
            || self.backup_chunks_in_flight == 0
            || self.backup_window == 0
        {
            return Err(Error::Config(
                "backup_bytes_per_sec, restore_bytes_per_sec, backup_chunks_in_flight and \
                 backup_window must be positive"
                    .into(),
            ));
        }
        crate::stores::validate(&self.stores, self.default_store.as_deref())?;
        if self.log_keep == 0 {
            return Err(Error::Config("raft_log_keep must be at least 1".into()));
        }
        if self.join && !self.peers.iter().any(|p| p.id != self.id) {
            return Err(Error::Config(
                "join needs peers listing at least one current manager".into(),
            ));
        }
        if self.id == 0 {
            return Err(Error::Config("id must be at least 1".into()));
        }
        if !self.peers.is_empty() && !self.peers.iter().any(|p| p.id == self.id) {
            return Err(Error::Config(format!(
                "peers must list this manager (id {}) too",
                self.id
            )));
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() || ids.first() == Some(&0) {
            return Err(Error::Config(
                "peer ids must be distinct and at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The members of the managers' Raft group: `peers`, or this manager alone.
    pub fn members(&self) -> Vec<ManagerPeer> {
        if self.peers.is_empty() {
            vec![ManagerPeer {
                id: self.id,
                addr: self.listen.clone(),
            }]
        } else {
            self.peers.clone()
        }
    }
}

/// `manager.toml`: every key optional, defaults as in [`ManagerConfig::default`]; unknown
/// keys are refused so a typo is not silently ignored.
///
/// ```toml
/// listen = "0.0.0.0:7400"
/// data_dir = "/var/lib/tessera/manager"
/// groups_per_node = 100
/// suspect_after_ms = 5000
/// down_after_ms = 30000
/// reconcile_ms = 1000
/// max_moves = 8
/// max_moves_per_node = 2
/// # Highly available: three managers, each with its own id (omit both for one manager).
/// id = 1
/// peers = [
///   { id = 1, addr = "10.0.0.1:7400" },
///   { id = 2, addr = "10.0.0.2:7400" },
///   { id = 3, addr = "10.0.0.3:7400" },
/// ]
/// # A manager added to a running group: started first, then added with
/// # `tessera cluster add-manager 3 10.0.0.3:7400`; it catches up from a snapshot.
/// # join = true
/// # Raft log entries kept behind the applied index (compacted at twice this).
/// raft_log_keep = 2000
/// # How fast clones are flattened (bytes per second, the whole cluster together).
/// flatten_bytes_per_sec = 67108864
/// # Backups: where they go, how fast they move, when unreferenced objects are deleted.
/// default_store = "local"            # else the first store
/// zone = "zone1"                     # restores prefer a store of this zone
/// backup_bytes_per_sec = 268435456
/// restore_bytes_per_sec = 134217728
/// backup_chunks_in_flight = 8
/// backup_window = 8
/// gc_grace_secs = 600
/// [[stores]]
/// name = "local"
/// zone = "zone1"
/// path = "/var/lib/tessera/backups"
/// [[stores]]
/// name = "s3a"
/// zone = "zone2"
/// s3 = { endpoint = "http://127.0.0.1:9000", bucket = "tessera", region = "us-east-1", access_key_id = "AK", secret_access_key = "SK", prefix = "" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfigFile {
    /// The certificates directory (`tessera cert`): `ca.crt` and this manager's
    /// `manager-ID.crt` and `.key`. Absent: the manager starts only with `--insecure`.
    pub certs_dir: Option<PathBuf>,
    /// Where `tessera manager` serves `GET /metrics` (Prometheus text); off if absent.
    pub metrics_listen: Option<String>,
    /// [`ManagerConfig::listen`].
    pub listen: String,
    /// [`ManagerConfig::data_dir`].
    pub data_dir: PathBuf,
    /// [`ManagerConfig::replicas`].
    pub replicas: usize,
    /// [`ManagerConfig::groups_per_node`].
    pub groups_per_node: u32,
    /// [`ManagerConfig::suspect_after`], in milliseconds.
    pub suspect_after_ms: u64,
    /// [`ManagerConfig::down_after`], in milliseconds.
    pub down_after_ms: u64,
    /// [`ManagerConfig::reconcile_every`], in milliseconds.
    pub reconcile_ms: u64,
    /// [`ManagerConfig::max_moves`].
    pub max_moves: usize,
    /// [`ManagerConfig::max_moves_per_node`].
    pub max_moves_per_node: usize,
    /// [`ManagerConfig::id`].
    pub id: u64,
    /// [`ManagerConfig::peers`].
    pub peers: Vec<ManagerPeer>,
    /// [`ManagerConfig::join`].
    pub join: bool,
    /// [`ManagerConfig::log_keep`].
    pub raft_log_keep: u64,
    /// [`ManagerConfig::flatten_bytes_per_sec`].
    pub flatten_bytes_per_sec: u64,
    /// [`ManagerConfig::stores`].
    pub stores: Vec<StoreConfig>,
    /// [`ManagerConfig::default_store`].
    pub default_store: Option<String>,
    /// [`ManagerConfig::zone`].
    pub zone: String,
    /// [`ManagerConfig::backup_bytes_per_sec`].
    pub backup_bytes_per_sec: u64,
    /// [`ManagerConfig::restore_bytes_per_sec`].
    pub restore_bytes_per_sec: u64,
    /// [`ManagerConfig::backup_chunks_in_flight`].
    pub backup_chunks_in_flight: u32,
    /// [`ManagerConfig::backup_window`].
    pub backup_window: u32,
    /// [`ManagerConfig::gc_grace`], in seconds.
    pub gc_grace_secs: u64,
    /// [`ManagerConfig::ingress`].
    pub ingress: tessera_net::IngressLimits,
}

impl Default for ManagerConfigFile {
    fn default() -> Self {
        ManagerConfig::default().into()
    }
}

impl From<ManagerConfig> for ManagerConfigFile {
    fn from(c: ManagerConfig) -> Self {
        ManagerConfigFile {
            certs_dir: None,
            metrics_listen: None,
            listen: c.listen,
            data_dir: c.data_dir,
            replicas: c.replicas,
            groups_per_node: c.groups_per_node,
            suspect_after_ms: u64::try_from(c.suspect_after.as_millis()).unwrap_or(u64::MAX),
            down_after_ms: u64::try_from(c.down_after.as_millis()).unwrap_or(u64::MAX),
            reconcile_ms: u64::try_from(c.reconcile_every.as_millis()).unwrap_or(u64::MAX),
            max_moves: c.max_moves,
            max_moves_per_node: c.max_moves_per_node,
            id: c.id,
            peers: c.peers,
            join: c.join,
            raft_log_keep: c.log_keep,
            flatten_bytes_per_sec: c.flatten_bytes_per_sec,
            stores: c.stores,
            default_store: c.default_store,
            zone: c.zone,
            backup_bytes_per_sec: c.backup_bytes_per_sec,
            restore_bytes_per_sec: c.restore_bytes_per_sec,
            backup_chunks_in_flight: c.backup_chunks_in_flight,
            backup_window: c.backup_window,
            gc_grace_secs: c.gc_grace.as_secs(),
            ingress: c.ingress,
        }
    }
}

impl From<ManagerConfigFile> for ManagerConfig {
    fn from(f: ManagerConfigFile) -> Self {
        ManagerConfig {
            listen: f.listen,
            data_dir: f.data_dir,
            replicas: f.replicas,
            groups_per_node: f.groups_per_node,
            suspect_after: Duration::from_millis(f.suspect_after_ms),
            down_after: Duration::from_millis(f.down_after_ms),
            reconcile_every: Duration::from_millis(f.reconcile_ms),
            max_moves: f.max_moves,
            max_moves_per_node: f.max_moves_per_node,
            id: f.id,
            peers: f.peers,
            join: f.join,
            log_keep: f.raft_log_keep,
            flatten_bytes_per_sec: f.flatten_bytes_per_sec,
            stores: f.stores,
            default_store: f.default_store,
            zone: f.zone,
            backup_bytes_per_sec: f.backup_bytes_per_sec,
            restore_bytes_per_sec: f.restore_bytes_per_sec,
            backup_chunks_in_flight: f.backup_chunks_in_flight,
            backup_window: f.backup_window,
            gc_grace: Duration::from_secs(f.gc_grace_secs),
            security: tessera_net::Security::insecure(),
            ingress: f.ingress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_defaults_match_config_defaults() {
        let f: ManagerConfigFile = serde_json::from_str(r#"{"groups_per_node": 100}"#).unwrap();
        let c = ManagerConfig::from(f);
        assert_eq!(c.groups_per_node, 100);
        assert_eq!(c.suspect_after, Duration::from_secs(5));
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.flatten_bytes_per_sec, 64 << 20);
        assert!(c.validate().is_ok());
        let f: ManagerConfigFile = toml::from_str("flatten_bytes_per_sec = 1048576\n").unwrap();
        assert_eq!(ManagerConfig::from(f).flatten_bytes_per_sec, 1 << 20);
        assert!(serde_json::from_str::<ManagerConfigFile>(r#"{"listn": "x"}"#).is_err());
    }

    #[test]
    fn peers_parse_from_toml_and_must_include_this_manager() {
        let f: ManagerConfigFile = toml::from_str(
            "id = 2\npeers = [{ id = 1, addr = \"a:1\" }, { id = 2, addr = \"b:1\" }, { id = 3, addr = \"c:1\" }]\n",
        )
        .unwrap();
        let c = ManagerConfig::from(f);
        assert_eq!((c.id, c.members().len()), (2, 3));
        assert!(c.validate().is_ok());
        let stranger = ManagerConfig { id: 4, ..c.clone() };
        assert!(stranger.validate().is_err());
        let alone = ManagerConfig::default();
        assert_eq!(
            alone.members(),
            vec![ManagerPeer {
                id: 1,
                addr: DEFAULT_LISTEN.into()
            }]
        );
    }

    #[test]
    fn stores_and_backup_settings_parse_from_toml_with_the_design_defaults() {
        let c = ManagerConfig::default();
        assert_eq!(
            (
                c.backup_bytes_per_sec,
                c.restore_bytes_per_sec,
                c.backup_chunks_in_flight,
                c.backup_window,
                c.gc_grace
            ),
            (256 << 20, 128 << 20, 8, 8, Duration::from_secs(600))
        );
        let f: ManagerConfigFile = toml::from_str(
            r#"
default_store = "s3a"
zone = "zone1"
gc_grace_secs = 5
[[stores]]
name = "local"
zone = "zone1"
path = "/var/lib/tessera/backups"
[[stores]]
name = "s3a"
zone = "zone2"
s3 = { endpoint = "http://127.0.0.1:9000", bucket = "tessera", region = "us-east-1", access_key_id = "AK", secret_access_key = "SK", prefix = "" }
"#,
        )
        .unwrap();
        let c = ManagerConfig::from(f);
        c.validate().unwrap();
        assert_eq!(c.stores.len(), 2);
        assert_eq!(c.gc_grace, Duration::from_secs(5));
        assert_eq!(c.default_store.as_deref(), Some("s3a"));
        let bad = ManagerConfig {
            default_store: Some("nope".into()),
            ..c.clone()
        };
        assert!(bad.validate().is_err());
        assert!(
            toml::from_str::<ManagerConfigFile>(
                "[[stores]]
name = \"a\"
pth = \"/x\"
"
            )
            .is_err()
        );
    }

    #[test]
    fn nonsense_is_refused() {
        let bad = ManagerConfig {
            suspect_after: Duration::from_secs(60),
            ..ManagerConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = ManagerConfig {
            replicas: 0,
            ..ManagerConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = ManagerConfig {
            max_moves_per_node: 0,
            ..ManagerConfig::default()
        };
        assert!(bad.validate().is_err());
        let f: ManagerConfigFile =
            serde_json::from_str(r#"{"reconcile_ms": 250, "max_moves": 3}"#).unwrap();
        let c = ManagerConfig::from(f);
        assert_eq!(c.reconcile_every, Duration::from_millis(250));
        assert_eq!((c.max_moves, c.max_moves_per_node), (3, 2));
    }
}
