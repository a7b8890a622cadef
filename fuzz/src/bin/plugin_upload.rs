//! AFL++ entry point of `guardian::fuzz_targets::plugin_upload`.

fn main() {
    afl::fuzz!(|data: &[u8]| guardian::fuzz_targets::plugin_upload(data));
}
