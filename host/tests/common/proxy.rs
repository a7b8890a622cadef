//! A proxy between share servers, driven by the tests: it forwards every request
//! to its target server and can cut a peer step, delay or rewrite its answer, as
//! a partition, a slow network or a dishonest operator of the target would.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Rewrites the JSON answer of a step (called with the step's name).
type Rewrite = Box<dyn Fn(&str, &mut Value) + Send + Sync>;

#[derive(Default)]
struct Rules {
    /// How long to hold the answer of each step before passing it on.
    delay_answer: HashMap<String, Duration>,
    /// Steps answered 503 without reaching the target.
    cut: HashSet<String>,
    rewrite: Option<Rewrite>,
}

struct Shared {
    target: String,
    client: reqwest::Client,
    rules: Mutex<Rules>,
}

/// A running proxy; stops when dropped.
pub struct PeerProxy {
    /// Where to send requests meant for the target.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerProxy {
    /// Starts a proxy on loopback port 0 in front of `target` (a base URL).
    pub async fn start(target: String) -> PeerProxy {
        let shared = Arc::new(Shared {
            target,
            client: reqwest::Client::new(),
            rules: Mutex::new(Rules::default()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        PeerProxy { url, shared, task }
    }

    /// Holds every answer of `step` (`prepare`, `commit`, `abort`) for `delay`.
    pub fn delay_answer(&self, step: &str, delay: Duration) {
        self.shared
            .rules
            .lock()
            .unwrap()
            .delay_answer
            .insert(step.to_owned(), delay);
    }

    /// Cuts (`true`) or restores every request of `step`: a cut one never reaches
    /// the target and is answered 503.
    pub fn cut(&self, step: &str, cut: bool) {
        let mut rules = self.shared.rules.lock().unwrap();
        if cut {
            rules.cut.insert(step.to_owned());
        } else {
            rules.cut.remove(step);
        }
    }

    /// Rewrites every JSON answer with `rewrite(step, answer)`.
    pub fn rewrite(&self, rewrite: impl Fn(&str, &mut Value) + Send + Sync + 'static) {
        self.shared.rules.lock().unwrap().rewrite = Some(Box::new(rewrite));
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let step = parts.uri.path().rsplit('/').next().unwrap_or("").to_owned();
    if shared.rules.lock().unwrap().cut.contains(&step) {
        let body = r#"{"error":{"code":"cut","message":"cut by the test proxy"}}"#;
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            headers.insert(name.clone(), value.clone());
        }
    }
    let answer = shared
        .client
        .request(parts.method, format!("{}{path}", shared.target))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(answer) = answer else {
        return (StatusCode::BAD_GATEWAY, "target unreachable").into_response();
    };
    let status = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    let mut bytes: Bytes = answer.bytes().await.unwrap_or_default();
    let delay = shared
        .rules
        .lock()
        .unwrap()
        .delay_answer
        .get(&step)
        .copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if let Ok(mut json) = serde_json::from_slice::<Value>(&bytes) {
        let rules = shared.rules.lock().unwrap();
        if let Some(rewrite) = &rules.rewrite {
            rewrite(&step, &mut json);
            bytes = serde_json::to_vec(&json).unwrap().into();
        }
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap();
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert("content-type", content_type.as_bytes().try_into().unwrap());
    }
    response
}

/// A TCP relay that delays everything (bytes and the close) by `latency` in each
/// direction: a long link between servers, over which a connection one side
/// closed still looks open to the other for `latency`.
pub struct SlowLink {
    /// Where to send requests meant for the target.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    /// Starts a relay on loopback port 0 to `target` (host:port).
    pub async fn start(target: String, latency: Duration) -> SlowLink {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            while let Ok((near, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(far) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (near_read, near_write) = near.into_split();
                    let (far_read, far_write) = far.into_split();
                    tokio::join!(
                        delayed(near_read, far_write, latency),
                        delayed(far_read, near_write, latency)
                    );
                });
            }
        });
        SlowLink { url, task }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk and the end `latency` after it was read.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Duration,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let read = async move {
        let mut buffer = vec![0; 64 << 10];
        loop {
            let chunk = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(buffer[..n].to_vec()),
            };
            let end = chunk.is_none();
            if sender
                .send((tokio::time::Instant::now() + latency, chunk))
                .is_err()
                || end
            {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = receiver.recv().await {
            tokio::time::sleep_until(due).await;
            match chunk {
                Some(chunk) if to.write_all(&chunk).await.is_ok() => {}
                _ => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::join!(read, write);
}
