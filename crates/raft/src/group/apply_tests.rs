//! Promises of applying entries: optional work skipped on a full disk only, restored
//! chunks, scrub marks and repairs.

use super::*;

fn entry(op: CmdOp) -> Entry {
    let cmd = Command {
        op,
        volume: 1,
        chunk: 2,
        offset: 0,
        len: 0,
        id: 0,
        epoch: 0,
        seq: 0,
        data: Command::merge_data(1, 3, true),
    };
    Entry {
        index: 7,
        data: cmd.encode(),
        ..Default::default()
    }
}

/// A command of volume 1, chunk 2 (the scrub tests').
fn chunk_cmd(op: CmdOp, offset: u64, len: u64, data: Bytes) -> Command {
    Command {
        op,
        volume: 1,
        chunk: 2,
        offset: u32::try_from(offset).expect("small"),
        len: u32::try_from(len).expect("small"),
        id: 0,
        epoch: 0,
        seq: 0,
        data,
    }
}

/// Applies `c` as entry 7 of group 1.
fn apply_to(
    on: (&ChunkStore, &FillsExcluded<'_>, &Watches),
    c: &Command,
) -> tessera_engine::Result<()> {
    let (off, len) = (c.offset.into(), c.len.into());
    apply_command(on, 1, 7, c, (1, 2), (off, len))
}

/// Only a full disk makes a merge optional: a shortage of descriptors or a torn block
/// passes, and the merge waits for it (skipping it would leave the layers for nothing).
#[test]
fn a_merge_is_skipped_on_a_full_disk_only() {
    use tessera_engine::Error as E;
    for op in [CmdOp::Merge, CmdOp::DropMerged] {
        let skipped = skip_optional_work(1, &entry(op), Err(E::DiskFull("full".into())));
        assert!(skipped.is_ok(), "{op:?} on a full disk: {skipped:?}");
        let waits = skip_optional_work(1, &entry(op), Err(E::Exhausted("fds".into())));
        assert!(matches!(waits, Err(E::Exhausted(_))), "{op:?}: {waits:?}");
    }
    let other = skip_optional_work(1, &entry(CmdOp::Fence), Err(E::DiskFull("full".into())));
    assert!(
        matches!(other, Err(E::DiskFull(_))),
        "another op stalls: {other:?}"
    );
}

/// A chunk linked (by a Link entry) to the wire's RESTORED_PARENT: a read of a block
/// not filled yet answers Unfilled in process (the storage node fills it), a block
/// status reports it as data, and a partial write over it is the error apply stalls on.
#[test]
fn a_restored_chunk_answers_unfilled_reads_and_stalls_partial_writes() {
    use tessera_engine::chunk::BLOCK_SIZE as B;
    use tessera_proto::control::RESTORED_PARENT;
    use tessera_proto::data::ChunkAddr;
    let tmp = tempfile::tempdir().expect("tempdir");
    let chunks = ChunkStore::open(tmp.path()).expect("open");
    let cmd = |op, offset: u64, data: Bytes| Command {
        op,
        volume: 1,
        chunk: 2,
        offset: offset as u32,
        len: data.len() as u32,
        id: 0,
        epoch: 0,
        seq: 1,
        data,
    };
    let excluded = chunks.try_exclude_fills().expect("no fill running");
    let apply = |c: &Command| {
        let (off, len) = (c.offset.into(), c.len.into());
        apply_command(
            (&chunks, &excluded, &Watches::default()),
            1,
            7,
            c,
            (1, 2),
            (off, len),
        )
    };
    apply(&cmd(CmdOp::Link, 0, Command::link_data(RESTORED_PARENT, 9))).expect("link");
    assert!(chunks.restoring(1, 2));
    apply(&cmd(CmdOp::Write, B, Bytes::from(vec![5u8; B as usize]))).expect("whole block");
    let addr = ChunkAddr {
        group: 1,
        volume: 1,
        chunk: 2,
    };
    let read = Request::other(Op::Read, addr, 0, 2 * B as u32);
    let mut want = vec![0u8; 2 * B as usize];
    want[B as usize..].fill(5);
    assert_eq!(
        serve_read(&chunks, &read),
        Reply::Unfilled {
            data: Bytes::from(want.clone()),
            blocks: vec![0]
        }
    );
    let status = Request::other(Op::BlockStatus, addr, 0, 2 * B as u32);
    let data = BlockState::Data as u8;
    assert_eq!(
        serve_read(&chunks, &status),
        Reply::Ok(Bytes::from(vec![data; 2]))
    );
    let partial = apply(&cmd(CmdOp::Write, 10, Bytes::from_static(b"abc")));
    assert!(
        matches!(&partial, Err(tessera_engine::Error::Unfilled(u)) if u.blocks == [0]),
        "{partial:?}"
    );
    // Filled: the read is an ordinary one, and the partial write applies.
    apply(&cmd(CmdOp::Hydrate, 0, Bytes::from(vec![3u8; B as usize]))).expect("hydrate");
    apply(&cmd(CmdOp::Write, 10, Bytes::from_static(b"abc"))).expect("partial write");
    want[..B as usize].fill(3);
    want[10..13].copy_from_slice(b"abc");
    assert_eq!(serve_read(&chunks, &read), Reply::Ok(Bytes::from(want)));
}

/// A Repair rewrites, on a replica that applied its mark, only the blocks unchanged since
/// the mark whose local state differs from the wanted one (a bad block always does): not
/// one written after the mark, not one already right, and nothing without the watch.
#[test]
fn a_repair_rewrites_only_unchanged_differing_blocks_of_a_watched_mark() {
    use std::os::unix::fs::FileExt;
    use tessera_engine::chunk::{BLOCK_SIZE as B, Scanned};
    use tessera_proto::command::Wanted;
    let tmp = tempfile::tempdir().expect("tempdir");
    let chunks = ChunkStore::open(tmp.path()).expect("open");
    let watches = Watches::default();
    let excluded = chunks.try_exclude_fills().expect("no fill running");
    let cmd = chunk_cmd;
    let apply = |c: &Command| apply_to((&chunks, &excluded, &watches), c);
    let fill = |v: u8, n: u64| vec![v; (n * B) as usize];
    // Blocks 0..3 and 4 hold 5s; 3 is absent; 4 rots.
    apply(&cmd(CmdOp::Write, 0, 3 * B, Bytes::from(fill(5, 3)))).expect("write");
    apply(&cmd(CmdOp::Write, 4 * B, B, Bytes::from(fill(5, 1)))).expect("write");
    let dat = tmp.path().join("0000000000000001/00000002.dat");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&dat)
        .expect("open");
    f.write_all_at(&[0xee], 4 * B + 9).expect("flip");
    // Wanted: 0 as it is, 1 and 2 sevens, 3 zero, 4 the fives it lost.
    let wanted = [
        Wanted::Data,
        Wanted::Data,
        Wanted::Data,
        Wanted::Zero,
        Wanted::Data,
    ];
    let mut blocks = fill(5, 1);
    blocks.extend(fill(7, 2));
    blocks.extend(fill(5, 1));
    let repair = cmd(
        CmdOp::Repair,
        0,
        5 * B,
        Command::repair_data(42, 1, &wanted, &blocks),
    );
    let before = chunks.scan_in(1, 2, 1, 0, 5).expect("scan");
    assert_eq!(before[4], Scanned::Bad);
    // Without the watch: nothing.
    apply(&repair).expect("repair without its mark");
    assert_eq!(chunks.scan_in(1, 2, 1, 0, 5).expect("scan"), before);
    // An undecodable repair and a mark of 0 apply nothing, and do not stall.
    apply(&cmd(CmdOp::Repair, 0, B, Bytes::from_static(b"junk"))).expect("junk repair");
    apply(&cmd(
        CmdOp::ScrubMark,
        0,
        5 * B,
        Command::scrub_mark_data(0),
    ))
    .expect("mark 0");
    assert_eq!(watches.watch(1, 0), None);

    apply(&cmd(
        CmdOp::ScrubMark,
        0,
        5 * B,
        Command::scrub_mark_data(42),
    ))
    .expect("mark");
    // Block 2 written after the mark: the repair must leave it.
    apply(&cmd(CmdOp::Write, 2 * B, B, Bytes::from(fill(9, 1)))).expect("write");
    apply(&repair).expect("repair");
    let mut want = fill(5, 1);
    want.extend(fill(7, 1));
    want.extend(fill(9, 1));
    want.extend(fill(0, 1));
    want.extend(fill(5, 1));
    assert_eq!(
        serve_read(&chunks, &read_req(5 * B as u32)),
        Reply::Ok(Bytes::from(want))
    );
    assert_eq!(
        chunks.scan_in(1, 2, 1, 3, 1).expect("scan"),
        [Scanned::Zero]
    );
    // Rewritten: 1, 3 and 4; not 0 (equal already), not 2 (written since the mark).
    assert_eq!(watches.repair_blocks_applied(), 3);
    assert_eq!(
        watches.dirty(1, 42),
        Some(crate::scrub::DirtySince::Blocks(vec![1, 2, 3, 4]))
    );
    // Applied again (a replay, a duplicate): the blocks are dirty now, nothing moves.
    apply(&repair).expect("repair again");
    assert_eq!(watches.repair_blocks_applied(), 3);
}

/// A repair whose write fails (here the checksum file cannot be opened; in life an EIO
/// reading the checksums around the block) is skipped, not an error that would stop the
/// node, and leaves its block not dirty: the same repair applied again (the next scrub's)
/// still repairs it.
#[test]
fn a_repair_whose_write_failed_is_skipped_and_repairs_the_block_when_applied_again() {
    use tessera_engine::chunk::{BLOCK_SIZE as B, Scanned};
    use tessera_proto::command::Wanted;
    let tmp = tempfile::tempdir().expect("tempdir");
    let chunks = ChunkStore::open(tmp.path()).expect("open");
    let watches = Watches::default();
    let excluded = chunks.try_exclude_fills().expect("no fill running");
    let cmd = |op, len, data| chunk_cmd(op, 0, len, data);
    let apply = |c: &Command| apply_to((&chunks, &excluded, &watches), c);
    apply(&cmd(CmdOp::ScrubMark, B, Command::scrub_mark_data(42))).expect("mark");
    let repair = cmd(
        CmdOp::Repair,
        B,
        Command::repair_data(42, 1, &[Wanted::Data], &[7u8; B as usize]),
    );
    let crc = tmp.path().join("0000000000000001/00000002.crc");
    std::fs::create_dir_all(&crc).expect("a directory where the checksums go");
    // Not a full disk (which stalls the entry, see below): skipped, never an error that
    // would stop the node.
    apply(&repair).expect("a repair whose write fails is skipped");
    assert_eq!(watches.repair_blocks_applied(), 0);
    assert_eq!(
        watches.dirty(1, 42),
        Some(crate::scrub::DirtySince::Blocks(vec![])),
        "a block the repair failed to write is not dirty"
    );
    std::fs::remove_dir(&crc).expect("rmdir");
    apply(&repair).expect("the repair retried");
    assert_eq!(watches.repair_blocks_applied(), 1);
    assert_eq!(
        serve_read(&chunks, &read_req(B as u32)),
        Reply::Ok(Bytes::from(vec![7u8; B as usize]))
    );
    assert!(matches!(
        chunks.scan_in(1, 2, 1, 0, 1).expect("scan")[..],
        [Scanned::Data { .. }]
    ));
    assert_eq!(
        watches.dirty(1, 42),
        Some(crate::scrub::DirtySince::Blocks(vec![0]))
    );
}

/// A region the repair cannot read (EIO opening its files, through the fail point) does not
/// fail the entry, which would stop the node: its blocks are taken as bad and rewritten
/// with the majority's state.
#[cfg(feature = "failpoints")]
#[test]
fn a_repair_over_a_region_that_fails_to_read_rewrites_it() {
    use tessera_engine::chunk::BLOCK_SIZE as B;
    use tessera_proto::command::Wanted;
    let scenario = fail::FailScenario::setup();
    let tmp = tempfile::tempdir().expect("tempdir");
    let chunks = ChunkStore::open(tmp.path()).expect("open");
    let watches = Watches::default();
    let excluded = chunks.try_exclude_fills().expect("no fill running");
    let cmd = |op, len, data| chunk_cmd(op, 0, len, data);
    let apply = |c: &Command| apply_to((&chunks, &excluded, &watches), c);
    let two = 2 * B as usize;
    apply(&cmd(CmdOp::Write, 2 * B, Bytes::from(vec![5u8; two]))).expect("write");
    apply(&cmd(CmdOp::ScrubMark, 2 * B, Command::scrub_mark_data(42))).expect("mark");
    let mut want = vec![5u8; B as usize];
    want.extend(vec![7u8; B as usize]);
    let repair = cmd(
        CmdOp::Repair,
        2 * B,
        Command::repair_data(42, 1, &[Wanted::Data, Wanted::Data], &want),
    );
    fail::cfg("chunk::scan_fails", "return").unwrap();
    let applied = apply(&repair);
    fail::remove("chunk::scan_fails");
    scenario.teardown();
    applied.expect("a repair over an unreadable region applies");
    assert_eq!(
        serve_read(&chunks, &read_req(2 * B as u32)),
        Reply::Ok(Bytes::from(want))
    );
    // Both rewritten: nothing here could be compared.
    assert_eq!(watches.repair_blocks_applied(), 2);
}

/// A mark over more than a scrub region starts no watch, and a repair of more blocks than
/// one proposal carries applies nothing, even under a watch covering it: neither makes the
/// poller walk or read a chunk's worth of blocks.
#[test]
fn an_oversized_mark_or_repair_from_the_log_applies_nothing() {
    use tessera_engine::chunk::BLOCK_SIZE as B;
    use tessera_proto::command::Wanted;
    use tessera_proto::control::SCRUB_REGION_BLOCKS;
    let tmp = tempfile::tempdir().expect("tempdir");
    let chunks = ChunkStore::open(tmp.path()).expect("open");
    let watches = Watches::default();
    let excluded = chunks.try_exclude_fills().expect("no fill running");
    let cmd = |op, len, data| chunk_cmd(op, 0, len, data);
    let apply = |c: &Command| apply_to((&chunks, &excluded, &watches), c);
    let big = (SCRUB_REGION_BLOCKS + 1) * B;
    apply(&cmd(CmdOp::ScrubMark, big, Command::scrub_mark_data(42))).expect("mark");
    assert_eq!(
        watches.watch(1, 42),
        None,
        "an oversized mark is not watched"
    );

    // Block 0 holds data; a repair wanting a chunk's worth of blocks absent comes.
    apply(&cmd(CmdOp::Write, B, Bytes::from(vec![5u8; B as usize]))).expect("write");
    let count = u64::from(tessera_proto::data::MAX_IO) / B + 1;
    let region = crate::scrub::Watched {
        volume: 1,
        chunk: 2,
        first: 0,
        count,
    };
    watches.start(1, 43, region);
    let absent = vec![Wanted::Absent; count as usize];
    let repair = cmd(
        CmdOp::Repair,
        count * B,
        Command::repair_data(43, 1, &absent, &[]),
    );
    apply(&repair).expect("an oversized repair applies nothing, without failing");
    assert_eq!(watches.repair_blocks_applied(), 0);
    let kept =
        serve_read(&chunks, &read_req(B as u32)) == Reply::Ok(Bytes::from(vec![5u8; B as usize]));
    assert!(kept, "block 0 kept its data");
}

fn read_req(len: u32) -> Request {
    let addr = tessera_proto::data::ChunkAddr {
        group: 1,
        volume: 1,
        chunk: 2,
    };
    Request::other(Op::Read, addr, 0, len)
}

/// A repair that meets a full disk stalls like a write, never skipped: the failed write may
/// have left its block torn, which only the repair's retry rewrites.
#[test]
fn a_repair_stalls_on_a_full_disk() {
    use tessera_engine::Error as E;
    let stalled = skip_optional_work(1, &entry(CmdOp::Repair), Err(E::DiskFull("full".into())));
    assert!(matches!(stalled, Err(E::DiskFull(_))), "{stalled:?}");
}

/// Three replicas apply the same log (a write, a mark, a repair built from the majority's
/// block); the block rotten on one of them is rewritten there only, the good ones untouched.
#[test]
fn a_repair_applied_by_three_replicas_fixes_the_rotten_one_only() {
    use std::os::unix::fs::FileExt;
    use tessera_engine::chunk::{BLOCK_SIZE as B, Scanned};
    use tessera_proto::command::Wanted;
    let cmd = |op, len: u64, data: Bytes| Command {
        op,
        volume: 1,
        chunk: 2,
        offset: 0,
        len: len as u32,
        id: 0,
        epoch: 0,
        seq: 0,
        data,
    };
    let good = vec![4u8; 2 * B as usize];
    let wanted = [Wanted::Data, Wanted::Data];
    let log = [
        cmd(CmdOp::Write, 2 * B, Bytes::from(good.clone())),
        cmd(CmdOp::ScrubMark, 2 * B, Command::scrub_mark_data(9)),
        cmd(
            CmdOp::Repair,
            2 * B,
            Command::repair_data(9, 1, &wanted, &good),
        ),
    ];
    let mut scans = Vec::new();
    for replica in 0..3 {
        let tmp = tempfile::tempdir().expect("tempdir");
        let chunks = ChunkStore::open(tmp.path()).expect("open");
        let watches = Watches::default();
        let excluded = chunks.try_exclude_fills().expect("no fill running");
        for (i, c) in log.iter().enumerate() {
            if i == 1 && replica == 2 {
                // Rot on replica 2 before the scrub.
                let dat = tmp.path().join("0000000000000001/00000002.dat");
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dat)
                    .expect("open");
                f.write_all_at(&[1], B + 5).expect("flip");
                let scan = chunks.scan_in(1, 2, 1, 0, 2).expect("scan");
                assert_eq!(scan[1], Scanned::Bad);
            }
            let (off, len) = (c.offset.into(), c.len.into());
            apply_command((&chunks, &excluded, &watches), 1, 7, c, (1, 2), (off, len))
                .expect("apply");
        }
        let want = if replica == 2 { 1 } else { 0 };
        assert_eq!(watches.repair_blocks_applied(), want, "replica {replica}");
        scans.push(chunks.scan_in(1, 2, 1, 0, 2).expect("scan"));
    }
    assert!(scans.iter().all(|s| *s == scans[0]), "{scans:?}");
}
