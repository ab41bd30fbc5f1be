//! The daemons' entry points: `manager`, `storage` and `nbd` load their configuration,
//! start the library's service and run until Ctrl-C (or, for a storage node, a fatal
//! storage error).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

/// A config file, parsed (errors name the file).
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
}

pub async fn run_manager(path: &Path, insecure: bool) -> Result<()> {
    let file: tessera_manager::ManagerConfigFile = read_toml(path)?;
    let certs_dir = file.certs_dir.clone();
    if let Some(m) = &file.metrics_listen {
        tessera_metrics::serve(m)
            .await
            .with_context(|| format!("serving metrics on {m}"))?;
    }
    let mut cfg: tessera_manager::ManagerConfig = file.into();
    cfg.security = crate::access::daemon_security(
        "the manager",
        certs_dir.as_deref(),
        &format!("manager-{}", cfg.id),
        insecure,
    )?;
    expect_identity(
        &cfg.security,
        |w| *w == tessera_net::Identity::Manager(cfg.id),
        &format!("manager {}", cfg.id),
    )?;
    let m = tessera_manager::Manager::start(cfg).await?;
    eprintln!("tessera manager listening on {}", m.local_addr());
    tokio::signal::ctrl_c().await?;
    m.shutdown().await;
    Ok(())
}

/// Refuses a certificate naming another identity than the process is (a node started with
/// a client's certificate, manager 2 with manager 1's).
fn expect_identity(
    security: &tessera_net::Security,
    is: impl Fn(&tessera_net::Identity) -> bool,
    what: &str,
) -> Result<()> {
    match security.identity() {
        Some(who) if !is(who) => bail!("the certificate names {who}, but this process is {what}"),
        _ => Ok(()),
    }
}

pub async fn run_storage(path: &Path, insecure: bool) -> Result<()> {
    let mut cfg: tessera_storage::StorageConfig = read_toml(path)?;
    if cfg.certs_dir.is_some() && cfg.cert.is_none() {
        bail!(
            "{}: certs_dir is set but not cert, this node's certificate (e.g. cert = \"node-3\")",
            path.display()
        );
    }
    cfg.security = crate::access::daemon_security(
        "the storage node",
        cfg.certs_dir.as_deref(),
        cfg.cert.as_deref().unwrap_or_default(),
        insecure,
    )?;
    expect_identity(
        &cfg.security,
        |w| matches!(w, tessera_net::Identity::Node(_)),
        "a storage node",
    )?;
    let node = tessera_storage::StorageNode::start(cfg).await?;
    eprintln!(
        "tessera storage node {} serving on {}",
        node.node_id(),
        node.local_addr()
    );
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; node.shutdown().await; Ok(()) }
        msg = node.fatal() => bail!("storage node stopped: {msg}"),
    }
}

pub async fn run_nbd(
    access: crate::access::Access,
    listen: &str,
    metrics: Option<String>,
    read_only: bool,
) -> Result<()> {
    if let Some(m) = metrics {
        tessera_metrics::serve(&m)
            .await
            .with_context(|| format!("serving metrics on {m}"))?;
    }
    let client = access.client(&format!("nbd gateway {listen}")).await?;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if read_only {
        let backend = Arc::new(tessera_nbd::ReadOnlyClient(client));
        let server = tessera_nbd::NbdServer::bind(listen, backend).await?;
        eprintln!("tessera NBD gateway (read-only) on {}", server.local_addr());
        server.run(stop).await;
    } else {
        let server = tessera_nbd::NbdServer::bind(listen, Arc::new(client)).await?;
        eprintln!("tessera NBD gateway on {}", server.local_addr());
        server.run(stop).await;
    }
    Ok(())
}
