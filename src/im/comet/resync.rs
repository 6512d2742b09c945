//! Adding this comet's sessions back after a group's master changed.
//!
//! A failover promotes a replica, which lacks the old master's last writes
//! (its replication lag; none with the proxy's `write_ack = "replica"`). A
//! session written in that window is gone, and so is a session whose TTL
//! renewals were: its client stays connected and heartbeating, but pushes to
//! it find nobody until its next renew, up to `renew_interval` (10 min) later.
//! So the comet watches the failover history in ZooKeeper, where the dashboard
//! records every change of a group's master once it is done, and on each new
//! record renews every session it holds through logic's `Heartbeat`, which
//! adds back one that is missing. [`CONCURRENCY`] calls run at a time.
//! Imports the `topo` store and the comet's `hub`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use super::stats::CometStats;
use crate::topo::error::TopoError;
use crate::topo::store::Store;

/// Heartbeat calls in flight at once during a resync.
pub const CONCURRENCY: usize = 64;
/// Wait before watching again after a ZooKeeper error.
const RETRY: Duration = Duration::from_secs(1);

/// Watches the failover history until `shutdown`, and renews every session
/// after each record added since the comet started.
pub async fn follow_failovers(store: Store, hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut seen: Option<u64> = None;
    loop {
        let watched = tokio::select! {
            () = shutdown.cancelled() => return,
            w = newest_and_watch(&store) => w,
        };
        let watch = match watched {
            Ok((newest, watch)) => {
                match seen {
                    // The first look: records from before the comet started
                    // are no news to it.
                    None => seen = Some(newest),
                    // Any change of the newest record (records are only ever
                    // added, and trimmed from the oldest end).
                    Some(last) if newest != last => {
                        seen = Some(newest);
                        // Thousands of calls when logic is slow: shutdown
                        // must not wait for them.
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = renew_all(&hub) => {}
                        }
                    }
                    Some(_) => {}
                }
                Some(watch)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the failover history; retrying");
                None
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = async {
                match watch {
                    Some(w) => {
                        w.changed().await;
                    }
                    None => tokio::time::sleep(RETRY).await,
                }
            } => {}
        }
    }
}

/// The newest failover record's number (0: none), and a watch that fires when
/// the records change.
async fn newest_and_watch(store: &Store) -> Result<(u64, zookeeper_client::OneshotWatcher), TopoError> {
    let zk = store.zk()?;
    let (names, watch) = zk.children_and_watch(&store.paths().failovers()).await?;
    let newest = names
        .iter()
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Ok((newest, watch))
}

/// Renews the session of every connection the comet holds now.
pub async fn renew_all(hub: &Hub) {
    let started = Instant::now();
    let channels = hub.buckets.channels();
    let sessions = channels.len();
    let failed = futures::stream::iter(channels)
        .map(|ch| async move { hub.link.heartbeat(ch.mid(), ch.key(), &hub.server_id).await })
        .buffer_unordered(CONCURRENCY)
        .fold(
            0usize,
            |failed, r| async move { failed + usize::from(r.is_err()) },
        )
        .await;
    CometStats::bump(&hub.stats.resyncs);
    let s = &hub.stats;
    s.resynced_sessions
        .fetch_add((sessions - failed) as u64, Ordering::Relaxed);
    s.resync_failures.fetch_add(failed as u64, Ordering::Relaxed);
    tracing::warn!(
        sessions,
        failed,
        took_ms = started.elapsed().as_millis() as u64,
        "a group's master changed: sessions renewed (a failover may have lost some)"
    );
}
