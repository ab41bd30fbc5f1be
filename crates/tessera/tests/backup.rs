//! Backups in object storage on a real cluster (one manager, three storage nodes), each
//! against a directory store and against the in-process S3 server: an incremental backup
//! uploads only the regions holding changed blocks plus its manifest (asserted from the
//! store's own listing) and both backups restore to exactly their snapshots; a store
//! answering 503s and slowed mid-upload delays a backup but never fails it or records what
//! is not stored; wrong S3 credentials stop the manager at start; after backups are
//! deleted the collector leaves exactly what the remaining backup reaches.
//!
//! Faults (copy, killed nodes and managers) and bad requests are in `backup_faults.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::backup::{
    BackupCluster, Image, Kind, MIB, TestStore, WAIT, backup, backup_info, backup_list,
    backup_start, checksum, cli_fails, cli_ok, manifest, object_keys, objects_by_region, reachable,
    restore, store_list, store_toml, wait_backup,
};
use common::{BIN, Opts, free_port};
use tessera_backup::keys;
use tessera_backup::manifest::Root;
use tessera_proto::control::{
    BackupInfo, BackupState, Hash, ManagerReply, ManagerRequest, Secret, StoreKind,
};

/// Every volume of these tests: 64 MiB in 16 MiB chunks, so 4 chunks of 16 regions, each
/// chunk in one of the cluster's groups.
const SIZE: u64 = 64 * MIB;
const CHUNK: u64 = 16 * MIB;

/// Keys under `prefix` in `keys`.
fn under<'a>(keys: &'a BTreeSet<String>, prefix: &str) -> BTreeSet<&'a str> {
    keys.iter()
        .filter(|k| k.starts_with(prefix))
        .map(String::as_str)
        .collect()
}

/// A cluster with one store of `kind`, named `main`, and `extra` manager.toml lines.
async fn cluster(kind: Kind, extra: &str) -> BackupCluster {
    let store = TestStore::start(kind, "main", "zone1").await;
    let opts = Opts {
        manager_extra: extra.into(),
        ..Opts::default()
    };
    BackupCluster::start(opts, vec![store]).await
}

/// Pattern, snapshot, backup; overwrite three blocks in three regions and zero a fourth,
/// snapshot, backup: the second backup is incremental to the first and adds to the store
/// exactly the objects of the three regions whose blocks changed (derived from the bytes
/// written), the segments of the three chunks that changed and its root; the unchanged
/// chunk keeps its segment. Both backups restore to volumes equal to their snapshots.
async fn incremental_backup_uploads_only_changed_regions(kind: Kind) {
    let c = cluster(kind, "").await;
    let store = &c.stores[0];
    c.create_volume("v", "64MiB", "16MiB");
    let client = c.client().await;
    let vol = client.open("v").await.expect("attach v");
    let mut img = Image::new(SIZE);
    // Data in every region but 5 (chunk 0) and 44, 45 (chunk 2): holes have no object.
    let holes = [5, 44, 45];
    for r in (0..SIZE / MIB).filter(|r| !holes.contains(r)) {
        img.write(&vol, r * MIB, MIB, 1).await;
    }
    cli_ok(&c, &["snapshot", "create", "v@s1"]);
    let objects1 = img.objects();
    let sum1 = img.checksum();
    assert_eq!(objects1.len(), 61, "one object per region holding data");
    assert!(store.keys().await.is_empty(), "a fresh store");

    let b1 = backup(&c, "v@s1", None).await;
    assert_eq!(b1.store, "main");
    assert_eq!(b1.base, None, "the first backup is full: {b1:?}");
    assert_eq!((b1.size, b1.chunk_size, b1.chunks_total), (SIZE, CHUNK, 4));
    assert_eq!(b1.objects, 61, "{b1:?}");
    assert_eq!(
        b1.read_bytes, SIZE,
        "a full backup reads every region: {b1:?}"
    );
    let root1 = b1.root.expect("root");
    let keys1 = store.keys().await;
    assert_eq!(
        under(&keys1, "objects/"),
        under(&object_keys(objects1.values()), "objects/"),
        "the full backup stored exactly the regions holding data"
    );
    assert_eq!(under(&keys1, "segments/").len(), 4, "{keys1:?}");
    assert_eq!(
        under(&keys1, "roots/"),
        BTreeSet::from([keys::root(&root1).as_str()])
    );
    let st = store.open();
    assert_eq!(objects_by_region(&st, &root1).await, objects1);

    // Three 4 KiB writes in regions 1, 7 (chunk 0) and 20 (chunk 1), zeroes over all of
    // region 40 (chunk 2); chunk 3 is not touched.
    for r in [1, 7, 20] {
        img.write(&vol, r * MIB + 8192, 4096, 2).await;
    }
    img.zero(&vol, 40 * MIB, MIB).await;
    vol.close().await.expect("detach");
    cli_ok(&c, &["snapshot", "create", "v@s2"]);
    let objects2 = img.objects();
    let old: BTreeSet<Hash> = objects1.values().copied().collect();
    let new: BTreeSet<Hash> = objects2
        .values()
        .filter(|h| !old.contains(h))
        .copied()
        .collect();
    assert_eq!(
        new.len(),
        3,
        "the three regions written over hold new content"
    );

    // `backup create` waits by default, printing the backup's ID first.
    let out = cli_ok(&c, &["backup", "create", "v@s2"]);
    let list = backup_list(&c, Some("v"));
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[1].id, b1.id, "newest first: {list:?}");
    let b2 = list[0].clone();
    assert_eq!(
        b2.state,
        BackupState::Ready,
        "create returned before ready: {b2:?}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("backup {} ", b2.id)),
        "the ID first: {stdout}"
    );
    assert_eq!(b2.base, Some(b1.id), "incremental to the first: {b2:?}");
    assert_eq!(b2.uploaded_objects, 3, "{b2:?}");
    assert_eq!(b2.objects, 60, "{b2:?}");
    // The four regions holding changed blocks, and at most one more per chunk (a read
    // that lets the replica pass the snapshot's fence may be counted).
    assert!(
        (4 * MIB..=8 * MIB).contains(&b2.read_bytes),
        "only the regions holding changed blocks are read: {b2:?}"
    );
    let root2 = b2.root.expect("root");
    let keys2 = store.keys().await;
    assert!(keys1.is_subset(&keys2), "nothing was deleted");
    let added: BTreeSet<String> = keys2.difference(&keys1).cloned().collect();
    assert_eq!(
        under(&added, "objects/"),
        under(&object_keys(&new), "objects/"),
        "the second backup stored exactly the three regions whose blocks changed"
    );
    assert_eq!(
        under(&added, "roots/"),
        BTreeSet::from([keys::root(&root2).as_str()])
    );
    let (r1, segs1) = manifest(&st, &root1).await;
    let (r2, segs2) = manifest(&st, &root2).await;
    let seg_of = |root: &Root, chunk: u64| {
        root.segments
            .iter()
            .find(|(c, _)| *c == chunk)
            .map(|(_, s)| *s)
    };
    assert_eq!(seg_of(&r2, 3), seg_of(&r1, 3), "chunk 3 keeps its segment");
    let changed: BTreeSet<String> = (0..3)
        .map(|chunk| keys::segment(&seg_of(&r2, chunk).expect("a segment")))
        .collect();
    assert_eq!(
        under(&added, "segments/"),
        under(&changed, "segments/"),
        "new segments only for the three chunks that changed"
    );
    assert_eq!(added.len(), 3 + 3 + 1, "{added:#?}");
    assert_eq!((segs1.len(), segs2.len()), (4, 4));
    assert_eq!(objects_by_region(&st, &root2).await, objects2);

    let sums = [
        checksum(&client, "v@s1").await,
        checksum(&client, "v@s2").await,
    ];
    assert_eq!(sums[0], sum1, "v@s1 holds what was written before it");
    assert_eq!(
        sums[1],
        img.checksum(),
        "v@s2 holds what was written before it"
    );
    restore(&c, "r1", b1.id, None);
    restore(&c, "r2", b2.id, None);
    assert_eq!(checksum(&client, "r1").await, sums[0], "r1 equals v@s1");
    assert_eq!(checksum(&client, "r2").await, sums[1], "r2 equals v@s2");
    let r2 = client
        .open("r2")
        .await
        .expect("a restored volume is attachable");
    r2.close().await.expect("detach");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_backup_uploads_only_changed_regions_and_both_restore_exactly_dir() {
    incremental_backup_uploads_only_changed_regions(Kind::Dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_backup_uploads_only_changed_regions_and_both_restore_exactly_s3() {
    incremental_backup_uploads_only_changed_regions(Kind::S3).await;
}

/// An S3 store slowed to a second per request, then answering twenty 503s and slowed to
/// 50 ms, while a backup uploads: `backup info` shows it uploading meanwhile, it becomes
/// ready (the store saw more than those twenty requests), the store holds exactly what
/// its manifest names (nothing recorded that is not stored), and it restores equal to its
/// snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_through_503s_and_a_slow_store_completes_and_restores_exactly() {
    let c = cluster(Kind::S3, "").await;
    let store = &c.stores[0];
    c.create_volume("v", "64MiB", "16MiB");
    let client = c.client().await;
    let vol = client.open("v").await.expect("attach v");
    let mut img = Image::new(SIZE);
    img.write(&vol, 0, SIZE, 7).await;
    vol.close().await.expect("detach");
    cli_ok(&c, &["snapshot", "create", "v@s1"]);

    let s3 = store.s3();
    s3.set_delay(Duration::from_secs(1));
    let before = s3.requests("PUT") + s3.requests("HEAD");
    let b = backup_start(&c, "v@s1", None);
    assert_eq!(b.state, BackupState::Uploading);
    let deadline = Instant::now() + WAIT;
    while s3.requests("PUT") + s3.requests("HEAD") == before {
        assert!(
            Instant::now() < deadline,
            "the upload never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mid = backup_info(&c, b.id);
    assert_eq!(
        mid.state,
        BackupState::Uploading,
        "uploading while the store is slow: {mid:?}"
    );
    let all = || {
        ["GET", "PUT", "HEAD", "DELETE", "POST"]
            .map(|m| s3.requests(m))
            .iter()
            .sum::<u64>()
    };
    let at_fail = all();
    s3.fail_next(20);
    s3.set_delay(Duration::from_millis(50));
    let done = wait_backup(&c, b.id).await;
    s3.set_delay(Duration::ZERO);
    // Every request is counted, those answered 503 too: more than twenty after the fault
    // means all twenty were answered 503 to this backup, and it went on.
    let after = all() - at_fail;
    assert!(
        after > 20,
        "only {after} requests after the 503s were armed"
    );
    let root = done.root.expect("root");
    let st = store.open();
    assert_eq!(
        store.keys().await,
        reachable(&st, &root).await,
        "the store holds exactly what the backup names"
    );
    assert_eq!(objects_by_region(&st, &root).await, img.objects());
    restore(&c, "r", b.id, None);
    assert_eq!(checksum(&client, "r").await, img.checksum());
    assert_eq!(checksum(&client, "v@s1").await, img.checksum());
}

/// Runs `tessera manager` on `config` until it exits (or `limit` passes: `None`);
/// its status and output.
fn run_manager(config: &std::path::Path, limit: Duration) -> Option<(bool, String)> {
    let log = config.with_extension("log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = Command::new(BIN)
        .args([
            "manager",
            "--insecure",
            "--config",
            config.to_str().expect("utf8"),
        ])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn manager");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    status.map(|s| (s.success(), text))
}

/// A manager whose S3 store is given a wrong secret, or a wrong access key, exits non-zero
/// at start with a message naming the store and its credentials (never the secret);
/// with the right ones, the same configuration starts and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_s3_credentials_stop_the_manager_at_start_naming_the_store() {
    let store = TestStore::start(Kind::S3, "s3-offsite", "zone1").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |name: &str, secret: Option<&str>, key: Option<&str>| {
        let mut spec = store.spec.clone();
        if let StoreKind::S3 {
            secret_access_key,
            access_key_id,
            ..
        } = &mut spec.kind
        {
            if let Some(s) = secret {
                *secret_access_key = Secret(s.into());
            }
            if let Some(k) = key {
                *access_key_id = k.into();
            }
        }
        let addr = format!("127.0.0.1:{}", free_port());
        let path = dir.path().join(format!("{name}.toml"));
        let text = format!(
            "listen = \"{addr}\"\ndata_dir = \"{}\"\n{}",
            dir.path().join(name).display(),
            store_toml(&spec)
        );
        std::fs::write(&path, text).expect("write manager.toml");
        (path, addr)
    };
    for (name, secret, key) in [
        ("wrong-secret", Some("not-the-secret-4242"), None),
        ("wrong-key", None, Some("NOT-THE-KEY-4242")),
    ] {
        let (path, _) = config(name, secret, key);
        let ran = tokio::task::block_in_place(|| run_manager(&path, Duration::from_secs(60)));
        let (ok, out) = ran.unwrap_or_else(|| panic!("{name}: the manager did not exit"));
        assert!(!ok, "{name}: the manager must refuse to start:\n{out}");
        assert!(
            out.contains("s3-offsite"),
            "{name}: names the store:\n{out}"
        );
        assert!(
            out.to_lowercase().contains("credential"),
            "{name}: says the credentials were refused:\n{out}"
        );
        assert!(
            !out.contains("not-the-secret-4242"),
            "{name}: never prints a secret:\n{out}"
        );
    }

    let (path, addr) = config("right", None, None);
    let mut m = Killed(common::process::ManagerProc {
        id: 1,
        addr: addr.clone(),
        config: path,
        log: dir.path().join("right.log"),
        child: None,
        insecure: true,
    });
    m.0.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = tessera_net::call::<_, ManagerReply>(
            &tessera_net::Security::insecure(),
            &addr,
            tessera_net::Expect::AnyManager,
            &ManagerRequest::ListStores,
            Duration::from_secs(2),
        )
        .await;
        match reply {
            Ok(ManagerReply::Stores(stores)) => {
                assert_eq!(stores.len(), 1, "{stores:?}");
                assert_eq!(stores[0].name, "s3-offsite");
                assert!(!format!("{stores:?}").contains(&store.s3().secret_key));
                break;
            }
            // Not listening yet: asked again.
            Err(tessera_net::NetError::Connect { .. }) => {}
            other => panic!("the manager answered ListStores with {other:?}"),
        }
        let exited = m.0.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "the manager with the right credentials did not answer ({exited:?}):\n{}",
            common::process::log_tail(&m.0.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A manager started by hand, killed when the test ends, passed or failed.
struct Killed(common::process::ManagerProc);

impl Drop for Killed {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// Three backups (b1 full, b2 and b3 incremental, each overwriting regions of the one
/// before), then b2 deleted, then b1, with a one-second grace period: after each
/// deletion the collector leaves in the store exactly the keys the remaining backups'
/// manifests reach (the regions only the deleted ones held, their own segments and roots
/// are gone: derived from the bytes written), `store list` counts no garbage, and b3
/// restores equal to its snapshot.
async fn gc_leaves_exactly_what_remaining_backups_reach(kind: Kind) {
    let c = cluster(kind, "gc_grace_secs = 1\n").await;
    let store = &c.stores[0];
    let st = store.open();
    c.create_volume("v", "64MiB", "16MiB");
    let client = c.client().await;
    let vol = client.open("v").await.expect("attach v");
    let mut img = Image::new(SIZE);
    let mut objects = Vec::new();
    // b1: regions 0..48 (chunks 0-2). b2: regions 0..8 anew. b3: regions 4..12 anew.
    let steps: [(u64, u64, u32); 3] = [(0, 48, 1), (0, 8, 2), (4, 12, 3)];
    let mut backups = Vec::new();
    for (i, (from, to, salt)) in steps.into_iter().enumerate() {
        img.write(&vol, from * MIB, (to - from) * MIB, salt).await;
        let snap = format!("v@s{}", i + 1);
        cli_ok(&c, &["snapshot", "create", &snap]);
        objects.push(img.objects());
        let b = backup(&c, &snap, None).await;
        assert_eq!(b.base, backups.last().map(|p: &BackupInfo| p.id), "{b:?}");
        backups.push(b);
    }
    vol.close().await.expect("detach");
    let roots: Vec<Hash> = backups.iter().map(|b| b.root.expect("root")).collect();
    let mut reach = Vec::new();
    for r in &roots {
        reach.push(reachable(&st, r).await);
    }
    for (i, r) in roots.iter().enumerate() {
        assert_eq!(
            objects_by_region(&st, r).await,
            objects[i],
            "backup {}",
            i + 1
        );
    }
    let all: BTreeSet<String> = reach.iter().flatten().cloned().collect();
    assert_eq!(store.keys().await, all, "before any deletion");
    // What only b1 and b2 hold, from what was written: regions 0..12 as b1 wrote them and
    // 4..8 as b2 did; their roots; the segments of chunk 0 as they saw it.
    let kept: BTreeSet<&Hash> = objects[2].values().collect();
    let dropped: BTreeSet<&Hash> = objects[0]
        .values()
        .chain(objects[1].values())
        .filter(|h| !kept.contains(h))
        .collect();
    assert_eq!(dropped.len(), 12 + 4);

    cli_ok(&c, &["backup", "delete", &backups[1].id.to_string()]);
    let expect: BTreeSet<String> = reach[0].union(&reach[2]).cloned().collect();
    wait_collected(&c, store, &expect, "after deleting b2").await;
    cli_ok(&c, &["backup", "delete", &backups[0].id.to_string()]);
    wait_collected(&c, store, &reach[2], "after deleting b1").await;
    let gone: BTreeSet<String> = all.difference(&reach[2]).cloned().collect();
    assert_eq!(
        under(&gone, "objects/"),
        under(&object_keys(dropped.iter().copied()), "objects/")
    );
    assert_eq!(under(&gone, "roots/").len(), 2, "{gone:#?}");
    assert_eq!(under(&gone, "segments/").len(), 2, "{gone:#?}");
    let info = store_list(&c);
    assert_eq!(info[0].backups, 1, "{info:?}");
    assert_eq!(info[0].objects, objects[2].len() as u64, "{info:?}");
    for b in &backups[..2] {
        let e = cli_fails(&c, &["backup", "info", &b.id.to_string()], &[3]);
        assert!(e.contains(&b.id.to_string()), "{e}");
    }
    assert_eq!(backup_info(&c, backups[2].id).state, BackupState::Ready);
    restore(&c, "r3", backups[2].id, None);
    assert_eq!(checksum(&client, "r3").await, img.checksum());
    assert_eq!(checksum(&client, "v@s3").await, img.checksum());
}

/// Polls until the store holds exactly `expect` and `store list` counts no garbage.
async fn wait_collected(
    c: &BackupCluster,
    store: &TestStore,
    expect: &BTreeSet<String>,
    what: &str,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let keys = store.keys().await;
        let info = store_list(c);
        let garbage: BTreeMap<&str, u64> =
            info.iter().map(|s| (s.name.as_str(), s.garbage)).collect();
        if &keys == expect && garbage.values().all(|&g| g == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not collected in {WAIT:?}; garbage {garbage:?}; extra {:#?}; missing {:#?}\n{}",
            keys.difference(expect).collect::<Vec<_>>(),
            expect.difference(&keys).collect::<Vec<_>>(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_after_deleting_backups_leaves_exactly_what_the_remaining_backups_reach_dir() {
    gc_leaves_exactly_what_remaining_backups_reach(Kind::Dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_after_deleting_backups_leaves_exactly_what_the_remaining_backups_reach_s3() {
    gc_leaves_exactly_what_remaining_backups_reach(Kind::S3).await;
}
