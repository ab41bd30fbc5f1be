//! What the leading manager's backup loops share (`backup_loop`, `gc_loop`, `copy_loop`,
//! `restore_loop`), and their start: the stores they use, calling a group's leader
//! ([`call_leader`]: `NotLeader` hints followed at once), committing under the service lock
//! ([`locked`], [`commit`]: only while this manager leads), one task per job ([`Running`]),
//! reading a segment back verified ([`read_segment`]), and merging a chunk's answer into
//! its base's segment ([`merge`]).
//!
//! Must never hold the service lock across a call to a node or a store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tessera_backup::manifest::{FORMAT, MAX_MANIFEST_BYTES, Segment};
use tessera_backup::{Error as StoreError, Store, keys};
use tessera_net::NetError;
use tessera_proto::control::{
    BackupState, ChunkUpload, ControlError, Hash, REGION_BYTES, RegionRef, StorageReply,
    StorageRequest, StoreSpec,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::group_calls::GroupJob;
use crate::service::{Now, Service};
use crate::state::{BackupStats, ChunkSegment, GcKey, Mutation};

pub(crate) type Shared = Arc<Mutex<Service>>;
/// The stores this manager opened, by name: the spec (sent to storage nodes) and a client.
pub(crate) type Stores = Arc<BTreeMap<String, (StoreSpec, Store)>>;

/// How often the loops look for work.
pub(crate) const TICK: Duration = Duration::from_secs(2);
/// A chunk failing this long in a row fails its backup (shorter in tests).
pub const GIVE_UP: Duration = Duration::from_secs(if cfg!(test) { 5 } else { 60 });
/// Back-off between attempts of a failing chunk (uploads and copies).
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Chunks recorded in one `BackupChunks`, and how long a finished chunk may wait for one.
pub(crate) const BATCH: usize = 64;
pub(crate) const BATCH_WAIT: Duration = Duration::from_millis(500);
/// `BackupError` is recorded at most this often per backup or copy.
pub(crate) const ERROR_EVERY: Duration = Duration::from_secs(5);

/// The settings the backup loops share.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Chunk requests one job has in flight at most.
    pub chunks_in_flight: usize,
    pub window: u32,
    /// Chunk requests in flight manager-wide: shared by every backup and copy (the restore
    /// loop makes its own), so N jobs at once do not multiply the load on the nodes. A
    /// permit is held from before a chunk is paced until its answer is in.
    pub slots: Arc<Semaphore>,
    /// How the jobs dial storage nodes.
    pub security: tessera_net::Security,
}

impl Settings {
    /// `chunks_in_flight` per job and, shared by all jobs using these settings,
    /// manager-wide.
    pub fn new(chunks_in_flight: usize, window: u32) -> Settings {
        let n = chunks_in_flight.max(1);
        Settings {
            chunks_in_flight: n,
            window: window.max(1),
            slots: Arc::new(Semaphore::new(n)),
            security: tessera_net::Security::insecure(),
        }
    }

    /// The same settings, dialling storage nodes as `security` says.
    pub fn dialling(mut self, security: tessera_net::Security) -> Settings {
        self.security = security;
        self
    }

    /// The same limits with a pool of slots of their own (the restores' pool).
    pub fn own_slots(&self) -> Settings {
        Settings::new(self.chunks_in_flight, self.window).dialling(self.security.clone())
    }

    /// Waits for a manager-wide slot for one chunk request.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }
}

pub(crate) fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix: unix_now(),
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `f` under the service lock, off the async workers.
pub(crate) async fn locked<T: Send + 'static>(
    service: &Shared,
    f: impl FnOnce(&mut Service) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, String> {
    let s = service.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = s
            .lock()
            .map_err(|_| "manager state is unusable".to_string())?;
        f(&mut s).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Commits `m` if this manager leads.
pub(crate) async fn commit(service: &Shared, m: Mutation) -> Result<(), String> {
    locked(service, move |s| s.commit_led(m)).await
}

/// Records backup `id` failed with `error` (under the service lock; a backup already
/// gone is skipped by the state).
pub(crate) fn fail(s: &mut Service, id: u64, error: String) -> Result<(), ControlError> {
    warn!(backup = id, %error, "backup failed");
    s.commit_led(Mutation::BackupFailed {
        id,
        error,
        finished_unix: unix_now(),
    })
}

/// Checks, under the lock, that backup `id` is still to fill here: `false` if it is not
/// uploading (or gone); if `of_volume` (an upload, not a copy) and its volume or snapshot
/// is gone, it is recorded failed (naming why) and `false`.
pub(crate) fn still_uploading(
    s: &mut Service,
    id: u64,
    of_volume: bool,
) -> Result<bool, ControlError> {
    s.lead()?;
    if !s
        .state()
        .backup(id)
        .is_some_and(|b| b.state == BackupState::Uploading)
    {
        return Ok(false);
    }
    if of_volume && let Err(error) = s.state().backup_still_valid(id) {
        fail(s, id, error)?;
        return Ok(false);
    }
    Ok(true)
}

/// Records chunks stored in `store` for backup `id`, uploaded after the store's `gc_gen`
/// was read as `gc_gen` (`Service::record_backup_chunks`: a chunk across a collection that
/// removed none of its keys is recorded too): the chunks the state now holds of them, or
/// `None` if the backup is no longer to fill (see [`still_uploading`]).
pub(crate) async fn record_chunks(
    service: &Shared,
    id: u64,
    store: String,
    gc_gen: u64,
    chunks: Vec<ChunkSegment>,
    stats: BackupStats,
    of_volume: bool,
) -> Result<Option<BTreeSet<u64>>, String> {
    locked(service, move |s| {
        if !still_uploading(s, id, of_volume)? {
            return Ok(None);
        }
        let wanted: Vec<u64> = chunks.iter().map(|c| c.chunk).collect();
        s.record_backup_chunks(id, &store, gc_gen, chunks, stats)?;
        let recorded = s.state().backup_segments(id);
        Ok(Some(
            wanted
                .into_iter()
                .filter(|c| recorded.contains_key(c))
                .collect(),
        ))
    })
    .await
}

/// Puts root `bytes` (named `root`) in `store` and records backup `id` ready: `true` once
/// it is, `false` if the backup is no longer to fill (see [`still_uploading`]). A root the
/// collector claimed (the state skips `BackupReady` then) is waited for, then put again;
/// if the collector claimed or deleted it between the put and the commit (the delete may
/// have removed it meanwhile; `Service::untouched_since`), it is put again too.
pub(crate) async fn put_root_ready(
    service: &Shared,
    store: &Store,
    id: u64,
    root: Hash,
    bytes: bytes::Bytes,
    of_volume: bool,
) -> Result<bool, String> {
    let name = store.name().to_string();
    let mut backoff = Duration::from_millis(200);
    let mut reported = false;
    loop {
        let n = name.clone();
        let seen = locked(service, move |s| {
            if !still_uploading(s, id, of_volume)? {
                return Ok(None);
            }
            let st = s.state();
            Ok(Some((st.gc_gen(&n), st.is_claimed(&n, &GcKey::Root(root)))))
        })
        .await?;
        let Some((gc_gen, claimed)) = seen else {
            return Ok(false);
        };
        if !claimed {
            // `put` overwrites: a root deleted meanwhile is stored again.
            store
                .put(&keys::root(&root), bytes.clone())
                .await
                .map_err(|e| e.to_string())?;
            let n = name.clone();
            let ready = locked(service, move |s| {
                if !still_uploading(s, id, of_volume)? {
                    return Ok(None);
                }
                if !s.untouched_since(&n, gc_gen, &[GcKey::Root(root)]) {
                    return Ok(Some(false));
                }
                s.commit_led(Mutation::BackupReady {
                    id,
                    root,
                    finished_unix: unix_now(),
                })?;
                let b = s.state().backup(id);
                Ok(Some(b.is_some_and(|b| b.state == BackupState::Ready)))
            })
            .await?;
            match ready {
                None => return Ok(false),
                Some(true) => return Ok(true),
                Some(false) => {}
            }
        }
        if !reported {
            reported = true;
            let error = format!("collector deleting root {root}; put again once it is gone");
            commit(service, Mutation::BackupError { id, error }).await?;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One task per job id, started once, all aborted when leadership or the manager ends.
#[derive(Default)]
pub(crate) struct Running(HashMap<u64, JoinHandle<()>>);

impl Running {
    /// Starts `job` unless a task for `id` runs.
    pub fn start(&mut self, id: u64, job: impl Future<Output = ()> + Send + 'static) {
        self.0.retain(|_, t| !t.is_finished());
        self.0.entry(id).or_insert_with(|| tokio::spawn(job));
    }

    /// Aborts the tasks of jobs no longer planned (deleted, or finished elsewhere).
    pub fn keep_only(&mut self, planned: &BTreeSet<u64>) {
        self.0.retain(|id, t| {
            let keep = planned.contains(id) && !t.is_finished();
            if !keep {
                t.abort();
            }
            keep
        });
    }

    pub fn abort_all(&mut self) {
        for (_, t) in self.0.drain() {
            t.abort();
        }
    }
}

/// Group `group_id`'s members as the state knows them now, the leader first (none if it is
/// unknown: the call fails and is retried).
pub(crate) async fn resolve(service: &Shared, group_id: u64) -> Result<GroupJob, String> {
    locked(service, move |s| {
        Ok(s.group_job(group_id, Vec::new(), now())
            .unwrap_or_else(|| GroupJob {
                group_id,
                members: Vec::new(),
                batches: Vec::new(),
            }))
    })
    .await
}

/// Sends `req` to the group's leader (the member at `at` first, then `NotLeader` hints at
/// once, then every member in turn, one round): its answer, and the member that gave it.
pub(crate) async fn call_leader(
    security: &tessera_net::Security,
    group: &GroupJob,
    req: &StorageRequest,
    mut at: usize,
    timeout: Duration,
) -> Result<(StorageReply, usize), String> {
    let n = group.members.len();
    if n == 0 {
        return Err(format!("group {} has no known member", group.group_id));
    }
    let mut last = String::from("not asked");
    for _ in 0..n.saturating_mul(2) {
        let (node, addr) = &group.members[at % n];
        let expect = tessera_net::Expect::Node(*node);
        match tessera_net::call::<StorageRequest, StorageReply>(
            security, addr, expect, req, timeout,
        )
        .await
        {
            Ok(StorageReply::NotLeader { hint }) => {
                last = format!("node {node} does not lead group {}", group.group_id);
                match group.members.iter().position(|(id, _)| *id == hint) {
                    Some(i) if hint != 0 && i != at % n => at = i,
                    _ => at += 1,
                }
            }
            Ok(reply) => return Ok((reply, at % n)),
            Err(NetError::Control(ControlError::NotLeader(_))) => {
                last = format!("node {node} does not lead group {}", group.group_id);
                at += 1;
            }
            Err(NetError::Control(e)) => return Err(format!("node {node}: {e}")),
            Err(e) => {
                last = format!("node {node} at {addr}: {e}");
                at += 1;
            }
        }
    }
    Err(format!(
        "group {}: no leader answered ({last})",
        group.group_id
    ))
}

/// What a node said it moved for one chunk.
pub(crate) fn stats_of(u: &ChunkUpload) -> BackupStats {
    BackupStats {
        read_bytes: u.read_bytes,
        uploaded_bytes: u.uploaded_bytes,
        uploaded_objects: u.uploaded_objects,
        present_objects: u.present_objects,
        objects: 0,
    }
}

/// The segment named `h` in `store`, verified.
pub(crate) async fn read_segment(store: &Store, h: &Hash) -> Result<Segment, String> {
    fetch_segment(store, h).await.map_err(|e| e.to_string())
}

/// [`read_segment`] with the store's error as it is.
pub(crate) async fn fetch_segment(store: &Store, h: &Hash) -> Result<Segment, StoreError> {
    let bytes = store
        .get_bounded(&keys::segment(h), MAX_MANIFEST_BYTES)
        .await?;
    Segment::decode(store.name(), h, &bytes)
}

/// The chunk's segment after a backup read `answered`: the base's regions (if any), each
/// region answered replacing its object (`None`: now zeroes, removed). A region outside a
/// chunk of `bytes` is refused.
pub(crate) fn merge(
    base: Option<&Segment>,
    chunk: u64,
    bytes: u64,
    answered: &[RegionRef],
) -> Result<Segment, String> {
    let regions = bytes.div_ceil(REGION_BYTES);
    let mut map: BTreeMap<u32, Hash> = base
        .map(|s| s.regions.iter().copied().collect())
        .unwrap_or_default();
    for r in answered {
        if u64::from(r.region) >= regions {
            return Err(format!(
                "chunk {chunk}: region {} answered, but the chunk has {regions}",
                r.region
            ));
        }
        match r.object {
            Some(h) => map.insert(r.region, h),
            None => map.remove(&r.region),
        };
    }
    Ok(Segment {
        format: FORMAT,
        chunk,
        regions: map.into_iter().collect(),
    })
}
