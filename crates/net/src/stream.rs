//! Frames on a byte stream: reading whole, validated frames ([`FrameReader`]), writing one
//! frame without copying its body ([`write_frame`]), and opening a TCP connection for them.
//! Must never hand out a frame whose header or body failed its checks.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use tessera_proto::DecodeError;
use tessera_proto::frame::{self, Frame};

use crate::NetError;

/// Reads whole frames off a byte stream, validating each before it is returned.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of the frames arriving on `inner`.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream (between frames).
    pub async fn next(&mut self) -> Result<Option<Frame>, NetError> {
        loop {
            match frame::decode(&mut self.buf) {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(DecodeError::BadMagic(m)) if tls_record(m) => return Err(NetError::SpeaksTls),
                Err(e) => return Err(e.into()),
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            let n = match self.inner.read_buf(&mut self.buf).await {
                Ok(n) => n,
                // A TLS peer that closes without `close_notify` between frames is done, as
                // a TCP peer closing is: frames are whole or refused, so nothing is cut.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(tls_refusal(e)),
            };
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(NetError::Decode(DecodeError::Truncated {
                        needed: frame::HEADER_LEN,
                        had: self.buf.len(),
                    }))
                };
            }
        }
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
    use tessera_proto::frame::Kind;

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
}
