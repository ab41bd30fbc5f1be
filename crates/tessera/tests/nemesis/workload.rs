//! The nemesis's clients and the history they record.
//!
//! Each client has its own NBD connection to one of the gateways and issues one request at
//! a time: a READ or a WRITE of one whole 4 KiB block among [`BLOCKS`], spread one per
//! other 1 MiB chunk so that they live in many replica groups. Every write writes a value
//! no other write uses ([`encode`]); a read decodes what it got back to the write that
//! produced it ([`decode`]), or to zeroes, or to "corrupt". Each operation is recorded with
//! the instants it was invoked and acknowledged; one that got no answer (timeout, lost
//! connection) or an error is recorded without a completion: the checker lets such a write
//! take effect at any later time, or never. After such an operation the client drops its
//! connection and connects again, to the other gateway if its own does not answer. Most
//! clients wait [`OP_TIMEOUT`] for an answer; every third one gives up after 3 s, so some
//! requests are abandoned while the gateway is still working on them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checker::{Call, Observed, Op, Time};
use tessera_nbd::testing::Conn;

pub const BLOCK: usize = 4096;
/// Registers under test: few enough that clients often meet on one.
pub const BLOCKS: u64 = 32;
/// Block `b` is at `b * STRIDE`: every other chunk of a volume with 1 MiB chunks.
pub const STRIDE: u64 = 2 << 20;
/// Volume size and chunk size for `tessera volume create`.
pub const VOLUME_SIZE: &str = "64MiB";
pub const CHUNK_SIZE: &str = "1MiB";
/// A request unanswered this long is given up (its outcome unknown). Longer than a stall
/// of two nodes, so most requests caught in one still get their answer.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// The timeout of every third client: shorter than a paused leader or a stall lasts, so
/// requests are also abandoned while the gateway still works on them.
const IMPATIENT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

const MAGIC: &[u8; 8] = b"TSNEMES1";

pub fn offset(block: u64) -> u64 {
    block * STRIDE
}

/// The 4 KiB written to `block` as value `id`: magic, id, block, then bytes derived from
/// both. Reading it back is checked byte for byte against this, so a torn write, a stale
/// sector mixed in or another block's data cannot pass for a value.
pub fn encode(id: u64, block: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&id.to_le_bytes());
    b[16..24].copy_from_slice(&block.to_le_bytes());
    let mut x = (id ^ block.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15) | 1;
    for w in b[24..].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    b
}

/// What a read of `block` returned.
pub fn decode(block: u64, data: &[u8]) -> Observed {
    if data.len() != BLOCK {
        return Observed::Corrupt(format!("{} bytes instead of {BLOCK}", data.len()));
    }
    if data.iter().all(|&b| b == 0) {
        return Observed::Zero;
    }
    if &data[..8] != MAGIC {
        return Observed::Corrupt(format!("no header; first bytes {:02x?}", &data[..16]));
    }
    let id = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let from = u64::from_le_bytes(data[16..24].try_into().expect("8 bytes"));
    if from != block {
        return Observed::Corrupt(format!("holds value {id:#x} written to block {from}"));
    }
    let want = encode(id, block);
    match want.iter().zip(data).position(|(a, b)| a != b) {
        None => Observed::Value(id),
        Some(i) => Observed::Corrupt(format!("value {id:#x} torn: differs from byte {i}")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The gateway answered with this NBD error number.
    Refused(u32),
    TimedOut,
    ConnectionLost,
}

pub struct Record {
    pub op: Op,
    pub outcome: Outcome,
    pub gateway: usize,
}

/// Who issues an operation, through which gateway, waiting how long.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub id: usize,
    pub gateway: usize,
    pub timeout: Duration,
}

/// What the clients share with the test.
pub struct Workload {
    pub start: Instant,
    pub export: String,
    pub stop: AtomicBool,
    /// The gateways' addresses (a restarted gateway may have moved).
    pub gateways: Mutex<Vec<String>>,
    pub history: Mutex<Vec<Record>>,
    pub reconnects: AtomicU64,
}

impl Workload {
    pub fn new(export: &str, gateways: Vec<String>) -> Workload {
        Workload {
            start: Instant::now(),
            export: export.to_string(),
            stop: AtomicBool::new(false),
            gateways: Mutex::new(gateways),
            history: Mutex::new(Vec::new()),
            reconnects: AtomicU64::new(0),
        }
    }

    pub fn time(&self, at: Instant) -> Time {
        at.duration_since(self.start).as_nanos() as Time
    }

    pub fn gateway(&self, i: usize) -> String {
        let g = self.gateways.lock().expect("gateways");
        g[i % g.len()].clone()
    }

    pub fn set_gateway(&self, i: usize, addr: String) {
        self.gateways.lock().expect("gateways")[i] = addr;
    }

    fn record(&self, r: Record) {
        self.history.lock().expect("history").push(r);
    }

    /// Connects to gateway `gw`, or to the other one if it fails; `None` once stopped.
    pub async fn connect(&self, gw: &mut usize) -> Option<Conn> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            let addr = self.gateway(*gw);
            match tokio::time::timeout(
                CONNECT_TIMEOUT,
                Conn::open_unbounded(addr.as_str(), &self.export),
            )
            .await
            {
                Ok(Ok((c, _, _))) => return Some(c),
                _ => {
                    *gw = (*gw + 1) % self.gateways.lock().expect("gateways").len();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// One write of `id` to `block`, recorded; false if the connection must be dropped.
    pub async fn write(&self, c: &mut Conn, client: Client, block: u64, id: u64) -> bool {
        let data = encode(id, block);
        let invoke = Instant::now();
        let res = tokio::time::timeout(client.timeout, c.write(offset(block), &data)).await;
        let done = Instant::now();
        let (outcome, complete) = match res {
            Ok(Ok(0)) => (Outcome::Ok, Some(self.time(done))),
            Ok(Ok(errno)) => (Outcome::Refused(errno), None),
            Ok(Err(_)) => (Outcome::ConnectionLost, None),
            Err(_) => (Outcome::TimedOut, None),
        };
        self.record(Record {
            op: Op {
                block,
                call: Call::Write(id),
                invoke: self.time(invoke),
                complete,
                client: client.id,
            },
            outcome,
            gateway: client.gateway,
        });
        matches!(outcome, Outcome::Ok | Outcome::Refused(_))
    }

    /// One read of `block`, recorded; its outcome.
    pub async fn read(&self, c: &mut Conn, client: Client, block: u64) -> Outcome {
        let invoke = Instant::now();
        let res = tokio::time::timeout(client.timeout, c.read(offset(block), BLOCK as u32)).await;
        let done = Instant::now();
        let (outcome, seen, complete) = match res {
            Ok(Ok(Ok(data))) => (Outcome::Ok, decode(block, &data), Some(self.time(done))),
            Ok(Ok(Err(errno))) => (Outcome::Refused(errno), Observed::Zero, None),
            Ok(Err(_)) => (Outcome::ConnectionLost, Observed::Zero, None),
            Err(_) => (Outcome::TimedOut, Observed::Zero, None),
        };
        self.record(Record {
            op: Op {
                block,
                call: Call::Read(seen),
                invoke: self.time(invoke),
                complete,
                client: client.id,
            },
            outcome,
            gateway: client.gateway,
        });
        outcome
    }
}

/// Client `id`: random reads and writes of random blocks until told to stop.
pub async fn client(w: Arc<Workload>, id: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9));
    let mut me = Client {
        id,
        gateway: id % 2,
        timeout: if id % 3 == 2 { IMPATIENT } else { OP_TIMEOUT },
    };
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            conn = w.connect(&mut me.gateway).await;
            continue;
        };
        let block = rng.gen_range(0..BLOCKS);
        let keep = if rng.gen_bool(0.5) {
            seq += 1;
            // Unique across clients and runs of this client.
            let value = ((id as u64 + 1) << 40) | seq;
            w.write(c, me, block, value).await
        } else {
            matches!(
                w.read(c, me, block).await,
                Outcome::Ok | Outcome::Refused(_)
            )
        };
        if !keep {
            conn = None;
            w.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(c) = conn {
        c.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_to_their_write_and_damage_is_seen() {
        let b = encode(0x1_0000_0007, 5);
        assert_eq!(decode(5, &b), Observed::Value(0x1_0000_0007));
        assert_eq!(decode(5, &[0u8; BLOCK]), Observed::Zero);
        // Another block's value, a torn block, a block half zeroes.
        assert!(matches!(decode(6, &b), Observed::Corrupt(_)));
        let mut torn = b.clone();
        torn[2048..].copy_from_slice(&encode(0x1_0000_0008, 5)[2048..]);
        assert!(matches!(decode(5, &torn), Observed::Corrupt(_)));
        let mut half = b;
        half[512..].fill(0);
        assert!(matches!(decode(5, &half), Observed::Corrupt(_)));
    }
}
