//! AFL++ entry point of the `nbd` target ([`tessera_fuzz::nbd`]).

fn main() {
    afl::fuzz!(|data: &[u8]| tessera_fuzz::nbd::run(data));
}
