//! The nemesis: one fault at a time against the running cluster, each counted.
//!
//! | fault | how |
//! |---|---|
//! | `kill_node` | SIGKILL a storage node (half the time a leader of a loaded group), restart it 2 s later |
//! | `pause_leader` | SIGSTOP the node leading a loaded group for 4 s (past the election timeout), then SIGCONT |
//! | `stall_two` | SIGSTOP two replicas of a loaded group for 12 s (past the client's 10 s request timeout; the group has no majority), then SIGCONT |
//! | `transfer_leader` | `TransferLeader` sent to the leaders of two loaded groups, to a random follower, under load |
//! | `kill_manager` | SIGKILL the leading manager, restart it 2 s later |
//! | `kill_gateway` | SIGKILL one NBD gateway (its clients lose their connections), restart it 1 s later |
//!
//! A *loaded* group holds chunks of the volume under test. After every fault the nemesis
//! waits (bounded) until every node is up and every group has a leader again, then pauses
//! 1-3 s, so faults do not pile up into a loss of quorum the system is not built for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tessera_proto::control::{ClusterStatus, GroupStatus, StorageReply, StorageRequest};

use crate::common::{Cluster, Gateway};
use crate::workload::Workload;

/// `tessera_client`'s deadline of one data-plane attempt (private there).
const CLIENT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
const KILL_FOR: Duration = Duration::from_secs(2);
const PAUSE_FOR: Duration = Duration::from_secs(4);
const STALL_FOR: Duration = Duration::from_secs(CLIENT_CALL_TIMEOUT.as_secs() + 2);
const SETTLE_WITHIN: Duration = Duration::from_secs(45);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillNode,
    PauseLeader,
    StallTwo,
    TransferLeader,
    KillManager,
    KillGateway,
}

pub const ALL: [Fault; 6] = [
    Fault::KillNode,
    Fault::PauseLeader,
    Fault::StallTwo,
    Fault::TransferLeader,
    Fault::KillManager,
    Fault::KillGateway,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillNode => "kill_node",
            Fault::PauseLeader => "pause_leader",
            Fault::StallTwo => "stall_two",
            Fault::TransferLeader => "transfer_leader",
            Fault::KillManager => "kill_manager",
            Fault::KillGateway => "kill_gateway",
        }
    }
}

pub struct Nemesis {
    pub c: Cluster,
    pub gateways: Vec<Gateway>,
    w: Arc<Workload>,
    rng: StdRng,
    /// How many times each fault fired.
    pub fired: BTreeMap<Fault, u32>,
    pub transfers_started: u32,
    /// Transfers whose target was seen leading afterwards.
    pub transfers_seen: u32,
    /// Times the cluster did not settle within [`SETTLE_WITHIN`] after a fault.
    pub unsettled: u32,
    /// Processes found dead that the nemesis had not killed (each restarted), with the
    /// tail of their logs.
    pub crashes: Vec<String>,
    /// Each SIGKILL of a gateway: which, and when (run time). Its unanswered writes may
    /// take effect only before the next attachment's fence (see `bound_fenced_writes`).
    pub gateway_kills: Vec<(usize, crate::checker::Time)>,
}

/// Runs blocking process control (spawn, wait, kill(1)) off the async workers' backs.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

fn loaded(s: &ClusterStatus) -> Vec<&GroupStatus> {
    s.groups
        .iter()
        .filter(|g| g.chunks > 0 && g.leader.is_some() && g.replicas.len() == 3)
        .collect()
}

impl Nemesis {
    pub fn new(c: Cluster, gateways: Vec<Gateway>, w: Arc<Workload>, seed: u64) -> Nemesis {
        Nemesis {
            c,
            gateways,
            w,
            rng: StdRng::seed_from_u64(seed),
            fired: ALL.iter().map(|&f| (f, 0)).collect(),
            transfers_started: 0,
            transfers_seen: 0,
            unsettled: 0,
            crashes: Vec::new(),
            gateway_kills: Vec::new(),
        }
    }

    fn log(&self, msg: &str) {
        eprintln!(
            "[{:7.1}s] nemesis: {msg}",
            self.w.start.elapsed().as_secs_f64()
        );
    }

    /// Every fault once in random order, then random faults until `until`.
    pub async fn run(&mut self, until: Instant) {
        let mut first = ALL.to_vec();
        first.shuffle(&mut self.rng);
        let mut i = 0;
        while i < first.len() || Instant::now() < until {
            let fault = match first.get(i) {
                Some(&f) => f,
                None => ALL[self.rng.gen_range(0..ALL.len())],
            };
            i += 1;
            match self.fire(fault).await {
                Some(what) => {
                    *self.fired.entry(fault).or_default() += 1;
                    self.log(&format!("{}: {what}", fault.name()));
                }
                None => self.log(&format!("{}: no target, skipped", fault.name())),
            }
            self.settle().await;
            let gap = Duration::from_millis(self.rng.gen_range(1000..3000));
            tokio::time::sleep(gap).await;
        }
    }

    async fn fire(&mut self, fault: Fault) -> Option<String> {
        match fault {
            Fault::KillNode => self.kill_node().await,
            Fault::PauseLeader => self.pause_leader().await,
            Fault::StallTwo => self.stall_two().await,
            Fault::TransferLeader => self.transfer_leader().await,
            Fault::KillManager => self.kill_manager().await,
            Fault::KillGateway => self.kill_gateway().await,
        }
    }

    /// Restarts any process that exited without the nemesis killing it, and records it.
    fn reap(&mut self) {
        let tail = |log: &std::path::Path| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        for i in 0..self.c.nodes.len() {
            let n = &mut self.c.nodes[i];
            if let Some(Ok(Some(st))) = n.child.as_mut().map(|c| c.try_wait()) {
                n.child = None;
                let what = format!("storage node {} exited: {st}\n{}", i + 1, tail(&n.log));
                self.log(&what);
                self.crashes.push(what);
                blocking(|| self.c.restart_node(i));
            }
        }
        for i in 0..self.c.managers.len() {
            let m = &mut self.c.managers[i];
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                m.child = None;
                let what = format!("manager {} exited: {st}\n{}", m.id, tail(&m.log));
                self.log(&what);
                self.crashes.push(what);
                blocking(|| self.c.restart_manager(i));
            }
        }
        for k in 0..self.gateways.len() {
            let g = &mut self.gateways[k];
            if let Some(Ok(Some(st))) = g.child.as_mut().map(|c| c.try_wait()) {
                g.child = None;
                let what = format!("gateway {k} exited: {st}\n{}", tail(&g.log));
                self.log(&what);
                self.crashes.push(what);
                let g = &mut self.gateways[k];
                blocking(|| g.spawn());
                self.w.set_gateway(k, g.addr());
            }
        }
    }

    /// Waits until every node is up and every group has a leader (bounded).
    pub async fn settle(&mut self) -> bool {
        self.reap();
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            if let Some(s) = self.c.status().await
                && s.nodes.len() >= self.c.nodes.len()
                && s.nodes.iter().all(|n| n.state == "up")
                && !s.groups.is_empty()
                && s.groups.iter().all(|g| g.leader.is_some())
            {
                return true;
            }
            if Instant::now() > deadline {
                self.unsettled += 1;
                self.log(&format!("cluster not settled within {SETTLE_WITHIN:?}"));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn kill_node(&mut self) -> Option<String> {
        let s = self.c.status().await?;
        let (node, role) = match loaded(&s).choose(&mut self.rng) {
            Some(g) if self.rng.gen_bool(0.5) => (g.leader?, "a group leader"),
            _ => (s.nodes.choose(&mut self.rng)?.node_id, "any node"),
        };
        let i = self.c.find_node(&s, node)?;
        blocking(|| self.c.kill_node(i));
        tokio::time::sleep(KILL_FOR).await;
        blocking(|| self.c.restart_node(i));
        Some(format!(
            "SIGKILL node {node} ({role}), restarted after {KILL_FOR:?}"
        ))
    }

    async fn pause_leader(&mut self) -> Option<String> {
        let s = self.c.status().await?;
        let g = *loaded(&s).choose(&mut self.rng)?;
        let node = g.leader?;
        let i = self.c.find_node(&s, node)?;
        blocking(|| self.c.pause_node(i));
        tokio::time::sleep(PAUSE_FOR).await;
        blocking(|| self.c.resume_node(i));
        Some(format!(
            "SIGSTOP node {node} (leader of group {}) for {PAUSE_FOR:?}",
            g.group_id
        ))
    }

    async fn stall_two(&mut self) -> Option<String> {
        let s = self.c.status().await?;
        let g = *loaded(&s).choose(&mut self.rng)?;
        let two: Vec<u64> = g
            .replicas
            .choose_multiple(&mut self.rng, 2)
            .map(|r| r.node_id)
            .collect();
        let idx: Vec<usize> = two
            .iter()
            .map(|&n| self.c.find_node(&s, n))
            .collect::<Option<_>>()?;
        blocking(|| idx.iter().for_each(|&i| self.c.pause_node(i)));
        tokio::time::sleep(STALL_FOR).await;
        blocking(|| idx.iter().for_each(|&i| self.c.resume_node(i)));
        Some(format!(
            "SIGSTOP nodes {two:?} (two replicas of group {}, leader {:?}) for {STALL_FOR:?}",
            g.group_id, g.leader
        ))
    }

    async fn transfer_leader(&mut self) -> Option<String> {
        let s = self.c.status().await?;
        let mut groups = loaded(&s);
        groups.shuffle(&mut self.rng);
        let mut started = Vec::new();
        for g in groups.into_iter().take(2) {
            let leader = g.leader?;
            let Some(to) = g
                .replicas
                .iter()
                .map(|r| r.node_id)
                .filter(|&n| n != leader)
                .collect::<Vec<_>>()
                .choose(&mut self.rng)
                .copied()
            else {
                continue;
            };
            // Ask the leader the manager knows of; follow one hint if it moved meanwhile.
            let mut ask = leader;
            for _ in 0..2 {
                let Some(addr) = s.nodes.iter().find(|n| n.node_id == ask).map(|n| &n.addr) else {
                    break;
                };
                let req = StorageRequest::TransferLeader {
                    group_id: g.group_id,
                    to,
                };
                match tessera_net::call::<_, StorageReply>(
                    &self.c.manager_security(),
                    addr,
                    tessera_net::Expect::Node(ask),
                    &req,
                    Duration::from_secs(3),
                )
                .await
                {
                    Ok(StorageReply::NotLeader { hint }) if hint != 0 && hint != to => ask = hint,
                    Ok(StorageReply::Members(_) | StorageReply::Done) => {
                        started.push((g.group_id, ask, to));
                        break;
                    }
                    other => {
                        self.log(&format!(
                            "transfer of group {} to {to} via node {ask}: {other:?}",
                            g.group_id
                        ));
                        break;
                    }
                }
            }
        }
        if started.is_empty() {
            return None;
        }
        self.transfers_started += started.len() as u32;
        // Did the targets take over? (The manager's leader balance may move them again.)
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = vec![false; started.len()];
        while Instant::now() < deadline && seen.iter().any(|s| !s) {
            if let Some(s) = self.c.status().await {
                for (k, (group, _, to)) in started.iter().enumerate() {
                    if s.groups
                        .iter()
                        .any(|g| g.group_id == *group && g.leader == Some(*to))
                    {
                        seen[k] = true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let n_seen = seen.iter().filter(|&&s| s).count();
        self.transfers_seen += n_seen as u32;
        Some(format!(
            "leadership transfers (group, from, to) {started:?}; {n_seen} seen done"
        ))
    }

    async fn kill_manager(&mut self) -> Option<String> {
        let i = self.c.leader().await?;
        let id = self.c.managers[i].id;
        blocking(|| self.c.kill_manager(i));
        tokio::time::sleep(KILL_FOR).await;
        blocking(|| self.c.restart_manager(i));
        Some(format!(
            "SIGKILL manager {id} (the leader), restarted after {KILL_FOR:?}"
        ))
    }

    /// The gateway holding the volume's attachment, as the manager says.
    async fn holder(&self) -> Option<usize> {
        let client = self.c.client().await;
        let info = client.volume_info(&self.w.export).await.ok()?;
        let holder = info.attachment?.client;
        self.gateways
            .iter()
            .position(|g| holder.contains(&format!("nbd gateway {} ", g.addr())))
    }

    /// Kills the gateway that holds the volume (its clients' writes in flight), else the
    /// next one in turn.
    async fn kill_gateway(&mut self) -> Option<String> {
        let turn = self.fired[&Fault::KillGateway] as usize % self.gateways.len();
        let k = self.holder().await.unwrap_or(turn);
        blocking(|| self.gateways[k].kill());
        self.gateway_kills.push((k, self.w.time(Instant::now())));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let g = &mut self.gateways[k];
        blocking(|| g.spawn());
        self.w.set_gateway(k, g.addr());
        Some(format!(
            "SIGKILL gateway {k}, restarted on {} after 1s",
            g.addr()
        ))
    }

    /// Undoes anything left over: every process running and none stopped.
    pub async fn heal(&mut self) {
        for i in 0..self.c.nodes.len() {
            if self.c.nodes[i].child.is_none() {
                blocking(|| self.c.restart_node(i));
            } else {
                blocking(|| self.c.resume_node(i));
            }
        }
        for i in 0..self.c.managers.len() {
            if self.c.managers[i].child.is_none() {
                blocking(|| self.c.restart_manager(i));
            }
        }
        for k in 0..self.gateways.len() {
            if self.gateways[k].child.is_none() {
                let g = &mut self.gateways[k];
                blocking(|| g.spawn());
                self.w.set_gateway(k, g.addr());
            }
        }
        self.settle().await;
    }
}
