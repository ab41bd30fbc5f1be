//! The backup part of the state as rows ([`BackupImage`]): what the database's backup
//! tables and the managers' Raft snapshot hold, and the state rebuilt from them.
//!
//! Every field is `#[serde(default)]`: a snapshot from a manager before backups has none
//! and loads as no backups.

use serde::{Deserialize, Serialize};
use tessera_proto::control::Hash;

use super::backup_records::{BackupRecord, GcKey};
use super::backup_refs::{Backups, StoreRefs};
use super::{Inconsistent, State};

/// Every backup row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupImage {
    #[serde(default)]
    pub records: Vec<BackupRecord>,
    /// `(backup id, chunk, segment)`.
    #[serde(default)]
    pub chunks: Vec<(u64, u64, Hash)>,
    #[serde(default)]
    pub stores: Vec<StoreImage>,
}

/// One store's reference counts, as rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreImage {
    pub name: String,
    #[serde(default)]
    pub gc_gen: u64,
    /// `(segment, refs)`; refs 0: queued for release (then also in `release`).
    #[serde(default)]
    pub segs: Vec<(Hash, u64)>,
    /// `(object, refs)`.
    #[serde(default)]
    pub objects: Vec<(Hash, u64)>,
    /// `(key, since_unix)`.
    #[serde(default)]
    pub garbage: Vec<(GcKey, u64)>,
    #[serde(default)]
    pub release: Vec<Hash>,
    #[serde(default)]
    pub claimed: Vec<GcKey>,
}

impl BackupImage {
    /// Whether there is no row at all.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.chunks.is_empty() && self.stores.is_empty()
    }
}

impl State {
    /// The backup rows of the state.
    #[allow(
        dead_code,
        reason = "the backup jobs (backup_loop, copy_loop, gc_loop, restore_loop) use these"
    )]
    pub fn backup_image(&self) -> BackupImage {
        let b = &self.backups;
        BackupImage {
            records: b.records.values().cloned().collect(),
            chunks: b
                .chunks
                .iter()
                .flat_map(|(id, c)| c.iter().map(move |(chunk, seg)| (*id, *chunk, *seg)))
                .collect(),
            stores: b
                .stores
                .iter()
                .map(|(name, s)| StoreImage {
                    name: name.clone(),
                    gc_gen: s.gc_gen,
                    segs: s.segs.iter().map(|(h, n)| (*h, *n)).collect(),
                    objects: s.objects.iter().map(|(h, n)| (*h, *n)).collect(),
                    garbage: s.garbage.iter().map(|(k, t)| (*k, *t)).collect(),
                    release: s.release.iter().copied().collect(),
                    claimed: s.claimed.iter().copied().collect(),
                })
                .collect(),
        }
    }

    /// Replaces the backup part of the state with `img`'s rows, checking they agree.
    pub fn restore_backups(&mut self, img: BackupImage) -> Result<(), Inconsistent> {
        let mut b = Backups::default();
        for r in img.records {
            if b.records.insert(r.id, r).is_some() {
                return Err(Inconsistent("a backup record is stored twice".into()));
            }
        }
        for (id, chunk, seg) in img.chunks {
            if !b.records.contains_key(&id) {
                return Err(Inconsistent(format!(
                    "chunk {chunk} of backup {id} is recorded, but the backup does not exist"
                )));
            }
            b.chunks.entry(id).or_default().insert(chunk, seg);
        }
        for s in img.stores {
            let mut refs = StoreRefs {
                gc_gen: s.gc_gen,
                segs: s.segs.into_iter().collect(),
                objects: s.objects.into_iter().filter(|(_, n)| *n > 0).collect(),
                release: s.release.into_iter().collect(),
                claimed: s.claimed.into_iter().collect(),
                ..StoreRefs::default()
            };
            for (k, since) in s.garbage {
                refs.garbage.insert(k, since);
                refs.by_since.insert((since, k));
            }
            b.stores.insert(s.name, refs);
        }
        if let Some(id) = b.records.keys().next_back() {
            self.next.backup = self.next.backup.max(id.saturating_add(1));
        }
        self.backups = b;
        Ok(())
    }
}
