//! The cryptography behind `jsonwebtoken`: its aws-lc provider, except that RSA
//! signatures are verified with keys parsed once and kept.
//!
//! aws-lc's provider builds the RSA key from its modulus and exponent on every
//! verify, Montgomery set-up included, which costs about as much as the signature
//! check itself. A parsed key ([`ParsedPublicKey`]) keeps that set-up, so here each
//! distinct key is parsed once per algorithm and reused. Parsing, the signature
//! check and everything else about the token stay with `jsonwebtoken` and aws-lc:
//! only where the parsed key comes from changes.
//!
//! The provider is process-wide ([`install`]); the keys it sees are the server's
//! own verification keys (configured or fetched), never a token's, and the cache
//! is bounded anyway.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use aws_lc_rs::signature::{
    self as sig, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey,
};
use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, aws_lc};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::Verifier;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

/// Parsed keys kept at most; past it the cache starts over (keys rotate rarely).
const MAX_PARSED_KEYS: usize = 64;

static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    verifier_factory: new_verifier,
    ..aws_lc::DEFAULT_PROVIDER.clone()
});

/// Parsed RSA keys by algorithm and key bytes.
type ParsedKeys = HashMap<(Algorithm, Vec<u8>), Arc<ParsedPublicKey>>;
static PARSED: LazyLock<RwLock<ParsedKeys>> = LazyLock::new(RwLock::default);

/// Makes this provider `jsonwebtoken`'s for the process. Call before the first
/// use of `jsonwebtoken` (which otherwise settles on its own default); later
/// calls do nothing. Returns false if another provider was installed first:
/// tokens are then still checked correctly, only slower.
pub fn install() -> bool {
    let ours: &'static CryptoProvider = &PROVIDER;
    match CryptoProvider::install_default(ours) {
        Ok(()) => true,
        Err(installed) => std::ptr::eq(installed, ours),
    }
}

/// The RSA parameters aws-lc's provider verifies `alg` with (keys of 2048 to 8192
/// bits), or `None` for another family.
fn rsa_parameters(alg: Algorithm) -> Option<&'static RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let Some(parameters) = rsa_parameters(*alg) else {
        return (aws_lc::DEFAULT_PROVIDER.verifier_factory)(alg, key);
    };
    if key.family() != AlgorithmFamily::Rsa {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RsaVerifier {
        alg: *alg,
        key: parsed(*alg, parameters, key),
    }))
}

/// The parsed form of `key` for `alg`, from the cache or parsed now. `None` if
/// aws-lc rejects the key: every signature is then refused, as aws-lc's own
/// provider would refuse it.
fn parsed(
    alg: Algorithm,
    parameters: &'static RsaParameters,
    key: &DecodingKey,
) -> Option<Arc<ParsedPublicKey>> {
    let bytes = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => {
            let mut bytes = vec![0];
            bytes.extend_from_slice(der);
            bytes
        }
        // The modulus's length first, so that no two (n, e) pairs share bytes.
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            let mut bytes = Vec::with_capacity(9 + n.len() + e.len());
            bytes.push(1);
            bytes.extend_from_slice(&(n.len() as u64).to_le_bytes());
            bytes.extend_from_slice(n);
            bytes.extend_from_slice(e);
            bytes
        }
    };
    let id = (alg, bytes);
    if let Some(found) = read(&PARSED).get(&id) {
        return Some(found.clone());
    }
    let parsed = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => UnparsedPublicKey::new(parameters, der).parse(),
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            RsaPublicKeyComponents { n, e }.to_parsed_public_key(parameters)
        }
    }
    .ok()
    .map(Arc::new)?;
    let mut cache = write(&PARSED);
    if cache.len() >= MAX_PARSED_KEYS {
        cache.clear();
    }
    cache.insert(id, parsed.clone());
    Some(parsed)
}

/// A map that stays valid if a holder panicked (a cache), so poisoning is ignored.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct RsaVerifier {
    alg: Algorithm,
    key: Option<Arc<ParsedPublicKey>>,
}

impl Verifier<Vec<u8>> for RsaVerifier {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> Result<(), jsonwebtoken::signature::Error> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(jsonwebtoken::signature::Error::new)?;
        key.verify_sig(message, signature)
            .map_err(jsonwebtoken::signature::Error::from_source)
    }
}

impl JwtVerifier for RsaVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::KeyPair as _;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};

    /// A signing key and its public key twice: as JWK components and as DER.
    fn key_pair() -> (EncodingKey, DecodingKey, DecodingKey) {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der = pair.as_der().unwrap();
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref()));
        let signing = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let jwk = Jwk::from_encoding_key(&signing, Algorithm::RS256).unwrap();
        let by_components = DecodingKey::from_jwk(&jwk).unwrap();
        let by_der = DecodingKey::from_rsa_der(pair.public_key().as_ref());
        (signing, by_components, by_der)
    }

    /// Checks `token`'s signature with the provider's verifier for `key`, as
    /// `jsonwebtoken::decode` does once the provider is installed.
    fn verifies(token: &str, alg: Algorithm, key: &DecodingKey) -> bool {
        use base64::Engine as _;
        let (message, signature) = token.rsplit_once('.').unwrap();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        let verifier = (PROVIDER.verifier_factory)(&alg, key).unwrap();
        assert_eq!(verifier.algorithm(), alg);
        verifier.verify(message.as_bytes(), &signature).is_ok()
    }

    fn token(alg: Algorithm, signing: &EncodingKey) -> String {
        let claims = serde_json::json!({"sub": "u", "exp": 4_000_000_000u64});
        jsonwebtoken::encode(&Header::new(alg), &claims, signing).unwrap()
    }

    #[test]
    fn rsa_signatures_verify_with_the_parsed_key_and_bad_ones_do_not() {
        let (signing, by_components, by_der) = key_pair();
        let (_, other, _) = key_pair();
        for alg in [Algorithm::RS256, Algorithm::PS256, Algorithm::RS512] {
            let token = token(alg, &signing);
            // Twice: the second time the parsed key comes from the cache.
            for _ in 0..2 {
                assert!(verifies(&token, alg, &by_components), "{alg:?}");
                assert!(verifies(&token, alg, &by_der), "{alg:?}");
                assert!(!verifies(&token, alg, &other), "{alg:?}: another key");
            }
            // A signature made for another message.
            let (message, signature) = token.rsplit_once('.').unwrap();
            let forged = format!("{message}x.{signature}");
            assert!(!verifies(&forged, alg, &by_components), "{alg:?}");
            // A key is cached per algorithm: PKCS#1 v1.5 and PSS do not mix.
            let other_alg = if alg == Algorithm::PS256 {
                Algorithm::RS256
            } else {
                Algorithm::PS256
            };
            assert!(!verifies(&token, other_alg, &by_components), "{alg:?}");
        }
    }

    #[test]
    fn an_unusable_rsa_key_refuses_every_signature() {
        let (signing, _, _) = key_pair();
        let token = token(Algorithm::RS256, &signing);
        // A 512-bit modulus: below the 2048 bits aws-lc accepts.
        let small = DecodingKey::from_rsa_raw_components(&[0xc5; 64], &[1, 0, 1]);
        assert!(!verifies(&token, Algorithm::RS256, &small));
    }

    #[test]
    fn other_families_go_to_aws_lc_and_a_key_of_another_family_is_refused() {
        let (_, rsa, _) = key_pair();
        let ec = DecodingKey::from_ec_components(
            "WKn-ZIGevcwGIyyrzFoZNBdaq9_TsqzGl96oc0CWuis",
            "y77t-RvAHRKTsSGdIYUfweuOvwrvDD-Q3Hv5J0fSKbE",
        )
        .unwrap();
        assert!((PROVIDER.verifier_factory)(&Algorithm::ES256, &ec).is_ok());
        assert!((PROVIDER.verifier_factory)(&Algorithm::RS256, &ec).is_err());
        assert!((PROVIDER.verifier_factory)(&Algorithm::ES256, &rsa).is_err());
    }

    #[test]
    fn installing_twice_is_harmless() {
        // Whether or not another test used `jsonwebtoken` first, a second call
        // agrees with the first.
        assert_eq!(install(), install());
    }
}
