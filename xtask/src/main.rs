//! `cargo xtask`: the project's own tasks.
//!
//! - `cargo xtask test [ARGS…]`: prepares everything the tests need that cargo
//!   does not fetch itself, then runs every test of the project (`cargo test
//!   --workspace ARGS…`). What it installs, it says in one line, with why.
//! - `cargo xtask prepare`: only the preparation.
//!
//! The preparation, each step skipped when already done:
//! - the OpenID provider of `host/tests/oidc.rs` (`npm ci` of
//!   `tests/oidc/package-lock.json`, when `node_modules` is missing or older
//!   than the lockfile);
//! - Chromium and ChromeDriver for `host/tests/dashboard.rs` (Debian's
//!   `chromium` and `chromium-driver`, with `apt-get` as root or through a
//!   `sudo` that needs no password; otherwise the exact command to run);
//! - the `wasm32-wasip2` target the plugins are built for (declared in
//!   `rust-toolchain.toml`; added with rustup if a toolchain lacks it).
//!
//! Without the preparation, `cargo test --workspace` still runs every test that
//! needs nothing more; the others fail naming this command.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian's packages that give the browser test its browser and driver.
const BROWSER_PACKAGES: [&str; 2] = ["chromium", "chromium-driver"];

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let task = args.next().and_then(|a| a.into_string().ok());
    let rest: Vec<OsString> = args.collect();
    let outcome = match task.as_deref() {
        Some("test") => prepare().and_then(|()| test(&rest)),
        Some("prepare") => prepare(),
        Some("help" | "--help" | "-h") | None => {
            print!("{}", HELP);
            Ok(())
        }
        Some(other) => Err(format!("unknown task {other:?}\n\n{HELP}")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("xtask: {why}");
            ExitCode::FAILURE
        }
    }
}

const HELP: &str = "\
usage: cargo xtask <task>

tasks:
  test [ARGS…]  prepare what the tests need, then run every test
                (cargo test --workspace ARGS…)
  prepare       only prepare: the OIDC provider's npm packages, Chromium and
                ChromeDriver, the wasm32-wasip2 target
";

/// The workspace's root: the parent of this crate's folder.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn prepare() -> Result<(), String> {
    let root = root();
    wasm_target()?;
    npm_packages(
        &root.join("tests/oidc"),
        "the OpenID provider of host/tests/oidc.rs",
    )?;
    browser()?;
    Ok(())
}

fn test(args: &[OsString]) -> Result<(), String> {
    let status = Command::new(cargo())
        .args(["test", "--workspace"])
        .args(args)
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo test --workspace failed ({status})"))
    }
}

fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Says what is being installed and why, on one line.
fn say(what: &str) {
    eprintln!("xtask: {what}");
}

/// Runs `program` with `args` (in `dir`); an error names the command.
fn run(program: &str, args: &[&str], dir: Option<&Path>) -> Result<(), String> {
    let mut command = Command::new(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let shown = format!("{program} {}", args.join(" "));
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`{shown}` failed ({status})")),
        Err(e) => Err(format!("cannot run `{shown}`: {e}")),
    }
}

/// Whether `name` is a program on the PATH.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|dir| dir.join(name).is_file())
}

fn wasm_target() -> Result<(), String> {
    // With rustup, `rust-toolchain.toml` already made it install the target; a
    // toolchain without rustup must have it.
    let Ok(output) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output()
    else {
        return Ok(());
    };
    if String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|t| t == "wasm32-wasip2")
    {
        return Ok(());
    }
    say("adding the wasm32-wasip2 target (the plugins are built for it)");
    run("rustup", &["target", "add", "wasm32-wasip2"], Some(&root()))
}

/// `npm ci` in `dir` when its `node_modules` is missing or older than its
/// lockfile.
fn npm_packages(dir: &Path, why: &str) -> Result<(), String> {
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules/.package-lock.json");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match (modified(&lock), modified(&installed)) {
        (None, _) => return Err(format!("{} is missing", lock.display())),
        (Some(lock), Some(installed)) if installed >= lock => return Ok(()),
        _ => {}
    }
    if !on_path("npm") {
        return Err(format!(
            "{why} needs Node.js 20 or later with npm: install them (Debian: apt-get install nodejs npm), then run cargo xtask test again"
        ));
    }
    say(&format!(
        "installing the npm packages of {} (npm ci), for {why}",
        dir.display()
    ));
    run(
        "npm",
        &[
            "ci",
            "--no-audit",
            "--no-fund",
            "--prefix",
            &dir.to_string_lossy(),
        ],
        None,
    )
}

fn browser() -> Result<(), String> {
    if on_path("chromium") && on_path("chromedriver") {
        return Ok(());
    }
    let install = format!("apt-get install -y {}", BROWSER_PACKAGES.join(" "));
    // As root, or through sudo when it needs no password: the packages "when it
    // may"; otherwise the line to run.
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    let sudo = !root_user
        && on_path("sudo")
        && Command::new("sudo")
            .args(["-n", "true"])
            .status()
            .is_ok_and(|status| status.success());
    if !(root_user || sudo) || !on_path("apt-get") {
        return Err(format!(
            "the browser test (host/tests/dashboard.rs) needs Chromium and ChromeDriver: run `sudo apt-get update && sudo {install}` (Debian's packages), then cargo xtask test again"
        ));
    }
    say(&format!(
        "installing Debian's {} (the browser test, host/tests/dashboard.rs, drives a real Chromium)",
        BROWSER_PACKAGES.join(" and ")
    ));
    // `sudo VAR=value apt-get …` passes the variable through sudo's environment
    // reset; as root the same arguments run under `env`.
    let runner = if sudo { "sudo" } else { "env" };
    let frontend = "DEBIAN_FRONTEND=noninteractive";
    run(runner, &[frontend, "apt-get", "update"], None)?;
    let mut args = vec![frontend, "apt-get", "install", "-y"];
    args.extend(BROWSER_PACKAGES);
    run(runner, &args, None)
}
