//! `manager`: manager requests in any order, against one real manager.
//!
//! A [`Solo`] (the manager's service over a real database and its own Raft group of one,
//! in a scratch directory) is driven by a program read from the input: node
//! registrations and heartbeats (any node id, rack, address, group report), every volume,
//! snapshot, clone, backup, copy and restore request, raw JSON requests, clock steps,
//! reconcile passes (moves reported done, lost or held), the leader's background work
//! (group ops applied, failed or held), the backup jobs (uploads, roots, restores'
//! progress, the collector), deliveries of held work, and restarts. Names, sizes and ids
//! come from small sets, so requests meet each other's volumes, snapshots and epochs.
//! At most [`MAX_STEPS`] steps run.
//!
//! Checked after every step ([`Solo::check`]): the state keeps its invariants and the
//! database holds exactly the state in memory. At the end of the input, the state's own
//! Raft snapshot rebuilds it; after a restart the manager comes back with the state it
//! had. No panic anywhere.

use std::time::Duration;

use tessera_manager::fuzzing::{Ops, Solo};
use tessera_proto::control::{
    self, ControlError, GroupState, ManagerRequest as Req, NodeHeartbeat, NodeRegistration, Role,
};

use crate::input::Input;

/// The steps of a program, each an opcode byte (taken modulo [`OPS`]) then its operands.
pub mod op {
    pub const REGISTER: u8 = 0;
    pub const HEARTBEAT: u8 = 1;
    pub const CREATE: u8 = 2;
    pub const RESIZE: u8 = 3;
    pub const DELETE: u8 = 4;
    pub const ATTACH: u8 = 5;
    pub const DETACH: u8 = 6;
    pub const RENEW: u8 = 7;
    pub const ROUTE: u8 = 8;
    pub const PROVISION: u8 = 9;
    pub const SNAPSHOT: u8 = 10;
    pub const DELETE_SNAPSHOT: u8 = 11;
    pub const CLONE: u8 = 12;
    pub const ROLLBACK: u8 = 13;
    pub const FLATTEN: u8 = 14;
    pub const DRAIN: u8 = 15;
    pub const BACKUP: u8 = 16;
    pub const DELETE_BACKUP: u8 = 17;
    pub const COPY_BACKUP: u8 = 18;
    pub const RESTORE: u8 = 19;
    pub const READ: u8 = 20;
    pub const CLOCK: u8 = 21;
    pub const RECONCILE: u8 = 22;
    pub const BACKGROUND: u8 = 23;
    pub const JSON: u8 = 24;
    pub const DELIVER: u8 = 25;
    pub const UPLOAD: u8 = 26;
    pub const READY: u8 = 27;
    pub const COLLECT: u8 = 28;
    pub const RESTORE_STEP: u8 = 29;
    pub const RESTART: u8 = 30;
    /// How many there are.
    pub const OPS: u8 = 31;
}

const VOLUMES: [&str; 4] = ["a", "b", "c", "d"];
const SNAPSHOTS: [&str; 3] = ["s1", "s2", "s3"];
const HOLDERS: [&str; 3] = ["host-1", "host-2", ""];
const STORES: [Option<&str>; 4] = [None, Some("near"), Some("far"), Some("gone")];
const MIB: u64 = 1 << 20;
/// Steps run of one input at most.
const MAX_STEPS: usize = 128;
/// The highest node id the manager takes.
const MAX_NODE_ID: u64 = (1 << 63) - 1;

thread_local! {
    // The service blocks its caller while a commit goes through the Raft task: that task
    // needs a worker thread of its own.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
}

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let dir = crate::scratch_dir("manager");
    let handle = RUNTIME.with(|rt| rt.handle().clone());
    let mut solo = Solo::start(&dir, handle);
    let mut input = Input::new(data);
    // Each step's checks cost in proportion to the state: a bound keeps every input short.
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        step(&mut solo, &mut input);
        solo.check();
    }
    solo.check_snapshot();
    drop(solo);
    let _ = std::fs::remove_dir_all(&dir);
}

fn step(solo: &mut Solo, input: &mut Input<'_>) {
    let code = input.u8() % op::OPS;
    // One flag byte per step: what becomes of the group ops it waits for, and the
    // variants below.
    let flags = input.u8();
    let ops = match flags & 5 {
        1 => Ops::Fail,
        5 => Ops::Hold,
        _ => Ops::Apply,
    };
    let req = match code {
        op::REGISTER => Req::RegisterNode(registration(input, flags)),
        op::HEARTBEAT => Req::Heartbeat(heartbeat(input)),
        op::CREATE => Req::CreateVolume {
            name: volume(input),
            size: size(input, flags),
            chunk_size: match (flags >> 1) % 4 {
                0 => None,
                1 => Some(MIB),
                2 => Some(4 * MIB),
                _ => Some(input.u64()),
            },
        },
        op::RESIZE => Req::ResizeVolume {
            name: volume(input),
            size: size(input, flags),
        },
        op::DELETE => Req::DeleteVolume {
            name: volume(input),
        },
        op::ATTACH => Req::AttachVolume {
            name: volume(input),
            client: "fuzz".into(),
            paged: flags & 2 != 0,
            holder: pick(input, &HOLDERS).to_string(),
        },
        op::DETACH => Req::DetachVolume {
            name: volume(input),
            epoch: small(input),
            force: flags & 2 != 0,
        },
        op::RENEW => Req::RenewAttachment {
            volume_id: small(input),
            epoch: small(input),
        },
        op::ROUTE => Req::Route {
            volume_id: small(input),
            chunk: u64::from(input.u8() % 24),
            allocate: flags & 2 != 0,
            epoch: small(input),
        },
        op::PROVISION => Req::ProvisionChunks {
            volume_id: small(input),
            first_chunk: u64::from(input.u8() % 24),
            count: u32::from(input.u8() % 24),
            epoch: small(input),
        },
        op::SNAPSHOT => Req::CreateSnapshot {
            volume: volume(input),
            name: snapshot(input),
        },
        op::DELETE_SNAPSHOT => Req::DeleteSnapshot {
            volume: volume(input),
            name: snapshot(input),
        },
        op::CLONE => Req::CloneVolume {
            volume: volume(input),
            snapshot: snapshot(input),
            name: volume(input),
        },
        op::ROLLBACK => Req::RollbackVolume {
            volume: volume(input),
            snapshot: snapshot(input),
        },
        op::FLATTEN => Req::FlattenVolume {
            name: volume(input),
        },
        op::DRAIN => Req::DrainNode {
            node_id: node(input),
            undo: flags & 2 != 0,
        },
        op::BACKUP => Req::CreateBackup {
            volume: volume(input),
            snapshot: snapshot(input),
            store: pick(input, &STORES).map(str::to_string),
        },
        op::DELETE_BACKUP => Req::DeleteBackup { id: small(input) },
        op::COPY_BACKUP => Req::CopyBackup {
            id: small(input),
            to_store: pick(input, &STORES).unwrap_or("near").to_string(),
        },
        op::RESTORE => Req::RestoreVolume {
            name: volume(input),
            backup: small(input),
            store: pick(input, &STORES).map(str::to_string),
        },
        op::READ => read(input, flags),
        op::CLOCK => {
            let secs = [1, 6, 31, 300][usize::from(flags >> 1) % 4];
            solo.advance(Duration::from_secs(secs));
            return;
        }
        op::RECONCILE => {
            solo.reconcile(ops);
            return;
        }
        op::BACKGROUND => {
            solo.background(ops, flags & 2 != 0);
            return;
        }
        op::DELIVER => {
            solo.deliver(usize::from(input.u8()), flags & 1 == 0);
            return;
        }
        op::UPLOAD => {
            let pick = usize::from(input.u8());
            let chunks: Vec<(u64, u8)> = (0..input.u8() % 8)
                .map(|_| (u64::from(input.u8() % 24), input.u8()))
                .collect();
            solo.backup_upload(pick, &chunks, ops);
            return;
        }
        op::READY => {
            solo.backup_ready(usize::from(input.u8()), ops == Ops::Fail);
            return;
        }
        op::COLLECT => {
            let grace = [0, 60, 3600][usize::from(flags >> 3) % 3];
            solo.collect(usize::from(input.u8()), grace, ops);
            return;
        }
        op::RESTORE_STEP => {
            let pick = usize::from(input.u8());
            solo.restore_step(pick, u64::from(input.u8() % 8), flags & 2 != 0);
            return;
        }
        op::JSON => {
            let len = usize::from(input.u8());
            match control::decode(input.bytes(len)) {
                Ok(req) => req,
                Err(_) => return,
            }
        }
        _ => {
            solo.restart();
            return;
        }
    };
    let trace = format!("{req:?}");
    let answer = solo.request(req, ops);
    if tracing() {
        eprintln!("{trace}\n  -> {answer:?}");
    }
    // An internal error is a bug whatever the request.
    if let Some(Err(ControlError::Internal(why))) = answer {
        panic!("{trace} answered an internal error: {why}");
    }
}

/// `TESSERA_FUZZ_TRACE=1`: every request and its answer on stderr (reading an input).
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TESSERA_FUZZ_TRACE").is_some())
}

/// The read-only requests, and the others that change nothing here.
fn read(input: &mut Input<'_>, flags: u8) -> Req {
    match input.u8() % 16 {
        0 => Req::ListVolumes,
        1 => Req::VolumeInfo {
            name: volume(input),
        },
        2 => Req::OpenVolume {
            name: volume(input),
            paged: flags & 2 != 0,
        },
        3 => Req::Routes {
            volume_id: small(input),
            first_chunk: u64::from(input.u8() % 24),
            limit: u32::from(input.u8()),
            epoch: small(input),
        },
        4 => Req::VolumeGroups {
            volume_id: small(input),
            after_group: small(input),
            epoch: small(input),
        },
        5 => Req::ClusterStatus,
        6 => Req::ListSnapshots {
            volume: (flags & 2 != 0).then(|| volume(input)),
        },
        7 => Req::SnapshotInfo {
            volume: volume(input),
            name: snapshot(input),
        },
        8 => Req::ListBackups {
            volume: (flags & 2 != 0).then(|| volume(input)),
        },
        9 => Req::BackupInfo { id: small(input) },
        10 => Req::PrewarmVolume {
            name: volume(input),
        },
        11 => Req::RestoreSource {
            volume_id: small(input),
            chunk: u64::from(input.u8() % 24),
        },
        12 => Req::Capability {
            volume_id: small(input),
            epoch: small(input),
            holder: pick(input, &HOLDERS).to_string(),
        },
        13 => Req::VolumeUsage {
            name: volume(input),
        },
        14 => Req::ListStores,
        _ => Req::ScrubStatus,
    }
}

fn registration(input: &mut Input<'_>, flags: u8) -> NodeRegistration {
    NodeRegistration {
        node_id: match (flags & 2, flags & 0x18) {
            (0, _) => None,
            // Now and then the ends of the range, or any id.
            (_, 0x18) => Some(match input.u8() % 4 {
                0 => MAX_NODE_ID,
                1 => MAX_NODE_ID + 1,
                2 => u64::MAX,
                _ => input.u64(),
            }),
            _ => Some(node(input)),
        },
        zone: "z1".into(),
        rack: format!("r{}", input.u8() % 4),
        addr: format!("127.0.0.1:{}", 7000 + u16::from(input.u8() % 8)),
        capacity_bytes: if flags & 4 == 0 { 1 << 40 } else { input.u64() },
        used_bytes: u64::from(input.u8()) << 30,
        disk: u64::from(input.u8() % 4),
    }
}

fn heartbeat(input: &mut Input<'_>) -> NodeHeartbeat {
    let node_id = node(input);
    let groups = (0..input.u8() % 4)
        .map(|_| {
            let kind = input.u8();
            let voters = bits(input.u8());
            GroupState {
                group_id: small(input),
                role: [Role::Leader, Role::Follower, Role::Candidate][usize::from(kind % 3)],
                term: u64::from(input.u8() % 4),
                leader: if kind & 4 != 0 { node_id } else { node(input) },
                commit: u64::from(input.u8()),
                applied: u64::from(input.u8()),
                voters,
                learners: if kind & 8 != 0 {
                    bits(input.u8())
                } else {
                    Vec::new()
                },
                joint: kind & 16 != 0,
                stuck: (kind & 32 != 0).then(|| "stuck".to_string()),
            }
        })
        .collect();
    NodeHeartbeat {
        node_id,
        capacity_bytes: 1 << 40,
        used_bytes: u64::from(input.u8()) << 30,
        groups,
        ..NodeHeartbeat::default()
    }
}

/// The node ids whose bit is set (nodes 1 to 8).
fn bits(b: u8) -> Vec<u64> {
    (0..8)
        .filter(|i| b & (1 << i) != 0)
        .map(|i| i + 1)
        .collect()
}

fn pick<T: Copy>(input: &mut Input<'_>, from: &[T]) -> T {
    from[usize::from(input.u8()) % from.len()]
}

fn volume(input: &mut Input<'_>) -> String {
    pick(input, &VOLUMES).to_string()
}

fn snapshot(input: &mut Input<'_>) -> String {
    pick(input, &SNAPSHOTS).to_string()
}

/// A node id: 0 (none) to 8.
fn node(input: &mut Input<'_>) -> u64 {
    u64::from(input.u8() % 9)
}

/// A small id or epoch (0 to 7), so that requests meet what others created.
fn small(input: &mut Input<'_>) -> u64 {
    u64::from(input.u8() % 8)
}

/// A volume size: whole MiB mostly, any number sometimes.
fn size(input: &mut Input<'_>, flags: u8) -> u64 {
    if flags & 8 == 0 {
        u64::from(1 + input.u8() % 24) * MIB
    } else {
        input.u64()
    }
}

/// Programs that take a small cluster through the life of volumes: registration,
/// placement, attachment, snapshots, a clone and its flatten, a backup, a rollback,
/// a node going down and one drained, restarts.
pub fn seeds() -> Vec<crate::seeds::Seed> {
    use op::*;
    // Heartbeat of node `n` leading groups 1 to 3 with voters 1, 2 and 3, at term 1.
    let leads = |n: u8| {
        let mut h = vec![HEARTBEAT, 0, n, 3];
        for g in 1..=3 {
            h.extend([132, 0b111, g, 1, 9, 9]);
        }
        h.push(1);
        h
    };
    let nodes: Vec<u8> = (1..=4)
        .flat_map(|n| [REGISTER, 2, n, n - 1, n, 0, 1])
        .chain((1..=4).flat_map(|n| [HEARTBEAT, 0, n, 0, 0]))
        .collect();
    let volume = [
        vec![CREATE, 2, 0, 7],   // a: 8 MiB in chunks of 1 MiB
        vec![ATTACH, 0, 0, 0],   // a, by host-1: epoch 1
        vec![ROUTE, 2, 1, 0, 1], // chunk 0 placed
        vec![PROVISION, 0, 1, 1, 7, 1],
        leads(1),
        vec![READ, 0, 2, 0], // open a
        vec![READ, 0, 3, 1, 0, 32, 1],
    ]
    .concat();
    let snapshots = [
        vec![SNAPSHOT, 0, 0, 0], // a@s1
        vec![SNAPSHOT, 1, 0, 1], // a@s2, its fences failing
        vec![BACKGROUND, 0],     // and finished in the background
        vec![CLONE, 0, 0, 0, 1], // b from a@s1
        vec![BACKGROUND, 0],
        vec![FLATTEN, 0, 1],
        vec![BACKGROUND, 0],
        vec![BACKGROUND, 0],
        vec![BACKUP, 0, 0, 0, 1], // a@s1 to near
        vec![DELETE_SNAPSHOT, 0, 0, 1],
        vec![BACKGROUND, 2], // reclaims planned
        vec![DETACH, 0, 0, 1],
        vec![ROLLBACK, 0, 0, 0],
        vec![READ, 0, 7, 0, 0],
        vec![RESIZE, 0, 0, 15],
        vec![RESTART, 0],
    ]
    .concat();
    let failures = [
        vec![CLOCK, 4], // 31 s: every node down
        leads(1),
        vec![HEARTBEAT, 0, 2, 0, 0],
        vec![RECONCILE, 0],
        vec![DRAIN, 0, 4],
        vec![RECONCILE, 0],
        vec![RECONCILE, 1],
        vec![READ, 0, 5],
        vec![DRAIN, 2, 4],
        vec![RESTART, 0],
        vec![DELETE, 0, 1],
        vec![DELETE, 0, 0],
    ]
    .concat();
    // Work held and delivered late, in another order, or lost.
    let late = [
        vec![SNAPSHOT, 5, 0, 0], // a@s1, its fences held
        vec![CLONE, 0, 0, 0, 1], // refused: a@s1 is still creating
        vec![DELIVER, 0, 0],     // the fences applied: a@s1 ready
        vec![CLONE, 0, 0, 0, 1],
        vec![FLATTEN, 0, 1],
        vec![BACKGROUND, 5], // b's next chunk held
        vec![SNAPSHOT, 5, 0, 1],
        vec![DELETE_SNAPSHOT, 0, 0, 1],
        vec![DELIVER, 0, 1, 0], // a@s2's fences, after its deletion
        vec![DELIVER, 0, 0],
        vec![CLOCK, 4],
        vec![RECONCILE, 5],
        vec![DELIVER, 1, 0], // the move lost
        vec![RESTART, 0],
    ]
    .concat();
    let json = control::encode(&Req::CreateVolume {
        name: "c".into(),
        size: 3 * MIB,
        chunk_size: Some(MIB),
    });
    let json = [&[JSON, 0, json.len() as u8][..], &json].concat();
    // A backup uploaded and made ready, copied to the other store, restored, then deleted
    // and collected.
    let backups = [
        vec![SNAPSHOT, 0, 0, 0],  // a@s1
        vec![BACKUP, 0, 0, 0, 1], // backup 1 of a@s1 in near
        vec![UPLOAD, 0, 0, 3, 0, 7, 1, 7, 2, 9],
        vec![UPLOAD, 5, 0, 2, 3, 8, 4, 7], // held: delivered after the collector ran
        vec![READY, 0, 0],
        vec![COPY_BACKUP, 0, 1, 2], // backup 2: 1 copied to far
        vec![UPLOAD, 0, 0, 3, 0, 0, 1, 0, 2, 0], // chunks 0 to 2: all its source has
        vec![READY, 0, 0],
        vec![RESTORE, 0, 2, 1, 1], // c from backup 1
        vec![BACKGROUND, 0],       // its links
        vec![RESTORE_STEP, 0, 0, 2],
        vec![RESTORE_STEP, 2, 0, 0], // done
        vec![DELETE_BACKUP, 0, 2],
        vec![DELETE_BACKUP, 0, 1],
        vec![CLOCK, 6],      // 300 s
        vec![COLLECT, 8, 0], // grace 60 s: claims and deletes
        vec![DELIVER, 0, 0], // the held upload, after the collection
        vec![COLLECT, 5, 0], // deletions held
        vec![RESTART, 0],
        vec![CLOCK, 6],
        vec![COLLECT, 0, 0],
    ]
    .concat();
    // An upload started before the collector claims and deletes an object its segment
    // names (shared with backup `shared`, deleted): it must not be recorded.
    let race = |shared: u8| {
        [
            vec![BACKUP, 0, 0, 0, 1],    // backup `shared`: a@s1 in near
            vec![UPLOAD, 0, 0, 1, 0, 7], // chunk 0: objects of 7 and 3
            vec![READY, 0, 0],
            vec![CREATE, 2, 1, 3], // b: 4 MiB, written, snapshotted, backed up to near
            vec![ATTACH, 0, 1, 0],
            vec![PROVISION, 0, 2, 0, 4, 1],
            vec![SNAPSHOT, 0, 1, 0],
            vec![BACKUP, 0, 1, 0, 1],
            vec![UPLOAD, 5, 0, 1, 1, 6], // the next backup, held: chunk 1, objects of 6 and 3
            vec![DELETE_BACKUP, 0, shared],
            vec![COLLECT, 0, 0], // releases, claims and deletes its keys, object 3 among them
            vec![DELIVER, 0, 0],
            vec![READY, 0, 0],
        ]
        .concat()
    };
    let across_a_claim = [vec![SNAPSHOT, 0, 0, 0], race(1)].concat();
    // The same race after a first collection (backup 1, deleted and collected, moves
    // gc_gen): the leader's memory of deleted keys, not its start, must skip the upload.
    let after_a_collection = [
        vec![SNAPSHOT, 0, 0, 0],
        vec![BACKUP, 0, 0, 0, 1],     // backup 1: a@s1 in near
        vec![UPLOAD, 0, 0, 1, 2, 40], // chunk 2: objects of 40 and 20
        vec![READY, 0, 0],
        vec![DELETE_BACKUP, 0, 1],
        vec![COLLECT, 0, 0], // claims and deletes backup 1's keys: gc_gen moves
        race(2),
    ]
    .concat();
    vec![
        ("volume", [nodes.clone(), volume.clone()].concat()),
        (
            "upload-across-a-claim-after-a-collection",
            [nodes.clone(), volume.clone(), after_a_collection].concat(),
        ),
        (
            "upload-across-a-claim",
            [nodes.clone(), volume.clone(), across_a_claim].concat(),
        ),
        ("backups", [nodes.clone(), volume.clone(), backups].concat()),
        ("late", [nodes.clone(), volume.clone(), late].concat()),
        ("json", [nodes.clone(), json].concat()),
        (
            "snapshots",
            [nodes.clone(), volume.clone(), snapshots].concat(),
        ),
        ("failures", [nodes, volume, failures].concat()),
    ]
}
