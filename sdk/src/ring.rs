//! Wrapping-`u64` vector arithmetic and additive secret sharing.
//!
//! The ring is Z/2^64: addition wraps. A measurement vector `x` is split into
//! `n` shares by drawing `n - 1` uniformly random vectors and setting the last
//! share to `x` minus their sum; any `n - 1` shares are then uniformly random
//! and independent of `x`, and all `n` add up to `x`.

use crate::{Error, Rng};
use rand_core::RngCore;

/// Splits `values` into `servers` additive shares (server-index order).
/// `servers` must be at least 2; the SDK's byte layer checks that before
/// calling a plugin's `shard`.
pub fn split(values: &[u64], servers: u32, rng: &mut Rng) -> Vec<Vec<u64>> {
    let servers = servers.max(2) as usize;
    let mut shares = Vec::with_capacity(servers);
    let mut last = values.to_vec();
    for _ in 1..servers {
        let share: Vec<u64> = (0..values.len()).map(|_| rng.next_u64()).collect();
        for (l, s) in last.iter_mut().zip(&share) {
            *l = l.wrapping_sub(*s);
        }
        shares.push(share);
    }
    shares.push(last);
    shares
}

/// `agg += share`, element-wise and wrapping; the lengths must match.
pub fn add_assign(agg: &mut [u64], share: &[u64]) -> Result<(), Error> {
    check_len(share, agg.len())?;
    for (a, s) in agg.iter_mut().zip(share) {
        *a = a.wrapping_add(*s);
    }
    Ok(())
}

/// Fails with [`Error::invalid_share`] unless `share` has `expected` elements.
pub fn check_len(share: &[u64], expected: usize) -> Result<(), Error> {
    if share.len() == expected {
        Ok(())
    } else {
        Err(Error::invalid_share(format!(
            "share has {} elements, the endpoint expects {expected}",
            share.len()
        )))
    }
}

/// Adds every server's aggregate share (each of `len` elements): the
/// unsharded aggregate. A share of another length is reported as
/// [`Error::invalid_state`] since it came from a server, not a user.
pub fn sum_all(aggs: &[Vec<u64>], len: usize) -> Result<Vec<u64>, Error> {
    let mut total = vec![0u64; len];
    for (i, agg) in aggs.iter().enumerate() {
        if agg.len() != len {
            return Err(Error::invalid_state(format!(
                "aggregate share of server {i} has {} elements, expected {len}",
                agg.len()
            )));
        }
        for (t, a) in total.iter_mut().zip(agg) {
            *t = t.wrapping_add(*a);
        }
    }
    Ok(total)
}

/// [`sum_all`] read as two's-complement signed integers: the result of a
/// sum whose inputs (or noise) may be negative.
pub fn sum_all_signed(aggs: &[Vec<u64>], len: usize) -> Result<Vec<i64>, Error> {
    Ok(sum_all(aggs, len)?.into_iter().map(to_signed).collect())
}

/// Reads a ring element as a two's-complement signed integer.
pub fn to_signed(x: u64) -> i64 {
    x as i64
}

/// Maps a signed integer into the ring (two's complement).
pub fn from_signed(x: i64) -> u64 {
    x as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert_eq, proptest};

    proptest! {
        #[test]
        fn shares_add_up_to_the_values(values in proptest::collection::vec(any::<u64>(), 0..20), servers in 2u32..6, seed in any::<u64>()) {
            let mut rng = Rng::seed_from_u64(seed);
            let shares = split(&values, servers, &mut rng);
            prop_assert_eq!(shares.len(), servers as usize);
            prop_assert_eq!(sum_all(&shares, values.len()).unwrap(), values);
        }
    }

    #[test]
    fn add_assign_wraps_and_checks_lengths() {
        let mut agg = vec![u64::MAX, 1];
        add_assign(&mut agg, &[2, 2]).unwrap();
        assert_eq!(agg, vec![1, 3]);
        let err = add_assign(&mut agg, &[1]).unwrap_err();
        assert_eq!(
            err,
            Error::invalid_share("share has 1 elements, the endpoint expects 2")
        );
    }

    #[test]
    fn signed_values_survive_the_ring() {
        for x in [i64::MIN, -5, 0, 7, i64::MAX] {
            assert_eq!(to_signed(from_signed(x)), x);
        }
        assert_eq!(to_signed(from_signed(-5).wrapping_add(from_signed(3))), -2);
        let aggs = [vec![from_signed(-5), 1], vec![3, from_signed(i64::MIN)]];
        assert_eq!(sum_all_signed(&aggs, 2).unwrap(), vec![-2, i64::MIN + 1]);
        assert!(matches!(
            sum_all_signed(&aggs, 3),
            Err(Error::InvalidState(_))
        ));
    }
}
