//! Revoking a certificate takes effect across a running cluster, with no restart: an admin
//! publishes the CA's revocation list to the managers, which put it in force at once and
//! hand it to every storage node with its next heartbeat's answer. From then on the
//! revoked client is refused by the managers and by every node, its open connections end
//! at their next request, and every other client goes on. The list survives a manager's
//! restart and reaches a node started afterwards. Lists that would undo a revocation, that
//! no trusted CA signed, or that a non-admin publishes, are refused. Real processes on
//! loopback; the certificates directory the processes share is never written (the list
//! travels only through the managers).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::issue_certs;
use common::metrics::counted;
use common::{Cluster, Opts};
use tessera_net::tls::crl::{self, Revoked};
use tessera_net::tls::issue;
use tessera_net::{Expect, FrameReader, Identity, Role, Security};
use tessera_proto::control::{ControlError, ManagerReply, ManagerRequest};
use tessera_proto::frame::{Frame, Kind};

const T: Duration = Duration::from_secs(10);

fn user(name: &str) -> Identity {
    Identity::Client {
        name: name.into(),
        role: Role::Volumes(vec!["a".into()]),
    }
}

/// The CA's list numbered `number`, revoking the certificates of `stems`.
fn crl_of(c: &Cluster, number: u64, stems: &[&str]) -> String {
    let read = |f: &str| std::fs::read_to_string(c.certs.join(f)).expect(f);
    let revoked: Vec<Revoked> = stems
        .iter()
        .map(|s| {
            let d = issue::describe(read(&format!("{s}.crt")).as_bytes()).expect("a cert");
            Revoked {
                serial: tessera_proto::hex::decode(&d.serial).expect("hex"),
                at: 1_700_000_000,
            }
        })
        .collect();
    crl::make(&read("ca.crt"), &read("ca.key"), number, &revoked).expect("a list")
}

/// A PEM without its line breaks (the manager re-encodes what it is given).
fn ders(pem: &str) -> String {
    pem.split_whitespace().collect()
}

async fn publish(
    c: &Cluster,
    security: &Security,
    pem: String,
) -> Result<ManagerReply, tessera_net::NetError> {
    let req = ManagerRequest::PublishCrl { pem };
    tessera_net::call_managers(security, &c.manager_addrs(), &req, T).await
}

/// Whether `security` is served by the process at `addr`: one frame answered, whatever
/// the answer. A handshake
/// refused (at once, or on the first read under TLS 1.3) is `false`.
async fn served(security: &Security, addr: &str, expect: Expect, frame: &Frame) -> bool {
    let Ok(conn) = security.connect(addr, expect, T).await else {
        return false;
    };
    let (r, mut w) = conn.into_split();
    let mut r = FrameReader::new(r);
    if tessera_net::write_frame(&mut w, frame).await.is_err() {
        return false;
    }
    matches!(tokio::time::timeout(T, r.next()).await, Ok(Ok(Some(_))))
}

/// Waits until `check` holds, for up to 20 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_is_cut_off_by_managers_and_nodes_and_the_others_go_on() {
    let mut c = Cluster::start(Opts {
        nodes: 0,
        ..Default::default()
    });
    let metrics = c.add_nodes_with_metrics(3);
    let status = c.wait_ready(3).await;
    c.create_volume("a", "8MiB", "1MiB");
    issue_certs(&c.certs, &[user("user-a"), user("user-b")]);
    let load = |stem: &str| Security::load(&c.certs, stem).expect(stem);
    let (ua, ub) = (load("client-user-a"), load("client-user-b"));

    // Both users write through the library; user-a also holds raw connections to every
    // node, served.
    let client_a = tessera_client::Client::connect_with(c.manager_addrs(), "a", ua.clone())
        .await
        .expect("user-a connects");
    let client_b = tessera_client::Client::connect_with(c.manager_addrs(), "b", ub.clone())
        .await
        .expect("user-b connects");
    let vol_b = client_b.open("a").await.expect("user-b attaches a");
    vol_b
        .write(0, Bytes::from(vec![7; 4096]))
        .await
        .expect("user-b writes");
    let volume_id = vol_b.info().id;
    // user-a reads what user-b wrote: its library holds a connection to the chunk's leader.
    let vol_a = client_a.open_read_only("a").await.expect("user-a opens a");
    assert_eq!(
        &vol_a.read(0, 4096).await.expect("user-a reads")[..],
        &[7; 4096][..]
    );
    let cap = {
        // user-a's own capability of `a`, as a frame.
        let req = ManagerRequest::Capability {
            volume_id,
            epoch: 0,
            holder: String::new(),
        };
        let Ok(ManagerReply::Capability { signed, .. }) =
            tessera_net::call_managers(&ua, &c.manager_addrs(), &req, T).await
        else {
            panic!("user-a gets a capability");
        };
        let signed = tessera_proto::capability::Signed::from_hex(&signed).expect("hex");
        Frame::new(Kind::Capability, 0, signed.encode().into())
    };
    let nodes: Vec<(u64, String)> = status
        .nodes
        .iter()
        .map(|n| (n.node_id, n.addr.clone()))
        .collect();
    for (id, addr) in &nodes {
        assert!(
            served(&ua, addr, Expect::Node(*id), &cap).await,
            "node {id}"
        );
    }

    // Refused: a non-admin's list, a list no trusted CA signed.
    let list = crl_of(&c, 1, &["client-user-a"]);
    let e = publish(&c, &ub, list.clone()).await.unwrap_err();
    assert!(
        matches!(
            e,
            tessera_net::NetError::Control(ControlError::Unauthorized(_))
        ),
        "{e}"
    );
    let stranger = issue::new_ca(30).expect("a CA");
    let foreign = crl::make(&stranger.cert_pem, &stranger.key_pem, 5, &[]).expect("a list");
    let e = publish(&c, &c.security(), foreign).await.unwrap_err();
    assert!(
        matches!(e, tessera_net::NetError::Control(ControlError::Invalid(_))),
        "{e}"
    );

    // user-a revoked.
    match publish(&c, &c.security(), list.clone()).await {
        Ok(ManagerReply::Crl { version: 1, pem }) => assert_eq!(ders(&pem), ders(&list)),
        other => panic!("published: {other:?}"),
    }
    // The same again changes nothing; an older one would undo revocations.
    assert!(matches!(
        publish(&c, &c.security(), list.clone()).await,
        Ok(ManagerReply::Crl { version: 1, .. })
    ));
    let e = publish(&c, &c.security(), crl_of(&c, 0, &[]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("older"), "{e}");

    let managers = c.manager_addrs();
    let ua2 = ua.clone();
    eventually("the manager refuses user-a", || {
        let (ua, managers) = (ua2.clone(), managers.clone());
        async move {
            let req = ManagerRequest::ListVolumes;
            let r: Result<ManagerReply, _> =
                tessera_net::call_managers(&ua, &managers, &req, T).await;
            r.is_err()
        }
    })
    .await;
    for (id, addr) in &nodes {
        let (ua, addr, cap) = (ua.clone(), addr.clone(), cap.clone());
        let id = *id;
        eventually(&format!("node {id} refuses user-a"), move || {
            let (ua, addr, cap) = (ua.clone(), addr.clone(), cap.clone());
            async move { !served(&ua, &addr, Expect::Node(id), &cap).await }
        })
        .await;
    }
    // The library's open connections end at their next request: its reads fail.
    let read = tokio::time::timeout(Duration::from_secs(30), vol_a.read(0, 4096)).await;
    assert!(!matches!(read, Ok(Ok(_))), "user-a still reads: {read:?}");
    for m in &metrics {
        counted(m, "tessera_storage_refused_connections_total", 1);
    }
    assert!(
        metrics
            .iter()
            .map(|m| common::metrics::counter(m, "tessera_connections_untrusted_total"))
            .sum::<u64>()
            >= 1,
        "an open connection was ended"
    );

    // The others go on.
    vol_b
        .write(4096, Bytes::from(vec![8; 4096]))
        .await
        .expect("user-b writes on");
    assert_eq!(
        &vol_b.read(0, 4096).await.expect("reads")[..],
        &[7; 4096][..]
    );
    let admin = c.client().await;
    admin.open_read_only("a").await.expect("the admin opens a");

    // The list survives the manager's restart, and reaches a node started afterwards.
    c.kill_manager(0);
    c.restart_manager(0);
    c.wait_leader().await;
    let got = tessera_net::call_managers(&ub, &c.manager_addrs(), &ManagerRequest::Crl, T).await;
    assert!(
        matches!(got, Ok(ManagerReply::Crl { version: 1, .. })),
        "{got:?}"
    );
    let i0 = c.node_index(&status, nodes[0].0);
    c.kill_node(i0);
    c.restart_node(i0);
    let (id, addr) = nodes[0].clone();
    let ua2 = ua.clone();
    let ub2 = ub.clone();
    let cap_b = cap.clone();
    eventually("the restarted node serves user-b", || {
        let (ub, addr) = (ub2.clone(), addr.clone());
        let cap = cap_b.clone();
        async move { served(&ub, &addr, Expect::Node(id), &cap).await }
    })
    .await;
    eventually("the restarted node refuses user-a", || {
        let (ua, addr, cap) = (ua2.clone(), addr.clone(), cap.clone());
        async move { !served(&ua, &addr, Expect::Node(id), &cap).await }
    })
    .await;
}
