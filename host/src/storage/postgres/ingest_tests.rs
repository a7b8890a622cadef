//! Tests of the PostgreSQL writer and catalog that only PostgreSQL needs: group
//! commit through one multi-row statement, and two handles over one database
//! (two replicas) inserting, creating endpoints and counting quotas at once.
//!
//! Each test creates its own database on the server named by
//! `GUARDIAN_TEST_POSTGRES_URL` (started by `cargo xtask test`) and drops it at
//! the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use crate::storage::*;

/// The environment variable naming the test server.
const URL_VAR: &str = "GUARDIAN_TEST_POSTGRES_URL";

/// A database of its own on the test server, dropped by [`TestDb::drop_db`].
struct TestDb {
    /// The server's URL (its maintenance database).
    admin_url: String,
    /// This database's name.
    name: String,
    /// This database's URL.
    url: String,
}

impl TestDb {
    /// Creates a fresh database; fails (never skips) without a test server.
    async fn create() -> TestDb {
        let admin_url = std::env::var(URL_VAR).unwrap_or_else(|_| {
            panic!(
                "{URL_VAR} is not set: these tests need a PostgreSQL server; \
                 run them through `cargo xtask test`, which starts one"
            )
        });
        let name = format!("ingest_{:016x}", rand::random::<u64>());
        let client = admin(&admin_url).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|error| panic!("creating database {name} failed: {error}"));
        let url = with_database(&admin_url, &name);
        TestDb {
            admin_url,
            name,
            url,
        }
    }

    /// A storage handle over this database: one replica.
    async fn open(&self, options: StorageOptions) -> Storage {
        Storage::open_postgres(&self.url, options)
            .await
            .unwrap_or_else(|error| panic!("opening {} failed: {error:?}", self.name))
    }

    /// A plain connection, for checking what is stored.
    async fn sql(&self) -> tokio_postgres::Client {
        admin(&self.url).await
    }

    /// Drops the database, closing its connections.
    async fn drop_db(self) {
        let client = admin(&self.admin_url).await;
        client
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

/// A connection to `url` whose driver task runs in the background.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot connect to the test PostgreSQL at {URL_VAR} ({error}); \
                 `cargo xtask test` starts it"
            )
        });
    tokio::spawn(connection);
    client
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, format!("?{query}")),
        None => (rest, String::new()),
    };
    let authority = rest
        .split_once('/')
        .map_or(rest, |(authority, _)| authority);
    format!("{scheme}://{authority}/{name}{query}")
}

/// A fixed time with whole milliseconds.
fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + millis)
}

/// A report id whose last bytes are `n`.
fn report_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

/// A plugin record of these wasm bytes.
fn plugin(wasm: &[u8]) -> PluginRecord {
    PluginRecord {
        digest: Sha256::digest(wasm).into(),
        name: "sum".to_owned(),
        version: "1.0.0".to_owned(),
        description: "the sum plugin".to_owned(),
        params_schema: r#"{"type":"object"}"#.to_owned(),
        wasm: wasm.to_vec(),
        builtin: true,
        created_at: at(1),
    }
}

/// An endpoint record of `plugin`.
fn endpoint(
    name: &str,
    plugin: &PluginRecord,
    max_reports_per_user: Option<u64>,
) -> EndpointRecord {
    EndpointRecord {
        name: name.to_owned(),
        plugin_digest: plugin.digest,
        plugin_name: plugin.name.clone(),
        params: r#"{"length":10}"#.to_owned(),
        config: b"config".to_vec(),
        config_hash: Sha256::digest(b"config").into(),
        min_batch: 10,
        max_reports_per_user,
        created_at: at(2),
        schedule: SealSchedule::default(),
    }
}

/// Stores the plugin and creates endpoint `name` through `storage`.
async fn setup(storage: &Storage, name: &str, quota: Option<u64>) -> Endpoint {
    let sum = plugin(b"sum wasm");
    storage.put_plugin(sum.clone()).await.unwrap();
    match storage
        .create_endpoint(endpoint(name, &sum, quota))
        .await
        .unwrap()
    {
        CreateEndpointOutcome::Created(endpoint) => endpoint,
        other => panic!("endpoint {name} not created: {other:?}"),
    }
}

/// Options whose observer records the size of every committed group.
fn observed() -> (StorageOptions, Arc<Mutex<Vec<usize>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let options = StorageOptions {
        commit_observer: Some(Arc::new(move |stats: CommitStats| {
            assert!(stats.committed, "a group failed: {stats:?}");
            sink.lock().unwrap().push(stats.reports);
        })),
        ..StorageOptions::default()
    };
    (options, seen)
}

/// How many report rows `endpoint` has.
async fn rows(sql: &tokio_postgres::Client, endpoint: EndpointId) -> i64 {
    sql.query_one(
        "SELECT count(*) FROM reports WHERE endpoint_id = $1",
        &[&endpoint.0],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn every_outcome_is_answered_as_sqlite_answers_it() {
    let db = TestDb::create().await;
    let storage = db.open(StorageOptions::default()).await;
    let steps = setup(&storage, "steps", None).await;
    let id = steps.id;
    let insert = |n: u64, share: &'static [u8]| {
        storage.insert_report(id, report_id(n), share.to_vec(), at(3))
    };
    assert_eq!(
        insert(1, b"one").await.unwrap(),
        InsertReportOutcome::Stored
    );
    assert_eq!(
        insert(1, b"one").await.unwrap(),
        InsertReportOutcome::Duplicate
    );
    assert_eq!(
        insert(1, b"two").await.unwrap(),
        InsertReportOutcome::Conflict
    );
    assert!(matches!(
        storage
            .insert_report(EndpointId(id.0 + 1000), report_id(1), b"x".to_vec(), at(3))
            .await,
        Err(StorageError::UnknownEndpoint)
    ));

    // Once its share is deleted (batched, expired), a report compares by digest.
    assert_eq!(storage.expire_reports(id, at(4)).await.unwrap(), 1);
    assert_eq!(
        insert(1, b"one").await.unwrap(),
        InsertReportOutcome::Duplicate
    );
    assert_eq!(
        insert(1, b"two").await.unwrap(),
        InsertReportOutcome::Conflict
    );
    let counts = storage.endpoint_counts("steps").await.unwrap().unwrap();
    assert_eq!((counts.unbatched, counts.expired), (0, 1));

    // The poster is kept, as SQLite keeps it.
    let poster = storage.user_key("alice");
    assert_eq!(
        storage
            .insert_report_from(id, report_id(2), b"p".to_vec(), at(3), poster)
            .await
            .unwrap(),
        InsertReportOutcome::Stored
    );
    let sql = db.sql().await;
    let stored: (Option<Vec<u8>>, Option<Vec<u8>>) = sql
        .query_one(
            "SELECT poster, user_key FROM reports WHERE endpoint_id = $1 AND report_id = $2",
            &[&id.0, &&report_id(2)[..]],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(stored, (Some(poster.0.to_vec()), None));

    // A quota counts unbatched reports; a stored id is answered whatever the count.
    let limited = setup(&storage, "limited", Some(2)).await;
    let quota = UserQuota {
        user: storage.user_key("bob"),
        max: 2,
    };
    let post = |n: u64| {
        storage.insert_report_for_user(limited.id, report_id(n), vec![n as u8], at(3), quota)
    };
    assert_eq!(post(1).await.unwrap(), InsertReportOutcome::Stored);
    assert_eq!(post(2).await.unwrap(), InsertReportOutcome::Stored);
    assert_eq!(
        post(3).await.unwrap(),
        InsertReportOutcome::UserQuotaExceeded { max: 2 }
    );
    assert_eq!(post(2).await.unwrap(), InsertReportOutcome::Duplicate);
    let user_key: Vec<u8> = sql
        .query_one(
            "SELECT user_key FROM reports WHERE endpoint_id = $1 AND report_id = $2",
            &[&limited.id.0, &&report_id(1)[..]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(user_key, quota.user.0.to_vec());
    // Expired reports no longer count.
    storage.expire_reports(limited.id, at(4)).await.unwrap();
    assert_eq!(post(3).await.unwrap(), InsertReportOutcome::Stored);

    // Deleted: later reports of it are refused, its id is not reused.
    assert!(storage.delete_endpoint("steps").await.unwrap());
    assert!(matches!(
        insert(9, b"nine").await,
        Err(StorageError::UnknownEndpoint)
    ));
    let again = setup(&storage, "steps", None).await;
    assert_ne!(again.id, id);

    storage.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn a_group_answers_each_report_on_its_own() {
    let db = TestDb::create().await;
    let (options, seen) = observed();
    let storage = db.open(options).await;
    let steps = setup(&storage, "steps", None).await;
    let gone = setup(&storage, "gone", None).await;
    assert!(storage.delete_endpoint("gone").await.unwrap());

    // Many concurrent callers, each id twice (once with another share every
    // seventh), and some for a deleted endpoint among them.
    let mut calls = Vec::new();
    for n in 0..3000u64 {
        let storage = storage.clone();
        calls.push(tokio::spawn(async move {
            let first = storage.insert_report(steps.id, report_id(n), vec![1; 10], at(3));
            let second_share = if n % 7 == 0 { vec![2; 10] } else { vec![1; 10] };
            let second = storage.insert_report(steps.id, report_id(n), second_share, at(3));
            let lost = storage.insert_report(gone.id, report_id(n), vec![1; 10], at(3));
            let (first, second, lost) = tokio::join!(first, second, lost);
            (n, first.unwrap(), second.unwrap(), lost)
        }));
    }
    for call in calls {
        let (n, first, second, lost) = call.await.unwrap();
        let mut outcomes = [first, second];
        outcomes.sort_by_key(|outcome| format!("{outcome:?}"));
        let expected = if n % 7 == 0 {
            // Whichever came first is stored; the other conflicts with it.
            [InsertReportOutcome::Conflict, InsertReportOutcome::Stored]
        } else {
            [InsertReportOutcome::Duplicate, InsertReportOutcome::Stored]
        };
        assert_eq!(outcomes, expected, "report {n}");
        assert!(
            matches!(lost, Err(StorageError::UnknownEndpoint)),
            "report {n}: {lost:?}"
        );
    }
    let sql = db.sql().await;
    assert_eq!(rows(&sql, steps.id).await, 3000);
    let groups = seen.lock().unwrap().clone();
    assert_eq!(
        groups.iter().sum::<usize>(),
        9000,
        "every report of every group"
    );
    assert!(
        groups.iter().any(|&size| size > 1),
        "concurrent reports were committed together: {groups:?}"
    );

    // One bulk call with the same id twice: stored once, then compared.
    let bulk = |n: u64, share: u8| NewReport {
        report_id: report_id(n),
        share: vec![share; 10],
        quota: None,
        poster: None,
    };
    let outcomes = storage
        .insert_reports(
            steps.id,
            at(3),
            vec![
                bulk(5000, 1),
                bulk(5000, 1),
                bulk(5001, 1),
                bulk(5001, 2),
                bulk(0, 1),
            ],
        )
        .await;
    let outcomes: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        outcomes,
        [
            InsertReportOutcome::Stored,
            InsertReportOutcome::Duplicate,
            InsertReportOutcome::Stored,
            InsertReportOutcome::Conflict,
            InsertReportOutcome::Duplicate,
        ]
    );

    // A bulk call under a quota counts the reports before it in the same call.
    let limited = setup(&storage, "limited", Some(3)).await;
    let quota = UserQuota {
        user: storage.user_key("carol"),
        max: 3,
    };
    let mut reports: Vec<NewReport> = (0..5)
        .map(|n| NewReport {
            quota: Some(quota),
            ..bulk(n, 1)
        })
        .collect();
    reports.insert(
        1,
        NewReport {
            quota: Some(quota),
            ..bulk(0, 1)
        },
    );
    let outcomes: Vec<_> = storage
        .insert_reports(limited.id, at(3), reports)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let exceeded = InsertReportOutcome::UserQuotaExceeded { max: 3 };
    assert_eq!(
        outcomes,
        [
            InsertReportOutcome::Stored,
            InsertReportOutcome::Duplicate,
            InsertReportOutcome::Stored,
            InsertReportOutcome::Stored,
            exceeded,
            exceeded,
        ]
    );

    storage.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn two_replicas_store_each_id_once_and_never_exceed_a_quota() {
    let db = TestDb::create().await;
    let first = db.open(StorageOptions::default()).await;
    let second = db.open(StorageOptions::default()).await;

    // Both replicas create the same endpoint at the same moment.
    let sum = plugin(b"sum wasm");
    let (a, b) = tokio::join!(
        first.put_plugin(sum.clone()),
        second.put_plugin(sum.clone())
    );
    let mut puts = [a.unwrap(), b.unwrap()];
    puts.sort_by_key(|put| format!("{put:?}"));
    assert_eq!(
        puts,
        [PutPluginOutcome::AlreadyPresent, PutPluginOutcome::Inserted]
    );
    let (a, b) = tokio::join!(
        first.create_endpoint(endpoint("steps", &sum, None)),
        second.create_endpoint(endpoint("steps", &sum, None)),
    );
    let steps = match (a.unwrap(), b.unwrap()) {
        (CreateEndpointOutcome::Created(created), CreateEndpointOutcome::Identical(found))
        | (CreateEndpointOutcome::Identical(found), CreateEndpointOutcome::Created(created)) => {
            assert_eq!(created, found);
            created
        }
        other => panic!("not one Created and one Identical: {other:?}"),
    };

    // Every id sent to both replicas at once, as a client retrying elsewhere does.
    let mut calls = Vec::new();
    for n in 0..2000u64 {
        let (first, second) = (first.clone(), second.clone());
        calls.push(tokio::spawn(async move {
            let (a, b) = tokio::join!(
                first.insert_report(steps.id, report_id(n), vec![3; 10], at(3)),
                second.insert_report(steps.id, report_id(n), vec![3; 10], at(3)),
            );
            (n, a.unwrap(), b.unwrap())
        }));
    }
    for call in calls {
        let (n, a, b) = call.await.unwrap();
        let mut outcomes = [a, b];
        outcomes.sort_by_key(|outcome| format!("{outcome:?}"));
        assert_eq!(
            outcomes,
            [InsertReportOutcome::Duplicate, InsertReportOutcome::Stored],
            "report {n}"
        );
    }
    let sql = db.sql().await;
    assert_eq!(rows(&sql, steps.id).await, 2000);

    // Ten users post 20 reports each through both replicas at once, under a
    // quota of 3: each ends with exactly 3.
    let limited = setup(&first, "limited", Some(3)).await;
    let mut calls = Vec::new();
    for user in 0..10u64 {
        for n in 0..20u64 {
            let storage = if n % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            calls.push(tokio::spawn(async move {
                let quota = UserQuota {
                    user: storage.user_key(&format!("user {user}")),
                    max: 3,
                };
                let id = report_id(user * 100 + n);
                let outcome = storage
                    .insert_report_for_user(limited.id, id, vec![4; 10], at(3), quota)
                    .await
                    .unwrap();
                (user, outcome)
            }));
        }
    }
    let mut stored: HashMap<u64, usize> = HashMap::new();
    for call in calls {
        let (user, outcome) = call.await.unwrap();
        match outcome {
            InsertReportOutcome::Stored => *stored.entry(user).or_default() += 1,
            InsertReportOutcome::UserQuotaExceeded { max: 3 } => {}
            other => panic!("user {user}: {other:?}"),
        }
    }
    assert_eq!(stored, (0..10).map(|user| (user, 3)).collect());
    let per_user: Vec<i64> = sql
        .query(
            "SELECT count(*) FROM reports WHERE endpoint_id = $1 GROUP BY user_key",
            &[&limited.id.0],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(per_user, vec![3; 10]);

    first.close().await.unwrap();
    second.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn the_catalog_and_the_window_follow_sqlite() {
    let db = TestDb::create().await;
    let storage = db.open(StorageOptions::default()).await;
    let sum = plugin(b"sum wasm");
    assert_eq!(
        storage.put_plugin(sum.clone()).await.unwrap(),
        PutPluginOutcome::Inserted
    );
    let info = storage.get_plugin(sum.digest).await.unwrap().unwrap();
    assert_eq!((info.wasm_len, info.created_at), (8, at(1)));
    assert_eq!(storage.list_plugins().await.unwrap(), vec![info]);
    assert_eq!(
        storage.plugin_wasm(sum.digest).await.unwrap().unwrap(),
        b"sum wasm"
    );
    assert_eq!(storage.plugin_wasm([9; 32]).await.unwrap(), None);

    let unknown = plugin(b"never stored");
    assert!(matches!(
        storage.create_endpoint(endpoint("x", &unknown, None)).await,
        Err(StorageError::UnknownPlugin)
    ));
    let steps = setup(&storage, "steps", Some(5)).await;
    assert_eq!(steps.record, endpoint("steps", &sum, Some(5)));
    let other = EndpointRecord {
        min_batch: 11,
        ..endpoint("steps", &sum, Some(5))
    };
    assert!(matches!(
        storage.create_endpoint(other).await.unwrap(),
        CreateEndpointOutcome::Conflict(found) if found == steps
    ));
    for name in ["b", "c", "a"] {
        setup(&storage, name, None).await;
    }
    assert_eq!(storage.endpoint_count().await.unwrap(), 4);
    let names = |endpoints: Vec<Endpoint>| {
        endpoints
            .into_iter()
            .map(|endpoint| endpoint.record.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(storage.list_endpoints().await.unwrap()),
        ["a", "b", "c", "steps"]
    );
    assert_eq!(
        names(storage.endpoints_after(None, 2).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        names(
            storage
                .endpoints_after(Some("b".to_owned()), 5)
                .await
                .unwrap()
        ),
        ["c", "steps"]
    );

    // The window: ids before `keep_from` go, a few per call, counted as collected.
    for n in 0..10u64 {
        storage
            .insert_report(steps.id, report_id(n), vec![5; 10], at(3))
            .await
            .unwrap();
    }
    let collected = storage
        .collect_reports(steps.id, report_id(7), at(0), 4)
        .await
        .unwrap();
    assert_eq!(
        collected,
        Collected {
            reports: 4,
            more: true
        }
    );
    let collected = storage
        .collect_reports(steps.id, report_id(7), at(0), 4)
        .await
        .unwrap();
    assert_eq!(
        collected,
        Collected {
            reports: 3,
            more: false
        }
    );
    let counts = storage.endpoint_counts("steps").await.unwrap().unwrap();
    assert_eq!(
        counts,
        EndpointCounts {
            unbatched: 3,
            expired: 7,
            ..EndpointCounts::default()
        }
    );

    // Nothing goes while a seal is in progress.
    let sql = db.sql().await;
    sql.execute(
        "INSERT INTO seals (endpoint_id, batch_id, decided, positions, rows, created_at) \
         VALUES ($1, $2, false, '\\x'::bytea, '\\x'::bytea, 0)",
        &[&steps.id.0, &&[1u8; 16][..]],
    )
    .await
    .unwrap();
    assert_eq!(storage.expire_reports(steps.id, at(10)).await.unwrap(), 0);
    assert_eq!(
        storage
            .collect_reports(steps.id, report_id(100), at(0), 100)
            .await
            .unwrap(),
        Collected::default()
    );

    assert!(storage.delete_endpoint("steps").await.unwrap());
    assert!(!storage.delete_endpoint("steps").await.unwrap());
    assert_eq!(storage.endpoint_counts("steps").await.unwrap(), None);
    assert_eq!(rows(&sql, steps.id).await, 0);

    storage.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn close_commits_what_is_queued_and_refuses_the_rest() {
    let db = TestDb::create().await;
    let storage = db.open(StorageOptions::default()).await;
    let steps = setup(&storage, "steps", None).await;
    let mut calls = Vec::new();
    for n in 0..500u64 {
        let storage = storage.clone();
        calls.push(tokio::spawn(async move {
            storage
                .insert_report(steps.id, report_id(n), vec![6; 10], at(3))
                .await
        }));
    }
    // Let the callers queue, then close under them.
    tokio::task::yield_now().await;
    storage.clone().close().await.unwrap();
    let mut stored = 0i64;
    for call in calls {
        match call.await.unwrap() {
            Ok(InsertReportOutcome::Stored) => stored += 1,
            Err(StorageError::Closed) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(stored > 0, "the reports queued before close were committed");
    let sql = db.sql().await;
    assert_eq!(
        rows(&sql, steps.id).await,
        stored,
        "every acknowledged report is stored"
    );
    assert!(matches!(
        storage
            .insert_report(steps.id, report_id(9999), vec![6; 10], at(3))
            .await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        storage.list_endpoints().await,
        Err(StorageError::Closed)
    ));
    storage.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_write_failure_until_a_group_commits() {
    let db = TestDb::create().await;
    let storage = db.open(StorageOptions::default()).await;
    let steps = setup(&storage, "steps", None).await;
    let insert = |n: u64| storage.insert_report(steps.id, report_id(n), vec![7; 10], at(3));
    assert_eq!(insert(1).await.unwrap(), InsertReportOutcome::Stored);
    assert_eq!(storage.write_failure(), None);

    // The database refuses connections and drops the pooled ones.
    let admin = admin(&db.admin_url).await;
    let name = &db.name;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .unwrap();
    let error = insert(2).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    let failure = storage
        .write_failure()
        .expect("a write failure while unreachable");
    assert!(failure.starts_with("writing reports failed"), "{failure}");

    // Back: the next group commits and clears it. (A pooled connection whose
    // backend was still being terminated may fail one more try, as unavailable:
    // retried, as a client retries a 503.)
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let mut tries = 0;
    let outcome = loop {
        tries += 1;
        match insert(2).await {
            Ok(outcome) => break outcome,
            Err(e) if e.is_unavailable() && tries < 5 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("try {tries}: {e:?}"),
        }
    };
    assert_eq!(outcome, InsertReportOutcome::Stored);
    assert_eq!(storage.write_failure(), None);

    storage.close().await.unwrap();
    db.drop_db().await;
}
