//! The process's clocks. One monotonic clock: time since its first reading,
//! as a number that fits an atomic (the proxy's busy watch keeps milliseconds
//! of it) or a message (the push benchmark stamps bodies with nanoseconds).
//! And the wall clock as Unix seconds or milliseconds, for the stamps written
//! into ZooKeeper and shown to operators.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Time since the first call in this process.
pub fn since_start() -> Duration {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

/// Seconds since the Unix epoch by the wall clock (0 if the clock is before
/// it): for stamps that other processes or people read (a lock's holder, a
/// task's last update, an instance's heartbeat), never for measuring an
/// interval in this process, which [`since_start`] does.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is
/// before it), for stamps as [`unix_secs`].
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
