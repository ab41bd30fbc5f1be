use tessera_net::Role;
use tessera_net::tls::issue;
use tessera_proto::data::ChunkAddr;

use super::*;

struct Cluster {
    ca: issue::Issued,
    manager: Security,
    node: Security,
}

fn security(ca: &issue::Issued, who: &Identity) -> Security {
    let me = issue::issue(&ca.cert_pem, &ca.key_pem, who, &[], 30).unwrap();
    Security::from_pem(
        ca.cert_pem.as_bytes(),
        me.cert_pem.as_bytes(),
        me.key_pem.as_bytes(),
    )
    .unwrap()
}

fn cluster() -> Cluster {
    let ca = issue::new_ca(30).unwrap();
    Cluster {
        manager: security(&ca, &Identity::Manager(1)),
        node: security(&ca, &Identity::Node(2)),
        ca,
    }
}

fn alice() -> Identity {
    Identity::Client {
        name: "alice".into(),
        role: Role::Volumes(vec!["a".into()]),
    }
}

fn cap(volume: u64, epoch: u64, holder: &str, expires_ms: u64) -> Capability {
    Capability {
        volume,
        epoch,
        holder: holder.into(),
        expires_ms,
        issuer: 1,
        fence_only: false,
    }
}

fn signed(by: &Security, c: &Capability) -> Vec<u8> {
    by.sign(c.encode()).unwrap().encode()
}

fn req(op: Op, volume: u64, epoch: u64) -> Request {
    let addr = ChunkAddr {
        group: 1,
        volume,
        chunk: 0,
    };
    let mut r = Request::other(op, addr, 0, 4096);
    r.epoch = epoch;
    r
}

const NOW: u64 = 1_800_000_000_000;

#[test]
fn a_capability_opens_its_volume_at_its_epoch_and_nothing_else() {
    let c = cluster();
    let mut held = Capabilities::default();
    let who = alice();
    let body = signed(&c.manager, &cap(7, 3, "alice", NOW + 1000));
    held.accept(&c.node, Some(&who), &body, NOW)
        .map_err(|r| r.why)
        .unwrap();
    for op in [Op::Read, Op::BlockStatus] {
        held.check(&req(op, 7, 0), NOW).unwrap();
    }
    for op in [Op::Write, Op::WriteZeroes, Op::Discard, Op::Fence] {
        held.check(&req(op, 7, 3), NOW).unwrap();
        assert!(
            held.check(&req(op, 7, 4), NOW).is_err(),
            "an epoch not given"
        );
        assert!(held.check(&req(op, 7, 2), NOW).is_err(), "an older epoch");
        assert!(held.check(&req(op, 8, 3), NOW).is_err(), "another volume");
    }
    assert!(
        held.check(&req(Op::Read, 8, 0), NOW).is_err(),
        "another volume"
    );
    assert!(held.check(&req(Op::CatchUpRead, 7, 3), NOW).is_err());
    // Expired: nothing.
    assert!(held.check(&req(Op::Read, 7, 0), NOW + 1000).is_err());
    assert!(held.check(&req(Op::Write, 7, 3), NOW + 1000).is_err());

    // A reader's capability (epoch 0) reads and never writes.
    let body = signed(&c.manager, &cap(9, 0, "alice", NOW + 1000));
    held.accept(&c.node, Some(&who), &body, NOW)
        .map_err(|r| r.why)
        .unwrap();
    held.check(&req(Op::Read, 9, 0), NOW).unwrap();
    assert!(held.check(&req(Op::Write, 9, 0), NOW).is_err());
}

#[test]
fn forged_stolen_expired_and_misaddressed_capabilities_are_refused() {
    let c = cluster();
    let who = alice();
    let mut held = Capabilities::default();
    let mut refused = |body: Vec<u8>, why: &str| {
        let e = held
            .accept(&c.node, Some(&who), &body, NOW)
            .unwrap_err()
            .why;
        assert!(e.contains(why), "{e}");
    };
    // Another client's.
    refused(
        signed(&c.manager, &cap(7, 3, "bob", NOW + 1000)),
        "presented by client",
    );
    // Expired.
    refused(signed(&c.manager, &cap(7, 3, "alice", NOW)), "expired");
    // Signed by a node, or by a client, of the cluster: not a manager.
    refused(
        signed(&c.node, &cap(7, 3, "alice", NOW + 1000)),
        "not a manager",
    );
    refused(
        signed(&security(&c.ca, &who), &cap(7, 3, "alice", NOW + 1000)),
        "not a manager",
    );
    // Signed by a manager of another cluster.
    let stranger = security(&issue::new_ca(30).unwrap(), &Identity::Manager(1));
    refused(
        signed(&stranger, &cap(7, 3, "alice", NOW + 1000)),
        "not signed",
    );
    // A genuine one with its volume changed after signing.
    let body = signed(&c.manager, &cap(7, 3, "alice", NOW + 1000));
    let mut s = Signed::decode(&body).unwrap();
    s.body[8] = 8;
    refused(s.encode(), "not signed");
    refused(b"garbage".to_vec(), "malformed");
    assert!(
        held.check(&req(Op::Read, 7, 0), NOW).is_err(),
        "nothing was kept"
    );

    // Nodes, managers and insecure peers present none and are not checked here.
    let mut held = Capabilities::default();
    assert!(held.present(&c.node, None, b"garbage").is_ok());
    let manager = Identity::Manager(1);
    assert!(held.allows(Some(&manager), &req(Op::Write, 7, 3)).is_ok());
    assert!(held.allows(None, &req(Op::Write, 7, 3)).is_ok());
    assert!(held.allows(Some(&who), &req(Op::Read, 7, 0)).is_err());
}

#[test]
fn a_fence_only_capability_fences_and_does_nothing_else() {
    let c = cluster();
    let who = alice();
    let mut held = Capabilities::default();
    let mut fence = cap(7, 5, "alice", NOW + 1000);
    fence.fence_only = true;
    held.accept(&c.node, Some(&who), &signed(&c.manager, &fence), NOW)
        .map_err(|r| r.why)
        .unwrap();
    held.check(&req(Op::Fence, 7, 5), NOW).unwrap();
    for op in [Op::Write, Op::WriteZeroes, Op::Discard, Op::Read] {
        assert!(held.check(&req(op, 7, 5), NOW).is_err(), "{op:?}");
    }
    // No client fence moves the snapshot sequence, whatever it holds.
    let mut moving = req(Op::Fence, 7, 5);
    moving.seq = 9;
    assert!(held.check(&moving, NOW).is_err());
}

#[test]
fn one_connection_holds_a_bounded_number_and_only_forgeries_count_against_it() {
    let c = cluster();
    let who = alice();
    let mut held = Capabilities::default();
    for v in 0..MAX_HELD as u64 {
        let g = Grant {
            writes: NOW + 1000 + v,
            fences: NOW + 1000 + v,
        };
        held.caps.insert((v, 0), g);
        held.reads.insert(v, NOW + 1000 + v);
    }
    // Full: the one expiring soonest makes room.
    let body = signed(&c.manager, &cap(u64::MAX, 0, "alice", NOW + 5000));
    held.accept(&c.node, Some(&who), &body, NOW)
        .map_err(|r| r.why)
        .unwrap();
    assert_eq!(held.caps.len(), MAX_HELD);
    assert!(!held.caps.contains_key(&(0, 0)));
    held.check(&req(Op::Read, u64::MAX, 0), NOW).unwrap();

    // An expired one is refused without counting against the connection; a stolen one
    // counts.
    let expired = signed(&c.manager, &cap(3, 0, "alice", NOW));
    let r = held.accept(&c.node, Some(&who), &expired, NOW);
    assert!(matches!(r, Err(Refusal { hostile: false, .. })));
    let stolen = signed(&c.manager, &cap(3, 0, "bob", NOW + 1000));
    let r = held.accept(&c.node, Some(&who), &stolen, NOW);
    assert!(matches!(r, Err(Refusal { hostile: true, .. })));
    assert!(held.present(&c.node, Some(&who), &stolen).is_err());
    assert_eq!(held.hostile, 1);
}
