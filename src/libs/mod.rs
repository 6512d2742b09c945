//! Leaf utilities shared by every role. Nothing here imports from the rest of the
//! crate, so any module may depend on `libs` without creating a cycle.

pub mod backoff;
pub mod browser_guard;
pub mod clock;
pub mod config;
pub mod copy_mark;
pub mod counters;
pub mod fd_limit;
pub mod hash;
pub mod listener;
pub mod load;
pub mod logging;
pub mod migrate;
pub mod outage;
pub mod pid_space;
pub mod prometheus;
pub mod protocol;
pub mod reachable;
pub mod resp;
pub mod resp_client;
#[cfg(test)]
mod resp_properties;
pub mod shutdown;
pub mod table;
pub mod tombstone;
pub mod wait_mark;
