//! Tests of an admin's deletion of released batches, and of the seed a batch's
//! release draws its noise from, on both backends (see `test_backends`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::test_backends::{TestDb, on_both_backends};
use super::*;

fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + millis)
}

async fn store_with_endpoint(db: &TestDb) -> (Storage, Endpoint) {
    let storage = db.open().await;
    let wasm = b"sum wasm".to_vec();
    let digest: [u8; 32] = Sha256::digest(&wasm).into();
    storage
        .put_plugin(PluginRecord {
            digest,
            name: "sum".into(),
            version: "1.0.0".into(),
            description: "the sum plugin".into(),
            params_schema: r#"{"type":"object"}"#.into(),
            wasm,
            builtin: true,
            created_at: at(1),
        })
        .await
        .unwrap();
    let outcome = storage
        .create_endpoint(EndpointRecord {
            name: "steps".into(),
            plugin_digest: digest,
            plugin_name: "sum".into(),
            params: "{}".into(),
            config: b"config".to_vec(),
            config_hash: Sha256::digest(b"config").into(),
            min_batch: 2,
            max_reports_per_user: None,
            created_at: at(2),
            schedule: SealSchedule::default(),
        })
        .await
        .unwrap();
    let CreateEndpointOutcome::Created(endpoint) = outcome else {
        panic!("not created: {outcome:?}");
    };
    (storage, endpoint)
}

async fn commit(
    storage: &Storage,
    endpoint: EndpointId,
    batch: u8,
    rows: Vec<i64>,
) -> CommitOutcome {
    storage
        .commit_batch(
            endpoint,
            NewBatch {
                batch_id: [batch; 16],
                share: vec![batch; 4],
                sealed_at: at(10),
                rejected_rows: Vec::new(),
            },
            rows,
        )
        .await
        .unwrap()
}

async fn a_deleted_batch_leaves_the_listings_but_stays_committed(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db).await;
    for n in 0..6u8 {
        let mut id = [0u8; 16];
        id[15] = n;
        storage
            .insert_report(steps.id, id, vec![n; 3], at(3))
            .await
            .unwrap();
    }
    let reports = storage
        .unbatched_reports(steps.id, 0, usize::MAX)
        .await
        .unwrap();
    let rows: Vec<i64> = reports.iter().map(|r| r.row).collect();
    let first = commit(&storage, steps.id, 1, rows[..3].to_vec()).await;
    commit(&storage, steps.id, 2, rows[3..].to_vec()).await;

    // A batch whose decided seal is still pending here is refused.
    let seal = Seal {
        endpoint: steps.id,
        batch_id: [2; 16],
        seal_number: 7,
        decided: true,
        positions: vec![0b111],
        rows: rows[3..].to_vec(),
        created_at: at(9),
        verification: None,
    };
    storage.put_seal(&seal).await.unwrap();
    assert_eq!(
        storage
            .delete_batch(steps.id, [2; 16], at(20))
            .await
            .unwrap(),
        DeleteBatchOutcome::NotReleased
    );
    assert!(storage.drop_seal(steps.id, [2; 16]).await.unwrap());

    assert_eq!(
        storage
            .delete_batch(steps.id, [1; 16], at(20))
            .await
            .unwrap(),
        DeleteBatchOutcome::Deleted(first.info())
    );
    assert_eq!(storage.get_batch(steps.id, [1; 16]).await.unwrap(), None);
    let listed: Vec<[u8; 16]> = storage
        .list_batches(steps.id)
        .await
        .unwrap()
        .iter()
        .map(|b| b.batch_id)
        .collect();
    assert_eq!(listed, [[2; 16]]);
    assert_eq!(storage.all_batches(steps.id).await.unwrap().len(), 1);
    // Its reports stay batched, not expired.
    assert_eq!(
        storage.endpoint_counts("steps").await.unwrap(),
        Some(EndpointCounts {
            unbatched: 0,
            batched: 6,
            expired: 0,
            rejected: 0,
            batches: 1,
        })
    );
    // Gone here: deleting again, or an unknown id, is `Unknown`.
    for id in [[1; 16], [9; 16]] {
        assert_eq!(
            storage.delete_batch(steps.id, id, at(21)).await.unwrap(),
            DeleteBatchOutcome::Unknown
        );
    }
    // A retried commit of it is answered as committed and releases nothing again.
    assert_eq!(
        storage.committed_batch(steps.id, [1; 16]).await.unwrap(),
        Some(first.info())
    );
    assert_eq!(
        commit(&storage, steps.id, 1, rows[..3].to_vec()).await,
        CommitOutcome::AlreadyCommitted(first.info())
    );
    assert_eq!(storage.get_batch(steps.id, [1; 16]).await.unwrap(), None);
    storage.close().await.unwrap();

    // It stays deleted across a restart; deleting the endpoint takes the record too.
    let storage = db.open().await;
    assert_eq!(
        storage.committed_batch(steps.id, [1; 16]).await.unwrap(),
        Some(first.info())
    );
    assert!(storage.delete_endpoint("steps").await.unwrap());
    storage.close().await.unwrap();
    let left = db.count("SELECT count(*) FROM deleted_batches").await;
    assert_eq!(left, 0);
}
on_both_backends!(a_deleted_batch_leaves_the_listings_but_stays_committed);

async fn release_seeds_are_secret_per_database_and_stable_across_restarts(db: TestDb) {
    let other_db = TestDb::new(db.backend());
    let (one, steps) = store_with_endpoint(&db).await;
    let (other, other_steps) = store_with_endpoint(&other_db).await;
    let seed = one.release_seed(steps.id, [1; 16]);
    assert_ne!(seed, one.release_seed(steps.id, [2; 16]));
    assert_ne!(seed, other.release_seed(other_steps.id, [1; 16]));
    one.close().await.unwrap();
    other.close().await.unwrap();
    // The same database after a restart, and a copy of it (a restored backup),
    // draw the same seed.
    let reopened = db.open().await;
    assert_eq!(reopened.release_seed(steps.id, [1; 16]), seed);
    reopened.close().await.unwrap();
    let copy = db.copy().await;
    let restored = copy.open().await;
    assert_eq!(restored.release_seed(steps.id, [1; 16]), seed);
    restored.close().await.unwrap();
}
on_both_backends!(release_seeds_are_secret_per_database_and_stable_across_restarts);
