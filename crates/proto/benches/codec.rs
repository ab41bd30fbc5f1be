//! The data-plane wire format: a write request frame of 4 KiB and of 1 MiB, encoded (request
//! body + frame header, the two CRC32Cs) and decoded (frame off a receive buffer, then the
//! request body), and a `RaftBatch` of 16 messages of 4 KiB each way.
//!
//! Encoding measures what a sender does before a vectored write: `Request::encode` (which
//! copies the payload into the body) and `frame::encode_header` (which checksums the body).
//! Decoding starts from a `BytesMut` holding exactly one frame, as a connection's receive
//! buffer would; the buffer is prepared outside the timing.

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, black_box, criterion_group, criterion_main};
use tessera_proto::data::{ChunkAddr, RaftBatch, Request};
use tessera_proto::frame::{self, Frame, Kind};

const ADDR: ChunkAddr = ChunkAddr {
    group: 7,
    volume: 3,
    chunk: 9,
};

fn payload(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

fn write_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_codec");
    for (name, len) in [("4k", 4096usize), ("1m", 1 << 20)] {
        let req = Request::write(ADDR, 8192, payload(len, 1));
        let wire = {
            let body = req.encode();
            Frame::new(Kind::Write, 42, body).to_bytes()
        };
        g.throughput(Throughput::Bytes(wire.len() as u64));

        g.bench_function(format!("write_{name}_encode"), |b| {
            b.iter(|| {
                let req = black_box(&req);
                let body = req.encode();
                let header = frame::encode_header(req.kind(), 42, &body);
                (header, body)
            })
        });

        g.bench_function(format!("write_{name}_decode"), |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| {
                    let f = frame::decode(&mut buf).unwrap().unwrap();
                    let req = Request::decode(f.kind, &f.body).unwrap();
                    debug_assert_eq!(req.data.len(), len);
                    (req, buf)
                },
                BatchSize::SmallInput,
            )
        });
    }

    let batch = RaftBatch {
        from_node: 1,
        msgs: (0..16u64)
            .map(|g| (g + 1, payload(4096, g as u8)))
            .collect(),
    };
    let body = batch.encode();
    let wire = Frame::new(Kind::RaftBatch, 0, body).to_bytes();
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("raft_batch_16x4k_encode", |b| {
        b.iter(|| {
            let body = black_box(&batch).encode();
            let header = frame::encode_header(Kind::RaftBatch, 0, &body);
            (header, body)
        })
    });
    g.bench_function("raft_batch_16x4k_decode", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| {
                let f = frame::decode(&mut buf).unwrap().unwrap();
                let batch = RaftBatch::decode(&f.body).unwrap();
                debug_assert_eq!(batch.msgs.len(), 16);
                (batch, buf)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, write_frames);
criterion_main!(benches);
