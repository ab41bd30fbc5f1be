//! `base:allocation` and `NBD_CMD_BLOCK_STATUS` against the in-memory backend, which
//! tracks holes per 4 KiB block: negotiation, descriptors, and `qemu-img map` when it is
//! installed.

use super::{MIB, pattern, run_tool, start};
use crate::backend::Export;
use crate::consts::*;
use crate::testing::Conn;

/// `base:allocation` is listed, and selected only with structured replies; block status
/// then tells holes, allocated zeroes and data apart, merged, clipped to the request,
/// one descriptor with REQ_ONE.
#[tokio::test]
async fn block_status_reports_holes_zeroes_and_data_in_base_allocation() {
    let s = start().await;
    let mut c = Conn::connect(s.addr).await.unwrap();
    let base = [
        &META_BASE_ALLOCATION_ID.to_be_bytes()[..],
        b"base:allocation",
    ]
    .concat();
    for queries in [&[][..], &["base:"][..], &["base:allocation", "qemu:x"][..]] {
        let replies = c
            .meta_context(OPT_LIST_META_CONTEXT, "vol0", queries)
            .await
            .unwrap();
        assert_eq!(
            replies,
            [(REP_META_CONTEXT, base.clone()), (REP_ACK, vec![])],
            "{queries:?}"
        );
    }
    let replies = c
        .meta_context(OPT_LIST_META_CONTEXT, "vol0", &["qemu:dirty-bitmap:x"])
        .await
        .unwrap();
    assert_eq!(replies, [(REP_ACK, vec![])]);
    // Selecting needs structured replies first.
    let replies = c
        .meta_context(OPT_SET_META_CONTEXT, "vol0", &["base:allocation"])
        .await
        .unwrap();
    assert_eq!(replies[0].0, REP_ERR_INVALID);
    // Malformed: a query longer than the option.
    c.option(
        OPT_SET_META_CONTEXT,
        &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, b'x'],
    )
    .await
    .unwrap();
    assert_eq!(c.option_reply().await.unwrap().1, REP_ERR_INVALID);
    c.close().await;

    // A connection without the context cannot ask.
    let (mut plain, _, _) = Conn::open(s.addr, "vol0", true).await.unwrap();
    plain
        .request(CMD_BLOCK_STATUS, 0, 9, 0, 4096, &[])
        .await
        .unwrap();
    let chunk = plain.chunk().await.unwrap();
    assert_eq!((chunk.kind, chunk.handle), (REPLY_TYPE_ERROR, 9));
    assert_eq!(chunk.payload[..4], EINVAL.to_be_bytes());

    let (mut c, size, _, id) = Conn::open_with_block_status(s.addr, "vol0").await.unwrap();
    assert_eq!(id, META_BASE_ALLOCATION_ID);
    let hole = STATE_HOLE | STATE_ZERO;
    assert_eq!(
        c.block_status(id, 0, 0, size as u32)
            .await
            .unwrap()
            .unwrap(),
        [(size as u32, hole)]
    );
    // Data in block 0 and 1, a hole in block 2, allocated zeroes in block 3, data again
    // in block 4 (a partial block is data), then holes to the end.
    assert_eq!(c.write(0, &pattern(8192, 1)).await.unwrap(), 0);
    assert_eq!(
        c.call(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 3 * 4096, 4096)
            .await
            .unwrap(),
        0
    );
    assert_eq!(c.write(4 * 4096 + 10, b"x").await.unwrap(), 0);
    assert_eq!(
        c.block_status(id, 0, 0, size as u32)
            .await
            .unwrap()
            .unwrap(),
        [
            (8192, 0),
            (4096, hole),
            (4096, STATE_ZERO),
            (4096, 0),
            (size as u32 - 5 * 4096, hole)
        ]
    );
    // Clipped to the request, from an unaligned offset; one descriptor with REQ_ONE.
    assert_eq!(
        c.block_status(id, 0, 100, 8192).await.unwrap().unwrap(),
        [(8092, 0), (100, hole)]
    );
    assert_eq!(
        c.block_status(id, CMD_FLAG_REQ_ONE, 0, size as u32)
            .await
            .unwrap()
            .unwrap(),
        [(8192, 0)]
    );
    // Trimmed again: a hole.
    assert_eq!(c.call(CMD_TRIM, 0, 0, 8192).await.unwrap(), 0);
    assert_eq!(
        c.block_status(id, CMD_FLAG_REQ_ONE, 0, 4096)
            .await
            .unwrap()
            .unwrap(),
        [(4096, hole)]
    );
    assert_eq!(c.block_status(id, 0, size, 1).await.unwrap(), Err(EINVAL));
    assert_eq!(c.block_status(id, 0, 0, 0).await.unwrap(), Err(EINVAL));
}

/// The context is selected for one export name: transmission on another one has none.
#[tokio::test]
async fn a_context_set_for_another_export_is_not_selected() {
    let s = start().await;
    let mut c = Conn::connect(s.addr).await.unwrap();
    c.option(OPT_STRUCTURED_REPLY, &[]).await.unwrap();
    assert_eq!(c.option_reply().await.unwrap().1, REP_ACK);
    let replies = c
        .meta_context(OPT_SET_META_CONTEXT, "vol1", &["base:allocation"])
        .await
        .unwrap();
    assert_eq!(replies.len(), 2);
    let replies = c.go(OPT_GO, "vol0", &[]).await.unwrap();
    assert_eq!(replies.last().unwrap().0, REP_ACK);
    c.request(CMD_BLOCK_STATUS, 0, 3, 0, 4096, &[])
        .await
        .unwrap();
    let chunk = c.chunk().await.unwrap();
    assert_eq!(chunk.kind, REPLY_TYPE_ERROR);
    assert_eq!(chunk.payload[..4], EINVAL.to_be_bytes());
}

/// `qemu-img map` (block status over `base:allocation`) sees the holes and the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_map_reports_holes_and_data() {
    let s = start().await;
    let vol = s.backend.volume("vol0");
    vol.write(MIB, bytes::Bytes::from(vec![0x5a; 65536]))
        .await
        .unwrap();
    let url = format!("nbd://{}/vol0", s.addr);
    let Some(map) = run_tool("qemu-img", vec!["map".into(), "--output=json".into(), url]).await
    else {
        return;
    };
    // One entry per run: data only where written.
    let data: Vec<&str> = map
        .lines()
        .filter(|l| l.contains("\"data\": true"))
        .collect();
    assert_eq!(data.len(), 1, "{map}");
    assert!(
        data[0].contains("\"start\": 1048576") && data[0].contains("\"length\": 65536"),
        "{map}"
    );
    assert!(map.contains("\"data\": false"), "{map}");
}
