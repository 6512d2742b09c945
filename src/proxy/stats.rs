//! Proxy statistics: per-command calls, errors and time, a latency histogram,
//! sessions and ops/s. Counters are relaxed atomics bumped on the hot path; the
//! admin endpoint reads them into a JSON snapshot or Prometheus text.
//!
//! A blocking call (BLPOP, XREAD … BLOCK, WAIT, …) is counted (calls, errors,
//! ops) but not timed: see [`Stats::record_blocking`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::command;
use super::output::OutputMemory;

/// Latency buckets: four per power of two of microseconds, up to ~2^26 µs (67 s).
const BUCKETS: usize = 26 * 4;

#[derive(Default)]
struct CmdStat {
    calls: AtomicU64,
    errors: AtomicU64,
    usecs: AtomicU64,
    /// Calls among `calls` that may have blocked: not in `usecs`.
    blocking: AtomicU64,
}

/// All counters of one proxy.
pub struct Stats {
    started: Instant,
    names: Vec<&'static str>,
    cmds: Vec<CmdStat>,
    latency: Vec<AtomicU64>,
    ops: AtomicU64,
    errors: AtomicU64,
    ops_per_sec: AtomicU64,
    pub sessions_total: AtomicU64,
    pub sessions_alive: AtomicU64,
    pub sessions_refused: AtomicU64,
    /// Failed AUTHs (each one throttled, see `local.rs`).
    pub auth_failures: AtomicU64,
    /// Clients closed for not giving the password within `auth_timeout`.
    pub auth_timeouts: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Blocking commands out at a server right now (INFO `blocked_clients`).
    pub blocked_calls: AtomicU64,
    /// Pub/sub clients disconnected for not reading their messages.
    pub pubsub_overflows: AtomicU64,
    /// Clients disconnected past `client_output_limit` (`output.rs`).
    pub output_limit_kills: AtomicU64,
    /// Requests refused while client buffers were over `max_output_memory`.
    pub output_memory_refusals: AtomicU64,
    /// Requests answered `-BUSY` by the proxy while another client's script
    /// ran long on their server (`busy_reply_threshold`).
    pub busy_replies: AtomicU64,
    /// Bytes stuck in client buffers right now, proxy-wide.
    pub output_memory: Arc<OutputMemory>,
}

impl Default for Stats {
    fn default() -> Self {
        let mut names: Vec<&'static str> = command::all().map(|s| s.name.as_str()).collect();
        names.push("unknown");
        Stats {
            started: Instant::now(),
            cmds: names.iter().map(|_| CmdStat::default()).collect(),
            names,
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            ops_per_sec: AtomicU64::new(0),
            sessions_total: AtomicU64::new(0),
            sessions_alive: AtomicU64::new(0),
            sessions_refused: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            auth_timeouts: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            blocked_calls: AtomicU64::new(0),
            pubsub_overflows: AtomicU64::new(0),
            output_limit_kills: AtomicU64::new(0),
            output_memory_refusals: AtomicU64::new(0),
            busy_replies: AtomicU64::new(0),
            output_memory: Arc::default(),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < 2 {
        return us as usize;
    }
    let log = 63 - us.leading_zeros() as usize;
    // Two bits below the top one split each power of two into four.
    let frac =
        ((us >> (log - 1).min(63)) & 0b1) as usize * 2 + ((us >> log.saturating_sub(2)) & 0b1) as usize;
    (log * 4 + frac).min(BUCKETS - 1)
}

/// Upper bound, in µs, of bucket `b` (inverse of [`bucket_of`], rounded up).
fn bucket_bound(b: usize) -> u64 {
    if b < 2 {
        return b as u64 + 1;
    }
    let log = b / 4;
    let frac = (b % 4) as u64;
    (1u64 << log) + (frac + 1) * (1u64 << log) / 4
}

impl Stats {
    /// The stats slot of an unknown command.
    pub fn unknown_cmd(&self) -> usize {
        self.cmds.len() - 1
    }

    /// Records one finished request that took `elapsed` from its arrival to
    /// its reply's write.
    pub fn record(&self, cmd: usize, elapsed: Duration, error: bool) {
        let us = elapsed.as_micros() as u64;
        if let Some(c) = self.count(cmd, error) {
            c.usecs.fetch_add(us, Relaxed);
        }
        if let Some(b) = self.latency.get(bucket_of(us)) {
            b.fetch_add(1, Relaxed);
        }
    }

    /// Records one finished request that may have blocked at its server
    /// ([`command::may_block`]: BLPOP, XREAD … BLOCK, WAIT, …): counted as a
    /// call (and an error), but its time goes neither into the latency
    /// histogram nor into the command's `usecs`. Most of that time is the
    /// client's own choice of waiting for data or replicas (the job role's
    /// `XREADGROUP … BLOCK 2000` put 2 s into every p99), and Redis's
    /// commandstats leave the wait out likewise. Only a proxy-side share
    /// would be honest, but the proxy cannot tell where the server's wait
    /// ended and its work began, and the few µs of parsing and writing it
    /// could time alone are not comparable to the round trips of the
    /// histogram: so none.
    pub fn record_blocking(&self, cmd: usize, error: bool) {
        if let Some(c) = self.count(cmd, error) {
            c.blocking.fetch_add(1, Relaxed);
        }
    }

    /// Counts one request as an op, a call of `cmd`, and an error if it is.
    fn count(&self, cmd: usize, error: bool) -> Option<&CmdStat> {
        self.ops.fetch_add(1, Relaxed);
        if error {
            self.errors.fetch_add(1, Relaxed);
        }
        let c = self.cmds.get(cmd)?;
        c.calls.fetch_add(1, Relaxed);
        if error {
            c.errors.fetch_add(1, Relaxed);
        }
        Some(c)
    }

    /// Zeroes the request counters (commands, errors, latency), as
    /// `CONFIG RESETSTAT` does on a Redis; connection gauges stay.
    pub fn reset_counters(&self) {
        self.ops.store(0, Relaxed);
        self.errors.store(0, Relaxed);
        for c in &self.cmds {
            c.calls.store(0, Relaxed);
            c.errors.store(0, Relaxed);
            c.usecs.store(0, Relaxed);
            c.blocking.store(0, Relaxed);
        }
        for b in &self.latency {
            b.store(0, Relaxed);
        }
    }

    /// Samples ops/s once a second until the runtime stops.
    pub async fn sample_ops(self: std::sync::Arc<Self>) {
        let mut last = self.ops.load(Relaxed);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = self.ops.load(Relaxed);
            self.ops_per_sec.store(now.saturating_sub(last), Relaxed);
            last = now;
        }
    }

    fn quantile(&self, counts: &[u64], total: u64, q: f64) -> u64 {
        if total == 0 {
            return 0;
        }
        let target = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (b, &n) in counts.iter().enumerate() {
            seen += n;
            if seen >= target {
                return bucket_bound(b);
            }
        }
        bucket_bound(BUCKETS - 1)
    }

    /// A consistent-enough copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let counts: Vec<u64> = self.latency.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let commands = self
            .names
            .iter()
            .zip(&self.cmds)
            .filter(|(_, c)| c.calls.load(Relaxed) > 0)
            .map(|(name, c)| {
                let calls = c.calls.load(Relaxed);
                let usecs = c.usecs.load(Relaxed);
                let blocking_calls = c.blocking.load(Relaxed);
                // Over the timed calls only: a blocking call adds nothing to
                // `usecs`, so counting it here would dilute the mean of the
                // non-blocking XREADs it shares a name with.
                let timed = calls.saturating_sub(blocking_calls);
                CommandStats {
                    name: name.to_string(),
                    calls,
                    errors: c.errors.load(Relaxed),
                    usecs,
                    usecs_per_call: usecs as f64 / timed.max(1) as f64,
                    blocking_calls,
                }
            })
            .collect();
        StatsSnapshot {
            uptime_secs: self.started.elapsed().as_secs(),
            ops_total: self.ops.load(Relaxed),
            ops_per_sec: self.ops_per_sec.load(Relaxed),
            errors_total: self.errors.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            pubsub_overflows: self.pubsub_overflows.load(Relaxed),
            output_limit_kills: self.output_limit_kills.load(Relaxed),
            output_memory_refusals: self.output_memory_refusals.load(Relaxed),
            busy_replies: self.busy_replies.load(Relaxed),
            output_memory_bytes: self.output_memory.get() as u64,
            sessions_total: self.sessions_total.load(Relaxed),
            sessions_alive: self.sessions_alive.load(Relaxed),
            sessions_refused: self.sessions_refused.load(Relaxed),
            auth_failures: self.auth_failures.load(Relaxed),
            auth_timeouts: self.auth_timeouts.load(Relaxed),
            latency_us: Latency {
                p50: self.quantile(&counts, total, 0.50),
                p90: self.quantile(&counts, total, 0.90),
                p99: self.quantile(&counts, total, 0.99),
                p999: self.quantile(&counts, total, 0.999),
            },
            latency_buckets: counts
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n > 0)
                .map(|(b, &n)| (bucket_bound(b), n))
                .collect(),
            commands,
        }
    }
}

/// Latency percentiles in microseconds (bucket upper bounds, within 25%).
#[derive(Serialize, Debug, Clone, Default)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
}

/// Counters of one command.
#[derive(Serialize, Debug, Clone)]
pub struct CommandStats {
    pub name: String,
    pub calls: u64,
    pub errors: u64,
    /// Time of the calls that did not block, arrival to reply written.
    pub usecs: u64,
    /// `usecs` over the calls that did not block.
    pub usecs_per_call: f64,
    /// Calls (among `calls`) that may have blocked (BLPOP, XREAD … BLOCK,
    /// WAIT, …): their wait is not in `usecs` nor in the latency figures.
    pub blocking_calls: u64,
}

/// What `/stats` reports about requests and sessions.
#[derive(Serialize, Debug, Clone, Default)]
pub struct StatsSnapshot {
    pub uptime_secs: u64,
    pub ops_total: u64,
    pub ops_per_sec: u64,
    pub errors_total: u64,
    pub protocol_errors: u64,
    pub pubsub_overflows: u64,
    pub output_limit_kills: u64,
    pub output_memory_refusals: u64,
    pub busy_replies: u64,
    pub output_memory_bytes: u64,
    pub sessions_total: u64,
    pub sessions_alive: u64,
    pub sessions_refused: u64,
    pub auth_failures: u64,
    pub auth_timeouts: u64,
    pub latency_us: Latency,
    /// The latency histogram since start (or the last reset): `[upper bound
    /// in µs, requests]` for every bucket that has any. Unlike percentiles,
    /// histograms subtract (what happened between two reads) and add (several
    /// proxies): the dashboard's chart is drawn from them.
    pub latency_buckets: Vec<(u64, u64)>,
    pub commands: Vec<CommandStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_their_values() {
        let mut last = 0;
        for us in [0u64, 1, 2, 3, 5, 7, 8, 100, 1000, 12345, 1 << 20, 1 << 30] {
            let b = bucket_of(us);
            assert!(b >= last, "{us}");
            assert!(
                bucket_bound(b) >= us.min(bucket_bound(BUCKETS - 1)),
                "{us} > bound of {b}"
            );
            last = b;
        }
    }

    #[test]
    fn percentiles() {
        let s = Stats::default();
        for _ in 0..90 {
            s.record(0, Duration::from_micros(10), false);
        }
        for _ in 0..10 {
            s.record(0, Duration::from_micros(1000), true);
        }
        let snap = s.snapshot();
        assert!(
            snap.latency_us.p50 >= 10 && snap.latency_us.p50 <= 13,
            "{:?}",
            snap.latency_us
        );
        assert!(
            snap.latency_us.p99 >= 1000 && snap.latency_us.p99 <= 1300,
            "{:?}",
            snap.latency_us
        );
        assert_eq!(snap.errors_total, 10);
        assert_eq!(snap.commands[0].calls, 100);
        // The histogram holds the same requests: 90 fast, 10 slow.
        let counts: Vec<u64> = snap.latency_buckets.iter().map(|&(_, n)| n).collect();
        assert_eq!(counts, vec![90, 10]);
        assert!(snap.latency_buckets[0].0 >= 10 && snap.latency_buckets[1].0 >= 1000);
    }

    #[test]
    fn blocking_calls_are_counted_but_their_wait_is_not_latency() {
        let s = Stats::default();
        let id = |name: &[u8]| command::lookup(name).expect("known").id;
        let (get, xread) = (id(b"get"), id(b"xread"));
        for _ in 0..50 {
            s.record(get, Duration::from_micros(100), false);
        }
        // The job role's XREADGROUP … BLOCK, many times over: each waited
        // seconds, and none may show in the percentiles.
        for _ in 0..50 {
            s.record_blocking(xread, false);
        }
        s.record_blocking(xread, true);
        // A non-blocking XREAD of the same command is timed as usual.
        s.record(xread, Duration::from_micros(300), false);
        let snap = s.snapshot();
        assert!(snap.latency_us.p99 <= 400, "{:?}", snap.latency_us);
        let timed: u64 = snap.latency_buckets.iter().map(|&(_, n)| n).sum();
        assert_eq!(timed, 51, "only the timed calls are in the histogram");
        assert_eq!((snap.ops_total, snap.errors_total), (102, 1));
        let x = snap.commands.iter().find(|c| c.name == "xread").expect("xread");
        assert_eq!((x.calls, x.errors, x.blocking_calls, x.usecs), (52, 1, 51, 300));
        assert_eq!(x.usecs_per_call, 300.0, "the mean of the one timed call");
        s.reset_counters();
        assert!(s.snapshot().commands.is_empty());
    }
}
