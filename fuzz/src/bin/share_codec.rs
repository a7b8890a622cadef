//! AFL++ entry point of `guardian::fuzz_targets::share_codec`.

fn main() {
    afl::fuzz!(|data: &[u8]| guardian::fuzz_targets::share_codec(data));
}
