//! Issue 16 with real processes: the scrubber finds rot and divergence in a replica's
//! files and repairs them through the group's log, reads never fail for rot while a good
//! copy exists, a block rotten on two replicas is reported unrepairable and fails only its
//! own reads, and a node killed mid-pass resumes where it was.
//!
//! Each test writes a patterned volume through the client library, damages one block of
//! one chunk in a replica's files while that node is killed (a flipped byte: the block
//! fails its CRC32C; or different bytes with their CRC32C: only the digest can tell),
//! restarts it, and asks for a pass with `tessera scrub start`. Nodes scrub at 256 MiB/s
//! with a period of a day ([`scrub::FAST`]), so passes run when the test asks. That the
//! repair went through the group shows in the damaged node's `repair_blocks_applied` (a
//! Repair entry rewrote a block there) while the good replicas' stays 0.

mod common;

use std::time::Duration;

use common::backup::{BLOCK, Image, MIB, checksum};
use common::scrub::{self, Reader, Target, done_since, sum};

/// The volume of the repair tests: 8 MiB in two 4 MiB chunks (one scrub region each).
const SIZE: u64 = 8 * MIB;
const CHUNK: &str = "4MiB";
/// The damaged block: block 100 of chunk 1.
const DAMAGED_CHUNK: u64 = 1;
const DAMAGED_BLOCK: u64 = 100;
/// A pass over a few MiB at 256 MiB/s, with region round trips and repairs, on 2 cores.
const PASS: Duration = Duration::from_secs(60);

/// Volume `v` written whole with blocks unique to salt 1, every replica's files settled;
/// the bytes written, the damaged block's target and the bytes it must hold.
async fn written(c: &common::Cluster) -> (tessera_client::Volume, Image, Target, Vec<u8>) {
    c.create_volume("v", "8MiB", CHUNK);
    let client = c.client().await;
    let vol = client.open("v").await.expect("attach v");
    let mut img = Image::new(SIZE);
    img.write(&vol, 0, SIZE, 1).await;
    let t = Target::of(c, "v", DAMAGED_CHUNK, DAMAGED_BLOCK).await;
    let off = t.offset() as usize;
    let want = img.0[off..off + BLOCK as usize].to_vec();
    t.settle(c, &want).await;
    (vol, img, t, want)
}

/// After the repair: every read of the block (if `reader` ran) succeeded with the bytes written, the damaged
/// node applied a Repair entry (the group's log) and no good replica did, every replica's
/// file holds the written block with its CRC again, and the whole volume reads back.
async fn assert_repaired_through_the_group(
    c: &common::Cluster,
    vol: &tessera_client::Volume,
    img: &Image,
    t: &Target,
    want: &[u8],
    damaged: usize,
    reader: Option<Reader>,
) {
    if let Some(reader) = reader {
        let (reads, failures) = reader.finish().await;
        assert!(reads >= 10, "only {reads} reads of the block were made");
        assert!(
            failures.is_empty(),
            "reads of the damaged block failed ({} of {reads}): {failures:?}",
            failures.len()
        );
    }
    let stats = scrub::status(c);
    for &n in &t.replicas {
        let s = stats[n].as_ref().expect("reported");
        if n == damaged {
            assert!(
                s.repair_blocks_applied >= 1,
                "the damaged node applied no Repair entry: {s:#?}"
            );
        } else {
            assert_eq!(
                s.repair_blocks_applied, 0,
                "a Repair entry rewrote a good replica (node {n}): {s:#?}"
            );
        }
    }
    t.wait_replicas_hold(c, want, "the repaired block").await;
    img.check(vol, 0, SIZE, "the whole volume after the repair")
        .await;
}

/// A byte flipped in one follower's replica: the scrub finds the bad block (CRC) and the
/// leader's Repair entry rewrites it from the majority; reads never fail meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_one_replica_is_found_and_repaired_through_the_group() {
    let mut c = scrub::start(scrub::FAST).await;
    let (vol, img, t, want) = written(&c).await;
    let damaged = *t
        .replicas
        .iter()
        .find(|&&n| n != t.leader)
        .expect("a follower");
    t.damage(&mut c, damaged, &want, |c, n| t.flip_byte(c, n, 1234))
        .await;
    // Reads start once the damage is known to have survived the restart: the balancer
    // may hand the restarted node a leadership, and a read there repairs the block
    // before `damage` can see it (that repair is the next test's subject).
    let reader = Reader::start(vol.clone(), t.offset(), want.clone());
    reader.wait_reads(5).await;

    // The damaged node's count comes with its next heartbeat, after the leader's.
    let stats = scrub::until_found(&c, "the flipped byte found and repaired", PASS, |s| {
        s[damaged].repair_blocks_applied >= 1
            && s.iter().map(|s| s.bad_blocks).sum::<u64>() >= 1
            && s.iter().map(|s| s.repaired).sum::<u64>() >= 1
    })
    .await;
    assert!(
        stats.iter().map(|s| s.blocks_checked).sum::<u64>() >= SIZE / BLOCK,
        "the pass checked fewer blocks than the volume holds: {stats:#?}"
    );
    assert_eq!(
        stats.iter().map(|s| s.unrepairable).sum::<u64>(),
        0,
        "{stats:#?}"
    );
    assert_repaired_through_the_group(&c, &vol, &img, &t, &want, damaged, Some(reader)).await;
}

/// The same with the damaged replica leading: its reads meet the bad block and are served
/// (read repair through the group), never failed; the scrub and the repair go through the
/// group as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_leaders_replica_never_fails_a_read_and_is_repaired() {
    let mut c = scrub::start(scrub::FAST).await;
    let (vol, img, t, want) = written(&c).await;
    let damaged = t.leader;
    t.damage(&mut c, damaged, &want, |c, n| t.flip_byte(c, n, 7))
        .await;
    t.make_leader(&c, damaged).await;
    assert_eq!(
        common::backup::leader_of_chunk(&c, "v", DAMAGED_CHUNK).await,
        damaged,
        "the damaged replica must lead when the reads start"
    );
    assert_ne!(t.file_block(&c, damaged), want, "still damaged when led");

    let reader = Reader::start(vol.clone(), t.offset(), want.clone());
    reader.wait_reads(10).await;
    let stats = scrub::until_found(&c, "the leader's bad block repaired", PASS, |s| {
        s[damaged].repair_blocks_applied >= 1
    })
    .await;
    // Found by the read repair or by the scrub: counted either way (every finding is).
    assert!(
        stats.iter().map(|s| s.bad_blocks).sum::<u64>() >= 1
            && stats.iter().map(|s| s.repaired).sum::<u64>() >= 1,
        "the bad block and its repair are not counted: {stats:#?}"
    );
    assert_repaired_through_the_group(&c, &vol, &img, &t, &want, damaged, Some(reader)).await;
}

/// A block rewritten together with its CRC32C on one replica (what a lost write leaves):
/// no CRC fails, the digests disagree with the other two, and the repair brings the
/// majority's block. (No reader here: a divergent replica that came to lead, as the
/// manager's leader balance may make it, would serve its own block until scrubbed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_rewritten_with_its_crc_is_found_by_the_digest() {
    let mut c = scrub::start(scrub::FAST).await;
    let (vol, img, t, want) = written(&c).await;
    let damaged = *t
        .replicas
        .iter()
        .find(|&&n| n != t.leader)
        .expect("a follower");
    let other = Image::block(99, t.offset() / BLOCK);
    t.damage(&mut c, damaged, &want, |c, n| {
        t.rewrite_with_crc(c, n, &other)
    })
    .await;
    assert_eq!(
        t.file_crc(&c, damaged),
        crc32c::crc32c(&other),
        "the damaged replica's block is consistent with its CRC"
    );

    let stats = scrub::until_found(&c, "the divergent block found and repaired", PASS, |s| {
        s[damaged].repair_blocks_applied >= 1
            && s.iter().map(|s| s.divergent_blocks).sum::<u64>() >= 1
            && s.iter().map(|s| s.repaired).sum::<u64>() >= 1
    })
    .await;
    assert_eq!(
        stats.iter().map(|s| s.bad_blocks).sum::<u64>(),
        0,
        "no CRC failed: only the digest could find it: {stats:#?}"
    );
    assert_repaired_through_the_group(&c, &vol, &img, &t, &want, damaged, None).await;
}

/// The same block rotten on two of three replicas, one of them leading: no majority, so
/// the scrub reports it unrepairable and changes nothing; a read of that block fails with
/// a corrupt error, reads of its neighbours (and the rest of the volume) succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_block_rotten_on_two_replicas_is_unrepairable_and_only_its_reads_fail() {
    let mut c = scrub::start(scrub::FAST).await;
    let (vol, img, t, want) = written(&c).await;
    let good = *t
        .replicas
        .iter()
        .find(|&&n| n != t.leader)
        .expect("a follower");
    let rotten: Vec<usize> = t.replicas.iter().copied().filter(|&n| n != good).collect();
    for (i, &n) in rotten.iter().enumerate() {
        t.damage(&mut c, n, &want, |c, n| t.flip_byte(c, n, 100 + i * 1000))
            .await;
    }
    t.make_leader(&c, rotten[0]).await;

    let stats = scrub::until_found(&c, "the block reported unrepairable", PASS, |s| {
        s.iter().map(|s| s.unrepairable).sum::<u64>() >= 1
    })
    .await;
    assert_eq!(
        stats.iter().map(|s| s.repair_blocks_applied).sum::<u64>(),
        0,
        "nothing was \"fixed\" without a majority: {stats:#?}"
    );
    assert_eq!(
        t.file_block(&c, good),
        want,
        "the good replica is untouched"
    );
    for &n in &rotten {
        assert_ne!(
            t.file_block(&c, n),
            want,
            "node {n}'s rotten block was rewritten"
        );
    }

    // Reads go to a rotten replica (it leads): the block's read fails clearly.
    t.make_leader(&c, rotten[0]).await;
    let read = |off: u64, len: u64| {
        let vol = vol.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), vol.read(off, len))
                .await
                .expect("a read answered in 30 s")
        }
    };
    match read(t.offset(), BLOCK).await {
        Ok(_) => panic!("a read of the block rotten on two replicas succeeded"),
        Err(e) => assert!(
            e.to_string().to_lowercase().contains("corrupt"),
            "the read fails for corruption: {e}"
        ),
    }
    let e = read(t.offset() - BLOCK, 3 * BLOCK)
        .await
        .expect_err("a read spanning the rotten block fails");
    assert!(e.to_string().to_lowercase().contains("corrupt"), "{e}");
    for b in [DAMAGED_BLOCK - 1, DAMAGED_BLOCK + 1] {
        let n = t.at(b);
        let got = read(n.offset(), BLOCK)
            .await
            .unwrap_or_else(|e| panic!("a read of neighbouring block {b}: {e}"));
        let off = n.offset() as usize;
        assert_eq!(&got[..], &img.0[off..off + BLOCK as usize], "block {b}");
    }
    let chunk = t.chunk_size;
    img.check(&vol, 0, chunk, "chunk 0").await;
    img.check(
        &vol,
        t.offset() + BLOCK,
        SIZE - t.offset() - BLOCK,
        "past the block",
    )
    .await;
    img.check(&vol, chunk, t.offset() - chunk, "chunk 1 before the block")
        .await;
}

/// A node killed in the middle of a slow pass (1 MiB/s): after its restart the pass
/// resumes from its persisted cursor (the same pass, not back at the start, its counters
/// kept) and completes; nothing written is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_scrub_resumes() {
    const BIG: u64 = 64 * MIB;
    let mut c = scrub::start("[scrub]\nbytes_per_sec = 1048576\nperiod_secs = 86400\n").await;
    c.create_volume("v", "64MiB", CHUNK);
    let client = c.client().await;
    let vol = client.open("v").await.expect("attach v");
    let mut img = Image::new(BIG);
    img.write(&vol, 0, BIG, 5).await;
    vol.close().await.expect("detach");

    // The node leading the most chunks' groups: its pass has the most to do.
    let mut led = vec![0u32; c.nodes.len()];
    for chunk in 0..BIG / (4 * MIB) {
        led[common::backup::leader_of_chunk(&c, "v", chunk).await] += 1;
    }
    let victim = (0..led.len()).max_by_key(|&n| led[n]).expect("a node");
    scrub::start_pass(&c, victim).await;

    // Mid-pass, with a cursor persisted past the start. The file is written at region ends
    // at most every 5 s, so it lags what the node reports: the restart resumes from the
    // file, and the test compares with the file as it was just before the kill.
    let first = scrub::wait(&c, "the pass under way", Duration::from_secs(60), |s| {
        let v = &s[victim];
        v.running && v.cursor != Default::default() && v.bytes_checked > 0
    })
    .await[victim]
        .clone();
    let saved = scrub::wait_persisted(&c, victim, Duration::from_secs(60), |p| {
        p.pass == first.pass && p.cursor != Default::default() && p.bytes_checked > 0
    })
    .await;
    let before = scrub::status(&c)[victim].clone().expect("reported");
    assert!(
        before.running && before.pass == first.pass,
        "the pass ended before a cursor was persisted past its start (too little data to \
         kill it mid-way): {before:#?}"
    );
    // The file only moves forward: read again right before the kill, it is at least
    // what the restart finds (a save racing the kill only moves it further).
    let saved = scrub::persisted(&c, victim).unwrap_or(saved);
    c.kill_node(victim);
    let killed = scrub::now_ms();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.restart_node(victim);

    // The restarted process's first report: the same pass, resumed from its persisted
    // cursor, its persisted counters kept.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let addr = c.nodes[victim].addr.clone();
    c.wait_status("the victim reporting again", Duration::from_secs(30), |s| {
        s.nodes
            .iter()
            .any(|n| n.addr == addr && n.last_heartbeat_ms_ago.is_some_and(|ms| ms < 500))
    })
    .await;
    let after = scrub::status(&c)[victim].clone().expect("reported");
    assert_eq!(
        (after.pass, after.pass_started_ms),
        (first.pass, first.pass_started_ms),
        "the restart began another pass instead of resuming: before {before:#?} after {after:#?}"
    );
    assert!(
        after.bytes_checked >= saved.bytes_checked && after.regions >= saved.regions,
        "the counters went back past the persisted ones: saved {saved:#?} after {after:#?}"
    );
    // Still under way (running, or waiting out the settle after the start), its place kept;
    // or already done.
    if after.last_pass_done_ms < killed {
        assert!(
            after.cursor >= saved.cursor,
            "the cursor went back past the persisted one: {saved:#?} {after:#?}"
        );
    }

    let done = scrub::wait(&c, "the resumed pass done", Duration::from_secs(120), |s| {
        done_since(&s[victim], killed)
    })
    .await;
    assert_eq!(done[victim].pass, first.pass, "{:#?}", done[victim]);
    assert_eq!(sum(&scrub::status(&c), |s| s.unrepairable), 0);
    let client = c.client().await;
    assert_eq!(
        checksum(&client, "v").await,
        img.checksum(),
        "the volume reads back whole"
    );
}
