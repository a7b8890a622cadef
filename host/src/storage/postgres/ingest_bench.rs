//! Durable ingest through the facade, PostgreSQL beside SQLite in the same run:
//! many concurrent callers inserting reports of length 10 (auth off), as the
//! report handlers do under load. Ignored by default; run with
//! `cargo test --release -p guardian --lib ingest_bench -- --ignored --nocapture`
//! and `GUARDIAN_TEST_POSTGRES_URL` set (`cargo xtask test` starts a server).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

use crate::storage::*;

/// Concurrent callers: about what an HTTP server under a load generator has in
/// flight.
const CALLERS: usize = 512;

/// How long each backend is measured, after a warm-up of a second.
const MEASURE: Duration = Duration::from_secs(8);

/// The length-10 share of the `sum` plugin: 10 field elements of 8 bytes.
const SHARE_LEN: usize = 80;

/// Creates the endpoint every report goes to.
async fn endpoint(storage: &Storage) -> EndpointId {
    let wasm = b"bench wasm".to_vec();
    let digest: [u8; 32] = Sha256::digest(&wasm).into();
    storage
        .put_plugin(PluginRecord {
            digest,
            name: "sum".to_owned(),
            version: "1".to_owned(),
            description: String::new(),
            params_schema: "{}".to_owned(),
            wasm,
            builtin: true,
            created_at: SystemTime::now(),
        })
        .await
        .unwrap();
    let record = EndpointRecord {
        name: "bench".to_owned(),
        plugin_digest: digest,
        plugin_name: "sum".to_owned(),
        params: r#"{"length":10}"#.to_owned(),
        config: vec![],
        config_hash: [0; 32],
        min_batch: 10,
        max_reports_per_user: None,
        created_at: SystemTime::now(),
        schedule: SealSchedule::default(),
    };
    match storage.create_endpoint(record).await.unwrap() {
        CreateEndpointOutcome::Created(endpoint) => endpoint.id,
        other => panic!("{other:?}"),
    }
}

/// Reports per second stored through `storage` by [`CALLERS`] callers, and the
/// mean group size.
async fn measure(storage: Storage, groups: Arc<AtomicU64>) -> (f64, f64) {
    let id = endpoint(&storage).await;
    let stored = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (storage, stored, stop) = (storage.clone(), stored.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let report_id: [u8; 16] = rand::random();
                let share: Vec<u8> = (0..SHARE_LEN).map(|_| rand::random()).collect();
                let outcome = storage
                    .insert_report(id, report_id, share, SystemTime::now())
                    .await
                    .unwrap();
                assert_eq!(outcome, InsertReportOutcome::Stored);
                stored.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (stored_before, groups_before) =
        (stored.load(Ordering::SeqCst), groups.load(Ordering::SeqCst));
    let started = Instant::now();
    tokio::time::sleep(MEASURE).await;
    let count = stored.load(Ordering::SeqCst) - stored_before;
    let group_count = groups.load(Ordering::SeqCst) - groups_before;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }
    storage.close().await.unwrap();
    (
        count as f64 / elapsed,
        count as f64 / group_count.max(1) as f64,
    )
}

/// Options counting group commits in `groups`.
fn counted(groups: &Arc<AtomicU64>) -> StorageOptions {
    let groups = groups.clone();
    StorageOptions {
        commit_observer: Some(Arc::new(move |_| {
            groups.fetch_add(1, Ordering::Relaxed);
        })),
        ..StorageOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it by name with --ignored --release"]
async fn ingest_bench() {
    let url = std::env::var("GUARDIAN_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "GUARDIAN_TEST_POSTGRES_URL is not set; `cargo xtask test` starts a PostgreSQL server"
        )
    });
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let name = format!("ingest_bench_{:08x}", rand::random::<u32>());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let (scheme, rest) = url.split_once("://").unwrap();
    let authority = rest.split(['/', '?']).next().unwrap();
    let db_url = format!("{scheme}://{authority}/{name}");

    let dir = tempfile::tempdir().unwrap();
    let groups = Arc::new(AtomicU64::new(0));
    let sqlite = Storage::open(&dir.path().join("bench.db"), counted(&groups))
        .await
        .unwrap();
    let (sqlite_rate, sqlite_group) = measure(sqlite, groups).await;

    let groups = Arc::new(AtomicU64::new(0));
    let postgres = Storage::open_postgres(&db_url, counted(&groups))
        .await
        .unwrap();
    let (pg_rate, pg_group) = measure(postgres, groups).await;

    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    println!(
        "durable ingest, {CALLERS} callers, shares of {SHARE_LEN} bytes:\n  \
         SQLite     {sqlite_rate:>8.0} reports/s (mean group {sqlite_group:.0})\n  \
         PostgreSQL {pg_rate:>8.0} reports/s (mean group {pg_group:.0})\n  \
         ratio PostgreSQL/SQLite {:.2}",
        pg_rate / sqlite_rate
    );
}
