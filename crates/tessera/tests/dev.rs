//! `tessera dev`, the one-command cluster, used the way the README tells a newcomer to.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, free_port, free_port_run};

struct Dev {
    child: Child,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(
    data: &std::path::Path,
    nbd: u16,
    manager: u16,
    base: u16,
    metrics: u16,
    log: &std::path::Path,
) -> Dev {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let child = Command::new(BIN)
        .args(["dev", "--data-dir", data.to_str().expect("utf8")])
        .args(["--nbd", &format!("127.0.0.1:{nbd}")])
        .args(["--manager-listen", &format!("127.0.0.1:{manager}")])
        .args(["--base-port", &base.to_string()])
        .args(["--metrics", &format!("127.0.0.1:{metrics}")])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn tessera dev");
    Dev { child }
}

fn qemu_io(url: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", url]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c.output().expect("run qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (
        out.status.success()
            && !text.contains("Pattern verification failed")
            && !text.contains("failed"),
        text,
    )
}

/// Retries `f` until it succeeds or 60 s pass (the cluster elects leaders after a start).
fn eventually(what: &str, mut f: impl FnMut() -> (bool, String)) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, text) = f();
        if ok {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what} never succeeded; last output:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn dev_cluster_serves_vol0_and_keeps_it_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("dev.log");
    let (nbd, manager, metrics) = (free_port(), free_port(), free_port());
    let base = free_port_run(3);
    let url = format!("nbd://127.0.0.1:{nbd}/vol0");

    let dev = start(&data, nbd, manager, base, metrics, &log);
    eventually("qemu-img info", || {
        let out = Command::new("qemu-img")
            .args(["info", &url])
            .output()
            .expect("qemu-img");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success() && text.contains("10737418240 bytes"),
            text,
        )
    });
    let writes = [
        "write -P 0xa1 0 64k",
        "write -P 0xb2 67104768 8k",
        "write -P 0xc3 5000000000 1M",
    ];
    let reads = [
        "read -P 0xa1 0 64k",
        "read -P 0xb2 67104768 8k",
        "read -P 0xc3 5000000000 1M",
        "read -P 0 1M 4k",
    ];
    eventually("qemu-io writes", || qemu_io(&url, &writes));
    let (ok, text) = qemu_io(&url, &reads);
    assert!(ok, "{text}");

    // Ctrl-C stops it cleanly.
    let pid = dev.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let mut dev = dev;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = dev.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "tessera dev did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "tessera dev exited with {status}");
    drop(dev);

    // A second start reuses the data: the same volume, the same bytes.
    let _dev = start(&data, nbd, manager, base, metrics, &log);
    eventually("reading the patterns back after a restart", || {
        qemu_io(&url, &reads)
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains(&format!("nbd://127.0.0.1:{nbd}/vol0")),
        "{text}"
    );
}
