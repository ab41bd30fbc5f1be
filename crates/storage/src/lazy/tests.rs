//! Promises of the lazy fill's pure parts (block arithmetic, overlay, single flight, the
//! caches) and of its fetches from real directory stores: a corrupt copy is never served,
//! the next store's is.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tessera_backup::{Store, keys, manifest, region};
use tessera_proto::control::{Hash, REGION_BYTES, RestoreSource, StoreKind, StoreSpec};

use super::access::AccessRecord;
use super::blocks::{BLOCK, is_partial, overlay, partial_blocks, regions_of};
use super::cache::Bounded;
use super::fetch::{Failure, Why};
use super::flight::Flights;
use super::source::{Sources, source_of};
use super::{Lazy, Source};

#[test]
fn partial_blocks_are_the_head_and_tail_blocks_a_write_covers_in_part() {
    let cases: [(u32, u32, &[u32]); 9] = [
        (0, 4096, &[]),
        (8192, 3 * 4096, &[]),
        (0, 0, &[]),
        (512, 512, &[0]),
        (100, 3000, &[0]),
        (512, 8192, &[0, 2]),
        (4096, 4097, &[2]),
        (4000, 200, &[0, 1]),
        (4096 + 512, 4096 - 512, &[1]),
    ];
    for (offset, len, want) in cases {
        assert_eq!(partial_blocks(offset, len), want, "{len} bytes at {offset}");
        assert_eq!(
            is_partial(offset, len),
            !want.is_empty(),
            "{len} at {offset}"
        );
    }
    for offset in (0..3 * 4096).step_by(509) {
        for len in (0..3 * 4096).step_by(511) {
            assert_eq!(
                is_partial(offset, len),
                !partial_blocks(offset, len).is_empty()
            );
        }
    }
}

#[test]
fn unfilled_blocks_lie_in_their_regions_each_named_once() {
    assert_eq!(regions_of(&[0, 3, 255, 256, 700, 767, 768]), [0, 1, 2, 3]);
    assert_eq!(regions_of(&[]), Vec::<u32>::new());
}

/// A region's bytes: each block filled with one non-zero byte, another for each block
/// and region (so that no two regions are one object).
pub(super) fn region_bytes(r: u32, blocks: usize) -> Vec<u8> {
    let mut v = vec![0u8; blocks * BLOCK as usize];
    for (i, b) in v.chunks_mut(BLOCK as usize).enumerate() {
        b.fill(1 + ((r as usize * 37 + i) % 250) as u8);
    }
    v
}

/// Only the unfilled blocks' bytes are copied, and only the part the read covers: the
/// held blocks around them (their data already in the read) are untouched, whatever the
/// read's alignment; a short region leaves the zeroes past its end.
#[test]
fn overlay_copies_only_the_part_of_an_unfilled_block_the_read_covers() {
    let region0 = region_bytes(0, 256);
    // A read of 3 blocks from the middle of block 0 to the middle of block 3; blocks 0 and
    // 2 unfilled (read as zeroes), 1 and 3 held (0xEE).
    let offset = 1000u64;
    let len = 3 * BLOCK as usize;
    let mut read = vec![0xEEu8; len];
    let zero = |read: &mut Vec<u8>, b: u64| {
        let s = (b * BLOCK).max(offset) - offset;
        let e = ((b + 1) * BLOCK - offset).min(len as u64);
        read[s as usize..e as usize].fill(0);
    };
    zero(&mut read, 0);
    zero(&mut read, 2);
    let mut want = read.clone();
    for b in [0u64, 2] {
        let s = (b * BLOCK).max(offset);
        let e = ((b + 1) * BLOCK).min(offset + len as u64);
        want[(s - offset) as usize..(e - offset) as usize]
            .copy_from_slice(&region0[s as usize..e as usize]);
    }
    for b in [0, 2] {
        overlay(&mut read, offset, b, &region0);
    }
    // A block outside the read changes nothing.
    overlay(&mut read, offset, 9, &region0);
    assert!(read == want, "the overlay differs");
    assert!(read[..BLOCK as usize - 1000].iter().all(|&x| x == 1));
    assert!(
        read[BLOCK as usize - 1000..2 * BLOCK as usize - 1000]
            .iter()
            .all(|&x| x == 0xEE)
    );

    // Region 1 of a chunk whose last region holds 2 blocks: block 258 lies past its end.
    let short = region_bytes(1, 2);
    let at = REGION_BYTES;
    let mut read = vec![0u8; 4 * BLOCK as usize];
    for b in [256, 257, 258] {
        overlay(&mut read, at, b, &short);
    }
    assert_eq!(&read[..2 * BLOCK as usize], &short[..]);
    assert!(read[2 * BLOCK as usize..].iter().all(|&x| x == 0));
}

/// Concurrent callers of one key share one run of the work; the key leaves the air once
/// it is done, and a later caller runs it anew.
#[tokio::test]
async fn single_flight_runs_the_work_once_for_concurrent_callers() {
    let flights: Arc<Flights<u32, u64>> = Arc::new(Flights::default());
    let runs = Arc::new(AtomicUsize::new(0));
    let (go, wait) = tokio::sync::watch::channel(false);
    let join = |flights: &Flights<u32, u64>| {
        let (runs, mut wait) = (runs.clone(), wait.clone());
        flights.join(
            7,
            move || {
                Box::pin(async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = wait.wait_for(|g| *g).await;
                    42
                })
            },
            |_| 0,
        )
    };
    let waiting: Vec<_> = (0..10).map(|_| tokio::spawn(join(&flights))).collect();
    assert_eq!(flights.in_air(), 1);
    go.send(true).expect("go");
    for w in waiting {
        assert_eq!(w.await.expect("waiter"), 42);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one run for ten callers");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while flights.in_air() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flight never landed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(join(&flights).await, 42);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "a later caller runs it anew"
    );
}

/// A flight whose work panics lands all the same: its callers get the `lost` value, and
/// the key is not poisoned (a later caller runs the work anew).
#[tokio::test]
async fn a_panicking_flight_does_not_poison_its_key() {
    let flights: Flights<u32, u64> = Flights::default();
    let got = flights
        .join(7, || Box::pin(async { panic!("the work panicked") }), |_| 0)
        .await;
    assert_eq!(got, 0, "the lost value");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while flights.in_air() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the panicked flight stays in the air"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let again = flights.join(7, || Box::pin(async { 42 }), |_| 0).await;
    assert_eq!(again, 42, "a later caller runs the work anew");
}

/// A source found is cached (not asked again); a failed look-up (the managers know no
/// restore of the chunk) is not: the next read asks again.
#[tokio::test]
async fn sources_are_cached_once_found_and_never_a_failure() {
    let sources = Sources::default();
    let asked = Arc::new(AtomicUsize::new(0));
    let ask = |ok: bool| {
        let asked = asked.clone();
        move || async move {
            asked.fetch_add(1, Ordering::SeqCst);
            if ok {
                Ok(Source::zeroes(3))
            } else {
                Err(Failure::new(Why::Gone, "not restoring"))
            }
        }
    };
    assert!(sources.get(1, 0, ask(false)).await.is_err());
    assert_eq!(sources.cached(), 0);
    let got = sources.get(1, 0, ask(true)).await.expect("found");
    assert_eq!(got.backup, 3);
    sources.get(1, 0, ask(false)).await.expect("cached");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "the cached source is not asked again"
    );
    // Forgotten (a fetch failed in every store it names): asked again.
    sources.forget(1, 0);
    assert_eq!(sources.cached(), 0);
    sources.get(1, 0, ask(true)).await.expect("found again");
    assert_eq!(asked.load(Ordering::SeqCst), 3);
}

/// A source is cached once, by its look-up: a caller that waited for it and finishes
/// after a `forget` does not put the stale source back. The cache is bounded by the
/// regions its sources name, and sources of one restore share their store list.
#[tokio::test]
async fn sources_are_cached_by_their_look_up_and_bounded_by_regions() {
    let sources = Arc::new(Sources::default());
    let (go, wait) = tokio::sync::watch::channel(false);
    let ask = move || {
        let mut wait = wait.clone();
        async move {
            let _ = wait.wait_for(|g| *g).await;
            Ok(Source::zeroes(3))
        }
    };
    let waiter = {
        let (sources, ask) = (sources.clone(), ask.clone());
        tokio::spawn(async move { sources.get(1, 0, ask).await.map(|s| s.backup) })
    };
    tokio::task::yield_now().await;
    let first = sources.get(1, 0, ask);
    go.send(true).expect("go");
    assert_eq!(first.await.expect("found").backup, 3);
    // The other caller has not run since its flight landed: forgotten before it does.
    sources.forget(1, 0);
    assert_eq!(waiter.await.expect("waiter"), Ok(3));
    assert_eq!(sources.cached(), 0, "a waiter put a forgotten source back");

    let sources = Sources::with_max(3);
    let spec = StoreSpec {
        name: "a".into(),
        zone: "z".into(),
        kind: StoreKind::Dir { path: "/x".into() },
    };
    let two = [(0, Hash([1; 32])), (1, Hash([2; 32]))];
    let mut got = Vec::new();
    for chunk in 0..3 {
        let spec = spec.clone();
        let s = sources
            .get(1, chunk, move || async move {
                Ok(Source::with_objects(3, vec![spec], &two))
            })
            .await
            .expect("found");
        got.push(s);
    }
    assert_eq!(sources.cached(), 1, "two regions each, three at most");
    assert!(
        Arc::ptr_eq(&got[0].stores, &got[2].stores),
        "the store list is not shared"
    );
}

#[test]
fn bounded_caches_forget_their_oldest_entries_first() {
    let mut b = Bounded::new(2);
    b.insert(1, "a");
    b.insert(2, "b");
    b.insert(1, "again");
    b.insert(3, "c");
    assert_eq!(
        (b.get(&1), b.get(&2), b.get(&3)),
        (None, Some("b"), Some("c"))
    );
    assert_eq!(b.len(), 2);
    // Removed and inserted anew, an entry is the newest: the next to go is 3.
    b.remove(&2);
    b.insert(2, "b2");
    b.insert(4, "d");
    assert_eq!(
        (b.get(&2), b.get(&3), b.get(&4)),
        (Some("b2"), None, Some("d"))
    );
}

/// The record counts reads per chunk; past its bound, the least recently read chunks are
/// forgotten and new ones still counted; a dropped volume's chunks are forgotten.
#[test]
fn the_access_record_counts_reads_per_chunk_and_stays_bounded() {
    // One chunk a shard: a full shard forgets its least recently read chunk.
    let record = AccessRecord::with_max(1);
    for _ in 0..3 {
        record.count(1, 0);
    }
    assert_eq!(record.reads(1, 0), 3);
    let mut counted = 0;
    for chunk in 1..1000 {
        record.count(2, chunk);
        counted += usize::from(record.reads(2, chunk) == 1);
    }
    assert_eq!(counted, 999, "new chunks are counted when full");
    assert_eq!(record.reads(1, 0), 0, "the least recently read forgotten");

    let record = AccessRecord::default();
    for _ in 0..3 {
        record.count(1, 0);
    }
    record.count(1, 1);
    record.count(2, 0);
    assert_eq!(
        (record.reads(1, 0), record.reads(1, 1), record.reads(2, 0)),
        (3, 1, 1)
    );
    record.forget(1, &[0, 1]);
    assert_eq!(
        (record.reads(1, 0), record.reads(1, 1), record.reads(2, 0)),
        (0, 0, 1)
    );
}

/// Two directory stores holding one backup of chunk 4: region 0 holds data, region 1
/// none (zeroes), region 2 holds data.
struct Backup {
    _tmp: tempfile::TempDir,
    specs: Vec<StoreSpec>,
    dirs: Vec<std::path::PathBuf>,
    segment: Hash,
    objects: [Hash; 2],
    regions: [Vec<u8>; 2],
}

const CHUNK: u64 = 4;

async fn backup_in_two_stores() -> Backup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let regions = [region_bytes(0, 256), region_bytes(2, 256)];
    let enc: Vec<region::Encoded> = regions
        .iter()
        .map(|r| region::encode(r).expect("non-zero"))
        .collect();
    let segment = manifest::Segment {
        format: manifest::FORMAT,
        chunk: CHUNK,
        regions: vec![(0, enc[0].hash), (2, enc[1].hash)],
    };
    let (seg_hash, seg_bytes) = segment.encode();
    let mut specs = Vec::new();
    let mut dirs = Vec::new();
    for name in ["zone-a", "zone-b"] {
        let dir = tmp.path().join(name);
        let spec = StoreSpec {
            name: name.into(),
            zone: name.into(),
            kind: StoreKind::Dir {
                path: dir.to_string_lossy().into_owned(),
            },
        };
        let store = Store::open(&spec).expect("open");
        store.check().await.expect("marker");
        for e in &enc {
            store
                .put(&keys::object(&e.hash), e.bytes.clone())
                .await
                .expect("put object");
        }
        store
            .put(&keys::segment(&seg_hash), seg_bytes.clone())
            .await
            .expect("put segment");
        specs.push(spec);
        dirs.push(dir);
    }
    Backup {
        _tmp: tmp,
        specs,
        dirs,
        segment: seg_hash,
        objects: [enc[0].hash, enc[1].hash],
        regions,
    }
}

impl Backup {
    fn answer(&self) -> RestoreSource {
        RestoreSource {
            backup: 9,
            segment: Some(self.segment),
            stores: self.specs.clone(),
        }
    }

    /// Overwrites the key in store `i` with bytes that are not what its name says.
    fn corrupt(&self, i: usize, key: &str) {
        std::fs::write(self.dirs[i].join(key), b"not what its name says").expect("corrupt");
    }

    fn remove(&self, i: usize, key: &str) {
        std::fs::remove_file(self.dirs[i].join(key)).expect("remove");
    }
}

fn lazy() -> Arc<Lazy> {
    Arc::new(Lazy::new(
        1,
        Vec::new(),
        Default::default(),
        Default::default(),
    ))
}

/// A read spanning regions 0..=2 whose unfilled blocks lie in each: region 0's object is
/// corrupt in the first store, so it comes from the second; region 1 has no object (its
/// blocks stay zeroes, nothing to hydrate); held blocks are untouched. Then, every object
/// gone from both stores, the same read is served from the regions kept.
#[tokio::test]
async fn a_read_of_unfilled_blocks_skips_a_corrupt_copy_for_the_next_stores() {
    let b = backup_in_two_stores().await;
    b.corrupt(0, &keys::object(&b.objects[0]));
    let lazy = lazy();
    let source = Arc::new(
        source_of(&lazy.stores, 1, CHUNK, b.answer())
            .await
            .expect("source"),
    );
    // Blocks 255..=512 of the chunk: the last of region 0, all of region 1, the first of 2.
    let offset = 255 * BLOCK;
    let len = (258 * BLOCK) as usize;
    let mut held = vec![0xEEu8; len];
    let unfilled: Vec<u32> = vec![255, 300, 512];
    for &u in &unfilled {
        let s = (u64::from(u) * BLOCK - offset) as usize;
        held[s..s + BLOCK as usize].fill(0);
    }
    let (read, fetched) = lazy
        .fill(&source, CHUNK, offset, Bytes::from(held.clone()), &unfilled)
        .await
        .expect("filled");
    let mut want = held;
    let block = |v: &[u8], i: usize| v[i * BLOCK as usize..(i + 1) * BLOCK as usize].to_vec();
    want[..BLOCK as usize].copy_from_slice(&block(&b.regions[0], 255));
    let last = len - BLOCK as usize;
    want[last..].copy_from_slice(&block(&b.regions[1], 0));
    assert!(
        read[..] == want[..],
        "the read differs from the backup's bytes"
    );
    let regions: Vec<u32> = fetched.iter().map(|(r, _)| *r).collect();
    assert_eq!(regions, [0, 2], "regions to hydrate");
    assert_eq!(&fetched[0].1[..], &b.regions[0][..]);

    for i in 0..2 {
        for h in &b.objects {
            b.remove(i, &keys::object(h));
        }
    }
    let (again, _) = lazy
        .fill(&source, CHUNK, offset, Bytes::from(want.clone()), &unfilled)
        .await
        .expect("served from the regions kept");
    assert!(again[..] == want[..]);
}

/// A store unreachable (an outage) keeps the chunk's source: the retry repeats only the
/// fetch; a copy missing in every store forgets it (the managers may name another).
#[tokio::test]
async fn only_a_missing_or_corrupt_copy_forgets_the_source() {
    let b = backup_in_two_stores().await;
    let lazy = lazy();
    let unreachable = StoreSpec {
        name: "gone".into(),
        zone: "z".into(),
        kind: StoreKind::Dir {
            path: b.dirs[0]
                .join("no such directory")
                .to_string_lossy()
                .into_owned(),
        },
    };
    let regions = [(0, b.objects[0])];
    let cached = |specs: Vec<StoreSpec>| {
        let lazy = lazy.clone();
        async move {
            lazy.sources
                .get(1, CHUNK, move || async move {
                    Ok(Source::with_objects(9, specs, &regions))
                })
                .await
                .expect("source")
        }
    };
    let source = cached(vec![unreachable]).await;
    let err = lazy
        .region(&source, CHUNK, 0, b.objects[0])
        .await
        .expect_err("fetched from an unreachable store");
    assert_eq!(err.why, Why::Transport, "{err}");
    lazy.failed(1, CHUNK, &err);
    assert_eq!(lazy.sources.cached(), 1, "forgotten on an outage");

    lazy.sources.forget(1, CHUNK);
    for i in 0..2 {
        b.remove(i, &keys::object(&b.objects[0]));
    }
    let source = cached(b.specs.clone()).await;
    let err = lazy
        .region(&source, CHUNK, 0, b.objects[0])
        .await
        .expect_err("fetched a missing object");
    assert_eq!(err.why, Why::Bad, "{err}");
    lazy.failed(1, CHUNK, &err);
    assert_eq!(lazy.sources.cached(), 0, "kept with its copies missing");
}

/// An object corrupt in every store is never served: the read fails, naming the region,
/// the chunk and each store.
#[tokio::test]
async fn a_region_corrupt_in_every_store_fails_the_read() {
    let b = backup_in_two_stores().await;
    for i in 0..2 {
        b.corrupt(i, &keys::object(&b.objects[1]));
    }
    let lazy = lazy();
    let source = Arc::new(
        source_of(&lazy.stores, 1, CHUNK, b.answer())
            .await
            .expect("source"),
    );
    let err = lazy
        .fill(
            &source,
            CHUNK,
            512 * BLOCK,
            Bytes::from(vec![0; 4096]),
            &[512],
        )
        .await
        .expect_err("a corrupt region served")
        .msg;
    for part in [
        "restore: fetching region 2 of chunk 4 from store zone-a",
        "from store zone-b",
        "corrupt",
        "backup 9",
    ] {
        assert!(err.contains(part), "{err:?} lacks {part:?}");
    }
}

/// A segment missing or corrupt in the first store is read from the next; one missing
/// everywhere fails, and a chunk the backup holds nothing of needs no segment.
#[tokio::test]
async fn a_segment_is_read_from_the_next_store_when_the_first_fails() {
    let b = backup_in_two_stores().await;
    let lazy = lazy();
    b.corrupt(0, &keys::segment(&b.segment));
    let source = source_of(&lazy.stores, 1, CHUNK, b.answer())
        .await
        .expect("from the second store");
    assert_eq!(
        (source.object(0), source.object(1), source.object(2)),
        (Some(b.objects[0]), None, Some(b.objects[1]))
    );
    b.remove(1, &keys::segment(&b.segment));
    let err = source_of(&lazy.stores, 1, CHUNK, b.answer())
        .await
        .expect_err("no store serves the segment")
        .msg;
    assert!(err.contains("zone-a") && err.contains("zone-b"), "{err}");
    let err = source_of(&lazy.stores, 1, CHUNK + 1, b.answer())
        .await
        .expect_err("a segment of another chunk")
        .msg;
    assert!(err.contains("corrupt") || err.contains("not 5"), "{err}");
    let none = RestoreSource {
        segment: None,
        ..b.answer()
    };
    let source = source_of(&lazy.stores, 1, CHUNK, none)
        .await
        .expect("zeroes");
    assert_eq!(source.object(0), None);
}
