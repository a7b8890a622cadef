//! How shares and aggregates become bytes.

use crate::Error;

/// Encoding of a share or an aggregate. Decoding sees bytes from the network
/// (shares) or from the host's storage (aggregates), so it must reject
/// anything malformed with a clear message instead of panicking.
pub trait Codec: Sized {
    /// The bytes of `self`.
    fn encode(&self) -> Vec<u8>;
    /// Parses bytes produced by [`Codec::encode`]. Errors are reported as
    /// [`Error::invalid_share`]; the SDK re-labels them for aggregates.
    fn decode(bytes: &[u8]) -> Result<Self, Error>;
}

/// A vector of ring elements: little-endian `u64`s, 8 bytes each.
impl Codec for Vec<u64> {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * 8);
        for x in self {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if !bytes.len().is_multiple_of(8) {
            return Err(Error::invalid_share(format!(
                "share is {} bytes long, which is not a whole number of 8-byte elements (truncated?)",
                bytes.len()
            )));
        }
        Ok(bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_vectors_round_trip_and_reject_ragged_bytes() {
        let v = vec![0, 1, u64::MAX, 0x0102_0304_0506_0708];
        let bytes = v.encode();
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[24..], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(Vec::<u64>::decode(&bytes).unwrap(), v);
        let err = Vec::<u64>::decode(&bytes[..31]).unwrap_err();
        assert!(matches!(err, Error::InvalidShare(_)));
        assert!(err.message().contains("31 bytes"), "{err}");
    }
}
