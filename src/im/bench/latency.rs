//! Latency samples: the pusher stamps each push body with the time since a
//! process-wide epoch, the crowd's sink turns a received body back into
//! POST-to-receipt latency. Pusher and crowd share the process, so one
//! monotonic clock (`libs::clock`) serves both.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::libs::clock;

/// The body of a push sent now: nanoseconds since the epoch, in decimal.
pub fn stamp() -> Vec<u8> {
    let ns = u64::try_from(clock::since_start().as_nanos()).unwrap_or(u64::MAX);
    ns.to_string().into_bytes()
}

/// Collected latencies, in microseconds.
#[derive(Default)]
pub struct Latencies {
    samples: Mutex<Vec<u64>>,
}

impl Latencies {
    /// Records the latency of a received body (ignored if it is no stamp).
    pub fn record(&self, body: &[u8]) {
        let Some(sent) = std::str::from_utf8(body).ok().and_then(|s| s.parse::<u64>().ok()) else {
            return;
        };
        let now = u64::try_from(clock::since_start().as_nanos()).unwrap_or(u64::MAX);
        self.samples.lock().push(now.saturating_sub(sent) / 1000);
    }

    /// How many were recorded.
    pub fn len(&self) -> usize {
        self.samples.lock().len()
    }

    /// Whether none was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `q` quantile (0..=1) in microseconds, 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let mut s = self.samples.lock().clone();
        if s.is_empty() {
            return 0;
        }
        s.sort_unstable();
        let idx = ((s.len() - 1) as f64 * q).round() as usize;
        s[idx.min(s.len() - 1)]
    }
}

/// A shared sink for a crowd.
pub fn sink(l: &Arc<Latencies>) -> crate::im::bench::crowd::PushSink {
    let l = l.clone();
    Arc::new(move |body: &[u8]| l.record(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_comes_back_as_a_small_latency() {
        let l = Latencies::default();
        l.record(&stamp());
        l.record(b"not a stamp");
        assert_eq!(l.len(), 1);
        assert!(l.quantile(0.5) < 1_000_000);
    }
}
