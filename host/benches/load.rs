//! Load generator (issue 8): one command that measures what users pay.
//!
//! Starts real `guardian serve` processes, drives them over real HTTP from this
//! machine with many keep-alive connections, and reports per scenario: reports/s,
//! p50/p99/max latency, server CPU seconds per 1,000 reports, each server's peak
//! RSS (`VmHWM`), the failures, and how much CPU the generator itself and the rest
//! of the machine used meanwhile (the servers and the generator share the cores).
//!
//! ```sh
//! cargo bench -p guardian --bench load              # full: every figure 3 times
//! cargo bench -p guardian --bench load -- --quick   # 1 run, short, about 2 minutes
//! ```
//!
//! Scenarios (`--only NAME,…` runs some of them):
//!
//! - `plugins`: the plugin runtime's costs, measured in this process with a plain
//!   timing loop before any server starts (fold per share, one small call,
//!   instantiate). `cargo bench -p guardian --bench plugins` is the criterion
//!   version of the same calls.
//! - `ingest`: one server, auth off, `sum` of length 10 and 1000.
//! - `fresh`: one server trusting the development issuer, a different RS256 token
//!   on every request. Tokens are minted before the run (in parallel) and cached
//!   with the issuer's key under `target/bench-tokens/`, so reruns reuse them while
//!   they are valid; within one server process no token is used twice.
//! - `reused`: the same server setup, 1,000 users each reusing one token (the
//!   server's verified-token cache makes all but the first use cheap).
//! - `bulk`: `reused`, but each request a bulk upload (`POST …/reports/bulk`) of
//!   100 length-10 reports; reports/s counts reports, latency is per request.
//! - `seal`: two servers wired as peers, auth off; N length-10 reports posted to
//!   both over HTTP (real additive shares of `[1, …, 10]`), then `POST …/batches`
//!   on server 0 and `GET …/batches/{id}` from both, timed, with each server's peak
//!   RSS during it; the fetched shares are combined and checked. Rows for 10k, 100k
//!   and (full mode) 1M stored reports form the scaling table, with the ingest rate
//!   while the store held 90–100 % of N.
//!
//! Robust aggregation (plugins of contract 0.2.0, whose reports carry Prio3
//! validity proofs):
//!
//! - `verify` (module `verify`): per report, both servers' `verify_init`,
//!   `combine` and `verify_finish` through the robust built-ins (wasm) next to the
//!   same steps with the prio crate natively, in this process, for `prio3-count`,
//!   `prio3-sum`, `prio3-histogram` and `prio3-sumvec`.
//! - `robust-ingest`: `ingest` with `prio3-count` report bodies (share and public
//!   share, sharded by the built-in).
//! - `robust-seal`: `seal` with `prio3-sum` (max 255): N reports sharded in this
//!   process by the built-in (random ids and values) before the cluster starts,
//!   posted to both servers, sealed (the servers verify every proof), fetched,
//!   and the result unsharded and compared with the plain sum; with the plugin
//!   time by call from the servers' metrics.
//!
//! Storage (`--storage sqlite,postgres`, default `sqlite`): `ingest` and `seal`
//! run on each backend in turn. On PostgreSQL every share server gets a fresh
//! database on the cluster named by `GUARDIAN_BENCH_POSTGRES_URL`
//! (`GUARDIAN_STORAGE_URL` of its processes), dropped after the run, and `ingest`
//! adds a row with two replicas of the one server over one database (the
//! generator's connections alternate between them; reports/s is their total).
//! Every PostgreSQL row gets `× SQLite`: its reports/s (ingest) or seal + fetch
//! time (seal) over the SQLite row of the same run.
//!
//! Output: a progress line per run on stderr, then the tables (median [min–max]
//! over the runs) and one JSON line per figure on stdout (lines starting with `{`).
//! Options: `--runs R`, `--seconds S`, `--connections C`, `--fresh-tokens N`,
//! `--lengths L[,L…]` (share lengths of `ingest`, default 10 and 1000),
//! `--seal N[,N…]`, `--only NAME[,NAME…]`, and `--perf DIR` to `perf record` the
//! servers during every measured interval (`perf report -i DIR/….perf.data`),
//! `--before-seal CMD` to run a shell command (servers' pids in `$SERVER_PIDS`)
//! right before each seal. The environment variable `GUARDIAN_BENCH_WRAPPER`
//! (words split on spaces) is put in front of every server's command line, e.g.
//! `env MALLOC_ARENA_MAX=2` or `heaptrack -o /tmp/ht/server` (the servers run
//! with an empty environment otherwise; a wrapper that does not `exec` makes the
//! RSS figures its own).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use guardian::auth::DevIssuer;
use guardian::config::Role;
use guardian::runtime::{Plugin, Runtime, RuntimeOptions};
use guardian_sdk::raw::Report;
use guardian_sdk::testing::pack;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use reqwest::{Client, StatusCode, Url};
use serde_json::{Value, json};

// Not `benches/verify.rs`: cargo would take that for a bench of its own.
#[path = "load/verify.rs"]
mod verify;

#[path = "load/storage.rs"]
mod storage;

use storage::Backend;

/// The shared secret of the seal cluster's peer routes.
const PEER_TOKEN: &str = "load-bench-peer-credential-0123456789abcdef";
/// The endpoint every scenario creates.
const ENDPOINT: &str = "bench";
/// Reports per request of the `bulk` scenario.
const BULK_REPORTS: usize = 100;
/// Users of the `reused` scenario.
const USERS: usize = 1000;
/// Lifetime of minted tokens; cached tokens are reused while they have at least
/// [`TOKEN_MIN_LEFT`] to go.
const TOKEN_TTL: Duration = Duration::from_secs(3 * 24 * 3600);
const TOKEN_MIN_LEFT: u64 = 2 * 3600;
/// Kernel clock ticks per second of `/proc/*/stat` (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// What to run, from the command line.
struct Options {
    quick: bool,
    /// Runs per figure; the tables show the median and the spread.
    runs: usize,
    /// Duration of one ingest run.
    seconds: f64,
    /// Concurrent HTTP connections (one task each) per server.
    connections: usize,
    /// Tokens of the `fresh` scenario; a run ends early when they are used up.
    fresh_tokens: usize,
    /// Share lengths of the `ingest` scenario.
    lengths: Vec<usize>,
    /// Stored reports of the seal runs (`seal` and `robust-seal`).
    seal_sizes: Vec<u64>,
    /// Scenarios to run (all when `None`).
    only: Option<Vec<String>>,
    /// Storage backends of the `ingest` and `seal` scenarios, each run in turn.
    storages: Vec<Backend>,
    /// Where to put a `perf record` of the servers for every measured interval.
    perf: Option<PathBuf>,
    /// A shell command run (and waited for) right before each seal, with the
    /// servers' pids in `SERVER_PIDS`: to attach a profiler (`heaptrack -p`, …).
    before_seal: Option<String>,
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let number = |name: &str| value(name).and_then(|v| v.parse::<f64>().ok());
        let quick = args.iter().any(|a| a == "--quick");
        let list = |name: &str| {
            value(name).map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
        };
        let seal_sizes = list("--seal")
            .map(|v| v.iter().filter_map(|s| s.parse().ok()).collect())
            .unwrap_or_else(|| {
                if quick {
                    vec![10_000, 100_000]
                } else {
                    vec![10_000, 100_000, 1_000_000]
                }
            });
        Options {
            quick,
            runs: number("--runs").map_or(if quick { 1 } else { 3 }, |v| v as usize),
            seconds: number("--seconds").unwrap_or(if quick { 3.0 } else { 10.0 }),
            connections: number("--connections").map_or(256, |v| v as usize),
            fresh_tokens: number("--fresh-tokens")
                .map_or(if quick { 30_000 } else { 200_000 }, |v| v as usize),
            lengths: list("--lengths")
                .map(|v| v.iter().filter_map(|s| s.parse().ok()).collect())
                .unwrap_or_else(|| vec![10, 1000]),
            seal_sizes,
            only: list("--only"),
            storages: list("--storage")
                .map_or_else(|| vec![Backend::Sqlite], |v| Backend::parse_list(&v)),
            before_seal: value("--before-seal"),
            // cargo runs benches in the package folder: relative paths are taken
            // from the workspace root instead, where the command was typed.
            perf: value("--perf").map(|dir| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(dir)
            }),
        }
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|s| s == scenario))
    }
}

// ---------------------------------------------------------------------------
// /proc readings

/// utime + stime of a process (`self` or a pid), in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum::<f64>()
        / TICKS
}

/// CPU seconds the whole machine spent busy (all cores, everything but idle and
/// iowait) since boot.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: f64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy / TICKS
}

fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Peak resident set size (`VmHWM`) of a process, in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmHWM:")
}

/// Resets a process's `VmHWM` to its current RSS, so that a later reading is the
/// peak of what happened in between. Returns false where the kernel refuses.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `perf record` of some processes, stopped (SIGINT, so it writes its file)
/// when dropped.
struct Profile {
    child: Child,
}

impl Profile {
    /// Starts recording `pids` into `dir/name.perf.data`, if `dir` is given.
    fn start(dir: Option<&Path>, name: &str, pids: &[u32]) -> Option<Profile> {
        let dir = dir?;
        std::fs::create_dir_all(dir).ok()?;
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let out = dir.join(format!("{name}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-g", "-F", "999", "-o"])
            .arg(&out)
            .args(["-p", &pids.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("perf record could not start: {e}"))
            .ok()?;
        eprintln!("  recording {}", out.display());
        // perf needs a moment to attach before the interval starts.
        std::thread::sleep(Duration::from_millis(300));
        Some(Profile { child })
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Samples the servers' resident memory every 10 ms until stopped: the peaks of
/// anonymous (heap) and file-backed memory, which `VmHWM` does not tell apart.
struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(f64, f64)>>,
}

impl RssSampler {
    fn start(pids: &[u32]) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let pids = pids.to_vec();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peaks = vec![(0.0f64, 0.0f64); pids.len()];
            loop {
                for (peak, &pid) in peaks.iter_mut().zip(&pids) {
                    peak.0 = peak.0.max(status_mb(pid, "RssAnon:"));
                    peak.1 = peak.1.max(status_mb(pid, "RssFile:"));
                }
                if flag.load(Ordering::Relaxed) {
                    return peaks;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        RssSampler { stop, task }
    }

    /// Per process: (peak anonymous MB, peak file-backed MB).
    async fn stop(self) -> Vec<(f64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// CPU use over one measured interval: the servers', the generator's and everyone
/// else's on this machine.
struct Meter {
    started: Instant,
    machine: f64,
    generator: f64,
    servers: Vec<(u32, f64)>,
}

struct Usage {
    elapsed: f64,
    /// CPU seconds of all the servers together.
    server_cpu: f64,
    /// Cores the generator (this process) kept busy on average.
    generator_cores: f64,
    /// Cores kept busy by everything else on the machine (another build, …).
    other_cores: f64,
}

impl Meter {
    fn start(pids: &[u32]) -> Meter {
        Meter {
            started: Instant::now(),
            machine: machine_busy_seconds(),
            generator: cpu_seconds("self"),
            servers: pids
                .iter()
                .map(|&p| (p, cpu_seconds(&p.to_string())))
                .collect(),
        }
    }

    fn stop(&self) -> Usage {
        let elapsed = self.started.elapsed().as_secs_f64();
        let server_cpu: f64 = self
            .servers
            .iter()
            .map(|(p, before)| cpu_seconds(&p.to_string()) - before)
            .sum();
        let generator = cpu_seconds("self") - self.generator;
        let machine = machine_busy_seconds() - self.machine;
        Usage {
            elapsed,
            server_cpu,
            generator_cores: generator / elapsed,
            other_cores: ((machine - server_cpu - generator) / elapsed).max(0.0),
        }
    }
}

// ---------------------------------------------------------------------------
// Servers

/// One `guardian serve` process, killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Servers of one measurement and the folder holding their data.
struct Cluster {
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
    /// The PostgreSQL databases of the servers, dropped by [`Cluster::finish`].
    databases: Vec<String>,
}

impl Cluster {
    fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(Server::pid).collect()
    }

    /// Stops the servers and drops their PostgreSQL databases.
    async fn finish(mut self) {
        self.servers.clear();
        for name in std::mem::take(&mut self.databases) {
            storage::drop_database(&name).await;
        }
    }
}

/// How the servers check tokens.
enum Auth<'a> {
    Off,
    /// Trust the development issuer whose key folder is given.
    DevIssuer(&'a Path),
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts `n` servers (wired as peers when n > 1), each as `replicas` processes
/// over one database of `backend` (replicas need PostgreSQL), and waits until all
/// are ready. Replica r of server i is `servers[i * replicas + r]`.
async fn start_servers(
    n: usize,
    replicas: usize,
    backend: Backend,
    auth: Auth<'_>,
    extra_env: &[(&str, &str)],
) -> Cluster {
    assert!(
        replicas == 1 || (n == 1 && backend == Backend::Postgres),
        "replicas of one server over PostgreSQL only"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut databases = Vec::new();
    let mut urls = Vec::new();
    if backend == Backend::Postgres {
        for _ in 0..n {
            let (name, url) = storage::fresh_database().await;
            databases.push(name);
            urls.push(url);
        }
    }
    let ports: Vec<u16> = (0..n * replicas).map(|_| free_port()).collect();
    let peers = ports
        .iter()
        .step_by(replicas)
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    // Each server's own peer key pair, where it looks for it (`{data_dir}/peer-key`).
    let peer_keys = (0..n)
        .map(|index| {
            let key = dir.path().join(format!("server-{index}")).join("peer-key");
            guardian::auth::identity::public_key_of(&key).expect("peer key")
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut servers = Vec::new();
    for (process, port) in ports.iter().enumerate() {
        let index = process / replicas;
        let data = if replicas == 1 {
            dir.path().join(format!("server-{index}"))
        } else {
            dir.path()
                .join(format!("server-{index}-replica-{}", process % replicas))
        };
        std::fs::create_dir_all(&data).expect("data dir");
        let log = data.with_extension("log");
        let wrapper = std::env::var("GUARDIAN_BENCH_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(env!("CARGO_BIN_EXE_guardian"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_guardian")),
        };
        command
            .arg("serve")
            .env_clear()
            .env("GUARDIAN_SERVER_LISTEN", format!("127.0.0.1:{port}"))
            .env("GUARDIAN_SERVER_DATA_DIR", &data)
            .env("GUARDIAN_LOG_LEVEL", "warn")
            .current_dir(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if n > 1 {
            command
                .env("GUARDIAN_SERVER_INDEX", index.to_string())
                .env("GUARDIAN_SERVER_SERVERS", n.to_string())
                .env("GUARDIAN_SERVER_PEERS", &peers)
                .env("GUARDIAN_SERVER_PEER_KEYS", &peer_keys)
                .env("GUARDIAN_AUTH_PEER_TOKEN", PEER_TOKEN);
        }
        match auth {
            Auth::Off => {
                command.env("GUARDIAN_AUTH_DISABLED", "true");
            }
            Auth::DevIssuer(issuer) => {
                command
                    .env("GUARDIAN_AUTH_DEV_ISSUER", "true")
                    .env("GUARDIAN_AUTH_DEV_ISSUER_DIR", issuer);
            }
        }
        if let Some(url) = urls.get(index) {
            command.env("GUARDIAN_STORAGE_URL", url);
        }
        command.envs(extra_env.iter().copied());
        servers.push(Server {
            child: command.spawn().expect("start guardian serve"),
            url: format!("http://127.0.0.1:{port}"),
            log,
        });
    }
    let http = Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for server in &mut servers {
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                panic!("{} exited with {status}:\n{log}", server.url);
            }
            let ready = http.get(format!("{}/readyz", server.url)).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                break;
            }
            assert!(Instant::now() < deadline, "{} not ready", server.url);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    Cluster {
        servers,
        _dir: dir,
        databases,
    }
}

/// The endpoint a scenario creates on every server: its plugin and parameters.
struct Endpoint {
    /// A built-in plugin's name.
    plugin: &'static str,
    params: Value,
}

impl Endpoint {
    /// `sum` of vectors of `length`.
    fn sum(length: usize) -> Endpoint {
        Endpoint {
            plugin: "sum",
            params: json!({"length": length}),
        }
    }
}

/// Creates the endpoint [`ENDPOINT`] running `endpoint` on every server.
async fn create_endpoint(
    http: &Client,
    cluster: &Cluster,
    endpoint: &Endpoint,
    token: Option<&str>,
) {
    let body = json!({"name": ENDPOINT, "plugin": endpoint.plugin, "params": endpoint.params, "min_batch": 10});
    for server in &cluster.servers {
        let mut request = http
            .post(format!("{}/api/v1/endpoints", server.url))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("create endpoint");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "create endpoint: {status} {text}");
    }
}

fn load_client(connections: usize) -> Client {
    Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(900))
        .build()
        .expect("http client")
}

// ---------------------------------------------------------------------------
// Tokens

/// Development-issuer tokens for the authenticated scenarios.
struct Tokens {
    /// The issuer's key folder, which the servers read.
    issuer_dir: PathBuf,
    /// `Authorization` values of distinct users' tokens (role `user`), each unique.
    users: Arc<Vec<HeaderValue>>,
    /// A developer token, to create endpoints.
    developer: String,
}

/// Loads at least `needed` valid user tokens from the cache under
/// `target/bench-tokens/`, minting (in parallel) and caching what is missing.
fn tokens(needed: usize) -> Tokens {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("bench-tokens");
    let issuer_dir = root.join("issuer");
    let issuer = DevIssuer::load_or_create(&issuer_dir).expect("development issuer");
    // Tied to the key: a new key pair (folder deleted) makes old tokens useless.
    let file = root.join(format!("user-tokens-{}.txt", issuer.kid()));
    let now = unix_now();
    let mut cached: Vec<String> = std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (exp, _token) = line.split_once(' ')?;
            (exp.parse::<u64>().ok()? > now + TOKEN_MIN_LEFT).then(|| line.to_owned())
        })
        .collect();
    let reused = cached.len().min(needed);
    if cached.len() < needed {
        let missing = needed - cached.len();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let nonce: u32 = rand::random();
        let exp = now + TOKEN_TTL.as_secs();
        let started = Instant::now();
        let minted: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let issuer = &issuer;
                    scope.spawn(move || {
                        (t..missing)
                            .step_by(threads)
                            .map(|j| {
                                let sub = format!("bench-{nonce:08x}-{j}");
                                let token = issuer
                                    .mint(Role::User, &sub, TOKEN_TTL)
                                    .expect("mint token");
                                format!("{exp} {token}")
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("minting thread"))
                .collect()
        });
        eprintln!(
            "minted {missing} RS256 tokens in {:.1} s on {threads} threads ({:.2} ms per token per thread); cached in {}",
            started.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64() * 1e3 * threads as f64 / missing as f64,
            file.display()
        );
        cached.extend(minted);
        let temp = file.with_extension("tmp");
        std::fs::write(&temp, cached.join("\n") + "\n").expect("write token cache");
        std::fs::rename(&temp, &file).expect("write token cache");
    }
    if reused > 0 {
        eprintln!("reused {reused} cached tokens from {}", file.display());
    }
    let users = cached
        .iter()
        .take(needed)
        .filter_map(|line| line.split_once(' '))
        .map(|(_, token)| HeaderValue::from_str(&format!("Bearer {token}")).expect("header"))
        .collect();
    let developer = issuer
        .mint(
            Role::Developer,
            "bench-developer",
            Duration::from_secs(3600),
        )
        .expect("mint developer token");
    Tokens {
        issuer_dir,
        users: Arc::new(users),
        developer,
    }
}

// ---------------------------------------------------------------------------
// Figures

/// One row of a table: a label, parameters for the JSON line, and named metrics
/// with one value per run.
struct Row {
    table: &'static str,
    label: String,
    params: Value,
    metrics: Vec<(&'static str, Vec<f64>)>,
    notes: Vec<String>,
}

impl Row {
    fn new(table: &'static str, label: impl Into<String>, params: Value) -> Row {
        Row {
            table,
            label: label.into(),
            params,
            metrics: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn push(&mut self, name: &'static str, value: f64) {
        match self.metrics.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => self.metrics.push((name, vec![value])),
        }
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }
}

/// Median, min, max.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = if !sorted.len().is_multiple_of(2) {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    (median, sorted[0], sorted[sorted.len() - 1])
}

fn number(v: f64) -> String {
    let a = v.abs();
    let text = if a >= 100.0 || (v.fract() == 0.0 && a < 1e15) {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    // Thousands separators for large integers, as in BENCHMARKS.md.
    if a >= 10_000.0 {
        let digits: Vec<char> = text.chars().collect();
        let mut out = String::new();
        for (i, c) in digits.iter().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) && digits[i - 1].is_ascii_digit() {
                out.push(',');
            }
            out.push(*c);
        }
        out
    } else {
        text
    }
}

fn cell(values: &[f64]) -> String {
    let (median, min, max) = spread(values);
    if values.len() > 1 {
        format!("{} [{}–{}]", number(median), number(min), number(max))
    } else {
        number(median)
    }
}

fn print_tables(rows: &[Row]) {
    let mut tables: Vec<&str> = Vec::new();
    for row in rows {
        if !tables.contains(&row.table) {
            tables.push(row.table);
        }
    }
    for table in tables {
        let rows: Vec<&Row> = rows.iter().filter(|r| r.table == table).collect();
        let mut columns: Vec<&str> = Vec::new();
        for row in &rows {
            for (name, _) in &row.metrics {
                if !columns.contains(name) {
                    columns.push(name);
                }
            }
        }
        println!("\n{table}\n");
        println!("| scenario | {} |", columns.join(" | "));
        println!("|---|{}", "---|".repeat(columns.len()));
        for row in &rows {
            let cells: Vec<String> = columns
                .iter()
                .map(|c| {
                    row.metrics
                        .iter()
                        .find(|(n, _)| n == c)
                        .map_or_else(|| "–".to_owned(), |(_, v)| cell(v))
                })
                .collect();
            println!("| {} | {} |", row.label, cells.join(" | "));
        }
        for row in &rows {
            for note in &row.notes {
                println!("- {}: {note}", row.label);
            }
        }
    }
}

/// Gives every row on PostgreSQL its figure as a ratio to the same row on SQLite
/// of this run (medians): `reports/s` for ingest, `seal + fetch s` for seals.
fn add_ratios(rows: &mut [Row]) {
    let median = |row: &Row, name: &str| {
        row.metrics
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, values)| spread(values).0)
    };
    for i in 0..rows.len() {
        let Some(base) = rows[i].label.split(Backend::Postgres.label()).next() else {
            continue;
        };
        if base == rows[i].label {
            continue;
        }
        let twin = rows
            .iter()
            .find(|r| r.table == rows[i].table && r.label == base);
        let ratio = ["reports/s", "seal + fetch s"]
            .iter()
            .find_map(|&name| Some(median(&rows[i], name)? / median(twin?, name)?));
        if let Some(ratio) = ratio {
            rows[i].push("× SQLite", ratio);
        }
    }
}

fn json_line(row: &Row, mode: &str) -> String {
    let metrics: serde_json::Map<String, Value> = row
        .metrics
        .iter()
        .map(|(name, values)| {
            let (median, min, max) = spread(values);
            (
                (*name).to_owned(),
                json!({"median": median, "min": min, "max": max, "values": values}),
            )
        })
        .collect();
    json!({
        "bench": "load",
        "mode": mode,
        "table": row.table,
        "scenario": row.label,
        "params": row.params,
        "runs": row.metrics.first().map_or(0, |(_, v)| v.len()),
        "metrics": metrics,
        "notes": row.notes,
    })
    .to_string()
}

// ---------------------------------------------------------------------------
// Plugin runtime

/// Median of `samples` timings of `iterations` calls of `f`, per call, in µs.
fn per_call_us(samples: usize, iterations: usize, mut f: impl FnMut()) -> f64 {
    let timings: Vec<f64> = (0..samples)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                f();
            }
            started.elapsed().as_secs_f64() * 1e6 / iterations as f64
        })
        .collect();
    spread(&timings).0
}

fn plugin_rows(options: &Options) -> Vec<Row> {
    let runtime = Runtime::new(RuntimeOptions::default()).expect("runtime");
    let sum = runtime.load_builtin("sum").expect("sum");
    let config = sum.configure(r#"{"length": 10}"#).expect("configure");
    let shares: Vec<Vec<u8>> = (0..1000u64)
        .map(|i| {
            sum.shard(&config, "[1,2,3,4,5,6,7,8,9,10]", 2, &[i as u8; 32])
                .expect("shard")
                .remove(0)
        })
        .collect();
    let refs: Vec<&[u8]> = shares.iter().map(Vec::as_slice).collect();
    let (data, ends) = pack(&refs);
    let agg = sum.init(&config).expect("init");
    let mut fold = Row::new(
        "plugin runtime (in process, µs)",
        "fold 1,000 length-10 shares (per share)",
        json!({"plugin": "sum", "length": 10, "batch": 1000}),
    );
    let mut call = Row::new(
        "plugin runtime (in process, µs)",
        "validate one share (sum, length 10)",
        json!({"plugin": "sum", "length": 10}),
    );
    let mut instantiate = Row::new(
        "plugin runtime (in process, µs)",
        "instantiate (store + instance + drop)",
        json!({"plugin": "sum"}),
    );
    for run in 0..options.runs {
        eprintln!("plugins: run {}/{}", run + 1, options.runs);
        let meter = Meter::start(&[]);
        let per_call = per_call_us(7, 300, || {
            sum.accumulate(&config, &agg, &data, &ends)
                .expect("accumulate");
        });
        fold.push("µs", per_call / 1000.0);
        call.push(
            "µs",
            per_call_us(7, 30_000, || {
                sum.validate(&config, &shares[0], 0).expect("validate");
            }),
        );
        instantiate.push(
            "µs",
            per_call_us(7, 3_000, || sum.instantiate_idle().expect("instantiate")),
        );
        let usage = meter.stop();
        for row in [&mut fold, &mut call, &mut instantiate] {
            row.push("other cores", usage.other_cores);
        }
    }
    vec![fold, call, instantiate]
}

// ---------------------------------------------------------------------------
// Ingest

/// Which token a request carries.
#[derive(Clone)]
enum TokenUse {
    None,
    /// Request i carries token i; the run ends when they are used up.
    EachOnce(Arc<Vec<HeaderValue>>),
    /// Request i carries token i mod the number of tokens.
    Cycle(Arc<Vec<HeaderValue>>),
}

/// A pre-built request body with placeholder report ids, patched per request:
/// one report, or a bulk upload of many.
struct Template {
    body: Vec<u8>,
    /// Offsets of the 32 hex characters of each report id.
    ids_at: Vec<usize>,
}

impl Template {
    fn new(share: &[u8], public_share: Option<&[u8]>) -> Template {
        Template {
            body: report_body(0, share, public_share),
            ids_at: vec![REPORT_ID_AT.len()],
        }
    }

    /// The body of `POST …/reports/bulk` with `reports` reports of `share`.
    fn bulk(share: &[u8], reports: usize) -> Template {
        let mut body = br#"{"reports":["#.to_vec();
        let mut ids_at = Vec::with_capacity(reports);
        for k in 0..reports {
            if k > 0 {
                body.push(b',');
            }
            ids_at.push(body.len() + REPORT_ID_AT.len());
            body.extend_from_slice(&report_body(0, share, None));
        }
        body.extend_from_slice(b"]}");
        Template { body, ids_at }
    }

    /// Reports per request.
    fn reports(&self) -> usize {
        self.ids_at.len()
    }

    /// The body of request `i`: reports `i * n` to `i * n + n - 1`.
    fn request(&self, i: u64) -> Vec<u8> {
        let mut body = self.body.clone();
        let n = self.ids_at.len() as u64;
        for (k, &at) in self.ids_at.iter().enumerate() {
            write_hex(&mut body[at..at + 32], report_id(i * n + k as u64));
        }
        body
    }
}

fn write_hex(out: &mut [u8], value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = DIGITS[((value >> (4 * (31 - i))) & 0xf) as usize];
    }
}

/// What one ingest run saw.
struct Outcome {
    /// Latency of every request, in µs.
    latencies: Vec<u32>,
    failed: u64,
    /// The first few failures, for the notes.
    errors: Vec<String>,
    /// The run ended because the tokens were used up.
    exhausted: bool,
}

/// Posts reports from `connections` tasks, each on its own keep-alive HTTP/1.1
/// connection (task k to `addresses[k % len]`: the replicas of one server share
/// the load), until `seconds` have passed (or the tokens are used up).
///
/// Each task drives a bare `hyper` client connection rather than a pooled client:
/// the generator shares the cores with the server, and reqwest's pool and layers
/// cost about as much CPU per request as the server's whole request path.
async fn drive(
    addresses: &[std::net::SocketAddr],
    path: &str,
    template: Arc<Template>,
    tokens: TokenUse,
    connections: usize,
    seconds: f64,
) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let exhausted = Arc::new(AtomicBool::new(false));
    let uri: hyper::Uri = path.parse().expect("report path");
    let mut tasks = Vec::new();
    for task in 0..connections {
        let address = addresses[task % addresses.len()];
        let host = HeaderValue::from_str(&address.to_string()).expect("host header");
        let (uri, host, template, tokens) =
            (uri.clone(), host.clone(), template.clone(), tokens.clone());
        let (next, stop, exhausted) = (next.clone(), stop.clone(), exhausted.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut failed = 0u64;
            let mut errors = Vec::new();
            let mut sender = None;
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let token = match &tokens {
                    TokenUse::None => None,
                    TokenUse::EachOnce(all) => match all.get(i as usize) {
                        Some(t) => Some(t.clone()),
                        None => {
                            exhausted.store(true, Ordering::Relaxed);
                            break;
                        }
                    },
                    TokenUse::Cycle(all) => Some(all[i as usize % all.len()].clone()),
                };
                let mut request = hyper::Request::post(uri.clone())
                    .header(HOST, host.clone())
                    .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if let Some(token) = token {
                    request = request.header(AUTHORIZATION, token);
                }
                let request = request
                    .body(axum::body::Body::from(template.request(i)))
                    .expect("request");
                let sent = Instant::now();
                let result = post(&mut sender, address, request).await;
                latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if let Err(e) = result {
                    failed += 1;
                    if errors.len() < 3 {
                        errors.push(e);
                    }
                }
            }
            (latencies, failed, errors)
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    while tokio::time::Instant::now() < deadline && !exhausted.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut outcome = Outcome {
        latencies: Vec::new(),
        failed: 0,
        errors: Vec::new(),
        exhausted: exhausted.load(Ordering::Relaxed),
    };
    for task in tasks {
        let (latencies, failed, errors) = task.await.expect("load task");
        outcome.latencies.extend(latencies);
        outcome.failed += failed;
        outcome.errors.extend(errors);
    }
    outcome.errors.truncate(3);
    outcome
}

type Sender = hyper::client::conn::http1::SendRequest<axum::body::Body>;

/// Sends one report on the task's connection, (re)connecting first when there is
/// none; `Ok` only for 201. A failed connection is dropped, the next call opens
/// another.
async fn post(
    sender: &mut Option<Sender>,
    address: std::net::SocketAddr,
    request: hyper::Request<axum::body::Body>,
) -> Result<(), String> {
    if sender.is_none() {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (new, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        *sender = Some(new);
    }
    let Some(current) = sender.as_mut() else {
        unreachable!("connected above");
    };
    let exchanged = async {
        current.ready().await?;
        let response = current.send_request(request).await?;
        let status = response.status();
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20)
            .await
            .map_err(|e| e.to_string());
        Ok::<_, hyper::Error>((status, body))
    }
    .await;
    match exchanged {
        Ok((StatusCode::CREATED, Ok(_))) => Ok(()),
        // A bulk upload: every report stored.
        Ok((StatusCode::OK, Ok(body)))
            if body.starts_with(br#"{"results""#)
                && !body
                    .windows(br#""status":"s"#.len())
                    .any(|w| w.starts_with(br#""status":""#) && w != br#""status":"s"#) =>
        {
            Ok(())
        }
        Ok((status, Ok(body))) => Err(format!("{status} {}", String::from_utf8_lossy(&body))),
        Ok((_, Err(e))) => {
            *sender = None;
            Err(e)
        }
        Err(e) => {
            *sender = None;
            Err(e.to_string())
        }
    }
}

/// One ingest scenario's server setup.
enum IngestAuth {
    Off,
    Fresh,
    Reused,
}

/// The table of the ingest scenarios.
const INGEST_TABLE: &str = "ingest (1 server, durable; sum unless named)";

/// Where an ingest run's server stores its reports: one process on SQLite, or
/// `replicas` processes over one PostgreSQL database.
#[derive(Clone, Copy)]
struct Store {
    backend: Backend,
    replicas: usize,
}

impl Store {
    const SQLITE: Store = Store {
        backend: Backend::Sqlite,
        replicas: 1,
    };
}

/// `row` with `options.runs` runs of an ingest scenario, each on a fresh server.
fn ingest_row(
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    row: Row,
    load: &IngestLoad,
    auth: &IngestAuth,
    tokens: Option<&Tokens>,
) -> Row {
    ingest_row_on(runtime, options, row, load, auth, tokens, Store::SQLITE)
}

/// [`ingest_row`] on the storage `store`.
fn ingest_row_on(
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    mut row: Row,
    load: &IngestLoad,
    auth: &IngestAuth,
    tokens: Option<&Tokens>,
    store: Store,
) -> Row {
    for run in 0..options.runs {
        eprintln!("ingest, {}: run {}/{}", row.label, run + 1, options.runs);
        runtime.block_on(ingest_run(&mut row, options, load, auth, tokens, store));
    }
    row
}

/// What an ingest run's server holds and every request posts: the endpoint, and
/// one report whose id is patched per request.
struct IngestLoad {
    endpoint: Endpoint,
    template: Arc<Template>,
}

impl IngestLoad {
    /// [`IngestLoad::sum`] posted in bulk uploads of `reports` reports each.
    fn sum_bulk(length: usize, reports: usize) -> IngestLoad {
        let share: Vec<u8> = (0..length * 8).map(|i| (i * 37 % 251) as u8).collect();
        IngestLoad {
            endpoint: Endpoint::sum(length),
            template: Arc::new(Template::bulk(&share, reports)),
        }
    }

    /// `sum` of `length`: any bytes of the right length (`sum` validates only
    /// the length).
    fn sum(length: usize) -> IngestLoad {
        let share: Vec<u8> = (0..length * 8).map(|i| (i * 37 % 251) as u8).collect();
        IngestLoad {
            endpoint: Endpoint::sum(length),
            template: Arc::new(Template::new(&share, None)),
        }
    }

    /// `prio3-count`: a report of `true` sharded by the built-in for 2 servers,
    /// server 0's share (the longer one, with the proof) and the public share
    /// field (empty for count). The proof is bound to the id the report was
    /// sharded with, not to the patched ones; that does not matter here: on
    /// arrival a server checks lengths only, the proofs are checked by the seal.
    fn prio3_count() -> IngestLoad {
        let plugin = guardian::runtime::testing::builtin("prio3-count");
        let config = plugin.configure("{}").expect("configure prio3-count");
        let report = plugin
            .shard_report(
                &config,
                "true",
                2,
                &guardian::report_id::new_report_id(std::time::SystemTime::now()),
                &[7; 32],
            )
            .expect("shard prio3-count");
        IngestLoad {
            endpoint: Endpoint {
                plugin: "prio3-count",
                params: json!({}),
            },
            template: Arc::new(Template::new(&report.shares[0], Some(&report.public_share))),
        }
    }
}

/// One run of an ingest scenario on a fresh server; pushes its figures into `row`.
async fn ingest_run(
    row: &mut Row,
    options: &Options,
    load: &IngestLoad,
    auth: &IngestAuth,
    tokens: Option<&Tokens>,
    store: Store,
) {
    let server_auth = match (auth, tokens) {
        (IngestAuth::Off, _) => Auth::Off,
        (_, Some(t)) => Auth::DevIssuer(&t.issuer_dir),
        (_, None) => unreachable!("authenticated scenarios get tokens"),
    };
    let cluster = start_servers(1, store.replicas, store.backend, server_auth, &[]).await;
    let client = load_client(options.connections);
    create_endpoint(
        &client,
        &cluster,
        &load.endpoint,
        tokens.map(|t| t.developer.as_str()),
    )
    .await;
    let use_tokens = match (auth, tokens) {
        (IngestAuth::Fresh, Some(t)) => TokenUse::EachOnce(t.users.clone()),
        (IngestAuth::Reused, Some(t)) => {
            TokenUse::Cycle(Arc::new(t.users.iter().take(USERS).cloned().collect()))
        }
        _ => TokenUse::None,
    };
    let addresses: Vec<std::net::SocketAddr> = cluster
        .servers
        .iter()
        .map(|server| {
            server
                .url
                .trim_start_matches("http://")
                .parse()
                .expect("server address")
        })
        .collect();
    let pids = cluster.pids();
    let profile = Profile::start(
        options.perf.as_deref(),
        &format!("ingest-{}", row.label.replace([' ', ','], "_")),
        &pids,
    );
    let meter = Meter::start(&pids);
    let path = if load.template.reports() > 1 {
        format!("/api/v1/endpoints/{ENDPOINT}/reports/bulk")
    } else {
        format!("/api/v1/endpoints/{ENDPOINT}/reports")
    };
    let per_request = load.template.reports() as u64;
    let mut outcome = drive(
        &addresses,
        &path,
        load.template.clone(),
        use_tokens,
        options.connections,
        options.seconds,
    )
    .await;
    let usage = meter.stop();
    drop(profile);
    outcome.latencies.sort_unstable();
    let done = outcome.latencies.len();
    let pick = |q: f64| {
        outcome
            .latencies
            .get(((done.max(1) - 1) as f64 * q) as usize)
            .map_or(0.0, |&us| f64::from(us) / 1e3)
    };
    let ok = (done as u64 - outcome.failed) * per_request;
    let reports = done as u64 * per_request;
    row.push("reports/s", ok as f64 / usage.elapsed);
    row.push("p50 ms", pick(0.5));
    row.push("p99 ms", pick(0.99));
    row.push("max ms", pick(1.0));
    row.push(
        "server CPU s / 1k",
        usage.server_cpu / reports.max(1) as f64 * 1e3,
    );
    // The larger process's (replicas: each is a process of its own).
    row.push(
        "peak RSS MB",
        pids.iter().map(|&p| peak_rss_mb(p)).fold(0.0, f64::max),
    );
    let (group, commit_ms) = group_commits(&client, &cluster.servers[0].url).await;
    row.push("reports / commit", group);
    row.push("commit ms", commit_ms);
    row.push("failed", outcome.failed as f64);
    row.push("gen cores", usage.generator_cores);
    row.push(
        "gen CPU µs / req",
        usage.generator_cores * usage.elapsed / done.max(1) as f64 * 1e6,
    );
    row.push("other cores", usage.other_cores);
    if outcome.exhausted {
        row.note(format!(
            "the {} fresh tokens ran out before {} s (the rate is over the time they lasted)",
            options.fresh_tokens, options.seconds
        ));
    }
    for e in outcome.errors {
        row.note(format!("failure: {e}"));
    }
    eprintln!(
        "  {:.0} reports/s, {} requests, {} failed, generator {:.2} cores, others {:.2} cores, {:.1} s",
        ok as f64 / usage.elapsed,
        done,
        outcome.failed,
        usage.generator_cores,
        usage.other_cores,
        usage.elapsed
    );
    cluster.finish().await;
}

/// A server's metrics, as text.
async fn metrics_text(client: &Client, url: &str) -> String {
    client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

/// The value of the sample `name` (with its labels, as written) in `metrics`.
fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The server's mean group commit so far, from its metrics: reports per commit
/// and milliseconds per commit (fsync included).
async fn group_commits(client: &Client, url: &str) -> (f64, f64) {
    let text = metrics_text(client, url).await;
    let value = |name| metric(&text, name).unwrap_or(f64::NAN);
    let commits = value("guardian_commit_reports_count");
    (
        value("guardian_commit_reports_sum") / commits,
        value("guardian_commit_seconds_sum") / commits * 1e3,
    )
}

// ---------------------------------------------------------------------------
// Seal + fetch

/// splitmix64: cheap, well-mixed pseudo-random shares.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The id of the `i`-th report: unique, and laid out as real clients make them
/// (`guardian::report_id`): the time (when the generator started, so inside every
/// server's window), then bits as scattered as the random rest of real ids.
fn report_id(i: u64) -> u128 {
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let started = *STARTED.get_or_init(|| {
        u128::from_be_bytes(guardian::report_id::first_id_at(
            std::time::SystemTime::now(),
        ))
    });
    started | (u128::from(mix(i ^ 0x5eed) & 0xffff) << 64) | u128::from(i)
}

/// The two servers' shares of report `i` of `sum`: additive shares of
/// `[1, …, 10]` in the wrapping u64 ring, little-endian (what `sum` of length 10
/// stores).
fn report_shares(i: u64) -> [Vec<u8>; 2] {
    let mut a = Vec::with_capacity(80);
    let mut b = Vec::with_capacity(80);
    for j in 0..10u64 {
        let r = mix(i * 16 + j);
        a.extend_from_slice(&r.to_le_bytes());
        b.extend_from_slice(&(j + 1).wrapping_sub(r).to_le_bytes());
    }
    [a, b]
}

/// What a report body starts with, up to its id.
const REPORT_ID_AT: &str = r#"{"report_id":""#;

/// The JSON body posting report `id` with this server's `share` and, for a
/// robust plugin, the report's public share (the field is there even when the
/// public share is empty, as for Prio3 count and sum).
fn report_body(id: u128, share: &[u8], public_share: Option<&[u8]>) -> Vec<u8> {
    let mut body = String::with_capacity(160);
    let _ = write!(
        body,
        r#"{REPORT_ID_AT}{id:032x}","share":"{}""#,
        BASE64.encode(share)
    );
    if let Some(public_share) = public_share {
        let _ = write!(body, r#","public_share":"{}""#, BASE64.encode(public_share));
    }
    body.push('}');
    body.into_bytes()
}

async fn post_ok(client: &Client, url: &Url, body: Vec<u8>) -> Result<(), String> {
    let response = client
        .post(url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if status == StatusCode::CREATED {
        Ok(())
    } else {
        Err(format!("{status} {}", String::from_utf8_lossy(&body)))
    }
}

/// What a seal scenario's endpoint runs, the reports posted to it, and how the
/// fetched result is checked.
enum SealLoad {
    /// `sum` of length 10: additive shares of `[1, …, 10]`, made as they are
    /// posted.
    Sum,
    /// `prio3-sum` with `max_measurement` 255: reports sharded before the run.
    Prio3Sum(Prio3Reports),
}

/// Reports of a robust built-in, sharded in this process for 2 servers.
struct Prio3Reports {
    /// The plugin as this process runs it, to unshard the fetched result.
    plugin: Plugin,
    config: Vec<u8>,
    /// In posting order.
    reports: Vec<Sharded>,
    /// The plain sum of the measurements.
    sum: u64,
}

/// A report of a robust plugin as the servers receive it.
struct Sharded {
    id: [u8; 16],
    /// The public share and one share per server.
    report: Report,
}

/// `measurements` (JSON text) sharded by `plugin` for `servers` servers, with
/// random ids and seeds, on every core.
fn shard_reports(
    plugin: &Plugin,
    config: &[u8],
    measurements: &[String],
    servers: u32,
) -> Vec<Sharded> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_thread = measurements.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = measurements
            .chunks(per_thread)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|measurement| {
                            let id =
                                guardian::report_id::new_report_id(std::time::SystemTime::now());
                            let report = plugin
                                .shard_report(
                                    config,
                                    measurement,
                                    servers,
                                    &id,
                                    &rand::random::<[u8; 32]>(),
                                )
                                .expect("shard");
                            Sharded { id, report }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("sharding thread"))
            .collect()
    })
}

/// The plugin calls timed in a `sum` seal: (metric label, column).
const SUM_CALLS: &[(&str, &str)] = &[("accumulate", "accumulate s")];

/// The plugin calls timed in a robust seal. The server's `verify_finish` call
/// runs `verify_init` again (the states are not kept between the round and the
/// commit), then `verify_finish` and `accumulate`.
const ROBUST_CALLS: &[(&str, &str)] = &[
    ("verify_init", "verify_init s"),
    ("combine", "combine s"),
    ("verify_finish", "verify_finish s"),
];

impl SealLoad {
    /// `n` reports of `prio3-sum` (max 255) with random values.
    fn prio3_sum(n: u64) -> SealLoad {
        let started = Instant::now();
        let plugin = guardian::runtime::testing::builtin("prio3-sum");
        let config = plugin
            .configure(r#"{"max_measurement": 255}"#)
            .expect("configure prio3-sum");
        let values: Vec<u64> = (0..n).map(|_| rand::random_range(0..=255)).collect();
        let measurements: Vec<String> = values.iter().map(u64::to_string).collect();
        let reports = shard_reports(&plugin, &config, &measurements, 2);
        eprintln!(
            "sharded {n} prio3-sum reports in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        SealLoad::Prio3Sum(Prio3Reports {
            plugin,
            config,
            reports,
            sum: values.iter().sum(),
        })
    }

    fn endpoint(&self) -> Endpoint {
        match self {
            SealLoad::Sum => Endpoint::sum(10),
            SealLoad::Prio3Sum(_) => Endpoint {
                plugin: "prio3-sum",
                params: json!({"max_measurement": 255}),
            },
        }
    }

    /// The scenario's name (`--only`) and its two tables: seal + fetch, and
    /// scaling.
    fn names(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            SealLoad::Sum => (
                "seal",
                "seal + fetch (2 servers, sum length 10, auth off; seal on server 0, fetch from both)",
                "scaling (the same runs: filling N reports into 2 servers, then sealing them)",
            ),
            SealLoad::Prio3Sum(_) => (
                "robust-seal",
                "robust seal + verify + fetch (2 servers, prio3-sum max 255, auth off; seal on server 0, fetch from both; plugin call s summed over both servers)",
                "robust scaling (the same runs: filling N prio3-sum reports into 2 servers, then sealing them)",
            ),
        }
    }

    fn calls(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            SealLoad::Sum => SUM_CALLS,
            SealLoad::Prio3Sum(_) => ROBUST_CALLS,
        }
    }

    /// The bodies of report `i` posted to server 0 and server 1.
    fn bodies(&self, i: u64) -> [Vec<u8>; 2] {
        match self {
            SealLoad::Sum => report_shares(i).map(|share| report_body(report_id(i), &share, None)),
            SealLoad::Prio3Sum(p) => {
                let Sharded { id, report } = &p.reports[i as usize];
                [0, 1].map(|server| {
                    report_body(
                        u128::from_be_bytes(*id),
                        &report.shares[server],
                        Some(&report.public_share),
                    )
                })
            }
        }
    }

    /// Checks the released shares of both servers, for a batch of `count` of
    /// the `n` reports posted.
    fn check(&self, shares: &[Vec<u8>], n: u64, count: u64) -> Result<(), String> {
        match self {
            SealLoad::Sum => {
                let mut combined = [0u64; 10];
                for share in shares {
                    for (j, chunk) in share.chunks_exact(8).enumerate().take(10) {
                        let value = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                        combined[j] = combined[j].wrapping_add(value);
                    }
                }
                let expected: Vec<u64> = (1..=10).map(|j| j * count).collect();
                if combined.as_slice() == expected.as_slice() {
                    Ok(())
                } else {
                    Err(format!(
                        "combined shares {combined:?} are not {expected:?}: the seal is wrong"
                    ))
                }
            }
            SealLoad::Prio3Sum(p) => {
                let result = p
                    .plugin
                    .unshard(&p.config, shares, count)
                    .map_err(|e| format!("unshard: {e}"))?;
                // Every report is valid and was posted: all are in the batch.
                let expected = p.sum;
                if result.trim() == expected.to_string() && count == n {
                    Ok(())
                } else {
                    Err(format!(
                        "the result of {count} reports is {result}, the plain sum of the {n} posted is {expected}: the seal is wrong"
                    ))
                }
            }
        }
    }
}

/// One seal run on a fresh 2-server cluster with the first `n` reports of `load`
/// stored.
async fn seal_run(
    seal: &mut Row,
    scaling: &mut Row,
    options: &Options,
    load: &Arc<SealLoad>,
    n: u64,
    backend: Backend,
) {
    // Generous timeouts: the bench measures how long a seal takes, whatever the
    // defaults (30 s per request, 20 s per peer call) would allow.
    let cluster = start_servers(
        2,
        1,
        backend,
        Auth::Off,
        &[
            ("GUARDIAN_LIMITS_REQUEST_TIMEOUT_MS", "900000"),
            ("GUARDIAN_ENDPOINTS_PEER_TIMEOUT_MS", "900000"),
        ],
    )
    .await;
    let client = load_client(options.connections * 2);
    create_endpoint(&client, &cluster, &load.endpoint(), None).await;
    let urls: Arc<Vec<Url>> = Arc::new(
        cluster
            .servers
            .iter()
            .map(|s| {
                format!("{}/api/v1/endpoints/{ENDPOINT}/reports", s.url)
                    .parse()
                    .expect("url")
            })
            .collect(),
    );
    let pids = cluster.pids();

    // Fill: every report to both servers (the two posts concurrently).
    let next = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let tail_from = n - n / 10;
    let tail_started: Arc<std::sync::Mutex<Option<(Instant, f64)>>> = Arc::default();
    let meter = Meter::start(&pids);
    let mut tasks = Vec::new();
    for _ in 0..options.connections {
        let (client, urls, next, completed, tail_started, load) = (
            client.clone(),
            urls.clone(),
            next.clone(),
            completed.clone(),
            tail_started.clone(),
            load.clone(),
        );
        let pids = pids.clone();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0u64;
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let [a, b] = load.bodies(i);
                let (ra, rb) =
                    tokio::join!(post_ok(&client, &urls[0], a), post_ok(&client, &urls[1], b));
                for r in [ra, rb] {
                    if let Err(e) = r {
                        failed += 1;
                        if errors.len() < 3 {
                            errors.push(e);
                        }
                    }
                }
                if completed.fetch_add(1, Ordering::Relaxed) + 1 == tail_from {
                    let cpu: f64 = pids.iter().map(|p| cpu_seconds(&p.to_string())).sum();
                    *tail_started
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some((Instant::now(), cpu));
                }
            }
            (failed, errors)
        }));
    }
    let mut failed = 0;
    let mut errors: Vec<String> = Vec::new();
    for task in tasks {
        let (f, e) = task.await.expect("fill task");
        failed += f;
        errors.extend(e);
    }
    let fill = meter.stop();
    let fill_end = Instant::now();
    let tail = tail_started
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let (tail_rate, tail_cpu) = match tail {
        Some((at, cpu_at)) => {
            let cpu: f64 = pids.iter().map(|p| cpu_seconds(&p.to_string())).sum();
            let reports = (n - tail_from) as f64;
            (
                reports / (fill_end - at).as_secs_f64(),
                (cpu - cpu_at) / (2.0 * reports) * 1e3,
            )
        }
        None => (0.0, 0.0),
    };
    let fill_rss: Vec<f64> = pids.iter().map(|&p| peak_rss_mb(p)).collect();
    eprintln!(
        "  filled {n} reports on 2 servers in {:.1} s ({:.0} reports/s per server; last 10 %: {tail_rate:.0}/s), {failed} failed posts, generator {:.2} cores, others {:.2} cores",
        fill.elapsed,
        n as f64 / fill.elapsed,
        fill.generator_cores,
        fill.other_cores
    );

    if let Some(hook) = &options.before_seal {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let status = Command::new("sh")
            .args(["-c", hook])
            .env("SERVER_PIDS", pids.join(" "))
            .status();
        eprintln!("  --before-seal: {status:?}");
    }

    // Seal on server 0, then fetch the released share from both.
    let peaks_reset = pids.iter().all(|&p| reset_peak_rss(p));
    let profile = Profile::start(options.perf.as_deref(), &format!("seal-{n}"), &pids);
    let sampler = RssSampler::start(&pids);
    let meter = Meter::start(&pids);
    let started = Instant::now();
    let sealed = client
        .post(format!(
            "{}/api/v1/endpoints/{ENDPOINT}/batches",
            cluster.servers[0].url
        ))
        .send()
        .await
        .expect("seal request");
    let status = sealed.status();
    let sealed: Value = sealed.json().await.unwrap_or(Value::Null);
    let seal_time = started.elapsed().as_secs_f64();
    assert_eq!(status, StatusCode::CREATED, "seal: {sealed}");
    let batch_id = sealed["batch_id"].as_str().expect("batch_id").to_owned();
    let count = sealed["count"].as_u64().unwrap_or(0);
    let rejected = sealed["rejected"].as_u64().unwrap_or(0);
    let fetches = cluster.servers.iter().map(|s| {
        let client = client.clone();
        let url = format!("{}/api/v1/endpoints/{ENDPOINT}/batches/{batch_id}", s.url);
        async move {
            let response = client.get(url).send().await.expect("fetch request");
            assert_eq!(response.status(), StatusCode::OK, "fetch");
            response.json::<Value>().await.expect("fetch body")
        }
    });
    let fetched = futures_join_all(fetches).await;
    let total_time = started.elapsed().as_secs_f64();
    let usage = meter.stop();
    let sampled = sampler.stop().await;
    drop(profile);

    // The plugins' time, by call, over both servers (the fill calls only
    // `validate`, so what the seal called is all there is; a server that made
    // no such call has no sample).
    let mut call_seconds = vec![0.0; load.calls().len()];
    for server in &cluster.servers {
        let metrics = metrics_text(&client, &server.url).await;
        for ((call, _), seconds) in load.calls().iter().zip(&mut call_seconds) {
            *seconds += metric(
                &metrics,
                &format!(r#"guardian_plugin_call_seconds_sum{{call="{call}"}}"#),
            )
            .unwrap_or(0.0);
        }
    }

    let shares: Vec<Vec<u8>> = fetched
        .iter()
        .map(|answer| {
            assert_eq!(answer["count"].as_u64(), Some(count), "fetched count");
            BASE64
                .decode(answer["share"].as_str().expect("share"))
                .expect("share base64")
        })
        .collect();
    let checked = load.check(&shares, n, count);
    let correct = checked.is_ok();

    scaling.push("fill reports/s per server", n as f64 / fill.elapsed);
    scaling.push("ingest at 90–100 % of N, reports/s", tail_rate);
    scaling.push("ingest server CPU s / 1k", tail_cpu);
    scaling.push("seal + fetch s", total_time);
    scaling.push("seal µs / report", total_time / count.max(1) as f64 * 1e6);
    scaling.push("failed", failed as f64);
    scaling.push("gen cores (fill)", fill.generator_cores);
    scaling.push("other cores (fill)", fill.other_cores);
    for e in errors.into_iter().take(3) {
        scaling.note(format!("failure: {e}"));
    }
    let row = seal;
    row.push("seal s", seal_time);
    row.push("seal + fetch s", total_time);
    row.push(
        "server CPU s / 1k",
        usage.server_cpu / count.max(1) as f64 * 1e3,
    );
    for (i, &pid) in pids.iter().enumerate() {
        row.push(
            if i == 0 {
                "peak RSS MB s0"
            } else {
                "peak RSS MB s1"
            },
            peak_rss_mb(pid),
        );
    }
    row.push(
        "heap MB (sampled, larger server)",
        sampled.iter().map(|p| p.0).fold(0.0, f64::max),
    );
    row.push(
        "peak RSS MB during fill",
        fill_rss.iter().copied().fold(0.0, f64::max),
    );
    for ((_, name), seconds) in load.calls().iter().zip(&call_seconds) {
        row.push(name, *seconds);
    }
    row.push("sealed", count as f64);
    row.push("rejected", rejected as f64);
    row.push("wrong results", f64::from(u8::from(!correct)));
    row.push("other cores", usage.other_cores);
    if !peaks_reset {
        row.note("could not reset VmHWM: seal peak RSS includes the fill".to_owned());
    }
    if count != n {
        row.note(format!("sealed {count} of {n} reports"));
    }
    if let Err(e) = checked {
        row.note(e);
    }
    eprintln!(
        "  sealed {count} ({rejected} rejected) in {seal_time:.2} s, with fetch {total_time:.2} s, server CPU {:.2} s, peak RSS {:.0} / {:.0} MB (sampled peaks: heap {:.0} / {:.0} MB, file {:.0} / {:.0} MB), plugin calls {}, others {:.2} cores, result {}",
        usage.server_cpu,
        peak_rss_mb(pids[0]),
        peak_rss_mb(pids[1]),
        sampled.first().map_or(0.0, |p| p.0),
        sampled.get(1).map_or(0.0, |p| p.0),
        sampled.first().map_or(0.0, |p| p.1),
        sampled.get(1).map_or(0.0, |p| p.1),
        load.calls()
            .iter()
            .zip(&call_seconds)
            .map(|((call, _), s)| format!("{call} {s:.2} s"))
            .collect::<Vec<_>>()
            .join(", "),
        usage.other_cores,
        if correct { "correct" } else { "WRONG" }
    );
    cluster.finish().await;
}

/// The rows of a seal scenario: for each of `options.seal_sizes`, `load(n)`'s
/// seal + fetch row, then the scaling rows of the same runs.
fn seal_rows(
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    load: impl Fn(u64) -> SealLoad,
) -> Vec<Row> {
    seal_rows_on(runtime, options, load, Backend::Sqlite)
}

/// [`seal_rows`] with the servers on `backend`.
fn seal_rows_on(
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    load: impl Fn(u64) -> SealLoad,
    backend: Backend,
) -> Vec<Row> {
    let (mut rows, mut scaling_rows) = (Vec::new(), Vec::new());
    for &n in &options.seal_sizes {
        let load = Arc::new(load(n));
        let (scenario, seal_table, scaling_table) = load.names();
        let endpoint = load.endpoint();
        let label = format!("{} stored reports{}", number(n as f64), backend.label());
        let params = json!({"scenario": scenario, "servers": 2, "plugin": endpoint.plugin, "params": endpoint.params, "reports": n, "connections": options.connections, "storage": backend.name()});
        let mut seal = Row::new(seal_table, label.clone(), params.clone());
        let mut scaling = Row::new(scaling_table, label, params);
        for run in 0..options.runs {
            eprintln!(
                "{scenario} {n}{}: run {}/{}",
                backend.label(),
                run + 1,
                options.runs
            );
            runtime.block_on(seal_run(
                &mut seal,
                &mut scaling,
                options,
                &load,
                n,
                backend,
            ));
        }
        rows.push(seal);
        scaling_rows.push(scaling);
    }
    rows.extend(scaling_rows);
    rows
}

/// Awaits every future, concurrently, in order (without pulling in `futures`).
async fn futures_join_all<F: Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

// ---------------------------------------------------------------------------

fn main() {
    let options = Options::parse();
    let mode = if options.quick { "quick" } else { "full" };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let started = Instant::now();
    println!(
        "load bench, {mode} mode: {} run(s) per figure, {} s per ingest run, {} connections per server; {cores} cores ({cpu}), load average {} at start",
        options.runs,
        options.seconds,
        options.connections,
        load_average()
    );
    println!(
        "The generator runs in this process on a one-thread tokio runtime, one keep-alive HTTP/1.1 connection per simulated client, on the same cores as the servers; `gen cores` is the CPU it used, `other cores` what everything else on the machine used meanwhile."
    );
    // One thread: it costs the shared cores less per request than two, which
    // wake each other to steal work (measured 11 against 14 µs per request).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let mut rows: Vec<Row> = Vec::new();

    if options.wants("plugins") {
        rows.extend(plugin_rows(&options));
    }
    if options.wants("verify") {
        rows.extend(verify::rows(&options));
    }

    storage::check(&options.storages);
    if options.wants("ingest") {
        for &length in &options.lengths {
            let load = IngestLoad::sum(length);
            let mut stores: Vec<Store> = options
                .storages
                .iter()
                .map(|&backend| Store {
                    backend,
                    replicas: 1,
                })
                .collect();
            if options.storages.contains(&Backend::Postgres) {
                stores.push(Store {
                    backend: Backend::Postgres,
                    replicas: 2,
                });
            }
            for store in stores {
                let replicas = if store.replicas > 1 {
                    format!(", {} replicas", store.replicas)
                } else {
                    String::new()
                };
                let row = Row::new(
                    INGEST_TABLE,
                    format!(
                        "auth off, length {length}{}{replicas}",
                        store.backend.label()
                    ),
                    json!({"scenario": "ingest", "auth": "off", "length": length, "connections": options.connections, "seconds": options.seconds, "storage": store.backend.name(), "replicas": store.replicas}),
                );
                rows.push(ingest_row_on(
                    &runtime,
                    &options,
                    row,
                    &load,
                    &IngestAuth::Off,
                    None,
                    store,
                ));
            }
        }
    }
    if options.wants("robust-ingest") {
        let row = Row::new(
            INGEST_TABLE,
            "prio3-count, auth off",
            json!({"scenario": "robust-ingest", "plugin": "prio3-count", "auth": "off", "connections": options.connections, "seconds": options.seconds}),
        );
        let load = IngestLoad::prio3_count();
        rows.push(ingest_row(
            &runtime,
            &options,
            row,
            &load,
            &IngestAuth::Off,
            None,
        ));
    }

    let wants_fresh = options.wants("fresh");
    let wants_reused = options.wants("reused");
    let wants_bulk = options.wants("bulk");
    if wants_fresh || wants_reused || wants_bulk {
        let needed = if wants_fresh {
            options.fresh_tokens.max(USERS)
        } else {
            USERS
        };
        let tokens = tokens(needed);
        let scenarios = [
            (
                wants_fresh,
                IngestAuth::Fresh,
                "RS256, fresh token per request, length 10",
                "fresh",
            ),
            (
                wants_reused,
                IngestAuth::Reused,
                "RS256, 1,000 users reusing tokens, length 10",
                "reused",
            ),
        ];
        if wants_bulk {
            let row = Row::new(
                INGEST_TABLE,
                "RS256, 1,000 users reusing tokens, bulk of 100, length 10",
                json!({"scenario": "bulk", "auth": "rs256-dev-issuer", "length": 10, "bulk": BULK_REPORTS, "connections": options.connections, "seconds": options.seconds, "tokens": USERS}),
            );
            rows.push(ingest_row(
                &runtime,
                &options,
                row,
                &IngestLoad::sum_bulk(10, BULK_REPORTS),
                &IngestAuth::Reused,
                Some(&tokens),
            ));
        }
        let load = IngestLoad::sum(10);
        for (wanted, auth, label, name) in scenarios {
            if !wanted {
                continue;
            }
            let row = Row::new(
                INGEST_TABLE,
                label,
                json!({"scenario": name, "auth": "rs256-dev-issuer", "length": 10, "connections": options.connections, "seconds": options.seconds, "tokens": if name == "fresh" { tokens.users.len() } else { USERS }}),
            );
            rows.push(ingest_row(
                &runtime,
                &options,
                row,
                &load,
                &auth,
                Some(&tokens),
            ));
        }
    }

    if options.wants("seal") {
        for &backend in &options.storages {
            rows.extend(seal_rows_on(&runtime, &options, |_| SealLoad::Sum, backend));
        }
    }
    add_ratios(&mut rows);
    if options.wants("robust-seal") {
        rows.extend(seal_rows(&runtime, &options, SealLoad::prio3_sum));
    }

    print_tables(&rows);
    println!();
    for row in &rows {
        println!("{}", json_line(row, mode));
    }
    println!(
        "\ntotal {:.0} s; load average {} at the end",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}
