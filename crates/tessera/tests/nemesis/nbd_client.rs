//! A minimal asynchronous NBD client: fixed newstyle handshake, `NBD_OPT_GO`, simple
//! replies, one request at a time. Enough to time each READ and WRITE precisely (the
//! caller stamps the invocation before `read`/`write` and the completion after); every
//! wait is bounded by the caller's timeout, after which the connection must be dropped.

use std::io::{Error, ErrorKind, Result};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
const FLAG_C_NO_ZEROES: u32 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;

fn bad(msg: String) -> Error {
    Error::new(ErrorKind::InvalidData, msg)
}

pub struct NbdConn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    next_handle: u64,
    pub size: u64,
}

impl NbdConn {
    /// Connects to `addr` and enters transmission on `export`.
    pub async fn open(addr: &str, export: &str) -> Result<NbdConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut c = NbdConn {
            r: BufReader::new(r),
            w,
            next_handle: 1,
            size: 0,
        };
        let mut greeting = [0u8; 18];
        c.r.read_exact(&mut greeting).await?;
        if greeting[..8] != NBDMAGIC.to_be_bytes() || greeting[8..16] != IHAVEOPT.to_be_bytes() {
            return Err(bad(format!("bad greeting {greeting:02x?}")));
        }
        c.w.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .await?;
        let mut opt = IHAVEOPT.to_be_bytes().to_vec();
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(4 + export.len() as u32 + 2).to_be_bytes());
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        c.w.write_all(&opt).await?;
        loop {
            let mut h = [0u8; 20];
            c.r.read_exact(&mut h).await?;
            if h[..8] != OPTION_REPLY_MAGIC.to_be_bytes() {
                return Err(bad(format!("bad option reply {h:02x?}")));
            }
            let kind = u32::from_be_bytes(h[12..16].try_into().expect("4 bytes"));
            let len = u32::from_be_bytes(h[16..20].try_into().expect("4 bytes"));
            if len > 64 << 10 {
                return Err(bad(format!("option reply of {len} bytes")));
            }
            let mut data = vec![0u8; len as usize];
            c.r.read_exact(&mut data).await?;
            match kind {
                REP_INFO if data.len() >= 12 && data[..2] == INFO_EXPORT.to_be_bytes() => {
                    c.size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
                }
                REP_INFO => {}
                REP_ACK => return Ok(c),
                _ => {
                    return Err(bad(format!(
                        "NBD_OPT_GO refused ({kind:#x}): {}",
                        String::from_utf8_lossy(&data)
                    )));
                }
            }
        }
    }

    async fn request(&mut self, cmd: u16, offset: u64, len: u32, payload: &[u8]) -> Result<u64> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut m = Vec::with_capacity(28 + payload.len());
        m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&cmd.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(payload);
        self.w.write_all(&m).await?;
        Ok(handle)
    }

    /// A simple reply's error number (0: success), its handle checked.
    async fn reply(&mut self, handle: u64) -> Result<u32> {
        let mut h = [0u8; 16];
        self.r.read_exact(&mut h).await?;
        if h[..4] != SIMPLE_REPLY_MAGIC.to_be_bytes() {
            return Err(bad(format!("bad reply {h:02x?}")));
        }
        let got = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
        if got != handle {
            return Err(bad(format!("reply for handle {got}, expected {handle}")));
        }
        Ok(u32::from_be_bytes(h[4..8].try_into().expect("4 bytes")))
    }

    /// Writes `data` at `offset`: `Ok(0)` once acknowledged, `Ok(errno)` if refused.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self
            .request(CMD_WRITE, offset, data.len() as u32, data)
            .await?;
        self.reply(h).await
    }

    /// Reads `len` bytes at `offset`: the data, or the server's error number.
    pub async fn read(
        &mut self,
        offset: u64,
        len: u32,
    ) -> Result<std::result::Result<Vec<u8>, u32>> {
        let h = self.request(CMD_READ, offset, len, &[]).await?;
        let errno = self.reply(h).await?;
        if errno != 0 {
            return Ok(Err(errno));
        }
        let mut data = vec![0u8; len as usize];
        self.r.read_exact(&mut data).await?;
        Ok(Ok(data))
    }

    /// Says goodbye (`NBD_CMD_DISC`), best effort.
    pub async fn close(mut self) {
        let _ = self.request(CMD_DISC, 0, 0, &[]).await;
        let _ = self.w.shutdown().await;
    }
}
