//! Data-plane messages: client ↔ storage node, and node ↔ node Raft traffic.
//!
//! A request addresses one chunk of one volume inside one replica group, and never crosses a
//! chunk boundary (the client splits). Layout of every request body (little-endian):
//!
//! ```text
//! group u64 | volume u64 | chunk u64 | epoch u64 | id u128 | deadline u64 | offset u32 | len u32 | seq u64 | data (Write only)
//! ```
//! `seq` came later: a body without it (64 header bytes, as clients before snapshots send)
//! is told apart by its length, which the fixed header and `len` determine, and reads as
//! `seq` 0. Every sender writes it.
//! `deadline` is a Unix time in milliseconds: a request not proposed to its group by then is
//! answered [`Reply::Expired`] and never proposed later (0: no deadline).
//! `id` names one logical request across its retries (0: none): a leader that finds the
//! id already in its log or recently applied answers with that entry's outcome instead of
//! proposing it again (see [`Request::id`]).
//! `epoch` is the sender's writer epoch (see [`Request::epoch`], [`Op::Fence`]).
//! `offset` is relative to the chunk start. A reply body is `status u8` followed by the
//! payload for `Ok` (read data, empty otherwise), the leader hint `u64` for `NotLeader`, or
//! a UTF-8 message for every other status.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::Kind;
use crate::{DecodeError, Reader};

/// Largest single data-plane request payload. Clients split larger I/O.
pub const MAX_IO: u32 = 4 << 20;
const REQ_HEADER: usize = 72;

/// Which chunk a request touches, and in which replica group it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkAddr {
    /// The replica group holding the chunk ([`crate::control::ChunkRoute::group_id`]): a
    /// node hosting no replica of it answers [`Reply::GroupNotFound`].
    pub group: u64,
    /// The volume's id ([`crate::control::VolumeInfo::id`]).
    pub volume: u64,
    /// The chunk's index in the volume: the volume's byte offset divided by its chunk size.
    pub chunk: u64,
}

/// What a request asks of the group. Write, zeroes, discard and fence go through the
/// group's log and are answered once committed; the `CatchUp*` ops copy a replica between
/// nodes (a Raft catch-up: what raft-rs calls a snapshot, not a volume's snapshot), served
/// from the chunk files outside Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Store [`Request::data`] (`len` bytes) at `offset` of the chunk.
    Write,
    /// Read `len` bytes at `offset` of the chunk, from the leader; answered with the data,
    /// each block verified against its checksum.
    Read,
    /// Make `len` bytes at `offset` read as zeroes, keeping them allocated.
    WriteZeroes,
    /// The range of `len` bytes at `offset` is no longer needed: it reads as zeroes and
    /// its space is freed (holes punched).
    Discard,
    /// A page of the chunk layers the group holds, from the cursor `addr.volume`,
    /// `addr.chunk`, `seq` (the layer; 0: the chunks layout of nodes from before layers),
    /// at most `len` of them: see [`crate::copy`].
    CatchUpList,
    /// The stored checksums of `len` blocks from block `offset` of one layer of a chunk
    /// (4 bytes each; 0: the layer does not hold the block). `seq` names the layer (0 or
    /// 1: layer 1, as nodes from before layers ask).
    CatchUpChecksums,
    /// `len` bytes of one layer of a chunk at `offset` as stored, verified (blocks the
    /// layer does not hold read as zeroes). `seq` names the layer, as for
    /// [`Op::CatchUpChecksums`].
    CatchUpRead,
    /// Make `epoch` the volume's writer epoch in the group (`addr.group`, `addr.volume`)
    /// and `seq` its snapshot sequence (either 0: unchanged): answered once that is
    /// applied, after which the group refuses every write of an older epoch
    /// ([`Reply::Fenced`]) or an older sequence ([`Reply::Resequence`]). A new writer sends
    /// it to every group of the volume before its first write; the manager, with the new
    /// sequence, to every group of the volume when it takes a snapshot.
    Fence,
    /// Which of the `len` bytes at `offset` (whole blocks) hold data, as of snapshot `seq`
    /// (0: live), served by the leader like a read: the answer is one [`BlockState`] byte
    /// per block. Lets a frontend report holes and zeroes (NBD `base:allocation`).
    BlockStatus,
}

/// What one block of a chunk holds, as [`Op::BlockStatus`] answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BlockState {
    /// Never written (nor provisioned), in the chunk and every parent it reads through to:
    /// reads as zeroes and takes no space.
    Hole = 0,
    /// Written as zeroes (zeroes, discard over a parent's data, or data that is all zero):
    /// reads as zeroes.
    Zero = 1,
    /// Holds data.
    Data = 2,
}

impl BlockState {
    /// The state a byte of an [`Op::BlockStatus`] answer names (`None`: not a state).
    pub fn from_byte(b: u8) -> Option<BlockState> {
        match b {
            0 => Some(BlockState::Hole),
            1 => Some(BlockState::Zero),
            2 => Some(BlockState::Data),
            _ => None,
        }
    }
}

/// One data-plane request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What is asked; carried on the wire as the frame's [`Kind`].
    pub op: Op,
    /// The chunk, its volume and its group.
    pub addr: ChunkAddr,
    /// The writer epoch the manager granted the sender's attachment (0: none). A group
    /// refuses a write, zeroes or discard older than the newest epoch it has seen for the
    /// volume ([`Op::Fence`], or a newer writer's request).
    pub epoch: u64,
    /// The same for every retry of one write, zeroes or discard, unique otherwise (0: none).
    /// A retry must never be applied a second time: if the first attempt's entry committed
    /// (its answer was lost, or the leader changed before it could answer), a second entry
    /// committing after newer writes to the same range would undo them. A client's random
    /// 64-bit identity in the high half and its request count in the low half, so ids of
    /// different clients never meet (as 64 random bits per request would, at scale).
    pub id: u128,
    /// Unix time in milliseconds after which the request must not be proposed (0: none).
    /// A client that gave up on an attempt retries only once the attempt's deadline passed,
    /// so the retry never races the attempt into the log (see [`Reply::Expired`]).
    pub deadline_ms: u64,
    /// Byte offset in the chunk (for [`Op::CatchUpChecksums`], a block index; 0 for
    /// [`Op::CatchUpList`] and [`Op::Fence`]).
    pub offset: u32,
    /// Bytes to write, read, zero or discard, at most [`MAX_IO`] (for
    /// [`Op::CatchUpChecksums`], blocks; for [`Op::CatchUpList`], entries; 0 for [`Op::Fence`]).
    pub len: u32,
    /// The volume's snapshot sequence (0: from before snapshots, read as 1). For a write,
    /// zeroes or discard: the sequence the sender writes in (the layer the data goes to,
    /// see [`crate::command`]), refused with [`Reply::Resequence`] once the group has a
    /// newer one for the volume. For a read: the snapshot to read as of (0: the live
    /// volume). For [`Op::Fence`]: the new sequence (0: unchanged). For
    /// [`Op::CatchUpChecksums`] and [`Op::CatchUpRead`]: the layer (0 or 1: layer 1); for
    /// [`Op::CatchUpList`]: the cursor's layer (0: the layout without layers).
    pub seq: u64,
    /// The data of a write; empty for every other op.
    pub data: Bytes,
}

impl Request {
    /// The deadline `d` from now, as [`Request::deadline_ms`] holds it.
    pub fn deadline_in(d: std::time::Duration) -> u64 {
        unix_ms().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Whether the request's deadline has passed (never, for one without a deadline).
    pub fn expired(&self) -> bool {
        self.deadline_ms != 0 && unix_ms() > self.deadline_ms
    }

    /// A write of `data` at `offset` of the chunk, with no epoch, id or deadline.
    pub fn write(addr: ChunkAddr, offset: u32, data: Bytes) -> Self {
        Request {
            op: Op::Write,
            addr,
            epoch: 0,
            id: 0,
            deadline_ms: 0,
            offset,
            len: data.len() as u32,
            seq: 0,
            data,
        }
    }

    /// A request carrying no data (any op but a write), with no epoch, id or deadline.
    pub fn other(op: Op, addr: ChunkAddr, offset: u32, len: u32) -> Self {
        Request {
            op,
            addr,
            epoch: 0,
            id: 0,
            deadline_ms: 0,
            offset,
            len,
            seq: 0,
            data: Bytes::new(),
        }
    }

    /// The frame kind that carries this request.
    pub fn kind(&self) -> Kind {
        match self.op {
            Op::Write => Kind::Write,
            Op::Read => Kind::Read,
            Op::WriteZeroes => Kind::WriteZeroes,
            Op::Discard => Kind::Discard,
            Op::CatchUpList => Kind::CatchUpList,
            Op::CatchUpChecksums => Kind::CatchUpChecksums,
            Op::CatchUpRead => Kind::CatchUpRead,
            Op::Fence => Kind::Fence,
            Op::BlockStatus => Kind::BlockStatus,
        }
    }

    /// The body as (fixed header, payload): send them as the two parts of one frame
    /// ([`crate::frame::Frame::with_tail`]) and the payload is never copied.
    pub fn encode_parts(&self) -> (Bytes, Bytes) {
        let mut b = BytesMut::with_capacity(REQ_HEADER);
        b.put_u64_le(self.addr.group);
        b.put_u64_le(self.addr.volume);
        b.put_u64_le(self.addr.chunk);
        b.put_u64_le(self.epoch);
        b.put_u128_le(self.id);
        b.put_u64_le(self.deadline_ms);
        b.put_u32_le(self.offset);
        b.put_u32_le(self.len);
        if self.wire_seq() {
            b.put_u64_le(self.seq);
        }
        (b.freeze(), self.data.clone())
    }

    /// Whether the body carries `seq`: not when it says nothing a body without it does not
    /// (0; or 1 for a write, zeroes, discard, fence or catch-up read, where 0 and 1 name
    /// the same layer), so that nodes from before sequences, which refuse the longer body,
    /// still take every request of a volume that never had a snapshot.
    fn wire_seq(&self) -> bool {
        match self.op {
            Op::Write
            | Op::WriteZeroes
            | Op::Discard
            | Op::Fence
            | Op::CatchUpChecksums
            | Op::CatchUpRead => self.seq > 1,
            Op::Read | Op::BlockStatus | Op::CatchUpList => self.seq != 0,
        }
    }

    /// The body in one buffer (copies the payload).
    pub fn encode(&self) -> Bytes {
        let (head, data) = self.encode_parts();
        [head, data].concat().into()
    }

    /// Decodes a request body of frame kind `kind`. The write payload is a zero-copy slice.
    pub fn decode(kind: Kind, body: &Bytes) -> Result<Self, DecodeError> {
        let op = match kind {
            Kind::Write => Op::Write,
            Kind::Read => Op::Read,
            Kind::WriteZeroes => Op::WriteZeroes,
            Kind::Discard => Op::Discard,
            Kind::CatchUpList => Op::CatchUpList,
            Kind::CatchUpChecksums => Op::CatchUpChecksums,
            Kind::CatchUpRead => Op::CatchUpRead,
            Kind::Fence => Op::Fence,
            Kind::BlockStatus => Op::BlockStatus,
            other => return Err(DecodeError::UnknownKind(other as u8)),
        };
        let mut r = Reader::new(body);
        let addr = ChunkAddr {
            group: r.u64()?,
            volume: r.u64()?,
            chunk: r.u64()?,
        };
        let epoch = r.u64()?;
        let id = r.u64()? as u128 | (r.u64()? as u128) << 64;
        let deadline_ms = r.u64()?;
        let offset = r.u32()?;
        let len = r.u32()?;
        if len > MAX_IO {
            return Err(DecodeError::TooLarge {
                len: len as u64,
                max: MAX_IO as u64,
            });
        }
        if offset.checked_add(len).is_none() {
            return Err(DecodeError::Invalid(format!(
                "offset {offset} + len {len} overflows"
            )));
        }
        let payload = if op == Op::Write { len as usize } else { 0 };
        // A body from before `seq` (see the module doc) is exactly the old header and the
        // payload; every other length must be the new header and the payload.
        let seq = if r.remaining() == payload {
            0
        } else {
            r.u64()?
        };
        let data = if op == Op::Write {
            if r.remaining() != payload {
                return Err(DecodeError::Invalid(format!(
                    "write says {len} bytes but carries {}",
                    r.remaining()
                )));
            }
            body.slice(body.len() - payload..)
        } else {
            if r.remaining() != 0 {
                return Err(DecodeError::Invalid("trailing bytes".into()));
            }
            Bytes::new()
        };
        Ok(Request {
            op,
            addr,
            epoch,
            id,
            deadline_ms,
            offset,
            len,
            seq,
            data,
        })
    }
}

/// Now, as a Unix time in milliseconds (0 if the clock reads before 1970).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The outcome of a data-plane request, as carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done; the read data, or empty.
    Ok(Bytes),
    /// This node does not lead the group; `hint` is the node id believed to lead (0: unknown).
    NotLeader {
        /// The node id believed to lead the group (0: unknown).
        hint: u64,
    },
    /// This node hosts no replica of the group.
    GroupNotFound,
    /// The range lies outside what a chunk can hold.
    OutOfRange(String),
    /// No space left: the write was not applied anywhere.
    DiskFull(String),
    /// Stored data failed its checksum and could not be served.
    Corrupt(String),
    /// An I/O error on the node.
    Io(String),
    /// The request was malformed.
    BadRequest(String),
    /// Try again shortly (leadership changing, proposal dropped, node shutting down).
    Unavailable(String),
    /// The request's deadline passed before it was proposed: it was not applied and never
    /// will be. A retry is safe.
    Expired(String),
    /// The request's writer epoch is older than the volume's in the group (another client
    /// attached the volume since): not applied, and never will be.
    Fenced(String),
    /// The request's snapshot sequence is older than the volume's in the group (a snapshot
    /// was taken since): not applied, and never will be. The sender adopts `seq` for this
    /// and every later request of the volume and sends the request again.
    Resequence {
        /// The volume's sequence in the group.
        seq: u64,
    },
    /// The connection holds no capability for the request's volume that allows it (none
    /// presented, expired, another volume's, or a read-only one for a write, or another
    /// writer epoch's): not applied. The sender fetches a fresh capability from the
    /// manager, presents it ([`Kind::Capability`]) and may send the request again.
    Unauthorized(String),
    /// In process only, never on the wire (encoded as [`Reply::Unavailable`]): a read of a
    /// restored chunk met blocks it has not filled from its backup yet. `data` is the read
    /// with zeroes in their place; `blocks` their indexes in the chunk, ascending. The
    /// storage node fetches them from the store and answers the client with the whole read.
    Unfilled {
        /// The read, zeroes where `blocks` are.
        data: Bytes,
        /// The unfilled blocks' indexes in the chunk, ascending.
        blocks: Vec<u32>,
    },
}

impl Reply {
    fn code(&self) -> u8 {
        match self {
            Reply::Ok(_) => 0,
            Reply::NotLeader { .. } => 1,
            Reply::GroupNotFound => 2,
            Reply::OutOfRange(_) => 3,
            Reply::DiskFull(_) => 4,
            Reply::Corrupt(_) => 5,
            Reply::Io(_) => 6,
            Reply::BadRequest(_) => 7,
            Reply::Unavailable(_) => 8,
            Reply::Expired(_) => 9,
            Reply::Fenced(_) => 10,
            Reply::Resequence { .. } => 11,
            Reply::Unauthorized(_) => 12,
            Reply::Unfilled { .. } => Reply::Unavailable(String::new()).code(),
        }
    }

    /// The body as (status and message, read data): see [`Request::encode_parts`].
    pub fn encode_parts(&self) -> (Bytes, Bytes) {
        match self {
            Reply::Ok(data) => (Bytes::from_static(&[0]), data.clone()),
            other => (other.encode(), Bytes::new()),
        }
    }

    /// The body in one buffer (copies read data).
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(self.code());
        match self {
            Reply::Ok(data) => b.extend_from_slice(data),
            Reply::NotLeader { hint } => b.put_u64_le(*hint),
            Reply::Resequence { seq } => b.put_u64_le(*seq),
            Reply::GroupNotFound => {}
            Reply::OutOfRange(m)
            | Reply::DiskFull(m)
            | Reply::Corrupt(m)
            | Reply::Io(m)
            | Reply::BadRequest(m)
            | Reply::Unavailable(m)
            | Reply::Expired(m)
            | Reply::Fenced(m)
            | Reply::Unauthorized(m) => b.extend_from_slice(m.as_bytes()),
            Reply::Unfilled { .. } => {
                b.extend_from_slice(b"restored block not filled yet: retry");
            }
        }
        b.freeze()
    }

    /// Decodes an untrusted reply body. The read data is a zero-copy slice; a message that
    /// is not UTF-8 is kept with its bad bytes replaced.
    pub fn decode(body: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let code = r.u8()?;
        let msg = |body: &Bytes| String::from_utf8_lossy(&body[1..]).into_owned();
        Ok(match code {
            0 => Reply::Ok(body.slice(1..)),
            1 => Reply::NotLeader { hint: r.u64()? },
            2 => Reply::GroupNotFound,
            3 => Reply::OutOfRange(msg(body)),
            4 => Reply::DiskFull(msg(body)),
            5 => Reply::Corrupt(msg(body)),
            6 => Reply::Io(msg(body)),
            7 => Reply::BadRequest(msg(body)),
            8 => Reply::Unavailable(msg(body)),
            9 => Reply::Expired(msg(body)),
            10 => Reply::Fenced(msg(body)),
            11 => Reply::Resequence { seq: r.u64()? },
            12 => Reply::Unauthorized(msg(body)),
            other => return Err(DecodeError::Invalid(format!("reply status {other}"))),
        })
    }
}

/// Raft messages of many groups from one node to another, in one frame.
///
/// ```text
/// from_node u64 | count u32 | count × (group u64 | len u32 | len bytes of eraftpb::Message)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RaftBatch {
    /// The sending node's id.
    pub from_node: u64,
    /// (group id, encoded raft-rs message) pairs, in sending order.
    pub msgs: Vec<(u64, Bytes)>,
}

impl RaftBatch {
    /// The frame body.
    pub fn encode(&self) -> Bytes {
        let size: usize = self.msgs.iter().map(|(_, m)| 12 + m.len()).sum();
        let mut b = BytesMut::with_capacity(12 + size);
        b.put_u64_le(self.from_node);
        b.put_u32_le(self.msgs.len() as u32);
        for (group, m) in &self.msgs {
            b.put_u64_le(*group);
            b.put_u32_le(m.len() as u32);
            b.extend_from_slice(m);
        }
        b.freeze()
    }

    /// Decodes an untrusted body. Each message is a zero-copy slice; a count or a length
    /// the body cannot hold is an error, as are trailing bytes.
    pub fn decode(body: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let from_node = r.u64()?;
        let count = r.u32()? as usize;
        // Each message takes at least 12 bytes: refuse counts the body cannot hold before
        // allocating for them.
        if count > r.remaining() / 12 {
            return Err(DecodeError::Invalid(format!(
                "raft batch claims {count} messages"
            )));
        }
        let mut msgs = Vec::with_capacity(count);
        for _ in 0..count {
            let group = r.u64()?;
            let len = r.u32()? as usize;
            let start = r.consumed_from(body);
            r.take(len)?;
            msgs.push((group, body.slice(start..start + len)));
        }
        if r.remaining() != 0 {
            return Err(DecodeError::Invalid("trailing bytes".into()));
        }
        Ok(RaftBatch { from_node, msgs })
    }
}

#[cfg(test)]
mod tests;
