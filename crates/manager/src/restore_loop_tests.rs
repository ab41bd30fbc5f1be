//! The pre-warm against a stand-in node: every chunk of the backup with a segment is
//! hydrated from its regions, most read first, then unlinked from the backup, then every
//! chunk unlinked once more and the restore recorded done; a restore not linked yet is left alone; progress is a
//! position in the restore's order; a segment without regions is only unlinked; a chunk
//! failing in the restore's store is read from a ready copy's; no store configured shows
//! in the meter; chunks waiting to be unlinked leave the fills their room.

use tessera_backup::manifest::{FORMAT, Segment};
use tessera_proto::control::GroupOp;
use tokio::sync::watch;

use super::*;
use crate::backup_loop::tests::{CHUNK, Harness, SIZE, harness, object_of, two_backups};
use crate::service::RestoreMeters;
use crate::state::{BackupStats, ChunkSegment, RestoreRecord, VolumeRecord};

/// Volume 2, "restored", from backup record `backup`, linked or not, every chunk of the
/// backup placed in group 1.
async fn restored(h: &Harness, backup: u64, linked: bool) {
    let chunks = h
        .read(move |s| s.state().backup_segments(backup))
        .await
        .into_keys()
        .map(|c| (c, 1))
        .collect();
    let volume = VolumeRecord {
        restore: Some(RestoreRecord {
            backup,
            store: "local".into(),
            next_chunk: 0,
            linked,
            next_position: 0,
        }),
        ..VolumeRecord::new(2, "restored", SIZE, CHUNK, 0)
    };
    h.commit(Mutation::RestoreVolume { volume, chunks }).await;
}

/// Runs the pre-warm (one chunk at a time) until volume 2 is no longer restoring.
async fn prewarm(h: &Harness) {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(
        h.service.clone(),
        h.stores.clone(),
        Settings::new(1, 3),
        1 << 40,
        stopped,
    ));
    h.until("restore done", |s| {
        s.state()
            .volume_record_by_id(2)
            .is_ok_and(|v| v.restore.is_none())
    })
    .await;
    let _ = stop.send(true);
    task.await.unwrap();
}

fn unlink(chunk: u64) -> Vec<GroupOp> {
    vec![GroupOp::Unlink {
        volume_id: 2,
        chunk,
    }]
}

/// A volume restored from a backup of chunks 0 and 2 (chunk 1 is zeroes; chunk 2 was read
/// 20 times, chunk 0 never): chunk 2 is hydrated then unlinked, then chunk 0; nothing of
/// chunk 1; then the volume is no longer restoring, and the rate counted every region.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_fills_then_unlinks_each_chunk_most_read_first_then_is_done() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    h.back_up(1).await;
    let reads = h.read(|s| s.state().backup(1).unwrap().reads.clone()).await;
    assert_eq!(reads, BTreeMap::from([(2, 20)]));
    restored(&h, 1, true).await;
    prewarm(&h).await;
    let calls = h.restore_calls.lock().unwrap().clone();
    // Each chunk's unlink follows its fill (the next fill may start before it).
    let at = |want: &dyn Fn(&StorageRequest) -> bool| calls.iter().position(want).unwrap();
    let hydrate =
        |c| move |r: &StorageRequest| matches!(r, StorageRequest::HydrateChunk(h) if h.chunk == c);
    let unlinks = |c| move |r: &StorageRequest| matches!(r, StorageRequest::Apply { ops, .. } if *ops == unlink(c));
    assert!(
        at(&hydrate(2)) < at(&hydrate(0)),
        "most read first: {calls:?}"
    );
    assert!(at(&hydrate(2)) < at(&unlinks(2)) && at(&hydrate(0)) < at(&unlinks(0)));
    let [.., StorageRequest::Apply { ops: last, .. }] = &calls[..] else {
        panic!("{calls:?}");
    };
    let (StorageRequest::HydrateChunk(c0), StorageRequest::HydrateChunk(c2)) =
        (&calls[at(&hydrate(0))], &calls[at(&hydrate(2))])
    else {
        unreachable!()
    };
    assert_eq!(calls.len(), 5, "{calls:?}");
    // Before the restore is done, every chunk is unlinked once more, in one batch per
    // group: a `Link` that landed late is undone.
    assert_eq!(*last, [unlink(0), unlink(2)].concat());
    let regions = |r: &HydrateChunkRequest| -> Vec<(u32, Option<Hash>)> {
        r.regions.iter().map(|g| (g.region, g.object)).collect()
    };
    assert_eq!(regions(c0), [(0, Some(object_of(1)))]);
    assert_eq!(
        regions(c2),
        [(0, Some(object_of(2))), (1, Some(object_of(3)))]
    );
    assert!(
        [c0, c2]
            .iter()
            .all(|r| r.volume_id == 2 && r.group_id == 1 && r.window == 3)
    );
    let meters = h.read(|s| s.restore_meters()).await;
    assert!(
        !meters.lock().unwrap().contains_key(&2),
        "the meter is forgotten once done"
    );
    h.stop().await;
}

/// A restore not linked yet is not pre-warmed (a hydrate would do nothing there, and the
/// unlink would leave the chunk empty); once linked, the plan starts at the recorded
/// position of the restore's order: chunk 2 (most read) done, chunk 0 left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_linked_restores_are_planned_from_their_recorded_position() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    h.back_up(1).await;
    restored(&h, 1, false).await;
    assert!(h.read(plan_all).await.is_empty());
    h.commit(Mutation::RestoreLinked { volume_id: 2 }).await;
    let positions: Vec<(u64, u64)> = h
        .read(|s| plan_all(s)[0].todo.clone())
        .await
        .iter()
        .map(|t| (t.0, t.1))
        .collect();
    assert_eq!(positions, [(0, 2), (1, 0)]);
    h.commit(Mutation::RestoreProgress {
        volume_id: 2,
        next_chunk: 0,
        next_position: 1,
    })
    .await;
    let seg0 = h.read(|s| s.state().backup_segment(1, 0)).await.unwrap();
    let todo = h.read(|s| plan_all(s)[0].todo.clone()).await;
    assert_eq!(todo, [(1, 0, seg0, Some(1))]);
    h.stop().await;
}

/// A chunk whose segment names no region has nothing to fill: it is unlinked at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_without_objects_is_unlinked_without_a_fill() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    let empty = Segment {
        format: FORMAT,
        chunk: 1,
        regions: Vec::new(),
    };
    let (segment, bytes) = empty.encode();
    h.store
        .put_if_missing(&tessera_backup::keys::segment(&segment), bytes, false)
        .await
        .unwrap();
    let chunks = vec![ChunkSegment {
        chunk: 1,
        segment,
        objects: Some(Vec::new()),
        reads: 0,
    }];
    let stats = BackupStats::default();
    h.commit(Mutation::BackupChunks {
        id: 1,
        gc_gen: 0,
        chunks,
        stats,
    })
    .await;
    let root = Hash([7; 32]);
    h.commit(Mutation::BackupReady {
        id: 1,
        root,
        finished_unix: 1,
    })
    .await;
    restored(&h, 1, true).await;
    prewarm(&h).await;
    let calls = h.restore_calls.lock().unwrap().clone();
    assert!(
        matches!(&calls[..], [StorageRequest::Apply { ops, .. }, StorageRequest::Apply { ops: last, .. }]
                 if *ops == unlink(1) && *last == unlink(1)),
        "{calls:?}"
    );
    h.stop().await;
}

/// A chunk failing for a while shows its error in the restore's meter (what `volume info`
/// shows); the next chunk filled clears it.
#[test]
fn a_lasting_chunk_error_is_shown_until_a_chunk_is_filled() {
    let meters = RestoreMeters::default();
    let rates = Rates::new(meters.clone());
    rates.plan(2, 3);
    rates.failing(2, "chunk 1: store s: unreachable".into());
    let m = meters.lock().unwrap().get(&2).cloned().unwrap();
    assert_eq!(m.error.as_deref(), Some("chunk 1: store s: unreachable"));
    rates.filled(2, REGION_BYTES);
    let m = meters.lock().unwrap().get(&2).cloned().unwrap();
    assert_eq!((m.error, m.hydrated_bytes), (None, REGION_BYTES));
}

/// Chunk slots are manager-wide: every job given clones of the same settings (uploads and
/// copies) draws from one pool; the restores' pool is their own.
#[tokio::test]
async fn chunk_slots_are_shared_by_the_jobs_of_one_pool() {
    let uploads = Settings::new(2, 8);
    let copies = uploads.clone();
    let restores = uploads.own_slots();
    let a = uploads.slot().await.unwrap();
    let _b = copies.slot().await.unwrap();
    assert!(uploads.slots.clone().try_acquire_owned().is_err());
    assert!(copies.slots.clone().try_acquire_owned().is_err());
    let _r = restores.slot().await.unwrap();
    drop(a);
    assert!(copies.slots.clone().try_acquire_owned().is_ok());
}

/// A chunk whose segment is corrupt in the restore's store is filled from the backup's
/// ready copy in another store at its next attempt; the other chunk from the restore's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_failing_in_the_restores_store_is_filled_from_a_copy() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    h.back_up(1).await;
    let (stores, _) = h.with_other_store();
    crate::copy_loop::tests::copy_record(&h).await;
    crate::copy_loop::tests::run_copy(&h, stores.clone()).await;
    let seg2 = h.read(|s| s.state().backup_segment(1, 2)).await.unwrap();
    let key = tessera_backup::keys::segment(&seg2);
    h.store.put(&key, "corrupt".into()).await.unwrap();
    restored(&h, 1, true).await;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(
        h.service.clone(),
        stores,
        Settings::new(1, 3),
        1 << 40,
        stopped,
    ));
    h.until("restore done", |s| {
        s.state()
            .volume_record_by_id(2)
            .is_ok_and(|v| v.restore.is_none())
    })
    .await;
    let _ = stop.send(true);
    task.await.unwrap();
    let filled: Vec<(u64, String)> = h
        .restore_calls
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            StorageRequest::HydrateChunk(c) => Some((c.chunk, c.store.name.clone())),
            _ => None,
        })
        .collect();
    // (Chunk 2 backed off after its failure: chunk 0 may be filled first.)
    let mut filled = filled;
    filled.sort();
    assert_eq!(filled, [(0, "local".into()), (2, "other".into())]);
    h.stop().await;
}

/// No store of the backup configured on this manager: the restore's meter says so (what
/// `volume info` shows), and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_without_a_configured_store_shows_it_in_its_meter() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    h.back_up(1).await;
    restored(&h, 1, true).await;
    let (stop, stopped) = watch::channel(false);
    let none: Stores = Arc::default();
    let task = tokio::spawn(run(
        h.service.clone(),
        none,
        Settings::new(1, 3),
        1 << 40,
        stopped,
    ));
    let meters = h.read(|s| s.restore_meters()).await;
    let t = Instant::now();
    let error = loop {
        if let Some(e) = meters.lock().unwrap().get(&2).and_then(|m| m.error.clone()) {
            break e;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no error shown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        error.contains("no store") && error.contains("local"),
        "{error}"
    );
    let _ = stop.send(true);
    task.await.unwrap();
    assert!(h.restore_calls.lock().unwrap().is_empty());
    h.stop().await;
}

/// Chunks filled and waiting out the unlink delay do not count against the restore's
/// concurrency: with one chunk at a time, both chunks are filled before either is
/// unlinked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_waiting_to_be_unlinked_leave_room_for_fills() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    h.back_up(1).await;
    restored(&h, 1, true).await;
    let job = h.read(|s| plan_all(s).remove(0)).await;
    let (spec, store) = h.stores["local"].clone();
    let meters = h.read(|s| s.restore_meters()).await;
    let ctx = Ctx {
        service: h.service.clone(),
        sources: vec![(spec, store)],
        settings: Settings::new(1, 3).own_slots(),
        pace: Arc::new(Pace::new(1 << 40)),
        rates: Rates::new(meters),
        unlink_after: Instant::now() + Duration::from_millis(1500),
    };
    fill_all(&ctx, &job).await.unwrap();
    let calls = h.restore_calls.lock().unwrap().clone();
    assert!(
        matches!(
            &calls[..],
            [
                StorageRequest::HydrateChunk(_),
                StorageRequest::HydrateChunk(_),
                StorageRequest::Apply { .. },
                StorageRequest::Apply { .. },
                StorageRequest::Apply { .. },
            ]
        ),
        "{calls:?}"
    );
    h.stop().await;
}
