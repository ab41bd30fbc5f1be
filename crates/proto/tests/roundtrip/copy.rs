//! Replica copies: a page of the chunk list, in either layout, decodes to itself, as does a
//! bare list from a node before paging; the request for a page travels as asked; and no
//! answer body, whatever it holds, makes the decoder panic or yields a page out of order.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tessera_proto::copy::{ChunkEntry, ChunkListPage};
use tessera_proto::data::Request;
use tessera_proto::frame::Kind;

use crate::mutate::untrusted;
use crate::{fuzz, round_trips, u32s, u64s};

fn link() -> impl Strategy<Value = Option<(u64, u64)>> {
    prop::option::of((u64s(), u64s()))
}

/// A page as a node answers it: entries in strictly increasing `(volume, chunk, layer)`
/// order; for chunks, layer 1 and no link (the layout has neither); layers from 1; and no
/// empty page saying more follow.
fn page() -> impl Strategy<Value = ChunkListPage> + Clone {
    prop_oneof![page_of(true), page_of(false)].boxed()
}

/// A page of the layers layout, or of the chunks one.
fn page_of(layers: bool) -> BoxedStrategy<ChunkListPage> {
    let entries = if layers {
        let layer = prop_oneof![Just(1u64), Just(u64::MAX), 1..=u64::MAX];
        prop::collection::btree_map((u64s(), u64s(), layer), (u64s(), link()), 0..12).boxed()
    } else {
        let one = Just(1u64);
        prop::collection::btree_map((u64s(), u64s(), one), (u64s(), Just(None)), 0..12).boxed()
    };
    (entries.prop_map(entries_of), any::<bool>())
        .prop_map(move |(entries, more)| ChunkListPage {
            more: more && !entries.is_empty(),
            entries,
            layers,
        })
        .boxed()
}

type Keyed = BTreeMap<(u64, u64, u64), (u64, Option<(u64, u64)>)>;

fn entries_of(m: Keyed) -> Vec<ChunkEntry> {
    m.into_iter()
        .map(|((volume, chunk, layer), (blocks, link))| ChunkEntry {
            volume,
            chunk,
            layer,
            blocks,
            link,
        })
        .collect()
}

proptest! {
    #![proptest_config(round_trips())]

    /// A page decodes to itself, and its length never is that of a bare list (a multiple
    /// of 24 bytes), so the layouts never meet.
    #[test]
    fn a_page_decodes_to_itself(page in page()) {
        let body = page.encode();
        prop_assert_eq!(ChunkListPage::decode(&body), Ok(page.clone()));
        prop_assert_eq!(body.len() % 24, 8);
    }

    /// A bare list (a node before paging) decodes as the last page of chunks.
    #[test]
    fn a_bare_list_decodes_as_the_last_page(page in page_of(false)) {
        let want = ChunkListPage { more: false, ..page };
        prop_assert_eq!(
            ChunkListPage::decode(&ChunkListPage::encode_unpaged(&want.entries)),
            Ok(want)
        );
    }

    /// The request for a page travels with its cursor and asks for layers.
    #[test]
    fn the_request_for_a_page_travels_as_asked(
        group in u64s(),
        cursor in (u64s(), u64s(), u64s()),
        limit in u32s(),
    ) {
        let req = ChunkListPage::request(group, cursor, limit);
        prop_assert_eq!(req.kind(), Kind::CatchUpList);
        let got = Request::decode(Kind::CatchUpList, &req.encode()).unwrap();
        prop_assert!(ChunkListPage::wants_layers(&got));
        prop_assert_eq!(
            (got.addr.group, got.addr.volume, got.addr.chunk, got.seq),
            (group, cursor.0, cursor.1, cursor.2.max(1))
        );
        prop_assert_eq!(got, req);
    }
}

proptest! {
    #![proptest_config(fuzz())]

    /// Whatever an answer body holds, decoding never panics, and a page decoded is in
    /// strictly increasing order, keeps its layout's rules, moves its cursor if it says
    /// more follow, and decodes to itself again.
    #[test]
    fn answer_bodies_never_panic(body in untrusted(page().prop_map(|p| p.encode()))) {
        if let Ok(page) = ChunkListPage::decode(&body) {
            prop_assert!(page.entries.windows(2).all(|w| w[0].key() < w[1].key()));
            prop_assert!(!(page.more && page.entries.is_empty()));
            for e in &page.entries {
                prop_assert!(e.layer >= 1);
                if !page.layers {
                    prop_assert_eq!((e.layer, e.link), (1, None));
                }
            }
            let _ = page.next_cursor();
            prop_assert_eq!(ChunkListPage::decode(&page.encode()), Ok(page.clone()));
        }
    }
}
