//! The report window on a real server (in process, real HTTP, on a manual clock
//! so that no test waits for time to pass): ids older than the window or from the
//! future are refused with their codes, replays inside the window are still
//! caught, and reports past the window are collected in the background.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use guardian::clock::{Clock, ManualClock};
use guardian::config::{Environment, load};
use guardian::report_id::new_report_id;
use guardian::server::Server;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use common::Sharder;

/// One server with a one-minute window and five seconds of allowed skew.
async fn start(dir: &std::path::Path, clock: Arc<dyn Clock>) -> Server {
    let vars = [
        ("GUARDIAN_AUTH_DISABLED", "true".to_owned()),
        ("GUARDIAN_SERVER_LISTEN", "127.0.0.1:0".to_owned()),
        (
            "GUARDIAN_SERVER_DATA_DIR",
            dir.join("data").display().to_string(),
        ),
        ("GUARDIAN_ENDPOINTS_REPORT_RETENTION_SECS", "60".to_owned()),
        (
            "GUARDIAN_ENDPOINTS_REPORT_MAX_FUTURE_SKEW_SECS",
            "5".to_owned(),
        ),
    ];
    let vars = vars.into_iter().map(|(k, v)| (k.to_owned(), v));
    let config = load(None, &Environment::new().with_process(vars))
        .unwrap()
        .config;
    let auth = guardian::auth::authenticator_from_config(&config.auth)
        .await
        .unwrap();
    Server::start_with_clock(config, auth, clock).await.unwrap()
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_outside_the_window_are_refused_and_old_reports_collected() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::now());
    let server = start(dir.path(), Arc::new(clock.clone())).await;
    let url = format!("http://{}", server.local_addr());
    let http = Client::new();
    let (status, body) = send(
        http.post(format!("{url}/api/v1/endpoints"))
            .json(&json!({"name": "w", "plugin": "sum", "params": {"length": 3}, "min_batch": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let reports = format!("{url}/api/v1/endpoints/w/reports");
    let sharder = Sharder::new("sum", &json!({"length": 3}));
    let (_, shares) = sharder.shard(&json!([1, 2, 3]), 2);
    let (_, other) = sharder.shard(&json!([4, 5, 6]), 2);
    let post = |id: [u8; 16], share: &str| {
        send(
            http.post(&reports)
                .json(&json!({"report_id": hex::encode(id), "share": share})),
        )
    };

    // Inside the window: stored once; a replay is caught (same share: 200, another: 409).
    let first = new_report_id(clock.now());
    assert_eq!(post(first, &shares[0]).await.0, StatusCode::CREATED);
    assert_eq!(post(first, &shares[0]).await.0, StatusCode::OK);
    let (status, body) = post(first, &other[0]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "report_conflict");

    // Outside: too old, or too far ahead of the server's clock.
    let (status, body) = post(
        new_report_id(clock.now() - Duration::from_secs(61)),
        &shares[0],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "report_too_old", "{body}");
    let (status, body) = post(
        new_report_id(clock.now() + Duration::from_secs(6)),
        &shares[0],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "report_from_future", "{body}");
    let within_skew = new_report_id(clock.now() + Duration::from_secs(4));
    assert_eq!(post(within_skew, &shares[0]).await.0, StatusCode::CREATED);

    // Past the window, both reports are collected by the server itself.
    clock.advance(Duration::from_secs(66));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, shown) = send(http.get(format!("{url}/api/v1/endpoints/w"))).await;
        if shown["reports"]["unbatched"] == 0 {
            assert_eq!(shown["reports"]["expired"], 2, "{shown}");
            break;
        }
        assert!(Instant::now() < deadline, "not collected: {shown}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its replay is refused by its age, not taken again.
    let (status, body) = post(first, &shares[0]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "report_too_old", "{body}");
    // New reports are taken as before.
    assert_eq!(
        post(new_report_id(clock.now()), &shares[0]).await.0,
        StatusCode::CREATED
    );
    server.shutdown().await.unwrap();
}
