//! Building the state: [`State::restore`] from persisted rows (checked for consistency) and
//! [`State::apply`] of one mutation.
//!
//! The only code that changes a [`State`]. `apply` must stay deterministic and infallible:
//! it never picks ids, reads clocks or looks at node health, so every manager applying the
//! same log ends with the same state.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Group, GroupRecord, Inconsistent, Mutation, NextIds, NodeRecord, ParentLink, State, Volume,
    VolumeRecord, change_record, record_change_of,
};

impl State {
    /// Rebuilds the state from persisted rows, checking that they agree with each other.
    pub fn restore(
        nodes: Vec<NodeRecord>,
        groups: Vec<GroupRecord>,
        volumes: Vec<VolumeRecord>,
        chunks: Vec<(u64, u64, u64)>,
        next: NextIds,
    ) -> Result<State, Inconsistent> {
        let mut s = State {
            next,
            ..State::default()
        };
        for n in nodes {
            s.apply(&Mutation::PutNode(n));
        }
        for g in &groups {
            if let Some(m) = g
                .members
                .iter()
                .chain(&g.target)
                .find(|m| !s.nodes.contains_key(m))
            {
                return Err(Inconsistent(format!(
                    "group {} has unknown member node {m}",
                    g.id
                )));
            }
        }
        s.apply(&Mutation::AddGroups(groups));
        for v in volumes {
            if s.by_name.contains_key(&v.name) {
                return Err(Inconsistent(format!("volume name {:?} used twice", v.name)));
            }
            s.apply(&Mutation::PutVolume(v));
        }
        for (volume_id, chunk, group_id) in chunks {
            if !s.volumes.contains_key(&volume_id) || !s.groups.contains_key(&group_id) {
                return Err(Inconsistent(format!(
                    "chunk {chunk} of volume {volume_id} maps to group {group_id}, \
                     but the volume or group does not exist"
                )));
            }
            s.apply(&Mutation::MapChunk {
                volume_id,
                chunk,
                group_id,
            });
        }
        // The stored marks win unless the rows prove them stale.
        s.next.node = s.next.node.max(next.node);
        s.next.group = s.next.group.max(next.group);
        s.next.volume = s.next.volume.max(next.volume);
        s.next.backup = s.next.backup.max(next.backup);
        Ok(s)
    }

    /// Applies a mutation that was planned against this state and made durable. Never fails:
    /// a mutation naming something that no longer exists changes nothing.
    pub fn apply(&mut self, m: &Mutation) {
        self.next = self.next.after(m);
        if let Some(d) = self.backup_delta(m) {
            self.apply_backup_delta(&d);
            return;
        }
        if let Some(id) = record_change_of(m) {
            if let Some(v) = self.volumes.get_mut(&id) {
                let before = v.rec.parent.clone();
                change_record(&mut v.rec, m);
                let after = v.rec.parent.clone();
                self.index_parent(id, before.as_ref(), after.as_ref());
            }
            return;
        }
        match m {
            Mutation::PutNode(n) => {
                self.nodes.insert(n.id, n.clone());
            }
            Mutation::AddGroups(gs) => {
                for g in gs {
                    for m in &g.members {
                        self.groups_by_node.entry(*m).or_default().insert(g.id);
                    }
                    self.groups.insert(
                        g.id,
                        Group {
                            rec: g.clone(),
                            chunks: 0,
                        },
                    );
                }
            }
            Mutation::PutVolume(v) => self.put_volume(v),
            Mutation::CloneVolume { volume, chunks }
            | Mutation::RestoreVolume { volume, chunks } => {
                self.put_volume(volume);
                for (chunk, group_id) in chunks {
                    self.map_chunk(volume.id, *chunk, *group_id);
                }
            }
            Mutation::DeleteVolume { id } => {
                if let Some(v) = self.volumes.remove(id) {
                    self.by_name.remove(&v.rec.name);
                    self.index_parent(*id, v.rec.parent.as_ref(), None);
                    for g in v.chunks.values() {
                        if let Some(g) = self.groups.get_mut(g) {
                            g.chunks = g.chunks.saturating_sub(1);
                        }
                    }
                }
            }
            Mutation::MapChunk {
                volume_id,
                chunk,
                group_id,
            } => self.map_chunk(*volume_id, *chunk, *group_id),
            Mutation::MapChunks { volume_id, chunks } => {
                for (chunk, group_id) in chunks {
                    self.map_chunk(*volume_id, *chunk, *group_id);
                }
            }
            Mutation::SetGroupTarget { group_id, target } => {
                if let Some(g) = self.groups.get_mut(group_id) {
                    g.rec.target = target.clone();
                }
            }
            Mutation::SetGroupMembers {
                group_id,
                members,
                term,
            } => {
                let Some(g) = self.groups.get_mut(group_id) else {
                    return;
                };
                for old in &g.rec.members {
                    if let Some(set) = self.groups_by_node.get_mut(old) {
                        set.remove(group_id);
                        if set.is_empty() {
                            self.groups_by_node.remove(old);
                        }
                    }
                }
                for new in members {
                    self.groups_by_node
                        .entry(*new)
                        .or_default()
                        .insert(*group_id);
                }
                g.rec.members = members.clone();
                g.rec.target.clear();
                g.rec.term = g.rec.term.max(*term);
            }
            Mutation::SetNodeDraining { node_id, draining } => {
                if let Some(n) = self.nodes.get_mut(node_id) {
                    n.draining = *draining;
                }
            }
            Mutation::SetCrl(c) => self.crl = Some(c.clone()),
            Mutation::SetGroupsEstablished { group_ids } => {
                for id in group_ids {
                    if let Some(g) = self.groups.get_mut(id) {
                        g.rec.established = true;
                    }
                }
            }
            // Record-only changes, applied above.
            Mutation::CutSnapshot { .. }
            | Mutation::RollbackDone { .. }
            | Mutation::SnapshotReady { .. }
            | Mutation::DeleteSnapshot { .. }
            | Mutation::CloneLinked { .. }
            | Mutation::SetFlattening { .. }
            | Mutation::ChunkUnlinked { .. }
            | Mutation::ParentCleared { .. }
            | Mutation::ReclaimProgress { .. }
            | Mutation::ReclaimDone { .. }
            | Mutation::RestoreProgress { .. }
            | Mutation::RestoreLinked { .. }
            | Mutation::RestoreDone { .. } => {}
            // Backup changes, applied above as their delta.
            Mutation::CreateBackup(_)
            | Mutation::BackupChunks { .. }
            | Mutation::BackupReady { .. }
            | Mutation::BackupFailed { .. }
            | Mutation::BackupError { .. }
            | Mutation::DeleteBackup { .. }
            | Mutation::SegmentsReleased { .. }
            | Mutation::GcClaim { .. }
            | Mutation::GcDeleted { .. } => {}
        }
    }

    pub fn next_ids(&self) -> NextIds {
        self.next
    }

    fn put_volume(&mut self, v: &VolumeRecord) {
        let before = if let Some(old) = self.volumes.get_mut(&v.id) {
            self.by_name.remove(&old.rec.name);
            std::mem::replace(&mut old.rec, v.clone()).parent
        } else {
            self.volumes.insert(
                v.id,
                Volume {
                    rec: v.clone(),
                    chunks: BTreeMap::new(),
                    by_group: BTreeSet::new(),
                },
            );
            None
        };
        self.by_name.insert(v.name.clone(), v.id);
        self.index_parent(v.id, before.as_ref(), v.parent.as_ref());
    }

    /// Keeps the clones index in step with a clone's parent link changing.
    fn index_parent(&mut self, id: u64, before: Option<&ParentLink>, after: Option<&ParentLink>) {
        if let Some(p) = before {
            let key = (p.volume_id, p.snapshot.clone());
            if let Some(set) = self.clones.get_mut(&key) {
                set.remove(&id);
                if set.is_empty() {
                    self.clones.remove(&key);
                }
            }
        }
        if let Some(p) = after {
            self.clones
                .entry((p.volume_id, p.snapshot.clone()))
                .or_default()
                .insert(id);
        }
    }

    fn map_chunk(&mut self, volume_id: u64, chunk: u64, group_id: u64) {
        let Some(v) = self.volumes.get_mut(&volume_id) else {
            return;
        };
        let old = v.chunks.insert(chunk, group_id);
        if let Some(old) = old {
            v.by_group.remove(&(old, chunk));
        }
        v.by_group.insert((group_id, chunk));
        if let Some(g) = old.and_then(|old| self.groups.get_mut(&old)) {
            g.chunks = g.chunks.saturating_sub(1);
        }
        if let Some(g) = self.groups.get_mut(&group_id) {
            g.chunks += 1;
        }
    }
}
