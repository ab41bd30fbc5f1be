//! Manager-to-manager transport of the managers' Raft messages: [`Kind::ManagerRaft`]
//! frames on each manager's ordinary port, never answered.
//!
//! One [`tessera_net::link`] per peer, fed by a bounded queue: the Raft task only ever
//! `try_send`s, so a slow or dead peer never holds it up. A message that finds the queue
//! full or the peer unreachable is dropped; Raft retransmits what matters. Messages queued
//! together go out together: up to [`BATCH_BYTES`] of them are gathered into one batch.
//!
//! The frame body format (batches, and large messages in parts) and its codec live in
//! [`tessera_proto::manager_raft`]; this file turns raft-rs messages into its encoded
//! messages and back. Incoming bodies are untrusted and fully checked there.

use std::time::Duration;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tracing::warn;

use tessera_net::{LinkOptions, Outgoing, Queue};
use tessera_proto::frame::{Frame, Kind};
use tessera_proto::manager_raft::{self, Received};

pub use tessera_proto::manager_raft::Parts;

/// A batch to one peer stops growing at this many bytes.
const BATCH_BYTES: usize = 1 << 20;

const LINK: LinkOptions = LinkOptions {
    connect_timeout: Duration::from_secs(1),
    backoff_min: Duration::from_millis(100),
    backoff_max: Duration::from_secs(1),
    write_timeout: Some(Duration::from_secs(2)),
};

/// Sends the messages queued for peer `to` (a server whose certificate names manager
/// `to`), reconnecting as needed. Messages that arrive while the peer is unreachable are
/// dropped: Raft retransmits what matters.
pub async fn peer_loop(
    from: u64,
    to: u64,
    addr: String,
    queue: mpsc::Receiver<Message>,
    security: tessera_net::Security,
) {
    let peer = format!("manager {to} (from manager {from})");
    let resolve = move || Some(addr.clone());
    let expect = tessera_net::Expect::Manager(to);
    tessera_net::link::run(Batches(queue), &peer, expect, resolve, LINK, &security).await;
}

/// The peer's queue, taken a batch at a time: a message and those queued behind it, up to
/// about [`BATCH_BYTES`].
struct Batches(mpsc::Receiver<Message>);

impl Batches {
    fn fill(&mut self, first: Message) -> Batch {
        let mut batch = vec![first];
        let mut size = 0;
        while size < BATCH_BYTES {
            match self.0.try_recv() {
                Ok(m) => {
                    size += m.compute_size() as usize;
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        Batch(batch)
    }
}

impl Queue for Batches {
    type Item = Batch;
    async fn recv(&mut self) -> Option<Batch> {
        let first = self.0.recv().await?;
        Some(self.fill(first))
    }
    fn try_recv(&mut self) -> Option<Batch> {
        let first = self.0.try_recv().ok()?;
        Some(self.fill(first))
    }
}

/// Messages gathered for one peer, encoded on its link's task.
struct Batch(Vec<Message>);

impl Outgoing for Batch {
    fn frames(&mut self, out: &mut Vec<Frame>) {
        for body in encode_frames(&self.0) {
            out.push(Frame::new(Kind::ManagerRaft, 0, body));
        }
    }
}

/// The frame bodies carrying `msgs`, in order ([`manager_raft::encode`]): batches, and
/// parts of any message too large for a frame (over [`manager_raft::MAX_MESSAGE`]:
/// dropped).
pub fn encode_frames(msgs: &[Message]) -> Vec<Bytes> {
    let mut encoded = Vec::with_capacity(msgs.len());
    for m in msgs {
        match m.write_to_bytes() {
            Ok(b) => encoded.push(Bytes::from(b)),
            Err(e) => warn!(error = %e, "raft message not encodable; dropped"),
        }
    }
    let (bodies, too_large) = manager_raft::encode(&encoded);
    for i in too_large {
        warn!(
            len = encoded[i].len(),
            "raft message too large to send; dropped"
        );
    }
    bodies
}

/// Decodes an untrusted frame body: a batch, or a part of a large message (returned once
/// its last part arrives).
pub fn decode_frame(body: &[u8], parts: &mut Parts) -> Result<Vec<Message>, String> {
    match manager_raft::decode(body, parts).map_err(|e| e.to_string())? {
        Received::Batch(msgs) => msgs.into_iter().map(parse).collect(),
        Received::Partial => Ok(Vec::new()),
        Received::Whole(m) => Ok(vec![parse(&m)?]),
    }
}

/// One batch body of `msgs` (at most a frame: callers send more through
/// [`encode_frames`]).
#[cfg(test)]
pub fn encode_batch(msgs: &[Message]) -> Bytes {
    encode_frames(msgs).into_iter().next().unwrap_or_default()
}

fn parse(encoded: &[u8]) -> Result<Message, String> {
    Message::parse_from_bytes(encoded).map_err(|e| format!("raft message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_garbage_is_refused() {
        let m = Message {
            to: 2,
            from: 1,
            term: 7,
            ..Default::default()
        };
        let body = encode_batch(&[m.clone(), m.clone()]);
        let got = decode_frame(&body, &mut Parts::default()).unwrap();
        assert_eq!(got, vec![m.clone(), m]);
        assert!(decode_frame(&body[..body.len() - 1], &mut Parts::default()).is_err());
        assert!(decode_frame(&[1, 2], &mut Parts::default()).is_err());
    }

    #[test]
    fn a_message_larger_than_a_frame_goes_in_parts() {
        let mut big = Message {
            to: 2,
            from: 1,
            msg_type: raft::eraftpb::MessageType::MsgSnapshot,
            ..Default::default()
        };
        big.mut_snapshot().data = vec![5u8; 3 * manager_raft::PART_BYTES + 17].into();
        let small = Message {
            to: 2,
            from: 1,
            term: 3,
            ..Default::default()
        };
        let bodies = encode_frames(&[small.clone(), big.clone(), small.clone()]);
        assert_eq!(bodies.len(), 1 + 4 + 1);
        assert!(
            bodies
                .iter()
                .all(|b| b.len() <= tessera_proto::frame::MAX_BODY as usize)
        );
        let mut parts = Parts::default();
        let mut got = Vec::new();
        for b in &bodies {
            got.extend(decode_frame(b, &mut parts).unwrap());
        }
        assert_eq!(got, vec![small.clone(), big, small]);
        // Parts out of order, or a part count out of range, are refused.
        let mut parts = Parts::default();
        assert!(decode_frame(&bodies[2], &mut parts).is_err());
        let mut forged = bodies[1].to_vec();
        forged[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_frame(&forged, &mut Parts::default()).is_err());
    }
}
