//! Issue 12: replicas that cannot apply (see `stuck.rs`). One real poller over a real
//! shared log, its peers played by the test as in `tests.rs`; node 2 leads every group
//! this node follows, and the test plays the manager too.

use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::control::GroupSpec;
use tessera_proto::data::RaftBatch;

use super::tests::{Node, msg, spec};
use crate::Event;
use crate::group::INIT_INDEX;

const ME: u64 = 1;
/// The group that gets stuck on this node, and one that keeps writing beside it.
const STUCK: u64 = 1;
const BUSY: u64 = 2;
/// Entries of 64 KiB: four a round, in a log of 1 MiB segments.
const ENTRY: usize = 64 << 10;

fn spec_of(group: u64) -> GroupSpec {
    let mut s = spec(&[2, ME, 3]);
    s.group_id = group;
    s
}

/// A node following node 2 in both groups, flushing (so compacting its log) at every tick
/// and reporting a stalled replica stuck at once.
fn node() -> Node {
    let mut n = Node::open_as(tempfile::tempdir().unwrap(), ME, Duration::from_secs(2));
    flush_every_tick(&mut n);
    n.poller.cfg.stuck_after = Duration::ZERO;
    for g in [STUCK, BUSY] {
        n.poller.handle(Event::CreateGroup(spec_of(g)));
    }
    n.settle();
    n
}

fn flush_every_tick(n: &mut Node) {
    n.poller.cfg.flush_interval = Duration::ZERO;
    n.poller.next_flush = Instant::now();
}

fn deliver(n: &mut Node, group: u64, m: Message) {
    n.poller.handle(Event::Raft(RaftBatch {
        from_node: m.from,
        msgs: vec![(group, Bytes::from(m.write_to_bytes().unwrap()))],
    }));
    n.settle();
}

/// Node 2, leading term 6, appends `count` 64 KiB writes after index `prev` and commits
/// them.
fn writes(prev: u64, count: u64) -> Message {
    let mut m = msg(MessageType::MsgAppend, 2, 6);
    m.index = prev;
    m.log_term = if prev == INIT_INDEX { INIT_INDEX } else { 6 };
    m.commit = prev + count;
    let entries: Vec<Entry> = (prev + 1..=prev + count)
        .map(|index| Entry {
            index,
            term: 6,
            data: Command {
                seq: 0,
                op: CmdOp::Write,
                volume: 1,
                chunk: 0,
                offset: 0,
                len: ENTRY as u32,
                id: 0,
                epoch: 0,
                data: Bytes::from(vec![index as u8; ENTRY]),
            }
            .encode(),
            ..Default::default()
        })
        .collect();
    m.set_entries(entries.into());
    m
}

/// One round: a tick (and the flush it starts), then settled.
fn tick(n: &mut Node) {
    n.poller.tick(Instant::now());
    n.settle();
}

fn stuck_report(n: &Node, group: u64) -> Option<String> {
    let states = n.poller.states(Instant::now());
    states.into_iter().find(|s| s.group_id == group)?.stuck
}

fn segments(n: &Node) -> u64 {
    n.poller.log.stats().segments
}

/// Writes go on in the busy group while the test, as the manager, waits for the stuck
/// replica to be reported, has the group replace it (node 2 stops sending to it), and
/// asks for it to be destroyed until it is. Returns the log's size in segments at the end.
fn load_and_manage(n: &mut Node, rounds: u64, mut stuck_prev: Option<u64>) -> u64 {
    let mut busy_prev = n.poller.groups[&BUSY].raw.raft.raft_log.last_index();
    let mut reported = false;
    for _ in 0..rounds {
        deliver(n, BUSY, writes(busy_prev, 4));
        busy_prev += 4;
        if let Some(prev) = stuck_prev.as_mut() {
            // Still a member: its leader keeps replicating to it.
            deliver(n, STUCK, writes(*prev, 1));
            *prev += 1;
        }
        tick(n);
        if stuck_report(n, STUCK).is_some() {
            reported = true;
            // The manager replaces it; once the change is done the leader stops sending
            // to it.
            stuck_prev = None;
        }
        if reported && stuck_prev.is_none() {
            n.poller.handle(Event::RemoveGroup(STUCK));
            n.settle();
        }
        if std::env::var_os("STUCK_DEBUG").is_some() {
            eprintln!(
                "segments {} reported {reported} hosted {} quarantined {} busy applied {} flushed {}",
                segments(n),
                n.poller.groups.contains_key(&STUCK),
                n.poller.quarantined.contains_key(&STUCK),
                n.poller.groups[&BUSY].applied,
                n.poller.groups[&BUSY].flushed,
            );
        }
    }
    segments(n)
}

/// A follower whose apply fails (a full disk, through the fail point) would hold the
/// shared log from its first unapplied entry on: segments are recycled oldest first, so
/// every other group's writes would pile up behind it until the disk is full. It is
/// reported stuck (status and gauge), hands over nothing, is replaced, and once destroyed
/// the log shrinks back to a few segments while the other group keeps writing.
#[cfg(feature = "failpoints")]
#[test]
fn a_stuck_follower_is_reported_and_once_replaced_stops_pinning_the_shared_log() {
    let scenario = fail::FailScenario::setup();
    let mut n = node();
    fail::cfg("raft::apply", &format!("return({ME}/{STUCK})")).unwrap();
    deliver(&mut n, STUCK, writes(INIT_INDEX, 1));
    let g = &n.poller.groups[&STUCK];
    assert_eq!(g.applied, INIT_INDEX, "the fail point stalls the apply");
    assert!(g.stalled.is_some());
    let end = load_and_manage(&mut n, 60, Some(INIT_INDEX + 1));
    fail::remove("raft::apply");
    scenario.teardown();
    assert!(
        !n.poller.groups.contains_key(&STUCK),
        "the stuck replica was never reported, so never replaced and destroyed"
    );
    assert!(
        end <= 4,
        "the shared log holds {end} segments of 1 MiB: the stuck replica pinned them"
    );
    assert_eq!(n.poller.groups[&BUSY].applied, INIT_INDEX + 240);
    assert!(n.poller.counted_stuck.is_empty());
}

/// A replica quarantined at start (here: its chunk directory cannot be opened) is reported
/// stuck, and is destroyed on the manager's word like any removed replica: its log
/// entries no longer hold the shared log, and it does not come back at the next start.
#[test]
fn a_quarantined_replica_is_reported_and_destroyed_and_releases_the_shared_log() {
    let mut n = node();
    // Entries of the soon quarantined group, never flushed: they hold the log from here.
    deliver(&mut n, STUCK, writes(INIT_INDEX, 2));
    let dir = n
        .poller
        .cfg
        .data_dir
        .join("groups")
        .join(format!("{STUCK:016x}"));
    let n0 = n.restart_as(ME, Duration::from_secs(2));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let mut n = n0.restart_as(ME, Duration::from_secs(2));
    flush_every_tick(&mut n);
    assert!(n.poller.quarantined.contains_key(&STUCK));
    let why = stuck_report(&n, STUCK).expect("a quarantined replica is reported stuck");
    assert!(why.contains("quarantined"), "{why}");
    tick(&mut n);
    assert_eq!(n.poller.counted_stuck.len(), 1, "counted in the gauge");
    let end = load_and_manage(&mut n, 40, None);
    assert!(
        !n.poller.quarantined.contains_key(&STUCK),
        "the quarantined replica was not destroyed"
    );
    assert!(
        end <= 4,
        "the shared log holds {end} segments of 1 MiB: the quarantined replica pinned them"
    );
    let n = n.restart_as(ME, Duration::from_secs(2));
    assert!(!n.poller.quarantined.contains_key(&STUCK));
    assert!(!n.poller.groups.contains_key(&STUCK));
}

/// A leader whose apply fails would acknowledge writes (at commit) and never serve the
/// reads that follow (they wait on its applied index). Once its apply has failed it
/// answers reads and writes `Unavailable` (a write committed meanwhile too: its retry
/// finds it committed at the next leader), and hands its leadership to a caught-up voter.
#[cfg(feature = "failpoints")]
#[test]
fn a_leader_that_cannot_apply_acknowledges_nothing_it_cannot_read_and_hands_over() {
    use super::tests::{leader, ok, read, submit, write};
    use tessera_proto::data::Reply;
    let scenario = fail::FailScenario::setup();
    let mut n = leader();
    fail::cfg("raft::apply", &format!("return({ME}/1)")).unwrap();
    let w1 = submit(&mut n, write(0xA1, 0xa1));
    let w1_index = n.poller.groups[&1].raw.raft.raft_log.last_index();
    let w2 = submit(&mut n, write(0xA2, 0xa2));
    // Followers acknowledge w1 only: it commits (and is answered: no apply was tried
    // yet), then its apply fails.
    let appends: Vec<(u64, u64, u64)> = n
        .take_sent()
        .into_iter()
        .filter(|(_, m)| m.get_msg_type() == MessageType::MsgAppend && !m.entries.is_empty())
        .map(|(to, m)| (to, m.term, m.index + m.entries.len() as u64))
        .collect();
    let ack = |n: &mut Node, upto: u64| {
        for &(to, term, end) in &appends {
            let mut r = msg(MessageType::MsgAppendResponse, to, term);
            r.index = end.min(upto);
            n.poller.handle(Event::Raft(RaftBatch {
                from_node: to,
                msgs: vec![(1, Bytes::from(r.write_to_bytes().unwrap()))],
            }));
        }
        n.settle();
    };
    ack(&mut n, w1_index);
    assert!(ok(&w1), "committed before any apply was tried");
    assert!(n.poller.groups[&1].stalled.is_some());
    // w2 commits now, on a leader known to be stalled.
    ack(&mut n, u64::MAX);
    let w2 = w2.lock().unwrap().take();
    let read = submit(&mut n, read()).lock().unwrap().take();
    let w3 = submit(&mut n, write(0xA3, 0xa3)).lock().unwrap().take();
    super::tests::ack_appends(&mut n);
    tick(&mut n);
    let timeout_now = n
        .take_sent()
        .into_iter()
        .any(|(_, m)| m.get_msg_type() == MessageType::MsgTimeoutNow);
    fail::remove("raft::apply");
    scenario.teardown();
    assert!(
        matches!(w2, Some(Reply::Unavailable(_))),
        "a write committed on a stalled leader was answered {w2:?}"
    );
    assert!(
        matches!(read, Some(Reply::Unavailable(_))),
        "a read on a stalled leader was answered {read:?}"
    );
    assert!(
        matches!(w3, Some(Reply::Unavailable(_))),
        "a write to a stalled leader was answered {w3:?}"
    );
    assert!(
        timeout_now,
        "the stalled leader did not hand its leadership over"
    );
}

/// Like [`deliver`] and [`tick`], but giving up after `limit`: a log waiting for a full
/// disk answers nothing until something relieves it.
#[cfg(feature = "failpoints")]
fn deliver_for(n: &mut Node, group: u64, m: Message, limit: Duration) {
    n.poller.handle(Event::Raft(RaftBatch {
        from_node: m.from,
        msgs: vec![(group, Bytes::from(m.write_to_bytes().unwrap()))],
    }));
    n.settle_for(limit);
}

#[cfg(feature = "failpoints")]
fn tick_for(n: &mut Node, limit: Duration) {
    n.poller.tick(Instant::now());
    n.settle_for(limit);
}

/// Writes of `group` after `prev`, with a flush every round if `flush`, until the log
/// answers a batch no more (the `log::no_space` fail point stops new segment files).
/// Returns the last index written.
#[cfg(feature = "failpoints")]
fn write_until_the_log_waits(n: &mut Node, group: u64, mut prev: u64, flush: bool) -> u64 {
    for _ in 0..40 {
        deliver_for(n, group, writes(prev, 4), Duration::from_secs(2));
        prev += 4;
        if n.poller.groups[&group].persisting > 0 {
            return prev;
        }
        if flush {
            tick_for(n, Duration::from_secs(2));
        }
    }
    panic!("the log never ran out of segments");
}

/// Delivers writes of `group` from `prev` until the log has rolled into its second segment
/// (waiting on the roll, not on a clock: the spare segment comes from a helper thread that a
/// loaded machine may delay past the moment the disk fills), so that the full disk finds an
/// older segment for the compaction to free. Returns the next index.
#[cfg(feature = "failpoints")]
fn roll_before_the_disk_fills(n: &mut Node, group: u64, mut prev: u64) -> u64 {
    while n.poller.log.stats().segments < 2 {
        deliver_for(n, group, writes(prev, 4), Duration::from_secs(2));
        prev += 4;
        assert!(
            prev < INIT_INDEX + 200,
            "the log must roll into a second segment"
        );
    }
    prev
}

/// A full disk, and the log's batch waits for a segment. The flush of what was applied
/// before gives the log the compaction that frees one: its applied index and mark are
/// written as a checkpoint into the reserve, ahead of the waiting batch, instead of as an
/// append queued behind it whose callback would only then send the compaction. Nothing
/// is freed from outside; the node goes on writing on recycled segments, and a restart
/// finds every entry and the applied index.
#[cfg(feature = "failpoints")]
#[test]
fn a_full_disk_is_relieved_by_the_compaction_behind_the_nodes_own_flush() {
    let scenario = fail::FailScenario::setup();
    let mut n = Node::open_as(tempfile::tempdir().unwrap(), ME, Duration::from_secs(2));
    flush_every_tick(&mut n);
    n.poller.handle(Event::CreateGroup(spec_of(BUSY)));
    n.settle();
    deliver(&mut n, BUSY, writes(INIT_INDEX, 4));
    tick(&mut n);
    let next = roll_before_the_disk_fills(&mut n, BUSY, INIT_INDEX + 4);
    fail::cfg("log::no_space", "return").unwrap();
    // No flush meanwhile: the log fills every segment it has.
    let mut prev = write_until_the_log_waits(&mut n, BUSY, next, false);
    tick_for(&mut n, Duration::from_secs(10));
    let relieved = n.poller.groups[&BUSY].persisting == 0;
    for _ in 0..10 {
        if !relieved {
            break;
        }
        deliver_for(&mut n, BUSY, writes(prev, 4), Duration::from_secs(10));
        prev += 4;
        tick_for(&mut n, Duration::from_secs(10));
    }
    let stuck = n.poller.groups[&BUSY].persisting > 0;
    fail::remove("log::no_space");
    scenario.teardown();
    assert!(
        relieved,
        "the waiting batch was never written: the compaction behind the flush never came"
    );
    assert!(!stuck, "the log stalled again on a full disk");
    assert!(n.fatal.lock().unwrap().is_none());
    assert_eq!(n.poller.groups[&BUSY].applied, prev);
    let n = n.restart_as(ME, Duration::from_secs(2));
    let g = &n.poller.groups[&BUSY];
    assert_eq!(g.raw.raft.raft_log.last_index(), prev);
    assert!(
        g.applied >= prev - 4,
        "applied {} after the restart",
        g.applied
    );
}

/// A quarantined replica's entries pin the shared log (oldest segment first) and the disk
/// fills while the other group writes and flushes. Destroying the replica writes its
/// tombstone into the reserve, ahead of the batch waiting for a segment: the segments it
/// pinned are recycled and the node goes on, nothing freed from outside. It does not come
/// back at a restart.
#[cfg(feature = "failpoints")]
#[test]
fn a_full_disk_pinned_by_a_stuck_replica_is_relieved_by_destroying_it() {
    let scenario = fail::FailScenario::setup();
    let mut n = node();
    deliver(&mut n, STUCK, writes(INIT_INDEX, 2));
    let dir = n
        .poller
        .cfg
        .data_dir
        .join("groups")
        .join(format!("{STUCK:016x}"));
    let n0 = n.restart_as(ME, Duration::from_secs(2));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let mut n = n0.restart_as(ME, Duration::from_secs(2));
    flush_every_tick(&mut n);
    assert!(n.poller.quarantined.contains_key(&STUCK));
    // This process's first segment, and its spare, made before the disk fills.
    let busy = n.poller.groups[&BUSY].raw.raft.raft_log.last_index();
    deliver(&mut n, BUSY, writes(busy, 4));
    tick(&mut n);
    std::thread::sleep(Duration::from_millis(300));
    fail::cfg("log::no_space", "return").unwrap();
    let mut prev = write_until_the_log_waits(&mut n, BUSY, busy + 4, true);
    // The manager destroys the quarantined replica.
    n.poller.handle(Event::RemoveGroup(STUCK));
    n.settle_for(Duration::from_secs(10));
    let relieved = n.poller.groups[&BUSY].persisting == 0;
    for _ in 0..10 {
        if !relieved {
            break;
        }
        deliver_for(&mut n, BUSY, writes(prev, 4), Duration::from_secs(10));
        prev += 4;
        tick_for(&mut n, Duration::from_secs(10));
    }
    let stuck = n.poller.groups[&BUSY].persisting > 0;
    fail::remove("log::no_space");
    scenario.teardown();
    assert!(
        relieved,
        "the waiting batch was never written: the tombstone queued behind it never was"
    );
    assert!(!stuck, "the log stalled again on a full disk");
    assert!(n.fatal.lock().unwrap().is_none());
    assert!(!n.poller.quarantined.contains_key(&STUCK));
    let n = n.restart_as(ME, Duration::from_secs(2));
    assert!(!n.poller.quarantined.contains_key(&STUCK));
    assert!(!n.poller.groups.contains_key(&STUCK));
    assert_eq!(n.poller.groups[&BUSY].raw.raft.raft_log.last_index(), prev);
}
