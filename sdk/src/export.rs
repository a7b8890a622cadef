//! The WebAssembly glue behind [`crate::export_plugin!`]. Not public API: the
//! generated bindings stay private so that a change of the WIT or of
//! wit-bindgen never breaks a plugin's source.

/// Registers a [`crate::Plugin`] as the component's implementation of the
/// `guardian:plugin/algorithm@0.1.0` interface. Use it once, at the root of
/// the plugin crate. On targets other than wasm32 it expands to nothing, so
/// the same crate can be tested natively.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type GuardianExport = $crate::export::Export<$plugin>;
            $crate::export::bindings::export!(GuardianExport with_types_in $crate::export::bindings);
        };
    };
}

#[cfg(target_arch = "wasm32")]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "guardian_sdk::export::bindings",
    });
}

#[cfg(target_arch = "wasm32")]
mod glue {
    use super::bindings::exports::guardian::plugin::algorithm as wit;
    use crate::{Error, Plugin, raw};
    use std::marker::PhantomData;

    /// Implements the generated `Guest` trait for any [`Plugin`].
    pub struct Export<P>(PhantomData<P>);

    impl From<Error> for wit::Error {
        fn from(e: Error) -> wit::Error {
            match e {
                Error::InvalidParams(m) => wit::Error::InvalidParams(m),
                Error::InvalidMeasurement(m) => wit::Error::InvalidMeasurement(m),
                Error::InvalidShare(m) => wit::Error::InvalidShare(m),
                Error::InvalidState(m) => wit::Error::InvalidState(m),
                Error::Internal(m) => wit::Error::Internal(m),
            }
        }
    }

    impl<P: Plugin> wit::Guest for Export<P> {
        fn info() -> wit::PluginInfo {
            let i = raw::info::<P>();
            wit::PluginInfo {
                name: i.name,
                version: i.version,
                description: i.description,
                params_schema: i.params_schema,
            }
        }

        fn configure(params: String) -> Result<Vec<u8>, wit::Error> {
            Ok(raw::configure::<P>(&params)?)
        }

        fn shard(
            cfg: Vec<u8>,
            measurement: String,
            servers: u32,
            seed: Vec<u8>,
        ) -> Result<Vec<Vec<u8>>, wit::Error> {
            Ok(raw::shard::<P>(&cfg, &measurement, servers, &seed)?)
        }

        fn validate(cfg: Vec<u8>, share: Vec<u8>, server_index: u32) -> Result<(), wit::Error> {
            Ok(raw::validate::<P>(&cfg, &share, server_index)?)
        }

        fn init(cfg: Vec<u8>) -> Result<Vec<u8>, wit::Error> {
            Ok(raw::init::<P>(&cfg)?)
        }

        fn accumulate(
            cfg: Vec<u8>,
            agg: Vec<u8>,
            shares: wit::ShareBatch,
        ) -> Result<Vec<u8>, wit::Error> {
            Ok(raw::accumulate::<P>(
                &cfg,
                &agg,
                &shares.data,
                &shares.ends,
            )?)
        }

        fn merge(cfg: Vec<u8>, a: Vec<u8>, b: Vec<u8>) -> Result<Vec<u8>, wit::Error> {
            Ok(raw::merge::<P>(&cfg, &a, &b)?)
        }

        fn release(
            cfg: Vec<u8>,
            agg: Vec<u8>,
            count: u64,
            server_index: u32,
            seed: Vec<u8>,
        ) -> Result<Vec<u8>, wit::Error> {
            Ok(raw::release::<P>(&cfg, &agg, count, server_index, &seed)?)
        }

        fn unshard(cfg: Vec<u8>, aggs: Vec<Vec<u8>>, count: u64) -> Result<String, wit::Error> {
            Ok(raw::unshard::<P>(&cfg, &aggs, count)?)
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use glue::Export;
