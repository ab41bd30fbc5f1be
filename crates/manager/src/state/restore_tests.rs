//! Restores in the state: placed unlinked, linked to the backup by group ops, then usable
//! (opened, attached) while snapshots, clones, rollbacks and backups wait for the end; the
//! pre-warm order by the backup's access record (kept by copies), the progress as a
//! position in that order, and where a restored chunk's blocks are read from.

use tessera_proto::control::{ControlError, GroupOp, Hash, RESTORED_PARENT};

use super::backup_tests::{create, h, ready, record, seg, two_backups};
use super::snapshot_tests::{cut, setup};
use super::*;

fn restore(s: &mut State, name: &str, backup: u64) -> u64 {
    s.apply(&s.plan_restore_volume(name, backup, 5, |_| true).unwrap());
    s.volume_by_name(name).unwrap().id
}

fn unavailable(e: Result<(), ControlError>, says: &str) {
    assert!(
        matches!(&e, Err(ControlError::Unavailable(m)) if m.contains(says)),
        "{e:?}"
    );
}

/// Refused as in use (exit 5), not "retry later": a restore may last hours.
fn in_use(e: Result<(), ControlError>, says: &str) {
    assert!(
        matches!(&e, Err(ControlError::Conflict(m)) if m.contains(says)),
        "{e:?}"
    );
}

/// A backup of `v@s1` in store "a" with chunks 0..4, chunk 1 read 5 times and chunk 3
/// 9 times (0 and 2 never): its id.
fn read_backup(s: &mut State) -> u64 {
    cut(s, "v", "s1");
    let b = create(s, "s1", "a");
    let read = |chunk: u64, reads| ChunkSegment {
        reads,
        ..seg(chunk, h(30 + chunk as u8), Some(&[h(40 + chunk as u8)]))
    };
    record(s, b, vec![read(0, 0), read(1, 5), read(2, 0), read(3, 9)]);
    ready(s, b, h(29));
    b
}

fn order(s: &State, backup: u64) -> Vec<u64> {
    s.restore_order(backup)
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

#[test]
fn a_restore_is_placed_unlinked_then_linked_to_its_backup_in_each_group() {
    let (mut s, b1, _) = two_backups();
    assert!(matches!(
        s.plan_restore_volume("v", b1, 5, |_| true),
        Err(ControlError::AlreadyExists(_))
    ));
    assert!(matches!(
        s.plan_restore_volume("r", 99, 5, |_| true),
        Err(ControlError::NotFound(_))
    ));
    let m = s.plan_restore_volume("r", b1, 5, |_| true).unwrap();
    let Mutation::RestoreVolume { volume, chunks } = &m else {
        panic!("{m:?}");
    };
    assert_eq!(chunks.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [0, 1]);
    let r = volume.restore.as_ref().unwrap();
    assert_eq!((r.backup, r.linked, r.next_position), (b1, false, 0));
    let id = volume.id;
    s.apply(&m);
    assert_eq!(s.next_ids().volume, id + 1);
    assert_eq!(s.unlinked_restores(), [id]);
    assert_eq!(s.restore_to_link("r", b1), Some(id));
    assert_eq!(s.restore_to_link("r", b1 + 1), None);
    let groups = s.volume_chunk_groups(id);
    let mut want: BTreeMap<u64, Vec<GroupOp>> = BTreeMap::new();
    for chunk in [0, 1] {
        want.entry(groups[&chunk]).or_default().push(GroupOp::Link {
            volume_id: id,
            chunk,
            parent_volume: RESTORED_PARENT,
            parent_seq: b1,
        });
    }
    assert_eq!(s.restore_link_ops(id).unwrap(), want);
    assert!(!s.volume_by_name("r").unwrap().restore.unwrap().linked);
    s.apply(&Mutation::RestoreLinked { volume_id: id });
    assert!(s.unlinked_restores().is_empty());
    assert_eq!(s.restore_to_link("r", b1), None);
    assert!(s.volume_by_name("r").unwrap().restore.unwrap().linked);
    let v = s.volume_by_name("v").unwrap().id;
    assert!(s.restore_link_ops(v).unwrap().is_empty());
}

#[test]
fn a_restore_is_attachable_once_linked_and_takes_no_snapshot_until_done() {
    let (mut s, b1, _) = two_backups();
    let id = restore(&mut s, "r", b1);
    unavailable(
        s.open_volume("r").map(drop),
        "being restored from backup 1 (0 of 2 chunks filled); it can be attached once its \
         chunks are linked",
    );
    s.apply(&Mutation::RestoreLinked { volume_id: id });
    let (info, _) = s.open_volume("r").unwrap();
    assert_eq!(
        info.restore.map(|r| (r.linked, r.chunks_done)),
        Some((true, 0))
    );
    let until = "clones, rollbacks and backups of it are refused until the restore is done";
    in_use(s.plan_create_snapshot("r", "x", 1).map(drop), until);
    // (A snapshot of it, as if cut before: each still refused.)
    s.apply(&Mutation::CutSnapshot {
        volume_id: id,
        snapshot: SnapshotRecord {
            name: "x".into(),
            seq: 0,
            created_unix: 1,
            state: tessera_proto::control::SnapshotState::Ready,
            size: 0,
        },
    });
    in_use(s.plan_clone("r", "x", "c", 1).map(drop), until);
    in_use(s.plan_rollback("r", "x").map(drop), until);
    in_use(s.plan_create_backup("r", "x", "a", 1).map(drop), until);
    // The backup is read: not deleted.
    let err = s.plan_delete_backup(b1, 9).unwrap_err();
    assert!(
        matches!(&err, ControlError::Conflict(m) if m.contains("volume \"r\" restoring")),
        "{err:?}"
    );
    s.apply(&Mutation::RestoreDone { volume_id: id });
    assert!(s.restoring_volumes().is_empty());
    s.open_volume("r").unwrap();
    s.plan_create_snapshot("r", "y", 1).unwrap();
    s.plan_delete_backup(b1, 9).unwrap();
}

#[test]
fn the_prewarm_order_is_most_read_first_then_by_index_and_copies_keep_it() {
    let (mut s, _) = setup();
    let b = read_backup(&mut s);
    assert_eq!(s.backup(b).unwrap().reads, BTreeMap::from([(1, 5), (3, 9)]));
    assert_eq!(order(&s, b), [3, 1, 0, 2]);
    // A backup without an access record: by index.
    cut(&mut s, "v", "s2");
    let plain = create(&mut s, "s2", "b");
    record(
        &mut s,
        plain,
        vec![seg(2, h(50), Some(&[h(51)])), seg(0, h(52), Some(&[h(53)]))],
    );
    assert_eq!(order(&s, plain), [0, 2]);
    // A copy keeps its source's record (its own chunks report no reads).
    let CopyPlan::New(m) = s.plan_copy_backup(b, "c", 3).unwrap() else {
        panic!("a new copy");
    };
    s.apply(&m);
    let Mutation::CreateBackup(c) = *m else {
        panic!()
    };
    let segs = (0..4).map(|c| seg(c, h(30 + c as u8), Some(&[h(40 + c as u8)])));
    record(&mut s, c.id, segs.collect());
    ready(&mut s, c.id, h(29));
    assert_eq!(s.backup(c.id).unwrap().reads, s.backup(b).unwrap().reads);
    assert_eq!(order(&s, c.id), [3, 1, 0, 2]);
}

#[test]
fn progress_is_a_position_in_the_restores_order_and_never_moves_back() {
    let (mut s, _) = setup();
    let b = read_backup(&mut s);
    let id = restore(&mut s, "r", b);
    let progress = |s: &State| {
        let r = s.restoring_volumes()[0].1.clone();
        (r.next_position, s.restore_progress(&r))
    };
    assert_eq!(progress(&s), (0, (0, 4)));
    // The two most read chunks (3 and 1) are filled: position 2.
    for p in [2, 1] {
        s.apply(&Mutation::RestoreProgress {
            volume_id: id,
            next_chunk: 0,
            next_position: p,
        });
    }
    assert_eq!(progress(&s), (2, (2, 4)));
    let done = s.volume_by_name("r").unwrap().restore.unwrap().chunks_done;
    assert_eq!(done, 2);
    // What is left is chunks 0 and 2, though chunk 0 is below both filled ones.
    let left: Vec<u64> = order(&s, b).into_iter().skip(2).collect();
    assert_eq!(left, [0, 2]);
}

#[test]
fn a_restored_chunk_is_read_from_the_restores_store_first_then_its_ready_copies() {
    let (mut s, b1, _) = two_backups();
    let copy = |s: &mut State, store: &str| {
        let CopyPlan::New(m) = s.plan_copy_backup(b1, store, 3).unwrap() else {
            panic!("a new copy");
        };
        s.apply(&m);
        s.backup_records().map(|r| r.id).max().unwrap()
    };
    let cb = copy(&mut s, "b");
    record(
        &mut s,
        cb,
        vec![
            seg(0, h(11), Some(&[h(1), h(2)])),
            seg(1, h(12), Some(&[h(3)])),
        ],
    );
    ready(&mut s, cb, h(21));
    // A copy still uploading is not a source.
    copy(&mut s, "c");
    let id = restore(&mut s, "r", cb);
    let src = s.restore_source(id, 1).unwrap();
    assert_eq!(
        src,
        (cb, Some(h(12)), vec!["b".to_string(), "a".to_string()])
    );
    // A chunk the backup holds nothing of: no segment.
    assert_eq!(s.restore_source(id, 3).unwrap().1, None);
    let not_found = |r: Result<(u64, Option<Hash>, Vec<String>), ControlError>| {
        assert!(matches!(r, Err(ControlError::NotFound(_))), "{r:?}");
    };
    let v = s.volume_by_name("v").unwrap().id;
    not_found(s.restore_source(v, 0));
    not_found(s.restore_source(999, 0));
    s.apply(&Mutation::RestoreDone { volume_id: id });
    not_found(s.restore_source(id, 1));
}

/// Rows and log entries written before lazy restores read back: a restore unlinked at
/// position 0 (its legacy `next_chunk` kept, not acted on), a segment and a backup without
/// an access record; and the new fields are left out when they say nothing.
#[test]
fn records_written_before_lazy_restores_read_back_with_defaults() {
    let r: RestoreRecord =
        serde_json::from_str(r#"{"backup":1,"store":"a","next_chunk":3}"#).unwrap();
    assert_eq!((r.next_chunk, r.linked, r.next_position), (3, false, 0));
    let m: Mutation =
        serde_json::from_str(r#"{"RestoreProgress":{"volume_id":2,"next_chunk":1}}"#).unwrap();
    let want = Mutation::RestoreProgress {
        volume_id: 2,
        next_chunk: 1,
        next_position: 0,
    };
    assert_eq!(m, want);
    let c: ChunkSegment =
        serde_json::from_str(&format!(r#"{{"chunk":1,"segment":"{}"}}"#, h(1).to_hex())).unwrap();
    assert_eq!(c.reads, 0);
    assert!(!serde_json::to_string(&c).unwrap().contains("reads"));
    let (s, b1, _) = two_backups();
    let mut json = serde_json::to_value(s.backup(b1).unwrap()).unwrap();
    assert!(json.get("reads").is_none());
    json.as_object_mut().unwrap().remove("reads");
    let back: BackupRecord = serde_json::from_value(json).unwrap();
    assert!(back.reads.is_empty());
    let mut rec = back;
    rec.reads.insert(3, 9);
    let again: BackupRecord = serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
    assert_eq!(again.reads, BTreeMap::from([(3, 9)]));
}
