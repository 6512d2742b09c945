//! What job has done since it started: counters a test or an operator reads to
//! see that nothing was lost silently (every drop has a reason and a count),
//! in logs, tests and the admin port's `/stats` and `/metrics`. Imports
//! `libs::counters`.

use std::sync::atomic::{AtomicU64, Ordering};

crate::counters! {
    /// Counters shared by every task of one job instance.
    pub struct JobStats => JobStatsSnapshot {
        /// Stream entries read (new and claimed).
        read,
        /// Entries claimed by `XAUTOCLAIM` from other (dead or slow) consumers, or
        /// from this one after it failed to ack them (not those it is still
        /// delivering: those are left to that delivery).
        claimed,
        /// Entries acknowledged (`XACK`).
        acked,
        /// Key pushes handed to their comet.
        pushed,
        /// Broadcasts handed to the comets (one per message, whatever the comet count).
        broadcast,
        /// Room messages handed to the comets inside a batch.
        room_messages,
        /// Room batches sent (`BroadcastRoom` calls, one per batch whatever the comet count).
        room_batches,
        /// Key pushes dropped because no comet has the server id they name.
        dropped_unknown_server,
        /// Broadcasts and room batches dropped because no comet was registered.
        dropped_no_comet,
        /// Calls to one comet given up after their retries (or refused outright).
        dropped_rpc_failed,
        /// Entries that were not a decodable push (acked so they never come back).
        bad_entries,
        /// Consumers of dead job instances deleted from a group (`reaper.rs`).
        consumers_deleted,
    }
}

impl JobStats {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
