//! Commands replicated through a replica group's Raft log and applied to its chunks.
//!
//! ```text
//! op u8 | volume u64 | chunk u64 | offset u32 | len u32 | [id u128] | [epoch u64] | [seq u64] | data
//! ```
//! `id` (the client's request id, see `data::Request::id`) is present when the op byte has
//! its high bit set, `epoch` (the writer epoch, see `data::Request::epoch`) when it has bit
//! 6 set, `seq` (the volume's snapshot sequence, see `data::Request::seq`) when it has bit
//! 5 set; commands written before they existed have none (id 0, epoch 0, seq 0). `data`:
//! the bytes of a [`CmdOp::Write`], the parent of a [`CmdOp::Link`], empty otherwise.
//!
//! **Layers.** A chunk's blocks live in layers, one per snapshot sequence a write carried:
//! a write, zeroes or discard of `seq` goes to layer `max(seq, 1)` (sequence 0 is the layer
//! of commands from before snapshots, the chunk's original files). Snapshot `s` of a volume
//! reads, per block, the newest layer `<= s` holding it; the live volume the newest layer.
//! Nothing ever writes into a layer below the volume's current sequence, so a snapshot is
//! never copied: the first write of a newer sequence redirects to a new layer.
//! These bytes are stored in every replica's log and re-read at recovery, so the decoder
//! treats them as untrusted. An empty entry (Raft's no-op on election) is not a command.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{DecodeError, Reader};

const HEADER: usize = 25;
const HAS_ID: u8 = 0x80;
const HAS_EPOCH: u8 = 0x40;
const HAS_SEQ: u8 = 0x20;
const FLAGS: u8 = HAS_ID | HAS_EPOCH | HAS_SEQ;
/// Bytes of a [`CmdOp::Link`]'s data: `parent volume u64 | parent seq u64`.
pub const LINK_LEN: usize = 16;
/// Bytes of a [`CmdOp::Merge`]'s or [`CmdOp::DropMerged`]'s data: `low u64 | top u64 |
/// live u8`.
pub const MERGE_LEN: usize = 17;

/// What a command does to its chunk: the low five bits of the op byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CmdOp {
    /// Store `data` at `offset` of the chunk.
    Write = 1,
    /// Make `len` bytes at `offset` read as zeroes.
    WriteZeroes = 2,
    /// The client no longer needs the range: it reads as zeroes, its space may be freed.
    Discard = 3,
    /// The volume was deleted: drop this chunk's file.
    DropChunk = 4,
    /// The volume's writer epoch is now `epoch` and its snapshot sequence `seq` (either
    /// 0: unchanged): writes of older epochs or sequences are refused from here on in the
    /// log (see `data::Op::Fence`). Changes no data.
    Fence = 5,
    /// The chunk (of a clone) reads through to the same chunk of its parent as of a
    /// snapshot: `data` is `parent volume u64 | parent seq u64`. Blocks no layer of the
    /// chunk holds read as the parent's snapshot `seq` does (which may itself be linked).
    /// Set once, when the clone is made; changes no block.
    Link = 6,
    /// Copy into the chunk's layer `max(seq, 1)` every block of `offset..offset + len`
    /// that no layer of the chunk holds, from its parent (see [`CmdOp::Link`]): the
    /// clone's bytes do not change. Idempotent. A flatten copies whole chunks this way,
    /// then [`CmdOp::Unlink`]s them.
    Flatten = 7,
    /// The chunk no longer reads through to a parent (every block was copied by
    /// [`CmdOp::Flatten`]). Changes no byte the chunk reads.
    Unlink = 8,
    /// The chunk's live image becomes its image as of snapshot sequence `to` (`data` is
    /// `to u64`, see [`Command::rollback_to`]): every block some layer above `to` holds is
    /// rewritten into layer `max(seq, 1)` with the snapshot's content (as a block "written
    /// as zero" where the snapshot has none); older layers are untouched, so every snapshot
    /// keeps its bytes. Idempotent. Only with no writer attached.
    Rollback = 9,
    /// Merge the chunk's layers `low..=top` in `offset..offset + len` (whole blocks
    /// touched), `data` being `low u64 | top u64 | live u8` (see [`Command::merge_range`]):
    /// every block whose newest holder in that range is not the merge's target layer is
    /// written into the target as that holder has it (data, or "written as zero"). The
    /// target is the lowest layer of the range the chunk has, or, when `live`, layer `top`
    /// (the layer clients write; a block it holds is never overwritten). Reads as of any
    /// sequence `>= top` or `< low` are unchanged; the manager sends it only for a range no
    /// snapshot, clone or rollback reads inside (`low..top`), after a fence at a sequence
    /// above `top` (`>= top` when `live`). A chunk with fewer than two layers in the range
    /// has nothing to merge. Idempotent.
    Merge = 10,
    /// After the [`CmdOp::Merge`]s of the same range over the whole chunk: forget every
    /// layer of `low..=top` but the merge's target, once every block they hold is in the
    /// target as their newest holder has it (otherwise refused, nothing changes). Reads
    /// stop seeing the dropped layers at once; their files are deleted after the next sync
    /// made the target durable. Idempotent.
    DropMerged = 11,
    /// Fill a restored chunk from its backup: `data` (`len` bytes, whole blocks, at
    /// `offset`) goes into the chunk's layer 1, but only into blocks no layer of the chunk
    /// holds (written, zeroed or discarded by anyone, in any layer): a client's writes and
    /// trims always win over the backup's bytes. Carries no writer epoch (any attachment
    /// may be writing meanwhile) and no sequence. Idempotent.
    Hydrate = 12,
    /// A scrub step's mark (see `crate::control::RegionScanRequest`): `data` is `mark u64`
    /// (nonzero, the proposer's id for it); `offset`/`len` the region (whole blocks).
    /// Changes no block: each replica applying it starts watching the region for changes
    /// (in memory), so that it can later tell which blocks still hold what they held at
    /// this entry, and a [`CmdOp::Repair`] of the same mark rewrites only those. No writer
    /// epoch, no sequence.
    ScrubMark = 13,
    /// Repair blocks found bad or divergent by a scrub step: `data` is
    /// `mark u64 | layer u64 | one wanted state per block of offset..offset+len (whole
    /// blocks): 0 absent, 1 zero, 2 data | the 4 KiB of each data block, in order`
    /// (see [`Command::repair_data`]). A replica rewrites a block of that layer to its
    /// wanted state only if it watches `mark` (applied the mark, not restarted since), the
    /// block is unchanged since the mark, and it differs (or fails its checksum): never
    /// over a newer write, never on a replica that holds it right. No writer epoch, no
    /// sequence.
    Repair = 14,
}

/// Bytes of a [`CmdOp::ScrubMark`]'s data: `mark u64`.
pub const SCRUB_MARK_LEN: usize = 8;

/// A block's wanted state in a [`CmdOp::Repair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Wanted {
    /// The layer does not hold it.
    Absent = 0,
    /// Written as zero.
    Zero = 1,
    /// These bytes (the next 4 KiB of the repair's data).
    Data = 2,
}

/// A [`CmdOp::Repair`]'s data, decoded (see [`Command::repair_parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairParts {
    /// The scrub mark the repair is relative to.
    pub mark: u64,
    /// The layer rewritten (1: the chunk's base files).
    pub layer: u64,
    /// One wanted state per block from the command's offset.
    pub wanted: Vec<Wanted>,
    /// The bytes of the [`Wanted::Data`] blocks, 4 KiB each, in order (a zero-copy slice).
    pub data: Bytes,
}

/// One entry of a group's log, applied in log order by every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// What the entry does.
    pub op: CmdOp,
    /// The volume's id.
    pub volume: u64,
    /// The chunk's index in the volume.
    pub chunk: u64,
    /// Byte offset in the chunk (0 for [`CmdOp::DropChunk`] and [`CmdOp::Fence`]).
    pub offset: u32,
    /// Bytes written, zeroed or discarded (0 for [`CmdOp::DropChunk`] and
    /// [`CmdOp::Fence`]).
    pub len: u32,
    /// The client's request id (0: none).
    pub id: u128,
    /// The writer epoch the command was sent with (0: none).
    pub epoch: u64,
    /// The volume's snapshot sequence the command was sent with (0: from before snapshots;
    /// see the module doc's layers).
    pub seq: u64,
    /// The data of a write (`len` bytes), of a link ([`LINK_LEN`] bytes) or of a rollback
    /// (8 bytes); empty for every other op.
    pub data: Bytes,
}

impl Command {
    /// The bytes to store in the log. `id` and `epoch` take room only when not 0.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER + 24 + self.data.len());
        let mut flags = 0;
        if self.id != 0 {
            flags |= HAS_ID;
        }
        if self.epoch != 0 {
            flags |= HAS_EPOCH;
        }
        if self.seq != 0 {
            flags |= HAS_SEQ;
        }
        b.put_u8(self.op as u8 | flags);
        b.put_u64_le(self.volume);
        b.put_u64_le(self.chunk);
        b.put_u32_le(self.offset);
        b.put_u32_le(self.len);
        if self.id != 0 {
            b.put_u128_le(self.id);
        }
        if self.epoch != 0 {
            b.put_u64_le(self.epoch);
        }
        if self.seq != 0 {
            b.put_u64_le(self.seq);
        }
        b.extend_from_slice(&self.data);
        b.freeze()
    }

    /// Decodes an untrusted log entry. A write's data is a zero-copy slice; an unknown op,
    /// a range that overflows, or a write whose data disagrees with `len` is an error.
    pub fn decode(bytes: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let first = r.u8()?;
        let op = match first & !FLAGS {
            1 => CmdOp::Write,
            2 => CmdOp::WriteZeroes,
            3 => CmdOp::Discard,
            4 => CmdOp::DropChunk,
            5 => CmdOp::Fence,
            6 => CmdOp::Link,
            7 => CmdOp::Flatten,
            8 => CmdOp::Unlink,
            9 => CmdOp::Rollback,
            10 => CmdOp::Merge,
            11 => CmdOp::DropMerged,
            12 => CmdOp::Hydrate,
            13 => CmdOp::ScrubMark,
            14 => CmdOp::Repair,
            other => return Err(DecodeError::Invalid(format!("command op {other}"))),
        };
        let volume = r.u64()?;
        let chunk = r.u64()?;
        let offset = r.u32()?;
        let len = r.u32()?;
        if offset.checked_add(len).is_none() {
            return Err(DecodeError::Invalid("command range overflows".into()));
        }
        let (id, mut header) = if first & HAS_ID != 0 {
            (r.u64()? as u128 | (r.u64()? as u128) << 64, HEADER + 16)
        } else {
            (0, HEADER)
        };
        let epoch = if first & HAS_EPOCH != 0 {
            header += 8;
            r.u64()?
        } else {
            0
        };
        let seq = if first & HAS_SEQ != 0 {
            header += 8;
            r.u64()?
        } else {
            0
        };
        let want = match op {
            CmdOp::Write | CmdOp::Hydrate => len as usize,
            CmdOp::Link => LINK_LEN,
            CmdOp::Rollback => 8,
            CmdOp::Merge | CmdOp::DropMerged => MERGE_LEN,
            CmdOp::ScrubMark => SCRUB_MARK_LEN,
            // Checked by `repair_parts` (its length follows from its states).
            CmdOp::Repair => r.remaining().max(1),
            _ => 0,
        };
        // Entries from before `Link` carried nothing after the header but a write's data;
        // trailing bytes after any other op were ignored then and still are.
        let data = if want != 0 {
            if r.remaining() != want {
                return Err(DecodeError::Invalid(format!(
                    "{op:?} command needs {want} bytes of data, carries {}",
                    r.remaining()
                )));
            }
            bytes.slice(header..)
        } else {
            Bytes::new()
        };
        Ok(Command {
            op,
            volume,
            chunk,
            offset,
            len,
            id,
            epoch,
            seq,
            data,
        })
    }

    /// The parent of a [`CmdOp::Link`]: `(parent volume, parent seq)`; `None` for another op.
    pub fn link_parent(&self) -> Option<(u64, u64)> {
        if self.op != CmdOp::Link || self.data.len() != LINK_LEN {
            return None;
        }
        let volume = u64::from_le_bytes(self.data[..8].try_into().ok()?);
        let seq = u64::from_le_bytes(self.data[8..].try_into().ok()?);
        Some((volume, seq))
    }

    /// The data of a [`CmdOp::Link`] to `parent` as of its snapshot sequence `seq`.
    pub fn link_data(parent: u64, seq: u64) -> Bytes {
        let mut b = BytesMut::with_capacity(LINK_LEN);
        b.put_u64_le(parent);
        b.put_u64_le(seq);
        b.freeze()
    }

    /// The snapshot sequence a [`CmdOp::Rollback`] returns to; `None` for another op.
    pub fn rollback_to(&self) -> Option<u64> {
        if self.op != CmdOp::Rollback {
            return None;
        }
        Some(u64::from_le_bytes(self.data.as_ref().try_into().ok()?))
    }

    /// The range of a [`CmdOp::Merge`] or [`CmdOp::DropMerged`]: `(low, top, live)`; `None`
    /// for another op (or a live flag other than 0 and 1).
    pub fn merge_range(&self) -> Option<(u64, u64, bool)> {
        if !matches!(self.op, CmdOp::Merge | CmdOp::DropMerged) || self.data.len() != MERGE_LEN {
            return None;
        }
        let low = u64::from_le_bytes(self.data[..8].try_into().ok()?);
        let top = u64::from_le_bytes(self.data[8..16].try_into().ok()?);
        let live = match self.data[16] {
            0 => false,
            1 => true,
            _ => return None,
        };
        Some((low, top, live))
    }

    /// The data of a [`CmdOp::Merge`] or [`CmdOp::DropMerged`] of layers `low..=top`.
    pub fn merge_data(low: u64, top: u64, live: bool) -> Bytes {
        let mut b = BytesMut::with_capacity(MERGE_LEN);
        b.put_u64_le(low);
        b.put_u64_le(top);
        b.put_u8(u8::from(live));
        b.freeze()
    }

    /// The mark of a [`CmdOp::ScrubMark`]; `None` for another op (or a mark of 0).
    pub fn scrub_mark(&self) -> Option<u64> {
        if self.op != CmdOp::ScrubMark {
            return None;
        }
        let mark = u64::from_le_bytes(self.data.as_ref().try_into().ok()?);
        (mark != 0).then_some(mark)
    }

    /// The data of a [`CmdOp::ScrubMark`].
    pub fn scrub_mark_data(mark: u64) -> Bytes {
        Bytes::copy_from_slice(&mark.to_le_bytes())
    }

    /// The data of a [`CmdOp::Repair`] of layer `layer` relative to scrub mark `mark`:
    /// `wanted` one state per block, `blocks` the 4 KiB of each [`Wanted::Data`] one.
    pub fn repair_data(mark: u64, layer: u64, wanted: &[Wanted], blocks: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(16 + wanted.len() + blocks.len());
        b.put_u64_le(mark);
        b.put_u64_le(layer);
        b.extend(wanted.iter().map(|&w| w as u8));
        b.extend_from_slice(blocks);
        b.freeze()
    }

    /// A [`CmdOp::Repair`]'s parts; `None` for another op, or data that does not match
    /// its range (offset and length not whole blocks, a state byte unknown, the data not
    /// 4 KiB per data block, a mark of 0).
    pub fn repair_parts(&self) -> Option<RepairParts> {
        const BLOCK: usize = 4096;
        if self.op != CmdOp::Repair
            || !(self.offset as usize).is_multiple_of(BLOCK)
            || !(self.len as usize).is_multiple_of(BLOCK)
        {
            return None;
        }
        let count = self.len as usize / BLOCK;
        let head = self.data.get(..16 + count)?;
        let mark = u64::from_le_bytes(head[..8].try_into().ok()?);
        let layer = u64::from_le_bytes(head[8..16].try_into().ok()?);
        let wanted = head[16..]
            .iter()
            .map(|&b| match b {
                0 => Some(Wanted::Absent),
                1 => Some(Wanted::Zero),
                2 => Some(Wanted::Data),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let data_blocks = wanted.iter().filter(|&&w| w == Wanted::Data).count();
        let data = self.data.slice(16 + count..);
        if mark == 0 || layer == 0 || data.len() != data_blocks * BLOCK {
            return None;
        }
        Some(RepairParts {
            mark,
            layer,
            wanted,
            data,
        })
    }

    /// The volume, writer epoch and snapshot sequence of an encoded command, without
    /// decoding the rest (`None`: neither an epoch nor a sequence, or not a command).
    pub fn peek_fence(bytes: &[u8]) -> Option<(u64, u64, u64)> {
        let first = *bytes.first()?;
        if first & (HAS_EPOCH | HAS_SEQ) == 0 {
            return None;
        }
        let mut at = if first & HAS_ID != 0 {
            HEADER + 16
        } else {
            HEADER
        };
        let u64_at = |i: usize| {
            bytes
                .get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let epoch = if first & HAS_EPOCH != 0 {
            at += 8;
            u64_at(at - 8)?
        } else {
            0
        };
        let seq = if first & HAS_SEQ != 0 { u64_at(at)? } else { 0 };
        Some((u64_at(1)?, epoch, seq))
    }

    /// The volume and writer epoch of an encoded command, without decoding the rest
    /// (`None`: no epoch, or not a command).
    pub fn peek_epoch(bytes: &[u8]) -> Option<(u64, u64)> {
        match Command::peek_fence(bytes)? {
            (_, 0, _) => None,
            (volume, epoch, _) => Some((volume, epoch)),
        }
    }

    /// The request id of an encoded command, without decoding the rest (0: none, or not a
    /// command).
    pub fn peek_id(bytes: &[u8]) -> u128 {
        match bytes.first() {
            Some(op) if op & HAS_ID != 0 => bytes
                .get(HEADER..HEADER + 16)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u128::from_le_bytes),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests;
