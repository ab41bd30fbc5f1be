//! Tier-2 test harness: a real cluster of `tessera` processes on loopback, each with its own
//! data directory, killed with SIGKILL and restarted as an operator would.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_proto::control::{ClusterStatus, ManagerReply, ManagerRequest};

pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A port that is free now, from below the kernel's ephemeral range (32768 and up), so the
/// many outgoing connections of a running test cannot take it before our process binds it.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000")
}

/// The first of `n` consecutive free loopback ports (`tessera dev --base-port` takes one per
/// storage node).
pub fn free_port_run(n: u16) -> u16 {
    loop {
        let b = free_port();
        if (1..n).all(|i| TcpListener::bind(("127.0.0.1", b + i)).is_ok()) {
            return b;
        }
    }
}

pub struct NodeProc {
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub addr: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// The process's open-file limit (soft and hard), if lowered.
    pub nofile: Option<u64>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub manager_addr: String,
    pub manager: Option<Child>,
    pub nodes: Vec<NodeProc>,
    /// Given to the storage nodes added from now on (see [`NodeProc::nofile`]).
    pub nofile: Option<u64>,
}

pub struct Opts {
    pub nodes: usize,
    pub groups_per_node: u32,
    /// Extra lines for every storage.toml.
    pub storage_extra: String,
    /// The storage processes' open-file limit, soft and hard (unchanged if `None`).
    pub nofile: Option<u64>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            nodes: 3,
            groups_per_node: 4,
            storage_extra: String::new(),
            nofile: None,
        }
    }
}

/// Starts `tessera args`, appending its output to `log` (a restart keeps the earlier lines).
fn spawn(args: &[&str], log: &Path) -> Child {
    spawn_limited(args, log, None)
}

/// [`spawn`] with the open-file limit (soft and hard) set to `nofile` if given.
fn spawn_limited(args: &[&str], log: &Path, nofile: Option<u64>) -> Child {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err = out.try_clone().expect("log file");
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some(n) = nofile {
        let limit = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: runs in the child between fork and exec, calling only setrlimit (async-
        // signal-safe) on a struct copied into the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn().expect("spawn tessera")
}

impl Cluster {
    pub fn start(opts: Opts) -> Cluster {
        Cluster::start_with_manager(opts, "")
    }

    pub fn add_node(&mut self, i: usize, extra: &str) {
        let addr = format!("127.0.0.1:{}", free_port());
        let data_dir = self.dir.path().join(format!("node{}", i + 1));
        let config = self.dir.path().join(format!("storage{}.toml", i + 1));
        std::fs::write(
            &config,
            format!(
                "rack = \"rack{}\"\ndata_dir = \"{}\"\nlisten = \"{addr}\"\nmanagers = [\"{}\"]\nheartbeat_ms = 200\n{extra}\n",
                i + 1,
                data_dir.display(),
                self.manager_addr
            ),
        )
        .expect("write storage.toml");
        let log = self.dir.path().join(format!("node{}.log", i + 1));
        let mut n = NodeProc {
            config,
            data_dir,
            addr,
            child: None,
            log,
            nofile: self.nofile,
        };
        n.child = Some(spawn_limited(
            &["storage", "--config", n.config.to_str().expect("utf8")],
            &n.log,
            n.nofile,
        ));
        self.nodes.push(n);
    }

    /// SIGKILL: no shutdown code runs, exactly like a power cut of the process.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kill_manager(&mut self) {
        if let Some(mut m) = self.manager.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    pub fn restart_manager(&mut self) {
        let log = self.dir.path().join("manager.log");
        let cfg = self.dir.path().join("manager.toml");
        self.manager = Some(spawn(
            &["manager", "--config", cfg.to_str().expect("utf8")],
            &log,
        ));
    }

    pub fn restart_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.child = Some(spawn_limited(
            &["storage", "--config", n.config.to_str().expect("utf8")],
            &n.log,
            n.nofile,
        ));
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--manager")
            .arg(&self.manager_addr)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tessera cli")
    }

    /// Runs a CLI command that must succeed.
    pub fn cli_ok(&self, args: &[&str]) -> std::process::Output {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `volume create NAME --size SIZE --chunk-size CHUNK`, which must succeed.
    pub fn create_volume(&self, name: &str, size: &str, chunk_size: &str) {
        self.cli_ok(&[
            "volume",
            "create",
            name,
            "--size",
            size,
            "--chunk-size",
            chunk_size,
        ]);
    }

    pub async fn status(&self) -> Option<ClusterStatus> {
        match tessera_net::call::<_, ManagerReply>(
            &self.manager_addr,
            &ManagerRequest::ClusterStatus,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(ManagerReply::Status(s)) => Some(s),
            _ => None,
        }
    }

    /// Waits until `nodes` nodes are registered and every group has a leader that all of
    /// its replicas agree on.
    pub async fn wait_ready(&self, nodes: usize) -> ClusterStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.status().await {
                let ready = s.nodes.len() >= nodes
                    && !s.groups.is_empty()
                    && s.groups
                        .iter()
                        .all(|g| g.leader.is_some() && g.replicas.len() == 3);
                if ready {
                    return s;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "cluster not ready in 60s: {:?}\n{}",
                    self.status().await,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn client(&self) -> tessera_client::Client {
        tessera_client::Client::connect(vec![self.manager_addr.clone()])
            .await
            .expect("client connects")
    }

    /// The tail of every process log, for failure messages.
    pub fn logs(&self) -> String {
        self.logs_in(self.dir.path())
    }

    fn logs_in(&self, dir: &Path) -> String {
        let mut out = String::new();
        let mut files = vec![dir.join("manager.log")];
        files.extend((1..=self.nodes.len()).map(|i| dir.join(format!("node{i}.log"))));
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("==== {}\n", f.display()));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        if let Some(mut m) = self.manager.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
        if std::thread::panicking() {
            // Keep the logs and data of a failed test for a post-mortem.
            let path =
                std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
            eprintln!(
                "cluster files kept in {}\n{}",
                path.display(),
                self.logs_in(&path)
            );
        }
    }
}

// ---- recovery, rebalancing and draining (tests/recovery.rs) ----

/// Manager settings for recovery tests: a node is suspect after 1 s, down after 3 s, and
/// the reconciler runs every 500 ms.
pub const FAST_RECOVERY: &str =
    "suspect_after_ms = 1000\ndown_after_ms = 3000\nreconcile_ms = 500\n";

impl Cluster {
    /// Like [`Cluster::start`], with `manager_extra` appended to `manager.toml`.
    pub fn start_with_manager(opts: Opts, manager_extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let manager_addr = format!("127.0.0.1:{}", free_port());
        let mcfg = dir.path().join("manager.toml");
        std::fs::write(
            &mcfg,
            format!(
                "listen = \"{manager_addr}\"\ndata_dir = \"{}\"\ngroups_per_node = {}\n{manager_extra}",
                dir.path().join("manager").display(),
                opts.groups_per_node
            ),
        )
        .expect("write manager.toml");
        let manager = spawn(
            &["manager", "--config", mcfg.to_str().expect("utf8")],
            &dir.path().join("manager.log"),
        );
        let mut c = Cluster {
            manager_addr,
            manager: Some(manager),
            nodes: Vec::new(),
            dir,
            nofile: opts.nofile,
        };
        for i in 0..opts.nodes {
            c.add_node(i, &opts.storage_extra);
        }
        c
    }

    /// The position in `nodes` of the node the manager calls `node_id` (matched by address).
    pub fn node_index(&self, status: &ClusterStatus, node_id: u64) -> usize {
        let addr = &status
            .nodes
            .iter()
            .find(|n| n.node_id == node_id)
            .unwrap_or_else(|| panic!("node {node_id} is not registered: {status:?}"))
            .addr;
        self.nodes
            .iter()
            .position(|n| &n.addr == addr)
            .unwrap_or_else(|| panic!("node {node_id} at {addr} is not the harness's"))
    }

    /// The manager's id of harness node `i` (matched by address).
    pub fn node_id(&self, status: &ClusterStatus, i: usize) -> u64 {
        status
            .nodes
            .iter()
            .find(|n| n.addr == self.nodes[i].addr)
            .unwrap_or_else(|| panic!("node {i} is not registered: {status:?}"))
            .node_id
    }

    /// Polls the cluster status until `done` holds, or panics after `timeout` with the last
    /// status and the logs.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&ClusterStatus) -> bool,
    ) -> ClusterStatus {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(s) = self.status().await {
                if done(&s) {
                    return s;
                }
                last = Some(s);
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not reached in {timeout:?}; last status: {last:#?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Every group has `replicas` replicas on as many distinct racks, all on up nodes, a
/// leader, and no membership change in progress.
pub fn fully_replicated(s: &ClusterStatus, replicas: usize) -> bool {
    !s.groups.is_empty()
        && s.groups.iter().all(|g| {
            let racks: std::collections::BTreeSet<&str> =
                g.replicas.iter().map(|r| r.rack.as_str()).collect();
            g.replicas.len() == replicas
                && racks.len() == replicas
                && g.replicas.iter().all(|r| r.node_state == "up")
                && g.leader.is_some()
                && g.moving_to.is_empty()
                && !g.degraded
        })
}

// ---- Highly available managers: three `tessera manager` processes in one Raft group ----

pub struct ManagerProc {
    pub id: u64,
    pub addr: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

/// A cluster whose control plane is several managers; every storage node, the CLI and the
/// clients are given all their addresses.
pub struct HaCluster {
    pub dir: tempfile::TempDir,
    pub managers: Vec<ManagerProc>,
    pub nodes: Vec<NodeProc>,
}

impl HaCluster {
    pub fn start(managers: usize, nodes: usize, groups_per_node: u32) -> HaCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<String> = (0..managers)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = {}, addr = \"{a}\" }}", i + 1))
            .collect();
        let mut c = HaCluster {
            dir,
            managers: Vec::new(),
            nodes: Vec::new(),
        };
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let config = c.dir.path().join(format!("manager{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    "listen = \"{addr}\"\ndata_dir = \"{}\"\ngroups_per_node = {groups_per_node}\nid = {id}\npeers = [{}]\n",
                    c.dir.path().join(format!("manager{id}")).display(),
                    peers.join(", ")
                ),
            )
            .expect("write manager.toml");
            let log = c.dir.path().join(format!("manager{id}.log"));
            let child = spawn(
                &["manager", "--config", config.to_str().expect("utf8")],
                &log,
            );
            c.managers.push(ManagerProc {
                id,
                addr: addr.clone(),
                config,
                log,
                child: Some(child),
            });
        }
        c.start_nodes(nodes);
        c
    }

    /// One manager founded alone (no `id`, no `peers`: as `tessera dev` or a one-manager
    /// deployment runs it), and `joining` more configured with `join = true` but not
    /// started (start them with [`HaCluster::restart_manager`]). Storage nodes are given
    /// every manager's address.
    pub fn start_single(joining: usize, nodes: usize, groups_per_node: u32) -> HaCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<String> = (0..=joining)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut c = HaCluster {
            dir,
            managers: Vec::new(),
            nodes: Vec::new(),
        };
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let config = c.dir.path().join(format!("manager{id}.toml"));
            let data_dir = c.dir.path().join(format!("manager{id}"));
            let mut text = format!(
                "listen = \"{addr}\"\ndata_dir = \"{}\"\ngroups_per_node = {groups_per_node}\n",
                data_dir.display()
            );
            if id > 1 {
                text.push_str(&format!(
                    "id = {id}\njoin = true\npeers = [{{ id = 1, addr = \"{}\" }}, {{ id = {id}, addr = \"{addr}\" }}]\n",
                    addrs[0]
                ));
            }
            std::fs::write(&config, text).expect("write manager.toml");
            c.managers.push(ManagerProc {
                id,
                addr: addr.clone(),
                config,
                log: c.dir.path().join(format!("manager{id}.log")),
                child: None,
            });
        }
        c.restart_manager(0);
        c.start_nodes(nodes);
        c
    }

    fn start_nodes(&mut self, nodes: usize) {
        let c = self;
        let list = c
            .manager_addrs()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for i in 0..nodes {
            let addr = format!("127.0.0.1:{}", free_port());
            let data_dir = c.dir.path().join(format!("node{}", i + 1));
            let config = c.dir.path().join(format!("storage{}.toml", i + 1));
            std::fs::write(
                &config,
                format!(
                    "rack = \"rack{}\"\ndata_dir = \"{}\"\nlisten = \"{addr}\"\nmanagers = [{list}]\nheartbeat_ms = 200\n",
                    i + 1,
                    data_dir.display(),
                ),
            )
            .expect("write storage.toml");
            let log = c.dir.path().join(format!("node{}.log", i + 1));
            let child = spawn(
                &["storage", "--config", config.to_str().expect("utf8")],
                &log,
            );
            c.nodes.push(NodeProc {
                config,
                data_dir,
                addr,
                child: Some(child),
                log,
                nofile: None,
            });
        }
    }

    pub fn manager_addrs(&self) -> Vec<String> {
        self.managers.iter().map(|m| m.addr.clone()).collect()
    }

    /// SIGKILL of manager `i` (a position in `managers`).
    pub fn kill_manager(&mut self, i: usize) {
        if let Some(mut m) = self.managers[i].child.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    pub fn restart_manager(&mut self, i: usize) {
        let m = &mut self.managers[i];
        m.child = Some(spawn(
            &["manager", "--config", m.config.to_str().expect("utf8")],
            &m.log,
        ));
    }

    /// The running manager that answers requests itself (followers redirect), if any.
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.managers.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let res = tessera_net::call::<_, ManagerReply>(
                &m.addr,
                &ManagerRequest::ClusterStatus,
                Duration::from_secs(2),
            )
            .await;
            if res.is_ok() {
                return Some(i);
            }
        }
        None
    }

    pub async fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(i) = self.leader().await {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no manager leader in 20s\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cluster status from whichever manager leads.
    pub async fn status(&self) -> Option<ClusterStatus> {
        match tessera_net::call_managers::<_, ManagerReply>(
            &self.manager_addrs(),
            &ManagerRequest::ClusterStatus,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(ManagerReply::Status(s)) => Some(s),
            _ => None,
        }
    }

    /// Waits until `nodes` nodes are registered and every group has a leader.
    pub async fn wait_ready(&self, nodes: usize) -> ClusterStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.status().await
                && s.nodes.len() >= nodes
                && !s.groups.is_empty()
                && s.groups
                    .iter()
                    .all(|g| g.leader.is_some() && g.replicas.len() == 3)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ready in 60s\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The CLI with `--manager a,b,c`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--manager")
            .arg(self.manager_addrs().join(","))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tessera cli")
    }

    pub fn cli_ok(&self, args: &[&str]) -> std::process::Output {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        out
    }

    pub fn create_volume(&self, name: &str, size: &str, chunk_size: &str) {
        self.cli_ok(&[
            "volume",
            "create",
            name,
            "--size",
            size,
            "--chunk-size",
            chunk_size,
        ]);
    }

    /// Volume names, sorted, as `volume list` prints them.
    pub fn volume_names(&self) -> Vec<String> {
        let out = self.cli_ok(&["--output", "json", "volume", "list"]);
        let vols: Vec<tessera_proto::control::VolumeInfo> =
            serde_json::from_slice(&out.stdout).expect("volume list JSON");
        let mut names: Vec<String> = vols.into_iter().map(|v| v.name).collect();
        names.sort();
        names
    }

    pub async fn client(&self) -> tessera_client::Client {
        tessera_client::Client::connect(self.manager_addrs())
            .await
            .expect("client connects")
    }

    /// The tail of every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let files = self
            .managers
            .iter()
            .map(|m| m.log.clone())
            .chain(self.nodes.iter().map(|n| n.log.clone()));
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("==== {}\n", f.display()));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for i in 0..self.managers.len() {
            self.kill_manager(i);
        }
        if std::thread::panicking() {
            let path =
                std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
            eprintln!("cluster files kept in {}", path.display());
        }
    }
}

// ---- Process control for nemesis tests (tests/nemesis.rs) ----

/// Sends `signal` (a name for kill(1): `STOP`, `CONT`) to a child process. SIGSTOP freezes
/// it exactly where it is: sockets stay open, nothing answers, as in a long GC pause or a
/// hung disk.
pub fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .stdin(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{signal} {} failed", child.id());
}

impl HaCluster {
    /// SIGKILL of storage node `i` (a position in `nodes`).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.child = Some(spawn_limited(
            &["storage", "--config", n.config.to_str().expect("utf8")],
            &n.log,
            n.nofile,
        ));
    }

    /// SIGSTOP of storage node `i`; [`HaCluster::resume_node`] undoes it.
    pub fn pause_node(&self, i: usize) {
        if let Some(c) = &self.nodes[i].child {
            signal(c, "STOP");
        }
    }

    pub fn resume_node(&self, i: usize) {
        if let Some(c) = &self.nodes[i].child {
            signal(c, "CONT");
        }
    }

    /// The position in `nodes` of the node the manager calls `node_id` (matched by address).
    pub fn node_index(&self, status: &ClusterStatus, node_id: u64) -> Option<usize> {
        let addr = &status.nodes.iter().find(|n| n.node_id == node_id)?.addr;
        self.nodes.iter().position(|n| &n.addr == addr)
    }
}

/// A `tessera nbd` gateway process given every manager, killed on drop.
pub struct GatewayProc {
    pub port: u16,
    pub log: PathBuf,
    pub child: Option<Child>,
    managers: String,
}

impl GatewayProc {
    /// Starts a gateway on a free port and waits until it greets NBD clients.
    pub fn start(managers: &[String], log: PathBuf) -> GatewayProc {
        let mut g = GatewayProc {
            port: free_port(),
            log,
            child: None,
            managers: managers.join(","),
        };
        g.spawn();
        g
    }

    /// Starts the process on `self.port`, or on a new port if that one cannot be had
    /// (`free_port()` is racy), and waits for the NBD greeting.
    pub fn spawn(&mut self) {
        use std::io::Read;
        for _ in 0..5 {
            let listen = format!("127.0.0.1:{}", self.port);
            let mut child = spawn(
                &["--manager", &self.managers, "nbd", "--listen", &listen],
                &self.log,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("nbd gateway exited at start ({status}); retrying on a new port");
                    self.port = free_port();
                    break;
                }
                if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut g = [0u8; 18];
                    if s.read_exact(&mut g).is_ok()
                        && g[..8] == 0x4e42_444d_4147_4943u64.to_be_bytes()
                        && matches!(child.try_wait(), Ok(None))
                    {
                        // Client flags, then NBD_OPT_ABORT: a polite goodbye.
                        use std::io::Write;
                        let mut bye = 3u32.to_be_bytes().to_vec();
                        bye.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
                        bye.extend_from_slice(&2u32.to_be_bytes());
                        bye.extend_from_slice(&0u32.to_be_bytes());
                        let _ = s.write_all(&bye);
                        self.child = Some(child);
                        return;
                    }
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nbd gateway not listening in 30s: {}", self.log.display());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("nbd gateway keeps exiting at start: {}", self.log.display());
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One data-plane request straight to one node, bypassing the client's routing.
pub async fn direct(
    addr: &str,
    req: &tessera_proto::data::Request,
) -> Option<tessera_proto::data::Reply> {
    let work = async {
        let s = tessera_net::connect(addr, Duration::from_secs(1))
            .await
            .ok()?;
        let (r, mut w) = s.into_split();
        tessera_net::write_frame(
            &mut w,
            &tessera_proto::frame::Frame::new(req.kind(), 1, req.encode()),
        )
        .await
        .ok()?;
        let f = tessera_net::FrameReader::new(r).next().await.ok()??;
        tessera_proto::data::Reply::decode(&f.body).ok()
    };
    tokio::time::timeout(Duration::from_secs(3), work)
        .await
        .ok()
        .flatten()
}
