//! Replicas of one share server in the seal protocol: two `guardian serve`
//! processes of server 0 over one PostgreSQL database, and server 1 over
//! another, all real processes over real HTTP.
//!
//! - Two seals of one endpoint asked of the two replicas at the same moment make
//!   one batch: the other request answers 503 `seal_in_progress` (with
//!   `Retry-After`) or the same batch.
//! - The replica driving the background work dies (aborted right after the
//!   followers committed a decided seal): the other takes the `driver` lease once
//!   it expired and completes the seal.
//! - A follower's steps of one seal reach its two replicas in turn (a load
//!   balancer in front of them): the pages of a proposal add up and the verifier
//!   messages of a robust endpoint reach the commit through the database.
//!
//! The databases are fresh ones on the cluster named by
//! `GUARDIAN_TEST_POSTGRES_URL`, which `cargo xtask test` starts; without it the
//! tests fail saying so.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::balancer::Balancer;
use common::{PEER_TOKEN, Sharder, free_port, pg, plain_sum, random_vector};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// Leases expire quickly here, so that a dead replica is replaced in a second.
const LEASE_TTL_MS: &str = "1000";

/// One `guardian serve` process; killed when dropped.
struct Process {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
    name: String,
}

impl Process {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited.
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|child| child.try_wait().unwrap().is_some())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What every process of the deployment shares: peer keys and credentials.
struct Deployment {
    dir: tempfile::TempDir,
    http: Client,
    /// Each server's private peer key (replicas of a server share it).
    key_files: [PathBuf; 2],
    /// Both servers' public keys, in index order.
    peer_keys: String,
}

impl Deployment {
    fn new() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let key_files = [dir.path().join("key-0"), dir.path().join("key-1")];
        let peer_keys = key_files
            .iter()
            .map(|file| guardian::auth::identity::public_key_of(file).unwrap())
            .collect::<Vec<_>>()
            .join(",");
        Deployment {
            dir,
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            key_files,
            peer_keys,
        }
    }

    /// Starts `name`, a process of server `index` on `addr` over the database at
    /// `database`, with the servers at `peers`; see [`Deployment::ready`].
    fn spawn(
        &self,
        name: &str,
        (index, addr): (usize, SocketAddr),
        database: &str,
        peers: &[String; 2],
        extra: &[(&str, &str)],
    ) -> Process {
        let data_dir = self.dir.path().join(name);
        let log = self.dir.path().join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_guardian"))
            .arg("serve")
            .env_clear()
            .env("GUARDIAN_AUTH_DISABLED", "true")
            .env("GUARDIAN_AUTH_PEER_TOKEN", PEER_TOKEN)
            .env("GUARDIAN_SERVER_INDEX", index.to_string())
            .env("GUARDIAN_SERVER_SERVERS", "2")
            .env("GUARDIAN_SERVER_PEERS", peers.join(","))
            .env("GUARDIAN_SERVER_PEER_KEYS", &self.peer_keys)
            .env("GUARDIAN_SERVER_KEY_FILE", &self.key_files[index])
            .env("GUARDIAN_SERVER_LISTEN", addr.to_string())
            .env("GUARDIAN_SERVER_DATA_DIR", &data_dir)
            .env("GUARDIAN_STORAGE_URL", database)
            .env("GUARDIAN_STORAGE_LEASE_TTL_MS", LEASE_TTL_MS)
            .env("GUARDIAN_ENDPOINTS_PEER_TIMEOUT_MS", "10000")
            .env("GUARDIAN_LOG_LEVEL", "info")
            .envs(extra.iter().copied())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting guardian serve");
        Process {
            child: Some(child),
            addr,
            log,
            name: name.to_owned(),
        }
    }

    /// Waits until `process` is ready.
    async fn ready(&self, mut process: Process) -> Process {
        let name = process.name.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(!process.exited(), "{name} exited:\n{}", process.log());
            let ready = self
                .http
                .get(format!("{}/readyz", process.base()))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                return process;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready:\n{}",
                process.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn post(&self, process: &Process, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", process.base()))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap_or_default())
    }

    async fn get(&self, process: &Process, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", process.base()))
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap_or_default())
    }

    /// Starts replica A of the replicated server (over database `databases.0`)
    /// and the other server (over `databases.1`) at once, waits until A drives
    /// the background work, then starts replica B with A's compiled plugins (as a
    /// replica started from a warm image has them, sparing the test a
    /// compilation); waits until all are ready.
    async fn start_all(
        &self,
        databases: (&str, &str),
        (replica_a, replica_b, follower): (Spawn<'_>, Spawn<'_>, Spawn<'_>),
    ) -> (Process, Process, Process) {
        let spawn =
            |(name, at, database, peers, extra): (&str, _, &str, &[String; 2], &[(&str, &str)])| {
                self.spawn(name, at, database, peers, extra)
            };
        let follower = spawn((follower.0, follower.1, databases.1, &follower.2, follower.3));
        let replica_a = spawn((
            replica_a.0,
            replica_a.1,
            databases.0,
            &replica_a.2,
            replica_a.3,
        ));
        let (follower, replica_a) = tokio::join!(self.ready(follower), self.ready(replica_a));
        let drives = "this replica drives the background work";
        assert!(
            eventually(Duration::from_secs(10), async || logged(
                &replica_a.log,
                drives
            ))
            .await,
            "replica A never took the driver lease:\n{}",
            replica_a.log()
        );
        copy_dir(
            &self
                .dir
                .path()
                .join(replica_a.name.as_str())
                .join("plugins"),
            &self.dir.path().join(replica_b.0).join("plugins"),
        );
        let replica_b = self
            .ready(spawn((
                replica_b.0,
                replica_b.1,
                databases.0,
                &replica_b.2,
                replica_b.3,
            )))
            .await;
        (replica_a, replica_b, follower)
    }

    /// Creates endpoint `steps` (sum of 3, min_batch 5) on every process given.
    async fn create_steps(&self, processes: &[&Process]) {
        for process in processes {
            let (status, body) = self
                .post(
                    process,
                    "/api/v1/endpoints",
                    json!({"name": "steps", "plugin": "sum", "params": params(), "min_batch": 5}),
                )
                .await;
            assert!(
                status == StatusCode::CREATED || status == StatusCode::OK,
                "{}: {status} {body}",
                process.base()
            );
        }
    }

    /// Posts `n` reports to `steps`: share 0 to the replicas of server 0 in turn,
    /// share 1 to server 1; returns the measurements.
    async fn submit(&self, replicas: &[&Process], follower: &Process, n: usize) -> Vec<Vec<i64>> {
        let client = Sharder::new("sum", &params());
        let mut measurements = Vec::new();
        for i in 0..n {
            let m = random_vector(3);
            let (id, shares) = client.shard(&json!(m), 2);
            for (process, share) in [
                (replicas[i % replicas.len()], &shares[0]),
                (follower, &shares[1]),
            ] {
                let (status, body) = self
                    .post(
                        process,
                        "/api/v1/endpoints/steps/reports",
                        json!({"report_id": id, "share": share}),
                    )
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{}: {body}", process.base());
            }
            measurements.push(m);
        }
        measurements
    }

    /// The batch ids `process` lists for `steps`.
    async fn batches(&self, process: &Process) -> Vec<String> {
        let (status, listed) = self.get(process, "/api/v1/endpoints/steps/batches").await;
        assert_eq!(status, StatusCode::OK, "{listed}");
        listed["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|batch| batch["batch_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Checks that `server0` and `server1` released batch `batch` of `count`
    /// reports whose shares add up to the sum of `measurements`.
    async fn check_batch(
        &self,
        (server0, server1): (&Process, &Process),
        batch: &str,
        measurements: &[Vec<i64>],
    ) {
        let mut shares = Vec::new();
        for process in [server0, server1] {
            let (status, body) = self
                .get(process, &format!("/api/v1/endpoints/steps/batches/{batch}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{}: {body}", process.base());
            assert_eq!(body["count"], measurements.len() as u64);
            shares.push(BASE64.decode(body["share"].as_str().unwrap()).unwrap());
        }
        let client = Sharder::new("sum", &params());
        assert_eq!(
            client.unshard(&shares, measurements.len() as u64),
            plain_sum(measurements)
        );
    }
}

/// How [`Deployment::start_all`] starts a process: name, server index and
/// address, peers, extra environment.
type Spawn<'a> = (
    &'a str,
    (usize, SocketAddr),
    [String; 2],
    &'a [(&'a str, &'a str)],
);

/// Copies the files of folder `from` into `to` (created).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn params() -> Value {
    json!({"length": 3, "signed": true})
}

/// Waits up to `within` for `what` to hold.
async fn eventually(within: Duration, mut what: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if what().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn logged(log: &Path, line: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_asked_at_once_make_one_batch() {
    let deployment = Deployment::new();
    let (database0, database1) = (pg::fresh_database(), pg::fresh_database());
    let (a, b, f) = (free_port(), free_port(), free_port());
    // Server 1 far away: a seal takes long enough for the second request to
    // find it running.
    let link = common::proxy::SlowLink::start(f.to_string(), Duration::from_millis(150)).await;
    let (replica_a, replica_b, follower) = deployment
        .start_all(
            (&database0, &database1),
            (
                (
                    "server-0a",
                    (0, a),
                    [format!("http://{a}"), link.url.clone()],
                    &[],
                ),
                (
                    "server-0b",
                    (0, b),
                    [format!("http://{b}"), link.url.clone()],
                    &[],
                ),
                (
                    "server-1",
                    (1, f),
                    [format!("http://{a}"), format!("http://{f}")],
                    &[],
                ),
            ),
        )
        .await;
    deployment
        .create_steps(&[&replica_a, &replica_b, &follower])
        .await;
    let measurements = deployment
        .submit(&[&replica_a, &replica_b], &follower, 20)
        .await;

    let seal = |process: &Process| {
        deployment
            .http
            .post(format!("{}/api/v1/endpoints/steps/batches", process.base()))
            .json(&json!({}))
            .send()
    };
    let (first, second) = tokio::join!(seal(&replica_a), seal(&replica_b));
    let mut sealed = Vec::new();
    let mut refused = 0;
    for response in [first.unwrap(), second.unwrap()] {
        let status = response.status();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.unwrap();
        match status {
            StatusCode::CREATED => sealed.push(body["batch_id"].as_str().unwrap().to_owned()),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"]["code"], "seal_in_progress", "{body}");
                assert!(retry_after.is_some(), "no Retry-After: {body}");
                refused += 1;
            }
            other => panic!("a seal answered {other}: {body}"),
        }
    }
    eprintln!("sealed: {sealed:?}, answered seal_in_progress: {refused}");
    assert!(!sealed.is_empty(), "neither replica sealed");
    assert!(
        sealed.iter().all(|id| *id == sealed[0]),
        "two batches: {sealed:?}"
    );
    assert_eq!(sealed.len() + refused, 2);

    // One batch, the same everywhere, with every report.
    for process in [&replica_a, &replica_b, &follower] {
        assert_eq!(
            deployment.batches(process).await,
            sealed[..1],
            "{}",
            process.base()
        );
    }
    deployment
        .check_batch((&replica_b, &follower), &sealed[0], &measurements)
        .await;

    // kill -9 of the replica driving the background work: the other takes over
    // once its lease expired.
    let drives = "this replica drives the background work";
    let (mut driver, other) = if logged(&replica_a.log, drives) {
        (replica_a, replica_b)
    } else {
        (replica_b, replica_a)
    };
    assert!(
        !logged(&other.log, drives),
        "both replicas drove:\n{}\n{}",
        driver.log(),
        other.log()
    );
    let killed = Instant::now();
    let mut child = driver.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || logged(&other.log, drives)).await,
        "the other replica never took the driver lease:\n{}",
        other.log()
    );
    eprintln!(
        "the driver lease moved {:?} after its holder was killed",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_lease_moves_when_its_holder_dies() {
    let deployment = Deployment::new();
    let (database0, database1) = (pg::fresh_database(), pg::fresh_database());
    let (a, b, f) = (free_port(), free_port(), free_port());
    let peers_of = |own: SocketAddr| [format!("http://{own}"), format!("http://{f}")];
    // Replica A dies right after the followers committed a seal it decided, before
    // it committed it itself: the decision is left in the database.
    let crash = [("GUARDIAN_FAULT", "crash_before_coordinator_commit")];
    let (mut replica_a, replica_b, follower) = deployment
        .start_all(
            (&database0, &database1),
            (
                ("server-0a", (0, a), peers_of(a), &crash),
                ("server-0b", (0, b), peers_of(b), &[]),
                ("server-1", (1, f), peers_of(a), &[]),
            ),
        )
        .await;
    let drives = "this replica drives the background work";
    deployment
        .create_steps(&[&replica_a, &replica_b, &follower])
        .await;
    let measurements = deployment
        .submit(&[&replica_a, &replica_b], &follower, 12)
        .await;
    assert!(
        !logged(&replica_b.log, drives),
        "replica B drives while A lives:\n{}",
        replica_b.log()
    );

    let answer = deployment
        .http
        .post(format!(
            "{}/api/v1/endpoints/steps/batches",
            replica_a.base()
        ))
        .json(&json!({}))
        .send()
        .await;
    assert!(answer.is_err(), "replica A answered: {answer:?}");
    assert!(
        eventually(Duration::from_secs(10), async || replica_a.exited()).await,
        "replica A did not die"
    );
    // Server 1 committed the batch; server 0 holds only the decision.
    let batches = deployment.batches(&follower).await;
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert!(deployment.batches(&replica_b).await.is_empty());

    // Replica B takes the driver lease once A's expired and completes the seal.
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(20), async || !deployment
            .batches(&replica_b)
            .await
            .is_empty())
        .await,
        "replica B never completed the seal:\n{}",
        replica_b.log()
    );
    let took = started.elapsed();
    assert!(logged(&replica_b.log, drives), "{}", replica_b.log());
    assert!(
        logged(&replica_b.log, "pending seal completed"),
        "{}",
        replica_b.log()
    );
    assert_eq!(deployment.batches(&replica_b).await, batches);
    deployment
        .check_batch((&replica_b, &follower), &batches[0], &measurements)
        .await;
    eprintln!("the seal completed through replica B {took:?} after replica A died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_steps_may_reach_either_of_its_replicas() {
    let deployment = Deployment::new();
    let (database0, database1) = (pg::fresh_database(), pg::fresh_database());
    let (a, f1, f2) = (free_port(), free_port(), free_port());
    // Server 1 is two replicas behind a load balancer that alternates requests.
    let balancer = Balancer::start(vec![format!("http://{f1}"), format!("http://{f2}")]).await;
    let peers = [format!("http://{a}"), balancer.url.clone()];
    // Pages of 8 ids: a seal proposes in several pages.
    let pages = [
        ("GUARDIAN_ENDPOINTS_MAX_BATCH", "8"),
        ("GUARDIAN_ENDPOINTS_DEFAULT_MIN_BATCH", "2"),
    ];
    let (replica_1, replica_2, coordinator) = deployment
        .start_all(
            (&database1, &database0),
            (
                ("server-1a", (1, f1), peers.clone(), &pages),
                ("server-1b", (1, f2), peers.clone(), &pages),
                ("server-0", (0, a), peers.clone(), &pages),
            ),
        )
        .await;
    let params = json!({"max_measurement": 10});
    for process in [&coordinator, &replica_1, &replica_2] {
        let (status, body) = deployment
            .post(
                process,
                "/api/v1/endpoints",
                json!({"name": "robust", "plugin": "prio3-sum", "params": params, "min_batch": 2}),
            )
            .await;
        assert!(status.is_success(), "{}: {status} {body}", process.base());
    }
    // 8 reports only server 0 holds (the first page agrees on none), then 8 that
    // both hold, server 1's to either replica.
    let sharder = Sharder::new("prio3-sum", &params);
    let mut sum = 0;
    for i in 0..16u64 {
        let report = sharder.shard_report(&json!(i % 10), 2);
        let mut to = vec![(&coordinator, 0)];
        if i >= 8 {
            to.push((if i % 2 == 0 { &replica_1 } else { &replica_2 }, 1));
            sum += i % 10;
        }
        for (process, index) in to {
            let (status, body) = deployment
                .post(
                    process,
                    "/api/v1/endpoints/robust/reports",
                    report.body(index),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{}: {body}", process.base());
        }
    }

    let (status, sealed) = deployment
        .post(&coordinator, "/api/v1/endpoints/robust/batches", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 8, "{sealed}");
    // Each step reached the other replica than the one before.
    let sent = balancer.log();
    let steps: Vec<&str> = sent.iter().map(|(step, _)| step.as_str()).collect();
    assert_eq!(
        steps,
        ["prepare", "prepare", "verify", "messages", "commit"],
        "{sent:?}"
    );
    assert!(
        sent.windows(2).all(|pair| pair[0].1 != pair[1].1),
        "{sent:?}"
    );
    let batch = sealed["batch_id"].as_str().unwrap();
    let mut shares = Vec::new();
    for process in [&coordinator, &replica_1, &replica_2] {
        let (status, body) = deployment
            .get(
                process,
                &format!("/api/v1/endpoints/robust/batches/{batch}"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", process.base());
        assert_eq!(body["count"], 8);
        shares.push(BASE64.decode(body["share"].as_str().unwrap()).unwrap());
    }
    // Both replicas read the same batch.
    assert_eq!(shares[1], shares[2]);
    assert_eq!(sharder.unshard(&shares[..2], 8), json!(sum));
}
