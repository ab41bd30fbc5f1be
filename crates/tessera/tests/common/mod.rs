//! Tier-2 test harness: a real cluster of `tessera` processes on loopback (or in network
//! namespaces), each with its own data directory, killed with SIGKILL and restarted as an
//! operator would. Every test file includes it with `mod common;`.
//!
//! Map:
//! - `process.rs`: ports, spawning the binary, signals, open-file limits, log tails.
//! - `cluster.rs`: [`Cluster`] (managers, storage nodes) built from [`Opts`]; readiness,
//!   status, the CLI, requests straight to a node.
//! - `nbd.rs`: [`Gateway`], a `tessera nbd` process started from a cluster (plain or TLS).
//! - `metrics.rs`: a process's Prometheus counters, read and awaited.
//! - `tmpfs.rs`: [`TmpfsDisks`], storage nodes on small tmpfs mounts (full-disk tests).
//! - `backup.rs`: object stores for a cluster (a directory, the in-process S3 server), and
//!   what the backup tests ask and check (backups, restores, manifests, checksums).
//! - `scrub.rs`: where a block lives in each replica's files, damage done to them while a
//!   node is stopped, `tessera scrub status|start`, a reader hammering one block.
//!
//! Not every test file uses every helper, hence `dead_code` is allowed here.

#![allow(dead_code, unused_imports)]

pub mod backup;
pub mod cluster;
pub mod metrics;
pub mod nbd;
pub mod process;
pub mod scrub;
pub mod tmpfs;

pub use cluster::{Cluster, FAST_RECOVERY, NodeAt, Opts, direct, fully_replicated};
pub use nbd::Gateway;
pub use process::{BIN, NodeProc, free_port, free_port_run, said, signal, tool};
pub use tmpfs::{TmpfsDisks, free_bytes};
