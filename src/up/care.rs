//! What `reborn up` does with a process of its own that dies (a crash, a
//! `kill -9` to watch a failover): it reaps it at once, so no zombie is left,
//! starts it again after a delay, and leaves it alone if someone else's
//! process took its port meanwhile (an operator who restarted it by hand).
//! `Servers::tend` drives it for every redis-server and ZooKeeper member.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::error::UpError;

/// A process `reborn up` tends.
pub(super) trait Tended {
    /// What it is, for the log: `redis-server 127.0.0.1:16379`.
    fn what(&self) -> String;
    /// Its exit status if it died by itself, reaping it; `None` while it runs.
    fn ended(&mut self) -> Option<ExitStatus>;
    /// Starts it again on its port, dir and config; blocks until it serves.
    fn restart(&mut self) -> Result<(), UpError>;
}

/// Whether a process runs, waits to be started again, or was left alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Care {
    #[default]
    Running,
    /// Died at this instant.
    Died(Instant),
    /// Its port is someone else's now; we leave it alone.
    LeftAlone,
}

impl Care {
    /// Notices that `process` died, or starts it again once it has been dead
    /// for `after`. `then` ends the log line of a death (what comes back).
    pub(super) fn tend(&mut self, process: &mut impl Tended, after: Duration, then: &str, now: Instant) {
        match *self {
            Care::Running => {
                if let Some(status) = process.ended() {
                    let what = process.what();
                    tracing::warn!(%status, "{what} died; reborn up starts it again in {after:?}{then}");
                    *self = Care::Died(now);
                }
            }
            Care::Died(at) if now.duration_since(at) >= after => {
                let what = process.what();
                *self = match process.restart() {
                    Ok(()) => {
                        tracing::info!("{what} started again");
                        Care::Running
                    }
                    Err(e @ UpError::PortInUse { .. }) => {
                        tracing::warn!("{e}; reborn up leaves {what} to whoever started it");
                        Care::LeftAlone
                    }
                    Err(e) => {
                        tracing::warn!("cannot start {what} again: {e}; trying again in {after:?}");
                        Care::Died(now)
                    }
                };
            }
            Care::Died(_) | Care::LeftAlone => {}
        }
    }
}
