//! How a command reaches the cluster: the manager addresses and the credentials every
//! process of the binary dials with ([`Access`]), from the global flags.
//!
//! Credentials are looked for in this order: `--insecure` (plain TCP, for a cluster whose
//! processes run with `--insecure`); `--certs-dir` (or `TESSERA_CERTS_DIR`); then
//! `./tessera-data/certs` (what `tessera dev` writes, so `tessera volume list` works beside
//! it); then `~/.tessera/certs`. In a certificates directory the CLI uses `ca.crt` and
//! `client-USER.crt`/`.key`, `USER` being `--user` (`TESSERA_USER`, default `admin`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tessera_client::Client;
use tessera_net::Security;

/// The user whose certificate the CLI presents when none is named.
pub const DEFAULT_USER: &str = "admin";

/// Where `tessera dev` keeps its certificates, under its data directory.
pub const DEV_CERTS: &str = "certs";

/// The cluster a command talks to, and as whom.
pub struct Access {
    pub managers: Vec<String>,
    /// `--certs-dir`, if given.
    pub certs_dir: Option<PathBuf>,
    pub user: String,
    pub insecure: bool,
}

impl Access {
    /// The certificates directory in use: `--certs-dir`, else the first default holding a
    /// `ca.crt`.
    pub fn certs_dir(&self) -> Option<PathBuf> {
        if let Some(d) = &self.certs_dir {
            return Some(d.clone());
        }
        default_dirs()
            .into_iter()
            .find(|d| d.join("ca.crt").is_file())
    }

    /// How this command dials: the client certificate of `--user`, or plain TCP with
    /// `--insecure`. An error says where certificates were looked for.
    pub fn security(&self) -> Result<Security> {
        if self.insecure {
            if let Some(d) = &self.certs_dir {
                bail!(
                    "both --insecure and --certs-dir {} given: choose one",
                    d.display()
                );
            }
            return Ok(Security::insecure());
        }
        let Some(dir) = self.certs_dir() else {
            let looked: Vec<String> = default_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            bail!(
                "no certificates found (looked in {}): pass --certs-dir DIR (made by `tessera \
                 cert init` and `tessera cert issue client {} --role admin`), or --insecure \
                 for a cluster started with --insecure",
                looked.join(", "),
                self.user
            );
        };
        load(&dir, &format!("client-{}", self.user))
    }

    /// A client of the cluster named `label` in the attachments it holds.
    pub async fn client(&self, label: &str) -> Result<Client> {
        let security = self.security()?;
        Ok(Client::connect_with(self.managers.clone(), label, security).await?)
    }
}

/// The identity `stem` of the certificates directory `dir`, with an error naming the files.
pub fn load(dir: &Path, stem: &str) -> Result<Security> {
    Security::load(dir, stem).with_context(|| {
        format!(
            "loading certificate {stem} (ca.crt, {stem}.crt, {stem}.key) from {}",
            dir.display()
        )
    })
}

/// The directories searched when `--certs-dir` is not given.
fn default_dirs() -> Vec<PathBuf> {
    let mut v = vec![Path::new("tessera-data").join(DEV_CERTS)];
    if let Some(home) = std::env::var_os("HOME") {
        v.push(Path::new(&home).join(".tessera").join("certs"));
    }
    v
}

/// How often a daemon looks at its certificates directory for a renewed certificate, a
/// changed CA bundle or a new revocation list (`Security::watch_files`).
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A daemon's transport: certificates from `certs_dir` as `stem`, re-read whenever they
/// change ([`RELOAD_EVERY`]), or plain TCP if started with `--insecure`; neither (or both)
/// is refused, naming the fix. Needs a tokio runtime.
pub fn daemon_security(
    what: &str,
    certs_dir: Option<&Path>,
    stem: &str,
    insecure: bool,
) -> Result<Security> {
    match (certs_dir, insecure) {
        (Some(dir), false) => {
            let security = load(dir, stem)?;
            security.watch_files(RELOAD_EVERY);
            Ok(security)
        }
        (None, true) => {
            tracing::warn!(
                "{what} running with --insecure: no TLS, no authentication; anyone who can \
                 reach its ports can read, write and delete every volume"
            );
            Ok(Security::insecure())
        }
        (Some(dir), true) => bail!(
            "{what}: certs_dir {} is set and --insecure given: choose one",
            dir.display()
        ),
        (None, false) => bail!(
            "{what}: no certificates configured. Set certs_dir in its config (see `tessera \
             cert init` and `tessera cert issue`), or start it with --insecure to run \
             without TLS or authentication (only on a network no one else can reach)"
        ),
    }
}
