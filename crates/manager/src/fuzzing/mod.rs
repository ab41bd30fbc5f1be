//! The manager as the `manager` fuzz target drives it (`fuzz/src/manager.rs`): one real
//! manager (its [`Service`], a real database and its own Raft group of one) taking
//! requests, heartbeats, clock steps, reconcile passes and background work in whatever
//! order the input says, and checking after each that what it holds is right.
//!
//! Compiled only with the `fuzzing` feature and hidden: never part of the product.
//! Everything the product does between a request and its answer runs for real (planning,
//! committing through the Raft log into the database, applying); what it does on the
//! network is played here, calling the service as its production callers do: the group
//! ops a request waits for succeed, fail or are held for later, a move a reconcile pass
//! starts is reported done (or lost, or late), and so on; `backups` plays the backup
//! jobs (uploads, roots, copies, restores, the collector).
//!
//! Checked (panicking, as a fuzz target must):
//! - the state's own invariants ([`State::check`]) and the database holds exactly the
//!   state in memory, its rows read back and rebuilt ([`Solo::check`]);
//! - the state's Raft snapshot, encoded and decoded, rebuilds the same state
//!   ([`Solo::check_snapshot`]);
//! - every backup key the state counts is in the (played) store: what `gc_gen`, claims
//!   and the collector's settling time are for;
//! - and, at [`Solo::restart`], a manager restarted on the same directory holds the same
//!   state.
//!
//! Must never reach the network or a clock other than the one it is given: the manager's
//! Raft group has no peers, and `AddManager` and `Managers` are refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::SnapshotMetadata;
use redb::Database;
use tessera_proto::control::{ControlError, ManagerReply, ManagerRequest};

use crate::config::ManagerPeer;
use crate::consensus::{Consensus, Options, RaftTask};
use crate::db::{self, Db};
use crate::liveness::Liveness;
use crate::raft_log::RaftLog;
use crate::reconcile;
use crate::service::{Finish, Now, ReclaimJob, Reply, Service};
use crate::state::{ChunkSegment, GcKey, Mutation, NextIds, State};
use crate::state_snapshot;
use crate::stores::{StoreConfig, Stores};

mod backups;

/// The replicas of a group and the groups placed per node, as a small cluster runs.
const REPLICAS: usize = 3;
const GROUPS_PER_NODE: u32 = 2;
/// A node is suspect, then down, after this long without a heartbeat.
const SUSPECT_AFTER: Duration = Duration::from_secs(5);
const DOWN_AFTER: Duration = Duration::from_secs(30);
/// The Unix time the clock starts at.
const EPOCH_UNIX: u64 = 1_800_000_000;

/// One manager in a scratch directory. See the module doc.
pub struct Solo {
    dir: PathBuf,
    runtime: tokio::runtime::Handle,
    /// `None` while restarting.
    running: Option<Running>,
    memory: reconcile::Memory,
    /// Work delivered by a later step.
    held: Vec<Held>,
    /// The keys the backup stores hold, `(store, key)`: put by uploads and roots,
    /// removed by the collector's deletions. Outlives restarts, as a store does.
    stored: BTreeSet<(String, GcKey)>,
    /// The id marks last seen: they never go back.
    marks: NextIds,
    /// The applied index last checked: the state has not changed while it stays.
    checked: Option<u64>,
    started: Instant,
    /// How far the clock has moved since `started`.
    clock: Duration,
    /// The clock when this manager (last started) began to lead.
    led_since: Duration,
}

/// A started manager.
struct Running {
    service: Service,
    raft: RaftTask,
    /// The service's database, read beside it for the checks.
    db: Arc<Database>,
    db_path: PathBuf,
}

/// What happens to the group ops (or other calls to storage nodes) a step waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ops {
    /// They succeed now.
    Apply,
    /// They fail.
    Fail,
    /// They are held, to be delivered by a later step ([`Solo::deliver`]).
    Hold,
}

/// Work the network would finish later, as the production caller would finish it.
enum Held {
    /// A request's group ops applied: the server finishes the request.
    Finish(Finish),
    /// A background finish: done if still needed.
    Background(Finish),
    /// A group's leader reports a move done.
    Move { group_id: u64, voters: Vec<u64> },
    /// A flatten's chunk copied and unlinked.
    Unlink { volume_id: u64, chunk: u64 },
    /// A reclaim job's answers.
    Reclaim(ReclaimJob),
    /// A backup's chunks uploaded (`gc_gen` read before), to record.
    Upload {
        id: u64,
        of_volume: bool,
        gc_gen: u64,
        chunks: Vec<ChunkSegment>,
    },
    /// Claimed keys deleted from a store, to forget.
    Deleted { store: String, keys: Vec<GcKey> },
}

/// Work held at most; the oldest is dropped (lost on the network) past it.
const MAX_HELD: usize = 16;

/// What a request got: an answer, or a capability to sign, a usage query or a scrub call
/// (answered by the server on the network, which is not played).
pub type Answer = Option<Result<ManagerReply, ControlError>>;

impl Solo {
    /// A new manager in `dir` (empty), its Raft task spawned on `runtime`, which must have
    /// a worker thread of its own: the service blocks the caller's thread while it waits
    /// for its commits. It leads before this returns.
    pub fn start(dir: &Path, runtime: tokio::runtime::Handle) -> Solo {
        let mut solo = Solo {
            dir: dir.to_path_buf(),
            runtime,
            running: None,
            memory: reconcile::Memory::default(),
            held: Vec::new(),
            stored: BTreeSet::new(),
            marks: State::default().next_ids(),
            checked: None,
            started: Instant::now(),
            clock: Duration::ZERO,
            led_since: Duration::ZERO,
        };
        solo.open();
        solo
    }

    fn open(&mut self) {
        let (db, state) = Db::open(&self.dir.join("manager")).expect("open the database");
        let applied = db.applied_index().expect("read the applied index");
        let (log, loaded) = RaftLog::open(db.database(), db.path()).expect("open the Raft log");
        let (database, db_path) = (db.database(), db.path().to_path_buf());
        let opts = Options {
            id: 1,
            members: vec![ManagerPeer {
                id: 1,
                addr: "127.0.0.1:1".into(),
            }],
            join: false,
            log_keep: 64,
            security: Default::default(),
        };
        let (consensus, raft) = {
            let _in = self.runtime.enter();
            Consensus::start(opts, log, loaded, applied).expect("start the managers' Raft group")
        };
        let stores = Stores::open(
            &[
                StoreConfig::dir("near", "z1", &self.dir.join("near").to_string_lossy()),
                StoreConfig::dir("far", "z2", &self.dir.join("far").to_string_lossy()),
            ],
            None,
            "z1",
        )
        .expect("open the backup stores");
        let live = Liveness::new(self.started, SUSPECT_AFTER, DOWN_AFTER);
        let mut service = Service::new(
            db,
            state,
            live,
            REPLICAS,
            GROUPS_PER_NODE,
            consensus,
            applied,
        )
        .with_stores(Arc::new(stores));
        let deadline = Instant::now() + Duration::from_secs(10);
        while service.lead().is_err() {
            assert!(Instant::now() < deadline, "a manager alone never led");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A new process: ages from now on the fuzz clock, no memory of calls in flight.
        service.restart_ages(self.now().instant);
        self.memory = reconcile::Memory::default();
        self.held.clear();
        self.checked = None;
        self.led_since = self.clock;
        self.running = Some(Running {
            service,
            raft,
            db: database,
            db_path,
        });
    }

    fn service(&mut self) -> &mut Service {
        &mut self.running().service
    }

    fn running(&mut self) -> &mut Running {
        self.running.as_mut().expect("the manager runs")
    }

    /// The clock the manager is given.
    pub fn now(&self) -> Now {
        Now {
            instant: self.started + self.clock,
            unix: EPOCH_UNIX + self.clock.as_secs(),
        }
    }

    /// Moves the clock on.
    pub fn advance(&mut self, by: Duration) {
        self.clock += by;
    }

    /// One request, answered as the server would. Group ops it waits for go as `ops`
    /// says: applied (the server then finishes the request), failed (`Unavailable`; the
    /// background work finishes it later), or held for [`Solo::deliver`].
    pub fn request(&mut self, req: ManagerRequest, ops: Ops) -> Answer {
        if matches!(
            req,
            ManagerRequest::AddManager { .. }
                | ManagerRequest::Managers
                | ManagerRequest::PublishCrl { .. }
        ) {
            // Membership would dial other managers; lists are checked by the server.
            return Some(Err(ControlError::Invalid("not in the fuzz target".into())));
        }
        let now = self.now();
        let (reply, _drops) = self.service().handle(req, now);
        match reply {
            Reply::Done(res) => Some(res),
            Reply::After(pending) => match ops {
                Ops::Apply => Some(self.service().finish(&pending.finish)),
                Ops::Fail => Some(Err(ControlError::Unavailable(format!(
                    "{} (group ops failed)",
                    pending.finish.unfinished()
                )))),
                Ops::Hold => {
                    self.hold(Held::Finish(pending.finish));
                    None
                }
            },
            Reply::Usage(_) | Reply::Scrub(_) | Reply::Sign { .. } => None,
        }
    }

    /// One reconcile pass. Each membership change it asks a group's leader for is
    /// reported done at once (`Apply`, at term 1), never (`Fail`), or later (`Hold`).
    pub fn reconcile(&mut self, ops: Ops) {
        let now = self.now();
        let limits = reconcile::Limits {
            max_moves: 4,
            max_moves_per_node: 2,
        };
        let mut memory = std::mem::take(&mut self.memory);
        let calls = self.service().reconcile(now, &mut memory, limits);
        self.memory = memory;
        for call in calls {
            if let Some(voters) = call.target {
                let done = Held::Move {
                    group_id: call.group_id,
                    voters,
                };
                match ops {
                    Ops::Apply => self.deliver_now(done, true),
                    Ops::Fail => {}
                    Ops::Hold => self.hold(done),
                }
            }
        }
    }

    /// One look of the background loop. Each piece of work it plans (a request still
    /// waiting for its group ops, a flatten's chunk, a reclaim) is done at once (`Apply`),
    /// fails (`Fail`: a reclaim is retried at its next chunk), or is held (`Hold`).
    pub fn background(&mut self, ops: Ops, plan_reclaims: bool) {
        let now = self.now();
        let work = self.service().background(now, plan_reclaims);
        let held = work
            .finish
            .into_iter()
            .map(|p| Held::Background(p.finish))
            .chain(work.flatten.into_iter().map(|j| Held::Unlink {
                volume_id: j.volume_id,
                chunk: j.chunk,
            }))
            .chain(work.reclaim.into_iter().map(Held::Reclaim));
        for h in held {
            match ops {
                Ops::Apply => self.deliver_now(h, true),
                Ops::Fail => {
                    if matches!(h, Held::Reclaim(_)) {
                        self.deliver_now(h, false);
                    }
                }
                Ops::Hold => self.hold(h),
            }
        }
    }

    /// Delivers the held piece of work `index` (modulo how many are held), done if `ok`
    /// (else a reclaim is retried at its next chunk, anything else fails).
    pub fn deliver(&mut self, index: usize, ok: bool) {
        if self.held.is_empty() {
            return;
        }
        let h = self.held.remove(index % self.held.len());
        self.deliver_now(h, ok);
    }

    fn hold(&mut self, h: Held) {
        if self.held.len() == MAX_HELD {
            self.held.remove(0);
        }
        self.held.push(h);
    }

    /// What the production caller does once the network answered.
    fn deliver_now(&mut self, h: Held, ok: bool) {
        let s = self.service();
        let _ = match h {
            Held::Finish(f) if ok => s.finish(&f).map(drop),
            Held::Background(f) if ok => match s.still_needed(&f) {
                Ok(true) => s.finish(&f).map(drop),
                other => other.map(drop),
            },
            Held::Move { group_id, voters } if ok => s.move_done(group_id, &voters, 1),
            Held::Unlink { volume_id, chunk } if ok => s.chunk_unlinked(volume_id, chunk),
            Held::Reclaim(job) => {
                // The job's next chunk with layers to merge: recorded merged, or retried.
                let next = job
                    .groups
                    .iter()
                    .flat_map(|(_, chunks)| chunks)
                    .filter(|c| **c >= job.next_chunk)
                    .min()
                    .copied();
                match next {
                    None if ok => s.reclaim_done(&job).map(drop),
                    None => Ok(()),
                    Some(c) if ok => s.reclaim_progress(&job, c + 1, false).map(drop),
                    Some(c) => s.reclaim_progress(&job, c, true).map(drop),
                }
            }
            Held::Upload {
                id,
                of_volume,
                gc_gen,
                chunks,
            } if ok => {
                self.record_upload(id, of_volume, gc_gen, chunks);
                Ok(())
            }
            Held::Deleted { store, keys } if ok => {
                s.commit_led(Mutation::GcDeleted { store, keys })
            }
            Held::Finish(_)
            | Held::Background(_)
            | Held::Move { .. }
            | Held::Unlink { .. }
            | Held::Upload { .. }
            | Held::Deleted { .. } => Ok(()),
        };
    }

    /// The state the manager serves from.
    pub fn state(&self) -> &State {
        self.running
            .as_ref()
            .expect("the manager runs")
            .service
            .state()
    }

    /// Checks the state's invariants and that the database holds it; panics on the first
    /// thing wrong.
    pub fn check(&mut self) {
        let Running { db, service, .. } = self.running.as_ref().expect("the manager runs");
        if let Some(why) = service.failed() {
            panic!("the manager stopped taking changes: {why}");
        }
        // The stores change without the state (a deletion recorded late).
        self.check_store();
        if self.checked == Some(service.applied_index()) {
            return;
        }
        let state = service.state();
        if let Err(e) = state.check() {
            panic!("the state broke an invariant: {}\n{state:#?}", e.0);
        }
        let (was, now) = (self.marks, state.next_ids());
        let back = now.node < was.node
            || now.group < was.group
            || now.volume < was.volume
            || now.backup < was.backup;
        assert!(!back, "the id marks went back from {was:?} to {now:?}");
        let tx = db.begin_read().expect("a read transaction");
        let image =
            db::read_image(&tx).unwrap_or_else(|e| panic!("reading the database failed: {}", e.0));
        drop(tx);
        let stored = image
            .into_state()
            .unwrap_or_else(|e| panic!("the database's rows do not rebuild a state: {e}"));
        assert_eq!(
            &stored, state,
            "the database differs from the state in memory"
        );
        self.marks = now;
        self.checked = Some(service.applied_index());
    }

    /// Checks the state's own Raft snapshot (what a lagging manager is sent), encoded and
    /// decoded, rebuilds the same state; panics if not.
    pub fn check_snapshot(&self) {
        let Running { db, db_path, .. } = self.running.as_ref().expect("the manager runs");
        let state = self.state();
        let payload = state_snapshot::take(db, db_path).expect("take the state's snapshot");
        let decoded = state_snapshot::decode(&state_snapshot::encode(&payload))
            .unwrap_or_else(|e| panic!("the state's own snapshot is refused: {e}"));
        let restored = decoded
            .image
            .clone()
            .into_state()
            .unwrap_or_else(|e| panic!("the state's own snapshot does not rebuild: {e}"));
        assert_eq!(
            &restored, state,
            "the state's snapshot rebuilds another state"
        );
        // Installed as a lagging manager installs it, into a database of its own.
        let (other, _) = Db::open(&self.dir.join("installed")).expect("open a second database");
        let mut meta = SnapshotMetadata {
            index: 1 << 40,
            term: 1,
            ..SnapshotMetadata::default()
        };
        meta.mut_conf_state().voters = vec![1];
        state_snapshot::install(&other.database(), other.path(), &decoded, &meta)
            .expect("install the snapshot");
        let installed = other.reload().expect("reload the installed snapshot");
        assert_eq!(
            &installed, state,
            "the installed snapshot holds another state"
        );
        drop(other);
        let _ = std::fs::remove_dir_all(self.dir.join("installed"));
    }

    /// Stops the manager and starts it again on its directory: it must come back with the
    /// state it had.
    pub fn restart(&mut self) {
        self.check_snapshot();
        let before = self.state().clone();
        self.stop_running();
        self.open();
        assert_eq!(self.state(), &before, "a restart changed the state");
    }

    fn stop_running(&mut self) {
        if let Some(mut r) = self.running.take() {
            r.service.close();
            drop(r.service);
            self.runtime.block_on(r.raft.stop());
        }
    }
}

impl Drop for Solo {
    fn drop(&mut self) {
        self.stop_running();
    }
}
