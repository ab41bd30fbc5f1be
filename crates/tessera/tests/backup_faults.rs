//! Backups under faults and bad requests, on a real cluster: a copy between two stores
//! (directory → S3 and S3 → directory) interrupted by killing the leading manager and
//! resumed by the next; a storage node killed during a backup, and a storage node and the
//! manager killed during a restore, each resumed to the same bytes; and every bad request
//! (unknown names, a restore onto an existing volume, deleting what an upload, a copy or a
//! restore reads, a snapshot of a volume still restoring) refused clearly, changing nothing.
//!
//! The plain paths (incremental uploads, 503s, credentials, the collector) are in
//! `backup.rs`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::backup::{
    BLOCK, BackupCluster, Image, Kind, MIB, TestStore, WAIT, backup, backup_info, backup_list,
    backup_start, checksum, cli_fails, cli_json, cli_ok, leader_of_chunk, objects_by_region,
    reachable, restore, restore_start, store_list, volume_info, wait_backup, wait_backup_until,
    wait_restored,
};
use common::{FAST_RECOVERY, Opts, fully_replicated};
use tessera_proto::control::{BackupInfo, BackupState, VolumeInfo};

const SIZE: u64 = 64 * MIB;

/// A volume `name` of 64 MiB in 16 MiB chunks, every region but 9 and 33 written with
/// blocks unique to `salt`, and snapshot `s1` of it; the bytes written.
async fn volume_with_snapshot(c: &BackupCluster, name: &str, salt: u32) -> Image {
    c.create_volume(name, "64MiB", "16MiB");
    let client = c.client().await;
    let vol = client.open(name).await.expect("attach");
    let mut img = Image::new(SIZE);
    for r in (0..SIZE / MIB).filter(|r| ![9, 33].contains(r)) {
        img.write(&vol, r * MIB, MIB, salt).await;
    }
    vol.close().await.expect("detach");
    cli_ok(c, &["snapshot", "create", &format!("{name}@s1")]);
    img
}

/// Keys of `keys` other than roots: the segments and objects two copies share.
fn shared(keys: &BTreeSet<String>) -> BTreeSet<String> {
    keys.iter()
        .filter(|k| !k.starts_with("roots/"))
        .cloned()
        .collect()
}

/// A backup copied from store `src` to store `dst` (three managers), slowed at its S3
/// side and interrupted by killing the leading manager once the copy has reached the
/// store: the next leader resumes it to `Ready`; the target holds every segment and
/// object of the backup (the same as the source's) and the copy's root; a restore from
/// the copy (`--store dst`) reads the target only and equals the snapshot. Deleting the
/// source backup while the copy reads it is refused, naming the copy.
async fn interrupted_copy_resumes(from: Kind, to: Kind) {
    let src = TestStore::start(from, "src", "zone1").await;
    let dst = TestStore::start(to, "dst", "zone2").await;
    let opts = Opts {
        managers: 3,
        ..Opts::default()
    };
    let mut c = BackupCluster::start(opts, vec![src, dst]).await;
    let img = volume_with_snapshot(&c, "v", 1).await;
    let b = backup(&c, "v@s1", Some("src")).await;
    assert_eq!(b.store, "src");

    let slow = if to == Kind::S3 { "dst" } else { "src" };
    let s3 = c.store(slow).s3();
    let served = || s3.requests("GET") + s3.requests("PUT") + s3.requests("HEAD");
    s3.set_delay(Duration::from_secs(2));
    let before = served();
    let id = b.id.to_string();
    let copy: BackupInfo = cli_json(
        &c,
        &["backup", "copy", &id, "--to-store", "dst", "--no-wait"],
    );
    assert_eq!(copy.copied_from, Some(b.id), "{copy:?}");
    assert_eq!((copy.store.as_str(), copy.zone.as_str()), ("dst", "zone2"));
    assert_ne!(copy.id, b.id);
    let deadline = Instant::now() + WAIT;
    while served() < before + 3 {
        assert!(
            Instant::now() < deadline,
            "the copy never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = cli_fails(&c, &["backup", "delete", &id], &[5]);
    assert!(e.contains(&copy.id.to_string()), "names the copy: {e}");
    let mid = backup_info(&c, copy.id);
    assert_eq!(mid.state, BackupState::Uploading, "mid-copy: {mid:?}");
    let leader = c.wait_leader().await;
    c.kill_manager(leader);
    c.store(slow).s3().set_delay(Duration::ZERO);
    let next = c.wait_leader().await;
    assert_ne!(next, leader);
    let done = wait_backup(&c, copy.id).await;
    assert_eq!(done.copied_from, Some(b.id));
    c.restart_manager(leader);

    let (src_st, dst_st) = (c.store("src").open(), c.store("dst").open());
    let from_src = reachable(&src_st, &b.root.expect("root")).await;
    let from_dst = reachable(&dst_st, &done.root.expect("root")).await;
    assert_eq!(
        shared(&from_src),
        shared(&from_dst),
        "the same segments and objects"
    );
    let held = c.store("dst").keys().await;
    let missing: Vec<_> = from_dst.difference(&held).collect();
    assert!(missing.is_empty(), "the target lacks {missing:?}");
    assert_eq!(
        objects_by_region(&dst_st, &done.root.expect("root")).await,
        img.objects()
    );

    // The restore reads the copy: the S3 side is read only if it is the target.
    let s3 = c.store(slow).s3();
    let gets = s3.requests("GET");
    restore(&c, "r", b.id, Some("dst"));
    let read = s3.requests("GET") - gets;
    if to == Kind::S3 {
        assert!(
            read >= img.objects().len() as u64,
            "{read} GETs from the target"
        );
    } else {
        assert_eq!(read, 0, "the source store was read");
    }
    let client = c.client().await;
    assert_eq!(checksum(&client, "r").await, img.checksum());
    assert_eq!(checksum(&client, "v@s1").await, img.checksum());
    let again: BackupInfo = cli_json(
        &c,
        &["backup", "copy", &id, "--to-store", "dst", "--no-wait"],
    );
    assert_eq!(again.id, copy.id, "asking again answers the existing copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_copy_resumes_on_the_next_leader_dir_to_s3() {
    interrupted_copy_resumes(Kind::Dir, Kind::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_copy_resumes_on_the_next_leader_s3_to_dir() {
    interrupted_copy_resumes(Kind::S3, Kind::Dir).await;
}

/// Uploads and fills paced at 4 MiB/s, one chunk at a time, so that each 16 MiB chunk
/// takes seconds and a kill lands mid-way.
const PACED: &str = "backup_bytes_per_sec = 4194304\nrestore_bytes_per_sec = 4194304\n\
                     backup_chunks_in_flight = 1\n";

/// Polls `volume info NAME` until this leader's restore meter shows `bytes` filled; it
/// must still be restoring then (the kill that follows lands mid-way). Bytes, not chunks:
/// a chunk counts as done only once unlinked, which the manager does no sooner than 30 s
/// after it first saw the restore linked (a late Link must land first).
async fn wait_restore_bytes(c: &BackupCluster, name: &str, bytes: u64) -> VolumeInfo {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = volume_info(c, name);
        let r = v.restore.as_ref().unwrap_or_else(|| {
            panic!(
                "{name}: restored before {bytes} bytes were seen filled (pacing?): {v:?}\n{}",
                c.logs()
            )
        });
        if r.hydrated_bytes >= bytes {
            assert!(r.chunks_done < r.chunks_total, "{v:?}");
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {bytes} bytes not filled in {WAIT:?}: {r:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A storage node leading the group of a chunk not yet uploaded is killed during a
/// backup: the backup completes (from the group's new leader) and names exactly the
/// regions written. During the restore, a node leading a chunk not yet filled is killed,
/// then the manager: the restore resumes after the manager restarts and the volume
/// equals the snapshot; the source volume is unchanged.
async fn killed_node_and_manager_resume(kind: Kind) {
    let store = TestStore::start(kind, "main", "zone1").await;
    let opts = Opts {
        manager_extra: format!("{FAST_RECOVERY}{PACED}"),
        ..Opts::default()
    };
    let mut c = BackupCluster::start(opts, vec![store]).await;
    let img = volume_with_snapshot(&c, "v", 3).await;
    let client = c.client().await;
    let source = checksum(&client, "v").await;

    let b = backup_start(&c, "v@s1", None);
    let mid = wait_backup_until(&c, b.id, "a first chunk", |b| {
        b.state != BackupState::Uploading || b.chunks_done >= 1
    })
    .await;
    assert_eq!(
        (mid.state, mid.chunks_done < mid.chunks_total),
        (BackupState::Uploading, true),
        "the upload must still run when the node is killed (pacing?): {mid:?}"
    );
    let victim = leader_of_chunk(&c, "v", 3).await;
    c.kill_node(victim);
    let done = wait_backup(&c, b.id).await;
    c.restart_node(victim);
    c.wait_status("every replica back", WAIT, |s| fully_replicated(s, 3))
        .await;
    let st = c.stores[0].open();
    let root = done.root.expect("root");
    assert_eq!(objects_by_region(&st, &root).await, img.objects());
    assert_eq!(c.stores[0].keys().await, reachable(&st, &root).await);

    let r = restore_start(&c, "r", b.id, None);
    assert!(r.restore.is_some(), "restoring: {r:?}");
    let first = wait_restore_bytes(&c, "r", 1).await;
    let first = first.restore.map_or(0, |r| r.hydrated_bytes);
    let victim = leader_of_chunk(&c, "r", 3).await;
    c.kill_node(victim);
    wait_restore_bytes(&c, "r", first + 1).await;
    c.kill_manager(0);
    c.restart_manager(0);
    c.wait_leader().await;
    let v = wait_restored(&c, "r").await;
    assert_eq!(v.size, SIZE);
    c.restart_node(victim);
    c.wait_status("every replica back", WAIT, |s| fully_replicated(s, 3))
        .await;
    let client = c.client().await;
    assert_eq!(
        checksum(&client, "r").await,
        img.checksum(),
        "r equals v@s1"
    );
    assert_eq!(checksum(&client, "v@s1").await, img.checksum());
    assert_eq!(
        checksum(&client, "v").await,
        source,
        "the source is unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_or_manager_during_backup_and_restore_is_survived_dir() {
    killed_node_and_manager_resume(Kind::Dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_or_manager_during_backup_and_restore_is_survived_s3() {
    killed_node_and_manager_resume(Kind::S3).await;
}

/// Every bad request is refused with the exit code of its class and a message naming
/// what is wrong, and changes nothing: unknown volume, snapshot, store or backup (3); a
/// malformed `VOL@SNAP` or a copy to the backup's own store (2); a restore onto an existing
/// name (4); deleting a snapshot an uploading backup reads (its own or its base's), or the
/// backup itself, or restoring from it, while it uploads (refused, naming it); deleting a
/// backup a restoring volume reads (naming the volume); a snapshot of a volume still
/// restoring (saying so), which is attachable and readable meanwhile. Deleting a volume
/// keeps its backups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backup_requests_are_refused_clearly_and_change_nothing() {
    let s3 = TestStore::start(Kind::S3, "s3", "zone1").await;
    let local = TestStore::start(Kind::Dir, "local", "zone1").await;
    // Fills paced at 8 MiB/s: a restore takes seconds, and the checks made meanwhile see it.
    let opts = Opts {
        manager_extra: "default_store = \"s3\"\nrestore_bytes_per_sec = 8388608\n".into(),
        ..Opts::default()
    };
    let c = BackupCluster::start(opts, vec![local, s3]).await;
    let stores = store_list(&c);
    let named: Vec<(&str, &str, bool)> = stores
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str(), s.default))
        .collect();
    assert_eq!(named, [("local", "dir", false), ("s3", "s3", true)]);
    assert!(!format!("{stores:?}").contains(&c.store("s3").s3().secret_key));
    let img = volume_with_snapshot(&c, "v", 5).await;
    let b1 = backup(&c, "v@s1", None).await;
    assert_eq!(b1.store, "s3", "the default store");
    let id1 = b1.id.to_string();

    for (args, names) in [
        (vec!["backup", "create", "nope@s1"], "nope"),
        (vec!["backup", "create", "v@nope"], "nope"),
        (
            vec!["backup", "create", "v@s1", "--store", "nostore"],
            "nostore",
        ),
        (vec!["backup", "info", "999999"], "999999"),
        (vec!["backup", "delete", "999999"], "999999"),
        (
            vec!["backup", "copy", "999999", "--to-store", "local"],
            "999999",
        ),
        (
            vec!["backup", "copy", &id1, "--to-store", "nostore"],
            "nostore",
        ),
        (
            vec!["volume", "create", "x", "--from-backup", "999999"],
            "999999",
        ),
        (
            vec![
                "volume",
                "create",
                "x",
                "--from-backup",
                &id1,
                "--store",
                "nostore",
            ],
            "nostore",
        ),
    ] {
        let e = cli_fails(&c, &args, &[3]);
        assert!(e.contains(names), "{args:?}: names {names}: {e}");
    }
    cli_fails(&c, &["backup", "create", "v"], &[2]);
    let e = cli_fails(&c, &["backup", "copy", &id1, "--to-store", "s3"], &[2]);
    assert!(e.contains("s3"), "{e}");
    let e = cli_fails(&c, &["volume", "create", "v", "--from-backup", &id1], &[4]);
    assert!(e.contains("\"v\"") || e.contains(" v "), "{e}");
    assert_eq!(tokio::task::block_in_place(|| c.volume_names()), ["v"]);
    assert_eq!(backup_list(&c, None).len(), 1);

    // An upload held up by a slow store: what it reads cannot go, and it is not
    // restorable yet.
    let client = c.client().await;
    let vol = client.open("v").await.expect("attach v");
    let mut img2 = Image(img.0.clone());
    img2.write(&vol, 3 * MIB, 4096, 6).await;
    vol.close().await.expect("detach");
    cli_ok(&c, &["snapshot", "create", "v@s2"]);
    let slow = c.store("s3").s3();
    slow.set_delay(Duration::from_secs(3));
    let b2 = backup_start(&c, "v@s2", None);
    assert_eq!(b2.base, Some(b1.id), "{b2:?}");
    let id2 = b2.id.to_string();
    for snap in ["v@s2", "v@s1"] {
        let e = cli_fails(&c, &["snapshot", "delete", snap], &[5]);
        assert!(e.contains(&id2), "{snap}: names backup {id2}: {e}");
    }
    let e = cli_fails(&c, &["volume", "delete", "v"], &[5]);
    assert!(
        e.contains(&id2),
        "deleting the volume names backup {id2}: {e}"
    );
    cli_fails(&c, &["volume", "create", "x", "--from-backup", &id2], &[2]);
    let still = backup_info(&c, b2.id);
    assert_eq!(still.state, BackupState::Uploading, "{still:?}");
    slow.set_delay(Duration::ZERO);
    wait_backup(&c, b2.id).await;
    let names: Vec<String> = tokio::task::block_in_place(|| c.volume_names());
    assert_eq!(names, ["v"], "no volume x was made");

    // Deleting an upload cancels it: it is forgotten, and its snapshot may go.
    cli_ok(&c, &["snapshot", "create", "v@s3"]);
    slow.set_delay(Duration::from_secs(3));
    let b3 = backup_start(&c, "v@s3", None);
    cli_fails(&c, &["snapshot", "delete", "v@s3"], &[5]);
    cli_ok(&c, &["backup", "delete", &b3.id.to_string()]);
    slow.set_delay(Duration::ZERO);
    assert!(
        backup_list(&c, None).iter().all(|b| b.id != b3.id),
        "the cancelled backup is forgotten"
    );
    cli_ok(&c, &["snapshot", "delete", "v@s3"]);

    // A volume being restored (slowly): attachable and readable at once (a lazy restore),
    // but no snapshot of it until it is filled (saying so), and its backup stays.
    let r = restore_start(&c, "restoring-r", b1.id, None);
    slow.set_delay(Duration::from_secs(2));
    assert!(r.restore.is_some(), "{r:?}");
    let vol = client
        .open("restoring-r")
        .await
        .expect("a restoring volume is attachable");
    img.check(&vol, 3 * MIB, 2 * BLOCK, "a read while restoring")
        .await;
    let e = cli_fails(&c, &["snapshot", "create", "restoring-r@x"], &[5]);
    assert!(e.to_lowercase().contains("restor"), "a snapshot: {e}");
    let e = cli_fails(&c, &["backup", "delete", &id1], &[5]);
    assert!(e.contains("restoring-r"), "names the restoring volume: {e}");
    slow.set_delay(Duration::ZERO);
    wait_restored(&c, "restoring-r").await;
    vol.close().await.expect("detach");
    let r = client
        .open("restoring-r")
        .await
        .expect("attach once restored");
    r.close().await.expect("detach");
    assert_eq!(checksum(&client, "restoring-r").await, img.checksum());

    // Once uploaded, the snapshot may go; deleting the volume keeps its backups.
    cli_ok(&c, &["snapshot", "delete", "v@s2"]);
    cli_ok(&c, &["volume", "delete", "v"]);
    let left: Vec<u64> = backup_list(&c, None).iter().map(|b| b.id).collect();
    assert_eq!(left, [b2.id, b1.id]);
    restore(&c, "v-again", b2.id, None);
    assert_eq!(checksum(&client, "v-again").await, img2.checksum());
}
