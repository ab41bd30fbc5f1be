//! Promises of the watches: apply's changes mark exactly the blocks they touch (a
//! whole-chunk operation the whole watch), a watch expires after its TTL, a group keeps at
//! most its limit (the oldest goes), and a catch-up or removal drops the group's watches.

use std::time::Duration;

use bytes::Bytes;
use tessera_proto::command::{CmdOp, Command};

use super::*;
use crate::clock::virtual_clock;

const B: u64 = BLOCK_SIZE;

fn region(first: u64, count: u64) -> Watched {
    Watched {
        volume: 1,
        chunk: 2,
        first,
        count,
    }
}

fn cmd(op: CmdOp, chunk: u64, offset: u64, len: u64) -> Command {
    Command {
        op,
        volume: 1,
        chunk,
        offset: offset as u32,
        len: len as u32,
        id: 0,
        epoch: 0,
        seq: 0,
        data: Bytes::new(),
    }
}

#[test]
fn applied_changes_mark_the_blocks_they_touch_and_whole_chunk_ops_the_whole_watch() {
    virtual_clock::start();
    let w = Watches::default();
    assert_eq!(w.watch(7, 1), None);
    w.before_apply(7, &cmd(CmdOp::Write, 2, 0, B)); // no watch yet: nothing to mark
    w.start(7, 1, region(10, 100));
    assert_eq!(w.watch(7, 1), Some(region(10, 100)));
    assert_eq!(w.dirty(7, 1), Some(DirtySince::Blocks(vec![])));
    // A write straddling blocks 9..=11 (9 is outside the region), a discard of 50, a
    // write of another chunk, another group's write, and a mark: only 10, 11 and 50.
    w.before_apply(7, &cmd(CmdOp::Write, 2, 9 * B + 100, 2 * B));
    w.before_apply(7, &cmd(CmdOp::Discard, 2, 50 * B, B));
    w.before_apply(7, &cmd(CmdOp::Write, 3, 20 * B, B));
    w.before_apply(8, &cmd(CmdOp::Write, 2, 30 * B, B));
    w.before_apply(7, &cmd(CmdOp::ScrubMark, 2, 30 * B, B));
    w.before_apply(7, &cmd(CmdOp::WriteZeroes, 2, 109 * B, 4 * B));
    assert_eq!(w.dirty_of(7, 1, 10, 3), Some(vec![true, true, false]));
    // A hydrate through the log: the blocks it carries only (60..62), not the whole watch.
    let mut fill = cmd(CmdOp::Hydrate, 2, 60 * B, 2 * B);
    fill.data = Bytes::from(vec![1u8; 2 * B as usize]);
    w.before_apply(7, &fill);
    // A fill outside the log marks its blocks itself.
    w.touched(7, 1, 2, 70, 1);
    assert_eq!(
        w.dirty(7, 1),
        Some(DirtySince::Blocks(vec![10, 11, 50, 60, 61, 70, 109]))
    );
    // A merge of the chunk: everything.
    w.before_apply(7, &cmd(CmdOp::Merge, 2, 0, 0));
    assert_eq!(w.dirty(7, 1), Some(DirtySince::All));
    assert_eq!(w.repair_blocks_applied(), 0);
}

#[test]
fn a_watch_expires_after_its_ttl() {
    virtual_clock::start();
    let w = Watches::default();
    w.start(7, 1, region(0, 8));
    virtual_clock::advance(WATCH_TTL - Duration::from_secs(1));
    assert!(w.watch(7, 1).is_some());
    w.start(7, 2, region(0, 8));
    virtual_clock::advance(Duration::from_secs(2));
    assert_eq!(w.watch(7, 1), None);
    assert_eq!(w.dirty(7, 1), None);
    assert!(w.watch(7, 2).is_some());
    virtual_clock::advance(WATCH_TTL);
    assert_eq!(w.watch(7, 2), None);
    assert_eq!(w.live.load(Ordering::Acquire), 0, "apply's fast path again");
}

#[test]
fn a_group_keeps_its_newest_watches_and_drop_group_forgets_them_all() {
    virtual_clock::start();
    let w = Watches::default();
    for mark in 1..=MAX_WATCHES_PER_GROUP as u64 + 2 {
        w.start(7, mark, region(0, 8));
    }
    w.start(9, 1, region(0, 8));
    assert_eq!(w.watch(7, 1), None);
    assert_eq!(w.watch(7, 2), None);
    for mark in 3..=MAX_WATCHES_PER_GROUP as u64 + 2 {
        assert!(w.watch(7, mark).is_some(), "mark {mark}");
    }
    w.drop_group(7);
    assert_eq!(w.watch(7, 5), None);
    assert!(w.watch(9, 1).is_some(), "other groups keep theirs");
    assert_eq!(w.live.load(Ordering::Acquire), 1);
}

#[test]
fn a_region_past_the_largest_chunk_is_cut_at_its_end() {
    virtual_clock::start();
    let w = Watches::default();
    w.start(7, 1, region(u64::MAX - 3, u64::MAX));
    let got = w.watch(7, 1).expect("watched");
    assert_eq!((got.first, got.count), (CHUNK_BLOCKS, 0));
    w.start(7, 2, region(CHUNK_BLOCKS - 2, 10));
    assert_eq!(w.watch(7, 2).map(|r| r.count), Some(2));
}
