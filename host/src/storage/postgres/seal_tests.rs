//! The seal steps on PostgreSQL with several replicas of one server at once: two
//! `Storage` handles over one database, as two replicas are, running steps of the
//! same seal concurrently. (What one handle does alone is the shared storage
//! suite's, on both backends.)

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::storage::test_backends::{TestBackend, TestDb};
use crate::storage::*;

fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + millis)
}

/// Two handles on one fresh database holding endpoint "steps" with `reports`
/// unbatched reports (report id n, share `[n as u8; 4]`, received at `at(n)`),
/// stored with plain SQL so that a large seal is quick to set up.
async fn two_replicas(reports: i64) -> (TestDb, Storage, Storage, EndpointId) {
    let db = TestDb::new(TestBackend::Postgres);
    let first = db.open().await;
    let wasm = b"sum wasm";
    let digest: [u8; 32] = Sha256::digest(wasm).into();
    first
        .put_plugin(PluginRecord {
            digest,
            name: "sum".to_owned(),
            version: "1.0.0".to_owned(),
            description: "the sum plugin".to_owned(),
            params_schema: r#"{"type":"object"}"#.to_owned(),
            wasm: wasm.to_vec(),
            builtin: true,
            created_at: at(1),
        })
        .await
        .unwrap();
    let created = first
        .create_endpoint(EndpointRecord {
            name: "steps".to_owned(),
            plugin_digest: digest,
            plugin_name: "sum".to_owned(),
            params: r#"{"length":10}"#.to_owned(),
            config: b"config".to_vec(),
            config_hash: Sha256::digest(b"config").into(),
            min_batch: 1,
            max_reports_per_user: None,
            created_at: at(2),
            schedule: Default::default(),
        })
        .await
        .unwrap();
    let CreateEndpointOutcome::Created(endpoint) = created else {
        panic!("endpoint not created: {created:?}");
    };
    db.execute(&format!(
        "INSERT INTO reports (endpoint_id, report_id, share, received_at) \
         SELECT {id}, decode(lpad(to_hex(n), 32, '0'), 'hex'), \
         decode(repeat(lpad(to_hex(n % 256), 2, '0'), 4), 'hex'), 1700000000000 + n \
         FROM generate_series(1, {reports}) AS n",
        id = endpoint.id.0
    ))
    .await
    .unwrap();
    let second = db.open().await;
    (db, first, second, endpoint.id)
}

fn new_batch(batch: u8, rejected_rows: Vec<i64>) -> NewBatch {
    NewBatch {
        batch_id: [batch; 16],
        share: vec![batch; 8],
        sealed_at: at(100),
        rejected_rows,
    }
}

fn rows(reports: &[SealReport]) -> Vec<i64> {
    reports.iter().map(|r| r.row).collect()
}

/// A retried commit arriving at the other replica while the first still runs:
/// one batch, answered `Committed` once and `AlreadyCommitted` once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_of_one_batch_store_it_once() {
    let (db, first, second, steps) = two_replicas(100_000).await;
    let all = first.unbatched_reports(steps, 0, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 100_000);
    assert!(all.windows(2).all(|w| w[0].row < w[1].row), "arrival order");
    let (sealed, rejected) = all.split_at(99_990);
    let rejected = rows(rejected);
    for round in 1..=3u8 {
        // Each round seals a third of the reports, by both replicas at once.
        let part = &sealed[(round as usize - 1) * 33_330..round as usize * 33_330];
        let reject = if round == 3 {
            rejected.clone()
        } else {
            Vec::new()
        };
        let (a, b) = tokio::join!(
            first.commit_batch(steps, new_batch(round, reject.clone()), rows(part)),
            second.commit_batch(steps, new_batch(round, reject.clone()), rows(part)),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let committed = [a, b]
            .iter()
            .filter(|o| matches!(o, CommitOutcome::Committed(_)))
            .count();
        assert_eq!(committed, 1, "one commit stores the batch: {a:?} {b:?}");
        assert_eq!(a.info(), b.info(), "both answer the stored batch");
        let info = a.info();
        assert_eq!(info.count, 33_330);
        assert_eq!(info.rejected, reject.len() as u64);
        let first_row = part.first().unwrap().row;
        let last_row = part.last().unwrap().row;
        assert_eq!(
            info.span,
            Some((at(first_row as u64), at(last_row as u64))),
            "reports' times (row n was received at n)"
        );
    }
    let batches = second.list_batches(steps).await.unwrap();
    assert_eq!(
        batches.iter().map(|b| b.batch_id).collect::<Vec<_>>(),
        [[1; 16], [2; 16], [3; 16]]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM reports WHERE batch_id > 0 AND share IS NULL")
            .await,
        99_990,
        "every sealed report batched once, its share deleted"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM reports WHERE batch_id = -2 AND share IS NULL")
            .await,
        10
    );
    assert_eq!(
        db.count("SELECT rejected FROM endpoints").await,
        10,
        "rejections counted once"
    );
    assert!(
        first
            .unbatched_reports(steps, 0, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    first.close().await.unwrap();
    second.close().await.unwrap();
}

/// Two different batches of overlapping reports committed at once by two
/// replicas: one is stored whole; the other is refused and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_at_once_store_one() {
    let (db, first, second, steps) = two_replicas(60_000).await;
    let all = rows(&first.unbatched_reports(steps, 0, usize::MAX).await.unwrap());
    let (a, b) = tokio::join!(
        first.commit_batch(steps, new_batch(1, Vec::new()), all[..40_000].to_vec()),
        second.commit_batch(steps, new_batch(2, Vec::new()), all[20_000..].to_vec()),
    );
    let (stored, refused) = match (a, b) {
        (Ok(CommitOutcome::Committed(info)), Err(StorageError::ReportUnavailable)) => (info, 2u8),
        (Err(StorageError::ReportUnavailable), Ok(CommitOutcome::Committed(info))) => (info, 1u8),
        other => panic!("expected one commit and one ReportUnavailable: {other:?}"),
    };
    assert_eq!(stored.count, 40_000);
    assert_eq!(
        first.list_batches(steps).await.unwrap(),
        [stored],
        "the refused batch is not stored"
    );
    assert_eq!(
        first.committed_batch(steps, [refused; 16]).await.unwrap(),
        None
    );
    assert_eq!(
        db.count("SELECT count(*) FROM reports WHERE batch_id IS NULL AND share IS NOT NULL")
            .await,
        20_000,
        "the refused batch's other reports stay unbatched with their shares"
    );
    first.close().await.unwrap();
    second.close().await.unwrap();
}

fn seal(endpoint: EndpointId, batch: u8, decided: bool) -> Seal {
    Seal {
        endpoint,
        batch_id: [batch; 16],
        seal_number: u64::from(batch),
        decided,
        positions: vec![0b101],
        rows: vec![1, 3],
        created_at: at(u64::from(batch)),
        verification: decided.then(|| Verification {
            rejected_positions: vec![0b10],
            rejected_rows: vec![2],
            messages: guardian_sdk::raw::Batch {
                data: vec![7, 7, 8],
                ends: vec![2, 3],
            },
        }),
    }
}

/// A decided seal put by one replica while the other puts another seal of the
/// endpoint: a decision is never replaced by another batch's seal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decided_seal_is_never_replaced_by_a_racing_one() {
    let (_db, first, second, steps) = two_replicas(0).await;
    for round in 0..40u8 {
        let decided = seal(steps, 2 * round + 1, true);
        if round % 2 == 0 {
            // Against a reservation: both succeed in some order, and the decision
            // is what stays.
            let reservation = seal(steps, 2 * round + 2, false);
            let (a, b) = tokio::join!(first.put_seal(&decided), second.put_seal(&reservation));
            a.unwrap();
            match b {
                Ok(()) | Err(StorageError::SealPending) => {}
                Err(other) => panic!("unexpected error: {other:?}"),
            }
            assert_eq!(
                second.pending_seal(steps).await.unwrap(),
                Some(decided.clone())
            );
        } else {
            // Against another decision: exactly one is stored, the other refused.
            let other = seal(steps, 2 * round + 2, true);
            let (a, b) = tokio::join!(first.put_seal(&decided), second.put_seal(&other));
            let stored = match (a, b) {
                (Ok(()), Err(StorageError::SealPending)) => decided.clone(),
                (Err(StorageError::SealPending), Ok(())) => other.clone(),
                outcomes => panic!("expected one seal and one SealPending: {outcomes:?}"),
            };
            assert_eq!(
                first.pending_seal(steps).await.unwrap(),
                Some(stored.clone())
            );
            assert_eq!(
                first.decided_seals().await.unwrap(),
                std::slice::from_ref(&stored)
            );
            // Storing it again, from either replica, is a no-op.
            second.put_seal(&stored).await.unwrap();
            assert_eq!(second.pending_seal(steps).await.unwrap(), Some(stored));
        }
        let pending = first.pending_seal(steps).await.unwrap().unwrap();
        assert!(second.drop_seal(steps, pending.batch_id).await.unwrap());
        assert!(!first.drop_seal(steps, pending.batch_id).await.unwrap());
    }
    assert!(matches!(
        first.put_seal(&seal(EndpointId(999), 1, false)).await,
        Err(StorageError::UnknownEndpoint)
    ));
    first.close().await.unwrap();
    second.close().await.unwrap();
}

/// An admin deleting a batch on one replica while a retried commit of it arrives
/// at the other: the batch is released once, whichever comes first, and a
/// deleted batch is still answered as committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_batch_is_never_committed_again() {
    let (_db, first, second, steps) = two_replicas(1_000).await;
    let all = rows(&first.unbatched_reports(steps, 0, usize::MAX).await.unwrap());
    let committed = first
        .commit_batch(steps, new_batch(1, Vec::new()), all.clone())
        .await
        .unwrap();
    let (deleted, retried) = tokio::join!(
        first.delete_batch(steps, [1; 16], at(200)),
        second.commit_batch(steps, new_batch(1, Vec::new()), all.clone()),
    );
    assert_eq!(
        deleted.unwrap(),
        DeleteBatchOutcome::Deleted(committed.info())
    );
    assert_eq!(
        retried.unwrap(),
        CommitOutcome::AlreadyCommitted(committed.info())
    );
    assert!(second.list_batches(steps).await.unwrap().is_empty());
    assert_eq!(
        second.committed_batch(steps, [1; 16]).await.unwrap(),
        Some(committed.info())
    );
    assert_eq!(
        second.delete_batch(steps, [1; 16], at(300)).await.unwrap(),
        DeleteBatchOutcome::Unknown
    );
    let ids: HashSet<[u8; 16]> = first
        .report_ids(steps, all.clone())
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 1_000, "ids stay after the batch is deleted");
    first.close().await.unwrap();
    second.close().await.unwrap();
}
