//! Acknowledging actions: the proxy side of the two-phase slot switch
//! (`topo::action`).
//!
//! For each new action the proxy acknowledges only when it is true that:
//!
//! 1. every worker routes by a slot table at least as new as the action;
//! 2. for `pre_migrate`, no request of the action's slots is still in flight to
//!    the source: a `PING` went down every source connection of every worker
//!    after the routes changed, and Redis answers a connection in order, so when
//!    every `PING` is answered, every earlier request is too. (No per-request
//!    counters on the hot path.) Blocking commands of those slots parked on
//!    dedicated connections are then interrupted with `CLIENT UNBLOCK` and
//!    waited for; their sessions re-issue them on the new route
//!    (`blocked.rs`). The `PING`s go first, so a push already on its way to
//!    the source still reaches a command blocked there. A transaction's `EXEC`
//!    out on its own connection is registered the same way, so it is waited
//!    for too (`pinned.rs`).
//!
//! Then it writes the ephemeral node `acks/<seq>/<proxy id>`.
//!
//! An acknowledgement is an ephemeral node, so it lives only as long as the
//! session that wrote it. After the session expires, the latest action is
//! acknowledged again on the new one: the dashboard may still be waiting for
//! it, and it counts this proxy as live again as soon as the store re-creates
//! the proxy's node. For the same reason a node left by another session (a
//! killed predecessor of this proxy, or our own expired session not reaped
//! yet) is replaced rather than taken as ours.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::blocked::{self, InterruptError};
use super::context::Context;
use super::router::{Pool, SlotRoute};
use crate::topo::model::{Action, SlotState};
use crate::topo::{Store, TopoError, Topology, ZkSession};

/// Longest wait for workers to apply an action or for source replies.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an action could not be acknowledged yet. Every case is safe to retry:
/// acknowledging is idempotent, and [`run`] tries again shortly.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("workers did not apply it")]
    NotApplied,
    #[error("the source did not answer in time")]
    SourceTimeout,
    #[error("a source connection closed")]
    SourceClosed,
    /// Blocking commands of the slots could not be moved off the source.
    #[error(transparent)]
    Blocked(#[from] InterruptError),
    #[error(transparent)]
    Topo(#[from] TopoError),
}

/// Acknowledges every new action seen in `topo` until `cancel`.
pub async fn run(
    store: Store,
    mut topo: watch::Receiver<Arc<Topology>>,
    workers: Vec<Arc<Context>>,
    proxy_id: String,
    cancel: CancellationToken,
) {
    let mut acked = 0u64;
    let mut session = store.session();
    let mut generation = session.borrow_and_update().generation;
    loop {
        // Acks written on an older session are gone with it: write the latest
        // one again (see the module docs).
        let now = session.borrow_and_update().generation;
        if now != generation {
            generation = now;
            acked = 0;
        }
        let action = topo.borrow_and_update().action.clone();
        let mut retry = false;
        if let Some(a) = action.filter(|a| a.seq > acked) {
            match acknowledge(&store, &a, &workers, &proxy_id).await {
                Ok(()) => acked = a.seq,
                Err(e) => {
                    tracing::warn!(seq = a.seq, error = %e, "cannot acknowledge action yet");
                    retry = true;
                }
            }
        }
        let retry_soon = async {
            if retry {
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            changed = topo.changed() => if changed.is_err() { return },
            changed = session.changed() => if changed.is_err() { return },
            _ = retry_soon => {}
            _ = cancel.cancelled() => return,
        }
    }
}

async fn acknowledge(store: &Store, a: &Action, workers: &[Arc<Context>], id: &str) -> Result<(), AckError> {
    // Each router stores the action's sequence before it signals the change,
    // so a change subscribed to before the check cannot be missed.
    let applied = async {
        for w in workers {
            let mut changes = w.router.subscribe();
            while w.router.applied_action() < a.seq {
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, applied)
        .await
        .map_err(|_| AckError::NotApplied)?;
    if a.phase == SlotState::PreMigrate {
        drain_sources(a, workers).await?;
        let interrupted = blocked::interrupt(&a.slots, workers, STEP_TIMEOUT).await?;
        if interrupted > 0 {
            tracing::info!(seq = a.seq, interrupted, "blocking commands moved off the source");
        }
    }
    let zk = store.zk()?;
    let paths = store.paths();
    // The ack first: its parent exists once any proxy has acknowledged, so
    // most proxies write theirs in one round trip while the slots wait.
    let ack = paths.ack(a.seq, id);
    match write_ack(&zk, &ack).await {
        Err(e) if e.is_not_found() => {
            zk.mkdir_p(&paths.acks_of(a.seq)).await?;
            write_ack(&zk, &ack).await?;
        }
        other => other?,
    }
    tracing::info!(seq = a.seq, phase = ?a.phase, slots = a.slots.len(), "action acknowledged");
    Ok(())
}

/// Creates the ack node `path` owned by `zk`'s session. One found owned by
/// another session is deleted first: it would vanish when that session is
/// reaped, possibly while the dashboard still waits for it.
async fn write_ack(zk: &ZkSession, path: &str) -> Result<(), TopoError> {
    loop {
        match zk.create_raw(path, b"", zk::CreateMode::Ephemeral).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
        match zk.stat(path).await? {
            Some(stat) if stat.ephemeral_owner == zk.session_id() => return Ok(()),
            Some(stat) => match zk.delete(path, Some(stat.version)).await {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            },
            // Gone in between: create it again.
            None => {}
        }
    }
}

/// Waits until nothing of `a`'s slots is in flight to their source (and,
/// with [`Action::drain_target`], to their target).
async fn drain_sources(a: &Action, workers: &[Arc<Context>]) -> Result<(), AckError> {
    let replies = {
        // Pointers are not Send: keep them out of the awaits below.
        let mut seen: HashSet<*const Pool> = HashSet::new();
        let mut replies = Vec::new();
        for w in workers {
            let routes = w.router.routes();
            for &slot in &a.slots {
                if let SlotRoute::Switching { source: Some(pool) } = routes.get(slot)
                    && seen.insert(Arc::as_ptr(pool))
                {
                    replies.extend(pool.barrier());
                }
            }
            // Migrating slots held again: what went to their target too. A
            // target that owns no other slot has no pool left to drain; its
            // connections closed after their replies.
            if a.drain_target
                && let Some(pool) = routes
                    .groups
                    .iter()
                    .find(|g| g.id == a.to)
                    .and_then(|g| g.master.as_ref())
                && seen.insert(Arc::as_ptr(pool))
            {
                replies.extend(pool.barrier());
            }
        }
        replies
    };
    for rx in replies {
        // A backend that is down answers at once with an error: nothing is in
        // flight there either.
        tokio::time::timeout(STEP_TIMEOUT, rx)
            .await
            .map_err(|_| AckError::SourceTimeout)?
            .map_err(|_| AckError::SourceClosed)?;
    }
    Ok(())
}
