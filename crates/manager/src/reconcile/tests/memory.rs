//! Memory between passes: when a missing replica counts as lost.

use super::*;

#[test]
fn lost_tracker_waits_for_the_down_timeout_and_forgets_recovered_replicas() {
    let mut w = World::new(&["a", "b", "c"], 1);
    let mut t = LostTracker::default();
    // Node 1 heartbeats without its group.
    let hb = |w: &mut World, with: bool| {
        let groups = if with {
            vec![GroupState {
                group_id: 1,
                role: Role::Follower,
                term: 1,
                leader: 2,
                commit: 1,
                applied: 1,
                voters: vec![],
                learners: vec![],
                joint: false,
                stuck: None,
            }]
        } else {
            vec![]
        };
        w.live.heartbeat(
            &NodeHeartbeat {
                node_id: 1,
                capacity_bytes: 1,
                used_bytes: 0,
                groups,
                recovery: Default::default(),
                descriptors: Default::default(),
                scrub: Default::default(),
            },
            w.now,
        );
    };
    hb(&mut w, false);
    t.update(&w.state, &w.live, w.now);
    assert!(t.lost(w.now, DOWN).is_empty());
    w.now += DOWN;
    hb(&mut w, false);
    t.update(&w.state, &w.live, w.now);
    assert_eq!(t.lost(w.now, DOWN), BTreeSet::from([(1, 1)]));
    hb(&mut w, true);
    t.update(&w.state, &w.live, w.now);
    assert!(t.lost(w.now, DOWN).is_empty());
    let _ = w.t0;
}
