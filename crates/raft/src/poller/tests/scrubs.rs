//! Scrub entries through the poller: `Event::Scrub` checked and proposed by the leader, its
//! mark starting a watch when applied, and its repair fixing a rotten block here.

use tessera_proto::command::{CmdOp, Command, Wanted};

use super::*;

fn scrub(n: &mut Node, cmd: Command) -> Arc<Mutex<Option<Reply>>> {
    let got = Arc::new(Mutex::new(None));
    let g2 = got.clone();
    n.poller.handle(Event::Scrub {
        group: GROUP,
        cmd,
        respond: Box::new(move |r| *g2.lock().unwrap() = Some(r)),
    });
    n.settle();
    got
}

fn scrub_cmd(op: CmdOp, data: Bytes) -> Command {
    Command {
        op,
        volume: 1,
        chunk: 0,
        offset: 0,
        len: 4096,
        id: 0,
        epoch: 0,
        seq: 0,
        data,
    }
}

fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if let Some(found) = find(&p, name) {
                return Some(found);
            }
        } else if p.file_name().is_some_and(|f| f == name) {
            return Some(p);
        }
    }
    None
}

fn bad_request(r: &Arc<Mutex<Option<Reply>>>) -> bool {
    matches!(*r.lock().unwrap(), Some(Reply::BadRequest(_)))
}

/// A block rotten on this replica: the read fails; a mark and a repair of it proposed
/// through `Event::Scrub` bring the block back, and malformed scrub entries are refused.
#[test]
fn a_scrub_mark_and_repair_through_the_log_fix_a_rotten_block() {
    use std::os::unix::fs::FileExt;
    let mut n = leader();
    let w = submit(&mut n, write(0xA, 0x11));
    ack_appends(&mut n);
    assert!(ok(&w));
    let dat = find(&n.dir.path().join("groups"), "00000000.dat").expect("chunk file");
    let f = std::fs::OpenOptions::new().write(true).open(dat).unwrap();
    f.write_all_at(&[0x99], 77).unwrap();
    let got = submit_read(&mut n);
    assert!(matches!(*got.lock().unwrap(), Some(Reply::Corrupt(_))));

    // Refused: a mark of 0, another op, an id, a repair that does not decode.
    let zero = scrub(
        &mut n,
        scrub_cmd(CmdOp::ScrubMark, Command::scrub_mark_data(0)),
    );
    let write_op = scrub(
        &mut n,
        scrub_cmd(CmdOp::Write, Bytes::from(vec![0u8; 4096])),
    );
    let mut with_id = scrub_cmd(CmdOp::ScrubMark, Command::scrub_mark_data(5));
    with_id.id = 3;
    let with_id = scrub(&mut n, with_id);
    let junk = scrub(
        &mut n,
        scrub_cmd(CmdOp::Repair, Bytes::from_static(b"junk")),
    );
    for r in [&zero, &write_op, &with_id, &junk] {
        assert!(bad_request(r), "{:?}", r.lock().unwrap());
    }

    let mark = scrub(
        &mut n,
        scrub_cmd(CmdOp::ScrubMark, Command::scrub_mark_data(77)),
    );
    ack_appends(&mut n);
    assert!(ok(&mark), "{:?}", mark.lock().unwrap());
    let watches = n.poller.watches.clone();
    assert!(
        watches.watch(GROUP, 77).is_some(),
        "the mark's watch started"
    );
    let data = Command::repair_data(77, 1, &[Wanted::Data], &[0x11; 4096]);
    let repair = scrub(&mut n, scrub_cmd(CmdOp::Repair, data));
    ack_appends(&mut n);
    assert!(ok(&repair), "{:?}", repair.lock().unwrap());
    assert_eq!(watches.repair_blocks_applied(), 1);
    let got = submit_read(&mut n);
    match &*got.lock().unwrap() {
        Some(Reply::Ok(data)) => assert!(data.iter().all(|&x| x == 0x11)),
        other => panic!("read after the repair: {other:?}"),
    }
}
