//! `tessera cert`: a cluster's certificate authority and the certificates of its
//! processes and clients, in a certificates directory (`--certs-dir`).
//!
//! `init` makes `ca.crt` and `ca.key`; `issue` signs `node-ID`, `manager-ID` or
//! `client-NAME` (`.crt` and `.key`) with it; `list` shows what the directory holds and
//! what `ca.crl` revokes; `qemu` copies a client's files out for qemu and libnbd (NBD over
//! TLS); `revoke` and `publish` keep the revocation list ([`revoke`]); `renew` replaces a
//! certificate and its key in place ([`renew`]). Only `renew` and `revoke` replace files,
//! each as a whole (`issue::replace`): running processes re-read the directory. The CA
//! key can live elsewhere (`--ca-key`): only `issue`, `renew` and `revoke` need it.
//! Reading certificate files (PEM, X.509) is tessera-net's `tls::describe`, never this
//! binary's: the CLI reads a file as a process loading it does.
//!
//! - `dir`: the directory's files (CA bundle, which CA a key is, `ca.crl`).

mod dir;
mod renew;
mod revoke;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use tessera_net::tls::issue;
use tessera_net::{Identity, Role};
use tessera_proto::control::MAX_NODE_ID;

use crate::Output;
use crate::access::Access;

#[derive(Subcommand)]
pub enum CertCmd {
    /// Create the cluster's certificate authority: `ca.crt` (give it to every process) and
    /// `ca.key` (keep it safe: whoever holds it can join the cluster as anyone).
    Init {
        /// Where to write the CA's key (default: `ca.key` in the certificates directory).
        #[arg(long)]
        ca_key: Option<PathBuf>,
        /// How long the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Sign a certificate for a storage node, a manager or a client.
    Issue {
        #[command(subcommand)]
        who: IssueWho,
        /// The CA's key (default: `ca.key` in the certificates directory).
        #[arg(long, global = true)]
        ca_key: Option<PathBuf>,
        /// How long the certificate is valid.
        #[arg(long, global = true, default_value_t = 365)]
        days: u32,
        /// A host name or IP address clients other than Tessera's check the process
        /// against (qemu, for the NBD gateway's TLS); repeatable.
        #[arg(long = "host", global = true)]
        hosts: Vec<String>,
    },
    /// The certificates in the directory: who each names, its serial, whether `ca.crl`
    /// revokes it, when it expires; and revoked serials no file has.
    List,
    /// Revoke a certificate: add it to the CA's revocation list `ca.crl` and publish the
    /// list to the managers, which put it in force on every process within seconds (its
    /// open connections end, new ones are refused).
    Revoke {
        /// A certificate of the directory (`client-alice`, `node-3`, `node-3.crt`), or a
        /// serial in hex as `tessera cert list` shows it.
        target: String,
        /// The CA's key (default: `ca.key` in the certificates directory).
        #[arg(long)]
        ca_key: Option<PathBuf>,
        /// Only write `ca.crl`; `tessera cert publish` sends it later (or copy it to
        /// every process's certificates directory).
        #[arg(long)]
        offline: bool,
    },
    /// Send `ca.crl` to the managers again (after `revoke --offline`, or when they could
    /// not be reached).
    Publish,
    /// A new key and certificate for the identity STEM names (role, volumes and host names
    /// kept), replacing `STEM.key` and `STEM.crt`: the process using them takes them
    /// within seconds, without a restart.
    Renew {
        /// The certificate's file stem: `node-3`, `manager-1`, `client-alice`.
        stem: String,
        /// The CA's key (default: `ca.key` in the certificates directory).
        #[arg(long)]
        ca_key: Option<PathBuf>,
        /// How long the new certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// The host names or IP addresses it serves under, instead of the old
        /// certificate's; repeatable.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Copy client NAME's certificate and key, with the CA, into OUT in the layout qemu's
    /// `tls-creds-x509` (`dir=OUT,endpoint=client`) and libnbd's `tls-certificates=OUT`
    /// read: `ca-cert.pem`, `client-cert.pem`, `client-key.pem`, for NBD over TLS.
    Qemu { name: String, out: PathBuf },
}

#[derive(Subcommand)]
pub enum IssueWho {
    /// Storage node ID: its data port, its Raft traffic, its registration.
    Node { id: u64 },
    /// Manager ID (its id in manager.toml): the control plane, and the only identity
    /// storage nodes take admin requests from.
    Manager { id: u64 },
    /// A client (the CLI, an NBD gateway, an application) called NAME.
    Client {
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A volume a `user` may open, read and write; repeatable.
        #[arg(long = "volume")]
        volumes: Vec<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything.
    Admin,
    /// Open, read and write the volumes named with --volume.
    User,
    /// Read anything, change nothing.
    ReadOnly,
}

pub async fn cert(access: Access, output: Output, cmd: CertCmd) -> Result<()> {
    let Some(dir) = access.certs_dir.clone() else {
        bail!("which certificates directory? pass --certs-dir DIR (or set TESSERA_CERTS_DIR)");
    };
    match cmd {
        CertCmd::Init { ca_key, days } => {
            let key = ca_key.unwrap_or_else(|| dir.join("ca.key"));
            init(&dir, &key, days)?;
            println!(
                "CA written: {} (key {})",
                dir.join("ca.crt").display(),
                key.display()
            );
            Ok(())
        }
        CertCmd::Issue {
            who,
            ca_key,
            days,
            hosts,
        } => {
            let who = identity(who)?;
            let key = ca_key.unwrap_or_else(|| dir.join("ca.key"));
            let stem = issue_into(&dir, &key, &who, &hosts, days)?;
            println!("{who}: {}", issue::pair_paths(&dir, &stem).0.display());
            Ok(())
        }
        CertCmd::List => list(&dir, output),
        CertCmd::Revoke {
            target,
            ca_key,
            offline,
        } => {
            let key = ca_key.unwrap_or_else(|| dir.join("ca.key"));
            revoke::revoke(&access, &dir, &target, &key, offline).await
        }
        CertCmd::Publish => revoke::publish(&access, &dir).await,
        CertCmd::Renew {
            stem,
            ca_key,
            days,
            hosts,
        } => {
            let key = ca_key.unwrap_or_else(|| dir.join("ca.key"));
            let r = renew::renew(&dir, &stem, &key, days, &hosts)?;
            println!("{}: renewed {}", r.who, r.crt.display());
            println!("  old serial {}", r.old_serial);
            println!("  new serial {}", r.new_serial);
            println!(
                "Once nothing uses the old certificate: tessera cert revoke {}",
                r.old_serial
            );
            Ok(())
        }
        CertCmd::Qemu { name, out } => {
            qemu_dir(&dir, &format!("client-{name}"), &out)?;
            println!(
                "{}: ca-cert.pem, client-cert.pem, client-key.pem",
                out.display()
            );
            Ok(())
        }
    }
}

/// Copies certificate `stem` of `dir`, with the CA, into `out` as qemu and libnbd name
/// them (never overwriting a file there).
pub fn qemu_dir(dir: &Path, stem: &str, out: &Path) -> Result<()> {
    let (crt, key) = issue::pair_paths(dir, stem);
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    // All read before any is written: a missing file leaves nothing half made behind.
    let files = [
        (read(dir.join("ca.crt"))?, "ca-cert.pem", 0o644),
        (read(crt)?, "client-cert.pem", 0o644),
        (read(key)?, "client-key.pem", 0o600),
    ];
    for (pem, to, mode) in files {
        issue::write_new(&out.join(to), &pem, mode)?;
    }
    Ok(())
}

fn identity(who: IssueWho) -> Result<Identity> {
    Ok(match who {
        IssueWho::Node { id } if id > MAX_NODE_ID => {
            bail!("node ids go up to {MAX_NODE_ID}")
        }
        IssueWho::Node { id } if id > 0 => Identity::Node(id),
        IssueWho::Manager { id } if id > 0 => Identity::Manager(id),
        IssueWho::Node { .. } | IssueWho::Manager { .. } => bail!("ids start at 1"),
        IssueWho::Client {
            name,
            role,
            volumes,
        } => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bail!("a client name is letters, digits, '-', '_' and '.': {name:?}");
            }
            let role = match (role, volumes.is_empty()) {
                (RoleArg::Admin, true) => Role::Admin,
                (RoleArg::ReadOnly, true) => Role::ReadOnly,
                (RoleArg::User, false) => Role::Volumes(volumes),
                (RoleArg::User, true) => bail!("--role user needs at least one --volume"),
                (_, false) => bail!("--volume goes with --role user only"),
            };
            Identity::Client { name, role }
        }
    })
}

/// Makes a CA into `dir/ca.crt` and `ca_key`.
pub fn init(dir: &Path, ca_key: &Path, days: u32) -> Result<()> {
    let ca = issue::new_ca(days)?;
    if dir.join("ca.crt").exists() {
        bail!(
            "{} exists: a directory holds one CA",
            dir.join("ca.crt").display()
        );
    }
    issue::write_new(ca_key, &ca.key_pem, 0o600)?;
    issue::write_new(&dir.join("ca.crt"), &ca.cert_pem, 0o644)?;
    Ok(())
}

/// Signs `who` with the CA of `dir` (key `ca_key`) into `dir`; its file stem.
pub fn issue_into(
    dir: &Path,
    ca_key: &Path,
    who: &Identity,
    hosts: &[String],
    days: u32,
) -> Result<String> {
    let cas = dir::cas(dir)?;
    let key = dir::read(ca_key)?;
    let signer = dir::signer(&cas, &key, ca_key)?;
    let issued = issue::issue(&signer.pem, &key, who, hosts, days)?;
    let stem = issue::stem(who);
    issue::write_pair(dir, &stem, &issued)?;
    Ok(stem)
}

/// One row of `tessera cert list`: a certificate file (each CA of `ca.crt` is one), or a
/// serial `ca.crl` revokes that no file has.
struct Row {
    file: Option<String>,
    info: Option<issue::Described>,
    serial: String,
    revoked: bool,
}

fn list(dir: &Path, output: Output) -> Result<()> {
    let names = dir::crt_files(dir)?;
    let has_cas = dir.join(dir::CA_FILE).is_file();
    let cas = if has_cas { dir::cas(dir)? } else { Vec::new() };
    let lists = if has_cas {
        dir::read_crl(dir, &cas)?
    } else {
        Vec::new()
    };
    let mut rows = Vec::new();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for p in names {
        let file = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let certs = if file == dir::CA_FILE && has_cas {
            cas.clone()
        } else {
            vec![dir::cert(&p)?]
        };
        for (i, c) in certs.into_iter().enumerate() {
            let serial = c.info.raw_serial.clone();
            rows.push(Row {
                file: Some(if i == 0 {
                    file.clone()
                } else {
                    format!("{file} ({})", i + 1)
                }),
                serial: c.info.serial.clone(),
                info: Some(c.info),
                revoked: dir::revokes(&lists, &serial),
            });
            seen.push(serial);
        }
    }
    for r in lists.iter().flat_map(|l| &l.crl.revoked) {
        if !seen.iter().any(|s| dir::same_serial(s, &r.serial)) {
            seen.push(r.serial.clone());
            rows.push(Row {
                file: None,
                info: None,
                serial: tessera_proto::hex::encode(&r.serial),
                revoked: true,
            });
        }
    }
    match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "file": r.file,
                        "names": r.info.as_ref().map(|i| &i.names),
                        "serial": r.serial,
                        "revoked": r.revoked,
                        "not_after": r.info.as_ref().map(|i| &i.not_after),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table => {
            println!(
                "{:<28} {:<40} {:<34} {:<8} EXPIRES",
                "FILE", "NAMES", "SERIAL", "REVOKED"
            );
            for r in rows {
                let (names, expires) = match &r.info {
                    Some(i) => (i.names.as_str(), i.not_after.as_str()),
                    None => ("-", "-"),
                };
                println!(
                    "{:<28} {names:<40} {:<34} {:<8} {expires}",
                    r.file.as_deref().unwrap_or("-"),
                    r.serial,
                    if r.revoked { "yes" } else { "no" },
                );
            }
        }
    }
    Ok(())
}
