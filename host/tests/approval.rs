//! Operator approval of plugins, end to end: real `guardian serve` processes
//! (the approval is each server's configuration, `GUARDIAN_PLUGINS_APPROVED`)
//! and the real command line. The plugin is the `leaky` fixture, whose shard
//! hands server 0 every measurement in the clear: uploading
//! it works, but no endpoint is created on it, and no client shards with it,
//! until every operator approved its digest; revoking the approval on one
//! server stops reports there while the stored ones stay counted and sealable.

// Helpers below run only inside tests.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

mod common;

use common::Cluster;

const GUARDIAN: &str = env!("CARGO_BIN_EXE_guardian");

fn leaky_plugin() -> PathBuf {
    Path::new(env!("GUARDIAN_FIXTURES_DIR")).join("fixture_leaky.wasm")
}

/// Runs the command line against every server of `cluster` (authentication is
/// off on them, so no token).
fn cli(cluster: &Cluster, args: &[&str]) -> Output {
    let servers: Vec<String> = (0..cluster.n()).map(|i| cluster.base(i)).collect();
    Command::new(GUARDIAN)
        .args(args)
        .env_remove("GUARDIAN_TOKEN")
        .env("GUARDIAN_SERVERS", servers.join(","))
        .current_dir(cluster.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and returns stdout.
#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "expected success\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts failure and returns stderr.
#[track_caller]
fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

#[track_caller]
fn contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in:\n{haystack}"
    );
}

/// Restarts every server in `which` with `GUARDIAN_PLUGINS_APPROVED=approved`.
async fn restart(cluster: &mut Cluster, which: &[usize], approved: &str) {
    for &index in which {
        cluster.kill(index);
        cluster
            .launch(index, &[("GUARDIAN_PLUGINS_APPROVED", approved)])
            .await;
    }
}

#[tokio::test]
async fn only_plugins_every_operator_approved_collect_reports() {
    let path = leaky_plugin();
    let path = path.to_str().unwrap();
    let digest = hex::encode(Sha256::digest(std::fs::read(path).unwrap()));
    let mut cluster = Cluster::start(2).await;

    // Uploading works on every server, and says what the operators must do.
    let out = ok(&cli(&cluster, &["plugin", "upload", path]));
    assert_eq!(out.matches(": created").count(), 2, "{out}");
    contains(&out, "not approved on server 0");
    contains(
        &out,
        &format!("GUARDIAN_PLUGINS_APPROVED={digest} (plugins.approved) and restart"),
    );
    let (status, plugins) = cluster.get(0, "/api/v1/plugins").await;
    assert_eq!(status, StatusCode::OK);
    for plugin in plugins["plugins"].as_array().unwrap() {
        let builtin = plugin["builtin"].as_bool().unwrap();
        assert_eq!(plugin["approved"], builtin, "built-ins only: {plugin}");
    }

    // No endpoint on it: 403, with the full digest and how to approve it.
    let create = json!({"name": "leaky", "plugin": digest, "params": {},
        "min_batch": 2});
    for index in 0..2 {
        let (status, body) = cluster
            .post(index, "/api/v1/endpoints", create.clone())
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "plugin_not_approved");
        let message = body["error"]["message"].as_str().unwrap();
        for part in [
            digest.as_str(),
            "plugins.approved",
            "GUARDIAN_PLUGINS_APPROVED",
        ] {
            contains(message, part);
        }
    }
    let error = fails(&cli(
        &cluster,
        &[
            "endpoint",
            "create",
            "leaky",
            "--plugin",
            &digest,
            "--min-batch",
            "2",
        ],
    ));
    contains(&error, "plugin_not_approved");
    assert!(!error.contains("role"), "not a matter of roles: {error}");

    // Approved on both servers: the endpoint is made and submit works.
    restart(&mut cluster, &[0, 1], &digest).await;
    cluster
        .create_endpoint("leaky", &digest, json!({}), 2)
        .await;
    for value in ["1", "0", "1"] {
        ok(&cli(&cluster, &["submit", "leaky", "--value", value]));
    }

    // Server 1's operator revokes it: approved on server 0 only. The client
    // refuses to shard and names server 1; server 1 refuses reports itself.
    restart(&mut cluster, &[1], "").await;
    let error = fails(&cli(&cluster, &["submit", "leaky", "--value", "1"]));
    contains(&error, &format!("server 1 ({})", cluster.base(1)));
    contains(&error, "has not approved");
    contains(&error, &format!("GUARDIAN_PLUGINS_APPROVED={digest}"));
    let (status, body) = cluster
        .post(
            1,
            "/api/v1/endpoints/leaky/reports",
            json!({"report_id": "0123456789abcdef0123456789abcdef", "share": "AQAAAAAAAAA="}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "plugin_not_approved");
    contains(body["error"]["message"].as_str().unwrap(), &digest);

    // The stored reports stay counted on both servers, nothing new arrived, and
    // the views say where the plugin is approved.
    for index in 0..2 {
        let (status, shown) = cluster.get(index, "/api/v1/endpoints/leaky").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(shown["reports"]["unbatched"], 3, "server {index}: {shown}");
        assert_eq!(shown["approved"], index == 0, "server {index}: {shown}");
        let (_, listed) = cluster.get(index, "/api/v1/endpoints").await;
        let listed: Vec<&Value> = listed["endpoints"].as_array().unwrap().iter().collect();
        assert_eq!(listed[0]["approved"], index == 0, "server {index}");
        let (_, plugin) = cluster
            .get(index, &format!("/api/v1/plugins/{digest}"))
            .await;
        assert_eq!(plugin["approved"], index == 0, "server {index}: {plugin}");
    }

    // What was stored before the revocation can still be sealed and collected.
    let (status, sealed) = cluster.seal("leaky").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 3);
    let out = ok(&cli(&cluster, &["collect", "leaky", "--total", "--json"]));
    let total: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (total["count"].clone(), total["result"].clone()),
        (json!(3), json!(2))
    );
}
