//! The Raft group's own rules: compaction bounds, and a manager with no membership.

use raft::eraftpb::{Message, MessageType};

use std::time::Duration;

use super::compaction::{COMPACT_ROWS, compaction_upto};
use super::*;
use crate::db::Db;
use crate::peer::encode_batch;
use crate::peer::{Parts, decode_frame};
use crate::raft_log::RaftLog;
use tessera_net::FrameReader;

#[test]
fn compaction_keeps_its_bounds() {
    // (applied, first, last, keep, nothing, hold) -> upto
    let cases = [
        // Not yet twice `keep` applied: nothing; then down to `keep` behind.
        ((20, 1, 25, 10, false, u64::MAX), None),
        ((21, 1, 25, 10, false, u64::MAX), Some(11)),
        // A peer with nothing: everything applied, however short the log.
        ((3, 1, 5, 10, true, u64::MAX), Some(3)),
        ((0, 1, 5, 10, true, u64::MAX), None),
        // Never past a snapshot being taken or sent and not yet matched.
        ((500, 1, 500, 10, false, 300), Some(300)),
        ((500, 1, 500, 10, true, 300), Some(300)),
        ((500, 301, 500, 10, true, 300), None),
        // A long log goes in steps of COMPACT_ROWS.
        ((50_000, 1, 50_000, 10, false, u64::MAX), Some(COMPACT_ROWS)),
        (
            (50_000, COMPACT_ROWS + 1, 50_000, 10, false, u64::MAX),
            Some(2 * COMPACT_ROWS),
        ),
    ];
    for ((applied, first, last, keep, nothing, hold), want) in cases {
        assert_eq!(
            compaction_upto(applied, first, last, keep, nothing, hold),
            want,
            "applied {applied}, log {first}..={last}, keep {keep}, nothing {nothing}, \
             hold {hold}"
        );
    }
}

fn msg(t: MessageType, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = 2;
    m.to = 3;
    m.term = term;
    m
}

/// Raft §5.2/§5.4: a vote is only for a candidate whose log is at least as up to date;
/// a manager with no membership knows no log at all, so it must not vote, nor be told
/// to commit what it does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_without_membership_votes_for_no_one_and_survives_a_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = Db::open(dir.path()).unwrap();
    let (log, loaded) = RaftLog::open(db.database(), db.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = Options {
        id: 3,
        members: vec![
            ManagerPeer {
                id: 2,
                addr: listener.local_addr().unwrap().to_string(),
            },
            ManagerPeer {
                id: 3,
                addr: "127.0.0.1:1".into(),
            },
        ],
        join: true,
        log_keep: 10,
        security: Default::default(),
    };
    let (replica, task) = Consensus::start(opts, log, loaded, 0).unwrap();
    let mut vote = msg(MessageType::MsgRequestVote, 5);
    vote.index = 40;
    vote.log_term = 4;
    let mut pre_vote = msg(MessageType::MsgRequestPreVote, 6);
    pre_vote.index = 40;
    pre_vote.log_term = 4;
    let mut heartbeat = msg(MessageType::MsgHeartbeat, 5);
    heartbeat.commit = 50;
    let mut append = msg(MessageType::MsgAppend, 5);
    append.index = 39;
    append.log_term = 4;
    for m in [vote, pre_vote, heartbeat, append] {
        replica
            .receive(&encode_batch(&[m]), &mut Parts::default(), None)
            .unwrap();
    }
    let (stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("no message from the blank manager")
        .unwrap();
    let mut reader = FrameReader::new(stream);
    let mut parts = Parts::default();
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Ok(Some(f))) = tokio::time::timeout_at(until, reader.next()).await {
        got.extend(decode_frame(&f.body, &mut parts).unwrap());
    }
    let kinds: Vec<MessageType> = got.iter().map(|m| m.get_msg_type()).collect();
    assert!(
        !kinds.contains(&MessageType::MsgRequestVoteResponse)
            && !kinds.contains(&MessageType::MsgRequestPreVoteResponse),
        "{got:?}"
    );
    assert!(
        kinds.contains(&MessageType::MsgHeartbeatResponse),
        "{got:?}"
    );
    // The append is refused down to index 0, so that the leader sends a snapshot.
    let reject = got
        .iter()
        .find(|m| m.get_msg_type() == MessageType::MsgAppendResponse)
        .expect("append not answered");
    assert!(reject.reject && reject.reject_hint == 0 && reject.term == 5);
    // Still running: it knows the leader from the heartbeat.
    assert_eq!(replica.status().leader, Some(2));
    task.stop().await;
}
