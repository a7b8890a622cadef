//! The WebAssembly glue behind [`crate::export_plugin!`] (contract 0.1.0)
//! and [`crate::export_robust_plugin!`] (contract 0.2.0). Not public API: the
//! generated bindings stay private so that a change of the WIT or of
//! wit-bindgen never breaks a plugin's source.
//!
//! Each contract has its own bindings module and glue; a component exports
//! exactly one of the two worlds, the one its macro names. (wit-bindgen puts
//! a world's exports into the component only through its export macro, so a
//! plugin built with one macro carries nothing of the other world.)

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

/// Registers a robust [`crate::Plugin`] (one that overrides the verification
/// methods, e.g. a `guardian_sdk::prio3::Prio3Plugin`) as the component's
/// implementation of the `guardian:plugin@0.2.0` world: the `algorithm` and
/// `verify` interfaces. Use it once, at the root of the plugin crate, instead
/// of [`crate::export_plugin!`]. On targets other than wasm32 it expands to
/// nothing, so the same crate can be tested natively.
#[macro_export]
macro_rules! export_robust_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type GuardianRobustExport = $crate::export::RobustExport<$plugin>;
            $crate::export::robust_bindings::export!(GuardianRobustExport with_types_in $crate::export::robust_bindings);
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

/// Contract 0.2.0, `wit/0.2.0/plugin.wit`. Its world is also named `plugin`,
/// and wit-bindgen names the exported macro after the world
/// (`__export_plugin_impl`, at the crate root): generating it as it is would
/// define that macro twice. So the bindings are generated for a world of the
/// SDK's own that includes it, and export exactly what it exports
/// (`guardian:plugin/algorithm@0.2.0` and `guardian:plugin/verify@0.2.0`).
#[cfg(target_arch = "wasm32")]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod robust_bindings {
    wit_bindgen::generate!({
        inline: "
            package guardian:sdk;
            world robust-plugin {
                include guardian:plugin/plugin@0.2.0;
            }
        ",
        path: "../wit/0.2.0",
        world: "guardian:sdk/robust-plugin",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "guardian_sdk::export::robust_bindings",
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
mod robust_glue {
    use super::robust_bindings::exports::guardian::plugin::{algorithm as wit, verify};
    use crate::{Error, Plugin, raw};
    use std::marker::PhantomData;

    /// Implements the generated `Guest` traits of both 0.2 interfaces for
    /// any [`Plugin`]; the SDK's byte layer does the work.
    pub struct RobustExport<P>(PhantomData<P>);

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

    fn batch(b: wit::ShareBatch) -> raw::Batch {
        raw::Batch {
            data: b.data,
            ends: b.ends,
        }
    }

    fn share_batch(b: raw::Batch) -> wit::ShareBatch {
        wit::ShareBatch {
            data: b.data,
            ends: b.ends,
        }
    }

    impl<P: Plugin> wit::Guest for RobustExport<P> {
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
            report_id: Vec<u8>,
            seed: Vec<u8>,
        ) -> Result<wit::Report, wit::Error> {
            let report = raw::shard_report::<P>(&cfg, &measurement, servers, &report_id, &seed)?;
            Ok(wit::Report {
                public_share: report.public_share,
                shares: report.shares,
            })
        }

        fn validate(
            cfg: Vec<u8>,
            public_share: Vec<u8>,
            share: Vec<u8>,
            server_index: u32,
        ) -> Result<(), wit::Error> {
            Ok(raw::validate_report::<P>(
                &cfg,
                &public_share,
                &share,
                server_index,
            )?)
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

    impl<P: Plugin> verify::Guest for RobustExport<P> {
        fn verify_init(
            cfg: Vec<u8>,
            key: Vec<u8>,
            servers: u32,
            server_index: u32,
            reports: verify::Reports,
        ) -> Result<Vec<verify::Started>, wit::Error> {
            let started = raw::verify_init::<P>(
                &cfg,
                &key,
                servers,
                server_index,
                &reports.ids,
                &batch(reports.public_shares),
                &batch(reports.shares),
            )?;
            Ok(started
                .into_iter()
                .map(|s| match s {
                    raw::Started::Ready {
                        state,
                        verifier_share,
                    } => verify::Started::Ready((state, verifier_share)),
                    raw::Started::Invalid(why) => verify::Started::Invalid(why),
                })
                .collect())
        }

        fn combine(
            cfg: Vec<u8>,
            public_shares: wit::ShareBatch,
            verifier_shares: Vec<wit::ShareBatch>,
        ) -> Result<Vec<Result<Vec<u8>, String>>, wit::Error> {
            let verifier_shares: Vec<raw::Batch> = verifier_shares.into_iter().map(batch).collect();
            Ok(raw::combine::<P>(
                &cfg,
                &batch(public_shares),
                &verifier_shares,
            )?)
        }

        fn verify_finish(
            cfg: Vec<u8>,
            servers: u32,
            server_index: u32,
            states: wit::ShareBatch,
            messages: wit::ShareBatch,
        ) -> Result<wit::ShareBatch, wit::Error> {
            Ok(share_batch(raw::verify_finish::<P>(
                &cfg,
                servers,
                server_index,
                &batch(states),
                &batch(messages),
            )?))
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use glue::Export;
#[cfg(target_arch = "wasm32")]
pub use robust_glue::RobustExport;
