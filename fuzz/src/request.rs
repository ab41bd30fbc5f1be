//! `request`: every body decoder of `tessera_proto` that a peer's bytes reach.
//!
//! Input: one selector byte, then the body (for data-plane requests, a frame kind byte
//! first). Checked: no decoder panics; whatever decodes re-encodes to a body that decodes
//! to the same value (the exact bytes where the format has one encoding per value).

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_proto::capability::{Capability, Signed};
use tessera_proto::command::Command;
use tessera_proto::control::{
    self, ControlError, ManagerReply, ManagerRequest, StorageReply, StorageRequest,
};
use tessera_proto::copy::ChunkListPage;
use tessera_proto::data::{Op, RaftBatch, Reply, Request};
use tessera_proto::frame::Kind;
use tessera_proto::identity::NodeIdentity;
use tessera_proto::manager_raft::{self, Parts, Received};

use crate::input::Input;

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 14 {
        0 => request(input.u8(), input.rest()),
        1 => reply(input.rest()),
        2 => raft_batch(input.rest()),
        3 => command(input.rest()),
        4 => chunk_list(input.rest()),
        5 => manager_raft(input),
        6 => json::<ManagerRequest>(input.rest()),
        7 => json::<Result<ManagerReply, ControlError>>(input.rest()),
        8 => json::<StorageRequest>(input.rest()),
        9 => json::<Result<StorageReply, ControlError>>(input.rest()),
        10 => identity(input.rest()),
        11 => capability(input.rest()),
        12 => signed(input.rest()),
        _ => signed_hex(input.rest()),
    }
}

/// A data-plane request body under any frame kind.
fn request(kind: u8, body: &[u8]) {
    let Ok(kind) = Kind::try_from(kind) else {
        return;
    };
    let Ok(req) = Request::decode(kind, &Bytes::copy_from_slice(body)) else {
        return;
    };
    assert_eq!(req.kind(), kind);
    if req.op == Op::Write {
        assert_eq!(
            req.data.len(),
            req.len as usize,
            "a write carries its length"
        );
    } else {
        assert!(req.data.is_empty(), "only a write carries data");
    }
    let wire = req.encode();
    let again = Request::decode(kind, &wire).expect("a re-encoded request decodes");
    assert_eq!(again.encode(), wire, "encoding is a fixed point");
    // `seq` 0 and 1 name the same layer for these ops, and 1 is sent as 0.
    let same_layer = matches!(
        req.op,
        Op::Write
            | Op::WriteZeroes
            | Op::Discard
            | Op::Fence
            | Op::CatchUpChecksums
            | Op::CatchUpRead
    ) && req.seq <= 1
        && again.seq == 0;
    let expected = Request {
        seq: if same_layer { 0 } else { req.seq },
        ..req
    };
    assert_eq!(again, expected);
}

fn reply(body: &[u8]) {
    let Ok(reply) = Reply::decode(&Bytes::copy_from_slice(body)) else {
        return;
    };
    assert_eq!(Reply::decode(&reply.encode()), Ok(reply.clone()));
    let (head, data) = reply.encode_parts();
    assert_eq!(Reply::decode(&[head, data].concat().into()), Ok(reply));
}

fn raft_batch(body: &[u8]) {
    let Ok(batch) = RaftBatch::decode(&Bytes::copy_from_slice(body)) else {
        return;
    };
    assert_eq!(&batch.encode()[..], body, "one encoding per batch");
}

fn command(body: &[u8]) {
    let Ok(cmd) = Command::decode(&Bytes::copy_from_slice(body)) else {
        return;
    };
    assert_eq!(Command::decode(&cmd.encode()), Ok(cmd.clone()));
    // The accessors read the command's data, as the apply loop does; they must not panic.
    let _ = (cmd.link_parent(), cmd.rollback_to(), cmd.merge_range());
    let _ = (cmd.scrub_mark(), cmd.repair_parts());
    let _ = (
        Command::peek_fence(body),
        Command::peek_epoch(body),
        Command::peek_id(body),
    );
}

fn chunk_list(body: &[u8]) {
    let Ok(page) = ChunkListPage::decode(body) else {
        return;
    };
    assert_eq!(ChunkListPage::decode(&page.encode()), Ok(page.clone()));
    let _ = page.next_cursor();
}

/// A connection's sequence of manager Raft bodies, each a `u16` length (mod 2048) then its bytes,
/// sharing one [`Parts`].
fn manager_raft(mut input: Input<'_>) {
    let mut parts = Parts::default();
    while !input.is_empty() {
        let len = usize::from(input.u16() % 2048);
        let body = input.bytes(len);
        match manager_raft::decode(body, &mut parts) {
            Ok(Received::Batch(msgs)) => {
                let owned: Vec<Bytes> = msgs.iter().map(|m| Bytes::copy_from_slice(m)).collect();
                let (bodies, too_large) = manager_raft::encode(&owned);
                assert!(too_large.is_empty());
                let mut back = Vec::new();
                for b in &bodies {
                    match manager_raft::decode(b, &mut Parts::default()) {
                        Ok(Received::Batch(m)) => back.extend(m.iter().map(|m| m.to_vec())),
                        other => panic!("a re-encoded batch decodes to {other:?}"),
                    }
                }
                let msgs: Vec<Vec<u8>> = msgs.iter().map(|m| m.to_vec()).collect();
                assert_eq!(back, msgs);
            }
            Ok(Received::Partial | Received::Whole(_)) => {}
            Err(_) => parts = Parts::default(),
        }
    }
}

/// A control-plane JSON body of type `T`.
fn json<T>(body: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(msg) = control::decode::<T>(body) else {
        return;
    };
    assert_eq!(control::decode::<T>(&control::encode(&msg)), Ok(msg));
}

fn identity(body: &[u8]) {
    let Ok(id) = NodeIdentity::decode(body) else {
        return;
    };
    assert_eq!(NodeIdentity::decode(&id.encode()), Ok(id));
}

fn capability(body: &[u8]) {
    let Ok(cap) = Capability::decode(body) else {
        return;
    };
    assert_eq!(cap.encode(), body, "one encoding per capability");
}

fn signed(body: &[u8]) {
    let Ok(signed) = Signed::decode(body) else {
        return;
    };
    assert_eq!(signed.encode(), body, "one encoding per envelope");
    assert_eq!(Signed::from_hex(&signed.to_hex()), Ok(signed));
}

fn signed_hex(body: &[u8]) {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(signed) = Signed::from_hex(text) else {
        return;
    };
    assert_eq!(signed.to_hex(), text.to_ascii_lowercase());
}
