//! Which ranges of a volume (or of a snapshot) hold data: [`Volume::block_status`], asked of
//! each chunk's group a whole number of blocks at a time (`Op::BlockStatus`: one state byte
//! per block) and merged into extents. Unmapped chunks are holes without asking anyone.
//!
//! Must never: trust an answer's length or bytes (a short answer, or a byte that names no
//! state, is an error); report a range the caller did not ask about.

use bytes::Bytes;
use tessera_proto::BLOCK_SIZE;
use tessera_proto::data::{BlockState, Op};

use super::{Piece, PieceTasks, Volume};
use crate::{Error, MAX_IO, Result};

/// A run of bytes in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Where it starts, in bytes from the start of the volume.
    pub offset: u64,
    /// Its length in bytes (never 0).
    pub len: u64,
    /// What every block of it holds.
    pub state: BlockState,
}

impl Volume {
    /// The extents of `len` bytes from `offset`, in order, covering exactly that range
    /// (adjacent blocks in one state are one extent). Asked in whole blocks, at most
    /// [`MAX_IO`] bytes a request; reads as of the handle's snapshot (or the live volume).
    /// [`Error::OutOfRange`] past the end.
    pub async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        // Checked before aligning: the volume's size is a whole number of blocks, so the
        // aligned range is inside it too.
        let size = self.size();
        let Some(end) = offset.checked_add(len).filter(|end| *end <= size) else {
            return Err(Error::OutOfRange {
                volume: self.name().to_string(),
                offset,
                len,
                size,
            });
        };
        let start = offset - offset % BLOCK_SIZE;
        let aligned_end = end
            .div_ceil(BLOCK_SIZE)
            .saturating_mul(BLOCK_SIZE)
            .min(size);
        let pieces = self.pieces_of(start, aligned_end - start, MAX_IO)?;
        let mut tasks = PieceTasks(Vec::with_capacity(pieces.len()));
        for p in &pieces {
            let v = self.clone();
            let p = *p;
            tasks.0.push(tokio::spawn(async move {
                v.piece(Op::BlockStatus, p, Bytes::new()).await
            }));
        }
        let mut out: Vec<Extent> = Vec::new();
        for (p, t) in pieces.iter().zip(&mut tasks.0) {
            let states = t
                .await
                .map_err(|e| Error::Io(format!("block status task failed: {e}")))??;
            let at = start + p.at as u64;
            let blocks = decode(&states, p, self.name())?;
            for (i, state) in blocks.into_iter().enumerate() {
                let b_start = (at + i as u64 * BLOCK_SIZE).max(offset);
                let b_end = (at + (i as u64 + 1) * BLOCK_SIZE).min(end);
                if b_end <= b_start {
                    continue;
                }
                push(&mut out, b_start, b_end - b_start, state);
            }
        }
        Ok(out)
    }
}

/// The states of piece `p`'s blocks, from an untrusted answer.
fn decode(states: &[u8], p: &Piece, volume: &str) -> Result<Vec<BlockState>> {
    let want = (p.len as u64).div_ceil(BLOCK_SIZE) as usize;
    if states.len() != want {
        return Err(Error::Io(format!(
            "block status of chunk {} of volume \"{volume}\": {} states for {want} blocks",
            p.chunk,
            states.len()
        )));
    }
    states
        .iter()
        .map(|&b| {
            BlockState::from_byte(b).ok_or_else(|| {
                Error::Io(format!(
                    "block status of chunk {} of volume \"{volume}\": unknown state {b}",
                    p.chunk
                ))
            })
        })
        .collect()
}

/// Appends a run, merged with the last one if it continues it in the same state.
fn push(out: &mut Vec<Extent>, offset: u64, len: u64, state: BlockState) {
    if let Some(last) = out.last_mut()
        && last.state == state
        && last.offset + last.len == offset
    {
        last.len += len;
        return;
    }
    out.push(Extent { offset, len, state });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(len: u32) -> Piece {
        Piece {
            chunk: 2,
            offset: 0,
            len,
            at: 0,
        }
    }

    #[test]
    fn answers_of_the_wrong_length_or_with_unknown_states_are_refused() {
        let p = piece(3 * BLOCK_SIZE as u32);
        assert_eq!(
            decode(&[0, 1, 2], &p, "v").unwrap(),
            [BlockState::Hole, BlockState::Zero, BlockState::Data]
        );
        assert!(decode(&[0, 1], &p, "v").is_err());
        assert!(decode(&[0, 1, 2, 2], &p, "v").is_err());
        let e = decode(&[0, 9, 2], &p, "v").unwrap_err();
        assert!(e.to_string().contains("unknown state 9"), "{e}");
    }

    #[test]
    fn adjacent_runs_in_one_state_merge() {
        let mut out = Vec::new();
        push(&mut out, 0, 4096, BlockState::Hole);
        push(&mut out, 4096, 4096, BlockState::Hole);
        push(&mut out, 8192, 100, BlockState::Data);
        push(&mut out, 8292, 10, BlockState::Data);
        push(&mut out, 8302, 10, BlockState::Zero);
        assert_eq!(
            out,
            [
                Extent {
                    offset: 0,
                    len: 8192,
                    state: BlockState::Hole
                },
                Extent {
                    offset: 8192,
                    len: 110,
                    state: BlockState::Data
                },
                Extent {
                    offset: 8302,
                    len: 10,
                    state: BlockState::Zero
                },
            ]
        );
    }
}
