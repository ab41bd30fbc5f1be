//! The store client against a directory and (feature `s3-server`) the in-process S3
//! server: the same promises from both.

use bytes::Bytes;
use futures::StreamExt;
use tessera_backup::{Error, MARKER, Store, keys, region};
use tessera_proto::control::{Hash, REGION_BYTES, StoreKind, StoreSpec};

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
    store
        .verify_marker()
        .await
        .expect_err("no marker before the first check");
    store.check().await.expect("check");
    // The check leaves the marker, and keeps it.
    assert_eq!(store.list("").await.expect("list"), vec![MARKER]);
    let marker = store.get(MARKER).await.expect("marker");
    store.verify_marker().await.expect("a marker");
    store.check().await.expect("check again");
    assert_eq!(store.get(MARKER).await.expect("marker"), marker);
    store.delete_many(vec![MARKER.into()]).await;

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
    // Bounded reads: the object whole up to its size, refused unread past the bound.
    assert_eq!(
        store.get_bounded(b, 300_000).await.expect("get").len(),
        300_000
    );
    match store.get_bounded(b, 299_999).await {
        Err(Error::Corrupt { key, why, .. }) => {
            assert_eq!(key, b);
            assert!(why.contains("300000 bytes, at most 299999"), "{why}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // An object of another size than the bytes to put (truncated) is put again.
    store
        .put(b, Bytes::from(vec![7u8; 1000]))
        .await
        .expect("truncate");
    assert!(
        store
            .put_if_missing(b, Bytes::from(vec![7u8; 300_000]), false)
            .await
            .expect("put")
    );
    assert_eq!(store.size_of(b).await.expect("size"), Some(300_000));
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

    // More than a page of listing and a batch of deletes.
    let mut many: Vec<String> = (0..2100)
        .map(|i| format!("objects/{:02x}/k{i:04}", i % 256))
        .collect();
    futures::stream::iter(&many)
        .for_each_concurrent(64, |k| async move {
            store.put(k, Bytes::from_static(b"x")).await.expect("put");
        })
        .await;
    many.sort();
    assert_eq!(store.list("objects").await.expect("list"), many);
    many.push("objects/00/missing".into());
    let failed = store.delete_many(many).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        store.list("objects").await.expect("list"),
        Vec::<String>::new()
    );
}

/// Many regions put at once, read back and verified, as a backup and a restore do.
async fn regions_round_trip_with_many_in_flight(store: &Store) -> Vec<Hash> {
    let puts = (0..64u8).map(|i| {
        let mut data = vec![0u8; REGION_BYTES as usize];
        for (j, b) in data
            .iter_mut()
            .enumerate()
            .step_by(4096 * usize::from(i % 3 + 1))
        {
            *b = i.wrapping_add(j as u8) | 1;
        }
        async move {
            let e = region::encode(&data).expect("has data");
            let key = keys::object(&e.hash);
            store
                .put_if_missing(&key, e.bytes, false)
                .await
                .expect("put");
            (e.hash, data)
        }
    });
    let put = futures::future::join_all(puts).await;
    let gets = put.iter().map(|(hash, data)| async move {
        let bytes = store.get(&keys::object(hash)).await.expect("get");
        let r = region::decode(store.name(), hash, &bytes).expect("verifies");
        assert_eq!(&r.to_bytes(), data);
    });
    futures::future::join_all(gets).await;
    put.into_iter().map(|(h, _)| h).collect()
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

    // A region corrupted at rest is refused when read.
    let hashes = regions_round_trip_with_many_in_flight(&store).await;
    let key = keys::object(&hashes[5]);
    let path = dir.path().join("store").join(&key);
    let mut bytes = std::fs::read(&path).expect("file");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).expect("file");
    let got = store.get(&key).await.expect("get");
    match region::decode(store.name(), &hashes[5], &got) {
        Err(Error::Corrupt { key: k, .. }) => assert_eq!(k, key),
        other => panic!("expected Corrupt, got {other:?}"),
    }
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

#[cfg(feature = "s3-server")]
mod s3 {
    use std::time::{Duration, Instant};

    use tessera_backup::s3_server::S3Server;
    use tessera_proto::control::Secret;

    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn an_s3_store_keeps_its_promises() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = S3Server::start(dir.path(), "tessera").await;
        let store = Store::open(&server.spec("s3a", "z2")).expect("open");
        store_keeps_its_promises(&store).await;
        regions_round_trip_with_many_in_flight(&store).await;
        assert!(server.requests("PUT") > 64 && server.requests("head") > 64);
        assert!(server.requests("POST") > 0, "deletes are batched");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_prefix_keeps_a_store_to_its_part_of_the_bucket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = S3Server::start(dir.path(), "tessera").await;
        let mut spec = server.spec("s3p", "z2");
        if let StoreKind::S3 { prefix, .. } = &mut spec.kind {
            *prefix = "team/a".into();
        }
        let store = Store::open(&spec).expect("open");
        store_keeps_its_promises(&store).await;
        store
            .put("roots/r2", Bytes::from_static(b"r"))
            .await
            .expect("put");
        let whole = Store::open(&server.spec("s3", "z2")).expect("open");
        assert_eq!(
            whole.list("").await.expect("list"),
            vec!["team/a/roots/r1", "team/a/roots/r2"]
        );
        assert!(dir.path().join("tessera/team/a/roots/r2").is_file());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn wrong_credentials_are_a_credentials_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = S3Server::start(dir.path(), "tessera").await;
        let mut spec = server.spec("s3a", "z2");
        if let StoreKind::S3 {
            secret_access_key, ..
        } = &mut spec.kind
        {
            *secret_access_key = Secret("wrong".into());
        }
        let store = Store::open(&spec).expect("open");
        let started = Instant::now();
        match store.check().await {
            Err(Error::Credentials { store, why }) => {
                assert_eq!(store, "s3a");
                assert!(!why.contains("wrong"), "never prints the secret: {why}");
            }
            other => panic!("expected Credentials, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "not retried");

        let mut spec = server.spec("s3b", "z2");
        if let StoreKind::S3 { access_key_id, .. } = &mut spec.kind {
            *access_key_id = "NOSUCHKEY".into();
        }
        let store = Store::open(&spec).expect("open");
        assert!(matches!(
            store.check().await,
            Err(Error::Credentials { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missing_bucket_is_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = S3Server::start(dir.path(), "tessera").await;
        let mut spec = server.spec("s3a", "z2");
        if let StoreKind::S3 { bucket, .. } = &mut spec.kind {
            *bucket = "nosuchbucket".into();
        }
        let store = Store::open(&spec).expect("open");
        assert!(
            matches!(store.check().await, Err(Error::Invalid { .. })),
            "{:?}",
            store.check().await
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn slow_downs_and_dropped_connections_are_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = S3Server::start(dir.path(), "tessera").await;
        let store = Store::open(&server.spec("s3a", "z2")).expect("open");

        server.fail_next(3);
        store
            .put("objects/aa/a", Bytes::from_static(b"a"))
            .await
            .expect("put retried");
        assert_eq!(server.requests("PUT"), 4);
        assert_eq!(store.get("objects/aa/a").await.expect("get"), &b"a"[..]);

        server.drop_next(2);
        store
            .put("objects/aa/b", Bytes::from_static(b"b"))
            .await
            .expect("put retried");
        server.drop_next(1);
        assert_eq!(
            store.get("objects/aa/b").await.expect("get retried"),
            &b"b"[..]
        );

        server.set_delay(Duration::from_millis(300));
        let started = Instant::now();
        assert!(store.exists("objects/aa/b").await.expect("exists"));
        assert!(started.elapsed() >= Duration::from_millis(300));
        server.set_delay(Duration::ZERO);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreachable_store_is_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = S3Server::start(dir.path(), "tessera").await;
        let spec = server.spec("s3a", "z2");
        drop(server);
        let store = Store::open(&spec).expect("open");
        match store.get("objects/aa/a").await {
            Err(Error::Unavailable { store, why }) => {
                assert_eq!(store, "s3a");
                assert!(!why.is_empty());
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn a_server_started_outside_a_runtime_serves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = futures::executor::block_on(S3Server::start(dir.path(), "tessera"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let store = Store::open(&server.spec("s3a", "z2")).expect("open");
        rt.block_on(store.check()).expect("check");
        // The probe and the marker; the probe read back.
        assert!(server.requests("PUT") == 2 && server.requests("GET") == 1);
    }

    #[tokio::test]
    async fn a_server_serves_while_its_callers_runtime_is_blocked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = S3Server::start(dir.path(), "tessera").await;
        let store = Store::open(&server.spec("s3a", "z2")).expect("open");
        // As a test waiting on a child process does: this current-thread runtime is
        // blocked until the check, made elsewhere, returns.
        let checked = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(store.check())
        })
        .join()
        .expect("thread");
        checked.expect("check");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_server_binary_prints_how_to_reach_it() {
        use std::io::BufRead;

        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera-s3-server"))
            .args([
                "--root",
                &dir.path().display().to_string(),
                "--bucket",
                "bk1",
            ])
            .args(["--access-key", "AK", "--secret-key", "SK"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        assert_eq!(
            (field("bucket"), field("access_key"), field("secret_key")),
            ("bk1".into(), "AK".into(), "SK".into())
        );
        let spec = StoreSpec {
            name: "bin".into(),
            zone: String::new(),
            kind: StoreKind::S3 {
                endpoint: field("endpoint"),
                bucket: "bk1".into(),
                region: String::new(),
                access_key_id: "AK".into(),
                secret_access_key: Secret("SK".into()),
                prefix: String::new(),
            },
        };
        let checked = Store::open(&spec).expect("open").check().await;
        child.kill().expect("kill");
        child.wait().expect("wait");
        checked.expect("check");
    }
}
