//! Tests of the report window in storage: collection of old reports and ids, the
//! size of a database a stream flows through, and the migration of databases
//! whose reports have random ids. Time is explicit.
//!
//! Collection runs on both backends (see `test_backends`). SQLite only: the size
//! of the file and SQLite's id filters (the benchmark too), and the migration of
//! SQLite files stored before the window.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};

use super::sqlite::migrations::{self, MIGRATIONS};
use super::test_backends::{TestBackend, TestDb, on_both_backends};
use super::*;
use crate::report_id::{ReportWindow, with_time};

/// A time in 2025, `secs` later.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_765_000_000 + secs)
}

/// The `n`-th id made at `time`: unique per `n`, the rest as a client's.
fn id_at(time: SystemTime, n: u64) -> [u8; 16] {
    let mut random = [0u8; 16];
    random[8..].copy_from_slice(&(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes());
    with_time(time, random)
}

async fn store_with_endpoint(db: &TestDb) -> (Storage, Endpoint) {
    let storage = db.open().await;
    let wasm = b"sum wasm";
    let digest: [u8; 32] = Sha256::digest(wasm).into();
    storage
        .put_plugin(PluginRecord {
            digest,
            name: "sum".to_owned(),
            version: "1.0.0".to_owned(),
            description: "the sum plugin".to_owned(),
            params_schema: r#"{"type":"object"}"#.to_owned(),
            wasm: wasm.to_vec(),
            builtin: true,
            created_at: at(0),
        })
        .await
        .unwrap();
    let record = EndpointRecord {
        name: "stream".to_owned(),
        plugin_digest: digest,
        plugin_name: "sum".to_owned(),
        params: r#"{"length":10}"#.to_owned(),
        config: b"config".to_vec(),
        config_hash: Sha256::digest(b"config").into(),
        min_batch: 10,
        max_reports_per_user: None,
        created_at: at(0),
        schedule: Default::default(),
    };
    match storage.create_endpoint(record).await.unwrap() {
        CreateEndpointOutcome::Created(endpoint) => (storage, endpoint),
        other => panic!("endpoint not created: {other:?}"),
    }
}

/// Collects everything the window no longer needs at `now`; returns how many.
async fn collect(
    storage: &Storage,
    endpoint: EndpointId,
    window: &ReportWindow,
    now: SystemTime,
) -> u64 {
    let mut total = 0;
    loop {
        let step = storage
            .collect_reports(endpoint, window.keep_from(now), now - window.max_age, 2_000)
            .await
            .unwrap();
        total += step.reports;
        if !step.more {
            return total;
        }
    }
}

/// The size of the database file once its log is checkpointed into it.
fn checkpointed_size(path: &Path) -> u64 {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// A share of 80 bytes (a `sum` report of length 10), different per report.
fn share(n: u64) -> Vec<u8> {
    (0..10u64)
        .flat_map(|j| (n * 16 + j).to_le_bytes())
        .collect()
}

/// What a stream through the window measured.
struct Stream {
    /// The SQLite file when the window first filled, and at the end (bytes,
    /// checkpointed; 0 on PostgreSQL).
    size_when_full: u64,
    size_at_end: u64,
    /// Reports deleted by the window.
    collected: u64,
    /// Unbatched reports held at the end.
    held: u64,
    /// Reports counted as expired at the end.
    expired: u64,
    /// Spans of id time the id filters cover at the end.
    filter_spans: usize,
}

/// Streams `minutes` minutes of `per_minute` reports (made and received in that
/// minute) through a window of `window_minutes`, collecting after every minute;
/// measures the size of the SQLite file at `path`, if any.
async fn stream(
    storage: &Storage,
    endpoint: EndpointId,
    path: Option<&Path>,
    (minutes, per_minute, window_minutes): (u64, u64, u64),
) -> Stream {
    let window = ReportWindow {
        max_age: Duration::from_secs(window_minutes * 60),
        max_future_skew: Duration::from_secs(60),
    };
    let mut size_when_full = 0;
    let mut collected = 0;
    for minute in 0..minutes {
        let now = at(minute * 60);
        let mut inserts = tokio::task::JoinSet::new();
        for i in 0..per_minute {
            let n = minute * per_minute + i;
            let storage = storage.clone();
            inserts.spawn(async move {
                storage
                    .insert_report(endpoint, id_at(now, n), share(n), now)
                    .await
            });
        }
        while let Some(outcome) = inserts.join_next().await {
            assert_eq!(outcome.unwrap().unwrap(), InsertReportOutcome::Stored);
        }
        collected += collect(storage, endpoint, &window, now).await;
        if minute == window_minutes {
            size_when_full = path.map_or(0, checkpointed_size);
        }
    }
    let counts = storage.endpoint_counts("stream").await.unwrap().unwrap();
    Stream {
        size_when_full,
        size_at_end: path.map_or(0, checkpointed_size),
        collected,
        held: counts.unbatched,
        expired: counts.expired,
        filter_spans: storage.id_filter_spans().await.unwrap(),
    }
}

/// Streams 100 minutes of `per_minute` reports through a window of 20 minutes
/// and checks what the window deleted and what it still knows.
async fn stream_through_a_short_window(db: &TestDb, per_minute: u64) -> Stream {
    let (storage, endpoint) = store_with_endpoint(db).await;
    let path = (db.backend() == TestBackend::Sqlite).then(|| db.path());
    let measured = stream(&storage, endpoint.id, path, (100, per_minute, 20)).await;
    // Every report older than the window is gone, the rest is there.
    assert_eq!(measured.collected, 79 * per_minute);
    assert_eq!(measured.held, 21 * per_minute);
    assert_eq!(
        measured.expired, measured.collected,
        "collected reports count as expired"
    );
    // Replays inside the window are still caught, by share or by id.
    let window = ReportWindow {
        max_age: Duration::from_secs(20 * 60),
        max_future_skew: Duration::from_secs(60),
    };
    let now = at(99 * 60);
    let recent = 98 * per_minute + 7;
    let recent_id = id_at(at(98 * 60), recent);
    assert_eq!(
        storage
            .insert_report(endpoint.id, recent_id, share(recent), now)
            .await
            .unwrap(),
        InsertReportOutcome::Duplicate
    );
    assert_eq!(
        storage
            .insert_report(endpoint.id, recent_id, share(0), now)
            .await
            .unwrap(),
        InsertReportOutcome::Conflict
    );
    // A collected id is forgotten: storage would take it again (servers refuse it
    // by its age before it gets here; see `server::report_time`).
    assert!(window.check(&id_at(at(0), 7), now).is_err());
    assert_eq!(
        storage
            .insert_report(endpoint.id, id_at(at(0), 7), share(7), now)
            .await
            .unwrap(),
        InsertReportOutcome::Stored
    );
    storage.close().await.unwrap();
    measured
}

async fn a_stream_through_a_short_window_is_collected(db: TestDb) {
    stream_through_a_short_window(&db, 20).await;
}
on_both_backends!(a_stream_through_a_short_window_is_collected);

#[tokio::test]
async fn the_file_stops_growing_and_the_id_filters_follow_the_window() {
    let db = TestDb::sqlite();
    // 100 minutes of 1,000 reports a minute through a window of 20 minutes.
    let measured = stream_through_a_short_window(&db, 1_000).await;
    // The file stopped growing once the window was full: 4 more windows later it
    // is within 1.5 times its size then.
    let (full, end) = (measured.size_when_full, measured.size_at_end);
    assert!(
        end * 2 <= full * 3,
        "{end} bytes at the end, {full} when the window filled"
    );
    // The id filters follow the window (one per ~65 s of id time), not the stream.
    assert!(
        measured.filter_spans <= 21 * 60 / 65 + 2,
        "{} filter spans",
        measured.filter_spans
    );
}

/// The storage figure of BENCHMARKS.md: `GUARDIAN_WINDOW_BENCH_WINDOW` reports
/// held by the window (default 1,000,000), ten windows' worth streamed through
/// it, 10,000 a minute. Run with
/// `cargo test --release -p guardian --lib window_storage_bench -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run by hand"]
async fn window_storage_bench() {
    let held: u64 = std::env::var("GUARDIAN_WINDOW_BENCH_WINDOW").map_or(1_000_000, |v| {
        v.parse().expect("GUARDIAN_WINDOW_BENCH_WINDOW: a number")
    });
    const PER_MINUTE: u64 = 10_000;
    let window_minutes = held / PER_MINUTE;
    let db = TestDb::sqlite();
    let (storage, endpoint) = store_with_endpoint(&db).await;
    let started = std::time::Instant::now();
    let measured = stream(
        &storage,
        endpoint.id,
        Some(db.path()),
        (10 * window_minutes, PER_MINUTE, window_minutes),
    )
    .await;
    let (full, end) = (measured.size_when_full, measured.size_at_end);
    println!(
        "{} reports through a window of {held}: {full} bytes when full, {end} at the end \
         ({:.2}x), {} collected, {} id filter spans, {:.1} s",
        10 * window_minutes * PER_MINUTE,
        end as f64 / full as f64,
        measured.collected,
        measured.filter_spans,
        started.elapsed().as_secs_f64()
    );
    assert!(
        end * 2 <= full * 3,
        "{end} bytes at the end, {full} when the window filled"
    );
    storage.close().await.unwrap();
}

async fn nothing_is_collected_under_a_seal_in_progress(db: TestDb) {
    let (storage, endpoint) = store_with_endpoint(&db).await;
    let window = ReportWindow {
        max_age: Duration::from_secs(60),
        max_future_skew: Duration::from_secs(60),
    };
    for n in 0..10 {
        storage
            .insert_report(endpoint.id, id_at(at(0), n), share(n), at(0))
            .await
            .unwrap();
    }
    // A follower's reservation, as the seal protocol leaves it between steps.
    let reports = storage
        .unbatched_reports(endpoint.id, 0, usize::MAX)
        .await
        .unwrap();
    storage
        .put_seal(&Seal {
            endpoint: endpoint.id,
            batch_id: [0; 16],
            seal_number: 1,
            decided: false,
            positions: vec![0xff, 0x03],
            rows: reports.iter().map(|r| r.row).collect(),
            created_at: at(0),
            verification: None,
        })
        .await
        .unwrap();
    assert_eq!(collect(&storage, endpoint.id, &window, at(3_600)).await, 0);
    assert!(storage.drop_seal(endpoint.id, [0; 16]).await.unwrap());
    assert_eq!(collect(&storage, endpoint.id, &window, at(3_600)).await, 10);
    storage.close().await.unwrap();
}
on_both_backends!(nothing_is_collected_under_a_seal_in_progress);

#[tokio::test]
async fn reports_stored_before_the_window_are_collected_by_arrival() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guardian.db");
    let before = MIGRATIONS
        .iter()
        .position(|m| m.description.starts_with("report window"))
        .expect("the report window migration");
    // A database of the previous schema, with reports under random ids.
    let random_ids: Vec<[u8; 16]> = (0..6).map(|_| rand::random()).collect();
    {
        let mut conn = Connection::open(&path).unwrap();
        migrations::migrate(&mut conn, &MIGRATIONS[..before]).unwrap();
        conn.execute(
            "INSERT INTO plugins (digest, name, version, description, params_schema, builtin, \
             created_at, wasm) VALUES (?1, 'sum', '1.0.0', 'sum', '{}', 1, 0, x'00')",
            [Sha256::digest(b"sum wasm").to_vec()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO endpoints (name, plugin_digest, plugin_name, params, config, config_hash, \
             min_batch, created_at) VALUES ('old', ?1, 'sum', '{}', x'00', ?2, 2, 0)",
            params![
                Sha256::digest(b"sum wasm").to_vec(),
                Sha256::digest(b"c").to_vec()
            ],
        )
        .unwrap();
        for (n, report_id) in random_ids.iter().enumerate() {
            // Three received at the start, three an hour later.
            let received = sqlite::sql::to_millis(at(if n < 3 { 0 } else { 3_600 }));
            conn.execute(
                "INSERT INTO reports (endpoint_id, report_id, share, received_at, share_digest) \
                 VALUES (1, ?1, x'0102', ?2, NULL)",
                params![&report_id[..], received],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO report_ids (endpoint_id, report_id, row) VALUES (1, ?1, last_insert_rowid())",
                params![&report_id[..]],
            )
            .unwrap();
        }
    }
    let storage = Storage::open(&path, StorageOptions::default())
        .await
        .unwrap();
    let endpoint = storage.get_endpoint("old").await.unwrap().unwrap();
    let window = ReportWindow {
        max_age: Duration::from_secs(1_800),
        max_future_skew: Duration::from_secs(60),
    };
    // Half an hour after the first three arrived, none of them goes: their time is
    // their arrival, not their (random) id.
    assert_eq!(collect(&storage, endpoint.id, &window, at(1_700)).await, 0);
    // An hour after: the first three go, the later three stay.
    assert_eq!(collect(&storage, endpoint.id, &window, at(3_600)).await, 3);
    let counts = storage.endpoint_counts("old").await.unwrap().unwrap();
    assert_eq!((counts.unbatched, counts.expired), (3, 3), "{counts:?}");
    for report_id in &random_ids[3..] {
        let again = storage
            .insert_report(endpoint.id, *report_id, vec![1, 2], at(3_600))
            .await
            .unwrap();
        assert_eq!(again, InsertReportOutcome::Duplicate);
    }
    // Reports with time-carrying ids stored after the upgrade go by their ids.
    storage
        .insert_report(endpoint.id, id_at(at(3_600), 1), vec![3], at(3_600))
        .await
        .unwrap();
    assert_eq!(
        collect(&storage, endpoint.id, &window, at(3_600 + 1_801)).await,
        4
    );
    storage.close().await.unwrap();
}
