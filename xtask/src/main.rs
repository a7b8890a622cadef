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
//! - a throwaway PostgreSQL cluster for the storage tests on PostgreSQL and the
//!   replica tests (Debian's `postgresql` when no `initdb` is installed, the same
//!   way as Chromium): initialised afresh in `target/pg-test` on a free port of
//!   127.0.0.1 and started as the `postgres` user (PostgreSQL refuses root), with
//!   trust authentication and fsync on. `test` hands its URL to the tests as
//!   `GUARDIAN_TEST_POSTGRES_URL` and stops it afterwards; after `prepare` alone
//!   it keeps running, and the line to set the variable is printed. A cluster
//!   that does not start fails the preparation with the end of its log.
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
        Some("test") => prepare().and_then(|cluster| {
            let outcome = test(&rest, &cluster.url());
            // Stopped whether the tests passed or not; their failure comes first.
            let stopped = cluster.stop();
            outcome.and(stopped)
        }),
        Some("prepare") => prepare().map(|cluster| {
            say(&format!(
                "the PostgreSQL cluster keeps running; for cargo test: export {URL_VARIABLE}={} (stop it with: {})",
                cluster.url(),
                cluster.stop_command()
            ))
        }),
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
                ChromeDriver, the wasm32-wasip2 target, a PostgreSQL cluster
                (left running)
";

/// The workspace's root: the parent of this crate's folder.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn prepare() -> Result<PgCluster, String> {
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
    postgres(&root)
}

fn test(args: &[OsString], postgres_url: &str) -> Result<(), String> {
    let mut command = Command::new(cargo());
    command.env(URL_VARIABLE, postgres_url);
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
    apt_install(
        &BROWSER_PACKAGES,
        "the browser test (host/tests/dashboard.rs) needs Chromium and ChromeDriver",
        "the browser test, host/tests/dashboard.rs, drives a real Chromium",
    )
}

/// Whether this process runs as root.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Installs Debian's `packages` with `apt-get` as root, or through a `sudo` that
/// needs no password; otherwise fails with the line to run. `needs` says what
/// requires them (for that message), `why` the same in the line announcing the
/// installation. The package lists are updated once per run.
fn apt_install(packages: &[&str], needs: &str, why: &str) -> Result<(), String> {
    static UPDATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let install = format!("apt-get install -y {}", packages.join(" "));
    let root_user = is_root();
    let sudo = !root_user
        && on_path("sudo")
        && Command::new("sudo")
            .args(["-n", "true"])
            .status()
            .is_ok_and(|status| status.success());
    if !(root_user || sudo) || !on_path("apt-get") {
        return Err(format!(
            "{needs}: run `sudo apt-get update && sudo {install}` (Debian's packages), then cargo xtask test again"
        ));
    }
    say(&format!(
        "installing Debian's {} ({why})",
        packages.join(" and ")
    ));
    // `sudo VAR=value apt-get …` passes the variable through sudo's environment
    // reset; as root the same arguments run under `env`.
    let runner = if sudo { "sudo" } else { "env" };
    let frontend = "DEBIAN_FRONTEND=noninteractive";
    if !UPDATED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        run(runner, &[frontend, "apt-get", "update"], None)?;
    }
    let mut args = vec![frontend, "apt-get", "install", "-y"];
    args.extend(packages);
    run(runner, &args, None)
}

/// The variable naming the tests' PostgreSQL cluster (read by the tests through
/// `host/tests/common/pg.rs`).
const URL_VARIABLE: &str = "GUARDIAN_TEST_POSTGRES_URL";

/// The tests' PostgreSQL cluster, started by [`postgres`].
struct PgCluster {
    /// PostgreSQL's server programs (`initdb`, `pg_ctl`).
    bin: PathBuf,
    /// The cluster's folder: `data`, the unix socket, `server.log`.
    dir: PathBuf,
    /// Its TCP port on 127.0.0.1.
    port: u16,
    /// Whether PostgreSQL's programs run as the `postgres` user (this process is
    /// root, which PostgreSQL refuses).
    as_postgres: bool,
}

impl PgCluster {
    /// The URL of the cluster's `postgres` database (trust authentication).
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `program` of PostgreSQL's folder, run as the cluster's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// Stops the server (`pg_ctl stop -m fast`: connections are ended).
    fn stop(&self) -> Result<(), String> {
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "stopping the tests' PostgreSQL cluster failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// The command that stops the cluster, for a person to run.
    fn stop_command(&self) -> String {
        let stop = format!(
            "{} -D {} -m fast stop",
            self.bin.join("pg_ctl").display(),
            self.dir.join("data").display()
        );
        if self.as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        }
    }
}

/// The folder of PostgreSQL's server programs: the newest
/// `/usr/lib/postgresql/*/bin` with an `initdb` (Debian), else the folder of an
/// `initdb` on the PATH.
fn postgres_programs() -> Option<PathBuf> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin);
    newest.or_else(|| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    })
}

/// Installs PostgreSQL if missing, then initialises and starts a fresh cluster
/// for the tests (see the module's documentation).
fn postgres(root: &Path) -> Result<PgCluster, String> {
    let bin = match postgres_programs() {
        Some(bin) => bin,
        None => {
            apt_install(
                &["postgresql"],
                "the storage and replica tests need PostgreSQL's server",
                "the storage and replica tests also run on PostgreSQL",
            )?;
            postgres_programs().ok_or("Debian's postgresql package gave no initdb")?
        }
    };
    let as_postgres = is_root();
    let mut cluster = PgCluster {
        bin,
        dir: root.join("target/pg-test"),
        port: 0,
        as_postgres,
    };
    // The `postgres` user must reach the folder; a clone in a private home
    // folder (root's) keeps it out, and then the cluster lives in /tmp instead.
    if as_postgres && !reachable_by_postgres(root.join("target").as_path()) {
        cluster.dir = std::env::temp_dir().join("guardian-pg-test");
    }
    // A cluster an interrupted run left running: stopped, then made anew.
    if cluster.dir.join("data/postmaster.pid").exists() {
        let _ = cluster
            .command("pg_ctl")
            .arg("-D")
            .arg(cluster.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
    let dir = &cluster.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if as_postgres {
        run("chown", &["postgres:", &dir.to_string_lossy()], None)?;
    }
    cluster.port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?
        .port();
    let version = cluster
        .bin
        .parent()
        .and_then(|dir| dir.file_name())
        .map_or(String::new(), |v| format!(" {}", v.to_string_lossy()));
    say(&format!(
        "starting a throwaway PostgreSQL{version} cluster in {} on 127.0.0.1:{} (the storage and replica tests also run on PostgreSQL)",
        dir.display(),
        cluster.port
    ));
    // Its files need no sync at creation (a crash now loses nothing of value);
    // the server itself keeps fsync on, since durability is what is tested.
    let data = dir.join("data");
    let initdb = cluster
        .command("initdb")
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
        .args(["--no-sync", "--no-instructions"])
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb of the tests' PostgreSQL cluster failed:\n{}{}",
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }
    // Enough connections for every test binary's pools at once.
    let options = format!(
        "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=on",
        cluster.port,
        dir.display()
    );
    let log = dir.join("server.log");
    let started = cluster
        .command("pg_ctl")
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "60", "-o", &options, "start"])
        .output()
        .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
    if !started.status.success() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        return Err(format!(
            "the tests' PostgreSQL cluster did not start ({}); {} ends with:\n{}",
            String::from_utf8_lossy(&started.stderr).trim(),
            dir.join("server.log").display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        ));
    }
    Ok(cluster)
}

/// Whether the `postgres` user can create files in a folder `dir` (its parents
/// traversable).
fn reachable_by_postgres(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .is_ok_and(|status| status.success())
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
