//! Telling that a client's script runs long on a redis-server, the way Redis
//! itself does for `busy-reply-threshold`: see `backend.rs`, whose shared
//! connections answer other clients `-BUSY` meanwhile instead of queueing
//! them behind the script.
//!
//! One watch per server (and threshold) in the process, shared by every
//! connection to it: each proxy worker has its own connections, and a script
//! on one holds the whole server. A script counts from its send until its
//! reply is delivered or dropped ([`ScriptRun`]), so no path can leave one
//! counted for ever. A `-BUSY` from Redis itself (its own threshold passed,
//! on another connection) is not an answer. Cost: nothing for other requests
//! but an atomic load per request and per reply; a clock read per reply
//! only while a script is out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use crate::libs::clock;

/// The scripts out on one server.
pub struct ScriptWatch {
    /// Scripts sent and not answered yet.
    out: AtomicUsize,
    /// The client whose script went out when none was: its own later
    /// requests queue behind it, as on its connection to one Redis.
    client: AtomicU64,
    /// [`clock_ms`] of the last reply read from the server while a script
    /// is out, or of the send of the script that found none out.
    heard_ms: AtomicU64,
    /// The threshold in ms (at least 1).
    after_ms: u64,
}

impl ScriptWatch {
    /// The watch of the server at `addr` with threshold `after`, shared by
    /// every connection of this process to it.
    pub fn of(addr: &str, after: Duration) -> Arc<ScriptWatch> {
        type Registry = parking_lot::Mutex<HashMap<(String, u64), Weak<ScriptWatch>>>;
        static WATCHES: OnceLock<Registry> = OnceLock::new();
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut watches = WATCHES.get_or_init(Default::default).lock();
        let key = (addr.to_string(), after_ms);
        if let Some(watch) = watches.get(&key).and_then(Weak::upgrade) {
            return watch;
        }
        // Servers come and go with the topology: forget those nobody uses.
        watches.retain(|_, w| w.strong_count() > 0);
        let watch = Arc::new(ScriptWatch {
            out: AtomicUsize::new(0),
            client: AtomicU64::new(0),
            heard_ms: AtomicU64::new(0),
            after_ms,
        });
        watches.insert(key, Arc::downgrade(&watch));
        watch
    }

    /// `client` sends a script: counted until the returned run is dropped.
    pub fn start(self: &Arc<Self>, client: u64) -> ScriptRun {
        if self.out.fetch_add(1, Ordering::AcqRel) == 0 {
            self.client.store(client, Ordering::Relaxed);
            self.heard_ms.store(clock_ms(), Ordering::Release);
        }
        ScriptRun { watch: self.clone() }
    }

    /// The server answered something (not a `-BUSY`): it is not stuck.
    pub fn heard(&self) {
        if self.out.load(Ordering::Acquire) > 0 {
            self.heard_ms.store(clock_ms(), Ordering::Release);
        }
    }

    /// How long the server has been silent with a script out, if that is
    /// past the threshold and `client` is not the script's own.
    pub fn busy_for(&self, client: u64) -> Option<u64> {
        if self.out.load(Ordering::Acquire) == 0 || self.client.load(Ordering::Relaxed) == client {
            return None;
        }
        let silent = clock_ms().saturating_sub(self.heard_ms.load(Ordering::Acquire));
        (silent >= self.after_ms).then_some(silent)
    }
}

/// One script out; dropping it (its reply delivered, failed or abandoned)
/// stops counting it.
pub struct ScriptRun {
    watch: Arc<ScriptWatch>,
}

impl Drop for ScriptRun {
    fn drop(&mut self) {
        self.watch.out.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Milliseconds on the process's monotonic clock.
fn clock_ms() -> u64 {
    u64::try_from(clock::since_start().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_server_with_a_script_out_is_busy_for_others_only() {
        let watch = ScriptWatch::of("127.0.0.1:1", Duration::from_millis(1));
        assert!(Arc::ptr_eq(
            &watch,
            &ScriptWatch::of("127.0.0.1:1", Duration::from_millis(1))
        ));
        assert!(watch.busy_for(2).is_none(), "no script out");
        let run = watch.start(1);
        std::thread::sleep(Duration::from_millis(5));
        assert!(watch.busy_for(2).is_some());
        assert!(watch.busy_for(1).is_none(), "the script's own client");
        watch.heard();
        assert!(watch.busy_for(2).is_none(), "it just answered");
        drop(run);
        std::thread::sleep(Duration::from_millis(5));
        assert!(watch.busy_for(2).is_none(), "the script is done");
    }
}
