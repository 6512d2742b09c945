//! Logic's counters, served as Prometheus text on `GET /metrics` of the HTTP
//! API. `pushes` (HTTP pushes accepted) is what the push benchmark reads as
//! logic's accepted pushes per second. Imports `libs::prometheus`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::libs::prometheus::{Exposition, MetricKind};

/// Monotonic counters, shared by the HTTP and gRPC halves.
#[derive(Debug, Default)]
pub struct LogicStats {
    /// HTTP push requests accepted (code 0).
    pub pushes: AtomicU64,
    /// `PushMsg`s appended to the queue.
    pub queued: AtomicU64,
    /// HTTP requests refused as bad (code -400).
    pub bad_requests: AtomicU64,
    /// HTTP requests failed on the cluster (code -500).
    pub failures: AtomicU64,
    /// Connections authenticated (`Connect` succeeded).
    pub connects: AtomicU64,
    /// Connections refused (bad auth body or token).
    pub auth_refused: AtomicU64,
}

impl LogicStats {
    /// The counters in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let rows = [
            (
                "reborn_logic_pushes_accepted_total",
                "HTTP pushes accepted",
                &self.pushes,
            ),
            (
                "reborn_logic_push_messages_queued_total",
                "PushMsgs appended to the queue",
                &self.queued,
            ),
            (
                "reborn_logic_bad_requests_total",
                "HTTP requests refused with code -400",
                &self.bad_requests,
            ),
            (
                "reborn_logic_failures_total",
                "HTTP requests failed with code -500",
                &self.failures,
            ),
            (
                "reborn_logic_connects_total",
                "client connections authenticated",
                &self.connects,
            ),
            (
                "reborn_logic_auth_refused_total",
                "client connections refused",
                &self.auth_refused,
            ),
        ];
        let mut page = Exposition::new();
        for (name, help, v) in rows {
            page.single(name, help, MetricKind::Counter, v.load(Ordering::Relaxed));
        }
        page.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_text() {
        let s = LogicStats::default();
        s.pushes.fetch_add(3, Ordering::Relaxed);
        let text = s.prometheus();
        assert!(text.contains("reborn_logic_pushes_accepted_total 3\n"), "{text}");
        assert!(text.contains("# TYPE reborn_logic_connects_total counter"));
    }
}
