//! The plugin's only source of randomness: ChaCha20 seeded by the host.

use crate::Error;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// A cryptographically secure generator seeded from the 32-byte seed the
/// host passes to `shard` and `release`. Deterministic given the seed, so a
/// host that stores the seed can reproduce a release exactly.
pub struct Rng(ChaCha20Rng);

impl Rng {
    /// Seeds from the host's seed, which must be 32 bytes.
    pub fn from_seed_bytes(seed: &[u8]) -> Result<Rng, Error> {
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| Error::internal(format!("seed must be 32 bytes, got {}", seed.len())))?;
        Ok(Rng(ChaCha20Rng::from_seed(seed)))
    }

    /// A generator for tests and examples; never for real shares.
    pub fn seed_from_u64(seed: u64) -> Rng {
        Rng(ChaCha20Rng::seed_from_u64(seed))
    }
}

impl RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_must_be_32_bytes_and_is_deterministic() {
        assert!(Rng::from_seed_bytes(&[0; 31]).is_err());
        let a = Rng::from_seed_bytes(&[7; 32]).unwrap().next_u64();
        let b = Rng::from_seed_bytes(&[7; 32]).unwrap().next_u64();
        let c = Rng::from_seed_bytes(&[8; 32]).unwrap().next_u64();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
