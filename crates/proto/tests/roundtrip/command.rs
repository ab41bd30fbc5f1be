//! Replicated commands: every command decodes to itself and its peeks read its id, epoch
//! and sequence; the data layouts of links, rollbacks, merges, scrub marks and repairs
//! read back as built; and no log entry, whatever it holds, makes the decoder, the peeks
//! or the readers of a command's data panic.

use bytes::Bytes;
use proptest::prelude::*;
use tessera_proto::command::{
    CmdOp, Command, LINK_LEN, MERGE_LEN, RepairParts, SCRUB_MARK_LEN, Wanted,
};

use crate::mutate::untrusted;
use crate::{assert_yields_every_variant, bytes, fuzz, round_trips, u32s, u64s, u128s};

/// Every command op, in [`op_index`] order.
const OPS: [CmdOp; 14] = [
    CmdOp::Write,
    CmdOp::WriteZeroes,
    CmdOp::Discard,
    CmdOp::DropChunk,
    CmdOp::Fence,
    CmdOp::Link,
    CmdOp::Flatten,
    CmdOp::Unlink,
    CmdOp::Rollback,
    CmdOp::Merge,
    CmdOp::DropMerged,
    CmdOp::Hydrate,
    CmdOp::ScrubMark,
    CmdOp::Repair,
];

/// The guard: an op added to the crate does not compile here until it is in [`OPS`] and
/// [`len_and_data`] knows its data.
fn op_index(op: &CmdOp) -> usize {
    match op {
        CmdOp::Write => 0,
        CmdOp::WriteZeroes => 1,
        CmdOp::Discard => 2,
        CmdOp::DropChunk => 3,
        CmdOp::Fence => 4,
        CmdOp::Link => 5,
        CmdOp::Flatten => 6,
        CmdOp::Unlink => 7,
        CmdOp::Rollback => 8,
        CmdOp::Merge => 9,
        CmdOp::DropMerged => 10,
        CmdOp::Hydrate => 11,
        CmdOp::ScrubMark => 12,
        CmdOp::Repair => 13,
    }
}

fn exactly(n: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), n).prop_map(Bytes::from)
}

/// `(len, data)` as the op's layout has them: a write's or hydrate's data is `len` bytes;
/// a link, rollback, merge or scrub mark carries its fixed-size data, a repair some data;
/// every other op none.
fn len_and_data(op: CmdOp) -> BoxedStrategy<(u32, Bytes)> {
    let fixed = |n: usize| (u32s(), exactly(n)).boxed();
    match op {
        CmdOp::Write | CmdOp::Hydrate => bytes(600).prop_map(|d| (d.len() as u32, d)).boxed(),
        CmdOp::Link => fixed(LINK_LEN),
        CmdOp::Rollback => fixed(8),
        CmdOp::Merge | CmdOp::DropMerged => fixed(MERGE_LEN),
        CmdOp::ScrubMark => fixed(SCRUB_MARK_LEN),
        CmdOp::Repair => (
            u32s(),
            bytes(300).prop_filter("a repair carries data", |d| !d.is_empty()),
        )
            .boxed(),
        CmdOp::WriteZeroes
        | CmdOp::Discard
        | CmdOp::DropChunk
        | CmdOp::Fence
        | CmdOp::Flatten
        | CmdOp::Unlink => (u32s(), Just(Bytes::new())).boxed(),
    }
}

fn command_of(op: CmdOp) -> impl Strategy<Value = Command> {
    (len_and_data(op), u64s(), u64s(), u128s(), u64s(), u64s()).prop_flat_map(
        move |((len, data), volume, chunk, id, epoch, seq)| {
            let max = u32::MAX - len;
            prop_oneof![Just(0u32), Just(max), 0..=max].prop_map(move |offset| Command {
                op,
                volume,
                chunk,
                offset,
                len,
                id,
                epoch,
                seq,
                data: data.clone(),
            })
        },
    )
}

/// A command as a leader proposes it (its range does not overflow, its data fits its op).
fn command() -> impl Strategy<Value = Command> + Clone {
    prop::sample::select(OPS.to_vec())
        .prop_flat_map(command_of)
        .boxed()
}

fn wanted() -> impl Strategy<Value = Wanted> {
    prop::sample::select(vec![Wanted::Absent, Wanted::Zero, Wanted::Data])
}

/// A repair as a scrub step builds it: whole blocks, one state each, 4 KiB per data block.
fn repair() -> impl Strategy<Value = (Command, RepairParts)> {
    (
        u64s(),
        u64s(),
        0..1000u32,
        prop::collection::vec(wanted(), 0..6),
        any::<u8>(),
    )
        .prop_map(|(mark, layer, first_block, wanted, fill)| {
            let data_blocks = wanted.iter().filter(|&&w| w == Wanted::Data).count();
            let blocks = vec![fill; data_blocks * 4096];
            let cmd = Command {
                op: CmdOp::Repair,
                volume: 1,
                chunk: 2,
                offset: first_block * 4096,
                len: wanted.len() as u32 * 4096,
                id: 0,
                epoch: 0,
                seq: 0,
                data: Command::repair_data(mark, layer, &wanted, &blocks),
            };
            let parts = RepairParts {
                mark,
                layer,
                wanted,
                data: Bytes::from(blocks),
            };
            (cmd, parts)
        })
}

/// A command of `op` carrying `data`, fields otherwise fixed.
fn with_data(op: CmdOp, data: Bytes) -> Command {
    Command {
        op,
        volume: 9,
        chunk: 4,
        offset: 0,
        len: 0,
        id: 0,
        epoch: 0,
        seq: 0,
        data,
    }
}

/// The command back off the log.
fn logged(c: &Command) -> Command {
    Command::decode(&c.encode()).expect("a command as built decodes")
}

#[test]
fn the_strategy_yields_every_op() {
    assert_yields_every_variant(command(), 0..OPS.len(), |c| op_index(&c.op));
}

proptest! {
    #![proptest_config(round_trips())]

    /// A command decodes to itself, and the peeks read its id, and its volume, epoch and
    /// sequence when it has either, without decoding it.
    #[test]
    fn a_command_decodes_to_itself_and_peeks_agree(cmd in command()) {
        let bytes = cmd.encode();
        prop_assert_eq!(Command::decode(&bytes), Ok(cmd.clone()));
        prop_assert_eq!(Command::peek_id(&bytes), cmd.id);
        let fenced = cmd.epoch != 0 || cmd.seq != 0;
        prop_assert_eq!(
            Command::peek_fence(&bytes),
            fenced.then_some((cmd.volume, cmd.epoch, cmd.seq))
        );
        prop_assert_eq!(
            Command::peek_epoch(&bytes),
            (cmd.epoch != 0).then_some((cmd.volume, cmd.epoch))
        );
    }

    /// The data of a link, a rollback, a merge and a scrub mark reads back off the log as
    /// built (a mark of 0 is none); another op has none of them.
    #[test]
    fn command_data_reads_back_as_built(
        parent in u64s(),
        seq in u64s(),
        low in u64s(),
        top in u64s(),
        live in any::<bool>(),
        mark in u64s(),
    ) {
        let link = logged(&with_data(CmdOp::Link, Command::link_data(parent, seq)));
        prop_assert_eq!(link.link_parent(), Some((parent, seq)));
        let rollback = logged(&with_data(CmdOp::Rollback, Bytes::copy_from_slice(&seq.to_le_bytes())));
        prop_assert_eq!(rollback.rollback_to(), Some(seq));
        for op in [CmdOp::Merge, CmdOp::DropMerged] {
            let merge = logged(&with_data(op, Command::merge_data(low, top, live)));
            prop_assert_eq!(merge.merge_range(), Some((low, top, live)));
        }
        let scrub = logged(&with_data(CmdOp::ScrubMark, Command::scrub_mark_data(mark)));
        prop_assert_eq!(scrub.scrub_mark(), (mark != 0).then_some(mark));
        let other = with_data(CmdOp::Discard, Bytes::new());
        prop_assert_eq!(
            (other.link_parent(), other.rollback_to(), other.merge_range(), other.scrub_mark()),
            (None, None, None, None)
        );
        prop_assert_eq!(other.repair_parts(), None);
    }

    /// A repair reads back off the log as built (none with a mark or a layer of 0).
    #[test]
    fn a_repair_reads_back_as_built((cmd, parts) in repair()) {
        let got = logged(&cmd);
        prop_assert_eq!(&got, &cmd);
        let valid = parts.mark != 0 && parts.layer != 0;
        prop_assert_eq!(got.repair_parts(), valid.then_some(parts));
    }
}

proptest! {
    #![proptest_config(fuzz())]

    /// Whatever a log entry holds, decoding and peeking never panic; a command decoded
    /// keeps its range within a chunk's `u32`, encodes to an entry that decodes to it
    /// again, agrees with the peeks of the entry, and its data readers do not panic.
    #[test]
    fn log_entries_never_panic(entry in untrusted(command().prop_map(|c| c.encode()))) {
        let peeked = (
            Command::peek_id(&entry),
            Command::peek_fence(&entry),
            Command::peek_epoch(&entry),
        );
        if let Ok(cmd) = Command::decode(&Bytes::from(entry)) {
            prop_assert!(cmd.offset.checked_add(cmd.len).is_some());
            prop_assert_eq!(Command::decode(&cmd.encode()), Ok(cmd.clone()));
            prop_assert_eq!(peeked.0, cmd.id);
            if let Some(fence) = peeked.1 {
                prop_assert_eq!(fence, (cmd.volume, cmd.epoch, cmd.seq));
            }
            if cmd.epoch != 0 || cmd.seq != 0 {
                prop_assert_eq!(peeked.1, Some((cmd.volume, cmd.epoch, cmd.seq)));
            }
            let _ = (cmd.link_parent(), cmd.rollback_to(), cmd.merge_range());
            let _ = (cmd.scrub_mark(), cmd.repair_parts());
        }
    }
}
