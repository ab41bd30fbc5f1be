//! [`State::check`]: no finding after any step of what requests do (volumes, chunks,
//! snapshots and reclaims, clones and flattens, rollbacks, attachments, backups, copies,
//! restores, collection, moves); and a state with one field broken is found, by name.

use std::time::Duration;

use tessera_proto::control::{Hash, NodeRegistration};

use super::backup_refs::StoreRefs;
use super::backup_tests::{h, seg, two_backups};
use super::snapshot_tests::setup;
use super::*;
use crate::attach;

const MIB: u64 = 1 << 20;

/// Applies `m`, then checks the state.
fn step(s: &mut State, m: &Mutation) {
    s.apply(m);
    if let Err(e) = s.check() {
        panic!("after {m:?}: {e}");
    }
}

fn register(s: &mut State, rack: &str) {
    let reg = NodeRegistration {
        node_id: None,
        zone: "z".into(),
        rack: rack.into(),
        addr: format!("{rack}:1"),
        capacity_bytes: 1 << 40,
        used_bytes: 0,
        disk: 0,
    };
    let (_, m) = s.plan_register(&reg).unwrap();
    step(s, &m);
}

fn id(s: &State, name: &str) -> u64 {
    s.volume_by_name(name).unwrap().id
}

fn cut(s: &mut State, vol: &str, name: &str) {
    let SnapshotPlan::Cut(m) = s.plan_create_snapshot(vol, name, 200).unwrap() else {
        panic!("{name} exists");
    };
    step(s, &m);
    let volume_id = id(s, vol);
    let name = name.into();
    step(
        s,
        &Mutation::SnapshotReady {
            volume_id,
            name,
            seq: 0,
        },
    );
}

fn attach(s: &mut State, vol: &str) {
    let (m, _) = attach::plan_attach(s, vol, "gw", "", 150, |_| Duration::ZERO).unwrap();
    step(s, &m.unwrap());
}

/// Creates the backup (or copy) `m` records: its id.
fn create(s: &mut State, m: &Mutation) -> u64 {
    step(s, m);
    s.next_ids().backup - 1
}

/// Records `chunks` of backup `id`, then makes it ready with `root` if given.
fn upload(s: &mut State, id: u64, chunks: Vec<ChunkSegment>, root: Option<Hash>) {
    let gc_gen = s.gc_gen(&s.backup(id).unwrap().store);
    let stats = BackupStats::default();
    step(
        s,
        &Mutation::BackupChunks {
            id,
            gc_gen,
            chunks,
            stats,
        },
    );
    if let Some(root) = root {
        step(
            s,
            &Mutation::BackupReady {
                id,
                root,
                finished_unix: 2000,
            },
        );
    }
}

fn delete_backup(s: &mut State, id: u64) {
    let m = s.plan_delete_backup(id, 3000).unwrap();
    step(s, &m);
}

/// The collector's pass over `store`: releases its segments at 0 refs (with the objects
/// [`objects_of`] names), then claims `claim`, or all the garbage and deletes what is
/// claimed (`None`).
fn collect(s: &mut State, store: &str, claim: Option<GcKey>) {
    let segs = s.segments_to_release(store, usize::MAX);
    let segs = segs.into_iter().map(|g| (g, objects_of(g))).collect();
    let store = store.to_string();
    step(
        s,
        &Mutation::SegmentsReleased {
            store: store.clone(),
            segs,
            now_unix: 3000,
        },
    );
    let keys = claim.map_or_else(|| s.garbage_due(&store, u64::MAX, usize::MAX), |k| vec![k]);
    step(
        s,
        &Mutation::GcClaim {
            store: store.clone(),
            keys,
        },
    );
    if claim.is_none() {
        let keys = s.claimed(&store);
        step(s, &Mutation::GcDeleted { store, keys });
    }
}

/// The objects of each segment the tests record.
fn objects_of(g: Hash) -> Vec<Hash> {
    match g.0[0] {
        11 => vec![h(1), h(2)],
        12 => vec![h(3)],
        13 => vec![h(3), h(4)],
        14 => vec![h(5)],
        _ => vec![],
    }
}

/// Something of everything, made by requests and checked after each step: volume "v"
/// (attached; snapshots s1 and s3, s2 deleted into a reclaim in progress), its clone "c"
/// of v@s1, in store "a" ready backups b1 (v@s1) and b2 (v@s3, on b1), a deleted one's
/// garbage and a claimed root, b1's copy in store "b", an upload of v@s3 in store "c",
/// and volume "r" restoring from b1, linked and attached. Returns (b1, b2, copy, upload).
fn build(s: &mut State) -> (u64, u64, u64, u64) {
    for r in 0..3 {
        register(s, &format!("r{r}"));
    }
    let m = s.plan_groups(|_| true, 3, 2).unwrap();
    step(s, &m);
    let m = s.plan_create_volume("v", 1 << 30, Some(MIB), 100).unwrap();
    step(s, &m);
    let v = id(s, "v");
    let m = s.plan_map_chunks(v, 0, 8, |_| true).unwrap().unwrap();
    step(s, &m);
    attach(s, "v");
    for snap in ["s1", "s2", "s3"] {
        cut(s, "v", snap);
    }
    let ClonePlan::Create(m) = s.plan_clone("v", "s1", "c", 300).unwrap() else {
        panic!("c exists");
    };
    step(s, &m);
    let volume_id = id(s, "c");
    step(s, &Mutation::CloneLinked { volume_id });
    let m = s.plan_resize_volume("v", 2 << 30).unwrap().unwrap();
    step(s, &m);
    let m = s.plan_map_chunks(v, 1500, 4, |_| true).unwrap().unwrap();
    step(s, &m);
    let m = s.plan_delete_snapshot("v", "s2").unwrap();
    step(s, &m);
    let r = s.reclaim_steps().pop().unwrap();
    let of = ReclaimOf {
        top: r.top,
        seq: r.seq,
    };
    let (low, next_chunk) = (r.low, 3);
    step(
        s,
        &Mutation::ReclaimProgress {
            volume_id: v,
            low,
            next_chunk,
            of,
            retry: false,
        },
    );

    let m = s.plan_create_backup("v", "s1", "a", 1000).unwrap();
    let b1 = create(s, &m);
    let chunks = vec![
        seg(0, h(11), Some(&[h(1), h(2)])),
        seg(1, h(12), Some(&[h(3)])),
    ];
    upload(s, b1, chunks.clone(), Some(h(21)));
    let m = s.plan_create_backup("v", "s3", "a", 1100).unwrap();
    let b0 = create(s, &m);
    upload(
        s,
        b0,
        vec![seg(0, h(11), None), seg(1, h(14), Some(&[h(5)]))],
        Some(h(20)),
    );
    delete_backup(s, b0);
    collect(s, "a", Some(GcKey::Root(h(20))));
    let m = s.plan_create_backup("v", "s3", "a", 1200).unwrap();
    let b2 = create(s, &m);
    upload(
        s,
        b2,
        vec![seg(0, h(11), None), seg(1, h(13), Some(&[h(3), h(4)]))],
        Some(h(22)),
    );
    let CopyPlan::New(m) = s.plan_copy_backup(b1, "b", 1300).unwrap() else {
        panic!("a new copy");
    };
    let copy = create(s, &m);
    upload(s, copy, chunks, Some(h(21)));
    let m = s.plan_create_backup("v", "s3", "c", 1400).unwrap();
    let b3 = create(s, &m);
    upload(s, b3, vec![seg(0, h(11), Some(&[h(1)]))], None);

    let m = s.plan_restore_volume("r", b1, 1500, |_| true).unwrap();
    step(s, &m);
    let volume_id = id(s, "r");
    step(s, &Mutation::RestoreLinked { volume_id });
    let (next_chunk, next_position) = (0, 1);
    step(
        s,
        &Mutation::RestoreProgress {
            volume_id,
            next_chunk,
            next_position,
        },
    );
    attach(s, "r");
    (b1, b2, copy, b3)
}

#[test]
fn no_step_of_what_requests_do_breaks_an_invariant() {
    for s in [setup().0, two_backups().0] {
        s.check().unwrap();
    }
    let mut s = State::default();
    s.check().unwrap();
    let (b1, b2, copy, b3) = build(&mut s);
    let (v, c, r) = (id(&s, "v"), id(&s, "c"), id(&s, "r"));
    let rs = s.reclaim_steps().pop().unwrap();
    let of = ReclaimOf {
        top: rs.top,
        seq: rs.seq,
    };
    step(
        &mut s,
        &Mutation::ReclaimDone {
            volume_id: v,
            low: rs.low,
            of,
        },
    );
    delete_backup(&mut s, b3);
    let (next_chunk, next_position) = (0, 2);
    step(
        &mut s,
        &Mutation::RestoreProgress {
            volume_id: r,
            next_chunk,
            next_position,
        },
    );
    step(&mut s, &Mutation::RestoreDone { volume_id: r });
    // Flatten c, chunk by chunk, until its parent is cleared.
    let m = s.plan_flatten("c").unwrap().unwrap();
    step(&mut s, &m);
    while let Some(f) = s.flatten_step(c) {
        let m = match f {
            FlattenStep::Chunk { chunk, .. } => Mutation::ChunkUnlinked {
                volume_id: c,
                chunk,
            },
            FlattenStep::Done(m) => *m,
        };
        step(&mut s, &m);
    }
    // Detach (forced), roll back to s3, take and delete snapshots.
    let (m, _) = attach::plan_detach(&s, "v", 0, true, |_| Duration::ZERO).unwrap();
    step(&mut s, &m.unwrap());
    let (m, _) = s.plan_rollback("v", "s3").unwrap();
    step(&mut s, &m.unwrap());
    let epoch = s.volume_record("v").unwrap().epoch;
    step(
        &mut s,
        &Mutation::RollbackDone {
            volume_id: v,
            epoch,
        },
    );
    cut(&mut s, "v", "s4");
    for snap in ["s1", "s4", "s3"] {
        let m = s.plan_delete_snapshot("v", snap).unwrap();
        step(&mut s, &m);
    }
    // Every backup deleted and collected.
    for b in [b1, b2] {
        delete_backup(&mut s, b);
    }
    collect(&mut s, "a", None);
    delete_backup(&mut s, copy);
    collect(&mut s, "b", None);
    collect(&mut s, "c", None);
    // A move of group 1 onto a new node.
    register(&mut s, "r3");
    let mut target = s.group(1).unwrap().members.clone();
    target[0] = 4;
    step(
        &mut s,
        &Mutation::SetGroupTarget {
            group_id: 1,
            target: target.clone(),
        },
    );
    step(
        &mut s,
        &Mutation::SetGroupMembers {
            group_id: 1,
            members: target,
            term: 5,
        },
    );
    for name in ["c", "r", "v"] {
        let (m, _) = s.plan_delete_volume(name).unwrap();
        step(&mut s, &m);
    }
    assert_eq!(s.volume_count(), 0);
}

fn vol<'a>(s: &'a mut State, name: &str) -> &'a mut Volume {
    let id = id(s, name);
    s.volumes.get_mut(&id).unwrap()
}

fn parent<'a>(s: &'a mut State, name: &str) -> &'a mut ParentLink {
    vol(s, name).rec.parent.as_mut().unwrap()
}

fn store<'a>(s: &'a mut State, name: &str) -> &'a mut StoreRefs {
    s.backups.stores.get_mut(name).unwrap()
}

fn garbage(s: &mut State, k: GcKey) {
    let a = store(s, "a");
    a.garbage.insert(k, 5);
    a.by_since.insert((5, k));
}

/// Each case breaks one invariant of the state `build` makes (b1 is backup 1, the upload
/// backup 5); the finding must say what.
#[test]
fn each_broken_invariant_is_found_and_named() {
    let mut base = State::default();
    assert_eq!(build(&mut base), (1, 3, 4, 5));
    type Break = fn(&mut State);
    let cases: &[(&str, Break)] = &[
        ("next.node is 3", |s| s.next.node = 3),
        ("next.volume is", |s| s.next.volume = id(s, "r")),
        ("by_name: 4 names", |s| {
            s.by_name.insert("ghost".into(), 1);
        }),
        ("by_group holds", |s| {
            vol(s, "v").by_group.insert((2, 999));
        }),
        ("past its 2048 chunks", |s| {
            let v = vol(s, "v");
            v.chunks.insert(5000, 1);
            v.by_group.insert((1, 5000));
        }),
        ("chunk 7: unknown group 99", |s| {
            vol(s, "v").chunks.insert(7, 99);
        }),
        ("group 1 counts", |s| {
            s.groups.get_mut(&1).unwrap().chunks += 1
        }),
        ("group 1: member 77 unknown", |s| {
            s.groups.get_mut(&1).unwrap().rec.members.push(77)
        }),
        ("group 2: target 1 unknown or twice", |s| {
            s.groups.get_mut(&2).unwrap().rec.target = vec![1, 1]
        }),
        ("groups_by_node misses group", |s| {
            s.groups_by_node.get_mut(&1).unwrap().pop_first();
        }),
        ("snapshot s1 at 1: not in 3..", |s| {
            vol(s, "v").rec.snapshots.reverse()
        }),
        ("two snapshots named", |s| {
            vol(s, "v").rec.snapshots[1].name = "s1".into()
        }),
        ("snapshot s3 at 3: not in 1..2", |s| {
            vol(s, "v").rec.snap_seq = 2
        }),
        ("snapshot s1 is 3221225472 bytes", |s| {
            vol(s, "v").rec.snapshots[0].size = 3 << 30
        }),
        ("not just above a snapshot", |s| {
            vol(s, "v").rec.reclaims[0].low = 3
        }),
        ("reclaim at 2: not in 2..", |s| {
            let low = vol(s, "v").rec.reclaims[0].low;
            let next_chunk = 0;
            vol(s, "v").rec.reclaims.push(Reclaim { low, next_chunk });
        }),
        ("attached while rolling back", |s| {
            vol(s, "v").rec.rolling_back = Some(1)
        }),
        ("attached at epoch", |s| vol(s, "v").rec.epoch += 1),
        ("links to", |s| parent(s, "c").snapshot = "s9".into()),
        ("linked chunk 500", |s| parent(s, "c").linked.push(500)),
        ("flattening while linking", |s| {
            let p = parent(s, "c");
            (p.linking, p.flattening) = (true, true);
        }),
        ("clones misses it under", |s| s.clones.clear()),
        ("clones lists", |s| {
            let (v, r) = (id(s, "v"), id(s, "r"));
            s.clones.insert((v, "s3".into()), [r].into());
        }),
        ("restores from backup 99", |s| {
            vol(s, "r").rec.restore.as_mut().unwrap().backup = 99
        }),
        ("attached while its restore is unlinked", |s| {
            vol(s, "r").rec.restore.as_mut().unwrap().linked = false
        }),
        ("backup 99: chunks, but no record", |s| {
            s.backups.chunks.insert(99, [(0, h(1))].into());
        }),
        ("refs Some(2), recorded 1 times", |s| {
            *store(s, "a").segs.get_mut(&h(12)).unwrap() += 1
        }),
        ("queued for release: true", |s| {
            store(s, "a").release.insert(h(12));
        }),
        ("kept with 0 refs", |s| {
            store(s, "a").objects.insert(h(9), 0);
        }),
        ("referenced but garbage", |s| {
            garbage(s, GcKey::Object(h(1)))
        }),
        ("is claimed and garbage", |s| {
            store(s, "a").claimed.insert(GcKey::Segment(h(14)));
        }),
        ("by_since holds", |s| {
            store(s, "a").by_since.insert((1, GcKey::Root(h(98))));
        }),
        ("nothing in it", |s| {
            s.backups.stores.insert("z".into(), StoreRefs::default());
        }),
        ("backup 1: its root", |s| garbage(s, GcKey::Root(h(21)))),
        ("Ready with root None", |s| {
            s.backups.records.get_mut(&1).unwrap().root = None
        }),
        ("backup 5: reads", |s| {
            s.backups.records.get_mut(&5).unwrap().seq = 99
        }),
    ];
    base.check().unwrap();
    for (says, broken) in cases {
        let mut s = base.clone();
        broken(&mut s);
        match s.check() {
            Ok(()) => panic!("not found: {says}"),
            Err(e) => assert!(e.0.contains(says), "expected {says:?}, found {:?}", e.0),
        }
    }
}
