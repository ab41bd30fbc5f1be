//! NBD over TLS against real clients: qemu-img, qemu-io and nbdinfo with x509 credentials
//! (`tessera cert qemu`) reach the volumes their certificates grant through a `tessera nbd
//! --tls` gateway, and nothing else: a plain client, a certificate of another CA, another
//! volume, a write with a read-only certificate are refused and counted, and the clients
//! that may go on being served. One manager, three storage nodes, the gateway: processes.

mod common;

use std::path::Path;

use common::cluster::issue_certs;
use common::metrics::{counted, counter};
use common::nbd::{qemu_dir, qemu_tls};
use common::{Cluster, Gateway, Opts, said, tool};
use tessera_net::{Identity, Role};

const REFUSED: &str = "tessera_nbd_refused_connections_total";
const DENIED: &str = "tessera_nbd_refused_exports_total";

/// qemu-io `cmds` on `export` over TLS (read-only with `-r` if `read_only`): its output if
/// every command succeeded.
fn qemu_io(
    g: &Gateway,
    dir: &Path,
    export: &str,
    read_only: bool,
    cmds: &[&str],
) -> Result<String, String> {
    let mut args: Vec<String> = Vec::new();
    if read_only {
        args.push("-r".into());
    }
    for c in cmds {
        args.extend(["-c".to_string(), c.to_string()]);
    }
    args.extend(qemu_tls(g, dir, export));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = tool("qemu-io", &args);
    let out = said(&o);
    if o.status.success() && !out.contains("failed") && !out.contains("rror") {
        Ok(out)
    } else {
        Err(out)
    }
}

/// The exports `nbdinfo --list` shows over TLS with the credentials in `dir`.
fn listed(g: &Gateway, dir: &Path) -> Vec<String> {
    let uri = format!(
        "nbds://127.0.0.1:{}/?tls-certificates={}",
        g.port,
        dir.display()
    );
    let o = tool("nbdinfo", &["--list", "--json", &uri]);
    assert!(o.status.success(), "nbdinfo --list: {}", said(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("nbdinfo JSON");
    let mut names: Vec<String> = v["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .map(|e| e["export-name"].as_str().expect("a name").to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_reach_the_volumes_their_certificates_grant_over_nbd_tls() {
    let c = Cluster::start_ready(Opts::default()).await;
    c.create_volume("a", "64MiB", "16MiB");
    c.create_volume("b", "64MiB", "16MiB");
    // The gateway's certificate names the host qemu dials; clients' name what they may use.
    c.cli_ok(&[
        "cert",
        "issue",
        "client",
        "gw",
        "--role",
        "admin",
        "--host",
        "127.0.0.1",
    ]);
    c.cli_ok(&[
        "cert", "issue", "client", "alice", "--role", "user", "--volume", "b",
    ]);
    c.cli_ok(&["cert", "issue", "client", "auditor", "--role", "read-only"]);
    let (admin, alice, auditor) = (
        qemu_dir(&c, "admin"),
        qemu_dir(&c, "alice"),
        qemu_dir(&c, "auditor"),
    );
    let g = c.tls_gateway("gw");
    let metrics = format!("127.0.0.1:{}", g.metrics.expect("metrics"));

    // An admin sees and uses everything: write a pattern into a.
    assert_eq!(listed(&g, &admin), ["a", "b"]);
    qemu_io(&g, &admin, "a", false, &["write -P 0x3c 0 64k"]).unwrap_or_else(|e| panic!("{e}"));

    // A volume user: b only, read-write; its default export (the empty name) is b, not
    // the a that sorts first among all volumes.
    assert_eq!(listed(&g, &alice), ["b"]);
    qemu_io(
        &g,
        &alice,
        "b",
        false,
        &["write -P 0xa5 1m 128k", "read -P 0xa5 1m 128k"],
    )
    .unwrap_or_else(|e| panic!("alice on b: {e}"));
    let default = format!(
        "nbds://127.0.0.1:{}/?tls-certificates={}",
        g.port,
        alice.display()
    );
    let o = tool("nbdinfo", &["--json", &default]);
    assert!(o.status.success(), "{}", said(&o));
    assert!(said(&o).contains("\"export-name\": \"b\""), "{}", said(&o));
    let denied = counter(&metrics, DENIED);
    for export in ["a", "a@snap"] {
        let mut info = vec!["info".to_string()];
        info.extend(qemu_tls(&g, &alice, export));
        let info: Vec<&str> = info.iter().map(String::as_str).collect();
        let o = tool("qemu-img", &info);
        assert!(!o.status.success(), "alice opened {export}: {}", said(&o));
        assert!(
            said(&o).contains("not among this certificate's volumes"),
            "{}",
            said(&o)
        );
    }
    counted(&metrics, DENIED, denied + 2);

    // A read-only certificate reads anything, writes nothing (qemu refuses to open the
    // export read-write: the gateway advertises it read-only), and does not take a volume
    // from the client writing it.
    let writer = c.client().await;
    let b = writer.open("b").await.expect("attach b");
    qemu_io(&g, &auditor, "a", true, &["read -P 0x3c 0 64k"])
        .unwrap_or_else(|e| panic!("auditor reads a: {e}"));
    qemu_io(&g, &auditor, "b", true, &["read -P 0xa5 1m 128k"])
        .unwrap_or_else(|e| panic!("auditor reads b while it is written: {e}"));
    let e = qemu_io(&g, &auditor, "b", false, &["write -P 0x11 1m 4k"]).expect_err("a write");
    assert!(
        e.contains("ermission denied") || e.contains("read-only"),
        "{e}"
    );
    b.write(0, bytes::Bytes::from(vec![7u8; 4096]))
        .await
        .expect("the writer of b is still its writer");
    b.close().await.expect("close b");
    qemu_io(
        &g,
        &alice,
        "b",
        true,
        &["read -P 0xa5 1m 128k", "read -P 7 0 4k"],
    )
    .unwrap_or_else(|e| panic!("b after the read-only client: {e}"));

    // Strangers: a plain client, and a certificate of another CA that trusts ours.
    let refused = counter(&metrics, REFUSED);
    let plain = format!("nbd://127.0.0.1:{}/b", g.port);
    let o = tool("qemu-img", &["info", &plain]);
    assert!(!o.status.success(), "a plain client opened b: {}", said(&o));
    assert!(said(&o).contains("requires TLS"), "{}", said(&o));
    let other = c.dir.path().join("other-ca");
    issue_certs(
        &other,
        &[Identity::Client {
            name: "admin".into(),
            role: Role::Admin,
        }],
    );
    let forged = c.dir.path().join("qemu-forged");
    std::fs::create_dir_all(&forged).expect("mkdir");
    for (from, to) in [
        (c.certs.join("ca.crt"), "ca-cert.pem"),
        (other.join("client-admin.crt"), "client-cert.pem"),
        (other.join("client-admin.key"), "client-key.pem"),
    ] {
        std::fs::copy(&from, forged.join(to)).expect("copy");
    }
    // (qemu checks its own certificate against the CA it trusts before dialling; libnbd
    // presents it, and the gateway refuses it.)
    let uri = format!(
        "nbds://127.0.0.1:{}/a?tls-certificates={}",
        g.port,
        forged.display()
    );
    let o = tool("nbdinfo", &[&uri]);
    assert!(
        !o.status.success(),
        "another CA's client opened b: {}",
        said(&o)
    );
    counted(&metrics, REFUSED, refused + 2);
    assert_eq!(counter(&metrics, REFUSED), refused + 2, "each refused once");

    // The clients that may are still served.
    qemu_io(&g, &alice, "b", false, &["read -P 0xa5 1m 128k"])
        .unwrap_or_else(|e| panic!("alice after the refusals: {e}"));
}
