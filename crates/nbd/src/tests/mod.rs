//! Server tests over real TCP on 127.0.0.1 against the in-memory backend: each test
//! names the promise it checks. `qemu_io_*` runs the real qemu client when installed.

mod block_status;
mod mem;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::NbdServer;
use crate::consts::*;
use crate::testing::Conn;
use mem::{MemBackend, SLOW_READ};

const MIB: u64 = 1024 * 1024;

struct Running {
    addr: SocketAddr,
    backend: Arc<MemBackend>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn start() -> Running {
    let backend = MemBackend::new(&[("vol0", 4 * MIB), ("vol1", MIB), ("data", 2 * MIB)]);
    let server = NbdServer::bind("127.0.0.1:0", backend.clone())
        .await
        .unwrap();
    run(server, backend)
}

/// Runs `server` (over `backend`) until the returned handle's `stop` is sent.
fn run(server: NbdServer<MemBackend>, backend: Arc<MemBackend>) -> Running {
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        backend,
        stop: Some(stop),
        task,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn go_then_every_command_round_trips_over_simple_replies() {
    let s = start().await;
    let mut c = Conn::connect(s.addr).await.unwrap();
    let replies = c
        .go(OPT_GO, "vol0", &[INFO_BLOCK_SIZE, INFO_NAME, 999])
        .await
        .unwrap();
    let kinds: Vec<u32> = replies.iter().map(|r| r.0).collect();
    assert_eq!(kinds, [REP_INFO, REP_INFO, REP_INFO, REP_ACK]);
    let export = &replies[0].1;
    assert_eq!(export[..2], INFO_EXPORT.to_be_bytes());
    assert_eq!(export[2..10], (4 * MIB).to_be_bytes());
    let flags = u16::from_be_bytes([export[10], export[11]]);
    let expected = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_TRIM
        | FLAG_SEND_WRITE_ZEROES
        | FLAG_CAN_MULTI_CONN;
    assert_eq!(flags, expected, "no DF without structured replies");
    let mut block = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [1u32, 4096, 32 << 20] {
        block.extend_from_slice(&v.to_be_bytes());
    }
    assert_eq!(replies[1].1, block);
    assert_eq!(
        replies[2].1,
        [&INFO_NAME.to_be_bytes()[..], b"vol0"].concat()
    );

    let data = pattern(8192, 7);
    assert_eq!(c.write(4096, &data).await.unwrap(), 0);
    assert_eq!(c.read(4096, 8192).await.unwrap().unwrap(), data);
    assert_eq!(s.backend.volume("vol0").bytes(4096, 8192), data);
    // Unaligned access works at byte granularity.
    assert_eq!(c.read(4097, 3).await.unwrap().unwrap(), data[1..4]);

    assert_eq!(
        c.call(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 4096, 100)
            .await
            .unwrap(),
        0
    );
    let after = c.read(4096, 8192).await.unwrap().unwrap();
    assert!(after[..100].iter().all(|&b| b == 0));
    assert_eq!(after[100..], data[100..]);
    // Without NO_HOLE the store may punch a hole; with it, it must not.
    assert_eq!(c.call(CMD_WRITE_ZEROES, 0, 8192, 4096).await.unwrap(), 0);
    assert_eq!(
        *s.backend.volume("vol0").punched.lock().unwrap(),
        [false, true]
    );
    assert_eq!(c.read(8192, 4096).await.unwrap().unwrap(), vec![0u8; 4096]);

    assert_eq!(c.call(CMD_TRIM, 0, 8192, 4096).await.unwrap(), 0);
    assert_eq!(c.call(CMD_FLUSH, CMD_FLAG_FUA, 0, 0).await.unwrap(), 0);
    c.request(CMD_WRITE, CMD_FLAG_FUA, 9, 0, 3, b"abc")
        .await
        .unwrap();
    assert_eq!(c.simple_reply().await.unwrap(), (0, 9));
    // Zero-length requests are valid, even at the very end.
    assert_eq!(c.read(4 * MIB, 0).await.unwrap().unwrap(), Vec::<u8>::new());
    assert_eq!(c.write(4 * MIB, &[]).await.unwrap(), 0);

    c.request(CMD_DISC, 0, 0, 0, 0, &[]).await.unwrap();
    c.expect_eof().await.unwrap();
}

#[tokio::test]
async fn structured_reads_use_one_data_chunk_and_errors_use_error_chunks() {
    let s = start().await;
    let (mut c, size, flags) = Conn::open(s.addr, "vol1", true).await.unwrap();
    assert_eq!(size, MIB);
    assert_ne!(flags & FLAG_SEND_DF, 0);
    let data = pattern(65536, 3);
    assert_eq!(c.write(0, &data).await.unwrap(), 0);

    c.request(CMD_READ, CMD_FLAG_DF, 11, 512, 4096, &[])
        .await
        .unwrap();
    let chunk = c.chunk().await.unwrap();
    assert_eq!(
        (chunk.flags, chunk.kind, chunk.handle),
        (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 11)
    );
    assert_eq!(chunk.payload[..8], 512u64.to_be_bytes());
    assert_eq!(chunk.payload[8..], data[512..4608]);

    c.request(CMD_READ, 0, 12, MIB - 10, 20, &[]).await.unwrap();
    let chunk = c.chunk().await.unwrap();
    assert_eq!(
        (chunk.flags, chunk.kind, chunk.handle),
        (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 12)
    );
    assert_eq!(chunk.payload[..4], EINVAL.to_be_bytes());
    let msg_len = usize::from(u16::from_be_bytes([chunk.payload[4], chunk.payload[5]]));
    assert_eq!(chunk.payload.len(), 6 + msg_len);
    assert!(String::from_utf8_lossy(&chunk.payload[6..]).contains("past the end"));

    c.request(CMD_READ, 0, 13, 0, 0, &[]).await.unwrap();
    let chunk = c.chunk().await.unwrap();
    assert_eq!(
        (chunk.flags, chunk.kind, chunk.payload.len()),
        (REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0)
    );

    // Other commands: success is a simple reply, failure an error chunk.
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0).await.unwrap(), 0);
    c.request(CMD_WRITE, 0, 14, MIB, 1, b"x").await.unwrap();
    let chunk = c.chunk().await.unwrap();
    assert_eq!((chunk.kind, chunk.handle), (REPLY_TYPE_ERROR, 14));
    assert_eq!(chunk.payload[..4], ENOSPC.to_be_bytes());
}

#[tokio::test]
async fn export_name_option_sends_zero_padding_unless_the_client_declined_it() {
    let s = start().await;
    for no_zeroes in [false, true] {
        let mut c = Conn::greet(s.addr).await.unwrap();
        let flags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
        c.send(&flags.to_be_bytes()).await.unwrap();
        c.option(OPT_EXPORT_NAME, b"data").await.unwrap();
        let reply = c.read_exact(10).await.unwrap();
        assert_eq!(reply[..8], (2 * MIB).to_be_bytes());
        assert_eq!(
            u16::from_be_bytes([reply[8], reply[9]]) & FLAG_HAS_FLAGS,
            FLAG_HAS_FLAGS
        );
        if !no_zeroes {
            assert_eq!(c.read_exact(124).await.unwrap(), vec![0; 124]);
        }
        assert_eq!(c.write(0, b"hello").await.unwrap(), 0);
        assert_eq!(c.read(0, 5).await.unwrap().unwrap(), b"hello");
    }
}

#[tokio::test]
async fn options_are_answered_and_the_empty_name_selects_the_first_volume() {
    let s = start().await;
    let mut c = Conn::connect(s.addr).await.unwrap();

    c.option(OPT_LIST, &[]).await.unwrap();
    let mut names = Vec::new();
    loop {
        let (opt, kind, data) = c.option_reply().await.unwrap();
        assert_eq!(opt, OPT_LIST);
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_SERVER);
        let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        names.push(String::from_utf8(data[4..4 + len].to_vec()).unwrap());
    }
    assert_eq!(names, ["data", "vol0", "vol1"]);

    // An export another gateway writes: NBD_OPT_INFO still describes it, NBD_OPT_GO is
    // refused by policy with a message naming the writer, and the connection carries on.
    s.backend.busy.lock().unwrap().push("vol1".into());
    let replies = c.go(OPT_INFO, "vol1", &[]).await.unwrap();
    assert_eq!(replies.last().unwrap().0, REP_ACK);
    let replies = c.go(OPT_GO, "vol1", &[]).await.unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, REP_ERR_POLICY);
    assert!(String::from_utf8_lossy(&replies[0].1).contains("gateway-a"));
    s.backend.busy.lock().unwrap().clear();

    c.option(OPT_LIST, b"junk").await.unwrap();
    assert_eq!(c.option_reply().await.unwrap().1, REP_ERR_INVALID);
    let replies = c.go(OPT_INFO, "nope", &[]).await.unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&replies[0].1).contains("nope"));
    // NBD_OPT_INFO describes an export without entering transmission.
    let replies = c.go(OPT_INFO, "vol1", &[]).await.unwrap();
    assert_eq!(replies.last().unwrap().0, REP_ACK);
    for opt in [OPT_STARTTLS, OPT_EXTENDED_HEADERS, 4242] {
        c.option(opt, &[0; 9]).await.unwrap();
        let (o, kind, _) = c.option_reply().await.unwrap();
        assert_eq!((o, kind), (opt, REP_ERR_UNSUP));
    }
    c.option(OPT_GO, &[0, 0, 0, 9, b'x']).await.unwrap();
    assert_eq!(c.option_reply().await.unwrap().1, REP_ERR_INVALID);

    let replies = c.go(OPT_GO, "", &[INFO_NAME]).await.unwrap();
    assert_eq!(
        replies[1].1,
        [&INFO_NAME.to_be_bytes()[..], b"data"].concat()
    );
    assert_eq!(replies.last().unwrap().0, REP_ACK);
    assert_eq!(c.read(0, 4).await.unwrap().unwrap(), vec![0; 4]);

    let mut c = Conn::connect(s.addr).await.unwrap();
    c.option(OPT_ABORT, &[]).await.unwrap();
    assert_eq!(c.option_reply().await.unwrap().1, REP_ACK);
    c.expect_eof().await.unwrap();
}

#[tokio::test]
async fn malformed_handshakes_are_disconnected() {
    let s = start().await;

    let mut c = Conn::greet(s.addr).await.unwrap();
    c.send(&(FLAG_C_FIXED_NEWSTYLE | 1 << 7).to_be_bytes())
        .await
        .unwrap();
    c.expect_eof().await.unwrap();

    let mut c = Conn::connect(s.addr).await.unwrap();
    c.send(&[0xde; 16]).await.unwrap();
    c.expect_eof().await.unwrap();

    // An absurd option length is refused before anything is allocated for it.
    let mut c = Conn::connect(s.addr).await.unwrap();
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&OPT_GO.to_be_bytes());
    m.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    c.send(&m).await.unwrap();
    c.expect_eof().await.unwrap();

    // NBD_OPT_EXPORT_NAME cannot be refused with an error: the server hangs up.
    let mut c = Conn::connect(s.addr).await.unwrap();
    c.option(OPT_EXPORT_NAME, b"missing").await.unwrap();
    c.expect_eof().await.unwrap();
}

#[tokio::test]
async fn bad_request_magic_ends_the_connection() {
    let s = start().await;
    let (mut c, _, _) = Conn::open(s.addr, "vol0", false).await.unwrap();
    c.send(&[0x11; 28]).await.unwrap();
    c.expect_eof().await.unwrap();
}

#[tokio::test]
async fn oversized_reads_are_refused_and_oversized_writes_end_the_connection() {
    let s = start().await;
    let (mut c, _, _) = Conn::open(s.addr, "vol0", false).await.unwrap();
    assert_eq!(c.read(0, MAX_PAYLOAD + 1).await.unwrap(), Err(EINVAL));
    assert_eq!(c.read(0, 4).await.unwrap().unwrap(), vec![0; 4]);
    // Large trims carry no payload and are fine.
    assert_eq!(c.call(CMD_TRIM, 0, 0, (4 * MIB) as u32).await.unwrap(), 0);

    c.request(CMD_WRITE, 0, 5, 0, 64 << 20, &[]).await.unwrap();
    assert_eq!(c.simple_reply().await.unwrap(), (EINVAL, 5));
    c.expect_eof().await.unwrap();
}

#[tokio::test]
async fn reads_past_the_end_fail_with_einval_and_writes_with_enospc() {
    let s = start().await;
    let (mut c, size, _) = Conn::open(s.addr, "vol1", false).await.unwrap();
    assert_eq!(c.read(size - 1, 2).await.unwrap(), Err(EINVAL));
    assert_eq!(c.read(u64::MAX, 2).await.unwrap(), Err(EINVAL));
    assert_eq!(c.write(size, b"x").await.unwrap(), ENOSPC);
    assert_eq!(
        c.call(CMD_WRITE_ZEROES, 0, size - 1, 2).await.unwrap(),
        ENOSPC
    );
    assert_eq!(c.call(CMD_TRIM, 0, size, 1).await.unwrap(), EINVAL);
    assert_eq!(c.read(size - 1, 1).await.unwrap().unwrap(), vec![0]);
}

#[tokio::test]
async fn unknown_commands_and_flags_get_einval_and_the_connection_stays_usable() {
    let s = start().await;
    let (mut c, _, _) = Conn::open(s.addr, "vol0", false).await.unwrap();
    for cmd in [5u16, 7, 99, u16::MAX] {
        assert_eq!(c.call(cmd, 0, 0, 0).await.unwrap(), EINVAL, "command {cmd}");
    }
    // DF needs structured replies; NO_HOLE belongs to WRITE_ZEROES only.
    assert_eq!(c.read_df_without_structured().await, EINVAL);
    c.request(CMD_WRITE, CMD_FLAG_NO_HOLE, 2, 0, 2, b"zz")
        .await
        .unwrap();
    assert_eq!(c.simple_reply().await.unwrap(), (EINVAL, 2));
    assert_eq!(c.write(0, b"ok").await.unwrap(), 0);
    assert_eq!(c.read(0, 2).await.unwrap().unwrap(), b"ok");
}

impl Conn {
    async fn read_df_without_structured(&mut self) -> u32 {
        self.request(CMD_READ, CMD_FLAG_DF, 4, 0, 8, &[])
            .await
            .unwrap();
        let (errno, handle) = self.simple_reply().await.unwrap();
        assert_eq!(handle, 4);
        errno
    }
}

#[tokio::test]
async fn store_failures_become_eio() {
    let s = start().await;
    let (mut c, _, _) = Conn::open(s.addr, "vol0", false).await.unwrap();
    s.backend
        .volume("vol0")
        .fail_reads
        .store(true, Ordering::SeqCst);
    assert_eq!(c.read(0, 512).await.unwrap(), Err(EIO));
    s.backend
        .volume("vol0")
        .fail_reads
        .store(false, Ordering::SeqCst);
    assert_eq!(c.read(0, 512).await.unwrap().unwrap(), vec![0; 512]);
}

#[tokio::test]
async fn replies_are_sent_as_requests_complete_not_in_request_order() {
    let s = start().await;
    let (mut c, _, _) = Conn::open(s.addr, "vol0", false).await.unwrap();
    s.backend
        .volume("vol0")
        .slow_read_offset
        .store(0, Ordering::SeqCst);
    c.request(CMD_READ, 0, 100, 0, 16, &[]).await.unwrap();
    c.request(CMD_READ, 0, 200, 4096, 16, &[]).await.unwrap();
    assert_eq!(c.simple_reply().await.unwrap(), (0, 200));
    c.read_exact(16).await.unwrap();
    assert_eq!(c.simple_reply().await.unwrap(), (0, 100));
    c.read_exact(16).await.unwrap();
}

#[tokio::test]
async fn disconnect_answers_requests_in_flight_before_closing() {
    let s = start().await;
    let (mut c, _, _) = Conn::open(s.addr, "vol0", false).await.unwrap();
    s.backend
        .volume("vol0")
        .slow_read_offset
        .store(0, Ordering::SeqCst);
    let started = std::time::Instant::now();
    c.request(CMD_READ, 0, 100, 0, 16, &[]).await.unwrap();
    c.request(CMD_DISC, 0, 0, 0, 0, &[]).await.unwrap();
    assert_eq!(c.simple_reply().await.unwrap(), (0, 100));
    c.read_exact(16).await.unwrap();
    c.expect_eof().await.unwrap();
    assert!(started.elapsed() >= SLOW_READ);
}

/// A client that vanishes with a write in flight, then reconnects and writes the same
/// block again: the old write is cancelled with its connection, and never lands after the
/// new one (it used to run on, and overwrite it).
#[tokio::test]
async fn a_vanished_clients_write_in_flight_never_lands_after_its_next_connections_write() {
    let s = start().await;
    let vol = s.backend.volume("vol0");
    vol.slow_write_offset.store(0, Ordering::SeqCst);
    let (mut old, _, _) = Conn::open(s.addr, "vol0", false).await.unwrap();
    old.request(CMD_WRITE, 0, 1, 0, 4096, &[0xaa; 4096])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop(old);
    vol.slow_write_offset.store(u64::MAX, Ordering::SeqCst);
    let (mut new, _, _) = Conn::open(s.addr, "vol0", false).await.unwrap();
    new.request(CMD_WRITE, 0, 2, 0, 4096, &[0xbb; 4096])
        .await
        .unwrap();
    assert_eq!(new.simple_reply().await.unwrap(), (0, 2));
    tokio::time::sleep(SLOW_READ * 2).await;
    assert!(
        vol.bytes(0, 4096).iter().all(|&b| b == 0xbb),
        "the old write landed last"
    );
}

#[tokio::test]
async fn a_misbehaving_client_does_not_disturb_a_healthy_one() {
    let s = start().await;
    let (mut healthy, _, _) = Conn::open(s.addr, "vol0", true).await.unwrap();
    let data = pattern(4096, 9);
    assert_eq!(healthy.write(0, &data).await.unwrap(), 0);

    let (mut rude, _, _) = Conn::open(s.addr, "vol0", false).await.unwrap();
    rude.request(CMD_WRITE, 0, 1, 0, u32::MAX, &[1, 2, 3])
        .await
        .unwrap();
    let mut garbage = Conn::connect(s.addr).await.unwrap();
    garbage.send(&[0xff; 4096]).await.unwrap();
    let half_open = tokio::net::TcpStream::connect(s.addr).await.unwrap();

    for i in 0..20u64 {
        healthy.request(CMD_READ, 0, i, 0, 4096, &[]).await.unwrap();
        let chunk = healthy.chunk().await.unwrap();
        assert_eq!((chunk.kind, chunk.handle), (REPLY_TYPE_OFFSET_DATA, i));
        assert_eq!(chunk.payload[8..], data);
    }
    assert_eq!(rude.simple_reply().await.unwrap().0, EINVAL);
    rude.expect_eof().await.unwrap();
    garbage.expect_eof().await.unwrap();
    drop(half_open);
}

#[tokio::test]
async fn shutdown_stops_the_server_after_closing_every_connection() {
    let mut s = start().await;
    let (mut c, _, _) = Conn::open(s.addr, "vol0", false).await.unwrap();
    assert_eq!(c.write(0, b"kept").await.unwrap(), 0);
    s.stop.take().unwrap().send(()).unwrap();
    c.expect_eof().await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.task)
        .await
        .expect("run() did not return")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_writes_and_reads_back_through_the_server() {
    let qemu_io = "/usr/bin/qemu-io";
    if !std::path::Path::new(qemu_io).exists() {
        println!("skipping: {qemu_io} is not installed");
        return;
    }
    let s = start().await;
    let url = format!("nbd://{}/vol0", s.addr);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(qemu_io)
            .args(["-f", "raw", &url])
            .args(["-c", "write -P 0xab 0 64k", "-c", "read -P 0xab 0 64k"])
            .args(["-c", "write -z 64k 64k", "-c", "read -P 0 64k 64k"])
            .args([
                "-c",
                "write -P 0xcd 1000 3000",
                "-c",
                "read -P 0xcd 1000 3000",
            ])
            .args(["-c", "discard 128k 64k", "-c", "flush"])
            .args(["-c", "read 4190208 4096"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "qemu-io failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("Pattern verification failed"), "{stdout}");
    assert!(
        !stderr.contains("error") && !stdout.contains("error"),
        "{stdout}\n{stderr}"
    );
    let vol = s.backend.volume("vol0");
    assert!(vol.bytes(0, 1000).iter().all(|&b| b == 0xab));
    assert!(vol.bytes(1000, 3000).iter().all(|&b| b == 0xcd));
    assert!(vol.bytes(65536, 65536).iter().all(|&b| b == 0));
}

/// Runs a qemu tool to completion off the runtime; `None` if it is not installed.
async fn run_tool(tool: &str, args: Vec<String>) -> Option<String> {
    let path = format!("/usr/bin/{tool}");
    if !std::path::Path::new(&path).exists() {
        println!("skipping: {path} is not installed");
        return None;
    }
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&path)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{tool} {:?} failed:\n{stdout}\n{stderr}",
        output.status
    );
    Some(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_tools_list_exports_and_copy_an_image_through_the_server() {
    let s = start().await;
    let port = s.addr.port().to_string();
    let Some(list) = run_tool(
        "qemu-nbd",
        vec![
            "--list".into(),
            "-b".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port,
        ],
    )
    .await
    else {
        return;
    };
    for name in ["vol0", "vol1", "data"] {
        assert!(list.contains(&format!("export: '{name}'")), "{list}");
    }

    let url = format!("nbd://{}/data", s.addr);
    let info = run_tool("qemu-img", vec!["info".into(), url.clone()])
        .await
        .unwrap();
    assert!(info.contains("2 MiB") && info.contains("2097152"), "{info}");

    // An image with data, a hole and more data: convert issues concurrent writes and
    // write-zeroes, then compare reads everything back.
    let src = std::env::temp_dir().join(format!("tessera-nbd-test-{}.img", std::process::id()));
    let mut image = vec![0u8; 2 * MIB as usize];
    image[..300_000].copy_from_slice(&pattern(300_000, 1));
    image[1_500_000..1_600_000].copy_from_slice(&pattern(100_000, 2));
    std::fs::write(&src, &image).unwrap();
    let src_arg = src.to_string_lossy().into_owned();
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    s.backend.volume("data").fill_for_test(0xee);
    run_tool(
        "qemu-img",
        args(&["convert", "-n", "-f", "raw", "-O", "raw", &src_arg, &url]),
    )
    .await;
    run_tool(
        "qemu-img",
        args(&["compare", "-f", "raw", "-F", "raw", &src_arg, &url]),
    )
    .await;
    std::fs::remove_file(&src).unwrap();
    assert_eq!(s.backend.volume("data").bytes(0, image.len()), image);
}
