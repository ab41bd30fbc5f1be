//! The NBD gateway against real clients: qemu-img / qemu-io, nbdinfo / nbdcopy, fio's nbd
//! engine, an ext4 image, and a hand-written client that breaks the protocol. Every test
//! runs a real cluster (one manager, three storage nodes) plus a `tessera nbd` process.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, said, tool};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tessera_nbd::testing::{
    CMD_DISC, CMD_FLAG_NO_HOLE, CMD_FLUSH, CMD_READ, CMD_WRITE, CMD_WRITE_ZEROES, Conn, EINVAL,
    ENOSPC, EPERM, FLAG_C_FIXED_NEWSTYLE, IHAVEOPT, OPT_EXPORT_NAME,
};

const MIB: u64 = 1 << 20;
/// How long a hand-made NBD connection waits for the gateway.
const PATIENCE: Duration = Duration::from_secs(20);

/// `Cluster::start` with three storage nodes, ready (see [`Cluster::start_ready`]).
async fn start_cluster() -> Cluster {
    Cluster::start_ready(Opts::default()).await
}

fn run_ok(prog: &str, args: &[&str]) -> Output {
    let o = tool(prog, args);
    assert!(o.status.success(), "{prog} {args:?} failed: {}", said(&o));
    o
}

/// Runs qemu-io with the given commands; success means exit 0 and no failure message.
fn qemu_io(uri: &str, cmds: &[String]) -> Result<String, String> {
    let mut args = vec!["-f".to_string(), "raw".to_string(), uri.to_string()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = tool("qemu-io", &args);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if o.status.success()
        && !out.contains("Pattern verification failed")
        && !out.contains("failed")
        && !out.contains("rror")
    {
        Ok(out)
    } else {
        Err(format!("qemu-io {cmds:?}: status {:?}\n{out}", o.status))
    }
}

// --- qemu-img / qemu-io --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_and_qemu_io_see_the_volume_and_survive_a_restart() {
    let mut c = start_cluster().await;
    c.create_volume("vol0", "64MiB", "1MiB");
    let mut gw = c.gateway();
    let uri = gw.uri("vol0");

    let info = run_ok("qemu-img", &["info", "--output=json", &uri]);
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 64 * MIB)),
        "qemu-img info: {info}"
    );

    // (pattern, offset, length): aligned, unaligned, across 1 MiB chunk boundaries, the
    // last bytes of the volume.
    let writes: &[(u8, u64, u64)] = &[
        (0xab, 0, 64 << 10),
        (0xcd, 1_048_000, 8 << 10),
        (0x11, 3_000_001, 777),
        (0x22, 5 * MIB - 100, 200),
        (0x33, 7 * MIB - 3, 2 * MIB + 7),
        (0x44, 64 * MIB - 4096, 4096),
        (0x55, 40 * MIB + 513, 1),
    ];
    let write_cmds: Vec<String> = writes
        .iter()
        .map(|(p, o, l)| format!("write -P {p:#x} {o} {l}"))
        .collect();
    let mut read_cmds: Vec<String> = writes
        .iter()
        .map(|(p, o, l)| format!("read -P {p:#x} {o} {l}"))
        .collect();
    // Never-written space reads as zeroes, including right next to written bytes.
    read_cmds.push(format!("read -P 0 {} {}", 64 << 10, 1_048_000 - (64 << 10)));
    read_cmds.push(format!("read -P 0 {} 3", 3_000_001 - 3));
    read_cmds.push(format!("read -P 0 {} 4096", 20 * MIB));

    let out = qemu_io(&uri, &write_cmds).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("wrote"), "{out}");
    qemu_io(&uri, &read_cmds).unwrap_or_else(|e| panic!("before restart: {e}"));

    // Power-cut every storage node and the gateway, bring them back.
    for i in 0..3 {
        c.kill_node(i);
    }
    gw.kill();
    for i in 0..3 {
        c.restart_node(i);
    }
    c.wait_ready(3).await;
    gw.restart();
    let uri = gw.uri("vol0");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match qemu_io(&uri, &read_cmds) {
            Ok(_) => break,
            Err(e) if e.contains("Pattern verification failed") => {
                panic!("data changed across the restart: {e}")
            }
            Err(e) => {
                if Instant::now() > deadline {
                    panic!(
                        "reads still failing 60s after the restart: {e}\n{}",
                        c.logs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

// --- nbdinfo / nbdcopy ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_lists_volumes_and_nbdcopy_round_trips_256_mib() {
    let c = start_cluster().await;
    c.create_volume("alpha", "16MiB", "1MiB");
    c.create_volume("bulk", "256MiB", "4MiB");
    let gw = c.gateway();

    let list = run_ok(
        "nbdinfo",
        &["--list", &format!("nbd://127.0.0.1:{}", gw.port)],
    );
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        list.contains("alpha") && list.contains("bulk"),
        "nbdinfo --list: {list}"
    );
    let size = run_ok("nbdinfo", &["--size", &gw.uri("bulk")]);
    assert_eq!(
        String::from_utf8_lossy(&size.stdout).trim(),
        (256 * MIB).to_string()
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src.bin");
    let dst = tmp.path().join("dst.bin");
    write_random_file(&src, 256 * MIB, 0x7e55_e4a0);

    let started = Instant::now();
    run_ok("nbdcopy", &[src.to_str().unwrap(), &gw.uri("bulk")]);
    eprintln!("nbdcopy in: {:?}", started.elapsed());
    let started = Instant::now();
    run_ok("nbdcopy", &[&gw.uri("bulk"), dst.to_str().unwrap()]);
    eprintln!("nbdcopy out: {:?}", started.elapsed());
    assert_files_equal(&src, &dst);
}

fn write_random_file(path: &Path, len: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        // ChaCha is slow in a debug build: it seeds each MiB, xorshift fills it.
        let mut x = rng.next_u64() | 1;
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    f.flush().expect("flush");
}

fn assert_files_equal(a: &Path, b: &Path) {
    let mut fa = std::io::BufReader::new(std::fs::File::open(a).expect("open"));
    let mut fb = std::io::BufReader::new(std::fs::File::open(b).expect("open"));
    let (la, lb) = (
        std::fs::metadata(a).unwrap().len(),
        std::fs::metadata(b).unwrap().len(),
    );
    assert_eq!(la, lb, "{} and {} differ in size", a.display(), b.display());
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    let mut off = 0u64;
    while off < la {
        let n = (la - off).min(MIB) as usize;
        fa.read_exact(&mut ba[..n]).expect("read");
        fb.read_exact(&mut bb[..n]).expect("read");
        if ba[..n] != bb[..n] {
            let i = ba.iter().zip(&bb).position(|(x, y)| x != y).unwrap_or(0);
            panic!(
                "byte {} differs: {:#x} vs {:#x}",
                off + i as u64,
                ba[i],
                bb[i]
            );
        }
        off += n as u64;
    }
}

// --- fio -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_verify_over_two_connections_has_no_errors() {
    let help = tool("fio", &["--enghelp=nbd"]);
    assert!(
        help.status.success() && String::from_utf8_lossy(&help.stdout).contains("uri"),
        "fio lacks the nbd engine: {}",
        said(&help)
    );
    let c = start_cluster().await;
    c.create_volume("fio", "64MiB", "1MiB");
    let gw = c.gateway();

    // Two jobs, each its own NBD connection, each verifying its own 16 MiB region.
    let uri = format!("--uri={}", gw.uri("fio"));
    let o = tool(
        "fio",
        &[
            "--name=nbdmc",
            "--ioengine=nbd",
            &uri,
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--numjobs=2",
            "--size=16m",
            "--offset_increment=16m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--group_reporting",
            "--output-format=normal",
        ],
    );
    let out = said(&o);
    assert!(o.status.success(), "fio failed: {out}");
    assert!(out.contains("err= 0"), "fio reported errors: {out}");
    for bad in [
        "verify failed",
        "bad magic",
        "bad header",
        "mismatch",
        "error",
    ] {
        assert!(!out.contains(bad), "fio reported {bad:?}: {out}");
    }
    // Two connections, each writing and then reading back every 4 KiB block of its region.
    assert_eq!(out.matches("connected to NBD server").count(), 2, "{out}");
    assert!(
        out.contains("issued rwts: total=8192,8192,"),
        "fio did not write and verify every block: {out}"
    );
}

// --- ext4 ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ext4_image_survives_a_round_trip() {
    let c = start_cluster().await;
    c.create_volume("fs", "64MiB", "1MiB");
    let gw = c.gateway();

    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let mut rng = StdRng::seed_from_u64(0xe47);
    let files: Vec<(String, usize)> = vec![
        ("empty".into(), 0),
        ("tiny.bin".into(), 13),
        ("page.bin".into(), 4096),
        ("odd.bin".into(), 123_457),
        ("big.bin".into(), 5 * MIB as usize + 77),
    ];
    let mut contents = Vec::new();
    for (name, len) in &files {
        let mut data = vec![0u8; *len];
        rng.fill_bytes(&mut data);
        std::fs::write(tree.join(name), &data).unwrap();
        contents.push(data);
    }
    let image = tmp.path().join("image.img");
    let out = tmp.path().join("out.img");
    run_ok(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            tree.to_str().unwrap(),
            image.to_str().unwrap(),
            "64M",
        ],
    );
    run_ok("nbdcopy", &[image.to_str().unwrap(), &gw.uri("fs")]);
    run_ok("nbdcopy", &[&gw.uri("fs"), out.to_str().unwrap()]);
    assert_files_equal(&image, &out);

    run_ok("e2fsck", &["-fn", out.to_str().unwrap()]);
    let ls = run_ok("debugfs", &["-R", "ls -l /", out.to_str().unwrap()]);
    let ls = String::from_utf8_lossy(&ls.stdout).to_string();
    for ((name, _), data) in files.iter().zip(&contents) {
        assert!(ls.contains(name.as_str()), "{name} missing from: {ls}");
        let cat = run_ok(
            "debugfs",
            &["-R", &format!("cat /{name}"), out.to_str().unwrap()],
        );
        assert!(cat.stdout == *data, "/{name} differs after the round trip");
    }
}

// --- protocol abuse ------------------------------------------------------------------------

/// Handshake up to transmission with NBD_OPT_EXPORT_NAME; returns the export size.
async fn open_export(port: u16, name: &str) -> (Conn, u64) {
    let (mut c, size, _) = Conn::open_export_name(("127.0.0.1", port), name)
        .await
        .expect("NBD handshake");
    c.set_patience(Some(PATIENCE));
    (c, size)
}

/// Connects and reads the greeting, with this file's patience.
async fn greet(port: u16) -> Conn {
    let mut c = Conn::greet(("127.0.0.1", port)).await.expect("greeting");
    c.set_patience(Some(PATIENCE));
    c
}

/// The error of the simple reply to `handle`, or `None` if the server hung up instead; a
/// reply that breaks the protocol fails the test.
async fn reply_or_hang_up(s: &mut Conn, handle: u64) -> Option<u32> {
    match s.reply(handle).await {
        Ok(e) => Some(e),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => panic!("{e}"),
        Err(_) => None,
    }
}

async fn read_ok(s: &mut Conn, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    s.request(CMD_READ, 0, handle, offset, len, &[])
        .await
        .expect("read request");
    assert_eq!(s.reply(handle).await.expect("read reply"), 0, "read failed");
    s.read_exact(len as usize).await.expect("read data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_abuse_gets_errors_and_other_clients_keep_working() {
    let c = start_cluster().await;
    c.create_volume("vol", "16MiB", "1MiB");
    let gw = c.gateway();
    let port = gw.port;
    let uri = gw.uri("vol");

    // A well-behaved client keeps writing and verifying while the abuse goes on.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let healthy = {
        let (stop, done, uri) = (stop.clone(), done.clone(), uri.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u32;
            let mut after_stop = 0;
            loop {
                if stop.load(Ordering::SeqCst) {
                    after_stop += 1;
                    if after_stop > 2 {
                        break;
                    }
                }
                let p = 0x10 + (rounds % 0xe0) as u8;
                let off = 8 * MIB + (rounds as u64 % 7) * 300_001;
                let cmds = [
                    format!("write -P {p:#x} {off} 1000000"),
                    format!("read -P {p:#x} {off} 1000000"),
                ];
                qemu_io(&uri, &cmds).map_err(|e| format!("round {rounds}: {e}"))?;
                rounds += 1;
                done.store(rounds, Ordering::SeqCst);
            }
            Ok::<u32, String>(rounds)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::SeqCst) == 0 && !healthy.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the healthy client made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..3 {
        abuse(port).await;
    }
    let during = done.load(Ordering::SeqCst);

    stop.store(true, Ordering::SeqCst);
    let rounds = healthy
        .join()
        .expect("healthy client thread")
        .unwrap_or_else(|e| panic!("the healthy client failed during the abuse: {e}"));
    eprintln!("healthy client: {during} rounds before the abuse ended, {rounds} in all");

    // The gateway still serves new clients, and the torn writes left nothing behind.
    let out = qemu_io(&uri, &["read -P 0 0 4096".to_string()]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("read"), "{out}");
    let (mut s, _) = open_export(port, "vol").await;
    assert_eq!(read_ok(&mut s, 13, 4096, 5).await, b"hello");
}

async fn abuse(port: u16) {
    // 1. Unknown client flags: the server hangs up.
    let mut s = greet(port).await;
    s.send(&0xdead_beefu32.to_be_bytes()).await.unwrap();
    let _ = s.option(OPT_EXPORT_NAME, b"vol").await;
    s.expect_eof()
        .await
        .expect("server kept a client with bad flags");

    // 2. A bad option magic: the server hangs up.
    let mut s = greet(port).await;
    s.send(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes()).await.unwrap();
    let mut bad = 0x1122_3344_5566_7788u64.to_be_bytes().to_vec();
    bad.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    bad.extend_from_slice(&3u32.to_be_bytes());
    bad.extend_from_slice(b"vol");
    s.send(&bad).await.unwrap();
    s.expect_eof()
        .await
        .expect("server kept a client with a bad option magic");

    // 3. An absurd option length: the server hangs up rather than buffer it.
    let mut s = greet(port).await;
    s.send(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes()).await.unwrap();
    let mut huge = IHAVEOPT.to_be_bytes().to_vec();
    huge.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    s.send(&huge).await.unwrap();
    s.expect_eof()
        .await
        .expect("server waited for a 4 GiB option");

    // 4. A proper handshake, then bad requests on the same connection.
    let (mut s, size) = open_export(port, "vol").await;
    assert_eq!(size, 16 * MIB);
    s.request(CMD_WRITE, 0, 1, 4096, 5, b"hello").await.unwrap();
    assert_eq!(s.reply(1).await.expect("write reply"), 0);
    assert_eq!(read_ok(&mut s, 2, 4096, 5).await, b"hello");

    // An oversized READ (64 MiB > the 32 MiB maximum payload): EINVAL, or a hang-up.
    s.request(CMD_READ, 0, 3, 0, 64 << 20, &[]).await.unwrap();
    match reply_or_hang_up(&mut s, 3).await {
        Some(e) => assert_eq!(e, EINVAL, "oversized read"),
        None => {
            eprintln!("server hung up on an oversized read; reconnecting");
            s = open_export(port, "vol").await.0;
        }
    }
    // A READ past the end, and one overflowing u64: EINVAL.
    s.request(CMD_READ, 0, 4, size - 511, 512, &[])
        .await
        .unwrap();
    assert_eq!(
        s.reply(4).await.expect("reply"),
        EINVAL,
        "read past the end"
    );
    s.request(CMD_READ, 0, 5, u64::MAX - 1, 2, &[])
        .await
        .unwrap();
    assert_eq!(s.reply(5).await.expect("reply"), EINVAL, "read at u64::MAX");
    // A WRITE past the end: ENOSPC, with its payload consumed.
    s.request(CMD_WRITE, 0, 6, size - 4, 8, b"12345678")
        .await
        .unwrap();
    assert_eq!(
        s.reply(6).await.expect("reply"),
        ENOSPC,
        "write past the end"
    );
    // An unknown command: EINVAL.
    s.request(99, 0, 7, 0, 512, &[]).await.unwrap();
    assert_eq!(s.reply(7).await.expect("reply"), EINVAL, "command 99");
    // The connection still works, and the rejected write changed nothing.
    assert_eq!(read_ok(&mut s, 8, 4096, 5).await, b"hello");
    assert_eq!(read_ok(&mut s, 9, size - 4, 4).await, [0u8; 4]);
    s.request(CMD_DISC, 0, 10, 0, 0, &[]).await.unwrap();
    s.expect_eof().await.expect("server ignored NBD_CMD_DISC");

    // 5. A WRITE announcing more than the maximum payload: EINVAL and/or a hang-up, never
    //    an attempt to buffer it.
    let (mut s, _) = open_export(port, "vol").await;
    s.request(CMD_WRITE, 0, 11, 0, 64 << 20, &[]).await.unwrap();
    if let Some(e) = reply_or_hang_up(&mut s, 11).await {
        assert_eq!(e, EINVAL, "oversized write");
    }
    s.expect_eof()
        .await
        .expect("server kept a connection after an oversized write");

    // 6. A connection that dies half-way through a write payload.
    let (mut s, _) = open_export(port, "vol").await;
    s.request(CMD_WRITE, 0, 12, 0, 1 << 20, &[0x5a; 1000])
        .await
        .unwrap();
    drop(s);
}

/// Bytes allocated on each node's disk for the chunk files of volume `id`.
fn allocated_per_node(c: &Cluster, id: u64) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    c.nodes
        .iter()
        .map(|n| {
            let groups = std::fs::read_dir(n.data_dir.join("groups"))
                .into_iter()
                .flatten();
            groups
                .filter_map(|g| g.ok())
                .filter_map(|g| std::fs::read_dir(g.path().join(format!("{id:016x}"))).ok())
                .flatten()
                .filter_map(|f| f.ok())
                .filter(|f| f.path().extension().is_some_and(|x| x == "dat"))
                .filter_map(|f| f.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_zeroes_with_no_hole_provisions_every_replica_and_without_frees() {
    let c = start_cluster().await;
    c.create_volume("thin", "8MiB", "1MiB");
    let id = c
        .client()
        .await
        .open_read_only("thin")
        .await
        .unwrap()
        .info()
        .id;
    let gw = c.gateway();
    let (mut s, _) = open_export(gw.port, "thin").await;
    let eventually = |what: &str, ok: &dyn Fn(&[u64]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = allocated_per_node(&c, id);
            if ok(&got) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: allocated per node {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // Chunks 2 and 3 were never written: NO_HOLE maps them and allocates their space on
    // all three replicas (the write is answered once a majority has it; the third follows).
    s.request(
        CMD_WRITE_ZEROES,
        CMD_FLAG_NO_HOLE,
        1,
        2 * MIB,
        2 * MIB as u32,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(s.reply(1).await.unwrap(), 0);
    eventually("provisioned", &|a| {
        a.len() == 3 && a.iter().all(|&n| n >= 2 * MIB)
    });
    assert_eq!(
        read_ok(&mut s, 2, 2 * MIB, 2 * MIB as u32).await,
        vec![0u8; 2 * MIB as usize]
    );

    // Without the flag the range may become a hole, and here it does, everywhere.
    s.request(CMD_WRITE_ZEROES, 0, 3, 2 * MIB, 2 * MIB as u32, &[])
        .await
        .unwrap();
    assert_eq!(s.reply(3).await.unwrap(), 0);
    eventually("punched", &|a| a.iter().all(|&n| n < 64 * 1024));
    assert_eq!(
        read_ok(&mut s, 4, 2 * MIB, 2 * MIB as u32).await,
        vec![0u8; 2 * MIB as usize]
    );
}

/// NBD_FLAG_CAN_MULTI_CONN promises that a write one connection has seen completed (and
/// flushed) is what every other connection to the export reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_one_export_see_each_others_writes() {
    let c = start_cluster().await;
    c.create_volume("shared", "8MiB", "1MiB");
    let gw = c.gateway();
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(open_export(gw.port, "shared").await.0);
    }
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..60u64 {
        let writer = (round % 3) as usize;
        let offset = (rng.next_u64() % (8 * MIB / 512 - 16)) * 512;
        let mut data = vec![0u8; 4096 + 512 * (round as usize % 5)];
        rng.fill_bytes(&mut data);
        let h = round * 10;
        let w = &mut conns[writer];
        w.request(CMD_WRITE, 0, h, offset, data.len() as u32, &data)
            .await
            .unwrap();
        assert_eq!(w.reply(h).await.unwrap(), 0, "write {round}");
        w.request(CMD_FLUSH, 0, h + 1, 0, 0, &[]).await.unwrap();
        assert_eq!(w.reply(h + 1).await.unwrap(), 0, "flush {round}");
        for (i, conn) in conns.iter_mut().enumerate() {
            let got = read_ok(conn, h + 2 + i as u64, offset, data.len() as u32).await;
            assert!(
                got == data,
                "round {round}: connection {i} misses connection {writer}'s write"
            );
        }
    }
}

// --- one writer per volume ------------------------------------------------------------------

/// qemu-io kept open on an export (one NBD connection for its whole life), fed commands on
/// its standard input.
struct QemuIo {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl QemuIo {
    fn open(uri: &str) -> QemuIo {
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-io");
        let (tx, lines) = std::sync::mpsc::channel();
        let out: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for r in out {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for l in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        let stdin = child.stdin.take().expect("stdin");
        QemuIo {
            child,
            stdin,
            lines,
        }
    }

    /// Sends one command; returns the first line of its outcome.
    fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").expect("qemu-io stdin");
        self.stdin.flush().expect("qemu-io stdin");
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("qemu-io: no outcome for {c:?}"));
            if ["wrote ", "read ", "failed", "rror", "not permitted"]
                .iter()
                .any(|k| l.contains(k))
            {
                return l;
            }
        }
    }

    /// Sends commands without waiting for their outcomes (`aio_write`s in flight).
    fn send(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").expect("qemu-io stdin");
        self.stdin.flush().expect("qemu-io stdin");
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two gateways, one volume, qemu-io on both sides. While gateway A serves a qemu-io,
/// gateway B's qemu-io is refused with a message naming A; `volume info` shows the
/// attachment; a plain detach is refused while A's lease runs, `detach --force` ends it;
/// then B writes, and A's qemu-io (still connected) gets EPERM for its writes, which never
/// land. Then A is killed with writes in flight: B is refused until A's lease runs out,
/// then attaches by itself, and none of A's writes lands after B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_has_one_writer_across_gateways() {
    let c = start_cluster().await;
    c.create_volume("shared", "16MiB", "1MiB");
    let mut a = c.gateway();
    let b = c.gateway();

    let mut on_a = QemuIo::open(&a.uri("shared"));
    let out = on_a.cmd("write -P 0xaa 0 4096");
    assert!(out.contains("wrote"), "A: {out}");

    // Readers need no attachment: a read-only gateway serves the volume meanwhile, and
    // refuses writes.
    let r = c.read_only_gateway();
    let o = run_ok(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            &r.uri("shared"),
            "-c",
            "read -P 0xaa 0 4096",
        ],
    );
    assert!(
        !said(&o).contains("failed"),
        "read-only gateway: {}",
        said(&o)
    );
    let (mut ro, _) = open_export(r.port, "shared").await;
    ro.request(CMD_WRITE, 0, 1, 0, 4096, &[0xcc; 4096])
        .await
        .unwrap();
    assert_eq!(
        ro.reply(1).await.unwrap(),
        EPERM,
        "a read-only gateway wrote"
    );
    drop(ro);

    let refused = qemu_io(&b.uri("shared"), &["write -P 0xbb 0 4096".into()])
        .expect_err("a second gateway wrote a volume another one holds");
    assert!(
        refused.contains(&format!("nbd gateway 127.0.0.1:{}", a.port)),
        "the refusal does not name the holder: {refused}"
    );
    let info = String::from_utf8_lossy(&c.cli_ok(&["volume", "info", "shared"]).stdout).to_string();
    assert!(
        info.contains("attached read-write by nbd gateway"),
        "volume info: {info}"
    );
    let plain = c.cli(&["volume", "detach", "shared"]);
    assert!(!plain.status.success(), "a plain detach ended a live lease");

    c.cli_ok(&["volume", "detach", "shared", "--force"]);
    qemu_io(
        &b.uri("shared"),
        &["write -P 0xbb 0 4096".into(), "read -P 0xbb 0 4096".into()],
    )
    .unwrap_or_else(|e| panic!("after the forced detach, B: {e}"));
    // A's qemu-io is still connected: its writes are refused and never land.
    for off in [0, 8192] {
        let out = on_a.cmd(&format!("write -P 0xcc {off} 4096"));
        assert!(
            out.contains("Operation not permitted"),
            "A after the detach: {out}"
        );
    }
    qemu_io(
        &b.uri("shared"),
        &["read -P 0xbb 0 4096".into(), "read -P 0 8192 4096".into()],
    )
    .unwrap_or_else(|e| panic!("the fenced gateway's writes landed: {e}"));
    drop(on_a);

    // A holds the volume again, and dies with writes in flight: nobody detaches, the lease
    // runs out, and B's next client attaches (and fences) by itself.
    let blocks = 64u64;
    let mut on_a = QemuIo::open(&a.uri("shared"));
    let out = on_a.cmd("write -P 0xd0 0 4096");
    assert!(out.contains("wrote"), "A again: {out}");
    for blk in 0..blocks {
        on_a.send(&format!("aio_write -P 0xd1 {} 4096", blk * 4096));
    }
    let killed = Instant::now();
    a.kill();
    let mut took = None;
    while took.is_none() && killed.elapsed() < Duration::from_secs(40) {
        match qemu_io(
            &b.uri("shared"),
            &[format!("write -P 0xee 0 {}", blocks * 4096)],
        ) {
            Ok(_) => took = Some(killed.elapsed()),
            Err(e) => {
                assert!(e.contains("nbd gateway"), "refused for another reason: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    let took = took.expect("B never attached after A died");
    eprintln!("B attached {took:?} after A was killed");
    // Past every deadline A's requests could still have had: B's data, everywhere.
    std::thread::sleep(Duration::from_secs(11));
    qemu_io(
        &b.uri("shared"),
        &[format!("read -P 0xee 0 {}", blocks * 4096)],
    )
    .unwrap_or_else(|e| panic!("a killed gateway's write landed after the next one's: {e}"));
}
