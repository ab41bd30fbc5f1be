//! Untrusted bytes for the decoders: arbitrary bytes, and valid encodings damaged the ways a
//! stream or a disk damages them (bits flipped, bytes overwritten, a length or count word
//! replaced, cut short, bytes inserted, removed or appended). Damaged valid encodings get
//! past the first checks of a decoder, where arbitrary bytes rarely do.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;

/// One way of damaging an encoding.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit of a byte.
    FlipBit(Index, u8),
    /// Overwrite one byte.
    SetByte(Index, u8),
    /// Overwrite four bytes (as far as there are) with a little-endian word: a length or a
    /// count that lies.
    SetWord(Index, u32),
    /// Keep only the bytes before this one.
    Truncate(Index),
    /// Insert one byte before this one.
    Insert(Index, u8),
    /// Remove one byte.
    Remove(Index),
    /// Append bytes.
    Append(Vec<u8>),
}

fn word() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1u32),
        Just(u32::MAX),
        Just(u32::MAX - 7),
        Just((4 << 20) + 1),
        Just((8 << 20) + 1),
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        (any::<Index>(), word()).prop_map(|(i, w)| Mutation::SetWord(i, w)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Insert(i, v)),
        any::<Index>().prop_map(Mutation::Remove),
        prop::collection::vec(any::<u8>(), 1..24).prop_map(Mutation::Append),
    ]
}

/// `bytes` with `muts` applied in order (a mutation of an index is skipped on no bytes).
pub fn apply(bytes: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for m in muts {
        let at = |i: &Index, len: usize| (len > 0).then(|| i.index(len));
        match m {
            Mutation::FlipBit(i, bit) => {
                if let Some(at) = at(i, b.len()) {
                    b[at] ^= 1 << bit;
                }
            }
            Mutation::SetByte(i, v) => {
                if let Some(at) = at(i, b.len()) {
                    b[at] = *v;
                }
            }
            Mutation::SetWord(i, w) => {
                if let Some(at) = at(i, b.len()) {
                    let end = (at + 4).min(b.len());
                    b[at..end].copy_from_slice(&w.to_le_bytes()[..end - at]);
                }
            }
            Mutation::Truncate(i) => {
                if let Some(at) = at(i, b.len()) {
                    b.truncate(at);
                }
            }
            Mutation::Insert(i, v) => {
                let at = at(i, b.len() + 1).unwrap_or(0);
                b.insert(at, *v);
            }
            Mutation::Remove(i) => {
                if let Some(at) = at(i, b.len()) {
                    b.remove(at);
                }
            }
            Mutation::Append(tail) => b.extend_from_slice(tail),
        }
    }
    b
}

/// A valid encoding from `valid`, damaged one to three times.
pub fn damaged(valid: impl Strategy<Value = Bytes>) -> impl Strategy<Value = Vec<u8>> {
    (valid, prop::collection::vec(mutation(), 1..4)).prop_map(|(b, m)| apply(&b, &m))
}

/// Bytes a decoder must survive: arbitrary ones, valid encodings from `valid` as they are,
/// and (most often) valid encodings damaged.
pub fn untrusted(valid: impl Strategy<Value = Bytes> + Clone) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..256),
        1 => valid.clone().prop_map(|b| b.to_vec()),
        5 => damaged(valid),
    ]
}
