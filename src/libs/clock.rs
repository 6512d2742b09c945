//! One monotonic clock for the process: time since its first reading, as a
//! number that fits an atomic (the proxy's busy watch keeps milliseconds of
//! it) or a message (the push benchmark stamps bodies with nanoseconds).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Time since the first call in this process.
pub fn since_start() -> Duration {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}
