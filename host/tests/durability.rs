//! Durability of acknowledged reports, checked end to end: real HTTP, a real SQLite
//! file in a temporary directory, and for the crash test a real `guardian serve`
//! process killed with SIGKILL while clients are posting.
//!
//! The promise under test (ARCHITECTURE.md, "Invariants"): a report is acknowledged
//! only after the transaction holding it committed, so every report a client saw
//! acknowledged is still there after a crash or a shutdown, and a report id is
//! stored at most once however many times and however concurrently it is posted.
//!
//! Every wait has a deadline, so a hang fails the test instead of blocking CI, and
//! nothing waits by sleeping: readiness is polled, progress is signalled.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use guardian::config::{Environment, load};
use guardian::server::Server;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{Barrier, watch};
use tokio::task::JoinSet;

/// `sum` with `length` 10 takes shares of exactly 80 bytes.
const SUM_LENGTH: usize = 10;
const SHARE_BYTES: usize = 8 * SUM_LENGTH;

/// Bound on one HTTP request, so a server that stops answering fails the test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a server becoming ready (the first start compiles the built-in plugins).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on any other phase of a test (posting, joining clients, verifying).
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Concurrent clients posting while the server is killed or shut down.
const CLIENTS: usize = 32;
/// Cap on the reports one client posts, so a server that never goes away cannot make
/// a client loop forever.
const MAX_POSTS_PER_CLIENT: usize = 20_000;

// ------------------------------------------------------------------ reports

/// One report as a client posts it.
#[derive(Clone, Debug)]
struct Report {
    /// 32 hex digits.
    id: String,
    /// Raw share bytes (base64-encoded on the wire).
    share: Vec<u8>,
}

impl Report {
    fn random() -> Report {
        // Its time, then random bits, as every client makes them.
        let id = guardian::report_id::new_report_id(std::time::SystemTime::now());
        let mut share = vec![0u8; SHARE_BYTES];
        rand::fill(&mut share[..]);
        Report {
            id: hex::encode(id),
            share,
        }
    }

    /// The same id with a share that differs in one bit (still a valid share).
    fn with_other_share(&self) -> Report {
        let mut share = self.share.clone();
        share[0] ^= 1;
        Report {
            id: self.id.clone(),
            share,
        }
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("building the HTTP client")
}

/// Posts `report`; `Err` is a transport failure (no HTTP answer at all).
async fn post(
    http: &Client,
    base: &str,
    endpoint: &str,
    report: &Report,
) -> reqwest::Result<(StatusCode, Value)> {
    let response = http
        .post(format!("{base}/api/v1/endpoints/{endpoint}/reports"))
        .json(&json!({"report_id": report.id, "share": BASE64.encode(&report.share)}))
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

async fn create_sum_endpoint(http: &Client, base: &str, name: &str) {
    let response = http
        .post(format!("{base}/api/v1/endpoints"))
        .json(&json!({"name": name, "plugin": "sum", "params": {"length": SUM_LENGTH}}))
        .send()
        .await
        .expect("creating the endpoint");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::CREATED, "creating {name}: {body}");
}

/// The endpoint's report counts: (unbatched, batched).
async fn report_counts(http: &Client, base: &str, endpoint: &str) -> (u64, u64) {
    let response = http
        .get(format!("{base}/api/v1/endpoints/{endpoint}"))
        .send()
        .await
        .expect("reading the endpoint");
    assert_eq!(response.status(), StatusCode::OK, "reading {endpoint}");
    let body: Value = response.json().await.expect("endpoint JSON");
    let count = |key: &str| {
        body["reports"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("no reports.{key} in {body}"))
    };
    (count("unbatched"), count("batched"))
}

// ------------------------------------------------------------------ posting load

/// What one posting client saw.
#[derive(Default)]
struct ClientLog {
    /// Reports sent (or about to be sent) to the server, answered or not.
    attempted: usize,
    /// Reports answered with a 2xx: the server promised to keep them.
    acked: Vec<Report>,
    /// Anything that must not happen while the server is up: a non-201 answer, or a
    /// transport failure before the server was stopped on purpose.
    unexpected: Vec<String>,
}

/// Shared by the posting clients and the test driving them.
struct Load {
    http: Client,
    base: String,
    endpoint: String,
    /// Set just before the server is killed or shut down: transport failures are
    /// expected from then on (and end the client), never before.
    stopping: AtomicBool,
    /// Acknowledged reports so far, so the driver can wait for progress.
    acks: watch::Sender<usize>,
    /// Acknowledgements received after `stopping` was set: requests that were in
    /// flight when the server was stopped (or whose answer was already on its way).
    acks_while_stopping: AtomicUsize,
}

impl Load {
    fn new(http: &Client, base: &str, endpoint: &str) -> Arc<Load> {
        Arc::new(Load {
            http: http.clone(),
            base: base.to_owned(),
            endpoint: endpoint.to_owned(),
            stopping: AtomicBool::new(false),
            acks: watch::Sender::new(0),
            acks_while_stopping: AtomicUsize::new(0),
        })
    }
}

/// Starts `CLIENTS` clients, each posting fresh random reports one after the other
/// until its first transport failure (or `MAX_POSTS_PER_CLIENT`).
fn start_load(load: &Arc<Load>) -> JoinSet<ClientLog> {
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let load = load.clone();
        clients.spawn(async move {
            let mut log = ClientLog::default();
            while log.attempted < MAX_POSTS_PER_CLIENT {
                let report = Report::random();
                log.attempted += 1;
                match post(&load.http, &load.base, &load.endpoint, &report).await {
                    Ok((StatusCode::CREATED, body)) if body["status"] == "stored" => {
                        log.acked.push(report);
                        load.acks.send_modify(|n| *n += 1);
                        if load.stopping.load(Ordering::SeqCst) {
                            load.acks_while_stopping.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok((status, body)) => {
                        if status.is_success() {
                            // Acknowledged all the same: the server must keep it.
                            log.acked.push(report);
                        }
                        log.unexpected
                            .push(format!("a fresh report got {status}: {body}"));
                    }
                    Err(error) => {
                        if !load.stopping.load(Ordering::SeqCst) {
                            log.unexpected
                                .push(format!("transport failure while serving: {error}"));
                        }
                        break;
                    }
                }
            }
            log
        });
    }
    clients
}

/// Totals over every client.
struct LoadOutcome {
    attempted: usize,
    acked: Vec<Report>,
    unexpected: Vec<String>,
}

async fn join_load(mut clients: JoinSet<ClientLog>) -> LoadOutcome {
    let mut outcome = LoadOutcome {
        attempted: 0,
        acked: Vec::new(),
        unexpected: Vec::new(),
    };
    let joined = tokio::time::timeout(PHASE_TIMEOUT, async {
        while let Some(log) = clients.join_next().await {
            let log = log.expect("a posting client panicked");
            outcome.attempted += log.attempted;
            outcome.acked.extend(log.acked);
            outcome.unexpected.extend(log.unexpected);
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "posting clients did not stop within {PHASE_TIMEOUT:?} after the server went away"
    );
    outcome
}

/// Waits until at least `n` reports are acknowledged; false on timeout.
async fn wait_for_acks(load: &Load, n: usize, timeout: Duration) -> bool {
    let mut acks = load.acks.subscribe();
    tokio::time::timeout(timeout, acks.wait_for(|acked| *acked >= n))
        .await
        .is_ok_and(|changed| changed.is_ok())
}

/// Checks that the server at `base` holds every report of `acked` with exactly its
/// share: re-posting it answers 200 duplicate, and re-posting its id with another
/// share answers 409 report_conflict. Returns a description of each failure.
async fn missing_reports(base: &str, endpoint: &str, acked: &[Report]) -> Vec<String> {
    const CHECKERS: usize = 16;
    let http = client();
    let mut checkers = JoinSet::new();
    for chunk in acked.chunks(acked.len().div_ceil(CHECKERS).max(1)) {
        let (http, base, endpoint, chunk) = (
            http.clone(),
            base.to_owned(),
            endpoint.to_owned(),
            chunk.to_vec(),
        );
        checkers.spawn(async move {
            let mut failures = Vec::new();
            for report in &chunk {
                match post(&http, &base, &endpoint, report).await {
                    Ok((StatusCode::OK, body)) if body["status"] == "duplicate" => {}
                    Ok((status, body)) => failures.push(format!(
                        "{}: re-posting the acknowledged share got {status} {body}",
                        report.id
                    )),
                    Err(error) => failures.push(format!("{}: {error}", report.id)),
                }
                match post(&http, &base, &endpoint, &report.with_other_share()).await {
                    Ok((StatusCode::CONFLICT, body))
                        if body["error"]["code"] == "report_conflict" => {}
                    Ok((status, body)) => failures.push(format!(
                        "{}: posting another share got {status} {body}",
                        report.id
                    )),
                    Err(error) => failures.push(format!("{}: {error}", report.id)),
                }
            }
            failures
        });
    }
    let mut failures = Vec::new();
    let joined = tokio::time::timeout(PHASE_TIMEOUT, async {
        while let Some(found) = checkers.join_next().await {
            failures.extend(found.expect("a checking task panicked"));
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "checking {} reports took over {PHASE_TIMEOUT:?}",
        acked.len()
    );
    failures
}

fn first_few(failures: &[String]) -> String {
    failures
        .iter()
        .take(10)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------------ servers

/// A `guardian serve` process; killed (SIGKILL) and reaped when dropped, so a
/// failing test never leaves a server behind.
struct ServerProcess {
    child: Child,
    base: String,
    /// The server's standard error, shown when it fails to start.
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `guardian serve` on a free port with its data in `data_dir` and
    /// authentication off, and waits until `/readyz` answers.
    ///
    /// The environment is cleared and the working directory is `work_dir`, so that
    /// neither the caller's `GUARDIAN_*` variables nor a stray `.env` file change
    /// the configuration.
    async fn start(work_dir: &Path, data_dir: &Path, log_name: &str) -> ServerProcess {
        let addr = free_port();
        let log = work_dir.join(log_name);
        let stderr = std::fs::File::create(&log).expect("creating the server log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_guardian"));
        command
            .arg("serve")
            .env_clear()
            .env("GUARDIAN_AUTH_DISABLED", "true")
            .env("GUARDIAN_SERVER_LISTEN", addr.to_string())
            .env("GUARDIAN_SERVER_DATA_DIR", data_dir)
            .env("GUARDIAN_LOG_LEVEL", "warn")
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command.spawn().expect("starting guardian serve");
        let mut server = ServerProcess {
            child,
            base: format!("http://{addr}"),
            log,
        };
        server.wait_ready().await;
        server
    }

    /// Polls `/readyz` until it answers 200; fails at once if the process exits.
    async fn wait_ready(&mut self) {
        let http = Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("building the HTTP client");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the server process") {
                panic!(
                    "guardian serve exited with {status} before becoming ready:\n{}",
                    self.log_text()
                );
            }
            let ready = http.get(format!("{}/readyz", self.base)).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "guardian serve was not ready within {READY_TIMEOUT:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no handler runs, nothing is flushed.
    fn sigkill(&mut self) {
        self.child.kill().expect("killing the server");
        let status = self.child.wait().expect("reaping the server");
        assert!(
            !status.success(),
            "the server exited normally instead of being killed: {status}"
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Already reaped after `sigkill`; then both calls fail harmlessly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (the listener is dropped before returning).
fn free_port() -> SocketAddr {
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("reading the free port")
}

/// Starts an in-process server on port 0 with its data in `data_dir`.
async fn start_in_process(data_dir: &Path) -> (Server, String) {
    let vars = [
        ("GUARDIAN_AUTH_DISABLED", "true".to_owned()),
        ("GUARDIAN_SERVER_LISTEN", "127.0.0.1:0".to_owned()),
        ("GUARDIAN_SERVER_DATA_DIR", data_dir.display().to_string()),
    ];
    let loaded = load(None, &Environment::new().with_process(vars)).expect("configuration");
    let server = tokio::time::timeout(READY_TIMEOUT, Server::start(loaded.config))
        .await
        .expect("the server did not start in time")
        .expect("starting the server");
    let base = format!("http://{}", server.local_addr());
    (server, base)
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_reports_survive_sigkill() {
    const ENDPOINT: &str = "crash";
    /// Kill only once this many reports are acknowledged, so the test is never vacuous.
    const MIN_ACKS: usize = 500;
    /// Then kill at this many acknowledgements or after `POSTING`, whichever is first.
    const TARGET_ACKS: usize = 4_000;
    const POSTING: Duration = Duration::from_secs(1);

    let dir = tempfile::tempdir().expect("temporary directory");
    let data_dir = dir.path().join("data");
    let http = client();

    let started = Instant::now();
    let mut server = ServerProcess::start(dir.path(), &data_dir, "first.log").await;
    let first_ready = started.elapsed();
    create_sum_endpoint(&http, &server.base, ENDPOINT).await;

    let load = Load::new(&http, &server.base, ENDPOINT);
    let posting_started = Instant::now();
    let clients = start_load(&load);
    assert!(
        wait_for_acks(&load, MIN_ACKS, PHASE_TIMEOUT).await,
        "fewer than {MIN_ACKS} reports acknowledged within {PHASE_TIMEOUT:?}:\n{}",
        server.log_text()
    );
    wait_for_acks(&load, TARGET_ACKS, POSTING).await;
    load.stopping.store(true, Ordering::SeqCst);
    server.sigkill();
    let posted_for = posting_started.elapsed();
    let outcome = join_load(clients).await;
    assert!(
        outcome.unexpected.is_empty(),
        "{} unexpected answers before the kill, e.g.:\n{}",
        outcome.unexpected.len(),
        first_few(&outcome.unexpected)
    );
    let acked = outcome.acked.len();

    let restarted = Instant::now();
    let server = ServerProcess::start(dir.path(), &data_dir, "second.log").await;
    let second_ready = restarted.elapsed();
    // Count before re-posting: were a report lost, re-posting it would store it again.
    let (stored, batched) = report_counts(&http, &server.base, ENDPOINT).await;
    let missing = missing_reports(&server.base, ENDPOINT, &outcome.acked).await;
    let after_checks = report_counts(&http, &server.base, ENDPOINT).await;

    println!(
        "sigkill: attempted {}, acknowledged {acked} ({} of them answered after the kill \
         was decided), stored after restart {stored} (posted for {posted_for:?}; ready in \
         {first_ready:?}, after the crash in {second_ready:?})",
        outcome.attempted,
        load.acks_while_stopping.load(Ordering::SeqCst),
    );
    assert!(
        missing.is_empty(),
        "{} of {acked} acknowledged reports are not stored as acknowledged, e.g.:\n{}",
        missing.len(),
        first_few(&missing)
    );
    assert_eq!(batched, 0, "no batch was sealed");
    assert!(
        stored >= acked as u64,
        "{stored} stored < {acked} acknowledged"
    );
    assert!(
        stored <= outcome.attempted as u64,
        "{stored} stored > {} attempted: reports were duplicated",
        outcome.attempted
    );
    assert_eq!(
        after_checks,
        (stored, 0),
        "re-posting acknowledged reports changed the counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_posts_of_one_report_store_it_once() {
    const ENDPOINT: &str = "once";
    const POSTS: usize = 64;

    let dir = tempfile::tempdir().expect("temporary directory");
    let (server, base) = start_in_process(dir.path()).await;
    let http = client();
    create_sum_endpoint(&http, &base, ENDPOINT).await;

    /// Posts the reports from one task each, released together by a barrier; returns
    /// each report with the status and body it got.
    async fn post_together(
        http: &Client,
        base: &str,
        reports: Vec<Report>,
    ) -> Vec<(Report, StatusCode, Value)> {
        let barrier = Arc::new(Barrier::new(reports.len()));
        let mut posts = JoinSet::new();
        for report in reports {
            let (http, base, barrier) = (http.clone(), base.to_owned(), barrier.clone());
            posts.spawn(async move {
                barrier.wait().await;
                let (status, body) = post(&http, &base, ENDPOINT, &report)
                    .await
                    .expect("posting a report");
                (report, status, body)
            });
        }
        tokio::time::timeout(PHASE_TIMEOUT, posts.join_all())
            .await
            .expect("concurrent posts did not finish in time")
    }

    // The same report 64 times: one is stored, the others are duplicates.
    let report = Report::random();
    let answers = post_together(&http, &base, vec![report.clone(); POSTS]).await;
    let stored = answers
        .iter()
        .filter(|(_, status, body)| *status == StatusCode::CREATED && body["status"] == "stored")
        .count();
    let duplicates = answers
        .iter()
        .filter(|(_, status, body)| *status == StatusCode::OK && body["status"] == "duplicate")
        .count();
    assert_eq!(
        (stored, duplicates),
        (1, POSTS - 1),
        "same id and share: {:?}",
        answers
            .iter()
            .map(|(_, status, body)| format!("{status} {body}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(report_counts(&http, &base, ENDPOINT).await, (1, 0));

    // One id with 64 different shares: one is stored, the others conflict with it.
    let first = Report::random();
    let contenders: Vec<Report> = (0..POSTS)
        .map(|i| {
            let mut report = first.clone();
            report.share[..8].copy_from_slice(&(i as u64).to_le_bytes());
            report
        })
        .collect();
    let answers = post_together(&http, &base, contenders).await;
    let winners: Vec<&Report> = answers
        .iter()
        .filter(|(_, status, body)| *status == StatusCode::CREATED && body["status"] == "stored")
        .map(|(report, _, _)| report)
        .collect();
    let conflicts = answers
        .iter()
        .filter(|(_, status, body)| {
            *status == StatusCode::CONFLICT && body["error"]["code"] == "report_conflict"
        })
        .count();
    assert_eq!(
        (winners.len(), conflicts),
        (1, POSTS - 1),
        "same id, different shares: {:?}",
        answers
            .iter()
            .map(|(_, status, body)| format!("{status} {body}"))
            .collect::<Vec<_>>()
    );
    // The share kept is the one whose post was acknowledged.
    let (status, body) = post(&http, &base, ENDPOINT, winners[0])
        .await
        .expect("re-posting the winner");
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    assert_eq!(report_counts(&http, &base, ENDPOINT).await, (2, 0));

    tokio::time::timeout(PHASE_TIMEOUT, server.shutdown())
        .await
        .expect("shutdown did not finish in time")
        .expect("shutting down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_flushes_pending_reports() {
    const ENDPOINT: &str = "flush";
    /// Shut down once this many reports are acknowledged, with clients still posting.
    const ACKS_BEFORE_SHUTDOWN: usize = 500;

    let dir = tempfile::tempdir().expect("temporary directory");
    let (server, base) = start_in_process(dir.path()).await;
    let http = client();
    create_sum_endpoint(&http, &base, ENDPOINT).await;

    let load = Load::new(&http, &base, ENDPOINT);
    let clients = start_load(&load);
    assert!(
        wait_for_acks(&load, ACKS_BEFORE_SHUTDOWN, PHASE_TIMEOUT).await,
        "fewer than {ACKS_BEFORE_SHUTDOWN} reports acknowledged within {PHASE_TIMEOUT:?}"
    );
    load.stopping.store(true, Ordering::SeqCst);
    let shutting_down = Instant::now();
    tokio::time::timeout(PHASE_TIMEOUT, server.shutdown())
        .await
        .expect("graceful shutdown did not finish in time")
        .expect("graceful shutdown failed");
    let shutdown_took = shutting_down.elapsed();
    let outcome = join_load(clients).await;
    // During the shutdown a client may fail to connect or find its idle connection
    // closed (expected), but every answer it does get must be a stored report: an
    // error answer would mean a request was cut short by the shutdown.
    assert!(
        outcome.unexpected.is_empty(),
        "{} unexpected answers, e.g.:\n{}",
        outcome.unexpected.len(),
        first_few(&outcome.unexpected)
    );
    let acked = outcome.acked.len();

    let (server, base) = start_in_process(dir.path()).await;
    let (stored, batched) = report_counts(&http, &base, ENDPOINT).await;
    let missing = missing_reports(&base, ENDPOINT, &outcome.acked).await;
    println!(
        "graceful shutdown: attempted {}, acknowledged {acked} ({} of them answered during \
         the shutdown), stored after restart {stored} (shutdown took {shutdown_took:?})",
        outcome.attempted,
        load.acks_while_stopping.load(Ordering::SeqCst),
    );
    assert!(
        missing.is_empty(),
        "{} of {acked} acknowledged reports are not stored as acknowledged, e.g.:\n{}",
        missing.len(),
        first_few(&missing)
    );
    assert_eq!(batched, 0, "no batch was sealed");
    assert!(
        stored >= acked as u64,
        "{stored} stored < {acked} acknowledged"
    );
    assert!(
        stored <= outcome.attempted as u64,
        "{stored} stored > {} attempted: reports were duplicated",
        outcome.attempted
    );
    tokio::time::timeout(PHASE_TIMEOUT, server.shutdown())
        .await
        .expect("shutdown did not finish in time")
        .expect("shutting down");
}
