//! The `verify` scenario: what checking Prio3 validity proofs costs through the
//! robust built-in plugins (wasm, through `guardian::runtime`) next to the same
//! steps done natively with the prio crate, on the same reports, in this
//! process.
//!
//! Per case (a robust built-in with its parameters, and prio's own instance
//! with the same parameters: `Prio3::new_sum(2, 255)` and so on, under the
//! SDK's context string [`CTX`]), reports are sharded once by the plugin
//! (random ids and seeds) and then verified as n = 2 servers verify them:
//! every server's `verify_init`, server 0's `combine` (prio's
//! `verifier_shares_to_message`), every server's `verify_finish` (prio's
//! `verify_next`). The plugin is called in slices of 1,024 reports, as the
//! server calls it; the native side works through the same slices, from the
//! same wire bytes (it decodes the public and input shares, and keeps
//! everything else as values). Native and wasm rounds alternate so that both
//! see the same machine; a figure is the median over the rounds of the time
//! per report, both servers' work together, in processor time of the one
//! thread that does it all (the plugin runs on the calling thread), so that
//! time it spent preempted on a shared machine is not counted; the wall-clock
//! ratio is shown next to it. The output shares of both must be byte for byte
//! equal, which checks that both run the same VDAF.

use std::time::Instant;

use guardian::runtime::Plugin;
use guardian::runtime::testing::builtin;
use guardian_sdk::prio3::prio::codec::{Encode, ParameterizedDecode};
use guardian_sdk::prio3::prio::flp::Type;
use guardian_sdk::prio3::prio::vdaf::prio3::{
    Prio3, Prio3InputShare, Prio3PublicShare, optimal_chunk_length,
};
use guardian_sdk::prio3::prio::vdaf::{Aggregator, VerifyTransition};
use guardian_sdk::prio3::{CTX, Vdaf};
use guardian_sdk::raw::{Batch, Started};
use serde_json::{Value, json};

use super::{Meter, Options, Row, Sharded, shard_reports, spread};

/// Servers taking part in the verification.
const SERVERS: usize = 2;
/// Reports per plugin call, as the server makes them (its `PLUGIN_SLICE`).
const SLICE: usize = 1024;
/// Reports verified per round.
const REPORTS: usize = 4 * SLICE;
/// The table of this scenario.
const TABLE: &str =
    "Prio3 verification, n = 2 servers (in process, processor µs per report, both servers' work)";

/// One case: a robust built-in, its parameters, prio's instance with the same
/// parameters, and random valid measurements.
struct Case {
    label: &'static str,
    plugin: &'static str,
    params: Value,
    native: Box<dyn Native>,
    /// A random valid measurement, as the plugin takes it (JSON text).
    measurement: fn() -> String,
}

/// A random integer from 0 to `max`.
fn random(max: u64) -> u64 {
    rand::random_range(0..=max)
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            label: "prio3-count",
            plugin: "prio3-count",
            params: json!({}),
            native: Box::new(Prio3::new_count(2).expect("Prio3Count")),
            measurement: || rand::random::<bool>().to_string(),
        },
        Case {
            label: "prio3-sum, max 255",
            plugin: "prio3-sum",
            params: json!({"max_measurement": 255}),
            native: Box::new(Prio3::new_sum(2, 255).expect("Prio3Sum")),
            measurement: || random(255).to_string(),
        },
        Case {
            label: "prio3-histogram, 10 buckets",
            plugin: "prio3-histogram",
            params: json!({"buckets": 10}),
            native: Box::new(
                Prio3::new_histogram(2, 10, optimal_chunk_length(10)).expect("Prio3Histogram"),
            ),
            measurement: || random(9).to_string(),
        },
        Case {
            label: "prio3-sumvec, length 10, bits 8",
            plugin: "prio3-sumvec",
            params: json!({"length": 10, "bits": 8}),
            // The plugin's chunk length: the optimal one for 10 × 8 encoded bits.
            native: Box::new(
                Prio3::new_sum_vec(2, 255, 10, optimal_chunk_length(80)).expect("Prio3SumVec"),
            ),
            measurement: || json!((0..10).map(|_| random(255)).collect::<Vec<_>>()).to_string(),
        },
    ]
}

/// Processor time of each step, µs, both servers together; and the wall-clock
/// time of all of them.
#[derive(Clone, Copy, Default)]
struct Steps {
    init: f64,
    combine: f64,
    finish: f64,
    wall: f64,
}

impl Steps {
    fn total(&self) -> f64 {
        self.init + self.combine + self.finish
    }
}

/// This thread's processor time, µs. (`/proc/thread-self/schedstat` moves only
/// at scheduler ticks, 4 ms here, too coarse for a step of a slice.)
fn thread_cpu_us() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` only writes the `timespec` it is given, which is a
    // valid, exclusively borrowed local.
    #[allow(unsafe_code)]
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "this thread's processor time");
    now.tv_sec as f64 * 1e6 + now.tv_nsec as f64 / 1e3
}

/// A stopwatch of the steps of a slice, in this thread's processor time.
struct Laps(f64);

impl Laps {
    fn start() -> Laps {
        Laps(thread_cpu_us())
    }

    /// µs since the previous lap (or the start).
    fn lap(&mut self) -> f64 {
        let now = thread_cpu_us();
        let elapsed = now - self.0;
        self.0 = now;
        elapsed
    }
}

/// Times one round of `verify`: its steps and its wall-clock time.
fn timed(verify: impl FnOnce(&mut Steps)) -> Steps {
    let mut steps = Steps::default();
    let started = Instant::now();
    verify(&mut steps);
    steps.wall = started.elapsed().as_secs_f64() * 1e6;
    steps
}

/// The verification of every report done natively: adds the time of each
/// step to `steps` (µs in total), returns each server's output shares,
/// encoded and concatenated.
trait Native {
    fn verify(&self, key: &[u8; 32], reports: &[Sharded], steps: &mut Steps) -> Vec<Vec<u8>>;
}

impl<T: Type> Native for Vdaf<T> {
    fn verify(&self, key: &[u8; 32], reports: &[Sharded], steps: &mut Steps) -> Vec<Vec<u8>> {
        let mut outputs = vec![Vec::new(); SERVERS];
        for slice in reports.chunks(SLICE) {
            let mut laps = Laps::start();
            let mut states: Vec<Vec<_>> = (0..SERVERS)
                .map(|_| Vec::with_capacity(slice.len()))
                .collect();
            let mut verifier_shares = Vec::with_capacity(slice.len());
            for sharded in slice {
                let public =
                    Prio3PublicShare::get_decoded_with_param(self, &sharded.report.public_share)
                        .expect("public share");
                let mut shares = Vec::with_capacity(SERVERS);
                for (server, states) in states.iter_mut().enumerate() {
                    let input = Prio3InputShare::get_decoded_with_param(
                        &(self, server),
                        &sharded.report.shares[server],
                    )
                    .expect("input share");
                    let (state, share) = self
                        .verify_init(key, CTX, server, &(), &sharded.id, &public, &input)
                        .expect("verify_init");
                    states.push(state);
                    shares.push(share);
                }
                verifier_shares.push(shares);
            }
            steps.init += laps.lap();
            let messages: Vec<_> = verifier_shares
                .into_iter()
                .map(|shares| {
                    self.verifier_shares_to_message(CTX, &(), shares)
                        .expect("a valid report's proof holds")
                })
                .collect();
            steps.combine += laps.lap();
            let finished: Vec<Vec<_>> = states
                .into_iter()
                .map(|states| {
                    states
                        .into_iter()
                        .zip(&messages)
                        .map(|(state, message)| {
                            match self.verify_next(CTX, state, message.clone()) {
                                Ok(VerifyTransition::Finish(output)) => output,
                                _ => panic!("verify_next did not finish"),
                            }
                        })
                        .collect()
                })
                .collect();
            steps.finish += laps.lap();
            for (out, finished) in outputs.iter_mut().zip(finished) {
                for output in finished {
                    output.encode(out).expect("encode an output share");
                }
            }
        }
        outputs
    }
}

/// The same verification through the plugin, as the server calls it.
fn wasm_verify(
    plugin: &Plugin,
    config: &[u8],
    key: &[u8; 32],
    reports: &[Sharded],
    steps: &mut Steps,
) -> Vec<Vec<u8>> {
    let mut outputs = vec![Vec::new(); SERVERS];
    for slice in reports.chunks(SLICE) {
        let mut laps = Laps::start();
        let ids: Vec<u8> = slice.iter().flat_map(|s| s.id).collect();
        let publics = Batch::pack(slice.iter().map(|s| &s.report.public_share));
        let mut states = Vec::with_capacity(SERVERS);
        let mut verifier_shares = Vec::with_capacity(SERVERS);
        for server in 0..SERVERS {
            let shares = Batch::pack(slice.iter().map(|s| &s.report.shares[server]));
            let started = plugin
                .verify_init(
                    config,
                    key,
                    SERVERS as u32,
                    server as u32,
                    &ids,
                    &publics,
                    &shares,
                )
                .expect("verify_init");
            let (mut server_states, mut server_shares) = (Batch::default(), Batch::default());
            for started in started {
                match started {
                    Started::Ready {
                        state,
                        verifier_share,
                    } => {
                        server_states.push(&state);
                        server_shares.push(&verifier_share);
                    }
                    Started::Invalid(why) => panic!("a valid report does not start: {why}"),
                }
            }
            states.push(server_states);
            verifier_shares.push(server_shares);
        }
        steps.init += laps.lap();
        let messages = Batch::pack(
            plugin
                .combine(config, &publics, &verifier_shares)
                .expect("combine")
                .into_iter()
                .map(|m| m.expect("a valid report's proof holds")),
        );
        steps.combine += laps.lap();
        let finished: Vec<Batch> = (0..SERVERS)
            .map(|server| {
                plugin
                    .verify_finish(
                        config,
                        SERVERS as u32,
                        server as u32,
                        &states[server],
                        &messages,
                    )
                    .expect("verify_finish")
            })
            .collect();
        steps.finish += laps.lap();
        for (out, finished) in outputs.iter_mut().zip(finished) {
            out.extend_from_slice(&finished.data);
        }
    }
    outputs
}

/// The rows of the `verify` scenario: one per case.
pub(super) fn rows(options: &Options) -> Vec<Row> {
    let rounds = if options.quick { 3 } else { 7 };
    cases()
        .into_iter()
        .map(|case| {
            let plugin = builtin(case.plugin);
            let config = plugin
                .configure(&case.params.to_string())
                .expect("configure");
            let measurements: Vec<String> = (0..REPORTS).map(|_| (case.measurement)()).collect();
            let reports = shard_reports(&plugin, &config, &measurements, SERVERS as u32);
            let key: [u8; 32] = rand::random();
            let mut row = Row::new(
                TABLE,
                case.label,
                json!({"scenario": "verify", "plugin": case.plugin, "params": case.params, "servers": SERVERS, "slice": SLICE, "reports": REPORTS, "rounds": rounds}),
            );
            // Untimed: warms both up and checks that they agree.
            let native = case.native.verify(&key, &reports, &mut Steps::default());
            let wasm = wasm_verify(&plugin, &config, &key, &reports, &mut Steps::default());
            assert!(
                native == wasm,
                "{}: the plugin's output shares are not prio's",
                case.label
            );
            for run in 0..options.runs {
                eprintln!("verify {}: run {}/{}", case.label, run + 1, options.runs);
                let meter = Meter::start(&[]);
                let (mut native, mut wasm) = (Vec::new(), Vec::new());
                for _ in 0..rounds {
                    native.push(timed(|steps| {
                        case.native.verify(&key, &reports, steps);
                    }));
                    wasm.push(timed(|steps| {
                        wasm_verify(&plugin, &config, &key, &reports, steps);
                    }));
                }
                let usage = meter.stop();
                let median = |rounds: &[Steps], step: fn(&Steps) -> f64| {
                    spread(&rounds.iter().map(step).collect::<Vec<_>>()).0 / REPORTS as f64
                };
                let (n, w) = (median(&native, Steps::total), median(&wasm, Steps::total));
                row.push("native µs", n);
                row.push("wasm µs", w);
                row.push("wasm / native", w / n);
                row.push(
                    "wasm / native, wall clock",
                    median(&wasm, |s| s.wall) / median(&native, |s| s.wall),
                );
                row.push("verify_init native", median(&native, |s| s.init));
                row.push("verify_init wasm", median(&wasm, |s| s.init));
                row.push("combine native", median(&native, |s| s.combine));
                row.push("combine wasm", median(&wasm, |s| s.combine));
                row.push("verify_finish native", median(&native, |s| s.finish));
                row.push("verify_finish wasm", median(&wasm, |s| s.finish));
                row.push("other cores", usage.other_cores);
            }
            row
        })
        .collect()
}
