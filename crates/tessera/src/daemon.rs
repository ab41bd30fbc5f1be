//! The daemons' entry points: `manager`, `storage` and `nbd` load their configuration,
//! start the library's service and run until Ctrl-C (or, for a storage node, a fatal
//! storage error).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tessera_client::Client;

/// A config file, parsed (errors name the file).
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
}

pub async fn run_manager(path: &Path) -> Result<()> {
    let file: tessera_manager::ManagerConfigFile = read_toml(path)?;
    let m = tessera_manager::Manager::start(file.into()).await?;
    eprintln!("tessera manager listening on {}", m.local_addr());
    tokio::signal::ctrl_c().await?;
    m.shutdown().await;
    Ok(())
}

pub async fn run_storage(path: &Path) -> Result<()> {
    let cfg: tessera_storage::StorageConfig = read_toml(path)?;
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
    managers: Vec<String>,
    listen: &str,
    metrics: Option<String>,
    read_only: bool,
) -> Result<()> {
    if let Some(m) = metrics {
        tessera_metrics::serve(&m)
            .await
            .with_context(|| format!("serving metrics on {m}"))?;
    }
    let client = Client::connect_as(managers, &format!("nbd gateway {listen}")).await?;
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
