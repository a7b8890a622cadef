//! `guardian submit`: shards measurements locally with the endpoint's plugin and
//! posts share i to server i under one random report id.
//!
//! A report is posted to the servers in index order and retried under the same
//! id with the same share (the servers answer an identical retry with
//! `duplicate`), so retrying never counts a measurement twice. Sharding runs on
//! one blocking thread, feeding a bounded queue that a fixed number of posting
//! tasks drain, so a large file neither waits for its last line to be sharded
//! nor holds every share in memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
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
    /// Reports in flight at once.
    pub concurrency: usize,
    /// Whether to draw a progress bar on standard error (it is hidden anyway
    /// when standard error is not a terminal).
    pub progress: bool,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        Self {
            concurrency: 32,
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
    Failed {
        /// Why, as a stable key: the error code and the server, or
        /// `invalid_measurement` when the plugin refused it locally.
        reason: String,
        /// The full message, for people.
        message: String,
    },
}

/// Reports that failed for one reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    /// How many.
    pub count: u64,
    /// The first one's message.
    pub example: String,
    /// Line numbers of the first few, in input order.
    pub lines: Vec<usize>,
}

/// How many failed lines are listed per reason.
const LINES_SHOWN: usize = 10;

/// Counts of a submission.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Reports attempted.
    pub sent: u64,
    /// Stored by every server.
    pub stored: u64,
    /// Already held by a server (a retry that had landed) and now held by all.
    pub duplicates: u64,
    /// Failed reports by reason.
    pub failed: BTreeMap<String, Failures>,
}

impl Summary {
    /// Counts the outcome of the report of input line `line`.
    pub fn record(&mut self, line: usize, outcome: Outcome) {
        self.sent += 1;
        match outcome {
            Outcome::Stored => self.stored += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Failed { reason, message } => {
                let failures = self.failed.entry(reason).or_default();
                failures.count += 1;
                if failures.example.is_empty() {
                    failures.example = message;
                }
                failures.lines.push(line);
            }
        }
    }

    /// Adds the counts of `other` (another posting task's).
    pub fn merge(&mut self, other: Summary) {
        self.sent += other.sent;
        self.stored += other.stored;
        self.duplicates += other.duplicates;
        for (reason, theirs) in other.failed {
            let ours = self.failed.entry(reason).or_default();
            ours.count += theirs.count;
            if ours.example.is_empty() {
                ours.example = theirs.example;
            }
            ours.lines.extend(theirs.lines);
        }
    }

    /// Reports that failed, for every reason.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().map(|f| f.count).sum()
    }

    /// The summary for people.
    pub fn render(&self) -> String {
        let mut out = format!(
            "sent {}, stored {}, duplicates {}, failed {}\n",
            self.sent,
            self.stored,
            self.duplicates,
            self.failed_total()
        );
        for (reason, failures) in &self.failed {
            let mut lines = failures.lines.clone();
            lines.sort_unstable();
            let shown: Vec<String> = lines
                .iter()
                .take(LINES_SHOWN)
                .map(usize::to_string)
                .collect();
            let more = if lines.len() > LINES_SHOWN {
                ", …"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {} failed: {reason} (lines {}{more})\n    e.g. {}",
                failures.count,
                shown.join(", "),
                failures.example
            );
        }
        if self.failed.keys().any(|r| r.contains("on server")) {
            out.push_str(
                "  A report that reached only some servers is never counted: it stays out of every batch and expires.\n",
            );
        }
        out
    }
}

#[derive(Deserialize)]
struct Posted {
    status: String,
}

/// One report ready to post.
struct Report {
    line: usize,
    /// 16 random bytes, hex.
    id: String,
    /// Base64 of the public share (robust plugins; `None` when empty).
    public_share: Option<String>,
    /// Base64 of share i, for server i.
    shares: Vec<String>,
}

/// Shards `measurement` into one share per server under a fresh report id.
fn shard(endpoint: &LocalEndpoint, servers: usize, m: &Measurement) -> Result<Report, Outcome> {
    let seed: [u8; 32] = rand::random();
    let id: [u8; 16] = rand::random();
    let n = u32::try_from(servers).unwrap_or(u32::MAX);
    let report = endpoint
        .plugin
        .shard_report(&endpoint.config, &m.json, n, &id, &seed)
        .map_err(|e| Outcome::Failed {
            reason: e.code().to_owned(),
            // The plugin's own words (what it expected, what came); the code
            // goes beside it once.
            message: match &e {
                crate::runtime::CallError::Rejected(refusal) => {
                    format!("line {}: {}", m.line, refusal.message())
                }
                other => format!("line {}: the plugin failed on {}: {other}", m.line, m.json),
            },
        })?;
    if report.shares.len() != servers {
        return Err(Outcome::Failed {
            reason: "plugin_bad_shard".to_owned(),
            message: format!(
                "line {}: the plugin made {} shares for {servers} servers",
                m.line,
                report.shares.len()
            ),
        });
    }
    Ok(Report {
        line: m.line,
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
        Err(Outcome::Failed { reason, message }) => {
            let message = message.trim_start_matches("line 1: ");
            bail!("{message} ({reason})")
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

fn outcome(result: Result<bool, ServerError>, line: usize) -> Outcome {
    match result {
        Ok(false) => Outcome::Stored,
        Ok(true) => Outcome::Duplicate,
        Err(e) => Outcome::Failed {
            reason: format!("{} on server {}", e.code(), e.server),
            message: format!("line {line}: {e}"),
        },
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

/// `guardian submit NAME --file FILE`: shards and posts every measurement, at most
/// `options.concurrency` reports in flight, and counts what happened.
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
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<Result<Report, (usize, Outcome)>>(concurrency * 4);
    let servers = cluster.len();
    let sharder = {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            for m in &measurements {
                let item = shard(&endpoint, servers, m).map_err(|o| (m.line, o));
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
                let item = receiver.lock().await.recv().await;
                match item {
                    None => break,
                    Some(Err((line, failed))) => summary.record(line, failed),
                    Some(Ok(report)) => {
                        let result = post(&cluster, &name, &report).await;
                        summary.record(report.line, outcome(result, report.line));
                    }
                }
                bar.inc(1);
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

    fn failed(reason: &str, message: &str) -> Outcome {
        Outcome::Failed {
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn blank_lines_are_skipped_and_numbers_kept() {
        let lines = parse_lines("[1,2]\n\n  \n \"red\" \r\n7");
        assert_eq!(
            lines,
            vec![
                Measurement {
                    line: 1,
                    json: "[1,2]".into()
                },
                Measurement {
                    line: 4,
                    json: "\"red\"".into()
                },
                Measurement {
                    line: 5,
                    json: "7".into()
                },
            ]
        );
    }

    #[test]
    fn outcomes_are_counted_by_reason() {
        let mut a = Summary::default();
        a.record(1, Outcome::Stored);
        a.record(2, failed("invalid_measurement", "line 2: bad"));
        a.record(3, Outcome::Duplicate);
        let mut b = Summary::default();
        b.record(5, failed("invalid_measurement", "line 5: bad too"));
        b.record(4, failed("unreachable on server 1", "line 4: down"));
        b.record(6, Outcome::Stored);
        a.merge(b);
        assert_eq!(a.sent, 6);
        assert_eq!(a.stored, 2);
        assert_eq!(a.duplicates, 1);
        assert_eq!(a.failed_total(), 3);
        let invalid = &a.failed["invalid_measurement"];
        assert_eq!(invalid.count, 2);
        assert_eq!(invalid.example, "line 2: bad");
        assert_eq!(invalid.lines, vec![2, 5]);
    }

    #[test]
    fn the_summary_reads_well() {
        let mut summary = Summary::default();
        for line in 1..=3 {
            summary.record(line, Outcome::Stored);
        }
        for line in (4..=15).rev() {
            summary.record(line, failed("unreachable on server 1", "line 15: down"));
        }
        assert_eq!(
            summary.render(),
            "sent 15, stored 3, duplicates 0, failed 12\n\
             \x20 12 failed: unreachable on server 1 (lines 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, …)\n\
             \x20   e.g. line 15: down\n\
             \x20 A report that reached only some servers is never counted: it stays out of every batch and expires.\n"
        );
        let mut clean = Summary::default();
        clean.record(1, Outcome::Stored);
        assert_eq!(clean.render(), "sent 1, stored 1, duplicates 0, failed 0\n");
    }

    #[test]
    fn server_errors_become_reasons_naming_the_server() {
        let error = ServerError {
            server: 1,
            url: "http://s1".into(),
            has_token: true,
            kind: super::super::http::ErrorKind::Unreachable("connection refused".into()),
        };
        match outcome(Err(error), 9) {
            Outcome::Failed { reason, message } => {
                assert_eq!(reason, "unreachable on server 1");
                assert!(
                    message.starts_with("line 9: server 1 (http://s1)"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
