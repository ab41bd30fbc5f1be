//! A connection as the rest of Tessera sees it: plain TCP (an `--insecure` cluster) or TLS
//! over TCP, read and written alike ([`Conn`]), and split into halves that two tasks own
//! ([`ConnRead`], [`ConnWrite`]). Plain TCP splits without a lock, as before TLS existed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsStream;

use crate::tls::PeerCheck;

/// One connection to or from a peer.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, either side of the handshake, with its peer's certificate checked
    /// again at every read after the process's trust changed (a revocation).
    Tls(Box<TlsStream<TcpStream>>, PeerCheck),
}

/// The reading half of a [`Conn`].
pub enum ConnRead {
    /// Of plain TCP.
    Plain(OwnedReadHalf),
    /// Of TLS.
    Tls(ReadHalf<Box<TlsStream<TcpStream>>>, PeerCheck),
}

/// The writing half of a [`Conn`].
pub enum ConnWrite {
    /// Of plain TCP.
    Plain(OwnedWriteHalf),
    /// Of TLS.
    Tls(WriteHalf<Box<TlsStream<TcpStream>>>),
}

impl Conn {
    /// The TCP socket underneath (for socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s, _) => s.get_ref().0,
        }
    }

    /// Splits the connection into halves two tasks can own.
    pub fn into_split(self) -> (ConnRead, ConnWrite) {
        match self {
            Conn::Plain(s) => {
                let (r, w) = s.into_split();
                (ConnRead::Plain(r), ConnWrite::Plain(w))
            }
            Conn::Tls(s, check) => {
                let (r, w) = tokio::io::split(s);
                (ConnRead::Tls(r, check), ConnWrite::Tls(w))
            }
        }
    }
}

macro_rules! delegate_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s, check) => {
                        check.still()?;
                        Pin::new(s).poll_read(cx, buf)
                    }
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Tls(s, ..) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Tls(s, ..) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Plain(s) => s.is_write_vectored(),
                    Self::Tls(s, ..) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_flush(cx),
                    Self::Tls(s, ..) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Tls(s, ..) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(Conn);
delegate_read!(ConnRead);
delegate_write!(Conn);
delegate_write!(ConnWrite);
