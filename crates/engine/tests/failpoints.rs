//! Faults injected into the shared log (run with `--features failpoints`). Each case
//! configures its fail point and clears it; cases run serially (the registry is global).

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use tessera_engine::{EntryKind, Error, GroupWrite, Log, LogEntry, LogOptions};

fn write(group: u64, index: u64) -> GroupWrite {
    GroupWrite {
        group,
        entries: vec![LogEntry {
            term: 1,
            index,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"payload"),
        }],
        slots: vec![],
    }
}

fn append(log: &Log, w: GroupWrite) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel();
    log.append(
        vec![w],
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the log must answer every append")
}

/// After the kernel reported a failed fdatasync, dirty pages may be gone: the log must
/// fail that batch and every later one, never report success again, and a reopen must not
/// return the batch whose sync failed as if it were durable... unless its bytes did reach
/// the disk, which replay may legitimately find (it was never acknowledged).
#[test]
fn a_failed_fdatasync_is_fatal_for_good() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 1 << 20,
    };
    let (log, _) = Log::open(dir.path(), opts.clone()).unwrap();
    append(&log, write(1, 1)).expect("a healthy append");

    fail::cfg("log::fdatasync", "return").unwrap();
    assert!(matches!(append(&log, write(1, 2)), Err(Error::Fatal(_))));
    fail::remove("log::fdatasync");
    // The disk looks healthy again, but the log must not pretend it is.
    assert!(matches!(append(&log, write(1, 3)), Err(Error::Fatal(_))));
    log.shutdown();
    drop(log);

    // What was acknowledged before the failure is still there.
    let (_, rec) = Log::open(dir.path(), opts).unwrap();
    let g = &rec.groups[&1];
    assert_eq!(g.entries.first().map(|e| e.index), Some(1));
    assert!(
        g.entries.iter().all(|e| e.index != 3),
        "a batch refused after the failure was written"
    );
    scenario.teardown();
}

fn big(group: u64, index: u64) -> GroupWrite {
    let mut w = write(group, index);
    w.entries[0].data = Bytes::from(vec![index as u8; 8 << 10]);
    w
}

fn log_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|d| {
            let p = d.as_ref().unwrap().path();
            p.extension().is_some_and(|e| e == "log")
        })
        .count()
}

/// A full disk stops new segment files, never the work that frees them: while a batch
/// waits for room, compaction notes are still written (into the reserve the current
/// segment keeps for them) and the segments they free are recycled, so the waiting batch
/// goes through and the log runs on recycled files alone, losing nothing.
#[test]
fn a_full_disk_still_writes_marks_and_recycles_segments() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 64 << 10,
    };
    let (log, _) = Log::open(dir.path(), opts.clone()).unwrap();
    for i in 1..=20 {
        append(&log, big(1, i)).expect("append before the disk fills");
    }
    fail::cfg("log::no_space", "return").unwrap();
    // Append until the log needs a segment it cannot create (the spare made before the
    // disk filled is used up first).
    let mut stalled = None;
    for i in 21..=40 {
        let (tx, rx) = mpsc::channel();
        log.append(
            vec![big(1, i)],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => r.expect("append while the current segment has room"),
            Err(_) => {
                stalled = Some((i, rx));
                break;
            }
        }
    }
    let (waiting, rx) = stalled.expect("the log must run out of segments");
    // What the stalled batch waits for: the groups flush and compact behind it.
    log.compact(1, waiting - 1);
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a compaction while the disk is full must free a segment for the stalled batch");
    r.expect("the stalled batch, written once a segment was recycled");
    let files = log_files(dir.path());
    for i in waiting + 1..waiting + 40 {
        append(&log, big(1, i)).expect("append on recycled segments");
        log.compact(1, i - 1);
    }
    assert!(
        log_files(dir.path()) <= files + 1,
        "the log grew from {files} to {} segment files on a full disk",
        log_files(dir.path())
    );
    fail::remove("log::no_space");
    log.shutdown();
    drop(log);
    let (_, rec) = Log::open(dir.path(), opts).unwrap();
    let last = rec.groups[&1].entries.last().expect("entries survive");
    assert_eq!(last.index, waiting + 39);
    assert_eq!(last.data, Bytes::from(vec![last.index as u8; 8 << 10]));
    scenario.teardown();
}

/// Nobody frees space for a log being shut down: a batch waiting for room is answered
/// with `DiskFull` and the shutdown returns, instead of hanging the node's exit.
#[test]
fn a_shutdown_while_the_disk_is_full_refuses_the_waiting_batch() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 64 << 10,
    };
    let (log, _) = Log::open(dir.path(), opts).unwrap();
    fail::cfg("log::no_space", "return").unwrap();
    let mut waiting = None;
    for i in 1..=40 {
        let (tx, rx) = mpsc::channel();
        log.append(
            vec![big(1, i)],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(1)) {
            waiting = Some(rx);
            break;
        }
    }
    let rx = waiting.expect("the log must run out of segments");
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        log.shutdown();
        let _ = done_tx.send(());
    });
    let shut = done_rx.recv_timeout(Duration::from_secs(10));
    fail::remove("log::no_space");
    shut.expect("shutdown must not wait for disk space");
    let r = rx.recv_timeout(Duration::from_secs(1)).expect("answered");
    assert!(matches!(r, Err(Error::DiskFull(_))), "got {r:?}");
    scenario.teardown();
}
