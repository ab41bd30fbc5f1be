//! [`State::check`]: the invariants a state keeps whatever requests made it, checked by the
//! fuzz harness after every request and by the tests (compiled only for them).
//!
//! Each is one the code relies on or promises; derived indexes are compared with a
//! recomputation from the primary data. Invariants the code deliberately does not keep are
//! noted where they would be. Reads only; allocates little: the tally of segment
//! recordings, a key per clone, and the finding.

use std::collections::BTreeMap;
use std::fmt::Display;

use tessera_proto::control::{BackupState, Hash, SnapshotState};

use crate::volume::chunk_count;

use super::backup_records::{BackupRecord, GcKey};
use super::backup_refs::StoreRefs;
use super::{Inconsistent, State, Volume};

type CheckResult = Result<(), Inconsistent>;

/// Returns the inconsistency `format!(..)` describes unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Inconsistent(format!($($msg)+)));
        }
    };
}

/// `r`, its finding prefixed with what it is about.
fn about(what: impl Display, r: CheckResult) -> CheckResult {
    r.map_err(|e| Inconsistent(format!("{what}: {}", e.0)))
}

/// Every key of `m` is its value's id, not 0 (reserved), and below the mark `next`.
fn ids<V>(kind: &str, m: &BTreeMap<u64, V>, id: fn(&V) -> u64, next: u64) -> CheckResult {
    for (k, v) in m {
        let rec = id(v);
        ensure!(
            rec == *k && *k != 0 && *k < next,
            "{kind} {rec} is stored under id {k}; next.{kind} is {next}"
        );
    }
    Ok(())
}

impl State {
    /// Checks every invariant of the state (see the module doc); the first broken one is
    /// the error.
    pub fn check(&self) -> CheckResult {
        ids("node", &self.nodes, |n| n.id, self.next.node)?;
        ids("group", &self.groups, |g| g.rec.id, self.next.group)?;
        ids("volume", &self.volumes, |v| v.rec.id, self.next.volume)?;
        ids("backup", &self.backups.records, |b| b.id, self.next.backup)?;
        let (names, vols) = (self.by_name.len(), self.volumes.len());
        ensure!(names == vols, "by_name: {names} names, {vols} volumes");
        for (name, id) in &self.by_name {
            let named = self.volumes.get(id).is_some_and(|v| &v.rec.name == name);
            ensure!(named, "by_name maps {name:?} to volume {id}");
        }
        for (id, v) in &self.volumes {
            about(format_args!("volume {id}"), self.check_volume(*id, v))?;
        }
        for ((parent, snap), ids) in &self.clones {
            ensure!(!ids.is_empty(), "clones holds none of {parent}@{snap}");
            for c in ids {
                let p = self.volumes.get(c).and_then(|v| v.rec.parent.as_ref());
                let ok = p.is_some_and(|p| p.volume_id == *parent && &p.snapshot == snap);
                ensure!(ok, "clones lists {c} under {parent}@{snap}: {p:?}");
            }
        }
        self.check_groups()?;
        self.check_backups()
    }

    /// Members and targets are distinct known nodes; `groups_by_node` and each group's
    /// chunk count match the groups and the volumes' chunk maps.
    fn check_groups(&self) -> CheckResult {
        for (id, g) in &self.groups {
            for (what, list) in [("member", &g.rec.members), ("target", &g.rec.target)] {
                for (i, n) in list.iter().enumerate() {
                    let ok = self.nodes.contains_key(n) && !list[..i].contains(n);
                    ensure!(ok, "group {id}: {what} {n} unknown or twice");
                }
            }
            for n in &g.rec.members {
                let listed = self.groups_by_node.get(n).is_some_and(|gs| gs.contains(id));
                ensure!(listed, "groups_by_node misses group {id} of node {n}");
            }
            // Through `by_group`, already checked against the chunk maps.
            let mapped: u64 = (self.volumes.values())
                .map(|v| v.by_group.range((*id, 0)..=(*id, u64::MAX)).count() as u64)
                .sum();
            let counted = g.chunks;
            let ok = counted == mapped;
            ensure!(ok, "group {id} counts {counted} chunks, {mapped} mapped");
        }
        for (n, gs) in &self.groups_by_node {
            ensure!(!gs.is_empty(), "groups_by_node: none under node {n}");
            for g in gs {
                let members = self.groups.get(g).map_or(&[][..], |g| &g.rec.members);
                ensure!(members.contains(n), "groups_by_node: group {g} under {n}");
            }
        }
        Ok(())
    }

    fn check_volume(&self, id: u64, v: &Volume) -> CheckResult {
        let r = &v.rec;
        // Resizes only grow; a clone maps its parent's chunks below the snapshot's size; a
        // restore the chunks its backup recorded, below the backup's size as the backup
        // job records them (`backup_loop::plan_all`; `BackupChunks` does not check it).
        let count = chunk_count(r.size, r.chunk_size);
        let (indexed, mapped) = (v.by_group.len(), v.chunks.len());
        let ok = indexed == mapped;
        ensure!(ok, "by_group holds {indexed} entries, {mapped} chunks");
        for (c, g) in &v.chunks {
            ensure!(*c < count, "chunk {c} is past its {count} chunks");
            ensure!(self.groups.contains_key(g), "chunk {c}: unknown group {g}");
            ensure!(v.by_group.contains(&(*g, *c)), "by_group misses ({g}, {c})");
        }
        let seq = r.seq();
        for (i, s) in r.snapshots.iter().enumerate() {
            let (name, at, size) = (&s.name, s.seq, s.size);
            let after = i.checked_sub(1).map_or(0, |p| r.snapshots[p].seq);
            let ok = after < at && at < seq;
            ensure!(ok, "snapshot {name} at {at}: not in {after}..{seq}");
            let twice = r.snapshots[..i].iter().any(|o| &o.name == name);
            ensure!(!twice, "two snapshots named {name}");
            let ok = size <= r.size;
            ensure!(ok, "snapshot {name} is {size} bytes, over the volume");
        }
        // Each reclaim starts just above a snapshot (or at 1): then none overlaps the next.
        for (i, rc) in r.reclaims.iter().enumerate() {
            let low = rc.low;
            let after = i.checked_sub(1).map_or(0, |p| r.reclaims[p].low);
            let ok = after < low && low < seq;
            ensure!(ok, "reclaim at {low}: not in {after}..{seq}");
            let above = low == 1 || r.snapshots.iter().any(|s| s.seq == low - 1);
            ensure!(above, "reclaim at {low} is not just above a snapshot");
        }
        // Not checked: that a snapshot at `to` remains (`plan_delete_snapshot` does not
        // refuse the one a rollback under way returns to).
        if let Some(to) = r.rolling_back {
            ensure!(to < seq, "rolls back to {to}, not below {seq}");
        }
        if let Some(a) = &r.attachment {
            let (at, epoch) = (a.epoch, r.epoch);
            ensure!(at >= 1 && at == epoch, "attached at epoch {at} of {epoch}");
            ensure!(r.rolling_back.is_none(), "attached while rolling back");
            ensure!(!r.linking(), "attached while linking to its parent");
            let unlinked = r.restore.as_ref().is_some_and(|x| !x.linked);
            ensure!(!unlinked, "attached while its restore is unlinked");
        }
        if let Some(x) = &r.restore {
            let (backup, store) = (x.backup, &x.store);
            let b = self.backups.records.get(&backup);
            let ok = b.is_some_and(|b| b.state == BackupState::Ready && &b.store == store);
            ensure!(ok, "restores from backup {backup}, not ready in {store}");
        }
        let Some(p) = &r.parent else {
            return Ok(());
        };
        // Deleting a snapshot with clones, or its volume, is refused: the link holds.
        let parent = self.volumes.get(&p.volume_id).filter(|_| p.volume_id != id);
        let snap = parent.and_then(|pv| pv.rec.snapshot(&p.snapshot));
        let (to, name, at) = (p.volume_id, &p.snapshot, p.seq);
        let ok = snap.is_some_and(|s| s.seq == at && s.state == SnapshotState::Ready);
        ensure!(ok, "links to {to}@{name} at {at}, no ready snapshot");
        ensure!(!(p.linking && p.flattening), "flattening while linking");
        for (i, c) in p.linked.iter().enumerate() {
            let after = i.checked_sub(1).map(|j| &p.linked[j]);
            ensure!(after < Some(c), "linked chunks not ascending at {c}");
            let (mine, theirs) = (v.chunks.get(c), parent.and_then(|pv| pv.chunks.get(c)));
            let ok = mine.is_some() && mine == theirs;
            ensure!(ok, "linked chunk {c}: group {mine:?}, parent's {theirs:?}");
        }
        let key = (to, name.clone());
        let indexed = self.clones.get(&key).is_some_and(|s| s.contains(&id));
        ensure!(indexed, "clones misses it under {to}@{name}");
        Ok(())
    }

    /// Backup records, chunk maps and each store's refs, garbage and claims (see
    /// `backup_refs`). Object refs count segments' object lists, which the state does not
    /// keep (and a release whose list could not be read keeps its objects counted): only
    /// their being positive, and neither garbage nor claimed, is checked.
    fn check_backups(&self) -> CheckResult {
        let b = &self.backups;
        let mut recorded: BTreeMap<(&str, Hash), u64> = BTreeMap::new();
        for (id, chunks) in &b.chunks {
            let r = b.records.get(id).filter(|_| !chunks.is_empty());
            ensure!(r.is_some(), "backup {id}: chunks, but no record or none");
            let store = r.map_or("", |r| r.store.as_str());
            for seg in chunks.values() {
                *recorded.entry((store, *seg)).or_default() += 1;
            }
        }
        for ((store, seg), n) in &recorded {
            let refs = b.stores.get(*store).and_then(|s| s.segs.get(seg));
            let ok = refs == Some(n);
            ensure!(
                ok,
                "store {store}: segment {seg} has refs {refs:?}, recorded {n} times"
            );
        }
        for (name, s) in &b.stores {
            let times = |seg: &Hash| recorded.get(&(name.as_str(), *seg)).copied().unwrap_or(0);
            about(format_args!("store {name}"), check_store(s, times))?;
        }
        for r in b.records.values() {
            about(format_args!("backup {}", r.id), self.check_backup(r))?;
        }
        Ok(())
    }

    fn check_backup(&self, r: &BackupRecord) -> CheckResult {
        let (state, root) = (r.state, r.root);
        let ready = state == BackupState::Ready;
        ensure!(ready == root.is_some(), "{state:?} with root {root:?}");
        // An uploading copy names its source's root too, which may be garbage meanwhile (a
        // claim skips it): only recorded roots are checked.
        if let Some(root) = root {
            let k = GcKey::Root(root);
            let s = self.backups.stores.get(&r.store);
            let free = s.is_none_or(|s| !s.garbage.contains_key(&k) && !s.claimed.contains(&k));
            ensure!(free, "its root {k} is garbage or claimed");
        }
        if state != BackupState::Uploading {
            return Ok(());
        }
        // What an upload reads is kept in place (the refusals of deletes in `backups`).
        for (what, from) in [("base", r.base), ("source", r.copied_from)] {
            let Some(from) = from else { continue };
            let f = self.backups.records.get(&from);
            let ok = f.is_some_and(|f| f.state == BackupState::Ready);
            ensure!(ok, "uploading from {what} {from}, not ready");
        }
        if r.copied_from.is_some() {
            return Ok(());
        }
        let snaps = self.volumes.get(&r.volume_id).map(|v| &v.rec.snapshots);
        let has = |seq: u64, name: Option<&str>| {
            snaps.into_iter().flatten().any(|s| {
                s.seq == seq && name.is_none_or(|n| n == s.name && s.state == SnapshotState::Ready)
            })
        };
        let (vol, snap, seq, base) = (r.volume_id, &r.snapshot, r.seq, r.base_seq);
        let read = has(seq, Some(snap));
        ensure!(read, "reads {vol}@{snap} at {seq}: no ready snapshot");
        let kept = r.base.is_none() || has(base, None);
        ensure!(kept, "its base's snapshot at {base} is gone");
        Ok(())
    }
}

/// One store's refs: segments counted as recorded (`recorded`) and queued for release at
/// 0; what is referenced is neither garbage nor claimed; `by_since` is the garbage.
fn check_store(s: &StoreRefs, recorded: impl Fn(&Hash) -> u64) -> CheckResult {
    let empty = s.segs.is_empty() && s.objects.is_empty() && s.garbage.is_empty();
    let kept = s.gc_gen != 0 || !(empty && s.release.is_empty() && s.claimed.is_empty());
    ensure!(kept, "kept with nothing in it");
    for (seg, n) in &s.segs {
        let times = recorded(seg);
        let ok = *n == times;
        ensure!(ok, "segment {seg}: {n} refs, recorded {times} times");
        let queued = s.release.contains(seg);
        let ok = (*n == 0) == queued;
        ensure!(ok, "segment {seg}: {n} refs; queued for release: {queued}");
    }
    for seg in &s.release {
        let counted = s.segs.contains_key(seg);
        ensure!(counted, "segment {seg} queued for release, not counted");
    }
    for (o, n) in &s.objects {
        ensure!(*n >= 1, "object {o} kept with 0 refs");
    }
    // A segment at 0 refs still counts its objects until released.
    let objects = s.objects.keys().map(|o| GcKey::Object(*o));
    for k in s.segs.keys().map(|h| GcKey::Segment(*h)).chain(objects) {
        let free = !s.garbage.contains_key(&k) && !s.claimed.contains(&k);
        ensure!(free, "{k} is referenced but garbage or claimed");
    }
    for k in &s.claimed {
        ensure!(!s.garbage.contains_key(k), "{k} is claimed and garbage");
    }
    let (indexed, garbage) = (s.by_since.len(), s.garbage.len());
    let ok = indexed == garbage;
    ensure!(ok, "by_since holds {indexed} keys, garbage {garbage}");
    for (since, k) in &s.by_since {
        let at = s.garbage.get(k);
        ensure!(at == Some(since), "by_since has {k} at {since}, not {at:?}");
    }
    Ok(())
}
