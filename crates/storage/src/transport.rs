//! Raft messages to peer storage nodes over TCP: one connection per peer, one task per
//! connection, frames written as they are queued and flushed when the queue is empty.
//! Messages queued while a peer is unreachable are dropped (Raft resends what matters).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_proto::data::RaftBatch;
use tessera_proto::frame::{Frame, Kind, MAX_BODY};
use tessera_raft::Transport;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// Most batches queued for one peer before new ones are dropped (a dead peer must not
/// grow memory without bound).
const MAX_QUEUED: usize = 4096;

struct Peer {
    tx: mpsc::Sender<RaftBatch>,
}

pub(crate) struct TcpTransport {
    rt: Handle,
    addrs: Arc<Mutex<HashMap<u64, String>>>,
    peers: Mutex<HashMap<u64, Peer>>,
}

impl TcpTransport {
    pub(crate) fn new(rt: Handle) -> TcpTransport {
        TcpTransport {
            rt,
            addrs: Arc::default(),
            peers: Mutex::default(),
        }
    }

    fn spawn_peer(&self, to: u64) -> Peer {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        let addrs = self.addrs.clone();
        self.rt.spawn(peer_loop(to, addrs, rx));
        Peer { tx }
    }
}

async fn peer_loop(
    to: u64,
    addrs: Arc<Mutex<HashMap<u64, String>>>,
    mut rx: mpsc::Receiver<RaftBatch>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(addr) = addrs.lock().ok().and_then(|m| m.get(&to).cloned()) else {
            // Not known yet: drop what is queued and wait.
            match rx.recv().await {
                Some(_) => continue,
                None => return,
            }
        };
        let stream = match tessera_net::connect(&addr, Duration::from_secs(2)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = to, "connect failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                while rx.try_recv().is_ok() {}
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let mut w = BufWriter::with_capacity(256 * 1024, stream);
        'conn: while let Some(b) = rx.recv().await {
            let mut next = Some(b);
            while let Some(b) = next {
                for part in split(b) {
                    let f = Frame::new(Kind::RaftBatch, 0, part.encode());
                    if tessera_net::write_frame(&mut w, &f).await.is_err() {
                        break 'conn;
                    }
                }
                next = rx.try_recv().ok();
            }
            if w.flush().await.is_err() {
                break;
            }
        }
        if rx.is_closed() {
            return;
        }
        tracing::debug!(peer = to, "connection lost; reconnecting");
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
        if peer.tx.try_send(batch).is_err() {
            tracing::debug!(peer = to, "peer queue full; raft messages dropped");
        }
    }

    fn set_peer(&self, node: u64, addr: &str) {
        if let Ok(mut m) = self.addrs.lock() {
            m.insert(node, addr.to_string());
        }
    }
}
