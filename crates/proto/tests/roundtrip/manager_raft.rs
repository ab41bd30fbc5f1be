//! The managers' Raft bodies: any list of messages travels as batches and parts, each body
//! within a frame, and comes back whole and in order; the receiver joins parts of any
//! sizes; and no body or sequence of bodies, whatever they hold, makes it panic.

use bytes::Bytes;
use proptest::prelude::*;
use tessera_proto::frame::MAX_BODY;
use tessera_proto::manager_raft::{
    self, MAX_MESSAGE, PART, PART_BYTES, Parts, Received, decode_batch,
};

use crate::mutate::untrusted;
use crate::{bytes, fuzz, large, round_trips};

/// A message: mostly small, sometimes about a part's size on either side of the limit for
/// going alone in parts, sometimes several parts long. Large ones are one byte repeated
/// (their seed), which is enough to tell them apart and cheap to make.
fn message() -> impl Strategy<Value = Bytes> {
    let sized = |lens: std::ops::RangeInclusive<usize>| {
        (lens, any::<u8>()).prop_map(|(len, b)| Bytes::from(vec![b; len]))
    };
    prop_oneof![
        12 => bytes(200),
        1 => sized(PART_BYTES - 4 - 16..=PART_BYTES - 4),
        1 => sized(PART_BYTES - 3..=PART_BYTES + 16),
        1 => sized(2 * PART_BYTES - 16..=2 * PART_BYTES + 16),
    ]
}

/// The messages the bodies carry, as the receiver hands them out, in order.
fn receive(bodies: &[Bytes]) -> Result<Vec<Bytes>, TestCaseError> {
    let mut parts = Parts::default();
    let mut got = Vec::new();
    for b in bodies {
        match manager_raft::decode(b, &mut parts) {
            Ok(Received::Batch(ms)) => got.extend(ms.iter().map(|m| Bytes::copy_from_slice(m))),
            Ok(Received::Partial) => {}
            Ok(Received::Whole(m)) => got.push(Bytes::from(m)),
            Err(e) => return Err(TestCaseError::fail(format!("body refused: {e}"))),
        }
    }
    Ok(got)
}

/// One part of a message, as the sender frames it.
fn part(index: u32, count: u32, slice: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(12 + slice.len());
    b.extend_from_slice(&PART.to_le_bytes());
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(slice);
    Bytes::from(b)
}

/// A message cut into consecutive parts of any sizes (the receiver does not count on
/// [`PART_BYTES`]), as `(message, parts)`.
fn parts() -> impl Strategy<Value = (Bytes, Vec<Bytes>)> {
    (
        bytes(300),
        prop::collection::vec(any::<prop::sample::Index>(), 0..5),
    )
        .prop_map(|(msg, cuts)| {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(msg.len() + 1)).collect();
            at.push(0);
            at.push(msg.len());
            at.sort_unstable();
            let count = at.len() as u32 - 1;
            let bodies = at
                .windows(2)
                .enumerate()
                .map(|(i, w)| part(i as u32, count, &msg[w[0]..w[1]]))
                .collect();
            (msg, bodies)
        })
}

/// A body a receiver may meet: a batch, a part (of a small message), or either damaged.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let batch = prop::collection::vec(bytes(40), 0..4)
        .prop_map(|msgs| manager_raft::encode(&msgs).0.concat().into());
    let part = (0..4u32, 0..5u32, bytes(40)).prop_map(|(i, n, s)| part(i, n, &s));
    untrusted(prop_oneof![batch, part])
}

proptest! {
    #![proptest_config(large())]

    /// Any messages travel in bodies within a frame (a large one alone, in parts of at
    /// most [`PART_BYTES`]) and come back whole and in order.
    #[test]
    fn messages_come_back_whole_and_in_order(msgs in prop::collection::vec(message(), 0..5)) {
        let (bodies, too_large) = manager_raft::encode(&msgs);
        prop_assert!(too_large.is_empty());
        for b in &bodies {
            prop_assert!(b.len() <= MAX_BODY as usize, "a body of {} bytes", b.len());
        }
        let parted: usize = msgs
            .iter()
            .filter(|m| m.len() + 4 > PART_BYTES)
            .map(|m| m.len().div_ceil(PART_BYTES))
            .sum();
        let part_bodies = bodies.iter().filter(|b| b.len() >= 12 && b[..4] == PART.to_le_bytes());
        prop_assert_eq!(part_bodies.count(), parted);
        let got = receive(&bodies)?;
        prop_assert_eq!(got.len(), msgs.len());
        for (i, (g, m)) in got.iter().zip(&msgs).enumerate() {
            prop_assert!(g == m, "message {} of {} bytes came back as {} bytes", i, m.len(), g.len());
        }
    }
}

proptest! {
    #![proptest_config(round_trips())]

    /// Small messages go in one batch body that decodes to them.
    #[test]
    fn a_batch_decodes_to_its_messages(msgs in prop::collection::vec(bytes(100), 0..8)) {
        let (bodies, _) = manager_raft::encode(&msgs);
        prop_assert_eq!(bodies.len(), usize::from(!msgs.is_empty()));
        prop_assert_eq!(receive(&bodies)?, msgs.clone());
        let body = bodies.concat();
        let batch = decode_batch(&body).unwrap();
        prop_assert_eq!(batch, msgs.iter().map(|m| &m[..]).collect::<Vec<_>>());
    }

    /// The receiver joins the parts of a message, whatever their sizes, in order; and
    /// starts over at a part 0 after parts of an unfinished message.
    #[test]
    fn parts_of_any_sizes_join_into_their_message(
        (msg, bodies) in parts(),
        (_, abandoned) in parts(),
    ) {
        let mut parts = Parts::default();
        let unfinished = abandoned.len().saturating_sub(1);
        for b in &abandoned[..unfinished] {
            prop_assert_eq!(manager_raft::decode(b, &mut parts), Ok(Received::Partial));
        }
        let (last, first) = bodies.split_last().unwrap();
        for b in first {
            prop_assert_eq!(manager_raft::decode(b, &mut parts), Ok(Received::Partial));
        }
        prop_assert_eq!(manager_raft::decode(last, &mut parts), Ok(Received::Whole(msg.to_vec())));
    }
}

proptest! {
    #![proptest_config(fuzz())]

    /// Whatever bodies arrive on a connection, one after another, decoding never panics;
    /// a batch decoded is exactly its body, and a message joined is within the limit.
    #[test]
    fn bodies_never_panic(bodies in prop::collection::vec(body(), 1..6)) {
        let mut parts = Parts::default();
        for b in &bodies {
            match manager_raft::decode(b, &mut parts) {
                Ok(Received::Batch(ms)) => {
                    let msgs: Vec<Bytes> = ms.iter().map(|m| Bytes::copy_from_slice(m)).collect();
                    prop_assert_eq!(&manager_raft::encode(&msgs).0.concat()[..], &b[..]);
                }
                Ok(Received::Whole(m)) => prop_assert!(m.len() <= MAX_MESSAGE),
                Ok(Received::Partial) | Err(_) => {}
            }
            if let Ok(ms) = decode_batch(b) {
                let total: usize = ms.iter().map(|m| 4 + m.len()).sum();
                prop_assert_eq!(total, b.len());
            }
        }
    }
}
