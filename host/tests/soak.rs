//! Soak: sustained mixed load on two real servers (posts, seals, fetches, bad
//! requests) for a bounded time, with each server killed (SIGKILL) and restarted
//! in the middle. Afterwards every acknowledged report is in exactly one batch,
//! both servers list the same batches, and the combined total is the plain sum of
//! every acknowledged measurement.
//!
//! A second soak puts a proxy between the coordinator and the follower that
//! cuts and delays seal steps at random (seeded, reproducible) for a minute,
//! with the follower killed once on top; the same checks hold, and the endpoint
//! seals again once the faults stop.
//!
//! The first runs on SQLite and again on PostgreSQL (each server on a fresh
//! database of the test cluster of `cargo xtask test`).
//!
//! `GUARDIAN_SOAK_SECS` sets the load time of the first (default 20 s),
//! `GUARDIAN_SOAK_PG_SECS` of its PostgreSQL run (15 s),
//! `GUARDIAN_FAULT_SECS` and `GUARDIAN_FAULT_SEED` the second's (60 s, seed 7).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use reqwest::{Client, StatusCode};
use serde_json::json;
use tokio::task::JoinSet;

const ENDPOINT: &str = "soak";
const MIN_BATCH: u64 = 5;
const POSTERS: usize = 8;

/// What the load tasks share.
struct Load {
    bases: Vec<String>,
    http: Client,
    sharder: Sharder,
    stop: AtomicBool,
    /// Measurements acknowledged by every server.
    acked: Mutex<Vec<Vec<i64>>>,
    /// Answers that must never happen (a 500, a bad request not refused).
    defects: Mutex<Vec<String>>,
    seals: AtomicU64,
}

impl Load {
    fn defect(&self, what: String) {
        self.defects.lock().unwrap().push(what);
    }

    /// Posts one report to every server, retrying each until it is acknowledged
    /// (servers come and go); gives up only after a minute.
    async fn post_everywhere(&self, measurement: &[i64]) -> bool {
        let (id, shares) = self.sharder.shard(&json!(measurement), self.bases.len());
        let deadline = Instant::now() + Duration::from_secs(60);
        for (index, base) in self.bases.iter().enumerate() {
            loop {
                let sent = self
                    .http
                    .post(format!("{base}/api/v1/endpoints/{ENDPOINT}/reports"))
                    .json(&json!({"report_id": id, "share": shares[index]}))
                    .send()
                    .await;
                match sent.map(|r| r.status()) {
                    Ok(StatusCode::CREATED | StatusCode::OK) => break,
                    Ok(status) if status.is_client_error() => {
                        self.defect(format!("server {index} refused a valid report: {status}"));
                        return false;
                    }
                    Ok(status) if status == StatusCode::INTERNAL_SERVER_ERROR => {
                        self.defect(format!("server {index} answered 500 to a report"));
                        return false;
                    }
                    // Down, restarting or shutting down: the client retries.
                    _ => {}
                }
                if Instant::now() > deadline {
                    self.defect(format!("server {index} never acknowledged report {id}"));
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        true
    }
}

async fn poster(load: Arc<Load>) {
    while !load.stop.load(Ordering::Relaxed) {
        let measurement: Vec<i64> = {
            let mut rng = rand::rng();
            vec![rng.random_range(0..1000), rng.random_range(-500..500)]
        };
        if load.post_everywhere(&measurement).await {
            load.acked.lock().unwrap().push(measurement);
        }
    }
}

async fn sealer(load: Arc<Load>) {
    while !load.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = load
            .http
            .post(format!(
                "{}/api/v1/endpoints/{ENDPOINT}/batches",
                load.bases[0]
            ))
            .send()
            .await;
        match sent.map(|r| r.status()) {
            Ok(StatusCode::CREATED) => {
                load.seals.fetch_add(1, Ordering::Relaxed);
            }
            Ok(StatusCode::INTERNAL_SERVER_ERROR) => {
                load.defect("a seal answered 500".to_owned());
            }
            // 409 too small, 503 a peer restarting, or the coordinator itself down.
            _ => {}
        }
    }
}

async fn reader(load: Arc<Load>) {
    let mut n = 0usize;
    while !load.stop.load(Ordering::Relaxed) {
        n += 1;
        let base = &load.bases[n % load.bases.len()];
        let path = if n.is_multiple_of(2) {
            "total"
        } else {
            "batches"
        };
        let sent = load
            .http
            .get(format!("{base}/api/v1/endpoints/{ENDPOINT}/{path}"))
            .send()
            .await;
        if let Ok(response) = sent
            && response.status() != StatusCode::OK
            && response.status() != StatusCode::SERVICE_UNAVAILABLE
        {
            load.defect(format!("GET {path} answered {}", response.status()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn vandal(load: Arc<Load>) {
    let bad: Vec<(&str, String)> = vec![
        ("reports", "{not json".to_owned()),
        (
            "reports",
            json!({"report_id": "zz", "share": "AA=="}).to_string(),
        ),
        (
            "reports",
            json!({"report_id": "00".repeat(16), "share": "AAAA"}).to_string(),
        ),
        ("reports", json!({"share": "AA=="}).to_string()),
        ("batches/not-hex", String::new()),
    ];
    let mut n = 0usize;
    while !load.stop.load(Ordering::Relaxed) {
        n += 1;
        let (path, body) = &bad[n % bad.len()];
        let base = &load.bases[n % load.bases.len()];
        let url = format!("{base}/api/v1/endpoints/{ENDPOINT}/{path}");
        let sent = if path.starts_with("batches") {
            load.http.get(url).send().await
        } else {
            load.http
                .post(url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
        };
        if let Ok(response) = sent {
            let status = response.status();
            if !status.is_client_error() && status != StatusCode::SERVICE_UNAVAILABLE {
                load.defect(format!("bad request to {path} answered {status}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_with_restarts_loses_nothing_and_batches_match() {
    let cluster = Cluster::start(2).await;
    mixed_load_with_restarts(cluster, secs("GUARDIAN_SOAK_SECS", 20)).await;
}

/// The same on PostgreSQL: each server on a fresh database of its own. (Its
/// name sorts last, so that the test runner starts it after the long fault soak
/// and both run beside each other.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_load_on_postgres_loses_nothing_and_batches_match() {
    let databases: Vec<String> = (0..2).map(|_| pg::fresh_database()).collect();
    let cluster = Cluster::start_each(2, |_, index| {
        vec![("GUARDIAN_STORAGE_URL".to_owned(), databases[index].clone())]
    })
    .await;
    mixed_load_with_restarts(cluster, secs("GUARDIAN_SOAK_PG_SECS", 15)).await;
}

/// Load for `soak`, with server 1 then server 0 killed and restarted.
async fn mixed_load_with_restarts(mut cluster: Cluster, soak: Duration) {
    let params = json!({"length": 2, "signed": true});
    cluster
        .create_endpoint(ENDPOINT, "sum", params.clone(), MIN_BATCH)
        .await;
    let (load, mut tasks) = start_load(&cluster, &params);

    let started = Instant::now();
    tokio::time::sleep(soak / 3).await;
    cluster.kill(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.launch(1, &[]).await;
    tokio::time::sleep((soak / 3).saturating_sub(Duration::from_millis(300))).await;
    cluster.kill(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.launch(0, &[]).await;
    tokio::time::sleep(soak.saturating_sub(started.elapsed())).await;
    load.stop.store(true, Ordering::Relaxed);
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }

    settle_and_check(&cluster, &load).await;
}

/// After the load: seals what is left (topping up a last partial batch with known
/// reports), then checks that every acknowledged report is in exactly one batch,
/// both servers list the same batches, and the total is the plain sum.
async fn settle_and_check(cluster: &Cluster, load: &Load) {
    // Seal what is left; top up a last partial batch with known reports.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the final seals did not finish");
        let (status, body) = cluster.seal(ENDPOINT).await;
        match status {
            StatusCode::CREATED => continue,
            StatusCode::CONFLICT if body["error"]["code"] == "batch_too_small" => {
                let agreed = body["error"]["agreed"].as_u64().unwrap();
                if agreed == 0 {
                    break;
                }
                for _ in agreed..MIN_BATCH {
                    let measurement = vec![1, -1];
                    assert!(load.post_everywhere(&measurement).await);
                    load.acked.lock().unwrap().push(measurement);
                }
            }
            // A decided seal still completing.
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    let defects = load.defects.lock().unwrap().clone();
    assert!(defects.is_empty(), "defects: {defects:#?}");
    let acked = load.acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100 && load.seals.load(Ordering::Relaxed) > 3,
        "too little load to mean anything: {} reports, {} seals",
        acked.len(),
        load.seals.load(Ordering::Relaxed)
    );
    let mut lists = Vec::new();
    for index in 0..2 {
        let (status, list) = cluster
            .get(index, &format!("/api/v1/endpoints/{ENDPOINT}/batches"))
            .await;
        assert_eq!(status, StatusCode::OK);
        lists.push(batch_counts(&list));
        let (_, endpoint) = cluster
            .get(index, &format!("/api/v1/endpoints/{ENDPOINT}"))
            .await;
        assert_eq!(
            endpoint["reports"]["unbatched"], 0,
            "server {index}: {endpoint}"
        );
    }
    assert_eq!(lists[0], lists[1], "the servers list different batches");
    let (count, shares) = cluster
        .shares(&format!("/api/v1/endpoints/{ENDPOINT}/total"))
        .await;
    assert_eq!(
        count,
        acked.len() as u64,
        "acknowledged reports went missing"
    );
    let mut plain = [0i64; 2];
    for m in &acked {
        plain[0] += m[0];
        plain[1] += m[1];
    }
    assert_eq!(load.sharder.unshard(&shares, count), json!(plain));
    println!(
        "soak: {} reports acknowledged, {} seals during the load, {} batches",
        acked.len(),
        load.seals.load(Ordering::Relaxed),
        lists[0].len()
    );
}

/// Reads a duration in seconds from the environment.
fn secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

/// Starts the load tasks on `cluster`'s endpoint.
fn start_load(cluster: &Cluster, params: &serde_json::Value) -> (Arc<Load>, JoinSet<()>) {
    let load = Arc::new(Load {
        bases: (0..2).map(|i| cluster.base(i)).collect(),
        http: Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        sharder: Sharder::new("sum", params),
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
        defects: Mutex::new(Vec::new()),
        seals: AtomicU64::new(0),
    });
    let mut tasks = JoinSet::new();
    for _ in 0..POSTERS {
        tasks.spawn(poster(load.clone()));
    }
    tasks.spawn(sealer(load.clone()));
    tasks.spawn(reader(load.clone()));
    tasks.spawn(vandal(load.clone()));
    (load, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seals_under_random_peer_faults_lose_nothing_and_batches_match() {
    let faulty = secs("GUARDIAN_FAULT_SECS", 60);
    let seed: u64 = std::env::var("GUARDIAN_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    println!("peer faults for {faulty:?}, seed {seed} (GUARDIAN_FAULT_SEED)");
    let mut cluster = Cluster::start(2).await;
    let proxy = cluster.proxy_follower().await;
    let params = json!({"length": 2, "signed": true});
    cluster
        .create_endpoint(ENDPOINT, "sum", params.clone(), MIN_BATCH)
        .await;
    let (load, mut tasks) = start_load(&cluster, &params);

    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < faulty {
        let step = ["prepare", "commit", "abort"][rng.random_range(0..3)];
        match rng.random_range(0..4) {
            0 => proxy.cut(step, true),
            1 => proxy.cut(step, false),
            2 => proxy.delay_answer(step, Duration::from_millis(rng.random_range(0..3000))),
            _ => proxy.delay_answer(step, Duration::ZERO),
        }
        if !killed && started.elapsed() > faulty / 2 {
            killed = true;
            cluster.kill(1);
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.launch(1, &[]).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
    }
    // The faults stop: every step goes through again.
    for step in ["prepare", "commit", "abort"] {
        proxy.cut(step, false);
        proxy.delay_answer(step, Duration::ZERO);
    }
    load.stop.store(true, Ordering::Relaxed);
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }
    settle_and_check(&cluster, &load).await;
}
