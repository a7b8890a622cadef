//! AFL++ entry point of `guardian::fuzz_targets::jwt_header`.

fn main() {
    afl::fuzz!(|data: &[u8]| guardian::fuzz_targets::jwt_header(data));
}
