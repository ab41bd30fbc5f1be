//! Issue-level promises of the core, against real processes: one manager and three storage
//! nodes on three racks, talking TCP on loopback, storing data in real files.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, Opts, TmpfsDisks, free_bytes};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tessera_client::{Error as ClientError, Volume};
use tessera_nbd::testing::{CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, Conn, ENOSPC};

const MIB: usize = 1 << 20;

async fn verify(vol: &Volume, model: &[u8], when: &str) {
    let mut tasks = Vec::new();
    for off in (0..model.len()).step_by(MIB) {
        let v = vol.clone();
        let n = MIB.min(model.len() - off);
        tasks.push((
            off,
            tokio::spawn(async move { v.read(off as u64, n as u64).await }),
        ));
    }
    for (off, t) in tasks {
        let got = t
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("{when}: read at {off}: {e}"));
        let want = &model[off..off + got.len()];
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "{when}: byte {} differs: got {:#x}, want {:#x}",
                off + i,
                got[i],
                want[i]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_of_every_storage_node() {
    let mut c = Cluster::start(Opts::default());
    c.wait_ready(3).await;
    c.create_volume("fuzz", "48MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("fuzz").await.expect("open");
    let size = vol.size() as usize;
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = vec![0u8; size];
    let mut written = 0usize;
    let mut spanning = 0usize;
    while written < 10_000 {
        let mut batch: Vec<(usize, Bytes)> = Vec::new();
        while batch.len() < 32 {
            let len = match rng.gen_range(0..4) {
                0 => 4096 * rng.gen_range(1..=8),
                1 => rng.gen_range(1..=9000),
                2 => 512 * rng.gen_range(1..=64),
                _ => rng.gen_range(1..=150_000),
            };
            let mut off = if rng.gen_bool(0.5) {
                rng.gen_range(0..size / 4096) * 4096
            } else {
                rng.gen_range(0..size)
            };
            if rng.gen_ratio(1, 8) {
                // Straddle a chunk boundary.
                let b = rng.gen_range(1..size / MIB) * MIB;
                off = b - rng.gen_range(1..=len.min(b));
            }
            let len = len.min(size - off);
            if len == 0
                || batch
                    .iter()
                    .any(|(o, d)| off < o + d.len() && *o < off + len)
            {
                continue;
            }
            if off / MIB != (off + len - 1) / MIB {
                spanning += 1;
            }
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            batch.push((off, Bytes::from(data)));
        }
        let tasks: Vec<_> = batch
            .iter()
            .map(|(off, d)| {
                let (v, off, d) = (vol.clone(), *off, d.clone());
                tokio::spawn(async move { v.write(off as u64, d).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("acknowledged write");
        }
        for (off, d) in batch {
            model[off..off + d.len()].copy_from_slice(&d);
            written += 1;
        }
    }
    assert!(spanning > 100, "only {spanning} writes spanned chunks");
    verify(&vol, &model, "before the crash").await;

    for i in 0..3 {
        c.kill_node(i);
    }
    for i in 0..3 {
        c.restart_node(i);
    }
    // The same handle keeps working: it reconnects and finds the new leaders.
    verify(&vol, &model, "after SIGKILL of every storage node").await;
    // And the cluster still takes writes.
    vol.write(4096, Bytes::from(vec![0x5a; 8192]))
        .await
        .expect("write after restart");
    model[4096..4096 + 8192].fill(0x5a);
    verify(&vol, &model, "after a write following the restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_span_three_racks_and_import_export_round_trips() {
    let c = Cluster::start(Opts {
        nodes: 4,
        ..Default::default()
    });
    c.wait_ready(4).await;
    let out = c.cli(&["--output", "json", "cluster", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: tessera_proto::control::ClusterStatus =
        serde_json::from_slice(&out.stdout).expect("cluster status JSON");
    assert!(!status.groups.is_empty());
    for g in &status.groups {
        let mut racks: Vec<&str> = g.replicas.iter().map(|r| r.rack.as_str()).collect();
        racks.sort();
        racks.dedup();
        assert_eq!(
            racks.len(),
            3,
            "group {} racks {:?}",
            g.group_id,
            g.replicas
        );
        assert!(
            g.replicas.iter().all(|r| r.node_state == "up"),
            "{:?}",
            g.replicas
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("in.img");
    let dst = dir.path().join("out.img");
    let mut data = vec![0u8; 64 * MIB];
    StdRng::seed_from_u64(7).fill_bytes(&mut data);
    // A zero region too: it must come back as zeroes without being stored.
    data[8 * MIB..12 * MIB].fill(0);
    std::fs::write(&src, &data).expect("write source");
    c.cli_ok(&["volume", "import", "img", src.to_str().expect("utf8")]);
    c.cli_ok(&["volume", "export", "img", dst.to_str().expect("utf8")]);
    let back = std::fs::read(&dst).expect("read export");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "export differs from import");

    let out = c.cli(&["--output", "json", "volume", "list"]);
    let vols: Vec<tessera_proto::control::VolumeInfo> =
        serde_json::from_slice(&out.stdout).expect("volume list JSON");
    assert!(
        vols.iter()
            .any(|v| v.name == "img" && v.size == 64 * MIB as u64)
    );
}

fn cli_err(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_lose_nothing() {
    let c = Cluster::start(Opts::default());
    c.wait_ready(3).await;
    c.create_volume("db1", "8MiB", "1MiB");

    assert!(cli_err(&c, &["volume", "info", "nope"]).contains("volume \"nope\" not found"));
    assert!(cli_err(&c, &["volume", "create", "db1", "--size", "8MiB"]).contains("already exists"));
    assert!(cli_err(&c, &["volume", "create", "bad/name", "--size", "8MiB"]).contains("bad/name"));
    assert!(cli_err(&c, &["volume", "create", "odd", "--size", "4097"]).contains("4096"));
    assert!(!cli_err(&c, &["volume", "create", "zero", "--size", "0"]).is_empty());
    assert!(cli_err(&c, &["volume", "resize", "db1", "--size", "4MiB"]).contains("shrink"));
    assert!(!cli_err(&c, &["volume", "create", "x", "--size", "12parsecs"]).is_empty());
    assert!(cli_err(&c, &["volume", "delete", "nope"]).contains("not found"));

    let client = c.client().await;
    let vol = client.open("db1").await.expect("open");
    let block = Bytes::from(vec![0xc3u8; 8192]);
    vol.write(MIB as u64 - 4096, block.clone())
        .await
        .expect("write");
    let size = vol.size();
    assert!(matches!(
        vol.write(size - 100, Bytes::from(vec![1u8; 200])).await,
        Err(ClientError::OutOfRange { .. })
    ));
    assert!(matches!(
        vol.read(size, 1).await,
        Err(ClientError::OutOfRange { .. })
    ));
    assert!(matches!(
        client.open("nope").await,
        Err(ClientError::VolumeNotFound(_))
    ));
    assert_eq!(
        vol.read(MIB as u64 - 4096, 8192).await.expect("read"),
        block
    );

    // Grow works and new space reads as zeroes.
    c.cli_ok(&["volume", "resize", "db1", "--size", "16MiB"]);
    let vol = client.open("db1").await.expect("reopen");
    assert_eq!(vol.size(), 16 * MIB as u64);
    assert!(
        vol.read(12 * MIB as u64, 4096)
            .await
            .expect("read")
            .iter()
            .all(|&b| b == 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_data_port_drops_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::start(Opts::default());
    c.wait_ready(3).await;
    c.create_volume("v", "8MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("v").await.expect("open");
    vol.write(0, Bytes::from(vec![7u8; 4096]))
        .await
        .expect("write");

    let mut h = tessera_proto::frame::encode_header(tessera_proto::frame::Kind::Write, 1, b"");
    h[16..20].copy_from_slice(&(64u32 << 20).to_le_bytes());
    let hc = crc32c_of(&h[..24]);
    h[24..28].copy_from_slice(&hc.to_le_bytes());
    let attacks: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: tessera\r\n\r\n".to_vec(),
        h.to_vec(),
        {
            // A valid header whose body fails its checksum.
            let f = tessera_proto::frame::Frame::new(
                tessera_proto::frame::Kind::Read,
                9,
                Bytes::from(vec![1u8; 40]),
            );
            let mut b = f.to_bytes().to_vec();
            let last = b.len() - 1;
            b[last] ^= 0xff;
            b
        },
    ];
    let security = c.security();
    let dial = |addr: &str| {
        let (security, addr) = (security.clone(), addr.to_string());
        async move {
            security
                .connect(&addr, tessera_net::Expect::Any, Duration::from_secs(5))
                .await
                .expect("connect")
        }
    };
    for node in &c.nodes {
        for a in &attacks {
            // Without a certificate: the TLS layer refuses the bytes, at most with an
            // alert, and never a Tessera frame.
            let mut s = tokio::net::TcpStream::connect(&node.addr)
                .await
                .expect("connect");
            s.write_all(a).await.expect("send");
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("server must drop a garbage connection")
                .unwrap_or(0);
            assert!(
                n == 0 || buf[0] == 0x15,
                "server answered garbage: {:?}",
                &buf[..n]
            );
            // With one (a client gone bad): the garbage reaches the frame decoder, and
            // the connection is dropped without an answer.
            let mut s = dial(&node.addr).await;
            s.write_all(a).await.expect("send");
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("server must drop a garbage connection")
                .unwrap_or(0);
            assert_eq!(n, 0, "server answered garbage");
        }
        // A truncated frame: half a header, then the client goes away.
        let mut s = dial(&node.addr).await;
        s.write_all(&h[..10]).await.expect("send");
        drop(s);
    }
    // A malformed request inside a valid frame gets a BadRequest reply, not a disconnect.
    let mut s = dial(&c.nodes[0].addr).await;
    let f = tessera_proto::frame::Frame::new(
        tessera_proto::frame::Kind::Read,
        5,
        Bytes::from_static(b"short"),
    );
    s.write_all(&f.to_bytes()).await.expect("send");
    let mut reader = tessera_net::FrameReader::new(s);
    let reply = reader.next().await.expect("reply").expect("a frame");
    assert_eq!(reply.request_id, 5);
    assert!(matches!(
        tessera_proto::data::Reply::decode(&reply.body),
        Ok(tessera_proto::data::Reply::BadRequest(_))
    ));

    // Everyone else kept being served.
    assert_eq!(
        vol.read(0, 4096).await.expect("read").as_ref(),
        &[7u8; 4096][..]
    );
    vol.write(4096, Bytes::from(vec![8u8; 4096]))
        .await
        .expect("write");
}

fn crc32c_of(b: &[u8]) -> u32 {
    // Same checksum as the frame header's, computed the slow way to stay independent.
    let mut crc = !0u32;
    for &x in b {
        crc ^= x as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_storage_node_on_a_locked_data_dir_is_refused() {
    let c = Cluster::start(Opts::default());
    c.wait_ready(3).await;
    let n = &c.nodes[0];
    let cfg = c.dir.path().join("dup.toml");
    std::fs::write(
        &cfg,
        format!(
            "rack = \"rack9\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\nmanagers = [\"{}\"]\n",
            n.data_dir.display(),
            common::free_port(),
            c.manager_addr()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(common::BIN)
        .args([
            "storage",
            "--insecure",
            "--config",
            cfg.to_str().expect("utf8"),
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked"), "stderr: {err}");
}

/// Fills the filesystem holding `dir` to its last byte with a file of its own, as another
/// tenant of the disk would.
fn fill_to_the_last_byte(dir: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).expect("filler");
    let block = vec![0x5au8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
}

fn log_segments(data_dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data_dir.join("log"))
        .expect("log dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    v.sort();
    v
}

/// Issue 12, "resource limits are conditions, not crashes". Storage nodes run on small
/// tmpfs mounts (needs root; CI is root). Client writes fill them until the nodes refuse
/// with DiskFull; then every allocating request (write, write-zeroes) is refused cleanly
/// and nothing else: reads, trims and deletes go on, no node stops. Another tenant then
/// takes the disks' last byte. Trimming one volume and deleting another still go through
/// the full nodes (their logs keep turning over) and free space, after which writes and
/// write-zeroes succeed again, and every acknowledged byte reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_cleanly_and_recovers_once_space_is_freed() {
    const FLOOR: u64 = 48_000_000;
    // Small log segments, so that a full disk soon leaves the logs without a free one.
    const SEGMENT: u64 = 64 << 10;
    let Some(disks) = TmpfsDisks::mount(3, "160m") else {
        eprintln!("SKIP: cannot mount tmpfs (not root?)");
        return;
    };
    let mounts = disks.mounts.clone();
    let mut c = Cluster::start(Opts {
        nodes: 0,
        ..Default::default()
    });
    disks.add_nodes(
        &mut c,
        &format!("min_free_bytes = {FLOOR}\nlog_segment_bytes = {SEGMENT}\n"),
    );
    c.wait_ready(3).await;
    let pattern = |i: u64| (i % 251) as u8 + 1;
    c.create_volume("scratch", "256MiB", "16MiB");
    c.create_volume("big", "1GiB", "16MiB");
    c.create_volume("viaNBD", "64MiB", "16MiB");
    let gateway = c.gateway();
    let (mut export, _, _) = Conn::open_export_name(gateway.addr(), "viaNBD")
        .await
        .expect("NBD handshake");
    export.set_patience(Some(Duration::from_secs(60)));
    let client = c.client().await;
    let scratch = client.open("scratch").await.expect("open scratch");
    for i in 0..64u64 {
        let data = Bytes::from(vec![pattern(i); MIB]);
        scratch
            .write(i * MIB as u64, data)
            .await
            .unwrap_or_else(|e| panic!("scratch write {i} with room to spare: {e}"));
    }
    let vol = client.open("big").await.expect("open");
    let mut acked = Vec::new();
    let mut full = None;
    for i in 0..400u64 {
        let data = Bytes::from(vec![pattern(i); MIB]);
        match vol.write(i * MIB as u64, data).await {
            Ok(()) => acked.push(i),
            Err(e) => {
                full = Some((i, e));
                break;
            }
        }
    }
    let (first_refused, err) =
        full.expect("the disks (160 MiB each) must fill before 464 MiB is written");
    assert!(
        matches!(err, ClientError::DiskFull(_)),
        "unexpected error: {err}"
    );
    assert!(
        acked.len() > 10,
        "only {} writes before the disk filled",
        acked.len()
    );

    // Another tenant takes the last byte: now even the logs cannot get a new file.
    for m in &mounts {
        fill_to_the_last_byte(m);
        assert!(free_bytes(m) < MIB as u64, "{} not full", m.display());
    }
    let segments_when_full: Vec<Vec<String>> =
        c.nodes.iter().map(|n| log_segments(&n.data_dir)).collect();

    // Whatever allocates is refused, cleanly and at once, however often it is asked.
    for i in first_refused..first_refused + 3 {
        let r = vol.write(i * MIB as u64, Bytes::from(vec![1u8; MIB])).await;
        assert!(matches!(r, Err(ClientError::DiskFull(_))), "write: {r:?}");
    }
    let zeroes_at = (first_refused + 100) * MIB as u64;
    let r = vol.write_zeroes(zeroes_at, MIB as u64).await;
    assert!(
        matches!(r, Err(ClientError::DiskFull(_))),
        "write-zeroes provisions space, so it must be refused on a full disk: {r:?}"
    );
    // Through the NBD gateway the same refusals are ENOSPC, what a kernel block device
    // reports as "No space left on device".
    {
        let block = vec![0xabu8; 4096];
        let e = export.write(0, &block).await.expect("NBD write");
        assert_eq!(e, ENOSPC, "NBD write on a full disk");
        let (zeroes, no_hole) = (CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE);
        let e = export.call(zeroes, no_hole, 4096, 4096).await.expect("NBD");
        assert_eq!(e, ENOSPC, "NBD write-zeroes (NO_HOLE) on a full disk");
        // Without NO_HOLE, write-zeroes may punch holes: it frees space, so it goes on.
        let e = export.call(zeroes, 0, 4096, 4096).await.expect("NBD");
        assert_eq!(e, 0, "NBD write-zeroes (holes allowed) on a full disk");
    }
    for (i, n) in c.nodes.iter_mut().enumerate() {
        let exited = n.child.as_mut().expect("running").try_wait().expect("wait");
        assert!(
            exited.is_none(),
            "node {i} stopped on a full disk: {exited:?}"
        );
    }
    for &i in &acked {
        let got = vol.read(i * MIB as u64, MIB as u64).await;
        let got = got.unwrap_or_else(|e| panic!("read of block {i} on a full disk: {e}"));
        assert!(got.iter().all(|&b| b == pattern(i)), "block {i} damaged");
    }

    // The logs keep turning over on disks full to the last byte: trims (which allocate
    // nothing) go through, and every segment each log had when the disks filled up is
    // recycled.
    let mut trims = 0u64;
    let turned = |c: &Cluster| {
        c.nodes.iter().zip(&segments_when_full).all(|(n, then)| {
            let now = log_segments(&n.data_dir);
            then.iter().all(|s| !now.contains(s))
        })
    };
    while !turned(&c) {
        let mut tasks = Vec::new();
        for k in 0..16u64 {
            let v = vol.clone();
            let at = ((trims + k) % 2048) * 4096;
            tasks.push(tokio::spawn(async move { v.discard(at, 4096).await }));
        }
        for t in tasks {
            t.await.expect("task").expect("trim on a full disk");
        }
        trims += 16;
        assert!(
            trims < 20_000,
            "the logs stopped recycling on full disks: segments {segments_when_full:?} when \
             full, {:?} now",
            c.nodes
                .iter()
                .map(|n| log_segments(&n.data_dir))
                .collect::<Vec<_>>()
        );
    }
    eprintln!(
        "every log turned over after {trims} trims on full disks; now {:?} bytes free",
        mounts.iter().map(|m| free_bytes(m)).collect::<Vec<_>>()
    );

    // Trimming and deleting allocate nothing: they go through and free space.
    let trimmed = 8u64.min(acked.len() as u64);
    vol.discard(0, trimmed * MIB as u64)
        .await
        .expect("trim on a full disk");
    scratch.close().await.expect("detach scratch");
    c.cli_ok(&["volume", "delete", "scratch"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while mounts
        .iter()
        .any(|m| free_bytes(m) < FLOOR + 8 * MIB as u64)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "deleting a volume freed no space: {:?} bytes free\n{}",
            mounts.iter().map(|m| free_bytes(m)).collect::<Vec<_>>(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Writes succeed again (once every leader has looked at its disk anew), and
    // write-zeroes too.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut next = first_refused;
    loop {
        let data = Bytes::from(vec![pattern(next); MIB]);
        match vol.write(next * MIB as u64, data).await {
            Ok(()) => break,
            Err(ClientError::DiskFull(m)) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "writes still refused after space was freed: {m}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("write after space was freed: {e}"),
        }
    }
    acked.push(next);
    for _ in 0..12 {
        next += 1;
        let data = Bytes::from(vec![pattern(next); MIB]);
        vol.write(next * MIB as u64, data)
            .await
            .unwrap_or_else(|e| panic!("write {next} after space was freed: {e}"));
        acked.push(next);
    }
    vol.write_zeroes(zeroes_at, MIB as u64)
        .await
        .expect("write-zeroes after space was freed");
    {
        let block = vec![0xabu8; 4096];
        let e = export.write(0, &block).await.expect("NBD write");
        assert_eq!(e, 0, "NBD write after space was freed");
        let got = export.read(0, 4096).await.expect("NBD read");
        assert_eq!(got.expect("NBD read failed"), block);
    }

    // Every acknowledged byte reads back; trimmed and zeroed ranges read as zeroes.
    for &i in &acked {
        let got = vol
            .read(i * MIB as u64, MIB as u64)
            .await
            .expect("read after the disk filled and emptied");
        let want = if i < trimmed { 0 } else { pattern(i) };
        if let Some(at) = got.iter().position(|&b| b != want) {
            let bad = got.iter().filter(|&&b| b != want).count();
            panic!(
                "block {i} damaged (first refused {first_refused}, trimmed {trimmed}): byte \
                 {at} is {:#x}, want {want:#x}; {bad} bytes differ",
                got[at]
            );
        }
    }
    let got = vol.read(zeroes_at, MIB as u64).await.expect("read zeroes");
    assert!(got.iter().all(|&b| b == 0), "write-zeroes range not zero");
    for (i, n) in c.nodes.iter_mut().enumerate() {
        let exited = n.child.as_mut().expect("running").try_wait().expect("wait");
        assert!(exited.is_none(), "node {i} stopped: {exited:?}");
    }
}

/// Files holding chunks of volume `id` on every node
/// (`<data>/groups/<group:016x>/<id:016x>/*.dat`).
fn chunk_files(c: &Cluster, id: u64) -> usize {
    let count = |dir: std::path::PathBuf| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "dat"))
                    .count()
            })
            .unwrap_or(0)
    };
    c.nodes
        .iter()
        .flat_map(|n| {
            std::fs::read_dir(n.data_dir.join("groups"))
                .into_iter()
                .flatten()
        })
        .filter_map(|g| g.ok())
        .map(|g| count(g.path().join(format!("{id:016x}"))))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_volume_frees_its_chunks_and_its_name() {
    let c = Cluster::start(Opts::default());
    c.wait_ready(3).await;
    c.create_volume("tmp", "8MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("tmp").await.expect("open");
    let id = vol.info().id;
    for chunk in 0..4u64 {
        vol.write(chunk * MIB as u64, Bytes::from(vec![0xee; 64 * 1024]))
            .await
            .expect("write");
    }
    // Every written chunk gets a file on each of its three replicas (followers apply once
    // they learn the commit index, a heartbeat later at most).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while chunk_files(&c, id) < 12 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} chunk files",
            chunk_files(&c, id)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(chunk_files(&c, id), 12);

    // Not under its writer: deleting an attached volume is refused, naming the holder.
    let refused = c.cli(&["volume", "delete", "tmp"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("attached read-write by"));
    vol.close().await.expect("detach");
    c.cli_ok(&["volume", "delete", "tmp"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while chunk_files(&c, id) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} chunk files of the deleted volume remain",
            chunk_files(&c, id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The name is free again, and the new volume (a new id) reads zeroes.
    c.create_volume("tmp", "8MiB", "1MiB");
    let again = client.open("tmp").await.expect("open the new volume");
    assert_ne!(again.info().id, id);
    assert!(
        again
            .read(0, 64 * 1024)
            .await
            .expect("read")
            .iter()
            .all(|&b| b == 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_reported_and_its_groups_degraded() {
    let mut c = Cluster::start(Opts::default());
    c.wait_ready(3).await;
    c.kill_node(2);
    let addr = c.nodes[2].addr.clone();
    // The manager marks a node suspect after 5 s without a heartbeat (its default).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.status().await.expect("status");
        let node = s
            .nodes
            .iter()
            .find(|n| n.addr == addr)
            .expect("the killed node");
        if node.state != "up" {
            let id = node.node_id;
            for g in &s.groups {
                for r in g.replicas.iter().filter(|r| r.node_id == id) {
                    assert_eq!(r.node_state, node.state);
                }
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node never left the up state"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = c.cli_ok(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("degraded"), "{text}");
    assert!(text.contains("suspect") || text.contains("down"), "{text}");
}
