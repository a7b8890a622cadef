//! No single dishonest party can break the privacy guarantee: real `guardian
//! serve` processes, real HTTP, and tests playing the attacker (a follower driving
//! another follower, a stale or replayed seal step, a dishonest operator forging
//! which reports its server holds, a user flooding one server, expiry racing a
//! seal behind a slow follower).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{Cluster, PEER_TOKEN, Sharder, signed_peer_request};
use guardian::config::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The endpoint's config hash on server `index`.
async fn config_hash(cluster: &Cluster, index: usize, endpoint: &str) -> String {
    let (status, body) = cluster
        .get(index, &format!("/api/v1/endpoints/{endpoint}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["config_hash"].as_str().unwrap().to_owned()
}

/// Posts `count` measurements of 1 to the servers in `to`; returns their ids.
async fn post_ones(
    cluster: &Cluster,
    sharder: &Sharder,
    endpoint: &str,
    count: usize,
    to: &[usize],
) -> Vec<[u8; 16]> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let id = sharder.submit(cluster, endpoint, &json!([1]), to).await;
        let mut raw = [0; 16];
        hex::decode_to_slice(&id, &mut raw).unwrap();
        ids.push(raw);
    }
    ids
}

/// Creates a `sum` endpoint of length 1 on every server with a developer's token.
async fn create_as(cluster: &Cluster, developer: &str, name: &str, min_batch: u64) {
    let body =
        json!({"name": name, "plugin": "sum", "params": {"length": 1}, "min_batch": min_batch});
    for index in 0..cluster.n() {
        let response = cluster
            .http
            .post(format!("{}/api/v1/endpoints", cluster.base(index)))
            .bearer_auth(developer)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
}

/// Posts `value` to every server with a user's token; returns the report id.
async fn post_as(
    cluster: &Cluster,
    sharder: &Sharder,
    token: &str,
    endpoint: &str,
    value: i64,
) -> [u8; 16] {
    let (id, shares) = sharder.shard(&json!([value]), cluster.n());
    for (index, share) in shares.iter().enumerate() {
        let response = cluster
            .http
            .post(format!(
                "{}/api/v1/endpoints/{endpoint}/reports",
                cluster.base(index)
            ))
            .bearer_auth(token)
            .json(&json!({"report_id": id, "share": share}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let mut raw = [0; 16];
    hex::decode_to_slice(&id, &mut raw).unwrap();
    raw
}

/// Calls `step` of `endpoint` on server 1, signed with server 0's key: what the
/// coordinator sends (or a dishonest coordinator forges).
async fn as_coordinator(
    cluster: &Cluster,
    (endpoint, step, query): (&str, &str, &str),
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let request = signed_peer_request(
        &cluster.http,
        &cluster.base(1),
        &cluster.key_file(0),
        (0, 1),
        (endpoint, step, query),
        body,
    );
    answer(request.send().await.unwrap()).await
}

async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cannot_drive_another_follower() {
    let cluster = Cluster::start(3).await;
    cluster
        .create_endpoint("steps", "sum", json!({"length": 1}), 2)
        .await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    let ids = post_ones(&cluster, &sharder, "steps", 4, &[0, 1, 2]).await;
    let hash = config_hash(&cluster, 2, "steps").await;
    let proposal: Vec<u8> = ids.concat();
    let batch = "ab".repeat(16);
    let query = format!("batch_id={batch}&config_hash={hash}&seal=99&offset=0&min_users=0");
    let commit = serde_json::to_vec(&json!({
        "batch_id": batch, "seal": 99, "config_hash": hash,
        "agreed": BASE64.encode([0x0f]), "count": 4,
    }))
    .unwrap();
    let abort = serde_json::to_vec(&json!({"batch_id": batch, "seal": 99})).unwrap();
    let recommit = format!("batch_id={batch}&seal=99&config_hash={hash}&count=4");
    let verify = serde_json::to_vec(&json!({
        "batch_id": batch, "seal": 99, "config_hash": hash, "key": BASE64.encode([7; 32]),
        "agreed": BASE64.encode([0x0f]), "from": 0, "len": 4,
    }))
    .unwrap();
    let messages = format!("batch_id={batch}&seal=99&from=0");
    let steps = [
        ("prepare", query.as_str(), proposal.clone()),
        ("commit", "", commit),
        ("abort", "", abort),
        ("recommit", recommit.as_str(), proposal),
        ("verify", "", verify),
        ("messages", messages.as_str(), vec![0, 0, 0, 0]),
    ];
    let base = cluster.base(2);
    // (signing key of server, claimed sender, receiver, expected status and code)
    let forgeries = [
        // Server 1, signing as itself: a valid signature, but not the coordinator's.
        (1, 1, 2, StatusCode::FORBIDDEN, "not_coordinator"),
        // Server 1 claiming to be server 0: its key is not server 0's.
        (1, 0, 2, StatusCode::UNAUTHORIZED, "bad_peer_signature"),
        // A message server 0 signed for server 1, replayed to server 2.
        (0, 0, 1, StatusCode::UNAUTHORIZED, "bad_peer_signature"),
    ];
    for (step, query, body) in steps {
        for (key, sender, receiver, expected, code) in forgeries {
            let response = signed_peer_request(
                &cluster.http,
                &base,
                &cluster.key_file(key),
                (sender, receiver),
                ("steps", step, query),
                body.clone(),
            )
            .send()
            .await
            .unwrap();
            let (status, error) = answer(response).await;
            assert_eq!(status, expected, "{step} signed by {key}: {error}");
            assert_eq!(error["error"]["code"], code, "{step} signed by {key}");
        }
        // The shared transport credential alone no longer makes a peer.
        let response = cluster
            .http
            .post(format!("{base}/peer/v1/endpoints/steps/{step}?{query}"))
            .bearer_auth(PEER_TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, error) = answer(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{step}: {error}");
        assert_eq!(error["error"]["code"], "missing_peer_signature", "{step}");
    }
    // Nothing was sealed or reserved on server 2: the coordinator's seal takes
    // every report, the same batch everywhere.
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 4);
    let batch_id = sealed["batch_id"].as_str().unwrap();
    let (count, shares) = cluster
        .shares(&format!("/api/v1/endpoints/steps/batches/{batch_id}"))
        .await;
    assert_eq!(count, 4);
    assert_eq!(sharder.unshard(&shares, count), json!([4]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_prepare_never_replaces_a_newer_reservation() {
    let cluster = Cluster::start(2).await;
    cluster
        .create_endpoint("steps", "sum", json!({"length": 1}), 2)
        .await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    let ids = post_ones(&cluster, &sharder, "steps", 3, &[0, 1]).await;
    let hash = config_hash(&cluster, 1, "steps").await;
    let prepare = async |batch: &str, seal: u64| {
        let query = format!("batch_id={batch}&config_hash={hash}&seal={seal}&offset=0&min_users=0");
        as_coordinator(&cluster, ("steps", "prepare", &query), ids.concat()).await
    };
    let (older, newer) = ("01".repeat(16), "02".repeat(16));
    // Seal 200 is prepared; then seal 100's prepare, held by a middlebox, arrives.
    let (status, prepared) = prepare(&newer, 200).await;
    assert_eq!(status, StatusCode::OK, "{prepared}");
    assert_eq!(prepared["count"], 3);
    let (status, error) = prepare(&older, 100).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "stale_seal");
    // Seal 200's commit still finds its reservation.
    let commit = serde_json::to_vec(&json!({
        "batch_id": newer, "seal": 200, "config_hash": hash,
        "agreed": prepared["held"], "count": 3,
    }))
    .unwrap();
    let (status, committed) = as_coordinator(&cluster, ("steps", "commit", ""), commit).await;
    assert_eq!(status, StatusCode::OK, "{committed}");
    assert_eq!(committed["count"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_by_report_ids_commits_only_reports_held_unbatched() {
    let cluster = Cluster::start(2).await;
    cluster
        .create_endpoint("steps", "sum", json!({"length": 1}), 2)
        .await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    let ids = post_ones(&cluster, &sharder, "steps", 3, &[0, 1]).await;
    let hash = config_hash(&cluster, 1, "steps").await;
    let recommit = async |batch: &str, ids: &[[u8; 16]], count: usize| {
        let query = format!("batch_id={batch}&seal=7&config_hash={hash}&count={count}");
        as_coordinator(&cluster, ("steps", "recommit", &query), ids.concat()).await
    };
    let (first, second) = ("0a".repeat(16), "0b".repeat(16));
    // A report server 1 does not hold: nothing is committed.
    let unknown = [[0xee; 16]];
    let with_unknown = [&ids[..2], &unknown[..]].concat();
    let (status, error) = recommit(&first, &with_unknown, 3).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "seal_mismatch");
    // A count that is not the ids'.
    let (status, error) = recommit(&first, &ids, 2).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "seal_mismatch");
    // Below min_batch.
    let (status, error) = recommit(&first, &ids[..1], 1).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "batch_too_small");
    // The decision itself, twice: one batch.
    for _ in 0..2 {
        let (status, committed) = recommit(&first, &ids[..2], 2).await;
        assert_eq!(status, StatusCode::OK, "{committed}");
        assert_eq!(committed["count"], 2);
    }
    // Its reports are batched now: never in a second batch.
    let (status, error) = recommit(&second, &ids[1..], 2).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "seal_mismatch");
    let (_, listed) = cluster.get(1, "/api/v1/endpoints/steps/batches").await;
    assert_eq!(listed["batches"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_only_the_coordinator_holds_never_block_a_seal() {
    let cluster = Cluster::start_with(2, |_| {
        vec![("GUARDIAN_ENDPOINTS_MAX_BATCH".into(), "16".into())]
    })
    .await;
    cluster
        .create_endpoint("steps", "sum", json!({"length": 1}), 2)
        .await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    // One user floods server 0 alone with more than a seal takes...
    post_ones(&cluster, &sharder, "steps", 40, &[0]).await;
    // ...then five reports reach both servers.
    post_ones(&cluster, &sharder, "steps", 5, &[0, 1]).await;
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 5);
    // A seal still takes at most max_batch reports, in pages.
    post_ones(&cluster, &sharder, "steps", 20, &[0, 1]).await;
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 16);
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 4);
    let (count, shares) = cluster.shares("/api/v1/endpoints/steps/total").await;
    assert_eq!(count, 25);
    assert_eq!(sharder.unshard(&shares, count), json!([25]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_waits_for_a_seal_behind_a_slow_follower() {
    let mut cluster = Cluster::start_with(2, |_| {
        vec![(
            "GUARDIAN_ENDPOINTS_REPORT_RETENTION_SECS".into(),
            "2".into(),
        )]
    })
    .await;
    // Server 0 reaches server 1 through a proxy that holds prepare answers 3 s:
    // longer than the reports may wait.
    let proxy = cluster.proxy_follower().await;
    proxy.delay_answer("prepare", Duration::from_secs(3));
    cluster
        .create_endpoint("steps", "sum", json!({"length": 1}), 2)
        .await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    post_ones(&cluster, &sharder, "steps", 4, &[0, 1]).await;
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 4);
    let batch_id = sealed["batch_id"].as_str().unwrap();
    let (count, shares) = cluster
        .shares(&format!("/api/v1/endpoints/steps/batches/{batch_id}"))
        .await;
    assert_eq!(count, 4);
    assert_eq!(sharder.unshard(&shares, count), json!([4]));
    // Expiry works again once no seal is in progress, and the next seal is clean.
    post_ones(&cluster, &sharder, "steps", 2, &[0, 1]).await;
    proxy.delay_answer("prepare", Duration::ZERO);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for index in 0..2 {
        loop {
            let (_, endpoint) = cluster.get(index, "/api/v1/endpoints/steps").await;
            if endpoint["reports"]["expired"] == 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server {index} never expired the reports: {endpoint}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (status, error) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "batch_too_small");
    assert_eq!(error["error"]["agreed"], 0);
}

/// A cluster whose servers check tokens of the development issuer and count
/// distinct users; returns it with a token minter.
async fn authenticated_cluster(n: usize) -> (Cluster, impl Fn(Role, &str) -> String) {
    let cluster = Cluster::start_with(n, |dir| {
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
    let issuer =
        guardian::auth::DevIssuer::load_or_create(&cluster.dir.path().join("issuer")).unwrap();
    let mint =
        move |role: Role, sub: &str| issuer.mint(role, sub, Duration::from_secs(600)).unwrap();
    (cluster, mint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_held_set_cannot_isolate_one_user() {
    let (mut cluster, mint) = authenticated_cluster(2).await;
    // Server 1's operator is dishonest: its answers to proposals pass through a
    // proxy it controls.
    let proxy = cluster.proxy_follower().await;
    let developer = mint(Role::Developer, "dev");
    create_as(&cluster, &developer, "votes", 3).await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    let post = async |sub: &str, value: i64| {
        post_as(&cluster, &sharder, &mint(Role::User, sub), "votes", value).await
    };
    // Proposal order: the victim, the operator's own four reports (one identity),
    // then three other users.
    post("victim", 42).await;
    for _ in 0..4 {
        post("mallory", 0).await;
    }
    for user in ["ann", "bob", "cy"] {
        post(user, 1).await;
    }
    // Server 1 claims to hold only the first five: the victim among its own.
    proxy.rewrite(|step, answer| {
        if step == "prepare" {
            answer["held"] = json!(BASE64.encode([0b0001_1111]));
            answer["count"] = json!(5);
        }
    });
    let scientist = mint(Role::Scientist, "sci");
    let seal = async || {
        let response = cluster
            .http
            .post(format!(
                "{}/api/v1/endpoints/votes/batches",
                cluster.base(0)
            ))
            .bearer_auth(&scientist)
            .send()
            .await
            .unwrap();
        answer(response).await
    };
    let (status, error) = seal().await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "too_few_users");
    assert_eq!(error["error"]["users"], 2);
    assert_eq!(error["error"]["needed"], 3);
    // An honest server 1: every report, from five users, is sealed.
    proxy.rewrite(|_, _| {});
    let (status, sealed) = seal().await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_a_decision_of_too_few_users() {
    let (cluster, mint) = authenticated_cluster(2).await;
    let developer = mint(Role::Developer, "dev");
    create_as(&cluster, &developer, "votes", 3).await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    let mut ids = Vec::new();
    for sub in ["victim", "mallory", "mallory", "mallory"] {
        ids.push(post_as(&cluster, &sharder, &mint(Role::User, sub), "votes", 1).await);
    }
    // A dishonest coordinator (its own key) asks server 1 to commit four reports
    // of two users.
    let response = cluster
        .http
        .get(format!("{}/api/v1/endpoints/votes", cluster.base(1)))
        .bearer_auth(&developer)
        .send()
        .await
        .unwrap();
    let hash = answer(response).await.1["config_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let batch = "cd".repeat(16);
    let query = format!("batch_id={batch}&config_hash={hash}&seal=7&offset=0&min_users=3");
    let (status, prepared) =
        as_coordinator(&cluster, ("votes", "prepare", &query), ids.concat()).await;
    assert_eq!(status, StatusCode::OK, "{prepared}");
    let commit = serde_json::to_vec(&json!({
        "batch_id": batch, "seal": 7, "config_hash": hash,
        "agreed": prepared["held"], "count": 4,
    }))
    .unwrap();
    let (status, error) = as_coordinator(&cluster, ("votes", "commit", ""), commit).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "too_few_users");
    assert_eq!(error["error"]["users"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_floor_holds_for_endpoints_created_before() {
    let mut cluster = Cluster::start(2).await;
    cluster
        .create_endpoint("steps", "sum", json!({"length": 1}), 2)
        .await;
    let sharder = Sharder::new("sum", &json!({"length": 1}));
    post_ones(&cluster, &sharder, "steps", 3, &[0, 1]).await;
    // Both operators raise their floor to 5 and restart.
    for index in 0..2 {
        cluster.kill(index);
        cluster
            .launch(index, &[("GUARDIAN_ENDPOINTS_MIN_BATCH_FLOOR", "5")])
            .await;
    }
    let (status, error) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "batch_too_small");
    assert_eq!(error["error"]["needed"], 5);
    post_ones(&cluster, &sharder, "steps", 2, &[0, 1]).await;
    let (status, sealed) = cluster.seal("steps").await;
    assert_eq!(status, StatusCode::CREATED, "{sealed}");
    assert_eq!(sealed["count"], 5);
}
