//! The connection to the node a replica is copied from: one request at a time, each
//! answered within 30 s. Must never trust an answer: its kind, request id and reply are
//! checked before its body is returned.

use std::time::Duration;

use bytes::Bytes;
use tessera_net::FrameReader;
use tessera_net::{ConnRead, ConnWrite, Expect, Security};
use tessera_proto::data::{ChunkAddr, Op, Reply, Request};
use tessera_proto::frame::{Frame, Kind};

/// One request/answer connection to the node being copied from.
pub(crate) struct Source {
    reader: FrameReader<ConnRead>,
    writer: ConnWrite,
    next_id: u64,
}

impl Source {
    /// A connection to node `node` at `addr` (its certificate must name it).
    pub(crate) async fn connect(
        security: &Security,
        node: u64,
        addr: &str,
    ) -> Result<Source, String> {
        let s = security
            .connect(addr, Expect::Node(node), Duration::from_secs(5))
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let (r, w) = s.into_split();
        Ok(Source {
            reader: FrameReader::new(r),
            writer: w,
            next_id: 1,
        })
    }

    pub(crate) async fn ask(&mut self, req: Request) -> Result<Bytes, String> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = Frame::new(req.kind(), id, req.encode());
        let work = async {
            tessera_net::write_frame(&mut self.writer, &frame)
                .await
                .map_err(|e| e.to_string())?;
            let f = self
                .reader
                .next()
                .await
                .map_err(|e| e.to_string())?
                .ok_or("connection closed")?;
            if f.kind != Kind::Reply || f.request_id != id {
                return Err(format!("unexpected {:?} frame", f.kind));
            }
            match Reply::decode(&f.body).map_err(|e| e.to_string())? {
                Reply::Ok(b) => Ok(b),
                other => Err(format!("{other:?}")),
            }
        };
        tokio::time::timeout(Duration::from_secs(30), work)
            .await
            .map_err(|_| "timed out".to_string())?
    }
}

/// A catch-up request of `(group, volume, chunk, layer)`: the layer rides in
/// [`Request::seq`] (a source from before layers ignores it and serves layer 1).
pub(crate) fn catch_up_req(
    op: Op,
    (group, volume, chunk, layer): (u64, u64, u64, u64),
    offset: u32,
    len: u32,
) -> Request {
    let mut req = Request::other(
        op,
        ChunkAddr {
            group,
            volume,
            chunk,
        },
        offset,
        len,
    );
    req.seq = layer;
    req
}
