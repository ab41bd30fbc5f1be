//! `ChunkStore` writes and verified reads: whole 4 KiB blocks, 1 MiB ranges, and a 1000-byte
//! unaligned write (read-modify-write of the block it lands in).
//!
//! Writes are plain pwrites (no fsync: the log is the write-ahead log), so these measure the
//! CRC32C work, the locking and the page cache. Every benchmark cycles over a fixed region
//! so the files, and the dirty pages, stay bounded however long it runs. The store lives in
//! a temporary directory under `CARGO_TARGET_TMPDIR` (the real filesystem), or under
//! `$TESSERA_BENCH_DIR` if set.

use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tessera_engine::ChunkStore;
use tessera_engine::chunk::BLOCK_SIZE;

const VOLUME: u64 = 1;
const CHUNK: u64 = 0;
const KIB4: u64 = 4096;
const MIB1: u64 = 1 << 20;
/// Size of the region each benchmark cycles over (prefilled, so reads verify real data).
const REGION: u64 = 64 << 20;

fn bench_root() -> PathBuf {
    std::env::var_os("TESSERA_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Offsets `0, step, 2*step, ...` wrapping within [`REGION`].
struct Cycle {
    next: u64,
    step: u64,
}

impl Cycle {
    fn new(step: u64) -> Cycle {
        Cycle { next: 0, step }
    }

    fn next(&mut self) -> u64 {
        let at = self.next;
        self.next = (self.next + self.step) % REGION;
        at
    }
}

fn chunk_store(c: &mut Criterion) {
    let root = bench_root();
    std::fs::create_dir_all(&root).expect("create benchmark directory");
    let tmp = tempfile::Builder::new()
        .prefix("tessera-chunk-bench-")
        .tempdir_in(&root)
        .expect("create chunk directory");
    let store = ChunkStore::open(tmp.path()).expect("open chunk store");
    // Prefill the region so reads and read-modify-writes meet written, checksummed blocks.
    let fill = pattern(MIB1, 7);
    for off in (0..REGION).step_by(MIB1 as usize) {
        store.write(VOLUME, CHUNK, off, &fill).expect("prefill");
    }
    store.sync().expect("sync prefill");

    let block = pattern(KIB4, 1);
    let big = pattern(MIB1, 2);
    let small = pattern(1000, 3);

    let mut g = c.benchmark_group("chunk_store");

    g.throughput(Throughput::Bytes(KIB4));
    let mut at = Cycle::new(KIB4);
    g.bench_function("write_4k_aligned", |b| {
        b.iter(|| store.write(VOLUME, CHUNK, at.next(), &block).unwrap())
    });
    let mut at = Cycle::new(KIB4);
    g.bench_function("read_4k", |b| {
        b.iter(|| store.read(VOLUME, CHUNK, at.next(), KIB4).unwrap())
    });

    g.throughput(Throughput::Bytes(MIB1));
    let mut at = Cycle::new(MIB1);
    g.bench_function("write_1m_aligned", |b| {
        b.iter(|| store.write(VOLUME, CHUNK, at.next(), &big).unwrap())
    });
    let mut at = Cycle::new(MIB1);
    g.bench_function("read_1m", |b| {
        b.iter(|| store.read(VOLUME, CHUNK, at.next(), MIB1).unwrap())
    });

    g.throughput(Throughput::Bytes(small.len() as u64));
    // 100 bytes into a block: one partial block, read (verified), merged, rewritten.
    let mut at = Cycle::new(KIB4);
    g.bench_function("write_1000b_unaligned_rmw", |b| {
        b.iter(|| {
            let off = at.next() + 100;
            debug_assert!(off % BLOCK_SIZE + small.len() as u64 <= BLOCK_SIZE);
            store.write(VOLUME, CHUNK, off, &small).unwrap()
        })
    });
    g.finish();

    // Everything written must still read back verified.
    store
        .read(VOLUME, CHUNK, 0, REGION)
        .expect("region verifies after the benchmarks");
    drop(store);
    drop(tmp);
}

criterion_group!(benches, chunk_store);
criterion_main!(benches);
