//! Reclaiming deleted snapshots' space in the state: the range a deletion records, the
//! union of adjacent deletions, progress and completion, when work is planned, and the
//! ops of one chunk.

use tessera_proto::control::{GroupOp, MAX_GROUP_OPS, ReclaimInfo, SnapshotState};

use super::snapshot_tests::{cut, setup};
use super::*;

const MIB: u64 = 1 << 20;

fn delete(s: &mut State, name: &str) {
    let m = s.plan_delete_snapshot("v", name).unwrap();
    s.apply(&m);
}

fn reclaims(s: &State) -> Vec<(u64, u64)> {
    s.volume_by_name("v")
        .unwrap()
        .reclaims
        .iter()
        .map(|r| (r.low, r.next_chunk))
        .collect()
}

fn top(s: &State, low: u64) -> Option<u64> {
    range_top(s.volume_record("v").unwrap(), low)
}

/// Snapshots at 1, 2, 3 (the volume at 4): deleting the middle one frees layers 2..=3
/// (snapshot 3 reads them); the oldest, 1..=3 absorbing that; the newest, the live range
/// from 1, absorbing it again.
#[test]
fn a_deleted_snapshots_range_runs_from_the_one_before_it_to_the_next() {
    let (mut s, _) = setup();
    for name in ["a", "b", "c"] {
        cut(&mut s, "v", name);
    }
    assert!(reclaims(&s).is_empty());
    delete(&mut s, "b");
    assert_eq!(reclaims(&s), [(2, 0)]);
    assert_eq!(top(&s, 2), Some(3));
    delete(&mut s, "a");
    assert_eq!(reclaims(&s), [(1, 0)], "the union restarts at chunk 0");
    assert_eq!(top(&s, 1), Some(3));
    delete(&mut s, "c");
    assert_eq!(reclaims(&s), [(1, 0)]);
    assert_eq!(top(&s, 1), None, "the live range");
    assert_eq!(
        s.volume_by_name("v").unwrap().reclaims,
        [ReclaimInfo {
            low: 1,
            next_chunk: 0
        }]
    );
}

/// Deleting the newest snapshot opens the live range above the one before it; the oldest,
/// the range from 1 to the next; both kept, by `low`, and apart.
#[test]
fn reclaims_of_separate_ranges_are_kept_apart_in_order() {
    let (mut s, _) = setup();
    for name in ["a", "b", "c"] {
        cut(&mut s, "v", name);
    }
    delete(&mut s, "c");
    assert_eq!(reclaims(&s), [(3, 0)]);
    assert_eq!(top(&s, 3), None);
    delete(&mut s, "a");
    assert_eq!(reclaims(&s), [(1, 0), (3, 0)]);
    assert_eq!(top(&s, 1), Some(2));
    // A snapshot taken later is the top of the live range.
    cut(&mut s, "v", "d");
    assert_eq!(top(&s, 3), Some(4));
    // Deleting a snapshot twice (a replayed entry) changes nothing more.
    let id = s.volume_record("v").unwrap().id;
    let again = Mutation::DeleteSnapshot {
        volume_id: id,
        name: "a".into(),
    };
    s.apply(&again);
    assert_eq!(reclaims(&s), [(1, 0), (3, 0)]);
}

#[test]
fn progress_only_moves_forward_and_done_forgets_the_reclaim() {
    let (mut s, id) = setup();
    cut(&mut s, "v", "a");
    cut(&mut s, "v", "b");
    delete(&mut s, "a");
    let of = ReclaimOf {
        top: Some(2),
        seq: 3,
    };
    let progress = |low, next_chunk, retry| Mutation::ReclaimProgress {
        volume_id: id,
        low,
        next_chunk,
        of,
        retry,
    };
    s.apply(&progress(1, 3, false));
    assert_eq!(reclaims(&s), [(1, 3)]);
    s.apply(&progress(1, 2, false));
    assert_eq!(reclaims(&s), [(1, 3)], "never moves back");
    s.apply(&progress(7, 9, false));
    assert_eq!(reclaims(&s), [(1, 3)], "no reclaim at 7: nothing");
    assert_eq!(s.reclaim_of(id, 1, of), Some(3));
    assert_eq!(s.reclaim_of(id, 7, of), None);
    s.apply(&progress(1, 1, true));
    assert_eq!(reclaims(&s), [(1, 1)], "a retry moves it back");
    s.apply(&Mutation::ReclaimDone {
        volume_id: id,
        low: 7,
        of,
    });
    assert_eq!(reclaims(&s), [(1, 1)]);
    s.apply(&Mutation::ReclaimDone {
        volume_id: id,
        low: 1,
        of,
    });
    assert!(reclaims(&s).is_empty());
    assert!(s.reclaim_steps().is_empty());
}

/// A live reclaim's job merges into the live layer N it was planned at. A snapshot taken
/// at N and deleted again between two of its progress records replaces the reclaim (same
/// `low`, chunk 0, live layer N + 1): the stale job's progress and completion are
/// ignored, else its skipped chunks would keep layer N beside N + 1 forever. Entries
/// from before the check (`seq` 0) are taken as they were.
#[test]
fn a_stale_live_jobs_progress_is_ignored_after_a_snapshot_came_and_went() {
    let (mut s, id) = setup();
    cut(&mut s, "v", "a");
    cut(&mut s, "v", "b");
    delete(&mut s, "b");
    assert_eq!(reclaims(&s), [(2, 0)]);
    let stale = ReclaimOf { top: None, seq: 3 };
    assert_eq!(s.reclaim_of(id, 2, stale), Some(0));
    let progress = |next_chunk, of| Mutation::ReclaimProgress {
        volume_id: id,
        low: 2,
        next_chunk,
        of,
        retry: false,
    };
    s.apply(&progress(1, stale));
    assert_eq!(reclaims(&s), [(2, 1)]);
    cut(&mut s, "v", "c");
    delete(&mut s, "c");
    assert_eq!(reclaims(&s), [(2, 0)], "replaced: same low, from chunk 0");
    assert_eq!(s.reclaim_of(id, 2, stale), None);
    s.apply(&progress(3, stale));
    assert_eq!(
        reclaims(&s),
        [(2, 0)],
        "the stale job's progress is ignored"
    );
    s.apply(&Mutation::ReclaimDone {
        volume_id: id,
        low: 2,
        of: stale,
    });
    assert_eq!(reclaims(&s), [(2, 0)], "and so is its completion");
    s.apply(&progress(2, ReclaimOf::default()));
    assert_eq!(reclaims(&s), [(2, 2)], "an entry from before the check");
    // The current job's is taken; one planned with another top is not.
    let current = ReclaimOf { top: None, seq: 4 };
    s.apply(&progress(3, current));
    assert_eq!(reclaims(&s), [(2, 3)]);
    s.apply(&progress(
        4,
        ReclaimOf {
            top: Some(3),
            seq: 4,
        },
    ));
    assert_eq!(reclaims(&s), [(2, 3)], "another top");
    // Old entries (no `top`, `seq`, `retry`) still decode.
    let old = format!(r#"{{"ReclaimProgress":{{"volume_id":{id},"low":2,"next_chunk":5}}}}"#);
    let m: Mutation = serde_json::from_str(&old).unwrap();
    assert_eq!(m, progress(5, ReclaimOf::default()));
    let back: Mutation = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(back, m);
    let done = format!(r#"{{"ReclaimDone":{{"volume_id":{id},"low":2}}}}"#);
    s.apply(&serde_json::from_str(&done).unwrap());
    assert!(reclaims(&s).is_empty());
}

/// The work planned: every group with its chunks, the range and the volume's sequence;
/// nothing while a snapshot is creating (its fences may not be applied) or a rollback
/// runs.
#[test]
fn reclaims_are_planned_only_when_no_snapshot_is_creating_or_rollback_running() {
    let (mut s, id) = setup();
    cut(&mut s, "v", "a");
    cut(&mut s, "v", "b");
    delete(&mut s, "b");
    let steps = s.reclaim_steps();
    assert_eq!(
        steps,
        [ReclaimStep {
            volume_id: id,
            low: 2,
            top: None,
            seq: 3,
            next_chunk: 0,
            chunk_size: MIB,
            groups: [(1, vec![0, 2]), (2, vec![1, 3])].into(),
        }]
    );
    let SnapshotPlan::Cut(m) = s.plan_create_snapshot("v", "c", 300).unwrap() else {
        panic!("c is new");
    };
    s.apply(&m);
    assert!(s.reclaim_steps().is_empty(), "a snapshot is creating");
    s.apply(&Mutation::SnapshotReady {
        volume_id: id,
        name: "c".into(),
        seq: 3,
    });
    let steps = s.reclaim_steps();
    assert_eq!((steps[0].top, steps[0].seq), (Some(3), 4));
    let (m, _) = s.plan_rollback("v", "a").unwrap();
    s.apply(&m.unwrap());
    assert!(s.reclaim_steps().is_empty(), "a rollback runs");
    let epoch = s.volume_record("v").unwrap().epoch;
    s.apply(&Mutation::RollbackDone {
        volume_id: id,
        epoch,
    });
    assert_eq!(s.reclaim_steps().len(), 1);
    assert_eq!(
        s.snapshot_info("v", "c").unwrap().state,
        SnapshotState::Ready
    );
}

/// A frozen range: the fence at the volume's sequence, the merge pieces over the chunk,
/// the drop. The live range: the frozen pass over `low..=N-1`, then the live pass over
/// `low..=N`; with `low == N - 1` the frozen pass (one layer) is left out.
#[test]
fn a_chunks_ops_are_the_fence_then_pieces_then_drop_and_the_live_range_has_two_passes() {
    let fence = |seq| GroupOp::Fence {
        volume_id: 5,
        epoch: 0,
        seq,
    };
    let merge = |offset, low, top, live| GroupOp::Merge {
        volume_id: 5,
        chunk: 3,
        offset,
        len: 4 << 20,
        low,
        top,
        live,
    };
    let drop = |low, top, live| GroupOp::DropMerged {
        volume_id: 5,
        chunk: 3,
        low,
        top,
        live,
    };
    let frozen = reclaim_ops(5, 3, 8 * MIB, 2, Some(4), 6);
    assert_eq!(
        frozen,
        [
            fence(6),
            merge(0, 2, 4, false),
            merge(4 << 20, 2, 4, false),
            drop(2, 4, false)
        ]
    );
    let live = reclaim_ops(5, 3, 8 * MIB, 1, None, 4);
    assert_eq!(
        live,
        [
            fence(4),
            merge(0, 1, 3, false),
            merge(4 << 20, 1, 3, false),
            drop(1, 3, false),
            merge(0, 1, 4, true),
            merge(4 << 20, 1, 4, true),
            drop(1, 4, true),
        ]
    );
    let newest = reclaim_ops(5, 3, 8 * MIB, 3, None, 4);
    assert_eq!(
        newest,
        [
            fence(4),
            merge(0, 3, 4, true),
            merge(4 << 20, 3, 4, true),
            drop(3, 4, true),
        ]
    );
    // A chunk smaller than a piece is one piece; the largest chunk fits one batch.
    let small = reclaim_ops(5, 3, MIB, 2, Some(4), 6);
    assert!(matches!(small[1], GroupOp::Merge { offset: 0, len, .. } if len == MIB as u32));
    assert!(reclaim_ops(5, 3, 1 << 30, 1, None, 9).len() <= MAX_GROUP_OPS);
}

/// A record from before reclaims (no `reclaims` field) loads with none, and one without
/// any is written as before.
#[test]
fn records_from_before_reclaims_load_with_none() {
    let old = br#"{"id":3,"name":"db","size":4096,"chunk_size":1048576,"created_unix":7,"seq":4}"#;
    let rec: VolumeRecord = serde_json::from_slice(old).unwrap();
    assert!(rec.reclaims.is_empty());
    assert!(!serde_json::to_string(&rec).unwrap().contains("reclaims"));
    let mut rec = rec;
    rec.reclaims.push(Reclaim {
        low: 2,
        next_chunk: 5,
    });
    let back: VolumeRecord = serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
    assert_eq!(back, rec);
}
