//! Reclaiming a deleted snapshot's space: a merge of layers is proposed only behind a
//! fence that keeps writes out of its range, and one that meets a full disk is skipped
//! (optional work) instead of stalling the group.

use tessera_proto::control::GroupOp;

use super::sequences::{answer, apply_ops};
use super::*;

const VOLUME: u64 = 1;

fn fence(volume_id: u64, seq: u64) -> GroupOp {
    GroupOp::Fence {
        volume_id,
        epoch: 0,
        seq,
    }
}

fn merge(low: u64, top: u64, live: bool) -> GroupOp {
    GroupOp::Merge {
        volume_id: VOLUME,
        chunk: 0,
        offset: 0,
        len: 1 << 20,
        low,
        top,
        live,
    }
}

fn drop_merged(low: u64, top: u64, live: bool) -> GroupOp {
    GroupOp::DropMerged {
        volume_id: VOLUME,
        chunk: 0,
        low,
        top,
        live,
    }
}

/// A merge of a frozen range needs the volume's sequence floor above the range (no
/// write can land in it), one of the live range a floor at least at its top (clients
/// write the top, which the merge never overwrites). The fences earlier in the same batch
/// count, in order; a later one, or another volume's, does not. A refused batch proposes
/// nothing.
#[test]
fn a_merge_is_proposed_only_behind_a_fence_above_its_range() {
    let _serial = fail::FailScenario::setup();
    let mut n = leader();
    let last = n.last_index();
    for batch in [
        vec![merge(1, 2, false)],
        vec![fence(VOLUME, 2), merge(1, 2, false)],
        vec![fence(VOLUME, 2), drop_merged(1, 2, false)],
        vec![merge(1, 2, false), fence(VOLUME, 3)],
        vec![fence(VOLUME, 3), merge(1, 2, false), merge(1, 4, true)],
        vec![fence(VOLUME + 1, 9), merge(1, 2, false)],
        vec![fence(VOLUME, 2), merge(1, 3, true)],
    ] {
        let r = apply_ops(&mut n, batch.clone());
        assert!(
            matches!(answer(&r), Some(Reply::BadRequest(_))),
            "{batch:?}: {:?}",
            answer(&r)
        );
        assert_eq!(n.last_index(), last, "{batch:?}: nothing proposed");
    }
    let r = apply_ops(
        &mut n,
        vec![
            fence(VOLUME, 3),
            merge(1, 2, false),
            drop_merged(1, 2, false),
            merge(1, 3, true),
            drop_merged(1, 3, true),
        ],
    );
    ack_appends(&mut n);
    assert!(ok(&r), "{:?}", answer(&r));
    assert_eq!(n.last_index(), last + 5);
    // The floor stays raised: a later batch needs no fence of its own.
    let r = apply_ops(&mut n, vec![merge(1, 2, false), drop_merged(1, 3, true)]);
    ack_appends(&mut n);
    assert!(ok(&r), "{:?}", answer(&r));
    let r = apply_ops(&mut n, vec![merge(2, 3, false)]);
    match answer(&r) {
        Some(Reply::BadRequest(why)) => assert!(why.contains("floor 3"), "{why}"),
        other => panic!("a frozen merge up to the floor: {other:?}"),
    }
    assert_eq!(n.poller.groups[&GROUP].applied, n.last_index());
    assert!(n.fatal.lock().unwrap().is_none());
}

/// A merge that meets a full disk (here through the `raft::apply` fail point) is skipped:
/// the group applies on and does not stall, where a write meeting it stalls.
#[cfg(feature = "failpoints")]
#[test]
fn a_merge_meeting_a_full_disk_is_skipped_and_the_group_applies_on() {
    let scenario = fail::FailScenario::setup();
    let mut n = leader();
    let w = submit(&mut n, write(0xA, 0xaa));
    ack_appends(&mut n);
    assert!(ok(&w), "{:?}", answer(&w));
    let r = apply_ops(&mut n, vec![fence(VOLUME, 3)]);
    ack_appends(&mut n);
    assert!(ok(&r), "{:?}", answer(&r));
    fail::cfg("raft::apply", &format!("return({ME}/{GROUP})")).unwrap();
    let r = apply_ops(
        &mut n,
        vec![
            merge(1, 2, false),
            drop_merged(1, 2, false),
            merge(1, 3, true),
            drop_merged(1, 3, true),
        ],
    );
    ack_appends(&mut n);
    let merged = answer(&r);
    let group = &n.poller.groups[&GROUP];
    let (applied, stalled) = (group.applied, group.stalled.is_some());
    let last = n.last_index();
    // The contrast: a write meeting the full disk stalls the group.
    let mut w = write(0xB, 0xbb);
    w.seq = 3;
    let w = submit(&mut n, w);
    ack_appends(&mut n);
    let write_stalled = n.poller.groups[&GROUP].stalled.is_some();
    fail::remove("raft::apply");
    scenario.teardown();
    assert!(matches!(merged, Some(Reply::Ok(_))), "{merged:?}");
    assert_eq!(applied, last, "the merges were skipped, not waited on");
    assert!(!stalled, "a merge meeting a full disk stalled the group");
    assert!(
        write_stalled,
        "a write meeting a full disk must stall: {:?}",
        answer(&w)
    );
    assert!(n.fatal.lock().unwrap().is_none());
}
