//! Starting the managers' Raft group: [`Consensus::start`] restores it from the Raft log
//! (or founds it from the configured members), builds the raft-rs `RawNode` and spawns
//! the Raft task.
//!
//! Runs once per process. Must never write anything but the founding membership: the log
//! is the Raft task's from then on.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};

use raft::eraftpb::{ConfState, Snapshot};
use raft::storage::MemStorage;
use raft::{Config, RawNode};
use tokio::sync::{Notify, mpsc, watch};
use tracing::info;

use crate::error::Error;
use crate::raft_log::{Loaded, RaftLog};
use crate::state_snapshot::LogStorage;

use super::logger::logger;
use super::{Consensus, Options, RaftLoop, RaftTask, Shared, Status};

/// Ticks without a leader before a follower campaigns (randomised up to twice that).
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;

impl Consensus {
    /// Restores the group from `log` (creating it with `members` as voters on a new
    /// database) and starts the Raft task. `applied`: the last index whose effect is already
    /// in the state; committed entries after it are delivered again.
    pub fn start(
        opts: Options,
        log: RaftLog,
        loaded: Loaded,
        applied: u64,
    ) -> Result<(Consensus, RaftTask), Error> {
        let Options {
            id,
            members,
            join,
            log_keep,
            security,
        } = opts;
        let configured: BTreeMap<u64, String> =
            members.iter().map(|p| (p.id, p.addr.clone())).collect();
        let mut book = loaded.managers.clone();
        book.extend(configured.clone());
        let conf_state = match loaded.conf_state {
            Some(cs) => {
                let mut stored = cs.voters.clone();
                stored.sort_unstable();
                let listed: Vec<u64> = configured.keys().copied().collect();
                if !join && stored != listed {
                    info!(
                        stored = ?stored,
                        configured = ?listed,
                        "the managers' membership changed since it was configured; the \
                         replicated one holds"
                    );
                }
                cs
            }
            None if join => {
                info!(
                    id,
                    "joining the managers: waiting for the leader's snapshot"
                );
                ConfState::default()
            }
            None => {
                let cs = ConfState {
                    voters: configured.keys().copied().collect(),
                    ..Default::default()
                };
                log.save_conf(&cs, &book)?;
                cs
            }
        };
        let (start_index, start_term) = loaded.log_start;
        let last_index = loaded.entries.last().map_or(start_index, |e| e.index);
        let mut hs = loaded.hard_state;
        // An entry is only applied once committed, and the commit index is not always saved
        // before it is applied (it is re-learned from the leader).
        hs.commit = hs.commit.max(applied).min(last_index);
        let applied = applied.min(hs.commit);
        let mem = MemStorage::new();
        {
            let mut w = mem.wl();
            if start_index > 0 {
                let mut snap = Snapshot::default();
                snap.mut_metadata().index = start_index;
                snap.mut_metadata().term = start_term;
                w.apply_snapshot(snap)
                    .map_err(|e| Error::Task(format!("restoring the raft log start: {e}")))?;
            }
            w.set_conf_state(conf_state.clone());
            w.append(&loaded.entries)
                .map_err(|e| Error::Task(format!("restoring the raft log: {e}")))?;
            w.set_hardstate(hs);
        }
        let storage = LogStorage::new(mem);
        let cfg = Config {
            id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()
            .map_err(|e| Error::Config(format!("raft: {e}")))?;
        let mut raw = RawNode::new(&cfg, storage.clone(), &logger(id))
            .map_err(|e| Error::Task(format!("starting the managers' raft group: {e}")))?;
        if conf_state.voters == [id] && conf_state.learners.is_empty() {
            // Alone: no one to wait for, lead at once.
            let _ = raw.campaign();
        }
        let (inbox, inputs) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            id,
            members: Mutex::new(book.clone()),
            inbox,
            committed: Mutex::new(VecDeque::new()),
            more_committed: Condvar::new(),
            wake_applier: Notify::new(),
            status: Mutex::new(Status::default()),
            apply_gate: Mutex::new(()),
            installed: Mutex::new(None),
            applied: AtomicU64::new(applied),
            security,
        });
        info!(
            id,
            voters = ?conf_state.voters,
            first_index = start_index + 1,
            last_index,
            applied,
            term = raw.raft.term,
            "managers' raft group restored"
        );
        let (stop, stopped) = watch::channel(false);
        let blank = conf_state.voters.is_empty() && conf_state.learners.is_empty();
        let mut raft = RaftLoop {
            raw,
            storage,
            log: Arc::new(log),
            shared: shared.clone(),
            peers: HashMap::new(),
            configured,
            conf_index: 0,
            sent_snapshots: HashMap::new(),
            log_keep: log_keep.max(1),
            ticks: 0,
            blank,
            snap_reports: Vec::new(),
            taking: None,
        };
        raft.connect_peers();
        // A group of one leads already: say so before the first request comes.
        raft.publish_status();
        let task = tokio::spawn(raft.run(inputs, stopped));
        Ok((Consensus { shared }, RaftTask { stop, task }))
    }
}
