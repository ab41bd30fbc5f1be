//! The state's rules: planning, applying, restoring, ids never reused.

use tessera_proto::control::{ControlError, MAX_ROUTES_PER_PAGE, NodeRegistration};

use super::*;

const GIB: u64 = 1 << 30;

fn reg(id: Option<u64>, rack: &str) -> NodeRegistration {
    NodeRegistration {
        node_id: id,
        zone: "z1".into(),
        rack: rack.into(),
        addr: format!("10.0.0.1:{}", 7500u64.wrapping_add(id.unwrap_or(0))),
        capacity_bytes: 1 << 40,
        used_bytes: 0,
        disk: 0,
    }
}

fn register(s: &mut State, id: Option<u64>, rack: &str) -> u64 {
    let (id, m) = s.plan_register(&reg(id, rack)).unwrap();
    s.apply(&m);
    id
}

fn cluster(racks: usize, per_rack: usize, per_node: u64) -> State {
    let mut s = State::default();
    for r in 0..racks {
        for _ in 0..per_rack {
            register(&mut s, None, &format!("r{r}"));
        }
    }
    if let Some(m) = s.plan_groups(|_| true, 3, per_node) {
        s.apply(&m);
    }
    s
}

fn create(s: &mut State, name: &str, size: u64) -> u64 {
    let m = s
        .plan_create_volume(name, size, None, 1_700_000_000)
        .unwrap();
    s.apply(&m);
    s.volume_by_name(name).unwrap().id
}

fn allocate(s: &mut State, vol: u64, chunk: u64) -> u64 {
    assert_eq!(s.route(vol, chunk).unwrap(), None);
    let m = s.plan_map_chunk(vol, chunk, |_| true).unwrap();
    s.apply(&m);
    s.route(vol, chunk).unwrap().unwrap().group_id
}

#[test]
fn node_ids_start_at_one_and_known_ids_are_kept() {
    let mut s = State::default();
    assert_eq!(register(&mut s, None, "a"), 1);
    assert_eq!(register(&mut s, None, "b"), 2);
    assert_eq!(register(&mut s, Some(1), "a2"), 1);
    assert_eq!(s.node(1).unwrap().rack, "a2");
    // A node from before a wiped database keeps its id; new ids go past it.
    assert_eq!(register(&mut s, Some(10), "c"), 10);
    assert_eq!(register(&mut s, None, "d"), 11);
    assert!(s.plan_register(&reg(Some(0), "x")).is_err());
}

/// Found by the `manager` fuzz target's invariants: an id at the top of the range left the
/// counter there, so the next new node was handed that id and took over the node's record.
#[test]
fn an_id_at_the_top_of_the_range_is_refused_and_no_new_node_reuses_an_id() {
    use tessera_proto::control::MAX_NODE_ID;
    let mut s = State::default();
    for id in [u64::MAX, MAX_NODE_ID + 1] {
        let err = s.plan_register(&reg(Some(id), "x")).unwrap_err();
        assert!(matches!(err, ControlError::Invalid(_)), "{err:?}");
    }
    assert_eq!(register(&mut s, Some(MAX_NODE_ID), "top"), MAX_NODE_ID);
    let err = s.plan_register(&reg(None, "new")).unwrap_err();
    assert!(matches!(err, ControlError::Invalid(_)), "{err:?}");
    assert_eq!(s.node(MAX_NODE_ID).unwrap().rack, "top");
    // A node registered above the bound before it existed keeps its id.
    s.apply(&Mutation::PutNode(NodeRecord {
        id: u64::MAX,
        ..s.node(MAX_NODE_ID).unwrap().clone()
    }));
    assert_eq!(register(&mut s, Some(u64::MAX), "old"), u64::MAX);
}

#[test]
fn every_group_spans_three_distinct_racks_and_nodes() {
    for (racks, per_rack) in [(3, 1), (3, 4), (4, 3), (5, 2), (7, 1)] {
        let s = cluster(racks, per_rack, 8);
        assert!(s.groups().count() > 0);
        for g in s.groups() {
            assert_eq!(g.members.len(), 3);
            let racks: BTreeSet<_> = g
                .members
                .iter()
                .map(|m| s.node(*m).unwrap().rack.clone())
                .collect();
            assert_eq!(racks.len(), 3, "group {g:?} repeats a rack");
        }
    }
}

#[test]
fn placement_fills_every_node_to_the_target_evenly() {
    for (racks, per_rack) in [(3, 1), (3, 4), (4, 3), (6, 2)] {
        let s = cluster(racks, per_rack, 8);
        let counts = s.replica_counts();
        assert_eq!(counts.len(), racks * per_rack);
        let min = *counts.values().min().unwrap();
        let max = *counts.values().max().unwrap();
        assert!(min >= 8, "{counts:?}");
        assert!(max - min <= 1, "unbalanced: {counts:?}");
    }
}

#[test]
fn no_groups_with_fewer_racks_than_replicas() {
    let s = cluster(2, 3, 8);
    assert_eq!(s.groups().count(), 0);
    assert_eq!(s.racks(|_| true), 2);
}

#[test]
fn placement_ignores_unusable_nodes_and_is_idempotent() {
    let mut s = cluster(3, 1, 4);
    let before = s.groups().count();
    assert!(s.plan_groups(|_| true, 3, 4).is_none());
    register(&mut s, None, "r3");
    // Node 4 is down: nothing changes for it.
    assert!(s.plan_groups(|id| id != 4, 3, 4).is_none());
    let m = s.plan_groups(|_| true, 3, 4).unwrap();
    s.apply(&m);
    assert!(s.groups().count() > before);
    assert!(s.replica_counts()[&4] >= 4);
    let ids: Vec<u64> = s.groups().map(|g| g.id).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
}

#[test]
fn volume_names_sizes_and_chunk_sizes_are_validated() {
    let s = State::default();
    let ok = |name: &str, size, cs| s.plan_create_volume(name, size, cs, 0).is_ok();
    assert!(ok("db1", GIB, None));
    assert!(ok("a.b_c-9", 4096, Some(1 << 20)));
    assert!(ok(&"x".repeat(64), GIB, Some(GIB)));
    assert!(!ok(&"x".repeat(65), GIB, None));
    assert!(!ok("", GIB, None));
    assert!(!ok(".hidden", GIB, None));
    assert!(!ok("-flag", GIB, None));
    assert!(!ok("a/b", GIB, None));
    assert!(!ok("é", GIB, None));
    assert!(!ok("db1", 0, None));
    assert!(!ok("db1", 4097, None));
    assert!(!ok("db1", GIB, Some(1 << 19)));
    assert!(!ok("db1", GIB, Some(2 * GIB)));
    assert!(!ok("db1", GIB, Some(3 << 20)));
    let err = s.plan_create_volume("db1", 5, None, 0).unwrap_err();
    assert!(
        matches!(&err, ControlError::Invalid(m) if m.contains('5')),
        "{err:?}"
    );
}

#[test]
fn volume_lifecycle_create_list_grow_delete() {
    let mut s = cluster(3, 1, 2);
    create(&mut s, "zeta", 8 * GIB);
    create(&mut s, "alpha", GIB);
    assert_eq!(
        s.plan_create_volume("alpha", GIB, None, 0),
        Err(ControlError::AlreadyExists(
            "volume \"alpha\" already exists".into()
        ))
    );
    let names: Vec<_> = s.list_volumes().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["alpha", "zeta"]);

    assert_eq!(
        s.plan_resize_volume("zeta", GIB),
        Err(ControlError::Invalid(
            "volume \"zeta\" is 8589934592 bytes; shrinking to 1073741824 bytes is not supported"
                .into()
        ))
    );
    assert_eq!(s.plan_resize_volume("zeta", 8 * GIB), Ok(None));
    let m = s.plan_resize_volume("zeta", 16 * GIB).unwrap().unwrap();
    s.apply(&m);
    assert_eq!(s.volume_by_name("zeta").unwrap().size, 16 * GIB);
    assert_eq!(
        s.plan_resize_volume("nope", GIB),
        Err(ControlError::NotFound("volume \"nope\" not found".into()))
    );

    let (m, _) = s.plan_delete_volume("alpha").unwrap();
    s.apply(&m);
    assert!(s.volume_by_name("alpha").is_err());
    assert_eq!(s.volume_count(), 1);
}

#[test]
fn allocation_goes_to_the_least_loaded_group() {
    let mut s = cluster(3, 1, 3);
    let groups: Vec<u64> = s.groups().map(|g| g.id).collect();
    assert_eq!(groups, [1, 2, 3]);
    let v = create(&mut s, "v", 64 * GIB);
    let got: Vec<u64> = (0..6).map(|c| allocate(&mut s, v, c)).collect();
    assert_eq!(got, [1, 2, 3, 1, 2, 3]);
    assert_eq!(s.volume_by_name("v").unwrap().mapped_chunks, 6);
    // Only group 3 usable.
    let m = s.plan_map_chunk(v, 6, |g| g.id == 3).unwrap();
    assert!(matches!(m, Mutation::MapChunk { group_id: 3, .. }));
    assert!(s.plan_map_chunk(v, 6, |_| false).is_none());
}

#[test]
fn routes_check_the_chunk_range_and_volume() {
    let mut s = cluster(3, 1, 1);
    // 100 MiB with 64 MiB chunks: chunks 0 and 1.
    let v = create(&mut s, "v", 100 << 20);
    assert!(s.route(v, 1).unwrap().is_none());
    assert!(matches!(s.route(v, 2), Err(ControlError::Invalid(_))));
    assert!(matches!(s.route(v + 1, 0), Err(ControlError::NotFound(_))));
    allocate(&mut s, v, 1);
    let (info, groups) = s.open_volume("v").unwrap();
    assert_eq!(info.mapped_chunks, 1);
    assert_eq!(groups.routes.len(), 1);
    assert_eq!(groups.routes[0].chunk, 1);
    assert_eq!(groups.routes[0].peers.len(), 3);
    assert!(matches!(
        s.route_page(v, 2, 0),
        Err(ControlError::Invalid(_))
    ));
    assert!(matches!(
        s.route_page(v + 1, 0, 0),
        Err(ControlError::NotFound(_))
    ));
}

/// No answer grows with the volume: routes come a bounded page at a time, and walking
/// the cursor visits every mapped chunk once, in order.
#[test]
fn routes_come_in_bounded_pages_that_cover_every_mapped_chunk() {
    let mut s = cluster(3, 1, 4);
    // 8 TiB of 64 MiB chunks: 131,072; every third one mapped, in bulk.
    let v = create(&mut s, "big", 8 << 40);
    let want: Vec<u64> = (0..131_072).filter(|c| c % 3 == 0).collect();
    for first in (0..131_072).step_by(MAX_ROUTES_PER_PAGE as usize) {
        let m = Mutation::MapChunks {
            volume_id: v,
            chunks: (first..first + u64::from(MAX_ROUTES_PER_PAGE))
                .filter(|c| c % 3 == 0)
                .map(|c| (c, 1 + c % 4))
                .collect(),
        };
        s.apply(&m);
    }
    assert_eq!(
        s.volume_by_name("big").unwrap().mapped_chunks,
        want.len() as u64
    );
    let mut got = Vec::new();
    let mut next = Some(0);
    let mut pages = 0;
    while let Some(first) = next {
        let page = s.route_page(v, first, 0).unwrap();
        assert!(page.routes.len() <= MAX_ROUTES_PER_PAGE as usize);
        got.extend(page.routes.iter().map(|r| r.chunk));
        next = page.next;
        pages += 1;
    }
    assert_eq!(got, want);
    assert_eq!(pages, want.len().div_ceil(MAX_ROUTES_PER_PAGE as usize));
    // A small limit, from the middle: the next mapped chunk is the cursor.
    let page = s.route_page(v, 4, 2).unwrap();
    assert_eq!(
        page.routes.iter().map(|r| r.chunk).collect::<Vec<_>>(),
        [6, 9]
    );
    assert_eq!(page.next, Some(12));
    // The groups: four, each through its lowest chunk.
    let groups = s.group_page(v, 0).unwrap();
    assert_eq!(
        groups
            .routes
            .iter()
            .map(|r| (r.group_id, r.chunk))
            .collect::<Vec<_>>(),
        [(1, 0), (2, 9), (3, 6), (4, 3)]
    );
    assert_eq!(groups.next, None);
    assert_eq!(s.group_page(v, 2).unwrap().routes.len(), 2);
}

/// A volume spread over more groups than a page names them a page at a time.
#[test]
fn groups_of_a_volume_come_in_bounded_pages() {
    let n = u64::from(MAX_ROUTES_PER_PAGE) + 7;
    let mut s = cluster(3, 1, n);
    assert!(s.groups().count() as u64 >= n);
    let v = create(&mut s, "wide", (2 * n) << 26);
    // Chunk c in group c / 2 + 1: two chunks in each group.
    s.apply(&Mutation::MapChunks {
        volume_id: v,
        chunks: (0..2 * n).map(|c| (c, c / 2 + 1)).collect(),
    });
    let first = s.group_page(v, 0).unwrap();
    assert_eq!(first.routes.len(), MAX_ROUTES_PER_PAGE as usize);
    assert_eq!(first.next, Some(u64::from(MAX_ROUTES_PER_PAGE)));
    let second = s.group_page(v, first.next.unwrap()).unwrap();
    assert_eq!(second.routes.len(), 7);
    assert_eq!(second.next, None);
    let all: Vec<(u64, u64)> = first
        .routes
        .iter()
        .chain(&second.routes)
        .map(|r| (r.group_id, r.chunk))
        .collect();
    assert_eq!(all, (1..=n).map(|g| (g, 2 * (g - 1))).collect::<Vec<_>>());
    assert_eq!(s.open_volume("wide").unwrap().1, first);
}

#[test]
fn provisioning_maps_only_unmapped_chunks_of_the_range_evenly() {
    let mut s = cluster(3, 1, 4);
    let v = create(&mut s, "p", 64 * GIB);
    allocate(&mut s, v, 5);
    let m = s.plan_map_chunks(v, 0, 16, |_| true).unwrap().unwrap();
    let Mutation::MapChunks { chunks, .. } = &m else {
        panic!("{m:?}");
    };
    assert_eq!(chunks.len(), 15);
    assert!(chunks.iter().all(|(c, _)| *c != 5));
    s.apply(&m);
    let loads: Vec<u64> = s.groups().map(|g| s.group_chunks(g.id)).collect();
    assert_eq!(loads, [4, 4, 4, 4]);
    assert!(s.plan_map_chunks(v, 0, 16, |_| true).unwrap().is_none());
    assert!(s.plan_map_chunks(v, 1020, 5, |_| true).is_err());
    assert!(
        s.plan_map_chunks(v, 0, MAX_ROUTES_PER_PAGE + 1, |_| true)
            .is_err()
    );
    assert!(matches!(
        s.plan_map_chunks(v, 16, 1, |_| false),
        Err(ControlError::Unavailable(_))
    ));
}

#[test]
fn delete_frees_group_load_and_reports_chunks_to_drop() {
    let mut s = cluster(3, 1, 2);
    let a = create(&mut s, "a", 64 * GIB);
    for c in 0..4 {
        allocate(&mut s, a, c);
    }
    let (m, dropped) = s.plan_delete_volume("a").unwrap();
    assert_eq!(dropped.volume_id, a);
    assert_eq!(dropped.by_group[&1], [0, 2]);
    assert_eq!(dropped.by_group[&2], [1, 3]);
    s.apply(&m);
    assert_eq!(s.group_chunks(1), 0);
    assert_eq!(s.group_chunks(2), 0);
    // The name is free again but the id is not.
    let b = create(&mut s, "a", GIB);
    assert!(b > a);
    assert_eq!(s.volume_by_name("a").unwrap().mapped_chunks, 0);
}

#[test]
fn established_is_never_undone_and_is_restored_with_the_group() {
    let mut s = cluster(3, 1, 2);
    assert!(s.groups().all(|g| !g.established));
    s.apply(&Mutation::SetGroupsEstablished {
        group_ids: vec![2, 99],
    });
    s.apply(&Mutation::SetGroupTarget {
        group_id: 2,
        target: vec![3, 2, 1],
    });
    s.apply(&Mutation::SetGroupMembers {
        group_id: 2,
        members: vec![3, 2, 1],
        term: 0,
    });
    assert!(!s.group(1).unwrap().established);
    assert!(s.group(2).unwrap().established);
    // A manager rebuilding the state from its rows knows it too.
    let r = State::restore(
        s.nodes().cloned().collect(),
        s.groups().cloned().collect(),
        vec![],
        vec![],
        s.next_ids(),
    )
    .unwrap();
    assert!(r.group(2).unwrap().established);
    assert!(!r.group(1).unwrap().established);
}

#[test]
fn restore_rejects_dangling_rows_and_keeps_id_marks() {
    let next = NextIds {
        node: 5,
        group: 9,
        volume: 42,
        backup: 3,
    };
    let s = State::restore(vec![], vec![], vec![], vec![], next).unwrap();
    assert_eq!(s.next_ids(), next);
    assert!(State::restore(vec![], vec![], vec![], vec![(1, 0, 1)], next).is_err());
    let g = GroupRecord {
        id: 1,
        members: vec![7],
        ..GroupRecord::default()
    };
    assert!(State::restore(vec![], vec![g], vec![], vec![], next).is_err());
}

#[test]
fn new_groups_take_ids_after_every_group_ever_made_and_start_unestablished() {
    let mut s = cluster(3, 1, 2);
    let before: Vec<u64> = s.groups().map(|g| g.id).collect();
    assert_eq!(before, [1, 2]);
    register(&mut s, None, "r3");
    let Some(Mutation::AddGroups(added)) = s.plan_groups(|_| true, 3, 2) else {
        panic!("a new node gets new groups");
    };
    let ids: Vec<u64> = added.iter().map(|g| g.id).collect();
    assert_eq!(ids, (3..3 + ids.len() as u64).collect::<Vec<_>>());
    for g in &added {
        assert!(g.members.contains(&4), "{g:?}");
        assert!(
            g.target.is_empty() && !g.established && g.term == 0,
            "{g:?}"
        );
    }
}
