//! Fuzz targets of Tessera: the code that reads bytes from the network or from disk.
//!
//! Each target is a plain function over arbitrary bytes that must never panic, hang or
//! allocate without bound, and that asserts what must hold of whatever it decodes (a
//! decoded value re-encodes to itself). `src/bin/<target>.rs` hands it to AFL++
//! (`cargo afl build --features afl`, run by `run.sh`); `tests/replay.rs` runs it over
//! every committed input (`corpus/<target>/`, `regressions/<target>/`) in a plain
//! `cargo test`, so a crash once found stays fixed.
//!
//! - [`frame`]: `tessera_proto::frame` decoding, whole and in pieces.
//! - [`request`]: data-plane requests and replies, Raft batches, replicated commands,
//!   chunk lists, manager Raft parts, control-plane JSON.
//! - [`nbd`]: an NBD connection (handshake, then transmission) over an in-memory stream,
//!   against an in-memory backend that checks the server keeps the backend's contract.
//! - [`log`]: the engine's log opened over segment files built from the input.
//! - [`raft`]: Raft batches from peers stepped into a group hosted by a real `RaftNode`.
//! - [`manager`]: manager requests, heartbeats, clock steps, reconcile passes, background
//!   work and restarts in any order against one real manager; its state's invariants hold.
//! - [`seeds`]: the starting inputs of each target, from real encodings.
//! - [`alloc`]: the allocator that turns unbounded allocation into a crash.
//!
//! Must never be a dependency of the product; product crates expose at most a hidden
//! entry point for it (`tessera_nbd::serve_stream`, `tessera_manager::fuzzing`).

pub mod alloc;
pub mod frame;
pub mod input;
pub mod log;
pub mod manager;
pub mod nbd;
pub mod raft;
pub mod request;
pub mod seeds;

/// A target: a function over one input.
pub type Target = fn(&[u8]);

/// Every target by name, as `run.sh`, `seeds` and the replay test know them.
pub const TARGETS: [(&str, Target); 6] = [
    ("frame", frame::run),
    ("request", request::run),
    ("nbd", nbd::run),
    ("log", log::run),
    ("raft", raft::run),
    ("manager", manager::run),
];

/// A fresh empty directory for one run of `target` (under `TMPDIR`: `run.sh` points it at
/// memory), named by the process and thread: `run.sh` removes them all after a target's
/// run, and the replay tests run targets on several threads at once.
pub fn scratch_dir(target: &str) -> std::path::PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let path = std::env::temp_dir().join(format!(
        "tessera-fuzz-{target}-{}-{thread}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("create the scratch directory");
    path
}
