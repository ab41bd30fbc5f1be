//! A link to one peer: an outgoing connection, reconnected as needed, fed by a bounded
//! queue. It carries one-way traffic (Raft messages between storage nodes, between
//! managers): nothing is ever answered on it.
//!
//! Owns: connecting to the peer expected ([`Expect`]: a server with another identity is
//! as good as unreachable) when there is something to send, backing off while the peer
//! is unreachable or its connections end at once (a TLS 1.3 server refuses a client's
//! certificate after the client's handshake finished: on its first read), noticing the
//! peer closing, and writing what is queued through a [`FrameWriter`]. What is queued
//! while the peer is unreachable or unknown is dropped: the traffic is Raft's, which
//! retransmits what matters.
//!
//! Must never: block whoever queues (a full queue drops the item at once), let a dead peer
//! grow memory (the queue is bounded), or retry faster than its back-off.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::writer::{FrameWriter, Outgoing, Queue};
use crate::{Expect, Security};

/// How long a connection must have lasted for its end to count as a lost connection
/// (reconnected at once, the back-off reset) rather than a failed attempt (backed off):
/// one refused on its first read must not be redialled for every item queued.
const STEADY: Duration = Duration::from_secs(1);

/// How a link connects, backs off and writes.
#[derive(Debug, Clone, Copy)]
pub struct LinkOptions {
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// The wait after a first failed attempt; it doubles with every failure in a row.
    pub backoff_min: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// Longest a write may wait on a peer that stopped reading; unlimited if `None`.
    pub write_timeout: Option<Duration>,
}

/// The sending end of a link to one peer; the link's task ends once this is dropped and
/// what was queued is written.
pub struct PeerLink<T> {
    tx: mpsc::Sender<T>,
}

impl<T: Outgoing + 'static> PeerLink<T> {
    /// Starts the link's task on `rt`: at most `capacity` items queued; `peer` names the
    /// peer in logs, `expect` is who it must be; `resolve` gives its address when one is
    /// needed (`None`: not known yet).
    pub fn spawn(
        rt: &Handle,
        capacity: usize,
        peer: String,
        expect: Expect,
        resolve: impl FnMut() -> Option<String> + Send + 'static,
        opts: LinkOptions,
        security: Security,
    ) -> PeerLink<T> {
        let (tx, rx) = mpsc::channel(capacity);
        rt.spawn(async move { run(rx, &peer, expect, resolve, opts, &security).await });
        PeerLink { tx }
    }

    /// Queues `item`; `false` if it was dropped (the queue is full, or the task ended).
    pub fn send(&self, item: T) -> bool {
        self.tx.try_send(item).is_ok()
    }
}

/// Runs a link on `queue` until every sender is gone (see the module doc). Each item waits
/// for a connection to `expect` at `resolve()`; while there is none, it and whatever is
/// queued with it are dropped.
pub async fn run<Q: Queue>(
    mut queue: Q,
    peer: &str,
    expect: Expect,
    mut resolve: impl FnMut() -> Option<String> + Send,
    opts: LinkOptions,
    security: &Security,
) {
    let mut backoff = opts.backoff_min;
    while let Some(first) = queue.recv().await {
        let Some(addr) = resolve() else {
            // Not known yet: drop it and wait for the next.
            continue;
        };
        let stream = match security.connect(&addr, expect, opts.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer, %addr, "peer unreachable: {e}");
                drop(first);
                back_off(&mut queue, &mut backoff, &opts).await;
                continue;
            }
        };
        let connected = Instant::now();
        tracing::debug!(peer, %addr, "connected to peer");
        let (mut r, w) = stream.into_split();
        let mut w = FrameWriter::new(w);
        if let Some(t) = opts.write_timeout {
            w = w.with_write_timeout(t);
        }
        let sending = async {
            w.write_batch(first, &mut queue).await?;
            w.write_queue(&mut queue).await
        };
        // Nothing is ever answered: reading only notices the peer closing (or refusing).
        let closing = async {
            let mut buf = [0u8; 256];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => return "closed".to_string(),
                    Ok(_) => {}
                    Err(e) => return e.to_string(),
                }
            }
        };
        let ended = tokio::select! {
            sent = sending => match sent {
                Ok(()) => return,
                Err(e) => e.to_string(),
            },
            why = closing => why,
        };
        if connected.elapsed() >= STEADY {
            tracing::debug!(peer, %addr, "connection to peer lost ({ended}); reconnecting");
            backoff = opts.backoff_min;
        } else {
            tracing::debug!(peer, %addr, "connection to peer ended at once ({ended})");
            back_off(&mut queue, &mut backoff, &opts).await;
        }
    }
}

/// After a failed attempt: drops what is queued, waits `backoff`, and doubles it.
async fn back_off<Q: Queue>(queue: &mut Q, backoff: &mut Duration, opts: &LinkOptions) {
    while queue.try_recv().is_some() {}
    tokio::time::sleep(*backoff).await;
    // What was queued while waiting is as stale: a burst of old appends on reconnect helps
    // no one (Raft resends what a peer still lacks).
    while queue.try_recv().is_some() {}
    *backoff = (*backoff * 2).min(opts.backoff_max);
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use tessera_proto::frame::{Frame, Kind};
    use tokio::net::TcpListener;

    use crate::FrameReader;

    const OPTS: LinkOptions = LinkOptions {
        connect_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        write_timeout: Some(Duration::from_secs(2)),
    };

    fn frame(i: u64) -> Frame {
        Frame::new(Kind::RaftBatch, i, Bytes::from(vec![i as u8; 10]))
    }

    /// Frames sent over a link arrive in order; when the peer drops the connection, the
    /// link reconnects and later frames arrive on the new one.
    #[tokio::test]
    async fn a_link_delivers_in_order_and_reconnects_after_the_peer_closes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let link: PeerLink<Frame> = PeerLink::spawn(
            &Handle::current(),
            16,
            "test".into(),
            Expect::Node(2),
            move || Some(addr.clone()),
            OPTS,
            Security::insecure(),
        );
        for i in 0..5 {
            assert!(link.send(frame(i)));
        }
        let (s, _) = l.accept().await.unwrap();
        let mut r = FrameReader::new(s);
        for i in 0..5 {
            assert_eq!(r.next().await.unwrap().unwrap().request_id, i);
        }
        drop(r);
        // Sent until one goes through the new connection (the first after the close may
        // be lost, as Raft allows).
        let mut i = 5;
        let accepted = loop {
            assert!(link.send(frame(i)));
            i += 1;
            tokio::select! {
                a = l.accept() => break a.unwrap().0,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        };
        let f = FrameReader::new(accepted).next().await.unwrap().unwrap();
        assert!(f.request_id >= 5);
    }

    /// A peer that is unknown or unreachable costs the sender nothing: items are dropped,
    /// and the queue never holds more than its capacity.
    #[tokio::test]
    async fn an_unreachable_peer_drops_what_is_queued() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let unknown: PeerLink<Frame> = PeerLink::spawn(
            &Handle::current(),
            2,
            "unknown".into(),
            Expect::Node(2),
            || None,
            OPTS,
            Security::insecure(),
        );
        let unreachable: PeerLink<Frame> = PeerLink::spawn(
            &Handle::current(),
            2,
            "dead".into(),
            Expect::Node(3),
            move || Some(dead.clone()),
            OPTS,
            Security::insecure(),
        );
        let (mut taken, mut refused) = ([0; 2], [0; 2]);
        for i in 0..100 {
            for (n, link) in [&unknown, &unreachable].into_iter().enumerate() {
                if link.send(frame(i)) {
                    taken[n] += 1;
                } else {
                    refused[n] += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // An unknown peer's items are dropped as they come.
        assert_eq!(refused[0], 0);
        // An unreachable peer's queue fills while the link backs off, refusing items at
        // once, and is emptied after each failed attempt.
        assert!(refused[1] > 0, "{refused:?}");
        assert!(taken[1] > 2, "{taken:?}");
    }

    /// A peer that takes each connection and ends it at once (as a TLS 1.3 server refusing
    /// the client's certificate does, on the client's first read) is redialled at the
    /// back-off's pace, not once per item queued.
    #[tokio::test]
    async fn connections_that_end_at_once_are_redialled_at_the_backoff_pace() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counting = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                counting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                drop(s);
            }
        });
        let opts = LinkOptions {
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            ..OPTS
        };
        let link: PeerLink<Frame> = PeerLink::spawn(
            &Handle::current(),
            16,
            "refusing".into(),
            Expect::Node(2),
            move || Some(addr.clone()),
            opts,
            Security::insecure(),
        );
        // 200 items over about 600 ms: at the back-off's pace (20, 40, 80, 100, 100... ms)
        // that is about a dozen connections; once per item, nearer 200.
        let started = Instant::now();
        for i in 0..200 {
            link.send(frame(i));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let n = accepted.load(std::sync::atomic::Ordering::Relaxed);
        // Generous for a loaded machine: one connection per 50 ms, and a few more.
        let paced = started.elapsed().as_millis() as usize / 50 + 5;
        assert!((1..=paced).contains(&n), "{n} connections, over {paced}");
    }
}
