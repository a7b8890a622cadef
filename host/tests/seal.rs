//! Sealing batches across real `guardian serve` processes over real HTTP
//! (DESIGN.md section 6): agreement on one set of reports, release rules, totals,
//! and recovery from a follower that is down and a coordinator that crashes
//! mid-seal.
//!
//! Clients shard with the same wasm plugins the servers run
//! (`guardian::runtime::testing::builtin`), so every check compares what a
//! scientist would combine with the plain computation over the measurements.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn agreement_for(n: usize) {
    let cluster = Cluster::start(n).await;
    let params = json!({"length": 3, "signed": true});
    cluster
        .create_endpoint("steps", "sum", params.clone(), 5)
        .await;
    let client = Sharder::new("sum", &params);
    let all: Vec<usize> = (0..n).collect();
    let mut measurements = Vec::new();
    for _ in 0..40 {
        let m = random_vector(3);
        client.submit(&cluster, "steps", &json!(m), &all).await;
        measurements.push(m);
    }
    // Reports that a crashed client posted to only some servers are left out.
    for missing in 0..n {
        let some: Vec<usize> = all.iter().copied().filter(|i| *i != missing).collect();
        client
            .submit(&cluster, "steps", &json!(random_vector(3)), &some)
            .await;
    }
    client
        .submit(&cluster, "steps", &json!(random_vector(3)), &[n - 1])
        .await;

    // Only the coordinator seals.
    let (status, body) = cluster
        .post(n - 1, "/api/v1/endpoints/steps/batches", json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_coordinator");

    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 40);
    let batch_id = sealed["batch_id"].as_str().unwrap();
    let (count, shares) = cluster
        .shares(&format!("/api/v1/endpoints/steps/batches/{batch_id}"))
        .await;
    assert_eq!(count, 40);
    assert_eq!(client.unshard(&shares, count), plain_sum(&measurements));

    // Every server lists the same batch, and the partial reports stay unbatched.
    for index in 0..n {
        let (_, list) = cluster.get(index, "/api/v1/endpoints/steps/batches").await;
        assert_eq!(list["batches"].as_array().unwrap().len(), 1);
        assert_eq!(list["batches"][0]["batch_id"], batch_id);
        assert_eq!(list["batches"][0]["count"], 40);
        let (_, endpoint) = cluster.get(index, "/api/v1/endpoints/steps").await;
        assert_eq!(
            endpoint["reports"]["batched"], 40,
            "server {index}: {endpoint}"
        );
    }

    // A second batch, then the total over both combines to the plain sum.
    for _ in 0..5 {
        let m = random_vector(3);
        client.submit(&cluster, "steps", &json!(m), &all).await;
        measurements.push(m);
    }
    let (status, second) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["count"], 5);
    let (count, shares) = cluster.shares("/api/v1/endpoints/steps/total").await;
    assert_eq!(count, 45);
    assert_eq!(client.unshard(&shares, count), plain_sum(&measurements));

    // The batches come a page at a time, oldest first, on every server.
    for index in 0..n {
        let path = "/api/v1/endpoints/steps/batches";
        let (_, first) = cluster.get(index, &format!("{path}?limit=1")).await;
        assert_eq!(first["batches"][0]["batch_id"], batch_id, "{first}");
        assert_eq!(first["next"], batch_id, "{first}");
        let (_, rest) = cluster
            .get(index, &format!("{path}?limit=1&after={batch_id}"))
            .await;
        assert_eq!(rest["batches"][0]["batch_id"], second["batch_id"], "{rest}");
        assert!(rest["next"].is_null(), "{rest}");
        let (status, error) = cluster
            .get(index, &format!("{path}?after={}", "00".repeat(16)))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error["error"]["code"], "unknown_batch");
    }

    let metrics = cluster
        .http
        .get(format!("{}/metrics", cluster.base(0)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"guardian_seals_total{endpoint="steps",reason="sealed"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_agree_and_unshard_to_the_plain_sum() {
    agreement_for(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_agree_and_unshard_to_the_plain_sum() {
    agreement_for(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_batch_nothing_is_sealed_anywhere() {
    let cluster = Cluster::start(2).await;
    let params = json!({"buckets": ["a", "b", "c"]});
    cluster
        .create_endpoint("votes", "histogram", params.clone(), 4)
        .await;
    let client = Sharder::new("histogram", &params);
    let (status, body) = cluster.seal("votes").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "batch_too_small");
    assert_eq!(
        (
            body["error"]["agreed"].as_u64(),
            body["error"]["needed"].as_u64()
        ),
        (Some(0), Some(4))
    );

    let votes = ["a", "b", "a"];
    for vote in votes {
        client
            .submit(&cluster, "votes", &json!(vote), &[0, 1])
            .await;
    }
    // One more on server 0 only: the coordinator holds 4, only 3 are agreed.
    client.submit(&cluster, "votes", &json!("c"), &[0]).await;
    let (status, body) = cluster.seal("votes").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        (
            body["error"]["agreed"].as_u64(),
            body["error"]["needed"].as_u64()
        ),
        (Some(3), Some(4))
    );
    for index in 0..2 {
        let (_, list) = cluster.get(index, "/api/v1/endpoints/votes/batches").await;
        assert_eq!(list["batches"], json!([]), "server {index}");
    }

    client.submit(&cluster, "votes", &json!("c"), &[0, 1]).await;
    let (status, sealed) = cluster.seal("votes").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 4);
    let (count, shares) = cluster
        .shares(&format!(
            "/api/v1/endpoints/votes/batches/{}",
            sealed["batch_id"].as_str().unwrap()
        ))
        .await;
    let result = client.unshard(&shares, count);
    assert_eq!(result["counts"], json!([2, 1, 1]), "{result}");

    // Right after, one new report cannot be released on its own.
    client.submit(&cluster, "votes", &json!("b"), &[0, 1]).await;
    let (status, body) = cluster.seal("votes").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "batch_too_small");
    assert_eq!(body["error"]["agreed"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_seals_nothing_until_it_returns() {
    let mut cluster = Cluster::start(2).await;
    let params = json!({"length": 2});
    cluster
        .create_endpoint("steps", "sum", params.clone(), 3)
        .await;
    let client = Sharder::new("sum", &params);
    let mut measurements = Vec::new();
    for _ in 0..6 {
        let m: Vec<i64> = random_vector(2).iter().map(|v| v.abs()).collect();
        client.submit(&cluster, "steps", &json!(m), &[0, 1]).await;
        measurements.push(m);
    }
    cluster.kill(1);
    let (status, body) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "peer_unavailable");
    let (_, list) = cluster.get(0, "/api/v1/endpoints/steps/batches").await;
    assert_eq!(list["batches"], json!([]));

    cluster.launch(1, &[]).await;
    let (_, list) = cluster.get(1, "/api/v1/endpoints/steps/batches").await;
    assert_eq!(list["batches"], json!([]));
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    let (count, shares) = cluster.shares("/api/v1/endpoints/steps/total").await;
    assert_eq!(count, 6);
    assert_eq!(client.unshard(&shares, count), plain_sum(&measurements));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_crash_after_the_followers_committed_is_completed_after_restart() {
    let mut cluster = Cluster::start(3).await;
    let params = json!({"length": 4, "signed": true});
    cluster
        .create_endpoint("steps", "sum", params.clone(), 3)
        .await;
    let client = Sharder::new("sum", &params);
    let mut measurements = Vec::new();
    for _ in 0..10 {
        let m = random_vector(4);
        client
            .submit(&cluster, "steps", &json!(m), &[0, 1, 2])
            .await;
        measurements.push(m);
    }
    cluster.kill(0);
    cluster
        .launch(
            0,
            &[(
                guardian::server::FAULT_VAR,
                "crash_before_coordinator_commit",
            )],
        )
        .await;
    let sealing = cluster
        .http
        .post(format!(
            "{}/api/v1/endpoints/steps/batches",
            cluster.base(0)
        ))
        .json(&json!({}))
        .send()
        .await;
    assert!(
        sealing.is_err(),
        "the coordinator answered instead of crashing: {sealing:?}"
    );
    assert!(
        cluster.wait_exit(0, Duration::from_secs(30)).await,
        "the coordinator did not crash"
    );
    // The followers committed; the coordinator did not.
    for index in [1, 2] {
        let (_, list) = cluster.get(index, "/api/v1/endpoints/steps/batches").await;
        assert_eq!(
            list["batches"].as_array().unwrap().len(),
            1,
            "server {index}: {list}"
        );
    }

    cluster.launch(0, &[]).await;
    // The background retry completes the decided seal on its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    let batch_id = loop {
        let (_, list) = cluster.get(0, "/api/v1/endpoints/steps/batches").await;
        if let Some(batch) = list["batches"].as_array().unwrap().first() {
            break batch["batch_id"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the pending seal was not completed:\n{}",
            cluster.log(0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for index in 0..3 {
        let (_, list) = cluster.get(index, "/api/v1/endpoints/steps/batches").await;
        assert_eq!(list["batches"].as_array().unwrap().len(), 1);
        assert_eq!(list["batches"][0]["batch_id"], batch_id.as_str());
        assert_eq!(list["batches"][0]["count"], 10);
    }
    let (count, shares) = cluster.shares("/api/v1/endpoints/steps/total").await;
    assert_eq!(count, 10);
    assert_eq!(client.unshard(&shares, count), plain_sum(&measurements));
    // Nothing is left to seal: the same reports are never released twice.
    let (status, body) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["agreed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_endpoint_config_refuses_the_seal() {
    let cluster = Cluster::start(2).await;
    for (index, length) in [(0, 2), (1, 3)] {
        let (status, body) = cluster
            .post(
                index,
                "/api/v1/endpoints",
                json!({"name": "steps", "plugin": "sum", "params": {"length": length}, "min_batch": 2}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let client = Sharder::new("sum", &json!({"length": 2}));
    for _ in 0..3 {
        client.submit(&cluster, "steps", &json!([1, 2]), &[0]).await;
    }
    let (status, body) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "config_mismatch");
    let (_, list) = cluster.get(0, "/api/v1/endpoints/steps/batches").await;
    assert_eq!(list["batches"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dp_batch_share_never_changes() {
    let cluster = Cluster::start(2).await;
    let params = json!({"length": 2, "bound": 10, "epsilon": 1.0, "mechanism": "laplace"});
    cluster
        .create_endpoint("noisy", "dp-sum", params.clone(), 3)
        .await;
    let client = Sharder::new("dp-sum", &params);
    for _ in 0..3 {
        client
            .submit(&cluster, "noisy", &json!([3, 4]), &[0, 1])
            .await;
    }
    let (status, sealed) = cluster.seal("noisy").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    let path = format!(
        "/api/v1/endpoints/noisy/batches/{}",
        sealed["batch_id"].as_str().unwrap()
    );
    let (_, first) = cluster.shares(&path).await;
    let (_, again) = cluster.shares(&path).await;
    assert_eq!(first, again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_routes_take_only_signed_peer_calls() {
    let cluster = Cluster::start(2).await;
    cluster
        .create_endpoint("steps", "sum", json!({"length": 1}), 2)
        .await;
    let url = format!("{}/peer/v1/endpoints/steps/abort", cluster.base(1));
    let body = json!({"batch_id": "00".repeat(16), "seal": 1});
    for token in [
        None,
        Some("not-the-credential"),
        Some("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
    ] {
        let mut request = cluster.http.post(&url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "token {token:?}"
        );
    }
    // The transport credential alone is not enough: a peer signs what it sends.
    let response = cluster
        .http
        .post(&url)
        .bearer_auth(PEER_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "missing_peer_signature");
    let response = common::signed_peer_request(
        &cluster.http,
        &cluster.base(1),
        &cluster.key_file(0),
        (0, 1),
        ("steps", "abort", ""),
        serde_json::to_vec(&body).unwrap(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["aborted"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_routes_refuse_the_peer_credential_and_peer_routes_user_tokens() {
    let cluster = Cluster::start_with(2, |dir| {
        vec![
            ("GUARDIAN_AUTH_DISABLED".into(), "false".into()),
            ("GUARDIAN_AUTH_DEV_ISSUER".into(), "true".into()),
            (
                "GUARDIAN_AUTH_DEV_ISSUER_DIR".into(),
                dir.join("issuer").display().to_string(),
            ),
        ]
    })
    .await;
    let issuer_dir = cluster.dir.path().join("issuer");
    let issuer = guardian::auth::DevIssuer::load_or_create(&issuer_dir).unwrap();
    let admin = issuer
        .mint(
            guardian::config::Role::Admin,
            "root",
            Duration::from_secs(600),
        )
        .unwrap();
    // The peer credential opens no user route, not even `me`.
    for path in [
        "/api/v1/me",
        "/api/v1/endpoints",
        "/api/v1/endpoints/steps/total",
    ] {
        let response = cluster
            .http
            .get(format!("{}{path}", cluster.base(0)))
            .bearer_auth(PEER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // An admin token opens no peer route.
    let response = cluster
        .http
        .post(format!("{}/peer/v1/endpoints/steps/abort", cluster.base(1)))
        .bearer_auth(&admin)
        .json(&json!({"batch_id": "00".repeat(16)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_peer_credential");
    // While the same token works where it belongs.
    let response = cluster
        .http
        .get(format!("{}/api/v1/me", cluster.base(0)))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_retry_after_its_batch_is_released_is_acknowledged() {
    let cluster = Cluster::start(2).await;
    cluster
        .create_endpoint("steps", "sum", json!({"length": 1}), 2)
        .await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    // Stored but (as if the server died before answering) never acknowledged.
    let (id, shares) = sharder.shard(&json!([5]), 2);
    let path = "/api/v1/endpoints/steps/reports";
    for (index, share) in shares.iter().enumerate() {
        let (status, body) = cluster
            .post(index, path, json!({"report_id": id, "share": share}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    sharder
        .submit(&cluster, "steps", &json!([1]), &[0, 1])
        .await;
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    // The client retries identically: acknowledged, and counted once.
    for (index, share) in shares.iter().enumerate() {
        let (status, body) = cluster
            .post(index, path, json!({"report_id": id, "share": share}))
            .await;
        assert_eq!(status, StatusCode::OK, "server {index}: {body}");
        assert_eq!(body["status"], "duplicate");
    }
    // Another share under the same id is refused.
    let (_, other) = sharder.shard(&json!([6]), 2);
    let (status, body) = cluster
        .post(0, path, json!({"report_id": id, "share": other[0]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "report_conflict");
    let (count, shares) = cluster.shares("/api/v1/endpoints/steps/total").await;
    assert_eq!(count, 2);
    assert_eq!(sharder.unshard(&shares, count), json!([6]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_seal_says_it_is_decided_and_finishes_by_itself() {
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
    // The commit to server 1 is lost.
    proxy.cut("commit", true);
    let (status, error) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["error"]["code"], "seal_incomplete");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("is decided"), "{message}");
    assert!(message.contains("completes by itself"), "{message}");
    assert!(!message.contains("nothing was sealed"), "{message}");
    // Server 0 holds the batch already; server 1 gets it once reachable again,
    // without anyone asking.
    let (_, listed) = cluster.get(0, "/api/v1/endpoints/steps/batches").await;
    let batch_id = listed["batches"][0]["batch_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains(&batch_id), "{message}");
    proxy.cut("commit", false);
    assert_eq!(
        cluster.wait_for_batches(1, "steps").await,
        std::slice::from_ref(&batch_id)
    );
    let (count, shares) = cluster
        .shares(&format!("/api/v1/endpoints/steps/batches/{batch_id}"))
        .await;
    assert_eq!(sharder.unshard(&shares, count), json!([5]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_jammed_by_an_older_version_completes_its_decided_seal() {
    let mut cluster = Cluster::start(2).await;
    let proxy = cluster.proxy_follower().await;
    cluster
        .create_endpoint("steps", "sum", json!({"length": 1}), 2)
        .await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    for value in [2, 3, 4] {
        sharder
            .submit(&cluster, "steps", &json!([value]), &[0, 1])
            .await;
    }
    proxy.cut("commit", true);
    let (status, error) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["error"]["code"], "seal_incomplete");
    let batch_id = cluster.wait_for_batches(0, "steps").await.remove(0);
    // Server 1 as an older version left it: a late prepare of an earlier seal
    // (which carried no number) replaced its reservation of the decided one.
    cluster.kill(1);
    let db = rusqlite::Connection::open(cluster.database(1)).unwrap();
    let replaced = db
        .execute(
            "UPDATE seals SET batch_id = randomblob(16), seal_number = 0 WHERE decided = 0",
            [],
        )
        .unwrap();
    assert_eq!(replaced, 1);
    drop(db);
    cluster.launch(1, &[]).await;
    proxy.cut("commit", false);
    // The decided batch completes anyway, the same on both servers.
    assert_eq!(
        cluster.wait_for_batches(1, "steps").await,
        std::slice::from_ref(&batch_id)
    );
    let (count, shares) = cluster
        .shares(&format!("/api/v1/endpoints/steps/batches/{batch_id}"))
        .await;
    assert_eq!((count, sharder.unshard(&shares, count)), (3, json!([9])));
    assert!(cluster.log(0).contains("sending it by report ids"));
    // And the endpoint seals again.
    for value in [5, 6] {
        sharder
            .submit(&cluster, "steps", &json!([value]), &[0, 1])
            .await;
    }
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 2);
    let (count, shares) = cluster.shares("/api/v1/endpoints/steps/total").await;
    assert_eq!((count, sharder.unshard(&shares, count)), (5, json!([20])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_survives_a_kept_alive_connection_the_follower_closed() {
    // Servers close connections idle for 1.5 s; the link takes 1 s each way, so
    // the commit, sent on the connection prepare used as soon as its answer came,
    // reaches server 1 after it closed that connection, and the close reaches
    // server 0 only after the commit went.
    let mut cluster = Cluster::start_with(2, |_| {
        vec![(
            "GUARDIAN_LIMITS_HEADER_READ_TIMEOUT_MS".into(),
            "1500".into(),
        )]
    })
    .await;
    let _link = cluster.slow_link_to_follower(Duration::from_secs(1)).await;
    cluster
        .create_endpoint("steps", "sum", json!({"length": 1}), 2)
        .await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    for value in [2, 3] {
        sharder
            .submit(&cluster, "steps", &json!([value]), &[0, 1])
            .await;
    }
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    let batch_id = sealed["batch_id"].as_str().unwrap();
    let (count, shares) = cluster
        .shares(&format!("/api/v1/endpoints/steps/batches/{batch_id}"))
        .await;
    assert_eq!((count, sharder.unshard(&shares, count)), (2, json!([5])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_answers_before_its_request_times_out_and_retries_do_not_block_it() {
    // Requests time out at 4 s; peer calls may take as long.
    let mut cluster = Cluster::start_with(2, |_| {
        vec![
            ("GUARDIAN_LIMITS_REQUEST_TIMEOUT_MS".into(), "4000".into()),
            ("GUARDIAN_ENDPOINTS_PEER_TIMEOUT_MS".into(), "4000".into()),
        ]
    })
    .await;
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
    // Server 1's answers to commits are held far longer than any timeout: the
    // answer is the seal's (503), not the request's timeout (408).
    proxy.delay_answer("commit", Duration::from_secs(60));
    let (status, error) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["error"]["code"], "seal_incomplete");
    // While the background retry waits on server 1, a new seal request is not
    // kept waiting behind it: it answers, again before its timeout, with the seal's
    // own word.
    for _ in 0..3 {
        let (status, error) = cluster.seal("steps").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
        assert_eq!(error["error"]["code"], "seal_incomplete");
    }
    // Server 1 answers again: the batch completes by itself.
    proxy.delay_answer("commit", Duration::ZERO);
    let batch_id = cluster.wait_for_batches(1, "steps").await.remove(0);
    let (count, shares) = cluster
        .shares(&format!("/api/v1/endpoints/steps/batches/{batch_id}"))
        .await;
    assert_eq!(sharder.unshard(&shares, count), json!([5]));
}
