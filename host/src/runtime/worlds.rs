//! The contract versions the runtime runs side by side: the host bindings
//! generated for `guardian:plugin@0.1.0` and `guardian:plugin@0.2.0`, and what
//! the instance pool needs of each ([`World`]).
//!
//! Both `bindgen!` sites are here. The generated types never leave the
//! runtime: [`super::Plugin`] speaks bytes, [`guardian_sdk::raw`] types and
//! [`CallError`].

use guardian_sdk::Error as PluginError;
use wasmtime::Store;

use super::CallError;
use super::instance::HostState;

/// Host bindings for the frozen `guardian:plugin@0.1.0` world.
pub(super) mod v1 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
    });
}

/// Host bindings for the `guardian:plugin@0.2.0` world (robust plugins).
pub(super) mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "plugin",
    });
}

/// What the instance pool needs of one world's generated bindings. The pool
/// is generic over it, so a call into a 0.1 plugin runs the same code as
/// before 0.2 existed.
pub(super) trait World {
    /// The world's pre-instantiated component (type-checked, imports linked).
    type Pre;
    /// One instance's typed exports.
    type Bindings;
    /// The `error` variant of the world's `algorithm` interface.
    type Error;

    /// The engine the component was compiled for.
    fn engine(pre: &Self::Pre) -> &wasmtime::Engine;
    /// A new instance in `store`.
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Self::Bindings>;
    /// The plugin's own refusal, as a call error.
    fn rejected(error: Self::Error) -> CallError;
}

/// `guardian:plugin/plugin@0.1.0`.
pub(super) struct V1;

/// `guardian:plugin/plugin@0.2.0`.
pub(super) struct V2;

impl World for V1 {
    type Pre = v1::PluginPre<HostState>;
    type Bindings = v1::Plugin;
    type Error = v1::exports::guardian::plugin::algorithm::Error;

    fn engine(pre: &Self::Pre) -> &wasmtime::Engine {
        pre.engine()
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Self::Bindings> {
        pre.instantiate(store)
    }

    fn rejected(error: Self::Error) -> CallError {
        use v1::exports::guardian::plugin::algorithm::Error;
        CallError::Rejected(match error {
            Error::InvalidParams(m) => PluginError::InvalidParams(m),
            Error::InvalidMeasurement(m) => PluginError::InvalidMeasurement(m),
            Error::InvalidShare(m) => PluginError::InvalidShare(m),
            Error::InvalidState(m) => PluginError::InvalidState(m),
            Error::Internal(m) => PluginError::Internal(m),
        })
    }
}

impl World for V2 {
    type Pre = v2::PluginPre<HostState>;
    type Bindings = v2::Plugin;
    type Error = v2::exports::guardian::plugin::algorithm::Error;

    fn engine(pre: &Self::Pre) -> &wasmtime::Engine {
        pre.engine()
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Self::Bindings> {
        pre.instantiate(store)
    }

    fn rejected(error: Self::Error) -> CallError {
        use v2::exports::guardian::plugin::algorithm::Error;
        CallError::Rejected(match error {
            Error::InvalidParams(m) => PluginError::InvalidParams(m),
            Error::InvalidMeasurement(m) => PluginError::InvalidMeasurement(m),
            Error::InvalidShare(m) => PluginError::InvalidShare(m),
            Error::InvalidState(m) => PluginError::InvalidState(m),
            Error::Internal(m) => PluginError::Internal(m),
        })
    }
}
