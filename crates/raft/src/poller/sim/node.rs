//! One simulated storage node: a real poller over a stepped shared log and chunk files on
//! tmpfs, its snapshot copies done inline, crashes at chosen points.

use super::*;

impl SnapshotFetcher for SimCopy {
    fn fetch(&self, job: FetchJob, done: Box<dyn FnOnce(Result<(), FetchError>) + Send>) {
        self.0
            .copies
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let src = self
            .0
            .stores
            .lock()
            .unwrap()
            .get(&job.from)
            .and_then(|s| s.existing(job.group));
        let Some(src) = src else {
            return done(Err(FetchError::Retry("the sender is down".into())));
        };
        let copy = || -> tessera_engine::Result<()> {
            for (volume, chunk) in src.list_chunks()? {
                let blocks = src.chunk_blocks(volume, chunk)?;
                let data = src.read(volume, chunk, 0, blocks * 4096)?;
                job.store.write(volume, chunk, 0, &data)?;
            }
            job.store.sync()
        };
        done(copy().map_err(|e| FetchError::Retry(e.to_string())))
    }
}

pub(super) fn tmp_root() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl SimNode {
    pub(super) fn open(dir: Arc<tempfile::TempDir>, id: u64, stores: &Stores) -> SimNode {
        let opts = LogOptions {
            segment_size: 256 << 10,
        };
        let (log, recovered) = Log::open_stepped(&dir.path().join("log"), opts).unwrap();
        let chunks = Arc::new(ChunkStores::open(&dir.path().join("groups")).unwrap());
        stores.stores.lock().unwrap().insert(id, chunks.clone());
        let fetcher = Arc::new(SimCopy(stores.clone()));
        let Started {
            mut poller,
            rx,
            wire,
            fatal,
        } = start(dir.path(), id, TICK, log, chunks, fetcher);
        poller.inline_io = true;
        poller.cfg.stuck_after = STUCK_AFTER;
        poller.recover(recovered);
        SimNode {
            id,
            dir,
            poller,
            rx,
            wire,
            fatal,
        }
    }

    pub(super) fn hosts(&self) -> bool {
        self.poller.groups.contains_key(&GROUP)
    }

    pub(super) fn is_leader(&self) -> bool {
        self.poller
            .groups
            .get(&GROUP)
            .is_some_and(|g| g.is_leader())
    }

    /// Whether an armed crash strikes now, with the log about to write what it queued.
    pub(super) fn at(&self, point: CrashPoint, conf_applied: bool) -> bool {
        match point {
            CrashPoint::AnyWrite => true,
            CrashPoint::Install => self
                .poller
                .groups
                .get(&GROUP)
                .is_some_and(|g| g.installed.is_some()),
            CrashPoint::Removal => self.poller.destroying.contains(&GROUP),
            CrashPoint::ConfApplied => conf_applied,
        }
    }

    /// Runs rounds until nothing is left to do: events, applies, Readies, log writes.
    /// An armed crash strikes at the first log write its point matches: the node is then
    /// crashed (the log keeps what the crash says) and `Err(crash)` is returned.
    pub(super) fn settle(&mut self, crash: Option<Crash>) -> Result<(), Crash> {
        let mut conf_applied = false;
        for _ in 0..100_000 {
            let mut busy = false;
            while let Ok(ev) = self.rx.try_recv() {
                self.poller.handle(ev);
                busy = true;
            }
            if self.poller.stopped {
                return Ok(());
            }
            if !self.poller.to_apply.is_empty() {
                let confs = self.conf_index();
                self.poller.apply_committed();
                conf_applied |= self.conf_index() != confs;
                busy = true;
            }
            if !self.poller.dirty.is_empty() || !self.poller.pending_writes.is_empty() {
                self.poller.process_readies();
                busy = true;
            }
            if self.poller.log.queued() > 0 {
                if let Some(c) = crash
                    && self.at(c.at, conf_applied)
                {
                    self.poller.log.crash(c.keep, c.torn);
                    return Err(c);
                }
                self.poller.log.step();
                busy = true;
            }
            if !busy {
                return Ok(());
            }
        }
        panic!("node {}: rounds never settled", self.id);
    }

    pub(super) fn conf_index(&self) -> Option<raft::eraftpb::ConfState> {
        let g = self.poller.groups.get(&GROUP)?;
        Some(g.mem().conf_state.clone())
    }

    pub(super) fn take_sent(&self) -> Vec<(u64, Message)> {
        std::mem::take(&mut *self.wire.0.lock().unwrap())
    }

    /// Stops the node as a crash would (its log already cut) and starts it again from
    /// what its log and chunk files hold.
    pub(super) fn restart(self, stores: &Stores) -> SimNode {
        let SimNode {
            id, dir, poller, ..
        } = self;
        poller.log.crash(0, None);
        drop(poller);
        SimNode::open(dir, id, stores)
    }
}

pub(super) fn spec(peers: &[u64], joining: bool, min_term: u64) -> GroupSpec {
    GroupSpec {
        group_id: GROUP,
        peers: peers
            .iter()
            .map(|&n| PeerInfo {
                node_id: n,
                addr: format!("127.0.0.1:{}", 7500 + n),
            })
            .collect(),
        joining,
        min_term,
    }
}
