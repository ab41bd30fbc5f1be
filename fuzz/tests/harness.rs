//! The harnesses reach what they are meant to: seeds get past the handshake, records
//! built by the log harness are the engine's format, repaired checksums are right.

use bytes::BytesMut;
use tessera_engine::log::{Log, LogOptions};
use tessera_fuzz::log::{Dir, TYPE_ENTRY, TYPE_SLOT};
use tessera_fuzz::{frame, nbd, seeds};
use tessera_nbd::testing::{SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC};
use tessera_proto::frame::{Frame, Kind};

fn seed(target: &str, name: &str) -> Vec<u8> {
    let all = seeds::of(target);
    all.into_iter()
        .find(|s| s.0 == name)
        .expect("a seed of that name")
        .1
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[test]
fn nbd_seeds_are_answered_in_transmission() {
    let answer = nbd::converse(&seed("nbd", "go-then-commands"));
    // One simple reply for each command but NBD_CMD_DISC.
    assert_eq!(count(&answer, &SIMPLE_REPLY_MAGIC.to_be_bytes()), 6);
    // Structured chunks for the reads (one an error) and the block statuses.
    let answer = nbd::converse(&seed("nbd", "structured-block-status"));
    assert_eq!(count(&answer, &STRUCTURED_REPLY_MAGIC.to_be_bytes()), 6);
}

#[test]
fn log_records_built_here_are_the_engines_format() {
    let mut dir = Dir::default();
    for index in 1..=3 {
        dir.record(TYPE_ENTRY, 0, 5, 2, index, b"entry");
    }
    dir.record(TYPE_SLOT, 1, 5, 0, 0, b"slot value");
    dir.batch_end(None);
    let tmp = std::env::temp_dir().join(format!("tessera-fuzz-format-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    dir.write(&tmp).unwrap();
    let (log, recovered) = Log::open_stepped(&tmp, LogOptions::default()).unwrap();
    log.shutdown();
    let group = &recovered.groups[&5];
    let indexes: Vec<u64> = group.entries.iter().map(|e| e.index).collect();
    assert_eq!(indexes, [1, 2, 3]);
    assert_eq!(&group.slots[&1][..], b"slot value");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn repaired_checksums_make_frames_valid() {
    let f = Frame::new(Kind::Rpc, 7, bytes::Bytes::from_static(b"{}"));
    let mut wire = f.to_bytes().to_vec();
    wire[20..28].fill(0);
    frame::fix_checksums(&mut wire);
    let got = tessera_proto::frame::decode(&mut BytesMut::from(&wire[..]));
    assert_eq!(got, Ok(Some(f)));
}
