//! A real `guardian dev` (the built binary, two share servers on two
//! consecutive free ports, its data in a temporary folder) for the tests that
//! drive the command line and the clients against it, and a way to run client
//! commands there.
//!
//! A test file that needs only this includes it alone, without the rest of
//! `common`: `#[path = "common/dev.rs"] mod dev;`.

// Every test file uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

/// The `guardian` binary cargo built for these tests.
pub const GUARDIAN: &str = env!("CARGO_BIN_EXE_guardian");
/// How long `guardian dev` may stay silent while starting: it compiles the
/// built-in plugins on its first start.
pub const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `guardian dev` may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// The banner's last line says this (it is printed in one piece).
const BANNER_END: &str = "Metrics: ";
/// The roles the banner prints a token for.
const ROLES: [&str; 4] = ["user", "developer", "scientist", "admin"];

/// What [`Dev::start_with`] adds to `guardian dev --dir DIR --port PORT`.
#[derive(Default)]
pub struct Options<'a> {
    /// More arguments, e.g. `["--approve", DIGEST]`.
    pub args: &'a [&'a str],
    /// Environment variables of the process.
    pub env: &'a [(&'a str, &'a str)],
}

/// A running `guardian dev`; killed when dropped (also when the test fails),
/// unless [`Dev::stop`] stopped it.
pub struct Dev {
    /// `None` once stopped or killed.
    child: Option<Child>,
    /// The working folder of `guardian dev` and of client commands; the
    /// servers' data is in its `data` folder.
    dir: TempDir,
    /// The value of the banner's `export GUARDIAN_SERVERS=` line.
    servers: String,
    /// The banner's token per role (`user`, `developer`, `scientist`, `admin`).
    tokens: Vec<(String, String)>,
    /// Every line of the banner.
    banner: Vec<String>,
    /// The lines printed after the banner, read on a thread (so that
    /// `guardian dev` never blocks on a full pipe).
    lines: mpsc::Receiver<String>,
    /// The file `guardian dev`'s stderr goes to, for failure messages.
    stderr: PathBuf,
}

impl Dev {
    /// Starts `guardian dev` and waits for its whole banner.
    pub fn start() -> Dev {
        Dev::start_with(&Options::default())
    }

    /// Starts `guardian dev` with `options` and waits for its whole banner;
    /// panics with what it printed when the banner does not come within
    /// [`START_TIMEOUT`] of the last line, or names other than two servers.
    pub fn start_with(options: &Options) -> Dev {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let stderr = dir.path().join("dev.stderr");
        let mut child = Command::new(GUARDIAN)
            .args(["dev", "--dir"])
            .arg(dir.path().join("data"))
            .args(["--port", &free_base_port().to_string()])
            .args(options.args)
            .envs(options.env.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("creating the stderr file"))
            .spawn()
            .expect("starting guardian dev");
        let lines = read_lines(child.stdout.take().expect("the piped stdout"));
        let mut dev = Dev {
            child: Some(child),
            dir,
            servers: String::new(),
            tokens: Vec::new(),
            banner: Vec::new(),
            lines,
            stderr,
        };
        loop {
            match dev.lines.recv_timeout(START_TIMEOUT) {
                Ok(line) => {
                    let trimmed = line.trim();
                    if let Some(servers) = trimmed.strip_prefix("export GUARDIAN_SERVERS=") {
                        dev.servers = servers.to_owned();
                    }
                    if let [role, token] = trimmed.split_whitespace().collect::<Vec<_>>()[..]
                        && ROLES.contains(&role)
                    {
                        dev.tokens.push((role.to_owned(), token.to_owned()));
                    }
                    let done = line.contains(BANNER_END);
                    dev.banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(e) => panic!(
                    "guardian dev printed no complete banner ({e}); stdout so far:\n{}\nstderr:\n{}",
                    dev.banner.join("\n"),
                    dev.stderr_text()
                ),
            }
        }
        assert_eq!(
            dev.servers.split(',').count(),
            2,
            "two servers in the banner:\n{}",
            dev.banner.join("\n")
        );
        dev
    }

    /// The servers' URLs, comma-separated in index order (`GUARDIAN_SERVERS`).
    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// The working folder: files for client commands go here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The folder given to `guardian dev --dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// The development issuer's folder, for `guardian token --issuer-dir`.
    pub fn issuer_dir(&self) -> PathBuf {
        self.data_dir().join("dev-issuer")
    }

    /// The banner's lines.
    pub fn banner(&self) -> &[String] {
        &self.banner
    }

    /// The token the banner printed for `role`.
    pub fn token(&self, role: &str) -> &str {
        self.tokens
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, t)| t.as_str())
            .unwrap_or_else(|| panic!("no {role} token in the banner: {:?}", self.tokens))
    }

    /// A new token for `role`, minted with `guardian token`, as the banner says.
    pub fn mint_token(&self, role: &str) -> String {
        let issuer = self.issuer_dir();
        let args = [
            "token",
            "--role",
            role,
            "--issuer-dir",
            issuer.to_str().expect("a UTF-8 path"),
        ];
        ok(&run(self.dir(), &args, &[])).trim().to_owned()
    }

    /// Runs a client command in [`Dev::dir`] with `GUARDIAN_SERVERS` and
    /// `GUARDIAN_TOKEN` set.
    pub fn client(&self, token: &str, args: &[&str]) -> Output {
        run(
            self.dir(),
            args,
            &[
                ("GUARDIAN_SERVERS", self.servers()),
                ("GUARDIAN_TOKEN", token),
            ],
        )
    }

    /// Runs a client command as [`Dev::client`] does, asserts that it
    /// succeeded and returns its stdout.
    #[track_caller]
    pub fn client_ok(&self, token: &str, args: &[&str]) -> String {
        succeeded(
            &format!("guardian {}", args.join(" ")),
            &self.client(token, args),
        )
    }

    /// What `guardian dev` wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Kills `guardian dev` (SIGKILL: the servers go away at once) and waits
    /// for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops `guardian dev` with SIGTERM, as Ctrl-C would, checks that it exits
    /// cleanly within [`STOP_TIMEOUT`], and returns the lines it printed after
    /// the banner.
    pub fn stop(mut self) -> Vec<String> {
        let mut child = self.child.take().expect("guardian dev is running");
        let pid = child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid}");
        let (sender, done) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(child.wait());
        });
        match done.recv_timeout(STOP_TIMEOUT) {
            Ok(status) => {
                let status = status.expect("waiting for guardian dev");
                assert!(
                    status.success(),
                    "guardian dev exited with {status}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("guardian dev did not stop within {STOP_TIMEOUT:?} of SIGTERM");
            }
        }
        self.lines.try_iter().collect()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the binary in `dir` with exactly the `GUARDIAN_*` variables given.
pub fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(GUARDIAN);
    command
        .args(args)
        .current_dir(dir)
        .env_remove("GUARDIAN_SERVERS")
        .env_remove("GUARDIAN_TOKEN")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("running guardian")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that `what` (a command, in words) succeeded, or fails with its
/// output; returns its stdout.
#[track_caller]
pub fn succeeded(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts that a `guardian` command succeeded; returns its stdout.
#[track_caller]
pub fn ok(out: &Output) -> String {
    succeeded("guardian", out)
}

/// Reads `stdout` to the end on a thread (so that the child never blocks on a
/// full pipe) and hands the lines over.
pub fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A base port p with p and p + 1 free (for two servers).
pub fn free_base_port() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
        let port = first.local_addr().expect("reading the port").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("found no two consecutive free ports");
}
