//! Backups in the state: the refcount rules (shared segments and objects, releases, the
//! `gc_gen` and claim fences, revived garbage, claims), restores, and the plans' choices
//! and refusals.

use tessera_proto::control::{BackupState, ControlError, Hash};

use super::snapshot_tests::{cut, setup};
use super::*;

pub(super) fn h(n: u8) -> Hash {
    Hash([n; 32])
}

/// A backup of `v@snap` in `store`, created and returned by id.
pub(super) fn create(s: &mut State, snap: &str, store: &str) -> u64 {
    let m = s.plan_create_backup("v", snap, store, 1000).unwrap();
    let Mutation::CreateBackup(rec) = &m else {
        panic!("{m:?}");
    };
    let id = rec.id;
    s.apply(&m);
    id
}

pub(super) fn seg(chunk: u64, segment: Hash, objects: Option<&[Hash]>) -> ChunkSegment {
    ChunkSegment {
        chunk,
        segment,
        objects: objects.map(<[Hash]>::to_vec),
        reads: 0,
    }
}

pub(super) fn record(s: &mut State, id: u64, chunks: Vec<ChunkSegment>) {
    let gc_gen = s.gc_gen(&s.backup(id).unwrap().store);
    s.apply(&Mutation::BackupChunks {
        id,
        gc_gen,
        chunks,
        stats: BackupStats::default(),
    });
}

pub(super) fn ready(s: &mut State, id: u64, root: Hash) {
    s.apply(&Mutation::BackupReady {
        id,
        root,
        finished_unix: 2000,
    });
}

pub(super) fn garbage(s: &State, store: &str) -> Vec<GcKey> {
    let mut g = s.garbage_due(store, u64::MAX, usize::MAX);
    g.sort();
    g
}

fn release_all(s: &mut State, store: &str, objects_of: &dyn Fn(Hash) -> Vec<Hash>, now: u64) {
    let segs = s.segments_to_release(store, usize::MAX);
    s.apply(&Mutation::SegmentsReleased {
        store: store.into(),
        segs: segs.into_iter().map(|g| (g, objects_of(g))).collect(),
        now_unix: now,
    });
}

/// Two ready backups of "v" in store "a": b1 = {0: S1 [A, B], 1: S2 [C]}, b2 = {0: S1
/// (kept), 1: S3 [C, D]}; roots R1, R2.
pub(super) fn two_backups() -> (State, u64, u64) {
    let (mut s, _) = setup();
    cut(&mut s, "v", "s1");
    let b1 = create(&mut s, "s1", "a");
    record(
        &mut s,
        b1,
        vec![
            seg(0, h(11), Some(&[h(1), h(2)])),
            seg(1, h(12), Some(&[h(3)])),
        ],
    );
    ready(&mut s, b1, h(21));
    cut(&mut s, "v", "s2");
    let b2 = create(&mut s, "s2", "a");
    assert_eq!(s.backup(b2).unwrap().base, Some(b1));
    record(
        &mut s,
        b2,
        vec![seg(0, h(11), None), seg(1, h(13), Some(&[h(3), h(4)]))],
    );
    ready(&mut s, b2, h(22));
    (s, b1, b2)
}

fn objects_of(g: Hash) -> Vec<Hash> {
    match g.0[0] {
        11 => vec![h(1), h(2)],
        12 => vec![h(3)],
        13 => vec![h(3), h(4)],
        _ => vec![],
    }
}

#[test]
fn deleting_one_of_two_backups_frees_only_what_the_other_does_not_reference() {
    let (mut s, b1, b2) = two_backups();
    assert_eq!(s.object_refs("a", &h(3)), 2);
    assert_eq!(s.store_counts("a").objects, 4);
    s.apply(&s.plan_delete_backup(b1, 3000).unwrap());
    assert!(s.backup(b1).is_none());
    assert!(s.backup_segments(b1).is_empty());
    // S2 reached 0 and waits for release; S1 is still b2's.
    assert_eq!(s.segments_to_release("a", 10), [h(12)]);
    assert!(s.segment_known("a", &h(11)));
    assert_eq!(garbage(&s, "a"), [GcKey::Root(h(21))]);
    release_all(&mut s, "a", &objects_of, 3100);
    assert!(s.segments_to_release("a", 10).is_empty());
    assert!(!s.segment_known("a", &h(12)));
    assert_eq!(s.object_refs("a", &h(3)), 1);
    assert_eq!(
        garbage(&s, "a"),
        [GcKey::Segment(h(12)), GcKey::Root(h(21))]
    );
    // Deleting the other frees everything.
    s.apply(&s.plan_delete_backup(b2, 4000).unwrap());
    release_all(&mut s, "a", &objects_of, 4100);
    let mut all = vec![
        GcKey::Object(h(1)),
        GcKey::Object(h(2)),
        GcKey::Object(h(3)),
        GcKey::Object(h(4)),
        GcKey::Segment(h(11)),
        GcKey::Segment(h(12)),
        GcKey::Segment(h(13)),
        GcKey::Root(h(21)),
        GcKey::Root(h(22)),
    ];
    all.sort();
    assert_eq!(garbage(&s, "a"), all);
    assert_eq!(s.store_counts("a").objects, 0);
    assert_eq!(s.stores_with_gc_work(), ["a"]);
    // Only what was unreferenced by the cutoff is due.
    assert_eq!(s.garbage_due("a", 3100, 10).len(), 2);
}

#[test]
fn chunks_uploaded_across_a_claim_or_deletion_are_not_recorded() {
    let (mut s, _) = setup();
    make_garbage(&mut s, "s0", h(50), &[h(51)], 100);
    cut(&mut s, "v", "s1");
    let b = create(&mut s, "s1", "a");
    let before = s.gc_gen("a");
    let keys = vec![GcKey::Object(h(51))];
    s.apply(&Mutation::GcClaim {
        store: "a".into(),
        keys: keys.clone(),
    });
    assert_eq!(s.gc_gen("a"), before + 1);
    s.apply(&Mutation::BackupChunks {
        id: b,
        gc_gen: before,
        chunks: vec![seg(0, h(11), Some(&[h(1)]))],
        stats: BackupStats {
            read_bytes: 7,
            ..BackupStats::default()
        },
    });
    assert!(s.backup_segments(b).is_empty());
    assert_eq!(s.object_refs("a", &h(1)), 0);
    // The bytes were moved all the same.
    assert_eq!(s.backup(b).unwrap().stats.read_bytes, 7);
    s.apply(&Mutation::GcDeleted {
        store: "a".into(),
        keys,
    });
    assert_eq!(s.gc_gen("a"), before + 2);
    // An unknown segment without its objects is not recorded either.
    record(&mut s, b, vec![seg(0, h(11), None)]);
    assert!(s.backup_segments(b).is_empty());
    record(&mut s, b, vec![seg(0, h(11), Some(&[h(1)]))]);
    assert_eq!(s.backup_segment(b, 0), Some(h(11)));
    // Recording the chunk again changes nothing.
    record(&mut s, b, vec![seg(0, h(11), Some(&[h(1)]))]);
    assert_eq!(s.object_refs("a", &h(1)), 1);
}

/// Makes `keys` garbage of store "a" (a backup naming them, deleted and released).
fn make_garbage(s: &mut State, snap: &str, segment: Hash, objects: &[Hash], now: u64) {
    cut(s, "v", snap);
    let b = create(s, snap, "a");
    record(s, b, vec![seg(0, segment, Some(objects))]);
    s.apply(&Mutation::BackupFailed {
        id: b,
        error: "x".into(),
        finished_unix: now,
    });
    s.apply(&s.plan_delete_backup(b, now).unwrap());
    let objects = objects.to_vec();
    release_all(s, "a", &move |_| objects.clone(), now);
}

#[test]
fn a_claimed_object_is_never_revived() {
    let (mut s, _) = setup();
    make_garbage(&mut s, "s1", h(11), &[h(1), h(2)], 100);
    s.apply(&Mutation::GcClaim {
        store: "a".into(),
        keys: vec![GcKey::Object(h(1))],
    });
    assert_eq!(s.claimed("a"), [GcKey::Object(h(1))]);
    cut(&mut s, "v", "s2");
    let b = create(&mut s, "s2", "a");
    record(
        &mut s,
        b,
        vec![
            seg(0, h(12), Some(&[h(1), h(3)])),
            seg(1, h(13), Some(&[h(2)])),
        ],
    );
    // The entry naming the claimed object is skipped (redone with `force`); the other
    // revives its garbage object.
    assert_eq!(s.backup_segment(b, 0), None);
    assert_eq!(s.backup_segment(b, 1), Some(h(13)));
    assert_eq!(s.object_refs("a", &h(1)), 0);
    assert_eq!(s.object_refs("a", &h(3)), 0);
    assert!(!garbage(&s, "a").contains(&GcKey::Object(h(2))));
    // A claimed segment is not revived either.
    s.apply(&Mutation::GcClaim {
        store: "a".into(),
        keys: vec![GcKey::Segment(h(11))],
    });
    record(&mut s, b, vec![seg(2, h(11), Some(&[h(4)]))]);
    assert_eq!(s.backup_segment(b, 2), None);
    // Once deleted, the object may be uploaded and recorded again.
    s.apply(&Mutation::GcDeleted {
        store: "a".into(),
        keys: vec![GcKey::Object(h(1)), GcKey::Segment(h(11))],
    });
    assert!(s.claimed("a").is_empty());
    record(&mut s, b, vec![seg(0, h(12), Some(&[h(1), h(3)]))]);
    assert_eq!(s.object_refs("a", &h(1)), 1);
}

#[test]
fn garbage_named_by_a_new_segment_leaves_the_garbage() {
    let (mut s, _) = setup();
    make_garbage(&mut s, "s1", h(11), &[h(1), h(2)], 100);
    assert_eq!(garbage(&s, "a").len(), 3);
    cut(&mut s, "v", "s2");
    let b = create(&mut s, "s2", "a");
    // The released segment itself is recorded again (same content), and a new one.
    record(
        &mut s,
        b,
        vec![
            seg(0, h(11), Some(&[h(1), h(2)])),
            seg(1, h(12), Some(&[h(2)])),
        ],
    );
    assert!(garbage(&s, "a").is_empty());
    assert_eq!(s.object_refs("a", &h(2)), 2);
    // A segment at 0 still queued is taken back without counting its objects twice.
    s.apply(&Mutation::BackupFailed {
        id: b,
        error: "x".into(),
        finished_unix: 200,
    });
    s.apply(&s.plan_delete_backup(b, 200).unwrap());
    assert_eq!(s.segments_to_release("a", 10).len(), 2);
    cut(&mut s, "v", "s3");
    let c = create(&mut s, "s3", "a");
    record(&mut s, c, vec![seg(0, h(11), None)]);
    assert_eq!(s.segments_to_release("a", 10), [h(12)]);
    assert_eq!(s.object_refs("a", &h(1)), 1);
    // A release of a segment no longer at 0 changes nothing.
    s.apply(&Mutation::SegmentsReleased {
        store: "a".into(),
        segs: vec![(h(11), vec![h(1), h(2)])],
        now_unix: 300,
    });
    assert_eq!(s.object_refs("a", &h(1)), 1);
    assert!(s.segment_known("a", &h(11)));
}

#[test]
fn a_claim_takes_only_keys_still_garbage_and_unreferenced() {
    let (mut s, _) = setup();
    make_garbage(&mut s, "s1", h(11), &[h(1)], 100);
    make_garbage(&mut s, "s2", h(12), &[h(2)], 500);
    // Due by 100: object 1, segment 11, root none (failed backups have none).
    let due = s.garbage_due("a", 100, 10);
    assert_eq!(due.len(), 2);
    // Object 1 is revived before the claim is applied.
    cut(&mut s, "v", "s3");
    let b = create(&mut s, "s3", "a");
    record(&mut s, b, vec![seg(0, h(13), Some(&[h(1)]))]);
    let before = s.gc_gen("a");
    s.apply(&Mutation::GcClaim {
        store: "a".into(),
        keys: [due, vec![GcKey::Root(h(99))]].concat(),
    });
    assert_eq!(s.claimed("a"), [GcKey::Segment(h(11))]);
    assert_eq!(s.gc_gen("a"), before + 1);
    assert_eq!(s.object_refs("a", &h(1)), 1);
    assert_eq!(
        garbage(&s, "a"),
        [GcKey::Object(h(2)), GcKey::Segment(h(12))]
    );
}

#[test]
fn the_base_is_the_newest_ready_backup_in_the_store_whose_snapshot_is_kept() {
    let (mut s, _) = setup();
    cut(&mut s, "v", "s1");
    let b1 = create(&mut s, "s1", "a");
    assert_eq!(s.backup(b1).unwrap().base, None);
    // Uploading: not a base, and a second backup to that store is refused, naming it.
    let err = s.plan_create_backup("v", "s1", "a", 1).unwrap_err();
    assert!(
        matches!(&err, ControlError::Conflict(m) if m.contains("backup 1")),
        "{err:?}"
    );
    ready(&mut s, b1, h(21));
    cut(&mut s, "v", "s2");
    let b2 = create(&mut s, "s2", "a");
    assert_eq!(
        (s.backup(b2).unwrap().base, s.backup(b2).unwrap().base_seq),
        (Some(b1), 1)
    );
    // Another store has no base; a failed backup is no base.
    let other = create(&mut s, "s2", "b");
    assert_eq!(s.backup(other).unwrap().base, None);
    s.apply(&Mutation::BackupFailed {
        id: b2,
        error: "gone".into(),
        finished_unix: 5,
    });
    assert_eq!(s.backup(b2).unwrap().state, BackupState::Failed);
    cut(&mut s, "v", "s3");
    let b3 = create(&mut s, "s3", "a");
    assert_eq!(s.backup(b3).unwrap().base, Some(b1));
    ready(&mut s, b3, h(23));
    // The base's snapshot deleted: the next newest whose snapshot is kept.
    s.apply(&s.plan_delete_snapshot("v", "s3").unwrap());
    cut(&mut s, "v", "s4");
    let b4 = create(&mut s, "s4", "a");
    assert_eq!(s.backup(b4).unwrap().base, Some(b1));
    // A snapshot not ready, an unknown snapshot or volume.
    assert!(matches!(
        s.plan_create_backup("v", "nope", "a", 1),
        Err(ControlError::NotFound(_))
    ));
    assert!(matches!(
        s.plan_create_backup("w", "s1", "a", 1),
        Err(ControlError::NotFound(_))
    ));
}

#[test]
fn a_snapshot_an_uploading_backup_reads_is_not_deleted() {
    let (mut s, _) = setup();
    cut(&mut s, "v", "s1");
    let b1 = create(&mut s, "s1", "a");
    let err = s.plan_delete_snapshot("v", "s1").unwrap_err();
    assert!(format!("{err:?}").contains("backup 1"), "{err:?}");
    ready(&mut s, b1, h(21));
    cut(&mut s, "v", "s2");
    let b2 = create(&mut s, "s2", "a");
    // s1 is b2's base.
    let err = s.plan_delete_snapshot("v", "s1").unwrap_err();
    assert!(
        format!("{err:?}").contains(&format!("backup {b2}")),
        "{err:?}"
    );
    ready(&mut s, b2, h(22));
    s.plan_delete_snapshot("v", "s1").unwrap();
}

#[test]
fn copies_are_answered_once_per_store_and_counted_as_replicas() {
    let (mut s, b1, _) = two_backups();
    assert!(matches!(
        s.plan_copy_backup(b1, "a", 1),
        Err(ControlError::Invalid(_))
    ));
    let CopyPlan::New(m) = s.plan_copy_backup(b1, "b", 1).unwrap() else {
        panic!("a new copy");
    };
    s.apply(&m);
    let Mutation::CreateBackup(c) = *m else {
        panic!()
    };
    assert_eq!(
        (c.copied_from, c.base, c.store.as_str(), c.chunks_total),
        (Some(b1), None, "b", 2)
    );
    assert_eq!(
        s.plan_copy_backup(b1, "b", 1).unwrap(),
        CopyPlan::Existing(c.id)
    );
    // While it uploads, its source is not deleted.
    let err = s.plan_delete_backup(b1, 9).unwrap_err();
    assert!(
        format!("{err:?}").contains(&format!("copy {}", c.id)),
        "{err:?}"
    );
    // It may be deleted (cancelled) while it uploads.
    s.plan_delete_backup(c.id, 9).unwrap();
    assert_eq!(s.backup_replicas(b1).len(), 1);
    record(
        &mut s,
        c.id,
        vec![
            seg(0, h(11), Some(&[h(1), h(2)])),
            seg(1, h(12), Some(&[h(3)])),
        ],
    );
    ready(&mut s, c.id, h(21));
    let ids: Vec<u64> = s.backup_replicas(c.id).iter().map(|r| r.id).collect();
    assert_eq!(ids, [b1, c.id]);
    assert_eq!(s.store_counts("b").objects, 3);
    assert_eq!(s.store_counts("a").backups, 2);
    s.plan_delete_backup(b1, 9).unwrap();
    // Listing: newest first.
    let ids: Vec<u64> = s
        .list_backups(Some("v"))
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, [c.id, 2, b1]);
}

#[test]
fn what_is_not_ready_or_in_use_is_refused() {
    let (mut s, _) = setup();
    // A snapshot still being cut is not backed up.
    let SnapshotPlan::Cut(m) = s.plan_create_snapshot("v", "s1", 1).unwrap() else {
        panic!()
    };
    s.apply(&m);
    assert!(matches!(
        s.plan_create_backup("v", "s1", "a", 1),
        Err(ControlError::Invalid(m)) if m.contains("not ready")
    ));
    let id = s.volume_by_name("v").unwrap().id;
    s.apply(&Mutation::SnapshotReady {
        volume_id: id,
        name: "s1".into(),
        seq: 0,
    });
    let b1 = create(&mut s, "s1", "a");
    // An uploading backup is neither copied nor restored (deleting it cancels it).
    s.plan_delete_backup(b1, 1).unwrap();
    for err in [
        s.plan_copy_backup(b1, "b", 1).err(),
        s.plan_restore_volume("r", b1, 1, |_| true).err(),
    ] {
        assert!(
            matches!(&err, Some(ControlError::Invalid(m)) if m.contains("backup 1 is")),
            "{err:?}"
        );
    }
    ready(&mut s, b1, h(21));
    // The base of an uploading backup is not deleted.
    cut(&mut s, "v", "s2");
    let b2 = create(&mut s, "s2", "a");
    let err = s.plan_delete_backup(b1, 1).unwrap_err();
    assert!(
        matches!(&err, ControlError::Conflict(m) if m.contains(&format!("backup {b2} based on it"))),
        "{err:?}"
    );
    // A failed backup is deleted.
    s.apply(&Mutation::BackupFailed {
        id: b2,
        error: "x".into(),
        finished_unix: 2,
    });
    s.apply(&s.plan_delete_backup(b2, 3).unwrap());
    s.apply(&s.plan_delete_backup(b1, 3).unwrap());
    assert!(matches!(
        s.plan_delete_backup(b1, 3),
        Err(ControlError::NotFound(_))
    ));
    assert!(s.list_backups(Some("v")).unwrap().is_empty());
    assert!(matches!(
        s.list_backups(Some("nope")),
        Err(ControlError::NotFound(_))
    ));
}
