//! `tessera cert revoke|renew|list` on a certificates directory, running the real binary
//! with `--offline` (no cluster): what `ca.crl` holds afterwards is read back with
//! tessera-net's own checks (`crl::parse`, `Security::load`, `Identity::from_der`), the
//! way a running process reads it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tessera_net::tls::crl::{self, Crl};
use tessera_net::tls::{CRL_FILE, issue};
use tessera_net::{Identity, Role, Security};

/// `tessera --certs-dir DIR args`, with no setting of the caller's environment.
fn tessera(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .env_remove("TESSERA_CERTS_DIR")
        .env_remove("TESSERA_USER")
        .env_remove("TESSERA_INSECURE")
        .env_remove("TESSERA_MANAGER")
        .arg("--certs-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tessera")
}

fn said(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `tessera args`, which must succeed: what it printed.
fn ok(dir: &Path, args: &[&str]) -> String {
    let o = tessera(dir, args);
    assert!(o.status.success(), "tessera {args:?}: {}", said(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `tessera args`, which must fail: what it said on stderr.
fn refused(dir: &Path, args: &[&str]) -> String {
    let o = tessera(dir, args);
    assert!(
        !o.status.success(),
        "tessera {args:?} succeeded: {}",
        said(&o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The DER contents of the `label` sections of PEM `text`.
fn pem_ders(text: &str, label: &str) -> Vec<Vec<u8>> {
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(&begin) {
        let body = &rest[at + begin.len()..];
        let stop = body.find(&end).expect("an end line");
        let (mut acc, mut bits, mut der) = (0u32, 0u32, Vec::new());
        for c in body[..stop]
            .bytes()
            .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => panic!("not base64: {c}"),
            };
            acc = (acc << 6 | u32::from(v)) & 0xff_ffff;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                der.push((acc >> bits) as u8);
            }
        }
        out.push(der);
        rest = &body[stop..];
    }
    out
}

/// The revocation lists of `dir/ca.crl`, checked against `dir/ca.crt` as processes check
/// them.
fn lists(dir: &Path) -> Vec<Crl> {
    let cas = std::fs::read_to_string(dir.join("ca.crt")).expect("ca.crt");
    let cas: Vec<_> = pem_ders(&cas, "CERTIFICATE")
        .into_iter()
        .map(Into::into)
        .collect();
    let pem = std::fs::read(dir.join(CRL_FILE)).expect("ca.crl");
    crl::parse(&pem, &cas).expect("a list of the CA")
}

/// The serial of `dir/STEM.crt`, in hex, as `cert list` shows it.
fn serial(dir: &Path, stem: &str) -> String {
    let pem = std::fs::read(issue::pair_paths(dir, stem).0).expect("the certificate");
    issue::describe(&pem).expect("a certificate").serial
}

/// `cert list --output json`: each row's serial and whether it is revoked.
fn listed(dir: &Path) -> Vec<(Option<String>, String, bool)> {
    let out = ok(dir, &["--output", "json", "cert", "list"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["file"].as_str().map(str::to_string),
                r["serial"].as_str().expect("a serial").to_string(),
                r["revoked"].as_bool().expect("revoked"),
            )
        })
        .collect()
}

fn hex(serial: &str) -> Vec<u8> {
    tessera_proto::hex::decode(serial).expect("hex")
}

/// A directory with a CA, client alice (admin) and node 3.
fn cluster_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path();
    ok(dir, &["cert", "init", "--days", "2"]);
    ok(
        dir,
        &["cert", "issue", "client", "alice", "--role", "admin"],
    );
    ok(dir, &["cert", "issue", "node", "3"]);
    d
}

#[test]
fn revoking_by_stem_and_by_serial_adds_both_to_one_list_numbered_up() {
    let d = cluster_dir();
    let dir = d.path();
    let (alice, node) = (serial(dir, "client-alice"), serial(dir, "node-3"));
    assert!(!dir.join(CRL_FILE).exists());

    let out = ok(dir, &["cert", "revoke", "client-alice", "--offline"]);
    assert!(
        out.contains("client alice (admin)") && out.contains(&alice),
        "{out}"
    );
    assert!(out.contains("not published"), "{out}");
    let out = ok(dir, &["cert", "revoke", &node, "--offline"]);
    assert!(out.contains("node 3"), "{out}");

    let l = lists(dir);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].number, 2);
    let revoked: Vec<Vec<u8>> = l[0].revoked.iter().map(|r| r.serial.clone()).collect();
    assert_eq!(revoked, [hex(&alice), hex(&node)]);

    let rows = listed(dir);
    let row = |file: &str| {
        rows.iter()
            .find(|r| r.0.as_deref() == Some(file))
            .unwrap_or_else(|| panic!("{file} listed: {rows:?}"))
    };
    assert_eq!(
        row("client-alice.crt"),
        &(Some("client-alice.crt".into()), alice, true)
    );
    assert_eq!(row("node-3.crt"), &(Some("node-3.crt".into()), node, true));
    assert!(!row("ca.crt").2, "the CA is not revoked");
    let table = ok(dir, &["cert", "list"]);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("REVOKED")),
        "{table}"
    );

    // A process loading its certificates takes the list (a running one polls it).
    let s = Security::load(dir, "node-3").expect("a revoked certificate still loads");
    assert!(s.is_secure());
}

#[test]
fn revoking_again_changes_nothing_and_succeeds() {
    let d = cluster_dir();
    let dir = d.path();
    ok(dir, &["cert", "revoke", "client-alice.crt", "--offline"]);
    let before = std::fs::read(dir.join(CRL_FILE)).expect("ca.crl");
    let alice = serial(dir, "client-alice");
    for again in ["client-alice", alice.as_str()] {
        let out = ok(dir, &["cert", "revoke", again, "--offline"]);
        assert!(out.contains("already revoked"), "{out}");
        assert_eq!(std::fs::read(dir.join(CRL_FILE)).expect("ca.crl"), before);
    }
    assert_eq!(lists(dir)[0].number, 1);
}

#[test]
fn a_ca_is_never_revoked() {
    let d = cluster_dir();
    let dir = d.path();
    let ca = serial(dir, "ca");
    for target in ["ca", "ca.crt", ca.as_str()] {
        let e = refused(dir, &["cert", "revoke", target, "--offline"]);
        assert!(e.contains("CA"), "{target}: {e}");
    }
    assert!(!dir.join(CRL_FILE).exists(), "nothing written");
    let e = refused(dir, &["cert", "revoke", "client-nobody", "--offline"]);
    assert!(
        e.contains("client-nobody.crt") && e.contains("not a serial"),
        "{e}"
    );
}

#[test]
fn a_list_of_another_ca_or_a_damaged_one_is_refused_and_left_alone() {
    let other = cluster_dir();
    ok(other.path(), &["cert", "revoke", "node-3", "--offline"]);
    let foreign = std::fs::read(other.path().join(CRL_FILE)).expect("their ca.crl");

    let d = cluster_dir();
    let dir = d.path();
    let path = dir.join(CRL_FILE);
    for bad in [foreign, b"not a list\n".to_vec()] {
        std::fs::write(&path, &bad).expect("ca.crl");
        let e = refused(dir, &["cert", "revoke", "client-alice", "--offline"]);
        assert!(e.contains("damaged or not this cluster's"), "{e}");
        assert_eq!(std::fs::read(&path).expect("ca.crl"), bad, "left as it was");
        refused(dir, &["cert", "list"]);
    }
}

#[test]
fn a_key_of_another_ca_signs_nothing() {
    let other = cluster_dir();
    let d = cluster_dir();
    let dir = d.path();
    let theirs = other.path().join("ca.key");
    let theirs = theirs.to_str().expect("utf8");
    let e = refused(
        dir,
        &[
            "cert",
            "revoke",
            "client-alice",
            "--offline",
            "--ca-key",
            theirs,
        ],
    );
    assert!(e.contains("is not the key of the CA"), "{e}");
    assert!(!dir.join(CRL_FILE).exists());
    let before = std::fs::read(dir.join("client-alice.crt")).expect("crt");
    let e = refused(dir, &["cert", "renew", "client-alice", "--ca-key", theirs]);
    assert!(e.contains("is not the key of the CA"), "{e}");
    assert_eq!(
        std::fs::read(dir.join("client-alice.crt")).expect("crt"),
        before
    );
}

#[test]
fn renewing_keeps_the_identity_and_replaces_key_and_certificate() {
    let d = cluster_dir();
    let dir = d.path();
    ok(
        dir,
        &[
            "cert", "issue", "client", "bob", "--role", "user", "--volume", "db1", "--volume",
            "db2",
        ],
    );
    let (crt, key) = issue::pair_paths(dir, "client-bob");
    let old_key = std::fs::read(&key).expect("key");
    let old = serial(dir, "client-bob");

    let out = ok(dir, &["cert", "renew", "client-bob", "--days", "30"]);
    let new = serial(dir, "client-bob");
    assert_ne!(new, old);
    assert!(out.contains(&old) && out.contains(&new), "{out}");
    assert!(out.contains(&format!("tessera cert revoke {old}")), "{out}");
    assert_ne!(std::fs::read(&key).expect("key"), old_key, "a new key");

    let pem = std::fs::read_to_string(&crt).expect("crt");
    let der = pem_ders(&pem, "CERTIFICATE").remove(0);
    let bob = Identity::Client {
        name: "bob".into(),
        role: Role::Volumes(vec!["db1".into(), "db2".into()]),
    };
    assert_eq!(Identity::from_der(&der), Some(bob.clone()));
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let s = Security::load(dir, "client-bob").expect("the renewed pair loads");
    assert_eq!(s.identity(), Some(&bob));
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The old certificate can then be revoked by the serial renew printed; the new stays.
    ok(dir, &["cert", "revoke", &old, "--offline"]);
    let rows = listed(dir);
    assert!(rows.contains(&(None, old, true)), "{rows:?}");
    assert!(
        rows.contains(&(Some("client-bob.crt".into()), new, false)),
        "{rows:?}"
    );
}

#[test]
fn publishing_without_a_reachable_manager_says_the_file_was_written() {
    let d = cluster_dir();
    let dir = d.path();
    ok(
        dir,
        &["cert", "issue", "client", "admin", "--role", "admin"],
    );
    // Port 1 on loopback: refused at once, retried for the managers' patience.
    let e = refused(
        dir,
        &["--manager", "127.0.0.1:1", "cert", "revoke", "node-3"],
    );
    assert!(
        e.contains("was written") && e.contains("tessera cert publish"),
        "{e}"
    );
    assert_eq!(lists(dir)[0].number, 1, "written before publishing");
}
