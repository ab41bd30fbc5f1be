//! Snapshots under the nemesis: taken, deleted, cloned and flattened while the faults run,
//! then read back and checked with the rest of the history.
//!
//! A snapshot is read back block by block, every block a read whose interval is its create
//! request's (from sending it to its answer; for one whose answer was lost but which the
//! managers finished anyway, until it was seen ready): the value must be one a linearizable
//! read of that block could have returned at some instant of that interval. That is what
//! "holds every write acknowledged before the request and none sent after the answer"
//! means block by block; the checker judges these reads with every other operation.
//! The clone made early on, flattened during the faults, must read exactly as its
//! snapshot once the flatten is done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_client::Client;

use crate::checker::{Call, Op};
use crate::workload::{self, BLOCKS, Outcome, Record, Workload};

/// How often a snapshot is asked for while the faults run.
const EVERY: Duration = Duration::from_secs(3);
/// The longest a create request may take before it is given up on (then unknown).
const CREATE_TIMEOUT: Duration = Duration::from_secs(40);
pub const CLONE: &str = "nemesis-clone";
/// Client ids of the read-backs in the history: snapshot `k`'s are `READ_BACK_CLIENTS + k`.
pub const READ_BACK_CLIENTS: usize = 2000;

/// A create request: its name and interval (`complete`: when its answer said ready).
pub struct Taken {
    pub name: String,
    pub invoke: Instant,
    pub complete: Option<Instant>,
}

/// What the snapshot task did, for the summary and the checks.
#[derive(Default)]
pub struct Activity {
    pub taken: Vec<Taken>,
    pub failed: usize,
    pub deleted: Vec<String>,
    pub delete_failed: usize,
    /// The snapshot the clone was made from, once made.
    pub cloned_from: Option<String>,
    pub flatten_started: bool,
}

/// Takes a snapshot of `volume` every [`EVERY`] until the workload stops; deletes every
/// third one taken two before; clones the first ready one and starts flattening the clone.
pub async fn run(w: Arc<Workload>, admin: Client, volume: String) -> Activity {
    let mut a = Activity::default();
    let mut n = 0;
    while !w.stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(EVERY).await;
        let name = format!("n{n}");
        n += 1;
        let invoke = Instant::now();
        let res = tokio::time::timeout(CREATE_TIMEOUT, admin.create_snapshot(&volume, &name)).await;
        let complete = match res {
            Ok(Ok(s)) if s.state == tessera_proto::control::SnapshotState::Ready => {
                Some(Instant::now())
            }
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                a.failed += 1;
                None
            }
        };
        a.taken.push(Taken {
            name: name.clone(),
            invoke,
            complete,
        });
        if a.cloned_from.is_none() && complete.is_some() {
            if admin.clone_volume(&volume, &name, CLONE).await.is_ok() {
                a.cloned_from = Some(name.clone());
                a.flatten_started = admin.flatten_volume(CLONE).await.is_ok();
            }
        } else if n % 3 == 0 && a.taken.len() >= 3 {
            let old = a.taken[a.taken.len() - 3].name.clone();
            if Some(&old) != a.cloned_from.as_ref() {
                match admin.delete_snapshot(&volume, &old).await {
                    Ok(()) => a.deleted.push(old),
                    Err(_) => a.delete_failed += 1,
                }
            }
        }
    }
    a
}

/// Every block of snapshot `name` (or of volume `name`, if `snapshot` is `None`), read
/// through the client library, retried while the cluster settles.
async fn read_all(admin: &Client, volume: &str, snapshot: Option<&str>) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open = match snapshot {
            Some(s) => admin.open_snapshot(volume, s).await,
            None => admin.open_read_only(volume).await,
        };
        let mut blocks = Vec::new();
        let mut failed = None;
        match open {
            Ok(v) => {
                for b in 0..BLOCKS {
                    match v.read(workload::offset(b), workload::BLOCK as u64).await {
                        Ok(d) => blocks.push(d.to_vec()),
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
            Err(e) => failed = Some(e.to_string()),
        }
        match failed {
            None => return blocks,
            Some(e) => {
                assert!(
                    Instant::now() < deadline,
                    "reading {volume}@{snapshot:?} back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Once the deleted snapshots' space is reclaimed, reads back every ready, undeleted
/// snapshot into the history (see the module doc) and checks the flattened clone. Returns how many snapshots were read back.
pub async fn read_back(w: &Workload, admin: &Client, volume: &str, a: &Activity) -> usize {
    // The deleted snapshots' merges ran through the faults; the snapshots kept are read
    // back once every one is done (what they merged is what a kept image must not see).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let info = admin.volume_info(volume).await.expect("volume info");
        if info.reclaims.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted snapshots' space was not reclaimed: {:?}",
            info.reclaims
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listed = admin
        .list_snapshots(Some(volume))
        .await
        .expect("list snapshots");
    let seen_at = Instant::now();
    let mut checked = 0;
    for (k, t) in a.taken.iter().enumerate() {
        let Some(info) = listed.iter().find(|s| s.name == t.name) else {
            // Deleted, or never recorded (a create that failed before its first step).
            continue;
        };
        if info.state != tessera_proto::control::SnapshotState::Ready {
            continue;
        }
        let blocks = read_all(admin, volume, Some(&t.name)).await;
        let (invoke, complete) = (w.time(t.invoke), w.time(t.complete.unwrap_or(seen_at)));
        let mut h = w.history.lock().expect("history");
        for (b, data) in blocks.iter().enumerate() {
            h.push(Record {
                op: Op {
                    block: b as u64,
                    call: Call::Read(workload::decode(b as u64, data)),
                    invoke,
                    complete: Some(complete),
                    client: READ_BACK_CLIENTS + k,
                },
                outcome: Outcome::Ok,
                gateway: 0,
            });
        }
        checked += 1;
    }
    for name in &a.deleted {
        assert!(
            listed.iter().all(|s| &s.name != name),
            "deleted snapshot {name} is still listed"
        );
    }
    if let (Some(from), true) = (&a.cloned_from, a.flatten_started) {
        // The flatten ran through the faults; it finishes once the cluster is whole.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let info = admin.volume_info(CLONE).await.expect("clone info");
            if info.parent.is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the clone's flatten did not finish: {:?}",
                info.parent
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let snap = read_all(admin, volume, Some(from)).await;
        let clone = read_all(admin, CLONE, None).await;
        assert!(
            snap == clone,
            "the flattened clone differs from snapshot {from}"
        );
    }
    checked
}
