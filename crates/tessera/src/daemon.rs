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
    tls: bool,
) -> Result<()> {
    if let Some(m) = metrics {
        tessera_metrics::serve(&m)
            .await
            .with_context(|| format!("serving metrics on {m}"))?;
    }
    let security = access.security()?;
    security.watch_files(crate::access::RELOAD_EVERY);
    let acceptor = match (tls, security.is_secure()) {
        (false, _) => None,
        (true, true) => Some(security.clone()),
        (true, false) => bail!("--tls needs the gateway's certificate: not with --insecure"),
    };
    let label = format!("nbd gateway {listen}");
    let client =
        tessera_client::Client::connect_with(access.managers.clone(), &label, security).await?;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let what = match (read_only, tls) {
        (false, false) => "",
        (true, false) => " (read-only)",
        (false, true) => " (TLS)",
        (true, true) => " (read-only, TLS)",
    };
    if read_only {
        let backend = Arc::new(tessera_nbd::ReadOnlyClient(client));
        let server = serve_nbd(listen, backend, acceptor).await?;
        eprintln!("tessera NBD gateway{what} on {}", server.local_addr());
        server.run(stop).await;
    } else {
        let server = serve_nbd(listen, Arc::new(client), acceptor).await?;
        eprintln!("tessera NBD gateway{what} on {}", server.local_addr());
        server.run(stop).await;
    }
    Ok(())
}

/// An NBD server on `listen`, requiring TLS if given an acceptor; a plain one on an
/// address beyond this host is warned about (anyone who reaches it uses every volume).
pub async fn serve_nbd<B: tessera_nbd::Backend>(
    listen: &str,
    backend: Arc<B>,
    tls: Option<tessera_net::Security>,
) -> Result<tessera_nbd::NbdServer<B>> {
    let server = tessera_nbd::NbdServer::bind(listen, backend)
        .await
        .with_context(|| format!("listening for NBD on {listen}"))?;
    Ok(match tls {
        Some(s) => server.with_tls(&s)?,
        None => {
            if !server.local_addr().ip().is_loopback() {
                tracing::warn!(
                    "NBD on {} without --tls: whoever reaches this address reads and writes \
                     every volume the gateway may",
                    server.local_addr()
                );
            }
            server
        }
    })
}
