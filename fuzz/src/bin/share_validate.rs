//! AFL++ entry point of `guardian::fuzz_targets::share_validate`.

fn main() {
    // Compiled built-ins are cached beside this binary (in fuzz/target/, which
    // only the user fuzzing writes), so that each new process loads them fast.
    let exe = std::env::current_exe().expect("the binary's own path");
    let dir = exe.parent().expect("a directory").join("plugin-artifacts");
    guardian::fuzz_targets::cache_artifacts_in(dir);
    afl::fuzz!(|data: &[u8]| guardian::fuzz_targets::share_validate(data));
}
