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
