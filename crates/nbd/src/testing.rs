//! The NBD client of Tessera's tests, written from the NBD specification: this crate's
//! unit tests and the tier-2 tests of the `tessera` binary (feature `test-client`) both use
//! it, against the in-memory backend and against a real `tessera nbd` gateway.
//!
//! It sends exactly the bytes a test asks for, so tests can also send wrong ones, and it
//! checks what comes back: anything unexpected (a bad magic, a reply to another handle, a
//! refused option where one was required) is an `InvalidData` error, a server silent for
//! longer than the connection's patience a `TimedOut` error. Every operation returns an
//! [`io::Result`], never panics, so a test can treat a lost connection as an outcome (the
//! nemesis does) or unwrap it. One request at a time; no TLS, no structured-reply parsing
//! beyond one chunk's header. Not a production client: hidden from the docs, and compiled
//! only for tests or with the `test-client` feature.

use std::io::{self, Error, ErrorKind};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

pub use crate::consts::*;

/// How long a read waits for the server by default, instead of hanging the suite.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The longest option reply accepted, so a broken server cannot make the client allocate.
const MAX_OPTION_REPLY: u32 = 64 << 10;

/// Handles of the one-request helpers [`Conn::call`], [`Conn::write`] and [`Conn::read`].
const CALL_HANDLE: u64 = 1;
const WRITE_HANDLE: u64 = 2;
const READ_HANDLE: u64 = 3;

fn invalid(msg: String) -> Error {
    Error::new(ErrorKind::InvalidData, msg)
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// One connection to an NBD server.
pub struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    patience: Option<Duration>,
}

/// One structured reply chunk.
pub struct Chunk {
    /// `NBD_REPLY_FLAG_*`.
    pub flags: u16,
    /// `NBD_REPLY_TYPE_*`.
    pub kind: u16,
    pub handle: u64,
    pub payload: Vec<u8>,
}

impl Conn {
    /// Connects and reads the greeting (fixed newstyle, no zeroes offered), without
    /// sending client flags.
    pub async fn greet(addr: impl ToSocketAddrs) -> io::Result<Conn> {
        Conn::greet_with(addr, Some(PATIENCE)).await
    }

    async fn greet_with(addr: impl ToSocketAddrs, patience: Option<Duration>) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut c = Conn {
            r: BufReader::new(r),
            w,
            patience,
        };
        let g = c.read_exact(18).await?;
        if g[..8] != NBDMAGIC.to_be_bytes()
            || g[8..16] != IHAVEOPT.to_be_bytes()
            || g[16..] != (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes()
        {
            return Err(invalid(format!("bad greeting {g:02x?}")));
        }
        Ok(c)
    }

    /// Connects as a fixed-newstyle client that asks for no zeroes.
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<Conn> {
        Conn::connect_with(addr, Some(PATIENCE)).await
    }

    async fn connect_with(
        addr: impl ToSocketAddrs,
        patience: Option<Duration>,
    ) -> io::Result<Conn> {
        let mut c = Conn::greet_with(addr, patience).await?;
        c.send(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .await?;
        Ok(c)
    }

    /// Connects, optionally negotiates structured replies, and enters transmission on
    /// `name` with `NBD_OPT_GO`; returns the export size and transmission flags.
    pub async fn open(
        addr: impl ToSocketAddrs,
        name: &str,
        structured: bool,
    ) -> io::Result<(Conn, u64, u16)> {
        Conn::open_with(addr, name, structured, Some(PATIENCE)).await
    }

    /// [`Conn::open`] without structured replies and without patience: every read waits
    /// until the server answers or hangs up, for callers that bound each wait themselves
    /// (and must not take a slow answer for a lost one).
    pub async fn open_unbounded(
        addr: impl ToSocketAddrs,
        name: &str,
    ) -> io::Result<(Conn, u64, u16)> {
        Conn::open_with(addr, name, false, None).await
    }

    async fn open_with(
        addr: impl ToSocketAddrs,
        name: &str,
        structured: bool,
        patience: Option<Duration>,
    ) -> io::Result<(Conn, u64, u16)> {
        let mut c = Conn::connect_with(addr, patience).await?;
        if structured {
            c.option(OPT_STRUCTURED_REPLY, &[]).await?;
            let (_, kind, _) = c.option_reply().await?;
            if kind != REP_ACK {
                return Err(invalid(format!("structured replies refused ({kind:#x})")));
            }
        }
        let replies = c.go(OPT_GO, name, &[]).await?;
        let (last, why) = replies.last().expect("go returns at least one reply");
        if *last != REP_ACK {
            return Err(invalid(format!(
                "NBD_OPT_GO refused ({last:#x}): {}",
                String::from_utf8_lossy(why)
            )));
        }
        match &replies[0] {
            (REP_INFO, info) if info.len() >= 12 && info[..2] == INFO_EXPORT.to_be_bytes() => {
                Ok((c, be_u64(&info[2..10]), be_u16(&info[10..12])))
            }
            (kind, info) => Err(invalid(format!(
                "first reply to NBD_OPT_GO is not NBD_INFO_EXPORT: {kind:#x} {info:02x?}"
            ))),
        }
    }

    /// Connects and enters transmission on `name` with the older `NBD_OPT_EXPORT_NAME`;
    /// returns the export size and transmission flags (which must have
    /// `NBD_FLAG_HAS_FLAGS`).
    pub async fn open_export_name(
        addr: impl ToSocketAddrs,
        name: &str,
    ) -> io::Result<(Conn, u64, u16)> {
        let mut c = Conn::connect(addr).await?;
        c.option(OPT_EXPORT_NAME, name.as_bytes()).await?;
        let r = c.read_exact(10).await?;
        let flags = be_u16(&r[8..10]);
        if flags & FLAG_HAS_FLAGS == 0 {
            return Err(invalid(format!("NBD_FLAG_HAS_FLAGS missing: {flags:#x}")));
        }
        Ok((c, be_u64(&r[..8]), flags))
    }

    /// How long each read waits for the server; `None`: for ever (the caller bounds it).
    pub fn set_patience(&mut self, patience: Option<Duration>) {
        self.patience = patience;
    }

    /// Sends `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes).await
    }

    /// Reads exactly `n` bytes, within the connection's patience.
    pub async fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        match self.patience {
            Some(p) => tokio::time::timeout(p, self.r.read_exact(&mut buf))
                .await
                .map_err(|_| Error::new(ErrorKind::TimedOut, "server did not answer in time"))??,
            None => self.r.read_exact(&mut buf).await?,
        };
        Ok(buf)
    }

    /// `Ok` once the server has closed the connection (EOF or reset) without sending
    /// anything more; an error if it sends more or keeps the connection open.
    pub async fn expect_eof(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(self.patience.unwrap_or(PATIENCE), self.r.read(&mut buf))
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, "server kept the connection open"))?;
        match n {
            Ok(0) | Err(_) => Ok(()),
            Ok(n) => Err(invalid(format!(
                "expected EOF, got {n} more bytes: {:?}",
                &buf[..n]
            ))),
        }
    }

    /// Sends option `opt` with `data` (its length taken from `data`).
    pub async fn option(&mut self, opt: u32, data: &[u8]) -> io::Result<()> {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.send(&m).await
    }

    /// One option reply: (option, reply type, data).
    pub async fn option_reply(&mut self) -> io::Result<(u32, u32, Vec<u8>)> {
        let h = self.read_exact(20).await?;
        if h[..8] != OPTION_REPLY_MAGIC.to_be_bytes() {
            return Err(invalid(format!("bad option reply {h:02x?}")));
        }
        let len = be_u32(&h[16..20]);
        if len > MAX_OPTION_REPLY {
            return Err(invalid(format!("option reply of {len} bytes")));
        }
        let data = self.read_exact(len as usize).await?;
        Ok((be_u32(&h[8..12]), be_u32(&h[12..16]), data))
    }

    /// Sends `NBD_OPT_INFO` or `NBD_OPT_GO` and collects the replies up to the final one
    /// (the first that is not `NBD_REP_INFO`): (reply type, data) each.
    pub async fn go(
        &mut self,
        opt: u32,
        name: &str,
        infos: &[u16],
    ) -> io::Result<Vec<(u32, Vec<u8>)>> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        self.option(opt, &d).await?;
        let mut replies = Vec::new();
        loop {
            let (o, kind, data) = self.option_reply().await?;
            if o != opt {
                return Err(invalid(format!("reply to option {o}, expected {opt}")));
            }
            replies.push((kind, data));
            if kind != REP_INFO {
                return Ok(replies);
            }
        }
    }

    /// Sends one request: header fields as given, then `payload` (whatever `len` says).
    pub async fn request(
        &mut self,
        cmd: u16,
        flags: u16,
        handle: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let mut m = Vec::with_capacity(28 + payload.len());
        m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&cmd.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(payload);
        self.send(&m).await
    }

    /// A simple reply header: (error, handle).
    pub async fn simple_reply(&mut self) -> io::Result<(u32, u64)> {
        let h = self.read_exact(16).await?;
        if h[..4] != SIMPLE_REPLY_MAGIC.to_be_bytes() {
            return Err(invalid(format!("not a simple reply: {h:02x?}")));
        }
        Ok((be_u32(&h[4..8]), be_u64(&h[8..16])))
    }

    /// A simple reply to `handle`: its error (0: success).
    pub async fn reply(&mut self, handle: u64) -> io::Result<u32> {
        let (errno, got) = self.simple_reply().await?;
        if got != handle {
            return Err(invalid(format!(
                "reply for handle {got}, expected {handle}"
            )));
        }
        Ok(errno)
    }

    /// One structured reply chunk, header and payload.
    pub async fn chunk(&mut self) -> io::Result<Chunk> {
        let h = self.read_exact(20).await?;
        if h[..4] != STRUCTURED_REPLY_MAGIC.to_be_bytes() {
            return Err(invalid(format!("not a structured reply: {h:02x?}")));
        }
        Ok(Chunk {
            flags: be_u16(&h[4..6]),
            kind: be_u16(&h[6..8]),
            handle: be_u64(&h[8..16]),
            payload: self.read_exact(be_u32(&h[16..20]) as usize).await?,
        })
    }

    /// A command without payload, answered by a simple reply: returns the error.
    pub async fn call(&mut self, cmd: u16, flags: u16, offset: u64, len: u32) -> io::Result<u32> {
        self.request(cmd, flags, CALL_HANDLE, offset, len, &[])
            .await?;
        self.reply(CALL_HANDLE).await
    }

    /// Writes `data` at `offset`: `Ok(0)` once acknowledged, `Ok(errno)` if refused.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<u32> {
        self.request(CMD_WRITE, 0, WRITE_HANDLE, offset, data.len() as u32, data)
            .await?;
        self.reply(WRITE_HANDLE).await
    }

    /// A read over simple replies: the data, or the server's error number.
    pub async fn read(&mut self, offset: u64, len: u32) -> io::Result<Result<Vec<u8>, u32>> {
        self.request(CMD_READ, 0, READ_HANDLE, offset, len, &[])
            .await?;
        match self.reply(READ_HANDLE).await? {
            0 => Ok(Ok(self.read_exact(len as usize).await?)),
            errno => Ok(Err(errno)),
        }
    }

    /// Sends `NBD_OPT_SET_META_CONTEXT` (or, with `OPT_LIST_META_CONTEXT`, the listing)
    /// for export `name` with `queries`, and collects the replies up to the final one:
    /// (reply type, data) each.
    pub async fn meta_context(
        &mut self,
        opt: u32,
        name: &str,
        queries: &[&str],
    ) -> io::Result<Vec<(u32, Vec<u8>)>> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        self.option(opt, &d).await?;
        let mut replies = Vec::new();
        loop {
            let (o, kind, data) = self.option_reply().await?;
            if o != opt {
                return Err(invalid(format!("reply to option {o}, expected {opt}")));
            }
            replies.push((kind, data));
            if kind != REP_META_CONTEXT {
                return Ok(replies);
            }
        }
    }

    /// Connects, negotiates structured replies and `base:allocation`, and enters
    /// transmission on `name`; returns the export size, its flags and the context id.
    pub async fn open_with_block_status(
        addr: impl ToSocketAddrs,
        name: &str,
    ) -> io::Result<(Conn, u64, u16, u32)> {
        let mut c = Conn::connect(addr).await?;
        c.option(OPT_STRUCTURED_REPLY, &[]).await?;
        let (_, kind, _) = c.option_reply().await?;
        if kind != REP_ACK {
            return Err(invalid(format!("structured replies refused ({kind:#x})")));
        }
        let replies = c
            .meta_context(OPT_SET_META_CONTEXT, name, &[META_BASE_ALLOCATION])
            .await?;
        let id = match replies.as_slice() {
            [(REP_META_CONTEXT, d), (REP_ACK, _)] if d.len() >= 4 => be_u32(d),
            other => return Err(invalid(format!("base:allocation refused: {other:02x?}"))),
        };
        let replies = c.go(OPT_GO, name, &[]).await?;
        match (replies.first(), replies.last()) {
            (Some((REP_INFO, info)), Some((REP_ACK, _)))
                if info.len() >= 12 && info[..2] == INFO_EXPORT.to_be_bytes() =>
            {
                Ok((c, be_u64(&info[2..10]), be_u16(&info[10..12]), id))
            }
            _ => Err(invalid(format!("NBD_OPT_GO refused: {replies:02x?}"))),
        }
    }

    /// `NBD_CMD_BLOCK_STATUS` (flags as given): the descriptors (length, flags) of the one
    /// context negotiated, checked to name context `id`; or the server's error number.
    pub async fn block_status(
        &mut self,
        id: u32,
        flags: u16,
        offset: u64,
        len: u32,
    ) -> io::Result<Result<Vec<(u32, u32)>, u32>> {
        const HANDLE: u64 = 4;
        self.request(CMD_BLOCK_STATUS, flags, HANDLE, offset, len, &[])
            .await?;
        let c = self.chunk().await?;
        if c.handle != HANDLE || c.flags & REPLY_FLAG_DONE == 0 {
            return Err(invalid(format!(
                "block status reply for handle {} flags {:#x}",
                c.handle, c.flags
            )));
        }
        match c.kind {
            REPLY_TYPE_BLOCK_STATUS if c.payload.len() >= 12 && c.payload.len() % 8 == 4 => {
                if be_u32(&c.payload) != id {
                    return Err(invalid(format!("context {}", be_u32(&c.payload))));
                }
                Ok(Ok(c.payload[4..]
                    .chunks_exact(8)
                    .map(|d| (be_u32(d), be_u32(&d[4..])))
                    .collect()))
            }
            REPLY_TYPE_ERROR if c.payload.len() >= 4 => Ok(Err(be_u32(&c.payload))),
            k => Err(invalid(format!(
                "unexpected block status chunk type {k}: {:02x?}",
                c.payload
            ))),
        }
    }

    /// Says goodbye (`NBD_CMD_DISC`) and closes, best effort.
    pub async fn close(mut self) {
        let _ = self.request(CMD_DISC, 0, 0, 0, 0, &[]).await;
        let _ = self.w.shutdown().await;
    }
}
