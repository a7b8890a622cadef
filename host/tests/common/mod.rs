//! A cluster of real `guardian serve` processes for the end-to-end tests, a
//! client that shards and unshards with the same wasm plugins the servers run,
//! and an in-process server trusting the development issuer.

#![allow(dead_code, clippy::unwrap_used)]

pub mod balancer;
pub mod pg;
pub mod proxy;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use guardian::auth::DevIssuer;
use guardian::config::{Environment, Role, load};
use guardian::runtime::Plugin;
use guardian::runtime::testing::builtin;
use guardian::server::Server;
use rand::Rng as _;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

pub const PEER_TOKEN: &str = "a-test-peer-credential-of-enough-length-0123456789";

/// Starts a server in this process on port 0, with its data in `dir/data`,
/// trusting the development issuer in `dir/issuer`, with the peer credential
/// and the `extra` settings (environment names).
pub async fn start_dev_server(dir: &Path, extra: &[(&str, String)]) -> Server {
    let mut vars = vec![
        ("GUARDIAN_SERVER_LISTEN", "127.0.0.1:0".to_owned()),
        (
            "GUARDIAN_SERVER_DATA_DIR",
            dir.join("data").display().to_string(),
        ),
        ("GUARDIAN_AUTH_DEV_ISSUER", "true".to_owned()),
        (
            "GUARDIAN_AUTH_DEV_ISSUER_DIR",
            dir.join("issuer").display().to_string(),
        ),
        ("GUARDIAN_AUTH_PEER_TOKEN", PEER_TOKEN.to_owned()),
    ];
    vars.extend(extra.iter().cloned());
    let vars = vars.into_iter().map(|(k, v)| (k.to_owned(), v));
    let loaded = load(None, &Environment::new().with_process(vars)).unwrap();
    Server::start(loaded.config).await.unwrap()
}

/// A token of `role` for `sub` from the development issuer of
/// [`start_dev_server`]`(dir, …)`.
pub fn dev_token(dir: &Path, role: Role, sub: &str) -> String {
    DevIssuer::load_or_create(&dir.join("issuer"))
        .unwrap()
        .mint(role, sub, Duration::from_secs(600))
        .unwrap()
}
/// A peer request to server `receiver` signed with the key in `key_file` as
/// server `sender` claims to be: what an honest coordinator sends when the key is
/// its own, and what a dishonest operator can forge otherwise.
pub fn signed_peer_request(
    http: &Client,
    base: &str,
    key_file: &Path,
    (sender, receiver): (u32, u32),
    (endpoint, step, query): (&str, &str, &str),
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    use sha2::Digest as _;
    let server = guardian::config::ServerConfig {
        index: sender,
        key_file: Some(key_file.to_owned()),
        ..Default::default()
    };
    let identity = guardian::auth::PeerIdentity::from_config(&server).unwrap();
    let digest: [u8; 32] = sha2::Sha256::digest(&body).into();
    let signature = identity.sign(&guardian::auth::identity::PeerMessage {
        sender,
        receiver,
        endpoint,
        step,
        query,
        body_sha256: &digest,
    });
    let mut url = format!("{base}/peer/v1/endpoints/{endpoint}/{step}");
    if !query.is_empty() {
        url = format!("{url}?{query}");
    }
    http.post(url)
        .bearer_auth(PEER_TOKEN)
        .header(guardian::auth::identity::SENDER_HEADER, sender)
        .header(guardian::auth::identity::SIGNATURE_HEADER, signature)
        .header("content-type", "application/octet-stream")
        .body(body)
}

pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One `guardian serve` process of a cluster; killed when dropped.
pub struct Node {
    child: Option<Child>,
    addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
}

/// N share servers wired to each other, with authentication off for clients (the
/// peer credential is still required between servers).
pub struct Cluster {
    pub dir: TempDir,
    nodes: Vec<Node>,
    peers: String,
    /// Every server's public peer key, comma-separated in index order.
    peer_keys: String,
    pub http: Client,
    /// Environment of each server, after the defaults above.
    server_env: Vec<Vec<(String, String)>>,
}

pub fn free_port() -> SocketAddr {
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("reading the free port")
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, |_| Vec::new()).await
    }

    /// Starts a cluster whose servers also get the environment `env(dir)`.
    pub async fn start_with(
        n: usize,
        env: impl Fn(&std::path::Path) -> Vec<(String, String)>,
    ) -> Cluster {
        Self::start_each(n, |dir, _| env(dir)).await
    }

    /// Starts a cluster whose server `index` also gets the environment
    /// `env(dir, index)` (e.g. its own database, `GUARDIAN_STORAGE_URL`).
    pub async fn start_each(
        n: usize,
        env: impl Fn(&std::path::Path, usize) -> Vec<(String, String)>,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let server_env = (0..n).map(|index| env(dir.path(), index)).collect();
        let addrs: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let peers = addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes: Vec<Node> = addrs
            .iter()
            .enumerate()
            .map(|(index, addr)| Node {
                child: None,
                addr: *addr,
                data_dir: dir.path().join(format!("server-{index}")),
                log: dir.path().join(format!("server-{index}.log")),
            })
            .collect();
        // Each server's own key pair, where it looks for it (`{data_dir}/peer-key`).
        let peer_keys = nodes
            .iter()
            .map(|node| guardian::auth::identity::public_key_of(&node.data_dir.join("peer-key")))
            .collect::<anyhow::Result<Vec<_>>>()
            .unwrap()
            .join(",");
        let mut cluster = Cluster {
            dir,
            nodes,
            peers,
            peer_keys,
            http: Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap(),
            server_env,
        };
        for index in 0..n {
            cluster.launch(index, &[]).await;
        }
        cluster
    }

    /// Starts server `index` (again), with extra environment variables.
    pub async fn launch(&mut self, index: usize, extra_env: &[(&str, &str)]) {
        let n = self.nodes.len();
        let peers = self.peers.clone();
        let node = &self.nodes[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_guardian"));
        command
            .arg("serve")
            .env_clear()
            .env("GUARDIAN_AUTH_DISABLED", "true")
            .env("GUARDIAN_AUTH_PEER_TOKEN", PEER_TOKEN)
            .env("GUARDIAN_SERVER_INDEX", index.to_string())
            .env("GUARDIAN_SERVER_SERVERS", n.to_string())
            .env("GUARDIAN_SERVER_PEERS", &peers)
            .env("GUARDIAN_SERVER_PEER_KEYS", &self.peer_keys)
            .env("GUARDIAN_SERVER_LISTEN", node.addr.to_string())
            .env("GUARDIAN_SERVER_DATA_DIR", &node.data_dir)
            .env("GUARDIAN_ENDPOINTS_PEER_TIMEOUT_MS", "10000")
            .env("GUARDIAN_LOG_LEVEL", "info")
            .envs(
                self.server_env[index]
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .envs(extra_env.iter().copied())
            .current_dir(node.data_dir.parent().unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.nodes[index].child = Some(command.spawn().expect("starting guardian serve"));
        let base = self.base(index);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.nodes[index]
                .child
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap()
            {
                panic!("server {index} exited with {status}:\n{}", self.log(index));
            }
            let ready = self.http.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server {index} not ready:\n{}",
                self.log(index)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Puts a test proxy between the coordinator and server 1: server 0 is
    /// restarted with the proxy as server 1's URL.
    pub async fn proxy_follower(&mut self) -> proxy::PeerProxy {
        let proxy = proxy::PeerProxy::start(self.base(1)).await;
        self.reach_follower_at(&proxy.url).await;
        proxy
    }

    /// Puts a link of `latency` each way between the coordinator and server 1.
    pub async fn slow_link_to_follower(&mut self, latency: Duration) -> proxy::SlowLink {
        let link = proxy::SlowLink::start(self.nodes[1].addr.to_string(), latency).await;
        self.reach_follower_at(&link.url).await;
        link
    }

    /// Restarts server 0 with `url` as server 1's URL.
    async fn reach_follower_at(&mut self, url: &str) {
        let mut peers: Vec<String> = (0..self.n()).map(|index| self.base(index)).collect();
        peers[1] = url.to_owned();
        let peers = peers.join(",");
        self.kill(0);
        self.launch(0, &[("GUARDIAN_SERVER_PEERS", peers.as_str())])
            .await;
    }

    /// Waits (up to 30 s) until server `index` lists a batch of `endpoint`; returns
    /// the ids it lists.
    pub async fn wait_for_batches(&self, index: usize, endpoint: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, listed) = self
                .get(index, &format!("/api/v1/endpoints/{endpoint}/batches"))
                .await;
            let ids: Vec<String> = listed["batches"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|batch| batch["batch_id"].as_str().map(str::to_owned))
                .collect();
            if !ids.is_empty() {
                return ids;
            }
            assert!(
                Instant::now() < deadline,
                "server {index} never got a batch"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Server `index`'s private peer key file: a test that plays a dishonest
    /// operator signs with it.
    pub fn key_file(&self, index: usize) -> PathBuf {
        self.nodes[index].data_dir.join("peer-key")
    }

    /// Server `index`'s database file, for tests that set up a state an older
    /// version left (with the server stopped).
    pub fn database(&self, index: usize) -> PathBuf {
        self.nodes[index].data_dir.join("guardian.sqlite")
    }

    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for server `index` to exit on its own; returns whether it did in time.
    pub async fn wait_exit(&mut self, index: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let child = self.nodes[index].child.as_mut().unwrap();
            if child.try_wait().unwrap().is_some() {
                self.nodes[index].child = None;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.nodes[index].log).unwrap_or_default()
    }

    pub fn base(&self, index: usize) -> String {
        format!("http://{}", self.nodes[index].addr)
    }

    pub fn n(&self) -> usize {
        self.nodes.len()
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        index: usize,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base(index)));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request failed");
        let status = response.status();
        let value = response.json().await.unwrap_or(Value::Null);
        (status, value)
    }

    /// A GET answered in plain text (e.g. `/metrics`).
    pub async fn get_text(&self, index: usize, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base(index)))
            .send()
            .await
            .expect("request failed");
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }

    pub async fn get(&self, index: usize, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, index, path, None).await
    }

    pub async fn post(&self, index: usize, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, index, path, Some(body))
            .await
    }

    /// Creates the endpoint on every server.
    pub async fn create_endpoint(&self, name: &str, plugin: &str, params: Value, min_batch: u64) {
        for index in 0..self.n() {
            let (status, body) = self
                .post(
                    index,
                    "/api/v1/endpoints",
                    json!({"name": name, "plugin": plugin, "params": params, "min_batch": min_batch}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "server {index}: {body}");
        }
    }

    /// Seals on server 0.
    pub async fn seal(&self, endpoint: &str) -> (StatusCode, Value) {
        self.post(
            0,
            &format!("/api/v1/endpoints/{endpoint}/batches"),
            json!({}),
        )
        .await
    }

    /// Fetches the released shares of a batch (or the total) from every server and
    /// checks that they agree on the count.
    pub async fn shares(&self, path: &str) -> (u64, Vec<Vec<u8>>) {
        let mut count = None;
        let mut shares = Vec::new();
        for index in 0..self.n() {
            let (status, body) = self.get(index, path).await;
            assert_eq!(status, StatusCode::OK, "server {index} {path}: {body}");
            assert_eq!(body["server_index"], index as u64);
            let c = body["count"].as_u64().unwrap();
            assert_eq!(
                *count.get_or_insert(c),
                c,
                "servers disagree on the count of {path}"
            );
            shares.push(BASE64.decode(body["share"].as_str().unwrap()).unwrap());
        }
        (count.unwrap(), shares)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

/// A client: the endpoint's plugin and configuration, computed as the servers do.
pub struct Sharder {
    plugin: Plugin,
    config: Vec<u8>,
}

impl Sharder {
    pub fn new(plugin: &str, params: &Value) -> Sharder {
        let plugin = builtin(plugin);
        let config = plugin.configure(&params.to_string()).unwrap();
        Sharder { plugin, config }
    }

    /// A client of an uploaded plugin: the component `wasm`.
    pub fn from_wasm(wasm: &[u8], params: &Value) -> Sharder {
        let runtime =
            guardian::runtime::Runtime::new(guardian::runtime::RuntimeOptions::default()).unwrap();
        let plugin = runtime.load(wasm).unwrap();
        let config = plugin.configure(&params.to_string()).unwrap();
        Sharder { plugin, config }
    }

    pub fn shard(&self, measurement: &Value, n: usize) -> (String, Vec<String>) {
        let seed: [u8; 32] = rand::random();
        let shares = self
            .plugin
            .shard(&self.config, &measurement.to_string(), n as u32, &seed)
            .unwrap();
        let id = hex::encode(guardian::report_id::new_report_id(
            std::time::SystemTime::now(),
        ));
        (id, shares.iter().map(|s| BASE64.encode(s)).collect())
    }

    /// Posts `measurement` to the servers in `to` (all of them normally); returns
    /// its report id.
    pub async fn submit(
        &self,
        cluster: &Cluster,
        endpoint: &str,
        measurement: &Value,
        to: &[usize],
    ) -> String {
        let (id, shares) = self.shard(measurement, cluster.n());
        for &index in to {
            let (status, body) = cluster
                .post(
                    index,
                    &format!("/api/v1/endpoints/{endpoint}/reports"),
                    json!({"report_id": id, "share": shares[index]}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "server {index}: {body}");
        }
        id
    }

    /// A report of a robust plugin (contract 0.2.0): its id, the public share
    /// and one share per server, as bytes.
    pub fn shard_report(&self, measurement: &Value, n: usize) -> RawReport {
        let id = guardian::report_id::new_report_id(std::time::SystemTime::now());
        let seed: [u8; 32] = rand::random();
        let report = self
            .plugin
            .shard_report(&self.config, &measurement.to_string(), n as u32, &id, &seed)
            .unwrap();
        RawReport {
            id: hex::encode(id),
            public_share: report.public_share,
            shares: report.shares,
        }
    }

    pub fn unshard(&self, shares: &[Vec<u8>], count: u64) -> Value {
        serde_json::from_str(&self.plugin.unshard(&self.config, shares, count).unwrap()).unwrap()
    }
}

/// A sharded report as bytes, to post as it is or tampered with.
#[derive(Clone)]
pub struct RawReport {
    pub id: String,
    pub public_share: Vec<u8>,
    pub shares: Vec<Vec<u8>>,
}

impl RawReport {
    /// The body posting it to server `index` (with its own public share).
    pub fn body(&self, index: usize) -> Value {
        json!({
            "report_id": self.id,
            "share": BASE64.encode(&self.shares[index]),
            "public_share": BASE64.encode(&self.public_share),
        })
    }

    /// Posts it to every server: `public_shares[i]` to server i.
    pub async fn post(&self, cluster: &Cluster, endpoint: &str) {
        for index in 0..cluster.n() {
            let (status, body) = cluster
                .post(
                    index,
                    &format!("/api/v1/endpoints/{endpoint}/reports"),
                    self.body(index),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "server {index}: {body}");
        }
    }
}

pub fn random_vector(len: usize) -> Vec<i64> {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| rng.random_range(-1_000_000..1_000_000))
        .collect()
}

pub fn plain_sum(measurements: &[Vec<i64>]) -> Value {
    let len = measurements[0].len();
    let mut sum = vec![0i64; len];
    for m in measurements {
        for (s, v) in sum.iter_mut().zip(m) {
            *s = s.wrapping_add(*v);
        }
    }
    json!(sum)
}

/// The batches of a `GET …/batches` answer as (batch id, count), sorted.
pub fn batch_counts(list: &Value) -> Vec<(String, u64)> {
    let mut batches: Vec<(String, u64)> = list["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["batch_id"].as_str().unwrap().to_owned(),
                b["count"].as_u64().unwrap(),
            )
        })
        .collect();
    batches.sort();
    batches
}
