//! Exponential backoff with full jitter, for reconnect loops (backends, ZooKeeper).

use std::time::Duration;

/// Exponential backoff: each failure doubles the delay up to `max`; a success
/// resets it. Jitter spreads reconnect storms when many connections fail at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt; grows with each call.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let cap = exp.min(self.max);
        // Jitter in [cap/2, cap]: never zero, so a hot loop cannot spin.
        let nanos = cap.as_nanos() as u64;
        let half = nanos / 2;
        Duration::from_nanos(half + jitter(half.max(1)))
    }

    /// Forget past failures.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A cheap pseudo-random number below `bound`, seeded from the clock. Not for
/// anything but spreading retries.
fn jitter(bound: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    // xorshift to break the correlation with the clock's low bits.
    let mut x = t ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x % bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_millis(100));
        }
        assert!(b.next_delay() >= Duration::from_millis(50));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
