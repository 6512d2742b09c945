//! The keys-per-second limit of a migration task: paces `MIGRATE` batches so
//! the average rate stays under the limit, one batch of burst at most.

use std::time::Duration;

use tokio::time::Instant;

/// After a stall (backoff, slow batch) longer than this, the pace restarts
/// instead of letting the migrator burst to catch up.
const MAX_LAG: Duration = Duration::from_secs(1);

/// Paces keys at `rate` per second; no limit when `rate` is `None`.
#[derive(Debug)]
pub(super) struct Throttle {
    rate: Option<u64>,
    start: Instant,
    sent: u64,
}

impl Throttle {
    /// A throttle at `rate` keys per second (`None` or 0: unlimited).
    pub(super) fn new(rate: Option<u64>) -> Throttle {
        Throttle {
            rate: rate.filter(|&r| r > 0),
            start: Instant::now(),
            sent: 0,
        }
    }

    /// Changes the rate (the latency budget's pacer moves it); the pace
    /// restarts, so a lower rate does not inherit a debt or a higher one a
    /// burst.
    pub(super) fn set_rate(&mut self, rate: Option<u64>) {
        let rate = rate.filter(|&r| r > 0);
        if rate != self.rate {
            self.rate = rate;
            self.start = Instant::now();
            self.sent = 0;
        }
    }

    /// Accounts for `keys` about to be sent; returns how long to wait first.
    pub(super) fn admit(&mut self, keys: usize) -> Option<Duration> {
        let rate = self.rate?;
        let now = Instant::now();
        let mut due = self.start + Duration::from_secs_f64(self.sent as f64 / rate as f64);
        if now > due + MAX_LAG {
            self.start = now;
            self.sent = 0;
            due = now;
        }
        self.sent += keys as u64;
        due.checked_duration_since(now).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_rate() {
        let mut t = Throttle::new(Some(1000));
        assert_eq!(t.admit(500), None, "the first batch goes at once");
        let wait = t.admit(500).expect("second batch waits");
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        let mut free = Throttle::new(None);
        assert_eq!(free.admit(1_000_000), None);
        assert_eq!(Throttle::new(Some(0)).admit(10), None);
    }
}
