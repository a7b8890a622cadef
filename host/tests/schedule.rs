//! Sealing by schedule: server 0 seals endpoints created with `seal_every` (time
//! driven through a manual clock shared by two in-process servers, no sleeps)
//! and `seal_at` (within a second of the K-th report held by every server),
//! waits without errors below `min_batch`, and still seals when asked.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use guardian::clock::{Clock, ManualClock, SystemClock};
use guardian::config::{Environment, load};
use guardian::server::Server;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use common::{PEER_TOKEN, Sharder, free_port};

/// Two share servers in this process, on one clock.
struct Pair {
    _dir: tempfile::TempDir,
    servers: Vec<Server>,
    http: Client,
    sharder: Sharder,
    clock: Arc<dyn Clock>,
}

impl Pair {
    async fn start(clock: Arc<dyn Clock>) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let addrs = [free_port(), free_port()];
        let peers = addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let data = |i: usize| dir.path().join(format!("server-{i}"));
        let peer_keys = (0..2)
            .map(|i| guardian::auth::identity::public_key_of(&data(i).join("peer-key")))
            .collect::<anyhow::Result<Vec<_>>>()
            .unwrap()
            .join(",");
        let mut servers = Vec::new();
        for (index, addr) in addrs.iter().enumerate() {
            let vars = [
                ("GUARDIAN_AUTH_DISABLED", "true".to_owned()),
                ("GUARDIAN_AUTH_PEER_TOKEN", PEER_TOKEN.to_owned()),
                ("GUARDIAN_SERVER_INDEX", index.to_string()),
                ("GUARDIAN_SERVER_SERVERS", "2".to_owned()),
                ("GUARDIAN_SERVER_PEERS", peers.clone()),
                ("GUARDIAN_SERVER_PEER_KEYS", peer_keys.clone()),
                ("GUARDIAN_SERVER_LISTEN", addr.to_string()),
                (
                    "GUARDIAN_SERVER_DATA_DIR",
                    data(index).display().to_string(),
                ),
            ];
            let vars = vars.into_iter().map(|(k, v)| (k.to_owned(), v));
            let config = load(None, &Environment::new().with_process(vars))
                .unwrap()
                .config;
            let auth = guardian::auth::authenticator_from_config(&config.auth)
                .await
                .unwrap();
            servers.push(
                Server::start_with_clock(config, auth, clock.clone())
                    .await
                    .unwrap(),
            );
        }
        Pair {
            _dir: dir,
            servers,
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            sharder: Sharder::new("sum", &json!({"length": 3})),
            clock,
        }
    }

    fn url(&self, index: usize, path: &str) -> String {
        format!("http://{}{path}", self.servers[index].local_addr())
    }

    async fn post(&self, index: usize, path: &str, body: Value) -> (StatusCode, Value) {
        let answer = self
            .http
            .post(self.url(index, path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, index: usize, path: &str) -> (StatusCode, Value) {
        let answer = self.http.get(self.url(index, path)).send().await.unwrap();
        let status = answer.status();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// Creates `name` (sum of 3, min batch 2) on both servers with `extra` options.
    async fn create(&self, name: &str, extra: Value) {
        let mut body =
            json!({"name": name, "plugin": "sum", "params": {"length": 3}, "min_batch": 2});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        for index in 0..2 {
            let (status, answer) = self.post(index, "/api/v1/endpoints", body.clone()).await;
            assert_eq!(status, StatusCode::CREATED, "server {index}: {answer}");
        }
    }

    /// Posts one report of `[1, 2, 3]` to server 0 and then server 1.
    async fn report(&self, endpoint: &str) {
        let (_, shares) = self.sharder.shard(&json!([1, 2, 3]), 2);
        let id = hex::encode(guardian::report_id::new_report_id(self.clock.now()));
        for (index, share) in shares.iter().enumerate() {
            let (status, answer) = self
                .post(
                    index,
                    &format!("/api/v1/endpoints/{endpoint}/reports"),
                    json!({"report_id": id, "share": share}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "server {index}: {answer}");
        }
    }

    async fn batches(&self, index: usize, endpoint: &str) -> Vec<Value> {
        let (status, listed) = self
            .get(index, &format!("/api/v1/endpoints/{endpoint}/batches"))
            .await;
        assert_eq!(status, StatusCode::OK, "{listed}");
        listed["batches"].as_array().unwrap().clone()
    }

    /// Waits (up to 10 s) until both servers list `n` batches of `endpoint`.
    async fn wait_for(&self, endpoint: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let first = self.batches(0, endpoint).await;
            if first.len() >= n && self.batches(1, endpoint).await.len() >= n {
                assert_eq!(first.len(), n, "more batches than expected: {first:?}");
                return first;
            }
            assert!(
                Instant::now() < deadline,
                "{endpoint}: {} batches, expected {n}",
                first.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until server 0's scheduler has tried `n` seals of `endpoint` with
    /// `outcome` (so a test knows a tick ran before it posts more reports).
    async fn wait_for_tries(&self, endpoint: &str, outcome: &str, n: u64) {
        let line = format!(
            r#"guardian_scheduled_seals_total{{endpoint="{endpoint}",outcome="{outcome}"}} {n}"#
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = self.metrics().await;
            if metrics.lines().any(|l| l == line) {
                return;
            }
            assert!(Instant::now() < deadline, "no `{line}` in:\n{metrics}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.http
            .get(self.url(0, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_endpoint_seals_by_itself_and_waits_below_min_batch() {
    let clock = ManualClock::new(SystemTime::now());
    let pair = Pair::start(Arc::new(clock.clone())).await;
    pair.create("hourly", json!({"seal_every": 3600})).await;
    let (_, shown) = pair.get(0, "/api/v1/endpoints/hourly").await;
    assert_eq!(shown["seal_every"], 3600, "{shown}");
    assert!(shown.get("seal_at").is_none(), "{shown}");
    for _ in 0..3 {
        pair.report("hourly").await;
    }
    assert!(pair.batches(0, "hourly").await.is_empty());

    // An hour (and a minute) later, server 0 seals on its own, on both servers.
    clock.advance(Duration::from_secs(3660));
    let batches = pair.wait_for("hourly", 1).await;
    assert_eq!(batches[0]["count"], 3, "{batches:?}");
    let (from, to) = (&batches[0]["reports_from"], &batches[0]["reports_to"]);
    let from = humantime::parse_rfc3339(from.as_str().unwrap()).unwrap();
    let to = humantime::parse_rfc3339(to.as_str().unwrap()).unwrap();
    assert!(from <= to, "{batches:?}");

    // One report is below min_batch: the next tick waits, the one after seals.
    pair.report("hourly").await;
    clock.advance(Duration::from_secs(3600));
    pair.wait_for_tries("hourly", "waiting", 1).await;
    pair.report("hourly").await;
    assert_eq!(pair.batches(0, "hourly").await.len(), 1);
    clock.advance(Duration::from_secs(3600));
    let batches = pair.wait_for("hourly", 2).await;
    assert_eq!(batches[1]["count"], 2, "{batches:?}");
    pair.wait_for_tries("hourly", "sealed", 2).await;
    let metrics = pair.metrics().await;
    assert!(
        !metrics.contains("batch_too_small"),
        "a scheduled seal that waits is no refusal:\n{metrics}"
    );

    // Asking still works on a scheduled endpoint (the next tick is an hour away).
    pair.report("hourly").await;
    pair.report("hourly").await;
    let (status, sealed) = pair
        .post(0, "/api/v1/endpoints/hourly/batches", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 2, "{sealed}");

    // Reading without sealing: the batches sealed since a time.
    let (status, since) = pair
        .get(
            0,
            &format!(
                "/api/v1/endpoints/hourly/batches?since={}",
                batches[1]["sealed_at"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{since}");
    assert_eq!(since["batches"].as_array().unwrap().len(), 2, "{since}");
    let (status, refused) = pair
        .get(0, "/api/v1/endpoints/hourly/batches?since=yesterday")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"]["code"], "bad_since", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_at_endpoint_seals_within_a_second_of_the_kth_report_held_by_all() {
    let pair = Pair::start(Arc::new(SystemClock)).await;
    pair.create("at20", json!({"seal_at": 20})).await;
    for _ in 0..19 {
        pair.report("at20").await;
    }
    assert!(pair.batches(0, "at20").await.is_empty());
    // The 20th report reaches server 0 first: its seal finds server 1 behind,
    // and tries again shortly.
    pair.report("at20").await;
    let acknowledged = Instant::now();
    let batches = pair.wait_for("at20", 1).await;
    let took = acknowledged.elapsed();
    assert!(took < Duration::from_secs(1), "sealed after {took:?}");
    assert_eq!(batches[0]["count"], 20, "{batches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_checked_and_part_of_the_config_hash() {
    let pair = Pair::start(Arc::new(SystemClock)).await;
    let (status, refused) = pair
        .post(
            0,
            "/api/v1/endpoints",
            json!({"name": "bad", "plugin": "sum", "params": {"length": 3}, "min_batch": 5, "seal_at": 4}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"]["code"], "invalid_seal_at", "{refused}");
    let (status, refused) = pair
        .post(
            0,
            "/api/v1/endpoints",
            json!({"name": "bad", "plugin": "sum", "params": {"length": 3}, "seal_every": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"]["code"], "invalid_seal_every", "{refused}");

    pair.create("plain", json!({})).await;
    pair.create("timed", json!({"seal_every": 60})).await;
    let (_, plain) = pair.get(0, "/api/v1/endpoints/plain").await;
    let (_, timed) = pair.get(0, "/api/v1/endpoints/timed").await;
    assert_ne!(plain["config_hash"], timed["config_hash"]);
    // Without a schedule the hash is the one endpoints always had.
    let digest: [u8; 32] = hex::decode(plain["plugin_digest"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let config = guardian::runtime::testing::builtin("sum")
        .configure(r#"{"length":3}"#)
        .unwrap();
    assert_eq!(
        plain["config_hash"],
        hex::encode(guardian::server::config_hash(&digest, &config, 2, None))
    );
    // The same name with another schedule is another endpoint.
    let (status, conflict) = pair
        .post(
            0,
            "/api/v1/endpoints",
            json!({"name": "timed", "plugin": "sum", "params": {"length": 3}, "min_batch": 2, "seal_every": 61}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
}
