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
//! - the JavaScript client's packages for `host/tests/js_client.rs` (`npm ci`
//!   of `clients/js/package-lock.json`, the same way; the test builds the
//!   package and runs its browser test in the Chromium below);
//! - Chromium and ChromeDriver for `host/tests/dashboard.rs` (Debian's
//!   `chromium` and `chromium-driver`, with `apt-get` as root or through a
//!   `sudo` that needs no password; otherwise the exact command to run);
//! - the `wasm32-wasip2` target the plugins are built for (declared in
//!   `rust-toolchain.toml`; added with rustup if a toolchain lacks it).
//! - the Python client's venv for `host/tests/python_client.rs`
//!   (`target/python-venv`: `python3 -m venv`, then `pip install
//!   clients/python[test]`, whose test extras are pinned; redone when
//!   `clients/python/pyproject.toml` changes; Debian's `python3-venv` first
//!   when `python3` lacks `venv`).
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
    npm_packages(
        &root.join("clients/js"),
        "the JavaScript client and its tests (host/tests/js_client.rs)",
    )?;
    browser()?;
    python_venv(&root)?;
    Ok(())
}

fn test(args: &[OsString]) -> Result<(), String> {
    let mut command = Command::new(cargo());
    // `cargo run` gave this process the variables of the xtask package itself;
    // build scripts that watch one (ring's `rerun-if-env-changed=
    // CARGO_MANIFEST_DIR`) would see it change between this build and a plain
    // `cargo run` of the demo, and rebuild.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    let status = command
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

/// The Python client's venv (`target/python-venv`), with the client and its
/// pinned test extras, unless it was made from the current `pyproject.toml`.
fn python_venv(root: &Path) -> Result<(), String> {
    let project = root.join("clients/python");
    let pyproject = std::fs::read(project.join("pyproject.toml"))
        .map_err(|e| format!("reading clients/python/pyproject.toml: {e}"))?;
    let venv = root.join("target/python-venv");
    // A copy of the pyproject.toml the venv was made from.
    let stamp = venv.join("pyproject.toml");
    if venv.join("bin/python").is_file() && std::fs::read(&stamp).ok() == Some(pyproject.clone()) {
        return Ok(());
    }
    if !on_path("python3") {
        return Err(
            "the Python client's tests (host/tests/python_client.rs) need Python 3.11 or later: install it (Debian: apt-get install python3 python3-venv), then run cargo xtask test again"
                .to_owned(),
        );
    }
    let has_venv = Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .status()
        .is_ok_and(|status| status.success());
    if !has_venv {
        let root_user = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        if !root_user || !on_path("apt-get") {
            return Err(
                "the Python client's tests (host/tests/python_client.rs) need python3's venv module: run `sudo apt-get update && sudo apt-get install -y python3-venv` (Debian's package), then cargo xtask test again"
                    .to_owned(),
            );
        }
        say("installing Debian's python3-venv (the Python client's tests run from a venv)");
        let frontend = "DEBIAN_FRONTEND=noninteractive";
        run("env", &[frontend, "apt-get", "update"], None)?;
        run(
            "env",
            &[frontend, "apt-get", "install", "-y", "python3-venv"],
            None,
        )?;
    }
    say(
        "making target/python-venv with the Python client and its pinned test extras (pytest, pandas), for host/tests/python_client.rs",
    );
    let _ = std::fs::remove_dir_all(&venv);
    let venv_text = venv.to_string_lossy().into_owned();
    run("python3", &["-m", "venv", &venv_text], None)?;
    let pip = venv.join("bin/pip").to_string_lossy().into_owned();
    let package = format!("{}[test]", project.to_string_lossy());
    run(
        &pip,
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &package,
        ],
        None,
    )?;
    std::fs::write(&stamp, &pyproject).map_err(|e| format!("writing {}: {e}", stamp.display()))
}
