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
//!
//! A slow ZooKeeper is not a lost one. Probes overlap: each waits for its answer
//! as long as that answer could still extend the lease, so a server that answers
//! in 500 ms keeps a 2 s session's lease alive. And a request that finds the
//! lease lapsed is held (as a request of a switching slot is, `hold_timeout`)
//! until a probe renews it: a ZooKeeper stall costs clients latency, and an
//! error only when it outlasts the hold.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::context::Context;
use crate::topo::{Paths, Store, ZkSession, watcher};

/// The instant until which slot traffic may be served, shared by every worker.
pub struct Lease {
    base: Instant,
    /// Nanoseconds after `base`; 0 means "not granted".
    until: AtomicU64,
    /// Wakes requests held for the lease when it is extended.
    extended: Notify,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            base: Instant::now(),
            until: AtomicU64::new(0),
            extended: Notify::new(),
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
        if self.until.fetch_max(nanos, Ordering::Relaxed) < nanos {
            self.extended.notify_waiters();
        }
    }

    /// Waits until the lease is valid (true) or `deadline` passes (false).
    pub async fn wait_valid(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            // Registered before the check, so an extension in between wakes us.
            let extended = self.extended.notified();
            tokio::pin!(extended);
            extended.as_mut().enable();
            if self.valid_at(Instant::now()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, extended).await.is_err() {
                return self.valid_at(Instant::now());
            }
        }
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
    let mut probes = JoinSet::new();
    let mut next = tokio::time::Instant::now();
    loop {
        let timeout = session_timeout(&store);
        let period = (timeout / 6).max(Duration::from_millis(50));
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                next += period;
                // A probe is worth waiting for while its answer could still
                // extend the lease; a few overlap when ZooKeeper is slow.
                if probes.len() < MAX_PROBES {
                    probes.spawn(probe(store.clone(), timeout * 2 / 3));
                }
                if !warned && !lease.valid_at(Instant::now() + period) {
                    tracing::warn!("ZooKeeper unreachable: slot traffic stops when the lease ends");
                    warned = true;
                }
            }
            Some(done) = probes.join_next() => {
                let Ok(Some((sent, zk))) = done else { continue };
                if renew(&zk, store.paths(), &lease, &workers, &mut synced).await {
                    lease.extend(sent + timeout * 2 / 3);
                    if warned {
                        tracing::info!("ZooKeeper reachable again: serving slot traffic");
                        warned = false;
                    }
                }
            }
            _ = cancel.cancelled() => return,
        }
    }
}

/// Probes in flight at most: `timeout * 2/3` over a period of `timeout / 6`.
const MAX_PROBES: usize = 4;

/// One probe: the session that answered and when the probe was sent, or None
/// if it did not answer within `wait`.
async fn probe(store: Store, wait: Duration) -> Option<(Instant, ZkSession)> {
    let sent = Instant::now();
    // Probe through one session object and judge by *its* generation: the store
    // may install a new session before it announces the new generation.
    let zk = store.zk().ok()?;
    let path = store.paths().product();
    match tokio::time::timeout(wait, zk.exists(path)).await {
        Ok(Ok(_)) => Some((sent, zk)),
        _ => None,
    }
}

/// True if a probe that `zk` answered may renew the lease: its session is the
/// one the routers are synced with (after resyncing them to a new one).
async fn renew(
    zk: &ZkSession,
    paths: &Paths,
    lease: &Lease,
    workers: &[Arc<Context>],
    synced: &mut u64,
) -> bool {
    if zk.generation() == *synced {
        return true;
    }
    if zk.generation() < *synced {
        // A late answer from the session before the one we resynced with.
        return false;
    }
    // A new session: changes made while we were away may have left no watch
    // event. Reload everything before serving again.
    lease.revoke();
    match watcher::load_from(zk, paths).await {
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

    #[tokio::test]
    async fn a_held_request_wakes_when_the_lease_is_extended() {
        let lease = Arc::new(Lease::default());
        let far = tokio::time::Instant::now() + Duration::from_secs(30);
        let waiter = tokio::spawn({
            let lease = lease.clone();
            async move { lease.wait_valid(far).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no lease yet");
        lease.extend(Instant::now() + Duration::from_secs(5));
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(woke, Ok(Ok(true))), "{woke:?}");
        // Without an extension it gives up at the deadline.
        lease.revoke();
        let soon = tokio::time::Instant::now() + Duration::from_millis(20);
        assert!(!lease.wait_valid(soon).await);
    }
}
