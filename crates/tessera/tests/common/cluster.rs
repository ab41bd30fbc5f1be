//! The one test cluster: N managers (one founded alone, a Raft group founded together, or
//! one plus joiners started later), N storage nodes, each with its own config, data
//! directory and log in one temporary directory; waiting for readiness, cluster status,
//! the CLI, and requests straight to one node.
//!
//! Owns the cluster's files and processes (all killed on drop; the files are kept for a
//! post-mortem when the test panics). Never reaches into a process other than through its
//! public interfaces: the CLI, the control plane, the data plane.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tessera_net::tls::issue;
use tessera_net::{Identity, Role, Security};
use tessera_proto::control::{ClusterStatus, ManagerReply, ManagerRequest};

use super::process::{BIN, ManagerProc, NodeProc, free_port, log_tail, signal};

/// Manager settings for recovery tests: a node is suspect after 1 s, down after 3 s, and
/// the reconciler runs every 500 ms.
pub const FAST_RECOVERY: &str =
    "suspect_after_ms = 1000\ndown_after_ms = 3000\nreconcile_ms = 500\n";

/// Where one storage node listens and what it runs under (see [`Opts::node_at`]).
pub struct NodeAt {
    pub addr: String,
    /// E.g. `ip netns exec NS`; empty for none.
    pub wrapper: Vec<String>,
}

/// What [`Cluster::start`] starts.
pub struct Opts {
    /// Managers founded together as one Raft group; 1 is a manager founded alone (no `id`,
    /// no `peers`: as `tessera dev` or a one-manager deployment runs it).
    pub managers: usize,
    /// Managers configured with `join = true` to join manager 1 (which must be alone), not
    /// started: start them with [`Cluster::restart_manager`].
    pub joining: usize,
    pub nodes: usize,
    pub groups_per_node: u32,
    /// Extra lines for every manager.toml.
    pub manager_extra: String,
    /// Extra lines for every storage.toml.
    pub storage_extra: String,
    /// The storage processes' open-file limit, soft and hard (unchanged if `None`).
    pub nofile: Option<u64>,
    /// The address managers listen on (a free port is added).
    pub manager_host: String,
    /// Where each of the first nodes runs; the others listen on a free loopback port.
    pub node_at: Vec<NodeAt>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            managers: 1,
            joining: 0,
            nodes: 3,
            groups_per_node: 4,
            manager_extra: String::new(),
            storage_extra: String::new(),
            nofile: None,
            manager_host: "127.0.0.1".into(),
            node_at: Vec::new(),
        }
    }
}

/// A running cluster; every storage node, the CLI and the clients are given every
/// manager's address.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub managers: Vec<ManagerProc>,
    pub nodes: Vec<NodeProc>,
    /// Given to the storage nodes added from now on (see [`NodeProc::nofile`]).
    pub nofile: Option<u64>,
    node_at: Vec<NodeAt>,
    /// Gateways started so far, to name their logs.
    pub(super) gateways_started: AtomicUsize,
    /// The certificates directory: the CA (and its key), every process's certificate,
    /// and the `admin` client's the CLI and the tests' clients present.
    pub certs: PathBuf,
}

impl Cluster {
    pub fn start(opts: Opts) -> Cluster {
        assert!(
            opts.joining == 0 || opts.managers == 1,
            "managers join a manager founded alone"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let count = opts.managers + opts.joining;
        let addrs: Vec<String> = (0..count)
            .map(|_| format!("{}:{}", opts.manager_host, free_port()))
            .collect();
        let founders: Vec<String> = addrs[..opts.managers]
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = {}, addr = \"{a}\" }}", i + 1))
            .collect();
        let certs = dir.path().join("certs");
        issue_certs(
            &certs,
            &[Identity::Client {
                name: "admin".into(),
                role: Role::Admin,
            }],
        );
        let mut c = Cluster {
            certs,
            dir,
            managers: Vec::new(),
            nodes: Vec::new(),
            nofile: opts.nofile,
            node_at: opts.node_at,
            gateways_started: AtomicUsize::new(0),
        };
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let config = c.dir.path().join(format!("manager{id}.toml"));
            issue_certs(&c.certs, &[Identity::Manager(id)]);
            let mut text = format!(
                "listen = \"{addr}\"\ndata_dir = \"{}\"\ngroups_per_node = {}\ncerts_dir = \"{}\"\n",
                c.dir.path().join(format!("manager{id}")).display(),
                opts.groups_per_node,
                c.certs.display(),
            );
            if i >= opts.managers {
                text.push_str(&format!(
                    "id = {id}\njoin = true\npeers = [{{ id = 1, addr = \"{}\" }}, {{ id = {id}, addr = \"{addr}\" }}]\n",
                    addrs[0]
                ));
            } else if opts.managers > 1 {
                text.push_str(&format!("id = {id}\npeers = [{}]\n", founders.join(", ")));
            }
            text.push_str(&opts.manager_extra);
            std::fs::write(&config, text).expect("write manager.toml");
            c.managers.push(ManagerProc {
                id,
                addr: addr.clone(),
                config,
                log: c.dir.path().join(format!("manager{id}.log")),
                child: None,
                insecure: false,
            });
        }
        for m in &mut c.managers[..opts.managers] {
            m.start();
        }
        for i in 0..opts.nodes {
            c.add_node(i, &opts.storage_extra);
        }
        c
    }

    /// [`Cluster::start`], retried when a process dies at start-up (the harness picks
    /// ports with `free_port()`, which another process can take first), and waited for
    /// until every node is registered and every group ready.
    pub async fn start_ready(opts: Opts) -> Cluster {
        let nodes = opts.nodes;
        let fresh = || Opts {
            node_at: Vec::new(),
            manager_extra: opts.manager_extra.clone(),
            storage_extra: opts.storage_extra.clone(),
            manager_host: opts.manager_host.clone(),
            ..opts
        };
        assert!(opts.node_at.is_empty(), "start_ready places nodes itself");
        for attempt in 1..=5 {
            let mut c = Cluster::start(fresh());
            let deadline = Instant::now() + Duration::from_secs(15);
            let died = loop {
                let mut died = None;
                for m in &mut c.managers {
                    if let Some(Ok(Some(st))) = m.child.as_mut().map(|ch| ch.try_wait()) {
                        died = Some(format!("manager exited: {st}"));
                    }
                }
                for (i, n) in c.nodes.iter_mut().enumerate() {
                    if let Some(Ok(Some(st))) = n.child.as_mut().map(|ch| ch.try_wait()) {
                        died = Some(format!("node {} exited: {st}", i + 1));
                    }
                }
                if died.is_some() {
                    break died;
                }
                if c.status().await.is_some_and(|s| s.nodes.len() >= nodes)
                    || Instant::now() > deadline
                {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            match died {
                None => {
                    c.wait_ready(nodes).await;
                    return c;
                }
                Some(why) => eprintln!("cluster start attempt {attempt}: {why}; retrying"),
            }
        }
        panic!("the cluster did not start in 5 attempts");
    }

    /// Adds `n` storage nodes (index 0 up), each serving its metrics: their addresses,
    /// by node index.
    pub fn add_nodes_with_metrics(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let m = format!("127.0.0.1:{}", free_port());
                self.add_node(i, &format!("metrics_listen = \"{m}\""));
                m
            })
            .collect()
    }

    /// Configures and starts storage node `i` (the next one), with `extra` lines in its
    /// storage.toml.
    pub fn add_node(&mut self, i: usize, extra: &str) {
        let (addr, wrapper) = match self.node_at.get(i) {
            Some(at) => (at.addr.clone(), at.wrapper.clone()),
            None => (format!("127.0.0.1:{}", free_port()), Vec::new()),
        };
        let list = self
            .manager_addrs()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let data_dir = self.dir.path().join(format!("node{}", i + 1));
        issue_certs(&self.certs, &[Identity::Node(i as u64 + 1)]);
        let config = self.dir.path().join(format!("storage{}.toml", i + 1));
        std::fs::write(
            &config,
            format!(
                "rack = \"rack{}\"\ndata_dir = \"{}\"\nlisten = \"{addr}\"\nmanagers = [{list}]\nheartbeat_ms = 200\ncerts_dir = \"{}\"\ncert = \"node-{}\"\n{extra}\n",
                i + 1,
                data_dir.display(),
                self.certs.display(),
                i + 1,
            ),
        )
        .expect("write storage.toml");
        let mut n = NodeProc {
            config,
            data_dir,
            addr,
            child: None,
            log: self.dir.path().join(format!("node{}.log", i + 1)),
            nofile: self.nofile,
            wrapper,
            env: Vec::new(),
        };
        n.start();
        self.nodes.push(n);
    }

    /// SIGKILL of storage node `i` (a position in `nodes`): no shutdown code runs, exactly
    /// like a power cut of the process.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].start();
    }

    /// SIGSTOP of storage node `i`; [`Cluster::resume_node`] undoes it.
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

    /// SIGKILL of manager `i` (a position in `managers`).
    pub fn kill_manager(&mut self, i: usize) {
        self.managers[i].kill();
    }

    pub fn restart_manager(&mut self, i: usize) {
        self.managers[i].start();
    }

    pub fn manager_addrs(&self) -> Vec<String> {
        self.managers.iter().map(|m| m.addr.clone()).collect()
    }

    /// The first manager's address: the only one of a one-manager cluster.
    pub fn manager_addr(&self) -> &str {
        &self.managers[0].addr
    }

    /// The running manager that answers requests itself (followers redirect), if any.
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.managers.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let res = tessera_net::call::<_, ManagerReply>(
                &self.security(),
                &m.addr,
                tessera_net::Expect::Manager(m.id),
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

    /// Cluster status from whichever manager leads; `None` if none answers.
    pub async fn status(&self) -> Option<ClusterStatus> {
        let req = &ManagerRequest::ClusterStatus;
        let timeout = Duration::from_secs(2);
        // One manager is asked once; several are tried in turn until one leads.
        let reply = match self.managers.as_slice() {
            [one] => {
                tessera_net::call::<_, ManagerReply>(
                    &self.security(),
                    &one.addr,
                    tessera_net::Expect::Manager(one.id),
                    req,
                    timeout,
                )
                .await
            }
            _ => {
                tessera_net::call_managers::<_, ManagerReply>(
                    &self.security(),
                    &self.manager_addrs(),
                    req,
                    timeout,
                )
                .await
            }
        };
        match reply {
            Ok(ManagerReply::Status(s)) => Some(s),
            _ => None,
        }
    }

    /// Waits until `nodes` nodes are registered and every group has a leader and three
    /// replicas.
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

    /// The position in `nodes` of the node the manager calls `node_id` (matched by address),
    /// if it is registered and the harness's.
    pub fn find_node(&self, status: &ClusterStatus, node_id: u64) -> Option<usize> {
        let addr = &status.nodes.iter().find(|n| n.node_id == node_id)?.addr;
        self.nodes.iter().position(|n| &n.addr == addr)
    }

    /// [`Cluster::find_node`] of a node that must be there.
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

    /// The CLI with `--manager a,b,c`, as the `admin` client.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--manager")
            .arg(self.manager_addrs().join(","))
            .arg("--certs-dir")
            .arg(&self.certs)
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
            "{args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
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
        self.client_as("client").await
    }

    /// A client naming itself `label` in its attachments, as the `admin` client.
    pub async fn client_as(&self, label: &str) -> tessera_client::Client {
        tessera_client::Client::connect_with(self.manager_addrs(), label, self.security())
            .await
            .expect("client connects")
    }

    /// How the tests' own calls dial: as the `admin` client.
    pub fn security(&self) -> Security {
        Security::load(&self.certs, "client-admin").expect("the admin certificate")
    }

    /// A `Capability` frame (request id 0) that lets a raw connection of
    /// [`Cluster::security`] (the admin client) send I/O for volume `volume_id` at writer
    /// epoch `epoch` (0: reads): the manager's signed capability, for a test to send before
    /// its data requests.
    pub async fn capability_frame(&self, volume_id: u64, epoch: u64) -> bytes::Bytes {
        let req = ManagerRequest::Capability {
            volume_id,
            epoch,
            holder: String::new(),
        };
        let addrs = self.manager_addrs();
        let timeout = Duration::from_secs(10);
        let reply = tessera_net::call_managers(&self.security(), &addrs, &req, timeout).await;
        let Ok(ManagerReply::Capability { signed, .. }) = reply else {
            panic!("no capability: {reply:?}");
        };
        let signed = tessera_proto::capability::Signed::from_hex(&signed).expect("hex");
        let kind = tessera_proto::frame::Kind::Capability;
        tessera_proto::frame::Frame::new(kind, 0, signed.encode().into()).to_bytes()
    }

    /// How the tests send what only a manager may (a leadership transfer): as manager 1.
    pub fn manager_security(&self) -> Security {
        Security::load(&self.certs, "manager-1").expect("manager 1's certificate")
    }

    /// The tail of every process log, for failure messages.
    pub fn logs(&self) -> String {
        self.logs_in(self.dir.path())
    }

    /// [`Cluster::logs`] of the files now in `dir` (where they were moved to be kept).
    fn logs_in(&self, dir: &Path) -> String {
        let files = self
            .managers
            .iter()
            .map(|m| &m.log)
            .chain(self.nodes.iter().map(|n| &n.log))
            .map(|f| dir.join(f.file_name().expect("log file name")));
        let mut out = String::new();
        for f in files {
            out.push_str(&format!("==== {}\n", f.display()));
            out.push_str(&log_tail(&f, 30));
            out.push('\n');
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for m in &mut self.managers {
            m.kill();
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

/// One data-plane request straight to one node, bypassing the client's routing, dialled as
/// `security` says (e.g. [`Cluster::security`]).
pub async fn direct(
    security: &Security,
    addr: &str,
    req: &tessera_proto::data::Request,
) -> Option<tessera_proto::data::Reply> {
    let work = async {
        let s = security
            .connect(addr, tessera_net::Expect::Any, Duration::from_secs(1))
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
        let reply = tessera_proto::data::Reply::decode(&f.body).ok();
        // A test asking "was this served?" must not pass on a refusal of its own request.
        if let Some(tessera_proto::data::Reply::Unauthorized(why)) = &reply {
            panic!(
                "a direct request was refused: {why} (send it as a manager or with a capability)"
            );
        }
        reply
    };
    tokio::time::timeout(Duration::from_secs(3), work)
        .await
        .ok()
        .flatten()
}

/// Makes the CA of `certs` if it has none, and a certificate for each of `who` it lacks.
pub fn issue_certs(certs: &Path, who: &[Identity]) {
    let (ca_crt, ca_key) = issue::pair_paths(certs, "ca");
    if !ca_crt.exists() {
        let ca = issue::new_ca(30).expect("a CA");
        issue::write_new(&ca_key, &ca.key_pem, 0o600).expect("ca.key");
        issue::write_new(&ca_crt, &ca.cert_pem, 0o644).expect("ca.crt");
    }
    let read = |p: &Path| std::fs::read_to_string(p).expect("the CA");
    for w in who {
        let stem = issue::stem(w);
        if issue::pair_paths(certs, &stem).0.exists() {
            continue;
        }
        let c = issue::issue(&read(&ca_crt), &read(&ca_key), w, &[], 30).expect("issue");
        issue::write_pair(certs, &stem, &c).expect("write the certificate");
    }
}
