//! Ingest load generator: starts a real `guardian serve` process (auth off,
//! real SQLite file with synchronous=FULL), drives it over real HTTP with many
//! connections, and reports reports/s, latency percentiles, server CPU seconds
//! per 1,000 reports and the server's peak RSS.
//!
//! `cargo bench -p guardian --bench ingest` (full) or
//! `cargo bench -p guardian --bench ingest -- --quick`.
//! Options: `--connections N`, `--seconds S`, `--length L` (repeatable), `--runs R`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

struct Options {
    connections: usize,
    seconds: f64,
    lengths: Vec<usize>,
    runs: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    let mut lengths: Vec<usize> = args
        .windows(2)
        .filter(|w| w[0] == "--length")
        .filter_map(|w| w[1].parse().ok())
        .collect();
    if lengths.is_empty() {
        lengths = vec![10, 1000];
    }
    Options {
        connections: value("--connections")
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        seconds: value("--seconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 5.0 } else { 15.0 }),
        lengths,
        runs: value("--runs")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 1 } else { 3 }),
    }
}

/// A server process, killed on drop.
struct ServerProcess {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn start_server() -> ServerProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_guardian"))
        .arg("serve")
        .current_dir(dir.path())
        .env("GUARDIAN_AUTH_DISABLED", "true")
        .env("GUARDIAN_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("GUARDIAN_SERVER_DATA_DIR", dir.path())
        .env("GUARDIAN_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start guardian serve");
    let server = ServerProcess {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let ready = client.get(format!("{}/readyz", server.url)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not become ready");
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_per_1000: f64,
    rss_mb: f64,
    failed: usize,
}

async fn run(length: usize, options: &Options) -> Figures {
    let server = start_server().await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.connections)
        .build()
        .expect("client");
    let endpoint = serde_json::json!({"name": "bench", "plugin": "sum", "params": {"length": length}, "min_batch": 2});
    let status = client
        .post(format!("{}/api/v1/endpoints", server.url))
        .json(&endpoint)
        .send()
        .await
        .expect("create")
        .status();
    assert!(status.is_success(), "create endpoint: {status}");
    let url = Arc::new(format!("{}/api/v1/endpoints/bench/reports", server.url));
    let stop = Arc::new(AtomicBool::new(false));
    let pid = server.child.id();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..options.connections {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0usize;
            let mut seq = 0u64;
            let share = BASE64.encode(vec![7u8; length * 8]);
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let id = format!("{:016x}{:016x}", worker as u64, seq);
                let body = format!(r#"{{"report_id":"{id}","share":"{share}"}}"#);
                let sent = Instant::now();
                let ok = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == reqwest::StatusCode::CREATED);
                latencies.push(sent.elapsed());
                failed += usize::from(!ok);
            }
            (latencies, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(options.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (l, f) = task.await.expect("worker");
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    latencies.sort();
    let pick =
        |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3;
    let done = latencies.len();
    Figures {
        per_second: (done - failed) as f64 / elapsed,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
        cpu_per_1000: cpu / done as f64 * 1000.0,
        rss_mb: peak_rss_mb(pid),
        failed,
    }
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    println!(
        "ingest, auth off, {} connections, {} s per run, {} runs (median [min–max])",
        options.connections, options.seconds, options.runs
    );
    println!(
        "| length | reports/s | p50 ms | p99 ms | max ms | server CPU s / 1k | peak RSS MB | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &length in &options.lengths {
        let figures: Vec<Figures> = (0..options.runs)
            .map(|_| runtime.block_on(run(length, &options)))
            .collect();
        let m = |f: fn(&Figures) -> f64| median(figures.iter().map(f).collect());
        let (rate, lo, hi) = m(|f| f.per_second);
        println!(
            "| {length} | {rate:.0} [{lo:.0}–{hi:.0}] | {:.2} | {:.2} | {:.1} | {:.3} | {:.0} | {} |",
            m(|f| f.p50_ms).0,
            m(|f| f.p99_ms).0,
            m(|f| f.max_ms).0,
            m(|f| f.cpu_per_1000).0,
            m(|f| f.rss_mb).0,
            figures.iter().map(|f| f.failed).sum::<usize>(),
        );
    }
}
