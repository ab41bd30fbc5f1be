//! Backups in the state, the review's cases: roots two records share (copies keep their
//! source's root), `gc_gen` moved only by real claims and deletions, what an upload or a
//! restore keeps in place, cancelling an upload, and the upload's validity check.

use tessera_proto::control::{BackupState, ControlError, SnapshotState};

use super::backup_tests::{create, garbage, h, ready, record, seg, two_backups};
use super::snapshot_tests::cut;
use super::*;

/// A new copy of `id` in `store`, created and returned by id.
fn copy(s: &mut State, id: u64, store: &str) -> u64 {
    let CopyPlan::New(m) = s.plan_copy_backup(id, store, 3000).unwrap() else {
        panic!("a new copy");
    };
    let Mutation::CreateBackup(rec) = &*m else {
        panic!("{m:?}");
    };
    let c = rec.id;
    s.apply(&m);
    c
}

fn claim(s: &mut State, store: &str, keys: Vec<GcKey>) {
    s.apply(&Mutation::GcClaim {
        store: store.into(),
        keys,
    });
}

#[test]
fn a_root_named_by_another_record_of_the_store_is_not_garbage() {
    let (mut s, b1, _) = two_backups();
    let root = s.backup(b1).unwrap().root.unwrap();
    let c1 = copy(&mut s, b1, "b");
    record(&mut s, c1, vec![seg(0, h(11), Some(&[h(1), h(2)]))]);
    ready(&mut s, c1, root);
    // A copy of the copy back into the origin store is the backup itself.
    assert_eq!(
        s.plan_copy_backup(c1, "a", 1).unwrap(),
        CopyPlan::Existing(b1)
    );
    // Deleted, then copied again: the root is garbage until the new copy names it.
    s.apply(&s.plan_delete_backup(c1, 10).unwrap());
    assert!(garbage(&s, "b").contains(&GcKey::Root(root)));
    let c2 = copy(&mut s, b1, "b");
    record(&mut s, c2, vec![seg(0, h(11), Some(&[h(1), h(2)]))]);
    ready(&mut s, c2, root);
    assert_eq!(s.backup(c2).unwrap().state, BackupState::Ready);
    assert!(!garbage(&s, "b").contains(&GcKey::Root(root)));
    // Two records of the store naming one root (as an older manager could record): deleting
    // one leaves the root alone, and a claim of it is refused while one names it.
    let mut twin = s.backup(c2).unwrap().clone();
    twin.id = s.next_ids().backup;
    s.apply(&Mutation::CreateBackup(twin.clone()));
    s.apply(&s.plan_delete_backup(twin.id, 11).unwrap());
    assert!(!garbage(&s, "b").contains(&GcKey::Root(root)));
    let mut img = s.backup_image();
    let b = img.stores.iter_mut().find(|st| st.name == "b").unwrap();
    b.garbage.push((GcKey::Root(root), 5));
    s.restore_backups(img).unwrap();
    let g0 = s.gc_gen("b");
    claim(&mut s, "b", vec![GcKey::Root(root)]);
    assert!(s.claimed("b").is_empty());
    assert_eq!(s.gc_gen("b"), g0);
}

#[test]
fn a_backup_naming_a_root_being_deleted_is_not_made_ready() {
    let (mut s, b1, _) = two_backups();
    let root = s.backup(b1).unwrap().root.unwrap();
    let c1 = copy(&mut s, b1, "b");
    ready(&mut s, c1, root);
    s.apply(&s.plan_delete_backup(c1, 10).unwrap());
    // Claimed before the new copy was asked for (a copy uploading refuses the claim).
    claim(&mut s, "b", vec![GcKey::Root(root)]);
    assert_eq!(s.claimed("b"), [GcKey::Root(root)]);
    let c2 = copy(&mut s, b1, "b");
    // Skipped: the job sees it still uploading, puts the root again once deleted.
    ready(&mut s, c2, root);
    assert_eq!(s.backup(c2).unwrap().state, BackupState::Uploading);
    assert!(s.is_claimed("b", &GcKey::Root(root)));
    s.apply(&Mutation::GcDeleted {
        store: "b".into(),
        keys: vec![GcKey::Root(root)],
    });
    assert!(!s.is_claimed("b", &GcKey::Root(root)));
    ready(&mut s, c2, root);
    assert_eq!(s.backup(c2).unwrap().state, BackupState::Ready);
    assert!(garbage(&s, "b").is_empty());
    // The root garbage again, then a copy asked for: it is not claimed while that uploads.
    s.apply(&s.plan_delete_backup(c2, 20).unwrap());
    let c3 = copy(&mut s, b1, "b");
    claim(&mut s, "b", vec![GcKey::Root(root)]);
    assert!(s.claimed("b").is_empty());
    ready(&mut s, c3, root);
    assert_eq!(s.backup(c3).unwrap().state, BackupState::Ready);
}

#[test]
fn gc_gen_moves_only_when_a_key_is_claimed_or_forgotten() {
    let (mut s, b1, _) = two_backups();
    let g0 = s.gc_gen("a");
    // Nothing claimable, nothing claimed: no move.
    claim(&mut s, "a", vec![GcKey::Object(h(1)), GcKey::Root(h(99))]);
    s.apply(&Mutation::GcDeleted {
        store: "a".into(),
        keys: vec![GcKey::Object(h(1))],
    });
    assert_eq!(s.gc_gen("a"), g0);
    // A real claim moves it.
    s.apply(&s.plan_delete_backup(b1, 10).unwrap());
    claim(&mut s, "a", vec![GcKey::Root(h(21))]);
    assert_eq!(s.gc_gen("a"), g0 + 1);
    // Across it, a chunk naming a segment the store counts is recorded; a new one is not.
    cut(&mut s, "v", "s3");
    let b3 = create(&mut s, "s3", "a");
    s.apply(&Mutation::BackupChunks {
        id: b3,
        gc_gen: g0,
        chunks: vec![seg(0, h(11), None), seg(1, h(14), Some(&[h(5)]))],
        stats: BackupStats::default(),
    });
    assert_eq!(s.backup_segment(b3, 0), Some(h(11)));
    assert_eq!(s.backup_segment(b3, 1), None);
    assert_eq!(s.object_refs("a", &h(5)), 0);
}

#[test]
fn what_an_upload_or_a_restore_reads_is_kept_in_place() {
    let (mut s, b1, _) = two_backups();
    // Deleting a volume an upload reads is refused, naming it.
    cut(&mut s, "v", "s3");
    let b3 = create(&mut s, "s3", "a");
    let err = s.plan_delete_volume("v").unwrap_err();
    assert!(
        matches!(&err, ControlError::Conflict(m) if m.contains(&format!("backup {b3}"))),
        "{err:?}"
    );
    // So is deleting the snapshot it reads.
    let err = s.plan_delete_snapshot("v", "s3").unwrap_err();
    assert!(matches!(&err, ControlError::Conflict(_)), "{err:?}");
    ready(&mut s, b3, h(23));
    s.plan_delete_volume("v").unwrap();
    // A volume being restored takes no snapshot, clone, rollback or backup.
    s.apply(&s.plan_restore_volume("r", b1, 5, |_| true).unwrap());
    let rid = s.volume_by_name("r").unwrap().id;
    let restoring = |e: Result<(), ControlError>| {
        assert!(
            matches!(&e, Err(ControlError::Conflict(m)) if m.contains("being restored")),
            "{e:?}"
        );
    };
    restoring(s.plan_create_snapshot("r", "x", 1).map(drop));
    // (A snapshot of it, as if cut before: each still refused.)
    s.apply(&Mutation::CutSnapshot {
        volume_id: rid,
        snapshot: SnapshotRecord {
            name: "x".into(),
            seq: 0,
            created_unix: 1,
            state: SnapshotState::Ready,
            size: 0,
        },
    });
    restoring(s.plan_clone("r", "x", "c", 1).map(drop));
    restoring(s.plan_rollback("r", "x").map(drop));
    restoring(s.plan_create_backup("r", "x", "a", 1).map(drop));
    // Deleting it stays allowed: that cancels the restore.
    s.plan_delete_volume("r").unwrap();
}

#[test]
fn deleting_an_uploading_backup_cancels_it_and_releases_what_it_recorded() {
    let (mut s, _, _) = two_backups();
    cut(&mut s, "v", "s3");
    let b3 = create(&mut s, "s3", "a");
    record(
        &mut s,
        b3,
        vec![seg(0, h(11), None), seg(1, h(14), Some(&[h(5)]))],
    );
    let err = s.plan_create_backup("v", "s3", "a", 1).unwrap_err();
    assert!(
        matches!(&err, ControlError::Conflict(m)
            if m.contains(&format!("tessera backup delete {b3}")) && !m.contains("first")),
        "{err:?}"
    );
    s.apply(&s.plan_delete_backup(b3, 10).unwrap());
    assert!(s.backup(b3).is_none());
    assert!(s.backup_segments(b3).is_empty());
    assert_eq!(s.segments_to_release("a", 10), [h(14)]);
    assert_eq!(s.object_refs("a", &h(1)), 1);
    assert!(s.backup_still_valid(b3).is_err());
}

#[test]
fn an_upload_is_valid_while_its_volume_and_snapshots_are_kept() {
    let (mut s, _, _) = two_backups();
    cut(&mut s, "v", "s3");
    let b3 = create(&mut s, "s3", "a");
    assert_eq!(s.backup_still_valid(b3), Ok(()));
    let id = s.volume_by_name("v").unwrap().id;
    // The base's snapshot deleted under it (the plan's refusal raced): invalid.
    let mut t = s.clone();
    t.apply(&Mutation::DeleteSnapshot {
        volume_id: id,
        name: "s2".into(),
    });
    assert!(t.backup_still_valid(b3).unwrap_err().contains("base"));
    // Its own snapshot deleted: invalid, naming it.
    let mut t = s.clone();
    t.apply(&Mutation::DeleteSnapshot {
        volume_id: id,
        name: "s3".into(),
    });
    assert!(t.backup_still_valid(b3).unwrap_err().contains("v@s3"));
    // Its volume deleted: invalid.
    let mut t = s.clone();
    t.apply(&Mutation::DeleteVolume { id });
    assert!(t.backup_still_valid(b3).unwrap_err().contains("volume"));
    assert!(s.backup_still_valid(999).is_err());
}
