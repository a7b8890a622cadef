//! PLACEHOLDER catalog

#![allow(unused_variables)]

use super::PgBackend;
use crate::storage::*;

impl PgBackend {
    /// See [`crate::storage::Storage::put_plugin`].
    pub(crate) async fn put_plugin(
        &self,
        plugin: PluginRecord,
    ) -> Result<PutPluginOutcome, StorageError> {
        todo!("postgres put_plugin")
    }

    /// See [`crate::storage::Storage::list_plugins`].
    pub(crate) async fn list_plugins(&self) -> Result<Vec<PluginInfo>, StorageError> {
        todo!("postgres list_plugins")
    }

    /// See [`crate::storage::Storage::get_plugin`].
    pub(crate) async fn get_plugin(
        &self,
        digest: [u8; 32],
    ) -> Result<Option<PluginInfo>, StorageError> {
        todo!("postgres get_plugin")
    }

    /// See [`crate::storage::Storage::plugin_wasm`].
    pub(crate) async fn plugin_wasm(
        &self,
        digest: [u8; 32],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        todo!("postgres plugin_wasm")
    }

    /// See [`crate::storage::Storage::create_endpoint`].
    pub(crate) async fn create_endpoint(
        &self,
        endpoint: EndpointRecord,
    ) -> Result<CreateEndpointOutcome, StorageError> {
        todo!("postgres create_endpoint")
    }

    /// See [`crate::storage::Storage::get_endpoint`].
    pub(crate) async fn get_endpoint(
        &self,
        name: String,
    ) -> Result<Option<Endpoint>, StorageError> {
        todo!("postgres get_endpoint")
    }

    /// See [`crate::storage::Storage::list_endpoints`].
    pub(crate) async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StorageError> {
        todo!("postgres list_endpoints")
    }

    /// See [`crate::storage::Storage::endpoints_after`].
    pub(crate) async fn endpoints_after(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Endpoint>, StorageError> {
        todo!("postgres endpoints_after")
    }

    /// See [`crate::storage::Storage::endpoint_count`].
    pub(crate) async fn endpoint_count(&self) -> Result<u64, StorageError> {
        todo!("postgres endpoint_count")
    }

    /// See [`crate::storage::Storage::delete_endpoint`].
    pub(crate) async fn delete_endpoint(&self, name: String) -> Result<bool, StorageError> {
        todo!("postgres delete_endpoint")
    }

    /// See [`crate::storage::Storage::endpoint_counts`].
    pub(crate) async fn endpoint_counts(
        &self,
        name: String,
    ) -> Result<Option<EndpointCounts>, StorageError> {
        todo!("postgres endpoint_counts")
    }
}
