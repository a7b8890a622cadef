//! Resource limits under abuse, over real HTTP against in-process servers on port
//! 0 with real SQLite files and the development issuer's RS256 tokens: per-user
//! and per-IP rate limits (429 with `Retry-After`), oversized request heads
//! (431), slowloris clients and stalled bodies cut off while other clients are
//! served, and the per-user quota of an endpoint, across a seal and a restart.

// Helpers below run only inside tests.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use guardian::config::Role;
use guardian::server::Server;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

mod common;

use common::{dev_token as token, start_dev_server as start};

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

/// A report of the `sum` plugin of length 1: 8 bytes.
fn report(n: u64) -> Value {
    // Ids carry their time (servers take them only within their window): the
    // same time for all, so that report `n` has one id.
    static MADE: std::sync::LazyLock<std::time::SystemTime> =
        std::sync::LazyLock::new(std::time::SystemTime::now);
    let id = guardian::report_id::with_time(*MADE, u128::from(n).to_be_bytes());
    json!({"report_id": hex::encode(id), "share": BASE64.encode(n.to_le_bytes())})
}

async fn create(http: &Client, base: &str, admin: &str, body: Value) -> Value {
    let (status, _, created) = send(
        http.post(format!("{base}/api/v1/endpoints"))
            .bearer_auth(admin)
            .json(&body),
    )
    .await;
    assert!(status.is_success(), "{status} {created}");
    created
}

async fn post(
    http: &Client,
    base: &str,
    endpoint: &str,
    token: &str,
    n: u64,
) -> (StatusCode, Option<String>, Value) {
    send(
        http.post(format!("{base}/api/v1/endpoints/{endpoint}/reports"))
            .bearer_auth(token)
            .json(&report(n)),
    )
    .await
}

fn assert_rate_limited(answer: &(StatusCode, Option<String>, Value), whose: &str) {
    let (status, retry_after, body) = answer;
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(whose), "{message}");
    let seconds: u64 = retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=2).contains(&seconds), "Retry-After {seconds}");
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

#[tokio::test]
async fn a_user_over_their_rate_gets_429_with_retry_after_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &[
            ("GUARDIAN_LIMITS_REPORTS_PER_SECOND_PER_USER", "1".into()),
            ("GUARDIAN_LIMITS_REPORTS_BURST_PER_USER", "3".into()),
        ],
    )
    .await;
    let (base, http) = (url(&server), Client::new());
    let admin = token(dir.path(), Role::Admin, "root");
    let (alice, bob) = (
        token(dir.path(), Role::User, "alice"),
        token(dir.path(), Role::User, "bob"),
    );
    create(&http, &base, &admin, json!({"name": "s", "plugin": "sum"})).await;

    // The burst, then refused until the rate gives one more (one per second).
    for n in 0..3 {
        let (status, _, body) = post(&http, &base, "s", &alice, n).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let refused = post(&http, &base, "s", &alice, 3).await;
    assert_rate_limited(&refused, "this user");
    // A retry of a stored report counts too: the limit is on posting.
    assert_rate_limited(&post(&http, &base, "s", &alice, 0).await, "this user");
    // Another user from the same address is not affected.
    for n in 10..13 {
        let (status, _, body) = post(&http, &base, "s", &bob, n).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let metrics = metrics(&http, &base).await;
    assert!(
        metrics
            .contains(r#"guardian_reports_rejected_total{endpoint="s",reason="rate_limited"} 2"#),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_address_over_its_rate_gets_429_and_a_forwarded_one_is_trusted_only_if_told() {
    let dir = tempfile::tempdir().unwrap();
    let limits = |trust: &str| {
        vec![
            ("GUARDIAN_AUTH_DISABLED", "true".to_owned()),
            ("GUARDIAN_LIMITS_REPORTS_PER_SECOND_PER_IP", "1".into()),
            ("GUARDIAN_LIMITS_REPORTS_BURST_PER_IP", "2".into()),
            ("GUARDIAN_LIMITS_TRUST_FORWARDED_FOR", trust.into()),
        ]
    };
    let http = Client::new();
    for trusted in [false, true] {
        let server = start(dir.path(), &limits(&trusted.to_string())).await;
        let base = url(&server);
        let endpoint = format!("s{trusted}");
        create(&http, &base, "", json!({"name": endpoint, "plugin": "sum"})).await;
        for n in 0..2 {
            let (status, _, body) = post(&http, &base, &endpoint, "", n).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        assert_rate_limited(
            &post(&http, &base, &endpoint, "", 2).await,
            "this IP address",
        );
        // Another client behind a proxy: its own allowance only if the proxy is
        // trusted; otherwise the header is the client's word and is ignored.
        let forwarded = send(
            http.post(format!("{base}/api/v1/endpoints/{endpoint}/reports"))
                .header("x-forwarded-for", "10.9.9.9, 203.0.113.7")
                .json(&report(3)),
        )
        .await;
        if trusted {
            assert_eq!(forwarded.0, StatusCode::CREATED, "{}", forwarded.2);
        } else {
            assert_rate_limited(&forwarded, "this IP address");
        }
        server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    let (base, http) = (url(&server), Client::new());
    // The default limit is 16 KiB.
    let response = http
        .get(format!("{base}/healthz"))
        .header("x-padding", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    // Many headers adding up past the limit, too.
    let mut request = http.get(format!("{base}/healthz"));
    for n in 0..40 {
        request = request.header(format!("x-padding-{n}"), "b".repeat(500));
    }
    assert_eq!(
        request.send().await.unwrap().status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    // A head just under the limit, with a real token, is served.
    let admin = token(dir.path(), Role::Admin, "root");
    let (status, _, _) = send(
        http.get(format!("{base}/api/v1/me"))
            .bearer_auth(&admin)
            .header("x-padding", "c".repeat(8_000)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await.unwrap();
}

/// Reads until the server closes the connection (or 10 s pass: a failure).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server must close the connection")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_slowloris_client_is_disconnected_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &[("GUARDIAN_LIMITS_HEADER_READ_TIMEOUT_MS", "300".into())],
    )
    .await;
    let (base, http) = (url(&server), Client::new());
    let started = Instant::now();
    let mut slow = TcpStream::connect(server.local_addr()).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: guardian\r\nX-Slow: aaa")
        .await
        .unwrap();
    // The stalled client holds no one up.
    for _ in 0..3 {
        let (status, _, _) = send(http.get(format!("{base}/healthz"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let answer = read_until_closed(&mut slow).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(!answer.contains("200 OK"), "{answer}");
    // An idle connection is closed the same way, without harm to the server.
    let mut idle = TcpStream::connect(server.local_addr()).await.unwrap();
    assert_eq!(read_until_closed(&mut idle).await, "");
    let (status, _, _) = send(http.get(format!("{base}/healthz"))).await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_body_trickling_in_slower_than_the_request_timeout_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &[
            ("GUARDIAN_AUTH_DISABLED", "true".into()),
            ("GUARDIAN_LIMITS_REQUEST_TIMEOUT_MS", "500".into()),
            ("GUARDIAN_LIMITS_PLUGIN_DEADLINE_MS", "500".into()),
        ],
    )
    .await;
    let (base, http) = (url(&server), Client::new());
    create(&http, &base, "", json!({"name": "s", "plugin": "sum"})).await;

    let started = Instant::now();
    let stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(
            b"POST /api/v1/endpoints/s/reports HTTP/1.1\r\nHost: guardian\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .await
        .unwrap();
    // The client keeps sending a byte every 50 ms: it would take 50 s.
    let trickle = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..999 {
            every.tick().await;
            if write.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut answer))
        .await
        .expect("the server must answer and close the connection")
        .ok();
    let elapsed = started.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    let (status, _, _) = send(http.get(format!("{base}/healthz"))).await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await.unwrap();
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_holds_at_most_the_quota_until_a_seal_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = [free_addr(), free_addr()];
    let peers = addrs.map(|a| format!("http://{a}")).join(",");
    let data_dir = |index: usize| dir.path().join(format!("server-{index}"));
    let peer_keys = (0..2)
        .map(|index| {
            guardian::auth::identity::public_key_of(&data_dir(index).join("peer-key")).unwrap()
        })
        .collect::<Vec<_>>()
        .join(",");
    let config = |index: usize| {
        vec![
            ("GUARDIAN_SERVER_INDEX", index.to_string()),
            ("GUARDIAN_SERVER_PEERS", peers.clone()),
            ("GUARDIAN_SERVER_PEER_KEYS", peer_keys.clone()),
            // Batches of one user's reports: the quota is the subject here.
            ("GUARDIAN_ENDPOINTS_DISTINCT_USERS", "false".to_owned()),
            ("GUARDIAN_SERVER_LISTEN", addrs[index].to_string()),
            (
                "GUARDIAN_SERVER_DATA_DIR",
                data_dir(index).display().to_string(),
            ),
        ]
    };
    let mut servers = vec![
        start(dir.path(), &config(0)).await,
        start(dir.path(), &config(1)).await,
    ];
    let bases = addrs.map(|a| format!("http://{a}"));
    let http = Client::new();
    let admin = token(dir.path(), Role::Admin, "root");
    let (alice, bob) = (
        token(dir.path(), Role::User, "alice"),
        token(dir.path(), Role::User, "bob"),
    );
    let capped = json!({"name": "capped", "plugin": "sum", "min_batch": 2,
        "max_reports_per_user": 2});
    let mut hashes = Vec::new();
    for base in &bases {
        let created = create(&http, base, &admin, capped.clone()).await;
        assert_eq!(created["max_reports_per_user"], 2);
        hashes.push(created["config_hash"].clone());
        // Without the option the endpoint is another one, with another hash.
        let open = create(
            &http,
            base,
            &admin,
            json!({"name": "open", "plugin": "sum",
            "min_batch": 2}),
        )
        .await;
        assert!(open.get("max_reports_per_user").is_none(), "{open}");
        assert_ne!(open["config_hash"], created["config_hash"]);
    }
    assert_eq!(hashes[0], hashes[1], "the servers agree on the endpoint");
    let (status, _, body) = send(
        http.post(format!("{}/api/v1/endpoints", bases[0]))
            .bearer_auth(&admin)
            .json(&json!({"name": "capped", "plugin": "sum", "min_batch": 2,
                "max_reports_per_user": 3})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("endpoint_conflict"))
    );
    let (status, _, body) = send(
        http.post(format!("{}/api/v1/endpoints", bases[0]))
            .bearer_auth(&admin)
            .json(&json!({"name": "zero", "plugin": "sum", "max_reports_per_user": 0})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("invalid_max_reports_per_user")
        )
    );

    let post_all = |token: String, n: u64| {
        let (http, bases) = (http.clone(), bases.clone());
        async move {
            let mut answers = Vec::new();
            for base in &bases {
                answers.push(post(&http, base, "capped", &token, n).await);
            }
            answers
        }
    };
    for n in [1, 2] {
        for (status, _, body) in post_all(alice.clone(), n).await {
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }
    let over_quota = |answers: Vec<(StatusCode, Option<String>, Value)>| {
        for (status, retry_after, body) in answers {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            assert_eq!(body["error"]["code"], "user_quota_exceeded", "{body}");
            assert_eq!(body["error"]["max_reports_per_user"], 2, "{body}");
            assert_eq!(retry_after, None, "it lasts until a seal");
        }
    };
    over_quota(post_all(alice.clone(), 3).await);
    // An identical retry of a stored report is still acknowledged.
    for (status, _, body) in post_all(alice.clone(), 1).await {
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::OK, &json!("duplicate"))
        );
    }
    // Another user, and another endpoint of the same user, are not affected.
    for (status, _, body) in post_all(bob.clone(), 10).await {
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for base in &bases {
        let (status, _, body) = post(&http, base, "open", &alice, 3).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    // The quota survives a restart.
    let first = servers.remove(0);
    first.shutdown().await.unwrap();
    servers.insert(0, start(dir.path(), &config(0)).await);
    over_quota(post_all(alice.clone(), 3).await);

    // Once sealed, Alice's reports no longer count.
    let (status, _, sealed) = send(
        http.post(format!("{}/api/v1/endpoints/capped/batches", bases[0]))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 3);
    for n in [3, 4] {
        for (status, _, body) in post_all(alice.clone(), n).await {
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }
    over_quota(post_all(alice.clone(), 5).await);
    let metrics = metrics(&http, &bases[1]).await;
    assert!(
        metrics.contains(
            r#"guardian_reports_rejected_total{endpoint="capped",reason="user_quota_exceeded"} 3"#
        ),
        "{metrics}"
    );
    for server in servers {
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_that_cannot_write_is_unready_and_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    let (base, http) = (url(&server), Client::new());
    let admin = token(dir.path(), Role::Admin, "root");
    create(
        &http,
        &base,
        &admin,
        json!({"name": "steps", "plugin": "sum", "params": {"length": 1}, "min_batch": 2}),
    )
    .await;
    let (status, _, body) = send(http.get(format!("{base}/readyz"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The disk fails under the log before the first report: its sync fails.
    std::fs::remove_file(dir.path().join("data").join("guardian.sqlite-wal")).unwrap();
    for n in 1..=2 {
        let (status, retry_after, body) = post(&http, &base, "steps", &admin, n).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "storage_unavailable");
        assert!(retry_after.is_some(), "{body}");
    }
    let (status, _, body) = send(http.get(format!("{base}/readyz"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("syncing"), "{message}");
    server.shutdown().await.unwrap();
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("GUARDIAN_FIXTURES_DIR")).join(format!("{name}.wasm")))
        .unwrap()
}

fn gauge(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in the metrics:\n{metrics}"))
        .parse()
        .unwrap()
}

/// A server of its own and a developer's token for it.
struct Developer {
    dir: tempfile::TempDir,
    _server: Server,
    base: String,
    token: String,
    http: Client,
}

impl Developer {
    async fn start(extra: &[(&str, &str)]) -> Developer {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<(&str, String)> = extra.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let server = start(dir.path(), &extra).await;
        Developer {
            base: url(&server),
            token: token(dir.path(), Role::Developer, "dev"),
            http: Client::new(),
            dir,
            _server: server,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Option<String>, Value) {
        send(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.token),
        )
        .await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Option<String>, Value) {
        send(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(&body),
        )
        .await
    }

    async fn upload(&self, wasm: Vec<u8>) -> (StatusCode, Option<String>, Value) {
        send(
            self.http
                .post(format!("{}/api/v1/plugins", self.base))
                .bearer_auth(&self.token)
                .body(wasm),
        )
        .await
    }

    async fn compiled(&self) -> u64 {
        gauge(
            &metrics(&self.http, &self.base).await,
            "guardian_plugins_compiled",
        )
    }

    /// The compiled artifacts in the server's cache (`{data_dir}/plugins`).
    fn artifacts(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("data").join("plugins"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".cwasm"))
            .collect()
    }
}

fn digest(wasm: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(wasm))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_one_component_at_once_compile_it_once() {
    let developer = std::sync::Arc::new(Developer::start(&[]).await);
    let before = developer.compiled().await;
    let wasm = fixture("fixture_hostile");
    let uploads: Vec<_> = (0..4)
        .map(|_| {
            let (developer, wasm) = (developer.clone(), wasm.clone());
            tokio::spawn(async move { developer.upload(wasm).await })
        })
        .collect();
    for upload in uploads {
        let (status, _, body) = upload.await.unwrap();
        assert!(status.is_success(), "{status} {body}");
        assert_eq!(body["name"], "hostile", "{body}");
    }
    let after = developer.compiled().await;
    assert_eq!(after - before, 1, "four uploads at once, one compilation");
}

#[tokio::test]
async fn a_refused_component_leaves_nothing_compiled_behind() {
    let developer = Developer::start(&[]).await;
    let cached = developer.artifacts();
    // A component, but of another world: it compiles, then fails the type check.
    let (status, _, body) = developer.upload(fixture("fixture_other_world")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_plugin");
    assert_eq!(developer.artifacts(), cached);
}

#[tokio::test]
async fn an_upload_over_the_compile_budget_is_refused_and_not_kept() {
    let developer = Developer::start(&[("GUARDIAN_LIMITS_PLUGIN_COMPILE_TIMEOUT_MS", "1")]).await;
    let cached = developer.artifacts();
    let compiled = developer.compiled().await;
    let wasm = fixture("fixture_hostile");
    let digest = digest(&wasm);
    let (status, _, body) = developer.upload(wasm).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "plugin_too_complex");
    // The compilation runs to its end in the background; then nothing of it stays.
    let deadline = Instant::now() + Duration::from_secs(60);
    while developer.compiled().await == compiled {
        assert!(Instant::now() < deadline, "the compilation never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while developer.artifacts() != cached {
        assert!(Instant::now() < deadline, "{:?}", developer.artifacts());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, _) = developer.get(&format!("/api/v1/plugins/{digest}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_plugin_whose_words_hold_terminal_escapes_is_refused() {
    let developer = Developer::start(&[]).await;
    let cached = developer.artifacts();
    let wasm = fixture("fixture_disguised");
    let digest = digest(&wasm);
    let (status, _, body) = developer.upload(wasm).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_plugin_info");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("description holds the control character U+001B"),
        "{body}"
    );
    let (status, _, _) = developer.get(&format!("/api/v1/plugins/{digest}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(developer.artifacts(), cached);
}

#[tokio::test]
async fn endpoints_are_capped_in_number_size_and_depth() {
    let developer = Developer::start(&[
        ("GUARDIAN_LIMITS_MAX_ENDPOINTS", "3"),
        ("GUARDIAN_LIMITS_MAX_PARAMS_BYTES", "2048"),
    ])
    .await;
    let create = async |name: &str, params: Value| {
        developer
            .post(
                "/api/v1/endpoints",
                json!({"name": name, "plugin": "sum", "params": params}),
            )
            .await
    };
    // Nested 126 deep: once accepted, then no listing could be read back.
    let mut deep = json!(1);
    for _ in 0..126 {
        deep = json!([deep]);
    }
    let (status, _, body) = create("deep", deep).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "params_too_deep");
    let (status, _, body) = create("bulky", json!({"length": 1, "note": "x".repeat(4096)})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "params_too_large");
    for name in ["a", "b", "c"] {
        let (status, _, body) = create(name, json!({"length": 1})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, _, body) = create("d", json!({"length": 1})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "too_many_endpoints");
    // Creating an existing one again is still answered as before.
    let (status, _, body) = create("a", json!({"length": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Every listing still reads back.
    let (status, _, listed) = developer.get("/api/v1/endpoints").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["endpoints"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn listings_come_in_pages_without_bulky_fields() {
    let developer = Developer::start(&[]).await;
    let labels: Vec<String> = (0..300).map(|i| format!("bucket-{i}")).collect();
    for i in 0..7 {
        let (plugin, params) = if i == 3 {
            ("histogram", json!({"buckets": labels}))
        } else {
            ("sum", json!({"length": 1}))
        };
        let body = json!({"name": format!("e{i}"), "plugin": plugin, "params": params});
        let (status, _, body) = developer.post("/api/v1/endpoints", body).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut names = Vec::new();
    let mut path = "/api/v1/endpoints?limit=3".to_owned();
    loop {
        let (status, _, page) = developer.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["endpoints"].as_array().unwrap();
        assert!(items.len() <= 3);
        for item in items {
            let name = item["name"].as_str().unwrap().to_owned();
            // The bulky params are left out of the list, not of the endpoint.
            assert_eq!(item.get("params").is_none(), name == "e3", "{item}");
            names.push(name);
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/endpoints?limit=3&after={next}"),
            None => break,
        }
    }
    assert_eq!(names, ["e0", "e1", "e2", "e3", "e4", "e5", "e6"]);
    let (_, _, one) = developer.get("/api/v1/endpoints/e3").await;
    assert_eq!(one["params"]["buckets"], json!(labels));
    for limit in ["0", "1001", "x"] {
        let (status, _, body) = developer
            .get(&format!("/api/v1/endpoints?limit={limit}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{limit}: {body}");
    }
    // Plugins too: a page of two, then the rest.
    let (status, _, page) = developer.get("/api/v1/plugins?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["plugins"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    let (_, _, rest) = developer
        .get(&format!("/api/v1/plugins?after={next}"))
        .await;
    assert!(!rest["plugins"].as_array().unwrap().is_empty());
    assert!(rest["next"].is_null());
}
