//! comet's counters: plain atomics bumped on the connection and push paths,
//! read as a [`CometStatsSnapshot`] for logs, tests and the admin port's
//! `/stats` and `/metrics`. Imports `libs::counters`.

use std::sync::atomic::{AtomicU64, Ordering};

crate::counters! {
    /// Counters since start; every field only grows.
    pub struct CometStats => CometStatsSnapshot {
    /// Raw TCP connections accepted.
    accepted_tcp,
    /// WebSocket upgrades accepted (plain and TLS).
    accepted_ws,
    /// Connections that authenticated.
    auth_ok,
    /// Connections logic refused (op 8 with an error body, then closed).
    auth_refused,
    /// Auth attempts that failed because logic could not be reached.
    auth_failed,
    /// Connections closed for not authenticating within the handshake timeout.
    handshake_timeouts,
    /// Connections closed for sending no heartbeat within their idle timeout.
    idle_timeouts,
    /// Frames sent before auth, logged and skipped.
    skipped_before_auth,
    /// Connections closed for a header length other than 16.
    bad_header_len,
    /// Connections closed for a body over the maximum.
    bad_body_len,
    /// Connections closed for a pack length shorter than the header (negative included).
    bad_pack_len,
    /// Connections closed for other garbage: a truncated WebSocket message, a
    /// WebSocket protocol error, a refused upgrade or TLS handshake.
    bad_input,
    /// Old connections closed because a new one authenticated with their key.
    kicked,
    /// Push frames queued to connections, one per connection a push
    /// reached (a room's messages job batched into one OpRaw count once).
    pushes_queued,
    /// Push frames dropped because a connection's send queue was full.
    pushes_dropped,
    /// Client frames handled after auth (heartbeats, room and op control, messages).
    client_frames,
    /// Connections closed, for any reason.
    closed,
    /// Times the sessions on a group were renewed because its master changed
    /// (`resync`; a failover that touched none of this comet's sessions does
    /// not count).
    resyncs,
    /// Sessions renewed by those.
    resynced_sessions,
    /// Renewals of those that failed (logic or the cluster unreachable).
    resync_failures,
    }
}

impl CometStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl CometStatsSnapshot {
    /// Connections closed for bad input of any kind.
    pub fn bad_frames(&self) -> u64 {
        self.bad_header_len + self.bad_body_len + self.bad_pack_len + self.bad_input
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_copies_the_counters() {
        let s = CometStats::default();
        CometStats::bump(&s.bad_body_len);
        CometStats::bump(&s.bad_input);
        CometStats::bump(&s.kicked);
        let snap = s.snapshot();
        assert_eq!((snap.kicked, snap.bad_frames()), (1, 2));
    }
}
