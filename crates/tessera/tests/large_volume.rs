//! A volume whose routes do not fit one frame (issue 12: "resource limits are conditions,
//! not crashes"): 8 TiB of 64 MiB chunks, every chunk mapped, opened again after the whole
//! cluster restarted, and read back through the client library chunk by chunk.
//!
//! `TESSERA_LARGE_VOLUME_CHUNKS` sets the number of chunks (default 131,072: 8 TiB);
//! `TESSERA_LARGE_VOLUME_WRITE_EVERY` writes a block into every n-th chunk (default 64; the
//! first and last chunks always), the others are mapped without data and read as zeroes
//! from their group.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Opts};
use tessera_proto::control::{
    ChunkRoute, MAX_ROUTES_PER_PAGE, ManagerReply, ManagerRequest, RoutePage,
};
use tessera_proto::frame::MAX_BODY;

const CHUNK: u64 = 64 << 20;
const BLOCK: u64 = 4096;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Where chunk `c`'s test block lives, and what a written one holds.
fn block_of(c: u64) -> (u64, Vec<u8>) {
    let at = c * CHUNK + (c % 1024) * BLOCK;
    let mut b = vec![(c % 251) as u8 + 1; BLOCK as usize];
    b[..8].copy_from_slice(&c.to_le_bytes());
    (at, b)
}

/// Every route of the volume, paged through `Routes` as a client would.
async fn all_routes(c: &Cluster, volume_id: u64) -> Vec<ChunkRoute> {
    let mut out = Vec::new();
    let mut next = Some(0);
    while let Some(first_chunk) = next {
        let req = ManagerRequest::Routes {
            volume_id,
            first_chunk,
            limit: 0,
            epoch: 0,
        };
        let ManagerReply::Routes(RoutePage { routes, next: n }) = tessera_net::call(
            &c.security(),
            c.manager_addr(),
            tessera_net::Expect::AnyManager,
            &req,
            Duration::from_secs(10),
        )
        .await
        .expect("routes") else {
            panic!("not a page of routes")
        };
        assert!(routes.len() <= MAX_ROUTES_PER_PAGE as usize);
        out.extend(routes);
        next = n;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eight_tib_volume_whose_routes_exceed_a_frame_opens_and_reads_after_a_restart() {
    let chunks = env_u64("TESSERA_LARGE_VOLUME_CHUNKS", 131_072);
    let every = env_u64("TESSERA_LARGE_VOLUME_WRITE_EVERY", 64).max(1);
    let started = Instant::now();
    let mut c = Cluster::start(Opts::default());
    c.wait_ready(3).await;
    let size = format!("{}MiB", chunks * (CHUNK >> 20));
    c.create_volume("big", &size, "64MiB");

    // Map every chunk, a page per change, as the holder of the volume.
    let client = c.client().await;
    let vol = client.open("big").await.expect("attach");
    let (id, epoch) = (vol.info().id, vol.epoch().expect("attached"));
    let t = Instant::now();
    for first_chunk in (0..chunks).step_by(MAX_ROUTES_PER_PAGE as usize) {
        let count = (chunks - first_chunk).min(u64::from(MAX_ROUTES_PER_PAGE)) as u32;
        let req = ManagerRequest::ProvisionChunks {
            volume_id: id,
            first_chunk,
            count,
            epoch,
        };
        match client.call(&req).await.expect("provision") {
            ManagerReply::Routes(p) => assert_eq!(p.routes.len(), count as usize),
            other => panic!("unexpected {other:?}"),
        }
    }
    let mapped = t.elapsed();

    // Data in a sample of chunks (the first and last always), through the client.
    let t = Instant::now();
    let written: Vec<u64> = (0..chunks)
        .filter(|c| c % every == 0 || *c == chunks - 1)
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &chunk) in written.iter().enumerate() {
        if i >= 64 {
            tasks.join_next().await.expect("task").expect("join");
        }
        let vol = vol.clone();
        tasks.spawn(async move {
            let (at, b) = block_of(chunk);
            vol.write(at, Bytes::from(b))
                .await
                .unwrap_or_else(|e| panic!("write chunk {chunk}: {e}"));
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("join");
    }
    let wrote = t.elapsed();
    vol.close().await.expect("close");
    drop(client);

    // Before paging, opening answered every route in one frame: more than a frame now.
    let routes = all_routes(&c, id).await;
    assert_eq!(routes.len() as u64, chunks);
    let one_frame = tessera_proto::control::encode(&Ok::<_, ()>(routes)).len();
    eprintln!(
        "{chunks} chunks mapped: their routes are {one_frame} bytes of JSON \
         (a frame holds {MAX_BODY})"
    );
    if chunks >= 100_000 {
        assert!(one_frame > MAX_BODY as usize, "the routes fit one frame");
    }

    // The whole cluster restarts; a new client opens the volume and reads a block of
    // every chunk.
    c.kill_manager(0);
    for i in 0..c.nodes.len() {
        c.kill_node(i);
    }
    c.restart_manager(0);
    for i in 0..c.nodes.len() {
        c.restart_node(i);
    }
    c.wait_ready(3).await;
    let t = Instant::now();
    let client = c.client().await;
    let vol = client
        .open_read_only("big")
        .await
        .expect("open after restart");
    assert_eq!(vol.info().mapped_chunks, chunks);
    let opened = t.elapsed();
    // The open answer itself is bounded: a page of group routes at most.
    let open = ManagerRequest::OpenVolume {
        name: "big".into(),
        paged: true,
    };
    let reply: ManagerReply = client.call(&open).await.expect("open");
    assert!(tessera_proto::control::encode(&reply).len() < (MAX_BODY / 4) as usize);

    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..chunks {
        if chunk >= 64 {
            tasks.join_next().await.expect("task").expect("join");
        }
        let vol = vol.clone();
        let want_data = chunk % every == 0 || chunk == chunks - 1;
        tasks.spawn(async move {
            let (at, want) = block_of(chunk);
            let got = vol
                .read(at, BLOCK)
                .await
                .unwrap_or_else(|e| panic!("read chunk {chunk}: {e}"));
            if want_data {
                assert!(got[..] == want[..], "chunk {chunk} reads back wrong data");
            } else {
                assert!(got.iter().all(|b| *b == 0), "chunk {chunk} is not zeroes");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("join");
    }
    let read = t.elapsed();
    // Writes after reopening go through the same routes.
    let vol = client.open("big").await.expect("attach after restart");
    let (at, b) = block_of(chunks - 1);
    let b: Vec<u8> = b.iter().map(|x| !x).collect();
    vol.write(at, Bytes::from(b.clone())).await.expect("write");
    assert_eq!(&vol.read(at, BLOCK).await.expect("read")[..], &b[..]);
    eprintln!(
        "{chunks} chunks: mapped in {mapped:?}, {} blocks written in {wrote:?}, opened in \
         {opened:?} after a restart, a block of every chunk read in {read:?}; {:?} in all",
        written.len(),
        started.elapsed()
    );
}
