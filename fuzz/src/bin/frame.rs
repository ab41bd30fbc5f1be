//! AFL++ entry point of the `frame` target ([`tessera_fuzz::frame`]).

fn main() {
    afl::fuzz!(|data: &[u8]| tessera_fuzz::frame::run(data));
}
