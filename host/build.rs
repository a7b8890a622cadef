//! Builds the built-in plugins (and the test fixtures) for `wasm32-wasip2`
//! with a nested cargo, so that a plain `cargo build` ships them inside the
//! `guardian` binary.
//!
//! - every crate under `plugins/` is embedded (`$OUT_DIR/builtins.rs`);
//! - every crate under `tests/fixtures/` is built but not embedded: tests find
//!   the files through `GUARDIAN_FIXTURES_DIR`.
//!
//! The nested build uses its own target directory (`target/wasm-plugins`) so
//! it neither waits on the outer build's lock nor is rebuilt per profile.

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    // `main() -> Result` would print the error with `Debug`, escaping newlines.
    if let Err(e) = build() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or("host/ has no parent")?
        .to_owned();
    for watched in [
        "plugins",
        "sdk",
        "wit",
        "tests/fixtures",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let builtins = crates_under(&root.join("plugins"))?;
    let fixtures = crates_under(&root.join("tests/fixtures"))?;
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => root.join("target"),
    }
    .join("wasm-plugins");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for name in builtins.iter().chain(&fixtures) {
        command.args(["-p", name]);
    }
    // What the outer cargo sets for its own compilation must not leak into
    // the nested one (clippy's wrapper, host rustflags, a target override).
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    // Small artifacts: no debug info, and link-time optimisation across the SDK.
    command
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1");
    let output = command.output()?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            "\nhint: install the target with `rustup target add wasm32-wasip2`"
        } else {
            ""
        };
        return Err(format!("building the wasm plugins failed:\n{stderr}{hint}").into());
    }

    let wasm_dir = target_dir.join(TARGET).join("release");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut source = String::from(
        "/// Built-in plugins as `(crate name, component bytes)`, built from `plugins/`.\n\
         pub const BUILTINS: &[(&str, &[u8])] = &[\n",
    );
    for name in &builtins {
        let file = format!("{}.wasm", name.replace('-', "_"));
        let embedded = out_dir.join(&file);
        std::fs::copy(wasm_dir.join(&file), &embedded)?;
        writeln!(
            source,
            "    ({name:?}, include_bytes!({:?})),",
            embedded.display().to_string()
        )?;
    }
    source.push_str("];\n");
    std::fs::write(out_dir.join("builtins.rs"), source)?;
    println!(
        "cargo:rustc-env=GUARDIAN_FIXTURES_DIR={}",
        wasm_dir.display()
    );
    Ok(())
}

/// Package names of the crates directly under `dir`, sorted.
fn crates_under(dir: &Path) -> Result<Vec<String>, Box<dyn Error>> {
    let mut names = Vec::new();
    if !dir.exists() {
        return Ok(names);
    }
    for entry in std::fs::read_dir(dir)? {
        let manifest = entry?.path().join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest)?;
        let parsed: toml::Table = toml::from_str(&text)?;
        let name = parsed
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .ok_or_else(|| format!("no package name in {}", manifest.display()))?
            .to_owned();
        names.push(name);
    }
    names.sort();
    Ok(names)
}
