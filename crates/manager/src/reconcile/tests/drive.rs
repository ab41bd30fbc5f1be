//! Which calls drive the moves.

use super::*;

#[test]
fn moves_are_driven_only_once_the_new_nodes_host_the_group() {
    let mut w = World::new(&["a", "b", "c", "d"], 2);
    let g = w.state.groups_of(1).next().unwrap().clone();
    let new = (1..=4).find(|n| !g.members.contains(n)).unwrap();
    w.set_target(&g, 1, new);
    // Heartbeats from before the move: the new node does not host the group.
    assert!(drive(&w.state, &w.live, w.now, &BTreeMap::new()).is_empty());
    w.heartbeat_all();
    let calls = drive(&w.state, &w.live, w.now, &BTreeMap::new());
    assert_eq!(calls.len(), 1);
    let Drive::ChangeMembers {
        group_id,
        leader,
        target,
    } = &calls[0];
    assert_eq!(*group_id, g.id);
    assert_eq!(*leader, g.members[0]);
    assert_eq!(target.len(), 3);
    // A NotLeader hint naming a member wins over the heartbeats.
    let hint = g.members[1];
    let calls = drive(&w.state, &w.live, w.now, &BTreeMap::from([(g.id, hint)]));
    assert!(matches!(&calls[0], Drive::ChangeMembers { leader, .. } if *leader == hint));
}
