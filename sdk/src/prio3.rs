//! Robust plugins from Prio3 validity circuits (feature `prio3`).
//!
//! [Prio3] (VDAF draft 18, from the [`prio`] crate, re-exported here) proves,
//! with each report, that the measurement is valid (a bit, a number in range,
//! a one-hot vector...) without revealing it: the servers check the proof
//! together, in one round, before anything is aggregated. Its validity
//! circuits are [`prio::flp::Type`]s; prio ships count, sum, vectors of sums
//! and histograms, and a researcher can write another.
//!
//! Implement [`Circuit`] (configuration, the circuit for it, and how
//! measurements and results convert) and export [`Prio3Plugin`] of it with
//! [`crate::export_robust_plugin!`]; [`Prio3Plugin`] implements every method
//! of [`Plugin`], verification included:
//!
//! - **shard**: Prio3 sharding with the report id as nonce. Its randomness
//!   comes from the host's seed through [`Rng`] (prio's seeded sharding),
//!   never from the system, so the component imports no `wasi:random`.
//! - **validate**: lengths only (cheap, on the report path).
//! - **verify-init**: Prio3's, under the endpoint's verification key; a
//!   report whose shares do not decode is [`raw::Started::Invalid`], not an
//!   error of the whole call.
//! - **combine**: Prio3's decision over the verifier shares, plus the check
//!   that makes every server's verify-finish succeed: with joint randomness,
//!   the public share (every server's joint randomness part, 32 bytes each)
//!   must equal what each server computed from its own share (the last 32
//!   bytes of its verifier share). Prio3 itself only finds a mismatch in
//!   verify-finish, on the servers whose part differs; here the servers
//!   never disagree about a report.
//! - **verify-finish**: the output share, which `accumulate` folds.
//!
//! Every byte string is in the VDAF wire encoding (prio's `Encode` and
//! `ParameterizedDecode`): public and input shares, verification states,
//! verifier shares, messages, and output and aggregate shares (a vector of
//! field elements), so reports sharded by prio's own client verify here and
//! the other way round. The context string is [`CTX`] for every plugin; the
//! algorithm id ([`Circuit::ALGORITHM_ID`]) keeps circuits apart.
//!
//! # A custom circuit
//!
//! Net votes: each user says -1, 0 or +1, and proves it. The circuit checks
//! that the vote is a root of x³ - x with one gadget of degree 3.
//!
//! ```
//! use guardian_sdk::prio3::prio::field::{Field64, FieldElement, FieldElementWithInteger};
//! use guardian_sdk::prio3::prio::flp::{gadgets::PolyEval, Flp, FlpError, Gadget, Type};
//! use guardian_sdk::prio3::{Circuit, Prio3Plugin};
//! use guardian_sdk::{Error, Info};
//! use serde::{Deserialize, Serialize};
//!
//! /// The validity circuit: one field element x with x³ - x = 0.
//! #[derive(Debug, Clone, PartialEq, Eq)]
//! pub struct Vote;
//!
//! impl Flp for Vote {
//!     type Field = Field64;
//!     fn gadget(&self) -> Vec<Box<dyn Gadget<Field64>>> {
//!         let cubic = vec![Field64::zero(), -Field64::one(), Field64::zero(), Field64::one()];
//!         vec![Box::new(PolyEval::new(cubic, 1))] // x ↦ x³ - x, called once
//!     }
//!     fn num_gadgets(&self) -> usize { 1 }
//!     fn valid(&self, g: &mut Vec<Box<dyn Gadget<Field64>>>, input: &[Field64],
//!              joint_rand: &[Field64], _shares: usize) -> Result<Vec<Field64>, FlpError> {
//!         self.valid_call_check(input, joint_rand)?;
//!         Ok(vec![g[0].eval(input)?])
//!     }
//!     fn input_len(&self) -> usize { 1 }
//!     // Per gadget: arity + degree * ((1 + calls).next_power_of_two() - 1) + 1.
//!     fn proof_len(&self) -> usize { 1 + 3 * (2 - 1) + 1 }
//!     // 1 + per gadget (arity + 1).
//!     fn verifier_len(&self) -> usize { 1 + (1 + 1) }
//!     fn joint_rand_len(&self) -> usize { 0 }
//!     fn eval_output_len(&self) -> usize { 1 }
//!     fn prove_rand_len(&self) -> usize { 1 } // the gadgets' arities
//! }
//!
//! impl Type for Vote {
//!     type Measurement = i8;
//!     type AggregateResult = i64;
//!     fn encode_measurement(&self, vote: &i8) -> Result<Vec<Field64>, FlpError> {
//!         let x = Field64::from(vote.unsigned_abs() as u64);
//!         Ok(vec![if *vote < 0 { -x } else { x }])
//!     }
//!     fn truncate(&self, input: Vec<Field64>) -> Result<Vec<Field64>, FlpError> { Ok(input) }
//!     fn decode_result(&self, sum: &[Field64], _count: usize) -> Result<i64, FlpError> {
//!         // A negative total wraps to the top of the field.
//!         let (x, p) = (u64::from(sum[0]), Field64::modulus());
//!         Ok(if x > p / 2 { -((p - x) as i64) } else { x as i64 })
//!     }
//!     fn output_len(&self) -> usize { 1 }
//! }
//!
//! /// The plugin: no parameters; a measurement is -1, 0 or 1.
//! pub struct Votes;
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct Config {}
//!
//! impl Circuit for Votes {
//!     type Config = Config;
//!     type Measurement = i8;
//!     type Type = Vote;
//!     const ALGORITHM_ID: u32 = 0xFFFF_1000; // the private range: not one of prio's
//!
//!     fn info() -> Info {
//!         Info::new("votes", "0.1.0", "Net votes of -1, 0 or +1, each proved valid.")
//!     }
//!     fn configure(params: serde_json::Value) -> Result<Config, Error> {
//!         guardian_sdk::params(params)
//!     }
//!     fn circuit(_: &Config) -> Result<Vote, Error> {
//!         Ok(Vote)
//!     }
//!     fn measurement(_: &Config, vote: i8) -> Result<i8, Error> {
//!         match vote {
//!             -1..=1 => Ok(vote),
//!             _ => Err(Error::invalid_measurement(format!("a vote is -1, 0 or 1, got {vote}"))),
//!         }
//!     }
//!     fn result(_: &Config, net: i64, _count: u64) -> Result<serde_json::Value, Error> {
//!         Ok(serde_json::json!(net))
//!     }
//! }
//!
//! guardian_sdk::export_robust_plugin!(Prio3Plugin<Votes>);
//!
//! // What the servers do, natively: shard, validate, verify, aggregate.
//! use guardian_sdk::testing::{self, Backend, Native, RunOptions};
//! let plugin = Native::<Prio3Plugin<Votes>>::new();
//! let config = plugin.configure("{}").unwrap();
//! let votes = ["1", "1", "-1", "0", "1"].map(String::from);
//! let options = RunOptions { servers: 3, chunk: 2, seed: 7 };
//! assert_eq!(testing::run_robust(&plugin, &config, &votes, options).unwrap(), serde_json::json!(2));
//!
//! // A client that shards a vote of 2 with Prio3 followed to the letter
//! // (an honest proof of an invalid input) is caught.
//! use guardian_sdk::{prio3, Rng};
//! let id = [9; 16];
//! let forged = prio3::shard_unchecked::<Votes>(&Config {}, vec![Field64::from(2)], 3, &id, &mut Rng::seed_from_u64(1)).unwrap();
//! let verdicts = testing::verify_round(&plugin, &config, &[0; 32], &[(id, forged)]).unwrap();
//! assert!(verdicts[0].is_err());
//! ```
//!
//! [Prio3]: https://datatracker.ietf.org/doc/draft-irtf-cfrg-vdaf/18/

pub use prio;

use crate::{Codec, Error, Info, Plugin, ReportId, Rng, VerifyKey, raw};
use prio::codec::{CodecError, Encode, ParameterizedDecode};
use prio::field::FieldElement;
use prio::flp::{Flp, FlpError, Gadget, Type};
use prio::vdaf::prio3::{
    Prio3, Prio3InputShare, Prio3PublicShare, Prio3VerifierMessage, Prio3VerifierShare,
    Prio3VerifyState,
};
use prio::vdaf::test_utils::TestVectorClient;
use prio::vdaf::xof::XofTurboShake128;
use prio::vdaf::{AggregateShare, Aggregator, Collector, VdafError, VerifyTransition};
use rand_core::RngCore;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

/// The application context string of every Prio3 plugin: an input of every
/// XOF call of sharding and verification (VDAF draft 18, section 4), so that
/// a report made for another application of Prio3 does not verify here.
/// Clients of other languages that shard for these plugins use it too.
pub const CTX: &[u8] = b"privacy-guardian prio3";

/// Length of a Prio3 seed (XOF seeds, joint randomness parts) and of the
/// verification key, in bytes.
const SEED: usize = 32;

/// Prio3 over a validity circuit `T`, as every plugin of this module runs
/// it: TurboSHAKE128 as the XOF, 32-byte seeds and verification key (prio's
/// `Prio3Count`, `Prio3Sum`, `Prio3SumVec` and `Prio3Histogram` are this
/// type over their circuits).
pub type Vdaf<T> = Prio3<T, XofTurboShake128, SEED>;

/// The field a circuit computes in.
pub type FieldOf<C> = <<C as Circuit>::Type as Flp>::Field;

/// A Prio3 validity circuit made into a robust plugin by [`Prio3Plugin`].
///
/// The circuit may depend on the configuration, never on the number of
/// servers (Prio3 adds that), so the aggregates' encoding does not either.
pub trait Circuit: 'static {
    /// The endpoint configuration, as [`Plugin::Config`].
    type Config: Serialize + DeserializeOwned + 'static;
    /// One user's measurement as the user writes it (JSON), as
    /// [`Plugin::Measurement`].
    type Measurement: DeserializeOwned;
    /// The validity circuit: prio's (`prio::flp::types::Sum`...) or your
    /// own.
    type Type: Type;

    /// Prio3's algorithm id, which separates the domains of the XOF calls:
    /// prio's for its own circuits (count 1, sum 2, sum vector 3, histogram
    /// 4), so that prio's clients interoperate; a value of the private range
    /// `0xFFFF0000..` for your own.
    const ALGORITHM_ID: u32;

    /// How many proofs each report carries: more proofs make a forged proof
    /// less likely to pass in a small field, at the price of longer shares.
    /// 1, as prio's own circuits.
    const PROOFS: u8 = 1;

    /// As [`Plugin::info`].
    fn info() -> Info;

    /// Checks endpoint parameters, as [`Plugin::configure`]. The adapter
    /// then builds the circuit and refuses the parameters if that fails.
    fn configure(params: serde_json::Value) -> Result<Self::Config, Error>;

    /// As [`Plugin::expected_measurement`].
    fn expected_measurement(config: &Self::Config) -> Option<String> {
        let _ = config;
        None
    }

    /// The circuit for `config`. Called for every report, so it should be
    /// cheap (prio's constructors are). Its error, for a configuration that
    /// [`Circuit::configure`] made, is a bug.
    fn circuit(config: &Self::Config) -> Result<Self::Type, Error>;

    /// The measurement as the circuit takes it. Refuse what the circuit
    /// would refuse with [`Error::invalid_measurement`] and a message a user
    /// can act on (the circuit's own refusal is reported too, in its
    /// words).
    fn measurement(
        config: &Self::Config,
        measurement: Self::Measurement,
    ) -> Result<<Self::Type as Type>::Measurement, Error>;

    /// The result, as JSON, from the circuit's aggregate result over `count`
    /// reports.
    fn result(
        config: &Self::Config,
        result: <Self::Type as Type>::AggregateResult,
        count: u64,
    ) -> Result<serde_json::Value, Error>;
}

/// The robust [`Plugin`] of a [`Circuit`]: export it with
/// `guardian_sdk::export_robust_plugin!(Prio3Plugin<MyCircuit>)`.
pub struct Prio3Plugin<C>(PhantomData<C>);

/// A vector of field elements: output shares and aggregate shares, in the
/// VDAF wire encoding (each element in order, little-endian, reduced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldVec<F>(pub Vec<F>);

impl<F: FieldElement> Codec for FieldVec<F> {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * F::ENCODED_SIZE);
        for x in &self.0 {
            // prio's field elements encode infallibly (they append their
            // bytes); the `Result` is the `Encode` trait's, for other types.
            x.encode(&mut out).expect("a field element always encodes");
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if !bytes.len().is_multiple_of(F::ENCODED_SIZE) {
            return Err(Error::invalid_share(format!(
                "{} bytes is not a whole number of {}-byte field elements (truncated?)",
                bytes.len(),
                F::ENCODED_SIZE
            )));
        }
        bytes
            .chunks_exact(F::ENCODED_SIZE)
            .map(|x| {
                F::get_decoded(x).map_err(|_| {
                    Error::invalid_share("a field element is not reduced (not below the modulus)")
                })
            })
            .collect::<Result<_, _>>()
            .map(FieldVec)
    }
}

/// The Prio3 instance of `C` for `config` and `servers` servers (2 to 254).
pub fn vdaf<C: Circuit>(config: &C::Config, servers: u32) -> Result<Vdaf<C::Type>, Error> {
    Ok(Instance::<C>::new(config, servers)?.vdaf)
}

/// A Prio3 instance and what this module needs to know of its circuit,
/// which `Prio3` keeps private.
struct Instance<C: Circuit> {
    vdaf: Vdaf<C::Type>,
    /// Whether the circuit uses joint randomness: then the public share
    /// holds every server's part, and input shares and verifier shares one
    /// seed more.
    joint_rand: bool,
    /// Length in bytes of the leader's (server 0's) input share.
    leader_share_len: usize,
}

impl<C: Circuit> Instance<C> {
    fn new(config: &C::Config, servers: u32) -> Result<Self, Error> {
        let servers = match u8::try_from(servers) {
            Ok(n @ 2..=254) => n,
            _ => {
                return Err(Error::internal(format!(
                    "Prio3 serves 2 to 254 servers, not {servers}"
                )));
            }
        };
        let circuit = C::circuit(config).map_err(|e| {
            Error::invalid_state(format!(
                "the configuration does not make a circuit: {}",
                e.message()
            ))
        })?;
        let joint_rand = circuit.joint_rand_len() > 0;
        let leader_share_len = (circuit.input_len() + circuit.proof_len() * usize::from(C::PROOFS))
            * FieldOf::<C>::ENCODED_SIZE
            + if joint_rand { SEED } else { 0 };
        let vdaf = Prio3::new(servers, C::PROOFS, C::ALGORITHM_ID, circuit)
            .map_err(|e| Error::internal(format!("cannot make the Prio3 instance: {e}")))?;
        Ok(Instance {
            vdaf,
            joint_rand,
            leader_share_len,
        })
    }

    /// Length in bytes of the input share of server `server_index`.
    fn input_share_len(&self, server_index: u32) -> usize {
        match server_index {
            0 => self.leader_share_len,
            _ => SEED + if self.joint_rand { SEED } else { 0 },
        }
    }

    /// A verification state that only serves as the decoding parameter of
    /// verifier shares: their encoding depends on nothing but the circuit
    /// (the verifier length and whether a joint randomness part follows).
    fn verifier_share_param(&self) -> Result<Prio3VerifyState<FieldOf<C>, SEED>, Error> {
        let helper_state = vec![0; self.input_share_len(1)];
        Prio3VerifyState::get_decoded_with_param(&(&self.vdaf, 1), &helper_state)
            .map_err(|e| Error::internal(format!("cannot make a verification state: {e}")))
    }
}

/// Bytes of a value prio encodes; encoding only fails on a bug.
fn encoded(value: &impl Encode) -> Result<Vec<u8>, Error> {
    value
        .get_encoded()
        .map_err(|e| Error::internal(format!("cannot encode: {e}")))
}

/// Prio's sharding of an encoded measurement, with randomness from `rng`:
/// one 32-byte seed per server, and as many again for the joint randomness
/// blinds when the circuit uses joint randomness (what `Prio3::shard` draws
/// from the system).
fn shard_with<T: Type>(
    vdaf: &Vdaf<T>,
    joint_rand: bool,
    measurement: &T::Measurement,
    report_id: &ReportId,
    rng: &mut Rng,
) -> Result<raw::Report, Error> {
    let servers = prio::vdaf::Vdaf::num_aggregators(vdaf);
    let seeds = servers * if joint_rand { 2 } else { 1 };
    let mut random = vec![0; seeds * SEED];
    rng.fill_bytes(&mut random);
    let (public_share, input_shares) = vdaf
        .shard_with_random(CTX, measurement, report_id, &random)
        .map_err(|e| match e {
            VdafError::Flp(FlpError::Encode(why)) => Error::invalid_measurement(why),
            e => Error::internal(format!("cannot shard: {e}")),
        })?;
    Ok(raw::Report {
        public_share: encoded(&public_share)?,
        shares: input_shares.iter().map(encoded).collect::<Result<_, _>>()?,
    })
}

impl<C: Circuit> Plugin for Prio3Plugin<C> {
    type Config = C::Config;
    type Measurement = C::Measurement;
    type Share = FieldVec<FieldOf<C>>;
    type Aggregate = FieldVec<FieldOf<C>>;

    fn info() -> Info {
        C::info()
    }

    fn configure(params: serde_json::Value) -> Result<C::Config, Error> {
        let config = C::configure(params)?;
        C::circuit(&config).map_err(|e| Error::invalid_params(e.message()))?;
        Ok(config)
    }

    fn expected_measurement(config: &C::Config) -> Option<String> {
        C::expected_measurement(config)
    }

    fn shard(
        _: &C::Config,
        _: C::Measurement,
        _: u32,
        _: &mut Rng,
    ) -> Result<Vec<Self::Share>, Error> {
        Err(robust_only())
    }

    fn validate(_: &C::Config, _: &Self::Share, _: u32) -> Result<(), Error> {
        Err(robust_only())
    }

    fn init(config: &C::Config) -> Self::Aggregate {
        // `configure` made sure the circuit builds; were it not so,
        // `accumulate` and `unshard` would say why.
        let len = C::circuit(config).map_or(0, |c| c.output_len());
        FieldVec(vec![FieldOf::<C>::zero(); len])
    }

    fn accumulate(
        _: &C::Config,
        agg: &mut Self::Aggregate,
        share: &Self::Share,
    ) -> Result<(), Error> {
        if share.0.len() != agg.0.len() {
            return Err(Error::invalid_share(format!(
                "an output share has {} elements, the aggregate {}",
                share.0.len(),
                agg.0.len()
            )));
        }
        agg.0.iter_mut().zip(&share.0).for_each(|(a, s)| *a += *s);
        Ok(())
    }

    fn merge(
        config: &C::Config,
        agg: &mut Self::Aggregate,
        other: Self::Aggregate,
    ) -> Result<(), Error> {
        Self::accumulate(config, agg, &other).map_err(|e| Error::invalid_state(e.message()))
    }

    fn unshard(
        config: &C::Config,
        aggs: Vec<Self::Aggregate>,
        count: u64,
    ) -> Result<serde_json::Value, Error> {
        // Aggregate shares are vectors of the circuit's output length, which
        // does not depend on the number of servers: any instance decodes
        // them.
        let vdaf = vdaf::<C>(config, 2)?;
        if let Some(bad) = aggs.iter().find(|a| a.0.len() != vdaf.output_len()) {
            return Err(Error::invalid_state(format!(
                "an aggregate share has {} elements, expected {}",
                bad.0.len(),
                vdaf.output_len()
            )));
        }
        let count = usize::try_from(count)
            .map_err(|_| Error::internal(format!("{count} reports are too many to count")))?;
        let result = vdaf
            .unshard(
                &(),
                aggs.into_iter().map(|a| AggregateShare::from(a.0)),
                count,
            )
            .map_err(|e| Error::invalid_state(format!("cannot unshard: {e}")))?;
        C::result(config, result, count as u64)
    }

    fn shard_report(
        config: &C::Config,
        measurement: C::Measurement,
        servers: u32,
        report_id: &ReportId,
        rng: &mut Rng,
    ) -> Result<raw::Report, Error> {
        let instance = Instance::<C>::new(config, servers)?;
        let measurement = C::measurement(config, measurement)?;
        shard_with(
            &instance.vdaf,
            instance.joint_rand,
            &measurement,
            report_id,
            rng,
        )
    }

    fn validate_report(
        config: &C::Config,
        public_share: &[u8],
        input_share: &[u8],
        server_index: u32,
    ) -> Result<(), Error> {
        // The number of servers is not known here; every count that has a
        // server `server_index` serves to read lengths.
        let instance = Instance::<C>::new(config, server_index.saturating_add(1).max(2))?;
        let expected = instance.input_share_len(server_index);
        if input_share.len() != expected {
            return Err(Error::invalid_share(format!(
                "the share for server {server_index} must be {expected} bytes, got {}",
                input_share.len()
            )));
        }
        if instance.joint_rand {
            let parts = public_share.len() / SEED;
            if !public_share.len().is_multiple_of(SEED)
                || !(2..=254).contains(&parts)
                || parts <= server_index as usize
            {
                return Err(Error::invalid_share(format!(
                    "the public share must hold one {SEED}-byte part per server, got {} bytes",
                    public_share.len()
                )));
            }
        } else if !public_share.is_empty() {
            return Err(Error::invalid_share(format!(
                "the public share must be empty, got {} bytes",
                public_share.len()
            )));
        }
        Ok(())
    }

    fn verify_init(
        config: &C::Config,
        key: &VerifyKey,
        servers: u32,
        server_index: u32,
        report_id: &ReportId,
        public_share: &[u8],
        input_share: &[u8],
    ) -> Result<raw::Started, Error> {
        let Instance { vdaf, .. } = Instance::<C>::new(config, servers)?;
        let index = server_index as usize;
        let public_share = match Prio3PublicShare::get_decoded_with_param(&vdaf, public_share) {
            Ok(p) => p,
            Err(e) => return Ok(invalid("the public share", &e)),
        };
        let input_share =
            match Prio3InputShare::get_decoded_with_param(&(&vdaf, index), input_share) {
                Ok(s) => s,
                Err(e) => return Ok(invalid("the share", &e)),
            };
        match vdaf.verify_init(key, CTX, index, &(), report_id, &public_share, &input_share) {
            Ok((state, verifier_share)) => Ok(raw::Started::Ready {
                state: encoded(&state)?,
                verifier_share: encoded(&verifier_share)?,
            }),
            Err(e) => Ok(raw::Started::Invalid(format!(
                "the proof cannot be checked: {e}"
            ))),
        }
    }

    fn combine(
        config: &C::Config,
        public_share: &[u8],
        verifier_shares: &[&[u8]],
    ) -> Result<Result<Vec<u8>, String>, Error> {
        let servers = u32::try_from(verifier_shares.len()).unwrap_or(u32::MAX);
        let instance = Instance::<C>::new(config, servers)?;
        let param = instance.verifier_share_param()?;
        let vdaf = &instance.vdaf;
        if Prio3PublicShare::get_decoded_with_param(vdaf, public_share).is_err() {
            return Ok(Err("the public share does not decode".to_owned()));
        }
        let mut shares = Vec::with_capacity(verifier_shares.len());
        for (server, bytes) in verifier_shares.iter().enumerate() {
            match Prio3VerifierShare::get_decoded_with_param(&param, bytes) {
                Ok(share) => shares.push(share),
                Err(e) => {
                    return Ok(Err(format!(
                        "the verifier share of server {server} does not decode: {e}"
                    )));
                }
            }
        }
        // Server j's verify-finish succeeds only if the joint randomness
        // seed it derived in verify-init (from the public share's parts,
        // its own part in place of part j) is the message's (from every
        // server's own part, which ends its verifier share). With n >= 2
        // servers that holds on every server exactly when the public share
        // is every server's own part, in order.
        if instance.joint_rand {
            let own_parts = verifier_shares
                .iter()
                .map(|s| s.get(s.len().saturating_sub(SEED)..).unwrap_or_default());
            if let Some(server) = public_share
                .chunks_exact(SEED)
                .zip(own_parts)
                .position(|(public, own)| public != own)
            {
                return Ok(Err(format!(
                    "the public share does not hold the joint randomness part of server {server}'s share"
                )));
            }
        }
        match vdaf.verifier_shares_to_message(CTX, &(), shares) {
            Ok(message) => Ok(Ok(encoded(&message)?)),
            Err(e) => Ok(Err(format!("the proof does not hold: {e}"))),
        }
    }

    fn verify_finish(
        config: &C::Config,
        servers: u32,
        server_index: u32,
        state: &[u8],
        message: &[u8],
    ) -> Result<Self::Share, Error> {
        let Instance { vdaf, .. } = Instance::<C>::new(config, servers)?;
        let state =
            Prio3VerifyState::get_decoded_with_param(&(&vdaf, server_index as usize), state)
                .map_err(|e| {
                    Error::invalid_state(format!("a verification state does not decode: {e}"))
                })?;
        let message =
            Prio3VerifierMessage::get_decoded_with_param(&state, message).map_err(|e| {
                Error::invalid_state(format!("a verifier message does not decode: {e}"))
            })?;
        match vdaf.verify_next(CTX, state, message) {
            Ok(VerifyTransition::Finish(output)) => Ok(FieldVec(output.as_ref().to_vec())),
            Ok(VerifyTransition::Continue(..)) => Err(Error::internal(
                "Prio3 asked for a second round of verification",
            )),
            Err(e) => Err(Error::invalid_state(format!(
                "the message does not match the report's verification state: {e}"
            ))),
        }
    }
}

/// The answer of a robust plugin's contract-0.1 functions.
fn robust_only() -> Error {
    Error::internal(
        "this plugin is robust: it shards and validates reports with their id and public share \
         (guardian:plugin@0.2.0)",
    )
}

/// A report that cannot be valid because `what` does not decode.
fn invalid(what: &str, e: &CodecError) -> raw::Started {
    raw::Started::Invalid(format!("{what} does not decode: {e}"))
}

/// Shards an already encoded measurement, valid or not, exactly as Prio3
/// shards a measurement (the proof is made honestly, of whatever `encoded`
/// is): what a client that skips the circuit's encoding can send. For
/// tests: a circuit is sound when the servers reject such a report for
/// every invalid `encoded`. `encoded` must have the circuit's input length.
pub fn shard_unchecked<C: Circuit>(
    config: &C::Config,
    encoded: Vec<FieldOf<C>>,
    servers: u32,
    report_id: &ReportId,
    rng: &mut Rng,
) -> Result<raw::Report, Error> {
    let instance = Instance::<C>::new(config, servers)?;
    let circuit = Unchecked(C::circuit(config)?);
    // The same algorithm id, circuit lengths and XOF calls: the report is
    // byte for byte what `Vdaf<C::Type>` would make of the same input.
    let vdaf = Prio3::new(
        u8::try_from(servers).unwrap_or(u8::MAX),
        C::PROOFS,
        C::ALGORITHM_ID,
        circuit,
    )
    .map_err(|e| Error::internal(format!("cannot make the Prio3 instance: {e}")))?;
    shard_with(&vdaf, instance.joint_rand, &encoded, report_id, rng)
}

/// A circuit whose measurement is its encoding, taken as it is: `T` in all
/// else. Prio3 over it proves whatever it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unchecked<T>(T);

impl<T: Type> Flp for Unchecked<T> {
    type Field = T::Field;

    fn gadget(&self) -> Vec<Box<dyn Gadget<T::Field>>> {
        self.0.gadget()
    }
    fn num_gadgets(&self) -> usize {
        self.0.num_gadgets()
    }
    fn valid(
        &self,
        gadgets: &mut Vec<Box<dyn Gadget<T::Field>>>,
        input: &[T::Field],
        joint_rand: &[T::Field],
        num_shares: usize,
    ) -> Result<Vec<T::Field>, FlpError> {
        self.0.valid(gadgets, input, joint_rand, num_shares)
    }
    fn input_len(&self) -> usize {
        self.0.input_len()
    }
    fn proof_len(&self) -> usize {
        self.0.proof_len()
    }
    fn verifier_len(&self) -> usize {
        self.0.verifier_len()
    }
    fn joint_rand_len(&self) -> usize {
        self.0.joint_rand_len()
    }
    fn eval_output_len(&self) -> usize {
        self.0.eval_output_len()
    }
    fn prove_rand_len(&self) -> usize {
        self.0.prove_rand_len()
    }
    fn query_rand_len(&self) -> usize {
        self.0.query_rand_len()
    }
    fn prove(
        &self,
        input: &[T::Field],
        prove_rand: &[T::Field],
        joint_rand: &[T::Field],
    ) -> Result<Vec<T::Field>, FlpError> {
        self.0.prove(input, prove_rand, joint_rand)
    }
}

impl<T: Type> Type for Unchecked<T> {
    type Measurement = Vec<T::Field>;
    type AggregateResult = T::AggregateResult;

    fn encode_measurement(&self, encoded: &Vec<T::Field>) -> Result<Vec<T::Field>, FlpError> {
        if encoded.len() != self.0.input_len() {
            return Err(FlpError::Encode(format!(
                "the circuit's input is {} field elements, got {}",
                self.0.input_len(),
                encoded.len()
            )));
        }
        Ok(encoded.clone())
    }
    fn truncate(&self, input: Vec<T::Field>) -> Result<Vec<T::Field>, FlpError> {
        self.0.truncate(input)
    }
    fn decode_result(
        &self,
        data: &[T::Field],
        num_measurements: usize,
    ) -> Result<T::AggregateResult, FlpError> {
        self.0.decode_result(data, num_measurements)
    }
    fn output_len(&self) -> usize {
        self.0.output_len()
    }
}

/// Adds `delta` to element `index` of the leader's (server 0's) measurement
/// share in `report`, a report of `Prio3Plugin<C>` for `config`: the
/// measurement moves by `delta` in that element while the proof and the
/// joint randomness stay those of the original, which is what a client that
/// tampers after proving sends. For tests.
pub fn add_to_leader_measurement<C: Circuit>(
    config: &C::Config,
    report: &mut raw::Report,
    index: usize,
    delta: FieldOf<C>,
) -> Result<(), Error> {
    let servers = u32::try_from(report.shares.len()).unwrap_or(u32::MAX);
    let Instance { vdaf, .. } = Instance::<C>::new(config, servers)?;
    let leader = Prio3InputShare::get_decoded_with_param(&(&vdaf, 0), &report.shares[0])
        .map_err(|e| Error::invalid_share(format!("the leader's share does not decode: {e}")))?;
    let Prio3InputShare::Leader {
        mut measurement_share,
        proofs_share,
        joint_rand_blind,
    } = leader
    else {
        return Err(Error::internal("server 0's share is not a leader's"));
    };
    let element = measurement_share.get_mut(index).ok_or_else(|| {
        Error::invalid_measurement(format!("the measurement has no element {index}"))
    })?;
    *element += delta;
    report.shares[0] = encoded(&Prio3InputShare::Leader {
        measurement_share,
        proofs_share,
        joint_rand_blind,
    })?;
    Ok(())
}

/// Interoperability with prio's own client and aggregators (native builds
/// only: prio's client draws its randomness from the system, which a plugin
/// never does).
#[cfg(not(target_arch = "wasm32"))]
pub mod interop {
    use super::{CTX, Vdaf, encoded};
    use crate::{Error, ReportId, VerifyKey, raw};
    use prio::codec::ParameterizedDecode;
    use prio::flp::Type;
    use prio::vdaf::prio3::{Prio3InputShare, Prio3PublicShare};
    use prio::vdaf::{Aggregator, Client, Collector, Vdaf as _, VerifyTransition};

    /// Shards `measurement` with prio's `Client::shard` (its own randomness,
    /// [`CTX`], `report_id` as nonce) into a report in the wire encoding the
    /// plugins of [`super`] take.
    pub fn shard<T: Type>(
        vdaf: &Vdaf<T>,
        measurement: &T::Measurement,
        report_id: &ReportId,
    ) -> Result<raw::Report, Error> {
        let (public_share, input_shares) = vdaf
            .shard(CTX, measurement, report_id)
            .map_err(|e| Error::invalid_measurement(format!("prio cannot shard: {e}")))?;
        Ok(raw::Report {
            public_share: encoded(&public_share)?,
            shares: input_shares.iter().map(encoded).collect::<Result<_, _>>()?,
        })
    }

    /// Verifies every report (in the plugins' wire encoding) with prio's
    /// `verify_init`, `verifier_shares_to_message` and `verify_next` on
    /// every aggregator, aggregates the output shares and unshards them with
    /// prio's collector. Fails if a report does not verify.
    pub fn aggregate<T: Type>(
        vdaf: &Vdaf<T>,
        key: &VerifyKey,
        reports: &[(ReportId, raw::Report)],
    ) -> Result<T::AggregateResult, Error> {
        let servers = vdaf.num_aggregators();
        let mut outputs = vec![Vec::new(); servers];
        for (n, (id, report)) in reports.iter().enumerate() {
            let fail = |what: &str, e: &dyn std::fmt::Display| {
                Error::invalid_share(format!("report {n}: {what}: {e}"))
            };
            let public_share = Prio3PublicShare::get_decoded_with_param(vdaf, &report.public_share)
                .map_err(|e| fail("public share", &e))?;
            let mut states = Vec::with_capacity(servers);
            let mut verifier_shares = Vec::with_capacity(servers);
            for (server, bytes) in report.shares.iter().enumerate() {
                let share = Prio3InputShare::get_decoded_with_param(&(vdaf, server), bytes)
                    .map_err(|e| fail("share", &e))?;
                let (state, verifier_share) = vdaf
                    .verify_init(key, CTX, server, &(), id, &public_share, &share)
                    .map_err(|e| fail("verify_init", &e))?;
                states.push(state);
                verifier_shares.push(verifier_share);
            }
            let message = vdaf
                .verifier_shares_to_message(CTX, &(), verifier_shares)
                .map_err(|e| fail("verifier_shares_to_message", &e))?;
            for (server, state) in states.into_iter().enumerate() {
                match vdaf.verify_next(CTX, state, message.clone()) {
                    Ok(VerifyTransition::Finish(output)) => outputs[server].push(output),
                    Ok(VerifyTransition::Continue(..)) => {
                        return Err(fail("verify_next", &"a second round"));
                    }
                    Err(e) => return Err(fail("verify_next", &e)),
                }
            }
        }
        let aggregates = outputs
            .into_iter()
            .map(|o| vdaf.aggregate(&(), o))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid_state(format!("aggregate: {e}")))?;
        vdaf.unshard(&(), aggregates, reports.len())
            .map_err(|e| Error::invalid_state(format!("unshard: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, Backend, Native, RunOptions};
    use prio::field::Field64;
    use prio::flp::gadgets::Mul;
    use serde::Deserialize;

    /// A bit, like prio's `Count`, but with one element of joint randomness
    /// that the circuit ignores: a proof then passes whatever joint
    /// randomness each server derived, which is what a forged proof can
    /// achieve with a real circuit. Only `combine`'s check of the public
    /// share stands between such a report and servers that disagree.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct LooseBit;

    impl Flp for LooseBit {
        type Field = Field64;
        fn gadget(&self) -> Vec<Box<dyn Gadget<Field64>>> {
            vec![Box::new(Mul::new(1))]
        }
        fn num_gadgets(&self) -> usize {
            1
        }
        fn valid(
            &self,
            g: &mut Vec<Box<dyn Gadget<Field64>>>,
            input: &[Field64],
            joint_rand: &[Field64],
            _: usize,
        ) -> Result<Vec<Field64>, FlpError> {
            self.valid_call_check(input, joint_rand)?;
            Ok(vec![g[0].eval(&[input[0], input[0]])? - input[0]])
        }
        fn input_len(&self) -> usize {
            1
        }
        fn proof_len(&self) -> usize {
            5
        }
        fn verifier_len(&self) -> usize {
            4
        }
        fn joint_rand_len(&self) -> usize {
            1
        }
        fn eval_output_len(&self) -> usize {
            1
        }
        fn prove_rand_len(&self) -> usize {
            2
        }
    }

    impl Type for LooseBit {
        type Measurement = bool;
        type AggregateResult = u64;
        fn encode_measurement(&self, bit: &bool) -> Result<Vec<Field64>, FlpError> {
            Ok(vec![Field64::from(u64::from(*bit))])
        }
        fn truncate(&self, input: Vec<Field64>) -> Result<Vec<Field64>, FlpError> {
            Ok(input)
        }
        fn decode_result(&self, data: &[Field64], _: usize) -> Result<u64, FlpError> {
            Ok(u64::from(data[0]))
        }
        fn output_len(&self) -> usize {
            1
        }
    }

    struct Loose;

    #[derive(Serialize, Deserialize)]
    struct Config {}

    impl Circuit for Loose {
        type Config = Config;
        type Measurement = bool;
        type Type = LooseBit;
        const ALGORITHM_ID: u32 = 0xFFFF_FFF0;
        fn info() -> Info {
            Info::new("loose", "0.0.0", "A test circuit.")
        }
        fn configure(params: serde_json::Value) -> Result<Config, Error> {
            crate::params(params)
        }
        fn circuit(_: &Config) -> Result<LooseBit, Error> {
            Ok(LooseBit)
        }
        fn measurement(_: &Config, bit: bool) -> Result<bool, Error> {
            Ok(bit)
        }
        fn result(_: &Config, count: u64, _: u64) -> Result<serde_json::Value, Error> {
            Ok(serde_json::json!(count))
        }
    }

    fn plugin() -> (Native<Prio3Plugin<Loose>>, Vec<u8>) {
        let plugin = Native::new();
        let config = plugin.configure("{}").unwrap();
        (plugin, config)
    }

    #[test]
    fn combine_refuses_a_public_share_that_is_not_the_servers_parts() {
        let (plugin, config) = plugin();
        let measurements = ["true", "false", "true"].map(String::from);
        let options = RunOptions {
            servers: 3,
            chunk: 2,
            seed: 1,
        };
        let result = testing::run_robust(&plugin, &config, &measurements, options);
        assert_eq!(result.unwrap(), serde_json::json!(2));
        for part in 0..3 {
            let id = testing::report_id(1, part);
            let mut report = plugin
                .shard_report(&config, "true", 3, &id, &testing::seed(1, part))
                .unwrap();
            report.public_share[32 * part as usize] ^= 1;
            // Without the check, the proof passes and verify-finish fails on
            // every server but `part`: `verify_round` reports that as an
            // error, not as a rejection.
            let verdicts =
                testing::verify_round(&plugin, &config, &testing::verify_key(1), &[(id, report)])
                    .unwrap();
            let why = verdicts[0].as_ref().unwrap_err();
            assert!(why.contains(&format!("server {part}'s share")), "{why}");
        }
    }

    #[test]
    fn reports_that_do_not_decode_are_invalid_not_errors() {
        let (plugin, config) = plugin();
        let id = [3; 16];
        let report = plugin
            .shard_report(&config, "true", 2, &id, &[4; 32])
            .unwrap();
        let key = [5; 32];
        let ids = [id, id, id].concat();
        let public_shares = raw::Batch::pack([
            report.public_share.clone(),
            report.public_share[1..].to_vec(),
            report.public_share.clone(),
        ]);
        // Server 0: a good share, a good share under a short public share,
        // and a share that is not a leader's share at all.
        let shares = raw::Batch::pack([&report.shares[0], &report.shares[0], &report.shares[1]]);
        let started = plugin
            .verify_init(&config, &key, 2, 0, &ids, &public_shares, &shares)
            .unwrap();
        assert!(matches!(started[0], raw::Started::Ready { .. }));
        assert!(matches!(&started[1], raw::Started::Invalid(why) if why.contains("public share")));
        assert!(
            matches!(&started[2], raw::Started::Invalid(why) if why.contains("share does not decode"))
        );
        // What is wrong with the whole call is an error.
        let one = raw::Batch::pack([&report.shares[0]]);
        let public = raw::Batch::pack([&report.public_share]);
        for (result, kind) in [
            (
                plugin.verify_init(&config, &key[..31], 2, 0, &id, &public, &one),
                "invalid_state",
            ),
            (
                plugin.verify_init(&config, &key, 2, 2, &id, &public, &one),
                "internal",
            ),
            (
                plugin.verify_init(&config, &key, 255, 0, &id, &public, &one),
                "internal",
            ),
            (
                plugin.verify_init(&config, &key, 2, 0, &ids, &public, &one),
                "invalid_state",
            ),
            (
                plugin.verify_init(b"nope", &key, 2, 0, &id, &public, &one),
                "invalid_state",
            ),
        ] {
            assert_eq!(result.unwrap_err().kind(), kind);
        }
        let result = plugin.combine(&config, &public, std::slice::from_ref(&one));
        assert_eq!(result.unwrap_err().kind(), "internal");
        let result = plugin.combine(&config, &public, &[one.clone(), raw::Batch::default()]);
        assert_eq!(result.unwrap_err().kind(), "invalid_state");
    }

    #[test]
    fn verify_finish_refuses_a_message_of_another_report() {
        let (plugin, config) = plugin();
        let key = testing::verify_key(2);
        let reports: Vec<_> = [0, 1]
            .map(|i| {
                let id = testing::report_id(2, i);
                let report = plugin
                    .shard_report(&config, "true", 2, &id, &testing::seed(2, i))
                    .unwrap();
                (id, report)
            })
            .to_vec();
        let ids: Vec<u8> = reports.iter().flat_map(|(id, _)| *id).collect();
        let public = raw::Batch::pack(reports.iter().map(|(_, r)| &r.public_share));
        let mut states = Vec::new();
        let mut verifier_shares = Vec::new();
        for server in 0..2 {
            let shares = raw::Batch::pack(reports.iter().map(|(_, r)| &r.shares[server]));
            let started = plugin
                .verify_init(&config, &key, 2, server as u32, &ids, &public, &shares)
                .unwrap();
            let (s, v): (Vec<_>, Vec<_>) = started
                .into_iter()
                .map(|s| match s {
                    raw::Started::Ready {
                        state,
                        verifier_share,
                    } => (state, verifier_share),
                    raw::Started::Invalid(why) => panic!("{why}"),
                })
                .unzip();
            states.push(s);
            verifier_shares.push(raw::Batch::pack(v));
        }
        let messages: Vec<Vec<u8>> = plugin
            .combine(&config, &public, &verifier_shares)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let swapped = raw::Batch::pack([&messages[1], &messages[0]]);
        let result = plugin.verify_finish(&config, 2, 0, &raw::Batch::pack(&states[0]), &swapped);
        assert_eq!(result.unwrap_err().kind(), "invalid_state");
        let right = raw::Batch::pack(&messages);
        let outputs = plugin
            .verify_finish(&config, 2, 0, &raw::Batch::pack(&states[0]), &right)
            .unwrap();
        assert_eq!(outputs.len(), 2);
    }

    #[test]
    fn aggregates_do_not_depend_on_the_number_of_servers() {
        // `accumulate`, `merge` and `unshard` read output and aggregate
        // shares without knowing the number of servers: a vector of the
        // circuit's output length, which Prio3 does not change with it.
        let config = Config {};
        for servers in [2, 3, 17, 254] {
            let vdaf = vdaf::<Loose>(&config, servers).unwrap();
            assert_eq!(vdaf.output_len(), 1);
        }
        let (plugin, config) = plugin();
        let measurements = ["true", "true", "false", "true"].map(String::from);
        for servers in [2, 5, 254] {
            let options = RunOptions {
                servers,
                chunk: 3,
                seed: 3,
            };
            let result = testing::run_robust(&plugin, &config, &measurements, options);
            assert_eq!(result.unwrap(), serde_json::json!(3), "{servers} servers");
        }
    }

    #[test]
    fn field_vectors_use_the_vdaf_encoding_and_refuse_unreduced_elements() {
        let v = FieldVec(vec![Field64::from(1), -Field64::from(1)]);
        let bytes = v.encode();
        let prio_bytes = AggregateShare::from(v.0.clone()).get_encoded().unwrap();
        assert_eq!(bytes, prio_bytes);
        assert_eq!(FieldVec::<Field64>::decode(&bytes).unwrap(), v);
        assert_eq!(
            FieldVec::<Field64>::decode(&bytes[1..]).unwrap_err().kind(),
            "invalid_share"
        );
        let err = FieldVec::<Field64>::decode(&[0xff; 8]).unwrap_err();
        assert!(err.message().contains("not reduced"), "{err}");
    }
}
