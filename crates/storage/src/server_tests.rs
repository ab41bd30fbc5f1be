//! Promises of the data port's catch-up serving and layer usage answers.

use super::*;

use tessera_proto::data::ChunkAddr;

const GROUP: u64 = 7;

fn catch_up_req(op: Op, len: u32) -> Request {
    let addr = ChunkAddr {
        group: GROUP,
        volume: 1,
        chunk: 0,
    };
    Request::other(op, addr, 0, len)
}

/// A request already past [`CopySources::source`] when the replica is destroyed finds
/// its chunk files gone, and a missing file reads as zeroes with zero checksums (and
/// lists nothing): it must fail instead, and so must the connection's later requests,
/// even once the group is hosted here anew.
#[test]
fn catch_up_requests_of_a_replica_destroyed_under_them_fail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let chunks = ChunkStores::open(tmp.path()).expect("stores");
    chunks
        .get(GROUP)
        .expect("store")
        .write(1, 0, 0, &[5u8; 8192])
        .expect("write");
    let mut copied = CopySources::default();
    let store = copied.source(&chunks, GROUP).expect("the group is hosted");
    chunks.remove(GROUP).expect("destroy the replica");
    for req in [
        catch_up_req(Op::CatchUpRead, 8192),
        catch_up_req(Op::CatchUpChecksums, 2),
        catch_up_req(Op::CatchUpList, 0),
    ] {
        match serve_catch_up(&chunks, &store, &req) {
            Reply::GroupNotFound => {}
            other => panic!("{:?} of a destroyed replica answered {other:?}", req.op),
        }
    }
    chunks.get(GROUP).expect("host the group anew");
    assert!(copied.source(&chunks, GROUP).is_none());
    assert!(CopySources::default().source(&chunks, GROUP).is_some());
}

/// A layer usage query: a group this node does not host is `NotFound`; a hosted one
/// answers, once synced, each written layer of the volume's chunks with its allocated
/// bytes (the base layer 1, and a layer per snapshot sequence written), and nothing of
/// another volume.
#[test]
fn layer_usage_counts_each_written_layer_of_the_volume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let chunks = ChunkStores::open(tmp.path()).expect("stores");
    match layer_usage(&chunks, 3, GROUP, 1) {
        Err(ControlError::NotFound(why)) => assert!(why.contains("group 7"), "{why}"),
        other => panic!("usage of a group not hosted: {other:?}"),
    }
    let store = chunks.get(GROUP).expect("store");
    store.write(1, 0, 0, &[5u8; 8192]).expect("write");
    store.write_seq(1, 2, 4096, &[6u8; 4096], 3).expect("write");
    store
        .write(2, 0, 0, &[7u8; 4096])
        .expect("write of another volume");
    store.sync().expect("sync");
    let usage = match layer_usage(&chunks, 3, GROUP, 1) {
        Ok(StorageReply::LayerUsage(usage)) => usage,
        other => panic!("usage of a hosted group: {other:?}"),
    };
    let layers: Vec<(u64, u64)> = usage.iter().map(|l| (l.chunk, l.layer)).collect();
    assert_eq!(layers, [(0, 1), (2, 3)], "{usage:?}");
    for l in &usage {
        assert!(l.bytes >= 4096, "{l:?}: nothing counted");
    }
}
