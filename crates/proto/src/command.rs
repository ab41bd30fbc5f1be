//! Commands replicated through a replica group's Raft log and applied to its chunks.
//!
//! ```text
//! op u8 | volume u64 | chunk u64 | offset u32 | len u32 | data (Write only)
//! ```
//! These bytes are stored in every replica's log and re-read at recovery, so the decoder
//! treats them as untrusted. An empty entry (Raft's no-op on election) is not a command.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{DecodeError, Reader};

const HEADER: usize = 25;

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub op: CmdOp,
    pub volume: u64,
    pub chunk: u64,
    pub offset: u32,
    pub len: u32,
    pub data: Bytes,
}

impl Command {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER + self.data.len());
        b.put_u8(self.op as u8);
        b.put_u64_le(self.volume);
        b.put_u64_le(self.chunk);
        b.put_u32_le(self.offset);
        b.put_u32_le(self.len);
        b.extend_from_slice(&self.data);
        b.freeze()
    }

    pub fn decode(bytes: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let op = match r.u8()? {
            1 => CmdOp::Write,
            2 => CmdOp::WriteZeroes,
            3 => CmdOp::Discard,
            4 => CmdOp::DropChunk,
            other => return Err(DecodeError::Invalid(format!("command op {other}"))),
        };
        let volume = r.u64()?;
        let chunk = r.u64()?;
        let offset = r.u32()?;
        let len = r.u32()?;
        if offset.checked_add(len).is_none() {
            return Err(DecodeError::Invalid("command range overflows".into()));
        }
        let data = if op == CmdOp::Write {
            if r.remaining() != len as usize {
                return Err(DecodeError::Invalid(format!(
                    "write command says {len} bytes, carries {}",
                    r.remaining()
                )));
            }
            bytes.slice(HEADER..)
        } else {
            Bytes::new()
        };
        Ok(Command {
            op,
            volume,
            chunk,
            offset,
            len,
            data,
        })
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
            data: Bytes::from_static(b"abcd"),
        };
        let enc = c.encode();
        assert_eq!(Command::decode(&enc).unwrap(), c);
        for n in 0..enc.len() {
            assert!(Command::decode(&enc.slice(..n)).is_err());
        }
    }
}
