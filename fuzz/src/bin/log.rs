//! AFL++ entry point of the `log` target ([`tessera_fuzz::log`]).

fn main() {
    afl::fuzz!(|data: &[u8]| tessera_fuzz::log::run(data));
}
