//! Group commit of the shared log: how many 4 KiB entries per second, and how many
//! fdatasyncs per entry, when 1, 8 or 64 replica groups each append at queue depth 1
//! (append one entry, wait for its `done`, append the next: what Raft does per group).
//!
//! One criterion iteration is one round: every group appends one entry, so the reported
//! throughput is entries/s. Each group is a thread; they are not synchronised per round,
//! only started together. fsyncs per entry comes from `Log::stats().syncs` and is printed
//! to stderr (criterion has no custom metrics): with group commit it should fall towards
//! 1/groups as groups are added.
//!
//! The log lives in a temporary directory under `CARGO_TARGET_TMPDIR` (the real filesystem
//! of the target directory, not tmpfs), or under `$TESSERA_BENCH_DIR` if set.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Barrier;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tessera_engine::{EntryKind, GroupWrite, Log, LogEntry, LogOptions};

const ENTRY_SIZE: usize = 4096;
/// Each group compacts its log this often, so obsolete segments get recycled and the
/// directory stays bounded however long the benchmark runs.
const COMPACT_EVERY: u64 = 128;

fn bench_root() -> PathBuf {
    std::env::var_os("TESSERA_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

/// Appends `rounds` entries to `group`, one at a time, each after the previous is durable.
/// `next_index` is the group's next Raft index, carried across calls.
fn run_group(log: &Log, group: u64, next_index: &mut u64, rounds: u64, payload: &Bytes) {
    let (tx, rx) = mpsc::sync_channel(1);
    for _ in 0..rounds {
        let index = *next_index;
        *next_index += 1;
        let write = GroupWrite {
            group,
            entries: vec![LogEntry {
                term: 1,
                index,
                kind: EntryKind::Normal,
                data: payload.clone(),
            }],
            slots: Vec::new(),
        };
        let tx = tx.clone();
        log.append(
            vec![write],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv()
            .expect("log writer dropped the callback")
            .expect("log append failed");
        if index.is_multiple_of(COMPACT_EVERY) {
            log.compact(group, index);
        }
    }
}

fn log_group_commit(c: &mut Criterion) {
    let root = bench_root();
    std::fs::create_dir_all(&root).expect("create benchmark directory");
    let payload = Bytes::from(vec![0xA5u8; ENTRY_SIZE]);

    let mut g = c.benchmark_group("log_group_commit");
    // Each iteration costs at least one fdatasync (milliseconds on many disks).
    g.sampling_mode(SamplingMode::Flat);
    for groups in [1u64, 8, 64] {
        let tmp = tempfile::Builder::new()
            .prefix("tessera-log-bench-")
            .tempdir_in(&root)
            .expect("create log directory");
        let (log, _) = Log::open(tmp.path(), LogOptions::default()).expect("open log");
        // Next Raft index per group, carried across criterion's calls.
        let mut indexes: Vec<u64> = vec![1; groups as usize];
        let entries = Cell::new(0u64);
        let syncs = Cell::new(0u64);
        let busy = Cell::new(Duration::ZERO);

        g.throughput(Throughput::Elements(groups));
        g.bench_function(format!("groups={groups}"), |b| {
            b.iter_custom(|rounds| {
                let before = log.stats().syncs;
                let start_line = Barrier::new(groups as usize + 1);
                let start = std::thread::scope(|s| {
                    for (group, next) in indexes.iter_mut().enumerate() {
                        let (log, payload, start_line) = (&log, &payload, &start_line);
                        s.spawn(move || {
                            start_line.wait();
                            run_group(log, group as u64 + 1, next, rounds, payload);
                        });
                    }
                    start_line.wait();
                    Instant::now()
                });
                // Leaving the scope joined every group thread: all entries are durable.
                let elapsed = start.elapsed();
                entries.set(entries.get() + rounds * groups);
                syncs.set(syncs.get() + (log.stats().syncs - before));
                busy.set(busy.get() + elapsed);
                elapsed
            })
        });
        let (n, s, t) = (entries.get(), syncs.get(), busy.get());
        if n > 0 {
            eprintln!(
                "log_group_commit groups={groups}: {:.3} fsyncs/entry ({s} fdatasyncs for {n} \
                 entries, {:.0} entries/s, {:.0} fdatasyncs/s over all runs)",
                s as f64 / n as f64,
                n as f64 / t.as_secs_f64(),
                s as f64 / t.as_secs_f64(),
            );
        }
        log.shutdown();
        drop(log);
        drop(tmp);
    }
    g.finish();
}

/// Keeps the run short by default; `--sample-size` etc. on the command line still win.
fn config() -> Criterion {
    Criterion::default().sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = log_group_commit
}
criterion_main!(benches);
