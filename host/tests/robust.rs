//! Robust endpoints (plugins of contract 0.2.0) against malicious users, with
//! real server processes: the servers check every report's validity proof
//! together while sealing, so a report that would spoil the result is rejected
//! on every server and the result is exactly the honest reports'.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{Cluster, RawReport, Sharder};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// One robust built-in, its parameters and a few honest measurements.
struct Case {
    plugin: &'static str,
    params: Value,
    honest: Vec<Value>,
    /// The plain computation over `honest`.
    expected: Value,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            plugin: "prio3-count",
            params: json!({}),
            honest: [true, false, true, true, false, true]
                .map(Value::from)
                .to_vec(),
            expected: json!(4),
        },
        Case {
            plugin: "prio3-sum",
            params: json!({"max_measurement": 255}),
            honest: [255, 0, 17, 100, 3, 42].map(Value::from).to_vec(),
            expected: json!(417),
        },
        Case {
            plugin: "prio3-sumvec",
            params: json!({"length": 3, "bits": 4}),
            honest: vec![
                json!([1, 2, 3]),
                json!([15, 0, 7]),
                json!([0, 0, 0]),
                json!([4, 4, 4]),
                json!([9, 1, 15]),
                json!([2, 8, 1]),
            ],
            expected: json!([31, 15, 30]),
        },
        Case {
            plugin: "prio3-histogram",
            params: json!({"buckets": ["red", "green", "blue"]}),
            honest: ["red", "blue", "red", "green", "red", "blue"]
                .map(Value::from)
                .to_vec(),
            expected: json!({"buckets": ["red", "green", "blue"], "counts": [3, 1, 2]}),
        },
    ]
}

/// Adds 1 to the first field element of `share` (little-endian, with carry):
/// the leader's measurement share, so the reports' shares now add up to a
/// measurement the proof was not made for (for a count of 1: 2).
fn shift_first_element(share: &mut [u8]) {
    for byte in share.iter_mut() {
        let (next, carry) = byte.overflowing_add(1);
        *byte = next;
        if !carry {
            break;
        }
    }
}

/// The malicious reports of `case`, each as it is posted to each server, and
/// what it tries.
fn malicious(sharder: &Sharder, case: &Case, n: usize) -> Vec<(&'static str, Vec<Value>)> {
    let valid = |i: usize| sharder.shard_report(&case.honest[i % case.honest.len()], n);
    let mut attacks = Vec::new();

    // A measurement out of range: the leader's share shifted, the proof unchanged.
    let mut report = valid(0);
    shift_first_element(&mut report.shares[0]);
    attacks.push(("out of range, forged proof", bodies(&report, n)));

    // One flipped byte in the last server's share.
    let mut report = valid(1);
    let last = report.shares[n - 1].len() - 1;
    report.shares[n - 1][last] ^= 0x40;
    attacks.push(("a flipped byte in one share", bodies(&report, n)));

    // Report A's share posted to the last server under report B's id.
    let a = valid(2);
    let b = valid(3);
    let mut mixed = bodies(&b, n);
    mixed[n - 1] = json!({
        "report_id": b.id,
        "share": BASE64.encode(&a.shares[n - 1]),
        "public_share": BASE64.encode(&a.public_share),
    });
    attacks.push(("report A's share under report B's id", mixed));

    let report = valid(4);
    if !report.public_share.is_empty() {
        // The public share differs between the servers.
        let mut posted = bodies(&report, n);
        let mut other = report.public_share.clone();
        other[0] ^= 1;
        posted[n - 1]["public_share"] = json!(BASE64.encode(&other));
        attacks.push(("a public share that differs between servers", posted));
    }
    attacks
}

fn bodies(report: &RawReport, n: usize) -> Vec<Value> {
    (0..n).map(|i| report.body(i)).collect()
}

async fn honest_and_malicious(n: usize) {
    let cluster = Cluster::start(n).await;
    for case in cases() {
        let name = case.plugin;
        cluster
            .create_endpoint(name, case.plugin, case.params.clone(), 2)
            .await;
        let sharder = Sharder::new(case.plugin, &case.params);
        let attacks = malicious(&sharder, &case, n);
        // Count and Sum have no joint randomness, hence no public share.
        let public_share = !matches!(case.plugin, "prio3-count" | "prio3-sum");
        assert_eq!(attacks.len(), 3 + usize::from(public_share), "{name}");
        for measurement in &case.honest {
            sharder
                .shard_report(measurement, n)
                .post(&cluster, name)
                .await;
        }
        for (attack, posted) in &attacks {
            for (index, body) in posted.iter().enumerate() {
                let (status, answer) = cluster
                    .post(
                        index,
                        &format!("/api/v1/endpoints/{name}/reports"),
                        body.clone(),
                    )
                    .await;
                // Accepted on arrival: only the servers together can tell.
                assert_eq!(
                    status,
                    StatusCode::CREATED,
                    "{name}, {attack}, server {index}: {answer}"
                );
            }
        }
        let (status, sealed) = cluster.seal(name).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {sealed}");
        let rejected = attacks.len() as u64;
        assert_eq!(
            (sealed["count"].as_u64(), sealed["rejected"].as_u64()),
            (Some(case.honest.len() as u64), Some(rejected)),
            "{name} with {n} servers: {sealed}"
        );
        let batch = sealed["batch_id"].as_str().unwrap();
        let (count, shares) = cluster
            .shares(&format!("/api/v1/endpoints/{name}/batches/{batch}"))
            .await;
        assert_eq!(
            sharder.unshard(&shares, count),
            case.expected,
            "{name} with {n} servers"
        );
        // Every server counts the rejected reports, in the batch and the endpoint.
        for index in 0..n {
            let (_, listed) = cluster
                .get(index, &format!("/api/v1/endpoints/{name}/batches"))
                .await;
            assert_eq!(listed["batches"][0]["rejected"], rejected, "server {index}");
            let (_, endpoint) = cluster
                .get(index, &format!("/api/v1/endpoints/{name}"))
                .await;
            assert_eq!(
                endpoint["reports"]["rejected"], rejected,
                "server {index}: {endpoint}"
            );
            assert_eq!(endpoint["reports"]["unbatched"], 0, "server {index}");
        }
        let (_, metrics) = cluster.get_text(0, "/metrics").await;
        assert!(
            metrics.contains(&format!(
                "guardian_reports_rejected_total{{endpoint=\"{name}\",reason=\"verification_failed\"}} {rejected}"
            )),
            "{name}: {metrics}"
        );
        // Rejected reports are never proposed again: nothing is left to seal.
        let (status, again) = cluster.seal(name).await;
        assert_eq!(status, StatusCode::CONFLICT, "{name}: {again}");
        assert_eq!(again["error"]["code"], "batch_too_small", "{name}: {again}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_reject_every_malicious_report_and_count_the_rest_exactly() {
    honest_and_malicious(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_reject_every_malicious_report_and_count_the_rest_exactly() {
    honest_and_malicious(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_valid_reports_seal_nothing_and_the_invalid_are_not_proposed_again() {
    let cluster = Cluster::start(2).await;
    let params = json!({"max_measurement": 10});
    cluster
        .create_endpoint("s", "prio3-sum", params.clone(), 3)
        .await;
    let sharder = Sharder::new("prio3-sum", &params);
    for value in [1, 2] {
        sharder
            .shard_report(&json!(value), 2)
            .post(&cluster, "s")
            .await;
    }
    for value in [3, 4] {
        let mut report = sharder.shard_report(&json!(value), 2);
        shift_first_element(&mut report.shares[0]);
        report.post(&cluster, "s").await;
    }
    // Four held by both, two of them valid: below min_batch 3.
    let (status, refused) = cluster.seal("s").await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "batch_too_small");
    assert_eq!(refused["error"]["agreed"], 2, "{refused}");
    let (_, endpoint) = cluster.get(0, "/api/v1/endpoints/s").await;
    assert_eq!(endpoint["reports"]["rejected"], 2, "{endpoint}");
    assert_eq!(endpoint["reports"]["unbatched"], 2, "{endpoint}");
    // One more valid report: the batch is the three valid ones.
    sharder.shard_report(&json!(5), 2).post(&cluster, "s").await;
    let (status, sealed) = cluster.seal("s").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 3, "{sealed}");
    let batch = sealed["batch_id"].as_str().unwrap();
    let (count, shares) = cluster
        .shares(&format!("/api/v1/endpoints/s/batches/{batch}"))
        .await;
    assert_eq!(sharder.unshard(&shares, count), json!(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_verification_never_enters_the_round() {
    let cluster = Cluster::start(2).await;
    let params = json!({"length": 2});
    cluster
        .create_endpoint("plain", "sum", params.clone(), 2)
        .await;
    let sharder = Sharder::new("sum", &params);
    for _ in 0..3 {
        sharder
            .submit(&cluster, "plain", &json!([1, 2]), &[0, 1])
            .await;
    }
    // A 0.1 plugin takes no public share.
    let (id, shares) = sharder.shard(&json!([1, 1]), 2);
    let (status, refused) = cluster
        .post(
            0,
            "/api/v1/endpoints/plain/reports",
            json!({"report_id": id, "share": shares[0], "public_share": "AAAA"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("takes no public share"),
        "{refused}"
    );
    let (status, sealed) = cluster.seal("plain").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["rejected"], 0, "{sealed}");
    for index in 0..2 {
        let (_, metrics) = cluster.get_text(index, "/metrics").await;
        assert!(metrics.contains("call=\"accumulate\""), "server {index}");
        assert!(
            !metrics.contains("call=\"verify_init\"") && !metrics.contains("call=\"combine\""),
            "server {index} ran a verification call: {metrics}"
        );
    }
}

/// Posts `count` valid `prio3-sum` reports (values 1..=count) and one invalid.
async fn sum_reports(cluster: &Cluster, name: &str, count: u64) -> Sharder {
    let params = json!({"max_measurement": 1000});
    cluster
        .create_endpoint(name, "prio3-sum", params.clone(), 2)
        .await;
    let sharder = Sharder::new("prio3-sum", &params);
    for value in 1..=count {
        sharder
            .shard_report(&json!(value), cluster.n())
            .post(cluster, name)
            .await;
    }
    let mut report = sharder.shard_report(&json!(7), cluster.n());
    shift_first_element(&mut report.shares[0]);
    report.post(cluster, name).await;
    sharder
}

/// Restarts server 0 with `fault` injected and asks it to seal `name`: it dies
/// before answering.
async fn crash_coordinator_sealing(cluster: &mut Cluster, name: &str, fault: &str) {
    cluster.kill(0);
    cluster
        .launch(0, &[(guardian::server::FAULT_VAR, fault)])
        .await;
    let sealing = cluster
        .http
        .post(format!(
            "{}/api/v1/endpoints/{name}/batches",
            cluster.base(0)
        ))
        .json(&json!({}))
        .send()
        .await;
    assert!(sealing.is_err(), "the coordinator answered: {sealing:?}");
    assert!(cluster.wait_exit(0, Duration::from_secs(30)).await);
}

/// Every server lists the same one batch of `name`, which unshards to `expected`.
async fn same_batch_everywhere(cluster: &Cluster, sharder: &Sharder, name: &str, expected: Value) {
    let mut batches = Vec::new();
    for index in 0..cluster.n() {
        batches.push(cluster.wait_for_batches(index, name).await);
    }
    assert!(
        batches.iter().all(|b| b == &batches[0] && b.len() == 1),
        "{batches:?}"
    );
    let (count, shares) = cluster
        .shares(&format!(
            "/api/v1/endpoints/{name}/batches/{}",
            batches[0][0]
        ))
        .await;
    assert_eq!(sharder.unshard(&shares, count), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_during_verification_leaves_no_batch_and_seals_after_restart() {
    let mut cluster = Cluster::start(3).await;
    let sharder = sum_reports(&cluster, "v", 5).await;
    crash_coordinator_sealing(&mut cluster, "v", "crash_during_verification").await;
    for index in 1..3 {
        let (_, list) = cluster.get(index, "/api/v1/endpoints/v/batches").await;
        assert_eq!(list["batches"], json!([]), "server {index}");
    }
    cluster.launch(0, &[]).await;
    let (status, sealed) = cluster.seal("v").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(
        (sealed["count"].as_u64(), sealed["rejected"].as_u64()),
        (Some(5), Some(1))
    );
    same_batch_everywhere(&cluster, &sharder, "v", json!(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_during_verification_seals_nothing_until_it_returns() {
    let mut cluster = Cluster::start(3).await;
    let sharder = sum_reports(&cluster, "v", 4).await;
    cluster.kill(2);
    cluster
        .launch(2, &[(guardian::server::FAULT_VAR, "crash_in_verify")])
        .await;
    let (status, refused) = cluster.seal("v").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"]["code"], "peer_unavailable", "{refused}");
    assert!(cluster.wait_exit(2, Duration::from_secs(30)).await);
    for index in 0..2 {
        let (_, list) = cluster.get(index, "/api/v1/endpoints/v/batches").await;
        assert_eq!(list["batches"], json!([]), "server {index}");
    }
    cluster.launch(2, &[]).await;
    let (status, sealed) = cluster.seal("v").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    same_batch_everywhere(&cluster, &sharder, "v", json!(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_after_the_decision_gets_the_messages_again() {
    let mut cluster = Cluster::start(2).await;
    let sharder = sum_reports(&cluster, "v", 4).await;
    // The follower takes the messages, then dies at the commit: the decision
    // stands, its messages are gone with the process.
    cluster.kill(1);
    cluster
        .launch(1, &[(guardian::server::FAULT_VAR, "crash_in_commit")])
        .await;
    let (status, incomplete) = cluster.seal("v").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{incomplete}");
    assert_eq!(
        incomplete["error"]["code"], "seal_incomplete",
        "{incomplete}"
    );
    assert!(cluster.wait_exit(1, Duration::from_secs(30)).await);
    cluster.launch(1, &[]).await;
    // The background retry sends the messages again, then the commit.
    same_batch_everywhere(&cluster, &sharder, "v", json!(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_crash_after_the_followers_committed_completes_the_robust_seal() {
    let mut cluster = Cluster::start(2).await;
    let sharder = sum_reports(&cluster, "v", 3).await;
    crash_coordinator_sealing(&mut cluster, "v", "crash_before_coordinator_commit").await;
    let (_, list) = cluster.get(1, "/api/v1/endpoints/v/batches").await;
    assert_eq!(list["batches"].as_array().unwrap().len(), 1, "{list}");
    // After the restart the decision is driven again: the messages and the
    // commit reach a follower that committed already, which takes both.
    cluster.launch(0, &[]).await;
    same_batch_everywhere(&cluster, &sharder, "v", json!(6)).await;
}
