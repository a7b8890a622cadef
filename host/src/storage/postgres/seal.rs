//! PLACEHOLDER seal

#![allow(unused_variables)]

use std::time::SystemTime;

use super::PgBackend;
use crate::storage::*;

impl PgBackend {
    /// See [`crate::storage::Storage::unbatched_reports`].
    pub(crate) async fn unbatched_reports(
        &self,
        endpoint: EndpointId,
        after_row: i64,
        limit: usize,
    ) -> Result<Vec<SealReport>, StorageError> {
        todo!("postgres unbatched_reports")
    }

    /// See [`crate::storage::Storage::distinct_posters`].
    pub(crate) async fn distinct_posters(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
        enough: u64,
    ) -> Result<u64, StorageError> {
        todo!("postgres distinct_posters")
    }

    /// See [`crate::storage::Storage::put_seal`].
    pub(crate) async fn put_seal(&self, seal: &Seal) -> Result<(), StorageError> {
        todo!("postgres put_seal")
    }

    /// See [`crate::storage::Storage::pending_seal`].
    pub(crate) async fn pending_seal(
        &self,
        endpoint: EndpointId,
    ) -> Result<Option<Seal>, StorageError> {
        todo!("postgres pending_seal")
    }

    /// See [`crate::storage::Storage::decided_seals`].
    pub(crate) async fn decided_seals(&self) -> Result<Vec<Seal>, StorageError> {
        todo!("postgres decided_seals")
    }

    /// See [`crate::storage::Storage::drop_seal`].
    pub(crate) async fn drop_seal(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<bool, StorageError> {
        todo!("postgres drop_seal")
    }

    /// See [`crate::storage::Storage::read_shares`].
    pub(crate) async fn read_shares(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
    ) -> Result<(Vec<u8>, Vec<u32>), StorageError> {
        todo!("postgres read_shares")
    }

    /// See [`crate::storage::Storage::report_ids`].
    pub(crate) async fn report_ids(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
    ) -> Result<Vec<[u8; 16]>, StorageError> {
        todo!("postgres report_ids")
    }

    /// See [`crate::storage::Storage::commit_batch`].
    pub(crate) async fn commit_batch(
        &self,
        endpoint: EndpointId,
        batch: NewBatch,
        rows: Vec<i64>,
    ) -> Result<CommitOutcome, StorageError> {
        todo!("postgres commit_batch")
    }

    /// See [`crate::storage::Storage::reject_reports`].
    pub(crate) async fn reject_reports(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
    ) -> Result<u64, StorageError> {
        todo!("postgres reject_reports")
    }

    /// See [`crate::storage::Storage::verify_key`].
    pub(crate) async fn verify_key(
        &self,
        endpoint: EndpointId,
        proposed: Option<[u8; 32]>,
    ) -> Result<Option<[u8; 32]>, StorageError> {
        todo!("postgres verify_key")
    }

    /// See [`crate::storage::Storage::list_batches`].
    pub(crate) async fn list_batches(
        &self,
        endpoint: EndpointId,
    ) -> Result<Vec<BatchInfo>, StorageError> {
        todo!("postgres list_batches")
    }

    /// See [`crate::storage::Storage::get_batch`].
    pub(crate) async fn get_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<Option<Batch>, StorageError> {
        todo!("postgres get_batch")
    }

    /// See [`crate::storage::Storage::all_batches`].
    pub(crate) async fn all_batches(
        &self,
        endpoint: EndpointId,
    ) -> Result<Vec<Batch>, StorageError> {
        todo!("postgres all_batches")
    }

    /// See [`crate::storage::Storage::delete_batch`].
    pub(crate) async fn delete_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
        now: SystemTime,
    ) -> Result<DeleteBatchOutcome, StorageError> {
        todo!("postgres delete_batch")
    }

    /// See [`crate::storage::Storage::committed_batch`].
    pub(crate) async fn committed_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<Option<BatchInfo>, StorageError> {
        todo!("postgres committed_batch")
    }
}
