//! An in-memory [`Backend`] for tests, with injectable faults: failing reads and a read
//! offset that answers slowly (to observe out-of-order replies).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{Access, Allocation, Backend, BackendError, Export, Extent};

/// The unit the in-memory store tracks allocation in.
const BLOCK: u64 = 4096;

pub(crate) struct MemBackend {
    volumes: BTreeMap<String, Arc<MemVolume>>,
    /// Exports another (imaginary) gateway writes: read-write opens are refused.
    pub(crate) busy: Mutex<Vec<String>>,
}

pub(crate) struct MemVolume {
    data: Mutex<Vec<u8>>,
    pub fail_reads: AtomicBool,
    /// Reads starting at this offset take [`SLOW_READ`]; `u64::MAX` for none.
    pub slow_read_offset: AtomicU64,
    /// Writes starting at this offset take [`SLOW_READ`] before they land; `u64::MAX` for
    /// none.
    pub slow_write_offset: AtomicU64,
    /// The `punch` argument of every write-zeroes, in order.
    pub punched: Mutex<Vec<bool>>,
    /// Per 4 KiB block: allocated (written, or zeroed without a hole) or a hole.
    allocated: Mutex<Vec<bool>>,
}

pub(crate) const SLOW_READ: Duration = Duration::from_millis(300);

impl MemBackend {
    pub(crate) fn new(volumes: &[(&str, u64)]) -> Arc<Self> {
        let volumes = volumes
            .iter()
            .map(|&(name, size)| {
                let vol = MemVolume {
                    data: Mutex::new(vec![0; size as usize]),
                    fail_reads: AtomicBool::new(false),
                    slow_read_offset: AtomicU64::new(u64::MAX),
                    slow_write_offset: AtomicU64::new(u64::MAX),
                    punched: Mutex::default(),
                    allocated: Mutex::new(vec![false; size.div_ceil(BLOCK) as usize]),
                };
                (name.to_owned(), Arc::new(vol))
            })
            .collect();
        Arc::new(MemBackend {
            volumes,
            busy: Mutex::default(),
        })
    }

    pub(crate) fn volume(&self, name: &str) -> Arc<MemVolume> {
        self.volumes[name].clone()
    }
}

impl MemVolume {
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        self.data.lock().unwrap()[offset..offset + len].to_vec()
    }

    /// Overwrites the whole volume, so a copy onto it must really write every byte.
    pub(crate) fn fill_for_test(&self, byte: u8) {
        self.data.lock().unwrap().fill(byte);
        self.allocated.lock().unwrap().fill(true);
    }

    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, BackendError> {
        let size = self.data.lock().unwrap().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(BackendError::OutOfRange(format!(
                "{offset}+{len} of {size}"
            ))),
        }
    }

    /// Marks the blocks `offset..offset + len` touches allocated, or (`false`) the blocks
    /// it covers whole holes again.
    fn allocate(&self, offset: u64, len: u64, allocated: bool) {
        let (first, end) = if allocated {
            (offset / BLOCK, (offset + len).div_ceil(BLOCK))
        } else {
            (offset.div_ceil(BLOCK), (offset + len) / BLOCK)
        };
        let mut a = self.allocated.lock().unwrap();
        for b in first..end.min(a.len() as u64) {
            a[b as usize] = allocated;
        }
    }

    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), BackendError> {
        let range = self.range(offset, len)?;
        self.data.lock().unwrap()[range].fill(byte);
        Ok(())
    }
}

impl Backend for MemBackend {
    type Export = Arc<MemVolume>;

    async fn list(&self) -> Result<Vec<String>, BackendError> {
        // Deliberately not sorted, to show the server does not rely on the order.
        Ok(self.volumes.keys().rev().cloned().collect())
    }

    async fn open(&self, name: &str, access: Access) -> Result<Arc<MemVolume>, BackendError> {
        let v = self
            .volumes
            .get(name)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(name.to_owned()))?;
        if access == Access::ReadWrite && self.busy.lock().unwrap().iter().any(|b| b == name) {
            return Err(BackendError::Busy(format!(
                "{name} is written by gateway-a"
            )));
        }
        Ok(v)
    }
}

impl Export for Arc<MemVolume> {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        if self.slow_read_offset.load(Ordering::SeqCst) == offset {
            tokio::time::sleep(SLOW_READ).await;
        }
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(BackendError::Io("injected read failure".to_owned()));
        }
        let range = self.range(offset, len)?;
        Ok(Bytes::copy_from_slice(&self.data.lock().unwrap()[range]))
    }

    async fn write(&self, offset: u64, data: Bytes) -> Result<(), BackendError> {
        if self.slow_write_offset.load(Ordering::SeqCst) == offset {
            tokio::time::sleep(SLOW_READ).await;
        }
        let range = self.range(offset, data.len() as u64)?;
        self.data.lock().unwrap()[range].copy_from_slice(&data);
        self.allocate(offset, data.len() as u64, true);
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> Result<(), BackendError> {
        self.punched.lock().unwrap().push(punch);
        self.fill(offset, len, 0)?;
        self.allocate(offset, len, !punch);
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        // Discarded ranges read as zeroes here, though NBD promises nothing about them.
        self.fill(offset, len, 0)?;
        self.allocate(offset, len, false);
        Ok(())
    }

    /// Per block: a hole, allocated zeroes, or data; one extent per block (the server
    /// merges them).
    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BackendError> {
        let range = self.range(offset, len)?;
        let data = self.data.lock().unwrap();
        let allocated = self.allocated.lock().unwrap();
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

    async fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
