//! The restore fill against a stand-in node: every chunk of the backup with a segment is
//! hydrated from its regions, then the restore is recorded done.

use tokio::sync::watch;

use super::*;
use crate::backup_loop::tests::{CHUNK, SIZE, harness, object_of, two_backups};
use crate::state::{RestoreRecord, VolumeRecord};

/// A volume restored from a backup of chunks 0 and 2 (chunk 1 is zeroes): a
/// `HydrateChunk` for each of those two naming the segment's regions, none for chunk 1;
/// then the volume is no longer restoring, and the rate counted every region.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_hydrates_every_chunk_with_a_segment_then_is_done() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    h.back_up(1).await;
    let volume = VolumeRecord {
        restore: Some(RestoreRecord {
            backup: 1,
            store: "local".into(),
            next_chunk: 0,
        }),
        ..VolumeRecord::new(2, "restored", SIZE, CHUNK, 0)
    };
    h.commit(Mutation::RestoreVolume {
        volume,
        chunks: vec![(0, 1), (1, 1), (2, 1)],
    })
    .await;
    let settings = Settings::new(2, 3);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(
        h.service.clone(),
        h.stores.clone(),
        settings,
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
    let mut got = h.hydrated.lock().unwrap().clone();
    got.sort_by_key(|r| r.chunk);
    let chunks: Vec<u64> = got.iter().map(|r| r.chunk).collect();
    assert_eq!(chunks, [0, 2]);
    let regions = |r: &HydrateChunkRequest| -> Vec<(u32, Option<Hash>)> {
        r.regions.iter().map(|g| (g.region, g.object)).collect()
    };
    assert_eq!(regions(&got[0]), [(0, Some(object_of(1)))]);
    assert_eq!(
        regions(&got[1]),
        [(0, Some(object_of(2))), (1, Some(object_of(3)))]
    );
    assert!(
        got.iter()
            .all(|r| r.volume_id == 2 && r.group_id == 1 && r.window == 3)
    );
    let meters = h.read(|s| s.restore_meters()).await;
    assert!(
        !meters.lock().unwrap().contains_key(&2),
        "the meter is forgotten once done"
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
