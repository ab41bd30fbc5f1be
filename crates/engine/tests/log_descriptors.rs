//! The shared log in a process out of descriptors: a batch waits for one, as for disk
//! space, and is never refused or made fatal by it.
//!
//! The only test of its binary, because it lowers the process's descriptor limit.

use std::fs::File;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use tessera_engine::{EntryKind, Error, GroupWrite, Log, LogEntry, LogOptions};

fn big(index: u64) -> GroupWrite {
    GroupWrite {
        group: 1,
        entries: vec![LogEntry {
            term: 1,
            index,
            kind: EntryKind::Normal,
            data: Bytes::from(vec![index as u8; 8 << 10]),
        }],
        slots: vec![],
    }
}

fn queue(log: &Log, index: u64) -> mpsc::Receiver<Result<(), Error>> {
    let (tx, rx) = mpsc::channel();
    log.append(
        vec![big(index)],
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx
}

/// Every descriptor the process may open, taken.
fn hoard() -> Vec<File> {
    let mut files = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => files.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return files,
            Err(e) => panic!("open /dev/null: {e}"),
        }
    }
}

/// Out of descriptors when the log needs its next segment: first none at all (the segment
/// file cannot be opened), then one (the segment opens, the directory to fsync does not).
/// Neither refuses the batch nor stops the log; once descriptors are released it goes on.
#[test]
fn a_log_out_of_descriptors_waits_instead_of_failing() {
    let limit = libc::rlimit {
        rlim_cur: 64,
        rlim_max: 64,
    };
    // SAFETY: setrlimit reads the struct passed by reference; it only lowers this
    // process's own limit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
    let tmp = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 64 << 10,
    };
    let (log, _) = Log::open(tmp.path(), opts.clone()).unwrap();
    queue(&log, 1).recv().unwrap().unwrap();
    // Let the spare segment be made while descriptors remain.
    std::thread::sleep(Duration::from_millis(300));
    let mut hoarded = hoard();
    let mut index = 2;
    let waiting = loop {
        let rx = queue(&log, index);
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => r.unwrap_or_else(|e| panic!("append {index} refused: {e}")),
            Err(_) => break rx,
        }
        index += 1;
        assert!(index < 40, "the log must need a new segment");
    };
    // One descriptor: the segment opens, the directory to fsync does not.
    drop(hoarded.pop());
    if let Ok(r) = waiting.recv_timeout(Duration::from_secs(1)) {
        panic!("with one descriptor free, append {index} was answered {r:?}");
    }
    drop(hoarded);
    waiting
        .recv_timeout(Duration::from_secs(10))
        .expect("answered once descriptors are released")
        .unwrap_or_else(|e| panic!("append {index}: {e}"));
    for i in index + 1..index + 10 {
        queue(&log, i)
            .recv_timeout(Duration::from_secs(10))
            .expect("answered")
            .unwrap_or_else(|e| panic!("append {i} after descriptors were released: {e}"));
    }
    log.shutdown();
    drop(log);
    let (_, rec) = Log::open(tmp.path(), opts).unwrap();
    let entries = &rec.groups[&1].entries;
    assert_eq!(entries.first().map(|e| e.index), Some(1));
    assert_eq!(entries.last().map(|e| e.index), Some(index + 9));
}
