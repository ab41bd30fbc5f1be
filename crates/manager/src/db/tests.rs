//! The database's promises: what is committed is what a reopen loads, ids never reused,
//! one manager per data directory.

use super::*;
use tessera_proto::control::NodeRegistration;

fn reopen(dir: &Path) -> (Db, State) {
    Db::open(dir).unwrap()
}

fn step(store: &Db, state: &mut State, m: Mutation) {
    store.commit(&m, state).unwrap();
    state.apply(&m);
}

/// Registers one node per rack, in order (ids 1, 2, ...).
fn register(store: &Db, state: &mut State, racks: &[&str]) {
    for rack in racks {
        let (_, m) = state
            .plan_register(&NodeRegistration {
                node_id: None,
                zone: "z".into(),
                rack: (*rack).into(),
                addr: format!("{rack}:1"),
                capacity_bytes: 1,
                used_bytes: 0,
                disk: 0,
            })
            .unwrap();
        step(store, state, m);
    }
}

/// Chunks mapped in bulk are rows like chunks mapped one by one.
#[test]
fn chunks_mapped_in_bulk_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (store, mut state) = reopen(dir.path());
        register(&store, &mut state, &["a", "b", "c"]);
        let m = state.plan_groups(|_| true, 3, 2).unwrap();
        step(&store, &mut state, m);
        let m = state.plan_create_volume("v", 1 << 40, None, 7).unwrap();
        step(&store, &mut state, m);
        let id = state.volume_by_name("v").unwrap().id;
        let m = state
            .plan_map_chunks(id, 100, 1000, |_| true)
            .unwrap()
            .unwrap();
        step(&store, &mut state, m);
        id
    };
    let (_, state) = reopen(dir.path());
    assert_eq!(state.volume_by_name("v").unwrap().mapped_chunks, 1000);
    let page = state.route_page(id, 0, 0).unwrap();
    assert_eq!(page.routes.len(), 1000);
    assert_eq!(page.routes[0].chunk, 100);
    assert_eq!(page.next, None);
    assert_eq!(state.group_chunks(1) + state.group_chunks(2), 1000);
    assert_eq!(state.group_page(id, 0).unwrap().routes.len(), 2);
}

#[test]
fn state_survives_reopen_and_ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (vol_id, chunk_group) = {
        let (store, mut state) = reopen(dir.path());
        register(&store, &mut state, &["a", "b", "c"]);
        let m = state.plan_groups(|_| true, 3, 2).unwrap();
        step(&store, &mut state, m);
        let m = state.plan_create_volume("gone", 1 << 30, None, 7).unwrap();
        step(&store, &mut state, m);
        let gone = state.volume_by_name("gone").unwrap().id;
        let m = state.plan_map_chunk(gone, 3, |_| true).unwrap();
        step(&store, &mut state, m);
        let (m, _) = state.plan_delete_volume("gone").unwrap();
        step(&store, &mut state, m);
        let m = state.plan_create_volume("kept", 1 << 30, None, 8).unwrap();
        step(&store, &mut state, m);
        let kept = state.volume_by_name("kept").unwrap().id;
        let m = state.plan_map_chunk(kept, 5, |_| true).unwrap();
        step(&store, &mut state, m);
        (kept, state.route(kept, 5).unwrap().unwrap().group_id)
    };
    let (store, mut state) = reopen(dir.path());
    assert_eq!(state.nodes().count(), 3);
    assert_eq!(state.groups().count(), 2);
    assert_eq!(state.volume_count(), 1);
    let kept = state.volume_by_name("kept").unwrap();
    assert_eq!(
        (kept.id, kept.mapped_chunks, kept.created_unix),
        (vol_id, 1, 8)
    );
    assert_eq!(
        state.route(vol_id, 5).unwrap().unwrap().group_id,
        chunk_group
    );
    assert_eq!(state.group_chunks(chunk_group), 1);

    // Deleting the highest ids must not let them come back after a reopen.
    let (m, _) = state.plan_delete_volume("kept").unwrap();
    step(&store, &mut state, m);
    drop(store);
    let (_, state) = reopen(dir.path());
    assert_eq!(state.volume_count(), 0);
    let m = state.plan_create_volume("new", 4096, None, 9).unwrap();
    assert!(matches!(m, Mutation::PutVolume(v) if v.id == vol_id + 1));
    let (id, _) = state
        .plan_register(&NodeRegistration {
            node_id: None,
            zone: "z".into(),
            rack: "d".into(),
            addr: "d:1".into(),
            capacity_bytes: 1,
            used_bytes: 0,
            disk: 0,
        })
        .unwrap();
    assert_eq!(id, 4);
    assert_eq!(state.next_ids().group, 3);
}

#[test]
fn moves_and_drains_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, mut state) = reopen(dir.path());
        register(&store, &mut state, &["a", "b", "c", "d"]);
        let m = state.plan_groups(|n| n != 4, 3, 1).unwrap();
        step(&store, &mut state, m);
        let m = state.plan_drain(1, true, 3).unwrap().unwrap();
        step(&store, &mut state, m);
        // Group 1 moves from node 1 to node 4, then is re-aimed (back onto node 1).
        let m = Mutation::SetGroupTarget {
            group_id: 1,
            target: vec![4, 2, 3],
        };
        step(&store, &mut state, m);
        let m = Mutation::SetGroupMembers {
            group_id: 1,
            members: vec![4, 2, 3],
            term: 7,
        };
        step(&store, &mut state, m);
        let m = Mutation::SetGroupTarget {
            group_id: 1,
            target: vec![4, 1, 3],
        };
        step(&store, &mut state, m);
    }
    let (_, state) = reopen(dir.path());
    let g = state.group(1).unwrap();
    assert_eq!(g.members, [4, 2, 3]);
    assert_eq!(g.target, [4, 1, 3]);
    // Node 1, added back, joins at the term the last finished move was reported in.
    let spec = state.group_spec(g, true);
    assert!(spec.joining);
    assert_eq!(spec.min_term, 7);
    assert!(state.node(1).unwrap().draining);
    assert_eq!(state.groups_of(1).count(), 0);
    assert_eq!(state.groups_of(4).count(), 1);
    // A drained node that restarts and registers again stays draining.
    let (_, m) = state
        .plan_register(&NodeRegistration {
            node_id: Some(1),
            zone: "z".into(),
            rack: "a".into(),
            addr: "a:1".into(),
            capacity_bytes: 1,
            used_bytes: 0,
            disk: 0,
        })
        .unwrap();
    assert!(matches!(m, Mutation::PutNode(n) if n.draining));
    // Draining the last spare rack away is refused.
    assert!(matches!(
        state.plan_drain(2, true, 3),
        Err(tessera_proto::control::ControlError::Unavailable(_))
    ));
}

#[test]
fn established_groups_survive_a_restart_and_a_move() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, mut state) = reopen(dir.path());
        register(&store, &mut state, &["a", "b", "c", "d"]);
        let m = state.plan_groups(|n| n != 4, 3, 2).unwrap();
        step(&store, &mut state, m);
        // Unknown group 99 is ignored, as in the state.
        let m = Mutation::SetGroupsEstablished {
            group_ids: vec![1, 99],
        };
        step(&store, &mut state, m);
        let m = Mutation::SetGroupMembers {
            group_id: 1,
            members: vec![4, 2, 3],
            term: 7,
        };
        step(&store, &mut state, m);
    }
    let (_, state) = reopen(dir.path());
    let g = state.group(1).unwrap();
    assert_eq!(g.members, [4, 2, 3]);
    assert!(g.established);
    assert!(!state.group(2).unwrap().established);
    assert!(state.group(99).is_none());
}

#[test]
fn group_rows_from_before_established_read_as_not_established() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, mut state) = reopen(dir.path());
        register(&store, &mut state, &["a", "b", "c"]);
        // A row as an older manager wrote it, without the field.
        let tx = store.db.begin_write().unwrap();
        tx.open_table(GROUPS)
            .unwrap()
            .insert(1, br#"{"id":1,"members":[1,2,3]}"#.as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let (store, mut state) = reopen(dir.path());
    assert!(!state.group(1).unwrap().established);
    let m = Mutation::SetGroupsEstablished { group_ids: vec![1] };
    step(&store, &mut state, m);
    drop(store);
    let (_, state) = reopen(dir.path());
    assert!(state.group(1).unwrap().established);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = reopen(dir.path());
    assert!(matches!(Db::open(dir.path()), Err(Error::Locked { .. })));
    drop(first);
    assert!(Db::open(dir.path()).is_ok());
}

/// Snapshots, clones and a flatten's progress are rows like the rest: a reopen (or a
/// snapshot of the state, which carries the same rows) loads them as applied.
#[test]
fn snapshots_clones_and_flatten_progress_survive_reopen() {
    use crate::state::{ClonePlan, SnapshotPlan};
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let (store, mut state) = reopen(dir.path());
        register(&store, &mut state, &["a", "b", "c"]);
        let m = state.plan_groups(|_| true, 3, 2).unwrap();
        step(&store, &mut state, m);
        let m = state.plan_create_volume("v", 1 << 30, None, 7).unwrap();
        step(&store, &mut state, m);
        let id = state.volume_by_name("v").unwrap().id;
        let m = state.plan_map_chunks(id, 0, 3, |_| true).unwrap().unwrap();
        step(&store, &mut state, m);
        let SnapshotPlan::Cut(m) = state.plan_create_snapshot("v", "s1", 8).unwrap() else {
            panic!()
        };
        step(&store, &mut state, *m);
        let ready = Mutation::SnapshotReady {
            volume_id: id,
            name: "s1".into(),
            seq: 0,
        };
        step(&store, &mut state, ready);
        let SnapshotPlan::Cut(m) = state.plan_create_snapshot("v", "s2", 9).unwrap() else {
            panic!()
        };
        step(&store, &mut state, *m);
        let ClonePlan::Create(m) = state.plan_clone("v", "s1", "c", 10).unwrap() else {
            panic!()
        };
        step(&store, &mut state, *m);
        let c = state.volume_by_name("c").unwrap().id;
        for m in [
            Mutation::CloneLinked { volume_id: c },
            Mutation::SetFlattening {
                volume_id: c,
                flattening: true,
            },
            Mutation::ChunkUnlinked {
                volume_id: c,
                chunk: 0,
            },
        ] {
            step(&store, &mut state, m);
        }
        state.list_volumes()
    };
    let (store, mut state) = reopen(dir.path());
    assert_eq!(state.list_volumes(), before);
    let c = &before[0];
    assert_eq!(c.name, "c");
    let p = c.parent.as_ref().unwrap();
    assert_eq!((p.linked_chunks, p.flattening), (2, true));
    assert_eq!(before[1].seq, 3);
    assert_eq!(before[1].snapshots[0].clones, ["c"]);
    // Deleting a snapshot is a row change too.
    let v = before[1].id;
    let m = Mutation::DeleteSnapshot {
        volume_id: v,
        name: "s2".into(),
    };
    step(&store, &mut state, m);
    drop(store);
    let (_, state) = reopen(dir.path());
    assert_eq!(state.volume_by_name("v").unwrap().snapshots.len(), 1);
}

/// A deleted snapshot's reclaim and its progress are row changes: a reopen loads them as
/// the memory had them, and a finished one stays gone.
#[test]
fn reclaims_and_their_progress_survive_reopen() {
    use crate::state::SnapshotPlan;
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (store, mut state) = reopen(dir.path());
        let m = state.plan_create_volume("v", 1 << 30, None, 7).unwrap();
        step(&store, &mut state, m);
        for name in ["s1", "s2", "s3"] {
            let SnapshotPlan::Cut(m) = state.plan_create_snapshot("v", name, 8).unwrap() else {
                panic!()
            };
            step(&store, &mut state, *m);
        }
        let id = state.volume_by_name("v").unwrap().id;
        for name in ["s1", "s3"] {
            let m = state.plan_delete_snapshot("v", name).unwrap();
            step(&store, &mut state, m);
        }
        let m = Mutation::ReclaimProgress {
            volume_id: id,
            low: 1,
            next_chunk: 4,
            of: Default::default(),
            retry: false,
        };
        step(&store, &mut state, m);
        let low_and_next: Vec<(u64, u64)> = state
            .volume_by_name("v")
            .unwrap()
            .reclaims
            .iter()
            .map(|r| (r.low, r.next_chunk))
            .collect();
        assert_eq!(low_and_next, [(1, 4), (3, 0)]);
        id
    };
    let (store, mut state) = reopen(dir.path());
    let loaded = state.volume_record("v").unwrap().reclaims.clone();
    assert_eq!(
        loaded,
        [
            crate::state::Reclaim {
                low: 1,
                next_chunk: 4
            },
            crate::state::Reclaim {
                low: 3,
                next_chunk: 0
            }
        ]
    );
    step(
        &store,
        &mut state,
        Mutation::ReclaimDone {
            volume_id: id,
            low: 1,
            of: Default::default(),
        },
    );
    drop(store);
    let (_, state) = reopen(dir.path());
    assert_eq!(state.volume_record("v").unwrap().reclaims.len(), 1);
}
