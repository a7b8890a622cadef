//! The OpenAPI document, fetched from a real server (in process, on port 0, with
//! the development issuer and a peer credential): it is an OpenAPI 3 document,
//! it lists exactly the routes of DESIGN.md section 5 plus the peer routes, and
//! every operation it lists is served, answers only statuses it documents and
//! documents its errors with the shared error body.

// Helpers below run only inside tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use guardian::config::Role;
use guardian::server::Server;
use reqwest::{Client, Method};
use serde_json::{Value, json};

mod common;

use common::PEER_TOKEN;

/// Every public route: (method, path, security scheme or "" for none). The
/// routes clients and tests depend on (DESIGN.md section 5) and the peers'.
const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/healthz", ""),
    ("get", "/readyz", ""),
    ("get", "/metrics", ""),
    ("get", "/api/v1/openapi.json", ""),
    ("get", "/api/v1/me", "bearer"),
    ("post", "/api/v1/plugins", "bearer"),
    ("get", "/api/v1/plugins", "bearer"),
    ("get", "/api/v1/plugins/{digest}", "bearer"),
    ("get", "/api/v1/plugins/{digest}/wasm", "bearer"),
    ("post", "/api/v1/endpoints", "bearer"),
    ("get", "/api/v1/endpoints", "bearer"),
    ("get", "/api/v1/endpoints/{name}", "bearer"),
    ("delete", "/api/v1/endpoints/{name}", "bearer"),
    ("post", "/api/v1/endpoints/{name}/reports", "bearer"),
    ("post", "/api/v1/endpoints/{name}/reports/bulk", "bearer"),
    ("post", "/api/v1/endpoints/{name}/batches", "bearer"),
    ("get", "/api/v1/endpoints/{name}/batches", "bearer"),
    (
        "get",
        "/api/v1/endpoints/{name}/batches/{batch_id}",
        "bearer",
    ),
    (
        "delete",
        "/api/v1/endpoints/{name}/batches/{batch_id}",
        "bearer",
    ),
    ("get", "/api/v1/endpoints/{name}/total", "bearer"),
    ("post", "/peer/v1/endpoints/{name}/prepare", "peer"),
    ("post", "/peer/v1/endpoints/{name}/commit", "peer"),
    ("post", "/peer/v1/endpoints/{name}/recommit", "peer"),
    ("post", "/peer/v1/endpoints/{name}/abort", "peer"),
    ("post", "/peer/v1/endpoints/{name}/verify", "peer"),
    ("post", "/peer/v1/endpoints/{name}/messages", "peer"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn start(dir: &Path) -> (Server, String) {
    let server = common::start_dev_server(dir, &[]).await;
    let url = format!("http://{}", server.local_addr());
    (server, url)
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(document: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("{reference} is not a local reference"));
    document
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{reference} does not resolve"))
}

/// Every `$ref` anywhere in `value`.
fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| references(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_describes_every_route_the_server_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(dir.path()).await;
    let admin = common::dev_token(dir.path(), Role::Admin, "openapi-test");
    let http = Client::new();

    // Served without a token, as JSON.
    let response = http
        .get(format!("{url}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let document: Value = response.json().await.unwrap();

    // OpenAPI 3, by structure.
    let version = document["openapi"].as_str().unwrap();
    assert!(version.starts_with("3."), "openapi is {version}");
    assert!(document["info"]["title"].is_string());
    assert!(document["info"]["version"].is_string());
    let schemes = &document["components"]["securitySchemes"];
    for scheme in ["bearer", "peer"] {
        assert_eq!(schemes[scheme]["type"], "http", "{scheme}");
        assert_eq!(schemes[scheme]["scheme"], "bearer", "{scheme}");
    }
    let mut refs = Vec::new();
    references(&document, &mut refs);
    for reference in &refs {
        resolve(&document, reference);
    }

    // Exactly the expected operations, each with its security scheme.
    let paths = document["paths"].as_object().unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            assert!(METHODS.contains(&method.as_str()), "{method} {path}");
            let scheme = operation["security"]
                .as_array()
                .map(|list| {
                    let names: Vec<&String> = list
                        .iter()
                        .flat_map(|s| s.as_object().unwrap().keys())
                        .collect();
                    assert_eq!(names.len(), 1, "{method} {path}: {list:?}");
                    names[0].clone()
                })
                .unwrap_or_default();
            documented.insert((method.clone(), path.clone(), scheme));
        }
    }
    let expected: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|(m, p, s)| ((*m).to_owned(), (*p).to_owned(), (*s).to_owned()))
        .collect();
    assert_eq!(documented, expected);

    // Every operation: its error answers are the shared error body, an
    // authenticated route documents 401, and a request to it is served (not the
    // router's fallbacks) with a status it documents.
    let error_schema = json!({"$ref": "#/components/schemas/Error"});
    for (method, path, scheme) in &expected {
        let operation = &document["paths"][path][method];
        let responses = operation["responses"].as_object().unwrap();
        for (status, response) in responses {
            let response = match response.get("$ref") {
                Some(Value::String(r)) => resolve(&document, r),
                _ => response,
            };
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"], error_schema,
                    "{method} {path} {status}"
                );
            }
        }
        if !scheme.is_empty() {
            assert!(responses.contains_key("401"), "{method} {path}");
        }
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let name = parameter["name"].as_str().unwrap();
            match parameter["in"].as_str() {
                Some("path") => assert!(
                    path.contains(&format!("{{{name}}}")),
                    "{method} {path}: {name}"
                ),
                // The peers' binary bodies (report ids, verifier messages)
                // carry their metadata in the query; listings take their page
                // there, and the batch listing the time to read from.
                Some("query") => assert!(
                    path.ends_with("/prepare")
                        || path.ends_with("/recommit")
                        || path.ends_with("/messages")
                        || (method == "get" && ["limit", "after"].contains(&name))
                        || (method == "get" && path.ends_with("/batches") && name == "since"),
                    "{method} {path}: {name}"
                ),
                other => panic!("{method} {path}: {name} in {other:?}"),
            }
        }

        let concrete = path
            .replace("{digest}", &"ab".repeat(32))
            .replace("{name}", "no-such-endpoint")
            .replace("{batch_id}", &"cd".repeat(16));
        let mut request = http.request(
            Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
            format!("{url}{concrete}"),
        );
        match scheme.as_str() {
            "bearer" => request = request.bearer_auth(&admin),
            "peer" => request = request.bearer_auth(PEER_TOKEN),
            _ => {}
        }
        if method == "post" {
            request = request.json(&json!({}));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16().to_string();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("");
        assert!(
            code != "no_route" && code != "method_not_allowed",
            "{method} {path} is documented but not served: {body}"
        );
        assert!(
            responses.contains_key(&status),
            "{method} {path} answered {status} {body}, which it does not document"
        );

        // And without credentials: 401 with the error body.
        if !scheme.is_empty() {
            let response = http
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    format!("{url}{concrete}"),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 401, "{method} {path}");
            let body: Value = response.json().await.unwrap();
            assert!(body["error"]["code"].is_string(), "{method} {path}: {body}");
        }
    }

    server.shutdown().await.unwrap();
}
