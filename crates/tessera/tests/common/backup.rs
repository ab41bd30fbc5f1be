//! Backups in the tier-2 harness: the object stores of a test cluster (a directory, or the
//! in-process S3 server `tessera_backup::s3_server::S3Server`),
//! the `manager.toml` lines naming them, and what the backup tests ask and check: backups,
//! copies, restores and stores through the CLI's JSON, a model of what a test wrote and
//! the region objects it must become, whole-volume checksums, and the keys a backup's
//! manifest reaches in a store.
//!
//! Reads a store only through `tessera_backup::Store` (listing is for tests, never for the
//! system's own decisions); reaches the cluster only through its CLI and client library.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::ops::{Deref, DerefMut};
use std::process::Output;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tessera_backup::manifest::{Root, Segment};
use tessera_backup::s3_server::S3Server;
use tessera_backup::{Store, keys, region};
use tessera_client::{Client, Volume};
use tessera_proto::control::{
    BackupInfo, BackupState, Hash, ManagerReply, ManagerRequest, REGION_BYTES, StoreInfo,
    StoreKind, StoreSpec, VolumeInfo,
};

use super::cluster::{Cluster, Opts};

pub const MIB: u64 = 1 << 20;
pub const BLOCK: u64 = 4096;
/// How long a backup, copy, restore or collection may take on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(120);

/// Where a test store keeps its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    S3,
}

/// One store of a test cluster, and the temporary directory holding its objects.
pub struct TestStore {
    pub spec: StoreSpec,
    /// The S3 server, for an S3 store (it serves on a runtime of its own, so the tests'
    /// blocking CLI calls never stall it).
    pub s3: Option<S3Server>,
    pub root: tempfile::TempDir,
}

impl TestStore {
    /// A fresh, empty store named `name` in `zone`.
    pub async fn start(kind: Kind, name: &str, zone: &str) -> TestStore {
        let root = tempfile::tempdir().expect("tempdir");
        let (spec, s3) = match kind {
            Kind::Dir => {
                let path = root.path().join("store").display().to_string();
                let spec = StoreSpec {
                    name: name.into(),
                    zone: zone.into(),
                    kind: StoreKind::Dir { path },
                };
                (spec, None)
            }
            Kind::S3 => {
                let server = S3Server::start(root.path(), "tessera").await;
                (server.spec(name, zone), Some(server))
            }
        };
        TestStore { spec, s3, root }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn kind(&self) -> Kind {
        match self.s3 {
            Some(_) => Kind::S3,
            None => Kind::Dir,
        }
    }

    /// The S3 server of an S3 store.
    pub fn s3(&self) -> &S3Server {
        self.s3.as_ref().expect("an S3 store")
    }

    /// Its `[[stores]]` table for manager.toml.
    pub fn toml(&self) -> String {
        store_toml(&self.spec)
    }

    /// A client of it, as the nodes and managers open it.
    pub fn open(&self) -> Store {
        Store::open(&self.spec).unwrap_or_else(|e| panic!("open store {}: {e}", self.name()))
    }

    /// Every key of its objects, segments and roots.
    pub async fn keys(&self) -> BTreeSet<String> {
        let store = self.open();
        let mut out = BTreeSet::new();
        for prefix in ["objects/", "segments/", "roots/"] {
            let listed = store
                .list(prefix)
                .await
                .unwrap_or_else(|e| panic!("list {prefix} of {}: {e}", self.name()));
            out.extend(listed);
        }
        out
    }
}

/// The `[[stores]]` table of `spec`, as an operator writes it in manager.toml.
pub fn store_toml(spec: &StoreSpec) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut t = format!(
        "[[stores]]\nname = {}\nzone = {}\n",
        q(&spec.name),
        q(&spec.zone)
    );
    match &spec.kind {
        StoreKind::Dir { path } => t.push_str(&format!("path = {}\n", q(path))),
        StoreKind::S3 {
            endpoint,
            bucket,
            region,
            access_key_id,
            secret_access_key,
            prefix,
        } => t.push_str(&format!(
            "s3 = {{ endpoint = {}, bucket = {}, region = {}, access_key_id = {}, \
             secret_access_key = {}, prefix = {} }}\n",
            q(endpoint),
            q(bucket),
            q(if region.is_empty() {
                "us-east-1"
            } else {
                region
            }),
            q(access_key_id),
            q(&secret_access_key.0),
            q(prefix)
        )),
    }
    t
}

/// A cluster whose managers know `stores` (the first is the default). Processes are killed
/// (the `Cluster` is dropped) before the stores go.
pub struct BackupCluster {
    pub c: Cluster,
    pub stores: Vec<TestStore>,
}

impl BackupCluster {
    /// `opts.manager_extra` holds top-level manager.toml lines (rates, grace period); the
    /// stores' tables are appended after them.
    pub async fn start(opts: Opts, stores: Vec<TestStore>) -> BackupCluster {
        let mut extra = opts.manager_extra.clone();
        if !extra.is_empty() && !extra.ends_with('\n') {
            extra.push('\n');
        }
        for s in &stores {
            extra.push_str(&s.toml());
        }
        let c = Cluster::start_ready(Opts {
            manager_extra: extra,
            ..opts
        })
        .await;
        BackupCluster { c, stores }
    }

    pub fn store(&self, name: &str) -> &TestStore {
        self.stores
            .iter()
            .find(|s| s.name() == name)
            .unwrap_or_else(|| panic!("no store {name}"))
    }
}

impl Deref for BackupCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.c
    }
}

impl DerefMut for BackupCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.c
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The CLI, off the runtime's worker (it blocks until the command ends).
pub fn cli(c: &Cluster, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| c.cli(args))
}

/// [`cli`] of a command that must succeed.
pub fn cli_ok(c: &Cluster, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| c.cli_ok(args))
}

/// A command that must fail with one of `codes`; its stderr.
pub fn cli_fails(c: &Cluster, args: &[&str], codes: &[i32]) -> String {
    let out = cli(c, args);
    let code = out.status.code();
    assert!(
        code.is_some_and(|x| codes.contains(&x)),
        "{args:?}: expected exit {codes:?}: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    stderr
}

/// `--output json ARGS`, decoded; a one-element list is taken as its element (the CLI
/// prints `info` answers either way).
pub fn cli_json<T: DeserializeOwned>(c: &Cluster, args: &[&str]) -> T {
    let out = cli_ok(c, &[&["--output", "json"], args].concat());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", text(&out)));
    let v = match v {
        serde_json::Value::Array(mut a) if a.len() == 1 => a.remove(0),
        v => v,
    };
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{args:?}: {e}: {v:#}"))
}

pub fn backup_info(c: &Cluster, id: u64) -> BackupInfo {
    cli_json(c, &["backup", "info", &id.to_string()])
}

pub fn backup_list(c: &Cluster, volume: Option<&str>) -> Vec<BackupInfo> {
    let mut args = vec!["--output", "json", "backup", "list"];
    args.extend(volume);
    let out = cli_ok(c, &args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

pub fn store_list(c: &Cluster) -> Vec<StoreInfo> {
    let out = cli_ok(c, &["--output", "json", "store", "list"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

pub fn volume_info(c: &Cluster, name: &str) -> VolumeInfo {
    cli_json(c, &["volume", "info", name])
}

/// `backup create SPEC [--store STORE] --no-wait`: the new record (`Uploading`).
pub fn backup_start(c: &Cluster, spec: &str, store: Option<&str>) -> BackupInfo {
    let mut args = vec!["backup", "create", spec, "--no-wait"];
    if let Some(s) = store {
        args.extend(["--store", s]);
    }
    let b: BackupInfo = cli_json(c, &args);
    let (volume, snapshot) = spec.split_once('@').expect("VOL@SNAP");
    assert_eq!((b.volume.as_str(), b.snapshot.as_str()), (volume, snapshot));
    b
}

/// Polls `backup info ID` until `done` holds (panics after [`WAIT`] with the last answer).
pub async fn wait_backup_until(
    c: &Cluster,
    id: u64,
    what: &str,
    done: impl Fn(&BackupInfo) -> bool,
) -> BackupInfo {
    let deadline = Instant::now() + WAIT;
    loop {
        let b = backup_info(c, id);
        if done(&b) {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "backup {id}: {what} not reached in {WAIT:?}: {b:#?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits for backup `id` to leave `Uploading`; it must be `Ready`, with a root.
pub async fn wait_backup(c: &Cluster, id: u64) -> BackupInfo {
    let b = wait_backup_until(c, id, "the end of the upload", |b| {
        b.state != BackupState::Uploading
    })
    .await;
    assert_eq!(b.state, BackupState::Ready, "{b:#?}\n{}", c.logs());
    assert!(b.root.is_some(), "a ready backup names its root: {b:#?}");
    assert_eq!(b.chunks_done, b.chunks_total, "{b:#?}");
    b
}

/// A backup of `spec`, waited for until ready.
pub async fn backup(c: &Cluster, spec: &str, store: Option<&str>) -> BackupInfo {
    let b = backup_start(c, spec, store);
    wait_backup(c, b.id).await
}

/// `volume create NAME --from-backup ID [--store STORE]` (without `--wait`): the volume,
/// its restore under way or done.
pub fn restore_start(c: &Cluster, name: &str, id: u64, store: Option<&str>) -> VolumeInfo {
    let id = id.to_string();
    let mut args = vec!["volume", "create", name, "--from-backup", &id];
    if let Some(s) = store {
        args.extend(["--store", s]);
    }
    cli_json(c, &args)
}

/// The same with `--wait`: once it returns the volume is filled (no restore shown).
pub fn restore(c: &Cluster, name: &str, id: u64, store: Option<&str>) -> VolumeInfo {
    let id = id.to_string();
    let mut args = vec!["volume", "create", name, "--from-backup", &id, "--wait"];
    if let Some(s) = store {
        args.extend(["--store", s]);
    }
    cli_ok(c, &args);
    let v = volume_info(c, name);
    assert!(
        v.restore.is_none(),
        "--wait returned before the fill: {v:#?}"
    );
    v
}

/// Polls `volume info NAME` until its restore is done.
pub async fn wait_restored(c: &Cluster, name: &str) -> VolumeInfo {
    wait_restored_within(c, name, WAIT).await
}

/// [`wait_restored`], for up to `limit` (a fill paced on purpose).
pub async fn wait_restored_within(c: &Cluster, name: &str, limit: Duration) -> VolumeInfo {
    let deadline = Instant::now() + limit;
    loop {
        let v = volume_info(c, name);
        if v.restore.is_none() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: not restored in {limit:?}: {:#?}\n{}",
            v.restore,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A hash of the whole of `name` (a volume, or `VOL@SNAP`), read through the client
/// library in 4 MiB reads (as [`Image::checksum`] hashes its bytes).
pub async fn checksum(client: &Client, name: &str) -> u64 {
    let v = client
        .open_read_only(name)
        .await
        .unwrap_or_else(|e| panic!("open {name}: {e}"));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut off = 0;
    while off < v.size() {
        let n = (4 * MIB).min(v.size() - off);
        let data = v
            .read(off, n)
            .await
            .unwrap_or_else(|e| panic!("read {name} at {off}: {e}"));
        h.write(&data);
        off += n;
    }
    h.finish()
}

/// What a test wrote to one volume, byte for byte.
pub struct Image(pub Vec<u8>);

impl Image {
    pub fn new(size: u64) -> Image {
        Image(vec![0; size as usize])
    }

    /// 4 KiB unique to `(salt, index)`, never all zero.
    pub fn block(salt: u32, index: u64) -> Vec<u8> {
        let word = (u64::from(salt) << 40) | index;
        let mut b = vec![0u8; BLOCK as usize];
        for w in b.chunks_exact_mut(16) {
            w[..8].copy_from_slice(&word.to_le_bytes());
            w[8..].copy_from_slice(&(!word).to_le_bytes());
        }
        b
    }

    /// Writes blocks unique to `salt` over `off..off + len` (4 KiB aligned), through `vol`
    /// and into the model.
    pub async fn write(&mut self, vol: &Volume, off: u64, len: u64, salt: u32) {
        assert!(off.is_multiple_of(BLOCK) && len.is_multiple_of(BLOCK));
        let mut at = off;
        while at < off + len {
            let n = MIB.min(off + len - at);
            let data: Vec<u8> = (at / BLOCK..(at + n) / BLOCK)
                .flat_map(|i| Image::block(salt, i))
                .collect();
            self.0[at as usize..(at + n) as usize].copy_from_slice(&data);
            vol.write(at, Bytes::from(data))
                .await
                .unwrap_or_else(|e| panic!("write at {at}: {e}"));
            at += n;
        }
        vol.flush().await.expect("flush");
    }

    /// Writes zeroes over `off..off + len`, through `vol` and into the model.
    pub async fn zero(&mut self, vol: &Volume, off: u64, len: u64) {
        self.0[off as usize..(off + len) as usize].fill(0);
        vol.write_zeroes(off, len)
            .await
            .unwrap_or_else(|e| panic!("write zeroes at {off}: {e}"));
        vol.flush().await.expect("flush");
    }

    /// Writes `data` at `off`, any alignment (a storage node completes a partial block from
    /// what the block holds), through `vol` and into the model.
    pub async fn write_at(&mut self, vol: &Volume, off: u64, data: Vec<u8>) {
        self.0[off as usize..off as usize + data.len()].copy_from_slice(&data);
        vol.write(off, Bytes::from(data))
            .await
            .unwrap_or_else(|e| panic!("write at {off}: {e}"));
    }

    /// Discards (trims) `off..off + len`, any alignment, through `vol` and into the model.
    pub async fn discard(&mut self, vol: &Volume, off: u64, len: u64) {
        self.0[off as usize..(off + len) as usize].fill(0);
        vol.discard(off, len)
            .await
            .unwrap_or_else(|e| panic!("discard at {off}: {e}"));
    }

    /// Reads `off..off + len` through `vol`; it must hold the model's bytes (`what` says
    /// which read failed, with the first byte that differs).
    pub async fn check(&self, vol: &Volume, off: u64, len: u64, what: &str) {
        let got = vol
            .read(off, len)
            .await
            .unwrap_or_else(|e| panic!("{what}: read at {off}: {e}"));
        let want = &self.0[off as usize..(off + len) as usize];
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            panic!(
                "{what}: byte {} of the volume reads {:#04x}, expected {:#04x}",
                off + i as u64,
                got[i],
                want[i]
            );
        }
        assert_eq!(got.len(), want.len(), "{what}: a short read");
    }

    /// The hash [`checksum`] computes of a volume holding these bytes.
    pub fn checksum(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for piece in self.0.chunks(4 * MIB as usize) {
            h.write(piece);
        }
        h.finish()
    }

    /// The object each region (1 MiB of the volume, for chunk sizes that are whole MiB)
    /// must be stored as, by the region's index in the volume; regions of zeroes have none.
    pub fn objects(&self) -> BTreeMap<u64, Hash> {
        self.0
            .chunks(REGION_BYTES as usize)
            .enumerate()
            .filter_map(|(i, r)| Some((i as u64, region::encode(r)?.hash)))
            .collect()
    }
}

/// The keys of `objects`.
pub fn object_keys<'a>(objects: impl IntoIterator<Item = &'a Hash>) -> BTreeSet<String> {
    objects.into_iter().map(keys::object).collect()
}

/// A backup's manifest read back from `store` (verified): its root and its segments.
pub async fn manifest(store: &Store, root: &Hash) -> (Root, Vec<Segment>) {
    let key = keys::root(root);
    let bytes = store
        .get(&key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"));
    let r = Root::decode(store.name(), root, &bytes).unwrap_or_else(|e| panic!("{key}: {e}"));
    let mut segs = Vec::new();
    for (chunk, seg) in &r.segments {
        let key = keys::segment(seg);
        let bytes = store
            .get(&key)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        let s = Segment::decode(store.name(), seg, &bytes).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(s.chunk, *chunk, "{key} is of another chunk");
        segs.push(s);
    }
    (r, segs)
}

/// Every key a backup's root reaches: the root, its segments, their objects.
pub async fn reachable(store: &Store, root: &Hash) -> BTreeSet<String> {
    let (r, segs) = manifest(store, root).await;
    let mut out = BTreeSet::from([keys::root(root)]);
    out.extend(r.segments.iter().map(|(_, s)| keys::segment(s)));
    for s in &segs {
        out.extend(s.regions.iter().map(|(_, o)| keys::object(o)));
    }
    out
}

/// A backup's objects by the region's index in the volume (chunk sizes of whole MiB).
pub async fn objects_by_region(store: &Store, root: &Hash) -> BTreeMap<u64, Hash> {
    let (r, segs) = manifest(store, root).await;
    let per_chunk = r.chunk_size / r.region_bytes;
    segs.iter()
        .flat_map(|s| {
            s.regions
                .iter()
                .map(move |(region, o)| (s.chunk * per_chunk + u64::from(*region), *o))
        })
        .collect()
}

/// The harness index of the node the manager believes leads the group of `chunk` of
/// volume `name` (the chunk must be mapped).
pub async fn leader_of_chunk(c: &Cluster, name: &str, chunk: u64) -> usize {
    let client = c.client().await;
    let volume_id = client.volume_info(name).await.expect("volume info").id;
    let req = ManagerRequest::Route {
        volume_id,
        chunk,
        allocate: false,
        epoch: 0,
    };
    let route = match client.call(&req).await.expect("route") {
        ManagerReply::Route(Some(r)) => r,
        other => panic!("{name} chunk {chunk} has no route: {other:?}"),
    };
    let leader = route.leader.expect("a known leader");
    let status = c.status().await.expect("status");
    c.node_index(&status, leader)
}
