//! `guardian collect`: seals a batch on server 0 (or reads without sealing: the
//! total over every released batch, the latest batch, or the batches sealed
//! since a time), fetches every server's released share, checks that they
//! describe the same reports, and combines them locally with the plugin's
//! `unshard`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::endpoint::{self, LocalEndpoint, endpoint_path};
use super::http::{Cluster, Retry, ServerError};
use super::table;

/// Sealing waits for every server to agree, fold and release: allow it time.
const SEAL_TIMEOUT: Duration = Duration::from_secs(600);

/// A combined result, as `collect --json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Collected {
    /// The endpoint's name.
    pub endpoint: String,
    /// The sealed batch (absent for `--total`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Number of released batches merged (only for `--total` and `--since`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batches: Option<u64>,
    /// The time given to `--since` (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Reports in the result.
    pub count: u64,
    /// Reports the seal rejected because their validity proofs failed (robust
    /// endpoints; left out when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub rejected: u64,
    /// What the plugin's `unshard` returned.
    pub result: Value,
}

/// A batch server 0 sealed: `201 {batch_id, count, rejected}`.
#[derive(Deserialize)]
pub(crate) struct Sealed {
    /// The new batch.
    pub batch_id: String,
    /// Reports in it.
    pub count: u64,
    /// Reports its seal rejected (failed validity proofs).
    #[serde(default)]
    pub rejected: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Deserialize)]
struct BatchShare {
    batch_id: String,
    count: u64,
    server_index: u64,
    share: String,
}

#[derive(Deserialize)]
struct TotalShare {
    batches: u64,
    count: u64,
    #[serde(default)]
    rejected: u64,
    server_index: u64,
    share: String,
}

/// What `guardian collect` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Seal a new batch and read it.
    Seal,
    /// Every released batch, merged (`--total`).
    Total,
    /// The newest released batch (`--latest`).
    Latest,
    /// Every batch sealed at or after this time, merged (`--since`).
    Since(SystemTime),
}

/// A batch as `GET …/batches` lists it.
#[derive(Deserialize)]
struct ListedBatch {
    batch_id: String,
    count: u64,
    #[serde(default)]
    rejected: u64,
}

/// A page of `GET …/batches`.
#[derive(Deserialize)]
struct BatchPage {
    batches: Vec<ListedBatch>,
    next: Option<String>,
}

/// Reads endpoint `name` as `read` says and combines every server's share.
pub async fn collect(cluster: &Cluster, name: &str, read: Read) -> anyhow::Result<Collected> {
    let endpoint = Arc::new(endpoint::open(cluster, name).await?);
    let (shares, mut collected) = match read {
        Read::Total => fetch_total(cluster, name).await?,
        Read::Seal => {
            let sealed = seal(cluster, name).await?;
            fetch_batch(cluster, name, &sealed).await.with_context(|| {
                format!(
                    "batch {} is sealed, but its shares could not all be fetched; `guardian collect {name} --total` includes it",
                    sealed.batch_id
                )
            })?
        }
        Read::Latest => {
            let latest = list_batches(cluster, name, None).await?.pop().ok_or_else(|| {
                anyhow!(
                    "endpoint {name:?} has no released batch yet: wait for its next scheduled seal, or seal one with `guardian collect {name}`"
                )
            })?;
            let sealed = Sealed {
                batch_id: latest.batch_id,
                count: latest.count,
                rejected: latest.rejected,
            };
            fetch_batch(cluster, name, &sealed).await?
        }
        Read::Since(since) => fetch_since(cluster, name, &endpoint, since).await?,
    };
    collected.result = combine(endpoint, shares, collected.count).await?;
    Ok(collected)
}

/// Server 0's batches of endpoint `name`, oldest first (those sealed at or
/// after `since`, if given), every page.
async fn list_batches(
    cluster: &Cluster,
    name: &str,
    since: Option<SystemTime>,
) -> anyhow::Result<Vec<ListedBatch>> {
    let since = since.map(|t| humantime::format_rfc3339_millis(t).to_string());
    let mut batches = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", "1000".to_owned())];
        if let Some(since) = &since {
            query.push(("since", since.clone()));
        }
        if let Some(after) = &after {
            query.push(("after", after.clone()));
        }
        let page: BatchPage = cluster
            .request(0, Method::GET, &endpoint_path(name, &["batches"]))
            .query(&query)
            .send()
            .await?
            .json()?;
        batches.extend(page.batches);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(batches),
        }
    }
}

/// Every server's merge of its shares of the batches sealed since `since`.
async fn fetch_since(
    cluster: &Cluster,
    name: &str,
    endpoint: &Arc<LocalEndpoint>,
    since: SystemTime,
) -> anyhow::Result<(Vec<Vec<u8>>, Collected)> {
    let listed = list_batches(cluster, name, Some(since)).await?;
    let mut per_server: Vec<Vec<Vec<u8>>> = vec![Vec::new(); cluster.len()];
    let (mut count, mut rejected) = (0, 0);
    for batch in &listed {
        let sealed = Sealed {
            batch_id: batch.batch_id.clone(),
            count: batch.count,
            rejected: batch.rejected,
        };
        let (shares, _) = fetch_batch(cluster, name, &sealed).await?;
        for (server, share) in per_server.iter_mut().zip(shares) {
            server.push(share);
        }
        count += batch.count;
        rejected += batch.rejected;
    }
    let merging = endpoint.clone();
    let shares = tokio::task::spawn_blocking(move || {
        let (plugin, config) = (&merging.plugin, &merging.config);
        per_server
            .into_iter()
            .map(|shares| {
                let mut total = plugin.init(config)?;
                for share in shares {
                    total = plugin.merge(config, &total, &share)?;
                }
                Ok(total)
            })
            .collect::<Result<Vec<_>, crate::runtime::CallError>>()
            .map_err(|e| anyhow!("the plugin could not merge the batches' shares: {e}"))
    })
    .await
    .context("the merging thread stopped")??;
    Ok((
        shares,
        Collected {
            endpoint: name.to_owned(),
            batch_id: None,
            batches: Some(listed.len() as u64),
            since: Some(humantime::format_rfc3339_millis(since).to_string()),
            count,
            rejected,
            result: Value::Null,
        },
    ))
}

/// Combines every server's released share with the plugin's `unshard`, on a
/// blocking thread (the plugin runs in wasmtime).
pub(crate) async fn combine(
    endpoint: Arc<LocalEndpoint>,
    shares: Vec<Vec<u8>>,
    count: u64,
) -> anyhow::Result<Value> {
    let text = tokio::task::spawn_blocking(move || {
        endpoint
            .plugin
            .unshard(&endpoint.config, &shares, count)
            .map_err(|e| anyhow!("the plugin could not combine the shares: {e}"))
    })
    .await
    .context("the unsharding thread stopped")??;
    serde_json::from_str(&text).context("the plugin's unshard did not return JSON")
}

async fn seal(cluster: &Cluster, name: &str) -> anyhow::Result<Sealed> {
    request_seal(cluster, name)
        .await
        .map_err(explain_seal_error)
}

/// Asks server 0 to seal a batch of endpoint `name`; the server's refusal is
/// returned as it came, for callers that show its details (see
/// [`explain_seal_error`] for the sentence).
pub(crate) async fn request_seal(cluster: &Cluster, name: &str) -> Result<Sealed, ServerError> {
    cluster
        .request(0, Method::POST, &endpoint_path(name, &["batches"]))
        .retry(Retry::WhenAsked)
        .timeout(SEAL_TIMEOUT)
        .send()
        .await?
        .json()
}

/// Turns the seal's refusals into sentences.
pub(crate) fn explain_seal_error(error: ServerError) -> anyhow::Error {
    match error.code() {
        "batch_too_small" => match (error.detail("agreed"), error.detail("needed")) {
            (Some(agreed), Some(needed)) => anyhow!(
                "nothing was sealed: {}; submit more and collect again",
                too_small(agreed, needed)
            ),
            _ => anyhow!("nothing was sealed: {error}"),
        },
        "peer_unavailable" => anyhow!(
            "{error}\nNothing is lost: the servers undo the seal on their own; run the same command again in a moment"
        ),
        "seal_incomplete" => anyhow!(
            "{error}\nThe batch is decided and finishes on its own: run `guardian collect NAME --total` in a moment, or this command again, to read it"
        ),
        "request_timeout" => anyhow!(
            "{error}\nA batch may have been decided meanwhile: it finishes on its own; check with `guardian collect NAME --total` (or the batch list) before sealing again"
        ),
        _ => error.into(),
    }
}

/// `only 2 reports are held by every server; this endpoint needs at least 3 per batch`.
pub fn too_small(agreed: u64, needed: u64) -> String {
    let (reports, are) = if agreed == 1 {
        ("report", "is")
    } else {
        ("reports", "are")
    };
    format!(
        "only {agreed} {reports} {are} held by every server and in no batch yet; this endpoint needs at least {needed} per batch"
    )
}

async fn fetch_batch(
    cluster: &Cluster,
    name: &str,
    sealed: &Sealed,
) -> anyhow::Result<(Vec<Vec<u8>>, Collected)> {
    let mut shares = Vec::new();
    for index in 0..cluster.len() {
        let batch: BatchShare = cluster
            .get_json(index, &endpoint_path(name, &["batches", &sealed.batch_id]))
            .await?;
        let who = cluster.describe(index);
        if batch.batch_id != sealed.batch_id || batch.count != sealed.count {
            bail!(
                "{who} describes batch {} with {} reports, but server 0 sealed batch {} with {}: the servers disagree, do not use this result",
                batch.batch_id,
                batch.count,
                sealed.batch_id,
                sealed.count
            );
        }
        check_index(&who, index, batch.server_index)?;
        shares.push(decode(&who, &batch.share)?);
    }
    Ok((
        shares,
        Collected {
            endpoint: name.to_owned(),
            batch_id: Some(sealed.batch_id.clone()),
            batches: None,
            since: None,
            count: sealed.count,
            rejected: sealed.rejected,
            result: Value::Null,
        },
    ))
}

/// Fetches every server's share of the total over all released batches and
/// checks that they describe the same batches.
pub(crate) async fn fetch_total(
    cluster: &Cluster,
    name: &str,
) -> anyhow::Result<(Vec<Vec<u8>>, Collected)> {
    let mut shares = Vec::new();
    let mut first: Option<(u64, u64)> = None;
    let mut rejected = 0;
    for index in 0..cluster.len() {
        let total: TotalShare = cluster
            .get_json(index, &endpoint_path(name, &["total"]))
            .await?;
        let who = cluster.describe(index);
        check_index(&who, index, total.server_index)?;
        match first {
            None => {
                first = Some((total.batches, total.count));
                rejected = total.rejected;
            }
            Some((batches, count)) if (batches, count) != (total.batches, total.count) => bail!(
                "the servers' totals differ: server 0 has {batches} batches with {count} reports, {who} has {} with {}; a seal may still be completing, collect again in a moment",
                total.batches,
                total.count
            ),
            Some(_) => {}
        }
        shares.push(decode(&who, &total.share)?);
    }
    let (batches, count) = first.unwrap_or_default();
    Ok((
        shares,
        Collected {
            endpoint: name.to_owned(),
            batch_id: None,
            batches: Some(batches),
            since: None,
            count,
            rejected,
            result: Value::Null,
        },
    ))
}

fn check_index(who: &str, position: usize, index: u64) -> anyhow::Result<()> {
    if index != position as u64 {
        bail!(
            "{who} says it is server {index}, but it is at position {position} of --servers: list the servers in server-index order"
        );
    }
    Ok(())
}

fn decode(who: &str, share: &str) -> anyhow::Result<Vec<u8>> {
    BASE64
        .decode(share)
        .with_context(|| format!("{who} sent a share that is not base64"))
}

impl Collected {
    /// The one-line JSON object of `collect --json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The result for people: a heading, then the result as a table where its
    /// shape allows.
    pub fn render(&self) -> String {
        let heading = match (&self.batch_id, self.batches) {
            (Some(id), _) => format!("endpoint {}, batch {id}", self.endpoint),
            (None, Some(n)) if let Some(since) = &self.since => {
                let batches = if n == 1 { "batch" } else { "batches" };
                format!(
                    "endpoint {}, {n} {batches} sealed since {since}",
                    self.endpoint
                )
            }
            (None, Some(1)) => format!("endpoint {}, total of 1 batch", self.endpoint),
            (None, Some(n)) => format!("endpoint {}, total of {n} batches", self.endpoint),
            (None, None) => format!("endpoint {}", self.endpoint),
        };
        let reports = if self.count == 1 { "report" } else { "reports" };
        let rejected = match self.rejected {
            0 => String::new(),
            n => format!(" ({n} more rejected: their validity proofs failed)"),
        };
        format!(
            "{heading}: {} {reports}{rejected}\n\n{}",
            self.count,
            render_result(&self.result)
        )
    }
}

/// A plugin's result as text: parallel arrays (`{"buckets": [...], "counts":
/// [...]}`) and plain arrays become tables, scalars `key: value` lines, and
/// anything else pretty-printed JSON.
pub fn render_result(result: &Value) -> String {
    match result {
        Value::Array(items) if items.iter().all(is_scalar) => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .enumerate()
                .map(|(i, v)| vec![i.to_string(), cell(v)])
                .collect();
            table::render(&["#", "value"], &rows)
        }
        Value::Object(fields) => {
            let (mut columns, scalars): (Vec<_>, Vec<_>) =
                fields.iter().partition(|(_, v)| v.is_array());
            let len = columns
                .first()
                .and_then(|(_, v)| v.as_array())
                .map(Vec::len);
            let tabular = scalars.iter().all(|(_, v)| is_scalar(v))
                && columns.iter().all(|(_, v)| {
                    v.as_array()
                        .is_some_and(|a| Some(a.len()) == len && a.iter().all(is_scalar))
                });
            if !tabular {
                return pretty(result);
            }
            let mut out = String::new();
            for (key, value) in &scalars {
                out.push_str(&format!("{key}: {}\n", cell(value)));
            }
            if let Some(len) = len {
                // Label columns (strings) first; numbered rows when there are none.
                columns.sort_by_key(|(_, v)| !has_strings(v));
                let labelled = columns.first().is_some_and(|(_, v)| has_strings(v));
                let mut headers: Vec<&str> = Vec::new();
                if !labelled {
                    headers.push("#");
                }
                headers.extend(columns.iter().map(|(k, _)| k.as_str()));
                let rows: Vec<Vec<String>> = (0..len)
                    .map(|i| {
                        let mut row = Vec::new();
                        if !labelled {
                            row.push(i.to_string());
                        }
                        row.extend(columns.iter().map(|(_, v)| cell(&v[i])));
                        row
                    })
                    .collect();
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&table::render(&headers, &rows));
            }
            out
        }
        Value::Array(_) => pretty(result),
        scalar => format!("result: {}\n", cell(scalar)),
    }
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Array(_) | Value::Object(_))
}

fn has_strings(value: &Value) -> bool {
    value
        .as_array()
        .is_some_and(|a| a.iter().any(Value::is_string))
}

fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(result: Value, expected: &str) {
        assert_eq!(render_result(&result), expected);
    }

    #[test]
    fn a_histogram_is_a_table_of_labels() {
        check(
            json!({"buckets": ["red", "green"], "counts": [3, 12]}),
            "buckets  counts\n\
             red           3\n\
             green        12\n",
        );
    }

    #[test]
    fn a_vector_is_numbered() {
        check(json!([5, -1]), "#  value\n0      5\n1     -1\n");
    }

    #[test]
    fn scalars_come_before_the_table() {
        check(
            json!({"count": 2, "mean": [1.5], "sum": [3]}),
            "count: 2\n\n#  mean  sum\n0   1.5    3\n",
        );
        check(
            json!({"count": 0, "mean": null, "sum": [0]}),
            "count: 0\nmean: -\n\n#  sum\n0    0\n",
        );
    }

    #[test]
    fn a_scalar_and_odd_shapes() {
        check(json!(42), "result: 42\n");
        check(
            json!({"a": [1], "b": [1, 2]}),
            "{\n  \"a\": [\n    1\n  ],\n  \"b\": [\n    1,\n    2\n  ]\n}\n",
        );
    }

    #[test]
    fn json_output_is_one_object_with_the_contracted_keys() {
        let batch = Collected {
            endpoint: "sum3".into(),
            batch_id: Some("ab".repeat(16)),
            batches: None,
            since: None,
            count: 3,
            rejected: 0,
            result: json!([1, 2, 3]),
        };
        let value: Value = serde_json::from_str(&batch.to_json()).unwrap();
        assert_eq!(
            value,
            json!({"endpoint": "sum3", "batch_id": "ab".repeat(16), "count": 3, "result": [1, 2, 3]})
        );
        assert!(!batch.to_json().contains('\n'));
        let total = Collected {
            batch_id: None,
            batches: Some(2),
            ..batch
        };
        let value: Value = serde_json::from_str(&total.to_json()).unwrap();
        assert_eq!(
            value,
            json!({"endpoint": "sum3", "batches": 2, "count": 3, "result": [1, 2, 3]})
        );
        // Reports a robust seal rejected are said when there are some.
        let robust = Collected {
            rejected: 2,
            ..total
        };
        let value: Value = serde_json::from_str(&robust.to_json()).unwrap();
        assert_eq!(value["rejected"], 2, "{value}");
    }

    #[test]
    fn the_heading_names_the_batch() {
        let collected = Collected {
            endpoint: "colors".into(),
            batch_id: None,
            batches: Some(1),
            since: None,
            count: 1,
            rejected: 0,
            result: json!(7),
        };
        assert_eq!(
            collected.render(),
            "endpoint colors, total of 1 batch: 1 report\n\nresult: 7\n"
        );
        let robust = Collected {
            rejected: 1,
            ..collected
        };
        assert_eq!(
            robust.render(),
            "endpoint colors, total of 1 batch: 1 report (1 more rejected: their validity proofs failed)\n\nresult: 7\n"
        );
        let since = Collected {
            batches: Some(2),
            since: Some("2026-01-31T00:00:00.000Z".into()),
            rejected: 0,
            ..robust
        };
        assert_eq!(
            since.render(),
            "endpoint colors, 2 batches sealed since 2026-01-31T00:00:00.000Z: 1 report\n\nresult: 7\n"
        );
    }

    #[test]
    fn too_small_is_said_in_words() {
        assert_eq!(
            too_small(2, 3),
            "only 2 reports are held by every server and in no batch yet; this endpoint needs at least 3 per batch"
        );
        assert!(too_small(1, 3).starts_with("only 1 report is held"));
    }
}
