//! The `tessera` binary: one executable for every process and the CLI. Wiring only: each
//! subcommand loads its configuration and calls into a library crate.
//!
//! `daemon`: the `manager`, `storage` and `nbd` processes; `dev`: a whole cluster in one
//! process; `cli`: the operator commands (`snapshots`: those of snapshots and clones;
//! `backups`: backups and stores; `restores`: volumes made from backups; `scrub`: the
//! nodes' scrubbing);
//! `exit`: the exit code of each error class;
//! `progress`, `size`: terminal progress lines and human sizes for the CLI.

mod access;
mod backups;
mod cert;
mod cli;
mod daemon;
mod dev;
mod exit;
mod progress;
mod restores;
mod scrub;
mod size;
mod snapshots;
mod usage;

use std::io::IsTerminal;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera distributed block storage",
    after_help = exit::HELP
)]
struct Args {
    /// Manager address(es), comma-separated.
    #[arg(
        long,
        global = true,
        env = "TESSERA_MANAGER",
        default_value = "127.0.0.1:7400"
    )]
    manager: String,
    /// The certificates directory: the cluster CA and this command's certificate (see
    /// `tessera cert`). Default: `./tessera-data/certs` (`tessera dev`'s), then
    /// `~/.tessera/certs`.
    #[arg(long, global = true, env = "TESSERA_CERTS_DIR")]
    certs_dir: Option<std::path::PathBuf>,
    /// Whose client certificate to present: `client-USER.crt` in the certificates
    /// directory.
    #[arg(long, global = true, env = "TESSERA_USER", default_value = access::DEFAULT_USER)]
    user: String,
    /// No TLS and no authentication: dial (or, for a daemon, serve) plain TCP. Only for a
    /// network no one else can reach.
    #[arg(long, global = true, env = "TESSERA_INSECURE")]
    insecure: bool,
    /// Output format of listings.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a manager (control plane).
    Manager {
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Run a storage node.
    Storage {
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Run the NBD gateway, exporting every volume by name.
    Nbd {
        #[arg(long, default_value = "127.0.0.1:10809")]
        listen: String,
        /// Export every volume read-only, without attaching it: serves a volume another
        /// client writes (to copy or inspect it); writes get EPERM.
        #[arg(long)]
        read_only: bool,
        /// Where to serve `GET /metrics` (Prometheus text); off if unset.
        #[arg(long)]
        metrics: Option<String>,
        /// Require TLS of NBD clients (`NBD_OPT_STARTTLS` with x509 certificates, as qemu's
        /// `tls-creds-x509` and libnbd's `nbds://` use it). The gateway serves with its own
        /// certificate, which must name the host clients dial (`tessera cert issue client
        /// NAME --role admin --host HOST`); each client's certificate of the cluster CA
        /// then decides which volumes it sees and opens (`tessera cert qemu` writes one
        /// out for qemu and libnbd).
        #[arg(long)]
        tls: bool,
    },
    /// Run a whole local cluster in one process: a manager, storage nodes (one rack each)
    /// and the NBD gateway, with volume `vol0` created on first start.
    Dev(dev::DevArgs),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(cli::VolumeCmd),
    /// Take, list, inspect and delete snapshots (`VOLUME@SNAPSHOT`).
    #[command(subcommand)]
    Snapshot(snapshots::SnapshotCmd),
    /// Back up snapshots to object stores; list, inspect, delete and copy backups
    /// (restore with `volume create NEW --from-backup ID`).
    #[command(subcommand)]
    Backup(backups::BackupCmd),
    /// The object stores backups go to (configured in manager.toml).
    #[command(subcommand)]
    Store(backups::StoreCmd),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(cli::ClusterCmd),
    /// Manage storage nodes.
    #[command(subcommand)]
    Node(cli::NodeCmd),
    /// The storage nodes' background check of every block of every replica: status,
    /// start and pause.
    #[command(subcommand)]
    Scrub(scrub::ScrubCmd),
    /// The cluster's certificate authority and certificates: init, issue, list.
    #[command(subcommand)]
    Cert(cert::CertCmd),
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log(&args.cmd))),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or the journal gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // A test build reads its fault injection points from `FAILPOINTS` (e.g.
    // `chunk::fdatasync=1*return`); a build that serves data has none.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    // A storage node runs its network tasks and its Raft poller on one thread: handing a
    // request from socket to Raft to socket then wakes no other thread. Everything that
    // blocks on a disk flush has a thread of its own. The NBD gateway likewise keeps a
    // request's hops (NBD socket, client library, storage socket) on one thread.
    let mut builder = match args.cmd {
        Cmd::Storage { .. } | Cmd::Nbd { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(exit::FAILED);
        }
    };
    let managers: Vec<String> = args
        .manager
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let access = access::Access {
        managers,
        certs_dir: args.certs_dir,
        user: args.user,
        insecure: args.insecure,
    };
    let insecure = access.insecure;
    let result = rt.block_on(async move {
        match args.cmd {
            Cmd::Manager { config } => daemon::run_manager(&config, insecure).await,
            Cmd::Storage { config } => daemon::run_storage(&config, insecure).await,
            Cmd::Nbd {
                listen,
                metrics,
                read_only,
                tls,
            } => daemon::run_nbd(access, &listen, metrics, read_only, tls).await,
            Cmd::Dev(d) => dev::run(d, insecure).await,
            Cmd::Volume(v) => cli::volume(access, args.output, v).await,
            Cmd::Snapshot(s) => snapshots::snapshot(access, args.output, s).await,
            Cmd::Backup(b) => backups::backup(access, args.output, b).await,
            Cmd::Store(s) => backups::store(access, args.output, s).await,
            Cmd::Cluster(c) => cli::cluster(access, args.output, c).await,
            Cmd::Node(n) => cli::node(access, args.output, n).await,
            Cmd::Scrub(s) => scrub::scrub(access, args.output, s).await,
            Cmd::Cert(c) => cert::cert(access, args.output, c).await,
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(exit::code(&e));
    }
}

/// Daemons log at info; CLI commands only warn. rustls only errors: it warns of what
/// clients other than Tessera's send in their hello (qemu's IP address as the server
/// name), and a refused handshake is logged by the process with the peer it came from.
fn default_log(cmd: &Cmd) -> &'static str {
    match cmd {
        Cmd::Manager { .. } | Cmd::Storage { .. } | Cmd::Nbd { .. } | Cmd::Dev(_) => {
            "info,rustls=error"
        }
        _ => "warn,rustls=error",
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Args, Cmd};

    #[test]
    fn snapshot_names_are_checked_before_anything_is_asked() {
        let parse = |args: &[&str]| Args::try_parse_from([&["tessera"], args].concat());
        for bad in ["db1", "db1@", "@s", "a@b@c"] {
            let e = parse(&["snapshot", "create", bad]).err().expect("refused");
            assert_eq!(e.exit_code(), crate::exit::USAGE, "{bad}");
            assert!(e.to_string().contains("is not VOLUME@SNAPSHOT"), "{e}");
        }
        assert!(parse(&["snapshot", "create", "db1@s1"]).is_ok());
        assert!(parse(&["snapshot", "list"]).is_ok());
        assert!(parse(&["volume", "clone", "db1@s1", "db2"]).is_ok());
        assert!(parse(&["volume", "clone", "db1", "db2"]).is_err());
        assert!(parse(&["volume", "rollback", "db1@s1"]).is_ok());
        assert!(parse(&["--output", "json", "volume", "flatten", "db2"]).is_ok());
    }

    /// Backup IDs are plain integers, checked before anything is asked; a restored volume
    /// takes its backup's size, so `--size` (or `--chunk-size`) beside `--from-backup` is a
    /// usage error naming both.
    #[test]
    fn backup_commands_are_checked_before_anything_is_asked() {
        let parse = |args: &[&str]| Args::try_parse_from([&["tessera"], args].concat());
        for ok in [
            &["backup", "create", "db1@s1"][..],
            &["backup", "create", "db1@s1", "--store", "s3a", "--no-wait"],
            &["backup", "list"],
            &["backup", "list", "db1"],
            &["backup", "info", "7"],
            &["--output", "json", "backup", "delete", "7"],
            &["backup", "copy", "7", "--to-store", "s3b", "--no-wait"],
            &["store", "list"],
            &["volume", "create", "db2", "--from-backup", "7"],
            &[
                "volume",
                "create",
                "db2",
                "--from-backup",
                "7",
                "--store",
                "s3a",
                "--wait",
            ],
            &["volume", "create", "db2", "--size", "4GiB"],
            &["volume", "prewarm", "db2", "--wait"],
        ] {
            assert!(parse(ok).is_ok(), "{ok:?}");
        }
        for (bad, says) in [
            (&["backup", "create", "db1"][..], "is not VOLUME@SNAPSHOT"),
            (&["backup", "info", "seven"], "invalid backup ID \"seven\""),
            (&["backup", "delete", "0"], "IDs start at 1"),
            (&["backup", "copy", "7"], "--to-store"),
            (
                &["volume", "create", "db2", "--from-backup", "x"],
                "invalid backup ID",
            ),
            (&["volume", "create", "db2"], "--size"),
            (&["volume", "create", "db2", "--wait"], "--size"),
            (&["volume", "create", "db2", "--store", "s3a"], "--size"),
            (
                &["volume", "create", "db2", "--size", "1GiB", "--wait"],
                "--size",
            ),
            (
                &[
                    "volume", "create", "db2", "--size", "1GiB", "--store", "s3a",
                ],
                "--size",
            ),
            (
                &["volume", "create", "db2", "--chunk-size", "1MiB", "--wait"],
                "--chunk-size",
            ),
        ] {
            let e = parse(bad).err().expect("refused");
            assert_eq!(e.exit_code(), crate::exit::USAGE, "{bad:?}");
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
        }
        for extra in ["--size", "--chunk-size"] {
            let e = parse(&[
                "volume",
                "create",
                "db2",
                "--from-backup",
                "7",
                extra,
                "1GiB",
            ])
            .err()
            .expect("refused");
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
            assert_eq!(e.exit_code(), crate::exit::USAGE);
            let msg = e.to_string();
            assert!(
                msg.contains(extra)
                    && msg.contains("--from-backup <ID>")
                    && msg.contains("cannot be used with"),
                "{msg}"
            );
        }
    }

    /// `scrub start|pause` name a node by its id, checked before anything is asked.
    #[test]
    fn scrub_commands_are_checked_before_anything_is_asked() {
        let parse = |args: &[&str]| Args::try_parse_from([&["tessera"], args].concat());
        for ok in [
            &["scrub", "status"][..],
            &["--output", "json", "scrub", "status"],
            &["scrub", "start", "2"],
            &["scrub", "pause", "2", "--output", "json"],
        ] {
            assert!(parse(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            &["scrub", "start"][..],
            &["scrub", "pause", "node2"],
            &["scrub", "stop", "2"],
        ] {
            let e = parse(bad).err().expect("refused");
            assert_eq!(e.exit_code(), crate::exit::USAGE, "{bad:?}");
        }
    }

    #[test]
    fn dev_needs_at_least_three_nodes() {
        let nodes = |n: &str| Args::try_parse_from(["tessera", "dev", "--nodes", n]);
        let err = nodes("2").err().expect("two nodes refused").to_string();
        assert!(err.contains("3..=64"), "{err}");
        assert!(matches!(nodes("5").map(|a| a.cmd), Ok(Cmd::Dev(d)) if d.nodes == 5));
    }
}
