//! Frames on a byte stream: reading whole, validated frames ([`FrameReader`]), writing one
//! frame without copying its body ([`write_frame`]), and opening a TCP connection for them.
//! Must never hand out a frame whose header or body failed its checks.

use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use tessera_proto::DecodeError;
use tessera_proto::frame::{self, Frame, Kind};

use crate::{Budget, NetError};

/// Reads whole frames off a byte stream, validating each before it is returned.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    limits: Option<ReadLimits>,
    /// The budget the frame being read (or the last returned, until the next is begun or
    /// the caller takes it) holds.
    held: Option<OwnedSemaphorePermit>,
    /// The one timer of a limited reader, moved to each wait's deadline: an idle deadline
    /// only moves later, which costs no timer registration, so a connection's waits do
    /// not each add and remove a timer.
    timer: Option<Pin<Box<Sleep>>>,
}

/// What a server's reader holds its peer to ([`FrameReader::with_limits`]).
#[derive(Clone)]
pub struct ReadLimits {
    /// Longest wait for a frame to begin.
    pub idle: Duration,
    /// Longest a frame may take to arrive whole once begun.
    pub frame: Duration,
    /// Bodies over [`SMALL_BODY`] are buffered only with this much of the budget taken
    /// (waiting for it, the peer is not read).
    pub budget: Option<Budget>,
    /// Frame kinds read without taking budget (replication between trusted peers).
    pub exempt: &'static [Kind],
}

/// A body up to this size is read into the reader's own buffer without taking budget (a
/// 64 KiB write with its request header).
pub const SMALL_BODY: u32 = 68 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of the frames arriving on `inner`.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
            limits: None,
            held: None,
            timer: None,
        }
    }

    /// A reader held to `limits`: a peer silent past `idle` or slower than `frame` ends
    /// with [`NetError::Stalled`], and large bodies wait for the budget. Starts with a small
    /// buffer (an idle connection costs little), grown as frames need.
    pub fn with_limits(inner: R, limits: ReadLimits) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            limits: Some(limits),
            held: None,
            timer: None,
        }
    }

    /// The budget the last frame returned holds (a body over [`SMALL_BODY`]), for the
    /// caller to keep until it has answered; otherwise given back when the next frame
    /// begins.
    pub fn take_budget(&mut self) -> Option<OwnedSemaphorePermit> {
        self.held.take()
    }

    /// The next frame; `Ok(None)` at a clean end of stream (between frames).
    pub async fn next(&mut self) -> Result<Option<Frame>, NetError> {
        self.held = None;
        let Some(limits) = &self.limits else {
            return self.next_unlimited().await;
        };
        let mut begun = (!self.buf.is_empty()).then(Instant::now);
        let waiting = Instant::now();
        loop {
            if self.held.is_none()
                && let Some(budget) = &limits.budget
                && let Some(h) = frame::peek_header(&self.buf).map_err(refusal)?
                && h.body_len > SMALL_BODY
                && !limits.exempt.contains(&h.kind)
            {
                self.held = Some(budget.take(u64::from(h.body_len)).await);
                // The wait was this side's: the peer's time starts again.
                begun = Some(Instant::now());
            }
            match frame::decode(&mut self.buf) {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => return Err(refusal(e)),
            }
            let (deadline, what, after) = match begun {
                Some(t) => (t + limits.frame, "the rest of a frame", limits.frame),
                None => (waiting + limits.idle, "anything", limits.idle),
            };
            reserve(&mut self.buf);
            let timer = match &mut self.timer {
                Some(t) => {
                    if t.deadline() != deadline {
                        t.as_mut().reset(deadline);
                    }
                    t
                }
                None => self
                    .timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            let n = tokio::select! {
                biased;
                n = self.inner.read_buf(&mut self.buf) => n,
                () = timer.as_mut() => return Err(NetError::Stalled { what, after }),
            };
            if read_done(&self.buf, n)? {
                return Ok(None);
            }
            begun.get_or_insert_with(Instant::now);
        }
    }

    async fn next_unlimited(&mut self) -> Result<Option<Frame>, NetError> {
        loop {
            match frame::decode(&mut self.buf) {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => return Err(refusal(e)),
            }
            reserve(&mut self.buf);
            let n = self.inner.read_buf(&mut self.buf).await;
            if read_done(&self.buf, n)? {
                return Ok(None);
            }
        }
    }
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4 * 1024 {
        buf.reserve(64 * 1024);
    }
}

/// After a read into `buf`: `Ok(true)` at a clean end of stream.
fn read_done(buf: &BytesMut, n: std::io::Result<usize>) -> Result<bool, NetError> {
    let n = match n {
        Ok(n) => n,
        // A TLS peer that closes without `close_notify` between frames is done, as
        // a TCP peer closing is: frames are whole or refused, so nothing is cut.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
        Err(e) => return Err(tls_refusal(e)),
    };
    if n > 0 {
        return Ok(false);
    }
    if buf.is_empty() {
        Ok(true)
    } else {
        Err(NetError::Decode(DecodeError::Truncated {
            needed: frame::HEADER_LEN,
            had: buf.len(),
        }))
    }
}

/// A frame that failed its checks; a TLS record where a frame was expected says the peer
/// is secure and this side is not.
fn refusal(e: DecodeError) -> NetError {
    match e {
        DecodeError::BadMagic(m) if tls_record(m) => NetError::SpeaksTls,
        e => e.into(),
    }
}

/// A read error: a TLS refusal when TLS itself failed (under TLS 1.3 a server refusing
/// the client's certificate says so after the client's handshake ended, on its first
/// read), definite like a refused handshake; an I/O failure otherwise.
fn tls_refusal(e: std::io::Error) -> NetError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => NetError::Handshake {
            addr: "the peer".into(),
            reason: tls.to_string(),
        },
        None => NetError::Io(e),
    }
}

/// Whether the first four bytes read (as a little-endian magic) start a TLS record: a
/// content type (alert 0x15, handshake 0x16, ...) then a 0x03 version byte.
fn tls_record(magic: u32) -> bool {
    let b = magic.to_le_bytes();
    (0x14..=0x17).contains(&b[0]) && b[1] == 0x03
}

/// Writes one frame: header then body, without copying the body.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    if f.body_len() > frame::MAX_BODY as usize {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("frame body of {} bytes over the limit", f.body_len()),
        ));
    }
    w.write_all(&f.header()).await?;
    w.write_all(&f.body).await?;
    w.write_all(&f.tail).await
}

/// Opens a TCP connection with `TCP_NODELAY` (every frame is latency-critical); the caller
/// bounds the time ([`crate::Security::connect`]).
pub(crate) async fn connect_tcp(addr: &str) -> Result<TcpStream, NetError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|source| NetError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    s.set_nodelay(true)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;

    #[tokio::test]
    async fn frames_cross_a_socket_and_eof_is_clean() {
        let (a, b) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            let mut a = a;
            for i in 0..100u64 {
                let f = Frame::new(Kind::Rpc, i, Bytes::from(vec![i as u8; i as usize * 37]));
                write_frame(&mut a, &f).await.unwrap();
            }
        });
        let mut r = FrameReader::new(b);
        for i in 0..100u64 {
            let f = r.next().await.unwrap().unwrap();
            assert_eq!(f.request_id, i);
            assert_eq!(f.body.len(), i as usize * 37);
        }
        writer.await.unwrap();
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn eof_mid_frame_is_an_error() {
        let (mut a, b) = tokio::io::duplex(1024);
        let f = Frame::new(Kind::Rpc, 1, Bytes::from_static(b"0123456789"));
        a.write_all(&f.to_bytes()[..20]).await.unwrap();
        drop(a);
        assert!(FrameReader::new(b).next().await.is_err());
    }

    fn limited(
        r: tokio::io::DuplexStream,
        budget: Option<Budget>,
    ) -> FrameReader<tokio::io::DuplexStream> {
        FrameReader::with_limits(
            r,
            ReadLimits {
                idle: Duration::from_secs(60),
                frame: Duration::from_secs(5),
                budget,
                exempt: &[],
            },
        )
    }

    /// A silent connection is closed after `idle`; one that begins a frame and stalls
    /// after `frame`, however long it was idle before.
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_and_a_slow_frame_are_cut_off() {
        let (_a, b) = tokio::io::duplex(1 << 20);
        let e = limited(b, None).next().await.unwrap_err();
        assert!(
            matches!(
                e,
                NetError::Stalled {
                    what: "anything",
                    ..
                }
            ),
            "{e}"
        );

        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut r = limited(b, None);
        let f = Frame::new(Kind::Rpc, 1, Bytes::from(vec![1u8; 1000]));
        let wire = f.to_bytes();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(50)).await;
            a.write_all(&wire[..100]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(4)).await;
            a.write_all(&wire[100..]).await.unwrap();
            // A second frame, half sent, never finished.
            a.write_all(&wire[..500]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        assert_eq!(
            r.next().await.unwrap().unwrap(),
            f,
            "slow, within the limits"
        );
        let e = r.next().await.unwrap_err();
        assert!(
            matches!(
                e,
                NetError::Stalled {
                    what: "the rest of a frame",
                    ..
                }
            ),
            "{e}"
        );
        sender.abort();
    }

    /// A large body is buffered only once its bytes of the budget are taken; the budget
    /// is handed to the caller with the frame, or given back when the next frame begins.
    #[tokio::test]
    async fn a_large_body_waits_for_the_budget_and_carries_it() {
        let budget = Budget::new(1 << 20, 1 << 20);
        let (mut a, b) = tokio::io::duplex(4 << 20);
        let mut r = limited(b, Some(budget.clone()));
        let big = Frame::new(Kind::Write, 1, Bytes::from(vec![7u8; 600 * 1024]));
        let small = Frame::new(Kind::Read, 2, Bytes::from_static(b"small"));
        for f in [&big, &big, &small] {
            a.write_all(&f.to_bytes()).await.unwrap();
        }
        assert_eq!(r.next().await.unwrap().unwrap(), big);
        let first = r.take_budget().expect("the budget of a large body");
        assert_eq!(budget.free_bytes(), (1 << 20) - 600 * 1024);
        // The second needs 600 KiB of the 424 left: it waits until the first is answered.
        let mut next = Box::pin(r.next());
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut next)
                .await
                .is_err()
        );
        drop(first);
        assert_eq!(next.await.unwrap().unwrap(), big);
        assert_eq!(budget.free_bytes(), (1 << 20) - 600 * 1024);
        // Not taken: given back when the next frame begins; a small body takes nothing.
        assert_eq!(r.next().await.unwrap().unwrap(), small);
        assert_eq!(budget.free_bytes(), 1 << 20);
        assert!(r.take_budget().is_none());
    }
}
