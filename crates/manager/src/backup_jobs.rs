//! What the leading manager's backup loops share (`backup_loop`, `gc_loop`, `copy_loop`,
//! `restore_loop`), and their start: the stores they use, calling a group's leader
//! ([`call_leader`]: `NotLeader` hints followed at once), committing under the service lock
//! ([`locked`], [`commit`]: only while this manager leads), one task per job ([`Running`]),
//! reading a segment back verified ([`read_segment`]), and merging a chunk's answer into
//! its base's segment ([`merge`]).
//!
//! Must never hold the service lock across a call to a node or a store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tessera_backup::manifest::{FORMAT, Segment};
use tessera_backup::{Store, keys};
use tessera_net::NetError;
use tessera_proto::control::{
    ControlError, Hash, REGION_BYTES, RegionRef, StorageReply, StorageRequest, StoreSpec,
};
use tokio::task::JoinHandle;

use crate::group_calls::GroupJob;
use crate::service::{Now, Service};
use crate::state::Mutation;

pub(crate) type Shared = Arc<Mutex<Service>>;
/// The stores this manager opened, by name: the spec (sent to storage nodes) and a client.
pub(crate) type Stores = Arc<BTreeMap<String, (StoreSpec, Store)>>;

/// How often the loops look for work.
pub(crate) const TICK: Duration = Duration::from_secs(2);
/// A chunk failing this long in a row fails its backup.
pub const GIVE_UP: Duration = Duration::from_secs(60);

/// The settings the backup loops share.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub chunks_in_flight: usize,
    pub window: u32,
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

/// One task per job id, started once, all aborted when leadership or the manager ends.
#[derive(Default)]
pub(crate) struct Running(HashMap<u64, JoinHandle<()>>);

impl Running {
    /// Starts `job` unless a task for `id` runs.
    pub fn start(&mut self, id: u64, job: impl Future<Output = ()> + Send + 'static) {
        self.0.retain(|_, t| !t.is_finished());
        self.0.entry(id).or_insert_with(|| tokio::spawn(job));
    }

    pub fn abort_all(&mut self) {
        for (_, t) in self.0.drain() {
            t.abort();
        }
    }
}

/// Sends `req` to the group's leader (the member at `at` first, then `NotLeader` hints at
/// once, then every member in turn, one round): its answer, and the member that gave it.
pub(crate) async fn call_leader(
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
        match tessera_net::call::<StorageRequest, StorageReply>(addr, req, timeout).await {
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

/// The segment named `h` in `store`, verified.
pub(crate) async fn read_segment(store: &Store, h: &Hash) -> Result<Segment, String> {
    let bytes = store
        .get(&keys::segment(h))
        .await
        .map_err(|e| e.to_string())?;
    Segment::decode(store.name(), h, &bytes).map_err(|e| e.to_string())
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
