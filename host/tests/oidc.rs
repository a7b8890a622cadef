//! Authentication against a real OpenID provider: panva's `oidc-provider` from npm
//! (pinned in `tests/oidc/package-lock.json`), run by Node on loopback by
//! `tests/oidc/provider.mjs`.
//!
//! The server learns everything from the issuer URL (OIDC discovery), the test's
//! clients get JWT access tokens from the provider's token endpoint with the
//! client-credentials grant, and every check is real HTTP against an in-process
//! server on port 0. Each provider client stands for one role, carried in the claim
//! `https://guardian.test/roles` under the provider's own names, which the server's
//! role source maps onto app roles.
//!
//! The provider must be installed (`npm ci --prefix tests/oidc`, which `cargo xtask test`
//! does). Without Node or the package the tests fail and say so: they never skip.
//! Every wait has a deadline, and nothing waits by sleeping: the key-refetch cooldown
//! is passed by moving an injected clock.

// Helpers below run only inside tests.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use guardian::auth::{AuthFuture, Authenticator, Clock, JwtAuthenticator, SystemClock};
use guardian::config::{Config, Environment, load};
use guardian::server::Server;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The audience the server accepts.
const AUDIENCE: &str = "https://guardian.test";
/// Another API the same provider issues tokens for.
const OTHER_AUDIENCE: &str = "https://other.test";
/// Where the provider puts each client's roles.
const ROLES_CLAIM: &str = "https://guardian.test/roles";
/// Longest wait for the provider to start or stop.
const DEADLINE: Duration = Duration::from_secs(30);

/// The provider's clients (see `provider.mjs`), in the order the matrix runs them:
/// the admin last, so that its delete happens after everyone else was refused.
const REPORTER: &str = "reporter";
const BUILDER: &str = "builder";
const RESEARCHER: &str = "researcher";
const STRANGER: &str = "stranger";
const OPERATOR: &str = "operator";
const CLIENTS: [&str; 5] = [REPORTER, BUILDER, RESEARCHER, STRANGER, OPERATOR];

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc")
}

/// A running `provider.mjs`, killed when dropped.
struct Provider {
    /// The Node process (`kill_on_drop`, so a failing test leaves nothing behind).
    child: Child,
    /// `http://127.0.0.1:PORT`, exactly as the provider names itself.
    issuer: String,
}

impl Provider {
    /// Starts the provider on `port` (0: any free port) signing with key `kid`, and
    /// waits until it listens. Its standard error goes to `log`, shown if it fails.
    async fn start(port: u16, kid: &str, log: PathBuf) -> Provider {
        let dir = oidc_dir();
        assert!(
            dir.join("node_modules/oidc-provider/package.json")
                .is_file(),
            "oidc-provider is not installed in {}: `cargo xtask test` installs it \
             (npm ci, needs Node.js 20 or later), then runs every test. This test never skips.",
            dir.display()
        );
        let stderr = std::fs::File::create(&log).unwrap();
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .arg(port.to_string())
            .arg(kid)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `node` ({e}): install Node.js 20 or later; this test never skips"
                )
            });
        let stdout = child.stdout.take().unwrap();
        let ready = tokio::time::timeout(DEADLINE, async {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(issuer) = line.strip_prefix("READY ") {
                    return Some(issuer.to_owned());
                }
            }
            None
        })
        .await;
        let Ok(Some(issuer)) = ready else {
            let _ = child.kill().await;
            panic!(
                "the OIDC provider did not start within {DEADLINE:?} (port {port}); its stderr:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Provider { child, issuer }
    }

    /// The port the provider listens on.
    fn port(&self) -> u16 {
        self.issuer.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Kills the provider (as a crash would) and waits until it is gone.
    async fn stop(mut self) {
        tokio::time::timeout(DEADLINE, self.child.kill())
            .await
            .expect("the OIDC provider did not exit")
            .unwrap();
    }
}

/// Fetches tokens from a provider the way any OAuth client would: token endpoint
/// from the discovery document, client-credentials grant, HTTP Basic client secret.
struct TokenClient {
    http: Client,
    token_endpoint: String,
}

impl TokenClient {
    async fn discover(http: &Client, issuer: &str) -> TokenClient {
        let document: Value = http
            .get(format!("{issuer}/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(document["issuer"], issuer);
        TokenClient {
            http: http.clone(),
            token_endpoint: document["token_endpoint"].as_str().unwrap().to_owned(),
        }
    }

    /// An access token for `client`, for the API `resource`.
    async fn token(&self, client: &str, resource: &str) -> String {
        let response = self
            .http
            .post(&self.token_endpoint)
            .basic_auth(client, Some(format!("{client}-secret")))
            .form(&[("grant_type", "client_credentials"), ("resource", resource)])
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "token for {client}: {body}");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

/// The server's environment: keys by discovery from `issuer`, the provider's role
/// names mapped onto app roles.
fn server_config(issuer: &str, dir: &Path) -> Config {
    let role_sources = json!([{
        "claim": [ROLES_CLAIM],
        "format": "array",
        "roles": {
            "reporter": "user",
            "plugin-dev": "developer",
            "researcher": "scientist",
            "ops-admin": "admin",
        },
    }]);
    let vars = [
        ("GUARDIAN_SERVER_LISTEN", "127.0.0.1:0".to_owned()),
        ("GUARDIAN_SERVER_DATA_DIR", dir.display().to_string()),
        ("GUARDIAN_AUTH_ISSUER", issuer.to_owned()),
        ("GUARDIAN_AUTH_AUDIENCES", AUDIENCE.to_owned()),
        ("GUARDIAN_AUTH_ROLE_SOURCES", role_sources.to_string()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    load(None, &Environment::new().with_process(vars))
        .unwrap()
        .config
}

/// Sends a request and returns (status, JSON body or Null).
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// `GET /api/v1/me` with `token`: (status, body).
async fn me(http: &Client, url: &str, token: &str) -> (StatusCode, Value) {
    send(http.get(format!("{url}/api/v1/me")).bearer_auth(token)).await
}

/// Asserts a 401 with `code` and a `Bearer` challenge (RFC 6750).
async fn check_refused(request: reqwest::RequestBuilder, code: &str, what: &str) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some(code)),
        "{what}: {body}"
    );
    let challenge = challenge.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    // RFC 6750 section 3.1: a request without credentials gets no error code, so
    // only a token that was presented must be called invalid.
    if code != "missing_token" {
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
    }
}

/// The JSON of a token's part `index` (0 header, 1 claims).
fn part(token: &str, index: usize) -> Value {
    let segment = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

/// One route of the matrix: the request each client sends, who may send it and the
/// status they then get.
struct Row {
    what: &'static str,
    /// The request for one client (method, path under `/api/v1`, JSON body).
    request: fn(&str) -> (Method, String, Option<Value>),
    allowed: &'static [&'static str],
    status: StatusCode,
}

#[tokio::test]
async fn roles_from_a_real_provider_decide_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(0, "first-key", dir.path().join("provider.log")).await;
    let server = Server::start(server_config(&provider.issuer, &dir.path().join("server")))
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let http = Client::new();
    let provider_client = TokenClient::discover(&http, &provider.issuer).await;
    let mut tokens = Vec::new();
    for client in CLIENTS {
        tokens.push((client, provider_client.token(client, AUDIENCE).await));
    }
    let token = |client: &str| {
        tokens
            .iter()
            .find(|(c, _)| *c == client)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    // What the provider really issues: RS256 JWTs of type at+jwt, the client as
    // subject, the roles in a claim named by a URL.
    let header = part(&token(REPORTER), 0);
    assert_eq!(
        (header["alg"].as_str(), header["typ"].as_str()),
        (Some("RS256"), Some("at+jwt"))
    );
    assert_eq!(header["kid"], "first-key");
    let claims = part(&token(REPORTER), 1);
    assert_eq!(claims["iss"], provider.issuer.as_str());
    assert_eq!(claims["aud"], AUDIENCE);
    assert_eq!(claims[ROLES_CLAIM], json!(["reporter"]));

    // Who each client is, to the server.
    let all = json!(["user", "developer", "scientist", "admin"]);
    for (client, roles) in [
        (REPORTER, json!(["user"])),
        (BUILDER, json!(["developer"])),
        (RESEARCHER, json!(["scientist"])),
        (STRANGER, json!([])),
        (OPERATOR, all),
    ] {
        let (status, body) = me(&http, &url, &token(client)).await;
        assert_eq!(status, StatusCode::OK, "{client}: {body}");
        assert_eq!(body, json!({"sub": client, "roles": roles}), "{client}");
    }

    // Fixtures the matrix acts on, made by the roles allowed to.
    let api = format!("{url}/api/v1");
    for name in ["survey", "doomed"] {
        let (status, body) = send(
            http.post(format!("{api}/endpoints"))
                .bearer_auth(token(BUILDER))
                .json(&json!({"name": name, "plugin": "sum", "params": {"length": 2}})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
    }

    let everyone: &[&str] = &CLIENTS;
    let rows = [
        Row {
            what: "who am I",
            request: |_| (Method::GET, "/me".into(), None),
            allowed: everyone,
            status: StatusCode::OK,
        },
        Row {
            what: "post a report",
            request: |who| {
                // One report id per client: made now (servers take only ids
                // within their window), the client's name after the time.
                let mut name = [0u8; 16];
                let who = &who.as_bytes()[..who.len().min(10)];
                name[16 - who.len()..].copy_from_slice(who);
                let id = hex::encode(guardian::report_id::with_time(
                    std::time::SystemTime::now(),
                    name,
                ));
                let share = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
                let body = json!({"report_id": id, "share": share});
                (Method::POST, "/endpoints/survey/reports".into(), Some(body))
            },
            allowed: &[REPORTER, OPERATOR],
            status: StatusCode::CREATED,
        },
        Row {
            what: "create an endpoint",
            request: |who| {
                let body = json!({"name": format!("ep-{who}"), "plugin": "sum"});
                (Method::POST, "/endpoints".into(), Some(body))
            },
            allowed: &[BUILDER, OPERATOR],
            status: StatusCode::CREATED,
        },
        Row {
            what: "upload a plugin (empty, so refused after the role check)",
            request: |_| (Method::POST, "/plugins".into(), None),
            allowed: &[BUILDER, OPERATOR],
            status: StatusCode::BAD_REQUEST,
        },
        Row {
            what: "list plugins",
            request: |_| (Method::GET, "/plugins".into(), None),
            allowed: &[BUILDER, RESEARCHER, OPERATOR],
            status: StatusCode::OK,
        },
        Row {
            what: "show an unknown plugin",
            request: |_| (Method::GET, format!("/plugins/{}", "0".repeat(64)), None),
            allowed: &[BUILDER, RESEARCHER, OPERATOR],
            status: StatusCode::NOT_FOUND,
        },
        Row {
            what: "list endpoints",
            request: |_| (Method::GET, "/endpoints".into(), None),
            allowed: everyone,
            status: StatusCode::OK,
        },
        Row {
            what: "show an endpoint",
            request: |_| (Method::GET, "/endpoints/survey".into(), None),
            allowed: everyone,
            status: StatusCode::OK,
        },
        Row {
            what: "delete an endpoint",
            request: |_| (Method::DELETE, "/endpoints/doomed".into(), None),
            allowed: &[OPERATOR],
            status: StatusCode::NO_CONTENT,
        },
    ];
    for row in &rows {
        for client in CLIENTS {
            let (method, path, body) = (row.request)(client);
            let mut request = http
                .request(method, format!("{api}{path}"))
                .bearer_auth(token(client));
            if let Some(body) = body {
                request = request.json(&body);
            }
            let (status, body) = send(request).await;
            if row.allowed.contains(&client) {
                assert_eq!(status, row.status, "{}: {client}: {body}", row.what);
            } else {
                assert_eq!(
                    (status, body["error"]["code"].as_str()),
                    (StatusCode::FORBIDDEN, Some("missing_role")),
                    "{}: {client}: {body}",
                    row.what
                );
                assert!(
                    !body["error"]["message"].as_str().unwrap().is_empty(),
                    "{}: {client}",
                    row.what
                );
            }
        }
    }
    let (_, shown) = send(
        http.get(format!("{api}/endpoints/survey"))
            .bearer_auth(token(REPORTER)),
    )
    .await;
    assert_eq!(shown["reports"]["unbatched"], 2, "{shown}");

    // Refusals: 401, a stable code and the RFC 6750 challenge.
    check_refused(http.get(format!("{api}/me")), "missing_token", "no token").await;
    let user = token(REPORTER);
    let pieces: Vec<&str> = user.split('.').collect();
    let mut claims = part(&user, 1);
    claims[ROLES_CLAIM] = json!(["ops-admin"]);
    let promoted = format!(
        "{}.{}.{}",
        pieces[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        pieces[2]
    );
    check_refused(
        http.get(format!("{api}/me")).bearer_auth(&promoted),
        "bad_signature",
        "claims rewritten to ops-admin",
    )
    .await;
    let mut signature = URL_SAFE_NO_PAD.decode(pieces[2]).unwrap();
    signature[100] ^= 1;
    let flipped = format!(
        "{}.{}.{}",
        pieces[0],
        pieces[1],
        URL_SAFE_NO_PAD.encode(signature)
    );
    check_refused(
        http.get(format!("{api}/me")).bearer_auth(&flipped),
        "bad_signature",
        "one signature bit flipped",
    )
    .await;
    let elsewhere = provider_client.token(OPERATOR, OTHER_AUDIENCE).await;
    assert_eq!(part(&elsewhere, 1)["aud"], OTHER_AUDIENCE);
    check_refused(
        http.delete(format!("{api}/endpoints/survey"))
            .bearer_auth(&elsewhere),
        "wrong_audience",
        "an admin token for another API",
    )
    .await;
    // The genuine tokens still work after all that.
    assert_eq!(me(&http, &url, &user).await.0, StatusCode::OK);

    server.shutdown().await.unwrap();
    provider.stop().await;
}

/// The real clock, moved forward by the test (so the refetch cooldown can pass
/// without sleeping, while real tokens from the provider stay valid).
#[derive(Default)]
struct MovableClock {
    ahead_secs: AtomicU64,
}

impl Clock for MovableClock {
    fn now(&self) -> Duration {
        SystemClock.now() + Duration::from_secs(self.ahead_secs.load(Ordering::SeqCst))
    }
}

/// The server's authenticator, shared with the test so that it can count key loads
/// and signature checks.
struct Shared(Arc<JwtAuthenticator>);

impl Authenticator for Shared {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a> {
        self.0.authenticate(parts)
    }
}

#[tokio::test]
async fn rotated_keys_are_picked_up_and_cached_keys_outlive_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(0, "before", dir.path().join("provider-1.log")).await;
    let issuer = provider.issuer.clone();
    let config = server_config(&issuer, &dir.path().join("server"));
    let cooldown = config.auth.jwks_refetch_cooldown_secs;
    let clock = Arc::new(MovableClock::default());
    let auth = Arc::new(
        JwtAuthenticator::with_clock(&config.auth, clock.clone())
            .await
            .unwrap(),
    );
    assert_eq!(auth.keys().loads(), 1, "keys are loaded once at start");
    let server = Server::start_with(config, Box::new(Shared(auth.clone())))
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let http = Client::new();

    let tokens = TokenClient::discover(&http, &issuer).await;
    let used = tokens.token(REPORTER, AUDIENCE).await;
    let unused = tokens.token(BUILDER, AUDIENCE).await;
    let retired = tokens.token(RESEARCHER, AUDIENCE).await;
    assert_eq!(me(&http, &url, &used).await.0, StatusCode::OK);

    // The provider goes away: a token the server has never seen is still verified,
    // with the keys it holds, and nothing is fetched.
    let port = provider.port();
    provider.stop().await;
    let checks = auth.signature_checks();
    let (status, body) = me(&http, &url, &unused).await;
    assert_eq!(
        (status, body["sub"].as_str()),
        (StatusCode::OK, Some(BUILDER)),
        "{body}"
    );
    assert_eq!(auth.signature_checks(), checks + 1, "verified, not cached");
    assert_eq!(auth.keys().loads(), 1, "no fetch while the keys are known");

    // It comes back on the same address with a new key. The first token naming the
    // new kid makes the server fetch the keys once (the cooldown since the start has
    // passed on the server's clock).
    let provider = Provider::start(port, "after", dir.path().join("provider-2.log")).await;
    assert_eq!(provider.issuer, issuer);
    let tokens = TokenClient::discover(&http, &issuer).await;
    let rotated = tokens.token(OPERATOR, AUDIENCE).await;
    assert_eq!(part(&rotated, 0)["kid"], "after");
    clock.ahead_secs.store(cooldown, Ordering::SeqCst);
    let (status, body) = me(&http, &url, &rotated).await;
    assert_eq!(
        (status, body["sub"].as_str()),
        (StatusCode::OK, Some(OPERATOR)),
        "{body}"
    );
    assert_eq!(auth.keys().loads(), 2, "one fetch for the new kid");

    // The old key is gone from the provider, so a token signed with it that the server
    // has not verified yet is refused, without another fetch within the cooldown; one
    // verified before stays in the token cache until its own expiry.
    check_refused(
        http.get(format!("{url}/api/v1/me")).bearer_auth(&retired),
        "unknown_key",
        "a token signed with the retired key",
    )
    .await;
    assert_eq!(
        auth.keys().loads(),
        2,
        "no second fetch within the cooldown"
    );
    assert_eq!(me(&http, &url, &used).await.0, StatusCode::OK);

    server.shutdown().await.unwrap();
    provider.stop().await;
}
