//! Commands replicated through a replica group's Raft log and applied to its chunks.
//!
//! ```text
//! op u8 | volume u64 | chunk u64 | offset u32 | len u32 | [id u128] | [epoch u64] | data (Write only)
//! ```
//! `id` (the client's request id, see `data::Request::id`) is present when the op byte has
//! its high bit set, `epoch` (the writer epoch, see `data::Request::epoch`) when it has bit
//! 6 set; commands written before they existed have neither (id 0, epoch 0).
//! These bytes are stored in every replica's log and re-read at recovery, so the decoder
//! treats them as untrusted. An empty entry (Raft's no-op on election) is not a command.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{DecodeError, Reader};

const HEADER: usize = 25;
const HAS_ID: u8 = 0x80;
const HAS_EPOCH: u8 = 0x40;
const FLAGS: u8 = HAS_ID | HAS_EPOCH;

/// What a command does to its chunk: the low six bits of the op byte.
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
    /// The volume's writer epoch is now `epoch`: writes of older epochs are refused from
    /// here on in the log (see `data::Op::Fence`). Changes no data.
    Fence = 5,
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
    /// The data of a write (`len` bytes); empty for every other op.
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
        let data = if op == CmdOp::Write {
            if r.remaining() != len as usize {
                return Err(DecodeError::Invalid(format!(
                    "write command says {len} bytes, carries {}",
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
            data,
        })
    }

    /// The volume and writer epoch of an encoded command, without decoding the rest
    /// (`None`: no epoch, or not a command).
    pub fn peek_epoch(bytes: &[u8]) -> Option<(u64, u64)> {
        let first = *bytes.first()?;
        if first & HAS_EPOCH == 0 {
            return None;
        }
        let at = if first & HAS_ID != 0 {
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
        Some((u64_at(1)?, u64_at(at)?))
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
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_truncation_fails() {
        let c = Command {
            op: CmdOp::Write,
            volume: 1,
            chunk: 2,
            offset: 3,
            len: 4,
            id: 0,
            epoch: 0,
            data: Bytes::from_static(b"abcd"),
        };
        for id in [0, 0xfeed_beef, u128::MAX - 3] {
            for epoch in [0, 7, u64::MAX] {
                let c = Command {
                    id,
                    epoch,
                    ..c.clone()
                };
                let enc = c.encode();
                assert_eq!(Command::decode(&enc).unwrap(), c);
                assert_eq!(Command::peek_id(&enc), id);
                let peeked = (epoch != 0).then_some((1, epoch));
                assert_eq!(Command::peek_epoch(&enc), peeked);
                for n in 0..enc.len() {
                    assert!(Command::decode(&enc.slice(..n)).is_err());
                }
            }
        }
        let fence = Command {
            op: CmdOp::Fence,
            len: 0,
            epoch: 3,
            data: Bytes::new(),
            ..c
        };
        assert_eq!(Command::decode(&fence.encode()).unwrap(), fence);
    }

    fn command(op: CmdOp, id: u128, epoch: u64) -> Command {
        let (len, data) = match op {
            CmdOp::Write => (5, Bytes::from_static(b"hello")),
            CmdOp::WriteZeroes | CmdOp::Discard => (4096, Bytes::new()),
            CmdOp::DropChunk | CmdOp::Fence => (0, Bytes::new()),
        };
        Command {
            op,
            volume: 3,
            chunk: 9,
            offset: if len == 0 { 0 } else { 512 },
            len,
            id,
            epoch,
            data,
        }
    }

    const OPS: [CmdOp; 5] = [
        CmdOp::Write,
        CmdOp::WriteZeroes,
        CmdOp::Discard,
        CmdOp::DropChunk,
        CmdOp::Fence,
    ];

    /// Every op, with and without the optional id and epoch, is read back from the log as
    /// written; a truncated entry is an error.
    #[test]
    fn every_op_round_trips_with_and_without_id_and_epoch() {
        for op in OPS {
            for (id, epoch) in [(0, 0), (7, 0), (0, 7), (u128::MAX, u64::MAX)] {
                let c = command(op, id, epoch);
                let enc = c.encode();
                assert_eq!(Command::decode(&enc).unwrap(), c);
                if op == CmdOp::Write {
                    for n in 0..enc.len() {
                        assert!(Command::decode(&enc.slice(..n)).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_ops_and_overflowing_ranges_are_refused() {
        for op in [0, 6, 0x3f] {
            let mut enc = command(CmdOp::Discard, 0, 0).encode().to_vec();
            enc[0] = op;
            assert!(Command::decode(&Bytes::from(enc)).is_err(), "op {op}");
        }
        let c = Command {
            offset: u32::MAX,
            len: 1,
            ..command(CmdOp::WriteZeroes, 0, 0)
        };
        assert!(Command::decode(&c.encode()).is_err());
    }

    /// Log entries are re-read at recovery: whatever a corrupted one holds, decoding and
    /// peeking return, never panic.
    #[test]
    fn no_corrupted_entry_panics_the_decoder_or_the_peeks() {
        let enc = command(CmdOp::Write, 7, 9).encode();
        for i in 0..enc.len() {
            for b in [0, 0x40, 0x80, 0xc1, 0xff] {
                let mut bad = enc.to_vec();
                bad[i] = b;
                let _ = Command::peek_id(&bad);
                let _ = Command::peek_epoch(&bad);
                let _ = Command::decode(&Bytes::from(bad));
            }
        }
        for n in 0..enc.len() {
            let _ = Command::peek_id(&enc[..n]);
            let _ = Command::peek_epoch(&enc[..n]);
        }
        assert_eq!(Command::peek_id(&[]), 0);
        assert_eq!(Command::peek_epoch(&[]), None);
    }
}
