//! NBD in the tier-2 harness: `tessera nbd` gateway processes given every manager of a
//! [`Cluster`], started once they greet clients, and killed on drop.
//!
//! Owns the gateways' processes and logs; never speaks NBD beyond the greeting that shows
//! a gateway is up (a blocking probe, as gateways start from blocking code; tests speak NBD
//! through `tessera_nbd::testing`, the one NBD client of the tests).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::process::{Launch, free_port, kill, log_tail};
use tessera_nbd::testing::{
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, IHAVEOPT, NBDMAGIC, OPT_ABORT,
};

/// A `tessera nbd` gateway process, killed on drop.
pub struct Gateway {
    pub port: u16,
    pub log: PathBuf,
    pub child: Option<Child>,
    managers: String,
    read_only: bool,
    /// The cluster's certificates directory (the gateway presents `client-USER`).
    certs: PathBuf,
    user: String,
    /// `--tls`: NBD clients must start TLS.
    tls: bool,
    /// `--metrics` on this port, if any.
    pub metrics: Option<u16>,
}

impl Cluster {
    /// Starts a gateway given every manager, on a free port, once it greets NBD clients.
    pub fn gateway(&self) -> Gateway {
        self.start_gateway(false)
    }

    /// A `tessera nbd --read-only` gateway.
    pub fn read_only_gateway(&self) -> Gateway {
        self.start_gateway(true)
    }

    /// A `tessera --user USER nbd --tls` gateway serving `/metrics` too: NBD clients must
    /// start TLS, and their certificates decide what they see. `client-USER` must exist.
    pub fn tls_gateway(&self, user: &str) -> Gateway {
        self.launch_gateway(false, user, true)
    }

    fn start_gateway(&self, read_only: bool) -> Gateway {
        self.launch_gateway(read_only, "admin", false)
    }

    fn launch_gateway(&self, read_only: bool, user: &str, tls: bool) -> Gateway {
        let k = self.gateways_started.fetch_add(1, Ordering::Relaxed);
        let mut g = Gateway {
            port: free_port(),
            log: self.dir.path().join(format!("gateway{k}.log")),
            child: None,
            managers: self.manager_addrs().join(","),
            read_only,
            certs: self.certs.clone(),
            user: user.to_string(),
            tls,
            metrics: tls.then(free_port),
        };
        g.spawn();
        g
    }
}

impl Gateway {
    /// Starts the process on `self.port`, or on a new port if that one cannot be had
    /// (`free_port()` is racy: another process may take the port first), and waits for the
    /// NBD greeting.
    pub fn spawn(&mut self) {
        for _ in 0..5 {
            let listen = format!("127.0.0.1:{}", self.port);
            let certs = self.certs.to_str().expect("utf8");
            let metrics = self.metrics.map(|p| format!("127.0.0.1:{p}"));
            let mut args = vec![
                "--manager",
                &self.managers,
                "--certs-dir",
                certs,
                "--user",
                &self.user,
                "nbd",
                "--listen",
                &listen,
            ];
            if self.read_only {
                args.push("--read-only");
            }
            if self.tls {
                args.push("--tls");
            }
            if let Some(m) = &metrics {
                args.extend(["--metrics", m.as_str()]);
            }
            let mut child = Launch::new(&args).spawn(&self.log);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("nbd gateway exited at start ({status}); retrying on a new port");
                    self.port = free_port();
                    self.metrics = self.metrics.map(|_| free_port());
                    break;
                }
                if greets(self.port) && matches!(child.try_wait(), Ok(None)) {
                    self.child = Some(child);
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nbd gateway not listening in 30s:\n{}", self.log_tail());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("nbd gateway keeps exiting at start:\n{}", self.log_tail());
    }

    /// SIGKILL, then a start on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `nbd://` URI of `export` for qemu and libnbd tools.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 40)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("==== nbd gateway log\n{}", self.log_tail());
        }
    }
}

/// Whether an NBD server on `port` sends its greeting; then says a polite goodbye (client
/// flags, `NBD_OPT_ABORT`) so the server does not log a protocol error.
fn greets(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut g = [0u8; 18];
    if s.read_exact(&mut g).is_err() || g[..8] != NBDMAGIC.to_be_bytes() {
        return false;
    }
    let mut bye = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    bye.extend_from_slice(&IHAVEOPT.to_be_bytes());
    bye.extend_from_slice(&OPT_ABORT.to_be_bytes());
    bye.extend_from_slice(&0u32.to_be_bytes());
    let _ = s.write_all(&bye);
    true
}

/// qemu's arguments naming `export` of `g` over TLS with the credentials in `dir`.
pub fn qemu_tls(g: &Gateway, dir: &Path, export: &str) -> Vec<String> {
    vec![
        "--object".into(),
        format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            dir.display()
        ),
        "--image-opts".into(),
        format!(
            "driver=nbd,host=127.0.0.1,port={},export={export},tls-creds=tls0",
            g.port
        ),
    ]
}

/// `tessera cert qemu NAME` into a directory of the cluster's.
pub fn qemu_dir(c: &Cluster, name: &str) -> PathBuf {
    let dir = c.dir.path().join(format!("qemu-{name}"));
    c.cli_ok(&["cert", "qemu", name, dir.to_str().expect("utf8")]);
    dir
}
