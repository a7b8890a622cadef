//! Verified tokens, so that a client reusing its token does not pay for a signature
//! check on every request.
//!
//! Keyed by the SHA-256 of the token (the cache never holds a token itself), bounded,
//! and an entry is never used at or past its token's `exp`. A token is only put here
//! after it passed every check, and the checks do not depend on anything that changes
//! while the server runs except the keys: a key withdrawn by the issuer keeps its
//! already verified tokens valid until they expire, as it would for a verifier that
//! fetched the keys once per TTL.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::authenticator::Principal;

/// Default bound of the token cache.
pub const TOKEN_CACHE_CAPACITY: usize = 10_000;

/// A bounded map from token hash to the principal it was verified as.
#[derive(Debug)]
pub struct TokenCache {
    /// Most entries kept; inserting into a full cache first drops expired entries,
    /// then an arbitrary one (the map's iteration order is randomly seeded).
    capacity: usize,
    /// Token hash → entry. A plain mutex: every operation is a hash-map access.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<[u8; 32], Entry>,
    /// When expired entries were last dropped (seconds since the epoch): at most once
    /// a second, so that a full cache under a flood of new tokens does not scan the
    /// whole map on every insert.
    purged_at: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The token's `exp`, in seconds since the epoch.
    exp: u64,
    principal: Principal,
}

/// The cache key of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenCache {
    /// An empty cache holding at most `capacity` tokens.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The principal of a token verified before, if its `exp` is still ahead of `now`
    /// (seconds since the epoch). An expired entry is removed.
    pub fn get(&self, hash: &[u8; 32], now: u64) -> Option<Principal> {
        let entries = &mut self.lock().entries;
        match entries.get(hash) {
            Some(entry) if now < entry.exp => Some(entry.principal.clone()),
            Some(_) => {
                entries.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token until its `exp`. Nothing happens when it has
    /// already expired at `now` or the capacity is zero.
    pub fn insert(&self, hash: [u8; 32], exp: u64, principal: Principal, now: u64) {
        if now >= exp || self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        let Inner { entries, purged_at } = &mut *inner;
        if entries.len() >= self.capacity && !entries.contains_key(&hash) {
            if now > *purged_at {
                entries.retain(|_, entry| now < entry.exp);
                *purged_at = now;
            }
            if entries.len() >= self.capacity
                && let Some(victim) = entries.keys().next().copied()
            {
                entries.remove(&victim);
            }
        }
        entries.insert(hash, Entry { exp, principal });
    }

    /// How many tokens are cached (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent (each
        // operation is one map call), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(TOKEN_CACHE_CAPACITY)
    }
}
