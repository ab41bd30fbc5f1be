//! AFL++ entry point of the `request` target ([`tessera_fuzz::request`]).

fn main() {
    afl::fuzz!(|data: &[u8]| tessera_fuzz::request::run(data));
}
