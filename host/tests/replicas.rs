//! Replicated share servers over PostgreSQL: several real `guardian serve`
//! processes with the same server index and the same database act as one share
//! server. Two share servers of two replicas each, every replica of server i on
//! server i's own (fresh) database; each server's peer URL is a round-robin
//! balancer in front of its replicas, so peer calls really land on both.
//!
//! - clients spread over the replicas, an endpoint created through one replica
//!   and its plugin uploaded through the other: every replica lists the same
//!   batches and the totals unshard to the plain results; two replicas asked to
//!   seal at the same moment make one batch;
//! - a replica killed (SIGKILL) during ingest: clients retry on the other one
//!   with the same id and share, and every acknowledged report is sealed exactly
//!   once;
//! - the coordinator's replica crashes in a seal after the followers committed:
//!   the other replica completes it once the crashed one's lease expires;
//! - the databases stopped for a few seconds under load: clients get 503
//!   `storage_unavailable`, nothing acknowledged is lost, and the servers recover
//!   by themselves.
//!
//! Needs the test PostgreSQL cluster (`GUARDIAN_TEST_POSTGRES_URL`, started by
//! `cargo xtask test`) and the `pg_ctl` binaries for the outage test.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::balancer::Balancer;
use common::*;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinSet;

/// Share servers of every test here.
const SERVERS: usize = 2;

/// The lease time-to-live the replicas run with: short, so that a crashed
/// replica's leases are taken over within the test's time.
const LEASE_TTL_MS: &str = "3000";

/// The setting that sets it.
const LEASE_TTL_VAR: &str = "GUARDIAN_STORAGE_LEASE_TTL_MS";

/// The built-in plugins compiled, as a server's plugin cache holds them
/// (`{data_dir}/plugins`): every replica starts with them, as from an image
/// with a warm cache, instead of compiling them all again (seconds each).
static COMPILED: tokio::sync::OnceCell<Vec<(std::ffi::OsString, Vec<u8>)>> =
    tokio::sync::OnceCell::const_new();

/// Starts a server on SQLite once, to read back its compiled built-ins.
async fn compile_builtins() -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardian"))
        .arg("serve")
        .env_clear()
        .env("GUARDIAN_AUTH_DISABLED", "true")
        .env("GUARDIAN_SERVER_LISTEN", addr.to_string())
        .env("GUARDIAN_SERVER_DATA_DIR", dir.path())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting guardian serve");
    let http = Client::new();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("guardian serve exited with {status} before it was ready");
        }
        let ready = http.get(format!("http://{addr}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        assert!(Instant::now() < deadline, "guardian serve never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let compiled: Vec<_> = std::fs::read_dir(dir.path().join("plugins"))
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "cwasm"))
        .map(|entry| (entry.file_name(), std::fs::read(entry.path()).unwrap()))
        .collect();
    assert!(
        !compiled.is_empty(),
        "the server compiled no built-in plugin"
    );
    compiled
}

/// One `guardian serve` process: replica `replica` of share server `server`.
struct Replica {
    server: usize,
    replica: usize,
    addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// `SERVERS` share servers of `per_server` replicas each, server i's replicas
/// all on database `databases[i]` and reached by their peers through a
/// [`Balancer`]. Every process is killed when dropped.
struct Replicated {
    dir: TempDir,
    per_server: usize,
    replicas: Vec<Replica>,
    balancers: Vec<Balancer>,
    databases: Vec<String>,
    peers: String,
    peer_keys: String,
    env: Vec<(String, String)>,
    http: Client,
}

impl Replicated {
    /// Starts every replica at once (so that they also migrate the database at
    /// the same time) and waits until all are ready.
    async fn start(databases: Vec<String>, per_server: usize, env: &[(&str, &str)]) -> Replicated {
        assert_eq!(databases.len(), SERVERS);
        let dir = tempfile::tempdir().unwrap();
        let mut replicas = Vec::new();
        for server in 0..SERVERS {
            for replica in 0..per_server {
                replicas.push(Replica {
                    server,
                    replica,
                    addr: free_port(),
                    data_dir: dir
                        .path()
                        .join(format!("server-{server}-replica-{replica}")),
                    log: dir
                        .path()
                        .join(format!("server-{server}-replica-{replica}.log")),
                    child: None,
                });
            }
        }
        let mut balancers = Vec::new();
        for server in 0..SERVERS {
            let targets = replicas
                .iter()
                .filter(|r| r.server == server)
                .map(|r| format!("http://{}", r.addr))
                .collect();
            balancers.push(Balancer::start(targets).await);
        }
        let peers = balancers
            .iter()
            .map(|b| b.url.clone())
            .collect::<Vec<_>>()
            .join(",");
        // One key pair per share server, shared by its replicas.
        let peer_keys = (0..SERVERS)
            .map(|server| {
                guardian::auth::identity::public_key_of(&dir.path().join(format!("key-{server}")))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .unwrap()
            .join(",");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.push((LEASE_TTL_VAR.to_owned(), LEASE_TTL_MS.to_owned()));
        let mut cluster = Replicated {
            dir,
            per_server,
            replicas,
            balancers,
            databases,
            peers,
            peer_keys,
            env,
            http: Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap(),
        };
        let started = Instant::now();
        let compiled = COMPILED.get_or_init(compile_builtins).await;
        for server in 0..SERVERS {
            for replica in 0..per_server {
                let cache = cluster.replicas[cluster.at(server, replica)]
                    .data_dir
                    .join("plugins");
                std::fs::create_dir_all(&cache).unwrap();
                for (name, bytes) in compiled {
                    std::fs::write(cache.join(name), bytes).unwrap();
                }
                cluster.spawn(server, replica, &[]);
            }
        }
        for server in 0..SERVERS {
            for replica in 0..per_server {
                cluster.wait_ready(server, replica).await;
            }
        }
        println!(
            "{} replicas ready in {:?}",
            cluster.replicas.len(),
            started.elapsed()
        );
        cluster
    }

    fn at(&self, server: usize, replica: usize) -> usize {
        assert!(server < SERVERS && replica < self.per_server);
        server * self.per_server + replica
    }

    /// Starts replica `replica` of `server` (again), with extra environment.
    fn spawn(&mut self, server: usize, replica: usize, extra_env: &[(&str, &str)]) {
        let at = self.at(server, replica);
        let node = &self.replicas[at];
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
            .env("GUARDIAN_SERVER_INDEX", server.to_string())
            .env("GUARDIAN_SERVER_SERVERS", SERVERS.to_string())
            .env("GUARDIAN_SERVER_PEERS", &self.peers)
            .env("GUARDIAN_SERVER_PEER_KEYS", &self.peer_keys)
            .env(
                "GUARDIAN_SERVER_KEY_FILE",
                self.dir.path().join(format!("key-{server}")),
            )
            .env("GUARDIAN_SERVER_LISTEN", node.addr.to_string())
            .env("GUARDIAN_SERVER_DATA_DIR", &node.data_dir)
            .env("GUARDIAN_STORAGE_URL", &self.databases[server])
            .env("GUARDIAN_ENDPOINTS_PEER_TIMEOUT_MS", "10000")
            .env("GUARDIAN_LOG_LEVEL", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra_env.iter().copied())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.replicas[at].child = Some(command.spawn().expect("starting guardian serve"));
    }

    async fn wait_ready(&mut self, server: usize, replica: usize) {
        let at = self.at(server, replica);
        let base = self.base(server, replica);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.replicas[at].child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "server {server} replica {replica} exited with {status}:\n{}",
                    self.log(server, replica)
                );
            }
            let ready = self.http.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server {server} replica {replica} not ready:\n{}",
                self.log(server, replica)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn launch(&mut self, server: usize, replica: usize, extra_env: &[(&str, &str)]) {
        self.spawn(server, replica, extra_env);
        self.wait_ready(server, replica).await;
    }

    /// SIGKILL.
    fn kill(&mut self, server: usize, replica: usize) {
        let at = self.at(server, replica);
        if let Some(mut child) = self.replicas[at].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for a replica to exit on its own; returns whether it did in time.
    async fn wait_exit(&mut self, server: usize, replica: usize, timeout: Duration) -> bool {
        let at = self.at(server, replica);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let child = self.replicas[at].child.as_mut().unwrap();
            if child.try_wait().unwrap().is_some() {
                self.replicas[at].child = None;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn alive(&self) -> Vec<(usize, usize)> {
        self.replicas
            .iter()
            .filter(|r| r.child.is_some())
            .map(|r| (r.server, r.replica))
            .collect()
    }

    fn log(&self, server: usize, replica: usize) -> String {
        std::fs::read_to_string(&self.replicas[self.at(server, replica)].log).unwrap_or_default()
    }

    /// The tail of every replica's log, for failure messages.
    fn logs(&self) -> String {
        let mut all = String::new();
        for r in &self.replicas {
            let log = self.log(r.server, r.replica);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            all.push_str(&format!(
                "--- server {} replica {} ---\n",
                r.server, r.replica
            ));
            for line in tail.iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    fn base(&self, server: usize, replica: usize) -> String {
        format!("http://{}", self.replicas[self.at(server, replica)].addr)
    }

    /// Every replica's base URL, by server.
    fn bases(&self) -> Vec<Vec<String>> {
        (0..SERVERS)
            .map(|s| (0..self.per_server).map(|r| self.base(s, r)).collect())
            .collect()
    }

    async fn get(&self, server: usize, replica: usize, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base(server, replica)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on server {server} replica {replica}: {e}"));
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(
        &self,
        server: usize,
        replica: usize,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base(server, replica)))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} on server {server} replica {replica}: {e}"));
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates the endpoint on every server, through replica `replica` of each.
    async fn create_endpoint(&self, replica: usize, name: &str, plugin: &str, params: &Value) {
        for server in 0..SERVERS {
            let (status, body) = self
                .post(
                    server,
                    replica,
                    "/api/v1/endpoints",
                    json!({"name": name, "plugin": plugin, "params": params, "min_batch": MIN_BATCH}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "server {server}: {body}");
        }
    }

    /// The batches (id, count) replica `replica` of `server` lists, sorted.
    async fn batches(&self, server: usize, replica: usize, endpoint: &str) -> Vec<(String, u64)> {
        let (status, list) = self
            .get(
                server,
                replica,
                &format!("/api/v1/endpoints/{endpoint}/batches"),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "server {server} replica {replica}: {list}"
        );
        batch_counts(&list)
    }

    /// Checks that every live replica lists the same batches and holds no
    /// unbatched report of `endpoint`; returns the batches.
    async fn same_batches_everywhere(&self, endpoint: &str) -> Vec<(String, u64)> {
        let mut first: Option<Vec<(String, u64)>> = None;
        for (server, replica) in self.alive() {
            let batches = self.batches(server, replica, endpoint).await;
            match &first {
                None => first = Some(batches),
                Some(first) => assert_eq!(
                    &batches, first,
                    "server {server} replica {replica} lists other batches"
                ),
            }
            let (_, info) = self
                .get(server, replica, &format!("/api/v1/endpoints/{endpoint}"))
                .await;
            assert_eq!(
                info["reports"]["unbatched"], 0,
                "server {server} replica {replica}: {info}"
            );
        }
        first.unwrap()
    }

    /// The released total of `endpoint`: the count and one share per server,
    /// read from the given replica of each; every replica of a server must give
    /// the same share.
    async fn total(&self, endpoint: &str) -> (u64, Vec<Vec<u8>>) {
        let path = format!("/api/v1/endpoints/{endpoint}/total");
        let mut count = None;
        let mut shares: Vec<Option<Vec<u8>>> = vec![None; SERVERS];
        for (server, replica) in self.alive() {
            let (status, body) = self.get(server, replica, &path).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "server {server} replica {replica}: {body}"
            );
            assert_eq!(body["server_index"], server as u64);
            let c = body["count"].as_u64().unwrap();
            assert_eq!(*count.get_or_insert(c), c, "replicas disagree on the count");
            let share = BASE64.decode(body["share"].as_str().unwrap()).unwrap();
            match &shares[server] {
                None => shares[server] = Some(share),
                Some(first) => assert_eq!(
                    first, &share,
                    "the replicas of server {server} release different shares"
                ),
            }
        }
        let shares = shares
            .into_iter()
            .enumerate()
            .map(|(s, share)| share.unwrap_or_else(|| panic!("no replica of server {s} is up")))
            .collect();
        (count.unwrap(), shares)
    }

    /// Seals through `replica` of server 0 until nothing is left, topping up a
    /// last partial batch through `load`, which records the batches made.
    async fn seal_the_rest(&self, replica: usize, load: &Load) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "the final seals did not finish:\n{}",
                self.logs()
            );
            let (status, body) = self
                .post(
                    0,
                    replica,
                    &format!("/api/v1/endpoints/{}/batches", load.endpoint),
                    json!({}),
                )
                .await;
            load.sealed(status, &body);
            match status {
                StatusCode::CREATED => {}
                StatusCode::CONFLICT if body["error"]["code"] == "batch_too_small" => {
                    let agreed = body["error"]["agreed"].as_u64().unwrap();
                    if agreed == 0 {
                        return;
                    }
                    for _ in agreed..MIN_BATCH {
                        let measurement = vec![1, -1];
                        assert!(
                            load.post_everywhere(&measurement).await,
                            "{:?}",
                            load.defects()
                        );
                        load.acked.lock().unwrap().push(measurement);
                    }
                }
                StatusCode::INTERNAL_SERVER_ERROR => panic!("a seal answered 500: {body}"),
                // A decided seal still completing, or a peer restarting.
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        for at in 0..self.replicas.len() {
            if let Some(mut child) = self.replicas[at].child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

const MIN_BATCH: u64 = 5;
const POSTERS: usize = 6;

/// Clients posting reports continuously, each report to every share server
/// through one of its replicas (alternating per report), retried on the other
/// replicas with the same id and share until acknowledged.
struct Load {
    endpoint: String,
    bases: Vec<Vec<String>>,
    http: Client,
    sharder: Sharder,
    stop: AtomicBool,
    next: AtomicUsize,
    /// Measurements every server acknowledged.
    acked: Mutex<Vec<Vec<i64>>>,
    /// Answers that must never happen.
    defects: Mutex<Vec<String>>,
    /// Every refusal answered, as "status code" -> how many.
    refusals: Mutex<BTreeMap<String, u64>>,
    /// Reports acknowledged by some replica after a failed attempt on another.
    retried: AtomicU64,
    /// The batches seals answered.
    sealed: Mutex<Vec<String>>,
    /// Seals answered `seal_incomplete`: decided, completing by themselves.
    incomplete: AtomicU64,
}

impl Load {
    fn new(endpoint: &str, bases: Vec<Vec<String>>, params: &Value) -> Arc<Load> {
        Arc::new(Load {
            endpoint: endpoint.to_owned(),
            bases,
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            sharder: Sharder::new("sum", params),
            stop: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            acked: Mutex::new(Vec::new()),
            defects: Mutex::new(Vec::new()),
            refusals: Mutex::new(BTreeMap::new()),
            retried: AtomicU64::new(0),
            sealed: Mutex::new(Vec::new()),
            incomplete: AtomicU64::new(0),
        })
    }

    /// Records a seal's answer.
    fn sealed(&self, status: StatusCode, body: &Value) {
        match status {
            StatusCode::CREATED => {
                let id = body["batch_id"].as_str().unwrap().to_owned();
                self.sealed.lock().unwrap().push(id);
            }
            StatusCode::SERVICE_UNAVAILABLE if body["error"]["code"] == "seal_incomplete" => {
                self.incomplete.fetch_add(1, Ordering::Relaxed);
            }
            StatusCode::INTERNAL_SERVER_ERROR => {
                self.defect(format!("a seal answered 500: {body}"))
            }
            _ => {}
        }
    }

    /// Seals through `base` every 300 ms until stopped.
    async fn sealer(self: Arc<Load>, base: String) {
        while !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let sent = self
                .http
                .post(format!("{base}/api/v1/endpoints/{}/batches", self.endpoint))
                .json(&json!({}))
                .send()
                .await;
            if let Ok(response) = sent {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                self.sealed(status, &body);
            }
        }
    }

    fn defect(&self, what: String) {
        self.defects.lock().unwrap().push(what);
    }

    fn defects(&self) -> Vec<String> {
        self.defects.lock().unwrap().clone()
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Posts one report to every server, first through the next replica in
    /// turn, then through the others until one acknowledges; gives up only
    /// after a minute.
    async fn post_everywhere(&self, measurement: &[i64]) -> bool {
        let (id, shares) = self.sharder.shard(&json!(measurement), self.bases.len());
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        for (server, replicas) in self.bases.iter().enumerate() {
            let mut attempt = 0;
            loop {
                let replica = (first + attempt) % replicas.len();
                let base = &replicas[replica];
                let sent = self
                    .http
                    .post(format!("{base}/api/v1/endpoints/{}/reports", self.endpoint))
                    .json(&json!({"report_id": id, "share": shares[server]}))
                    .send()
                    .await;
                match sent {
                    Ok(response)
                        if matches!(response.status(), StatusCode::CREATED | StatusCode::OK) =>
                    {
                        if attempt > 0 {
                            self.retried.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    Ok(response) => {
                        let status = response.status();
                        let retry_after = response.headers().contains_key("retry-after");
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
                        *self
                            .refusals
                            .lock()
                            .unwrap()
                            .entry(format!("{} {code}", status.as_u16()))
                            .or_default() += 1;
                        if status != StatusCode::SERVICE_UNAVAILABLE {
                            self.defect(format!(
                                "server {server} replica {replica} refused a valid report: {status} {body}"
                            ));
                            return false;
                        }
                        if code == "storage_unavailable" && !retry_after {
                            self.defect(format!(
                                "server {server} replica {replica}: a storage_unavailable answer without Retry-After"
                            ));
                        }
                    }
                    // Down or killed mid-request: the client retries elsewhere.
                    Err(_) => {}
                }
                if Instant::now() > deadline {
                    self.defect(format!("server {server} never acknowledged report {id}"));
                    return false;
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        true
    }

    fn start(self: &Arc<Load>) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for _ in 0..POSTERS {
            let load = self.clone();
            tasks.spawn(async move {
                while !load.stop.load(Ordering::Relaxed) {
                    let measurement: Vec<i64> = {
                        use rand::Rng as _;
                        let mut rng = rand::rng();
                        vec![rng.random_range(0..1000), rng.random_range(-500..500)]
                    };
                    if load.post_everywhere(&measurement).await {
                        load.acked.lock().unwrap().push(measurement);
                    }
                }
            });
        }
        tasks
    }

    async fn stop(&self, mut tasks: JoinSet<()>) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(task) = tasks.join_next().await {
            task.unwrap();
        }
    }

    /// The plain sum of every acknowledged measurement.
    fn plain(&self) -> Value {
        let acked = self.acked.lock().unwrap();
        let mut sum = [0i64; 2];
        for m in acked.iter() {
            sum[0] += m[0];
            sum[1] += m[1];
        }
        json!(sum)
    }
}

/// A fresh database on the test cluster for each share server.
fn databases() -> Vec<String> {
    (0..SERVERS).map(|_| pg::fresh_database()).collect()
}

/// After the load: seals the rest through replica `replica` of server 0, then
/// checks that every live replica lists the same batches, that their counts add
/// up to the acknowledged reports (each exactly once) and that the total is
/// their plain sum. Returns the batches.
async fn check_exactly_once(
    cluster: &Replicated,
    replica: usize,
    load: &Load,
) -> Vec<(String, u64)> {
    cluster.seal_the_rest(replica, load).await;
    let defects = load.defects();
    assert!(
        defects.is_empty(),
        "defects: {defects:#?}\n{}",
        cluster.logs()
    );
    let batches = cluster.same_batches_everywhere(&load.endpoint).await;
    let acked = load.acked() as u64;
    // Every batch a seal answered is there, and no other but those decided
    // seals completed by themselves.
    let sealed = load.sealed.lock().unwrap().clone();
    let listed: Vec<&String> = batches.iter().map(|(id, _)| id).collect();
    for id in &sealed {
        assert!(
            listed.contains(&id),
            "sealed batch {id} is not listed: {batches:?}"
        );
    }
    let mut distinct = sealed.clone();
    distinct.sort();
    distinct.dedup();
    let incomplete = load.incomplete.load(Ordering::Relaxed);
    assert!(
        batches.len() as u64 <= distinct.len() as u64 + incomplete,
        "{} batches, but seals answered {} and {incomplete} more were decided",
        batches.len(),
        distinct.len()
    );
    let batched: u64 = batches.iter().map(|(_, count)| count).sum();
    assert_eq!(
        batched, acked,
        "the batches hold {batched} reports, {acked} were acknowledged"
    );
    let (count, shares) = cluster.total(&load.endpoint).await;
    assert_eq!(count, acked, "acknowledged reports went missing or doubled");
    assert_eq!(load.sharder.unshard(&shares, count), load.plain());
    batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_endpoints_plugins_and_seals_and_sum_exactly() {
    let fixture = std::fs::read(
        std::path::Path::new(env!("GUARDIAN_FIXTURES_DIR")).join("fixture_hostile.wasm"),
    )
    .unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&fixture));
    let cluster = Replicated::start(
        databases(),
        2,
        &[("GUARDIAN_PLUGINS_APPROVED", digest.as_str())],
    )
    .await;

    // A built-in plugin's endpoint created through replica 0 of each server, an
    // uploaded plugin's through replica 0 after its upload through replica 1.
    let params = json!({"length": 3, "signed": true});
    cluster.create_endpoint(0, "sum", "sum", &params).await;
    for server in 0..SERVERS {
        let uploaded = cluster
            .http
            .post(format!("{}/api/v1/plugins", cluster.base(server, 1)))
            .body(fixture.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(uploaded.status(), StatusCode::CREATED, "server {server}");
    }
    let count_params = json!({"mode": "ok"});
    cluster
        .create_endpoint(0, "counted", &digest, &count_params)
        .await;

    // Clients alternate between the replicas, the first report through replica 1
    // (which did not create the endpoints).
    let sums = Sharder::new("sum", &params);
    let counts = Sharder::from_wasm(&fixture, &count_params);
    let mut measurements = Vec::new();
    let mut ones = 0;
    for n in 0..24usize {
        let replica = (n + 1) % 2;
        let m = random_vector(3);
        let bit = u64::from(n % 3 == 0);
        ones += bit;
        for (endpoint, sharder, measurement) in
            [("sum", &sums, json!(m)), ("counted", &counts, json!(bit))]
        {
            let (id, shares) = sharder.shard(&measurement, SERVERS);
            for (server, share) in shares.iter().enumerate() {
                let (status, body) = cluster
                    .post(
                        server,
                        replica,
                        &format!("/api/v1/endpoints/{endpoint}/reports"),
                        json!({"report_id": id, "share": share}),
                    )
                    .await;
                assert_eq!(
                    status,
                    StatusCode::CREATED,
                    "{endpoint}: server {server} replica {replica}: {body}"
                );
            }
            // The same report again through the other replica: acknowledged,
            // stored once (the database enforces the id's uniqueness).
            let (status, body) = cluster
                .post(
                    0,
                    1 - replica,
                    &format!("/api/v1/endpoints/{endpoint}/reports"),
                    json!({"report_id": id, "share": shares[0]}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{endpoint} retry: {body}");
        }
        measurements.push(m);
    }

    // One seal of each endpoint, each through another replica of the coordinator.
    for (replica, endpoint) in [(1, "sum"), (0, "counted")] {
        let (status, sealed) = cluster
            .post(
                0,
                replica,
                &format!("/api/v1/endpoints/{endpoint}/batches"),
                json!({}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{endpoint}: {sealed}\n{}",
            cluster.logs()
        );
        assert_eq!(sealed["count"], 24, "{endpoint}: {sealed}");
    }
    let (count, shares) = cluster.total("sum").await;
    assert_eq!(count, 24);
    assert_eq!(sums.unshard(&shares, count), plain_sum(&measurements));
    let (count, shares) = cluster.total("counted").await;
    assert_eq!(count, 24);
    assert_eq!(counts.unshard(&shares, count), json!(ones));
    for endpoint in ["sum", "counted"] {
        let batches = cluster.same_batches_everywhere(endpoint).await;
        assert_eq!(batches.len(), 1, "{endpoint}: {batches:?}");
    }

    // Two replicas of the coordinator asked to seal at the same moment: one
    // batch; the other request answers with it, or says why it did not seal.
    for _ in 0..MIN_BATCH + 1 {
        let m = random_vector(3);
        let (id, shares) = sums.shard(&json!(m), SERVERS);
        for (server, share) in shares.iter().enumerate() {
            let (status, body) = cluster
                .post(
                    server,
                    measurements.len() % 2,
                    "/api/v1/endpoints/sum/reports",
                    json!({"report_id": id, "share": share}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        measurements.push(m);
    }
    let path = "/api/v1/endpoints/sum/batches";
    let (a, b) = tokio::join!(
        cluster.post(0, 0, path, json!({})),
        cluster.post(0, 1, path, json!({}))
    );
    println!("two seals at once answered {a:?} and {b:?}");
    let mut created = Vec::new();
    for (status, body) in [&a, &b] {
        let code = body["error"]["code"].as_str().unwrap_or("");
        match *status {
            StatusCode::CREATED => created.push(body["batch_id"].clone()),
            StatusCode::CONFLICT if code == "seal_pending" => {}
            StatusCode::CONFLICT if code == "batch_too_small" => {
                assert_eq!(body["error"]["agreed"], 0, "{body}");
            }
            StatusCode::SERVICE_UNAVAILABLE if code == "seal_in_progress" => {}
            _ => panic!("concurrent seals answered {a:?} and {b:?}"),
        }
    }
    assert!(!created.is_empty(), "neither seal sealed: {a:?} {b:?}");
    assert!(
        created.iter().all(|id| *id == created[0]),
        "two batches at once: {a:?} {b:?}"
    );
    let batches = cluster.same_batches_everywhere("sum").await;
    assert_eq!(batches.len(), 2, "{batches:?}");
    let (count, shares) = cluster.total("sum").await;
    assert_eq!(count, measurements.len() as u64);
    assert_eq!(sums.unshard(&shares, count), plain_sum(&measurements));

    // The peer routes were answered by both replicas of each server.
    for (server, balancer) in cluster.balancers.iter().enumerate() {
        let answered = balancer.answered();
        println!("server {server}: peer requests answered per replica {answered:?}");
        if server == 1 {
            assert!(
                answered.iter().all(|n| *n > 0),
                "server 1's replicas did not all answer peer calls: {answered:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_ingest_loses_no_acknowledged_report() {
    let mut cluster = Replicated::start(databases(), 2, &[]).await;
    let params = json!({"length": 2, "signed": true});
    cluster.create_endpoint(0, "load", "sum", &params).await;
    let load = Load::new("load", cluster.bases(), &params);
    let mut tasks = load.start();
    tasks.spawn(load.clone().sealer(cluster.base(0, 0)));

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = load.acked();
    cluster.kill(0, 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill(1, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop(tasks).await;

    let acked = load.acked();
    let retried = load.retried.load(Ordering::Relaxed);
    println!(
        "ingest: {acked} reports acknowledged ({before} before the first kill), {retried} retried on another replica"
    );
    assert!(
        before > 20 && acked > before + 20,
        "too little load to mean anything: {before} then {acked}"
    );
    assert!(retried > 0, "no client had to retry on another replica");
    // Server 1 is now reached through its replica 1 only: the balancer skips
    // the dead one.
    let batches = check_exactly_once(&cluster, 0, &load).await;
    println!(
        "{} batches, {} answered by seals during the load",
        batches.len(),
        load.sealed.lock().unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_whose_coordinator_replica_crashed_completes_through_the_other() {
    let mut cluster = Replicated::start(databases(), 2, &[]).await;
    let params = json!({"length": 4, "signed": true});
    cluster.create_endpoint(1, "steps", "sum", &params).await;
    // Replica 0 of the coordinator crashes in its next seal, after every
    // follower committed and before it commits itself.
    cluster.kill(0, 0);
    cluster
        .launch(
            0,
            0,
            &[(
                guardian::server::FAULT_VAR,
                "crash_before_coordinator_commit",
            )],
        )
        .await;
    let sharder = Sharder::new("sum", &params);
    let mut measurements = Vec::new();
    for n in 0..12usize {
        let m = random_vector(4);
        let (id, shares) = sharder.shard(&json!(m), SERVERS);
        for (server, share) in shares.iter().enumerate() {
            let (status, body) = cluster
                .post(
                    server,
                    n % 2,
                    "/api/v1/endpoints/steps/reports",
                    json!({"report_id": id, "share": share}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        measurements.push(m);
    }

    let sealing = cluster
        .http
        .post(format!(
            "{}/api/v1/endpoints/steps/batches",
            cluster.base(0, 0)
        ))
        .json(&json!({}))
        .send()
        .await;
    assert!(
        sealing.is_err(),
        "the coordinator's replica answered instead of crashing: {sealing:?}"
    );
    assert!(
        cluster.wait_exit(0, 0, Duration::from_secs(30)).await,
        "the coordinator's replica did not crash"
    );

    // Meanwhile a seal through the other replica never makes a second batch of
    // these reports: it answers with the batch, or says why not yet.
    let crashed = Instant::now();
    let (status, body) = cluster
        .post(0, 1, "/api/v1/endpoints/steps/batches", json!({}))
        .await;
    let code = body["error"]["code"].as_str().unwrap_or("");
    assert!(
        status == StatusCode::CREATED
            || (status == StatusCode::CONFLICT
                && (code == "seal_pending" || code == "batch_too_small"))
            || (status == StatusCode::SERVICE_UNAVAILABLE
                && (code == "seal_in_progress" || code == "seal_incomplete")),
        "a seal through the other replica answered {status} {body}"
    );

    // The other replica completes the decided seal by itself, once the crashed
    // replica's lease has expired.
    let deadline = Instant::now() + Duration::from_secs(30);
    let batch = loop {
        if let Some(batch) = cluster.batches(0, 1, "steps").await.first() {
            break batch.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the decided seal was not completed by the other replica:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Not before the crashed replica's seal lease expired (renewed every third
    // of the TTL, so at least two thirds of it after the crash): one seal of an
    // endpoint at a time across replicas.
    let took = crashed.elapsed();
    println!("completed {took:?} after the crash");
    assert!(
        took >= Duration::from_secs(1),
        "the other replica completed the seal {took:?} after the crash, while the crashed replica's lease ({LEASE_TTL_MS} ms) still held"
    );
    assert_eq!(batch.1, 12);
    assert_eq!(
        cluster.same_batches_everywhere("steps").await,
        vec![batch.clone()]
    );
    let (count, shares) = cluster.total("steps").await;
    assert_eq!(count, 12);
    assert_eq!(sharder.unshard(&shares, count), plain_sum(&measurements));

    // The crashed replica comes back and agrees; nothing is sealed twice.
    cluster.launch(0, 0, &[]).await;
    assert_eq!(cluster.same_batches_everywhere("steps").await, vec![batch]);
    let (status, body) = cluster
        .post(0, 0, "/api/v1/endpoints/steps/batches", json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["agreed"], 0, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_down_under_load_refuses_with_503_and_recovers_by_itself() {
    let postgres = tokio::task::block_in_place(pg::PgCluster::new);
    let databases = (0..SERVERS)
        .map(|server| {
            let name = format!("server_{server}");
            pg::execute(&postgres.url(), &format!("CREATE DATABASE {name}")).unwrap();
            pg::with_database(&postgres.url(), &name)
        })
        .collect();
    let cluster = Replicated::start(databases, 1, &[]).await;
    let params = json!({"length": 2, "signed": true});
    cluster.create_endpoint(0, "load", "sum", &params).await;
    let load = Load::new("load", cluster.bases(), &params);
    let mut tasks = load.start();
    tasks.spawn(load.clone().sealer(cluster.base(0, 0)));

    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| postgres.stop());
    let stopped = load.acked();
    // While it is down, the servers say they are not ready.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for server in 0..SERVERS {
        let (status, body) = cluster.get(server, 0, "/readyz").await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "server {server} ready without its database: {body}"
        );
        assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = load.acked();
    tokio::task::block_in_place(|| postgres.start());
    let restarted = Instant::now();

    // They recover by themselves: reports are acknowledged again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.acked() < during + 50 {
        assert!(
            Instant::now() < deadline,
            "no report acknowledged since the database came back ({} defects: {:?}):\n{}",
            load.acked(),
            load.defects(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "reports acknowledged again {:?} after the database came back",
        restarted.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop(tasks).await;
    for server in 0..SERVERS {
        let (status, body) = cluster.get(server, 0, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "server {server}: {body}");
    }

    let refusals = load.refusals.lock().unwrap().clone();
    println!(
        "{stopped} acknowledged before the outage, {during} when it ended, {} in all; refusals {refusals:?}",
        load.acked()
    );
    assert!(
        refusals.contains_key("503 storage_unavailable"),
        "no client was told the storage is unavailable: {refusals:?}"
    );
    for refusal in refusals.keys() {
        assert_eq!(
            refusal, "503 storage_unavailable",
            "an unexpected refusal: {refusals:?}"
        );
    }
    check_exactly_once(&cluster, 0, &load).await;
}
