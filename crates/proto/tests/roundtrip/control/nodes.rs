//! Strategies for what storage nodes report of themselves (registrations, heartbeats,
//! replica states, scrubbing) and the cluster status built from it, in
//! `tessera_proto::control`.

use proptest::option::of;
use proptest::prelude::*;
use tessera_proto::control::*;

use super::records::{few, text};
use crate::u64s;

pub fn node_registration() -> BoxedStrategy<NodeRegistration> {
    (of(u64s()), text(), text(), text(), u64s(), u64s(), u64s())
        .prop_map(
            |(node_id, zone, rack, addr, capacity_bytes, used_bytes, disk)| NodeRegistration {
                node_id,
                zone,
                rack,
                addr,
                capacity_bytes,
                used_bytes,
                disk,
            },
        )
        .boxed()
}

pub fn role() -> BoxedStrategy<Role> {
    prop::sample::select(vec![Role::Leader, Role::Follower, Role::Candidate]).boxed()
}

pub fn group_state() -> BoxedStrategy<GroupState> {
    (
        (u64s(), role(), u64s(), u64s(), u64s(), u64s()),
        (few(u64s()), few(u64s()), any::<bool>(), of(text())),
    )
        .prop_map(
            |(
                (group_id, role, term, leader, commit, applied),
                (voters, learners, joint, stuck),
            )| {
                GroupState {
                    group_id,
                    role,
                    term,
                    leader,
                    commit,
                    applied,
                    voters,
                    learners,
                    joint,
                    stuck,
                }
            },
        )
        .boxed()
}

pub fn recovery_stats() -> BoxedStrategy<RecoveryStats> {
    (u64s(), u64s(), u64s(), few(u64s()))
        .prop_map(
            |(snapshots, bytes_fetched, bytes_compared, in_progress)| RecoveryStats {
                snapshots,
                bytes_fetched,
                bytes_compared,
                in_progress,
            },
        )
        .boxed()
}

pub fn descriptors() -> BoxedStrategy<Descriptors> {
    (u64s(), u64s(), u64s(), u64s(), u64s())
        .prop_map(
            |(limit, chunks_open, chunks_budget, chunks_closed, chunks_closing)| Descriptors {
                limit,
                chunks_open,
                chunks_budget,
                chunks_closed,
                chunks_closing,
            },
        )
        .boxed()
}

pub fn scrub_cursor() -> BoxedStrategy<ScrubCursor> {
    (u64s(), u64s(), u64s(), u64s())
        .prop_map(|(group, volume, chunk, block)| ScrubCursor {
            group,
            volume,
            chunk,
            block,
        })
        .boxed()
}

pub fn scrub_stats() -> BoxedStrategy<ScrubStats> {
    (
        (any::<bool>(), any::<bool>(), u64s(), u64s(), u64s(), u64s()),
        (
            u64s(),
            any::<bool>(),
            scrub_cursor(),
            u64s(),
            u64s(),
            u64s(),
        ),
        (u64s(), u64s(), u64s(), u64s(), u64s(), u64s(), u64s()),
    )
        .prop_map(|(a, b, c)| {
            let (paused, running, bytes_per_sec, period_secs, pass, pass_started_ms) = a;
            let (last_pass_done_ms, behind, cursor, bytes_checked, blocks_checked, regions) = b;
            let (bad, divergent, repaired, unrepairable, incomplete, layer_diffs, applied) = c;
            ScrubStats {
                paused,
                running,
                bytes_per_sec,
                period_secs,
                pass,
                pass_started_ms,
                last_pass_done_ms,
                behind,
                cursor,
                bytes_checked,
                blocks_checked,
                regions,
                bad_blocks: bad,
                divergent_blocks: divergent,
                repaired,
                unrepairable,
                incomplete_regions: incomplete,
                layer_differences: layer_diffs,
                repair_blocks_applied: applied,
            }
        })
        .boxed()
}

pub fn node_heartbeat() -> BoxedStrategy<NodeHeartbeat> {
    (
        (u64s(), u64s(), u64s(), few(group_state())),
        (recovery_stats(), descriptors(), scrub_stats()),
    )
        .prop_map(
            |((node_id, capacity_bytes, used_bytes, groups), (recovery, descriptors, scrub))| {
                NodeHeartbeat {
                    node_id,
                    capacity_bytes,
                    used_bytes,
                    groups,
                    recovery,
                    descriptors,
                    scrub,
                }
            },
        )
        .boxed()
}

pub fn scrub_action() -> BoxedStrategy<ScrubAction> {
    prop::sample::select(vec![ScrubAction::Start, ScrubAction::Pause]).boxed()
}

pub fn region_scan_request() -> BoxedStrategy<RegionScanRequest> {
    (
        u64s(),
        u64s(),
        u64s(),
        u64s(),
        u64s(),
        u64s(),
        u64s(),
        any::<bool>(),
    )
        .prop_map(
            |(group_id, mark, volume, chunk, first, count, node_id, urgent)| RegionScanRequest {
                group_id,
                mark,
                volume,
                chunk,
                first,
                count,
                node_id,
                urgent,
            },
        )
        .boxed()
}

pub fn block_check() -> BoxedStrategy<BlockCheck> {
    prop_oneof![
        Just(BlockCheck::Zero),
        u64s().prop_map(|hash| BlockCheck::Data { hash }),
        Just(BlockCheck::Bad),
    ]
    .boxed()
}

pub fn scanned_block() -> BoxedStrategy<ScannedBlock> {
    (u64s(), u64s(), block_check())
        .prop_map(|(layer, block, state)| ScannedBlock {
            layer,
            block,
            state,
        })
        .boxed()
}

pub fn region_scan() -> BoxedStrategy<RegionScan> {
    (
        any::<bool>(),
        of((u64s(), u64s())),
        few(scanned_block()),
        few(u64s()),
        few(u64s()),
        any::<bool>(),
    )
        .prop_map(
            |(holds_chunk, link, blocks, layers, dirty, all_dirty)| RegionScan {
                holds_chunk,
                link,
                blocks,
                layers,
                dirty,
                all_dirty,
            },
        )
        .boxed()
}

pub fn node_scrub() -> BoxedStrategy<NodeScrub> {
    (u64s(), text(), of(scrub_stats()))
        .prop_map(|(node_id, addr, stats)| NodeScrub {
            node_id,
            addr,
            stats,
        })
        .boxed()
}

pub fn node_status() -> BoxedStrategy<NodeStatus> {
    (
        (u64s(), text(), text(), text(), text(), u64s()),
        (
            u64s(),
            of(u64s()),
            u64s(),
            u64s(),
            any::<bool>(),
            of(descriptors()),
        ),
    )
        .prop_map(|(a, b)| {
            let (node_id, zone, rack, addr, state, capacity_bytes) = a;
            let (used_bytes, last_heartbeat_ms_ago, replicas, leaders, draining, descriptors) = b;
            NodeStatus {
                node_id,
                zone,
                rack,
                addr,
                state,
                capacity_bytes,
                used_bytes,
                last_heartbeat_ms_ago,
                replicas,
                leaders,
                draining,
                descriptors,
            }
        })
        .boxed()
}

pub fn replica_status() -> BoxedStrategy<ReplicaStatus> {
    (
        u64s(),
        text(),
        text(),
        of(role()),
        u64s(),
        u64s(),
        of(text()),
    )
        .prop_map(
            |(node_id, rack, node_state, role, commit, applied, stuck)| ReplicaStatus {
                node_id,
                rack,
                node_state,
                role,
                commit,
                applied,
                stuck,
            },
        )
        .boxed()
}

pub fn group_status() -> BoxedStrategy<GroupStatus> {
    (
        u64s(),
        of(u64s()),
        few(replica_status()),
        u64s(),
        any::<bool>(),
        few(u64s()),
    )
        .prop_map(
            |(group_id, leader, replicas, chunks, degraded, moving_to)| GroupStatus {
                group_id,
                leader,
                replicas,
                chunks,
                degraded,
                moving_to,
            },
        )
        .boxed()
}

pub fn cluster_status() -> BoxedStrategy<ClusterStatus> {
    (few(node_status()), few(group_status()), u64s())
        .prop_map(|(nodes, groups, volumes)| ClusterStatus {
            nodes,
            groups,
            volumes,
        })
        .boxed()
}

/// The guard of [`Role`].
pub fn role_index(r: &Role) -> usize {
    match r {
        Role::Leader => 0,
        Role::Follower => 1,
        Role::Candidate => 2,
    }
}

/// The guard of [`ScrubAction`].
pub fn scrub_action_index(a: &ScrubAction) -> usize {
    match a {
        ScrubAction::Start => 0,
        ScrubAction::Pause => 1,
    }
}

/// The guard of [`BlockCheck`].
pub fn block_check_index(c: &BlockCheck) -> usize {
    match c {
        BlockCheck::Zero => 0,
        BlockCheck::Data { .. } => 1,
        BlockCheck::Bad => 2,
    }
}
