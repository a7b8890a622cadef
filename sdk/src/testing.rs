//! A test harness that runs the same checks on a plugin natively and, through
//! the host's plugin runtime, as a real wasm component.
//!
//! [`Backend`] is the byte-level contract of the WIT world. [`Native`]
//! implements it by calling the plugin's Rust code; the host crate
//! (`guardian`) implements it for a compiled component. The check functions
//! here take any backend, so one test body covers both.
//!
//! Robust plugins (contract 0.2.0) have checks of their own, on any backend
//! too: [`run_robust`] (the life of a batch, verification round included),
//! [`verify_round`], and [`check_robust`] with the checks it runs (round
//! trips for 2 to 5 servers, determinism, tampered reports rejected).

use crate::{Error, Plugin, ReportId, Rng, VerifyKey, raw};
use rand_core::RngCore;
use std::marker::PhantomData;

/// The WIT functions, byte for byte. Errors that are not the plugin's own
/// (a trap, a timeout) are reported by a wasm backend as [`Error::Internal`].
pub trait Backend {
    /// `configure`.
    fn configure(&self, params: &str) -> Result<Vec<u8>, Error>;
    /// `shard`.
    fn shard(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        seed: &[u8],
    ) -> Result<Vec<Vec<u8>>, Error>;
    /// `validate`.
    fn validate(&self, config: &[u8], share: &[u8], server_index: u32) -> Result<(), Error>;
    /// `init`.
    fn init(&self, config: &[u8]) -> Result<Vec<u8>, Error>;
    /// `accumulate`, with the shares packed as the WIT `share-batch`.
    fn accumulate(
        &self,
        config: &[u8],
        agg: &[u8],
        data: &[u8],
        ends: &[u32],
    ) -> Result<Vec<u8>, Error>;
    /// `merge`.
    fn merge(&self, config: &[u8], a: &[u8], b: &[u8]) -> Result<Vec<u8>, Error>;
    /// `release`.
    fn release(
        &self,
        config: &[u8],
        agg: &[u8],
        count: u64,
        server_index: u32,
        seed: &[u8],
    ) -> Result<Vec<u8>, Error>;
    /// `unshard`, returning the JSON text.
    fn unshard(&self, config: &[u8], aggs: &[Vec<u8>], count: u64) -> Result<String, Error>;

    // Contract 0.2.0 (robust plugins). The defaults say the backend runs a
    // plugin that is not robust.

    /// 0.2 `shard`: with the report id, giving the public share too.
    fn shard_report(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        report_id: &[u8],
        seed: &[u8],
    ) -> Result<raw::Report, Error> {
        let _ = (config, measurement, servers, report_id, seed);
        Err(not_robust())
    }
    /// 0.2 `validate`: the public share and this server's share.
    fn validate_report(
        &self,
        config: &[u8],
        public_share: &[u8],
        share: &[u8],
        server_index: u32,
    ) -> Result<(), Error> {
        let _ = (config, public_share, share, server_index);
        Err(not_robust())
    }
    /// `verify-init`: report `i` is `ids[16 * i..][..16]`, the `i`-th public
    /// share and the `i`-th share.
    #[allow(clippy::too_many_arguments)]
    fn verify_init(
        &self,
        config: &[u8],
        key: &[u8],
        servers: u32,
        server_index: u32,
        ids: &[u8],
        public_shares: &raw::Batch,
        shares: &raw::Batch,
    ) -> Result<Vec<raw::Started>, Error> {
        let _ = (
            config,
            key,
            servers,
            server_index,
            ids,
            public_shares,
            shares,
        );
        Err(not_robust())
    }
    /// `combine`: one batch of verifier shares per server, in index order.
    fn combine(
        &self,
        config: &[u8],
        public_shares: &raw::Batch,
        verifier_shares: &[raw::Batch],
    ) -> Result<Vec<Result<Vec<u8>, String>>, Error> {
        let _ = (config, public_shares, verifier_shares);
        Err(not_robust())
    }
    /// `verify-finish`: the output shares, as `accumulate` takes them.
    fn verify_finish(
        &self,
        config: &[u8],
        servers: u32,
        server_index: u32,
        states: &raw::Batch,
        messages: &raw::Batch,
    ) -> Result<raw::Batch, Error> {
        let _ = (config, servers, server_index, states, messages);
        Err(not_robust())
    }
}

fn not_robust() -> Error {
    crate::error::not_robust()
}

/// Runs a [`Plugin`] natively, through the same byte layer as the wasm glue.
pub struct Native<P>(PhantomData<P>);

impl<P: Plugin> Native<P> {
    /// The native backend for `P`.
    pub fn new() -> Self {
        Native(PhantomData)
    }
}

impl<P: Plugin> Default for Native<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Plugin> Backend for Native<P> {
    fn configure(&self, params: &str) -> Result<Vec<u8>, Error> {
        raw::configure::<P>(params)
    }
    fn shard(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        seed: &[u8],
    ) -> Result<Vec<Vec<u8>>, Error> {
        raw::shard::<P>(config, measurement, servers, seed)
    }
    fn validate(&self, config: &[u8], share: &[u8], server_index: u32) -> Result<(), Error> {
        raw::validate::<P>(config, share, server_index)
    }
    fn init(&self, config: &[u8]) -> Result<Vec<u8>, Error> {
        raw::init::<P>(config)
    }
    fn accumulate(
        &self,
        config: &[u8],
        agg: &[u8],
        data: &[u8],
        ends: &[u32],
    ) -> Result<Vec<u8>, Error> {
        raw::accumulate::<P>(config, agg, data, ends)
    }
    fn merge(&self, config: &[u8], a: &[u8], b: &[u8]) -> Result<Vec<u8>, Error> {
        raw::merge::<P>(config, a, b)
    }
    fn release(
        &self,
        config: &[u8],
        agg: &[u8],
        count: u64,
        server_index: u32,
        seed: &[u8],
    ) -> Result<Vec<u8>, Error> {
        raw::release::<P>(config, agg, count, server_index, seed)
    }
    fn unshard(&self, config: &[u8], aggs: &[Vec<u8>], count: u64) -> Result<String, Error> {
        raw::unshard::<P>(config, aggs, count)
    }
    fn shard_report(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        report_id: &[u8],
        seed: &[u8],
    ) -> Result<raw::Report, Error> {
        raw::shard_report::<P>(config, measurement, servers, report_id, seed)
    }
    fn validate_report(
        &self,
        config: &[u8],
        public_share: &[u8],
        share: &[u8],
        server_index: u32,
    ) -> Result<(), Error> {
        raw::validate_report::<P>(config, public_share, share, server_index)
    }
    fn verify_init(
        &self,
        config: &[u8],
        key: &[u8],
        servers: u32,
        server_index: u32,
        ids: &[u8],
        public_shares: &raw::Batch,
        shares: &raw::Batch,
    ) -> Result<Vec<raw::Started>, Error> {
        raw::verify_init::<P>(
            config,
            key,
            servers,
            server_index,
            ids,
            public_shares,
            shares,
        )
    }
    fn combine(
        &self,
        config: &[u8],
        public_shares: &raw::Batch,
        verifier_shares: &[raw::Batch],
    ) -> Result<Vec<Result<Vec<u8>, String>>, Error> {
        raw::combine::<P>(config, public_shares, verifier_shares)
    }
    fn verify_finish(
        &self,
        config: &[u8],
        servers: u32,
        server_index: u32,
        states: &raw::Batch,
        messages: &raw::Batch,
    ) -> Result<raw::Batch, Error> {
        raw::verify_finish::<P>(config, servers, server_index, states, messages)
    }
}

/// Packs shares into the WIT `share-batch` layout: one buffer and the end
/// offset of each share.
pub fn pack(shares: &[&[u8]]) -> (Vec<u8>, Vec<u32>) {
    let mut data = Vec::with_capacity(shares.iter().map(|s| s.len()).sum());
    let mut ends = Vec::with_capacity(shares.len());
    for share in shares {
        data.extend_from_slice(share);
        ends.push(u32::try_from(data.len()).unwrap_or(u32::MAX));
    }
    (data, ends)
}

/// Checks that a call was refused with the plugin's own error: one of `kind`
/// (`"invalid_params"`, `"invalid_measurement"`, ...) whose message contains
/// `needle`. The same check holds for every backend, since a wasm backend
/// returns the plugin's error unchanged.
///
/// # Panics
/// If the call succeeded or failed otherwise; the message starts with
/// `context` (the backend and the input, say).
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    context: impl std::fmt::Display,
    result: Result<T, Error>,
    kind: &str,
    needle: &str,
) {
    match result {
        Ok(value) => panic!("{context}: expected {kind}, got Ok({value:?})"),
        Err(err) => assert!(
            err.kind() == kind && err.message().contains(needle),
            "{context}: expected {kind} containing {needle:?}, got {err}"
        ),
    }
}

/// Derives a 32-byte seed from a test number and a purpose, so that runs
/// are reproducible.
pub fn seed(test_seed: u64, purpose: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&test_seed.to_le_bytes());
    s[8..16].copy_from_slice(&purpose.to_le_bytes());
    s
}

/// How [`run_with`] drives the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Number of share servers (at least 2).
    pub servers: u32,
    /// Shares folded per `accumulate` call; the batch is cut in chunks of
    /// this size and the chunk aggregates are merged, as a server does with
    /// large batches.
    pub chunk: usize,
    /// Seed for sharding and release noise.
    pub seed: u64,
}

/// Shards every measurement (JSON texts) for `servers` servers, validates
/// every share at its server, folds each server's shares, releases and
/// unshards: the whole life of one batch. Returns the plugin's result.
pub fn run(
    backend: &dyn Backend,
    config: &[u8],
    measurements: &[String],
    servers: u32,
    seed: u64,
) -> Result<serde_json::Value, Error> {
    run_with(
        backend,
        config,
        measurements,
        RunOptions {
            servers,
            chunk: 7,
            seed,
        },
    )
}

/// [`run`] with every knob.
pub fn run_with(
    backend: &dyn Backend,
    config: &[u8],
    measurements: &[String],
    options: RunOptions,
) -> Result<serde_json::Value, Error> {
    let servers = options.servers as usize;
    let mut per_server: Vec<Vec<Vec<u8>>> = vec![Vec::new(); servers];
    for (i, m) in measurements.iter().enumerate() {
        let shares = backend.shard(config, m, options.servers, &seed(options.seed, i as u64))?;
        for (server, share) in shares.into_iter().enumerate() {
            backend.validate(config, &share, server as u32)?;
            per_server[server].push(share);
        }
    }
    let count = measurements.len() as u64;
    let mut released = Vec::with_capacity(servers);
    for (server, shares) in per_server.iter().enumerate() {
        let mut total = backend.init(config)?;
        for chunk in shares.chunks(options.chunk.max(1)) {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let (data, ends) = pack(&refs);
            let part = backend.accumulate(config, &backend.init(config)?, &data, &ends)?;
            total = backend.merge(config, &total, &part)?;
        }
        let release_seed = seed(options.seed, u64::MAX - server as u64);
        released.push(backend.release(config, &total, count, server as u32, &release_seed)?);
    }
    let text = backend.unshard(config, &released, count)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::internal(format!("unshard returned invalid JSON: {e}")))
}

// Robust plugins (contract 0.2.0).

/// A random report id for tests: the `i`-th of the run seeded by
/// `test_seed`.
pub fn report_id(test_seed: u64, i: u64) -> ReportId {
    let mut id = [0; 16];
    rng(test_seed, i ^ 0x1d00_0000_0000_0000).fill_bytes(&mut id);
    id
}

/// A random verification key for tests, seeded by `test_seed`.
pub fn verify_key(test_seed: u64) -> VerifyKey {
    let mut key = [0; 32];
    rng(test_seed, 0x6b65_7900_0000_0000).fill_bytes(&mut key);
    key
}

fn rng(test_seed: u64, purpose: u64) -> Rng {
    Rng::from_seed_bytes(&seed(test_seed, purpose)).expect("a seed is 32 bytes")
}

/// What the verification round made of each report: every server's output
/// share (in server order), or why the report was rejected.
pub type Verdicts = Vec<Result<Vec<Vec<u8>>, String>>;

/// The verification round over `reports` (each with its id; every report
/// has one share per server, the same number for all), as the servers run
/// it: `verify_init` on every server, `combine` (server 0) over the reports
/// every server found ready, `verify_finish` on every server for the
/// reports `combine` found valid.
///
/// Checks what the contract promises: one answer per report from every
/// call, and `verify_finish` succeeding on every server for every message
/// of `combine`; a broken promise is an [`Error::Internal`] naming it.
pub fn verify_round(
    backend: &dyn Backend,
    config: &[u8],
    key: &[u8],
    reports: &[(ReportId, raw::Report)],
) -> Result<Verdicts, Error> {
    let Some((_, first)) = reports.first() else {
        return Ok(Vec::new());
    };
    let servers = first.shares.len();
    if reports.iter().any(|(_, r)| r.shares.len() != servers) {
        return Err(Error::internal(
            "the reports of one round must have a share per server each",
        ));
    }
    let n = servers as u32;
    let ids: Vec<u8> = reports.iter().flat_map(|(id, _)| *id).collect();
    let public_shares = raw::Batch::pack(reports.iter().map(|(_, r)| &r.public_share));
    let mut started = Vec::with_capacity(servers);
    for server in 0..servers {
        let shares = raw::Batch::pack(reports.iter().map(|(_, r)| &r.shares[server]));
        let answers =
            backend.verify_init(config, key, n, server as u32, &ids, &public_shares, &shares)?;
        if answers.len() != reports.len() {
            return Err(Error::internal(format!(
                "verify-init on server {server} answered {} times for {} reports",
                answers.len(),
                reports.len()
            )));
        }
        started.push(answers);
    }
    let mut verdicts: Verdicts = vec![Ok(Vec::new()); reports.len()];
    let mut ready = Vec::new();
    for (i, verdict) in verdicts.iter_mut().enumerate() {
        let invalid = started
            .iter()
            .enumerate()
            .find_map(|(server, s)| match &s[i] {
                raw::Started::Invalid(why) => Some(format!("server {server}: {why}")),
                raw::Started::Ready { .. } => None,
            });
        match invalid {
            Some(why) => *verdict = Err(why),
            None => ready.push(i),
        }
    }
    let part = |server: usize, i: usize| match &started[server][i] {
        raw::Started::Ready {
            state,
            verifier_share,
        } => (state.as_slice(), verifier_share.as_slice()),
        raw::Started::Invalid(_) => unreachable!("only ready reports are combined"),
    };
    let ready_public = raw::Batch::pack(ready.iter().map(|&i| &reports[i].1.public_share));
    let verifier_shares: Vec<raw::Batch> = (0..servers)
        .map(|server| raw::Batch::pack(ready.iter().map(|&i| part(server, i).1)))
        .collect();
    let decisions = backend.combine(config, &ready_public, &verifier_shares)?;
    if decisions.len() != ready.len() {
        return Err(Error::internal(format!(
            "combine answered {} times for {} reports",
            decisions.len(),
            ready.len()
        )));
    }
    let mut valid = Vec::new();
    let mut messages = raw::Batch::default();
    for (&i, decision) in ready.iter().zip(decisions) {
        match decision {
            Ok(message) => {
                valid.push(i);
                messages.push(&message);
            }
            Err(why) => verdicts[i] = Err(format!("combine: {why}")),
        }
    }
    for server in 0..servers {
        let states = raw::Batch::pack(valid.iter().map(|&i| part(server, i).0));
        let outputs = backend
            .verify_finish(config, n, server as u32, &states, &messages)
            .map_err(|e| {
                Error::internal(format!(
                    "verify-finish failed on server {server} for messages combine gave: {e}"
                ))
            })?;
        let outputs = outputs.items()?;
        if outputs.len() != valid.len() {
            return Err(Error::internal(format!(
                "verify-finish on server {server} made {} output shares for {} reports",
                outputs.len(),
                valid.len()
            )));
        }
        for (&i, output) in valid.iter().zip(outputs) {
            if let Ok(shares) = &mut verdicts[i] {
                shares.push(output.to_vec());
            }
        }
    }
    Ok(verdicts)
}

/// The whole life of one batch on a robust plugin: shards every measurement
/// (JSON texts) for `options.servers` servers under a random report id,
/// validates every report at every server, runs the verification round
/// ([`verify_round`]) on chunks of `options.chunk` reports, folds each
/// server's output shares chunk by chunk and merges the chunks, releases
/// and unshards. Returns the plugin's result; a report that the round
/// rejects is an error.
pub fn run_robust(
    backend: &dyn Backend,
    config: &[u8],
    measurements: &[String],
    options: RunOptions,
) -> Result<serde_json::Value, Error> {
    let mut reports = Vec::with_capacity(measurements.len());
    for (i, m) in measurements.iter().enumerate() {
        let id = report_id(options.seed, i as u64);
        let report = backend.shard_report(
            config,
            m,
            options.servers,
            &id,
            &seed(options.seed, i as u64),
        )?;
        reports.push((id, report));
    }
    aggregate_reports(backend, config, &reports, options)
}

/// The servers' part of [`run_robust`], for reports sharded elsewhere (by
/// another client, say): validates every report at every server, verifies
/// them in chunks of `options.chunk` under a key drawn from `options.seed`,
/// folds, merges, releases (with noise seeded by `options.seed`) and
/// unshards. `options.servers` is not used: every report has one share per
/// server. A report that the round rejects is an error.
pub fn aggregate_reports(
    backend: &dyn Backend,
    config: &[u8],
    reports: &[(ReportId, raw::Report)],
    options: RunOptions,
) -> Result<serde_json::Value, Error> {
    let servers = reports.first().map_or(2, |(_, r)| r.shares.len());
    let key = verify_key(options.seed);
    for (_, report) in reports {
        for (server, share) in report.shares.iter().enumerate() {
            backend.validate_report(config, &report.public_share, share, server as u32)?;
        }
    }
    let mut totals = (0..servers)
        .map(|_| backend.init(config))
        .collect::<Result<Vec<_>, _>>()?;
    for (c, chunk) in reports.chunks(options.chunk.max(1)).enumerate() {
        let verdicts = verify_round(backend, config, &key, chunk)?;
        let mut outputs = vec![Vec::new(); servers];
        for (i, verdict) in verdicts.into_iter().enumerate() {
            let shares = verdict.map_err(|why| {
                Error::internal(format!(
                    "report {} was rejected: {why}",
                    c * options.chunk.max(1) + i
                ))
            })?;
            for (server, share) in shares.into_iter().enumerate() {
                outputs[server].push(share);
            }
        }
        for (server, outputs) in outputs.iter().enumerate() {
            let refs: Vec<&[u8]> = outputs.iter().map(Vec::as_slice).collect();
            let (data, ends) = pack(&refs);
            let part = backend.accumulate(config, &backend.init(config)?, &data, &ends)?;
            totals[server] = backend.merge(config, &totals[server], &part)?;
        }
    }
    let count = reports.len() as u64;
    let mut released = Vec::with_capacity(servers);
    for (server, total) in totals.iter().enumerate() {
        let release_seed = seed(options.seed, u64::MAX - server as u64);
        released.push(backend.release(config, total, count, server as u32, &release_seed)?);
    }
    let text = backend.unshard(config, &released, count)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::internal(format!("unshard returned invalid JSON: {e}")))
}

/// Every check of a robust plugin on `backend`, for valid `measurements`
/// (at least one) whose result is `expected`: round trips for 2 to 5
/// servers ([`check_robust_round_trips`]), determinism
/// ([`check_robust_deterministic`]) and tampered reports rejected
/// ([`check_tampering_rejected`], for 2 and 3 servers).
///
/// # Panics
/// On the first check that fails, with `context` and what failed.
#[track_caller]
pub fn check_robust(
    context: &str,
    backend: &dyn Backend,
    config: &[u8],
    measurements: &[String],
    expected: &serde_json::Value,
    test_seed: u64,
) {
    check_robust_round_trips(context, backend, config, measurements, expected, test_seed);
    check_robust_deterministic(context, backend, config, &measurements[0], test_seed);
    for servers in [2, 3] {
        check_tampering_rejected(context, backend, config, measurements, servers, test_seed);
    }
}

/// [`run_robust`] for 2 to 5 servers, in chunks of 1, 3 and all, gives
/// `expected`.
///
/// # Panics
/// When a run fails or gives another result.
#[track_caller]
pub fn check_robust_round_trips(
    context: &str,
    backend: &dyn Backend,
    config: &[u8],
    measurements: &[String],
    expected: &serde_json::Value,
    test_seed: u64,
) {
    for servers in 2..=5u32 {
        for chunk in [1, 3, measurements.len()] {
            let options = RunOptions {
                servers,
                chunk,
                seed: test_seed.wrapping_add(u64::from(servers)),
            };
            let result = run_robust(backend, config, measurements, options)
                .unwrap_or_else(|e| panic!("{context}: {servers} servers, chunk {chunk}: {e}"));
            assert_eq!(
                &result, expected,
                "{context}: {servers} servers, chunk {chunk}"
            );
        }
    }
}

/// The same inputs give the same bytes at every step (shard, verify-init,
/// combine, verify-finish), and another seed gives other shares.
///
/// # Panics
/// When a step fails or differs.
#[track_caller]
pub fn check_robust_deterministic(
    context: &str,
    backend: &dyn Backend,
    config: &[u8],
    measurement: &str,
    test_seed: u64,
) {
    let servers = 3;
    let id = report_id(test_seed, 0);
    let shard = |s: u64| {
        backend
            .shard_report(config, measurement, servers, &id, &seed(test_seed, s))
            .unwrap_or_else(|e| panic!("{context}: shard: {e}"))
    };
    let report = shard(0);
    assert_eq!(report, shard(0), "{context}: shard is not deterministic");
    assert_ne!(
        report.shares,
        shard(1).shares,
        "{context}: shard ignores its seed"
    );
    let key = verify_key(test_seed);
    let round = || {
        verify_round(backend, config, &key, &[(id, report.clone())])
            .unwrap_or_else(|e| panic!("{context}: verification round: {e}"))
    };
    let first = round();
    assert!(
        first[0].is_ok(),
        "{context}: a valid report was rejected: {:?}",
        first[0]
    );
    assert_eq!(
        first,
        round(),
        "{context}: verification is not deterministic"
    );
    // verify-init alone, byte for byte, on every server.
    let ids = raw::Batch::pack([id]).data;
    let public_shares = raw::Batch::pack([&report.public_share]);
    for server in 0..servers {
        let shares = raw::Batch::pack([&report.shares[server as usize]]);
        let init = || {
            backend
                .verify_init(config, &key, servers, server, &ids, &public_shares, &shares)
                .unwrap_or_else(|e| panic!("{context}: verify-init: {e}"))
        };
        assert_eq!(
            init(),
            init(),
            "{context}: verify-init is not deterministic"
        );
    }
}

/// Tampered reports are rejected, and only they: for `servers` servers,
/// each of two honest reports (of `measurements[0]` and of the last
/// measurement) verifies, and the round rejects
///
/// - a byte flipped (at the start, middle and end) in one server's share,
///   for every server;
/// - report A's share on one server under report B's id, public share and
///   other shares, for every server;
/// - a public share that differs from the one the client made (a flipped
///   byte, or 32 bytes where there were none), the same on every server
///   (the host guarantees that much), which is `combine`'s check.
///
/// `validate_report` refuses a truncated share on every server.
///
/// # Panics
/// When an honest report is rejected, a tampered one verifies, or a call
/// fails.
#[track_caller]
pub fn check_tampering_rejected(
    context: &str,
    backend: &dyn Backend,
    config: &[u8],
    measurements: &[String],
    servers: u32,
    test_seed: u64,
) {
    let context = format!("{context} ({servers} servers)");
    let key = verify_key(test_seed);
    let make = |i: u64, m: &str| {
        let id = report_id(test_seed, 1000 + i);
        let report = backend
            .shard_report(config, m, servers, &id, &seed(test_seed, 1000 + i))
            .unwrap_or_else(|e| panic!("{context}: shard {m}: {e}"));
        (id, report)
    };
    let a = make(0, &measurements[0]);
    let b = make(1, &measurements[measurements.len() - 1]);
    let mut tampered: Vec<(String, (ReportId, raw::Report))> = Vec::new();
    for server in 0..servers as usize {
        let len = b.1.shares[server].len();
        for at in [0, len / 2, len.saturating_sub(1)] {
            let mut report = b.clone();
            if let Some(byte) = report.1.shares[server].get_mut(at) {
                *byte ^= 0x01;
                tampered.push((
                    format!("byte {at} of server {server}'s share flipped"),
                    report,
                ));
            }
        }
        let mut swapped = b.clone();
        swapped.1.shares[server] = a.1.shares[server].clone();
        tampered.push((
            format!("report A's share on server {server} under report B's id"),
            swapped,
        ));
        let mut truncated = b.1.shares[server].clone();
        truncated.pop();
        let result = backend.validate_report(config, &b.1.public_share, &truncated, server as u32);
        assert!(
            matches!(result, Err(Error::InvalidShare(_))),
            "{context}: validate accepted a truncated share on server {server}: {result:?}"
        );
    }
    let len = b.1.public_share.len();
    if len == 0 {
        let mut report = b.clone();
        report.1.public_share = vec![0; 32];
        tampered.push(("a public share where there is none".to_owned(), report));
    }
    for at in [0, len / 2, len.saturating_sub(1)] {
        let mut report = b.clone();
        if let Some(byte) = report.1.public_share.get_mut(at) {
            *byte ^= 0x01;
            tampered.push((format!("byte {at} of the public share flipped"), report));
        }
    }
    let mut reports = vec![a, b];
    reports.extend(tampered.iter().map(|(_, r)| r.clone()));
    let verdicts = verify_round(backend, config, &key, &reports)
        .unwrap_or_else(|e| panic!("{context}: verification round: {e}"));
    for (name, verdict) in ["honest report A", "honest report B"].iter().zip(&verdicts) {
        assert!(
            verdict.is_ok(),
            "{context}: {name} was rejected: {verdict:?}"
        );
    }
    for ((what, _), verdict) in tampered.iter().zip(&verdicts[2..]) {
        assert!(verdict.is_err(), "{context}: {what}: the report verified");
    }
}

/// The verification round rejects `report` (with its `id`), under a fixed
/// test key.
///
/// # Panics
/// When the report verifies or the round fails.
#[track_caller]
pub fn assert_rejected(
    context: &str,
    backend: &dyn Backend,
    config: &[u8],
    id: ReportId,
    report: raw::Report,
) {
    let verdicts = verify_round(backend, config, &verify_key(7), &[(id, report)])
        .unwrap_or_else(|e| panic!("{context}: verification round: {e}"));
    assert!(verdicts[0].is_err(), "{context}: the report verified");
}

/// Pearson's chi-squared statistic of byte values against the uniform
/// distribution on 0..=255 (255 degrees of freedom).
pub fn chi_squared_uniform_bytes(bytes: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let expected = bytes.len() as f64 / 256.0;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

/// Chi-squared statistic of the two-sample test that `a` and `b` draw their
/// byte values from the same distribution (255 degrees of freedom).
pub fn chi_squared_two_sample_bytes(a: &[u8], b: &[u8]) -> f64 {
    let (mut ca, mut cb) = ([0f64; 256], [0f64; 256]);
    a.iter().for_each(|&x| ca[x as usize] += 1.0);
    b.iter().for_each(|&x| cb[x as usize] += 1.0);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (ka, kb) = ((nb / na).sqrt(), (na / nb).sqrt());
    ca.iter()
        .zip(&cb)
        .filter(|(x, y)| **x + **y > 0.0)
        .map(|(x, y)| (ka * x - kb * y).powi(2) / (x + y))
        .sum()
}

/// The chi-squared value for 255 degrees of freedom above which a test
/// rejects at p < 0.0001 (Wilson–Hilferty): uniform bytes stay below it.
pub const CHI2_255_P0001: f64 = 347.7;
