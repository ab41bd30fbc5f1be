//! AFL++ entry point of the `raft` target ([`tessera_fuzz::raft`]).

fn main() {
    afl::fuzz!(|data: &[u8]| tessera_fuzz::raft::run(data));
}
