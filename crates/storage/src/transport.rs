//! Raft messages to peer storage nodes over TCP: one [`PeerLink`] per peer node, each a
//! reconnecting connection to that node (its certificate must name it) fed by a bounded
//! queue, its frames written in batches.
//! Messages queued while a peer is unreachable, or not yet known, are dropped (Raft resends
//! what matters); a full queue drops new ones rather than hold up the poller.
//!
//! This is the production implementation of [`tessera_raft::Transport`]: the Raft crate
//! knows no network (its tests deliver messages themselves), so the trait is the seam
//! between the two crates, with this one implementation outside tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_net::{Expect, LinkOptions, Outgoing, PeerLink};
use tessera_proto::data::RaftBatch;
use tessera_proto::frame::{Frame, Kind, MAX_BODY};
use tessera_raft::Transport;
use tokio::runtime::Handle;

/// Most batches queued for one peer before new ones are dropped (a dead peer must not
/// grow memory without bound).
const MAX_QUEUED: usize = 4096;

const LINK: LinkOptions = LinkOptions {
    connect_timeout: Duration::from_secs(2),
    backoff_min: Duration::from_millis(50),
    backoff_max: Duration::from_secs(1),
    write_timeout: None,
};

/// Where peer nodes listen, as learned from group membership.
type Addrs = Arc<Mutex<HashMap<u64, String>>>;

pub(crate) struct TcpTransport {
    rt: Handle,
    /// How links to peers dial.
    security: tessera_net::Security,
    addrs: Addrs,
    peers: Mutex<HashMap<u64, PeerLink<Batch>>>,
}

impl TcpTransport {
    pub(crate) fn new(rt: Handle, security: tessera_net::Security) -> TcpTransport {
        TcpTransport {
            rt,
            security,
            addrs: Arc::default(),
            peers: Mutex::default(),
        }
    }

    /// Where node `node` listens, as group membership told this node (`None`: unknown).
    pub(crate) fn addr_of(&self, node: u64) -> Option<String> {
        self.addrs.lock().ok().and_then(|m| m.get(&node).cloned())
    }

    fn spawn_peer(&self, to: u64) -> PeerLink<Batch> {
        let addrs = self.addrs.clone();
        let resolve = move || addrs.lock().ok().and_then(|m| m.get(&to).cloned());
        PeerLink::spawn(
            &self.rt,
            MAX_QUEUED,
            format!("node {to}"),
            Expect::Node(to),
            resolve,
            LINK,
            self.security.clone(),
        )
    }
}

/// A batch queued for a peer, encoded on the link's task.
struct Batch(RaftBatch);

impl Outgoing for Batch {
    fn frames(&mut self, out: &mut Vec<Frame>) {
        let b = std::mem::take(&mut self.0);
        for part in split(b) {
            out.push(Frame::new(Kind::RaftBatch, 0, part.encode()));
        }
    }
}

/// Splits a batch so that every frame stays under the frame size limit. One message is
/// never larger than that (entries are at most 4 MiB, messages carry ~1 MiB of them).
fn split(b: RaftBatch) -> Vec<RaftBatch> {
    const BUDGET: usize = MAX_BODY as usize / 2;
    let mut out = Vec::new();
    let mut cur = RaftBatch {
        from_node: b.from_node,
        msgs: Vec::new(),
    };
    let mut size = 0;
    for (g, m) in b.msgs {
        if !cur.msgs.is_empty() && size + m.len() + 12 > BUDGET {
            out.push(std::mem::replace(
                &mut cur,
                RaftBatch {
                    from_node: b.from_node,
                    msgs: Vec::new(),
                },
            ));
            size = 0;
        }
        size += m.len() + 12;
        cur.msgs.push((g, m));
    }
    out.push(cur);
    out
}

impl Transport for TcpTransport {
    fn send(&self, to: u64, batch: RaftBatch) {
        let Ok(mut peers) = self.peers.lock() else {
            return;
        };
        let peer = peers.entry(to).or_insert_with(|| self.spawn_peer(to));
        if !peer.send(Batch(batch)) {
            tracing::debug!(peer = to, "peer queue full; raft messages dropped");
        }
    }

    fn set_peer(&self, node: u64, addr: &str) {
        if let Ok(mut m) = self.addrs.lock() {
            m.insert(node, addr.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;

    /// A batch too large for one frame goes out as several, each under the frame limit,
    /// carrying every message once and in order.
    #[test]
    fn a_batch_too_large_for_a_frame_is_split_in_order() {
        let msgs: Vec<(u64, Bytes)> = (0..10u64)
            .map(|g| (g, Bytes::from(vec![g as u8; 1 << 20])))
            .collect();
        let mut batch = Batch(RaftBatch {
            from_node: 3,
            msgs: msgs.clone(),
        });
        let mut frames = Vec::new();
        batch.frames(&mut frames);
        assert!(frames.len() > 1);
        let mut got = Vec::new();
        for f in &frames {
            assert!(f.body_len() <= MAX_BODY as usize);
            let b = RaftBatch::decode(&f.body).expect("decode");
            assert_eq!(b.from_node, 3);
            got.extend(b.msgs);
        }
        assert_eq!(got, msgs);
    }
}
