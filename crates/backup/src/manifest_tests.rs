use super::*;

fn segment() -> Segment {
    Segment {
        format: FORMAT,
        chunk: 3,
        regions: vec![(0, Hash([1; 32])), (5, Hash([2; 32])), (6, Hash([1; 32]))],
    }
}

fn root() -> Root {
    Root {
        format: FORMAT,
        backup_id: 7,
        volume: "db1".into(),
        volume_id: 12,
        snapshot: "s1".into(),
        seq: 40,
        size: 8 << 30,
        chunk_size: 1 << 30,
        region_bytes: REGION_BYTES,
        created_unix: 1_700_000_000,
        segments: vec![(0, Hash([3; 32])), (3, Hash([4; 32]))],
    }
}

fn corrupt_why(r: Result<impl std::fmt::Debug>, key: &str) -> String {
    match r {
        Err(Error::Corrupt { store, key: k, why }) => {
            assert_eq!((store.as_str(), k.as_str()), ("s", key));
            why
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn manifests_read_back_under_their_names() {
    let (h, bytes) = segment().encode();
    assert_eq!(Segment::decode("s", &h, &bytes), Ok(segment()));
    assert_eq!(
        segment().encode(),
        (h, bytes),
        "same segment, same bytes and name"
    );
    let (h, bytes) = root().encode();
    assert_eq!(Root::decode("s", &h, &bytes), Ok(root()));
    let mut other = root();
    other.backup_id = 8;
    assert_ne!(other.encode().0, h);
}

#[test]
fn corrupt_manifests_are_refused() {
    let (h, bytes) = segment().encode();
    let key = keys::segment(&h);
    let mut bad = bytes.to_vec();
    bad[10] ^= 1;
    corrupt_why(Segment::decode("s", &h, &bad), &key);
    corrupt_why(Segment::decode("s", &h, &bytes[..bytes.len() - 1]), &key);
    let why = corrupt_why(
        Segment::decode("s", &Hash([9; 32]), &bytes),
        &keys::segment(&Hash([9; 32])),
    );
    assert!(why.contains("hash"), "{why}");

    // Well named but not a segment, or out of order.
    let junk = b"{\"format\":1}".to_vec();
    let jh = Hash(*blake3::hash(&junk).as_bytes());
    corrupt_why(Segment::decode("s", &jh, &junk), &keys::segment(&jh));
    let mut unordered = segment();
    unordered.regions.swap(0, 1);
    let (uh, ub) = unordered.encode();
    let why = corrupt_why(Segment::decode("s", &uh, &ub), &keys::segment(&uh));
    assert!(why.contains("ascending"), "{why}");
    let mut twice = root();
    twice.segments.push((3, Hash([5; 32])));
    let (th, tb) = twice.encode();
    corrupt_why(Root::decode("s", &th, &tb), &keys::root(&th));
}

#[test]
fn a_newer_format_says_so() {
    let mut newer = root();
    newer.format = 2;
    let (h, bytes) = newer.encode();
    let why = corrupt_why(Root::decode("s", &h, &bytes), &keys::root(&h));
    assert!(
        why.contains("format 2 is newer than this build reads"),
        "{why}"
    );
    // Even when its fields are not this build's.
    let v2 = br#"{"format":2,"chunks":{"0":"x"}}"#.to_vec();
    let h = Hash(*blake3::hash(&v2).as_bytes());
    let why = corrupt_why(Segment::decode("s", &h, &v2), &keys::segment(&h));
    assert!(why.contains("newer"), "{why}");
}
