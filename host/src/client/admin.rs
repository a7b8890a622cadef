//! The developer's commands: `plugin upload|list` and `endpoint create|list`.
//!
//! Uploads and creations go to every server and are reported per server. Both
//! are idempotent on the servers (an identical upload or endpoint answers 200),
//! so after a partial failure the same command is simply run again.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::bail;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::endpoint::{EndpointInfo, short};
use super::http::{Answer, Cluster, Paged, ServerError};
use super::table;

/// What one server did with an upload or a creation.
#[derive(Debug)]
pub enum Done {
    /// It did not have it and stored it (201).
    Created,
    /// It already had exactly this (200).
    AlreadyThere,
    /// It refused or could not be reached.
    Failed(ServerError),
}

impl Done {
    fn from(result: &Result<Answer, ServerError>) -> Self {
        match result {
            Ok(answer) if answer.status == StatusCode::CREATED => Done::Created,
            Ok(_) => Done::AlreadyThere,
            Err(e) => Done::Failed(e.clone()),
        }
    }
}

/// Per-server outcomes of an action on every server.
#[derive(Debug)]
pub struct PerServer {
    /// What the action was, e.g. `plugin sum 0.1.0` (for messages).
    pub what: String,
    /// `(server description, outcome)` in server-index order.
    pub servers: Vec<(String, Done)>,
    /// A problem found after every server answered (e.g. they disagree).
    pub mismatch: Option<String>,
}

impl PerServer {
    /// One line per server.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (who, done) in &self.servers {
            let _ = match done {
                Done::Created => writeln!(out, "{who}: created"),
                Done::AlreadyThere => writeln!(out, "{who}: already there"),
                Done::Failed(e) => writeln!(out, "{who}: failed ({})", e.code()),
            };
        }
        out
    }

    /// `Ok` if every server has it and they agree, otherwise what went wrong and
    /// how to go on.
    pub fn check(&self) -> anyhow::Result<()> {
        let failed: Vec<&ServerError> = self
            .servers
            .iter()
            .filter_map(|(_, d)| match d {
                Done::Failed(e) => Some(e),
                _ => None,
            })
            .collect();
        if failed.is_empty() {
            return match &self.mismatch {
                Some(mismatch) => bail!("{mismatch}"),
                None => Ok(()),
            };
        }
        let errors: Vec<String> = failed.iter().map(|e| e.to_string()).collect();
        let which: Vec<String> = failed.iter().map(|e| e.server.to_string()).collect();
        if failed.len() == self.servers.len() {
            bail!(
                "{} failed on every server:\n  {}",
                self.what,
                errors.join("\n  ")
            );
        }
        bail!(
            "{} is not on every server yet (failed on server {}):\n  {}\nRerunning the same command is safe: servers that have it answer \"already there\".",
            self.what,
            which.join(", "),
            errors.join("\n  ")
        )
    }
}

/// A plugin as the servers describe it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PluginView {
    /// SHA-256 of the component, hex: what `endpoint create --plugin` takes.
    pub digest: String,
    /// The plugin's own name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// One line about it.
    #[serde(default)]
    pub description: String,
    /// Whether it is embedded in the server.
    #[serde(default)]
    pub builtin: bool,
    /// Whether the server's operator approves it (`plugins.approved`); `None`
    /// from a server older than approvals.
    #[serde(default)]
    pub approved: Option<bool>,
    /// Component size in bytes.
    #[serde(default)]
    pub size: u64,
}

/// What `guardian plugin upload` did, and what is left for the operators.
#[derive(Debug)]
pub struct Upload {
    /// What each server did with the component.
    pub report: PerServer,
    /// SHA-256 of the component, hex: what operators approve.
    pub digest: String,
    /// The servers (as `server i (url)`) that stored it but do not approve it.
    pub not_approved: Vec<String>,
}

impl Upload {
    /// Whether endpoints can use the plugin yet, and if not, what each operator
    /// does about it.
    pub fn approval(&self) -> String {
        if self.not_approved.is_empty() {
            return "approved on every server: endpoints can use it\n".to_owned();
        }
        format!(
            "not approved on {} yet: no endpoint can use it before every operator approves it, \
             since a plugin's shard decides what each server sees.\n\
             Review it, then approve it on every server: \
             GUARDIAN_PLUGINS_APPROVED={} (plugins.approved) and restart \
             (a local demo: restart `guardian dev --approve {}`)\n",
            self.not_approved.join(", "),
            self.digest,
            self.digest
        )
    }
}

/// `guardian plugin upload FILE`: sends the component to every server.
pub async fn upload_plugin(cluster: &Cluster, wasm: Vec<u8>) -> Upload {
    let digest = hex::encode(Sha256::digest(&wasm));
    let mut servers = Vec::new();
    let mut described: Option<PluginView> = None;
    let mut not_approved = Vec::new();
    for index in 0..cluster.len() {
        let result = cluster
            .request(index, Method::POST, &["api", "v1", "plugins"])
            .wasm(wasm.clone())
            .send()
            .await;
        let result = result.and_then(|answer| {
            let view: PluginView = answer.json()?;
            if view.approved != Some(true) {
                not_approved.push(cluster.describe(index));
            }
            described.get_or_insert(view);
            Ok(answer)
        });
        servers.push((cluster.describe(index), Done::from(&result)));
    }
    let what = match &described {
        Some(p) => format!("plugin {} {} (digest {digest})", p.name, p.version),
        None => format!("the plugin with digest {digest}"),
    };
    Upload {
        report: PerServer {
            what,
            servers,
            mismatch: None,
        },
        digest,
        not_approved,
    }
}

/// What `guardian endpoint create` asks for.
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    /// Endpoint name.
    pub name: String,
    /// A built-in's name, or an uploaded plugin's `name@version`, `name` or
    /// digest (each server resolves it; the endpoints' config hashes then show
    /// whether they chose the same plugin).
    pub plugin: String,
    /// The plugin's parameters.
    pub params: Value,
    /// Fewest reports per batch (the servers' default when absent).
    pub min_batch: Option<u64>,
    /// Most unbatched reports per user (no limit when absent).
    pub max_reports_per_user: Option<u64>,
    /// Server 0 seals by itself every this often (whole seconds).
    pub seal_every: Option<std::time::Duration>,
    /// Server 0 seals by itself once every server holds this many reports.
    pub seal_at: Option<u64>,
}

/// `guardian endpoint create`: creates the endpoint on every server and checks
/// that they all derived the same configuration hash.
pub async fn create_endpoint(cluster: &Cluster, endpoint: &NewEndpoint) -> PerServer {
    let mut body = serde_json::json!({
        "name": endpoint.name,
        "plugin": endpoint.plugin,
        "params": endpoint.params,
    });
    if let Some(min_batch) = endpoint.min_batch {
        body["min_batch"] = min_batch.into();
    }
    if let Some(max) = endpoint.max_reports_per_user {
        body["max_reports_per_user"] = max.into();
    }
    if let Some(every) = endpoint.seal_every {
        body["seal_every"] = every.as_secs().into();
    }
    if let Some(at) = endpoint.seal_at {
        body["seal_at"] = at.into();
    }
    let mut servers = Vec::new();
    let mut views: Vec<(usize, EndpointInfo)> = Vec::new();
    for index in 0..cluster.len() {
        let result = cluster
            .request(index, Method::POST, &["api", "v1", "endpoints"])
            .json(&body)
            .send()
            .await;
        let result = result.and_then(|answer| {
            views.push((index, answer.json()?));
            Ok(answer)
        });
        servers.push((cluster.describe(index), Done::from(&result)));
    }
    let mismatch = views.split_first().and_then(|((i, first), rest)| {
        rest.iter()
            .find(|(_, v)| v.config_hash != first.config_hash)
            .map(|(j, other)| {
                format!(
                    "the servers derived different configurations for endpoint {:?}: server {i} has plugin {} ({}) with min batch {} (config hash {}), server {j} has plugin {} ({}) with min batch {} (config hash {}); they must run the same plugin with the same min batch (give --min-batch explicitly)",
                    endpoint.name,
                    first.plugin,
                    short(&first.plugin_digest),
                    first.min_batch,
                    short(&first.config_hash),
                    other.plugin,
                    short(&other.plugin_digest),
                    other.min_batch,
                    short(&other.config_hash),
                )
            })
    });
    let what = match views.first() {
        Some((_, v)) => format!(
            "endpoint {:?} ({} over {}, min batch {})",
            v.name, v.plugin, v.params, v.min_batch
        ),
        None => format!("endpoint {:?}", endpoint.name),
    };
    PerServer {
        what,
        servers,
        mismatch,
    }
}

/// What every server listed, merged by key.
#[derive(Debug)]
pub struct Listing {
    /// The table.
    pub table: String,
    /// Servers that could not list, and differences between servers.
    pub warnings: Vec<String>,
}

/// `GET /api/v1/plugins`, every page.
#[derive(Deserialize)]
struct Plugins {
    plugins: Vec<PluginView>,
    #[serde(default)]
    next: Option<String>,
}

/// `GET /api/v1/endpoints`, every page.
#[derive(Deserialize)]
pub(crate) struct Endpoints {
    /// Every endpoint of the server.
    pub endpoints: Vec<EndpointInfo>,
    #[serde(default)]
    next: Option<String>,
}

impl Paged for Plugins {
    fn next(&self) -> Option<String> {
        self.next.clone()
    }

    fn append(&mut self, page: Self) {
        self.plugins.extend(page.plugins);
    }
}

impl Paged for Endpoints {
    fn next(&self) -> Option<String> {
        self.next.clone()
    }

    fn append(&mut self, page: Self) {
        self.endpoints.extend(page.endpoints);
    }
}

/// Which servers hold an entry: `all`, or their indexes.
fn presence(held: &[usize], servers: usize) -> String {
    if held.len() == servers {
        "all".to_owned()
    } else {
        held.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Fetches `segments` from every server: the answers and the failures.
pub(crate) async fn from_every_server<T: serde::de::DeserializeOwned + Paged>(
    cluster: &Cluster,
    segments: &[&str],
) -> (Vec<(usize, T)>, Vec<ServerError>) {
    let mut answers = Vec::new();
    let mut warnings = Vec::new();
    for index in 0..cluster.len() {
        match cluster.get_pages(index, segments).await {
            Ok(answer) => answers.push((index, answer)),
            Err(e) => warnings.push(e),
        }
    }
    (answers, warnings)
}

/// `guardian plugin list`: every server's plugins, one row per digest.
pub async fn list_plugins(cluster: &Cluster) -> anyhow::Result<Listing> {
    let (answers, warnings) =
        from_every_server::<Plugins>(cluster, &["api", "v1", "plugins"]).await;
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    if answers.is_empty() {
        bail!(
            "no server could list its plugins:\n  {}",
            warnings.join("\n  ")
        );
    }
    Ok(plugins_listing(cluster.len(), answers, warnings))
}

fn plugins_listing(
    servers: usize,
    answers: Vec<(usize, Plugins)>,
    warnings: Vec<String>,
) -> Listing {
    // A plugin, the servers holding it and those approving it.
    type Held = (PluginView, Vec<usize>, Vec<usize>);
    let mut merged: BTreeMap<(String, String, String), Held> = BTreeMap::new();
    for (index, list) in answers {
        for plugin in list.plugins {
            let key = (
                plugin.name.clone(),
                plugin.version.clone(),
                plugin.digest.clone(),
            );
            let approved = plugin.approved == Some(true);
            let entry = merged
                .entry(key)
                .or_insert_with(|| (plugin, Vec::new(), Vec::new()));
            entry.1.push(index);
            if approved {
                entry.2.push(index);
            }
        }
    }
    let rows: Vec<Vec<String>> = merged
        .into_values()
        .map(|(p, held, approved)| {
            vec![
                p.name,
                p.version,
                if p.builtin { "built-in" } else { "uploaded" }.to_owned(),
                p.size.to_string(),
                presence(&held, servers),
                if approved.is_empty() {
                    "none".to_owned()
                } else {
                    presence(&approved, servers)
                },
                p.digest,
            ]
        })
        .collect();
    Listing {
        table: table::render(
            &[
                "name", "version", "kind", "bytes", "servers", "approved", "digest",
            ],
            &rows,
        ),
        warnings,
    }
}

/// `guardian endpoint list`: every server's endpoints, one row per name, with
/// each server's count of reports waiting for a batch.
pub async fn list_endpoints(cluster: &Cluster) -> anyhow::Result<Listing> {
    let (answers, warnings) =
        from_every_server::<Endpoints>(cluster, &["api", "v1", "endpoints"]).await;
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    if answers.is_empty() {
        bail!(
            "no server could list its endpoints:\n  {}",
            warnings.join("\n  ")
        );
    }
    Ok(endpoints_listing(cluster.len(), answers, warnings))
}

fn endpoints_listing(
    servers: usize,
    answers: Vec<(usize, Endpoints)>,
    mut warnings: Vec<String>,
) -> Listing {
    let mut merged: BTreeMap<String, Vec<(usize, EndpointInfo)>> = BTreeMap::new();
    for (index, list) in answers {
        for endpoint in list.endpoints {
            merged
                .entry(endpoint.name.clone())
                .or_default()
                .push((index, endpoint));
        }
    }
    let mut rows = Vec::new();
    for (name, held) in merged {
        let (_, first) = &held[0];
        if let Some((j, other)) = held
            .iter()
            .find(|(_, e)| e.config_hash != first.config_hash)
        {
            warnings.push(format!(
                "endpoint {name:?} differs between server {} (config hash {}) and server {j} (config hash {}): collecting it will fail until it is recreated alike",
                held[0].0,
                short(&first.config_hash),
                short(&other.config_hash)
            ));
        }
        let per_server = |f: fn(&EndpointInfo) -> u64| {
            held.iter()
                .map(|(_, e)| f(e).to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        let indexes: Vec<usize> = held.iter().map(|(i, _)| *i).collect();
        rows.push(vec![
            name.clone(),
            first.plugin.clone(),
            first.params.to_string(),
            first.min_batch.to_string(),
            sealing(first),
            per_server(|e| e.reports.map_or(0, |r| r.batches)),
            per_server(|e| e.reports.map_or(0, |r| r.unbatched)),
            presence(&indexes, servers),
        ]);
    }
    Listing {
        table: table::render(
            &[
                "name",
                "plugin",
                "params",
                "min batch",
                "sealed",
                "batches",
                "waiting",
                "servers",
            ],
            &rows,
        ),
        warnings,
    }
}

/// When an endpoint is sealed, for listings: `every 1h`, `at 10000`, both, or
/// `when asked`.
fn sealing(endpoint: &EndpointInfo) -> String {
    let every = endpoint.seal_every.map(|secs| {
        format!(
            "every {}",
            humantime::format_duration(std::time::Duration::from_secs(secs))
        )
    });
    let at = endpoint.seal_at.map(|k| format!("at {k}"));
    match (every, at) {
        (Some(every), Some(at)) => format!("{every} or {at}"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => "when asked".to_owned(),
    }
}

/// What one server did with a batch deletion.
#[derive(Debug)]
pub enum Deleted {
    /// It held the batch and deleted it (204).
    Now,
    /// It does not hold the batch (404 `unknown_batch`): deleted before, or
    /// never committed there.
    NotThere,
    /// It refused or could not be reached.
    Failed(ServerError),
}

/// Per-server outcomes of `guardian batch delete`.
#[derive(Debug)]
pub struct Deletion {
    /// `batch … of endpoint …`, for messages.
    pub what: String,
    /// `(server description, outcome)` in server-index order.
    pub servers: Vec<(String, Deleted)>,
}

impl Deletion {
    /// One line per server.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (who, done) in &self.servers {
            let _ = match done {
                Deleted::Now => writeln!(out, "{who}: deleted"),
                Deleted::NotThere => writeln!(out, "{who}: not there (deleted before)"),
                Deleted::Failed(e) => writeln!(out, "{who}: failed ({})", e.code()),
            };
        }
        out
    }

    /// `Ok` once no server holds the batch and at least one held it; otherwise
    /// what went wrong and how to go on.
    pub fn check(&self) -> anyhow::Result<()> {
        let failed: Vec<String> = self
            .servers
            .iter()
            .filter_map(|(_, d)| match d {
                Deleted::Failed(e) => Some(e.to_string()),
                _ => None,
            })
            .collect();
        if !failed.is_empty() {
            bail!(
                "{} is not deleted on every server:\n  {}\nRerunning the same command is safe: servers that deleted it answer \"not there\".",
                self.what,
                failed.join("\n  ")
            );
        }
        if self
            .servers
            .iter()
            .all(|(_, d)| matches!(d, Deleted::NotThere))
        {
            bail!(
                "unknown_batch: no server holds {}: check the id with `guardian collect --total --json` or GET …/batches",
                self.what
            );
        }
        Ok(())
    }
}

/// `guardian batch delete`: deletes a released batch on every server, in index
/// order.
pub async fn delete_batch(cluster: &Cluster, endpoint: &str, batch_id: &str) -> Deletion {
    let what = format!("batch {batch_id} of endpoint {endpoint:?}");
    let mut servers = Vec::new();
    for index in 0..cluster.len() {
        let result = cluster
            .request(
                index,
                Method::DELETE,
                &["api", "v1", "endpoints", endpoint, "batches", batch_id],
            )
            .send()
            .await;
        let done = match result {
            Ok(_) => Deleted::Now,
            Err(e) if e.code() == "unknown_batch" => Deleted::NotThere,
            Err(e) => Deleted::Failed(e),
        };
        servers.push((cluster.describe(index), done));
    }
    Deletion { what, servers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn endpoint(name: &str, hash: &str, unbatched: u64) -> EndpointInfo {
        serde_json::from_value(json!({
            "name": name, "plugin": "sum", "plugin_digest": "ab".repeat(32),
            "params": {"length": 3}, "min_batch": 10, "config_hash": hash,
            "created_at": "", "reports": {"unbatched": unbatched, "batched": 0, "batches": 1}
        }))
        .unwrap()
    }

    #[test]
    fn endpoints_are_merged_by_name_with_counts_per_server() {
        let answers = vec![
            (
                0,
                Endpoints {
                    endpoints: vec![endpoint("a", "h1", 5), endpoint("b", "h2", 1)],
                    next: None,
                },
            ),
            (
                1,
                Endpoints {
                    endpoints: vec![endpoint("a", "h1", 4)],
                    next: None,
                },
            ),
        ];
        let listing = endpoints_listing(2, answers, Vec::new());
        assert_eq!(
            listing.table,
            "name  plugin  params        min batch  sealed      batches  waiting  servers\n\
             a     sum     {\"length\":3}         10  when asked  1/1      5/4      all\n\
             b     sum     {\"length\":3}         10  when asked  1        1        0\n"
        );
        assert!(listing.warnings.is_empty());
    }

    #[test]
    fn differing_endpoints_are_warned_about() {
        let answers = vec![
            (
                0,
                Endpoints {
                    endpoints: vec![endpoint("a", "h1", 0)],
                    next: None,
                },
            ),
            (
                1,
                Endpoints {
                    endpoints: vec![endpoint("a", "h2", 0)],
                    next: None,
                },
            ),
        ];
        let listing = endpoints_listing(2, answers, Vec::new());
        assert_eq!(listing.warnings.len(), 1);
        assert!(listing.warnings[0].contains("differs between server 0"));
    }

    #[test]
    fn plugins_note_which_servers_hold_them() {
        let plugin = |name: &str, digest: &str, builtin: bool| PluginView {
            digest: digest.into(),
            name: name.into(),
            version: "0.1.0".into(),
            description: String::new(),
            builtin,
            approved: Some(builtin),
            size: 100,
        };
        let answers = vec![
            (
                0,
                Plugins {
                    plugins: vec![plugin("sum", "d1", true), plugin("mine", "d2", false)],
                    next: None,
                },
            ),
            (
                1,
                Plugins {
                    plugins: vec![plugin("sum", "d1", true)],
                    next: None,
                },
            ),
        ];
        let listing = plugins_listing(2, answers, Vec::new());
        assert_eq!(
            listing.table,
            "name  version  kind      bytes  servers  approved  digest\n\
             mine  0.1.0    uploaded    100  0        none      d2\n\
             sum   0.1.0    built-in    100  all      all       d1\n"
        );
    }

    fn failure(server: usize) -> ServerError {
        ServerError {
            server,
            url: format!("http://s{server}"),
            has_token: true,
            kind: super::super::http::ErrorKind::Unreachable("connection refused".into()),
        }
    }

    #[test]
    fn a_partial_failure_names_the_server_and_says_rerun() {
        let report = PerServer {
            what: "endpoint \"a\"".into(),
            servers: vec![
                ("server 0 (http://s0)".into(), Done::Created),
                ("server 1 (http://s1)".into(), Done::Failed(failure(1))),
            ],
            mismatch: None,
        };
        assert_eq!(
            report.render(),
            "server 0 (http://s0): created\nserver 1 (http://s1): failed (unreachable)\n"
        );
        let error = report.check().unwrap_err().to_string();
        assert!(error.contains("failed on server 1"), "{error}");
        assert!(
            error.contains("Rerunning the same command is safe"),
            "{error}"
        );
    }

    #[test]
    fn a_total_failure_does_not_promise_a_rerun() {
        let report = PerServer {
            what: "plugin x".into(),
            servers: vec![("server 0 (http://s0)".into(), Done::Failed(failure(0)))],
            mismatch: None,
        };
        let error = report.check().unwrap_err().to_string();
        assert!(
            error.starts_with("plugin x failed on every server"),
            "{error}"
        );
        let fine = PerServer {
            what: "plugin x".into(),
            servers: vec![("server 0 (http://s0)".into(), Done::AlreadyThere)],
            mismatch: None,
        };
        assert!(fine.check().is_ok());
    }
}
