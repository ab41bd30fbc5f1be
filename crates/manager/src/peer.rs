//! Manager-to-manager transport of the managers' Raft messages: [`Kind::ManagerRaft`]
//! frames on each manager's ordinary port, never answered.
//!
//! One task and one connection per peer, fed by a bounded queue: the Raft task only ever
//! `try_send`s, so a slow or dead peer never holds it up. A message that finds the queue
//! full or the peer unreachable is dropped; Raft retransmits what matters. Incoming bodies
//! are untrusted and fully checked by [`decode_batch`].
//!
//! A frame body is a batch: each message as a `u32` little-endian length and its protobuf
//! encoding. A message too large for one frame (a snapshot of a large state) goes alone, in
//! parts: bodies starting with the length [`PART`] (no message is that long), then the part's
//! index and the number of parts (`u32` each), then a slice of the encoding. The receiver
//! joins consecutive parts of one connection ([`Parts`]), up to [`MAX_MESSAGE`] bytes.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use tessera_proto::frame::{Frame, Kind, MAX_BODY};

/// A batch to one peer stops growing at this many bytes.
const BATCH_BYTES: usize = 1 << 20;
/// The length marking a body as one part of a message sent in parts.
const PART: u32 = u32::MAX;
/// Bytes of a message per part frame.
const PART_BYTES: usize = 4 << 20;
/// The largest message accepted in parts (a snapshot of the managers' state).
pub const MAX_MESSAGE: usize = 1 << 30;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends the messages queued for peer `to`, reconnecting as needed. Messages that arrive
/// while the peer is unreachable are dropped: Raft retransmits what matters.
pub async fn peer_loop(from: u64, to: u64, addr: String, mut queue: mpsc::Receiver<Message>) {
    let mut backoff = Duration::from_millis(100);
    let mut pending: Option<Message> = None;
    loop {
        let first = match pending.take() {
            Some(m) => m,
            None => match queue.recv().await {
                Some(m) => m,
                None => return,
            },
        };
        let stream = match tessera_net::connect(&addr, CONNECT_TIMEOUT).await {
            Ok(s) => s,
            Err(e) => {
                debug!(from, to, %addr, error = %e, "manager peer unreachable");
                while queue.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        debug!(from, to, %addr, "connected to manager peer");
        let (mut r, mut w) = stream.into_split();
        // Nothing is ever answered: reading only notices the peer closing.
        let watcher = tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let mut next = Some(first);
        while let Some(m) = next.take() {
            let mut batch = vec![m];
            let mut size = 0;
            while size < BATCH_BYTES {
                match queue.try_recv() {
                    Ok(m) => {
                        size += m.compute_size() as usize;
                        batch.push(m);
                    }
                    Err(_) => break,
                }
            }
            let mut lost = false;
            for body in encode_frames(&batch) {
                let frame = Frame::new(Kind::ManagerRaft, 0, body).to_bytes();
                let sent = tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&frame)).await;
                if !matches!(sent, Ok(Ok(()))) || watcher.is_finished() {
                    lost = true;
                    break;
                }
            }
            if lost {
                debug!(from, to, %addr, "connection to manager peer lost");
                break;
            }
            next = queue.recv().await;
            if next.is_none() {
                watcher.abort();
                return;
            }
        }
        watcher.abort();
    }
}

/// The frame bodies carrying `msgs`, in order: batches, and parts of any message too large
/// for a frame (over [`MAX_MESSAGE`]: dropped).
pub fn encode_frames(msgs: &[Message]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut small = Vec::new();
    for m in msgs {
        let size = m.compute_size() as usize;
        if size + 4 <= PART_BYTES {
            small.push(m.clone());
            continue;
        }
        if !small.is_empty() {
            out.push(encode_batch(&small));
            small.clear();
        }
        match m.write_to_bytes() {
            Ok(b) if b.len() <= MAX_MESSAGE => {
                let count = b.len().div_ceil(PART_BYTES) as u32;
                for (i, part) in b.chunks(PART_BYTES).enumerate() {
                    let mut body = BytesMut::with_capacity(12 + part.len());
                    body.put_u32_le(PART);
                    body.put_u32_le(i as u32);
                    body.put_u32_le(count);
                    body.put_slice(part);
                    out.push(body.freeze());
                }
            }
            Ok(b) => warn!(len = b.len(), "raft message too large to send; dropped"),
            Err(e) => warn!(error = %e, "raft message not encodable; dropped"),
        }
    }
    if !small.is_empty() {
        out.push(encode_batch(&small));
    }
    out
}

/// Parts of a message received so far on one connection.
#[derive(Default)]
pub struct Parts {
    buf: Vec<u8>,
    next: u32,
    count: u32,
}

/// Decodes an untrusted frame body: a batch, or a part of a large message (returned once
/// its last part arrives).
pub fn decode_frame(body: &[u8], parts: &mut Parts) -> Result<Vec<Message>, String> {
    let Some((head, rest)) = body.split_first_chunk::<12>() else {
        return decode_batch(body);
    };
    if u32::from_le_bytes([head[0], head[1], head[2], head[3]]) != PART {
        return decode_batch(body);
    }
    let index = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let count = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if count as usize > MAX_MESSAGE / PART_BYTES + 1 || count == 0 {
        return Err(format!("raft message in {count} parts"));
    }
    if index == 0 {
        *parts = Parts {
            buf: Vec::new(),
            next: 0,
            count,
        };
    }
    if index != parts.next || count != parts.count {
        return Err(format!(
            "raft message part {index} of {count}, expected {} of {}",
            parts.next, parts.count
        ));
    }
    if parts.buf.len() + rest.len() > MAX_MESSAGE {
        return Err(format!("raft message over {MAX_MESSAGE} bytes"));
    }
    parts.buf.extend_from_slice(rest);
    parts.next += 1;
    if parts.next < count {
        return Ok(Vec::new());
    }
    let whole = std::mem::take(parts);
    let m = Message::parse_from_bytes(&whole.buf).map_err(|e| format!("raft message: {e}"))?;
    Ok(vec![m])
}

/// Each message as a `u32` little-endian length and its protobuf encoding; a message that
/// would not fit a frame is dropped (callers send those in parts: [`encode_frames`]).
pub fn encode_batch(msgs: &[Message]) -> Bytes {
    let mut out = BytesMut::new();
    for m in msgs {
        match m.write_to_bytes() {
            Ok(b) if out.len() + 4 + b.len() <= MAX_BODY as usize => {
                out.put_u32_le(b.len() as u32);
                out.put_slice(&b);
            }
            Ok(b) => warn!(len = b.len(), "raft message too large for a frame; dropped"),
            Err(e) => warn!(error = %e, "raft message not encodable; dropped"),
        }
    }
    out.freeze()
}

/// Decodes an untrusted [`encode_batch`] body.
pub fn decode_batch(mut body: &[u8]) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let Some((len, rest)) = body.split_first_chunk::<4>() else {
            return Err("raft batch: truncated length".into());
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(format!(
                "raft batch: message of {len} bytes, {} left",
                rest.len()
            ));
        }
        let (msg, rest) = rest.split_at(len);
        out.push(Message::parse_from_bytes(msg).map_err(|e| format!("raft message: {e}"))?);
        body = rest;
    }
    Ok(out)
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
        let got = decode_batch(&body).unwrap();
        assert_eq!(got, vec![m.clone(), m]);
        assert!(decode_batch(&body[..body.len() - 1]).is_err());
        assert!(decode_batch(&[1, 2]).is_err());
    }

    #[test]
    fn a_message_larger_than_a_frame_goes_in_parts() {
        let mut big = Message {
            to: 2,
            from: 1,
            msg_type: raft::eraftpb::MessageType::MsgSnapshot,
            ..Default::default()
        };
        big.mut_snapshot().data = vec![5u8; 3 * PART_BYTES + 17].into();
        let small = Message {
            to: 2,
            from: 1,
            term: 3,
            ..Default::default()
        };
        let bodies = encode_frames(&[small.clone(), big.clone(), small.clone()]);
        assert_eq!(bodies.len(), 1 + 4 + 1);
        assert!(bodies.iter().all(|b| b.len() <= MAX_BODY as usize));
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
