//! `raft`: Raft batches from peers stepped into a hosted replica group.
//!
//! One storage node's multi-Raft machinery ([`RaftNode`], over a real shared log and real
//! chunk files in a scratch directory, 1 ms ticks) hosts group 1 with peers 2 and 3. The
//! input is a program: batches of raft-rs messages built from its fields (any type, term,
//! index, commit, entries carrying replicated commands or raw bytes, snapshots) or raw
//! message bytes, sent as a [`RaftBatch`] body from a peer (or a stranger), with waits
//! between them for ticks and the log's fsyncs. Admission (`crates/raft/src/admit.rs`)
//! must keep everything raft-rs would assert on away from it.
//!
//! Checked: no panic, in the poller or anywhere (the panic hook aborts); the node shuts
//! down when asked.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protobuf::{Message as _, ProtobufEnum as _};
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use tessera_engine::{ChunkStores, Log, LogOptions};
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::control::{GroupSpec, PeerInfo};
use tessera_proto::data::RaftBatch;
use tessera_raft::{FetchJob, NodeConfig, RaftNode, SnapshotFetcher, Transport};

use crate::input::Input;

/// This node, its group, and the group's other members.
const ME: u64 = 1;
const GROUP: u64 = 1;
const PEERS: [u64; 2] = [2, 3];

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
}

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let dir = crate::scratch_dir("raft");
    RUNTIME.with(|rt| rt.block_on(session(&dir, data)));
}

/// Drops what it is sent: the peers are played by the input.
struct Nowhere;

impl Transport for Nowhere {
    fn send(&self, _: u64, _: RaftBatch) {}
    fn set_peer(&self, _: u64, _: &str) {}
}

/// Every snapshot copy fails (worth a retry): the chunk data is not what this is about.
struct NoCopy;

impl SnapshotFetcher for NoCopy {
    fn fetch(
        &self,
        _: FetchJob,
        done: Box<dyn FnOnce(Result<(), tessera_raft::FetchError>) + Send>,
    ) {
        done(Err(tessera_raft::FetchError::Retry(
            "not in the fuzz target".into(),
        )))
    }
}

async fn session(dir: &std::path::Path, data: &[u8]) {
    let (log, recovered) = Log::open(
        &dir.join("log"),
        LogOptions {
            segment_size: 1 << 20,
        },
    )
    .expect("open the log");
    let chunks = Arc::new(ChunkStores::open(&dir.join("chunks")).expect("open the chunk stores"));
    let mut cfg = NodeConfig::new(ME, dir.to_path_buf());
    cfg.min_free_bytes = 0;
    cfg.tick = Duration::from_millis(1);
    cfg.election_ticks = 5;
    let node = RaftNode::start(
        cfg,
        log,
        recovered,
        chunks,
        Arc::new(Nowhere),
        Arc::new(NoCopy),
        Arc::new(|_| {}),
    )
    .expect("start the node");
    let peers = [ME, PEERS[0], PEERS[1]];
    node.create_group(GroupSpec {
        group_id: GROUP,
        peers: peers
            .iter()
            .map(|&id| PeerInfo {
                node_id: id,
                addr: format!("127.0.0.1:{id}"),
            })
            .collect(),
        joining: false,
        min_term: 0,
    });
    let mut input = Input::new(data);
    while !input.is_empty() {
        match input.u8() % 8 {
            0 => tokio::time::sleep(Duration::from_millis(u64::from(input.u8() % 16))).await,
            1 => {
                // Raw bytes as a message, from a member.
                let len = usize::from(input.u8());
                let msg = Bytes::copy_from_slice(input.bytes(len));
                node.step(RaftBatch {
                    from_node: PEERS[0],
                    msgs: vec![(GROUP, msg)],
                });
            }
            _ => {
                let from = [PEERS[0], PEERS[1], PEERS[0], 7][usize::from(input.u8() % 4)];
                let count = 1 + input.u8() % 3;
                let msgs = (0..count)
                    .map(|_| {
                        let group = if input.u8().is_multiple_of(16) {
                            2
                        } else {
                            GROUP
                        };
                        (
                            group,
                            Bytes::from(
                                message(&mut input, from).write_to_bytes().expect("encode"),
                            ),
                        )
                    })
                    .collect();
                // Through the wire format, as the storage node's server receives it.
                let body = RaftBatch {
                    from_node: from,
                    msgs,
                }
                .encode();
                node.step(RaftBatch::decode(&body).expect("a batch decodes"));
            }
        }
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }
    node.shutdown().await;
}

/// A raft-rs message of any type from `from`, its fields from the input.
fn message(input: &mut Input<'_>, from: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::from_i32(i32::from(input.u8() % 19)).unwrap_or_default());
    m.to = if input.u8().is_multiple_of(16) { 3 } else { ME };
    m.from = if input.u8().is_multiple_of(16) {
        3
    } else {
        from
    };
    m.term = u64::from(input.u8() % 16);
    m.log_term = u64::from(input.u8() % 16);
    m.index = u64::from(input.u8() % 32);
    m.commit = u64::from(input.u8() % 32);
    m.commit_term = u64::from(input.u8() % 16);
    let flags = input.u8();
    m.reject = flags & 1 != 0;
    m.reject_hint = u64::from(input.u8() % 32);
    if flags & 2 != 0 {
        m.context = Bytes::from_static(raft::CAMPAIGN_TRANSFER).to_vec().into();
    }
    for _ in 0..input.u8() % 4 {
        m.entries.push(entry(input));
    }
    if flags & 4 != 0 {
        let mut s = Snapshot::default();
        let meta = s.mut_metadata();
        meta.index = u64::from(input.u8() % 32);
        meta.term = u64::from(input.u8() % 16);
        let mut cs = ConfState::default();
        for id in 1..=4u64 {
            match input.u8() % 3 {
                0 => cs.voters.push(id),
                1 => cs.learners.push(id),
                _ => {}
            }
        }
        meta.set_conf_state(cs);
        let len = usize::from(input.u8() % 32);
        s.data = input.bytes(len).to_vec().into();
        m.set_snapshot(s);
    }
    m
}

fn entry(input: &mut Input<'_>) -> Entry {
    let mut e = Entry::default();
    let kind = input.u8();
    e.set_entry_type(match kind % 3 {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        _ => EntryType::EntryConfChangeV2,
    });
    e.term = u64::from(input.u8() % 16);
    e.index = u64::from(input.u8() % 32);
    e.data = if kind & 4 == 0 {
        command(input).encode().to_vec().into()
    } else {
        let len = usize::from(input.u8() % 64);
        input.bytes(len).to_vec().into()
    };
    e
}

/// A replicated command of any op over a small chunk range.
fn command(input: &mut Input<'_>) -> Command {
    let op = [
        CmdOp::Write,
        CmdOp::WriteZeroes,
        CmdOp::Discard,
        CmdOp::Fence,
    ][usize::from(input.u8() % 4)];
    let offset = u32::from(input.u16()) * 512;
    let len = if op == CmdOp::Write {
        u32::from(input.u8())
    } else {
        u32::from(input.u16())
    };
    Command {
        op,
        volume: u64::from(input.u8() % 3),
        chunk: u64::from(input.u8() % 3),
        offset,
        len,
        id: u128::from(input.u8()),
        epoch: u64::from(input.u8() % 4),
        seq: u64::from(input.u8() % 4),
        data: if op == CmdOp::Write {
            Bytes::from(vec![0xab; len as usize])
        } else {
            Bytes::new()
        },
    }
}
