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
//!
//! It also embeds what `guardian plugin new` writes (`$OUT_DIR/authoring.rs`):
//! the SDK's source made self-contained (workspace fields resolved, the WIT
//! files inside it), the crate template of `sdk/template/`, the workspace's
//! `Cargo.lock` and `rust-toolchain.toml`.

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
        "rust-toolchain.toml",
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
    embed_authoring(&root, &out_dir)?;
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

/// Writes `$OUT_DIR/authoring.rs`: `SDK_FILES` (the SDK as a crate that
/// builds on its own), `TEMPLATE_FILES` (`sdk/template/`), `CARGO_LOCK` and
/// `RUST_TOOLCHAIN`, each file as `(relative path, bytes)`.
fn embed_authoring(root: &Path, out_dir: &Path) -> Result<(), Box<dyn Error>> {
    let copy = out_dir.join("guardian-sdk");
    if copy.exists() {
        std::fs::remove_dir_all(&copy)?;
    }
    let mut sdk = Vec::new();
    for (from, to) in [
        ("sdk/src", "src"),
        ("sdk/template", "template"),
        ("wit", "wit"),
    ] {
        for file in files_under(&root.join(from))? {
            let relative = file.strip_prefix(root.join(from))?;
            let mut bytes = std::fs::read(&file)?;
            if from == "sdk/src" && relative == Path::new("export.rs") {
                // wit-bindgen reads the WIT by path from the SDK's manifest
                // folder: `../wit` in the workspace, `wit` in the copy.
                let text = String::from_utf8(bytes)?;
                if !text.contains("path: \"../wit") {
                    return Err("sdk/src/export.rs no longer reads `path: \"../wit…\"`: \
                                update embed_authoring in host/build.rs"
                        .into());
                }
                bytes = text.replace("path: \"../wit", "path: \"wit").into_bytes();
            }
            sdk.push((Path::new(to).join(relative), bytes));
        }
    }
    sdk.push((
        "Cargo.toml".into(),
        self_contained_manifest(root)?.into_bytes(),
    ));
    let template = files_under(&root.join("sdk/template"))?
        .into_iter()
        .map(|file| {
            let relative = file.strip_prefix(root.join("sdk/template"))?.to_owned();
            Ok((relative, std::fs::read(&file)?))
        })
        .collect::<Result<Vec<_>, Box<dyn Error>>>()?;

    let mut source = String::new();
    for (name, files) in [("SDK_FILES", &sdk), ("TEMPLATE_FILES", &template)] {
        writeln!(source, "pub const {name}: &[(&str, &[u8])] = &[")?;
        for (relative, bytes) in files {
            let written = copy.join(name).join(relative);
            std::fs::create_dir_all(written.parent().ok_or("a file has a folder")?)?;
            std::fs::write(&written, bytes)?;
            let relative = relative.to_str().ok_or("a UTF-8 path")?.replace('\\', "/");
            writeln!(
                source,
                "    ({relative:?}, include_bytes!({:?})),",
                written.display().to_string()
            )?;
        }
        source.push_str("];\n");
    }
    for (name, file) in [
        ("CARGO_LOCK", "Cargo.lock"),
        ("RUST_TOOLCHAIN", "rust-toolchain.toml"),
    ] {
        writeln!(
            source,
            "pub const {name}: &str = include_str!({:?});",
            root.join(file).display().to_string()
        )?;
    }
    std::fs::write(out_dir.join("authoring.rs"), source)?;
    Ok(())
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    folders.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `sdk/Cargo.toml` with every `workspace = true` replaced by the
/// workspace's value, without dev-dependencies (the SDK's own tests are not
/// copied to plugin authors).
fn self_contained_manifest(root: &Path) -> Result<String, Box<dyn Error>> {
    let workspace: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml"))?)?;
    let workspace = workspace
        .get("workspace")
        .and_then(|w| w.as_table())
        .ok_or("Cargo.toml has no [workspace]")?;
    let package_fields = workspace.get("package").and_then(|p| p.as_table());
    let dependencies = workspace.get("dependencies").and_then(|d| d.as_table());
    let mut manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("sdk/Cargo.toml"))?)?;
    manifest.remove("dev-dependencies");
    if let Some(package) = manifest.get_mut("package").and_then(|p| p.as_table_mut()) {
        for (key, value) in package.iter_mut() {
            if inherits(value) {
                *value = package_fields
                    .and_then(|p| p.get(key))
                    .cloned()
                    .ok_or_else(|| format!("workspace.package.{key} is missing"))?;
            }
        }
    }
    if manifest.get("lints").is_some_and(inherits) {
        let lints = workspace
            .get("lints")
            .cloned()
            .ok_or("no workspace.lints")?;
        manifest.insert("lints".into(), lints);
    }
    let mut tables: Vec<&mut toml::Table> = Vec::new();
    let (mut plain, mut targets) = (None, None);
    for (key, value) in manifest.iter_mut() {
        match key.as_str() {
            "dependencies" | "build-dependencies" => plain = value.as_table_mut(),
            "target" => targets = value.as_table_mut(),
            _ => {}
        }
    }
    tables.extend(plain);
    for target in targets
        .into_iter()
        .flat_map(|t| t.iter_mut().map(|(_, v)| v))
    {
        if let Some(deps) = target
            .get_mut("dependencies")
            .and_then(|d| d.as_table_mut())
        {
            tables.push(deps);
        }
    }
    for table in tables {
        for (name, dep) in table.iter_mut() {
            if !inherits(dep) {
                continue;
            }
            let mut resolved = match dependencies.and_then(|d| d.get(name)) {
                Some(toml::Value::String(version)) => {
                    let mut t = toml::Table::new();
                    t.insert("version".into(), toml::Value::String(version.clone()));
                    t
                }
                Some(toml::Value::Table(t)) => t.clone(),
                _ => return Err(format!("workspace.dependencies.{name} is missing").into()),
            };
            if let Some(own) = dep.as_table() {
                for (key, value) in own {
                    match key.as_str() {
                        "workspace" => {}
                        // Features add to the workspace's.
                        "features" => {
                            let mut all = resolved
                                .get("features")
                                .and_then(|f| f.as_array())
                                .cloned()
                                .unwrap_or_default();
                            all.extend(value.as_array().cloned().unwrap_or_default());
                            resolved.insert("features".into(), toml::Value::Array(all));
                        }
                        _ => {
                            resolved.insert(key.clone(), value.clone());
                        }
                    }
                }
            }
            *dep = toml::Value::Table(resolved);
        }
    }
    // `[package]` first, as people write it.
    let mut package = toml::Table::new();
    package.insert(
        "package".into(),
        manifest
            .remove("package")
            .ok_or("sdk/Cargo.toml has no [package]")?,
    );
    Ok(format!(
        "# The guardian-sdk source the `guardian` binary was built with, written by\n\
         # `guardian plugin new`: the SDK is not published on crates.io.\n{}\n{}",
        toml::to_string(&package)?,
        toml::to_string(&manifest)?
    ))
}

/// Whether a manifest value is `{ workspace = true }` (or `x.workspace = true`).
fn inherits(value: &toml::Value) -> bool {
    value
        .as_table()
        .and_then(|t| t.get("workspace"))
        .and_then(|w| w.as_bool())
        == Some(true)
}
