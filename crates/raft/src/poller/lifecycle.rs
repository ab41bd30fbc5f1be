//! A replica's life on this node: rebuilt from the log at start, created at the manager's
//! word, destroyed (log tombstone first, then its files) when it is no longer a member.

use super::*;

impl Poller {
    /// Rebuilds the groups the shared log recovered.
    pub(crate) fn recover(&mut self, recovered: Recovered) {
        for (gid, rg) in recovered.groups {
            let Some(spec) = rg
                .slots
                .get(&SLOT_MEMBERSHIP)
                .and_then(|b| decode_membership(b).ok())
            else {
                tracing::warn!(
                    group = gid,
                    "recovered log has no membership for the group; ignoring it"
                );
                continue;
            };
            let hard_state = rg
                .slots
                .get(&SLOT_HARD_STATE)
                .and_then(|b| decode_hard_state(b))
                .unwrap_or_default();
            let applied = rg
                .slots
                .get(&SLOT_APPLIED)
                .and_then(|b| decode_applied(b))
                .unwrap_or((0, 0));
            let conf = rg.slots.get(&SLOT_CONF).and_then(|b| decode_conf(b));
            let fences = rg
                .slots
                .get(&SLOT_FENCES)
                .and_then(|b| Fences::decode(b))
                .unwrap_or_default();
            let entries: Vec<_> = rg.entries.iter().map(from_log_entry).collect();
            if let Some(first) = entries.iter().find(|e| e.index > applied.0)
                && first.index != applied.0 + 1
            {
                tracing::error!(
                    group = gid,
                    "log gap: applied up to {} but the next entry is {}; group quarantined",
                    applied.0,
                    first.index
                );
                let why = format!(
                    "quarantined: log gap after applied index {}, next entry {}",
                    applied.0, first.index
                );
                self.quarantined.insert(gid, why);
                continue;
            }
            let chunks = match self.chunks.get(gid) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(group = gid, "cannot open chunk files: {e}; quarantined");
                    let why = format!("quarantined: cannot open chunk files: {e}");
                    self.quarantined.insert(gid, why);
                    continue;
                }
            };
            let init = GroupInit {
                spec,
                conf,
                chunks,
                watches: self.watches.clone(),
                hard_state,
                applied,
                entries,
                fences,
            };
            match Group::new(
                self.cfg.node_id,
                self.cfg.election_ticks,
                self.lease(),
                init,
            ) {
                Ok(g) => {
                    if g.replay_upto > g.applied {
                        g.chunks.set_replaying(true);
                        self.replaying.insert(gid);
                    }
                    self.add_group(g);
                }
                Err(e) => {
                    tracing::error!(group = gid, "cannot restore group: {e}; quarantined");
                    let why = format!("quarantined: cannot restore the group: {e}");
                    self.quarantined.insert(gid, why);
                }
            }
        }
        // Chunk files whose group the log no longer knows belong to a replica destroyed
        // before its files were (the log's tombstone comes first).
        for space in self.chunks.spaces() {
            if !self.groups.contains_key(&space) && !self.quarantined.contains_key(&space) {
                tracing::warn!(group = space, "removing chunk files of a destroyed replica");
                if let Err(e) = self.chunks.remove(space) {
                    tracing::warn!(group = space, "removing chunk files: {e}");
                }
            }
        }
        tracing::info!(
            node = self.cfg.node_id,
            groups = self.groups.len(),
            "recovered replica groups"
        );
    }

    pub(super) fn add_group(&mut self, g: Group) {
        self.learn_peers(&g.spec.peers);
        self.dirty.insert(g.id);
        self.groups.insert(g.id, g);
    }

    pub(super) fn learn_peers(&self, peers: &[control::PeerInfo]) {
        for p in peers {
            if p.node_id != self.cfg.node_id {
                self.transport.set_peer(p.node_id, &p.addr);
            }
        }
    }

    pub(super) fn create_group(&mut self, spec: GroupSpec) {
        if self.groups.contains_key(&spec.group_id) {
            return;
        }
        if self.destroying.contains(&spec.group_id) {
            tracing::info!(
                group = spec.group_id,
                "not hosting a replica still being destroyed"
            );
            return;
        }
        if self.quarantined.contains_key(&spec.group_id) {
            tracing::warn!(
                group = spec.group_id,
                "not re-creating a quarantined replica: it needs replacing, not a fresh start"
            );
            return;
        }
        if !spec.peers.iter().any(|p| p.node_id == self.cfg.node_id) {
            tracing::warn!(
                group = spec.group_id,
                "asked to host a group this node is not a member of"
            );
            return;
        }
        let gid = spec.group_id;
        let chunks = match self.chunks.get(gid) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(group = gid, "cannot create chunk files: {e}");
                return;
            }
        };
        // A new group starts its log at INIT_INDEX; a joining replica starts empty and
        // waits for a snapshot.
        let (applied, hard_state) = if spec.joining {
            ((0, 0), HardState::default())
        } else {
            let hs = HardState {
                term: INIT_INDEX,
                commit: INIT_INDEX,
                ..Default::default()
            };
            ((INIT_INDEX, INIT_INDEX), hs)
        };
        let init = GroupInit {
            spec: spec.clone(),
            conf: None,
            chunks,
            watches: self.watches.clone(),
            hard_state: hard_state.clone(),
            applied,
            entries: Vec::new(),
            fences: Fences::default(),
        };
        let mut g = match Group::new(
            self.cfg.node_id,
            self.cfg.election_ticks,
            self.lease(),
            init,
        ) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(group = gid, "cannot create group: {e}");
                return;
            }
        };
        let mut slots = vec![(SLOT_MEMBERSHIP, encode_membership(&spec))];
        if !spec.joining {
            slots.push((SLOT_HARD_STATE, encode_hard_state(&hard_state)));
            slots.push((SLOT_APPLIED, encode_applied(applied.0, applied.1)));
        }
        self.pending_writes.push(GroupWrite {
            group: gid,
            entries: Vec::new(),
            slots,
        });
        // The first member (the manager lists the least loaded first) starts the first
        // election at once rather than after a timeout.
        if !spec.joining && spec.peers.first().map(|p| p.node_id) == Some(self.cfg.node_id) {
            let _ = g.raw.campaign();
        }
        tracing::info!(
            group = gid,
            joining = spec.joining,
            "hosting a new replica group"
        );
        self.add_group(g);
    }

    /// Destroys this node's replica of `gid`: pending requests fail over, the log forgets
    /// the group (a durable tombstone), then its chunk files are deleted.
    /// A quarantined replica is destroyed the same way: its log entries and slots are all
    /// it still holds, and they pin the shared log's segments while it stays.
    pub(super) fn destroy_group(&mut self, gid: u64) {
        self.watches.drop_group(gid);
        match self.groups.remove(&gid) {
            Some(mut g) => g.fail_pending(),
            None if self.quarantined.contains_key(&gid)
                && !cfg!(tessera_unfixed = "stuck_replicas") =>
            {
                // The tombstone below keeps it from coming back at a restart; `destroying`
                // keeps it from being re-created until its files are gone.
                self.quarantined.remove(&gid);
            }
            None => return,
        }
        self.dirty.remove(&gid);
        self.to_apply.retain(|&id| id != gid);
        self.destroying.insert(gid);
        // Nothing of the group may reach the log after its tombstone: replay would bring
        // the group back from those slots with a default hard state (term and vote lost).
        if !cfg!(tessera_unfixed = "removal_slots") {
            self.pending_writes.retain(|w| w.group != gid);
            self.pending_compacts.retain(|&(id, _)| id != gid);
        }
        tracing::info!(group = gid, "destroying this replica: no longer a member");
        let tx = self.tx.clone();
        self.log.remove_group(
            gid,
            Box::new(move |res| match res {
                Ok(()) => {
                    let _ = tx.send(Event::Destroyed(gid));
                }
                Err(e) => {
                    let _ = tx.send(Event::Fatal(Fatal::Remove {
                        group: gid,
                        source: e,
                    }));
                }
            }),
        );
    }
}
