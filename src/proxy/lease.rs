//! The ZooKeeper lease: a proxy serves slot traffic only while it can prove its
//! ZooKeeper session is alive.
//!
//! Why: once a slot's migration has begun, no proxy may route a write for it to
//! the old group, including a proxy cut off from ZooKeeper that never heard of the
//! migration. ZooKeeper expires a session `session_timeout` after it last heard
//! from the client, and only then may the cluster treat the proxy as gone. So the
//! proxy must stop on its own *before* that moment.
//!
//! How: a probe reads a node every `timeout / 6`. A read that succeeds was
//! received by the server after it was *sent*, so the session cannot expire before
//! `sent + timeout`. The proxy serves until `sent + timeout * 2/3` of the last
//! success, a margin of a third of the timeout for clocks and scheduling. Without
//! a successful probe the lease simply runs out; nothing has to notice the
//! failure for the proxy to become safe. After a new session (the old one
//! expired), the topology is reloaded in full before the lease is renewed, so the
//! proxy never serves from a table it might have missed changes to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::context::Context;
use crate::topo::{Store, watcher};

/// The instant until which slot traffic may be served, shared by every worker.
pub struct Lease {
    base: Instant,
    /// Nanoseconds after `base`; 0 means "not granted".
    until: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            base: Instant::now(),
            until: AtomicU64::new(0),
        }
    }
}

impl Lease {
    /// True while `now` is within the lease.
    pub fn valid_at(&self, now: Instant) -> bool {
        let nanos = now.saturating_duration_since(self.base).as_nanos() as u64;
        nanos < self.until.load(Ordering::Relaxed)
    }

    /// Extends the lease to `until` (never shortens it: a slow, stale probe must
    /// not undo a newer one).
    pub fn extend(&self, until: Instant) {
        let nanos = until.saturating_duration_since(self.base).as_nanos() as u64;
        self.until.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Ends the lease at once (shutdown, or a new session not yet resynced).
    pub fn revoke(&self) {
        self.until.store(0, Ordering::Relaxed);
    }
}

/// Keeps `lease` alive while the ZooKeeper session is, until `cancel`.
/// `workers` are resynced after a session change.
pub async fn keep(store: Store, lease: Arc<Lease>, workers: Vec<Arc<Context>>, cancel: CancellationToken) {
    // The session generation the routers were last synced with.
    let mut synced = store.session().borrow().generation;
    let mut warned = false;
    loop {
        let timeout = session_timeout(&store);
        let period = (timeout / 6).max(Duration::from_millis(50));
        let sent = Instant::now();
        if probe(&store, &lease, &workers, &mut synced, period).await {
            lease.extend(sent + timeout * 2 / 3);
            if warned {
                tracing::info!("ZooKeeper reachable again: serving slot traffic");
                warned = false;
            }
        } else if !warned && !lease.valid_at(Instant::now() + period) {
            tracing::warn!("ZooKeeper unreachable: slot traffic stops when the lease ends");
            warned = true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until((sent + period).into()) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// One probe: true if the session answered and the routers are synced with it.
async fn probe(
    store: &Store,
    lease: &Lease,
    workers: &[Arc<Context>],
    synced: &mut u64,
    wait: Duration,
) -> bool {
    // Probe through one session object and judge by *its* generation: the store
    // may install a new session before it announces the new generation.
    let Ok(zk) = store.zk() else { return false };
    let path = store.paths().product();
    if !matches!(tokio::time::timeout(wait, zk.exists(path)).await, Ok(Ok(_))) {
        return false;
    }
    if zk.generation() == *synced {
        return true;
    }
    // A new session: changes made while we were away may have left no watch
    // event. Reload everything before serving again.
    lease.revoke();
    match watcher::load_from(&zk, store.paths()).await {
        Ok(topo) => {
            for w in workers {
                w.router.apply(&topo);
            }
            *synced = zk.generation();
            tracing::info!(generation = *synced, "new ZooKeeper session: topology resynced");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "resync after a new ZooKeeper session failed");
            false
        }
    }
}

/// The session timeout in force: the one the server granted if known (it clamps
/// the requested one), else the configured one.
pub(crate) fn session_timeout(store: &Store) -> Duration {
    store
        .client()
        .map(|c| c.session_timeout())
        .unwrap_or(store.config().session_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_valid_until_its_end_and_never_shrinks() {
        let lease = Lease::default();
        let now = Instant::now();
        assert!(!lease.valid_at(now), "not granted at start");
        lease.extend(now + Duration::from_secs(2));
        assert!(lease.valid_at(now + Duration::from_secs(1)));
        assert!(!lease.valid_at(now + Duration::from_secs(3)));
        lease.extend(now + Duration::from_secs(1));
        assert!(
            lease.valid_at(now + Duration::from_millis(1500)),
            "a stale probe must not shorten it"
        );
        lease.revoke();
        assert!(!lease.valid_at(now));
    }
}
