//! The backup tables: backup records, each backup's chunk → segment map, and each store's
//! reference counts, garbage, segments to release, claimed keys and `gc_gen`.
//!
//! A backup mutation is written as the [`BackupDelta`] the state decided for it, row by
//! row, so the tables always hold what memory holds. Databases from before backups have
//! none of these tables: `Db::open` creates them, and reading a missing one reads nothing.

use redb::{ReadableTable, TableDefinition, TableError};
use tessera_proto::control::Hash;

use super::{DbResult, json};
use crate::state::{BackupDelta, BackupImage, GcKey, StoreImage};

/// id → JSON `BackupRecord`.
const BACKUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("backups");
/// (backup id, chunk) → segment (32 bytes).
const BACKUP_CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("backup_chunks");
/// (store, segment) → refs (0: queued for release).
const SEG_REFS: TableDefinition<(&str, &[u8]), u64> = TableDefinition::new("backup_seg_refs");
/// (store, object) → refs.
const OBJ_REFS: TableDefinition<(&str, &[u8]), u64> = TableDefinition::new("backup_obj_refs");
/// (store, key) → garbage since (Unix seconds).
const GARBAGE: TableDefinition<(&str, &str), u64> = TableDefinition::new("backup_garbage");
/// (store, segment) queued for release.
const RELEASE: TableDefinition<(&str, &[u8]), ()> = TableDefinition::new("backup_release");
/// (store, key) claimed by the collector.
const CLAIMED: TableDefinition<(&str, &str), ()> = TableDefinition::new("backup_claimed");
/// store → gc_gen.
const GC_GEN: TableDefinition<&str, u64> = TableDefinition::new("backup_gc_gen");

/// Creates the tables (a database from before backups gets them empty).
pub(super) fn init(tx: &redb::WriteTransaction) -> DbResult<()> {
    tx.open_table(BACKUPS)?;
    tx.open_table(BACKUP_CHUNKS)?;
    tx.open_table(SEG_REFS)?;
    tx.open_table(OBJ_REFS)?;
    tx.open_table(GARBAGE)?;
    tx.open_table(RELEASE)?;
    tx.open_table(CLAIMED)?;
    tx.open_table(GC_GEN)?;
    Ok(())
}

/// Writes the rows of one backup mutation.
pub(super) fn write_delta(tx: &redb::WriteTransaction, d: &BackupDelta) -> DbResult<()> {
    if !d.records.is_empty() {
        let mut t = tx.open_table(BACKUPS)?;
        for (id, rec) in &d.records {
            match rec {
                Some(r) => t.insert(*id, json(r).as_slice())?,
                None => t.remove(*id)?,
            };
        }
    }
    if !d.chunks.is_empty() {
        let mut t = tx.open_table(BACKUP_CHUNKS)?;
        for (k, seg) in &d.chunks {
            match seg {
                Some(s) => t.insert(*k, s.0.as_slice())?,
                None => t.remove(*k)?,
            };
        }
    }
    if !d.seg_refs.is_empty() {
        let mut t = tx.open_table(SEG_REFS)?;
        for ((store, h), n) in &d.seg_refs {
            let k = (store.as_str(), h.0.as_slice());
            match n {
                Some(n) => t.insert(k, *n)?,
                None => t.remove(k)?,
            };
        }
    }
    if !d.obj_refs.is_empty() {
        let mut t = tx.open_table(OBJ_REFS)?;
        for ((store, h), n) in &d.obj_refs {
            let k = (store.as_str(), h.0.as_slice());
            match n {
                Some(n) => t.insert(k, *n)?,
                None => t.remove(k)?,
            };
        }
    }
    if !d.garbage.is_empty() {
        let mut t = tx.open_table(GARBAGE)?;
        for ((store, key), since) in &d.garbage {
            let path = key.path();
            let k = (store.as_str(), path.as_str());
            match since {
                Some(s) => t.insert(k, *s)?,
                None => t.remove(k)?,
            };
        }
    }
    if !d.release.is_empty() {
        let mut t = tx.open_table(RELEASE)?;
        for ((store, h), on) in &d.release {
            let k = (store.as_str(), h.0.as_slice());
            if *on {
                t.insert(k, ())?;
            } else {
                t.remove(k)?;
            }
        }
    }
    if !d.claimed.is_empty() {
        let mut t = tx.open_table(CLAIMED)?;
        for ((store, key), on) in &d.claimed {
            let path = key.path();
            let k = (store.as_str(), path.as_str());
            if *on {
                t.insert(k, ())?;
            } else {
                t.remove(k)?;
            }
        }
    }
    if !d.gc_gen.is_empty() {
        let mut t = tx.open_table(GC_GEN)?;
        for (store, g) in &d.gc_gen {
            t.insert(store.as_str(), *g)?;
        }
    }
    Ok(())
}

fn hash(b: &[u8], what: &str) -> DbResult<Hash> {
    let a: [u8; 32] = b
        .try_into()
        .map_err(|_| redb::Error::Corrupted(format!("{what}: a hash of {} bytes", b.len())))?;
    Ok(Hash(a))
}

fn key(s: &str) -> DbResult<GcKey> {
    s.parse()
        .map_err(|e| redb::Error::Corrupted(format!("backup key: {e}")).into())
}

/// Opens a table of a read transaction; `None` if the database has no such table yet.
macro_rules! open_or_none {
    ($tx:expr, $def:expr) => {
        match $tx.open_table($def) {
            Ok(t) => Some(t),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
}

fn store<'a>(
    stores: &'a mut std::collections::BTreeMap<String, StoreImage>,
    name: &str,
) -> &'a mut StoreImage {
    stores
        .entry(name.to_string())
        .or_insert_with(|| StoreImage {
            name: name.to_string(),
            ..StoreImage::default()
        })
}

/// Reads every backup row.
pub(super) fn read(tx: &redb::ReadTransaction) -> DbResult<BackupImage> {
    let mut img = BackupImage::default();
    let mut stores: std::collections::BTreeMap<String, StoreImage> = Default::default();
    if let Some(t) = open_or_none!(tx, BACKUPS) {
        for row in t.iter()? {
            let (k, v) = row?;
            let rec = serde_json::from_slice(v.value())
                .map_err(|e| redb::Error::Corrupted(format!("backup record {}: {e}", k.value())))?;
            img.records.push(rec);
        }
    }
    if let Some(t) = open_or_none!(tx, BACKUP_CHUNKS) {
        for row in t.iter()? {
            let (k, v) = row?;
            let (id, chunk) = k.value();
            img.chunks
                .push((id, chunk, hash(v.value(), "backup chunk segment")?));
        }
    }
    if let Some(t) = open_or_none!(tx, SEG_REFS) {
        for row in t.iter()? {
            let (k, v) = row?;
            let (s, h) = k.value();
            let h = hash(h, "segment ref")?;
            store(&mut stores, s).segs.push((h, v.value()));
        }
    }
    if let Some(t) = open_or_none!(tx, OBJ_REFS) {
        for row in t.iter()? {
            let (k, v) = row?;
            let (s, h) = k.value();
            let h = hash(h, "object ref")?;
            store(&mut stores, s).objects.push((h, v.value()));
        }
    }
    if let Some(t) = open_or_none!(tx, GARBAGE) {
        for row in t.iter()? {
            let (k, v) = row?;
            let (s, p) = k.value();
            let gk = key(p)?;
            store(&mut stores, s).garbage.push((gk, v.value()));
        }
    }
    if let Some(t) = open_or_none!(tx, RELEASE) {
        for row in t.iter()? {
            let (k, _) = row?;
            let (s, h) = k.value();
            let h = hash(h, "segment to release")?;
            store(&mut stores, s).release.push(h);
        }
    }
    if let Some(t) = open_or_none!(tx, CLAIMED) {
        for row in t.iter()? {
            let (k, _) = row?;
            let (s, p) = k.value();
            let gk = key(p)?;
            store(&mut stores, s).claimed.push(gk);
        }
    }
    if let Some(t) = open_or_none!(tx, GC_GEN) {
        for row in t.iter()? {
            let (k, v) = row?;
            store(&mut stores, k.value()).gc_gen = v.value();
        }
    }
    img.stores = stores.into_values().collect();
    Ok(img)
}

/// Replaces every backup row with `img`'s (tables dropped whole, as `write_image` does).
pub(super) fn write(tx: &redb::WriteTransaction, img: &BackupImage) -> DbResult<()> {
    {
        tx.delete_table(BACKUPS)?;
        let mut t = tx.open_table(BACKUPS)?;
        for r in &img.records {
            t.insert(r.id, json(r).as_slice())?;
        }
    }
    {
        tx.delete_table(BACKUP_CHUNKS)?;
        let mut t = tx.open_table(BACKUP_CHUNKS)?;
        for (id, chunk, seg) in &img.chunks {
            t.insert((*id, *chunk), seg.0.as_slice())?;
        }
    }
    tx.delete_table(SEG_REFS)?;
    tx.delete_table(OBJ_REFS)?;
    tx.delete_table(GARBAGE)?;
    tx.delete_table(RELEASE)?;
    tx.delete_table(CLAIMED)?;
    tx.delete_table(GC_GEN)?;
    let mut segs = tx.open_table(SEG_REFS)?;
    let mut objs = tx.open_table(OBJ_REFS)?;
    let mut garbage = tx.open_table(GARBAGE)?;
    let mut release = tx.open_table(RELEASE)?;
    let mut claimed = tx.open_table(CLAIMED)?;
    let mut gens = tx.open_table(GC_GEN)?;
    for s in &img.stores {
        let name = s.name.as_str();
        gens.insert(name, s.gc_gen)?;
        for (h, n) in &s.segs {
            segs.insert((name, h.0.as_slice()), *n)?;
        }
        for (h, n) in &s.objects {
            objs.insert((name, h.0.as_slice()), *n)?;
        }
        for (k, since) in &s.garbage {
            garbage.insert((name, k.path().as_str()), *since)?;
        }
        for h in &s.release {
            release.insert((name, h.0.as_slice()), ())?;
        }
        for k in &s.claimed {
            claimed.insert((name, k.path().as_str()), ())?;
        }
    }
    Ok(())
}
