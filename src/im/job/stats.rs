//! What job has done since it started: counters a test or an operator reads to
//! see that nothing was lost silently (every drop has a reason and a count).
//! Imports nothing from the crate.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by every task of one job instance.
#[derive(Debug, Default)]
pub struct JobStats {
    /// Stream entries read (new and claimed).
    pub read: AtomicU64,
    /// Entries claimed by `XAUTOCLAIM` from other (dead or slow) consumers, or
    /// from this one after it failed to ack them (not those it is still
    /// delivering: those are left to that delivery).
    pub claimed: AtomicU64,
    /// Entries acknowledged (`XACK`).
    pub acked: AtomicU64,
    /// Key pushes handed to their comet.
    pub pushed: AtomicU64,
    /// Broadcasts handed to the comets (one per message, whatever the comet count).
    pub broadcast: AtomicU64,
    /// Room messages handed to the comets inside a batch.
    pub room_messages: AtomicU64,
    /// Room batches sent (`BroadcastRoom` calls, one per batch whatever the comet count).
    pub room_batches: AtomicU64,
    /// Key pushes dropped because no comet has the server id they name.
    pub dropped_unknown_server: AtomicU64,
    /// Broadcasts and room batches dropped because no comet was registered.
    pub dropped_no_comet: AtomicU64,
    /// Calls to one comet given up after their retries (or refused outright).
    pub dropped_rpc_failed: AtomicU64,
    /// Entries that were not a decodable push (acked so they never come back).
    pub bad_entries: AtomicU64,
    /// Consumers of dead job instances deleted from a group (`reaper.rs`).
    pub consumers_deleted: AtomicU64,
}

/// A plain copy of [`JobStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobStatsSnapshot {
    /// See [`JobStats::read`].
    pub read: u64,
    /// See [`JobStats::claimed`].
    pub claimed: u64,
    /// See [`JobStats::acked`].
    pub acked: u64,
    /// See [`JobStats::pushed`].
    pub pushed: u64,
    /// See [`JobStats::broadcast`].
    pub broadcast: u64,
    /// See [`JobStats::room_messages`].
    pub room_messages: u64,
    /// See [`JobStats::room_batches`].
    pub room_batches: u64,
    /// See [`JobStats::dropped_unknown_server`].
    pub dropped_unknown_server: u64,
    /// See [`JobStats::dropped_no_comet`].
    pub dropped_no_comet: u64,
    /// See [`JobStats::dropped_rpc_failed`].
    pub dropped_rpc_failed: u64,
    /// See [`JobStats::bad_entries`].
    pub bad_entries: u64,
    /// See [`JobStats::consumers_deleted`].
    pub consumers_deleted: u64,
}

impl JobStats {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> JobStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        JobStatsSnapshot {
            read: get(&self.read),
            claimed: get(&self.claimed),
            acked: get(&self.acked),
            pushed: get(&self.pushed),
            broadcast: get(&self.broadcast),
            room_messages: get(&self.room_messages),
            room_batches: get(&self.room_batches),
            dropped_unknown_server: get(&self.dropped_unknown_server),
            dropped_no_comet: get(&self.dropped_no_comet),
            dropped_rpc_failed: get(&self.dropped_rpc_failed),
            bad_entries: get(&self.bad_entries),
            consumers_deleted: get(&self.consumers_deleted),
        }
    }
}
