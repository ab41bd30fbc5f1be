//! `tessera-s3-server --root DIR [--addr 127.0.0.1:0] [--bucket B] [--access-key K
//! --secret-key S]`: the test server as a process (benchmarks, manual tests). Prints
//! `endpoint=... bucket=... access_key=... secret_key=...` once serving.

fn main() {
    todo!("the backup branch implements it")
}
