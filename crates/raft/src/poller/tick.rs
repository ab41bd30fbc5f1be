//! The periodic work of a round: Raft ticks, the end of log replay, and chunk-file flushes
//! (on their own thread) that let the shared log be compacted behind them.

use super::*;

pub(super) fn spawn_flusher(
    node_id: u64,
    chunks: Arc<ChunkStores>,
    tx: mpsc::UnboundedSender<Event>,
) -> std::io::Result<std::sync::mpsc::Sender<Vec<(u64, u64, u64)>>> {
    let (ftx, frx) = std::sync::mpsc::channel::<Vec<(u64, u64, u64)>>();
    std::thread::Builder::new()
        .name(format!("chunk-flusher-{node_id}"))
        .spawn(move || {
            for list in frx {
                let ev = match chunks.sync() {
                    Ok(()) => Event::Flushed(list),
                    Err(e) => flush_failed(e),
                };
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })?;
    Ok(ftx)
}

/// What a failed chunk sync means: out of descriptors, nothing was lost and nothing is
/// flushed (a later flush tries again); anything else stops the node.
fn flush_failed(e: tessera_engine::Error) -> Event {
    match e {
        tessera_engine::Error::Exhausted(why) => {
            tracing::warn!("chunk flush postponed: {why}");
            Event::Flushed(Vec::new())
        }
        e => Event::Fatal(Fatal::Flush(e)),
    }
}

impl Poller {
    pub(super) fn tick(&mut self, now: Instant) {
        // Ticks missed while the poller was stalled are caught up, so a leader that stalled
        // longer than an election timeout notices it lost its quorum (bounded: past two
        // election timeouts more ticks change nothing).
        let behind = now.saturating_duration_since(self.next_tick).as_nanos()
            / self.cfg.tick.as_nanos().max(1);
        let ticks = (behind as usize + 1).min(2 * self.cfg.election_ticks + 1);
        self.next_tick = now + self.cfg.tick;
        for (gid, g) in self.groups.iter_mut() {
            // Ticks are cheap; a group that has something to do is handled this round.
            // A follower that cannot apply could lead nothing: it hands leadership over.
            let leaving = !g.is_leader()
                && (g.leaving()
                    || (g.stalled.is_some() && !cfg!(tessera_unfixed = "stalled_leader")));
            for _ in 0..ticks {
                // A follower the group is removing never campaigns: it would do so in the
                // configuration it applied, which still counts it, and could win there with
                // another stale replica while the new configuration commits elsewhere (the
                // simulation found two leaders of one term, seed 0x800d91a736fa). Once a
                // whole election timeout passed without a leader it forgets the leader, so
                // the lease it gave does not refuse other candidates' votes for ever.
                let r = &mut g.raw.raft;
                if leaving && r.election_elapsed + 1 >= r.randomized_election_timeout() {
                    r.leader_id = raft::INVALID_ID;
                    break;
                }
                g.raw.tick();
            }
            g.check_snapshots(now);
            self.dirty.insert(*gid);
        }
        self.check_stuck(now);
        self.check_space(now);
        // Per group: one that cannot finish (no leader to commit its tail) must not keep
        // every other group's torn-block tolerance on, where it would hide real corruption.
        let groups = &self.groups;
        self.replaying.retain(|gid| match groups.get(gid) {
            Some(g) if !g.replay_done() => true,
            Some(g) => {
                g.chunks.set_replaying(false);
                tracing::info!(group = gid, "log replay into chunk files complete");
                false
            }
            None => false,
        });
        let held: u64 = self.groups.values().map(|g| g.store.lock().bytes).sum();
        // Chunks closed for room keep their descriptors until a sync closes them: enough of
        // them waiting start it early.
        let closing = self.chunks.budget().wants_sync();
        if !self.flushing && (now >= self.next_flush || held >= FLUSH_AT_BYTES || closing) {
            self.next_flush = now + self.cfg.flush_interval;
            let list: Vec<_> = self
                .groups
                .values()
                .filter(|g| {
                    g.applied > g.flushed || g.compactable() > g.store.lock().compacted_index
                })
                .map(|g| (g.id, g.applied, g.applied_term))
                .collect();
            if !list.is_empty() && self.inline_io {
                let ev = match self.chunks.sync() {
                    Ok(()) => Event::Flushed(list),
                    Err(e) => flush_failed(e),
                };
                self.flushing = self.tx.send(ev).is_ok();
            } else if !list.is_empty() {
                self.flushing = self.flusher.send(list).is_ok();
            }
        }
    }
}
