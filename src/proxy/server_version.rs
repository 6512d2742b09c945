//! The Redis version the proxy reports in `HELLO`: the lowest `redis_version`
//! of the masters, as `INFO` reports it (`info.rs`).
//!
//! Clients read it: StackExchange.Redis, for one, takes `HELLO`'s `version`
//! as the server's and turns off what that version lacks, so reborn's own
//! version (0.x) there made it treat the cluster as a Redis from before
//! streams. `HELLO` is a connection's first command and must not wait on the
//! backends each time, so the version is remembered: answered from memory,
//! refreshed in the background once it is older than [`FRESH_FOR`] (a rolling
//! upgrade of the servers shows within that), and asked for only when the
//! proxy has never heard it.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How long a learned version is used without asking again.
pub const FRESH_FOR: Duration = Duration::from_secs(60);

/// The last version learned, and when it was learned or last asked for.
#[derive(Default)]
pub struct ServerVersion {
    learned: Mutex<Option<(String, Instant)>>,
}

impl ServerVersion {
    /// The version last learned, and whether the caller should ask the
    /// masters again: true at most once per [`FRESH_FOR`], so a storm of new
    /// connections sends one `INFO`, not one each.
    pub fn get(&self) -> Option<(String, bool)> {
        let mut learned = self.learned.lock();
        let (version, at) = learned.as_mut()?;
        let stale = at.elapsed() >= FRESH_FOR;
        if stale {
            *at = Instant::now();
        }
        Some((version.clone(), stale))
    }

    /// Remembers what the masters said.
    pub fn learn(&self, version: String) {
        *self.learned.lock() = Some((version, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stale_version_is_asked_for_once_per_period() {
        let v = ServerVersion::default();
        assert!(v.get().is_none(), "nothing learned yet");
        v.learn("7.0.15".into());
        assert_eq!(v.get(), Some(("7.0.15".into(), false)));
        tokio::time::advance(FRESH_FOR).await;
        assert_eq!(v.get(), Some(("7.0.15".into(), true)), "stale: ask");
        assert_eq!(v.get(), Some(("7.0.15".into(), false)), "asked already");
        tokio::time::advance(FRESH_FOR).await;
        assert_eq!(
            v.get(),
            Some(("7.0.15".into(), true)),
            "the answer never came: ask again"
        );
    }
}
