//! A restore request through a leading service and a stand-in node: answered once every
//! placed chunk is linked to the backup in its group, attachable only then, its links
//! planned by the background while it is unlinked (and not sent once the request linked
//! it), never finished without every group's links, and its chunks' source answered.

use std::sync::Arc;
use std::time::Duration;

use tessera_proto::control::{
    ControlError, GroupOp, ManagerReply, ManagerRequest, RESTORED_PARENT, RestoreSource,
};

use crate::backup_jobs::{locked, now};
use crate::backup_loop::tests::{CHUNK, Harness, SIZE, harness, two_backups};
use crate::group_calls;
use crate::service::{Finish, Reply};
use crate::snapshot_loop;
use crate::state::{Mutation, RestoreRecord, VolumeRecord};
use crate::stores::{StoreConfig, Stores};

async fn ask(h: &Harness, req: ManagerRequest) -> Reply {
    locked(&h.service, move |s| Ok(s.handle(req, now()).0))
        .await
        .unwrap()
}

async fn attach(h: &Harness) -> Result<ManagerReply, ControlError> {
    let req = ManagerRequest::AttachVolume {
        name: "r".into(),
        client: "c".into(),
        paged: false,
        holder: String::new(),
    };
    match ask(h, req).await {
        Reply::Done(r) => r,
        other => panic!("{other:?}"),
    }
}

/// The configured stores of the harness (its directory store `local`), set in the service.
async fn set_stores(h: &Harness) -> Arc<Stores> {
    let path = h.dir.path().join("store").display().to_string();
    let stores = Stores::open(&[StoreConfig::dir("local", "z1", &path)], None, "z1").unwrap();
    let stores = Arc::new(stores);
    let set = stores.clone();
    locked(&h.service, move |s| {
        s.set_stores(set);
        Ok(())
    })
    .await
    .unwrap();
    stores
}

async fn restore_request(h: &Harness) -> crate::service::Pending {
    let req = ManagerRequest::RestoreVolume {
        name: "r".into(),
        backup: 1,
        store: None,
    };
    let Reply::After(pending) = ask(h, req).await else {
        panic!("a restore is answered once linked");
    };
    pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_is_answered_once_linked_and_attachable_only_then() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    h.back_up(1).await;
    let stores = set_stores(&h).await;
    let pending = restore_request(&h).await;
    assert_eq!(pending.finish, Finish::RestoreLinked { volume_id: 2 });
    let ops: Vec<GroupOp> = pending
        .jobs
        .iter()
        .flat_map(|j| j.batches.concat())
        .collect();
    let link = |chunk| GroupOp::Link {
        volume_id: 2,
        chunk,
        parent_volume: RESTORED_PARENT,
        parent_seq: 1,
    };
    assert_eq!(ops, [link(0), link(2)]);
    // Unlinked (the request's links not sent yet): not attachable; the background would
    // link it.
    let err = attach(&h).await.unwrap_err();
    assert!(
        matches!(&err, ControlError::Unavailable(m) if m.contains("linked")),
        "{err:?}"
    );
    let finish = locked(&h.service, |s| Ok(s.background(now(), false).finish))
        .await
        .unwrap();
    assert!(finish.iter().any(|p| p.finish == pending.finish));
    // The links applied in the group: answered linked, attachable.
    let reply = group_calls::finish(
        &h.service,
        &Default::default(),
        pending,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let ManagerReply::Volume(v) = reply else {
        panic!("{reply:?}");
    };
    assert!(v.restore.is_some_and(|r| r.linked));
    let applied: Vec<_> = h.restore_calls.lock().unwrap().clone();
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert!(matches!(
        attach(&h).await,
        Ok(ManagerReply::Attached { .. })
    ));
    // Where its chunks' unfilled blocks are read from.
    let seg = h.read(|s| s.state().backup_segment(1, 2)).await;
    let Reply::Done(Ok(ManagerReply::RestoreSource(src))) = ask(
        &h,
        ManagerRequest::RestoreSource {
            volume_id: 2,
            chunk: 2,
        },
    )
    .await
    else {
        panic!("a restore source");
    };
    let want = RestoreSource {
        backup: 1,
        segment: seg,
        stores: vec![stores.spec("local").unwrap().clone()],
    };
    assert_eq!(*src, want);
    h.stop().await;
}

/// A background pass planned the links of a restore still unlinked; the request linked it
/// meanwhile (and the pre-warm may have unlinked filled chunks): the pass sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_background_pass_does_not_link_a_restore_its_request_linked_meanwhile() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    h.back_up(1).await;
    set_stores(&h).await;
    let pending = restore_request(&h).await;
    let planned = locked(&h.service, |s| Ok(s.background(now(), false).finish))
        .await
        .unwrap();
    assert!(planned.iter().any(|p| p.finish == pending.finish));
    group_calls::finish(
        &h.service,
        &Default::default(),
        pending,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(h.restore_calls.lock().unwrap().len(), 1);
    snapshot_loop::finish_all(h.service.clone(), Default::default(), planned).await;
    let calls = h.restore_calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        1,
        "no link sent after the restore was linked: {calls:?}"
    );
    h.stop().await;
}

/// A restore with a chunk in a group this manager does not know is not linked without
/// that group's links: its links are refused (retried), never finished without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restores_links_are_unavailable_while_a_group_is_unknown() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    h.back_up(1).await;
    let volume = VolumeRecord {
        restore: Some(RestoreRecord {
            backup: 1,
            store: "local".into(),
            next_chunk: 0,
            linked: false,
            next_position: 0,
        }),
        ..VolumeRecord::new(2, "r", SIZE, CHUNK, 0)
    };
    let chunks = vec![(0, 1), (2, 9)];
    h.commit(Mutation::RestoreVolume { volume, chunks }).await;
    let r = locked(&h.service, |s| Ok(s.restore_pending(2, now()).map(|_| ())))
        .await
        .unwrap();
    assert!(
        matches!(&r, Err(ControlError::Unavailable(m)) if m.contains("group 9")),
        "{r:?}"
    );
    let planned = locked(&h.service, |s| Ok(s.background(now(), false).finish))
        .await
        .unwrap();
    assert!(planned.is_empty(), "{planned:?}");
    h.stop().await;
}
