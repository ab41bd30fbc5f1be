//! The process-level nemesis: real processes (three managers, five storage nodes, two NBD
//! gateways), clients reading and writing 4 KiB blocks over NBD, and faults one after the
//! other: SIGKILL of storage nodes, SIGSTOP of group leaders, two replicas of a group
//! stalled past the client's request timeout, leadership transfers under load, SIGKILL of
//! the leading manager and of a gateway. Afterwards every block's history must be
//! linearizable (a per-block register check, `nemesis/checker.rs`), every snapshot taken
//! meanwhile too (read back as reads of its create request's interval,
//! `nemesis/snapshots.rs`, which also deletes, clones and flattens), with minimum counts of
//! acknowledged writes, reads and of every fault kind, so a run that did nothing fails.
//! One gateway at a time holds the volume's read-write attachment: clients of the other
//! are refused and move over. When the holder is killed, its lease runs out and the next
//! gateway attaches and fences the volume; a killed gateway's unanswered write that landed
//! after that fence is a violation (`bound_fenced_writes`).
//!
//! CI runs the short mode (one round of every fault, about a minute of faults). The long
//! mode is the same test with `TESSERA_NEMESIS_SECS` set: `bench/nemesis.sh` runs it for
//! 30 minutes on a release build. `TESSERA_NEMESIS_SEED` replays the nemesis's and the
//! clients' random choices (not the timing). `TESSERA_NEMESIS_KEEP=1` keeps the processes'
//! logs, data and `history.txt` (every operation, ordered by invocation) after a pass too;
//! a failure always keeps them.
//!
//! Layout: `nemesis/checker.rs` decides linearizability, `nemesis/workload.rs` is the
//! clients and their history (over `tessera_nbd::testing`, the tests' NBD client),
//! `nemesis/faults.rs` the faults; this file wires them and states what must hold.

#[path = "nemesis/checker.rs"]
mod checker;
mod common;
#[path = "nemesis/faults.rs"]
mod faults;
#[path = "nemesis/snapshots.rs"]
mod snapshots;
#[path = "nemesis/workload.rs"]
mod workload;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use checker::{Call, Observed, Op};
use common::{Cluster, Gateway, Opts};
use faults::{ALL, Nemesis};
use workload::{BLOCKS, Outcome, Record, Workload};

const MANAGERS: usize = 3;
const NODES: usize = 5;
const GROUPS_PER_NODE: u32 = 4;
const CLIENTS: usize = 6;
const VOLUME: &str = "nemesis";
/// Seconds of faults in the short mode (at least one round of every fault runs anyway).
const SHORT_SECS: u64 = 45;

// Minimum counts of the short mode; a long run scales them with its length.
const MIN_ACKED_WRITES: usize = 1000;
const MIN_OK_READS: usize = 1000;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_block_stays_linearizable_through_kills_stalls_and_transfers() {
    let started = Instant::now();
    let secs = env_u64("TESSERA_NEMESIS_SECS").unwrap_or(SHORT_SECS);
    let seed = env_u64("TESSERA_NEMESIS_SEED").unwrap_or_else(rand::random);
    eprintln!("nemesis: seed {seed:#x}, {secs} s of faults (TESSERA_NEMESIS_SEED to replay)");

    let c = Cluster::start(Opts {
        managers: MANAGERS,
        nodes: NODES,
        groups_per_node: GROUPS_PER_NODE,
        ..Opts::default()
    });
    c.wait_ready(NODES).await;
    tokio::task::block_in_place(|| {
        c.create_volume(VOLUME, workload::VOLUME_SIZE, workload::CHUNK_SIZE)
    });
    // Map every block's chunk now (writing zeroes, the initial value), so that loaded groups
    // exist from the start and no first write needs the manager.
    {
        let vol = c.client().await.open(VOLUME).await.expect("open volume");
        for b in 0..BLOCKS {
            vol.write(workload::offset(b), Bytes::from(vec![0u8; workload::BLOCK]))
                .await
                .expect("map a chunk");
        }
    }
    let gateways: Vec<Gateway> = (0..2)
        .map(|_| tokio::task::block_in_place(|| c.gateway()))
        .collect();
    let w = Arc::new(Workload::new(
        VOLUME,
        gateways.iter().map(|g| g.addr()).collect(),
    ));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(workload::client(w.clone(), id, seed)))
        .collect();
    let admin = c.client().await;
    let snapshot_task = tokio::spawn(snapshots::run(w.clone(), admin.clone(), VOLUME.into()));

    // Faults, then a healthy cluster under load for a few seconds.
    let mut nemesis = Nemesis::new(c, gateways, w.clone(), seed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    nemesis
        .run(Instant::now() + Duration::from_secs(secs))
        .await;
    nemesis.heal().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.stop.store(true, Ordering::Relaxed);
    for t in clients {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a client did not stop within 60 s")
            .expect("client task");
    }
    let activity = tokio::time::timeout(Duration::from_secs(120), snapshot_task)
        .await
        .expect("the snapshot task did not stop within 120 s")
        .expect("snapshot task");

    // Every block read once more by a fresh connection: what survived the faults.
    final_sweep(&w).await;
    // Every snapshot still listed, read back as reads of the create request's interval.
    let snapshots_checked = snapshots::read_back(&w, &admin, VOLUME, &activity).await;

    let history: Vec<Record> = std::mem::take(&mut *w.history.lock().expect("history"));
    let mut ops: Vec<Op> = history.iter().map(|r| r.op.clone()).collect();
    let fenced = bound_fenced_writes(&mut ops, &history, &nemesis.gateway_kills);
    let c = &nemesis.c;
    let violations = checker::check(&ops);
    let keep = std::env::var_os("TESSERA_NEMESIS_KEEP").is_some();
    // A long run's history is hundreds of megabytes: written only when it will be kept.
    let history_path = c.dir.path().join("history.txt");
    if keep || !violations.is_empty() {
        write_history(&history_path, &history);
    }
    for v in violations.iter().take(20) {
        eprintln!("VIOLATION {v}");
        for &i in v.ops.iter().take(12) {
            eprintln!("    {}", describe(&history[i]));
        }
        if let Some(why) = explain(v, &ops) {
            eprintln!("    => {why}");
        }
    }
    self_test(&ops);

    let count = |write: bool, outcome: fn(&Outcome) -> bool| {
        history
            .iter()
            .filter(|r| matches!(r.op.call, Call::Write(_)) == write && outcome(&r.outcome))
            .count()
    };
    let acked = count(true, |o| *o == Outcome::Ok);
    let w_timed_out = count(true, |o| *o == Outcome::TimedOut);
    let w_lost = count(true, |o| *o == Outcome::ConnectionLost);
    let w_refused = count(true, |o| matches!(o, Outcome::Refused(_)));
    let reads_ok = count(false, |o| *o == Outcome::Ok);
    let reads_failed = count(false, |o| *o != Outcome::Ok);
    // Latency of answered operations: a stall of two replicas must show as a few slow
    // answers (a retry after the client's 10 s deadline), not as errors.
    // (Not the snapshot read-backs: their interval is their create request's.)
    let latencies: Vec<u64> = history
        .iter()
        .filter(|r| r.op.client < snapshots::READ_BACK_CLIENTS)
        .filter_map(|r| r.op.complete.map(|c| c - r.op.invoke))
        .collect();
    let max_latency = latencies.iter().copied().max().unwrap_or(0) as f64 / 1e9;
    let over_10s = latencies.iter().filter(|&&l| l > 10_000_000_000).count();
    let balance_transfers: usize = c
        .managers
        .iter()
        .map(|m| {
            std::fs::read_to_string(&m.log)
                .unwrap_or_default()
                .matches("transferring leadership")
                .count()
        })
        .sum();
    let faults: Vec<String> = nemesis
        .fired
        .iter()
        .map(|(f, n)| format!("{}={n}", f.name()))
        .collect();
    eprintln!(
        "nemesis summary: seed {seed:#x}, {secs} s of faults, wall time {:.1} s\n  \
         ops: {} total; writes: {acked} acknowledged, {} indeterminate ({w_timed_out} timed \
         out, {w_lost} connection lost, {w_refused} refused); reads: {reads_ok} ok, \
         {reads_failed} failed; client reconnects {}; slowest answer {max_latency:.1} s, \
         {over_10s} answers after more than 10 s\n  \
         unanswered writes of killed gateways bounded by the next attachment's fence: \
         {fenced}\n  \
         snapshots: {} taken, {} failed or unanswered, {} deleted ({} refused), \
         {snapshots_checked} read back and checked; clone of {:?} flattened: {}\n  \
         faults: {}; leadership transfers: {} started by the nemesis ({} seen done), {} by \
         the manager's leader balance; unsettled after a fault: {}; unexpected exits: {}\n  \
         violations: {}",
        started.elapsed().as_secs_f64(),
        history.len(),
        w_timed_out + w_lost + w_refused,
        w.reconnects.load(Ordering::Relaxed),
        activity.taken.len() - activity.failed,
        activity.failed,
        activity.deleted.len(),
        activity.delete_failed,
        activity.cloned_from,
        activity.flatten_started,
        faults.join(" "),
        nemesis.transfers_started,
        nemesis.transfers_seen,
        balance_transfers,
        nemesis.unsettled,
        nemesis.crashes.len(),
        violations.len(),
    );

    if keep {
        let dir = std::mem::replace(&mut nemesis.c.dir, tempfile::tempdir().expect("tempdir"));
        eprintln!("nemesis: files kept in {}", dir.keep().display());
    }
    assert!(
        violations.is_empty(),
        "{} linearizability violations (first: {}); history in {}",
        violations.len(),
        violations[0],
        history_path.display()
    );
    assert!(
        nemesis.crashes.is_empty(),
        "processes exited on their own: {:#?}",
        nemesis.crashes
    );
    let scale = (secs / SHORT_SECS).max(1) as usize;
    assert!(
        acked >= MIN_ACKED_WRITES * scale,
        "only {acked} acknowledged writes"
    );
    assert!(
        reads_ok >= MIN_OK_READS * scale,
        "only {reads_ok} successful reads"
    );
    assert!(
        snapshots_checked >= 1,
        "no snapshot was taken and read back: {} asked, {} failed",
        activity.taken.len(),
        activity.failed
    );
    assert!(
        activity.cloned_from.is_some() && activity.flatten_started,
        "no clone was made and flattened during the faults"
    );
    for f in ALL {
        assert!(
            nemesis.fired[&f] >= 1,
            "fault {} never fired: {faults:?}",
            f.name()
        );
    }
}

/// One writer per volume: a killed gateway's unanswered writes may still take effect, but
/// only before the fence of the attachment that follows its (its lease runs out, another
/// gateway attaches and fences every group before its first request), so before any
/// operation answered after the kill was even sent: the client connects (and the gateway
/// attaches) before it sends. Such a write that some read observed gets that instant as
/// its latest completion, so the checker flags one that landed later. Unobserved ones keep
/// no completion (they may never have taken effect). Returns how many were bounded.
fn bound_fenced_writes(ops: &mut [Op], history: &[Record], kills: &[(usize, u64)]) -> usize {
    let observed: std::collections::HashSet<u64> = ops
        .iter()
        .filter_map(|o| match &o.call {
            Call::Read(Observed::Value(id)) => Some(*id),
            _ => None,
        })
        .collect();
    let mut bounded = 0;
    for (n, &(k, killed)) in kills.iter().enumerate() {
        let since = kills[..n]
            .iter()
            .filter(|(g, _)| *g == k)
            .map(|(_, t)| *t)
            .max()
            .unwrap_or(0);
        let Some(bound) = history
            .iter()
            .filter(|r| r.outcome == Outcome::Ok && r.op.invoke > killed)
            .map(|r| r.op.invoke)
            .min()
        else {
            continue;
        };
        for (i, r) in history.iter().enumerate() {
            if r.gateway == k
                && r.op.invoke > since
                && r.op.invoke < killed
                && r.op.complete.is_none()
                && matches!(r.op.call, Call::Write(id) if observed.contains(&id))
            {
                ops[i].complete = Some(bound);
                bounded += 1;
            }
        }
    }
    bounded
}

/// Reads every block through a new connection, retrying until each read answers.
async fn final_sweep(w: &Workload) {
    w.stop.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut me = workload::Client {
        id: 1000,
        gateway: 0,
        timeout: workload::OP_TIMEOUT,
    };
    let mut conn = None;
    let mut block = 0;
    while block < BLOCKS {
        assert!(
            Instant::now() < deadline,
            "final reads not done in 120 s (at block {block})"
        );
        let Some(c) = conn.as_mut() else {
            conn = w.connect(&mut me.gateway).await;
            continue;
        };
        match w.read(c, me, block).await {
            Outcome::Ok => block += 1,
            Outcome::Refused(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Outcome::TimedOut | Outcome::ConnectionLost => conn = None,
        }
    }
    w.stop.store(true, Ordering::Relaxed);
}

/// The checker must flag corrupted versions of the run's own history: a stale read, a
/// lost acknowledged write, a value never written and a torn block, each appended after
/// everything else.
fn self_test(ops: &[Op]) {
    let end = ops
        .iter()
        .map(|o| o.complete.unwrap_or(o.invoke))
        .max()
        .unwrap_or(0);
    let read = |block, seen, k: u64| Op {
        block,
        call: Call::Read(seen),
        invoke: end + 10 * k + 1,
        complete: Some(end + 10 * k + 2),
        client: usize::MAX,
    };
    // Two acknowledged writes of one block, the first finished before the second began.
    let acked: Vec<&Op> = ops
        .iter()
        .filter(|o| matches!(o.call, Call::Write(_)) && o.complete.is_some())
        .collect();
    let pair = acked.iter().find_map(|a| {
        acked
            .iter()
            .find(|b| b.block == a.block && a.complete.is_some_and(|c| c < b.invoke))
            .map(|b| (*a, *b))
    });
    let (older, _newer) = pair.expect("no block had two acknowledged writes in sequence");
    let Call::Write(old_value) = older.call else {
        unreachable!()
    };
    let torn = {
        let mut d = workload::encode(old_value, older.block);
        d[3000] ^= 0x40;
        workload::decode(older.block, &d)
    };
    let cases = [
        (
            "stale read",
            read(older.block, Observed::Value(old_value), 1),
        ),
        (
            "lost acknowledged write",
            read(older.block, Observed::Zero, 2),
        ),
        (
            "value never written",
            read(older.block, Observed::Value(u64::MAX), 3),
        ),
        ("torn block", read(older.block, torn, 4)),
    ];
    for (what, bad) in cases {
        let mut h = ops.to_vec();
        h.push(bad);
        assert!(
            !checker::check(&h).is_empty(),
            "checker self-test: a {what} went unflagged"
        );
    }
    eprintln!(
        "checker self-test: stale read, lost write, unwritten value and torn block all flagged"
    );
}

/// The likeliest story behind a violation between two writes, when the history tells it:
/// one value read both before the other write was sent and after it was acknowledged.
fn explain(v: &checker::Violation, ops: &[Op]) -> Option<String> {
    let writes: Vec<(u64, &Op)> = v
        .ops
        .iter()
        .filter_map(|&i| match ops[i].call {
            Call::Write(x) => Some((x, &ops[i])),
            Call::Read(_) => None,
        })
        .collect();
    let reads_of = |x: u64| {
        v.ops
            .iter()
            .map(|&i| &ops[i])
            .filter(move |o| o.call == Call::Read(Observed::Value(x)))
    };
    for &(a, _) in &writes {
        for &(b, wb) in &writes {
            let Some(b_done) = wb.complete else { continue };
            let before = reads_of(a).any(|r| r.complete.is_some_and(|c| c < wb.invoke));
            let after = reads_of(a).any(|r| r.invoke > b_done);
            if a != b && before && after {
                return Some(format!(
                    "value {a:#x} was read before write {b:#x} was sent and again after it \
                     was acknowledged: one write took effect twice (a retried attempt \
                     applied after the first had already committed), undoing {b:#x}"
                ));
            }
        }
    }
    None
}

fn describe(r: &Record) -> String {
    let secs = |t: u64| t as f64 / 1e9;
    let what = match &r.op.call {
        Call::Write(v) => format!("write {v:#x}"),
        Call::Read(Observed::Value(v)) => format!("read -> {v:#x}"),
        Call::Read(Observed::Zero) => "read -> zeroes".into(),
        Call::Read(Observed::Corrupt(why)) => format!("read -> CORRUPT ({why})"),
    };
    let done =
        r.op.complete
            .map_or("never".to_string(), |t| format!("{:.6}", secs(t)));
    format!(
        "client {} via gateway {} block {}: {what} [{:.6} .. {done}] {:?}",
        r.op.client,
        r.gateway,
        r.op.block,
        secs(r.op.invoke),
        r.outcome
    )
}

fn write_history(path: &std::path::Path, history: &[Record]) {
    let mut order: Vec<&Record> = history.iter().collect();
    order.sort_by_key(|r| r.op.invoke);
    let mut s = String::new();
    for r in order {
        let _ = writeln!(s, "{}", describe(r));
    }
    if let Err(e) = std::fs::write(path, s) {
        eprintln!("could not write {}: {e}", path.display());
    }
}

#[test]
fn a_write_seen_on_both_sides_of_another_is_explained() {
    let op = |call, invoke, complete| Op {
        block: 0,
        call,
        invoke,
        complete,
        client: 0,
    };
    let h = vec![
        op(Call::Write(1), 0, None),
        op(Call::Read(Observed::Value(1)), 10, Some(11)),
        op(Call::Write(2), 20, Some(21)),
        op(Call::Read(Observed::Value(1)), 30, Some(31)),
    ];
    let v = checker::check(&h);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(explain(&v[0], &h).is_some_and(|s| s.contains("took effect twice")));
}
