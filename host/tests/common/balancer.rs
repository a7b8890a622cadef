//! A load balancer in front of one server's replicas, as an operator runs one:
//! every request goes to the next replica in turn, skipping the ones that refuse
//! connections (down). It records which replica answered each request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use reqwest::Client;

struct Balanced {
    targets: Vec<String>,
    next: AtomicUsize,
    /// Per answered request: the last segment of its path (a peer step's
    /// name) and the replica that answered.
    answered: Mutex<Vec<(String, usize)>>,
    client: Client,
}

/// A running balancer; stops when dropped.
pub struct Balancer {
    pub url: String,
    shared: Arc<Balanced>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Starts a balancer on loopback port 0 in front of `targets` (base URLs).
    pub async fn start(targets: Vec<String>) -> Balancer {
        let shared = Arc::new(Balanced {
            targets,
            next: AtomicUsize::new(0),
            answered: Mutex::default(),
            // A new connection per request: a killed replica refuses it at once.
            client: Client::builder().pool_max_idle_per_host(0).build().unwrap(),
        });
        let app = axum::Router::new()
            .fallback(balance)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Balancer { url, shared, task }
    }

    /// How many requests each replica answered.
    pub fn answered(&self) -> Vec<u64> {
        let mut counts = vec![0; self.shared.targets.len()];
        for (_, replica) in self.log() {
            counts[replica] += 1;
        }
        counts
    }

    /// Every answered request in order: the last segment of its path and the
    /// replica that answered it.
    pub fn log(&self) -> Vec<(String, usize)> {
        self.shared.answered.lock().unwrap().clone()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn balance(State(shared): State<Arc<Balanced>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let step = parts.uri.path().rsplit('/').next().unwrap_or("").to_owned();
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            headers.insert(name.clone(), value.clone());
        }
    }
    let first = shared.next.fetch_add(1, Ordering::Relaxed);
    let n = shared.targets.len();
    for attempt in 0..n {
        let target = (first + attempt) % n;
        let sent = shared
            .client
            .request(
                parts.method.clone(),
                format!("{}{path}", shared.targets[target]),
            )
            .headers(headers.clone())
            .body(body.clone())
            .send()
            .await;
        let answer = match sent {
            Ok(answer) => answer,
            // Down: the next replica.
            Err(e) if e.is_connect() => continue,
            Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        };
        let status = answer.status();
        let mut answer_headers = HeaderMap::new();
        for (name, value) in answer.headers() {
            if name != "content-length" && name != "transfer-encoding" && name != "connection" {
                answer_headers.insert(name.clone(), value.clone());
            }
        }
        let Ok(bytes) = answer.bytes().await else {
            return (StatusCode::BAD_GATEWAY, "the replica's answer broke off").into_response();
        };
        shared.answered.lock().unwrap().push((step, target));
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        *response.headers_mut() = answer_headers;
        return response;
    }
    (StatusCode::BAD_GATEWAY, "no replica is reachable").into_response()
}
