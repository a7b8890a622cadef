//! [`Cluster`]: the share servers a command talks to, in server-index order, and
//! the one place where HTTP answers become values or [`ServerError`]s.
//!
//! Every request names its server by index, so every error can say which server
//! failed. Retries live here too: what may be retried is the caller's choice
//! ([`Retry`]), how (backoff with jitter, one attempt only for a server that is
//! known to be down) is decided once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rand::Rng as _;
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// How long to wait for a TCP connection before calling a server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default budget of one request (sealing may take longer, see [`Request::timeout`]).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What may be retried when a request fails. Either way a 429 is retried only
/// when it says when (`Retry-After`, honoured up to 30 s): one without (a user's
/// quota for the batch is used up) lasts until the next seal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The request is idempotent (a GET, or a report posted again under the same id
    /// with the same share): retry transport errors, 5xx and 429.
    Idempotent,
    /// Retry only answers in which the server says it did nothing and asks to come
    /// back (503, 429); a transport error may hide a success, so it is final.
    WhenAsked,
}

/// Backoff of retried requests.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub attempts: u32,
    /// Delay before the second attempt; it doubles after each failure.
    pub first_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(3),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (0-based), with jitter so that many
    /// clients do not come back in step.
    fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .first_delay
            .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .min(self.max_delay);
        base.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// The share servers of one deployment, in server-index order. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    /// Base URLs, `servers[i]` being server i.
    servers: Vec<Url>,
    /// Bearer token sent with every request, if any.
    token: Option<String>,
    http: reqwest::Client,
    retry: RetryPolicy,
    /// Set when a request to server i failed in transport after every retry, so
    /// that the next requests try once instead of waiting through the backoff
    /// again (a `submit --file` with a server down would otherwise take minutes);
    /// cleared by the next answer from that server.
    down: Vec<AtomicBool>,
}

impl Cluster {
    /// The servers at `urls` (base URLs in server-index order), sending `token`.
    pub fn new(urls: &[String], token: Option<String>) -> anyhow::Result<Self> {
        Self::with_retry(urls, token, RetryPolicy::default())
    }

    /// [`Cluster::new`] with another backoff.
    pub fn with_retry(
        urls: &[String],
        token: Option<String>,
        retry: RetryPolicy,
    ) -> anyhow::Result<Self> {
        let servers = parse_servers(urls)?;
        // Servers over https: the built-in roots and the system's store, or
        // `SSL_CERT_FILE` for a private CA (crate::tls).
        let http = crate::tls::client_builder(&crate::tls::ExtraRoots::default())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("guardian/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        let down = servers.iter().map(|_| AtomicBool::new(false)).collect();
        Ok(Self {
            inner: Arc::new(Inner {
                servers,
                token: token.filter(|t| !t.trim().is_empty()),
                http,
                retry,
                down,
            }),
        })
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.inner.servers.len()
    }

    /// Always false: a cluster has at least one server.
    pub fn is_empty(&self) -> bool {
        self.inner.servers.is_empty()
    }

    /// The base URL of server `index`.
    pub fn url(&self, index: usize) -> &str {
        self.inner.servers[index].as_str().trim_end_matches('/')
    }

    /// `server 1 (https://…)`, the way every message names a server.
    pub fn describe(&self, index: usize) -> String {
        format!("server {index} ({})", self.url(index))
    }

    /// Whether a token is configured.
    pub(crate) fn has_token(&self) -> bool {
        self.inner.token.is_some()
    }

    /// A request to server `index` at the path made of `segments` (each one
    /// percent-encoded, so an endpoint name cannot change the route).
    pub(crate) fn request(&self, index: usize, method: Method, segments: &[&str]) -> Request<'_> {
        let mut url = self.inner.servers[index].clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        Request {
            cluster: self,
            index,
            method,
            url,
            body: None,
            retry: Retry::Idempotent,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// GET every page of a paged listing (`?after=` the previous page's `next`)
    /// and join them, retrying transient failures.
    pub(crate) async fn get_pages<T: DeserializeOwned + Paged>(
        &self,
        index: usize,
        segments: &[&str],
    ) -> Result<T, ServerError> {
        let mut all: T = self.get_json(index, segments).await?;
        let mut after = all.next();
        while let Some(cursor) = after.take() {
            let mut request = self.request(index, Method::GET, segments);
            request.url.query_pairs_mut().append_pair("after", &cursor);
            let page: T = request.send().await?.json()?;
            // Cursors only go forward: a server that repeats one is not followed.
            after = page.next().filter(|next| *next > cursor);
            all.append(page);
        }
        Ok(all)
    }

    /// GET a JSON document, retrying transient failures.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        index: usize,
        segments: &[&str],
    ) -> Result<T, ServerError> {
        self.request(index, Method::GET, segments)
            .send()
            .await?
            .json()
    }
}

/// A page of a listing: where the next one starts, and how to join them.
pub(crate) trait Paged {
    /// The cursor of the next page; `None` after the last.
    fn next(&self) -> Option<String>;
    /// Adds the items of a later page.
    fn append(&mut self, page: Self);
}

fn parse_servers(urls: &[String]) -> anyhow::Result<Vec<Url>> {
    let mut servers = Vec::new();
    for text in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
        let url = Url::parse(text).with_context(|| {
            format!("--servers: {text:?} is not a URL (expected e.g. https://guardian.example.org)")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            bail!("--servers: {text:?} is not an http:// or https:// URL");
        }
        if url.query().is_some() || url.fragment().is_some() {
            bail!("--servers: {text:?} must be a base URL, without ? or #");
        }
        servers.push(url);
    }
    if servers.is_empty() {
        bail!(
            "no share servers given: pass --servers URL,URL,… or set GUARDIAN_SERVERS (in server-index order)"
        );
    }
    Ok(servers)
}

enum Body {
    Json(Vec<u8>),
    Wasm(Vec<u8>),
}

/// One request being built; see [`Cluster::request`].
pub(crate) struct Request<'a> {
    cluster: &'a Cluster,
    index: usize,
    method: Method,
    url: Url,
    body: Option<Body>,
    retry: Retry,
    timeout: Duration,
}

impl Request<'_> {
    /// Sends `value` as the JSON body.
    pub(crate) fn json(mut self, value: &impl Serialize) -> Self {
        // Serialising our own request types cannot fail; an empty body would be
        // refused by the server with a clear message anyway.
        self.body = Some(Body::Json(serde_json::to_vec(value).unwrap_or_default()));
        self
    }

    /// Adds `pairs` to the query string (each percent-encoded).
    pub(crate) fn query(mut self, pairs: &[(&str, String)]) -> Self {
        self.url.query_pairs_mut().extend_pairs(pairs);
        self
    }

    /// Sends `wasm` as an `application/wasm` body.
    pub(crate) fn wasm(mut self, wasm: Vec<u8>) -> Self {
        self.body = Some(Body::Wasm(wasm));
        self
    }

    /// What may be retried (default [`Retry::Idempotent`]).
    pub(crate) fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// The budget of each attempt.
    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request, retrying as allowed; a non-2xx answer is an error.
    pub(crate) async fn send(self) -> Result<Answer, ServerError> {
        let inner = &self.cluster.inner;
        let down = &inner.down[self.index];
        let attempts = if down.load(Ordering::Relaxed) {
            1
        } else {
            inner.retry.attempts.max(1)
        };
        let mut attempt = 0;
        loop {
            let result = self.attempt().await;
            let retryable = match &result {
                Ok(_) => false,
                Err(Failure::Transport(_)) => self.retry == Retry::Idempotent,
                // A 429 without `Retry-After` (a user's quota for the batch) lasts
                // until the next seal: retrying would not help.
                Err(Failure::Status(status, _, retry_after))
                    if *status == StatusCode::TOO_MANY_REQUESTS =>
                {
                    retry_after.is_some()
                }
                Err(Failure::Status(status, _, _)) => match self.retry {
                    Retry::Idempotent => status.is_server_error(),
                    Retry::WhenAsked => *status == StatusCode::SERVICE_UNAVAILABLE,
                },
            };
            attempt += 1;
            if retryable && attempt < attempts {
                let asked = match &result {
                    Err(Failure::Status(_, _, Some(after))) => (*after).min(MAX_RETRY_AFTER),
                    _ => Duration::ZERO,
                };
                tokio::time::sleep(inner.retry.delay(attempt - 1).max(asked)).await;
                continue;
            }
            let transport = matches!(result, Err(Failure::Transport(_)));
            down.store(transport, Ordering::Relaxed);
            return match result {
                Ok(answer) => Ok(answer),
                Err(Failure::Transport(message)) => {
                    Err(self.error(ErrorKind::Unreachable(message)))
                }
                Err(Failure::Status(status, body, _)) => Err(self.error(api_error(status, &body))),
            };
        }
    }

    async fn attempt(&self) -> Result<Answer, Failure> {
        let inner = &self.cluster.inner;
        let mut request = inner
            .http
            .request(self.method.clone(), self.url.clone())
            .timeout(self.timeout);
        if let Some(token) = &inner.token {
            request = request.bearer_auth(token);
        }
        request = match &self.body {
            Some(Body::Json(bytes)) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.clone()),
            Some(Body::Wasm(bytes)) => request
                .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                .body(bytes.clone()),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Transport(error_chain(&e)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.trim().parse().ok())
            .map(Duration::from_secs);
        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::Transport(error_chain(&e)))?;
        if status.is_success() {
            Ok(Answer {
                server: self.index,
                url: self.cluster.url(self.index).to_owned(),
                status,
                body: body.to_vec(),
            })
        } else {
            Err(Failure::Status(status, body.to_vec(), retry_after))
        }
    }

    fn error(&self, kind: ErrorKind) -> ServerError {
        ServerError {
            server: self.index,
            url: self.cluster.url(self.index).to_owned(),
            has_token: self.cluster.has_token(),
            kind,
        }
    }
}

enum Failure {
    Transport(String),
    /// A non-2xx answer, its body and the `Retry-After` it gave, if any.
    Status(StatusCode, Vec<u8>, Option<Duration>),
}

/// The longest `Retry-After` a client waits before retrying on its own.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A successful (2xx) answer.
pub(crate) struct Answer {
    server: usize,
    url: String,
    /// The status, e.g. 201 (created) or 200 (already there).
    pub(crate) status: StatusCode,
    /// The raw body.
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// The body as JSON of type `T`.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, ServerError> {
        serde_json::from_slice(&self.body).map_err(|e| ServerError {
            server: self.server,
            url: self.url.clone(),
            has_token: true,
            kind: ErrorKind::BadAnswer(format!("unexpected answer ({e})")),
        })
    }
}

/// The text of an error and its sources, without repeating a source that its
/// parent already quoted.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

fn api_error(status: StatusCode, body: &[u8]) -> ErrorKind {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Map<String, Value>,
    }
    if let Ok(Envelope { mut error }) = serde_json::from_slice::<Envelope>(body) {
        let code = match error.remove("code") {
            Some(Value::String(code)) => code,
            _ => format!("http_{}", status.as_u16()),
        };
        let message = match error.remove("message") {
            Some(Value::String(message)) => message,
            _ => String::new(),
        };
        return ErrorKind::Api {
            status: status.as_u16(),
            code,
            message,
            details: error,
        };
    }
    // Not one of ours (a proxy in front of the server, or no server at all).
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(200).collect();
    ErrorKind::Api {
        status: status.as_u16(),
        code: format!("http_{}", status.as_u16()),
        message: if text.is_empty() {
            status.canonical_reason().unwrap_or("").to_owned()
        } else {
            text
        },
        details: Map::new(),
    }
}

/// A server that could not be reached or that refused a request.
#[derive(Debug, Clone)]
pub struct ServerError {
    /// Index of the server, in `--servers` order.
    pub server: usize,
    /// Its base URL.
    pub url: String,
    /// Whether a token was sent (to explain a 401).
    pub(crate) has_token: bool,
    /// What went wrong.
    pub kind: ErrorKind,
}

/// What went wrong with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// No HTTP answer: connection refused, timeout, TLS failure, …
    Unreachable(String),
    /// An error answer.
    Api {
        /// HTTP status.
        status: u16,
        /// The server's stable machine code (`http_<status>` if the answer was
        /// not one of ours).
        code: String,
        /// The server's message for people.
        message: String,
        /// Any other fields of the error object (e.g. `agreed`, `needed`).
        details: Map<String, Value>,
    },
    /// A 2xx answer whose body was not what the API describes.
    BadAnswer(String),
}

impl ServerError {
    /// A stable code for counting failures: the server's code, `unreachable` or
    /// `bad_answer`.
    pub fn code(&self) -> &str {
        match &self.kind {
            ErrorKind::Unreachable(_) => "unreachable",
            ErrorKind::Api { code, .. } => code,
            ErrorKind::BadAnswer(_) => "bad_answer",
        }
    }

    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            ErrorKind::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// An integer field of the error object, e.g. `agreed` of `batch_too_small`.
    pub fn detail(&self, key: &str) -> Option<u64> {
        match &self.kind {
            ErrorKind::Api { details, .. } => details.get(key).and_then(Value::as_u64),
            _ => None,
        }
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = format!("server {} ({})", self.server, self.url);
        match &self.kind {
            ErrorKind::Unreachable(reason) => write!(
                f,
                "{who} could not be reached: {reason} (is it running, and is the URL right?)"
            ),
            ErrorKind::BadAnswer(reason) => write!(f, "{who} gave an {reason}"),
            ErrorKind::Api {
                status: 401,
                code,
                message,
                ..
            } => {
                if self.has_token {
                    write!(
                        f,
                        "{who} refused the token ({code}: {message}); pass a valid one with --token or GUARDIAN_TOKEN"
                    )
                } else {
                    write!(
                        f,
                        "{who} needs a token ({code}: {message}); pass one with --token or set GUARDIAN_TOKEN"
                    )
                }
            }
            // Not a matter of roles: the operator has not approved the plugin, and
            // the message says how they would.
            ErrorKind::Api {
                status: 403,
                code,
                message,
                ..
            } if code == "plugin_not_approved" => write!(f, "{who} refused: {message} ({code})"),
            ErrorKind::Api {
                status: 403,
                code,
                message,
                ..
            } => write!(
                f,
                "{who} refused: {message} ({code}); use a token that carries that role"
            ),
            ErrorKind::Api {
                status,
                code,
                message,
                ..
            } => write!(f, "{who} answered {status} {code}: {message}"),
        }
    }
}

impl std::error::Error for ServerError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 429 with `Retry-After` (a rate limit) is retried; one without (a user's
    /// quota for the batch) is final at once. Against a real HTTP server.
    #[tokio::test]
    async fn a_429_is_retried_only_when_it_says_when() {
        use std::sync::atomic::AtomicU32;

        use axum::http::header::RETRY_AFTER;
        use axum::response::IntoResponse;

        let hits = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let (rate, quota) = (hits.clone(), hits.clone());
        let app = axum::Router::new()
            .route(
                "/rate",
                axum::routing::get(move || async move {
                    // Limited once, then served.
                    if rate[0].fetch_add(1, Ordering::SeqCst) == 0 {
                        (StatusCode::TOO_MANY_REQUESTS, [(RETRY_AFTER, "0")]).into_response()
                    } else {
                        "{}".into_response()
                    }
                }),
            )
            .route(
                "/quota",
                axum::routing::get(move || async move {
                    quota[1].fetch_add(1, Ordering::SeqCst);
                    StatusCode::TOO_MANY_REQUESTS
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let policy = RetryPolicy {
            attempts: 3,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        };
        let cluster = Cluster::with_retry(&[url], None, policy).unwrap();
        let answer = cluster.request(0, Method::GET, &["rate"]).send().await;
        assert!(answer.is_ok(), "retried after the rate limit");
        assert_eq!(hits[0].load(Ordering::SeqCst), 2);
        let refused = cluster.request(0, Method::GET, &["quota"]).send().await;
        assert!(refused.is_err());
        assert_eq!(hits[1].load(Ordering::SeqCst), 1, "a quota is not retried");
    }

    #[test]
    fn servers_are_checked_and_kept_in_order() {
        let urls = [
            "http://a:1".to_owned(),
            " https://b/x/ ".to_owned(),
            String::new(),
        ];
        let servers = parse_servers(&urls).unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].as_str(), "https://b/x/");
        assert!(parse_servers(&[String::new()]).is_err());
        assert!(parse_servers(&["ftp://a".to_owned()]).is_err());
        assert!(parse_servers(&["a:b:c".to_owned()]).is_err());
    }

    #[test]
    fn paths_are_appended_to_the_base_and_encoded() {
        let cluster = Cluster::new(&["https://h/prefix/".to_owned()], None).unwrap();
        let request = cluster.request(0, Method::GET, &["api", "v1", "endpoints", "a/b"]);
        assert_eq!(
            request.url.as_str(),
            "https://h/prefix/api/v1/endpoints/a%2Fb"
        );
        assert_eq!(cluster.url(0), "https://h/prefix");
    }

    #[test]
    fn error_bodies_become_codes_and_details() {
        let body =
            br#"{"error": {"code": "batch_too_small", "message": "m", "agreed": 2, "needed": 3}}"#;
        let error = ServerError {
            server: 0,
            url: "http://s".into(),
            has_token: true,
            kind: api_error(StatusCode::CONFLICT, body),
        };
        assert_eq!(error.code(), "batch_too_small");
        assert_eq!(error.detail("agreed"), Some(2));
        assert_eq!(error.detail("needed"), Some(3));
        assert_eq!(error.status(), Some(409));
        let kind = api_error(StatusCode::BAD_GATEWAY, b"<html>nope</html>");
        assert!(matches!(kind, ErrorKind::Api { ref code, .. } if code == "http_502"));
    }

    #[test]
    fn a_missing_token_is_named() {
        let error = ServerError {
            server: 1,
            url: "http://s".into(),
            has_token: false,
            kind: api_error(
                StatusCode::UNAUTHORIZED,
                br#"{"error": {"code": "missing_token", "message": "no bearer token"}}"#,
            ),
        };
        let text = error.to_string();
        assert!(
            text.starts_with("server 1 (http://s) needs a token"),
            "{text}"
        );
        assert!(text.contains("GUARDIAN_TOKEN"), "{text}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
        };
        assert!(policy.delay(0) <= Duration::from_millis(100));
        assert!(policy.delay(0) >= Duration::from_millis(50));
        assert!(policy.delay(10) <= Duration::from_millis(300));
        assert!(policy.delay(40) >= Duration::from_millis(150));
    }
}
