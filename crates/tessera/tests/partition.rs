//! A network partition, made with network namespaces: each storage node is its own host
//! (namespace + veth on a bridge); the manager and the client stay in the root namespace.
//! Needs root (CI is root); skips with a message where namespaces cannot be made.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, NodeAt, Opts, direct};
use tessera_proto::control::{ManagerReply, ManagerRequest};
use tessera_proto::data::{ChunkAddr, Op, Reply, Request};

const NET: &str = "10.213.7";

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The namespaces, veths and bridge of one test; removed on drop.
struct Net {
    tag: String,
    nodes: usize,
}

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("ts{}n{i}", self.tag)
    }
    fn ip(&self, i: usize) -> String {
        format!("{NET}.{}", 10 + i)
    }
    fn bridge(&self) -> String {
        format!("tsb{}", self.tag)
    }

    fn create(nodes: usize) -> Option<Net> {
        let tag = format!("{}", std::process::id() % 100_000);
        let net = Net { tag, nodes };
        let br = net.bridge();
        let ok = sh(&["ip", "link", "add", &br, "type", "bridge"])
            && sh(&["ip", "addr", "add", &format!("{NET}.1/24"), "dev", &br])
            && sh(&["ip", "link", "set", &br, "up"]);
        if !ok {
            drop(net);
            return None;
        }
        for i in 0..nodes {
            let ns = net.ns(i);
            let host = format!("tsv{}h{i}", net.tag);
            let ok = sh(&["ip", "netns", "add", &ns])
                && sh(&[
                    "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns",
                    &ns,
                ])
                && sh(&["ip", "link", "set", &host, "master", &br])
                && sh(&["ip", "link", "set", &host, "up"])
                && sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &ns,
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", net.ip(i)),
                    "dev",
                    "eth0",
                ])
                && sh(&[
                    "ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up",
                ])
                && sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            if !ok {
                drop(net);
                return None;
            }
        }
        Some(net)
    }

    /// Cuts node `i` off from the other storage nodes, both ways. The root namespace (the
    /// manager and the client) still reaches it.
    fn isolate(&self, i: usize, on: bool) {
        for j in (0..self.nodes).filter(|&j| j != i) {
            self.blackhole(i, j, on);
            self.blackhole(j, i, on);
        }
    }

    /// Adds (or removes) a blackhole route in node `from`'s namespace towards node `to`.
    fn blackhole(&self, from: usize, to: usize, on: bool) {
        let verb = if on { "add" } else { "del" };
        let dest = format!("{}/32", self.ip(to));
        let ns = self.ns(from);
        assert!(sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "ip",
            "route",
            verb,
            "blackhole",
            &dest
        ]));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            sh(&["ip", "netns", "del", &self.ns(i)]);
        }
        sh(&["ip", "link", "del", &self.bridge()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_stops_serving_and_rejoins_as_follower() {
    let Some(net) = Net::create(3) else {
        eprintln!("SKIP: cannot create network namespaces here (not root?)");
        return;
    };
    let c = Cluster::start(Opts {
        groups_per_node: 2,
        manager_host: format!("{NET}.1"),
        node_at: (0..3)
            .map(|i| NodeAt {
                addr: format!("{}:7500", net.ip(i)),
                wrapper: ["ip", "netns", "exec", &net.ns(i)]
                    .map(String::from)
                    .to_vec(),
            })
            .collect(),
        ..Opts::default()
    });
    c.wait_ready(3).await;
    c.create_volume("p", "4MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("p").await.expect("open");
    vol.write(0, Bytes::from(vec![0xaa; 4096]))
        .await
        .expect("write A");

    let route = match client
        .call(&ManagerRequest::Route {
            volume_id: vol.info().id,
            chunk: 0,
            allocate: false,
            epoch: 0,
        })
        .await
        .expect("route")
    {
        ManagerReply::Route(Some(r)) => r,
        other => panic!("no route: {other:?}"),
    };
    let addr = ChunkAddr {
        group: route.group_id,
        volume: vol.info().id,
        chunk: 0,
    };
    // The leader, as the nodes themselves say: the one serving reads. A fresh leader serves
    // them only once a quorum has answered its heartbeats (its lease), so ask until one does.
    let mut leader = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader.is_none() && Instant::now() < deadline {
        for (i, n) in c.nodes.iter().enumerate() {
            if matches!(
                direct(
                    &c.manager_security(),
                    &n.addr,
                    &Request::other(Op::Read, addr, 0, 4096)
                )
                .await,
                Some(Reply::Ok(_))
            ) {
                leader = Some(i);
            }
        }
        if leader.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let x = leader.expect("a leader serving reads");
    let x_addr = c.nodes[x].addr.clone();

    let cut = Instant::now();
    net.isolate(x, true);
    // A write sent straight to the cut-off leader cannot commit: it must not be acknowledged.
    let divergent = Request {
        epoch: vol.epoch().expect("attached"),
        ..Request::write(addr, 0, Bytes::from(vec![0xcc; 4096]))
    };
    let x_for_write = x_addr.clone();
    let security = c.manager_security();
    let divergent = tokio::spawn(async move { direct(&security, &x_for_write, &divergent).await });
    // Past its lease (half an election timeout without a quorum's answers) the old leader
    // refuses reads, even while Raft has not yet made it step down.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = direct(
        &c.manager_security(),
        &x_addr,
        &Request::other(Op::Read, addr, 0, 4096),
    )
    .await;
    if let Some(Reply::Ok(d)) = &r {
        panic!("a leader without a lease served a read ({:#x}...)", d[0]);
    }

    // The application's write goes through a new leader, with a pause and no error.
    vol.write(0, Bytes::from(vec![0xbb; 4096]))
        .await
        .expect("write B after the partition");
    eprintln!("write B done {:?} after the partition", cut.elapsed());
    let r = divergent.await.expect("task");
    assert!(
        !matches!(r, Some(Reply::Ok(_))),
        "an isolated leader acknowledged a write"
    );
    assert!(
        vol.read(0, 4096)
            .await
            .expect("read")
            .iter()
            .all(|&b| b == 0xbb)
    );
    // The old leader never serves the old value now.
    let r = direct(
        &c.manager_security(),
        &x_addr,
        &Request::other(Op::Read, addr, 0, 4096),
    )
    .await;
    if let Some(Reply::Ok(d)) = &r {
        panic!(
            "the isolated old leader served a read ({:#x}) after a new leader took writes",
            d[0]
        );
    }

    net.isolate(x, false);
    // After healing, the old leader catches up: its chunk file ends up holding B (its
    // divergent C was discarded), and the volume still reads B.
    let file = c.nodes[x]
        .data_dir
        .join("groups")
        .join(format!("{:016x}", route.group_id))
        .join(format!("{:016x}", vol.info().id))
        .join(format!("{:08x}.dat", 0));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bytes = std::fs::read(&file).unwrap_or_default();
        if bytes.len() >= 4096 && bytes[..4096].iter().all(|&b| b == 0xbb) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old leader never converged; first byte {:?}\n{}",
            bytes.first(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        vol.read(0, 4096)
            .await
            .expect("read")
            .iter()
            .all(|&b| b == 0xbb)
    );
}
