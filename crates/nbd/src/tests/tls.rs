//! A server requiring TLS, seen by a client that does not start it: the spec's TLS-only
//! mode (every option but STARTTLS and ABORT refused with `NBD_REP_ERR_TLS_REQD`, a hang-up
//! on `NBD_OPT_EXPORT_NAME`), refusals counted once per connection. Real clients over TLS
//! are the `tessera` binary's `nbd_tls` tests.

use tessera_net::tls::issue;
use tessera_net::{Identity, Role, Security};

use super::mem::MemBackend;
use super::{MIB, Running};
use crate::NbdServer;
use crate::consts::*;
use crate::testing::Conn;

fn gateway() -> Security {
    let ca = issue::new_ca(1).unwrap();
    let who = Identity::Client {
        name: "gw".into(),
        role: Role::Admin,
    };
    let c = issue::issue(&ca.cert_pem, &ca.key_pem, &who, &["127.0.0.1".into()], 1).unwrap();
    Security::from_pem(
        ca.cert_pem.as_bytes(),
        c.cert_pem.as_bytes(),
        c.key_pem.as_bytes(),
    )
    .unwrap()
}

async fn start_tls() -> Running {
    let backend = MemBackend::new(&[("vol0", MIB)]);
    let server = NbdServer::bind("127.0.0.1:0", backend.clone())
        .await
        .unwrap()
        .with_tls(&gateway())
        .unwrap();
    super::run(server, backend)
}

fn go_data(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

#[tokio::test]
async fn without_starttls_every_option_is_refused_and_export_name_hangs_up() {
    let s = start_tls().await;
    let refused = crate::starttls::REFUSED.get();
    let mut c = Conn::connect(s.addr).await.unwrap();
    for (opt, data) in [
        (OPT_LIST, Vec::new()),
        (OPT_GO, go_data("vol0")),
        (OPT_INFO, go_data("vol0")),
        (OPT_STRUCTURED_REPLY, Vec::new()),
    ] {
        c.option(opt, &data).await.unwrap();
        let (o, kind, msg) = c.option_reply().await.unwrap();
        assert_eq!((o, kind), (opt, REP_ERR_TLS_REQD), "option {opt}");
        assert!(String::from_utf8_lossy(&msg).contains("requires TLS"));
    }
    // STARTTLS carries no data.
    c.option(OPT_STARTTLS, b"x").await.unwrap();
    let (_, kind, _) = c.option_reply().await.unwrap();
    assert_eq!(kind, REP_ERR_INVALID);
    c.option(OPT_EXPORT_NAME, b"vol0").await.unwrap();
    c.expect_eof().await.unwrap();
    // One connection, one refusal (no other test of this binary refuses connections).
    assert_eq!(crate::starttls::REFUSED.get(), refused + 1);

    // A client that starts TLS is answered ACK, then the server waits for its hello.
    let mut c = Conn::connect(s.addr).await.unwrap();
    c.option(OPT_STARTTLS, &[]).await.unwrap();
    assert_eq!(
        c.option_reply().await.unwrap(),
        (OPT_STARTTLS, REP_ACK, Vec::new())
    );
    // Not a TLS hello: the handshake fails with a TLS alert record, and the connection ends.
    c.option(OPT_LIST, &[]).await.unwrap();
    let alert = c.read_exact(7).await.unwrap();
    assert_eq!(alert[0], 0x15, "an alert: {alert:02x?}");
    c.expect_eof().await.unwrap();
    assert_eq!(crate::starttls::REFUSED.get(), refused + 2);

    // A client that aborts at once, never told anything, is not a refusal.
    let mut c = Conn::connect(s.addr).await.unwrap();
    c.option(OPT_ABORT, &[]).await.unwrap();
    assert_eq!(c.option_reply().await.unwrap().1, REP_ACK);
    c.expect_eof().await.unwrap();
    assert_eq!(crate::starttls::REFUSED.get(), refused + 2);
    drop(s);
}
