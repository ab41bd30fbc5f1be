//! `tessera cert`: a cluster's certificate authority and the certificates of its
//! processes and clients, in a certificates directory (`--certs-dir`).
//!
//! `init` makes `ca.crt` and `ca.key`; `issue` signs `node-ID`, `manager-ID` or
//! `client-NAME` (`.crt` and `.key`) with it; `list` shows what the directory holds; `qemu`
//! copies a client's files out for qemu and libnbd (NBD over TLS). Files are never
//! overwritten. The CA key can live elsewhere (`--ca-key`): only `issue` needs it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use tessera_net::tls::issue;
use tessera_net::{Identity, Role};

use crate::Output;

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
    /// The certificates in the directory: who each names, its serial, when it expires.
    List,
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

pub fn cert(certs_dir: Option<PathBuf>, output: Output, cmd: CertCmd) -> Result<()> {
    let Some(dir) = certs_dir else {
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
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let ca_cert = read(&dir.join("ca.crt"))?;
    let key = read(ca_key)?;
    let issued = issue::issue(&ca_cert, &key, who, hosts, days)?;
    let stem = issue::stem(who);
    issue::write_pair(dir, &stem, &issued)?;
    Ok(stem)
}

fn list(dir: &Path, output: Output) -> Result<()> {
    let mut rows = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    names.sort();
    for p in names {
        let pem = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        let info = issue::describe(&pem)
            .with_context(|| format!("reading the certificate {}", p.display()))?;
        let file = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        rows.push((file, info));
    }
    match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|(file, i)| {
                    serde_json::json!({
                        "file": file,
                        "names": i.names,
                        "serial": i.serial,
                        "not_after": i.not_after,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table => {
            println!("{:<28} {:<40} {:<34} EXPIRES", "FILE", "NAMES", "SERIAL");
            for (file, i) in rows {
                println!(
                    "{file:<28} {:<40} {:<34} {}",
                    i.names, i.serial, i.not_after
                );
            }
        }
    }
    Ok(())
}
