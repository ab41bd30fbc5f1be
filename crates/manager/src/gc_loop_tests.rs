//! The collector against a directory store: after a backup is deleted and the grace
//! period passed, exactly the keys no remaining backup names are deleted; before it, none.

use std::collections::BTreeSet;

use std::time::Duration;
use tessera_backup::keys;

use tokio::sync::watch;

use super::*;
use crate::backup_loop::tests::{garbage_roots, harness, object_of, two_backups};
use tessera_proto::control::BackupState;

/// Every key of the store.
async fn listing(store: &Store) -> BTreeSet<String> {
    store.list("").await.unwrap().into_iter().collect()
}

/// Two backups share chunk 0's segment and object 2; deleting the first and collecting
/// with a grace of 0 s leaves exactly the second's root, segments and objects. With a
/// grace of an hour, the released keys wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_collector_deletes_exactly_what_no_backup_names_after_the_grace() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    let root1 = h.back_up(1).await;
    h.create_backup(2, 2, Some((1, 1))).await;
    let root2 = h.back_up(2).await;
    let first = h.read(|s| s.state().backup_segments(1)).await;
    let second = h.read(|s| s.state().backup_segments(2)).await;
    let mut kept: BTreeSet<String> = [keys::root(&root2)].into_iter().collect();
    kept.extend(second.values().map(keys::segment));
    kept.extend([1, 2, 4].map(|b| keys::object(&object_of(b))));
    let all = listing(&h.store).await;
    assert_eq!(
        all.difference(&kept).cloned().collect::<BTreeSet<_>>(),
        [
            keys::root(&root1),
            keys::segment(&first[&2]),
            keys::object(&object_of(3))
        ]
        .into_iter()
        .collect(),
        "the first backup's own keys"
    );

    h.commit(Mutation::DeleteBackup {
        id: 1,
        now_unix: unix_now(),
    })
    .await;
    Collector::new(3600, SETTLE)
        .collect(&h.service, &h.store)
        .await
        .unwrap();
    assert_eq!(
        listing(&h.store).await,
        all,
        "nothing deleted within the grace"
    );
    let waiting = h.read(|s| s.state().stores_with_gc_work()).await;
    assert_eq!(waiting, ["local"]);

    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(h.service.clone(), h.stores.clone(), 0, stopped));
    h.until("garbage collected", |s| {
        s.state().stores_with_gc_work().is_empty()
    })
    .await;
    let _ = stop.send(true);
    task.await.unwrap();
    assert_eq!(listing(&h.store).await, kept);
    let gc_gen = h.read(|s| s.state().gc_gen("local")).await;
    assert!(
        gc_gen >= 2,
        "a claim and a deletion each move gc_gen: {gc_gen}"
    );
    h.stop().await;
}

/// Keys already claimed when a pass starts (by a previous leader, whose deletes may still
/// be in flight) are deleted only once this manager has led for the settling time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_claimed_before_wait_for_the_leader_to_settle() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    let root = h.back_up(1).await;
    h.commit(Mutation::DeleteBackup {
        id: 1,
        now_unix: unix_now(),
    })
    .await;
    h.commit(Mutation::GcClaim {
        store: "local".into(),
        keys: vec![GcKey::Root(root)],
    })
    .await;
    let claimed = h.read(|s| s.state().claimed("local")).await;
    assert_eq!(claimed, [GcKey::Root(root)]);
    Collector::new(3600, SETTLE)
        .collect(&h.service, &h.store)
        .await
        .unwrap();
    assert!(
        h.store.exists(&keys::root(&root)).await.unwrap(),
        "a new leader leaves a previous claim alone"
    );
    Collector::new(3600, Duration::ZERO)
        .collect(&h.service, &h.store)
        .await
        .unwrap();
    assert!(!h.store.exists(&keys::root(&root)).await.unwrap());
    assert!(h.read(|s| s.state().claimed("local")).await.is_empty());
    h.stop().await;
}

/// Keys a delete that timed out left claimed wait the settling time before they are
/// deleted again and forgotten: the late delete may still land, and a key forgotten could
/// be uploaded anew and then removed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_a_timed_out_delete_left_claimed_wait_for_it_to_settle() {
    let settle = Duration::from_secs(2);
    let h = harness(two_backups()).await;
    let root = garbage_roots(&h, 1).await[0];
    h.commit(Mutation::GcClaim {
        store: "local".into(),
        keys: vec![GcKey::Root(root)],
    })
    .await;
    // Led long enough: only the timeout holds the keys back.
    tokio::time::sleep(settle).await;
    let c = Collector::new(3600, settle)
        .with_slow_deletes(Duration::from_millis(200), Duration::from_millis(50));
    let e = c.collect(&h.service, &h.store).await.unwrap_err();
    assert!(e.contains("took over"), "{e}");
    let claimed = || h.read(|s| s.state().claimed("local"));
    assert_eq!(claimed().await, [GcKey::Root(root)], "not forgotten");
    let c = Collector {
        delete_delay: Duration::ZERO,
        delete_timeout: DELETE_TIMEOUT,
        ..c
    };
    c.collect(&h.service, &h.store).await.unwrap();
    assert_eq!(
        claimed().await,
        [GcKey::Root(root)],
        "deleted again and forgotten within the settling time"
    );
    tokio::time::sleep(settle).await;
    c.collect(&h.service, &h.store).await.unwrap();
    assert!(
        claimed().await.is_empty(),
        "deleted and forgotten once settled"
    );
    h.stop().await;
}

/// A segment the store says is missing or corrupt is released with no objects (leaked);
/// any other failure (unavailable, credentials) leaves it queued, read again later.
#[test]
fn only_a_missing_or_corrupt_segment_is_leaked() {
    let (store, key, why) = ("s".to_string(), "k".to_string(), "x".to_string());
    assert!(leaks(&StoreError::NotFound {
        store: store.clone(),
        key: key.clone(),
    }));
    assert!(leaks(&StoreError::Corrupt {
        store: store.clone(),
        key,
        why: why.clone(),
    }));
    assert!(!leaks(&StoreError::Unavailable {
        store: store.clone(),
        why: why.clone(),
    }));
    assert!(!leaks(&StoreError::Credentials { store, why }));
}

/// A root the collector has claimed: `BackupReady` waits (the error says why) until the
/// deletion is done, then the root is put again and the backup is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claimed_root_is_put_again_once_deleted_then_ready() {
    let h = harness(two_backups()).await;
    let root = garbage_roots(&h, 1).await[0];
    let keys = vec![GcKey::Root(root)];
    let claim = Mutation::GcClaim {
        store: "local".into(),
        keys: keys.clone(),
    };
    h.commit(claim).await;
    h.create_backup(1, 1, None).await;
    let (service, store) = (h.service.clone(), h.store.clone());
    let bytes = bytes::Bytes::from_static(b"root");
    let put = tokio::spawn(async move {
        crate::backup_jobs::put_root_ready(&service, &store, 1, root, bytes, true).await
    });
    h.until("the wait reported", |s| {
        s.state().backup(1).is_some_and(|b| b.error.is_some())
    })
    .await;
    let b = h.read(|s| s.state().backup(1).cloned()).await.unwrap();
    assert_eq!(b.state, BackupState::Uploading);
    assert!(!h.store.exists(&keys::root(&root)).await.unwrap());
    h.commit(Mutation::GcDeleted {
        store: "local".into(),
        keys,
    })
    .await;
    assert!(put.await.unwrap().unwrap());
    let b = h.read(|s| s.state().backup(1).cloned()).await.unwrap();
    assert_eq!((b.state, b.root), (BackupState::Ready, Some(root)));
    assert!(h.store.exists(&keys::root(&root)).await.unwrap());
    h.stop().await;
}
