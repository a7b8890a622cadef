//! AFL++ entry point of `guardian::fuzz_targets::report_json`.

fn main() {
    afl::fuzz!(|data: &[u8]| guardian::fuzz_targets::report_json(data));
}
