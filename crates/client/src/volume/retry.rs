//! One piece of a request, sent to its group's leader with retries of everything
//! transient until [`RETRY_FOR`] has passed, under one request id, and for a change whose
//! outcome is unknown until an answer settles it.
//!
//! Must never: fail a change while it may still land (it is settled first, within
//! [`SETTLE_FOR`]); retry a definite answer (disk full, corrupt, out of range); send a
//! chunk's next write before an abandoned one to it can no longer be proposed.
//!
//! Snapshot sequences: every attempt of a write, zeroes or discard carries the volume's
//! sequence as this client knows it when the attempt is sent (not when the request was
//! made), so an attempt sent after this client learnt of a snapshot never goes into the
//! snapshot. A group that has a newer one refuses the attempt with `Resequence`: it was
//! not applied and never will be, so the client adopts the sequence for every handle of
//! the volume and sends the change again at once, under the same id; that is neither a
//! failure nor a reason to back off, and it settles nothing about earlier attempts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_proto::control::ControlError;
use tessera_proto::data::{ChunkAddr, Op, Reply, Request};
use tessera_proto::frame::Kind;

use super::{Piece, Volume};
use crate::attachment::Attachment;
use crate::capability::Cap;
use crate::{CALL_TIMEOUT, Error, RETRY_FOR, Result};

/// How long a write whose outcome is unknown is retried before the caller gets an error
/// that says so. Below the 90 s a storage node remembers an applied request id (its
/// `dedup` window): a retry later than that could be applied a second time.
const SETTLE_FOR: Duration = Duration::from_secs(80);
/// How far a storage node's clock may run behind this client's, for deadlines.
const CLOCK_MARGIN: Duration = Duration::from_secs(1);

static CLIENT_WRITE: tessera_metrics::Lazy = tessera_metrics::Lazy::new(
    "tessera_client_write_seconds",
    "One write piece: sent to a storage node until its answer arrived (network + node)",
);
static CLIENT_READ: tessera_metrics::Lazy = tessera_metrics::Lazy::new(
    "tessera_client_read_seconds",
    "One read piece: sent to a storage node until its answer arrived (network + node)",
);

impl Volume {
    /// One piece, with this handle's epoch.
    pub(super) async fn piece(&self, op: Op, p: Piece, data: Bytes) -> Result<Bytes> {
        let epoch = if reads(op) {
            self.epoch_or_zero()
        } else {
            self.write_epoch()?
        };
        self.attempts(op, p, data, epoch).await
    }

    /// One piece, with retries of everything transient until [`RETRY_FOR`] has passed; a
    /// change (write, zeroes, discard, fence) whose last attempts' outcome is unknown is
    /// retried on until one answer settles it (see `unsettled` below), up to
    /// [`SETTLE_FOR`], because failing it while it may still land would tell the caller
    /// a falsehood.
    pub(super) async fn attempts(
        &self,
        op: Op,
        p: Piece,
        data: Bytes,
        epoch: u64,
    ) -> Result<Bytes> {
        let started = Instant::now();
        let deadline = started + RETRY_FOR;
        // One id for every attempt: a retry must never take effect a second time.
        let id = if reads(op) { 0 } else { request_id() };
        let mut backoff = Backoff(Duration::from_millis(5));
        let mut attempt = 0usize;
        let mut refresh = false;
        let mut last_err = String::new();
        // Some attempt may have been proposed and not answered: it may still be applied.
        // Settled by an answer about this id from a leader: `Ok` (it was applied, once),
        // `Expired` or `Fenced` (the leader looked the id up in its log first: it is not
        // there, and no attempt can enter the log any more).
        let mut unsettled = false;
        let mut warned = false;
        // The capability a node refused last (fetched again), and how many times in a row.
        let mut refused_cap = None;
        let mut unauthorized = 0;
        // A change the caller stops waiting for (an NBD client hung up) or that fails may
        // still sit in a node's queue until its deadline: the next write to the chunk
        // waits that long rather than be overtaken by it (see `Attachment::quiet`).
        let mut guard = match (&self.inner.attachment, op) {
            (Some(a), Op::Write | Op::WriteZeroes | Op::Discard) => Some(Abandoned {
                attachment: a.clone(),
                chunk: p.chunk,
                unanswered_until: None,
                earlier: None,
                done: false,
            }),
            _ => None,
        };
        loop {
            if Instant::now() >= deadline {
                if unsettled && started.elapsed() >= SETTLE_FOR {
                    return Err(Error::Unavailable(format!(
                        "chunk {} of volume \"{}\": no leader settled a write's outcome in \
                         {SETTLE_FOR:?} ({last_err}); it may or may not have been applied",
                        p.chunk,
                        self.name(),
                    )));
                }
                if !unsettled {
                    return Err(Error::Unavailable(format!(
                        "chunk {} of volume \"{}\": gave up after {:?}: {last_err}",
                        p.chunk,
                        self.name(),
                        RETRY_FOR
                    )));
                }
                if !warned {
                    warned = true;
                    tracing::warn!(
                        volume = self.name(),
                        chunk = p.chunk,
                        "a write's outcome is still unknown after {RETRY_FOR:?} ({last_err}); \
                         retrying until a leader settles it"
                    );
                }
            }
            let allocate = matches!(op, Op::Write | Op::WriteZeroes);
            let route = match self.route(p.chunk, allocate, refresh).await {
                Ok(Some(r)) => r,
                // Never written: reads see zeroes, a discard is already done.
                Ok(None) if allocate => {
                    return Err(Error::Io("manager returned no route for a write".into()));
                }
                Ok(None) if op == Op::Read => return Ok(Bytes::from(vec![0u8; p.len as usize])),
                // Unmapped: every block a hole (`BlockState::Hole` is 0).
                Ok(None) if op == Op::BlockStatus => {
                    let blocks = p.len as u64 / tessera_proto::BLOCK_SIZE;
                    return Ok(Bytes::from(vec![0u8; blocks as usize]));
                }
                Ok(None) => return Ok(Bytes::new()),
                // The manager restarting or electing a leader is as transient as a storage
                // node doing so: wait for it like for them.
                Err(e) if manager_down(&e) => {
                    last_err = format!("manager: {e}");
                    backoff.wait().await;
                    continue;
                }
                // The attachment ended while an attempt may still land: the group answers
                // Fenced once the new holder's fence is in its log, settling it.
                Err(Error::Fenced(m)) if unsettled => {
                    last_err = m;
                    refresh = false;
                    match self.cached_route(p.chunk) {
                        Some(r) => r,
                        None => {
                            backoff.wait().await;
                            continue;
                        }
                    }
                }
                Err(e) => return Err(e),
            };
            refresh = false;
            let client = &self.inner.client;
            let cap = match client
                .capability(self.inner.info.id, epoch, refused_cap)
                .await
            {
                Ok(c) => c,
                Err(e) if manager_down(&e) => {
                    last_err = format!("manager: {e}");
                    backoff.wait().await;
                    continue;
                }
                // The epoch ended, and the capability held for it with it: a change that
                // may still land waits (a node may answer for it on a connection that has
                // one); anything else fails as a route lookup would.
                Err(Error::Control(ControlError::Conflict(m))) => {
                    if let Some(a) = &self.inner.attachment
                        && a.epoch == epoch
                    {
                        a.end(&m);
                    }
                    if !unsettled {
                        return Err(Error::Fenced(m));
                    }
                    last_err = m;
                    backoff.wait().await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            refused_cap = None;
            let (node_id, addr) = route.target(attempt);
            attempt += 1;
            if let Some(g) = &mut guard {
                g.attachment.quiet(p.chunk).await;
                // The node refuses it after its deadline; a margin for clocks that differ.
                g.unanswered_until = Some(Instant::now() + CALL_TIMEOUT + CLOCK_MARGIN);
            }
            // Stamped now, as the attempt goes out: a snapshot learnt of since an earlier
            // attempt (or since the request was made) is not written into.
            let seq = match op {
                Op::Write | Op::WriteZeroes | Op::Discard => self.seq(),
                Op::Read | Op::BlockStatus => self.read_seq(),
                _ => 0,
            };
            let req = Request {
                op,
                addr: ChunkAddr {
                    group: route.group_id,
                    volume: self.inner.info.id,
                    chunk: p.chunk,
                },
                epoch,
                id,
                seq,
                // Not proposed after the attempt is given up on: its retry never races it.
                deadline_ms: Request::deadline_in(CALL_TIMEOUT),
                offset: p.offset,
                len: p.len,
                data: data.clone(),
            };
            let reply = match self.send(node_id, &addr, &req, cap.as_deref()).await {
                Ok(r) => {
                    if let Some(g) = &mut guard {
                        g.answered();
                    }
                    r
                }
                Err(e) => {
                    // Sent or not, answered or not: unknown.
                    unsettled |= !reads(op);
                    if let Some(g) = &mut guard {
                        g.unanswered();
                    }
                    last_err = format!("node {node_id} at {addr}: {e}");
                    route.leader.store(0, Ordering::Relaxed);
                    backoff.wait().await;
                    refresh = attempt.is_multiple_of(route.peers.len().max(1));
                    continue;
                }
            };
            if !matches!(reply, Reply::Unauthorized(_)) {
                unauthorized = 0;
            }
            match reply {
                // Not applied, and never will be: again at once with the group's sequence
                // (the leader answered, so it is still the one to send to).
                Reply::Resequence { seq: newer } if newer > req.seq && !reads(op) => {
                    route.leader.store(node_id, Ordering::Relaxed);
                    self.learn_seq(newer);
                    tracing::debug!(
                        volume = self.name(),
                        chunk = p.chunk,
                        sent = req.seq,
                        seq = newer,
                        "a snapshot was taken: writing with the new sequence"
                    );
                }
                // A sequence no newer than the one sent (or one for a read) cannot be
                // adopted: a node that misbehaves, retried like a transient failure so
                // that it cannot spin the client.
                Reply::Resequence { seq: newer } => {
                    last_err = format!(
                        "node {node_id} refused sequence {} in favour of {newer}",
                        req.seq
                    );
                    route.leader.store(0, Ordering::Relaxed);
                    backoff.wait().await;
                }
                Reply::Ok(d) => {
                    route.leader.store(node_id, Ordering::Relaxed);
                    // Applied, once: an earlier attempt of it arriving late is answered
                    // from the node's memory of the id, never applied again.
                    if let Some(g) = &mut guard {
                        g.done = true;
                    }
                    return Ok(d);
                }
                Reply::NotLeader { hint } => {
                    last_err = format!(
                        "node {node_id} is not the leader of group {}",
                        route.group_id
                    );
                    let known = route.peers.iter().any(|p| p.0 == hint && hint != node_id);
                    route
                        .leader
                        .store(if known { hint } else { 0 }, Ordering::Relaxed);
                    if !known {
                        backoff.wait().await;
                        refresh = attempt.is_multiple_of(route.peers.len().max(1));
                    }
                }
                Reply::GroupNotFound
                | Reply::Unavailable(_)
                | Reply::Expired(_)
                | Reply::Unfilled { .. } => {
                    match &reply {
                        // A leader that lost its leadership after proposing answers
                        // Unavailable: the entry may still commit.
                        // (Unfilled never comes off the wire: decoded, it is Unavailable.)
                        Reply::Unavailable(_) | Reply::Unfilled { .. } => unsettled |= !reads(op),
                        Reply::Expired(_) => unsettled = false,
                        // The group moved or was re-created: ask the manager again.
                        _ => refresh = true,
                    }
                    last_err = format!("node {node_id}: {reply:?}");
                    route.leader.store(0, Ordering::Relaxed);
                    backoff.sleep().await;
                    let cap = if unsettled && Instant::now() >= deadline {
                        Duration::from_secs(1)
                    } else {
                        Backoff::CAP
                    };
                    backoff.grow(cap);
                }
                // Not applied: the connection's capability expired or was refused. A
                // fresh one is fetched and presented; a node refusing that too (a clock
                // far off the manager's) is not waited on forever.
                Reply::Unauthorized(m) => {
                    unauthorized += 1;
                    // (A change that may still land is retried until it settles.)
                    if unauthorized > 3 && !unsettled {
                        return Err(Error::Control(ControlError::Unauthorized(format!(
                            "node {node_id}: {m}"
                        ))));
                    }
                    last_err = format!("node {node_id}: {m}");
                    refused_cap = cap.as_ref().map(|c| c.serial);
                    backoff.wait().await;
                }
                Reply::Fenced(m) => {
                    if let Some(a) = &self.inner.attachment
                        && a.epoch == epoch
                    {
                        a.end(&m);
                    }
                    return Err(Error::Fenced(m));
                }
                Reply::DiskFull(m) => return Err(Error::DiskFull(m)),
                Reply::Corrupt(m) => return Err(Error::Corrupt(m)),
                Reply::Io(m) => return Err(Error::Io(m)),
                Reply::OutOfRange(m) | Reply::BadRequest(m) => return Err(Error::Invalid(m)),
            }
        }
    }

    /// One attempt of `req` on node `node` at `addr`.
    async fn send(&self, node: u64, addr: &str, req: &Request, cap: Option<&Cap>) -> Result<Reply> {
        let conn = self.inner.client.node(node, addr).await?;
        if let Some(cap) = cap {
            conn.present(req.addr.volume, req.epoch, cap)?;
        }
        let sent = std::time::Instant::now();
        let (head, data) = req.encode_parts();
        let f = conn.request(req.kind(), head, data, CALL_TIMEOUT).await?;
        match req.op {
            Op::Read | Op::BlockStatus => CLIENT_READ.observe_since(sent),
            _ => CLIENT_WRITE.observe_since(sent),
        }
        if f.kind != Kind::Reply {
            return Err(Error::Io(format!(
                "unexpected frame kind {:?} from {addr}",
                f.kind
            )));
        }
        Reply::decode(&f.body).map_err(|e| Error::Io(format!("bad reply from {addr}: {e}")))
    }
}

/// Attempts of one change whose answers never came: noted with the attachment when the
/// change ends without success (its caller gave up, or it failed), so that the chunk's next
/// write waits until none of them can be proposed any more.
struct Abandoned {
    attachment: Arc<Attachment>,
    chunk: u64,
    /// When the attempt in flight can no longer be proposed (`None`: answered).
    unanswered_until: Option<Instant>,
    /// The same for earlier attempts that got no answer.
    earlier: Option<Instant>,
    done: bool,
}

impl Abandoned {
    fn answered(&mut self) {
        self.unanswered_until = None;
    }

    fn unanswered(&mut self) {
        self.earlier = self.earlier.max(self.unanswered_until.take());
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(until) = self.earlier.max(self.unanswered_until) {
            self.attachment.hold_back(self.chunk, until);
        }
    }
}

/// The pause between attempts: doubling up to a cap.
struct Backoff(Duration);

impl Backoff {
    /// The usual cap.
    const CAP: Duration = Duration::from_millis(500);

    /// Sleeps, then doubles the pause up to [`Backoff::CAP`].
    async fn wait(&mut self) {
        self.sleep().await;
        self.grow(Backoff::CAP);
    }

    async fn sleep(&self) {
        tokio::time::sleep(self.0).await;
    }

    fn grow(&mut self, cap: Duration) {
        self.0 = (self.0 * 2).min(cap);
    }
}

/// The manager restarting or electing a leader: as transient as a storage node doing so,
/// waited for like one.
fn manager_down(e: &Error) -> bool {
    matches!(
        e,
        Error::Control(ControlError::Unavailable(_) | ControlError::NotLeader(_)) | Error::Net(_)
    )
}

/// Whether `op` only reads (no id, no attachment needed, never unsettled).
fn reads(op: Op) -> bool {
    matches!(op, Op::Read | Op::BlockStatus)
}

/// A new request id: this process's random identity in the high half, a count in the low.
fn request_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    static CLIENT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(1);
    let client = *CLIENT.get_or_init(|| {
        // SipHash keyed from the OS's random source, over the pid and the time.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish() | 1
    });
    (client as u128) << 64 | COUNT.fetch_add(1, Ordering::Relaxed) as u128
}
