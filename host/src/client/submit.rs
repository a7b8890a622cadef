//! `guardian submit`: shards measurements locally with the endpoint's plugin and
//! posts share i to server i under one random report id.
//!
//! A report is posted to the servers in index order and retried under the same
//! id with the same share (the servers answer an identical retry with
//! `duplicate`), so retrying never counts a measurement twice. Sharding runs on
//! one blocking thread, feeding a bounded queue that a fixed number of posting
//! tasks drain, so a large file neither waits for its last line to be sharded
//! nor holds every share in memory.
//!
//! `--file` posts the reports in bulk (`.../reports/bulk`), up to
//! [`SubmitOptions::bulk`] per request: each server gets the reports every
//! server before it took, and answers one result per report, so a line refused
//! by one server is listed with that server's reason while the rest go on.
//! Retrying a bulk request (on a transport error or a 5xx) is as safe as
//! retrying one report: the reports it already stored answer `duplicate`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::endpoint::{self, LocalEndpoint, endpoint_path};
use super::http::{Cluster, ServerError};

/// How `--file` posts.
#[derive(Clone, Copy, Debug)]
pub struct SubmitOptions {
    /// Bulk requests in flight at once.
    pub concurrency: usize,
    /// Most reports in one bulk request (within the servers'
    /// `limits.max_bulk_reports` and per-user burst).
    pub bulk: usize,
    /// Whether to draw a progress bar on standard error (it is hidden anyway
    /// when standard error is not a terminal).
    pub progress: bool,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            bulk: 100,
            progress: true,
        }
    }
}

/// One measurement of the input, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// 1-based line number in the input (1 for `--value`).
    pub line: usize,
    /// The measurement as JSON text.
    pub json: String,
}

/// The measurements of `text`, one JSON value per line; blank lines are skipped.
pub fn parse_lines(text: &str) -> Vec<Measurement> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| Measurement {
            line: i + 1,
            json: line.trim().to_owned(),
        })
        .collect()
}

/// What became of one report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every server stored it.
    Stored,
    /// Every server holds it, and at least one already did (a retry whose first
    /// attempt had landed).
    Duplicate,
    /// Not every server took it.
    Failed(Refusal),
}

/// Why one report failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The stable error code: the server's (`invalid_share`, `unreachable`, …),
    /// or the plugin's when it refused the measurement here, before anything
    /// was posted (e.g. `invalid_measurement`).
    pub code: String,
    /// The server that refused it; `None` when it failed here.
    pub server: Option<usize>,
    /// The full message, for people.
    pub message: String,
}

impl Refusal {
    /// The code and, for a server's refusal, which server: what failures are
    /// counted by.
    pub fn reason(&self) -> String {
        match self.server {
            Some(server) => format!("{} on server {server}", self.code),
            None => self.code.clone(),
        }
    }
}

/// One failed line of the input.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// 1-based line number in the input.
    pub line: usize,
    /// The line's measurement, as written.
    pub value: String,
    /// See [`Refusal::code`].
    pub code: String,
    /// See [`Refusal::server`].
    pub server: Option<usize>,
    /// See [`Refusal::message`].
    pub message: String,
}

/// Up to this many failures, every one is printed; beyond, a count per reason
/// and the first ones.
const LISTED: usize = 20;

/// How many characters of a failed line's value are printed.
const VALUE_SHOWN: usize = 40;

/// Counts of a submission, and every failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Reports attempted.
    pub sent: u64,
    /// Stored by every server.
    pub stored: u64,
    /// Already held by a server (a retry that had landed) and now held by all.
    pub duplicates: u64,
    /// Every failed line, in input order once [`Summary::merge`]d.
    pub failures: Vec<Failure>,
}

impl Summary {
    /// Counts the outcome of the report of `measurement`.
    pub fn record(&mut self, measurement: &Measurement, outcome: Outcome) {
        self.sent += 1;
        match outcome {
            Outcome::Stored => self.stored += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Failed(refusal) => self.failures.push(Failure {
                line: measurement.line,
                value: measurement.json.clone(),
                code: refusal.code,
                server: refusal.server,
                message: refusal.message,
            }),
        }
    }

    /// Adds the counts of `other` (another posting task's).
    pub fn merge(&mut self, other: Summary) {
        self.sent += other.sent;
        self.stored += other.stored;
        self.duplicates += other.duplicates;
        self.failures.extend(other.failures);
        self.failures.sort_by_key(|f| f.line);
    }

    /// Reports that failed, for every reason.
    pub fn failed_total(&self) -> u64 {
        self.failures.len() as u64
    }

    /// Failed reports by reason ([`Refusal::reason`]).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for failure in &self.failures {
            let reason = Refusal {
                code: failure.code.clone(),
                server: failure.server,
                message: String::new(),
            }
            .reason();
            *counts.entry(reason).or_default() += 1;
        }
        counts
    }

    /// Every failure as JSON lines (`line`, `value`, `code`, `server`,
    /// `message`), in input order: what `--errors FILE` holds.
    pub fn failures_jsonl(&self) -> String {
        let mut out = String::new();
        for failure in &self.failures {
            // A struct of strings and integers always serialises.
            if let Ok(line) = serde_json::to_string(failure) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// The summary for people. `errors_file` is where every failure was
    /// written (`--errors`), if anywhere: then only the counts are printed.
    /// Otherwise every failure is listed when there are few, and the counts and
    /// the first [`LISTED`] when there are more.
    pub fn render(&self, errors_file: Option<&Path>) -> String {
        let mut out = format!(
            "sent {}, stored {}, duplicates {}, failed {}\n",
            self.sent,
            self.stored,
            self.duplicates,
            self.failed_total()
        );
        if self.failures.is_empty() {
            return out;
        }
        let many = self.failures.len() > LISTED;
        if many || errors_file.is_some() {
            for (reason, count) in self.counts() {
                let _ = writeln!(out, "  {count} failed: {reason}");
            }
        }
        match errors_file {
            Some(file) => {
                let _ = writeln!(
                    out,
                    "  every failed line (line, value, code, server, message) is in {}",
                    file.display()
                );
            }
            None => {
                if many {
                    let _ = writeln!(out, "  the first {LISTED}:");
                }
                for failure in self.failures.iter().take(LISTED) {
                    let reason = Refusal {
                        code: failure.code.clone(),
                        server: failure.server,
                        message: String::new(),
                    }
                    .reason();
                    let _ = writeln!(
                        out,
                        "  line {} ({}): {reason}: {}",
                        failure.line,
                        shortened(&failure.value),
                        failure.message
                    );
                }
                if many {
                    let _ = writeln!(
                        out,
                        "  … and {} more: give --errors FILE to get every failed line",
                        self.failures.len() - LISTED
                    );
                }
            }
        }
        if self
            .failures
            .iter()
            .any(|f| f.server.is_some_and(|s| s > 0))
        {
            out.push_str(
                "  A report that reached only some servers is never counted: it stays out of every batch and expires.\n",
            );
        }
        out
    }
}

/// `value`, cut to [`VALUE_SHOWN`] characters.
fn shortened(value: &str) -> String {
    match value.char_indices().nth(VALUE_SHOWN) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

#[derive(Deserialize)]
struct Posted {
    status: String,
}

/// One report ready to post.
struct Report {
    /// What it was sharded from.
    measurement: Measurement,
    /// The report id (its time, then random bits; [`crate::report_id`]), hex.
    id: String,
    /// Base64 of the public share (robust plugins; `None` when empty).
    public_share: Option<String>,
    /// Base64 of share i, for server i.
    shares: Vec<String>,
}

/// Shards `measurement` into one share per server under a fresh report id.
fn shard(endpoint: &LocalEndpoint, servers: usize, m: &Measurement) -> Result<Report, Outcome> {
    let seed: [u8; 32] = rand::random();
    // Servers take a report only while its id's time is in their window.
    let id = crate::report_id::new_report_id(std::time::SystemTime::now());
    let n = u32::try_from(servers).unwrap_or(u32::MAX);
    let report = endpoint
        .plugin
        .shard_report(&endpoint.config, &m.json, n, &id, &seed)
        .map_err(|e| {
            Outcome::Failed(Refusal {
                code: e.code().to_owned(),
                server: None,
                // The plugin's own words (what it expected, what came); the code
                // goes beside it once.
                message: match &e {
                    crate::runtime::CallError::Rejected(refusal) => refusal.message().to_owned(),
                    other => format!("the plugin failed on {}: {other}", m.json),
                },
            })
        })?;
    if report.shares.len() != servers {
        return Err(Outcome::Failed(Refusal {
            code: "plugin_bad_shard".to_owned(),
            server: None,
            message: format!(
                "the plugin made {} shares for {servers} servers",
                report.shares.len()
            ),
        }));
    }
    Ok(Report {
        measurement: m.clone(),
        id: hex::encode(id),
        public_share: (!report.public_share.is_empty())
            .then(|| BASE64.encode(&report.public_share)),
        shares: report.shares.iter().map(|s| BASE64.encode(s)).collect(),
    })
}

/// `guardian shard NAME --value JSON`: the report `submit` would post, as JSON,
/// without posting it: `{"report_id", "public_share" (base64 or null), "shares"
/// (base64, share i for server i)}`.
pub async fn shard_value(cluster: &Cluster, name: &str, json: &str) -> anyhow::Result<String> {
    let endpoint = Arc::new(endpoint::open_to_shard(cluster, name).await?);
    let measurement = Measurement {
        line: 1,
        json: json.trim().to_owned(),
    };
    let servers = cluster.len();
    let report = tokio::task::spawn_blocking(move || shard(&endpoint, servers, &measurement))
        .await
        .context("the sharding thread stopped")?;
    let report = sharded(report)?;
    Ok(serde_json::json!({
        "report_id": report.id,
        "public_share": report.public_share,
        "shares": report.shares,
    })
    .to_string())
}

/// The report of the one measurement of `--value`, or why it was refused.
fn sharded(report: Result<Report, Outcome>) -> anyhow::Result<Report> {
    match report {
        Ok(report) => Ok(report),
        Err(Outcome::Failed(refusal)) => {
            bail!("{} ({})", refusal.message, refusal.reason())
        }
        Err(_) => bail!("the measurement could not be sharded"),
    }
}

/// Posts share i of `report` to server i, in index order; stops at the first
/// server that does not take it.
async fn post(cluster: &Cluster, name: &str, report: &Report) -> Result<bool, ServerError> {
    let mut duplicate = false;
    let path = endpoint_path(name, &["reports"]);
    for (index, share) in report.shares.iter().enumerate() {
        let body = match &report.public_share {
            Some(public_share) => serde_json::json!({
                "report_id": report.id,
                "share": share,
                "public_share": public_share,
            }),
            None => serde_json::json!({"report_id": report.id, "share": share}),
        };
        let answer = cluster
            .request(index, Method::POST, &path)
            .json(&body)
            .send()
            .await?;
        let posted: Posted = answer.json()?;
        duplicate |= answer.status == StatusCode::OK || posted.status == "duplicate";
    }
    Ok(duplicate)
}

/// One report's result in a bulk answer.
#[derive(Deserialize)]
struct BulkResult {
    status: String,
    #[serde(default)]
    error: Option<BulkError>,
}

#[derive(Deserialize)]
struct BulkError {
    code: String,
    message: String,
}

#[derive(Deserialize)]
struct BulkAnswer {
    results: Vec<BulkResult>,
}

/// Posts `reports` in one bulk request per server, in index order: server i
/// gets the reports that every server before it took. One outcome per report.
async fn post_bulk(cluster: &Cluster, name: &str, reports: &[Report]) -> Vec<Outcome> {
    let path = endpoint_path(name, &["reports", "bulk"]);
    let mut failed: Vec<Option<Outcome>> = vec![None; reports.len()];
    let mut duplicate = vec![false; reports.len()];
    for index in 0..cluster.len() {
        let pending: Vec<usize> = (0..reports.len())
            .filter(|&i| failed[i].is_none())
            .collect();
        if pending.is_empty() {
            break;
        }
        let body: Vec<serde_json::Value> = pending
            .iter()
            .map(|&i| {
                let report = &reports[i];
                match &report.public_share {
                    Some(public_share) => serde_json::json!({
                        "report_id": report.id,
                        "share": report.shares[index],
                        "public_share": public_share,
                    }),
                    None => serde_json::json!({
                        "report_id": report.id,
                        "share": report.shares[index],
                    }),
                }
            })
            .collect();
        let answer = cluster
            .request(index, Method::POST, &path)
            .json(&serde_json::json!({ "reports": body }))
            .send()
            .await;
        let results = answer.and_then(|answer| {
            let parsed: BulkAnswer = answer.json()?;
            if parsed.results.len() == pending.len() {
                Ok(parsed.results)
            } else {
                Err(ServerError {
                    server: index,
                    url: cluster.url(index).to_owned(),
                    has_token: true,
                    kind: super::http::ErrorKind::BadAnswer(format!(
                        "answer of {} results to {} reports",
                        parsed.results.len(),
                        pending.len()
                    )),
                })
            }
        });
        match results {
            // The whole request failed: every report still pending fails here.
            Err(e) => {
                for &i in &pending {
                    failed[i] = Some(outcome(Err(e.clone())));
                }
            }
            Ok(results) => {
                for (&i, result) in pending.iter().zip(results) {
                    match result.status.as_str() {
                        "stored" => {}
                        "duplicate" => duplicate[i] = true,
                        status => {
                            let (code, message) = result.error.map_or_else(
                                || (status.to_owned(), String::new()),
                                |e| (e.code, e.message),
                            );
                            failed[i] = Some(Outcome::Failed(Refusal {
                                message: format!(
                                    "{} refused the report: {message} ({code})",
                                    cluster.describe(index)
                                ),
                                code,
                                server: Some(index),
                            }));
                        }
                    }
                }
            }
        }
    }
    failed
        .into_iter()
        .zip(duplicate)
        .map(|(failed, duplicate)| match failed {
            Some(outcome) => outcome,
            None if duplicate => Outcome::Duplicate,
            None => Outcome::Stored,
        })
        .collect()
}

fn outcome(result: Result<bool, ServerError>) -> Outcome {
    match result {
        Ok(false) => Outcome::Stored,
        Ok(true) => Outcome::Duplicate,
        Err(e) => Outcome::Failed(Refusal {
            code: e.code().to_owned(),
            server: Some(e.server),
            message: e.to_string(),
        }),
    }
}

/// `guardian submit NAME --value JSON`: posts one measurement; returns the report
/// id. Any failure is an error.
pub async fn submit_value(cluster: &Cluster, name: &str, json: &str) -> anyhow::Result<String> {
    let endpoint = Arc::new(endpoint::open_to_shard(cluster, name).await?);
    let measurement = Measurement {
        line: 1,
        json: json.trim().to_owned(),
    };
    let servers = cluster.len();
    let report = {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || shard(&endpoint, servers, &measurement))
            .await
            .context("the sharding thread stopped")?
    };
    let report = sharded(report)?;
    post(cluster, name, &report).await.map_err(|e| {
        let partial = if e.server > 0 {
            " The servers before it hold the report, which is never counted on its own: submitting again is safe."
        } else {
            ""
        };
        anyhow::anyhow!("{e}.{partial}")
    })?;
    Ok(report.id)
}

/// `guardian submit NAME --file FILE`: shards and posts every measurement in bulk
/// requests of up to `options.bulk` reports, at most `options.concurrency` of
/// them in flight, and counts what happened.
pub async fn submit_many(
    cluster: &Cluster,
    name: &str,
    measurements: Vec<Measurement>,
    options: SubmitOptions,
) -> anyhow::Result<Summary> {
    let endpoint = Arc::new(endpoint::open_to_shard(cluster, name).await?);
    let total = measurements.len() as u64;
    let bar = if options.progress {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40} {human_pos}/{human_len} reports, {elapsed} so far, about {eta} left",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let concurrency = options.concurrency.max(1);
    let bulk = options.bulk.max(1);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Report, (Measurement, Outcome)>>(
        concurrency.saturating_mul(bulk),
    );
    let servers = cluster.len();
    let sharder = {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            for m in &measurements {
                let item = shard(&endpoint, servers, m).map_err(|o| (m.clone(), o));
                if sender.blocking_send(item).is_err() {
                    break;
                }
            }
        })
    };
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (cluster, name, bar, receiver) = (
            cluster.clone(),
            name.to_owned(),
            bar.clone(),
            receiver.clone(),
        );
        workers.spawn(async move {
            let mut summary = Summary::default();
            loop {
                // The next bulk: one report waited for, then whatever else is ready.
                let mut items = Vec::with_capacity(bulk);
                {
                    let mut receiver = receiver.lock().await;
                    match receiver.recv().await {
                        None => break,
                        Some(item) => items.push(item),
                    }
                    while items.len() < bulk {
                        match receiver.try_recv() {
                            Ok(item) => items.push(item),
                            Err(_) => break,
                        }
                    }
                }
                let taken = items.len() as u64;
                let mut reports = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Err((measurement, failed)) => summary.record(&measurement, failed),
                        Ok(report) => reports.push(report),
                    }
                }
                if !reports.is_empty() {
                    let outcomes = post_bulk(&cluster, &name, &reports).await;
                    for (report, outcome) in reports.iter().zip(outcomes) {
                        summary.record(&report.measurement, outcome);
                    }
                }
                bar.inc(taken);
            }
            summary
        });
    }
    let mut summary = Summary::default();
    while let Some(done) = workers.join_next().await {
        summary.merge(done.context("a posting task failed")?);
    }
    sharder.await.context("the sharding thread stopped")?;
    bar.finish_and_clear();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: &str, server: Option<usize>, message: &str) -> Outcome {
        Outcome::Failed(Refusal {
            code: code.into(),
            server,
            message: message.into(),
        })
    }

    fn line(line: usize, json: &str) -> Measurement {
        Measurement {
            line,
            json: json.into(),
        }
    }

    #[test]
    fn blank_lines_are_skipped_and_numbers_kept() {
        let lines = parse_lines("[1,2]\n\n  \n \"red\" \r\n7");
        assert_eq!(
            lines,
            vec![line(1, "[1,2]"), line(4, "\"red\""), line(5, "7")]
        );
    }

    #[test]
    fn every_failure_is_kept_with_its_own_reason() {
        let mut a = Summary::default();
        a.record(&line(1, "1"), Outcome::Stored);
        a.record(&line(2, "x"), failed("invalid_measurement", None, "bad"));
        a.record(&line(3, "3"), Outcome::Duplicate);
        let mut b = Summary::default();
        b.record(
            &line(5, "-1"),
            failed("invalid_measurement", None, "too small"),
        );
        b.record(&line(4, "4"), failed("unreachable", Some(1), "down"));
        b.record(&line(6, "6"), Outcome::Stored);
        a.merge(b);
        assert_eq!((a.sent, a.stored, a.duplicates), (6, 2, 1));
        assert_eq!(a.failed_total(), 3);
        assert_eq!(
            a.failures.iter().map(|f| f.line).collect::<Vec<_>>(),
            vec![2, 4, 5],
            "in input order"
        );
        assert_eq!(a.failures[2].message, "too small");
        assert_eq!(
            a.counts(),
            BTreeMap::from([
                ("invalid_measurement".to_owned(), 2),
                ("unreachable on server 1".to_owned(), 1)
            ])
        );
        assert_eq!(
            a.failures_jsonl(),
            "{\"line\":2,\"value\":\"x\",\"code\":\"invalid_measurement\",\"server\":null,\"message\":\"bad\"}\n\
             {\"line\":4,\"value\":\"4\",\"code\":\"unreachable\",\"server\":1,\"message\":\"down\"}\n\
             {\"line\":5,\"value\":\"-1\",\"code\":\"invalid_measurement\",\"server\":null,\"message\":\"too small\"}\n"
        );
    }

    #[test]
    fn few_failures_are_all_listed() {
        let mut summary = Summary::default();
        summary.record(&line(1, "1"), Outcome::Stored);
        summary.record(
            &line(2, "\"red\""),
            failed("invalid_measurement", None, "not a number"),
        );
        summary.record(
            &line(3, &"9".repeat(50)),
            failed("invalid_measurement", None, "too large"),
        );
        summary.record(
            &line(4, "4"),
            failed("unreachable", Some(1), "server 1: down"),
        );
        assert_eq!(
            summary.render(None),
            format!(
                "sent 4, stored 1, duplicates 0, failed 3\n\
                 \x20 line 2 (\"red\"): invalid_measurement: not a number\n\
                 \x20 line 3 ({}…): invalid_measurement: too large\n\
                 \x20 line 4 (4): unreachable on server 1: server 1: down\n\
                 \x20 A report that reached only some servers is never counted: it stays out of every batch and expires.\n",
                "9".repeat(40)
            )
        );
        assert_eq!(
            summary.render(Some(Path::new("bad.jsonl"))),
            "sent 4, stored 1, duplicates 0, failed 3\n\
             \x20 2 failed: invalid_measurement\n\
             \x20 1 failed: unreachable on server 1\n\
             \x20 every failed line (line, value, code, server, message) is in bad.jsonl\n\
             \x20 A report that reached only some servers is never counted: it stays out of every batch and expires.\n"
        );
        let mut clean = Summary::default();
        clean.record(&line(1, "1"), Outcome::Stored);
        assert_eq!(
            clean.render(None),
            "sent 1, stored 1, duplicates 0, failed 0\n"
        );
    }

    #[test]
    fn many_failures_are_counted_and_the_first_listed() {
        let mut summary = Summary::default();
        for n in 1..=30 {
            let code = if n % 3 == 0 {
                "unreachable"
            } else {
                "invalid_measurement"
            };
            let server = (n % 3 == 0).then_some(0);
            summary.record(&line(n, &n.to_string()), failed(code, server, "no"));
        }
        let text = summary.render(None);
        assert!(
            text.starts_with(
                "sent 30, stored 0, duplicates 0, failed 30\n\
                 \x20 20 failed: invalid_measurement\n\
                 \x20 10 failed: unreachable on server 0\n\
                 \x20 the first 20:\n\
                 \x20 line 1 (1): invalid_measurement: no\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  line 20 (20): invalid_measurement: no\n"),
            "{text}"
        );
        assert!(!text.contains("line 21 "), "{text}");
        assert!(
            text.ends_with("  … and 10 more: give --errors FILE to get every failed line\n"),
            "{text}"
        );
    }

    #[test]
    fn server_errors_become_reasons_naming_the_server() {
        let error = ServerError {
            server: 1,
            url: "http://s1".into(),
            has_token: true,
            kind: super::super::http::ErrorKind::Unreachable("connection refused".into()),
        };
        match outcome(Err(error)) {
            Outcome::Failed(refusal) => {
                assert_eq!(refusal.reason(), "unreachable on server 1");
                assert!(
                    refusal.message.starts_with("server 1 (http://s1)"),
                    "{}",
                    refusal.message
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
