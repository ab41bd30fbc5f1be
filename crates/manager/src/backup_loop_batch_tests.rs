//! How the uploader records chunks across a collection (`service::collected`): a batch
//! finished out of order is stamped with the oldest `gc_gen` any of them read, so a chunk
//! uploaded across the deletion (or claim) of one of its keys is never recorded, while
//! chunks the collection did not touch are, and a backup finishes during a long
//! collection; a skipped chunk is redone with force, backed off and reported; a manager
//! vouches for nothing read before it started.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tessera_proto::control::{BackupState, Hash};

use super::tests::{Harness, backup_record, garbage_roots, harness, object_of, slow, two_backups};
use super::{BackupStats, Uploaded, record};
use crate::backup_jobs::locked;
use crate::state::{BackupRecord, ChunkSegment, GcKey, Mutation};

fn uploaded(chunk: u64, gc_gen: u64) -> Uploaded {
    Uploaded {
        chunk,
        segment: Hash([50 + chunk as u8; 32]),
        objects: vec![Hash([90 + chunk as u8; 32])],
        gc_gen,
        reads: 0,
    }
}

/// The store "local"'s `gc_gen`.
async fn gc_gen(h: &Harness) -> u64 {
    h.read(|s| s.state().gc_gen("local")).await
}

/// Commits `ms` under one hold of the service lock: a running uploader never sees the
/// backups they create and delete (it would start a job for one).
async fn atomically(h: &Harness, ms: Vec<Mutation>) {
    locked(&h.service, move |s| {
        ms.into_iter().try_for_each(|m| s.commit_led(m))
    })
    .await
    .unwrap();
}

/// Makes `obj` garbage in the store "local": named by segment `seg` of backup `id`, which
/// is recorded, deleted and released. Returns the store's `gc_gen` then.
async fn garbage_object(h: &Harness, id: u64, seg: Hash, obj: Hash) -> u64 {
    let read = gc_gen(h).await;
    let chunk = ChunkSegment {
        chunk: 0,
        segment: seg,
        objects: Some(vec![obj]),
        reads: 0,
    };
    atomically(
        h,
        vec![
            Mutation::CreateBackup(backup_record(id, 1, None)),
            Mutation::BackupChunks {
                id,
                gc_gen: read,
                chunks: vec![chunk],
                stats: BackupStats::default(),
            },
            Mutation::DeleteBackup { id, now_unix: 0 },
            Mutation::SegmentsReleased {
                store: "local".into(),
                segs: vec![(seg, vec![obj])],
                now_unix: 0,
            },
        ],
    )
    .await;
    gc_gen(h).await
}

/// Makes a root garbage in "local" (a ready backup, deleted) and returns it.
async fn garbage_root(h: &Harness) -> Hash {
    let root = Hash([0; 32]);
    let ready = BackupRecord {
        state: BackupState::Ready,
        root: Some(root),
        ..backup_record(1000, 1, None)
    };
    atomically(
        h,
        vec![
            Mutation::CreateBackup(ready),
            Mutation::DeleteBackup {
                id: 1000,
                now_unix: 0,
            },
        ],
    )
    .await;
    root
}

/// The collector claims `keys` and, if `delete`, deletes them: `gc_gen` moves on.
async fn collect(h: &Harness, keys: Vec<GcKey>, delete: bool) {
    let store = "local".to_string();
    let claim = Mutation::GcClaim {
        store: store.clone(),
        keys: keys.clone(),
    };
    let deleted = Mutation::GcDeleted { store, keys };
    atomically(
        h,
        [claim]
            .into_iter()
            .chain(delete.then_some(deleted))
            .collect(),
    )
    .await;
}

/// A first collection, as a manager that has just started needs before it vouches for
/// uploads across the next ones (`service::collected`).
async fn first_collection(h: &Harness) {
    let root = garbage_root(h).await;
    collect(h, vec![GcKey::Root(root)], true).await;
}

async fn recorded(h: &Harness, batch: Vec<Uploaded>) -> Vec<u64> {
    let recorded = record(&h.service, 1, &h.store, batch, BackupStats::default())
        .await
        .expect("recorded")
        .expect("still uploading");
    recorded.into_iter().collect()
}

/// Chunk 1 read `gc_gen` before the collector deleted one of its objects (its node's HEAD
/// may have found it, so did not put it, and it is gone now); chunk 0 read the newer one
/// and finished first. The batch `[0, 1]` must not be recorded under chunk 0's `gc_gen`:
/// chunk 1's new segment would name a deleted object. Stamped with the oldest, chunk 1 is
/// skipped (redone with force); chunk 0, none of whose keys was touched, is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_read_before_the_deletion_of_its_object_is_not_recorded() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    first_collection(&h).await;
    let gone = uploaded(1, 0).objects[0];
    let old = garbage_object(&h, 2000, Hash([200; 32]), gone).await;
    collect(&h, vec![GcKey::Object(gone)], true).await;
    let new = gc_gen(&h).await;
    assert!(new > old, "the claim and the deletion move gc_gen");
    assert_eq!(
        recorded(&h, vec![uploaded(0, new), uploaded(1, old)]).await,
        [0]
    );
    // Redone (its object put again) after the deletion: recorded.
    assert_eq!(recorded(&h, vec![uploaded(1, new)]).await, [1]);
    h.stop().await;
}

/// A chunk naming a key claimed since its upload read `gc_gen` (the collector's delete may
/// be in flight) is not recorded, neither under that `gc_gen` nor under the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_naming_a_claimed_object_is_not_recorded() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    first_collection(&h).await;
    let claimed = uploaded(1, 0).objects[0];
    let old = garbage_object(&h, 2000, Hash([200; 32]), claimed).await;
    collect(&h, vec![GcKey::Object(claimed)], false).await;
    let new = gc_gen(&h).await;
    assert!(recorded(&h, vec![uploaded(1, old)]).await.is_empty());
    assert!(recorded(&h, vec![uploaded(1, new)]).await.is_empty());
    h.stop().await;
}

/// Chunks uploaded while the collector deleted other keys (a large backup being deleted
/// moves `gc_gen` every second for minutes) are recorded: before, they were skipped and
/// redone until their backup gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_uploaded_across_the_collection_of_other_keys_are_recorded() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    first_collection(&h).await;
    let old = gc_gen(&h).await;
    let roots = garbage_roots(&h, 3).await;
    let other = Hash([77; 32]);
    garbage_object(&h, 2000, Hash([200; 32]), other).await;
    for (i, root) in roots.into_iter().enumerate() {
        // Claimed and deleted, claimed and deleted, claimed only.
        collect(&h, vec![GcKey::Root(root)], i < 2).await;
    }
    collect(&h, vec![GcKey::Object(other)], true).await;
    let new = gc_gen(&h).await;
    assert!(new >= old + 7, "gc_gen moved from {old} to {new}");
    assert_eq!(
        recorded(&h, vec![uploaded(0, old), uploaded(1, old)]).await,
        [0, 1]
    );
    assert_eq!(gc_gen(&h).await, new, "recording moved no gc_gen");
    h.stop().await;
}

/// A backup runs while the collector claims and deletes other keys without a pause (as
/// while a large backup is deleted): it is recorded ready. Before, every batch it recorded
/// had read an older `gc_gen`, so was skipped and redone until the backup gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_finishes_while_the_collector_deletes_other_keys() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    first_collection(&h).await;
    let done = AtomicBool::new(false);
    let start = gc_gen(&h).await;
    let collecting = async {
        while !done.load(Relaxed) {
            let root = garbage_root(&h).await;
            collect(&h, vec![GcKey::Root(root)], true).await;
        }
    };
    let backing_up = async {
        h.back_up(1).await;
        done.store(true, Relaxed);
    };
    tokio::join!(collecting, backing_up);
    let end = gc_gen(&h).await;
    assert!(end > start, "the collector ran: gc_gen {start} to {end}");
    assert!(
        h.asked.lock().unwrap().iter().all(|r| !r.force),
        "no chunk was redone"
    );
    let error = h.read(|s| s.state().backup(1).unwrap().error.clone()).await;
    assert_eq!(error, None, "no chunk was skipped");
    h.stop().await;
}

/// Chunks uploaded while the collector deletes one of their objects again and again are
/// skipped by the state: each is redone with force after a back-off (not at once, again
/// and again), the reason recorded as the backup's error; once the collector is quiet the
/// backup is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skipped_chunks_are_redone_with_force_backed_off_and_reported() {
    let h = harness(slow(100)).await;
    h.create_backup(1, 1, None).await;
    first_collection(&h).await;
    let (stop, task) = h.uploader();
    let t = Instant::now();
    let mut saw_error = None;
    let mut i = 0u64;
    while t.elapsed() < Duration::from_secs(2) {
        // Chunk 0's object made garbage (named by another backup's segment, deleted),
        // claimed and deleted: each time, the store's gc_gen moves past chunk 0's upload.
        i += 1;
        let (seg, obj) = (Hash([i as u8; 32]), object_of(1));
        garbage_object(&h, 3000 + i, seg, obj).await;
        collect(&h, vec![GcKey::Object(obj)], true).await;
        if let Some(e) = h
            .read(|s| s.state().backup(1).and_then(|b| b.error.clone()))
            .await
        {
            saw_error = Some(e);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let asked = h.asked.lock().unwrap().len();
    assert!(
        asked <= 3 * 6,
        "backed off, not a busy loop: {asked} requests in 2 s"
    );
    let e = saw_error.expect("the skip is reported");
    assert!(
        e.contains("collector deleting objects; redoing chunk 0"),
        "{e}"
    );
    h.until("backup ready", |s| {
        s.state()
            .backup(1)
            .is_some_and(|b| b.state == BackupState::Ready)
    })
    .await;
    let _ = stop.send(true);
    task.await.unwrap();
    assert!(h.asked.lock().unwrap().iter().any(|r| r.force));
    h.stop().await;
}

/// A manager vouches only for uploads that read a `gc_gen` after it started remembering
/// deletions: one that read the `gc_gen` of its start (maybe before it) and finished
/// across a collection is skipped, even if the collection touched none of its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_that_read_the_gc_gen_of_the_managers_start_is_not_vouched_for() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    let old = gc_gen(&h).await;
    first_collection(&h).await;
    assert!(recorded(&h, vec![uploaded(0, old)]).await.is_empty());
    let new = gc_gen(&h).await;
    first_collection(&h).await;
    assert_eq!(recorded(&h, vec![uploaded(0, new)]).await, [0]);
    h.stop().await;
}
