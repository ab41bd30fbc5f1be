//! Changing what a running process trusts: revocation lists from its directory and from
//! the manager, a renewed certificate, a CA added and removed, and what is refused.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use tessera_proto::frame::{Frame, Kind};
use tokio::net::TcpListener;

use crate::tls::crl::{self, Revoked};
use crate::tls::{Expect, Identity, Role, Security, issue};
use crate::{ConnRead, ConnWrite, FrameReader, NetError, write_frame};

/// A certificates directory with a CA, as `tessera cert` keeps one.
struct Dir {
    tmp: tempfile::TempDir,
    ca: issue::Issued,
}

impl Dir {
    fn new() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let ca = issue::new_ca(30).unwrap();
        replace(&tmp.path().join("ca.crt"), &ca.cert_pem);
        Dir { tmp, ca }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Issues (or renews) `who`'s files as `stem`.
    fn issue(&self, who: &Identity, stem: &str) -> issue::Issued {
        let c = issue::issue(&self.ca.cert_pem, &self.ca.key_pem, who, &[], 1).unwrap();
        let (crt, key) = issue::pair_paths(self.path(), stem);
        replace(&key, &c.key_pem);
        replace(&crt, &c.cert_pem);
        c
    }

    /// `who`'s `Security`, loaded from the files just issued, and its certificate.
    fn load(&self, who: &Identity, stem: &str) -> (Security, issue::Issued) {
        let c = self.issue(who, stem);
        (Security::load(self.path(), stem).unwrap(), c)
    }

    /// The CA's revocation list number `number` revoking `certs`, PEM.
    fn crl(&self, number: u64, certs: &[&issue::Issued]) -> String {
        crl_of(&self.ca, number, certs)
    }
}

fn crl_of(ca: &issue::Issued, number: u64, certs: &[&issue::Issued]) -> String {
    let revoked: Vec<Revoked> = certs
        .iter()
        .map(|c| Revoked {
            serial: tessera_proto::hex::decode(&c.serial).unwrap(),
            at: 1_700_000_000,
        })
        .collect();
    crl::make(&ca.cert_pem, &ca.key_pem, number, &revoked).unwrap()
}

/// Writes `path` whole, by rename, as `tessera cert` does.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn client(name: &str) -> Identity {
    Identity::Client {
        name: name.into(),
        role: Role::Admin,
    }
}

/// A server that echoes every frame of every connection.
async fn echo_server(security: Security) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let security = security.clone();
            tokio::spawn(async move {
                let Ok((conn, _)) = security.accept(tcp).await else {
                    return;
                };
                let (r, mut w) = conn.into_split();
                let mut r = FrameReader::new(r);
                while let Ok(Some(f)) = r.next().await {
                    if write_frame(&mut w, &f).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An open connection to an echo server.
struct Open {
    r: FrameReader<ConnRead>,
    w: ConnWrite,
}

impl Open {
    async fn to(security: &Security, addr: &str) -> Result<Open, NetError> {
        let conn = security
            .connect(addr, Expect::Any, Duration::from_secs(5))
            .await?;
        let (r, w) = conn.into_split();
        let mut open = Open {
            r: FrameReader::new(r),
            w,
        };
        open.echo().await?;
        Ok(open)
    }

    async fn echo(&mut self) -> Result<(), NetError> {
        write_frame(
            &mut self.w,
            &Frame::new(Kind::Rpc, 1, Bytes::from_static(b"hi")),
        )
        .await?;
        match self.r.next().await? {
            Some(f) if &f.body[..] == b"hi" => Ok(()),
            _ => Err(NetError::Closed),
        }
    }
}

/// A revocation list written into the server's directory refuses the revoked client's new
/// connections and ends its open one at its next request, once the server reloads; other
/// clients go on, on their open connections and new ones.
#[tokio::test]
async fn a_revoked_client_is_refused_and_its_open_connection_ends() {
    let dir = Dir::new();
    let (server, _) = dir.load(&Identity::Node(1), "node-1");
    let addr = echo_server(server.clone()).await;
    let (alice, alice_cert) = dir.load(&client("alice"), "client-alice");
    let (bob, _) = dir.load(&client("bob"), "client-bob");
    let mut alice_open = Open::to(&alice, &addr).await.unwrap();
    let mut bob_open = Open::to(&bob, &addr).await.unwrap();
    let untrusted = super::UNTRUSTED.get();

    replace(
        &dir.path().join(crate::tls::CRL_FILE),
        &dir.crl(1, &[&alice_cert]),
    );
    assert!(
        alice_open.echo().await.is_ok(),
        "nothing changes before the reload"
    );
    assert!(server.reload().unwrap(), "the new list is read");
    assert!(!server.reload().unwrap(), "and only once");

    assert!(alice_open.echo().await.is_err(), "the open connection ends");
    assert!(
        Open::to(&alice, &addr).await.is_err(),
        "a new one is refused"
    );
    bob_open.echo().await.unwrap();
    Open::to(&bob, &addr).await.unwrap();
    assert!(
        super::UNTRUSTED.get() > untrusted,
        "the ended connection is counted"
    );
}

/// A client refuses a server whose certificate its own directory's list revokes, and ends
/// its open connection to it (a node's key stolen and revoked).
#[tokio::test]
async fn a_revoked_server_is_refused_by_the_clients_that_know() {
    let dir = Dir::new();
    let node = dir.issue(&Identity::Node(2), "node-2");
    let addr = echo_server(Security::load(dir.path(), "node-2").unwrap()).await;
    let (me, _) = dir.load(&client("ops"), "client-ops");
    let mut open = Open::to(&me, &addr).await.unwrap();
    replace(
        &dir.path().join(crate::tls::CRL_FILE),
        &dir.crl(1, &[&node]),
    );
    assert!(me.reload().unwrap());
    assert!(open.echo().await.is_err());
    let e = Open::to(&me, &addr).await.err().expect("refused");
    assert!(matches!(e, NetError::Handshake { .. }), "{e}");
}

/// Lists from the manager: a newer one of the cluster CA is put in force, an older or the
/// same one changes nothing, one of another CA is skipped, one whose signature is damaged
/// is refused, and
/// the manager's list stays in force when the files are read again.
#[tokio::test]
async fn lists_from_the_manager_apply_when_newer_and_signed_by_the_ca() {
    let dir = Dir::new();
    let (server, _) = dir.load(&Identity::Node(1), "node-1");
    let addr = echo_server(server.clone()).await;
    let alice = dir.issue(&client("alice"), "client-alice");
    let alice_sec = Security::load(dir.path(), "client-alice").unwrap();
    let bob = dir.issue(&client("bob"), "client-bob");
    let bob_sec = Security::load(dir.path(), "client-bob").unwrap();

    let stranger = issue::new_ca(30).unwrap();
    let forged = crl_of(&stranger, 9, &[&bob]);
    assert!(
        !server.apply_crls(forged.as_bytes()).unwrap(),
        "skipped: not our CA"
    );
    // A list whose signature was damaged.
    let mut der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(
        dir.crl(9, &[&bob]).as_bytes(),
    )
    .unwrap()
    .to_vec();
    let last = der.len() - 1;
    der[last] ^= 1;
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(dir.ca.cert_pem.as_bytes()).unwrap();
    let e = crl::parse_der(der.into(), &[ca]).unwrap_err();
    assert!(e.to_string().contains("not signed"), "{e}");
    Open::to(&bob_sec, &addr).await.unwrap();

    assert!(server.apply_crls(dir.crl(2, &[&alice]).as_bytes()).unwrap());
    assert!(Open::to(&alice_sec, &addr).await.is_err());
    assert!(!server.apply_crls(dir.crl(2, &[&alice]).as_bytes()).unwrap());
    assert!(
        !server.apply_crls(dir.crl(1, &[]).as_bytes()).unwrap(),
        "older"
    );
    // An older list in the directory does not undo the manager's.
    replace(&dir.path().join(crate::tls::CRL_FILE), &dir.crl(1, &[]));
    assert!(server.reload().unwrap());
    assert!(Open::to(&alice_sec, &addr).await.is_err());
    Open::to(&bob_sec, &addr).await.unwrap();
    // A newer one revoking both.
    assert!(
        server
            .apply_crls(dir.crl(3, &[&alice, &bob]).as_bytes())
            .unwrap()
    );
    assert!(Open::to(&bob_sec, &addr).await.is_err());
}

/// A renewed certificate and key are presented from the reload on, without a restart;
/// connections opened before go on. A certificate naming another identity is refused and
/// the old one kept; so is a half-written key.
#[tokio::test]
async fn a_renewed_certificate_is_served_and_another_identity_refused() {
    let dir = Dir::new();
    let (server, _) = dir.load(&Identity::Node(1), "node-1");
    let addr = echo_server(server.clone()).await;
    let (me, _) = dir.load(&client("ops"), "client-ops");
    let mut before = Open::to(&me, &addr).await.unwrap();
    let serial_of = |conn: &crate::Conn| match conn {
        crate::Conn::Tls(s, _) => {
            issue::describe_der(&s.get_ref().1.peer_certificates().unwrap()[0])
                .unwrap()
                .serial
        }
        crate::Conn::Plain(_) => unreachable!(),
    };
    let dial = || me.connect(&addr, Expect::Node(1), Duration::from_secs(5));
    let first = serial_of(&dial().await.unwrap());

    let renewed = dir.issue(&Identity::Node(1), "node-1");
    assert!(server.reload().unwrap());
    assert_eq!(serial_of(&dial().await.unwrap()), renewed.serial);
    assert_ne!(renewed.serial, first);
    before.echo().await.unwrap();

    dir.issue(&Identity::Node(2), "node-1");
    let e = server.reload().unwrap_err();
    assert!(e.to_string().contains("node 2"), "{e}");
    assert_eq!(serial_of(&dial().await.unwrap()), renewed.serial);
    // Not tried again until the files change.
    assert!(!server.reload().unwrap());

    std::fs::write(dir.path().join("node-1.key"), "-----BEGIN PRIV").unwrap();
    assert!(server.reload().is_err());
    assert_eq!(serial_of(&dial().await.unwrap()), renewed.serial);
    before.echo().await.unwrap();
}

/// A CA rotation: a second CA added to every bundle is trusted from the reload on (a
/// certificate of the new CA is refused before and taken after); the old CA removed, the
/// certificates it signed are refused, new connections and open ones.
#[tokio::test]
async fn a_ca_is_added_then_the_old_one_removed() {
    let dir = Dir::new();
    let (server, _) = dir.load(&Identity::Node(1), "node-1");
    let addr = echo_server(server.clone()).await;
    let (old_client, _) = dir.load(&client("old"), "client-old");
    let mut old_open = Open::to(&old_client, &addr).await.unwrap();

    let new_ca = issue::new_ca(30).unwrap();
    let c = issue::issue(&new_ca.cert_pem, &new_ca.key_pem, &client("new"), &[], 1).unwrap();
    let both = format!("{}{}", new_ca.cert_pem, dir.ca.cert_pem);
    let new_client =
        Security::from_pem(both.as_bytes(), c.cert_pem.as_bytes(), c.key_pem.as_bytes()).unwrap();
    assert!(Open::to(&new_client, &addr).await.is_err());
    replace(&dir.path().join("ca.crt"), &both);
    assert!(server.reload().unwrap());
    Open::to(&new_client, &addr).await.unwrap();
    old_open.echo().await.unwrap();
    // Each CA's list applies to its own certificates only (CAs differ by subject): the
    // new CA's list revoking nothing leaves the old CA's certificates served, its list
    // revoking `new` refuses that one.
    assert!(
        server
            .apply_crls(crl_of(&new_ca, 1, &[]).as_bytes())
            .unwrap()
    );
    Open::to(&old_client, &addr).await.unwrap();
    assert!(
        server
            .apply_crls(crl_of(&new_ca, 2, &[&c]).as_bytes())
            .unwrap()
    );
    assert!(Open::to(&new_client, &addr).await.is_err());
    Open::to(&old_client, &addr).await.unwrap();

    // The server renewed by the new CA, the old CA dropped.
    let renewed = issue::issue(
        &new_ca.cert_pem,
        &new_ca.key_pem,
        &Identity::Node(1),
        &[],
        1,
    )
    .unwrap();
    replace(&dir.path().join("node-1.key"), &renewed.key_pem);
    replace(&dir.path().join("node-1.crt"), &renewed.cert_pem);
    replace(&dir.path().join("ca.crt"), &new_ca.cert_pem);
    assert!(server.reload().unwrap());
    let newer = issue::issue(&new_ca.cert_pem, &new_ca.key_pem, &client("newer"), &[], 1).unwrap();
    let newer = Security::from_pem(
        both.as_bytes(),
        newer.cert_pem.as_bytes(),
        newer.key_pem.as_bytes(),
    )
    .unwrap();
    Open::to(&newer, &addr).await.unwrap();
    assert!(old_open.echo().await.is_err());
    assert!(Open::to(&old_client, &addr).await.is_err());
}

/// `watch_files` notices a change by itself.
#[tokio::test]
async fn watched_files_are_reloaded_without_being_asked() {
    let dir = Dir::new();
    let (server, _) = dir.load(&Identity::Node(1), "node-1");
    server.watch_files(Duration::from_millis(20));
    let addr = echo_server(server.clone()).await;
    let alice = dir.issue(&client("alice"), "client-alice");
    let alice_sec = Security::load(dir.path(), "client-alice").unwrap();
    let mut open = Open::to(&alice_sec, &addr).await.unwrap();
    replace(
        &dir.path().join(crate::tls::CRL_FILE),
        &dir.crl(1, &[&alice]),
    );
    for _ in 0..500 {
        if open.echo().await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the revocation was never noticed");
}

/// A list of a CA the process does not trust (one removed from the bundle after a
/// rotation, or not added yet) is skipped wherever it comes from: the process starts, the
/// lists of the CAs it trusts are in force, a reload and the manager's lists go on.
#[tokio::test]
async fn a_list_of_a_ca_not_trusted_is_skipped_not_fatal() {
    let dir = Dir::new();
    let alice = dir.issue(&client("alice"), "client-alice");
    let gone = issue::new_ca(30).unwrap();
    let both = format!("{}{}", dir.crl(1, &[&alice]), crl_of(&gone, 7, &[]));
    replace(&dir.path().join(crate::tls::CRL_FILE), &both);
    let (server, _) = dir.load(&Identity::Node(1), "node-1");
    let addr = echo_server(server.clone()).await;
    let alice_sec = Security::load(dir.path(), "client-alice").unwrap();
    assert!(
        Open::to(&alice_sec, &addr).await.is_err(),
        "the trusted CA's list is in force"
    );
    let (bob, _) = dir.load(&client("bob"), "client-bob");
    Open::to(&bob, &addr).await.unwrap();
    assert!(server.check_crls(both.as_bytes()).unwrap().len() == 1);
    let bob_cert =
        issue::describe(&std::fs::read(dir.path().join("client-bob.crt")).unwrap()).unwrap();
    let bob_cert = issue::Issued {
        serial: bob_cert.serial,
        ..alice.clone()
    };
    let newer = format!(
        "{}{}",
        crl_of(&gone, 8, &[]),
        dir.crl(2, &[&alice, &bob_cert])
    );
    assert!(server.apply_crls(newer.as_bytes()).unwrap());
    assert!(Open::to(&bob, &addr).await.is_err());
}
