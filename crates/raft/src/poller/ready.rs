//! Handling every changed group's Ready: new entries and hard state to the shared log as one
//! batch, messages to peers, snapshots installed; then, in the next round, committed entries
//! applied to the chunk files, and the storage node's hook told of an apply stalled on
//! restored blocks not filled yet (`Group::unfilled`, at most once a second a group).

use super::*;

/// How often the storage node is told of a stall on unfilled blocks while it lasts.
const UNFILLED_EVERY: Duration = Duration::from_secs(1);

impl Poller {
    pub(super) fn process_readies(&mut self) {
        let mut writes = std::mem::take(&mut self.pending_writes);
        // Compacted once this round's writes are durable, never before: a mark that reached
        // the disk ahead of what it supersedes would drop acknowledged entries on replay.
        let mut compacts = std::mem::take(&mut self.pending_compacts);
        let mut numbers = Vec::new();
        let mut outbox = Outbox::new();
        let mut after_persist = Outbox::new();
        let dirty: Vec<u64> = self.dirty.drain().collect();
        for gid in dirty {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            self.to_apply.push(gid);
            if std::mem::take(&mut g.ping_due) && g.is_leader() {
                g.raw.ping();
            }
            if !g.raw.has_ready() {
                continue;
            }
            let mut rd = g.raw.ready();
            if let Some(ss) = rd.ss()
                && ss.raft_state != StateRole::Leader
            {
                g.fail_pending();
            }
            let mut msgs = rd.take_messages();
            g.widen_vote_requests(&mut msgs);
            push_msgs(&mut outbox, gid, msgs, self.epoch);
            let mut gw = GroupWrite {
                group: gid,
                ..Default::default()
            };
            let installed = !rd.snapshot().is_empty();
            if installed {
                let (slots, marker) = g.install_snapshot(rd.snapshot());
                if cfg!(tessera_unfixed = "install_compaction") {
                    self.log.compact(gid, marker.index);
                } else {
                    compacts.push((gid, marker.index));
                }
                writes.push(slots);
                gw.entries.push(marker);
            }
            g.queue_committed(rd.take_committed_entries());
            if !rd.entries().is_empty() {
                for e in rd.entries() {
                    g.dedup.logged(Command::peek_id(&e.data), e.index);
                    g.fences.logged(&e.data);
                }
                g.mem().append(rd.entries());
                gw.entries.extend(rd.entries().iter().map(to_log_entry));
                // Durable with the entries that raised it (or before them, in a torn
                // batch: a floor ahead of the log only refuses writes already fenced).
                if g.fences.take_changed() {
                    gw.slots.push((SLOT_FENCES, g.fences.encode()));
                    g.refresh_snapshot_data();
                }
            }
            if let Some(hs) = rd.hs() {
                g.mem().hard_state = hs.clone();
                // Term and vote must be durable before anything is sent; the commit index
                // alone need not be (it is re-learned from the leader), so it only rides
                // along with writes that happen anyway.
                let must = hs.term != g.persisted_hs.term || hs.vote != g.persisted_hs.vote;
                if must || !gw.entries.is_empty() {
                    gw.slots.push((SLOT_HARD_STATE, encode_hard_state(hs)));
                    g.persisted_hs = hs.clone();
                }
            }
            let mut persisted_msgs = rd.take_persisted_messages();
            g.widen_vote_requests(&mut persisted_msgs);
            let number = rd.number();
            if installed && let Some(e) = gw.entries.first() {
                g.installed = Some((number, e.index));
            }
            g.raw.advance_append_async(rd);
            if gw.entries.is_empty() && gw.slots.is_empty() && g.persisting == 0 {
                g.raw.on_persist_ready(number);
                push_msgs(&mut outbox, gid, persisted_msgs, self.epoch);
            } else {
                g.persisting += 1;
                writes.push(gw);
                numbers.push((gid, number));
                push_msgs(&mut after_persist, gid, persisted_msgs, self.epoch);
            }
        }
        // New entries go to the log and messages to peers before anything is applied, and
        // the applies wait for the next round (see `run`): chunk-file writes here would
        // delay every group's replication (on a follower, the apply of entry N sits in the
        // same round as the append of N+1) and, on a leader, the answers just queued.
        if !writes.is_empty() {
            let submitted = Instant::now();
            let tx = self.tx.clone();
            let transport = self.transport.clone();
            let from = self.cfg.node_id;
            self.log.append(
                writes,
                Box::new(move |res| match res {
                    Ok(()) => {
                        crate::metrics::LOG_WRITE.observe_since(submitted);
                        send_all(&*transport, from, after_persist);
                        if !numbers.is_empty() {
                            let _ = tx.send(Event::Persisted(numbers));
                        }
                        if !compacts.is_empty() {
                            let _ = tx.send(Event::Compact(compacts));
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Event::Fatal(Fatal::Log(e)));
                    }
                }),
            );
        }
        send_all(&*self.transport, self.cfg.node_id, outbox);
    }

    /// Applies the committed entries of the groups in `to_apply` to the chunk files.
    pub(super) fn apply_committed(&mut self) {
        let mut changed = Vec::new();
        for gid in std::mem::take(&mut self.to_apply) {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            if let Err(why) = g.apply() {
                // Nothing more leaves this node: its chunk store failed under it.
                self.fail(why);
                return;
            }
            g.refuse_reads();
            // A committed entry waits for restored blocks no later entry can fill: the
            // storage node fills them outside the log (the hook must not block), and the
            // apply is retried at every tick until they are.
            if let (Some(hook), Some((volume, chunk, blocks))) = (&self.unfilled_hook, &g.unfilled)
            {
                let now = crate::clock::now();
                let due = g
                    .unfilled_told
                    .is_none_or(|t| now.saturating_duration_since(t) >= UNFILLED_EVERY);
                if due {
                    g.unfilled_told = Some(now);
                    hook(gid, *volume, *chunk, blocks.clone());
                }
            }
            if g.raw.has_ready() {
                self.dirty.insert(gid);
            }
            if g.peers_changed || !g.slot_writes.is_empty() || g.removed {
                changed.push(gid);
            }
        }
        for gid in changed {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            // A replica that applied its own removal stays until the manager, told by the
            // group's leader that the change is done, destroys it: as the leader that
            // committed the change, it may be the only one that knows the group left its
            // joint configuration, and the members left in it need its vote until a new
            // leader tells them (the simulation found a group stuck for good when that
            // leader destroyed itself at once).
            let removed = std::mem::take(&mut g.removed);
            let destroy_now = removed && cfg!(tessera_unfixed = "self_removal");
            let keep_slots = !destroy_now || cfg!(tessera_unfixed = "removal_slots");
            if !g.slot_writes.is_empty() && keep_slots {
                self.pending_writes.push(GroupWrite {
                    group: gid,
                    entries: Vec::new(),
                    slots: std::mem::take(&mut g.slot_writes),
                });
                self.dirty.insert(gid);
            }
            let peers = std::mem::take(&mut g.peers_changed).then(|| g.spec.peers.clone());
            if let Some(peers) = peers {
                self.learn_peers(&peers);
            }
            if removed {
                tracing::info!(
                    group = gid,
                    "this replica left the group's configuration; kept until the manager \
                     destroys it"
                );
            }
            if destroy_now {
                self.destroy_group(gid);
            }
        }
    }
}
