//! Report ids that carry their time, and the window in which servers take them.
//!
//! A report id is 16 bytes chosen by the client, the same on every server. Its
//! first 48 bits are the time the client made it, as big-endian Unix
//! milliseconds, and the rest is random, laid out as a UUIDv7 (RFC 9562: version
//! and variant bits set). Servers refuse a report whose id is older than the
//! report window or too far in the future, so they need to remember only the ids
//! of the window to catch every replay: an older replay is refused by its time.
//! Because the time leads, "every id older than T" is one range of the key,
//! which is how storage deletes what the window no longer needs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The largest time an id can hold: 48 bits of milliseconds.
const MAX_MILLIS: u64 = (1 << 48) - 1;

/// A new report id made at `at`: its time, then 74 random bits (UUIDv7 layout).
pub fn new_report_id(at: SystemTime) -> [u8; 16] {
    with_time(at, rand::random())
}

/// The id `random` becomes when made at `at`: its first 6 bytes replaced by the
/// time, the version and variant bits set; the rest of `random` kept.
pub fn with_time(at: SystemTime, random: [u8; 16]) -> [u8; 16] {
    let mut id = random;
    id[..6].copy_from_slice(&millis(at).to_be_bytes()[2..]);
    id[6] = 0x70 | (id[6] & 0x0f);
    id[8] = 0x80 | (id[8] & 0x3f);
    id
}

/// The time written in `id`, in Unix milliseconds.
pub fn time_of(id: &[u8; 16]) -> u64 {
    let mut be = [0u8; 8];
    be[2..].copy_from_slice(&id[..6]);
    u64::from_be_bytes(be)
}

/// The smallest id made at `at`: every id made earlier sorts before it.
pub fn first_id_at(at: SystemTime) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&millis(at).to_be_bytes()[2..]);
    id
}

/// `at` as Unix milliseconds, within what an id can hold.
fn millis(at: SystemTime) -> u64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_MILLIS)
}

/// Which report ids a server takes, by their time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportWindow {
    /// How old an id may be (and how long its report is kept, batched or not).
    pub max_age: Duration,
    /// How far ahead of the server's clock an id may be (clients' clocks drift).
    pub max_future_skew: Duration,
}

/// Why an id is outside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutsideWindow {
    /// Made more than `max_age` before now, by this much in all.
    TooOld {
        /// How old the id is.
        age: Duration,
    },
    /// Made more than `max_future_skew` after now, by this much in all.
    FromFuture {
        /// How far ahead of the server's clock the id is.
        ahead: Duration,
    },
}

impl ReportWindow {
    /// Whether a report with `id` is taken at `now`.
    pub fn check(&self, id: &[u8; 16], now: SystemTime) -> Result<(), OutsideWindow> {
        let made = time_of(id);
        let now = millis(now);
        if made < now {
            let age = Duration::from_millis(now - made);
            if age > self.max_age {
                return Err(OutsideWindow::TooOld { age });
            }
        } else {
            let ahead = Duration::from_millis(made - now);
            if ahead > self.max_future_skew {
                return Err(OutsideWindow::FromFuture { ahead });
            }
        }
        Ok(())
    }

    /// The first id a server still needs at `now`: every id sorting before it is
    /// refused on arrival, so its report may be forgotten.
    pub fn keep_from(&self, now: SystemTime) -> [u8; 16] {
        first_id_at(now.checked_sub(self.max_age).unwrap_or(UNIX_EPOCH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(millis)
    }

    #[test]
    fn an_id_carries_its_time_and_sorts_by_it() {
        let early = new_report_id(at(1_765_000_000_000));
        let late = new_report_id(at(1_765_000_000_001));
        assert_eq!(time_of(&early), 1_765_000_000_000);
        assert!(early < late);
        assert_eq!(early[6] >> 4, 7, "UUID version 7");
        assert_eq!(early[8] >> 6, 0b10, "RFC 9562 variant");
        assert_ne!(
            new_report_id(at(5)),
            new_report_id(at(5)),
            "random after the time"
        );
        assert!(first_id_at(at(1_765_000_000_001)) <= late);
        assert!(first_id_at(at(1_765_000_000_001)) > early);
    }

    #[test]
    fn the_window_refuses_old_and_future_ids() {
        let window = ReportWindow {
            max_age: Duration::from_secs(60),
            max_future_skew: Duration::from_secs(5),
        };
        let now = at(1_000_000_000);
        let check = |millis: u64| window.check(&first_id_at(at(millis)), now);
        assert_eq!(check(1_000_000_000), Ok(()));
        assert_eq!(check(1_000_000_000 - 60_000), Ok(()));
        assert_eq!(
            check(1_000_000_000 - 60_001),
            Err(OutsideWindow::TooOld {
                age: Duration::from_millis(60_001)
            })
        );
        assert_eq!(check(1_000_005_000), Ok(()));
        assert_eq!(
            check(1_000_005_001),
            Err(OutsideWindow::FromFuture {
                ahead: Duration::from_millis(5_001)
            })
        );
        // Every id refused as too old sorts before what the window keeps.
        assert!(first_id_at(at(1_000_000_000 - 60_001)) < window.keep_from(now));
        assert_eq!(
            first_id_at(at(1_000_000_000 - 60_000)),
            window.keep_from(now)
        );
    }
}
