//! The store client against a directory and (feature `s3-server`) the in-process S3
//! server: the same promises from both.

use bytes::Bytes;
use tessera_backup::{Error, Store};
use tessera_proto::control::{StoreKind, StoreSpec};

fn dir_spec(path: &std::path::Path) -> StoreSpec {
    StoreSpec {
        name: "local".into(),
        zone: "z1".into(),
        kind: StoreKind::Dir {
            path: path.join("store").display().to_string(),
        },
    }
}

/// What every store promises, whatever is behind it.
async fn store_keeps_its_promises(store: &Store) {
    store.check().await.expect("check");
    assert_eq!(store.list("").await.expect("list"), Vec::<String>::new());

    let a = "objects/ab/abcd";
    assert!(!store.exists(a).await.expect("exists"));
    match store.get(a).await {
        Err(Error::NotFound { store: s, key }) => {
            assert_eq!((s.as_str(), key.as_str()), (store.name(), a))
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    store.put(a, Bytes::from_static(b"one")).await.expect("put");
    assert!(store.exists(a).await.expect("exists"));
    assert_eq!(store.get(a).await.expect("get"), &b"one"[..]);

    // An existing name is kept unless forced.
    assert!(
        !store
            .put_if_missing(a, Bytes::from_static(b"two"), false)
            .await
            .expect("put")
    );
    assert_eq!(store.get(a).await.expect("get"), &b"one"[..]);
    assert!(
        store
            .put_if_missing(a, Bytes::from_static(b"two"), true)
            .await
            .expect("put")
    );
    assert_eq!(store.get(a).await.expect("get"), &b"two"[..]);
    let b = "segments/ff00";
    assert!(
        store
            .put_if_missing(b, Bytes::from(vec![7u8; 300_000]), false)
            .await
            .expect("put")
    );
    assert_eq!(store.get(b).await.expect("get").len(), 300_000);
    store
        .put("roots/r1", Bytes::new())
        .await
        .expect("put empty");
    assert_eq!(store.get("roots/r1").await.expect("get"), Bytes::new());

    assert_eq!(store.list("").await.expect("list"), vec![a, "roots/r1", b]);
    assert_eq!(store.list("objects").await.expect("list"), vec![a]);
    assert_eq!(store.list("segments/").await.expect("list"), vec![b]);
    assert_eq!(
        store.list("nothing").await.expect("list"),
        Vec::<String>::new()
    );

    // Missing keys count as deleted.
    let failed = store
        .delete_many(vec![a.into(), "objects/00/missing".into(), b.into()])
        .await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(store.list("").await.expect("list"), vec!["roots/r1"]);

    // More than one batch.
    let many: Vec<String> = (0..1100)
        .map(|i| format!("objects/{:02x}/k{i}", i % 256))
        .collect();
    for k in many.iter().step_by(97) {
        store.put(k, Bytes::from_static(b"x")).await.expect("put");
    }
    let failed = store.delete_many(many).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        store.list("objects").await.expect("list"),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_store_keeps_its_promises() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir_spec(dir.path())).expect("open");
    assert_eq!(store.name(), "local");
    store_keeps_its_promises(&store).await;
    // Objects are files under the directory, by key.
    store
        .put("objects/aa/x", Bytes::from_static(b"y"))
        .await
        .expect("put");
    assert_eq!(
        std::fs::read(dir.path().join("store/objects/aa/x")).expect("file"),
        b"y"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_store_that_cannot_be_created_is_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("file"), b"").expect("file");
    let spec = StoreSpec {
        name: "bad".into(),
        zone: String::new(),
        kind: StoreKind::Dir {
            path: dir.path().join("file/store").display().to_string(),
        },
    };
    assert!(matches!(Store::open(&spec), Err(Error::Invalid { .. })));
}
