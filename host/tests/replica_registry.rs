//! Two replicas of one share server (two in-process servers with the same index
//! over one PostgreSQL database) learn from the database what the other one
//! changed, without a restart: an endpoint created through one takes reports
//! through the other at once, a plugin uploaded through one is usable through
//! the other, and an endpoint deleted (or deleted and created again) through one
//! stops (or starts) taking reports on the other within a couple of seconds.
//!
//! The database is a fresh one on the cluster of `GUARDIAN_TEST_POSTGRES_URL`,
//! which `cargo xtask test` starts; without it the test fails, naming that
//! command.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use guardian::config::{Environment, load};
use guardian::server::Server;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use common::Sharder;

/// How long a replica may take to notice a change made through the other (the
/// refresh runs about every second).
const NOTICE: Duration = Duration::from_secs(3);

/// A replica: server 0 over the database at `url`, its own data directory (its
/// compiled-plugin cache) in `dir`, authentication off, `approved` approved.
async fn replica(dir: &Path, url: &str, approved: &str) -> (Server, String) {
    let vars = [
        ("GUARDIAN_AUTH_DISABLED", "true".to_owned()),
        ("GUARDIAN_SERVER_LISTEN", "127.0.0.1:0".to_owned()),
        ("GUARDIAN_SERVER_DATA_DIR", dir.display().to_string()),
        ("GUARDIAN_STORAGE_URL", url.to_owned()),
        ("GUARDIAN_PLUGINS_APPROVED", approved.to_owned()),
    ];
    let loaded = load(
        None,
        &Environment::new().with_process(vars.map(|(k, v)| (k.to_owned(), v))),
    )
    .unwrap();
    let server = Server::start(loaded.config).await.unwrap();
    let api = format!("http://{}/api/v1", server.local_addr());
    (server, api)
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Posts one report of `measurement` (server 0's share) to `endpoint` at `api`.
async fn post(
    http: &Client,
    api: &str,
    endpoint: &str,
    sharder: &Sharder,
    measurement: Value,
) -> (StatusCode, Value) {
    let (id, shares) = sharder.shard(&measurement, 2);
    send(
        http.post(format!("{api}/endpoints/{endpoint}/reports"))
            .json(&json!({"report_id": id, "share": shares[0]})),
    )
    .await
}

/// Posts reports of `measurement` until one is answered `expected` (with `code`,
/// if given), at most [`NOTICE`]; returns how long that took.
async fn until(
    http: &Client,
    api: &str,
    (endpoint, sharder, measurement): (&str, &Sharder, Value),
    (expected, code): (StatusCode, Option<&str>),
) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = post(http, api, endpoint, sharder, measurement.clone()).await;
        if status == expected && code.is_none_or(|code| body["error"]["code"] == code) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < NOTICE,
            "{api}: {endpoint} still answers {status} {body} after {NOTICE:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Unbatched reports of `endpoint` as the replica at `api` reads them.
async fn unbatched(http: &Client, api: &str, endpoint: &str) -> u64 {
    let (status, body) = send(http.get(format!("{api}/endpoints/{endpoint}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["reports"]["unbatched"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_learns_what_another_replica_changed() {
    let url = common::pg::fresh_database();
    let fixture =
        std::fs::read(Path::new(env!("GUARDIAN_FIXTURES_DIR")).join("fixture_hostile.wasm"))
            .unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&fixture));
    let dir = tempfile::tempdir().unwrap();
    let (a, api_a) = replica(&dir.path().join("a"), &url, &digest).await;
    let (b, api_b) = replica(&dir.path().join("b"), &url, &digest).await;
    let http = Client::new();

    // Created through A, a report through B at once (its first lookup misses and
    // reads the database).
    let sum = Sharder::new("sum", &json!({"length": 2}));
    let (status, body) = send(
        http.post(format!("{api_a}/endpoints"))
            .json(&json!({"name": "sums", "plugin": "sum", "params": {"length": 2}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = post(&http, &api_b, "sums", &sum, json!([1, 2])).await;
    assert_eq!(status, StatusCode::CREATED, "B: {body}");
    assert_eq!(unbatched(&http, &api_a, "sums").await, 1);

    // A plugin uploaded through A: B, which has not compiled it, creates an
    // endpoint on it by digest, and A takes that endpoint's reports at once.
    let (status, body) = send(http.post(format!("{api_a}/plugins")).body(fixture.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(
        http.post(format!("{api_b}/endpoints"))
            .json(&json!({"name": "votes", "plugin": digest, "params": {"mode": "ok"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "B: {body}");
    let votes = Sharder::from_wasm(&fixture, &json!({"mode": "ok"}));
    let (id, shares) = votes.shard(&json!(1), 2);
    for api in [&api_a, &api_b] {
        let (status, body) = send(
            http.post(format!("{api}/endpoints/votes/reports"))
                .json(&json!({"report_id": id, "share": shares[0]})),
        )
        .await;
        assert!(status.is_success(), "{api}: {status} {body}");
    }
    assert_eq!(unbatched(&http, &api_b, "votes").await, 1);

    // Deleted through B: B refuses at once, A within a couple of seconds.
    let (status, body) = send(http.delete(format!("{api_b}/endpoints/sums"))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = post(&http, &api_b, "sums", &sum, json!([1, 2])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "B: {body}");
    assert_eq!(body["error"]["code"], "unknown_endpoint");
    let gone = (StatusCode::NOT_FOUND, Some("unknown_endpoint"));
    let noticed = until(&http, &api_a, ("sums", &sum, json!([1, 2])), gone).await;
    println!("A noticed the deletion after {noticed:?}");

    // A holds "votes" live: deleted and created again through B under the same
    // name (a new endpoint), A's lookups still hit the old one, and its reports
    // go to the new one once the refresh replaced it, within a couple of seconds.
    let (status, _) = post(&http, &api_a, "votes", &votes, json!(0)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = send(http.delete(format!("{api_b}/endpoints/votes"))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = send(
        http.post(format!("{api_b}/endpoints"))
            .json(&json!({"name": "votes", "plugin": digest, "params": {"mode": "ok"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let replaced = until(
        &http,
        &api_a,
        ("votes", &votes, json!(1)),
        (StatusCode::CREATED, None),
    )
    .await;
    println!("A took the new endpoint after {replaced:?}");
    assert_eq!(unbatched(&http, &api_b, "votes").await, 1);

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
