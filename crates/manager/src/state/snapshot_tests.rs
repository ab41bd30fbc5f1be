//! Snapshots and clones in the state: the cut, names, deletes refused under clones,
//! co-located clones, flatten steps resumable from the replicated state, rollback ops,
//! routes carrying the sequence, old records loading.

use tessera_proto::control::{ControlError, GroupOp, NodeRegistration, SnapshotState};

use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Three racks, two groups; volume "v" (1 GiB of 1 MiB chunks) with chunks 0..4 mapped
/// alternately to groups 1 and 2.
pub(super) fn setup() -> (State, u64) {
    let mut s = State::default();
    for r in 0..3 {
        let reg = NodeRegistration {
            node_id: None,
            zone: "z".into(),
            rack: format!("r{r}"),
            addr: format!("n{r}:1"),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            disk: 0,
        };
        let (_, m) = s.plan_register(&reg).unwrap();
        s.apply(&m);
    }
    let m = s.plan_groups(|_| true, 3, 2).unwrap();
    s.apply(&m);
    let m = s.plan_create_volume("v", GIB, Some(MIB), 100).unwrap();
    s.apply(&m);
    let id = s.volume_by_name("v").unwrap().id;
    let m = s.plan_map_chunks(id, 0, 4, |_| true).unwrap().unwrap();
    s.apply(&m);
    (s, id)
}

pub(super) fn cut(s: &mut State, vol: &str, name: &str) {
    match s.plan_create_snapshot(vol, name, 200).unwrap() {
        SnapshotPlan::Cut(m) => s.apply(&m),
        SnapshotPlan::Finish => panic!("{name} exists"),
    }
    let id = s.volume_by_name(vol).unwrap().id;
    s.apply(&Mutation::SnapshotReady {
        volume_id: id,
        name: name.into(),
        seq: 0,
    });
}

fn clone(s: &mut State, vol: &str, snap: &str, name: &str) -> u64 {
    let ClonePlan::Create(m) = s.plan_clone(vol, snap, name, 300).unwrap() else {
        panic!("{name} exists");
    };
    s.apply(&m);
    let id = s.volume_by_name(name).unwrap().id;
    s.apply(&Mutation::CloneLinked { volume_id: id });
    id
}

#[test]
fn the_cut_records_a_creating_snapshot_and_moves_the_sequence() {
    let (mut s, id) = setup();
    assert_eq!(s.volume_by_name("v").unwrap().seq, 1);
    let SnapshotPlan::Cut(m) = s.plan_create_snapshot("v", "mon", 200).unwrap() else {
        panic!("a new snapshot is cut");
    };
    s.apply(&m);
    let v = s.volume_by_name("v").unwrap();
    assert_eq!(v.seq, 2);
    assert_eq!(v.snapshots.len(), 1);
    let snap = &v.snapshots[0];
    assert_eq!(
        (snap.seq, snap.state, snap.size),
        (1, SnapshotState::Creating, GIB)
    );
    // Every group holding a chunk is fenced with the new sequence.
    let (cut_at, fences) = s.snapshot_fence_ops(id, "mon").unwrap();
    assert_eq!(cut_at, 1);
    assert_eq!(fences.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        fences[&1],
        [GroupOp::Fence {
            volume_id: id,
            epoch: 0,
            seq: 2
        }]
    );
    // Asking again while Creating finishes it; the sequence does not move again.
    assert_eq!(
        s.plan_create_snapshot("v", "mon", 201).unwrap(),
        SnapshotPlan::Finish
    );
    // Applying the cut twice (a replay) changes nothing more.
    s.apply(&m);
    assert_eq!(s.volume_by_name("v").unwrap().seq, 2);
    // A Ready mark for another cut of that name (deleted and taken again) marks nothing.
    s.apply(&Mutation::SnapshotReady {
        volume_id: id,
        name: "mon".into(),
        seq: 7,
    });
    assert_eq!(
        s.snapshot_info("v", "mon").unwrap().state,
        SnapshotState::Creating
    );
    s.apply(&Mutation::SnapshotReady {
        volume_id: id,
        name: "mon".into(),
        seq: 1,
    });
    assert_eq!(
        s.snapshot_info("v", "mon").unwrap().state,
        SnapshotState::Ready
    );
    cut(&mut s, "v", "tue");
    let v = s.volume_by_name("v").unwrap();
    assert_eq!(v.seq, 3);
    let seqs: Vec<u64> = v.snapshots.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [1, 2]);
    // Routes carry the current sequence.
    assert_eq!(s.route(id, 0).unwrap().unwrap().seq, 3);
    assert!(
        s.route_page(id, 0, 0)
            .unwrap()
            .routes
            .iter()
            .all(|r| r.seq == 3)
    );
    assert!(
        s.group_page(id, 0)
            .unwrap()
            .routes
            .iter()
            .all(|r| r.seq == 3)
    );
    assert_eq!(s.list_snapshots(None).unwrap().len(), 2);
    assert_eq!(s.list_snapshots(Some("v")).unwrap()[1].name, "tue");
}

#[test]
fn snapshot_names_duplicates_and_unknowns_are_refused() {
    let (mut s, _) = setup();
    cut(&mut s, "v", "mon");
    for bad in ["", "a@b", "a/b", ".x", "-x", &"x".repeat(65)] {
        let err = s.plan_create_snapshot("v", bad, 0).unwrap_err();
        assert!(matches!(err, ControlError::Invalid(_)), "{bad:?}: {err:?}");
    }
    assert!(matches!(
        s.plan_create_snapshot("v", "mon", 0),
        Err(ControlError::AlreadyExists(_))
    ));
    assert!(matches!(
        s.plan_create_snapshot("nope", "mon", 0),
        Err(ControlError::NotFound(_))
    ));
    assert!(matches!(
        s.snapshot_info("v", "nope"),
        Err(ControlError::NotFound(_))
    ));
    assert!(matches!(
        s.plan_delete_snapshot("v", "nope"),
        Err(ControlError::NotFound(_))
    ));
    assert!(matches!(
        s.list_snapshots(Some("nope")),
        Err(ControlError::NotFound(_))
    ));
}

#[test]
fn a_clone_maps_every_chunk_to_its_parents_group_and_links_it() {
    let (mut s, parent) = setup();
    cut(&mut s, "v", "mon");
    // A chunk mapped after the snapshot is mapped in the clone too (it reads as the
    // snapshot through the link: nothing there).
    let ClonePlan::Create(m) = s.plan_clone("v", "mon", "c", 300).unwrap() else {
        panic!()
    };
    s.apply(&m);
    let c = s.volume_by_name("c").unwrap();
    assert_eq!(
        (c.size, c.chunk_size, c.seq, c.mapped_chunks),
        (GIB, MIB, 1, 4)
    );
    let p = c.parent.clone().unwrap();
    assert_eq!(
        (p.volume.as_str(), p.snapshot.as_str(), p.seq),
        ("v", "mon", 1)
    );
    assert_eq!((p.linked_chunks, p.flattening), (4, false));
    for chunk in 0..4 {
        assert_eq!(
            s.route(c.id, chunk).unwrap().unwrap().group_id,
            s.route(parent, chunk).unwrap().unwrap().group_id
        );
    }
    // Not usable until linked (not opened, so not attached either); asking again
    // finishes it.
    assert!(s.volume_record("c").unwrap().linking());
    assert!(matches!(
        s.open_volume("c"),
        Err(ControlError::Unavailable(_))
    ));
    assert!(matches!(
        s.plan_create_snapshot("c", "x", 0),
        Err(ControlError::Unavailable(_))
    ));
    assert_eq!(s.linking_clones(), [c.id]);
    assert_eq!(
        s.plan_clone("v", "mon", "c", 301).unwrap(),
        ClonePlan::Finish(c.id)
    );
    let links = s.link_ops(c.id).unwrap();
    assert_eq!(links.len(), 2);
    assert_eq!(
        links[&1][0],
        GroupOp::Link {
            volume_id: c.id,
            chunk: 0,
            parent_volume: parent,
            parent_seq: 1
        }
    );
    s.apply(&Mutation::CloneLinked { volume_id: c.id });
    assert!(s.linking_clones().is_empty());
    assert!(s.open_volume("c").is_ok());
    assert_eq!(s.snapshot_info("v", "mon").unwrap().clones, ["c"]);
    assert_eq!(s.volume_by_name("v").unwrap().snapshots[0].clones, ["c"]);
    assert!(matches!(
        s.plan_clone("v", "mon", "c", 0),
        Err(ControlError::AlreadyExists(_))
    ));
    assert!(matches!(
        s.plan_clone("v", "nope", "d", 0),
        Err(ControlError::NotFound(_))
    ));
    assert!(matches!(
        s.plan_clone("v", "mon", "a@b", 0),
        Err(ControlError::Invalid(_))
    ));
}

#[test]
fn snapshots_and_volumes_with_clones_are_not_deleted() {
    let (mut s, parent) = setup();
    cut(&mut s, "v", "mon");
    let a = clone(&mut s, "v", "mon", "clone-a");
    clone(&mut s, "v", "mon", "clone-b");
    let err = s.plan_delete_snapshot("v", "mon").unwrap_err();
    assert!(
        matches!(&err, ControlError::Conflict(m) if m.contains("clone-a, clone-b")),
        "{err:?}"
    );
    let err = s.plan_delete_volume("v").unwrap_err();
    assert!(
        matches!(&err, ControlError::Conflict(m) if m.contains("clone-a")),
        "{err:?}"
    );
    // Deleting the clones frees the snapshot, then the volume.
    for name in ["clone-a", "clone-b"] {
        let (m, _) = s.plan_delete_volume(name).unwrap();
        s.apply(&m);
    }
    assert!(s.snapshot_info("v", "mon").unwrap().clones.is_empty());
    assert!(a > parent);
    let m = s.plan_delete_snapshot("v", "mon").unwrap();
    s.apply(&m);
    assert!(s.volume_by_name("v").unwrap().snapshots.is_empty());
    cut(&mut s, "v", "tue");
    let (m, dropped) = s.plan_delete_volume("v").unwrap();
    s.apply(&m);
    assert_eq!(dropped.by_group.values().map(Vec::len).sum::<usize>(), 4);
}

#[test]
fn a_flatten_goes_chunk_by_chunk_and_a_new_leader_carries_on() {
    let (mut s, _) = setup();
    cut(&mut s, "v", "mon");
    let c = clone(&mut s, "v", "mon", "c");
    assert!(matches!(s.plan_flatten("v"), Err(ControlError::Invalid(_))));
    assert_eq!(s.flatten_step(c), None, "not flattening yet");
    // A clone with snapshots flattens too (into its base layer, which they all read),
    // and takes snapshots while it runs.
    cut(&mut s, "c", "c1");
    let m = s.plan_flatten("c").unwrap().unwrap();
    s.apply(&m);
    assert_eq!(s.plan_flatten("c").unwrap(), None, "already running");
    cut(&mut s, "c", "c2");
    assert_eq!(s.flattening_clones(), [c]);
    let mut log = vec![m];
    for chunk in 0..2 {
        let Some(FlattenStep::Chunk {
            chunk: got,
            group_id,
            chunk_size,
            ..
        }) = s.flatten_step(c)
        else {
            panic!("chunk {chunk} next");
        };
        assert_eq!((got, chunk_size), (chunk, MIB));
        assert_eq!(group_id, s.route(c, chunk).unwrap().unwrap().group_id);
        let m = Mutation::ChunkUnlinked {
            volume_id: c,
            chunk,
        };
        s.apply(&m);
        log.push(m);
        let p = s.volume_by_name("c").unwrap().parent.unwrap();
        assert_eq!((p.linked_chunks, p.flattening), (3 - chunk, true));
    }
    // A manager rebuilt from the records (a new leader) resumes at chunk 2.
    let mut r = State::restore(
        s.nodes().cloned().collect(),
        s.groups().cloned().collect(),
        s.list_volumes()
            .iter()
            .map(|v| s.volume_record(&v.name).unwrap().clone())
            .collect(),
        (0..4)
            .flat_map(|c| [(1, c), (c_id(&s), c)])
            .map(|(v, c)| (v, c, s.route(v, c).unwrap().unwrap().group_id))
            .collect(),
        s.next_ids(),
    )
    .unwrap();
    assert!(matches!(
        r.flatten_step(c),
        Some(FlattenStep::Chunk { chunk: 2, .. })
    ));
    for chunk in 2..4 {
        r.apply(&Mutation::ChunkUnlinked {
            volume_id: c,
            chunk,
        });
    }
    let Some(FlattenStep::Done(m)) = r.flatten_step(c) else {
        panic!("nothing left");
    };
    assert_eq!(*m, Mutation::ParentCleared { volume_id: c });
    r.apply(&m);
    assert_eq!(r.volume_by_name("c").unwrap().parent, None);
    assert!(r.snapshot_info("v", "mon").unwrap().clones.is_empty());
    assert_eq!(r.flatten_step(c), None);
    assert!(r.plan_delete_snapshot("v", "mon").is_ok());
}

fn c_id(s: &State) -> u64 {
    s.volume_by_name("c").unwrap().id
}

#[test]
fn flatten_pieces_cover_the_chunk() {
    let ops = flatten_pieces(9, 2, 64 * MIB);
    assert_eq!(ops.len(), 16);
    assert_eq!(
        ops[15],
        GroupOp::Flatten {
            volume_id: 9,
            chunk: 2,
            offset: (60 * MIB) as u32,
            len: (4 * MIB) as u32,
            seq: 1
        }
    );
    assert_eq!(flatten_pieces(9, 2, MIB).len(), 1);
}

#[test]
fn a_rollback_bumps_the_epoch_and_fences_then_rolls_every_chunk_back() {
    let (mut s, id) = setup();
    cut(&mut s, "v", "mon");
    cut(&mut s, "v", "tue");
    let epoch = s.volume_record("v").unwrap().epoch;
    let (m, to) = s.plan_rollback("v", "mon").unwrap();
    s.apply(&m.expect("a new rollback"));
    assert_eq!(to, 1);
    let rec = s.volume_record("v").unwrap();
    assert_eq!(rec.epoch, epoch + 1);
    assert!(rec.attachment.is_none());
    assert_eq!(rec.rolling_back, Some(1));
    let ops = s.rollback_ops(id, to, rec.epoch).unwrap();
    assert_eq!(ops.len(), 2);
    for (g, ops) in &ops {
        assert_eq!(ops.len(), 4, "group {g}: a fence before each of two chunks");
        for pair in ops.chunks(2) {
            assert_eq!(
                pair[0],
                GroupOp::Fence {
                    volume_id: id,
                    epoch: epoch + 1,
                    seq: 0
                }
            );
            assert!(matches!(pair[1], GroupOp::Rollback { to: 1, seq: 3, .. }));
        }
    }
    // Under way, the volume is neither opened (nor attached) nor snapshotted; asking
    // again resumes it (no new epoch), a rollback elsewhere waits for it.
    assert!(matches!(
        s.open_volume("v"),
        Err(ControlError::Unavailable(_))
    ));
    assert!(matches!(
        s.plan_create_snapshot("v", "wed", 9),
        Err(ControlError::Unavailable(_))
    ));
    assert_eq!(s.plan_rollback("v", "mon").unwrap(), (None, 1));
    assert!(matches!(
        s.plan_rollback("v", "tue"),
        Err(ControlError::Conflict(_))
    ));
    assert_eq!(s.rolling_back_volumes(), [(id, 1)]);
    // Done only for the epoch it was started with.
    s.apply(&Mutation::RollbackDone {
        volume_id: id,
        epoch,
    });
    assert_eq!(s.volume_record("v").unwrap().rolling_back, Some(1));
    s.apply(&Mutation::RollbackDone {
        volume_id: id,
        epoch: epoch + 1,
    });
    assert_eq!(s.volume_record("v").unwrap().rolling_back, None);
    assert!(s.open_volume("v").is_ok());
    assert!(matches!(
        s.plan_rollback("v", "nope"),
        Err(ControlError::NotFound(_))
    ));
}

#[test]
fn records_from_before_snapshots_load_with_sequence_one() {
    let old = br#"{"id":3,"name":"db","size":1073741824,"chunk_size":67108864,"created_unix":7}"#;
    let rec: VolumeRecord = serde_json::from_slice(old).unwrap();
    assert_eq!((rec.snap_seq, rec.seq()), (0, 1));
    assert!(rec.snapshots.is_empty() && rec.parent.is_none());
    // A record without snapshots keeps its old form; one with them round-trips.
    let plain = VolumeRecord::new(3, "db", GIB, 64 * MIB, 7);
    let json = serde_json::to_string(&plain).unwrap();
    assert!(
        !json.contains("snapshots") && !json.contains("parent"),
        "{json}"
    );
    let (mut s, _) = setup();
    cut(&mut s, "v", "mon");
    clone(&mut s, "v", "mon", "c");
    for name in ["v", "c"] {
        let rec = s.volume_record(name).unwrap();
        let back: VolumeRecord =
            serde_json::from_str(&serde_json::to_string(rec).unwrap()).unwrap();
        assert_eq!(&back, rec);
    }
}

#[test]
fn a_clone_has_the_snapshots_size_even_after_the_parent_grew() {
    let (mut s, id) = setup();
    cut(&mut s, "v", "mon");
    let m = s.plan_resize_volume("v", 2 * GIB).unwrap().unwrap();
    s.apply(&m);
    let m = s.plan_map_chunks(id, 1500, 2, |_| true).unwrap().unwrap();
    s.apply(&m);
    clone(&mut s, "v", "mon", "c");
    let c = s.volume_by_name("c").unwrap();
    assert_eq!((c.size, c.mapped_chunks), (GIB, 4));
    assert_eq!(c.parent.unwrap().linked_chunks, 4);
}
