//! `guardian dashboard`: a local web page for scientists with live charts of every
//! endpoint's released results.
//!
//! The page only ever talks to this process. This process does what `guardian
//! collect` does, through the same functions: it lists the endpoints of every
//! server, fetches every server's share of an endpoint's total, combines them with
//! the plugin's `unshard` (the plugin is fetched from server 0, checked against
//! its digest, and run here in wasmtime on a blocking thread) and serves the
//! result as JSON, together with a [`Chart`] that says how to draw it. The page
//! and the chart library are embedded in the binary, so nothing is loaded from
//! elsewhere.
//!
//! Routes (all local): `GET /` the page, `GET /assets/…` its script, style and
//! Chart.js, `GET /api/endpoints` the endpoints with their report counts, `GET
//! /api/endpoints/{name}/total` the combined total, `POST
//! /api/endpoints/{name}/seal` seals a batch on server 0. Failures are JSON
//! `{"error": {"code", "message", …}}` whose message is the sentence the CLI
//! would print, so the page can show it in place of a chart.
//!
//! Since this process acts with the scientist's token, [`guard`] refuses
//! every request not addressed to it by name (DNS rebinding) and every change
//! that does not come from its own page (CSRF): see there.

mod guard;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::admin::{self, Endpoints};
use super::collect::{self, Collected};
use super::endpoint::{self, LocalEndpoint};
use super::http::{Cluster, ServerError};
use guard::Guard;

pub use guard::TOKEN_HEADER;

const PAGE: &str = include_str!("../../assets/dashboard.html");
/// What the page holds in place of its token (a `<meta>` its script reads).
const TOKEN_SLOT: &str = "{{dashboard_token}}";
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard.css");
/// Chart.js 4.5.1, vendored unmodified (see `host/assets/README.md`).
const CHART_JS: &str = include_str!("../../assets/chart.umd.min.js");

/// What the handlers share.
struct Dashboard {
    /// The page, with this process's token in it.
    page: String,
    /// The share servers, in index order, with the scientist's token.
    cluster: Cluster,
    /// Endpoints whose plugin is loaded here, by name. Compiling a plugin takes
    /// a while, so it is done once per endpoint definition, not at every refresh;
    /// an entry is replaced when the servers' config hash changes (the endpoint
    /// was deleted and created again). A tokio mutex, held while a plugin loads,
    /// so that concurrent refreshes do not compile the same plugin twice.
    opened: tokio::sync::Mutex<HashMap<String, Arc<LocalEndpoint>>>,
}

/// Serves the dashboard on `listener` until `shutdown` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    cluster: Cluster,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listen = listener.local_addr()?;
    axum::serve(listener, router(cluster, listen))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// The dashboard's routes, for `cluster`, when it listens on `listen` (which
/// the `Host` of every request must name: see [`guard`]). Each call draws a new
/// page token.
pub fn router(cluster: Cluster, listen: SocketAddr) -> Router {
    let guard = Arc::new(Guard::new(listen, hex::encode(rand::random::<[u8; 32]>())));
    let state = Arc::new(Dashboard {
        page: PAGE.replace(TOKEN_SLOT, guard.token()),
        cluster,
        opened: tokio::sync::Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/", get(page))
        .route(
            "/assets/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/assets/chart.umd.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", CHART_JS) }),
        )
        .route("/api/endpoints", get(overview))
        .route("/api/endpoints/{name}/total", get(total))
        .route("/api/endpoints/{name}/seal", post(seal))
        .fallback(not_found)
        .with_state(state)
        .layer(middleware::from_fn_with_state(guard, admit))
}

/// Answers only what [`Guard::admit`] lets through, and tells the browser
/// never to show any answer inside another site's frame (where a click on
/// "Seal a batch now" could be stolen).
async fn admit(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let mut response = match guard.admit(request.method(), request.uri(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(problem) => problem.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn not_found() -> Problem {
    Problem::refused(
        StatusCode::NOT_FOUND,
        "not_found",
        "The dashboard has no such page or route.".to_owned(),
    )
}

async fn page(State(state): State<Arc<Dashboard>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        state.page.clone(),
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/endpoints`: what every server lists, merged by name.
#[derive(Debug, Serialize)]
struct Overview {
    /// The servers' base URLs, in index order.
    servers: Vec<String>,
    /// Every endpoint any server listed, by name.
    endpoints: Vec<EndpointRow>,
    /// Servers that could not list their endpoints (down, token refused, …).
    errors: Vec<Problem>,
}

/// One endpoint of the overview.
#[derive(Debug, Serialize)]
struct EndpointRow {
    name: String,
    plugin: String,
    params: Value,
    min_batch: u64,
    /// Reports stored and in no batch yet, per server (`null` where a server did
    /// not answer or lacks the endpoint).
    waiting: Vec<Option<u64>>,
    /// Sealed batches, per server likewise.
    batches: Vec<Option<u64>>,
}

async fn overview(State(state): State<Arc<Dashboard>>) -> Json<Overview> {
    let cluster = &state.cluster;
    let (answers, failures) =
        admin::from_every_server::<Endpoints>(cluster, &["api", "v1", "endpoints"]).await;
    let servers = cluster.len();
    let mut rows: BTreeMap<String, EndpointRow> = BTreeMap::new();
    for (index, list) in answers {
        for info in list.endpoints {
            let row = rows
                .entry(info.name.clone())
                .or_insert_with(|| EndpointRow {
                    name: info.name.clone(),
                    plugin: info.plugin.clone(),
                    params: info.params.clone(),
                    min_batch: info.min_batch,
                    waiting: vec![None; servers],
                    batches: vec![None; servers],
                });
            let counts = info.reports.unwrap_or_default();
            row.waiting[index] = Some(counts.unbatched);
            row.batches[index] = Some(counts.batches);
        }
    }
    Json(Overview {
        servers: (0..servers).map(|i| cluster.url(i).to_owned()).collect(),
        endpoints: rows.into_values().collect(),
        errors: failures.iter().map(Problem::from_server).collect(),
    })
}

/// `GET /api/endpoints/{name}/total`: the combined total and how to chart it.
#[derive(Debug, Serialize)]
struct TotalView {
    #[serde(flatten)]
    collected: Collected,
    chart: Chart,
}

async fn total(
    State(state): State<Arc<Dashboard>>,
    Path(name): Path<String>,
) -> Result<Json<TotalView>, Problem> {
    let local = open(&state, &name).await.map_err(Problem::from_anyhow)?;
    let (shares, mut collected) = collect::fetch_total(&state.cluster, &name)
        .await
        .map_err(Problem::from_anyhow)?;
    collected.result = collect::combine(local, shares, collected.count)
        .await
        .map_err(Problem::from_anyhow)?;
    let chart = Chart::of(&collected.result);
    Ok(Json(TotalView { collected, chart }))
}

/// `POST /api/endpoints/{name}/seal`: seals a batch on server 0.
async fn seal(
    State(state): State<Arc<Dashboard>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    // Opening checks the server order and the agreed definition first, as
    // `guardian collect` does before it seals.
    open(&state, &name).await.map_err(Problem::from_anyhow)?;
    let sealed = collect::request_seal(&state.cluster, &name)
        .await
        .map_err(Problem::from_seal)?;
    Ok(Json(
        json!({"batch_id": sealed.batch_id, "count": sealed.count, "rejected": sealed.rejected}),
    ))
}

/// The endpoint `name` with its plugin loaded here, from the cache while the
/// servers' definition is unchanged.
async fn open(state: &Dashboard, name: &str) -> anyhow::Result<Arc<LocalEndpoint>> {
    let info = endpoint::fetch_agreed(&state.cluster, name).await?;
    let mut opened = state.opened.lock().await;
    if let Some(local) = opened.get(name)
        && local.config_hash == info.config_hash
    {
        return Ok(local.clone());
    }
    let local = Arc::new(endpoint::open(&state.cluster, name).await?);
    opened.insert(name.to_owned(), local.clone());
    Ok(local)
}

/// How the page draws a result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Chart {
    /// A bar chart: a labelled count per bucket (a histogram's `{"buckets":
    /// [...], "counts": [...]}`).
    Bars {
        /// Name of the values (`counts`).
        series: String,
        /// The bars' labels.
        labels: Vec<String>,
        /// The bars' heights.
        values: Vec<Value>,
    },
    /// Labelled values (a sum's vector, a mean's fields, a count).
    Values {
        /// Label and value, in order.
        items: Vec<(String, Value)>,
    },
}

impl Chart {
    /// Bars when the result pairs one array of labels with arrays of numbers of
    /// the same length; otherwise every scalar, labelled with its place.
    pub fn of(result: &Value) -> Chart {
        if let Value::Object(fields) = result
            && let Some(bars) = bars(fields)
        {
            return bars;
        }
        let mut items = Vec::new();
        flatten("", result, &mut items);
        Chart::Values { items }
    }
}

fn bars(fields: &Map<String, Value>) -> Option<Chart> {
    let arrays: Vec<(&String, &Vec<Value>)> = fields
        .iter()
        .filter_map(|(k, v)| v.as_array().map(|a| (k, a)))
        .collect();
    let mut labels = arrays
        .iter()
        .filter(|(_, a)| !a.is_empty() && a.iter().all(Value::is_string));
    let (_, labels_of) = labels.next()?;
    if labels.next().is_some() {
        return None;
    }
    let (series, values) = arrays
        .iter()
        .find(|(_, a)| a.len() == labels_of.len() && a.iter().all(Value::is_number))?;
    Some(Chart::Bars {
        series: (*series).clone(),
        labels: labels_of
            .iter()
            .map(|l| l.as_str().unwrap_or_default().to_owned())
            .collect(),
        values: values.to_vec(),
    })
}

/// Every scalar of `value`, labelled `key`, `key[i]` or `#i` at the top.
fn flatten(label: &str, value: &Value, items: &mut Vec<(String, Value)>) {
    match value {
        Value::Array(elements) if elements.len() == 1 && !label.is_empty() => {
            flatten(label, &elements[0], items);
        }
        Value::Array(elements) => {
            for (i, element) in elements.iter().enumerate() {
                let label = if label.is_empty() {
                    format!("#{i}")
                } else {
                    format!("{label}[{i}]")
                };
                flatten(&label, element, items);
            }
        }
        Value::Object(fields) => {
            for (key, field) in fields {
                let label = if label.is_empty() {
                    key.clone()
                } else {
                    format!("{label}.{key}")
                };
                flatten(&label, field, items);
            }
        }
        scalar => {
            let label = if label.is_empty() { "result" } else { label };
            items.push((label.to_owned(), scalar.clone()));
        }
    }
}

/// A failure, as the page shows it: a stable code, the sentence the CLI would
/// print, and the counts of a refused seal.
#[derive(Debug, Serialize)]
struct Problem {
    /// `unreachable`, the server's code (`batch_too_small`, `invalid_token`, …),
    /// `error` for a failure of this process, or this process's refusal of a
    /// request (`bad_host`, `cross_origin`, …: see [`guard`]).
    code: String,
    /// For people.
    message: String,
    /// The server whose answer this is, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<usize>,
    /// Reports every server holds and in no batch (`batch_too_small`).
    #[serde(skip_serializing_if = "Option::is_none")]
    agreed: Option<u64>,
    /// Reports a batch needs (`batch_too_small`).
    #[serde(skip_serializing_if = "Option::is_none")]
    needed: Option<u64>,
    #[serde(skip)]
    status: StatusCode,
}

impl Problem {
    /// A refusal by this process itself, not relayed from a server.
    fn refused(status: StatusCode, code: &str, message: String) -> Problem {
        Problem {
            code: code.to_owned(),
            message,
            server: None,
            agreed: None,
            needed: None,
            status,
        }
    }

    fn from_server(error: &ServerError) -> Problem {
        Problem {
            code: error.code().to_owned(),
            message: with_advice(error, error.to_string()),
            server: Some(error.server),
            agreed: error.detail("agreed"),
            needed: error.detail("needed"),
            status: StatusCode::BAD_GATEWAY,
        }
    }

    fn from_seal(error: ServerError) -> Problem {
        let mut problem = Problem::from_server(&error);
        if problem.code == "batch_too_small" {
            problem.status = StatusCode::CONFLICT;
        }
        problem.message = with_advice(
            &error,
            format!("{:#}", collect::explain_seal_error(error.clone())),
        );
        problem
    }

    fn from_anyhow(error: anyhow::Error) -> Problem {
        let server = error.chain().find_map(|e| e.downcast_ref::<ServerError>());
        let message = format!("{error:#}");
        match server {
            Some(server) => Problem {
                message: with_advice(server, message),
                ..Problem::from_server(server)
            },
            None => Problem {
                code: "error".to_owned(),
                message,
                server: None,
                agreed: None,
                needed: None,
                status: StatusCode::BAD_GATEWAY,
            },
        }
    }
}

/// The token is given when the dashboard starts, so a refused one means
/// restarting it: the CLI's sentence says to pass `--token`, which is right.
fn with_advice(error: &ServerError, message: String) -> String {
    if error.status() == Some(401) {
        format!("{message} (restart `guardian dashboard` with a fresh token)")
    } else {
        message
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        (status, Json(json!({ "error": self }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(result: Value, expected: Value) {
        assert_eq!(serde_json::to_value(Chart::of(&result)).unwrap(), expected);
    }

    #[test]
    fn a_histogram_is_bars() {
        check(
            json!({"buckets": ["red", "green"], "counts": [3, 12]}),
            json!({"kind": "bars", "series": "counts", "labels": ["red", "green"], "values": [3, 12]}),
        );
    }

    #[test]
    fn sums_means_and_counts_are_labelled_values() {
        check(
            json!([5, -1]),
            json!({"kind": "values", "items": [["#0", 5], ["#1", -1]]}),
        );
        check(
            json!({"count": 2, "mean": [1.5], "sum": [3]}),
            json!({"kind": "values", "items": [["count", 2], ["mean", 1.5], ["sum", 3]]}),
        );
        check(
            json!({"count": 0, "mean": [null, null], "sum": [0, 0]}),
            json!({"kind": "values", "items": [
                ["count", 0], ["mean[0]", null], ["mean[1]", null], ["sum[0]", 0], ["sum[1]", 0]
            ]}),
        );
        check(
            json!(42),
            json!({"kind": "values", "items": [["result", 42]]}),
        );
    }

    #[test]
    fn odd_shapes_are_not_bars() {
        // Two label arrays, or labels without numbers of the same length.
        check(
            json!({"a": ["x"], "b": ["y"]}),
            json!({"kind": "values", "items": [["a", "x"], ["b", "y"]]}),
        );
        check(
            json!({"buckets": ["x", "y"], "counts": [1]}),
            json!({"kind": "values", "items": [["buckets[0]", "x"], ["buckets[1]", "y"], ["counts", 1]]}),
        );
    }

    fn refusal(status: u16, code: &str, details: Value) -> ServerError {
        ServerError {
            server: 0,
            url: "http://s0".into(),
            has_token: true,
            kind: super::super::ErrorKind::Api {
                status,
                code: code.into(),
                message: "m".into(),
                details: details.as_object().cloned().unwrap_or_default(),
            },
        }
    }

    #[test]
    fn a_refused_seal_keeps_its_counts() {
        let problem = Problem::from_seal(refusal(
            409,
            "batch_too_small",
            json!({"agreed": 2, "needed": 3}),
        ));
        assert_eq!(problem.status, StatusCode::CONFLICT);
        let value = serde_json::to_value(&problem).unwrap();
        assert_eq!(value["code"], "batch_too_small");
        assert_eq!(value["agreed"], 2);
        assert_eq!(value["needed"], 3);
        let message = value["message"].as_str().unwrap();
        assert!(message.contains(&collect::too_small(2, 3)), "{message}");
    }

    #[test]
    fn a_refused_token_says_to_restart() {
        let problem = Problem::from_anyhow(anyhow::Error::from(refusal(
            401,
            "token_expired",
            json!({}),
        )));
        assert_eq!(problem.code, "token_expired");
        assert_eq!(problem.status, StatusCode::BAD_GATEWAY);
        assert!(
            problem.message.contains("refused the token"),
            "{}",
            problem.message
        );
        assert!(
            problem.message.contains("restart `guardian dashboard`"),
            "{}",
            problem.message
        );
    }
}
