//! Time as a server sees it, injected so that tests drive it.
//!
//! Everything that decides by the time of day (report windows, seal
//! schedules) asks the server's [`Clock`] instead of [`SystemTime::now`], and
//! waits with [`Clock::sleep_until`] instead of `tokio::time::sleep`, so that
//! a test holding a [`ManualClock`] moves time forward without sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// A future that a [`Clock`] completes.
pub type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A source of the time of day.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
    /// Completes once [`Clock::now`] is at or after `deadline`.
    fn sleep_until(&self, deadline: SystemTime) -> Wait;
}

/// The operating system's clock: what every server runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep_until(&self, deadline: SystemTime) -> Wait {
        let wait = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Clone)]
pub struct ManualClock {
    /// The current time; every change is announced to the sleepers.
    now: Arc<watch::Sender<SystemTime>>,
    /// Serialises `advance`, so that two advances never lose one.
    step: Arc<Mutex<()>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock {
            now: Arc::new(watch::Sender::new(start)),
            step: Arc::default(),
        }
    }

    /// Moves the clock forward by `by`, waking whoever sleeps until then.
    pub fn advance(&self, by: Duration) {
        let _step = self.step.lock().unwrap_or_else(PoisonError::into_inner);
        let next = *self.now.borrow() + by;
        self.now.send_replace(next);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: SystemTime) -> Wait {
        let mut receiver = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, time stops.
            let _ = receiver.wait_for(|now| *now >= deadline).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_only_when_it_reaches_their_deadline() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = ManualClock::new(start);
        let mut sleeper = tokio::spawn(clock.sleep_until(start + Duration::from_secs(60)));
        clock.advance(Duration::from_secs(59));
        tokio::task::yield_now().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut sleeper)
                .await
                .is_err(),
            "woke one second early"
        );
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("woke at its deadline")
            .expect("the sleeper ran");
        assert_eq!(clock.now(), start + Duration::from_secs(60));
        // A deadline already past completes at once.
        tokio::time::timeout(Duration::from_secs(5), clock.sleep_until(start))
            .await
            .expect("a past deadline does not wait");
    }
}
