//! Lazy restores on a real cluster (one manager, three storage nodes): a volume made with
//! `volume create --from-backup` is attached at once and serves reads of blocks the
//! pre-warm has not filled yet (fetched from the store by the chunk's leader), while
//! whole-block writes, trims, zeroes and partial-block writes made meanwhile win over the
//! backup's bytes; once filled, the volume reads back exactly without its store (the
//! directory renamed away, the S3 server stopped). Also: an object corrupt in the
//! restore's store is read, and filled, from a ready copy in another store, and a group
//! leader killed during a lazy restore neither stops the reads nor the fill.
//!
//! Every volume here is 32 MiB in 1 MiB chunks (one region each), spread over the
//! cluster's groups. The source is never read before its backup, so its access record is
//! empty and the pre-warm goes in chunk order: the tests aim their writes at the last
//! chunks, which it reaches last. The fill is slowed (the S3 server delayed, or the
//! manager's pace for a directory store) so that it gets there only minutes later;
//! `volume info`'s progress (a chunk counts once filled and unlinked) is checked as well.

mod common;

use std::time::{Duration, Instant};

use common::backup::{
    BLOCK, BackupCluster, Image, Kind, MIB, TestStore, WAIT, backup, checksum, cli_json, cli_ok,
    leader_of_chunk, objects_by_region, restore_start, volume_info, wait_restored_within,
};
use common::{Cluster, FAST_RECOVERY, Opts, fully_replicated};
use tessera_backup::keys;
use tessera_proto::control::RestoreInfo;

const SIZE: u64 = 32 * MIB;
/// Regions (= chunks) of the source left unwritten: they have no object.
const HOLES: [u64; 2] = [9, 23];
/// How long a paced fill may take here (the directory store's: 128 s at its pace).
const LONG: Duration = Duration::from_secs(400);

/// The pre-warm fills one chunk at a time and fetches one object at a time, so its speed
/// is the store's (or the pace's).
const ONE_AT_A_TIME: &str = "backup_chunks_in_flight = 1\nbackup_window = 1\n";
/// A directory store has no delay hook: its fill is paced by the manager instead, at
/// 256 KiB/s (a 1 MiB chunk every 4 s), so the first tenth of the volume (3 chunks) takes
/// 12 s. Reads fetching unfilled blocks are not paced.
const PACED: &str = "restore_bytes_per_sec = 262144\n";
/// The S3 store answers every request after 2 s until the test lifts it: a chunk's
/// pre-warm (its segment, then its object) takes 4 s or more, the first tenth 12 s.
const S3_DELAY: Duration = Duration::from_secs(2);

/// Volume `v` (32 MiB in 1 MiB chunks), every region but [`HOLES`] written with blocks
/// unique to `salt`, and its snapshot `v@s1`; the bytes written.
async fn source(c: &Cluster, salt: u32) -> Image {
    c.create_volume("v", "32MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("v").await.expect("attach v");
    let mut img = Image::new(SIZE);
    for r in (0..SIZE / MIB).filter(|r| !HOLES.contains(r)) {
        img.write(&vol, r * MIB, MIB, salt).await;
    }
    vol.close().await.expect("detach v");
    cli_ok(c, &["snapshot", "create", "v@s1"]);
    img
}

/// The restore `volume info NAME` shows: it must still be under way (`when` says at
/// which step, for the message).
fn progress(c: &Cluster, name: &str, when: &str) -> RestoreInfo {
    let v = volume_info(c, name);
    match v.restore {
        Some(r) => *r,
        None => panic!("{name}: {when}: the restore has already finished (store not slowed?)"),
    }
}

/// `volume create --from-backup` answers once every chunk is linked to the backup: the
/// restore shows as linked (usable).
fn assert_linked(c: &Cluster, name: &str) {
    let v: serde_json::Value = cli_json(c, &["volume", "info", name]);
    assert_eq!(
        v["restore"]["linked"],
        serde_json::Value::Bool(true),
        "{name}: restoring and linked right after create: {v:#}"
    );
}

/// Less than a tenth of the restore is filled, in chunks and in bytes.
fn assert_under_a_tenth(p: &RestoreInfo, what: &str) {
    assert!(
        p.chunks_done * 10 < p.chunks_total && p.hydrated_bytes * 10 < SIZE,
        "less than a tenth filled at {what}: {p:?}"
    );
}

/// Whole-block writes, a trim, zeroes, and partial-block writes, zeroes and trim into
/// chunks 26..=31 (unfilled: the pre-warm reaches them last), each read back at once;
/// the ranges written (to read again later).
async fn write_into_unfilled(img: &mut Image, vol: &tessera_client::Volume) -> Vec<(u64, u64)> {
    let mut done = Vec::new();
    // Whole blocks: three in chunk 26.
    let (off, len) = (26 * MIB + 3 * BLOCK, 3 * BLOCK);
    img.write(vol, off, len, 2).await;
    done.push((off, len));
    // A trim of four blocks and zeroes over two, in chunk 27: they stay zero under the
    // fill that comes later.
    img.discard(vol, 27 * MIB + 16 * BLOCK, 4 * BLOCK).await;
    done.push((27 * MIB + 16 * BLOCK, 4 * BLOCK));
    img.zero(vol, 27 * MIB + 128 * BLOCK, 2 * BLOCK).await;
    done.push((27 * MIB + 128 * BLOCK, 2 * BLOCK));
    // 512 bytes inside block 5 of chunk 28: the rest of the block is the backup's.
    img.write_at(vol, 28 * MIB + 5 * BLOCK + 512, vec![0x5a; 512])
        .await;
    done.push((28 * MIB + 5 * BLOCK, BLOCK));
    // 1536 bytes across blocks 7 and 8 of chunk 29 (a partial tail and a partial head).
    img.write_at(vol, 29 * MIB + 8 * BLOCK - 1024, vec![0xa5; 1536])
        .await;
    done.push((29 * MIB + 7 * BLOCK, 2 * BLOCK));
    // A partial trim (6000 bytes from inside block 2 of chunk 30 to inside block 3) and
    // partial zeroes (1000 bytes inside block 3 of chunk 31).
    img.discard(vol, 30 * MIB + 2 * BLOCK + 1000, 6000).await;
    done.push((30 * MIB + 2 * BLOCK, 2 * BLOCK));
    img.zero(vol, 31 * MIB + 3 * BLOCK + 100, 1000).await;
    done.push((31 * MIB + 3 * BLOCK, BLOCK));
    for &(off, len) in &done {
        img.check(vol, off, len, &format!("read back at once at {off}"))
            .await;
    }
    done
}

/// Kills every storage node and starts it again, then waits for every group to lead.
async fn restart_nodes(c: &mut Cluster) {
    for i in 0..3 {
        c.kill_node(i);
    }
    for i in 0..3 {
        c.restart_node(i);
    }
    c.wait_status("every group led again", WAIT, |s| fully_replicated(s, 3))
        .await;
}

/// Pattern, snapshot, backup; restore from the store slowed (S3: delayed; directory:
/// the fill paced) and attach at once: the first read returns the snapshot's bytes while
/// less than a tenth is filled; a read across two chunks and a region of zeroes too;
/// writes, trims, zeroes and partial writes into unfilled chunks read back at once.
/// Then the fill finishes, the store goes (directory renamed, S3 server stopped), every
/// storage node is restarted, and the whole volume reads as the snapshot with those
/// writes applied.
async fn a_lazy_restore_is_usable_at_once(kind: Kind) {
    let store = TestStore::start(kind, "main", "zone1").await;
    let extra = match kind {
        Kind::Dir => format!("{ONE_AT_A_TIME}{PACED}"),
        Kind::S3 => ONE_AT_A_TIME.to_string(),
    };
    let opts = Opts {
        manager_extra: extra,
        ..Opts::default()
    };
    let mut c = BackupCluster::start(opts, vec![store]).await;
    let mut img = source(&c, 1).await;
    let b = backup(&c, "v@s1", None).await;
    if kind == Kind::S3 {
        c.stores[0].s3().set_delay(S3_DELAY);
    }

    let r = restore_start(&c, "r", b.id, None);
    assert!(r.restore.is_some(), "restoring: {r:?}");
    assert_linked(&c, "r");
    let client = c.client().await;
    let vol = client
        .open("r")
        .await
        .expect("a restoring volume is attachable once linked");
    img.check(&vol, 20 * MIB + 32 * BLOCK, 16 * BLOCK, "the first read")
        .await;
    let p = progress(&c, "r", "the first read");
    assert_under_a_tenth(&p, "the first read");
    img.check(
        &vol,
        22 * MIB - 2 * BLOCK,
        4 * BLOCK,
        "a read across two chunks",
    )
    .await;
    img.check(&vol, 23 * MIB, MIB, "a region without an object")
        .await;

    let written = write_into_unfilled(&mut img, &vol).await;
    let p = progress(&c, "r", "the writes");
    // Chunk order: 26 chunks precede chunk 26, 24 of them holding data.
    assert!(
        p.chunks_done < 24,
        "the pre-warm had reached the chunks written: {p:?}"
    );

    if kind == Kind::S3 {
        c.stores[0].s3().set_delay(Duration::ZERO);
    }
    let v = wait_restored_within(&c, "r", LONG).await;
    assert_eq!(v.size, SIZE);
    vol.close().await.expect("detach r");
    // The store goes away: a filled volume reads only what its groups hold.
    match kind {
        Kind::Dir => {
            let root = c.stores[0].root.path();
            std::fs::rename(root.join("store"), root.join("store-removed"))
                .expect("rename the store away");
        }
        Kind::S3 => drop(c.stores[0].s3.take()),
    }
    restart_nodes(&mut c).await;
    let client = c.client().await;
    let vol = client.open("r").await.expect("attach r again");
    for (off, len) in written {
        img.check(&vol, off, len, &format!("without the store, at {off}"))
            .await;
    }
    vol.close().await.expect("detach r");
    assert_eq!(
        checksum(&client, "r").await,
        img.checksum(),
        "r holds the snapshot with the writes made while it was restoring"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_restore_is_usable_at_once_and_ends_independent_of_its_store_dir() {
    a_lazy_restore_is_usable_at_once(Kind::Dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_restore_is_usable_at_once_and_ends_independent_of_its_store_s3() {
    a_lazy_restore_is_usable_at_once(Kind::S3).await;
}

/// A backup in directory store `main`, copied to S3 store `copy` (another zone); two of
/// its objects are then damaged in `main` (chunk 20's garbled, chunk 30's one byte off). A
/// restore from `main` (the fill paced: it reaches neither chunk for a minute) is
/// attached at once: both chunks, and then the whole volume, read as the snapshot, and
/// the copy's store was read. The fill then finishes (past the damaged objects) and the
/// volume reads the same with both stores gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_object_is_read_from_a_ready_copy_in_another_store() {
    let main = TestStore::start(Kind::Dir, "main", "zone1").await;
    let copy = TestStore::start(Kind::S3, "copy", "zone2").await;
    let opts = Opts {
        manager_extra: format!("{ONE_AT_A_TIME}{PACED}"),
        ..Opts::default()
    };
    let mut c = BackupCluster::start(opts, vec![main, copy]).await;
    let img = source(&c, 3).await;
    let b = backup(&c, "v@s1", Some("main")).await;
    let id = b.id.to_string();
    cli_ok(&c, &["backup", "copy", &id, "--to-store", "copy"]);
    let objects = objects_by_region(&c.store("main").open(), &b.root.expect("root")).await;
    let dir = c.store("main").root.path().join("store");
    // Region 20's object garbled throughout (not an object any more), region 30's with one
    // byte flipped near its end (well formed, but not what its name hashes).
    for (region, garble) in [(20, true), (30, false)] {
        let path = dir.join(keys::object(&objects[&region]));
        let mut bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (the directory store's layout?)", path.display()));
        match garble {
            true => bytes.iter_mut().for_each(|b| *b ^= 0x55),
            false => *bytes.iter_mut().rev().nth(8).expect("an object") ^= 0x01,
        }
        std::fs::write(&path, bytes).expect("corrupt the object");
    }

    restore_start(&c, "r", b.id, Some("main"));
    assert_linked(&c, "r");
    let client = c.client().await;
    let vol = client
        .open("r")
        .await
        .expect("a restoring volume is attachable once linked");
    let s3 = c.store("copy").s3();
    let gets = s3.requests("GET");
    img.check(&vol, 20 * MIB, MIB, "chunk 20, corrupt in main")
        .await;
    img.check(
        &vol,
        30 * MIB + 100 * BLOCK,
        8 * BLOCK,
        "chunk 30, corrupt in main",
    )
    .await;
    assert!(s3.requests("GET") > gets, "the copy's store was never read");
    let p = progress(&c, "r", "the reads of corrupt objects");
    assert!(
        p.chunks_done < 20,
        "read before the pre-warm got there: {p:?}"
    );
    vol.close().await.expect("detach r");
    assert_eq!(
        checksum(&client, "r").await,
        img.checksum(),
        "r equals v@s1"
    );
    // The pre-warm gets past the damaged objects too (from the copy), and the filled
    // volume needs neither store.
    wait_restored_within(&c, "r", LONG).await;
    std::fs::rename(&dir, dir.with_extension("removed")).expect("rename main away");
    drop(c.stores[1].s3.take());
    assert_eq!(
        checksum(&client, "r").await,
        img.checksum(),
        "r equals v@s1 without its stores"
    );
}

/// A restore from an S3 store slowed to 1 s a request: the volume is attached and a
/// reader goes through chunks 24..=31 (unfilled) while the node leading chunk 28's group
/// is killed. The reader gets the snapshot's bytes throughout; chunk 28 then takes a
/// partial write through its new leader; the fill finishes with the node still down, and
/// after it is back, the volume reads as the snapshot with that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_during_a_lazy_restore_stops_neither_reads_nor_the_fill() {
    let store = TestStore::start(Kind::S3, "main", "zone1").await;
    let opts = Opts {
        manager_extra: format!("{FAST_RECOVERY}{ONE_AT_A_TIME}"),
        ..Opts::default()
    };
    let mut c = BackupCluster::start(opts, vec![store]).await;
    let img = source(&c, 5).await;
    let b = backup(&c, "v@s1", None).await;
    c.stores[0].s3().set_delay(Duration::from_secs(1));

    restore_start(&c, "r", b.id, None);
    assert_linked(&c, "r");
    let client = c.client().await;
    let vol = client
        .open("r")
        .await
        .expect("a restoring volume is attachable once linked");
    img.check(&vol, 10 * MIB, 4 * BLOCK, "the first read").await;
    let victim = leader_of_chunk(&c, "r", 28).await;

    let img = std::sync::Arc::new(tokio::sync::Mutex::new(img));
    let reader = {
        let (img, vol) = (img.clone(), vol.clone());
        tokio::spawn(async move {
            let img = img.lock().await;
            for chunk in 24..32 {
                img.check(
                    &vol,
                    chunk * MIB,
                    MIB,
                    &format!("chunk {chunk} around the kill"),
                )
                .await;
            }
        })
    };
    // Kill once the reader's fetches have reached the store.
    let s3 = c.stores[0].s3();
    let gets = s3.requests("GET");
    let deadline = Instant::now() + WAIT;
    while s3.requests("GET") < gets + 2 && !reader.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the reader never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.kill_node(victim);
    reader.await.expect("the reader");
    let p = progress(&c, "r", "the kill");
    assert!(
        p.chunks_done < 24,
        "read before the pre-warm got there: {p:?}"
    );

    let mut img = std::sync::Arc::try_unwrap(img)
        .ok()
        .expect("the reader is done")
        .into_inner();
    img.write_at(&vol, 28 * MIB + 9 * BLOCK + 1024, vec![0x3c; 2048])
        .await;
    img.check(
        &vol,
        28 * MIB + 9 * BLOCK,
        BLOCK,
        "a partial write after the kill",
    )
    .await;
    c.stores[0].s3().set_delay(Duration::ZERO);
    wait_restored_within(&c, "r", LONG).await;
    vol.close().await.expect("detach r");
    c.restart_node(victim);
    c.wait_status("every replica back", WAIT, |s| fully_replicated(s, 3))
        .await;
    let client = c.client().await;
    assert_eq!(
        checksum(&client, "r").await,
        img.checksum(),
        "r holds v@s1 with the write"
    );
}
