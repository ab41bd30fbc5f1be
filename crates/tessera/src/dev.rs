//! `tessera dev`: a whole cluster in one process, for a laptop or a test. Each storage node
//! is the real service with its own data directory, port and rack; only the process is
//! shared. The manager reads the `manager.toml` dev writes in its data directory (as a
//! production manager would), with a directory store `local` for backups beside the data.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::Poll;

use anyhow::{Context, Result, bail};
use clap::Args;
use tessera_client::Client;
use tessera_storage::{StorageConfig, StorageNode};

#[derive(Args)]
pub struct DevArgs {
    /// Where every component keeps its data (reused on the next start).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Storage nodes, each in its own rack (at least 3: every chunk has three replicas on
    /// three racks).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(3..=64))]
    pub nodes: u16,
    /// NBD gateway address.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd: String,
    /// Manager address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub manager_listen: String,
    /// First storage node's data port; node i listens on base + i.
    #[arg(long, default_value_t = 7500)]
    pub base_port: u16,
    /// Where to serve `GET /metrics` for every component of the dev cluster.
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub metrics: String,
    /// Size of the default volume `vol0`, created on first start.
    #[arg(long, default_value = "10GiB", value_parser = crate::size::parse_size)]
    pub vol0_size: u64,
    /// Serve NBD over TLS only (x509, `NBD_OPT_STARTTLS`): the gateway presents `client-nbd`
    /// (made for the NBD address's host, 127.0.0.1 and localhost); qemu and libnbd present
    /// the admin's certificate from `certs/qemu-admin`.
    #[arg(long)]
    pub nbd_tls: bool,
}

/// The dev gateway's certificate when it serves NBD over TLS.
const NBD_CERT: &str = "nbd";
/// The admin's certificate in qemu's and libnbd's layout, under the certificates directory.
const QEMU_DIR: &str = "qemu-admin";

/// Makes what NBD over TLS needs that `certs` lacks: the gateway's certificate, naming the
/// hosts qemu may dial it by, and the admin's files for qemu.
fn ensure_nbd_tls(certs: &Path, nbd_listen: &str) -> Result<()> {
    let who = tessera_net::Identity::Client {
        name: NBD_CERT.into(),
        role: tessera_net::Role::Admin,
    };
    let stem = tessera_net::tls::issue::stem(&who);
    if !tessera_net::tls::issue::pair_paths(certs, &stem).0.exists() {
        let mut hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        if let Some((h, _)) = nbd_listen.rsplit_once(':') {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            if !hosts.iter().any(|x| x == h) && !h.is_empty() && h != "0.0.0.0" && h != "::" {
                hosts.push(h.to_string());
            }
        }
        crate::cert::issue_into(certs, &certs.join("ca.key"), &who, &hosts, 3650)?;
    }
    let qemu = certs.join(QEMU_DIR);
    if !qemu.join("client-key.pem").exists() {
        let admin = format!("client-{}", crate::access::DEFAULT_USER);
        crate::cert::qemu_dir(certs, &admin, &qemu)?;
    }
    Ok(())
}

/// Where a dev cluster keeps its data unless told.
const DEFAULT_DATA_DIR: &str = "./tessera-data";

/// Makes the dev cluster's CA and every certificate it needs that `certs` lacks: manager 1,
/// nodes 1..=`nodes`, and the `admin` client the NBD gateway and the CLI present.
fn ensure_certs(certs: &Path, nodes: u16) -> Result<()> {
    let ca_key = certs.join("ca.key");
    if !certs.join("ca.crt").exists() {
        crate::cert::init(certs, &ca_key, 3650)?;
    }
    let mut wanted = vec![
        tessera_net::Identity::Manager(1),
        tessera_net::Identity::Client {
            name: crate::access::DEFAULT_USER.into(),
            role: tessera_net::Role::Admin,
        },
    ];
    wanted.extend((1..=u64::from(nodes)).map(tessera_net::Identity::Node));
    for who in wanted {
        let stem = tessera_net::tls::issue::stem(&who);
        if !tessera_net::tls::issue::pair_paths(certs, &stem).0.exists() {
            crate::cert::issue_into(certs, &ca_key, &who, &[], 3650)?;
        }
    }
    Ok(())
}

/// The zone of every dev storage node, and of its backup store.
const ZONE: &str = "zone1";
/// The name of the dev cluster's backup store.
const STORE: &str = "local";

pub async fn run(a: DevArgs, insecure: bool) -> Result<()> {
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    // A store's directory is absolute (the storage nodes open it too).
    let data_dir = std::fs::canonicalize(&a.data_dir)
        .with_context(|| format!("resolving {}", a.data_dir.display()))?;
    let config = data_dir.join("manager.toml");
    std::fs::write(&config, manager_toml(&a.manager_listen, &data_dir)?)
        .with_context(|| format!("writing {}", config.display()))?;
    let certs = data_dir.join(crate::access::DEV_CERTS);
    let security = |stem: &str| {
        if insecure {
            Ok::<_, anyhow::Error>(tessera_net::Security::insecure())
        } else {
            let s = crate::access::load(&certs, stem)?;
            s.watch_files(crate::access::RELOAD_EVERY);
            Ok(s)
        }
    };
    if insecure && a.nbd_tls {
        bail!("--nbd-tls needs certificates: not with --insecure");
    }
    if !insecure {
        ensure_certs(&certs, a.nodes)?;
    }
    if a.nbd_tls {
        ensure_nbd_tls(&certs, &a.nbd)?;
    }
    let file: tessera_manager::ManagerConfigFile = crate::daemon::read_toml(&config)?;
    let mut mcfg: tessera_manager::ManagerConfig = file.into();
    mcfg.security = security(&format!("manager-{}", mcfg.id))?;
    let manager = tessera_manager::Manager::start(mcfg).await?;
    let maddr = manager.local_addr().to_string();
    let metrics = tessera_metrics::serve(&a.metrics)
        .await
        .with_context(|| format!("serving metrics on {}", a.metrics))?;
    let host = a
        .manager_listen
        .rsplit_once(':')
        .map_or("127.0.0.1", |(h, _)| h)
        .to_string();
    let mut nodes = Vec::new();
    for i in 0..usize::from(a.nodes) {
        let cfg = StorageConfig {
            zone: ZONE.into(),
            rack: format!("rack{}", i + 1),
            security: security(&format!("node-{}", i + 1))?,
            certs_dir: None,
            cert: None,
            data_dir: a.data_dir.join(format!("node{}", i + 1)),
            listen: format!("{host}:{}", a.base_port as usize + i),
            advertise: None,
            managers: vec![maddr.clone()],
            heartbeat_ms: 1000,
            min_free_bytes: 256 << 20,
            log_segment_bytes: 64 << 20,
            metrics_listen: None,
            recovery_bytes_per_sec: 100 << 20,
            max_open_chunks: None,
            copy_list_page: tessera_proto::copy::MAX_LIST_PAGE,
            stuck_after_ms: 10_000,
            scrub: Default::default(),
            ingress: Default::default(),
        };
        nodes.push(
            StorageNode::start(cfg)
                .await
                .with_context(|| format!("starting storage node {}", i + 1))?,
        );
    }
    let gateway = if a.nbd_tls {
        security(&format!("client-{NBD_CERT}"))?
    } else {
        security(&format!("client-{}", crate::access::DEFAULT_USER))?
    };
    let acceptor = Some(gateway.clone()).filter(|g| a.nbd_tls && g.is_secure());
    let client = Client::connect_with(
        vec![maddr.clone()],
        &format!("tessera dev nbd {}", a.nbd),
        gateway,
    )
    .await?;
    client.ensure_volume("vol0", a.vol0_size).await?;
    let nbd = crate::daemon::serve_nbd(&a.nbd, Arc::new(client), acceptor).await?;
    let nbd_addr = nbd.local_addr();
    println!(
        "Tessera dev cluster is up: 1 manager, {} storage nodes, data in {}",
        a.nodes,
        a.data_dir.display()
    );
    if a.nbd_tls {
        let qemu = certs.join(QEMU_DIR);
        let (ip, port) = (nbd_addr.ip(), nbd_addr.port());
        println!("  volume:  nbds://{nbd_addr}/vol0 (TLS only)");
        println!(
            "  try:     qemu-img info --object tls-creds-x509,id=tls0,endpoint=client,dir={} \
             --image-opts driver=nbd,host={ip},port={port},export=vol0,tls-creds=tls0",
            qemu.display()
        );
        println!(
            "           nbdinfo 'nbds://{nbd_addr}/vol0?tls-certificates={}'",
            qemu.display()
        );
    } else {
        println!("  volume:  nbd://{nbd_addr}/vol0");
        println!("  try:     qemu-img info nbd://{nbd_addr}/vol0");
    }
    let flags = if insecure {
        " --insecure".to_string()
    } else if a.data_dir == Path::new(DEFAULT_DATA_DIR) {
        // The CLI finds ./tessera-data/certs by itself.
        String::new()
    } else {
        format!(" --certs-dir {}", certs.display())
    };
    println!("  CLI:     tessera{flags} --manager {maddr} volume list");
    if !insecure {
        println!(
            "  TLS:     certificates in {} (CA key ca.key; `tessera cert issue` adds more)",
            certs.display()
        );
    }
    println!(
        "  backups: store \"{STORE}\" in {} (tessera --manager {maddr} backup create vol0@SNAP)",
        data_dir.join("backups").display()
    );
    println!("  metrics: http://{metrics}/metrics");
    println!("Press Ctrl-C to stop.");
    // A node that hit a fatal storage error has stopped for good: the whole cluster stops
    // with it, rather than run on with a dead replica the user is never told about.
    let mut fatal = None;
    nbd.run(async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            stopped = first_fatal(&nodes) => fatal = Some(stopped),
        }
    })
    .await;
    for n in nodes {
        n.shutdown().await;
    }
    manager.shutdown().await;
    if let Some((i, msg)) = fatal {
        bail!(
            "storage node {} (data in {}) stopped: {msg}",
            i + 1,
            a.data_dir.join(format!("node{}", i + 1)).display()
        );
    }
    println!("stopped");
    Ok(())
}

/// The `manager.toml` of the dev cluster: its address, its data under `data_dir`, and the
/// directory store `local` (the default one) in `data_dir/backups`. Rewritten at every
/// start; every other key keeps its default.
fn manager_toml(listen: &str, data_dir: &Path) -> Result<String> {
    let path = |p: PathBuf| {
        p.to_str()
            .map(str::to_string)
            .with_context(|| format!("the data directory {} is not UTF-8", p.display()))
    };
    let mut store = toml::Table::new();
    store.insert("name".into(), STORE.into());
    store.insert("zone".into(), ZONE.into());
    store.insert("path".into(), path(data_dir.join("backups"))?.into());
    let mut t = toml::Table::new();
    t.insert("listen".into(), listen.into());
    t.insert("data_dir".into(), path(data_dir.join("manager"))?.into());
    t.insert("default_store".into(), STORE.into());
    t.insert("stores".into(), vec![toml::Value::Table(store)].into());
    Ok(format!(
        "# Written by `tessera dev` at every start (edits are lost): the dev cluster's manager.\n{}",
        toml::to_string(&t)?
    ))
}

/// Resolves with the index and the reason of the first node to hit a fatal storage error.
async fn first_fatal(nodes: &[StorageNode]) -> (usize, String) {
    let mut waits: Vec<_> = nodes.iter().map(|n| Box::pin(n.fatal())).collect();
    std::future::poll_fn(|cx| {
        for (i, w) in waits.iter_mut().enumerate() {
            if let Poll::Ready(msg) = w.as_mut().poll(cx) {
                return Poll::Ready((i, msg));
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manager gets a directory store `local` under the data directory, in the dev
    /// nodes' zone, as its default; paths are written as they are (quotes escaped).
    #[test]
    fn the_dev_manager_backs_up_to_a_local_directory_store() {
        let text = manager_toml("127.0.0.1:7400", Path::new("/tmp/tessera \"dev\"")).unwrap();
        assert!(text.starts_with("# Written by `tessera dev`"), "{text}");
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["listen"].as_str(), Some("127.0.0.1:7400"));
        assert_eq!(t["data_dir"].as_str(), Some("/tmp/tessera \"dev\"/manager"));
        assert_eq!(t["default_store"].as_str(), Some("local"));
        let stores = t["stores"].as_array().unwrap();
        assert_eq!(stores.len(), 1);
        assert_eq!(stores[0]["name"].as_str(), Some("local"));
        assert_eq!(stores[0]["zone"].as_str(), Some("zone1"));
        assert_eq!(
            stores[0]["path"].as_str(),
            Some("/tmp/tessera \"dev\"/backups")
        );
        assert!(t.get("gc_grace_secs").is_none());
    }
}
