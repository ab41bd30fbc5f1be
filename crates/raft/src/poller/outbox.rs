//! Outgoing Raft messages: encoded, stamped (heartbeats carry their send time for the read
//! lease) and batched per peer node, one frame a peer a round.

use super::*;

pub(super) type Outbox = HashMap<u64, Vec<(u64, Bytes)>>;

pub(super) fn encode_msg(m: &Message) -> Option<Bytes> {
    match m.write_to_bytes() {
        Ok(v) => Some(Bytes::from(v)),
        Err(e) => {
            tracing::error!("encoding a raft message: {e}");
            None
        }
    }
}

/// Queues messages for their peers. Heartbeats are stamped with their send time (nanoseconds
/// since `epoch`) in the context field, which followers echo in their responses: a leader's
/// read lease then counts from when the heartbeat a quorum answered was *sent*, never from
/// when a (possibly long-queued) answer was handled.
pub(super) fn push_msgs(outbox: &mut Outbox, group: u64, msgs: Vec<Message>, epoch: Instant) {
    for mut m in msgs {
        if m.get_msg_type() == MessageType::MsgHeartbeat && m.context.is_empty() {
            let sent = crate::clock::now()
                .saturating_duration_since(epoch)
                .as_nanos() as u64;
            m.context = Bytes::copy_from_slice(&sent.to_le_bytes());
        }
        if let Some(b) = encode_msg(&m) {
            outbox.entry(m.to).or_default().push((group, b));
        }
    }
}

pub(super) fn send_all(transport: &dyn Transport, from_node: u64, outbox: Outbox) {
    for (to, msgs) in outbox {
        transport.send(to, RaftBatch { from_node, msgs });
    }
}
