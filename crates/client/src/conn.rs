//! One multiplexed, pipelined connection to a storage node, whose certificate must name the
//! node the route said is at the address.
//!
//! Any number of requests may be in flight: each carries its own request id, a writer task
//! sends frames in order (coalescing whatever is queued into one write), and a reader task
//! matches replies to waiters by id, in whatever order they arrive. If the connection
//! breaks, every waiter gets an error and the connection is marked dead; the caller opens a
//! new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_net::{Expect, FrameReader, NetError};
use tessera_proto::frame::{Frame, Kind};
use tokio::sync::{mpsc, oneshot};

use crate::capability::Cap;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;

pub(crate) struct NodeConn {
    addr: String,
    next_id: AtomicU64,
    waiters: Waiters,
    tx: mpsc::UnboundedSender<Frame>,
    dead: Arc<AtomicBool>,
    tasks: [tokio::task::AbortHandle; 2],
    /// The capability last presented on this connection, by (volume, writer epoch): its
    /// serial (see `capability`).
    presented: Mutex<HashMap<(u64, u64), u64>>,
}

impl NodeConn {
    /// A connection to storage node `node` at `addr`: refused ([`NetError::WrongPeer`])
    /// if the server's certificate names another process.
    pub(crate) async fn open(
        security: &tessera_net::Security,
        node: u64,
        addr: &str,
        timeout: Duration,
    ) -> Result<Arc<NodeConn>, NetError> {
        let stream = security.connect(addr, Expect::Node(node), timeout).await?;
        // Closing this socket resets it and discards whatever is still unsent: a request
        // abandoned after a timeout must never reach a node later (the client will have
        // retried it elsewhere, and may have written over the same range since).
        #[allow(deprecated)]
        stream.tcp().set_linger(Some(Duration::ZERO))?;
        let (r, w) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
        let waiters: Waiters = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));

        let wdead = dead.clone();
        let writer = tokio::spawn(async move {
            // Everything already queued is written, then flushed once.
            let _ = tessera_net::FrameWriter::new(w).write_queue(&mut rx).await;
            wdead.store(true, Ordering::Release);
        });

        let rwaiters = waiters.clone();
        let rdead = dead.clone();
        let raddr = addr.to_string();
        let reader = tokio::spawn(async move {
            let mut reader = FrameReader::new(r);
            loop {
                match reader.next().await {
                    Ok(Some(f)) => {
                        let waiter = rwaiters
                            .lock()
                            .ok()
                            .and_then(|mut m| m.remove(&f.request_id));
                        if let Some(w) = waiter {
                            let _ = w.send(f);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(node = %raddr, "connection to storage node failed: {e}");
                        break;
                    }
                }
            }
            rdead.store(true, Ordering::Release);
            // Dropping the senders wakes every waiter with an error.
            if let Ok(mut m) = rwaiters.lock() {
                m.clear();
            }
        });

        Ok(Arc::new(NodeConn {
            addr: addr.to_string(),
            next_id: AtomicU64::new(1),
            waiters,
            tx,
            dead,
            tasks: [writer.abort_handle(), reader.abort_handle()],
            presented: Mutex::default(),
        }))
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Presents `cap` (for volume `volume` at writer epoch `epoch`) unless this connection
    /// was given it already. Queued before whatever is sent after this returns, so a
    /// request sent next is read after it; its answer is not waited for (a refusal shows
    /// as the request's `Unauthorized`).
    pub(crate) fn present(&self, volume: u64, epoch: u64, cap: &Cap) -> Result<(), NetError> {
        let Ok(mut given) = self.presented.lock() else {
            return Err(NetError::Closed);
        };
        if given.get(&(volume, epoch)) == Some(&cap.serial) {
            return Ok(());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if self.is_dead()
            || self
                .tx
                .send(Frame::new(Kind::Capability, id, cap.body.clone()))
                .is_err()
        {
            return Err(NetError::Closed);
        }
        given.insert((volume, epoch), cap.serial);
        Ok(())
    }

    /// Sends one request frame and waits for its reply.
    pub(crate) async fn request(
        &self,
        kind: Kind,
        body: bytes::Bytes,
        tail: bytes::Bytes,
        timeout: Duration,
    ) -> Result<Frame, NetError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (otx, orx) = oneshot::channel();
        if let Ok(mut m) = self.waiters.lock() {
            m.insert(id, otx);
        }
        if self.is_dead()
            || self
                .tx
                .send(Frame::with_tail(kind, id, body, tail))
                .is_err()
        {
            self.forget(id);
            return Err(NetError::Closed);
        }
        match tokio::time::timeout(timeout, orx).await {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(_)) => Err(NetError::Closed),
            Err(_) => {
                self.forget(id);
                self.abort();
                Err(NetError::Timeout {
                    addr: self.addr.clone(),
                    timeout,
                })
            }
        }
    }

    /// Drops the connection at once (a reset: unsent requests are discarded) and fails
    /// every request still waiting on it.
    fn abort(&self) {
        self.dead.store(true, Ordering::Release);
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut m) = self.waiters.lock() {
            m.clear();
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut m) = self.waiters.lock() {
            m.remove(&id);
        }
    }
}
