//! Catch-up of snapshot layers and clone links: the list layout each peer asks for, every
//! layer and link copied, a link cut between two pages of its chunk.

use super::*;

/// A peer from before layers asks for the list without a layer cursor: it gets the
/// chunks layout it reads; a peer that asks for layers gets layers.
#[test]
fn the_list_layout_follows_what_the_peer_asks_for() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let chunks = ChunkStores::open(tmp.path()).expect("stores");
    let store = chunks.get(GROUP).expect("store");
    store.write(1, 0, 0, &[1u8; B]).expect("write");
    let mut req = tessera_proto::copy::ChunkListPage::request(GROUP, (0, 0, 0), 10);
    let list = |req: &Request| match serve_catch_up(&chunks, &store, req) {
        Reply::Ok(b) => tessera_proto::copy::ChunkListPage::decode(&b).expect("page"),
        other => panic!("{other:?}"),
    };
    let page = list(&req);
    assert!(page.layers);
    assert_eq!(
        page.entries
            .iter()
            .map(|e| (e.key(), e.blocks, e.link))
            .collect::<Vec<_>>(),
        vec![((1, 0, 1), 1, None)]
    );
    req.seq = 0;
    let page = list(&req);
    assert!(!page.layers);
    assert_eq!(page.entries.len(), 1);
    // Once the group holds a snapshot layer, a node from before layers (which would copy
    // layer 1 only) is refused rather than listed a partial copy.
    store
        .write_seq(1, 0, 0, &[2u8; B], 2)
        .expect("a write after a snapshot");
    let refused = serve_catch_up(&chunks, &store, &req);
    assert!(
        !matches!(refused, Reply::Ok(_)),
        "an old copier is served a partial list: {refused:?}"
    );
}

/// Every layer and every link is copied: the replica lists the source's layers, holds
/// the same checksums in each, reads the same live and as of each snapshot, and links
/// its chunks as the source does; local layers, links and chunks the source lacks go.
#[tokio::test]
async fn every_layer_and_link_is_copied_and_nothing_else_is_kept() {
    let _serial = fail::FailScenario::setup();
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    let source = from.get(GROUP).expect("source store");
    // Volume 1 chunk 0: layers 1, 3 and 4 (a discard over older data in layer 4).
    source
        .write_seq(1, 0, 0, &[1u8; 4 * B], 1)
        .expect("layer 1");
    source
        .write_seq(1, 0, BLOCK_SIZE, &[3u8; B], 3)
        .expect("layer 3");
    source
        .discard_seq(1, 0, 2 * BLOCK_SIZE, BLOCK_SIZE, 4)
        .expect("layer 4");
    // Volume 2 (a clone of volume 1 as of 3): chunk 0 linked, with a layer of its own;
    // chunk 1 linked, with no layer.
    source.link(2, 0, 1, 3).expect("link");
    source
        .write_seq(2, 0, 3 * BLOCK_SIZE, &[7u8; B], 2)
        .expect("clone layer 2");
    source.link(2, 1, 1, 3).expect("link without layers");
    let addr = serve_copies(from.clone()).await;

    let to_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(to_dir.path()).expect("store"));
    // Stale: a layer the source lacks, a different link, a chunk it lacks.
    store
        .write_seq(1, 0, 0, &[9u8; 2 * B], 5)
        .expect("stale layer");
    store.link(2, 1, 1, 1).expect("stale link");
    store.write(3, 0, 0, &[9u8; B]).expect("stale chunk");
    // Pages of two entries: layers of one chunk span pages.
    copy_in_pages(&store, &addr, 2).await.expect("the copy");

    let layers = source.list_layers().expect("list");
    assert_eq!(store.list_layers().expect("list"), layers);
    for k in &layers {
        let (v, c, l) = (k.volume, k.chunk, k.layer);
        let n = source.chunk_blocks_in(v, c, l).expect("blocks");
        assert_eq!(store.chunk_blocks_in(v, c, l).expect("blocks"), n);
        assert_eq!(
            store.checksums_in(v, c, l, 0, n).expect("crcs"),
            source.checksums_in(v, c, l, 0, n).expect("crcs"),
            "layer {v}/{c}/{l}"
        );
    }
    for (v, c) in [(1, 0), (2, 0), (2, 1), (3, 0)] {
        assert_eq!(
            store.link_of(v, c).expect("link"),
            source.link_of(v, c).expect("link")
        );
        for as_of in [0, 1, 2, 3, 4] {
            assert_eq!(
                store
                    .read_as_of(v, c, 0, 4 * BLOCK_SIZE, as_of)
                    .expect("read"),
                source
                    .read_as_of(v, c, 0, 4 * BLOCK_SIZE, as_of)
                    .expect("read"),
                "chunk {v}/{c} as of {as_of}"
            );
        }
    }
}

/// A clone's chunk whose layers span two list pages, flattened and unlinked at the source
/// between them: the copy keeps the link of the first listing (the one its base layer was
/// copied under), so the Flatten entries replayed after the copy still find the parent.
#[tokio::test]
async fn a_link_cut_between_two_pages_of_its_chunk_is_kept_for_the_replay() {
    let _serial = fail::FailScenario::setup();
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    let source = from.get(GROUP).expect("source store");
    // The parent: volume 1 chunk 0, two blocks.
    source.write(1, 0, 0, &[5u8; 2 * B]).expect("parent");
    // The clone, volume 2, linked as of 1, with its own layers 1 and 3 (a snapshot).
    source.link(2, 0, 1, 1).expect("link");
    source
        .write_seq(2, 0, 2 * BLOCK_SIZE, &[6u8; B], 1)
        .expect("clone layer 1");
    source
        .write_seq(2, 0, 3 * BLOCK_SIZE, &[7u8; B], 3)
        .expect("clone layer 3");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = done.clone();
    let flattened = source.clone();
    let addr = serve_copies_then(from.clone(), move |req| {
        if req.op == Op::CatchUpRead
            && req.addr.volume == 2
            && req.seq <= 1
            && !once.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            // Once the clone's layer 1 is copied, before the page listing its layer 3:
            // the source flattens and unlinks the chunk.
            flattened
                .flatten(2, 0, 0, 4 * BLOCK_SIZE, 1)
                .expect("flatten");
            flattened.unlink(2, 0).expect("unlink");
        }
    })
    .await;

    let to_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(to_dir.path()).expect("store"));
    copy_in_pages(&store, &addr, 1).await.expect("the copy");
    // The replay of the log after the copy's index: the Flatten, then the Unlink.
    store
        .flatten(2, 0, 0, 4 * BLOCK_SIZE, 1)
        .expect("replayed flatten");
    store.unlink(2, 0).expect("replayed unlink");
    for as_of in [0, 1, 3] {
        assert_eq!(
            store
                .read_as_of(2, 0, 0, 4 * BLOCK_SIZE, as_of)
                .expect("read"),
            source
                .read_as_of(2, 0, 0, 4 * BLOCK_SIZE, as_of)
                .expect("read"),
            "clone as of {as_of}"
        );
    }
}

/// A merge and its drop applied at the source while a copy runs, after the copy listed
/// the chunk and copied the merge's target, before it read the dropped layer, with a
/// sync between (which would delete the dropped layer's files): the copy still gets that
/// layer as it was, so the merge replayed on the new replica (from a log index before it)
/// finds its sources, and every retained read is the source's.
#[tokio::test]
async fn a_copy_racing_a_merge_and_its_drop_still_copies_the_dropped_layers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tessera_engine::chunk::{MergeRange, layer_of};
    let _serial = fail::FailScenario::setup();
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    let source = from.get(GROUP).expect("source store");
    let l = BLOCK_SIZE;
    source
        .write_seq(1, 0, 0, &[1u8; 4 * B], 1)
        .expect("layer 1");
    source
        .write_seq(1, 0, 0, &[2u8; 2 * B], 2)
        .expect("layer 2");
    source
        .write_seq(1, 0, l, &[3u8; 2 * B], 3)
        .expect("layer 3");
    source
        .write_seq(1, 0, 3 * l, &[4u8; B], 4)
        .expect("live layer 4");
    source.sync().expect("sync");
    // Snapshot 2 deleted, 3 kept: layers 2..=3 into layer 2.
    let range = MergeRange {
        low: 2,
        top: 3,
        live: false,
    };
    let seqs = [1u64, 3, 4, 0];
    let reads = |s: &ChunkStore| -> Vec<_> {
        seqs.iter()
            .map(|&q| s.read_as_of(1, 0, 0, 4 * l, q).expect("read"))
            .collect()
    };
    let before = reads(&source);
    let merger = source.clone();
    let merged = Arc::new(AtomicBool::new(false));
    let addr = serve_copies_then(from.clone(), move |req| {
        let target_copied = req.op == Op::CatchUpRead && layer_of(req.seq) == 2;
        if target_copied && !merged.swap(true, Ordering::SeqCst) {
            merger.merge_layers(1, 0, 0, 4 * l, range).expect("merge");
            merger.drop_merged(1, 0, range).expect("drop");
            merger.sync().expect("sync after the drop");
        }
    })
    .await;
    let to_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(to_dir.path()).expect("store"));
    copy(&store, &addr).await.expect("the copy");
    // The log replayed from before the merge.
    store.set_replaying(true);
    store
        .merge_layers(1, 0, 0, 4 * l, range)
        .expect("replayed merge");
    store.drop_merged(1, 0, range).expect("replayed drop");
    store.set_replaying(false);
    assert!(reads(&store) == before, "the new replica reads otherwise");
    assert!(reads(&source) == before);
    // The copy's connection gone (its pin with it), a sync deletes the dropped layer.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        source.sync().expect("sync");
        if source.served_blocks_in(1, 0, 3).expect("blocks") == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let layers: Vec<u64> = source
        .list_layers()
        .expect("list")
        .iter()
        .map(|k| k.layer)
        .collect();
    assert_eq!(layers, [1, 2, 4]);
    assert_eq!(source.served_blocks_in(1, 0, 3).expect("blocks"), 0);
}

/// A copy into a replica holding a layer its own merge dropped (hidden, its files not yet
/// deleted) that the source still lists: the copy must build that layer from nothing, not
/// skip the blocks the hidden files hold (its first write starts the layer anew).
#[tokio::test]
async fn a_copy_into_a_replica_with_a_dropped_layer_copies_that_layer_whole() {
    use tessera_engine::chunk::MergeRange;
    let _serial = fail::FailScenario::setup();
    let l = BLOCK_SIZE;
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    let source = from.get(GROUP).expect("source store");
    source
        .write_seq(1, 0, 0, &[1u8; 4 * B], 1)
        .expect("layer 1");
    source.write_seq(1, 0, 0, &[2u8; B], 2).expect("layer 2");
    source
        .write_seq(1, 0, l, &[3u8; 2 * B], 3)
        .expect("layer 3");
    let addr = serve_copies(from.clone()).await;

    let to_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(to_dir.path()).expect("store"));
    store.write_seq(1, 0, 0, &[1u8; 4 * B], 1).expect("layer 1");
    store.write_seq(1, 0, 0, &[2u8; B], 2).expect("layer 2");
    // Layer 3 holds block 1 as the source does, block 2 otherwise.
    store.write_seq(1, 0, l, &[3u8; B], 3).expect("layer 3");
    store.write_seq(1, 0, 2 * l, &[9u8; B], 3).expect("layer 3");
    let range = MergeRange {
        low: 2,
        top: 3,
        live: false,
    };
    store.merge_layers(1, 0, 0, 4 * l, range).expect("merge");
    store.drop_merged(1, 0, range).expect("drop");
    copy(&store, &addr).await.expect("the copy");
    assert_eq!(
        store.checksums_in(1, 0, 3, 0, 4).expect("crcs"),
        source.checksums_in(1, 0, 3, 0, 4).expect("crcs")
    );
    for as_of in [1, 2, 3, 0] {
        assert_eq!(
            store.read_as_of(1, 0, 0, 4 * l, as_of).expect("read"),
            source.read_as_of(1, 0, 0, 4 * l, as_of).expect("read"),
            "as of {as_of}"
        );
    }
}
