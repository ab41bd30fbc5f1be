//! A power loss part way through a batch (the `log::tear` fail point keeps a prefix of its
//! records on disk): what replay then finds must be a state the log's users could have
//! been in, never one that forgets what was acknowledged before the batch.

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use tessera_engine::{EntryKind, Error, GroupWrite, Log, LogEntry, LogOptions};

fn entry(index: u64) -> LogEntry {
    LogEntry {
        term: 1,
        index,
        kind: EntryKind::Normal,
        data: Bytes::from_static(b"payload"),
    }
}

fn append(log: &Log, w: GroupWrite) -> mpsc::Receiver<Result<(), Error>> {
    let (tx, rx) = mpsc::channel();
    log.append(
        vec![w],
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx
}

fn answer(rx: mpsc::Receiver<Result<(), Error>>) -> Result<(), Error> {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the log must answer every append")
}

/// A replica installing a snapshot at index 20 writes its new applied point and compacts
/// everything at or below 20. If the compaction mark reaches the disk and the applied point
/// does not, replay drops entries 1..=5 (acknowledged) while the applied point still says 0:
/// the replica's log ends below what it acknowledged. The mark must never be durable ahead
/// of writes queued with it, however the batch is torn.
#[test]
fn a_torn_batch_never_keeps_a_compaction_mark_without_the_writes_queued_with_it() {
    let scenario = fail::FailScenario::setup();
    let opts = LogOptions {
        segment_size: 1 << 20,
    };
    // Every prefix of the batch: nothing, the first record, ..., all of it.
    for keep in 0..=3 {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), opts.clone()).unwrap();
        let acked = GroupWrite {
            group: 7,
            entries: (1..=5).map(entry).collect(),
            slots: vec![],
        };
        answer(append(&log, acked)).expect("a healthy append");

        fail::cfg("log::tear", &format!("return({keep})")).unwrap();
        log.compact(7, 20);
        let install = GroupWrite {
            group: 7,
            entries: vec![],
            slots: vec![(1, Bytes::from_static(b"applied=20"))],
        };
        let rx = append(&log, install);
        assert!(matches!(answer(rx), Err(Error::Fatal(_))));
        fail::remove("log::tear");
        log.shutdown();
        drop(log);

        let (_, rec) = Log::open(dir.path(), opts.clone()).unwrap();
        let Some(g) = rec.groups.get(&7) else {
            panic!("torn after {keep} records: the group and its acknowledged entries vanished");
        };
        let applied = g.slots.contains_key(&1);
        let last = g.entries.last().map_or(0, |e| e.index);
        assert!(
            applied || last == 5,
            "torn after {keep} records: entries up to {last} survive and the applied point \
             covering the rest is lost"
        );
    }
    scenario.teardown();
}
