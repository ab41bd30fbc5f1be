//! Where new replica groups go. Pure: the caller decides which nodes are candidates (not
//! down) and applies the result.
//!
//! Rule: every group has its replicas on distinct racks (hence distinct nodes); groups are
//! added until every candidate hosts at least the target number of replicas, each group
//! taking the least-loaded node of each rack it uses (ties to the lowest node id). Existing
//! groups are never moved here: rebalancing and re-replication are membership changes, a
//! later job.
//!
//! Knows only [`Candidate`]s and returns member lists: the state turns them into groups
//! (ids, records), so this file depends on nothing else of the crate.

use std::collections::{BTreeMap, BTreeSet};

/// A node that may receive new replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node_id: u64,
    pub rack: String,
    /// Replicas it hosts already.
    pub replicas: u64,
}

/// The members of each group to create, in creation order; empty if the candidates span
/// fewer than `replicas` racks or already host `target` replicas each.
pub fn plan_groups(candidates: Vec<Candidate>, replicas: usize, target: u64) -> Vec<Vec<u64>> {
    let racks: BTreeSet<&str> = candidates.iter().map(|c| c.rack.as_str()).collect();
    if replicas == 0 || racks.len() < replicas {
        return Vec::new();
    }
    let rack_of: BTreeMap<u64, String> = candidates
        .iter()
        .map(|c| (c.node_id, c.rack.clone()))
        .collect();
    // Ordered by (replicas, node id): the first entry is the least-loaded node.
    let mut load: BTreeSet<(u64, u64)> =
        candidates.iter().map(|c| (c.replicas, c.node_id)).collect();
    let mut out = Vec::new();
    // The least-loaded node joins every new group, so this ends after at most
    // candidates × target groups.
    while let Some(&(least, _)) = load.first() {
        if least >= target {
            break;
        }
        let mut chosen: Vec<(u64, u64)> = Vec::with_capacity(replicas);
        let mut used_racks: Vec<&str> = Vec::with_capacity(replicas);
        for &(count, node) in &load {
            let rack = rack_of[&node].as_str();
            if !used_racks.contains(&rack) {
                used_racks.push(rack);
                chosen.push((count, node));
                if chosen.len() == replicas {
                    break;
                }
            }
        }
        if chosen.len() < replicas {
            break; // Unreachable: the racks were counted above.
        }
        for entry in &chosen {
            load.remove(entry);
            load.insert((entry.0 + 1, entry.1));
        }
        // Least loaded first: the first member starts the group's first election, so new
        // groups (placed when a node joins) give their leadership to the newcomer.
        out.push(chosen.iter().map(|(_, n)| *n).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(node_id: u64, rack: &str, replicas: u64) -> Candidate {
        Candidate {
            node_id,
            rack: rack.into(),
            replicas,
        }
    }

    #[test]
    fn a_new_node_is_filled_with_the_least_loaded_peers() {
        let c = vec![
            cand(1, "a", 8),
            cand(2, "b", 8),
            cand(3, "c", 9),
            cand(4, "c", 0),
        ];
        let groups = plan_groups(c, 3, 8);
        assert_eq!(groups.len(), 8);
        for g in &groups {
            assert!(g.contains(&4));
            assert!(!g.contains(&3), "node 3 shares rack c with node 4");
        }
    }

    #[test]
    fn uneven_racks_still_get_distinct_racks() {
        // Rack "a" has 5 nodes; every group needs one node from "b" and "c".
        let mut c: Vec<Candidate> = (1..=5).map(|i| cand(i, "a", 0)).collect();
        c.push(cand(6, "b", 0));
        c.push(cand(7, "c", 0));
        let groups = plan_groups(c, 3, 2);
        assert_eq!(groups.len(), 10);
        for g in &groups {
            let a = g.iter().filter(|m| **m <= 5).count();
            assert_eq!(a, 1, "{g:?}");
        }
    }

    #[test]
    fn too_few_racks_plans_nothing() {
        let c = vec![cand(1, "a", 0), cand(2, "b", 0), cand(3, "b", 0)];
        assert!(plan_groups(c, 3, 8).is_empty());
    }
}
