//! The Python client for scientists (`clients/python/`) against a real
//! deployment: the built binary starts `guardian dev` (two share servers), the
//! command line creates a `sum`, a `histogram`, a `dp-sum`, a `prio3-sum` and
//! a 10,000-bucket `histogram` endpoint and submits random measurements from
//! files with `guardian submit`, then the client's pytest suite runs against it
//! from the venv that `cargo xtask prepare` makes (`target/python-venv`). The
//! suite compares every result with `guardian collect --json` and with the
//! plain computation passed to it here (`GUARDIAN_EXPECTED`).
//!
//! The suite imports the client from this checkout (`PYTHONPATH`), so the venv
//! only has to hold its dependencies; without the venv the test fails, naming
//! the command that makes it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::Rng as _;
use serde_json::{Value, json};

#[path = "common/dev.rs"]
mod dev;

use dev::{Dev, GUARDIAN, succeeded, text};

/// Reports submitted to every endpoint before the suite runs.
const REPORTS: usize = 40;
const COLORS: [&str; 4] = ["red", "green", "blue", "yellow"];
/// Buckets of the wide histogram.
const WIDE: u64 = 10_000;

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ lives in the workspace")
        .to_owned()
}

/// Writes `values` one JSON document a line and submits them to `name`.
fn submit(dev: &Dev, name: &str, values: &[Value]) {
    let path = dev.dir().join(format!("{name}.jsonl"));
    let body: String = values.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&path, body).expect("writing measurements");
    let out = dev.client_ok(
        dev.token("user"),
        &[
            "submit",
            name,
            "--file",
            path.to_str().expect("a UTF-8 path"),
        ],
    );
    assert!(
        out.contains(&format!(
            "sent {REPORTS}, stored {REPORTS}, duplicates 0, failed 0"
        )),
        "{out}"
    );
}

/// The venv's Python, or a failure naming the command that makes it.
fn venv_python() -> PathBuf {
    let python = root().join("target/python-venv/bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import pytest, pandas, requests, wasmtime"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        ready,
        "{} with pytest, pandas, requests and wasmtime is missing: run `cargo xtask prepare` (it makes the venv and installs clients/python with its test extras)",
        python.display()
    );
    python
}

#[test]
fn the_python_client_collects_what_the_command_line_collects() {
    let python = venv_python();
    let dev = Dev::start();
    let developer = dev.token("developer");
    for (name, plugin, params) in [
        ("sum3", "sum", json!({"length": 3})),
        ("colors", "histogram", json!({"buckets": COLORS})),
        (
            "noisy",
            "dp-sum",
            json!({"length": 2, "bound": 10, "epsilon": 1.0, "mechanism": "laplace"}),
        ),
        ("robust", "prio3-sum", json!({"max_measurement": 255})),
        // Shares of 80 KB: what the unsharding time is measured on.
        ("wide", "histogram", json!({"buckets": WIDE})),
    ] {
        dev.client_ok(
            developer,
            &[
                "endpoint",
                "create",
                name,
                "--plugin",
                plugin,
                "--params",
                &params.to_string(),
                "--min-batch",
                "5",
            ],
        );
    }

    let mut rng = rand::rng();
    let sums: Vec<[u64; 3]> = (0..REPORTS)
        .map(|_| std::array::from_fn(|_| rng.random_range(0..1_000_000)))
        .collect();
    let picks: Vec<usize> = (0..REPORTS)
        .map(|_| rng.random_range(0..COLORS.len()))
        .collect();
    let noisy: Vec<[u64; 2]> = (0..REPORTS)
        .map(|_| std::array::from_fn(|_| rng.random_range(0..=10)))
        .collect();
    let robust: Vec<u64> = (0..REPORTS).map(|_| rng.random_range(0..=255)).collect();
    submit(
        &dev,
        "sum3",
        &sums.iter().map(|v| json!(v)).collect::<Vec<_>>(),
    );
    submit(
        &dev,
        "colors",
        &picks.iter().map(|&b| json!(COLORS[b])).collect::<Vec<_>>(),
    );
    submit(
        &dev,
        "noisy",
        &noisy.iter().map(|v| json!(v)).collect::<Vec<_>>(),
    );
    submit(
        &dev,
        "robust",
        &robust.iter().map(|v| json!(v)).collect::<Vec<_>>(),
    );
    submit(
        &dev,
        "wide",
        &(0..REPORTS)
            .map(|_| json!(rng.random_range(0..WIDE)))
            .collect::<Vec<_>>(),
    );

    let mut sum = [0u64; 3];
    for v in &sums {
        for (s, x) in sum.iter_mut().zip(v) {
            *s += x;
        }
    }
    let mut counts = [0u64; COLORS.len()];
    for &b in &picks {
        counts[b] += 1;
    }
    let expected = json!({
        "reports": REPORTS,
        "sum3": sum,
        "colors": {"buckets": COLORS, "counts": counts},
        "robust": robust.iter().sum::<u64>(),
    });

    let client = root().join("clients/python");
    let out: Output = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
            "tests",
        ])
        .current_dir(&client)
        .env("PYTHONPATH", client.join("src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("GUARDIAN_SERVERS", dev.servers())
        .env("GUARDIAN_TOKEN", dev.token("scientist"))
        .env("GUARDIAN_USER_TOKEN", dev.token("user"))
        .env("GUARDIAN_BIN", GUARDIAN)
        .env("GUARDIAN_EXPECTED", expected.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("running pytest");
    println!("{}{}", text(&out.stdout), text(&out.stderr));
    let summary = succeeded("the Python client's tests", &out);
    // Every test ran: none was skipped or deselected.
    assert!(
        summary.contains(" passed") && !summary.contains("skipped"),
        "{summary}"
    );
}
