//! The JavaScript client (`clients/js`) against real `guardian` processes: its
//! Node tests (agreement refused before posting, idempotent retries, typed
//! errors), its interoperability with the command line (a batch mixing both
//! clients' reports, for `sum`, `histogram`, `dp-sum`, `prio3-sum` and
//! `prio3-histogram`), and the example survey app in real headless Chromium.
//!
//! The tests themselves are JavaScript (`node --test`, in `clients/js/test`);
//! this file builds the package and runs them with the `guardian` binary cargo
//! just built, so `cargo test` covers them. Node.js, the package's npm
//! dependencies and Debian's Chromium are required: `cargo xtask prepare`
//! installs them, and without them this test fails, naming that command.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const GUARDIAN: &str = env!("CARGO_BIN_EXE_guardian");

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js")
}

/// A `guardian dev` of two servers, stopped when dropped.
struct Dev {
    child: Child,
    urls: Vec<String>,
    dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_base_port() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("found no two consecutive free ports");
}

/// Starts `guardian dev` and waits for its banner. Every test file shares it
/// (each uses endpoints of its own names): one start instead of one per file.
fn start_dev() -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let port = free_base_port();
    let mut child = Command::new(GUARDIAN)
        .args(["dev", "--port", &port.to_string(), "--dir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let started = lines.any(|line| line.is_ok_and(|l| l.contains("share servers are running")));
    // Keep reading its output so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let urls = (0..2)
        .map(|i| format!("http://127.0.0.1:{}", port + i))
        .collect();
    let dev = Dev { child, urls, dir };
    assert!(
        started,
        "guardian dev did not start:\n{}",
        std::fs::read_to_string(dev.dir.path().join("stderr.log")).unwrap_or_default()
    );
    dev
}

/// Runs `program args` in the package (with `dev`'s servers, if given); panics
/// with its output when it fails.
fn run(program: &str, args: &[&str], dev: Option<&Dev>) -> String {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(package())
        .env("GUARDIAN_BIN", GUARDIAN);
    if let Some(dev) = dev {
        command
            .env("GUARDIAN_DEV_URLS", dev.urls.join(","))
            .env("GUARDIAN_DEV_DIR", dev.dir.path());
    }
    let output: Output = command.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {program} ({e}): install Node.js 20 with npm, then `cargo xtask prepare`"
        )
    });
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        output.status.success(),
        "`{program} {}` in clients/js failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

#[test]
fn the_javascript_client_in_node_and_in_chromium() {
    assert!(
        package().join("node_modules/.package-lock.json").is_file(),
        "clients/js/node_modules is missing: run `cargo xtask prepare` (it runs `npm ci` there and installs Chromium); this test never skips"
    );
    // The package as a user builds it: TypeScript, then the browser bundle.
    run("npm", &["run", "--silent", "build"], None);
    let dev = start_dev();
    let report = run(
        "node",
        &[
            "--test",
            "--test-reporter=spec",
            "test/node.test.mjs",
            "test/interop.test.mjs",
            "test/browser.test.mjs",
        ],
        Some(&dev),
    );
    // `node --test` fails on any failed test; and the tests must have run.
    assert!(
        report.contains("answers clicked in the page are sealed and counted exactly"),
        "the browser test did not run:\n{report}"
    );
    assert!(
        report.contains("a batch mixing this client's reports and the command line's"),
        "the interoperability tests did not run:\n{report}"
    );
    print!("{report}");
}
