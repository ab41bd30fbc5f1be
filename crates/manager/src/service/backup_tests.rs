//! Which store a restore reads, where a restored chunk is read from, and what
//! `ListStores` counts.

use tessera_proto::control::{BackupState, ControlError, Hash, NodeRegistration, StoreKind};

use super::{chunk_source, restore_source, store_infos};
use crate::state::{ChunkSegment, CopyPlan, Mutation, SnapshotPlan, State};
use crate::stores::{StoreConfig, Stores};

/// Volume "v" with snapshot "s1" and a ready backup of it in store "a" (id 1, chunks 0
/// and 1), and a copy of it in store "b" (id 2), ready if `copied`.
fn state(copied: bool) -> State {
    let mut s = State::default();
    for r in 0..3 {
        let (_, m) = s
            .plan_register(&NodeRegistration {
                node_id: None,
                zone: "z".into(),
                rack: format!("r{r}"),
                addr: format!("n{r}:1"),
                capacity_bytes: 1 << 40,
                used_bytes: 0,
                disk: 0,
            })
            .unwrap();
        s.apply(&m);
    }
    s.apply(&s.plan_groups(|_| true, 3, 2).unwrap());
    s.apply(
        &s.plan_create_volume("v", 1 << 30, Some(1 << 20), 1)
            .unwrap(),
    );
    let id = s.volume_by_name("v").unwrap().id;
    s.apply(&s.plan_map_chunks(id, 0, 4, |_| true).unwrap().unwrap());
    let SnapshotPlan::Cut(m) = s.plan_create_snapshot("v", "s1", 2).unwrap() else {
        panic!()
    };
    s.apply(&m);
    s.apply(&Mutation::SnapshotReady {
        volume_id: id,
        name: "s1".into(),
        seq: 0,
    });
    let chunks = |id| Mutation::BackupChunks {
        id,
        gc_gen: 0,
        chunks: (0..2)
            .map(|c| ChunkSegment {
                chunk: c,
                segment: Hash([c as u8 + 10; 32]),
                objects: Some(vec![Hash([c as u8; 32])]),
                reads: 0,
            })
            .collect(),
        stats: Default::default(),
    };
    let ready = |id| Mutation::BackupReady {
        id,
        root: Hash([9; 32]),
        finished_unix: 3,
    };
    s.apply(&s.plan_create_backup("v", "s1", "a", 2).unwrap());
    s.apply(&chunks(1));
    s.apply(&ready(1));
    let CopyPlan::New(m) = s.plan_copy_backup(1, "b", 4).unwrap() else {
        panic!()
    };
    s.apply(&m);
    if copied {
        s.apply(&chunks(2));
        s.apply(&ready(2));
    }
    s
}

fn stores(zone: &str, dir: &std::path::Path) -> Stores {
    let at = |n: &str| dir.join(n).display().to_string();
    Stores::open(
        &[
            StoreConfig::dir("a", "z2", &at("a")),
            StoreConfig::dir("b", "z1", &at("b")),
            StoreConfig::dir("c", "z1", &at("c")),
        ],
        None,
        zone,
    )
    .unwrap()
}

#[test]
fn a_restore_reads_a_ready_copy_in_the_managers_zone_else_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(true);
    assert_eq!(s.backup(2).unwrap().state, BackupState::Ready);
    // This manager is in z1: the copy in "b" (z1) is read, not the backup in "a" (z2).
    let z1 = stores("z1", dir.path());
    assert_eq!(restore_source(&s, &z1, 1, None), Ok(2));
    // Asked from the copy's id too.
    assert_eq!(restore_source(&s, &z1, 2, None), Ok(2));
    // A store named is read if it holds a ready copy.
    assert_eq!(restore_source(&s, &z1, 1, Some("a")), Ok(1));
    assert_eq!(restore_source(&s, &z1, 2, Some("a")), Ok(1));
    assert!(matches!(
        restore_source(&s, &z1, 1, Some("c")),
        Err(ControlError::NotFound(m)) if m.contains("no ready copy in store \"c\"")
    ));
    assert!(matches!(
        restore_source(&s, &z1, 1, Some("zz")),
        Err(ControlError::NotFound(m)) if m.contains("store \"zz\" not found")
    ));
    assert!(matches!(
        restore_source(&s, &z1, 7, None),
        Err(ControlError::NotFound(_))
    ));
    // In z2, or with the copy still uploading: the backup's own store.
    assert_eq!(
        restore_source(&s, &stores("z2", dir.path()), 1, None),
        Ok(1)
    );
    assert_eq!(restore_source(&state(false), &z1, 1, None), Ok(1));
}

#[test]
fn stores_are_listed_with_their_counts() {
    let dir = tempfile::tempdir().unwrap();
    let infos = store_infos(&state(true), &stores("z1", dir.path()));
    let row = |n: &str| infos.iter().find(|i| i.name == n).unwrap().clone();
    assert_eq!(infos.len(), 3);
    let a = row("a");
    assert_eq!((a.backups, a.objects, a.garbage), (1, 2, 0));
    assert!(a.default, "the first store is the default");
    assert_eq!((a.kind.as_str(), a.zone.as_str()), ("dir", "z2"));
    assert_eq!(row("b").backups, 1);
    assert_eq!(row("c").backups, 0);
    assert!(!row("b").default);
    let spec = stores("z1", dir.path()).spec("a").unwrap().clone();
    assert!(matches!(spec.kind, StoreKind::Dir { .. }));
}

#[test]
fn a_restored_chunk_is_read_from_the_restores_store_first_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = state(true);
    // Restored from the copy in "b": "b" first, then the backup's "a".
    s.apply(&s.plan_restore_volume("r", 2, 5, |_| true).unwrap());
    let id = s.volume_by_name("r").unwrap().id;
    let z1 = stores("z1", dir.path());
    let src = chunk_source(&s, &z1, id, 1).unwrap();
    let names: Vec<&str> = src.stores.iter().map(|x| x.name.as_str()).collect();
    assert_eq!((src.backup, names), (2, vec!["b", "a"]));
    assert_eq!(src.stores[0], z1.spec("b").unwrap().clone());
    assert_eq!(src.segment, Some(Hash([11; 32])));
    // A chunk the backup holds nothing of: no segment.
    assert_eq!(chunk_source(&s, &z1, id, 3).unwrap().segment, None);
    // A store not configured here is left out; none configured: unavailable.
    let only_c = Stores::open(&[StoreConfig::dir("c", "z1", "/nonexistent/c")], None, "z1");
    let only_c = only_c.unwrap();
    assert!(matches!(
        chunk_source(&s, &only_c, id, 1),
        Err(ControlError::Unavailable(m)) if m.contains("b, a")
    ));
    // Not restoring, or no such volume.
    let v = s.volume_by_name("v").unwrap().id;
    for vol in [v, 999] {
        assert!(matches!(
            chunk_source(&s, &z1, vol, 0),
            Err(ControlError::NotFound(_))
        ));
    }
}
