//! A fatal storage error (a failed fdatasync: the kernel may have dropped dirty pages) stops
//! the process that hosts the node, loudly and with a non-zero exit status, so that an
//! operator, a supervisor or a CI script notices. Faults come from the engine's fail points,
//! set through `FAILPOINTS` (run with `--features failpoints`).

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{BIN, Cluster, Opts, free_port, free_port_run};

/// Fails the first chunk fdatasync in the process and no other: in `tessera dev` exactly one
/// of the nodes dies.
const FAIL_ONE_CHUNK_SYNC: &str = "chunk::fdatasync=1*return";

/// One 64 KiB write to `volume`, bounded in time; errors are ignored by the callers, which
/// only need chunk files made dirty on the replicas.
async fn write_once(security: &tessera_net::Security, manager: &str, volume: &str) {
    let attempt = async {
        let client = tessera_client::Client::connect_with(
            vec![manager.to_string()],
            "test",
            security.clone(),
        )
        .await?;
        let vol = client.open(volume).await?;
        vol.write(0, Bytes::from(vec![0xa1; 64 << 10])).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), attempt).await;
}

/// Writes to `volume` until `child` exits, at most 90 s.
async fn write_until_exit(
    child: &mut Child,
    security: &tessera_net::Security,
    manager: &str,
    volume: &str,
) -> Option<ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        write_once(security, manager, volume).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.try_wait().expect("wait")
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_process_exits_non_zero_when_a_chunk_fdatasync_fails() {
    let mut c = Cluster::start(Opts::default());
    c.wait_ready(3).await;
    c.create_volume("v", "8MiB", "1MiB");
    // Node 1 again, now with the fault armed.
    c.kill_node(0);
    c.nodes[0].env = vec![("FAILPOINTS".into(), FAIL_ONE_CHUNK_SYNC.into())];
    c.restart_node(0);
    let manager = c.manager_addr().to_string();
    let security = c.security();
    let child = c.nodes[0].child.as_mut().expect("node 1 running");
    let status = write_until_exit(child, &security, &manager, "v").await;
    let log = read_log(&c.nodes[0].log);
    let status = status.unwrap_or_else(|| {
        panic!("the storage node kept running after a failed fdatasync:\n{log}")
    });
    assert!(!status.success(), "exited with {status}:\n{log}");
    assert!(
        log.contains("error: storage node stopped") && log.contains("injected"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_exits_non_zero_naming_the_node_when_one_node_hits_a_fatal_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("dev.log");
    let (nbd, manager, metrics) = (free_port(), free_port(), free_port());
    let base = free_port_run(3);
    let out = std::fs::File::create(&log_path).expect("log");
    let mut child = Command::new(BIN)
        .args(["dev", "--insecure", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--nbd", &format!("127.0.0.1:{nbd}")])
        .args(["--manager-listen", &format!("127.0.0.1:{manager}")])
        .args(["--base-port", &base.to_string()])
        .args(["--metrics", &format!("127.0.0.1:{metrics}")])
        .args(["--vol0-size", "64MiB"])
        .env("FAILPOINTS", FAIL_ONE_CHUNK_SYNC)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn tessera dev");
    let status = write_until_exit(
        &mut child,
        &tessera_net::Security::insecure(),
        &format!("127.0.0.1:{manager}"),
        "vol0",
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let log = read_log(&log_path);
    let status = status
        .unwrap_or_else(|| panic!("tessera dev kept running with a dead storage node:\n{log}"));
    assert!(!status.success(), "exited with {status}:\n{log}");
    let named = (1..=3).any(|i| log.contains(&format!("error: storage node {i} ")));
    assert!(named && log.contains("injected"), "{log}");
}
