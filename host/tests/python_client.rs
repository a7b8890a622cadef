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

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rand::Rng as _;
use serde_json::{Value, json};
use tempfile::TempDir;

const GUARDIAN: &str = env!("CARGO_BIN_EXE_guardian");
/// `guardian dev` compiles the built-in plugins on its first start.
const START_TIMEOUT: Duration = Duration::from_secs(300);
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

/// A running `guardian dev`, killed when dropped.
struct Dev {
    child: Child,
    dir: TempDir,
    /// The value of the banner's `export GUARDIAN_SERVERS=` line.
    servers: String,
    /// The banner's token per role (`user`, `developer`, `scientist`, `admin`).
    tokens: Vec<(String, String)>,
}

/// A base port p with p and p + 1 free (for two servers).
fn free_base_port() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
        let port = first.local_addr().expect("reading the port").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("found no two consecutive free ports");
}

impl Dev {
    fn start() -> Dev {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let stderr = dir.path().join("dev.stderr");
        let mut child = Command::new(GUARDIAN)
            .args(["dev", "--dir"])
            .arg(dir.path().join("data"))
            .args(["--port", &free_base_port().to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("creating the stderr file"))
            .spawn()
            .expect("starting guardian dev");
        // Read stdout to the end on a thread, so that `guardian dev` never blocks
        // on a full pipe.
        let stdout = child.stdout.take().expect("the piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut dev = Dev {
            child,
            dir,
            servers: String::new(),
            tokens: Vec::new(),
        };
        let mut banner = Vec::new();
        loop {
            match lines.recv_timeout(START_TIMEOUT) {
                Ok(line) => {
                    let trimmed = line.trim();
                    if let Some(servers) = trimmed.strip_prefix("export GUARDIAN_SERVERS=") {
                        dev.servers = servers.to_owned();
                    }
                    let words: Vec<&str> = trimmed.split_whitespace().collect();
                    if let [role @ ("user" | "developer" | "scientist" | "admin"), token] =
                        words[..]
                    {
                        dev.tokens.push((role.to_owned(), token.to_owned()));
                    }
                    let done = line.contains("guardian collect demo");
                    banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(e) => panic!(
                    "guardian dev printed no complete banner ({e}); stdout so far:\n{}\nstderr:\n{}",
                    banner.join("\n"),
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                ),
            }
        }
        assert_eq!(
            dev.servers.split(',').count(),
            2,
            "two servers in the banner:\n{}",
            banner.join("\n")
        );
        dev
    }

    fn token(&self, role: &str) -> &str {
        self.tokens
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, t)| t.as_str())
            .unwrap_or_else(|| panic!("no {role} token in the banner: {:?}", self.tokens))
    }

    /// Runs a client command against the deployment with `token`; asserts success.
    #[track_caller]
    fn client(&self, token: &str, args: &[&str]) -> String {
        let out = Command::new(GUARDIAN)
            .args(args)
            .current_dir(self.dir.path())
            .env("GUARDIAN_SERVERS", &self.servers)
            .env("GUARDIAN_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .expect("running guardian");
        assert!(
            out.status.success(),
            "guardian {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Writes `values` one JSON document a line and submits them to `name`.
    fn submit(&self, name: &str, values: &[Value]) {
        let path = self.dir.path().join(format!("{name}.jsonl"));
        let body: String = values.iter().map(|v| format!("{v}\n")).collect();
        std::fs::write(&path, body).expect("writing measurements");
        let out = self.client(
            self.token("user"),
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
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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
        dev.client(
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
    dev.submit("sum3", &sums.iter().map(|v| json!(v)).collect::<Vec<_>>());
    dev.submit(
        "colors",
        &picks.iter().map(|&b| json!(COLORS[b])).collect::<Vec<_>>(),
    );
    dev.submit("noisy", &noisy.iter().map(|v| json!(v)).collect::<Vec<_>>());
    dev.submit(
        "robust",
        &robust.iter().map(|v| json!(v)).collect::<Vec<_>>(),
    );
    dev.submit(
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
        .env("GUARDIAN_SERVERS", &dev.servers)
        .env("GUARDIAN_TOKEN", dev.token("scientist"))
        .env("GUARDIAN_USER_TOKEN", dev.token("user"))
        .env("GUARDIAN_BIN", GUARDIAN)
        .env("GUARDIAN_EXPECTED", expected.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("running pytest");
    println!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "the Python client's tests failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    // Every test ran: none was skipped or deselected.
    let summary = text(&out.stdout);
    assert!(
        summary.contains(" passed") && !summary.contains("skipped"),
        "{summary}"
    );
}
