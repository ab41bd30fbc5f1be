//! A deliberately minimal NBD client for tests, written from the specification: it
//! sends exactly the bytes a test asks for, so tests can also send wrong ones.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::consts::*;

/// Every read in a test gives up after this long instead of hanging the suite.
const PATIENCE: Duration = Duration::from_secs(10);

pub(crate) struct Conn {
    r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

pub(crate) struct Chunk {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub payload: Vec<u8>,
}

impl Conn {
    /// Connects and reads the greeting, without sending client flags.
    pub(crate) async fn greet(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        let mut c = Conn {
            r: BufReader::new(r),
            w,
        };
        let g = c.read_exact(18).await;
        assert_eq!(g[..8], NBDMAGIC.to_be_bytes());
        assert_eq!(g[8..16], IHAVEOPT.to_be_bytes());
        assert_eq!(
            g[16..],
            (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes()
        );
        c
    }

    /// Connects as a fixed-newstyle client that asks for no zeroes.
    pub(crate) async fn connect(addr: SocketAddr) -> Conn {
        let mut c = Conn::greet(addr).await;
        c.send(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .await;
        c
    }

    /// Connects, optionally negotiates structured replies, and enters transmission
    /// with `NBD_OPT_GO`; returns the export size and transmission flags.
    pub(crate) async fn open(addr: SocketAddr, name: &str, structured: bool) -> (Conn, u64, u16) {
        let mut c = Conn::connect(addr).await;
        if structured {
            c.option(OPT_STRUCTURED_REPLY, &[]).await;
            assert_eq!(c.option_reply().await.1, REP_ACK);
        }
        let replies = c.go(OPT_GO, name, &[]).await;
        let (kind, info) = &replies[0];
        assert_eq!(*kind, REP_INFO);
        assert_eq!(info[..2], INFO_EXPORT.to_be_bytes());
        let size = u64::from_be_bytes(info[2..10].try_into().unwrap());
        let flags = u16::from_be_bytes(info[10..12].try_into().unwrap());
        assert_eq!(replies.last().unwrap().0, REP_ACK);
        (c, size, flags)
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    pub(crate) async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(PATIENCE, self.r.read_exact(&mut buf))
            .await
            .expect("server did not answer in time")
            .expect("connection closed");
        buf
    }

    /// Asserts the server closes the connection without sending anything more.
    pub(crate) async fn expect_eof(&mut self) {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(PATIENCE, self.r.read(&mut buf))
            .await
            .expect("server kept the connection open");
        match n {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("expected EOF, got {n} more bytes: {:?}", &buf[..n]),
        }
    }

    pub(crate) async fn option(&mut self, opt: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.send(&m).await;
    }

    /// One option reply: (option, reply type, data).
    pub(crate) async fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.read_exact(20).await;
        assert_eq!(h[..8], OPTION_REPLY_MAGIC.to_be_bytes());
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let data = self.read_exact(len as usize).await;
        (opt, kind, data)
    }

    /// Sends `NBD_OPT_INFO` or `NBD_OPT_GO` and collects replies up to the final one.
    pub(crate) async fn go(&mut self, opt: u32, name: &str, infos: &[u16]) -> Vec<(u32, Vec<u8>)> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        self.option(opt, &d).await;
        let mut replies = Vec::new();
        loop {
            let (o, kind, data) = self.option_reply().await;
            assert_eq!(o, opt);
            replies.push((kind, data));
            if kind != REP_INFO {
                return replies;
            }
        }
    }

    pub(crate) async fn request(
        &mut self,
        cmd: u16,
        flags: u16,
        handle: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&cmd.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(payload);
        self.send(&m).await;
    }

    /// A simple reply header: (error, handle).
    pub(crate) async fn simple_reply(&mut self) -> (u32, u64) {
        let h = self.read_exact(16).await;
        assert_eq!(
            h[..4],
            SIMPLE_REPLY_MAGIC.to_be_bytes(),
            "not a simple reply"
        );
        let errno = u32::from_be_bytes(h[4..8].try_into().unwrap());
        (errno, u64::from_be_bytes(h[8..16].try_into().unwrap()))
    }

    pub(crate) async fn chunk(&mut self) -> Chunk {
        let h = self.read_exact(20).await;
        assert_eq!(
            h[..4],
            STRUCTURED_REPLY_MAGIC.to_be_bytes(),
            "not a structured reply"
        );
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        Chunk {
            flags: u16::from_be_bytes(h[4..6].try_into().unwrap()),
            kind: u16::from_be_bytes(h[6..8].try_into().unwrap()),
            handle: u64::from_be_bytes(h[8..16].try_into().unwrap()),
            payload: self.read_exact(len as usize).await,
        }
    }

    /// A command without payload, answered by a simple reply: returns the error.
    pub(crate) async fn call(&mut self, cmd: u16, flags: u16, offset: u64, len: u32) -> u32 {
        self.request(cmd, flags, 1, offset, len, &[]).await;
        let (errno, handle) = self.simple_reply().await;
        assert_eq!(handle, 1);
        errno
    }

    pub(crate) async fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.request(CMD_WRITE, 0, 2, offset, data.len() as u32, data)
            .await;
        let (errno, handle) = self.simple_reply().await;
        assert_eq!(handle, 2);
        errno
    }

    /// A read over simple replies: the data, or the error.
    pub(crate) async fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(CMD_READ, 0, 3, offset, len, &[]).await;
        let (errno, handle) = self.simple_reply().await;
        assert_eq!(handle, 3);
        if errno != 0 {
            return Err(errno);
        }
        Ok(self.read_exact(len as usize).await)
    }
}
