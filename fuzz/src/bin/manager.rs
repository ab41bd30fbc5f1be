//! AFL++ entry point of the `manager` target ([`tessera_fuzz::manager`]).

fn main() {
    afl::fuzz!(|data: &[u8]| tessera_fuzz::manager::run(data));
}
