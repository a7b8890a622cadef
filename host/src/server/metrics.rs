//! Prometheus metrics of one share server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::storage::CommitStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct EndpointLabel {
    pub(super) endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RejectLabels {
    pub(super) endpoint: String,
    pub(super) reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabels {
    pub(super) endpoint: String,
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CallLabel {
    pub(super) call: &'static str,
}

/// Every metric the server exports, registered once.
pub(super) struct Metrics {
    registry: Registry,
    pub(super) reports_accepted: Family<EndpointLabel, Counter>,
    pub(super) reports_rejected: Family<RejectLabels, Counter>,
    pub(super) plugin_call_seconds: Family<CallLabel, Histogram>,
    commit_seconds: Histogram,
    commit_reports: Histogram,
    /// Seal requests on the coordinator, by endpoint and outcome (`sealed` or an
    /// error code).
    pub(super) seals: Family<RejectLabels, Counter>,
    /// Duration of seal requests, from the request to every server's commit.
    pub(super) seal_seconds: Histogram,
    /// Seals the scheduler tried, by endpoint and outcome (`sealed`, `waiting`
    /// for reports or users, or `failed`).
    scheduled_seals: Family<OutcomeLabels, Counter>,
    plugins_compiled: Gauge,
    plugins_from_cache: Gauge,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let mut registry = Registry::with_prefix("guardian");
        let reports_accepted = Family::<EndpointLabel, Counter>::default();
        registry.register(
            "reports_accepted",
            "Reports stored or acknowledged as an identical retry, by endpoint",
            reports_accepted.clone(),
        );
        let reports_rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "reports_rejected",
            "Reports refused, by endpoint and error code",
            reports_rejected.clone(),
        );
        let plugin_call_seconds = Family::<CallLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1e-6, 4.0, 12))
        });
        registry.register(
            "plugin_call_seconds",
            "Latency of plugin calls, by call",
            plugin_call_seconds.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(1e-4, 2.0, 14));
        registry.register(
            "commit_seconds",
            "Duration of one group commit of reports, fsync included",
            commit_seconds.clone(),
        );
        let commit_reports = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "commit_reports",
            "Reports per group commit",
            commit_reports.clone(),
        );
        let seals = Family::<RejectLabels, Counter>::default();
        registry.register(
            "seals",
            "Seal requests on the coordinator, by endpoint and outcome (reason: sealed or an error code)",
            seals.clone(),
        );
        let seal_seconds = Histogram::new(exponential_buckets(1e-3, 2.0, 16));
        registry.register(
            "seal_seconds",
            "Duration of seal requests on the coordinator",
            seal_seconds.clone(),
        );
        let scheduled_seals = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "scheduled_seals",
            "Seals the scheduler tried, by endpoint and outcome (sealed, waiting or failed)",
            scheduled_seals.clone(),
        );
        let plugins_compiled = Gauge::default();
        registry.register(
            "plugins_compiled",
            "Plugins compiled since start (the rest came from the artifact cache)",
            plugins_compiled.clone(),
        );
        let plugins_from_cache = Gauge::default();
        registry.register(
            "plugins_from_cache",
            "Plugins loaded from the compiled-artifact cache since start",
            plugins_from_cache.clone(),
        );
        Self {
            registry,
            plugins_compiled,
            plugins_from_cache,
            reports_accepted,
            reports_rejected,
            plugin_call_seconds,
            commit_seconds,
            commit_reports,
            seals,
            seal_seconds,
            scheduled_seals,
        }
    }

    /// Fed by the storage writer after every group commit.
    pub(super) fn observe_commit(&self, stats: CommitStats) {
        self.commit_seconds.observe(stats.elapsed.as_secs_f64());
        self.commit_reports.observe(stats.reports as f64);
    }

    pub(super) fn observe_runtime(&self, stats: crate::runtime::RuntimeStats) {
        self.plugins_compiled
            .set(i64::try_from(stats.compiled).unwrap_or(i64::MAX));
        self.plugins_from_cache
            .set(i64::try_from(stats.from_cache).unwrap_or(i64::MAX));
    }

    pub(super) fn rejected(&self, endpoint: &str, reason: &str) {
        let labels = RejectLabels {
            endpoint: endpoint.to_owned(),
            reason: reason.to_owned(),
        };
        self.reports_rejected.get_or_create(&labels).inc();
    }

    /// Reports of a robust endpoint whose proofs failed in a seal's verification
    /// round (reason `verification_failed`).
    pub(super) fn verification_rejected(&self, endpoint: &str, reports: u64) {
        let labels = RejectLabels {
            endpoint: endpoint.to_owned(),
            reason: "verification_failed".to_owned(),
        };
        self.reports_rejected.get_or_create(&labels).inc_by(reports);
    }

    /// One seal the scheduler tried: `sealed`, `waiting` or `failed`.
    pub(super) fn scheduled_seal(&self, endpoint: &str, outcome: &'static str) {
        let labels = OutcomeLabels {
            endpoint: endpoint.to_owned(),
            outcome,
        };
        self.scheduled_seals.get_or_create(&labels).inc();
    }

    pub(super) fn accepted(&self, endpoint: &str) {
        let labels = EndpointLabel {
            endpoint: endpoint.to_owned(),
        };
        self.reports_accepted.get_or_create(&labels).inc();
    }

    /// The text exposition format.
    pub(super) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
