//! Rate limits on posting reports: one per user (the token's `sub`) and one per
//! client IP address, each a keyed GCRA limiter (`governor`): a key may post
//! `burst` reports at once, then one every `1 / rate` seconds.
//!
//! Over a limit the post is answered 429 `rate_limited` with `Retry-After`, the
//! whole seconds until the key may post again (at least 1). Rejected posts do not
//! use up the key's allowance. The state holds one small entry per key seen
//! recently; [`RateLimits::retain_recent`], run periodically by the server, drops
//! the keys that are back to a fresh allowance, so memory stays bounded by the
//! keys active within one burst period.
//!
//! Limits count reports, not requests: a bulk upload of n reports takes n from
//! each allowance at once, or none of them; one larger than a burst can never
//! pass and is refused as such (413 `too_many_reports`), not told to retry.
//!
//! IPv6 clients are keyed by their /64 network: one host usually holds a whole
//! /64, and would otherwise get a fresh allowance per address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::AppState;
use super::error::ApiError;
use crate::config::LimitsConfig;

/// The limits of one server; both optional (a rate of 0 turns one off).
pub(super) struct RateLimits<C: Clock = DefaultClock> {
    /// Keyed by the token's `sub`; `None` when off.
    per_user: Option<Limiter<String, C>>,
    /// Keyed by the client's address (IPv6 by /64); `None` when off.
    per_ip: Option<Limiter<IpAddr, C>>,
}

/// One keyed limiter and the numbers its 429 message quotes.
struct Limiter<K: std::hash::Hash + Eq + Clone, C: Clock> {
    limiter: RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    /// Reports per second, on average.
    rate: NonZeroU32,
    /// Reports at once.
    burst: NonZeroU32,
    /// What the message calls the key: "this user", "this IP address".
    whose: &'static str,
}

impl<K: std::hash::Hash + Eq + Clone, C: Clock> Limiter<K, C> {
    /// A limiter of `rate` per second and `burst` at once (0 = one second's
    /// worth), or `None` for a rate of 0.
    fn new(rate: u32, burst: u32, whose: &'static str, clock: C) -> Option<Self> {
        let rate = NonZeroU32::new(rate)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock),
            rate,
            burst,
            whose,
        })
    }

    /// Takes `reports` reports from `key`'s allowance (all or none), or says when
    /// to come back, or that so many never fit.
    fn check(&self, key: &K, reports: NonZeroU32) -> Result<(), ApiError> {
        let allowed = if reports.get() == 1 {
            self.limiter.check_key(key)
        } else {
            self.limiter.check_key_n(key, reports).map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_reports",
                    format!(
                        "{reports} reports in one request, but {} may post at most {} at once; send them in smaller requests",
                        self.whose, self.burst
                    ),
                )
            })?
        };
        allowed.map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            let seconds = retry_after_secs(wait);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "too many reports from {}: at most {} per second ({} at once); retry in {seconds} s",
                    self.whose, self.rate, self.burst
                ),
            )
            .with_retry_after(seconds)
        })
    }

    fn retain_recent(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    let whole = wait.as_secs();
    let seconds = if wait.subsec_nanos() > 0 {
        whole.saturating_add(1)
    } else {
        whole
    };
    seconds.max(1)
}

impl RateLimits {
    /// The limits `config` asks for, on the monotonic clock.
    pub(super) fn new(config: &LimitsConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// The limits `config` asks for, on `clock` (tests pass a fake one).
    pub(super) fn with_clock(config: &LimitsConfig, clock: C) -> Self {
        Self {
            per_user: Limiter::new(
                config.reports_per_second_per_user,
                config.reports_burst_per_user,
                "this user",
                clock.clone(),
            ),
            per_ip: Limiter::new(
                config.reports_per_second_per_ip,
                config.reports_burst_per_ip,
                "this IP address",
                clock,
            ),
        }
    }

    /// Counts one post by `user` (`None`: no token, so no per-user limit) from
    /// `ip`; the first limit exceeded is the error.
    pub(super) fn check(&self, user: Option<&str>, ip: IpAddr) -> Result<(), ApiError> {
        self.check_reports(user, ip, NonZeroU32::MIN)
    }

    /// Counts a post of `reports` reports at once (a bulk upload), as
    /// [`RateLimits::check`] counts one.
    pub(super) fn check_reports(
        &self,
        user: Option<&str>,
        ip: IpAddr,
        reports: NonZeroU32,
    ) -> Result<(), ApiError> {
        if let (Some(limiter), Some(user)) = (&self.per_user, user) {
            // governor's keyed store looks keys up by their own type: one copy.
            limiter.check(&user.to_owned(), reports)?;
        }
        if let Some(limiter) = &self.per_ip {
            limiter.check(&network(ip), reports)?;
        }
        Ok(())
    }

    /// Forgets the keys whose allowance is full again.
    pub(super) fn retain_recent(&self) {
        if let Some(limiter) = &self.per_user {
            limiter.retain_recent();
        }
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
        }
    }

    /// Keys held, per-user and per-IP (for tests).
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (
            self.per_user.as_ref().map_or(0, |l| l.limiter.len()),
            self.per_ip.as_ref().map_or(0, |l| l.limiter.len()),
        )
    }
}

/// The key of a client address: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its
/// /64 network.
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// The client's address ([`client_ip`]) as an extractor, read from the request
/// in place (the `HeaderMap` extractor would copy every header).
pub(super) struct ClientIp(pub(super) IpAddr);

impl FromRequestParts<Arc<AppState>> for ClientIp {
    type Rejection = <ConnectInfo<SocketAddr> as FromRequestParts<Arc<AppState>>>::Rejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state).await?;
        let trust = state.config.limits.trust_forwarded_for;
        Ok(ClientIp(client_ip(peer.ip(), &parts.headers, trust)))
    }
}

/// The client's address: the TCP peer's, or with `trust_forwarded_for` the last
/// entry of the last `X-Forwarded-For` header, which the reverse proxy in front
/// appended (the entries before it are whatever the client claimed). Falls back
/// to the peer when that entry is missing or not an address.
pub(super) fn client_ip(peer: IpAddr, headers: &HeaderMap, trust_forwarded_for: bool) -> IpAddr {
    if !trust_forwarded_for {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limits(
        user: (u32, u32),
        ip: (u32, u32),
    ) -> (RateLimits<FakeRelativeClock>, FakeRelativeClock) {
        let config = LimitsConfig {
            reports_per_second_per_user: user.0,
            reports_burst_per_user: user.1,
            reports_per_second_per_ip: ip.0,
            reports_burst_per_ip: ip.1,
            ..LimitsConfig::default()
        };
        let clock = FakeRelativeClock::default();
        (RateLimits::with_clock(&config, clock.clone()), clock)
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const AWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn code_and_retry(result: Result<(), ApiError>) -> Option<(&'static str, Option<u64>)> {
        result.err().map(|e| (e.code, e.retry_after))
    }

    #[test]
    fn a_user_gets_the_burst_then_the_rate_and_others_are_unaffected() {
        let (limits, clock) = limits((2, 3), (0, 0));
        for _ in 0..3 {
            limits.check(Some("alice"), HOME).unwrap();
        }
        let error = limits.check(Some("alice"), AWAY).unwrap_err();
        assert_eq!(
            (error.status, error.code),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
        );
        assert_eq!(error.retry_after, Some(1), "half a second, rounded up");
        assert!(error.message.contains("this user"), "{}", error.message);
        assert!(error.message.contains("2 per second"), "{}", error.message);
        limits.check(Some("bob"), HOME).unwrap();
        limits.check(None, HOME).unwrap();
        clock.advance(Duration::from_millis(500));
        limits.check(Some("alice"), HOME).unwrap();
        assert!(limits.check(Some("alice"), HOME).is_err());
    }

    #[test]
    fn an_address_is_limited_whoever_posts_and_ipv6_by_its_64() {
        let (limits, clock) = limits((0, 0), (1, 0));
        limits.check(Some("alice"), HOME).unwrap();
        let error = limits.check(Some("bob"), HOME).unwrap_err();
        assert!(
            error.message.contains("this IP address"),
            "{}",
            error.message
        );
        assert_eq!(error.retry_after, Some(1));
        limits.check(Some("bob"), AWAY).unwrap();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        limits.check(None, a).unwrap();
        assert!(limits.check(None, b).is_err(), "same /64");
        limits.check(None, c).unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(limits.check(None, mapped).is_err(), "IPv4-mapped is IPv4");
        clock.advance(Duration::from_secs(1));
        limits.check(None, HOME).unwrap();
    }

    #[test]
    fn a_bulk_costs_its_reports_all_or_none_and_never_more_than_a_burst() {
        let n = |n: u32| NonZeroU32::new(n).unwrap();
        let (limits, clock) = limits((10, 100), (0, 0));
        limits.check_reports(Some("gateway"), HOME, n(60)).unwrap();
        // 40 left: a bulk of 41 takes nothing, so 40 singles still pass after it.
        let error = limits
            .check_reports(Some("gateway"), HOME, n(41))
            .unwrap_err();
        assert_eq!(
            (error.status, error.code, error.retry_after.is_some()),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited", true)
        );
        for _ in 0..40 {
            limits.check(Some("gateway"), HOME).unwrap();
        }
        assert!(limits.check(Some("gateway"), HOME).is_err());
        // Larger than the burst: no wait would let it in.
        clock.advance(Duration::from_secs(60));
        let error = limits
            .check_reports(Some("gateway"), HOME, n(101))
            .unwrap_err();
        assert_eq!(
            (error.status, error.code, error.retry_after),
            (StatusCode::PAYLOAD_TOO_LARGE, "too_many_reports", None)
        );
        assert!(error.message.contains("at most 100"), "{}", error.message);
        limits.check_reports(Some("gateway"), HOME, n(100)).unwrap();
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        let (limits, _clock) = limits((1, 1), (0, 0));
        limits.check(Some("slow"), HOME).unwrap();
        assert_eq!(
            code_and_retry(limits.check(Some("slow"), HOME)),
            Some(("rate_limited", Some(1)))
        );
        for (wait, secs) in [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (60_000, 60)] {
            assert_eq!(
                retry_after_secs(Duration::from_millis(wait)),
                secs,
                "{wait} ms"
            );
        }
    }

    #[test]
    fn off_limits_hold_nothing_and_idle_keys_are_forgotten() {
        let (off, _) = limits((0, 5), (0, 5));
        for _ in 0..100 {
            off.check(Some("alice"), HOME).unwrap();
        }
        assert_eq!(off.len(), (0, 0));

        let (limits, clock) = limits((10, 10), (10, 10));
        for n in 0..50 {
            limits.check(Some(&format!("user-{n}")), HOME).ok();
        }
        assert_eq!(limits.len().0, 50);
        limits.retain_recent();
        assert_eq!(limits.len().0, 50, "keys inside their burst period stay");
        clock.advance(Duration::from_secs(2));
        limits.retain_recent();
        assert_eq!(limits.len(), (0, 0));
    }

    #[test]
    fn the_forwarded_address_is_used_only_when_trusted() {
        let check = |headers: &[&str], trust: bool, expected: IpAddr| {
            let mut map = HeaderMap::new();
            for value in headers {
                map.append("x-forwarded-for", value.parse().unwrap());
            }
            assert_eq!(
                client_ip(HOME, &map, trust),
                expected,
                "{headers:?} {trust}"
            );
        };
        check(&["192.0.2.2"], false, HOME);
        check(&["192.0.2.2"], true, AWAY);
        check(&["10.0.0.1, 192.0.2.2"], true, AWAY);
        check(&["10.0.0.1", "203.0.113.5 , 192.0.2.2"], true, AWAY);
        check(&["not an address"], true, HOME);
        check(&[], true, HOME);
    }
}
