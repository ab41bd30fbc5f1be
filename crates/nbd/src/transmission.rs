//! The transmission phase: requests in, replies out, many in flight at once.
//!
//! One reader (the connection task) decodes requests, validates them and spawns one task
//! per request; one writer task serialises replies onto the socket in completion order,
//! so replies go out of order, as the protocol allows. Memory is capped per connection:
//! at most [`MAX_IN_FLIGHT`] requests and [`MAX_IN_FLIGHT_BYTES`] bytes of read and write
//! payloads are held at once; the reader stops reading until a reply has been written.
//!
//! Backend errors become NBD error numbers here and nowhere else ([`errno`]); backend
//! extents become `base:allocation` descriptors here too ([`descriptors`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{debug, warn};

use crate::backend::{Allocation, BackendError, Export, Extent};
use crate::consts::*;

/// Most requests one connection may have in flight.
pub const MAX_IN_FLIGHT: usize = 128;
/// Most payload bytes (read data and write data) one connection may hold at once.
/// At least [`MAX_PAYLOAD`], or a maximal request could never start.
pub const MAX_IN_FLIGHT_BYTES: usize = 128 * 1024 * 1024;

/// Longest error message sent in a structured error chunk.
const MAX_MESSAGE_LEN: usize = 512;

/// A request header as it arrived (28 bytes on the wire).
#[derive(Debug, Clone, Copy)]
struct Request {
    flags: u16,
    cmd: u16,
    handle: u64,
    offset: u64,
    len: u32,
}

/// What was negotiated for transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Mode {
    /// Structured replies (`NBD_OPT_STRUCTURED_REPLY`).
    pub structured: bool,
    /// `base:allocation` selected: `NBD_CMD_BLOCK_STATUS` is allowed.
    pub block_status: bool,
}

/// What a validated request asks of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
}

/// An error reply: an NBD error number and a message for humans.
#[derive(Debug, PartialEq, Eq)]
struct Failure {
    errno: u32,
    message: String,
}

fn fail(errno: u32, message: String) -> Failure {
    Failure { errno, message }
}

enum Outcome {
    Done,
    /// A successful read: `data` is exactly the requested length.
    Data {
        offset: u64,
        data: Bytes,
    },
    Failed(Failure),
    /// A block status: `base:allocation` descriptors (length, `NBD_STATE_*` flags).
    Extents(Vec<(u32, u32)>),
}

struct Reply {
    handle: u64,
    outcome: Outcome,
    /// Released once the reply is on the socket, which is what bounds memory.
    _permits: Permits,
}

struct Permits {
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// A request that owes the client a reply. If dropped unanswered (a backend future
/// panicked, say) it answers `EIO`, so the client is never left waiting.
struct Pending {
    tx: mpsc::UnboundedSender<Reply>,
    handle: u64,
    permits: Option<Permits>,
}

impl Pending {
    fn finish(mut self, outcome: Outcome) {
        self.send(outcome);
    }

    fn send(&mut self, outcome: Outcome) {
        if let Some(permits) = self.permits.take() {
            // Fails only when the writer is gone, i.e. the connection is closing.
            let _ = self.tx.send(Reply {
                handle: self.handle,
                outcome,
                _permits: permits,
            });
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.send(Outcome::Failed(fail(
            EIO,
            "request ended without a result".to_owned(),
        )));
    }
}

/// Serves requests on an export until the client disconnects, breaks the protocol, or
/// `shutdown` turns true. After `NBD_CMD_DISC`, a protocol error or a server shutdown the
/// requests in flight are answered first. A client that vanished gets no answers: its
/// requests in flight are cancelled, so that none of its writes is still being retried
/// (and may land) after a later connection's writes; an unanswered write's outcome is
/// unknown to the client, which is the truth (an attempt already sent may still land, until
/// its deadline).
pub(crate) async fn serve<E, R, W>(
    export: Arc<E>,
    mode: Mode,
    mut r: R,
    w: W,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) where
    E: Export,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let structured = mode.structured;
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_replies(w, rx, structured, peer));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let budget = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES));
    let size = export.size();
    let mut tasks = tokio::task::JoinSet::new();
    // Whether the requests in flight are answered (a clean end) or cancelled.
    let mut finish = false;

    loop {
        let req = tokio::select! {
            req = read_request(&mut r) => req,
            _ = tx.closed() => break, // the writer failed: the socket is dead
            _ = shutdown.wait_for(|&stop| stop) => {
                debug!(%peer, "server shutting down; finishing requests in flight");
                finish = true;
                break;
            }
        };
        let req = match req {
            Ok(req) => req,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                debug!(%peer, "client hung up without NBD_CMD_DISC");
                break;
            }
            Err(e) => {
                warn!(%peer, "dropping connection: {e}");
                // A protocol error: the client is still there to read the answers.
                finish = e.kind() == std::io::ErrorKind::InvalidData;
                break;
            }
        };
        if req.cmd == CMD_DISC {
            debug!(%peer, "client sent NBD_CMD_DISC");
            finish = true;
            break;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut pending = Pending {
            tx: tx.clone(),
            handle: req.handle,
            permits: Some(Permits {
                _slot: slot,
                _bytes: None,
            }),
        };

        let mut payload = None;
        if req.cmd == CMD_WRITE {
            if req.len > MAX_PAYLOAD {
                // The payload cannot be skipped safely: answer, then hang up.
                warn!(%peer, len = req.len, "write larger than the maximum payload; disconnecting");
                pending.finish(Outcome::Failed(fail(
                    EINVAL,
                    format!(
                        "write of {} bytes exceeds the maximum of {MAX_PAYLOAD}",
                        req.len
                    ),
                )));
                finish = true;
                break;
            }
            let Ok(bytes) = budget.clone().acquire_many_owned(req.len).await else {
                break;
            };
            set_bytes_permit(&mut pending, bytes);
            match read_payload(&mut r, req.len).await {
                Ok(data) => payload = Some(data),
                Err(e) => {
                    debug!(%peer, "connection lost inside a write payload: {e}");
                    // Nobody is left to answer; do not send a reply for a half request.
                    pending.permits = None;
                    break;
                }
            }
        }

        match validate(&req, size, mode) {
            Err(failure) => {
                debug!(%peer, handle = req.handle, cmd = req.cmd, "rejected request: {}", failure.message);
                pending.finish(Outcome::Failed(failure));
            }
            Ok(op) => {
                if op == Op::Read {
                    let Ok(bytes) = budget.clone().acquire_many_owned(req.len).await else {
                        break;
                    };
                    set_bytes_permit(&mut pending, bytes);
                }
                let export = export.clone();
                tasks.spawn(async move {
                    let outcome =
                        execute(&*export, op, req.flags, req.offset, req.len, payload).await;
                    if let Outcome::Failed(f) = &outcome {
                        warn!(%peer, handle = req.handle, ?op, offset = req.offset, len = req.len,
                            errno = f.errno, "request failed: {}", f.message);
                    }
                    pending.finish(outcome);
                });
            }
        }
    }

    if !finish {
        if !tasks.is_empty() {
            debug!(%peer, in_flight = tasks.len(), "connection lost; cancelling its requests");
        }
        // No reply may go out now: a cancelled write must not be answered with an error
        // while an attempt of it may still land.
        writer.abort();
        tasks.abort_all();
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    // The writer ends once every request task has sent its reply.
    match writer.await {
        Err(e) if !e.is_cancelled() => warn!(%peer, "reply writer failed: {e}"),
        _ => {}
    }
}

fn set_bytes_permit(pending: &mut Pending, bytes: OwnedSemaphorePermit) {
    if let Some(p) = pending.permits.as_mut() {
        p._bytes = Some(bytes);
    }
}

async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Request> {
    let mut h = [0u8; 28];
    r.read_exact(&mut h).await?;
    let be32 = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let be16 = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    let be64 = |i: usize| (u64::from(be32(i)) << 32) | u64::from(be32(i + 4));
    let magic = be32(0);
    if magic != REQUEST_MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad request magic {magic:#010x}"),
        ));
    }
    Ok(Request {
        flags: be16(4),
        cmd: be16(6),
        handle: be64(8),
        offset: be64(16),
        len: be32(24),
    })
}

/// Reads exactly `len` payload bytes without zero-filling a buffer first.
async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> std::io::Result<Bytes> {
    let len = len as usize;
    let mut buf = BytesMut::with_capacity(len);
    let mut limited = (&mut *r).take(len as u64);
    while buf.len() < len {
        if limited.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.freeze())
}

/// Checks a request against the command set, its flags, the payload limit and the
/// export's bounds. Flush ignores offset and length (the spec reserves them as zero).
/// Block status needs a negotiated context and a length.
fn validate(req: &Request, size: u64, mode: Mode) -> Result<Op, Failure> {
    let df = if mode.structured { CMD_FLAG_DF } else { 0 };
    let (op, allowed) = match req.cmd {
        CMD_READ => (Op::Read, CMD_FLAG_FUA | df),
        CMD_WRITE => (Op::Write, CMD_FLAG_FUA),
        CMD_FLUSH => (Op::Flush, CMD_FLAG_FUA),
        CMD_TRIM => (Op::Trim, CMD_FLAG_FUA),
        CMD_WRITE_ZEROES => (Op::WriteZeroes, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE),
        CMD_BLOCK_STATUS if mode.structured && mode.block_status => {
            (Op::BlockStatus, CMD_FLAG_REQ_ONE)
        }
        CMD_BLOCK_STATUS => {
            return Err(fail(
                EINVAL,
                "block status without a negotiated metadata context".to_owned(),
            ));
        }
        other => return Err(fail(EINVAL, format!("unknown command {other}"))),
    };
    if op == Op::BlockStatus && req.len == 0 {
        return Err(fail(EINVAL, "block status of 0 bytes".to_owned()));
    }
    if req.flags & !allowed != 0 {
        return Err(fail(
            EINVAL,
            format!("command flags {:#06x} are not valid for {op:?}", req.flags),
        ));
    }
    if op == Op::Flush {
        return Ok(op);
    }
    // Trim and write-zeroes carry no payload, so they may be longer than MAX_PAYLOAD
    // (qemu sends them up to 2 GiB); only reads and writes are held to it.
    if matches!(op, Op::Read | Op::Write) && req.len > MAX_PAYLOAD {
        return Err(fail(
            EINVAL,
            format!(
                "length {} exceeds the maximum payload of {MAX_PAYLOAD}",
                req.len
            ),
        ));
    }
    let end = req.offset.checked_add(u64::from(req.len));
    if end.is_none_or(|end| end > size) {
        // The spec asks for ENOSPC on writes past the end, EINVAL otherwise.
        let errno = if matches!(op, Op::Write | Op::WriteZeroes) {
            ENOSPC
        } else {
            EINVAL
        };
        return Err(fail(
            errno,
            format!(
                "range {}+{} is past the end of the export ({size} bytes)",
                req.offset, req.len
            ),
        ));
    }
    Ok(op)
}

/// The one mapping of backend errors to NBD error numbers.
fn errno(err: &BackendError, op: Op) -> u32 {
    match err {
        BackendError::OutOfRange(_) if matches!(op, Op::Write | Op::WriteZeroes) => ENOSPC,
        BackendError::OutOfRange(_) | BackendError::Invalid(_) => EINVAL,
        BackendError::NoSpace(_) => ENOSPC,
        BackendError::Denied(_) => EPERM,
        BackendError::NotFound(_) | BackendError::Busy(_) | BackendError::Io(_) => EIO,
    }
}

/// The `base:allocation` descriptors of a backend's extents for a request of `len` bytes:
/// clipped to `len`, adjacent ones with the same flags merged, only the first with
/// `one` (`NBD_CMD_FLAG_REQ_ONE`). An answer describing nothing is an error (the spec
/// wants at least one descriptor).
fn descriptors(extents: &[Extent], len: u32, one: bool) -> Result<Vec<(u32, u32)>, Failure> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut left = len;
    for e in extents {
        if left == 0 {
            break;
        }
        let n = u32::try_from(e.len).unwrap_or(u32::MAX).min(left);
        if n == 0 {
            continue;
        }
        let flags = match e.state {
            Allocation::Hole => STATE_HOLE | STATE_ZERO,
            Allocation::Zero => STATE_ZERO,
            Allocation::Data => 0,
        };
        left -= n;
        match out.last_mut() {
            Some(last) if last.1 == flags => last.0 += n,
            _ => out.push((n, flags)),
        }
    }
    if out.is_empty() {
        return Err(fail(EIO, "the store described no extent".to_owned()));
    }
    if one {
        out.truncate(1);
    }
    Ok(out)
}

static NBD_READ: tessera_metrics::Lazy = tessera_metrics::Lazy::new(
    "tessera_nbd_read_seconds",
    "An NBD read in the gateway: request parsed to answer ready",
);
static NBD_WRITE: tessera_metrics::Lazy = tessera_metrics::Lazy::new(
    "tessera_nbd_write_seconds",
    "An NBD write, trim or write-zeroes in the gateway: request parsed to answer ready",
);

async fn execute<E: Export>(
    export: &E,
    op: Op,
    flags: u16,
    offset: u64,
    len: u32,
    payload: Option<Bytes>,
) -> Outcome {
    let started = std::time::Instant::now();
    let out = execute_inner(export, op, flags, offset, len, payload).await;
    match op {
        Op::Read | Op::BlockStatus => NBD_READ.observe_since(started),
        Op::Flush => {}
        _ => NBD_WRITE.observe_since(started),
    }
    out
}

async fn execute_inner<E: Export>(
    export: &E,
    op: Op,
    flags: u16,
    offset: u64,
    len: u32,
    payload: Option<Bytes>,
) -> Outcome {
    let len = u64::from(len);
    if len == 0 && op != Op::Flush {
        // Zero-length requests are valid and touch nothing.
        return match op {
            Op::Read => Outcome::Data {
                offset,
                data: Bytes::new(),
            },
            _ => Outcome::Done,
        };
    }
    if op == Op::BlockStatus {
        // Validated: len > 0. A long request is described for its first part only.
        let asked = len.min(MAX_BLOCK_STATUS_LEN);
        return match export.block_status(offset, asked).await {
            // `asked` fits in the request's u32 length.
            Ok(extents) => match descriptors(&extents, asked as u32, flags & CMD_FLAG_REQ_ONE != 0)
            {
                Ok(d) => Outcome::Extents(d),
                Err(f) => Outcome::Failed(f),
            },
            Err(e) => Outcome::Failed(fail(errno(&e, op), e.to_string())),
        };
    }
    // FUA needs nothing extra: the store acknowledges only durable writes.
    let result = match op {
        Op::Read => match export.read(offset, len).await {
            Ok(data) if data.len() as u64 == len => return Outcome::Data { offset, data },
            Ok(data) => {
                let message = format!("store returned {} bytes for a read of {len}", data.len());
                return Outcome::Failed(fail(EIO, message));
            }
            Err(e) => Err(e),
        },
        Op::Write => export.write(offset, payload.unwrap_or_default()).await,
        Op::Flush => export.flush().await,
        Op::Trim => export.discard(offset, len).await,
        // Without NBD_CMD_FLAG_NO_HOLE the range may become a hole; with it, it must stay
        // provisioned.
        Op::WriteZeroes => {
            let punch = flags & CMD_FLAG_NO_HOLE == 0;
            export.write_zeroes(offset, len, punch).await
        }
        Op::BlockStatus => Ok(()),
    };
    match result {
        Ok(()) => Outcome::Done,
        Err(e) => Outcome::Failed(fail(errno(&e, op), e.to_string())),
    }
}

/// Writes replies as they complete, batching whatever is ready into one flush.
async fn write_replies<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::UnboundedReceiver<Reply>,
    structured: bool,
    peer: SocketAddr,
) {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    while let Some(reply) = rx.recv().await {
        let mut result = write_reply(&mut w, structured, reply).await;
        while result.is_ok() {
            match rx.try_recv() {
                Ok(reply) => result = write_reply(&mut w, structured, reply).await,
                Err(_) => break,
            }
        }
        if let Err(e) = result.and(w.flush().await) {
            debug!(%peer, "cannot send replies: {e}");
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    structured: bool,
    reply: Reply,
) -> std::io::Result<()> {
    let handle = reply.handle;
    match reply.outcome {
        Outcome::Done => simple_reply(w, 0, handle).await,
        Outcome::Data { offset, data } if structured => {
            if data.is_empty() {
                return chunk_header(w, REPLY_TYPE_NONE, handle, 0).await;
            }
            // data.len() <= MAX_PAYLOAD, so this cannot overflow.
            let len = u32::try_from(data.len() + 8).map_err(std::io::Error::other)?;
            chunk_header(w, REPLY_TYPE_OFFSET_DATA, handle, len).await?;
            w.write_all(&offset.to_be_bytes()).await?;
            w.write_all(&data).await
        }
        Outcome::Data { data, .. } => {
            simple_reply(w, 0, handle).await?;
            w.write_all(&data).await
        }
        Outcome::Failed(Failure { errno, message }) if structured => {
            let message = truncate(&message, MAX_MESSAGE_LEN);
            // Both lengths are bounded by MAX_MESSAGE_LEN.
            let msg_len = message.len() as u16;
            chunk_header(w, REPLY_TYPE_ERROR, handle, 6 + u32::from(msg_len)).await?;
            let mut body = [0u8; 6];
            body[..4].copy_from_slice(&errno.to_be_bytes());
            body[4..].copy_from_slice(&msg_len.to_be_bytes());
            w.write_all(&body).await?;
            w.write_all(message.as_bytes()).await
        }
        Outcome::Failed(Failure { errno, .. }) => simple_reply(w, errno, handle).await,
        Outcome::Extents(d) if structured => {
            // One descriptor per extent of the store, at most one per 4 KiB block of
            // MAX_BLOCK_STATUS_LEN in practice; the length is checked, not assumed.
            let len = u32::try_from(4 + 8 * d.len()).map_err(std::io::Error::other)?;
            chunk_header(w, REPLY_TYPE_BLOCK_STATUS, handle, len).await?;
            let mut body = Vec::with_capacity(len as usize);
            body.extend_from_slice(&META_BASE_ALLOCATION_ID.to_be_bytes());
            for (n, flags) in d {
                body.extend_from_slice(&n.to_be_bytes());
                body.extend_from_slice(&flags.to_be_bytes());
            }
            w.write_all(&body).await
        }
        // Never produced without structured replies (validate refuses the command).
        Outcome::Extents(_) => simple_reply(w, EINVAL, handle).await,
    }
}

async fn simple_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    errno: u32,
    handle: u64,
) -> std::io::Result<()> {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&errno.to_be_bytes());
    h[8..].copy_from_slice(&handle.to_be_bytes());
    w.write_all(&h).await
}

/// Every chunk this server sends is the only (hence final) one of its reply.
async fn chunk_header<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u16,
    handle: u64,
    len: u32,
) -> std::io::Result<()> {
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&handle.to_be_bytes());
    h[16..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&h).await
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cmd: u16, flags: u16, offset: u64, len: u32) -> Request {
        Request {
            flags,
            cmd,
            handle: 7,
            offset,
            len,
        }
    }

    #[test]
    fn requests_past_the_end_fail_with_enospc_for_writes_and_einval_otherwise() {
        let size = 1 << 20;
        assert_eq!(
            validate(&req(CMD_READ, 0, size - 512, 512), size, Mode::default()),
            Ok(Op::Read)
        );
        assert_eq!(
            validate(&req(CMD_READ, 0, size, 0), size, Mode::default()),
            Ok(Op::Read)
        );
        let errno_of = |r: Request| validate(&r, size, Mode::default()).unwrap_err().errno;
        assert_eq!(errno_of(req(CMD_READ, 0, size - 511, 512)), EINVAL);
        assert_eq!(errno_of(req(CMD_TRIM, 0, size, 1)), EINVAL);
        assert_eq!(errno_of(req(CMD_WRITE, 0, size, 1)), ENOSPC);
        assert_eq!(errno_of(req(CMD_WRITE_ZEROES, 0, u64::MAX, 2)), ENOSPC);
        assert_eq!(errno_of(req(CMD_READ, 0, u64::MAX, 2)), EINVAL);
    }

    #[test]
    fn flags_must_be_documented_for_the_command() {
        let size = 1 << 20;
        let ok = |r: Request, structured: bool| {
            let mode = Mode {
                structured,
                block_status: false,
            };
            validate(&r, size, mode).is_ok()
        };
        assert!(ok(req(CMD_WRITE, CMD_FLAG_FUA, 0, 1), false));
        assert!(ok(req(CMD_FLUSH, CMD_FLAG_FUA, 0, 0), false));
        assert!(ok(req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 1), false));
        assert!(!ok(req(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 1), false));
        assert!(!ok(req(CMD_READ, CMD_FLAG_DF, 0, 1), false));
        assert!(ok(req(CMD_READ, CMD_FLAG_DF, 0, 1), true));
        assert!(!ok(req(CMD_READ, 1 << 9, 0, 1), true));
        assert!(!ok(req(5, 0, 0, 0), true));
    }

    #[test]
    fn only_reads_and_writes_are_held_to_the_payload_limit() {
        let size = 1 << 40;
        let m = Mode::default();
        assert!(validate(&req(CMD_READ, 0, 0, MAX_PAYLOAD + 1), size, m).is_err());
        assert!(validate(&req(CMD_TRIM, 0, 0, u32::MAX), size, m).is_ok());
        assert!(validate(&req(CMD_WRITE_ZEROES, 0, 0, u32::MAX), size, m).is_ok());
        let m = Mode {
            structured: true,
            block_status: true,
        };
        assert!(validate(&req(CMD_BLOCK_STATUS, 0, 0, u32::MAX), size, m).is_ok());
    }

    #[test]
    fn block_status_needs_a_context_a_length_and_a_range_inside_the_export() {
        let size = 1 << 20;
        let on = Mode {
            structured: true,
            block_status: true,
        };
        let v = |r: Request, m: Mode| validate(&r, size, m).map_err(|f| f.errno);
        assert_eq!(
            v(req(CMD_BLOCK_STATUS, 0, 0, 4096), on),
            Ok(Op::BlockStatus)
        );
        assert_eq!(
            v(req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 1), on),
            Ok(Op::BlockStatus)
        );
        let structured_only = Mode {
            structured: true,
            block_status: false,
        };
        assert_eq!(
            v(req(CMD_BLOCK_STATUS, 0, 0, 4096), structured_only),
            Err(EINVAL)
        );
        assert_eq!(v(req(CMD_BLOCK_STATUS, 0, 0, 0), on), Err(EINVAL));
        assert_eq!(v(req(CMD_BLOCK_STATUS, 0, size, 1), on), Err(EINVAL));
        assert_eq!(
            v(req(CMD_BLOCK_STATUS, CMD_FLAG_FUA, 0, 1), on),
            Err(EINVAL)
        );
    }

    #[test]
    fn extents_become_clipped_merged_descriptors() {
        let e = |len, state| Extent { len, state };
        let extents = [
            e(4096, Allocation::Data),
            e(4096, Allocation::Data),
            e(8192, Allocation::Hole),
            e(4096, Allocation::Zero),
            e(1 << 40, Allocation::Hole),
        ];
        assert_eq!(
            descriptors(&extents, 20480 + 100, false).unwrap(),
            [
                (8192, 0),
                (8192, STATE_HOLE | STATE_ZERO),
                (4096, STATE_ZERO),
                (100, STATE_HOLE | STATE_ZERO)
            ]
        );
        assert_eq!(descriptors(&extents, 1 << 20, true).unwrap(), [(8192, 0)]);
        assert_eq!(descriptors(&extents, 100, false).unwrap(), [(100, 0)]);
        assert_eq!(descriptors(&[], 100, false).unwrap_err().errno, EIO);
        assert_eq!(
            descriptors(&[e(0, Allocation::Data)], 100, false)
                .unwrap_err()
                .errno,
            EIO
        );
    }

    #[test]
    fn errors_are_truncated_on_character_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn backend_errors_map_to_spec_error_numbers() {
        let e = |s: &str| s.to_owned();
        assert_eq!(errno(&BackendError::OutOfRange(e("x")), Op::Read), EINVAL);
        assert_eq!(errno(&BackendError::OutOfRange(e("x")), Op::Write), ENOSPC);
        assert_eq!(errno(&BackendError::NoSpace(e("x")), Op::Write), ENOSPC);
        assert_eq!(errno(&BackendError::Invalid(e("x")), Op::Trim), EINVAL);
        assert_eq!(errno(&BackendError::Io(e("x")), Op::Read), EIO);
    }
}
