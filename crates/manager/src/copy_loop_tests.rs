//! Copies between two directory stores: the objects the target lacks, the segments, the
//! root unchanged (same name) last, the copy recorded ready with the source's map; an
//! object that does not verify fails the copy, naming it.

use bytes::Bytes;
use tessera_backup::keys;
use tokio::sync::watch;

use super::*;
use crate::backup_loop::tests::{Harness, backup_record, harness, object_of, two_backups};
use crate::state::BackupRecord;

/// Records backup 2 as a copy of ready backup 1 in store `other`.
pub(crate) async fn copy_record(h: &Harness) {
    h.commit(Mutation::CreateBackup(BackupRecord {
        store: "other".into(),
        copied_from: Some(1),
        created_unix: 200,
        ..backup_record(2, 1, None)
    }))
    .await;
}

/// Runs the copy loop until backup 2 is no longer uploading.
pub(crate) async fn run_copy(h: &Harness, stores: Stores) {
    let (stop, stopped) = watch::channel(false);
    let settings = Settings::new(2, 2);
    let pace = Arc::new(Pace::new(1 << 40));
    let task = tokio::spawn(run(h.service.clone(), stores, settings, pace, stopped));
    h.until("copy finished", |s| {
        s.state()
            .backup(2)
            .is_some_and(|b| b.state != BackupState::Uploading)
    })
    .await;
    let _ = stop.send(true);
    task.await.unwrap();
}

/// A copy resumed after an interruption finds the object already copied (`exists`) and
/// copies the rest; the target then holds the same root, segments and objects, and the
/// copy is ready with the source's map.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_puts_what_the_target_lacks_then_the_same_root() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    let root = h.back_up(1).await;
    let (stores, other) = h.with_other_store();
    let key = keys::object(&object_of(2));
    let copied_before = h.store.get(&key).await.unwrap();
    other.put(&key, copied_before).await.unwrap();
    copy_record(&h).await;
    run_copy(&h, stores).await;
    let b = h.read(|s| s.state().backup(2).cloned()).await.unwrap();
    assert_eq!(b.state, BackupState::Ready, "{:?}", b.error);
    assert_eq!(b.root, Some(root), "the source's root, unchanged");
    let (src, copy) = h
        .read(|s| (s.state().backup_segments(1), s.state().backup_segments(2)))
        .await;
    assert_eq!(copy, src);
    assert_eq!(
        other.list("").await.unwrap(),
        h.store.list("").await.unwrap()
    );
    assert_eq!(b.stats.present_objects, 1);
    assert_eq!(b.stats.uploaded_objects, 2);
    h.stop().await;
}

/// An object of the source that does not match its name is never copied: the copy fails
/// and says which object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_source_object_fails_the_copy_naming_it() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    h.back_up(1).await;
    let (stores, other) = h.with_other_store();
    let key = keys::object(&object_of(3));
    h.store
        .put(&key, Bytes::from_static(b"TSRG not a region"))
        .await
        .unwrap();
    copy_record(&h).await;
    run_copy(&h, stores).await;
    let b = h.read(|s| s.state().backup(2).cloned()).await.unwrap();
    assert_eq!(b.state, BackupState::Failed);
    let error = b.error.unwrap();
    assert!(error.contains(&key), "{error}");
    assert!(!other.exists(&key).await.unwrap());
    h.stop().await;
}

/// A copy whose source root is missing is retried, then fails after the give-up time,
/// naming the root; it does not retry forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_whose_source_root_is_missing_fails_naming_it() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    let root = h.back_up(1).await;
    let (stores, other) = h.with_other_store();
    let key = keys::root(&root);
    let path = h.dir.path().join("store").join(&key);
    std::fs::remove_file(&path).unwrap();
    copy_record(&h).await;
    let t = std::time::Instant::now();
    run_copy(&h, stores).await;
    assert!(t.elapsed() >= GIVE_UP, "retried for the give-up time first");
    let b = h.read(|s| s.state().backup(2).cloned()).await.unwrap();
    assert_eq!(b.state, BackupState::Failed);
    let error = b.error.unwrap();
    assert!(error.contains(&key), "{error}");
    assert!(!other.exists(&key).await.unwrap());
    assert_eq!(
        h.read(|s| s.state().backup_segments(2).len()).await,
        2,
        "the chunks were copied and recorded"
    );
    h.stop().await;
}
