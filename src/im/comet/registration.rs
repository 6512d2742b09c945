//! comet's entry in ZooKeeper ([`crate::im::discovery`]): an ephemeral node with
//! its addresses, ports, weight, offline flag and connection/IP counts,
//! rewritten every `register_interval` (10 s) with fresh counts, so logic's
//! node selection and online totals and job's fan-out see it. Also logs the
//! counters at each refresh. Imports `im::discovery`, the `topo` store, `hub`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use crate::im::discovery::{self, Instance, InstanceKind};
use crate::topo::error::TopoError;
use crate::topo::store::Store;

/// Writes `template` with the hub's current counts.
///
/// # Errors
/// A ZooKeeper failure, or another live session owning the same server id.
pub async fn register(store: &Store, hub: &Hub, template: &Instance) -> Result<(), TopoError> {
    let mut instance = template.clone();
    instance.conn_count = hub.buckets.conn_count() as u64;
    instance.ip_count = hub.buckets.ip_count() as u64;
    discovery::register(store, InstanceKind::Comet, &instance).await
}

/// Rewrites the registration every `interval` until `shutdown`.
pub async fn refresh_loop(
    store: Store,
    hub: Arc<Hub>,
    template: Instance,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = register(&store, &hub, &template).await {
            tracing::warn!(error = %e, id = %template.id, "refreshing the comet registration failed");
        }
        let stats = hub.stats.snapshot();
        tracing::debug!(conns = hub.buckets.conn_count(), ?stats, "comet counters");
    }
}
