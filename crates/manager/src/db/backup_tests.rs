//! The backup tables hold what memory holds: after every kind of backup mutation, a reopen
//! and a managers' snapshot (taken, encoded, decoded, installed elsewhere) load the same
//! backups, chunk maps, refcounts, garbage, releases, claims, `gc_gen`s and restores; a
//! database from before backups loads with none.

use raft::eraftpb::SnapshotMetadata;
use tessera_proto::control::{Hash, NodeRegistration};

use super::*;
use crate::state::{BackupStats, ChunkSegment, GcKey, SnapshotPlan};
use crate::state_snapshot;

fn step(store: &Db, state: &mut State, m: Mutation) {
    store.commit(&m, state).unwrap();
    state.apply(&m);
}

fn h(n: u8) -> Hash {
    Hash([n; 32])
}

fn seg(chunk: u64, segment: Hash, objects: &[Hash]) -> ChunkSegment {
    ChunkSegment {
        chunk,
        segment,
        objects: Some(objects.to_vec()),
        reads: 0,
    }
}

/// A cluster of three nodes, two groups, volume "v" with 4 mapped chunks and snapshots;
/// backups in stores "a" and "b" in every state, a deleted one released and collected in
/// part, and a volume restoring.
fn populate(store: &Db, s: &mut State) {
    for r in 0..3 {
        let (_, m) = s
            .plan_register(&NodeRegistration {
                node_id: None,
                zone: "z".into(),
                rack: format!("r{r}"),
                addr: format!("n{r}:1"),
                capacity_bytes: 1 << 40,
                used_bytes: 0,
                disk: 0,
            })
            .unwrap();
        step(store, s, m);
    }
    let m = s.plan_groups(|_| true, 3, 2).unwrap();
    step(store, s, m);
    let m = s
        .plan_create_volume("v", 1 << 30, Some(1 << 20), 100)
        .unwrap();
    step(store, s, m);
    let vid = s.volume_by_name("v").unwrap().id;
    let m = s.plan_map_chunks(vid, 0, 4, |_| true).unwrap().unwrap();
    step(store, s, m);
    let backup = |s: &mut State, snap: &str, st: &str| -> u64 {
        let SnapshotPlan::Cut(m) = s.plan_create_snapshot("v", snap, 200).unwrap() else {
            panic!()
        };
        step(store, s, *m);
        step(
            store,
            s,
            Mutation::SnapshotReady {
                volume_id: vid,
                name: snap.into(),
                seq: 0,
            },
        );
        let m = s.plan_create_backup("v", snap, st, 300).unwrap();
        step(store, s, m);
        s.next_ids().backup - 1
    };
    let chunks = |s: &State, id: u64, chunks: Vec<ChunkSegment>| Mutation::BackupChunks {
        id,
        gc_gen: s.gc_gen(&s.backup(id).unwrap().store),
        chunks,
        stats: BackupStats {
            read_bytes: 1 << 20,
            uploaded_bytes: 1000,
            uploaded_objects: 2,
            present_objects: 1,
            objects: 3,
        },
    };
    // b1 ready, b2 deleted (released, partly collected), b3 failed, b4 uploading in "b".
    let b1 = backup(s, "s1", "a");
    let m = chunks(
        s,
        b1,
        vec![seg(0, h(11), &[h(1), h(2)]), seg(1, h(12), &[h(3)])],
    );
    step(store, s, m);
    let ready = |id, root| Mutation::BackupReady {
        id,
        root,
        finished_unix: 400,
    };
    step(store, s, ready(b1, h(21)));
    let b2 = backup(s, "s2", "a");
    let m = chunks(
        s,
        b2,
        vec![seg(0, h(13), &[h(1), h(4)]), seg(2, h(14), &[h(5)])],
    );
    step(store, s, m);
    step(store, s, ready(b2, h(22)));
    let m = s.plan_delete_backup(b2, 500).unwrap();
    step(store, s, m);
    let m = Mutation::SegmentsReleased {
        store: "a".into(),
        segs: vec![(h(13), vec![h(1), h(4)])],
        now_unix: 600,
    };
    step(store, s, m);
    let due = s.garbage_due("a", 550, 2);
    assert_eq!(due, [GcKey::Root(h(22))]);
    step(
        store,
        s,
        Mutation::GcClaim {
            store: "a".into(),
            keys: due,
        },
    );
    let b3 = backup(s, "s3", "a");
    step(
        store,
        s,
        Mutation::BackupError {
            id: b3,
            error: "store slow".into(),
        },
    );
    step(
        store,
        s,
        Mutation::BackupFailed {
            id: b3,
            error: "store gone".into(),
            finished_unix: 700,
        },
    );
    let b4 = backup(s, "s4", "b");
    let m = chunks(s, b4, vec![seg(3, h(15), &[h(6)])]);
    step(store, s, m);
    let m = s.plan_restore_volume("r", b1, 800, |_| true).unwrap();
    step(store, s, m);
    let rid = s.volume_by_name("r").unwrap().id;
    step(
        store,
        s,
        Mutation::RestoreProgress {
            volume_id: rid,
            next_chunk: 0,
            next_position: 1,
        },
    );
    step(store, s, Mutation::RestoreLinked { volume_id: rid });
    // Every kind of row is there.
    let img = s.backup_image();
    assert_eq!(img.records.len(), 3);
    let a = img.stores.iter().find(|x| x.name == "a").unwrap();
    assert!(!a.segs.is_empty() && !a.objects.is_empty() && !a.garbage.is_empty());
    assert_eq!((a.release.len(), a.claimed.len(), a.gc_gen), (1, 1, 1));
}

fn same(a: &State, b: &State) {
    assert_eq!(a.backup_image(), b.backup_image());
    assert_eq!(a.next_ids(), b.next_ids());
    assert_eq!(a.restoring_volumes(), b.restoring_volumes());
    assert_eq!(a.list_volumes(), b.list_volumes());
    assert_eq!(
        a.garbage_due("a", 10_000, 100),
        b.garbage_due("a", 10_000, 100)
    );
}

#[test]
fn every_backup_table_survives_a_reopen_and_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut s) = Db::open(dir.path()).unwrap();
    populate(&store, &mut s);
    let image = read_image(&store.database().begin_read().unwrap())
        .map_err(db_err(store.path()))
        .unwrap();
    let taken = state_snapshot::Payload {
        image,
        managers: [(1, "m1:7400".to_string())].into(),
    };
    drop(store);
    let (_, loaded) = Db::open(dir.path()).unwrap();
    same(&s, &loaded);
    // Through a snapshot blob into another database.
    let back = state_snapshot::decode(&state_snapshot::encode(&taken)).unwrap();
    assert_eq!(back.image.backups, s.backup_image());
    let other = tempfile::tempdir().unwrap();
    let (store2, _) = Db::open(other.path()).unwrap();
    let meta = SnapshotMetadata {
        index: 9,
        term: 1,
        ..Default::default()
    };
    state_snapshot::install(&store2.database(), store2.path(), &back, &meta).unwrap();
    same(&s, &store2.reload().unwrap());
}

/// A database written before backups (no backup tables, no backup mark) opens with no
/// backups and ids from 1.
#[test]
fn a_database_from_before_backups_loads() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            tx.open_table(NODES).unwrap();
            tx.open_table(GROUPS).unwrap();
            let v = VolumeRecord::new(1, "old", 1 << 30, 1 << 20, 5);
            tx.open_table(VOLUMES)
                .unwrap()
                .insert(1, json(&v).as_slice())
                .unwrap();
            tx.open_table(CHUNKS).unwrap();
            let mut meta = tx.open_table(META).unwrap();
            meta.insert("format", FORMAT).unwrap();
            meta.insert("next_volume_id", 2).unwrap();
        }
        tx.commit().unwrap();
    }
    let (_, s) = Db::open(dir.path()).unwrap();
    assert!(s.backup_image().is_empty());
    assert_eq!(s.next_ids().backup, 1);
    assert!(s.volume_by_name("old").unwrap().restore.is_none());
}
