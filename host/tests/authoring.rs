//! `guardian plugin new` and `guardian plugin check`, run as a plugin author
//! runs them: the real binary, real cargo builds, real components.
//!
//! - A crate written by `plugin new` passes its own tests natively (the
//!   SDK's check suite on `Native<ItsPlugin>`), builds for wasm32-wasip2
//!   and passes `plugin check`, the same suite through the runtime (the
//!   builds reuse `target/wasm-plugins`, where `build.rs` builds the plugins
//!   with the same profile, and `target/authoring-native`, so the SDK's
//!   dependencies are compiled once).
//! - `plugin check` passes on built-ins (a 0.1 one and a robust one; its
//!   time is printed, and measured in BENCHMARKS.md), and fails with a message naming the fix for each broken fixture
//!   (`tests/fixtures/no-export`, `other-world`, `flawed`) and for files that
//!   are not components.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const GUARDIAN: &str = env!("CARGO_BIN_EXE_guardian");

/// Where `build.rs` put the components it built (built-ins and fixtures).
fn components() -> &'static Path {
    Path::new(env!("GUARDIAN_FIXTURES_DIR"))
}

fn component(name: &str) -> PathBuf {
    components().join(format!("{name}.wasm"))
}

/// `target/`: `components()` is `target/wasm-plugins/wasm32-wasip2/release`.
fn target_dir() -> PathBuf {
    components()
        .ancestors()
        .nth(3)
        .expect("the components are under target/wasm-plugins")
        .to_owned()
}

fn guardian(args: &[&str], dir: &Path) -> Output {
    Command::new(GUARDIAN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running guardian")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `guardian plugin check FILE ARGS…` from `dir`: whether it succeeded,
/// and everything it printed.
fn plugin_check(file: &Path, args: &[&str], dir: &Path) -> (bool, String, Duration) {
    let started = Instant::now();
    let file = file.to_str().expect("a UTF-8 path");
    let output = guardian(&[&["plugin", "check", file], args].concat(), dir);
    (output.status.success(), text(&output), started.elapsed())
}

fn assert_contains(all: &str, needles: &[&str]) {
    for needle in needles {
        assert!(all.contains(needle), "expected {needle:?} in:\n{all}");
    }
}

/// A file of measurements, one per line.
fn measurements(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).expect("writing measurements");
    path
}

/// cargo as `build.rs` runs it for the plugins: nothing of the outer
/// build's flags, small release artifacts.
fn cargo(dir: &Path, args: &[&str], target_dir: &Path) -> Output {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1");
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
        "RUSTUP_TOOLCHAIN",
    ] {
        command.env_remove(var);
    }
    command.output().expect("running cargo")
}

#[test]
fn a_new_plugin_passes_its_tests_builds_for_wasm_and_passes_the_check() {
    let parent = tempfile::tempdir().expect("a temporary folder");
    let out = guardian(&["plugin", "new", "demo-plugin"], parent.path());
    assert!(out.status.success(), "{}", text(&out));
    assert_contains(
        &text(&out),
        &[
            "cargo test",
            "cargo build --release --target wasm32-wasip2",
            "guardian plugin check target/wasm32-wasip2/release/demo_plugin.wasm",
            "guardian plugin upload",
        ],
    );
    let dir = parent.path().join("demo-plugin");
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "src/lib.rs",
        "tests/plugin.rs",
        "README.md",
        "guardian-sdk/Cargo.toml",
        "guardian-sdk/wit/plugin.wit",
    ] {
        assert!(dir.join(file).is_file(), "{file} was not written");
    }
    // Writing over an existing crate is refused.
    let again = guardian(&["plugin", "new", "demo-plugin"], parent.path());
    assert!(!again.status.success(), "{}", text(&again));
    assert_contains(&text(&again), &["already_exists"]);

    let started = Instant::now();
    let native = cargo(&dir, &["test"], &target_dir().join("authoring-native"));
    assert!(native.status.success(), "cargo test: {}", text(&native));
    // Its tests run the SDK's check suite natively: the same checks
    // `plugin check` runs on the component below.
    assert_contains(
        &text(&native),
        &[
            "test the_sdk_check_suite_passes ... ok",
            "test result: ok. 2 passed",
        ],
    );
    let tested_in = started.elapsed();

    // `--sdk` depends on that copy instead of writing another.
    let sdk = dir.join("guardian-sdk");
    let out = guardian(
        &[
            "plugin",
            "new",
            "other-plugin",
            "--sdk",
            sdk.to_str().expect("a UTF-8 path"),
        ],
        parent.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let other = parent.path().join("other-plugin");
    assert!(!other.join("guardian-sdk").exists(), "an SDK was written");
    let metadata = cargo(
        &other,
        &["metadata", "--format-version", "1"],
        &target_dir().join("authoring-native"),
    );
    assert!(metadata.status.success(), "{}", text(&metadata));
    let metadata: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).expect("cargo metadata prints JSON");
    let used: Vec<&str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["name"] == "guardian-sdk")
        .filter_map(|p| p["manifest_path"].as_str())
        .collect();
    let expected = sdk.join("Cargo.toml");
    assert_eq!(used, [expected.to_str().expect("a UTF-8 path")]);

    let started = Instant::now();
    let wasm_dir = target_dir().join("wasm-plugins");
    let build = cargo(
        &dir,
        &["build", "--release", "--target", "wasm32-wasip2"],
        &wasm_dir,
    );
    assert!(build.status.success(), "cargo build: {}", text(&build));
    let built_in = started.elapsed();

    let wasm = wasm_dir.join("wasm32-wasip2/release/demo_plugin.wasm");
    let (ok, out, _) = plugin_check(
        &wasm,
        &[
            "--params",
            r#"{"max": 10}"#,
            "--measurements",
            "measurements.jsonl",
        ],
        &dir,
    );
    assert!(ok, "{out}");
    assert_contains(
        &out,
        &[
            "demo-plugin 0.1.0, contract guardian:plugin@0.1.0",
            r#"{"count":4,"sum":20}"#,
            "0 failed",
        ],
    );
    eprintln!("plugin new: cargo test {tested_in:?}, wasm build {built_in:?}");
}

#[test]
fn built_in_plugins_pass_the_check_within_five_seconds() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for (name, params, lines) in [
        (
            "sum",
            r#"{"length": 2}"#,
            &["[1, 2]", "[3, 4]", "[5, 6]"][..],
        ),
        ("prio3_count", "{}", &["true", "false", "true"][..]),
        (
            "dp_sum",
            r#"{"bound": 10, "epsilon": 1.0}"#,
            &["1", "5", "10"][..],
        ),
    ] {
        let file = measurements(dir.path(), &format!("{name}.jsonl"), lines);
        let file = file.to_str().expect("a UTF-8 path");
        let (ok, out, took) = plugin_check(
            &component(name),
            &["--params", params, "--measurements", file],
            dir.path(),
        );
        assert!(ok, "{name}: {out}");
        assert_contains(&out, &["0 failed"]);
        eprintln!("plugin check {name}: {took:?}");
    }
}

#[test]
fn the_check_names_what_is_wrong_with_a_broken_plugin() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let numbers = measurements(dir.path(), "numbers.jsonl", &["1", "2", "3", "4"]);
    let numbers = numbers.to_str().expect("a UTF-8 path");
    let core_module = dir.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").expect("writing a core module");
    let text_file = dir.path().join("notes.wasm");
    std::fs::write(&text_file, "plain text, not WebAssembly").expect("writing a file");
    let flaw = |flaw: &str| format!(r#"{{"flaw": "{flaw}"}}"#);
    let cases: Vec<(&str, PathBuf, String, Vec<&str>)> = vec![
        (
            "no export",
            component("fixture_no_export"),
            "{}".into(),
            vec!["invalid_plugin", "exports nothing", "export_plugin!"],
        ),
        (
            "an rlib",
            components().join("libfixture_no_export.rlib"),
            "{}".into(),
            vec![
                "invalid_plugin",
                "an .rlib",
                "crate-type = [\"cdylib\", \"rlib\"]",
            ],
        ),
        (
            "no .wasm at all",
            dir.path()
                .join("target/wasm32-wasip2/release/forgot_cdylib.wasm"),
            "{}".into(),
            vec!["unreadable_file", "crate-type = [\"cdylib\", \"rlib\"]"],
        ),
        (
            "a core module",
            core_module,
            "{}".into(),
            vec!["invalid_plugin", "core WebAssembly module", "wasm32-wasip2"],
        ),
        (
            "not WebAssembly",
            text_file,
            "{}".into(),
            vec!["invalid_plugin", "not WebAssembly at all"],
        ),
        (
            "another world",
            component("fixture_other_world"),
            "{}".into(),
            vec![
                "invalid_plugin",
                "guardian:other/greeter",
                "guardian:plugin/algorithm@0.1.0",
                "export_plugin!",
            ],
        ),
        (
            "not additive",
            component("fixture_flawed"),
            flaw("non-additive"),
            vec![
                "check_failed",
                "FAIL  round trips",
                "depends on how the measurements were split",
            ],
        ),
        (
            "a nondeterministic configure",
            component("fixture_flawed"),
            flaw("nondeterministic-configure"),
            vec![
                "check_failed",
                "FAIL  configure is deterministic",
                "another configuration",
            ],
        ),
        (
            "params the plugin refuses",
            component("fixture_flawed"),
            flaw("no-such-flaw"),
            vec!["invalid_params", "unknown variant"],
        ),
    ];
    for (what, file, params, needles) in cases {
        let (ok, out, _) = plugin_check(
            &file,
            &["--params", &params, "--measurements", numbers],
            dir.path(),
        );
        assert!(!ok, "{what}: the check passed:\n{out}");
        assert!(!out.contains("panicked"), "{what}:\n{out}");
        assert_contains(&out, &needles);
    }
    // The same fixture without its flaw passes: the failures above are the flaws'.
    let (ok, out, _) = plugin_check(
        &component("fixture_flawed"),
        &["--params", &flaw("none"), "--measurements", numbers],
        dir.path(),
    );
    assert!(ok, "{out}");
    // Without measurements, the check says what it needs, in the plugin's words.
    let (ok, out, _) = plugin_check(
        &component("sum"),
        &["--params", r#"{"length": 2}"#],
        dir.path(),
    );
    assert!(!ok, "{out}");
    assert_contains(
        &out,
        &[
            "invalid_measurements",
            "--measurements FILE",
            "a list of 2 integers",
        ],
    );
}
