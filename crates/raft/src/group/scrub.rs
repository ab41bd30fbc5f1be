//! A scrub step's entries reaching a group's leader (`RaftNode::propose_scrub`): a
//! `ScrubMark` or a `Repair`, checked and proposed like any entry. Applying them is
//! `crate::scrub`'s.
//!
//! Must never: propose an entry that does not decode as what it claims, a mark or a repair
//! larger than its apply accepts, or a repair on a node below its free-space floor.

use tessera_engine::chunk::MAX_CHUNK;
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::control::SCRUB_REGION_BLOCKS;
use tessera_proto::data::{MAX_IO, Reply};

use super::Group;
use crate::Respond;

impl Group {
    /// Leader only: checks `cmd` (see [`scrub_refusal`]) and proposes it; answered once
    /// committed. A repair on a full disk is refused (its apply would stall the group there).
    pub(crate) fn propose_scrub(&mut self, cmd: Command, respond: Respond, disk_full: bool) {
        if !self.is_leader() {
            return respond(Reply::NotLeader {
                hint: self.raw.raft.leader_id,
            });
        }
        if let Some(why) = scrub_refusal(&cmd) {
            return respond(Reply::BadRequest(format!(
                "{:?} of volume {} chunk {} in group {}: {why}",
                cmd.op, cmd.volume, cmd.chunk, self.id
            )));
        }
        if let Some(refusal) = self.stalled_refusal() {
            return respond(refusal);
        }
        if disk_full && cmd.op == CmdOp::Repair {
            return respond(Reply::DiskFull(format!(
                "node {} has too little free space to accept a repair",
                self.raw.raft.id
            )));
        }
        self.propose(cmd.encode(), respond);
    }
}

/// Why `cmd` is not a scrub entry to propose: another op, an id, writer epoch or sequence
/// set, a mark of 0, a repair whose data does not decode, outside the chunk or too large.
pub(crate) fn scrub_refusal(cmd: &Command) -> Option<String> {
    if cmd.id != 0 || cmd.epoch != 0 || cmd.seq != 0 {
        return Some("a scrub entry carries no id, writer epoch or sequence".into());
    }
    let end = u64::from(cmd.offset) + u64::from(cmd.len);
    match cmd.op {
        CmdOp::ScrubMark if cmd.scrub_mark().is_none() => Some("no mark (or a mark of 0)".into()),
        CmdOp::ScrubMark if end > MAX_CHUNK => Some("the region lies outside the chunk".into()),
        // Applied, a larger mark starts no watch (see `crate::scrub::apply_mark`).
        CmdOp::ScrubMark
            if end.div_ceil(4096) - u64::from(cmd.offset) / 4096 > SCRUB_REGION_BLOCKS =>
        {
            Some(format!("more than {SCRUB_REGION_BLOCKS} blocks"))
        }
        CmdOp::ScrubMark => None,
        CmdOp::Repair if cmd.repair_parts().is_none() => Some("its data does not decode".into()),
        CmdOp::Repair if end > MAX_CHUNK => Some("its blocks lie outside the chunk".into()),
        CmdOp::Repair if cmd.len > MAX_IO => Some(format!("more than {MAX_IO} bytes")),
        CmdOp::Repair => None,
        other => Some(format!("{other:?} is not a scrub entry")),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tessera_proto::command::{CmdOp, Command, Wanted};

    use super::scrub_refusal;

    fn cmd(op: CmdOp, offset: u32, len: u32, data: Bytes) -> Command {
        Command {
            op,
            volume: 1,
            chunk: 2,
            offset,
            len,
            id: 0,
            epoch: 0,
            seq: 0,
            data,
        }
    }

    #[test]
    fn only_well_formed_scrub_entries_inside_the_chunk_are_proposed() {
        let mark = Command::scrub_mark_data;
        assert_eq!(
            scrub_refusal(&cmd(CmdOp::ScrubMark, 0, 4096, mark(3))),
            None
        );
        assert!(scrub_refusal(&cmd(CmdOp::ScrubMark, 0, 4096, mark(0))).is_some());
        assert!(scrub_refusal(&cmd(CmdOp::ScrubMark, 0, 4 << 20, mark(3))).is_none());
        assert!(scrub_refusal(&cmd(CmdOp::ScrubMark, 1, 4 << 20, mark(3))).is_some());
        assert!(scrub_refusal(&cmd(CmdOp::ScrubMark, u32::MAX - 4095, 8192, mark(3))).is_some());
        let mut seq = cmd(CmdOp::ScrubMark, 0, 4096, mark(3));
        seq.seq = 2;
        assert!(scrub_refusal(&seq).is_some());
        let one = Command::repair_data(3, 1, &[Wanted::Zero], &[]);
        assert_eq!(
            scrub_refusal(&cmd(CmdOp::Repair, 4096, 4096, one.clone())),
            None
        );
        assert!(scrub_refusal(&cmd(CmdOp::Repair, 4096, 8192, one)).is_some());
        let many = vec![Wanted::Absent; 2048];
        let big = Command::repair_data(3, 1, &many, &[]);
        assert!(scrub_refusal(&cmd(CmdOp::Repair, 0, 2048 * 4096, big)).is_some());
        assert!(scrub_refusal(&cmd(CmdOp::Discard, 0, 4096, Bytes::new())).is_some());
    }
}
