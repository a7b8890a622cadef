//! Backups and restores across real `guardian serve` processes (README, "Backup
//! and restore"): `guardian admin backup` of a server under load, the server
//! restored from it, and seals with its peer afterwards that release no report
//! twice; and an admin's deletion of released batches over HTTP and from the
//! command line.
//!
//! Report k of the load is the indicator vector e_k of a `sum` endpoint, so the
//! combined result of a batch says exactly which reports it holds: entry k is
//! how many times report k was released.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use guardian::config::Role;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// Reports the load can send (and the length of their vectors).
const REPORTS: usize = 1024;

/// A client posting report after report to every server, recording which
/// server acknowledged each.
struct Load {
    /// Per report: acknowledged by server 0, by server 1.
    acked: Mutex<Vec<[bool; 2]>>,
    /// Reports whose posts have all been answered (or failed): every report
    /// below this index is finished, none above it started.
    done: AtomicUsize,
    stop: AtomicBool,
}

impl Load {
    /// Posts the prepared reports one after the other, each to server 0 then
    /// server 1, until stopped or out of reports. A server that is down just
    /// does not acknowledge.
    fn start(
        http: Client,
        bases: [String; 2],
        reports: Vec<(String, Vec<String>)>,
    ) -> (Arc<Load>, tokio::task::JoinHandle<()>) {
        let load = Arc::new(Load {
            acked: Mutex::new(vec![[false; 2]; reports.len()]),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let task = {
            let load = load.clone();
            tokio::spawn(async move {
                for (k, (id, shares)) in reports.into_iter().enumerate() {
                    if load.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    for (index, base) in bases.iter().enumerate() {
                        let answer = http
                            .post(format!("{base}/api/v1/endpoints/steps/reports"))
                            .json(&json!({"report_id": id, "share": shares[index]}))
                            .send()
                            .await;
                        if answer.is_ok_and(|a| a.status().is_success()) {
                            load.acked.lock().unwrap()[k][index] = true;
                        }
                    }
                    load.done.store(k + 1, Ordering::SeqCst);
                    // A steady stream rather than a burst, so it lasts the test.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        (load, task)
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `more` further reports have been posted.
    async fn advance(&self, more: usize) -> usize {
        let target = self.done() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.done() < target {
            assert!(
                self.done() < REPORTS && Instant::now() < deadline,
                "the load stalled at report {} of {REPORTS}",
                self.done()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.done()
    }

    fn acked(&self) -> Vec<[bool; 2]> {
        self.acked.lock().unwrap().clone()
    }
}

/// The reports a batch holds, from its combined result, checking that each is
/// there at most once.
fn members(result: &Value, count: u64) -> BTreeSet<usize> {
    let entries: Vec<i64> = result
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(
        entries.iter().all(|&e| e == 0 || e == 1),
        "a report counted other than once in a batch: {entries:?}"
    );
    let set: BTreeSet<usize> = (0..entries.len()).filter(|&k| entries[k] == 1).collect();
    assert_eq!(
        set.len() as u64,
        count,
        "the count is not the reports summed"
    );
    set
}

/// Runs `guardian` with `args` and a clean environment plus `env`, in `dir`.
fn guardian(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guardian"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(dir)
        .output()
        .expect("running guardian")
}

fn sidecar(database: &Path, suffix: &str) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push(suffix);
    path.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_without_releasing_any_report_twice() {
    let mut cluster = Cluster::start(2).await;
    let params = json!({"length": REPORTS});
    cluster
        .create_endpoint("steps", "sum", params.clone(), 5)
        .await;
    let client = Sharder::new("sum", &params);
    let reports: Vec<(String, Vec<String>)> = (0..REPORTS)
        .map(|k| {
            let mut indicator = vec![0i64; REPORTS];
            indicator[k] = 1;
            client.shard(&json!(indicator), 2)
        })
        .collect();
    let (load, task) = Load::start(
        cluster.http.clone(),
        [cluster.base(0), cluster.base(1)],
        reports,
    );
    load.advance(40).await;

    // The backup of server 1, under load, with the server's own configuration.
    let work = cluster.dir.path().to_path_buf();
    let backup = work.join("backups").join("server-1.sqlite");
    std::fs::create_dir_all(backup.parent().unwrap()).unwrap();
    let database = cluster.database(1);
    let server_env = vec![
        ("GUARDIAN_SERVER_INDEX", "1".to_owned()),
        ("GUARDIAN_SERVER_SERVERS", "2".to_owned()),
        (
            "GUARDIAN_SERVER_PEERS",
            format!("{},{}", cluster.base(0), cluster.base(1)),
        ),
        (
            "GUARDIAN_SERVER_DATA_DIR",
            database.parent().unwrap().display().to_string(),
        ),
        ("GUARDIAN_AUTH_DISABLED", "true".to_owned()),
    ];
    let backup_arg = backup.display().to_string();
    let before_backup = load.done();
    let copied = guardian(&work, &["admin", "backup", &backup_arg], &server_env);
    let after_backup = load.done();
    let stdout = String::from_utf8_lossy(&copied.stdout);
    assert!(
        copied.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    assert!(
        stdout.contains("backed up") && stdout.contains("pages"),
        "{stdout}"
    );
    // The load went on while it copied... or the copy was too quick to tell;
    // either way the file is a whole database.
    {
        let copy = rusqlite::Connection::open(&backup).unwrap();
        let check: String = copy
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let held: i64 = copy
            .query_row("SELECT count(*) FROM reports", [], |row| row.get(0))
            .unwrap();
        assert!(held as usize >= before_backup.min(1), "{held} reports");
    }
    // A second run refuses to overwrite it.
    let again = guardian(&work, &["admin", "backup", &backup_arg], &server_env);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("dest_exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // More reports, then batch A, collected right away as a scientist would.
    load.advance(40).await;
    let before_a = load.done();
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    let batch_a = sealed["batch_id"].as_str().unwrap().to_owned();
    let (count_a, shares) = cluster
        .shares(&format!("/api/v1/endpoints/steps/batches/{batch_a}"))
        .await;
    let a = members(&client.unshard(&shares, count_a), count_a);

    // More reports reach server 1 after the backup; then it is stopped and
    // restored: its log goes with the state it belongs to.
    load.advance(20).await;
    let before_kill = load.done();
    cluster.kill(1);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(sidecar(&database, suffix));
    }
    std::fs::copy(&backup, &database).unwrap();
    cluster.launch(1, &[]).await;
    let restarted = load.done();
    let (status, _) = cluster.get(1, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    // It takes new reports.
    load.advance(40).await;
    let before_b = load.done();
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    let batch_b = sealed["batch_id"].as_str().unwrap().to_owned();
    let (count_b, shares) = cluster
        .shares(&format!("/api/v1/endpoints/steps/batches/{batch_b}"))
        .await;
    let b = members(&client.unshard(&shares, count_b), count_b);
    load.stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    let acked = load.acked();
    let sent = load.done();

    // No report is released twice, and each released one was held by both.
    assert!(
        a.is_disjoint(&b),
        "released twice: {:?}",
        a.intersection(&b)
    );
    for &k in a.union(&b) {
        assert!(
            acked[k][0],
            "report {k} released but never stored on server 0"
        );
    }
    // Batch A: every report both servers held before it.
    for (k, held) in acked.iter().enumerate().take(before_a) {
        if held[0] && held[1] {
            assert!(a.contains(&k), "report {k}, held by both, missing from A");
        }
    }
    // Batch B: the reports in the backup that A did not take (server 0 never
    // proposes A's reports again, though the restored server holds them
    // unbatched), and those both took after the restart ...
    for (k, held) in acked.iter().enumerate() {
        let in_backup = k < before_backup;
        let after_restart = (restarted..before_b).contains(&k);
        if held[0] && held[1] && !a.contains(&k) && (in_backup || after_restart) {
            assert!(b.contains(&k), "report {k}, held by both, missing from B");
        }
    }
    // ... but none that server 1 acknowledged between the backup and its stop:
    // lost on its side, they leave a gap, never a double count.
    for k in after_backup..before_kill {
        assert!(!b.contains(&k), "report {k}, lost by server 1, is in B");
    }
    let lost = (after_backup..before_kill)
        .filter(|&k| acked[k][1] && !a.contains(&k))
        .count();
    assert!(
        before_kill - after_backup > 0,
        "no report was sent between the backup and the restore"
    );
    eprintln!(
        "A: {count_a} reports, B: {count_b}, sent: {sent}, lost on server 1 by the restore: {lost}"
    );
    // The restored server still holds A's reports from before the backup
    // unbatched: only its peer's state kept them out of B.
    let restored_unbatched = a.iter().filter(|&&k| k < before_backup).count() as u64;
    assert!(restored_unbatched > 0);
    let (_, endpoint) = cluster.get(1, "/api/v1/endpoints/steps").await;
    let unbatched = endpoint["reports"]["unbatched"].as_u64().unwrap();
    assert!(
        unbatched >= restored_unbatched,
        "server 1 holds {unbatched} unbatched reports, A took {restored_unbatched} of its backup"
    );

    // The restored server has lost its share of A; server 0 still lists it.
    let (status, body) = cluster
        .get(1, &format!("/api/v1/endpoints/steps/batches/{batch_a}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "unknown_batch");
    let (status, _) = cluster
        .get(0, &format!("/api/v1/endpoints/steps/batches/{batch_a}"))
        .await;
    assert_eq!(status, StatusCode::OK);

    // The operator lines the totals up again: A deleted on every server (the
    // restored one answers that it does not hold it).
    let servers = format!("{},{}", cluster.base(0), cluster.base(1));
    let deleted = guardian(
        &work,
        &["batch", "delete", "steps", &batch_a, "--servers", &servers],
        &[],
    );
    let stdout = String::from_utf8_lossy(&deleted.stdout);
    assert!(
        deleted.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert!(
        stdout.contains("server 0") && stdout.contains("deleted"),
        "{stdout}"
    );
    assert!(stdout.contains("not there"), "{stdout}");
    let (count, shares) = cluster.shares("/api/v1/endpoints/steps/total").await;
    assert_eq!(count, count_b);
    assert_eq!(members(&client.unshard(&shares, count), count), b);
    // A's reports stay batched on server 0: nothing is sealed again.
    let (_, endpoint) = cluster.get(0, "/api/v1/endpoints/steps").await;
    assert_eq!(
        endpoint["reports"]["batched"],
        count_a + count_b,
        "{endpoint}"
    );
    assert_eq!(endpoint["reports"]["batches"], 1, "{endpoint}");
}

/// Posts `body` (or nothing) with `token`; the status and the JSON answer.
async fn call(
    http: &Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn only_an_admin_deletes_a_released_batch() {
    let cluster = Cluster::start_with(2, |dir| {
        vec![
            ("GUARDIAN_AUTH_DISABLED".into(), "false".into()),
            ("GUARDIAN_AUTH_DEV_ISSUER".into(), "true".into()),
            (
                "GUARDIAN_AUTH_DEV_ISSUER_DIR".into(),
                dir.join("issuer").display().to_string(),
            ),
            ("GUARDIAN_ENDPOINTS_DISTINCT_USERS".into(), "false".into()),
        ]
    })
    .await;
    let token = |role| dev_token(cluster.dir.path(), role, "someone");
    let (developer, user, scientist, admin) = (
        token(Role::Developer),
        token(Role::User),
        token(Role::Scientist),
        token(Role::Admin),
    );
    let http = &cluster.http;
    let params = json!({"length": 2});
    for index in 0..2 {
        let (status, body) = call(
            http,
            reqwest::Method::POST,
            format!("{}/api/v1/endpoints", cluster.base(index)),
            &developer,
            Some(json!({"name": "steps", "plugin": "sum", "params": params, "min_batch": 2})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let client = Sharder::new("sum", &params);
    let mut batches = Vec::new();
    for round in 0..2 {
        for _ in 0..3 {
            let (id, shares) = client.shard(&json!([1, round]), 2);
            for (index, share) in shares.iter().enumerate() {
                let (status, body) = call(
                    http,
                    reqwest::Method::POST,
                    format!("{}/api/v1/endpoints/steps/reports", cluster.base(index)),
                    &user,
                    Some(json!({"report_id": id, "share": share})),
                )
                .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
            }
        }
        let (status, sealed) = call(
            http,
            reqwest::Method::POST,
            format!("{}/api/v1/endpoints/steps/batches", cluster.base(0)),
            &scientist,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{sealed}");
        batches.push(sealed["batch_id"].as_str().unwrap().to_owned());
    }
    let batch = |index: usize, id: &str| {
        format!(
            "{}/api/v1/endpoints/steps/batches/{id}",
            cluster.base(index)
        )
    };
    // A scientist may read batches but not delete them.
    let (status, body) = call(
        http,
        reqwest::Method::DELETE,
        batch(0, &batches[0]),
        &scientist,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Malformed and unknown ids.
    let (status, body) = call(
        http,
        reqwest::Method::DELETE,
        batch(0, "nothex"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_batch_id");
    let unknown = "00".repeat(16);
    let (status, body) = call(
        http,
        reqwest::Method::DELETE,
        batch(0, &unknown),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "unknown_batch");

    for index in 0..2 {
        let (status, body) = call(
            http,
            reqwest::Method::DELETE,
            batch(index, &batches[0]),
            &admin,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "server {index}: {body}");
        let (status, body) = call(
            http,
            reqwest::Method::GET,
            batch(index, &batches[0]),
            &scientist,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "unknown_batch");
        // Deleting it again: it is not there any more.
        let (status, body) = call(
            http,
            reqwest::Method::DELETE,
            batch(index, &batches[0]),
            &admin,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    // The listing and the total hold the other batch only.
    let mut shares = Vec::new();
    for index in 0..2 {
        let base = cluster.base(index);
        let (_, listed) = call(
            http,
            reqwest::Method::GET,
            format!("{base}/api/v1/endpoints/steps/batches"),
            &scientist,
            None,
        )
        .await;
        let ids: Vec<&str> = listed["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["batch_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [batches[1].as_str()]);
        let (status, total) = call(
            http,
            reqwest::Method::GET,
            format!("{base}/api/v1/endpoints/steps/total"),
            &scientist,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{total}");
        assert_eq!(
            (total["batches"].as_u64(), total["count"].as_u64()),
            (Some(1), Some(3))
        );
        use base64::Engine as _;
        shares.push(
            base64::engine::general_purpose::STANDARD
                .decode(total["share"].as_str().unwrap())
                .unwrap(),
        );
    }
    assert_eq!(client.unshard(&shares, 3), json!([3, 3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_deleted_once_its_seal_is_finished_and_never_released_again() {
    let mut cluster = Cluster::start(2).await;
    let proxy = cluster.proxy_follower().await;
    cluster
        .create_endpoint("steps", "sum", json!({"length": 1}), 2)
        .await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    for value in [2, 3] {
        sharder
            .submit(&cluster, "steps", &json!([value]), &[0, 1])
            .await;
    }
    // Server 1 commits, but server 0 cannot tell (a garbled answer): the seal
    // stays decided on server 0 and is retried.
    proxy.rewrite(|step, answer| {
        if step == "commit" {
            answer["count"] = json!(0);
        }
    });
    let (status, error) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{error}");
    let batch_id = cluster.wait_for_batches(1, "steps").await.remove(0);
    let path = format!("/api/v1/endpoints/steps/batches/{batch_id}");
    let delete = |index| cluster.request(reqwest::Method::DELETE, index, &path, None);
    // Not finished on server 0: refused there. Server 1 deletes its copy.
    let (status, body) = delete(0).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "batch_not_released");
    let (status, body) = delete(1).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // The retried commit finds it committed (and deleted) on server 1, which
    // answers from its record instead of folding it again; the seal finishes.
    proxy.rewrite(|_, _| {});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = delete(0).await;
        if status == StatusCode::NO_CONTENT {
            break;
        }
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(Instant::now() < deadline, "the seal never finished: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = cluster.get(1, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, endpoint) = cluster.get(1, "/api/v1/endpoints/steps").await;
    assert_eq!(endpoint["reports"]["batched"], 2, "{endpoint}");
    assert_eq!(endpoint["reports"]["batches"], 0, "{endpoint}");
    // The endpoint seals on: the next batch holds only new reports.
    for value in [4, 5] {
        sharder
            .submit(&cluster, "steps", &json!([value]), &[0, 1])
            .await;
    }
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    let (count, shares) = cluster.shares("/api/v1/endpoints/steps/total").await;
    assert_eq!((count, sharder.unshard(&shares, count)), (2, json!([9])));
}
