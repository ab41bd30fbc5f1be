//! `nbd`: one NBD connection, handshake then transmission, fed arbitrary client bytes.
//!
//! The input is everything the client sends; then it hangs up. The server runs exactly
//! as for a TCP client without TLS ([`tessera_nbd::serve_stream`]) over an in-memory
//! duplex stream, against [`MemBackend`], while everything it answers is read.
//! Checked: no panic; the connection ends once the client has hung up (AFL's time limit
//! catches one that does not); the server keeps the [`Export`] contract (every range
//! within the export, none empty), which the backend asserts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tessera_nbd::backend::Access;
use tessera_nbd::{Allocation, Backend, BackendError, Export, Extent};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

/// The unit [`MemExport`] tracks allocation in.
const BLOCK: u64 = 4096;

/// Exports by name: size, read-only, refused to writers (as another gateway's would be).
/// The empty name selects the first, `odd`.
const EXPORTS: [(&str, u64, bool, bool); 4] = [
    ("odd", 3 * BLOCK + 7, false, false),
    ("snap@1", 2 * BLOCK, true, false),
    ("vol0", 64 * BLOCK, false, false),
    ("zbusy", BLOCK, false, true),
];

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
}

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    converse(data);
}

/// Sends `data` as a client, hangs up, and returns all the server answered.
pub fn converse(data: &[u8]) -> Vec<u8> {
    RUNTIME.with(|rt| rt.block_on(session(data)))
}

async fn session(data: &[u8]) -> Vec<u8> {
    let backend = MemBackend::default();
    let (client, server) = duplex(16 << 10);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let send = async {
        // The server may hang up first: a broken pipe here is an outcome, not a failure.
        let _ = to_server.write_all(data).await;
        let _ = to_server.shutdown().await;
    };
    let mut answer = Vec::new();
    let receive = async {
        let _ = from_server.read_to_end(&mut answer).await;
    };
    tokio::join!(tessera_nbd::serve_stream(&backend, server), send, receive);
    answer
}

/// Exports in memory, created on first open and shared by later ones.
#[derive(Default)]
pub struct MemBackend {
    opened: Mutex<BTreeMap<String, Arc<Store>>>,
}

/// An export's bytes and, per [`BLOCK`], whether it is allocated.
pub struct Store {
    data: Mutex<Vec<u8>>,
    allocated: Mutex<Vec<bool>>,
}

/// One open export.
pub struct MemExport {
    size: u64,
    read_only: bool,
    store: Arc<Store>,
}

impl Backend for MemBackend {
    type Export = MemExport;

    async fn list(&self) -> Result<Vec<String>, BackendError> {
        Ok(EXPORTS.iter().rev().map(|e| e.0.to_owned()).collect())
    }

    async fn open(&self, name: &str, access: Access) -> Result<MemExport, BackendError> {
        let Some(&(name, size, read_only, busy)) = EXPORTS.iter().find(|e| e.0 == name) else {
            return Err(BackendError::NotFound(name.to_owned()));
        };
        if busy && access == Access::ReadWrite {
            return Err(BackendError::Busy(format!("{name} is written elsewhere")));
        }
        let mut opened = self.opened.lock().unwrap();
        let store = opened.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Store {
                data: Mutex::new(vec![0; size as usize]),
                allocated: Mutex::new(vec![false; size.div_ceil(BLOCK) as usize]),
            })
        });
        Ok(MemExport {
            size,
            read_only: read_only || access == Access::Read,
            store: store.clone(),
        })
    }
}

impl MemExport {
    /// The range the server passes, which the [`Export`] contract says it has checked.
    fn range(&self, op: &str, offset: u64, len: u64) -> std::ops::Range<usize> {
        let end = offset.checked_add(len);
        assert!(
            len > 0 && end.is_some_and(|end| end <= self.size),
            "{op} of {offset}+{len} reached an export of {} bytes",
            self.size
        );
        offset as usize..(offset + len) as usize
    }

    fn write_only(&self) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::Denied("the export is read-only".to_owned()));
        }
        Ok(())
    }

    /// Marks the blocks touched allocated, or (`false`) the blocks covered whole holes.
    fn allocate(&self, range: std::ops::Range<usize>, allocated: bool) {
        let (start, end) = (range.start as u64, range.end as u64);
        let (first, last) = if allocated {
            (start / BLOCK, end.div_ceil(BLOCK))
        } else {
            (start.div_ceil(BLOCK), end / BLOCK)
        };
        let mut a = self.store.allocated.lock().unwrap();
        for b in first..last {
            a[b as usize] = allocated;
        }
    }
}

impl Export for MemExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        let range = self.range("read", offset, len);
        Ok(Bytes::copy_from_slice(
            &self.store.data.lock().unwrap()[range],
        ))
    }

    async fn write(&self, offset: u64, data: Bytes) -> Result<(), BackendError> {
        let range = self.range("write", offset, data.len() as u64);
        self.write_only()?;
        self.store.data.lock().unwrap()[range.clone()].copy_from_slice(&data);
        self.allocate(range, true);
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> Result<(), BackendError> {
        let range = self.range("write_zeroes", offset, len);
        self.write_only()?;
        self.store.data.lock().unwrap()[range.clone()].fill(0);
        self.allocate(range, !punch);
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        let range = self.range("discard", offset, len);
        self.write_only()?;
        self.store.data.lock().unwrap()[range.clone()].fill(0);
        self.allocate(range, false);
        Ok(())
    }

    async fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// One extent per block touched (the server merges them).
    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BackendError> {
        let range = self.range("block_status", offset, len);
        let data = self.store.data.lock().unwrap();
        let allocated = self.store.allocated.lock().unwrap();
        let mut out = Vec::new();
        let mut pos = range.start as u64;
        while pos < range.end as u64 {
            let b = pos / BLOCK;
            let end = ((b + 1) * BLOCK).min(range.end as u64);
            let state = if !allocated[b as usize] {
                Allocation::Hole
            } else if data[pos as usize..end as usize].iter().all(|&x| x == 0) {
                Allocation::Zero
            } else {
                Allocation::Data
            };
            out.push(Extent {
                len: end - pos,
                state,
            });
            pos = end;
        }
        Ok(out)
    }
}
