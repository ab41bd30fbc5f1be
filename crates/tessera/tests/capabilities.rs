//! Storage nodes serve a client's I/O only within the capabilities the manager signed for
//! it: a connection of a volume user, holding valid certificates and a genuine capability,
//! cannot reach another volume, write with a read capability, claim a writer epoch it was
//! not given, write at an epoch the volume has moved past, or use a capability stolen
//! from another client or signed by anyone but a manager. Each refusal is counted on the
//! node, and the real clients are served throughout. Real processes on loopback.

mod common;

use bytes::Bytes;
use common::cluster::issue_certs;
use common::metrics::{counted, counter};
use common::{Cluster, Opts};
use tessera_net::{Expect, FrameReader, Identity, NetError, Role, Security};
use tessera_proto::capability::{Capability, Signed};
use tessera_proto::control::{ControlError, ManagerReply, ManagerRequest};
use tessera_proto::data::{ChunkAddr, Op, Reply, Request};
use tessera_proto::frame::{Frame, Kind};

use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// A raw connection to one node: one frame at a time, each answer awaited.
struct Raw {
    r: FrameReader<tessera_net::ConnRead>,
    w: tessera_net::ConnWrite,
    id: u64,
}

impl Raw {
    async fn open(security: &Security, addr: &str) -> Raw {
        let (r, w) = security
            .connect(addr, Expect::Any, T)
            .await
            .expect("dial a node")
            .into_split();
        Raw {
            r: FrameReader::new(r),
            w,
            id: 0,
        }
    }

    async fn ask(&mut self, kind: Kind, body: Bytes) -> Reply {
        self.id += 1;
        tessera_net::write_frame(&mut self.w, &Frame::new(kind, self.id, body))
            .await
            .expect("send");
        let f = tokio::time::timeout(T, self.r.next())
            .await
            .expect("answered in time")
            .expect("read")
            .expect("a frame");
        assert_eq!(f.request_id, self.id);
        Reply::decode(&f.body).expect("a reply")
    }

    async fn present(&mut self, signed: &Signed) -> Reply {
        self.ask(Kind::Capability, signed.encode().into()).await
    }

    async fn io(&mut self, op: Op, at: ChunkAddr, epoch: u64, byte: u8) -> Reply {
        let mut req = match op {
            Op::Write => Request::write(at, 0, Bytes::from(vec![byte; 4096])),
            Op::Fence => Request::other(op, at, 0, 0),
            _ => Request::other(op, at, 0, 4096),
        };
        req.epoch = epoch;
        req.id = u128::from(self.id + 1) << 64 | 7;
        req.deadline_ms = Request::deadline_in(T);
        let (head, data) = req.encode_parts();
        self.ask(req.kind(), [head, data].concat().into()).await
    }
}

fn unauthorized(r: &Reply, what: &str) {
    assert!(matches!(r, Reply::Unauthorized(_)), "{what}: {r:?}");
}

/// A capability from the manager, asked for as `security`.
async fn capability(
    security: &Security,
    managers: &[String],
    volume_id: u64,
    epoch: u64,
) -> Result<Signed, NetError> {
    let req = ManagerRequest::Capability {
        volume_id,
        epoch,
        holder: String::new(),
    };
    match tessera_net::call_managers(security, managers, &req, T).await? {
        ManagerReply::Capability { signed, .. } => Ok(Signed::from_hex(&signed).expect("hex")),
        other => panic!("not a capability: {other:?}"),
    }
}

async fn route(c: &Cluster, volume_id: u64) -> ChunkAddr {
    let req = ManagerRequest::Route {
        volume_id,
        chunk: 0,
        allocate: false,
        epoch: 0,
    };
    match tessera_net::call_managers(&c.security(), &c.manager_addrs(), &req, T).await {
        Ok(ManagerReply::Route(Some(r))) => ChunkAddr {
            group: r.group_id,
            volume: volume_id,
            chunk: 0,
        },
        other => panic!("no route: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reaches_only_the_volumes_and_epochs_its_capabilities_name() {
    let mut c = Cluster::start(Opts {
        nodes: 0,
        ..Default::default()
    });
    let metrics = c.add_nodes_with_metrics(3);
    c.wait_ready(3).await;
    c.create_volume("a", "8MiB", "1MiB");
    c.create_volume("b", "8MiB", "1MiB");
    let admin = c.client().await;
    let b = admin.open("b").await.expect("open b");
    b.write(0, Bytes::from(vec![0xbb; 4096]))
        .await
        .expect("write b");
    let b_id = b.info().id;
    drop(b);
    let who = |name: &str, vol: &str| Identity::Client {
        name: name.into(),
        role: Role::Volumes(vec![vol.into()]),
    };
    issue_certs(
        &c.certs,
        &[who("user-a", "a"), who("user-a2", "a"), who("user-b", "b")],
    );
    let load = |stem: &str| Security::load(&c.certs, stem).expect(stem);
    let (user_a, user_b, node2) = (load("client-user-a"), load("client-user-b"), load("node-2"));
    let user_a2 = load("client-user-a2");
    let managers = c.manager_addrs();

    // The library fetches and presents capabilities by itself.
    let lib_a = tessera_client::Client::connect_with(managers.clone(), "user-a", user_a.clone())
        .await
        .expect("user-a connects");
    let va = lib_a.open("a").await.expect("user-a opens a");
    va.write(0, Bytes::from(vec![0xa1; 4096]))
        .await
        .expect("write a");
    assert_eq!(&va.read(0, 4096).await.expect("read a")[..], &[0xa1; 4096]);
    let (a_id, e1) = (va.info().id, va.epoch().expect("attached"));
    let (a0, b0) = (route(&c, a_id).await, route(&c, b_id).await);

    // The manager signs nothing for a volume the certificate does not name, nor for a
    // writer epoch the caller does not hold.
    let e = capability(&user_a, &managers, b_id, 0).await.unwrap_err();
    assert!(
        matches!(e, NetError::Control(ControlError::Unauthorized(_))),
        "{e}"
    );
    let e = capability(&user_a, &managers, a_id, e1 + 1)
        .await
        .unwrap_err();
    assert!(
        matches!(e, NetError::Control(ControlError::Conflict(_))),
        "{e}"
    );
    // Another user of the same volume gets none for the holder's epoch.
    let e = capability(&user_a2, &managers, a_id, e1).await.unwrap_err();
    assert!(
        matches!(e, NetError::Control(ControlError::Conflict(_))),
        "{e}"
    );
    let read_a = capability(&user_a, &managers, a_id, 0)
        .await
        .expect("read a");
    let write_a = capability(&user_a, &managers, a_id, e1)
        .await
        .expect("write a");
    // Stolen: user-b's genuine capability of b. Forged: one naming user-a, signed by a
    // storage node's key of the cluster.
    let b_of_user_b = capability(&user_b, &managers, b_id, 0).await.expect("b");
    let forged = node2
        .sign(
            Capability {
                volume: b_id,
                epoch: 0,
                holder: "user-a".into(),
                expires_ms: u64::MAX,
                issuer: 1,
                fence_only: false,
            }
            .encode(),
        )
        .expect("a node signs");

    let mut served = 0;
    for (i, n) in c.nodes.iter().enumerate() {
        let before = counter(&metrics[i], "tessera_storage_refused_requests_total");
        let mut raw = Raw::open(&user_a, &n.addr).await;
        unauthorized(&raw.io(Op::Read, a0, 0, 0).await, "no capability yet");
        unauthorized(&raw.io(Op::Read, b0, 0, 0).await, "no capability, b");
        assert_eq!(raw.present(&read_a).await, Reply::Ok(Bytes::new()));
        match raw.io(Op::Read, a0, 0, 0).await {
            Reply::Ok(d) => {
                assert_eq!(&d[..], &[0xa1; 4096]);
                served += 1;
            }
            Reply::NotLeader { .. } | Reply::Unavailable(_) => {}
            other => panic!("node {i} refused a read of a: {other:?}"),
        }
        unauthorized(&raw.io(Op::Read, b0, 0, 0).await, "another volume");
        unauthorized(&raw.io(Op::Write, a0, 0, 1).await, "a read capability");
        unauthorized(&raw.io(Op::Write, a0, e1, 1).await, "a write without one");
        assert_eq!(raw.present(&write_a).await, Reply::Ok(Bytes::new()));
        unauthorized(
            &raw.io(Op::Write, b0, e1, 1).await,
            "another volume's write",
        );
        unauthorized(
            &raw.io(Op::Write, a0, e1 + 1, 1).await,
            "an epoch not given",
        );
        unauthorized(&raw.present(&b_of_user_b).await, "stolen");
        unauthorized(&raw.present(&forged).await, "forged");
        unauthorized(&raw.io(Op::Read, b0, 0, 0).await, "b after both");
        counted(
            &metrics[i],
            "tessera_storage_refused_requests_total",
            before + 10,
        );
        // The capability still serves its own volume on this connection.
        assert!(!matches!(
            raw.io(Op::Read, a0, 0, 0).await,
            Reply::Unauthorized(_)
        ));
    }
    // (Leadership may move while the nodes are tried one after another.)
    assert!(served >= 1, "the leader served the read");

    // An older writer epoch: the operator moves volume a on (a forced detach fences its
    // groups with a newer epoch). The capability of the old epoch passes the node, and
    // the group refuses the write; the manager signs no more for that epoch.
    let e2 = admin.detach("a", true).await.expect("forced detach");
    assert!(e2 > e1);
    let mut outcomes = Vec::new();
    for n in &c.nodes {
        let mut raw = Raw::open(&user_a, &n.addr).await;
        assert_eq!(raw.present(&write_a).await, Reply::Ok(Bytes::new()));
        outcomes.push(raw.io(Op::Write, a0, e1, 0xee).await);
        unauthorized(&raw.io(Op::Write, a0, e2, 0xee).await, "the new epoch");
    }
    assert!(
        outcomes.iter().any(|r| matches!(r, Reply::Fenced(_)))
            && !outcomes.iter().any(|r| matches!(r, Reply::Ok(_))),
        "{outcomes:?}"
    );
    let e = capability(&user_a, &managers, a_id, e1).await.unwrap_err();
    assert!(
        matches!(e, NetError::Control(ControlError::Conflict(_))),
        "{e}"
    );
    // With no holder, the newest epoch's capability only fences (what the operator's
    // detach needed), whoever asks.
    let fence = capability(&user_a, &managers, a_id, e2)
        .await
        .expect("fence");
    let mut raw = Raw::open(&user_a, &c.nodes[0].addr).await;
    assert_eq!(raw.present(&fence).await, Reply::Ok(Bytes::new()));
    unauthorized(&raw.io(Op::Write, a0, e2, 0xee).await, "a fence-only write");
    unauthorized(&raw.io(Op::Read, a0, e2, 0).await, "a fence-only read");
    assert!(!matches!(
        raw.io(Op::Fence, a0, e2, 0).await,
        Reply::Unauthorized(_)
    ));
    let e = va
        .write(0, Bytes::from(vec![0xa2; 4096]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("epoch"), "{e}");
    drop(va);

    // The real clients are served: user-a attaches again, the admin reads b.
    let va = lib_a.open("a").await.expect("user-a opens a again");
    va.write(0, Bytes::from(vec![0xa3; 4096]))
        .await
        .expect("write a");
    assert_eq!(&va.read(0, 4096).await.expect("read a")[..], &[0xa3; 4096]);
    let b = admin.open_read_only("b").await.expect("open b");
    assert_eq!(&b.read(0, 4096).await.expect("read b")[..], &[0xbb; 4096]);
}
