//! Bulk upload (`POST /api/v1/endpoints/{name}/reports/bulk`) over real HTTP:
//! in-process servers on port 0 with real SQLite files and the development
//! issuer's RS256 tokens, and for the crash test a real `guardian serve`
//! process killed with SIGKILL while gateways post bulks.
//!
//! What is checked: each report of a bulk gets the status a single post of it
//! would get (stored, duplicate, conflict, or rejected with the single post's
//! code), in order; a bulk over `limits.max_bulk_reports` is refused whole;
//! rate limits, quotas and metrics count reports, not requests; and every
//! report of an acknowledged bulk survives a SIGKILL.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use guardian::config::Role;
use guardian::report_id::new_report_id;
use guardian::server::Server;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinSet;

mod common;

use common::{dev_token as token, start_dev_server};

/// `sum` of length 10: shares of exactly 80 bytes.
const LENGTH: usize = 10;

fn url(server: &Server) -> String {
    format!("http://{}", server.local_addr())
}

/// Sends a request; returns the status, the `Retry-After` header and the JSON body.
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Option<String>, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.bytes().await.unwrap();
    (
        status,
        retry_after,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// A fresh report id (its time now, as every client makes them).
fn new_id() -> String {
    hex::encode(new_report_id(SystemTime::now()))
}

/// A valid share of `sum` of length [`LENGTH`].
fn share(seed: u8) -> Vec<u8> {
    vec![seed; 8 * LENGTH]
}

fn report(id: &str, share: &[u8]) -> Value {
    json!({"report_id": id, "share": BASE64.encode(share)})
}

async fn create(http: &Client, base: &str, admin: &str, body: Value) {
    let (status, _, created) = send(
        http.post(format!("{base}/api/v1/endpoints"))
            .bearer_auth(admin)
            .json(&body),
    )
    .await;
    assert!(status.is_success(), "{status} {created}");
}

async fn bulk(
    http: &Client,
    base: &str,
    endpoint: &str,
    token: &str,
    reports: &[Value],
) -> (StatusCode, Option<String>, Value) {
    send(
        http.post(format!("{base}/api/v1/endpoints/{endpoint}/reports/bulk"))
            .bearer_auth(token)
            .json(&json!({ "reports": reports })),
    )
    .await
}

/// The (status, error code) of each result of a 200 bulk answer, checking that
/// each result names the report id posted at its place.
fn statuses(
    answer: &(StatusCode, Option<String>, Value),
    posted: &[Value],
) -> Vec<(String, String)> {
    let (status, _, body) = answer;
    assert_eq!(*status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), posted.len(), "{body}");
    results
        .iter()
        .zip(posted)
        .map(|(result, report)| {
            assert_eq!(result["report_id"], report["report_id"], "{body}");
            (
                result["status"].as_str().unwrap().to_owned(),
                result["error"]["code"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

async fn unbatched(http: &Client, base: &str, endpoint: &str, admin: &str) -> u64 {
    let (status, _, body) = send(
        http.get(format!("{base}/api/v1/endpoints/{endpoint}"))
            .bearer_auth(admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["reports"]["unbatched"].as_u64().unwrap()
}

async fn metrics(http: &Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test]
async fn each_report_of_a_bulk_gets_the_answer_a_single_post_would_get() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path(), &[]).await;
    let (base, http) = (url(&server), Client::new());
    let admin = token(dir.path(), Role::Admin, "root");
    let gateway = token(dir.path(), Role::User, "gateway");
    create(
        &http,
        &base,
        &admin,
        json!({"name": "s", "plugin": "sum", "params": {"length": LENGTH}}),
    )
    .await;

    // Stored before the bulk, by a single post.
    let earlier = new_id();
    let (status, _, body) = send(
        http.post(format!("{base}/api/v1/endpoints/s/reports"))
            .bearer_auth(&gateway)
            .json(&report(&earlier, &share(1))),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // What a single post of a share the plugin refuses is answered.
    let short = vec![0u8; 8 * (LENGTH - 1)];
    let (status, _, refused) = send(
        http.post(format!("{base}/api/v1/endpoints/s/reports"))
            .bearer_auth(&gateway)
            .json(&report(&new_id(), &short)),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");

    let (first, second) = (new_id(), new_id());
    let long_ago = hex::encode(new_report_id(
        SystemTime::now() - Duration::from_secs(30 * 24 * 3600),
    ));
    let posted = vec![
        report(&first, &share(2)),
        report(&earlier, &share(1)),
        report(&earlier, &share(9)),
        report("not-hex", &share(3)),
        json!({"report_id": new_id(), "share": "not base64!"}),
        report(&new_id(), &short),
        report(&first, &share(2)),
        report(&first, &share(8)),
        report(&long_ago, &share(4)),
        report(&second, &share(5)),
    ];
    let answer = bulk(&http, &base, "s", &gateway, &posted).await;
    assert_eq!(
        statuses(&answer, &posted),
        owned(&[
            ("stored", ""),
            ("duplicate", ""),
            ("conflict", "report_conflict"),
            ("rejected", "invalid_report_id"),
            ("rejected", "invalid_share_encoding"),
            ("rejected", refused["error"]["code"].as_str().unwrap()),
            // The same id twice in one bulk: stored once.
            ("duplicate", ""),
            ("conflict", "report_conflict"),
            ("rejected", "report_too_old"),
            ("stored", ""),
        ])
    );
    // The plugin's own message, as a single post gets it.
    assert_eq!(
        answer.2["results"][5]["error"]["message"], refused["error"]["message"],
        "{}",
        answer.2
    );
    assert!(
        answer.2["results"][0].get("error").is_none(),
        "{}",
        answer.2
    );
    assert_eq!(unbatched(&http, &base, "s", &admin).await, 3);

    // The stored ones are stored as posted: single posts agree.
    for (id, seed, expected) in [(&first, 2, "duplicate"), (&second, 5, "duplicate")] {
        let (status, _, body) = send(
            http.post(format!("{base}/api/v1/endpoints/s/reports"))
                .bearer_auth(&gateway)
                .json(&report(id, &share(seed))),
        )
        .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some(expected))
        );
    }
    // An empty bulk is a bulk of nothing.
    let empty = bulk(&http, &base, "s", &gateway, &[]).await;
    assert_eq!(statuses(&empty, &[]), Vec::<(String, String)>::new());

    // Metrics count reports: 1 + 2 single accepted, 1 single refused, and the
    // bulk's 4 accepted (stored or duplicate) and 6 refused.
    let metrics = metrics(&http, &base).await;
    for line in [
        r#"guardian_reports_accepted_total{endpoint="s"} 7"#,
        r#"guardian_reports_rejected_total{endpoint="s",reason="report_conflict"} 2"#,
        r#"guardian_reports_rejected_total{endpoint="s",reason="invalid_report_id"} 1"#,
        r#"guardian_reports_rejected_total{endpoint="s",reason="report_too_old"} 1"#,
    ] {
        assert!(metrics.contains(line), "no {line} in:\n{metrics}");
    }

    // Faults of the whole request.
    let (status, _, body) = bulk(&http, &base, "nowhere", &gateway, &posted).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_endpoint"))
    );
    let (status, _, body) = send(
        http.post(format!("{base}/api/v1/endpoints/s/reports/bulk"))
            .bearer_auth(&gateway)
            .json(&json!({"reports": [{"report_id": new_id()}]})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json")),
        "{body}"
    );
    let (status, _, body) = send(
        http.post(format!("{base}/api/v1/endpoints/s/reports/bulk"))
            .json(&json!({"reports": []})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bulk_over_the_cap_is_refused_whole_and_a_full_one_fits_the_body_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(
        dir.path(),
        &[
            ("GUARDIAN_LIMITS_MAX_BULK_REPORTS", "300".into()),
            // Far below a full bulk: the bulk route has its own body limit.
            ("GUARDIAN_LIMITS_MAX_BODY_BYTES", "4096".into()),
            ("GUARDIAN_LIMITS_MAX_BULK_BODY_BYTES", "200000".into()),
        ],
    )
    .await;
    let (base, http) = (url(&server), Client::new());
    let admin = token(dir.path(), Role::Admin, "root");
    let gateway = token(dir.path(), Role::User, "gateway");
    create(
        &http,
        &base,
        &admin,
        json!({"name": "s", "plugin": "sum", "params": {"length": LENGTH}}),
    )
    .await;
    let reports: Vec<Value> = (0..301)
        .map(|n| report(&new_id(), &share(n as u8)))
        .collect();

    let (status, retry_after, body) = bulk(&http, &base, "s", &gateway, &reports).await;
    assert_eq!(
        (status, body["error"]["code"].as_str(), retry_after),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("too_many_reports"),
            None
        ),
        "{body}"
    );
    assert_eq!(body["error"]["max_bulk_reports"], 300, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_bulk_reports"),
        "{body}"
    );
    assert_eq!(unbatched(&http, &base, "s", &admin).await, 0);

    let full = &reports[..300];
    let answer = bulk(&http, &base, "s", &gateway, full).await;
    assert!(statuses(&answer, full).iter().all(|(s, _)| s == "stored"));
    assert_eq!(unbatched(&http, &base, "s", &admin).await, 300);

    // Beyond the bulk body limit: 413 `body_too_large`, nothing stored.
    let big: Vec<Value> = (0..300)
        .map(|_| report(&new_id(), &vec![7u8; 8 * 100]))
        .collect();
    let (status, _, body) = bulk(&http, &base, "s", &gateway, &big).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")),
        "{body}"
    );
    // The single-report route keeps its own limit.
    let (status, _, body) = send(
        http.post(format!("{base}/api/v1/endpoints/s/reports"))
            .bearer_auth(&gateway)
            .json(&report(&new_id(), &vec![7u8; 8 * 1000])),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")),
        "{body}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn rate_limits_and_quotas_count_the_reports_of_a_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(
        dir.path(),
        &[
            ("GUARDIAN_LIMITS_REPORTS_PER_SECOND_PER_USER", "1".into()),
            ("GUARDIAN_LIMITS_REPORTS_BURST_PER_USER", "10".into()),
        ],
    )
    .await;
    let (base, http) = (url(&server), Client::new());
    let admin = token(dir.path(), Role::Admin, "root");
    let (alice, bob, carol) = (
        token(dir.path(), Role::User, "alice"),
        token(dir.path(), Role::User, "bob"),
        token(dir.path(), Role::User, "carol"),
    );
    create(
        &http,
        &base,
        &admin,
        json!({"name": "s", "plugin": "sum", "params": {"length": LENGTH}}),
    )
    .await;
    create(
        &http,
        &base,
        &admin,
        json!({"name": "capped", "plugin": "sum", "params": {"length": LENGTH},
            "max_reports_per_user": 5}),
    )
    .await;
    let reports =
        |n: usize| -> Vec<Value> { (0..n).map(|i| report(&new_id(), &share(i as u8))).collect() };

    // A bulk of 8 takes 8 of Alice's 10: 3 more do not fit, 2 do.
    let eight = reports(8);
    let answer = bulk(&http, &base, "s", &alice, &eight).await;
    assert!(statuses(&answer, &eight).iter().all(|(s, _)| s == "stored"));
    let (status, retry_after, body) = bulk(&http, &base, "s", &alice, &reports(3)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
        "{body}"
    );
    let seconds: u64 = retry_after.unwrap().parse().unwrap();
    assert!((1..=2).contains(&seconds), "Retry-After {seconds}");
    let two = reports(2);
    let answer = bulk(&http, &base, "s", &alice, &two).await;
    assert!(statuses(&answer, &two).iter().all(|(s, _)| s == "stored"));
    // More than a burst can never pass: told to split, not to wait.
    let (status, retry_after, body) = bulk(&http, &base, "s", &bob, &reports(11)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str(), retry_after),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("too_many_reports"),
            None
        ),
        "{body}"
    );
    assert_eq!(unbatched(&http, &base, "s", &admin).await, 10);

    // A quota of 5 per user: a bulk of 7 of one user stores 5.
    let seven = reports(7);
    let answer = bulk(&http, &base, "capped", &carol, &seven).await;
    let mut expected = vec![("stored".to_owned(), String::new()); 5];
    expected.extend(vec![
        (
            "rejected".to_owned(),
            "user_quota_exceeded".to_owned()
        );
        2
    ]);
    assert_eq!(statuses(&answer, &seven), expected);
    // Retries of stored ones are still acknowledged.
    let answer = bulk(&http, &base, "capped", &carol, &seven[..2]).await;
    assert!(
        statuses(&answer, &seven[..2])
            .iter()
            .all(|(s, _)| s == "duplicate")
    );
    assert_eq!(unbatched(&http, &base, "capped", &admin).await, 5);

    let metrics = metrics(&http, &base).await;
    for line in [
        r#"guardian_reports_rejected_total{endpoint="s",reason="rate_limited"} 3"#,
        r#"guardian_reports_rejected_total{endpoint="s",reason="too_many_reports"} 11"#,
        r#"guardian_reports_rejected_total{endpoint="capped",reason="user_quota_exceeded"} 2"#,
    ] {
        assert!(metrics.contains(line), "no {line} in:\n{metrics}");
    }
    server.shutdown().await.unwrap();
}

// ------------------------------------------------------------------ SIGKILL

/// Bound on a server becoming ready (the first start compiles the built-ins).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on any other phase of the crash test.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

/// A `guardian serve` process with authentication off; killed when dropped.
struct ServerProcess {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl ServerProcess {
    async fn start(work_dir: &Path, data_dir: &Path, log_name: &str) -> ServerProcess {
        let addr: SocketAddr = common::free_port();
        let log = work_dir.join(log_name);
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_guardian"))
            .arg("serve")
            .env_clear()
            .env("GUARDIAN_AUTH_DISABLED", "true")
            .env("GUARDIAN_SERVER_LISTEN", addr.to_string())
            .env("GUARDIAN_SERVER_DATA_DIR", data_dir)
            .env("GUARDIAN_LOG_LEVEL", "warn")
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting guardian serve");
        let mut server = ServerProcess {
            child,
            base: format!("http://{addr}"),
            log,
        };
        let http = Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "guardian serve exited with {status}:\n{}",
                    server.log_text()
                );
            }
            let ready = http.get(format!("{}/readyz", server.base)).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "guardian serve was not ready within {READY_TIMEOUT:?}:\n{}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn sigkill(&mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "exited normally instead of being killed");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one posting gateway saw.
#[derive(Default)]
struct GatewayLog {
    /// Reports of bulks answered 200 as `stored` or `duplicate`.
    acked: Vec<Value>,
    /// Reports posted (acknowledged or not).
    attempted: usize,
    /// Answers that should not happen before the kill.
    unexpected: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_bulk_reports_survive_sigkill() {
    const GATEWAYS: usize = 8;
    const BULK: usize = 100;
    /// Kill only after this many reports are acknowledged, so the test is never vacuous.
    const MIN_ACKS: usize = 3_000;
    const MAX_BULKS_PER_GATEWAY: usize = 500;

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let http = Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut server = ServerProcess::start(dir.path(), &data_dir, "first.log").await;
    let (status, _, body) = send(
        http.post(format!("{}/api/v1/endpoints", server.base))
            .json(&json!({"name": "crash", "plugin": "sum", "params": {"length": LENGTH}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let stopping = Arc::new(AtomicBool::new(false));
    let (acks_tx, mut acks) = tokio::sync::watch::channel(0usize);
    let acks_tx = Arc::new(acks_tx);
    let mut gateways = JoinSet::new();
    for _ in 0..GATEWAYS {
        let (http, url, stopping, acks_tx) = (
            http.clone(),
            format!("{}/api/v1/endpoints/crash/reports/bulk", server.base),
            stopping.clone(),
            acks_tx.clone(),
        );
        gateways.spawn(async move {
            let mut log = GatewayLog::default();
            for _ in 0..MAX_BULKS_PER_GATEWAY {
                let reports: Vec<Value> = (0..BULK)
                    .map(|_| {
                        let mut share = vec![0u8; 8 * LENGTH];
                        rand::fill(&mut share[..]);
                        report(&new_id(), &share)
                    })
                    .collect();
                log.attempted += BULK;
                let answer = http
                    .post(&url)
                    .json(&json!({ "reports": reports }))
                    .send()
                    .await;
                let answer = match answer {
                    Ok(response) => {
                        let status = response.status();
                        response.json::<Value>().await.map(|body| (status, body))
                    }
                    Err(e) => Err(e),
                };
                match answer {
                    Ok((StatusCode::OK, body)) => {
                        let results = body["results"].as_array().unwrap();
                        for (result, report) in results.iter().zip(&reports) {
                            if result["status"] == "stored" || result["status"] == "duplicate" {
                                log.acked.push(report.clone());
                            } else {
                                log.unexpected.push(result.to_string());
                            }
                        }
                        acks_tx.send_modify(|n| *n += results.len());
                    }
                    Ok((status, body)) if !stopping.load(Ordering::SeqCst) => {
                        log.unexpected.push(format!("{status} {body}"));
                    }
                    Err(e) if !stopping.load(Ordering::SeqCst) => {
                        log.unexpected.push(e.to_string());
                    }
                    // Answers after the kill was decided: the server is going away.
                    _ => break,
                }
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
            }
            log
        });
    }
    let reached = tokio::time::timeout(PHASE_TIMEOUT, acks.wait_for(|n| *n >= MIN_ACKS)).await;
    assert!(
        reached.is_ok_and(|r| r.is_ok()),
        "fewer than {MIN_ACKS} reports acknowledged within {PHASE_TIMEOUT:?}:\n{}",
        server.log_text()
    );
    stopping.store(true, Ordering::SeqCst);
    server.sigkill();
    let mut acked = Vec::new();
    let mut attempted = 0;
    let mut unexpected = Vec::new();
    let joined = tokio::time::timeout(PHASE_TIMEOUT, async {
        while let Some(log) = gateways.join_next().await {
            let log = log.unwrap();
            acked.extend(log.acked);
            attempted += log.attempted;
            unexpected.extend(log.unexpected);
        }
    })
    .await;
    assert!(joined.is_ok(), "gateways did not stop after the kill");
    assert!(
        unexpected.is_empty(),
        "{} unexpected answers, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );

    let server = ServerProcess::start(dir.path(), &data_dir, "second.log").await;
    let (status, _, body) = send(http.get(format!("{}/api/v1/endpoints/crash", server.base))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = body["reports"]["unbatched"].as_u64().unwrap();
    // Every acknowledged report is there with its share: re-posted it is a
    // duplicate, and with another share a conflict.
    let mut missing = Vec::new();
    let url = format!("{}/api/v1/endpoints/crash/reports/bulk", server.base);
    for chunk in acked.chunks(BULK) {
        let (status, _, body) = send(http.post(&url).json(&json!({ "reports": chunk }))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for (result, report) in body["results"].as_array().unwrap().iter().zip(chunk) {
            if result["status"] != "duplicate" {
                missing.push(format!("{}: {result}", report["report_id"]));
            }
        }
        let other: Vec<Value> = chunk
            .iter()
            .map(|r| report(r["report_id"].as_str().unwrap(), &share(0)))
            .collect();
        let (status, _, body) = send(http.post(&url).json(&json!({ "reports": other }))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for (result, report) in body["results"].as_array().unwrap().iter().zip(chunk) {
            if result["status"] != "conflict" {
                missing.push(format!(
                    "{} with another share: {result}",
                    report["report_id"]
                ));
            }
        }
    }
    println!(
        "bulk sigkill: attempted {attempted}, acknowledged {}, stored after restart {stored}",
        acked.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged reports are not stored as acknowledged, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        stored >= acked.len() as u64,
        "{stored} stored < {} acknowledged",
        acked.len()
    );
    assert!(
        stored <= attempted as u64,
        "{stored} stored > {attempted} attempted"
    );
}
