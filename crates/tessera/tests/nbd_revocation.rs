//! A revoked NBD client is cut off by a running gateway: qemu-io, connected over NBD TLS
//! with alice's x509 credentials and writing, has its next request fail once `tessera
//! cert revoke client-alice` ran; a new connection of alice's is refused; another client
//! goes on. The gateway is not restarted. One manager, three storage nodes, the gateway:
//! processes, and qemu-io as the real client.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::metrics::counted;
use common::nbd::{qemu_dir, qemu_tls};
use common::{Cluster, Opts, tool};

/// A qemu-io reading commands from its standard input, its output lines in a channel.
struct Session {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn start(args: &[String]) -> Session {
        let mut child = Command::new("qemu-io")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-io");
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Session { child, lines }
    }

    /// Sends one command; the first line that says how it went (or the end of the output
    /// if qemu-io exits first).
    fn run(&mut self, cmd: &str) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        if writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return "qemu-io is gone".into();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = String::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    if line.contains("wrote") || line.contains("read ") || line.contains("failed") {
                        return seen;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return seen + "(exited)",
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        seen + "(no answer)"
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_nbd_client_is_cut_off_by_the_running_gateway() {
    let c = Cluster::start_ready(Opts::default()).await;
    c.create_volume("b", "64MiB", "16MiB");
    c.cli_ok(&[
        "cert",
        "issue",
        "client",
        "gw",
        "--role",
        "admin",
        "--host",
        "127.0.0.1",
    ]);
    for name in ["alice", "bob"] {
        c.cli_ok(&[
            "cert", "issue", "client", name, "--role", "user", "--volume", "b",
        ]);
    }
    let (alice, bob) = (qemu_dir(&c, "alice"), qemu_dir(&c, "bob"));
    let g = c.tls_gateway("gw");
    let metrics = format!("127.0.0.1:{}", g.metrics.expect("metrics"));

    let mut session = Session::start(&qemu_tls(&g, &alice, "b"));
    let wrote = session.run("write -P 0xa5 0 4k");
    assert!(wrote.contains("wrote 4096/4096"), "{wrote}");

    // Revoked: the list goes into the certificates directory and to the managers.
    c.cli_ok(&["cert", "revoke", "client-alice"]);
    let refused = |dir: &std::path::Path| {
        let mut args = vec!["-r".to_string(), "-c".into(), "read 0 4k".into()];
        args.extend(qemu_tls(&g, dir, "b"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        !tool("qemu-io", &args).status.success()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !refused(&alice) {
        assert!(
            Instant::now() < deadline,
            "a new connection of alice's is never refused"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The open session's next request fails; bob goes on.
    let read = session.run("read -P 0xa5 0 4k");
    assert!(
        !read.contains("read 4096/4096"),
        "alice still reads: {read}"
    );
    counted(&metrics, "tessera_connections_untrusted_total", 1);
    assert!(!refused(&bob), "bob is served");
}
