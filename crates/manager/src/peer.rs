//! Manager-to-manager transport of the managers' Raft messages: [`Kind::ManagerRaft`]
//! frames on each manager's ordinary port, never answered.
//!
//! One task and one connection per peer, fed by a bounded queue: the Raft task only ever
//! `try_send`s, so a slow or dead peer never holds it up. A message that finds the queue
//! full or the peer unreachable is dropped; Raft retransmits what matters. Incoming bodies
//! are untrusted and fully checked by [`decode_batch`].

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
            let body = encode_batch(&batch);
            let frame = Frame::new(Kind::ManagerRaft, 0, body).to_bytes();
            let sent = tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&frame)).await;
            if !matches!(sent, Ok(Ok(()))) || watcher.is_finished() {
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

/// Each message as a `u32` little-endian length and its protobuf encoding; a message that
/// would not fit a frame is dropped (entries are small mutations, so it never happens).
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
}
