use super::*;

use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::RootCertStore;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use bytes::Bytes;
use tessera_proto::control::ControlError;
use tessera_proto::frame::{Frame, Kind};
use tokio::net::TcpListener;

use crate::{FrameReader, write_frame};

/// A CA and a `Security` for each identity, all signed by it.
struct Pki {
    ca: issue::Issued,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            ca: issue::new_ca(30).unwrap(),
        }
    }

    fn security(&self, who: &Identity) -> Security {
        let c = issue::issue(&self.ca.cert_pem, &self.ca.key_pem, who, &[], 1).unwrap();
        Security::from_pem(
            self.ca.cert_pem.as_bytes(),
            c.cert_pem.as_bytes(),
            c.key_pem.as_bytes(),
        )
        .unwrap()
    }
}

fn admin() -> Identity {
    Identity::Client {
        name: "ops".into(),
        role: Role::Admin,
    }
}

/// A server accepting with `security` that echoes one frame per connection and reports
/// each accepted peer's identity, or the error its accept ended with.
async fn echo_server(
    security: Security,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<Result<Option<Identity>, String>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (security, tx) = (security.clone(), tx.clone());
            tokio::spawn(async move {
                match security.accept(tcp).await {
                    Ok((conn, who)) => {
                        let _ = tx.send(Ok(who));
                        let (r, mut w) = conn.into_split();
                        if let Ok(Some(f)) = FrameReader::new(r).next().await {
                            let _ = write_frame(&mut w, &f).await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn echo(security: &Security, addr: &str) -> Result<Frame, NetError> {
    echo_to(security, addr, Expect::Any).await
}

async fn echo_to(security: &Security, addr: &str, expect: Expect) -> Result<Frame, NetError> {
    let conn = security
        .connect(addr, expect, Duration::from_secs(5))
        .await?;
    let (r, mut w) = conn.into_split();
    write_frame(
        &mut w,
        &Frame::new(Kind::Rpc, 7, Bytes::from_static(b"hello")),
    )
    .await?;
    FrameReader::new(r).next().await?.ok_or(NetError::Closed)
}

/// Two processes with certificates from the cluster CA talk, and each learns who the other
/// is from its certificate.
#[tokio::test]
async fn peers_with_the_clusters_certificates_talk_and_know_each_other() {
    let pki = Pki::new();
    let node = pki.security(&Identity::Node(3));
    assert_eq!(node.identity(), Some(&Identity::Node(3)));
    let (addr, mut accepted) = echo_server(node).await;
    let f = echo(&pki.security(&admin()), &addr).await.unwrap();
    assert_eq!(&f.body[..], b"hello");
    assert_eq!(accepted.recv().await.unwrap(), Ok(Some(admin())));
    // A node dials a node too.
    echo(&pki.security(&Identity::Node(2)), &addr)
        .await
        .unwrap();
    assert_eq!(accepted.recv().await.unwrap(), Ok(Some(Identity::Node(2))));
}

/// A stranger is refused whatever it tries: plain TCP, a certificate from another CA, or a
/// certificate from the cluster's CA that names no Tessera identity. No frame of theirs is
/// ever read.
#[tokio::test]
async fn strangers_are_refused_at_the_handshake() {
    let pki = Pki::new();
    let (addr, mut accepted) = echo_server(pki.security(&Identity::Node(1))).await;

    // Told in so many words: the server answers its frame with a TLS alert.
    let plain = echo(&Security::insecure(), &addr).await.unwrap_err();
    assert!(matches!(plain, NetError::SpeaksTls), "{plain}");
    assert!(accepted.recv().await.unwrap().is_err());

    let other_ca = Pki::new().security(&admin());
    let e = echo(&other_ca, &addr).await.unwrap_err();
    assert!(matches!(e, NetError::Handshake { .. }), "{e}");
    assert!(accepted.recv().await.unwrap().is_err());

    // Signed by the cluster's CA, but naming no one.
    let ca_key = rcgen::KeyPair::from_pem(&pki.ca.key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&pki.ca.cert_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let nameless = rcgen::CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let loaded = Security::from_pem(
        pki.ca.cert_pem.as_bytes(),
        nameless.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    );
    assert!(loaded.is_err(), "a process must not start as no one");
    // Dialled anyway (by hand), it is refused by the server.
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates({
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        roots
    })
    .with_client_auth_cert(
        vec![nameless.der().clone()],
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let name = ServerName::try_from(issue::SERVER_NAME).unwrap();
    let mut s = TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
    let sent = write_frame(&mut s, &Frame::new(Kind::Rpc, 1, Bytes::new())).await;
    let mut buf = [0u8; 16];
    let read = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
    assert!(sent.is_err() || !matches!(read, Ok(n) if n > 0));
    assert!(accepted.recv().await.unwrap().is_err());
}

/// A secure process does not talk to a plain server either: it would hand its requests to
/// whoever listens on the address.
#[tokio::test]
async fn a_secure_client_refuses_a_plain_server() {
    let (addr, _) = echo_server(Security::insecure()).await;
    let e = echo(&Pki::new().security(&admin()), &addr)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            NetError::Handshake { .. } | NetError::Connect { .. } | NetError::Timeout { .. }
        ),
        "{e}"
    );
}

/// A peer that connects and never finishes the handshake is dropped after the deadline.
#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_dropped_at_the_handshake_deadline() {
    let pki = Pki::new();
    let (addr, mut accepted) = echo_server(pki.security(&Identity::Node(1))).await;
    let _silent = TcpStream::connect(&addr).await.unwrap();
    let r = accepted.recv().await.unwrap().unwrap_err();
    assert!(r.contains("no answer"), "{r}");
}

/// A dialler checks who answered, not only that the cluster's CA certified it: a server
/// with node 2's certificate (an address node 2 took over) is not node 3, nor a manager,
/// and is refused before anything is sent to it. The node dialled as node 2 is served.
#[tokio::test]
async fn a_server_is_refused_unless_its_certificate_names_who_was_dialled() {
    let pki = Pki::new();
    let (addr, _) = echo_server(pki.security(&Identity::Node(2))).await;
    for dialler in [
        pki.security(&Identity::Node(1)),
        pki.security(&Identity::Manager(1)),
        pki.security(&admin()),
    ] {
        for expect in [Expect::Node(3), Expect::AnyManager, Expect::Manager(2)] {
            let e = echo_to(&dialler, &addr, expect).await.unwrap_err();
            assert!(
                matches!(&e, NetError::WrongPeer { expected, found: Some(Identity::Node(2)), .. }
                    if *expected == expect),
                "{e}"
            );
            assert!(e.to_string().contains("is node 2, not"), "{e}");
        }
        for expect in [Expect::Node(2), Expect::Any] {
            let f = echo_to(&dialler, &addr, expect).await.unwrap();
            assert_eq!(&f.body[..], b"hello");
        }
    }
    // Insecure: no identities, nothing to check.
    let (plain, _) = echo_server(Security::insecure()).await;
    echo_to(&Security::insecure(), &plain, Expect::Node(3))
        .await
        .unwrap();
}

/// A server answering every control-plane request with `answer`, counting the requests it
/// was sent.
async fn answering(security: Security, answer: &'static str) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let asked = Arc::new(AtomicUsize::new(0));
    let counting = asked.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let Ok((conn, _)) = security.accept(tcp).await else {
                continue;
            };
            let (r, mut w) = conn.into_split();
            let mut r = FrameReader::new(r);
            while let Ok(Some(f)) = r.next().await {
                counting.fetch_add(1, Ordering::Relaxed);
                let reply = crate::rpc_reply(f.request_id, &Ok::<_, ControlError>(answer));
                let _ = write_frame(&mut w, &reply).await;
            }
        }
    });
    (addr, asked)
}

/// Of the addresses a process is given for its managers, one answered by node 2 is
/// passed over like an unreachable one: the request goes to the manager, never to it.
#[tokio::test]
async fn a_node_on_a_managers_address_is_passed_over_and_sent_nothing() {
    let pki = Pki::new();
    for dialler in [pki.security(&admin()), pki.security(&Identity::Node(1))] {
        // Fresh addresses each time: no leader remembered, the impostor's is tried first.
        let (impostor, asked) = answering(pki.security(&Identity::Node(2)), "node 2").await;
        let (manager, _) = answering(pki.security(&Identity::Manager(1)), "manager 1").await;
        let managers = [impostor, manager];
        let t = Duration::from_secs(5);
        let rep: String = crate::call_managers(&dialler, &managers, &"req", t)
            .await
            .unwrap();
        assert_eq!(rep, "manager 1");
        assert_eq!(asked.load(Ordering::Relaxed), 0);
    }
}

/// A client whose certificate the server refuses (another CA's) while it trusts the
/// server: under TLS 1.3 its handshake ends before the server's verdict, which arrives on
/// its first read, and is read as the refusal it is, not as a lost connection to retry.
#[tokio::test]
async fn a_client_the_server_refuses_is_told_so_on_its_first_read() {
    let pki = Pki::new();
    let (addr, mut accepted) = echo_server(pki.security(&Identity::Node(1))).await;
    // Trusts the cluster's CA, presents a certificate of its own CA.
    let own = issue::new_ca(30).unwrap();
    let me = issue::issue(&own.cert_pem, &own.key_pem, &admin(), &[], 1).unwrap();
    let both = format!("{}{}", pki.ca.cert_pem, own.cert_pem);
    let half = Security::from_pem(
        both.as_bytes(),
        me.cert_pem.as_bytes(),
        me.key_pem.as_bytes(),
    )
    .unwrap();
    let e = echo(&half, &addr).await.unwrap_err();
    assert!(matches!(e, NetError::Handshake { .. }), "{e}");
    assert!(accepted.recv().await.unwrap().is_err());
}

/// Every Tessera process takes a server of the cluster CA named `tessera` as one of its
/// own: a client's certificate may name other hosts (for NBD over TLS), never that one.
#[test]
fn a_client_certificate_may_not_name_the_host_tessera_servers_answer_to() {
    let pki = Pki::new();
    let issue = |hosts: &[&str]| {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        issue::issue(&pki.ca.cert_pem, &pki.ca.key_pem, &admin(), &hosts, 1)
    };
    let e = issue(&["localhost", issue::SERVER_NAME]).expect_err("refused");
    assert!(e.to_string().contains("may not name the host"), "{e}");
    issue(&["localhost", "127.0.0.1"]).expect("other hosts are fine");
    issue::issue(
        &pki.ca.cert_pem,
        &pki.ca.key_pem,
        &Identity::Node(1),
        &[issue::SERVER_NAME.to_string()],
        1,
    )
    .expect("a node serves as tessera anyway");
}
