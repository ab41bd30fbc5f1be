//! How the uploader stamps a batch of chunks finished out of order: with the oldest
//! `gc_gen` any of them read, so a chunk uploaded across a deletion is never recorded.

use super::tests::{garbage_roots, harness, two_backups};
use super::{BackupStats, Uploaded, record};
use crate::state::{GcKey, Mutation};
use tessera_proto::control::Hash;

fn uploaded(chunk: u64, gc_gen: u64) -> Uploaded {
    Uploaded {
        chunk,
        segment: Hash([50 + chunk as u8; 32]),
        objects: vec![Hash([90 + chunk as u8; 32])],
        gc_gen,
        reads: 0,
    }
}

/// Chunk 1 read `gc_gen` before the collector deleted a key (its node's HEAD may have
/// found an object that is gone now); chunk 0 read the newer one and finished first. The
/// batch `[0, 1]` must not be recorded under chunk 0's `gc_gen`: chunk 1's new segment
/// would name a deleted object. Stamped with the oldest, the state skips both new
/// segments (redone with force); a batch that read the current `gc_gen` is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_holding_a_chunk_read_before_a_deletion_is_not_recorded() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    let root = garbage_roots(&h, 1).await[0];
    let gc_gen = || h.read(|s| s.state().gc_gen("local"));
    let old = gc_gen().await;
    let keys = vec![GcKey::Root(root)];
    let store = "local".to_string();
    h.commit(Mutation::GcClaim {
        store: store.clone(),
        keys: keys.clone(),
    })
    .await;
    h.commit(Mutation::GcDeleted { store, keys }).await;
    let new = gc_gen().await;
    assert!(new > old, "the claim and the deletion move gc_gen");
    let batch = vec![uploaded(0, new), uploaded(1, old)];
    let recorded = record(&h.service, 1, &h.store, batch, BackupStats::default())
        .await
        .expect("recorded")
        .expect("still uploading");
    assert!(
        recorded.is_empty(),
        "a stale chunk was recorded: {recorded:?}"
    );
    let batch = vec![uploaded(0, new), uploaded(1, new)];
    let recorded = record(&h.service, 1, &h.store, batch, BackupStats::default())
        .await
        .expect("recorded")
        .expect("still uploading");
    assert_eq!(recorded.into_iter().collect::<Vec<_>>(), [0, 1]);
    h.stop().await;
}
