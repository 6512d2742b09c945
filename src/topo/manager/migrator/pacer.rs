//! The latency budget of a migration (`latency_budget`): the migrator watches
//! how fast the source answers while it moves keys, and moves slower when the
//! source's clients would notice.
//!
//! Redis runs one command at a time, so a client request that reaches the
//! source while it works through one of our batches waits for the batch. A
//! probe on a connection of its own sends `PING` every [`PROBE_EVERY`]; its
//! round trip is what a client request would have waited. Every
//! [`WINDOW`] the probes' slowest-but-one round trip is compared with the
//! budget: over it, the rate of keys and the batch size are halved
//! (multiplicative decrease); under it, the rate grows by [`STEP`] keys/s and
//! the batch by a tenth, up to the configured ones (additive increase). A
//! probe that gets no answer at all counts as over budget.
//!
//! The pacer only lowers the limits the task would have anyway
//! (`max_keys_per_sec`, `batch_keys`); with a zero budget it does nothing.
//! It sees the source only: the target and the replicas pay a batch in one
//! stretch too, which is why `batch_keys` is small to begin with (`config.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Conn;

/// How often the probe pings the source.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(10);
/// Probes per decision.
pub(super) const WINDOW: Duration = Duration::from_millis(200);
/// Keys/s added per window under budget.
pub(super) const STEP: u64 = 2_000;
/// The slowest rate and batch the pacer goes down to: a migration must end.
pub(super) const MIN_RATE: u64 = 1_000;
pub(super) const MIN_BATCH: usize = 10;
/// The rate a task starts at when it has no `max_keys_per_sec` of its own.
pub(super) const START_RATE: u64 = 20_000;
/// The rate limit when the source never complains: far above what one
/// migrator moves, so in effect unlimited.
const CEILING: u64 = 1_000_000;

/// The limits the pass reads before each batch.
#[derive(Debug)]
pub(super) struct PaceLimits {
    rate: AtomicU64,
    batch: AtomicUsize,
}

impl PaceLimits {
    /// Keys per second now.
    pub(super) fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Keys per batch now.
    pub(super) fn batch(&self) -> usize {
        self.batch.load(Ordering::Relaxed)
    }
}

/// The AIMD rule, apart from the probing, so it can be tested on its own.
#[derive(Debug)]
pub(super) struct Aimd {
    budget: Duration,
    max_rate: u64,
    max_batch: usize,
    pub(super) limits: Arc<PaceLimits>,
}

impl Aimd {
    pub(super) fn new(budget: Duration, max_rate: Option<u64>, max_batch: usize) -> Aimd {
        let max_rate = max_rate.filter(|&r| r > 0).unwrap_or(CEILING);
        Aimd {
            budget,
            max_rate,
            max_batch,
            limits: Arc::new(PaceLimits {
                rate: AtomicU64::new(START_RATE.min(max_rate)),
                batch: AtomicUsize::new(max_batch),
            }),
        }
    }

    /// One window's verdict. `rtts` are the window's probe round trips
    /// (`None`: no answer). Returns whether the source was over budget.
    pub(super) fn decide(&self, rtts: &mut [Option<Duration>]) -> bool {
        if rtts.is_empty() {
            return false;
        }
        // The slowest but one: a single scheduling hiccup of this machine
        // (or the probe's) does not halve the migration.
        rtts.sort_unstable_by_key(|r| r.unwrap_or(Duration::MAX));
        let judged = rtts[rtts.len().saturating_sub(2)].unwrap_or(Duration::MAX);
        let l = &self.limits;
        let (rate, batch) = (l.rate(), l.batch());
        let over = judged > self.budget;
        let (rate, batch) = if over {
            (
                (rate / 2).max(MIN_RATE.min(self.max_rate)),
                (batch / 2).max(MIN_BATCH.min(self.max_batch)),
            )
        } else {
            (
                (rate + STEP).min(self.max_rate),
                (batch + self.max_batch.div_ceil(10)).min(self.max_batch),
            )
        };
        l.rate.store(rate, Ordering::Relaxed);
        l.batch.store(batch, Ordering::Relaxed);
        over
    }
}

/// Probes `source` until dropped (the task is aborted with the pass).
pub(super) struct Pacer {
    pub(super) limits: Arc<PaceLimits>,
    probe: tokio::task::AbortHandle,
}

impl Pacer {
    /// Starts probing `source` on a connection of its own; `None` when the
    /// budget is zero (pacing off).
    pub(super) fn start(
        source: &str,
        auth: Option<&str>,
        budget: Duration,
        max_rate: Option<u64>,
        max_batch: usize,
    ) -> Option<Pacer> {
        if budget.is_zero() {
            return None;
        }
        let aimd = Aimd::new(budget, max_rate, max_batch);
        let limits = aimd.limits.clone();
        let (source, auth) = (source.to_string(), auth.map(str::to_string));
        let probe = tokio::spawn(async move { probe(&source, auth.as_deref(), &aimd).await }).abort_handle();
        Some(Pacer { limits, probe })
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

async fn probe(source: &str, auth: Option<&str>, aimd: &Aimd) {
    let mut conn: Option<Conn> = None;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rtts = Vec::new();
    let mut window_end = Instant::now() + WINDOW;
    loop {
        tick.tick().await;
        if conn.is_none() {
            conn = Conn::connect(source, auth).await.ok();
        }
        let rtt = match conn.as_mut() {
            Some(c) => {
                let sent = Instant::now();
                match c.call(&[b"PING".as_ref()], "PING", WINDOW).await {
                    Ok(_) => Some(sent.elapsed()),
                    Err(_) => {
                        conn = None;
                        None
                    }
                }
            }
            None => None,
        };
        rtts.push(rtt);
        if Instant::now() >= window_end {
            let over = aimd.decide(&mut rtts);
            tracing::debug!(
                source,
                over,
                rate = aimd.limits.rate(),
                batch = aimd.limits.batch(),
                "migration pace"
            );
            rtts.clear();
            window_end = Instant::now() + WINDOW;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_micros(n * 1000))
    }

    #[test]
    fn over_budget_halves_under_budget_adds() {
        let a = Aimd::new(Duration::from_millis(1), None, 100);
        assert_eq!((a.limits.rate(), a.limits.batch()), (START_RATE, 100));
        // One slow probe in a window is forgiven.
        assert!(!a.decide(&mut [ms(0), ms(0), ms(0), ms(5)]));
        assert_eq!(a.limits.rate(), START_RATE + STEP);
        // Two are not.
        assert!(a.decide(&mut [ms(0), ms(0), ms(5), ms(5)]));
        assert_eq!((a.limits.rate(), a.limits.batch()), ((START_RATE + STEP) / 2, 50));
        // No answer at all is over budget.
        assert!(a.decide(&mut [None, None]));
        assert_eq!(a.limits.batch(), 25);
        for _ in 0..100 {
            a.decide(&mut [None, None]);
        }
        assert_eq!(
            (a.limits.rate(), a.limits.batch()),
            (MIN_RATE, MIN_BATCH),
            "floors"
        );
        for _ in 0..100 {
            a.decide(&mut [ms(0), ms(0)]);
        }
        assert_eq!(
            a.limits.batch(),
            100,
            "the batch grows back to the configured one"
        );
        assert_eq!(a.limits.rate(), MIN_RATE + 100 * STEP);
    }

    #[test]
    fn the_configured_rate_is_a_ceiling() {
        let a = Aimd::new(Duration::from_millis(1), Some(5_000), 100);
        assert_eq!(a.limits.rate(), 5_000);
        for _ in 0..10 {
            a.decide(&mut [ms(0), ms(0)]);
        }
        assert_eq!(a.limits.rate(), 5_000);
    }
}
