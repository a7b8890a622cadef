//! The public API over real HTTP against an in-process server on port 0 with a
//! real SQLite file: every bad input gets its status and stable code, and the
//! server keeps serving; plugins and endpoints survive a restart without
//! recompilation.

// Helpers below run only inside tests.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use guardian::config::{Environment, load};
use guardian::server::Server;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

async fn start(dir: &Path, extra: &[(&str, &str)]) -> (Server, String) {
    let mut vars = vec![
        ("GUARDIAN_AUTH_DISABLED".to_owned(), "true".to_owned()),
        (
            "GUARDIAN_SERVER_LISTEN".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        (
            "GUARDIAN_SERVER_DATA_DIR".to_owned(),
            dir.display().to_string(),
        ),
    ];
    vars.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let loaded = load(None, &Environment::new().with_process(vars)).unwrap();
    let server = Server::start(loaded.config).await.unwrap();
    let url = format!("http://{}", server.local_addr());
    (server, url)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("GUARDIAN_FIXTURES_DIR")).join(format!("{name}.wasm"))).unwrap()
}

/// The hostile fixture's digest: endpoints on it need its approval
/// (`GUARDIAN_PLUGINS_APPROVED`), like any uploaded plugin's.
fn hostile_digest() -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(fixture(
        "fixture_hostile",
    )))
}

/// Sends a request and returns (status, JSON body or Null).
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn report(id: &str, share: &[u8]) -> Value {
    json!({"report_id": id, "share": BASE64.encode(share)})
}

/// One report id, made when the tests start (ids carry their time, and servers
/// take them only within their report window).
static ID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    hex::encode(guardian::report_id::new_report_id(
        std::time::SystemTime::now(),
    ))
});

#[tokio::test]
async fn bad_inputs_get_their_status_and_code_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let approved = hostile_digest();
    let (server, url) = start(
        dir.path(),
        &[
            ("GUARDIAN_LIMITS_MAX_BODY_BYTES", "4096"),
            ("GUARDIAN_PLUGINS_APPROVED", &approved),
        ],
    )
    .await;
    let http = Client::new();
    let api = format!("{url}/api/v1");

    let (status, _) = send(
        http.post(format!("{api}/endpoints"))
            .json(&json!({"name": "s", "plugin": "sum", "params": {"length": 2}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(
        http.post(format!("{api}/endpoints"))
            .json(&json!({"name": "gone", "plugin": "sum"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(http.delete(format!("{api}/endpoints/gone"))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = send(
        http.post(format!("{api}/plugins"))
            .body(fixture("fixture_hostile")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hostile = body["digest"].as_str().unwrap().to_owned();
    let (status, _) = send(
        http.post(format!("{api}/endpoints"))
            .json(&json!({"name": "trap", "plugin": hostile, "params": {"mode": "trap"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let reports = format!("{api}/endpoints/s/reports");
    let raw = |url: &str, body: &str| {
        http.post(url)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            raw(&reports, "{"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "wrong types",
            http.post(&reports)
                .json(&json!({"report_id": 5, "share": "AA=="})),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "unknown field",
            http.post(&reports)
                .json(&json!({"report_id": ID.as_str(), "share": "AA==", "x": 1})),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "missing field",
            http.post(&reports).json(&json!({"report_id": ID.as_str()})),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "empty body",
            raw(&reports, ""),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "bad hex",
            http.post(&reports)
                .json(&report("zz112233445566778899aabbccddeeff", &[0; 16])),
            StatusCode::BAD_REQUEST,
            "invalid_report_id",
        ),
        (
            "short id",
            http.post(&reports).json(&report("0011", &[0; 16])),
            StatusCode::BAD_REQUEST,
            "invalid_report_id",
        ),
        (
            "bad base64",
            http.post(&reports)
                .json(&json!({"report_id": ID.as_str(), "share": "!!!"})),
            StatusCode::BAD_REQUEST,
            "invalid_share_encoding",
        ),
        (
            "oversized body",
            http.post(&reports).json(&report(&ID, &[0; 8192])),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "unknown endpoint",
            http.post(format!("{api}/endpoints/nope/reports"))
                .json(&report(&ID, &[0; 16])),
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
        ),
        (
            "deleted endpoint",
            http.post(format!("{api}/endpoints/gone/reports"))
                .json(&report(&ID, &[0; 16])),
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
        ),
        (
            "share of wrong length",
            http.post(&reports).json(&report(&ID, &[0; 24])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_share",
        ),
        (
            "truncated share",
            http.post(&reports).json(&report(&ID, &[0; 15])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_share",
        ),
        (
            "a plugin that traps",
            http.post(format!("{api}/endpoints/trap/reports"))
                .json(&report(&ID, &[0; 8])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "plugin_trap",
        ),
        (
            "unknown route",
            http.get(format!("{api}/nothing")),
            StatusCode::NOT_FOUND,
            "no_route",
        ),
        (
            "wrong method",
            http.put(&reports),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "bad endpoint name",
            http.post(format!("{api}/endpoints"))
                .json(&json!({"name": "Bad Name", "plugin": "sum"})),
            StatusCode::BAD_REQUEST,
            "invalid_endpoint_name",
        ),
        (
            "unknown plugin",
            http.post(format!("{api}/endpoints"))
                .json(&json!({"name": "x", "plugin": "nope"})),
            StatusCode::NOT_FOUND,
            "unknown_plugin",
        ),
        (
            "bad params",
            http.post(format!("{api}/endpoints"))
                .json(&json!({"name": "x", "plugin": "sum", "params": {"length": 0}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
        ),
        (
            "endpoint conflict",
            http.post(format!("{api}/endpoints"))
                .json(&json!({"name": "s", "plugin": "sum", "params": {"length": 3}})),
            StatusCode::CONFLICT,
            "endpoint_conflict",
        ),
        (
            "zero min batch",
            http.post(format!("{api}/endpoints"))
                .json(&json!({"name": "x", "plugin": "sum", "min_batch": 0})),
            StatusCode::BAD_REQUEST,
            "invalid_min_batch",
        ),
        (
            // A batch of one report would release that user's value.
            "min batch of one",
            http.post(format!("{api}/endpoints"))
                .json(&json!({"name": "x", "plugin": "sum", "min_batch": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_min_batch",
        ),
        (
            // Found by schemathesis: it was a 500 from storage.
            "min batch past any seal",
            http.post(format!("{api}/endpoints"))
                .json(&json!({"name": "x", "plugin": "sum", "min_batch": 1u64 << 63})),
            StatusCode::BAD_REQUEST,
            "invalid_min_batch",
        ),
        (
            "path not UTF-8",
            http.get(format!("{api}/endpoints/%FF")),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "not a component",
            http.post(format!("{api}/plugins"))
                .body(b"\0asm\x01\0\0\0".to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plugin",
        ),
        (
            "another world",
            http.post(format!("{api}/plugins"))
                .body(fixture("fixture_other_world")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plugin",
        ),
        (
            "empty plugin",
            http.post(format!("{api}/plugins")).body(Vec::new()),
            StatusCode::BAD_REQUEST,
            "empty_body",
        ),
        (
            "unknown plugin name",
            http.get(format!("{api}/plugins/xyz")),
            StatusCode::NOT_FOUND,
            "unknown_plugin",
        ),
        (
            "unknown digest",
            http.get(format!("{api}/plugins/{}", "0".repeat(64))),
            StatusCode::NOT_FOUND,
            "unknown_plugin",
        ),
        (
            "delete unknown endpoint",
            http.delete(format!("{api}/endpoints/nope")),
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
        ),
    ];
    for (what, request, status, code) in cases {
        let (got, body) = send(request).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
        assert!(
            !body["error"]["message"].as_str().unwrap().is_empty(),
            "{what}"
        );
        let (health, _) = send(http.get(format!("{url}/healthz"))).await;
        assert_eq!(health, StatusCode::OK, "after {what}");
    }

    // The plugin's own words reach the client.
    let (_, body) = send(http.post(&reports).json(&report(&ID, &[0; 15]))).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("15 bytes"),
        "{body}"
    );
    let (_, body) = send(
        http.post(format!("{api}/endpoints/trap/reports"))
            .json(&report(&ID, &[0; 8])),
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deliberate panic"),
        "{body}"
    );
    let (_, body) = send(
        http.post(format!("{api}/plugins"))
            .body(fixture("fixture_other_world")),
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("guardian:plugin/algorithm"),
        "{body}"
    );

    // After all that, good reports still go in, retries are idempotent, and
    // a different share under the same id is refused.
    let (status, body) = send(http.post(&reports).json(&report(&ID, &[1; 16]))).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::CREATED, Some("stored"))
    );
    let (status, body) = send(http.post(&reports).json(&report(&ID, &[1; 16]))).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    let (status, body) = send(http.post(&reports).json(&report(&ID, &[2; 16]))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("report_conflict"))
    );
    let (_, body) = send(http.get(format!("{api}/endpoints/s"))).await;
    assert_eq!(
        body["reports"],
        json!({"unbatched": 1, "batched": 0, "expired": 0, "rejected": 0, "batches": 0})
    );

    let (_, metrics) = (
        StatusCode::OK,
        http.get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(
        metrics
            .contains(r#"guardian_reports_rejected_total{endpoint="s",reason="invalid_share"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"guardian_reports_accepted_total{endpoint="s"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"reason="unknown_endpoint"} 2"#),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn plugins_and_endpoints_survive_a_restart_without_recompiling() {
    let dir = tempfile::tempdir().unwrap();
    let http = Client::new();
    let approved = hostile_digest();
    let approve = [("GUARDIAN_PLUGINS_APPROVED", approved.as_str())];
    let (server, url) = start(dir.path(), &approve).await;
    let (status, uploaded) = send(
        http.post(format!("{url}/api/v1/plugins"))
            .body(fixture("fixture_hostile")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let digest = uploaded["digest"].as_str().unwrap().to_owned();
    let (status, _) = send(
        http.post(format!("{url}/api/v1/plugins"))
            .body(fixture("fixture_hostile")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "a second upload is a no-op");
    let wasm = http
        .get(format!("{url}/api/v1/plugins/{digest}/wasm"))
        .send()
        .await
        .unwrap();
    assert_eq!(wasm.headers()["content-type"], "application/wasm");
    assert_eq!(
        wasm.bytes().await.unwrap().to_vec(),
        fixture("fixture_hostile"),
        "clients get the exact bytes"
    );
    let create = json!({"name": "h", "plugin": digest, "params": {"mode": "ok"}, "min_batch": 5});
    let (status, created) = send(http.post(format!("{url}/api/v1/endpoints")).json(&create)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(
        http.post(format!("{url}/api/v1/endpoints/h/reports"))
            .json(&report(&ID, &[1, 0, 0, 0, 0, 0, 0, 0])),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    server.shutdown().await.unwrap();

    let (server, url) = start(dir.path(), &approve).await;
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("guardian_plugins_compiled 0"), "{metrics}");
    let (_, plugins) = send(http.get(format!("{url}/api/v1/plugins"))).await;
    let names: Vec<&str> = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "sum",
        "count",
        "histogram",
        "mean",
        "dp-sum",
        "dp-histogram",
        "hostile",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let (status, again) = send(http.post(format!("{url}/api/v1/endpoints")).json(&create)).await;
    assert_eq!(status, StatusCode::OK, "identical re-create after restart");
    assert_eq!(again["config_hash"], created["config_hash"]);
    let (status, body) = send(
        http.post(format!("{url}/api/v1/endpoints/h/reports"))
            .json(&report(&ID, &[1, 0, 0, 0, 0, 0, 0, 0])),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    let (_, shown) = send(http.get(format!("{url}/api/v1/endpoints/h"))).await;
    assert_eq!(shown["reports"]["unbatched"], 1);
    assert_eq!(shown["min_batch"], 5);
    assert_eq!(shown["approved"], true);
    server.shutdown().await.unwrap();

    // Restarted without the approval: the endpoint stays, with its report, but
    // takes no more.
    let (server, url) = start(dir.path(), &[]).await;
    let (status, body) = send(
        http.post(format!("{url}/api/v1/endpoints/h/reports"))
            .json(&report(&ID.replace('0', "f"), &[1, 0, 0, 0, 0, 0, 0, 0])),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "plugin_not_approved");
    let (_, shown) = send(http.get(format!("{url}/api/v1/endpoints/h"))).await;
    assert_eq!(shown["reports"]["unbatched"], 1);
    assert_eq!(shown["approved"], false);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_endpoint_obeys_the_operators_min_batch_floor() {
    let dir = tempfile::tempdir().unwrap();
    let http = Client::new();
    let (server, url) = start(dir.path(), &[]).await;
    let create = |min_batch: u64| {
        http.post(format!("{url}/api/v1/endpoints"))
            .json(&json!({"name": "one", "plugin": "sum", "min_batch": min_batch}))
    };
    // By default the floor is 2: an endpoint whose batches hold one report, whose
    // release is that user's value, is refused.
    let (status, body) = send(create(1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_min_batch");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("at least 2") && message.contains("endpoints.min_batch_floor"),
        "{message}"
    );
    let (status, _) = send(create(2)).await;
    assert_eq!(status, StatusCode::CREATED);
    server.shutdown().await.unwrap();

    // An operator may raise it; the default min batch must then be at least it.
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(
        dir.path(),
        &[
            ("GUARDIAN_ENDPOINTS_MIN_BATCH_FLOOR", "50"),
            ("GUARDIAN_ENDPOINTS_DEFAULT_MIN_BATCH", "50"),
        ],
    )
    .await;
    let (status, body) = send(
        http.post(format!("{url}/api/v1/endpoints"))
            .json(&json!({"name": "few", "plugin": "sum", "min_batch": 49})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at least 50"),
        "{body}"
    );
    let (status, body) = send(
        http.post(format!("{url}/api/v1/endpoints"))
            .json(&json!({"name": "default", "plugin": "sum"})),
    )
    .await;
    assert_eq!(
        (status, body["min_batch"].as_u64()),
        (StatusCode::CREATED, Some(50))
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn cross_origin_calls_are_allowed_only_from_configured_origins() {
    let http = Client::new();
    let preflight = |url: &str, origin: &str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("{url}/api/v1/endpoints/e/reports"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
    };
    let plain_get = |url: &str| {
        http.get(format!("{url}/api/v1/endpoints"))
            .header("origin", "https://app.example")
            .send()
    };
    let allowed = |response: &reqwest::Response| {
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(
        dir.path(),
        &[("GUARDIAN_CORS_ALLOWED_ORIGINS", "https://app.example")],
    )
    .await;
    let answer = preflight(&url, "https://app.example").await.unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(allowed(&answer).as_deref(), Some("https://app.example"));
    let methods = answer.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let headers = answer.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(headers.contains("authorization"), "{headers}");
    let answer = preflight(&url, "https://evil.example").await.unwrap();
    assert_eq!(allowed(&answer), None);
    // A plain request from the allowed origin is answered for it too.
    let answer = plain_get(&url).await.unwrap();
    assert_eq!(allowed(&answer).as_deref(), Some("https://app.example"));
    server.shutdown().await.unwrap();

    // The default: no origin at all.
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(dir.path(), &[]).await;
    let answer = preflight(&url, "https://app.example").await.unwrap();
    assert_eq!(allowed(&answer), None);
    let answer = plain_get(&url).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(allowed(&answer), None);
    server.shutdown().await.unwrap();
}

/// `bytes` with a custom section appended: another component (another digest)
/// that declares the same name and version.
fn with_custom_section(mut bytes: Vec<u8>, payload: &str) -> Vec<u8> {
    // Section id 0, then its size, the name's length, the name and the payload
    // (all shorter than 128 bytes, so each length is one LEB128 byte).
    let name = b"guardian-test";
    let size = 1 + name.len() + payload.len();
    assert!(size < 128);
    bytes.extend([0, size as u8, name.len() as u8]);
    bytes.extend(name);
    bytes.extend(payload.as_bytes());
    bytes
}

#[tokio::test]
async fn plugins_are_named_by_name_at_version_and_ambiguity_lists_the_digests() {
    let dir = tempfile::tempdir().unwrap();
    let http = Client::new();
    let leaky = fixture("fixture_leaky");
    let leaky_digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&leaky));
    let (server, url) = start(dir.path(), &[("GUARDIAN_PLUGINS_APPROVED", &leaky_digest)]).await;
    let api = format!("{url}/api/v1");
    let (status, uploaded) = send(http.post(format!("{api}/plugins")).body(leaky.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!(uploaded["name"], "leaky");
    let version = uploaded["version"].as_str().unwrap().to_owned();
    let at_version = format!("leaky@{version}");

    // By name, by name@version and by digest: the same plugin, and its bytes.
    for reference in ["leaky", at_version.as_str(), leaky_digest.as_str()] {
        let (status, shown) = send(http.get(format!("{api}/plugins/{reference}"))).await;
        assert_eq!(status, StatusCode::OK, "{reference}: {shown}");
        assert_eq!(shown["digest"], leaky_digest.as_str(), "{reference}");
        let wasm = http
            .get(format!("{api}/plugins/{reference}/wasm"))
            .send()
            .await
            .unwrap();
        assert_eq!(wasm.status(), StatusCode::OK, "{reference}");
        assert_eq!(wasm.bytes().await.unwrap().to_vec(), leaky, "{reference}");
    }
    // An endpoint on it by name@version.
    let (status, created) = send(http.post(format!("{api}/endpoints")).json(&json!({
        "name": "leaks", "plugin": at_version, "min_batch": 10
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["plugin_digest"], leaky_digest.as_str(), "{created}");

    // A version this server lacks: the versions and digests it holds.
    let (status, error) = send(http.get(format!("{api}/plugins/leaky@99.0.0"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert_eq!(error["error"]["code"], "unknown_plugin");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{at_version} (digest {leaky_digest})")),
        "{message}"
    );
    // A name it lacks: the names it knows, built-ins included.
    let (status, error) = send(http.post(format!("{api}/endpoints")).json(&json!({
        "name": "nope", "plugin": "variance"
    })))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert_eq!(error["error"]["code"], "unknown_plugin");
    let message = error["error"]["message"].as_str().unwrap();
    for known in [at_version.as_str(), "sum@", "dp-histogram@"] {
        assert!(message.contains(known), "{known:?} in {message}");
    }

    // Other bytes declaring the same name and version: the name and the
    // name@version become ambiguous (409), and the message lists both digests.
    let twin = with_custom_section(leaky.clone(), "twin");
    let twin_digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&twin));
    let (status, uploaded) = send(http.post(format!("{api}/plugins")).body(twin)).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!(uploaded["name"], "leaky");
    assert_eq!(uploaded["version"], version.as_str());
    for request in [
        http.get(format!("{api}/plugins/leaky")),
        http.get(format!("{api}/plugins/{at_version}/wasm")),
        http.post(format!("{api}/endpoints"))
            .json(&json!({"name": "leaks2", "plugin": "leaky", "min_batch": 10})),
    ] {
        let (status, error) = send(request).await;
        assert_eq!(status, StatusCode::CONFLICT, "{error}");
        assert_eq!(error["error"]["code"], "ambiguous_plugin", "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        for digest in [&leaky_digest, &twin_digest] {
            assert!(
                message.contains(&format!("{at_version} (digest {digest})")),
                "{message}"
            );
        }
    }
    // Digests still tell them apart.
    let (status, shown) = send(http.get(format!("{api}/plugins/{twin_digest}"))).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["digest"], twin_digest.as_str());

    // An upload calling itself like a built-in: the built-in's name (and its
    // name@version) keep meaning the built-in; the upload has its digest.
    let (status, builtin) = send(http.get(format!("{api}/plugins/sum"))).await;
    assert_eq!(status, StatusCode::OK, "{builtin}");
    assert_eq!(builtin["builtin"], true);
    let sum_version = builtin["version"].as_str().unwrap().to_owned();
    let builtin_digest = builtin["digest"].as_str().unwrap().to_owned();
    let builtin_wasm = http
        .get(format!("{api}/plugins/sum@{sum_version}/wasm"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let imposter = with_custom_section(builtin_wasm, "imposter");
    let (status, uploaded) = send(http.post(format!("{api}/plugins")).body(imposter)).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!(uploaded["name"], "sum");
    assert_eq!(uploaded["builtin"], false);
    for reference in ["sum".to_owned(), format!("sum@{sum_version}")] {
        let (status, shown) = send(http.get(format!("{api}/plugins/{reference}"))).await;
        assert_eq!(status, StatusCode::OK, "{reference}: {shown}");
        assert_eq!(shown["digest"], builtin_digest.as_str(), "{reference}");
    }
    let (status, error) = send(http.get(format!("{api}/plugins/sum@99.0.0"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "sum@{sum_version} (digest {builtin_digest}, built-in)"
        )),
        "{message}"
    );
    assert!(
        message.contains(uploaded["digest"].as_str().unwrap()),
        "{message}"
    );
    server.shutdown().await.unwrap();
}
