//! Property tests of every wire type of `tessera-proto`: each value encodes and decodes back
//! to itself, and no decoder of untrusted bytes (frames, data-plane bodies, log entries,
//! chunk-list pages, the managers' Raft bodies, JSON bodies) panics, whatever it is fed.
//!
//! One file per module of the crate, each holding its strategies and its properties; the
//! `control` folder holds the JSON messages (`records`: the records they carry, `messages`:
//! the four request and reply enums). The strategies are written by hand rather than
//! derived: the encoders rely on invariants no derive knows (a write's data is `len`
//! bytes, a page's entries are sorted, a command's data has its op's size), and the
//! product types stay free of test-only attributes.
//!
//! Every enum on the wire has a guard here (an exhaustive `match` naming each variant, and a
//! test that the strategy yields every one): a variant added to the crate does not compile
//! here until a strategy generates it.
//!
//! Cases: `PROPTEST_CASES` (256 unless set) for the round trips; the properties feeding
//! decoders untrusted bytes run [`FUZZ_FACTOR`] times as many. `PROPTEST_CASES=20000 cargo
//! test -p tessera-proto --test roundtrip` runs longer.

mod command;
mod control;
mod copy;
mod data;
mod frame;
mod identity;
mod manager_raft;
mod mutate;

use std::collections::BTreeSet;
use std::fmt::Debug;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

/// How many more cases a property feeding a decoder untrusted bytes runs than a round trip.
pub const FUZZ_FACTOR: u32 = 4;

/// The configuration of a round trip: `PROPTEST_CASES` cases (256 unless set).
pub fn round_trips() -> Config {
    Config::default()
}

/// The configuration of a property feeding a decoder untrusted bytes.
pub fn fuzz() -> Config {
    let base = Config::default();
    Config {
        cases: base.cases.saturating_mul(FUZZ_FACTOR),
        ..base
    }
}

/// The configuration of a property whose cases are large (messages of megabytes): a
/// quarter of the cases, at least 16.
pub fn large() -> Config {
    let base = Config::default();
    Config {
        cases: (base.cases / 4).max(16),
        ..base
    }
}

/// A `u64`, often one of the values at its edges.
pub fn u64s() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        0..1000u64,
        any::<u64>()
    ]
}

/// A `u32`, often one of the values at its edges.
pub fn u32s() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![
        Just(0u32),
        Just(1u32),
        Just(u32::MAX),
        0..1000u32,
        any::<u32>()
    ]
}

/// A `u128`, often 0 (no request id) or at its edges.
pub fn u128s() -> impl Strategy<Value = u128> + Clone {
    prop_oneof![Just(0u128), Just(u128::MAX), any::<u128>()]
}

/// Bytes of any value, at most `max` of them.
pub fn bytes(max: usize) -> impl Strategy<Value = Bytes> + Clone {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// Asserts that `strategy` yields each of the `variants` variants of an enum (`index`
/// numbering them, by an exhaustive `match`) within a few thousand deterministic draws.
pub fn assert_yields_every_variant<T: Debug>(
    strategy: impl Strategy<Value = T>,
    variants: impl IntoIterator<Item = usize>,
    index: impl Fn(&T) -> usize,
) {
    let want: BTreeSet<usize> = variants.into_iter().collect();
    let mut seen = BTreeSet::new();
    let mut runner = TestRunner::deterministic();
    for _ in 0..20_000 {
        let value = strategy.new_tree(&mut runner).expect("strategy").current();
        let i = index(&value);
        assert!(
            want.contains(&i),
            "the strategy yields variant {i}: {value:?}"
        );
        seen.insert(i);
        if seen == want {
            return;
        }
    }
    let missing: Vec<_> = want.difference(&seen).collect();
    panic!("the strategy never yields the variants numbered {missing:?}");
}
