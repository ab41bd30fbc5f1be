//! An S3-compatible server for tests and benchmarks: `s3s-fs` (a real S3 protocol
//! implementation over a directory, with SigV4 authentication) in process, with fault
//! injection in front of it (delays, 503s, dropped connections).

use std::path::Path;
use std::time::Duration;

use tessera_proto::control::StoreSpec;

/// A running server; stops when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
    /// The only credentials it accepts.
    pub access_key: String,
    /// The secret of `access_key`.
    pub secret_key: String,
}

impl S3Server {
    /// Serves `root` on a free loopback port, with `bucket` created, on the current tokio
    /// runtime (or a thread of its own when called outside one).
    pub async fn start(root: &Path, bucket: &str) -> S3Server {
        let _ = (root, bucket);
        todo!("the backup branch implements it")
    }

    /// A store spec named `name` in `zone` for this server and bucket.
    pub fn spec(&self, name: &str, zone: &str) -> StoreSpec {
        let _ = (name, zone);
        todo!("the backup branch implements it")
    }

    /// Every request waits `d` before it is served (zero: none).
    pub fn set_delay(&self, d: Duration) {
        let _ = d;
        todo!("the backup branch implements it")
    }

    /// The next `n` requests are answered `503 Slow Down` without being served.
    pub fn fail_next(&self, n: u32) {
        let _ = n;
        todo!("the backup branch implements it")
    }

    /// Requests served so far, by method (`GET`, `PUT`, `HEAD`, `DELETE`, `POST`).
    pub fn requests(&self, method: &str) -> u64 {
        let _ = method;
        todo!("the backup branch implements it")
    }
}
