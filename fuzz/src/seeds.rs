//! The starting inputs of every target, from real encodings: `cargo run --bin seeds`
//! writes them to `corpus/<target>/` (committed), where `run.sh` starts AFL++ from.

use bytes::Bytes;
use tessera_nbd::testing::*;
use tessera_proto::capability::{Capability, Signed};
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::copy::{ChunkEntry, ChunkListPage};
use tessera_proto::data::{ChunkAddr, Op, RaftBatch, Reply, Request};
use tessera_proto::frame::{Frame, Kind};
use tessera_proto::manager_raft;

/// A named input.
pub type Seed = (&'static str, Vec<u8>);

/// The seeds of `target`.
pub fn of(target: &str) -> Vec<Seed> {
    match target {
        "frame" => frame(),
        "request" => request(),
        "nbd" => nbd(),
        "log" => log(),
        "raft" => raft(),
        "manager" => crate::manager::seeds(),
        other => panic!("no target {other}"),
    }
}

const ADDR: ChunkAddr = ChunkAddr {
    group: 3,
    volume: 7,
    chunk: 2,
};

fn write_request() -> Request {
    Request {
        epoch: 4,
        id: 99 << 64 | 5,
        seq: 2,
        ..Request::write(ADDR, 4096, Bytes::from_static(b"0123456789abcdef"))
    }
}

fn raft_batch() -> RaftBatch {
    RaftBatch {
        from_node: 2,
        msgs: vec![
            (3, Bytes::from_static(b"\x08\x03\x10\x02")),
            (4, Bytes::new()),
        ],
    }
}

fn frame() -> Vec<Seed> {
    let write = write_request();
    let (head, data) = write.encode_parts();
    let frames = [
        Frame::with_tail(Kind::Write, 1, head, data),
        Frame::new(
            Kind::Read,
            2,
            Request::other(Op::Read, ADDR, 0, 4096).encode(),
        ),
        Frame::new(
            Kind::Reply,
            1,
            Reply::Ok(Bytes::from_static(b"data")).encode(),
        ),
        Frame::new(Kind::RaftBatch, 0, raft_batch().encode()),
        Frame::new(Kind::Rpc, 9, Bytes::from_static(br#""ListVolumes""#)),
    ];
    let mut stream = Vec::new();
    for f in &frames {
        stream.extend_from_slice(&f.to_bytes());
    }
    let one = frames[0].to_bytes().to_vec();
    vec![
        ("one-write", [&[0u8][..], &one].concat()),
        ("stream", [&[0u8][..], &stream].concat()),
        ("stream-fixed-in-7s", [&[1 | 7 << 1][..], &stream].concat()),
        ("stream-in-bytes", [&[2u8][..], &stream].concat()),
    ]
}

fn request() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let requests = [
        write_request(),
        Request::other(Op::Read, ADDR, 512, 8192),
        Request {
            seq: 3,
            ..Request::other(Op::BlockStatus, ADDR, 0, 65536)
        },
        Request {
            epoch: 9,
            seq: 4,
            ..Request::other(Op::Fence, ADDR, 0, 0)
        },
    ];
    let names = [
        "request-write",
        "request-read",
        "request-block-status",
        "request-fence",
    ];
    for (name, r) in names.into_iter().zip(&requests) {
        seeds.push((name, [&[0, r.kind() as u8][..], &r.encode()].concat()));
    }
    let replies = [
        ("reply-ok", Reply::Ok(Bytes::from_static(b"data"))),
        ("reply-not-leader", Reply::NotLeader { hint: 3 }),
        ("reply-fenced", Reply::Fenced("epoch 3 < 4".into())),
        ("reply-resequence", Reply::Resequence { seq: 5 }),
    ];
    for (name, r) in replies {
        seeds.push((name, [&[1u8][..], &r.encode()].concat()));
    }
    seeds.push(("raft-batch", [&[2u8][..], &raft_batch().encode()].concat()));
    let commands = [
        (
            "command-write",
            Command {
                op: CmdOp::Write,
                volume: 7,
                chunk: 2,
                offset: 4096,
                len: 4,
                id: 12,
                epoch: 3,
                seq: 2,
                data: Bytes::from_static(b"abcd"),
            },
        ),
        (
            "command-link",
            Command {
                op: CmdOp::Link,
                volume: 8,
                chunk: 0,
                offset: 0,
                len: 0,
                id: 0,
                epoch: 0,
                seq: 1,
                data: Command::link_data(7, 2),
            },
        ),
        (
            "command-merge",
            Command {
                op: CmdOp::Merge,
                volume: 7,
                chunk: 1,
                offset: 0,
                len: 8192,
                id: 0,
                epoch: 0,
                seq: 0,
                data: Command::merge_data(1, 3, true),
            },
        ),
    ];
    for (name, c) in commands {
        seeds.push((name, [&[3u8][..], &c.encode()].concat()));
    }
    let entry = |volume, chunk, layer, link| ChunkEntry {
        volume,
        chunk,
        layer,
        blocks: 16,
        link,
    };
    let pages = [
        (
            "chunk-list",
            ChunkListPage {
                entries: vec![entry(1, 0, 1, None), entry(1, 1, 1, None)],
                more: true,
                layers: false,
            },
        ),
        (
            "chunk-list-layers",
            ChunkListPage {
                entries: vec![entry(2, 0, 1, None), entry(2, 0, 3, Some((1, 2)))],
                more: false,
                layers: true,
            },
        ),
    ];
    for (name, p) in pages {
        seeds.push((name, [&[4u8][..], &p.encode()].concat()));
    }
    let (bodies, _) =
        manager_raft::encode(&[Bytes::from_static(b"msg one"), Bytes::from_static(b"two")]);
    let mut raft = vec![5u8];
    for b in bodies {
        raft.extend_from_slice(&(b.len() as u16).to_le_bytes());
        raft.extend_from_slice(&b);
    }
    seeds.push(("manager-raft", raft));
    let json: [(&str, u8, &[u8]); 7] = [
        (
            "manager-create-volume",
            6,
            br#"{"CreateVolume":{"name":"v","size":1048576,"chunk_size":null}}"#,
        ),
        ("manager-list-volumes", 6, br#""ListVolumes""#),
        (
            "manager-delete-volume",
            6,
            br#"{"DeleteVolume":{"name":"db1"}}"#,
        ),
        (
            "manager-reply-error",
            7,
            br#"{"Err":{"NotFound":"volume \"db1\" not found"}}"#,
        ),
        (
            "storage-drop-chunks",
            8,
            br#"{"DropChunks":{"group_id":3,"volume_id":7,"chunks":[1,2]}}"#,
        ),
        ("storage-status", 8, br#""Status""#),
        ("node-identity", 10, br#"{"node_id":12}"#),
    ];
    for (name, selector, body) in json {
        seeds.push((name, [&[selector][..], body].concat()));
    }
    let cap = Capability {
        volume: 7,
        epoch: 3,
        holder: "client-a".into(),
        expires_ms: 1_800_000_000_000,
        issuer: 1,
        fence_only: false,
    };
    let signed = Signed {
        body: cap.encode(),
        scheme: 0x0807,
        signature: vec![0x5a; 64],
        signer: b"0\x82 certificate".to_vec(),
    };
    seeds.push(("capability", [&[11u8][..], &cap.encode()].concat()));
    seeds.push((
        "capability-signed",
        [&[12u8][..], &signed.encode()].concat(),
    ));
    seeds.push((
        "capability-hex",
        [&[13u8][..], signed.to_hex().as_bytes()].concat(),
    ));
    seeds
}

/// Client bytes of the NBD handshake and transmission.
struct Client(Vec<u8>);

impl Client {
    fn new(flags: u32) -> Self {
        Client(flags.to_be_bytes().to_vec())
    }

    fn option(&mut self, opt: u32, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&IHAVEOPT.to_be_bytes());
        self.0.extend_from_slice(&opt.to_be_bytes());
        self.0.extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.0.extend_from_slice(data);
        self
    }

    /// `NBD_OPT_GO` or `NBD_OPT_INFO` data: the name, then the information requested.
    fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    /// `NBD_OPT_{SET,LIST}_META_CONTEXT` data.
    fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    fn request(&mut self, cmd: u16, flags: u16, handle: u64, offset: u64, len: u32) -> &mut Self {
        self.0.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        self.0.extend_from_slice(&flags.to_be_bytes());
        self.0.extend_from_slice(&cmd.to_be_bytes());
        self.0.extend_from_slice(&handle.to_be_bytes());
        self.0.extend_from_slice(&offset.to_be_bytes());
        self.0.extend_from_slice(&len.to_be_bytes());
        self
    }

    fn payload(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        self
    }

    fn commands(&mut self) -> &mut Self {
        self.request(CMD_WRITE, CMD_FLAG_FUA, 1, 4090, 12)
            .payload(b"hello, block")
            .request(CMD_READ, 0, 2, 4088, 16)
            .request(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 3, 0, 8192)
            .request(CMD_TRIM, 0, 4, 8192, 4096)
            .request(CMD_FLUSH, 0, 5, 0, 0)
            .request(CMD_READ, 0, 6, 0, 0)
            .request(CMD_DISC, 0, 7, 0, 0)
    }
}

fn nbd() -> Vec<Seed> {
    let both = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
    let mut go = Client::new(both);
    go.option(
        OPT_GO,
        &Client::go_data("vol0", &[INFO_BLOCK_SIZE, INFO_NAME]),
    )
    .commands();
    let mut structured = Client::new(both);
    structured
        .option(OPT_STRUCTURED_REPLY, &[])
        .option(
            OPT_LIST_META_CONTEXT,
            &Client::meta_data("vol0", &["base:"]),
        )
        .option(
            OPT_SET_META_CONTEXT,
            &Client::meta_data("vol0", &["base:allocation"]),
        )
        .option(OPT_GO, &Client::go_data("vol0", &[]))
        .request(CMD_WRITE, 0, 1, 4096, 4)
        .payload(b"data")
        .request(CMD_BLOCK_STATUS, 0, 2, 0, 3 * 4096)
        .request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 3, 4096, 4096)
        .request(CMD_READ, CMD_FLAG_DF, 4, 4000, 200)
        .request(CMD_READ, 0, 5, 1 << 20, 1)
        .commands();
    let mut old = Client::new(FLAG_C_FIXED_NEWSTYLE);
    old.option(OPT_EXPORT_NAME, b"odd").commands();
    let mut haggle = Client::new(both);
    haggle
        .option(OPT_LIST, &[])
        .option(OPT_INFO, &Client::go_data("", &[INFO_BLOCK_SIZE]))
        .option(OPT_INFO, &Client::go_data("nope", &[]))
        .option(OPT_GO, &Client::go_data("zbusy", &[]))
        .option(OPT_STARTTLS, &[])
        .option(OPT_EXTENDED_HEADERS, &[])
        .option(OPT_ABORT, &[]);
    let mut snapshot = Client::new(both);
    snapshot
        .option(OPT_GO, &Client::go_data("snap@1", &[]))
        .request(CMD_WRITE, 0, 1, 0, 2)
        .payload(b"no")
        .request(CMD_READ, 0, 2, 0, 4096)
        .request(CMD_DISC, 0, 3, 0, 0);
    vec![
        ("go-then-commands", go.0),
        ("structured-block-status", structured.0),
        ("export-name", old.0),
        ("haggle-then-abort", haggle.0),
        ("read-only-snapshot", snapshot.0),
    ]
}

/// Log programs (see [`crate::log::build`]): the segment size's index, then ops: an op
/// byte and its fields.
fn log() -> Vec<Seed> {
    let entry = |group: u8, term: u8, index: u8, payload: &[u8]| {
        let mut op = vec![1, group, term, index, 0, payload.len() as u8];
        op.extend_from_slice(payload);
        op
    };
    let slot = |group: u8, slot: u8, value: &[u8]| {
        let mut op = vec![2, group, slot, value.len() as u8];
        op.extend_from_slice(value);
        op
    };
    let batch_end = vec![5u8];
    let mut one_batch = vec![0u8];
    for i in 1..=3 {
        one_batch.extend(entry(1, 1, i, b"entry"));
    }
    one_batch.extend(slot(1, 0, b"hard state"));
    one_batch.extend(&batch_end);

    let mut segments = vec![1u8];
    segments.extend(&one_batch[1..]);
    segments.extend([0, 0]); // next segment
    segments.extend(entry(1, 2, 3, b"overwrite"));
    segments.extend(entry(2, 1, 1, b"other group"));
    segments.extend(&batch_end);
    segments.extend([4, 1, 2]); // compact group 1 to index 2
    segments.extend([3, 2]); // tombstone of group 2
    segments.extend(&batch_end);

    let mut torn = one_batch.clone();
    torn.extend(entry(1, 1, 4, b"torn"));
    torn.extend([9, 3]); // cut 3 bytes off the end

    let mut damaged = one_batch.clone();
    damaged.extend([8, 50, 0, 3]); // flip a bit in the first batch
    damaged.extend(entry(1, 1, 4, b"after"));
    damaged.extend(&batch_end);

    let mut recycled = one_batch.clone();
    recycled.extend([13, 1, 1]); // a free file of the full segment size
    recycled.extend([11, 0, 1, 9]); // a stale record
    recycled.extend([10, 4]); // zero fill
    recycled.extend([14, 7]); // a leftover temporary file, its 16 bytes:
    recycled.extend(b"preallocating...");

    vec![
        ("one-batch", one_batch),
        ("two-segments", segments),
        ("torn-tail", torn),
        ("damaged-middle", damaged),
        ("recycled", recycled),
    ]
}

/// A message of a `raft` program (see [`crate::raft`]): group 1, to this node, from the
/// batch's sender, the fields given, no commit term or reject hint, then `entries`.
fn raft_message(
    ty: u8,
    term: u8,
    log_term: u8,
    index: u8,
    commit: u8,
    flags: u8,
    entries: &[Vec<u8>],
) -> Vec<u8> {
    let mut m = vec![
        1,
        ty,
        1,
        1,
        term,
        log_term,
        index,
        commit,
        0,
        flags,
        0,
        entries.len() as u8,
    ];
    for e in entries {
        m.extend_from_slice(e);
    }
    m
}

/// An entry of a `raft` program carrying a write of 16 bytes at the start of chunk 0.
fn raft_write(term: u8, index: u8) -> Vec<u8> {
    // Normal entry, term, index; command: write, offset 0, 16 bytes, volume 1, chunk 0,
    // id, epoch 0, seq 0.
    vec![0, term, index, 0, 0, 0, 16, 1, 0, index, 0, 0]
}

/// Raft programs: ops (2: a batch from peer 2 of one message, 0: a wait) and messages.
fn raft() -> Vec<Seed> {
    const APPEND: u8 = 3;
    const VOTE: u8 = 5;
    const VOTE_RESPONSE: u8 = 6;
    const SNAPSHOT: u8 = 7;
    const HEARTBEAT: u8 = 8;
    const PRE_VOTE: u8 = 17;
    let batch = |msg: Vec<u8>| [vec![2, 0, 0], msg].concat();
    let wait = |ms: u8| vec![0, ms];
    let follow = [
        batch(raft_message(APPEND, 6, 5, 5, 6, 0, &[raft_write(6, 6)])),
        wait(2),
        batch(raft_message(
            APPEND,
            6,
            6,
            6,
            7,
            0,
            &[raft_write(6, 7), raft_write(6, 8)],
        )),
        batch(raft_message(HEARTBEAT, 6, 0, 0, 8, 0, &[])),
        wait(3),
    ]
    .concat();
    let votes = [
        batch(raft_message(PRE_VOTE, 7, 5, 5, 0, 0, &[])),
        batch(raft_message(VOTE, 7, 5, 5, 0, 2, &[])),
        wait(15),
        wait(15),
        batch(raft_message(VOTE_RESPONSE, 6, 0, 0, 0, 0, &[])),
        batch(raft_message(18, 6, 0, 0, 0, 0, &[])),
        wait(5),
    ]
    .concat();
    // A snapshot at index 9, term 6, of voters 1, 2 and 3, then entries after it.
    let mut snapshot = raft_message(SNAPSHOT, 6, 6, 9, 9, 4, &[]);
    snapshot.extend([9, 6, 0, 0, 0, 2, 0]);
    let snapshot = [
        batch(snapshot),
        wait(2),
        batch(raft_message(APPEND, 6, 6, 9, 10, 0, &[raft_write(6, 10)])),
    ]
    .concat();
    vec![
        ("follow-a-leader", follow),
        ("votes", votes),
        ("snapshot", snapshot),
    ]
}
