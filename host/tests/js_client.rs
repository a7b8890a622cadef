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

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "common/dev.rs"]
mod dev;

use dev::{Dev, GUARDIAN, succeeded};

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js")
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
            .env("GUARDIAN_DEV_URLS", dev.servers())
            .env("GUARDIAN_DEV_DIR", dev.data_dir());
    }
    let output: Output = command.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {program} ({e}): install Node.js 20 with npm, then `cargo xtask prepare`"
        )
    });
    succeeded(
        &format!("`{program} {}` in clients/js", args.join(" ")),
        &output,
    )
}

#[test]
fn the_javascript_client_in_node_and_in_chromium() {
    assert!(
        package().join("node_modules/.package-lock.json").is_file(),
        "clients/js/node_modules is missing: run `cargo xtask prepare` (it runs `npm ci` there and installs Chromium); this test never skips"
    );
    // The package as a user builds it: TypeScript, then the browser bundle.
    run("npm", &["run", "--silent", "build"], None);
    // One `guardian dev` for every test file (each uses endpoints of its own
    // names): one start instead of one per file.
    let dev = Dev::start();
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
