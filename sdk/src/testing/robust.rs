//! Robust plugins (contract 0.2.0): the life of a batch with its
//! verification round ([`run_robust`], [`verify_round`],
//! [`aggregate_reports`]), and the robust checks. Each check is a function
//! that returns what failed, used by [`super::check_plugin`], and a
//! panicking `check_*` for `#[test]`s.

use std::ops::RangeInclusive;

use super::{Backend, RunOptions, chunk_sizes, pack, seed};
use crate::{Error, ReportId, Rng, VerifyKey, raw};
use rand_core::RngCore;

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
/// ([`check_tampering_rejected`], for 2 and 3 servers). [`check_plugin`]
/// runs the same checks and reports every outcome instead of panicking.
///
/// # Panics
/// On the first check that fails, with `context` and what failed.
///
/// [`check_plugin`]: super::check_plugin
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
    if let Err(e) = robust_round_trips(backend, config, measurements, expected, 2..=5, test_seed) {
        panic!("{context}: {e}");
    }
}

/// What [`check_robust_round_trips`] checks, for `servers`, as a result:
/// what was seen, or what failed.
pub(super) fn robust_round_trips(
    backend: &dyn Backend,
    config: &[u8],
    measurements: &[String],
    expected: &serde_json::Value,
    servers: RangeInclusive<u32>,
    test_seed: u64,
) -> Result<String, String> {
    for servers in servers {
        for chunk in chunk_sizes(measurements.len()) {
            let options = RunOptions {
                servers,
                chunk,
                seed: test_seed.wrapping_add(u64::from(servers)),
            };
            let run = format!("{servers} servers, chunks of {chunk}");
            let result = run_robust(backend, config, measurements, options)
                .map_err(|e| format!("{run}: {e}"))?;
            if &result != expected {
                return Err(format!(
                    "{run}: the result is {result}, where 2 servers in one chunk gave \
                     {expected}; verified output shares must add up to the measurements \
                     however the batch is split and folded"
                ));
            }
        }
    }
    Ok(format!(
        "the same result for every split and grouping: {expected}"
    ))
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
    if let Err(e) = robust_deterministic(backend, config, measurement, test_seed) {
        panic!("{context}: {e}");
    }
}

/// What [`check_robust_deterministic`] checks, as a result: what was
/// seen, or what failed.
pub(super) fn robust_deterministic(
    backend: &dyn Backend,
    config: &[u8],
    measurement: &str,
    test_seed: u64,
) -> Result<String, String> {
    let servers = 3;
    let id = report_id(test_seed, 0);
    let shard = |s: u64| {
        backend
            .shard_report(config, measurement, servers, &id, &seed(test_seed, s))
            .map_err(|e| format!("shard {measurement}: {e}"))
    };
    let report = shard(0)?;
    if report != shard(0)? {
        return Err(format!(
            "shard {measurement} is not deterministic: the same seed gave another report; \
             it must take its randomness from the seed only"
        ));
    }
    if report.shares == shard(1)?.shares {
        return Err(format!(
            "shard {measurement} ignores its seed: another seed gave the same shares, \
             and shares that are not random reveal the measurement"
        ));
    }
    let key = verify_key(test_seed);
    let round = || {
        verify_round(backend, config, &key, &[(id, report.clone())])
            .map_err(|e| format!("verification round: {e}"))
    };
    let first = round()?;
    if let Err(why) = &first[0] {
        return Err(format!(
            "a valid report of {measurement} was rejected: {why}"
        ));
    }
    if first != round()? {
        return Err(
            "verification is not deterministic: the same report and key gave \
                    other output shares"
                .into(),
        );
    }
    // verify-init alone, byte for byte, on every server.
    let ids = raw::Batch::pack([id]).data;
    let public_shares = raw::Batch::pack([&report.public_share]);
    for server in 0..servers {
        let shares = raw::Batch::pack([&report.shares[server as usize]]);
        let init = || {
            backend
                .verify_init(config, &key, servers, server, &ids, &public_shares, &shares)
                .map_err(|e| format!("verify-init on server {server}: {e}"))
        };
        if init()? != init()? {
            return Err(format!(
                "verify-init on server {server} is not deterministic: the same inputs \
                 gave other bytes"
            ));
        }
    }
    Ok(
        "the same bytes from shard, verify-init, combine and verify-finish for a \
        seed; other shares for another seed"
            .into(),
    )
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
    if let Err(e) = tampering_rejected(backend, config, measurements, servers, test_seed) {
        panic!("{context}: {e}");
    }
}

/// What [`check_tampering_rejected`] checks, as a result: what was seen,
/// or what failed; both name the number of servers.
pub(super) fn tampering_rejected(
    backend: &dyn Backend,
    config: &[u8],
    measurements: &[String],
    servers: u32,
    test_seed: u64,
) -> Result<String, String> {
    let context = format!("{servers} servers");
    let key = verify_key(test_seed);
    let make = |i: u64, m: &str| {
        let id = report_id(test_seed, 1000 + i);
        backend
            .shard_report(config, m, servers, &id, &seed(test_seed, 1000 + i))
            .map(|report| (id, report))
            .map_err(|e| format!("{context}: shard {m}: {e}"))
    };
    let a = make(0, &measurements[0])?;
    let b = make(1, &measurements[measurements.len() - 1])?;
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
        if !matches!(result, Err(Error::InvalidShare(_))) {
            return Err(format!(
                "{context}: validate accepted a truncated share on server {server} \
                 (it must refuse it with invalid_share): {result:?}"
            ));
        }
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
        .map_err(|e| format!("{context}: verification round: {e}"))?;
    for (name, verdict) in ["honest report A", "honest report B"].iter().zip(&verdicts) {
        if let Err(why) = verdict {
            return Err(format!("{context}: {name} was rejected: {why}"));
        }
    }
    let verified: Vec<&str> = tampered
        .iter()
        .zip(&verdicts[2..])
        .filter(|(_, verdict)| verdict.is_ok())
        .map(|((what, _), _)| what.as_str())
        .collect();
    if !verified.is_empty() {
        return Err(format!(
            "{context}: tampered reports verified: {}",
            verified.join("; ")
        ));
    }
    Ok(format!(
        "{context}: two honest reports verified; {} tampered ones rejected; truncated \
         shares refused by validate",
        tampered.len()
    ))
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
