//! Heartbeat acks and what a heartbeat proves.

use super::*;

#[test]
fn heartbeat_orders_never_remove_a_target_member() {
    let mut w = World::new(&["a", "b", "c", "d"], 2);
    let g = w.state.groups_of(1).next().unwrap().clone();
    let new = (1..=4).find(|n| !g.members.contains(n)).unwrap();
    let target = w.set_target(&g, 1, new);
    // The new node does not host the group yet: it is told to join.
    let hosted: BTreeSet<u64> = w.state.groups_of(new).map(|g| g.id).collect();
    let (create, remove) = heartbeat_orders(&w.state, new, &hosted);
    assert!(remove.is_empty());
    let spec = create.iter().find(|s| s.group_id == g.id).unwrap();
    assert!(spec.joining);
    assert_eq!(spec.peers.len(), 4, "members and target: {spec:?}");
    // Hosting it, mid-move: neither node is told to remove it.
    let hosted_new: BTreeSet<u64> = hosted.iter().copied().chain([g.id]).collect();
    let (_, remove) = heartbeat_orders(&w.state, new, &hosted_new);
    assert!(remove.is_empty());
    let hosted_old: BTreeSet<u64> = w.state.groups_of(1).map(|g| g.id).collect();
    let (_, remove) = heartbeat_orders(&w.state, 1, &hosted_old);
    assert!(remove.is_empty());
    // The leaving member already dropped its replica: it is not told to re-create it.
    let without: BTreeSet<u64> = hosted_old.iter().copied().filter(|x| *x != g.id).collect();
    let (create, _) = heartbeat_orders(&w.state, 1, &without);
    assert!(create.iter().all(|s| s.group_id != g.id));
    // Once done, the old member is told to destroy its replica; unknown groups stay.
    w.state.apply(&Mutation::SetGroupMembers {
        group_id: g.id,
        members: target,
        term: 0,
    });
    let hosted_old: BTreeSet<u64> = hosted_old.into_iter().chain([999]).collect();
    let (_, remove) = heartbeat_orders(&w.state, 1, &hosted_old);
    assert_eq!(remove, vec![g.id]);
}

#[test]
fn a_member_that_lost_its_replica_rejoins_instead_of_bootstrapping() {
    let w = World::new(&["a", "b", "c"], 1);
    // A new group that never had a leader: created as an initial voter.
    let fresh = {
        let mut s = w.state.clone();
        s.apply(&Mutation::AddGroups(vec![GroupRecord {
            id: 50,
            members: vec![1, 2, 3],
            ..GroupRecord::default()
        }]));
        let (create, _) = heartbeat_orders(&s, 1, &BTreeSet::from([1]));
        create
    };
    assert_eq!(fresh.len(), 1);
    assert!(!fresh[0].joining);
    // Group 1 has a leader (node 1, before it lost its replica): node 1 joins.
    let (create, _) = heartbeat_orders(&w.state, 1, &BTreeSet::new());
    assert!(create[0].joining);
    assert_eq!(create[0].peers.len(), 3);
}

#[test]
fn only_groups_shown_with_a_leader_and_not_yet_recorded_become_established() {
    let mut w = World::new(&["a", "b", "c"], 3);
    assert!(w.state.groups().all(|g| g.established));
    w.state.apply(&Mutation::AddGroups(
        (50..=53)
            .map(|id| GroupRecord {
                id,
                members: vec![1, 2, 3],
                ..GroupRecord::default()
            })
            .collect(),
    ));
    let report = |group_id, role, leader| GroupState {
        group_id,
        role,
        term: 1,
        leader,
        commit: 1,
        applied: 1,
        voters: vec![],
        learners: vec![],
        joint: false,
        stuck: None,
    };
    let hb = NodeHeartbeat {
        node_id: 1,
        capacity_bytes: 1,
        used_bytes: 0,
        groups: vec![
            report(1, Role::Leader, 1),     // recorded already
            report(50, Role::Leader, 1),    // leads it
            report(51, Role::Follower, 2),  // follows a known leader
            report(52, Role::Candidate, 0), // no leader yet
            report(999, Role::Leader, 1),   // unknown to the state
        ],
        recovery: Default::default(),
        descriptors: Default::default(),
        scrub: Default::default(),
    };
    let got: Vec<u64> = newly_established(&w.state, &hb).collect();
    assert_eq!(got, [50, 51]);
}
