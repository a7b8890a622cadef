//! PLACEHOLDER ingest

#![allow(unused_variables)]

use std::time::SystemTime;

use super::PgBackend;
use crate::storage::*;

impl PgBackend {
    /// See [`crate::storage::Storage::close`].
    pub(crate) async fn close(&self) -> Result<(), StorageError> {
        todo!("postgres close")
    }

    /// See [`crate::storage::Storage::insert_report`].
    pub(crate) async fn insert_report(
        &self,
        endpoint: EndpointId,
        report_id: [u8; 16],
        share: Vec<u8>,
        received_at: SystemTime,
    ) -> Result<InsertReportOutcome, StorageError> {
        todo!("postgres insert_report")
    }

    /// See [`crate::storage::Storage::insert_report_for_user`].
    pub(crate) async fn insert_report_for_user(
        &self,
        endpoint: EndpointId,
        report_id: [u8; 16],
        share: Vec<u8>,
        received_at: SystemTime,
        quota: UserQuota,
    ) -> Result<InsertReportOutcome, StorageError> {
        todo!("postgres insert_report_for_user")
    }

    /// See [`crate::storage::Storage::insert_reports`].
    pub(crate) async fn insert_reports(
        &self,
        endpoint: EndpointId,
        received_at: SystemTime,
        reports: Vec<NewReport>,
    ) -> Vec<Result<InsertReportOutcome, StorageError>> {
        todo!("postgres insert_reports")
    }

    /// See [`crate::storage::Storage::insert_report_from`].
    pub(crate) async fn insert_report_from(
        &self,
        endpoint: EndpointId,
        report_id: [u8; 16],
        share: Vec<u8>,
        received_at: SystemTime,
        poster: UserKey,
    ) -> Result<InsertReportOutcome, StorageError> {
        todo!("postgres insert_report_from")
    }

    /// See [`crate::storage::Storage::expire_reports`].
    pub(crate) async fn expire_reports(
        &self,
        endpoint: EndpointId,
        before: SystemTime,
    ) -> Result<u64, StorageError> {
        todo!("postgres expire_reports")
    }

    /// See [`crate::storage::Storage::collect_reports`].
    pub(crate) async fn collect_reports(
        &self,
        endpoint: EndpointId,
        keep_from: [u8; 16],
        received_before: SystemTime,
        limit: usize,
    ) -> Result<Collected, StorageError> {
        todo!("postgres collect_reports")
    }

    /// The report-id filters are SQLite's: PostgreSQL's unique index answers.
    #[cfg(test)]
    pub(crate) async fn id_filter_spans(&self) -> Result<usize, StorageError> {
        Ok(0)
    }

    /// See [`crate::storage::Storage::write_failure`].
    pub(crate) fn write_failure(&self) -> Option<String> {
        None
    }
}
