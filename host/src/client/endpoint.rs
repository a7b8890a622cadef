//! Opening an endpoint on the client side: every server is asked for its
//! definition, they must agree, and the endpoint's plugin (the very component the
//! servers run, checked against its digest) is loaded locally and configured, so
//! that sharding and unsharding use the configuration the servers agreed on.
//!
//! Sharding ([`open_to_shard`]) also needs every server's approval of the plugin:
//! its `shard` decides what each server sees, and no server can vouch for what
//! the others receive, so one operator's approval is not enough.

use anyhow::{Context as _, anyhow, bail, ensure};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::http::{Cluster, ServerError};
use crate::runtime::{Plugin, Runtime, RuntimeOptions};

/// An endpoint as `GET /api/v1/endpoints/{name}` describes it.
#[derive(Clone, Debug, Deserialize)]
pub struct EndpointInfo {
    /// The endpoint's name.
    pub name: String,
    /// The plugin's own name (`sum`, …).
    pub plugin: String,
    /// SHA-256 of the plugin's component, hex.
    pub plugin_digest: String,
    /// Whether this server's operator approves the plugin; `None` when the
    /// server does not say (one older than approvals), which counts as no.
    #[serde(default)]
    pub approved: Option<bool>,
    /// The parameters the endpoint was created with (null in a listing when
    /// they are bulky: fetch the endpoint for them).
    #[serde(default)]
    pub params: Value,
    /// Fewest reports in a batch.
    pub min_batch: u64,
    /// Most unbatched reports one user may hold, if the endpoint has a quota.
    #[serde(default)]
    pub max_reports_per_user: Option<u64>,
    /// Seconds between the seals server 0 makes by itself, if scheduled.
    #[serde(default)]
    pub seal_every: Option<u64>,
    /// Reports held by every server at which server 0 seals by itself, if set.
    #[serde(default)]
    pub seal_at: Option<u64>,
    /// What every server must agree on (plugin, config, min batch, quota,
    /// schedule), hex.
    pub config_hash: String,
    /// When it was created on this server.
    #[serde(default)]
    pub created_at: String,
    /// Report counts on this server, when it said.
    #[serde(default)]
    pub reports: Option<ReportCounts>,
}

/// Report counts of one endpoint on one server.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct ReportCounts {
    /// Stored and in no batch yet.
    #[serde(default)]
    pub unbatched: u64,
    /// In a sealed batch.
    #[serde(default)]
    pub batched: u64,
    /// Sealed batches.
    #[serde(default)]
    pub batches: u64,
}

/// `GET /readyz`: who a server says it is.
#[derive(Deserialize)]
struct Ready {
    server_index: u64,
    servers: u64,
}

/// An endpoint every server agrees on, with its plugin loaded here.
pub(crate) struct LocalEndpoint {
    /// The endpoint's plugin, running locally.
    pub plugin: Plugin,
    /// The canonical configuration bytes (`configure` of the params).
    pub config: Vec<u8>,
    /// The configuration hash the servers agreed on, hex (to notice an endpoint
    /// recreated with another definition).
    pub config_hash: String,
    /// Keeps the engine (and its deadline ticker) alive while `plugin` is used.
    _runtime: Runtime,
}

/// The URL path of endpoint `name` followed by `rest`.
pub(crate) fn endpoint_path<'a>(name: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut path = vec!["api", "v1", "endpoints", name];
    path.extend_from_slice(rest);
    path
}

/// Checks that `cluster` lists every server of the deployment, in index order.
///
/// Sharding among fewer servers than the deployment has would hand a server more
/// than its share (with one server, the measurement itself), so this is checked
/// before anything is sent.
pub(crate) async fn check_order(cluster: &Cluster) -> anyhow::Result<()> {
    ensure!(
        cluster.len() >= 2,
        "only one server is given in --servers (GUARDIAN_SERVERS): measurements are split among at least two share servers, list every one in server-index order"
    );
    for index in 0..cluster.len() {
        let ready: Ready = cluster.get_json(index, &["readyz"]).await?;
        if ready.servers != cluster.len() as u64 {
            bail!(
                "{} belongs to a deployment of {} share servers, but --servers lists {}: give every server's URL, in server-index order",
                cluster.describe(index),
                ready.servers,
                cluster.len()
            );
        }
        if ready.server_index != index as u64 {
            bail!(
                "{} says it is server {}, but it is at position {index} of --servers: list the servers in server-index order",
                cluster.describe(index),
                ready.server_index
            );
        }
    }
    Ok(())
}

/// Fetches endpoint `name` from every server and checks that they agree.
pub(crate) async fn fetch_agreed(cluster: &Cluster, name: &str) -> anyhow::Result<EndpointInfo> {
    let views = fetch_each(cluster, name).await?;
    agreed(cluster, name, views)
}

/// Endpoint `name` as every server describes it, in server-index order.
async fn fetch_each(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<EndpointInfo>> {
    let mut views = Vec::with_capacity(cluster.len());
    for index in 0..cluster.len() {
        let info: EndpointInfo = cluster
            .get_json(index, &endpoint_path(name, &[]))
            .await
            .map_err(|e| explain_unknown_endpoint(e, name))?;
        views.push(info);
    }
    Ok(views)
}

/// Server 0's view of the endpoint, if every server's agrees with it.
fn agreed(cluster: &Cluster, name: &str, views: Vec<EndpointInfo>) -> anyhow::Result<EndpointInfo> {
    let mut first: Option<EndpointInfo> = None;
    for (index, info) in views.into_iter().enumerate() {
        match &first {
            None => first = Some(info),
            Some(zero) => {
                if zero.plugin_digest != info.plugin_digest || zero.config_hash != info.config_hash
                {
                    bail!(
                        "the servers disagree on endpoint {name:?}: {} has plugin {} ({}) with params {} and min batch {} (config hash {}), {} has plugin {} ({}) with params {} and min batch {} (config hash {}); delete it and create it again on every server",
                        cluster.describe(0),
                        zero.plugin,
                        short(&zero.plugin_digest),
                        zero.params,
                        zero.min_batch,
                        short(&zero.config_hash),
                        cluster.describe(index),
                        info.plugin,
                        short(&info.plugin_digest),
                        info.params,
                        info.min_batch,
                        short(&info.config_hash),
                    );
                }
            }
        }
    }
    first.ok_or_else(|| anyhow!("no share servers given"))
}

/// Refuses unless every server says it approves the endpoint's plugin, naming
/// the first that does not and how its operator approves it.
fn check_approved(cluster: &Cluster, name: &str, views: &[EndpointInfo]) -> anyhow::Result<()> {
    for (index, info) in views.iter().enumerate() {
        let says = match info.approved {
            Some(true) => continue,
            Some(false) => "has not approved",
            None => "does not say that it approved (a server older than plugin approval?)",
        };
        bail!(
            "{} {says} plugin {} ({}) of endpoint {name:?}: refusing to shard, since a plugin's shard decides what each server sees and every operator must approve it. That server's operator approves it by adding the digest to plugins.approved (GUARDIAN_PLUGINS_APPROVED={}) and restarting it",
            cluster.describe(index),
            info.plugin,
            info.plugin_digest,
            info.plugin_digest,
        );
    }
    Ok(())
}

fn explain_unknown_endpoint(error: ServerError, name: &str) -> anyhow::Error {
    if error.code() == "unknown_endpoint" {
        anyhow!(
            "there is no endpoint {name:?} on server {} ({}); `guardian endpoint list` shows the endpoints, `guardian endpoint create` makes one",
            error.server,
            error.url
        )
    } else {
        error.into()
    }
}

/// The first 12 hex digits of a digest, for messages.
pub(crate) fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// Opens endpoint `name` for unsharding: checks the server order, that every
/// server has the same definition, fetches the plugin from server 0, checks its
/// digest, loads and configures it locally and checks the configuration hash.
///
/// Combining released shares needs no approval: the servers release them after
/// their own checks, and an approval revoked later must not strand sealed data.
pub(crate) async fn open(cluster: &Cluster, name: &str) -> anyhow::Result<LocalEndpoint> {
    check_order(cluster).await?;
    let info = fetch_agreed(cluster, name).await?;
    load_endpoint(cluster, name, info).await
}

/// [`open`] for sharding: also refuses, before any plugin code runs here, unless
/// every server approves the endpoint's plugin.
pub(crate) async fn open_to_shard(cluster: &Cluster, name: &str) -> anyhow::Result<LocalEndpoint> {
    check_order(cluster).await?;
    let views = fetch_each(cluster, name).await?;
    check_approved(cluster, name, &views)?;
    let info = agreed(cluster, name, views)?;
    load_endpoint(cluster, name, info).await
}

/// Fetches the agreed plugin from server 0, checks its digest and loads it.
async fn load_endpoint(
    cluster: &Cluster,
    name: &str,
    info: EndpointInfo,
) -> anyhow::Result<LocalEndpoint> {
    let wasm = cluster
        .request(
            0,
            Method::GET,
            &["api", "v1", "plugins", &info.plugin_digest, "wasm"],
        )
        .send()
        .await
        .with_context(|| format!("fetching the plugin of endpoint {name:?}"))?
        .body;
    let digest = hex::encode(Sha256::digest(&wasm));
    if digest != info.plugin_digest {
        bail!(
            "{} sent plugin code whose SHA-256 is {digest}, not the endpoint's plugin digest {}: refusing to run it",
            cluster.describe(0),
            info.plugin_digest
        );
    }
    let info_for_load = info.clone();
    tokio::task::spawn_blocking(move || load(info_for_load, &wasm))
        .await
        .context("the plugin loader stopped")?
}

/// Compiles and configures the plugin (blocking: wasmtime compiles here).
fn load(info: EndpointInfo, wasm: &[u8]) -> anyhow::Result<LocalEndpoint> {
    // One command shards or unshards on one thread: a few instance slots suffice.
    let runtime = Runtime::new(RuntimeOptions {
        idle_instances: 2,
        pool_slots: 8,
        ..RuntimeOptions::default()
    })
    .context("starting the plugin runtime")?;
    let plugin = runtime
        .load(wasm)
        .with_context(|| format!("loading plugin {} locally", info.plugin))?;
    // The servers configure with the params' `Value::to_string()` (sorted keys).
    let config = plugin
        .configure(&info.params.to_string())
        .with_context(|| {
            format!(
                "plugin {} refused the endpoint's params {} locally",
                info.plugin, info.params
            )
        })?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(&info.plugin_digest, &mut digest)
        .context("the endpoint's plugin digest is not 64 hex digits")?;
    let hash = hex::encode(crate::server::scheduled_config_hash(
        &digest,
        &config,
        info.min_batch,
        info.max_reports_per_user,
        &crate::storage::SealSchedule {
            every_secs: info.seal_every,
            at: info.seal_at,
        },
    ));
    if hash != info.config_hash {
        bail!(
            "the plugin configured here gives config hash {hash}, but the servers have {} for endpoint {:?}: refusing to shard with another configuration than theirs",
            info.config_hash,
            info.name
        );
    }
    Ok(LocalEndpoint {
        plugin,
        config,
        config_hash: info.config_hash,
        _runtime: runtime,
    })
}
