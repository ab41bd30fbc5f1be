//! Tessera wire formats. No I/O lives here: only encoding, decoding and validation.
//!
//! - [`frame`]: the length-prefixed, checksummed frame every Tessera connection speaks
//!   (client ↔ storage node, node ↔ node, anyone ↔ manager).
//! - [`data`]: data-plane requests and replies (read, write, zeroes) in a fixed binary layout.
//! - [`capability`]: what the manager signs to let one client use one volume.
//! - [`command`]: the commands replicated through a group's Raft log and applied to chunks.
//! - [`control`]: control-plane messages (JSON bodies): manager API and storage admin.
//! - [`copy`]: node to node replica copies: the group's chunk list, in bounded pages.
//! - [`identity`]: a storage node's identity file (`node.json`), on disk.
//! - [`hex`]: bytes as hex text (hashes, capabilities, serials).
//! - [`manager_raft`]: the managers' Raft messages between managers: batches and parts.
//!
//! Every decoder returns `Result` and never panics on malformed input: bytes arriving here
//! come from the network or from disk and are untrusted until checked.

#![warn(missing_docs)]

pub mod capability;
pub mod command;
pub mod control;
pub mod copy;
pub mod data;
pub mod frame;
pub mod hex;
pub mod identity;
pub mod manager_raft;

/// The block size of the chunk store: every block carries its own CRC32C.
pub const BLOCK_SIZE: u64 = 4096;

/// Errors decoding bytes that came from the network or from disk.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The stream does not start a frame with [`frame::MAGIC`]: the peer does not speak
    /// Tessera. Holds the (little-endian) bytes found, as far as they arrived.
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    /// A frame of a protocol version other than [`frame::VERSION`].
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// The frame header's CRC32C does not match: the stream is corrupt.
    #[error("frame header checksum mismatch")]
    HeaderChecksum,
    /// The frame body's CRC32C does not match: the stream is corrupt.
    #[error("frame body checksum mismatch")]
    BodyChecksum,
    /// A length over its limit (a frame body over [`frame::MAX_BODY`], a data-plane
    /// payload over [`data::MAX_IO`]), refused before anything is allocated for it.
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The length claimed, in bytes.
        len: u64,
        /// The limit, in bytes.
        max: u64,
    },
    /// The bytes end before the fixed part of a message does.
    #[error("message truncated: needed {needed} bytes, had {had}")]
    Truncated {
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes left.
        had: usize,
    },
    /// A frame kind, or a request kind, this version does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// Well-framed bytes whose content is wrong (bad JSON, inconsistent lengths, trailing
    /// bytes, an unknown op or status); says what was wrong.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// A little-endian reader over an untrusted byte slice: every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n,
                had: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn consumed_from(&self, start: &'a [u8]) -> usize {
        start.len() - self.buf.len()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// `Ok` if every byte was read.
    pub(crate) fn end(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::Invalid(format!("{n} bytes past the end"))),
        }
    }
}
