//! The proxy as a failover observer: it pings every master it routes to and
//! publishes, in its ephemeral node `observations/<proxy id>`, the masters it
//! has not heard from for `master_down_after` and that do not even accept a
//! connection, or has not heard from for `master_busy_down_after` (a master
//! busy with a slow command accepts connections, see `libs::reachable`).
//!
//! Why the proxies: they are the clients whose view matters, there is one per
//! machine of the data path, and ZooKeeper already tells which of them are
//! alive (their node goes with their session). The dashboard leader counts
//! these votes, with its own, and fails a group over only on a majority
//! (`topo::manager::failover`). A ping runs on a connection of its own, not
//! behind clients' pipelines, so a busy master is not mistaken for a dead one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::libs::reachable::{self, DownAfter};
use crate::libs::resp_client::{RespConn, RespError};
use crate::topo::model::Observation;
use crate::topo::{Store, Topology};

/// What the observer needs to know.
#[derive(Clone, Debug)]
pub struct ObserverConfig {
    /// This proxy's id (its node's name).
    pub id: String,
    /// Ping period, and the timeout of one ping.
    pub interval: Duration,
    /// Silence after which a master is reported down: shorter when its
    /// port does not even accept a connection.
    pub down_after: DownAfter,
    /// The backends' password, if any.
    pub auth: Option<String>,
}

/// Pings the masters of `topo` and publishes the ones down, until `cancel`.
pub async fn run(
    store: Store,
    topo: watch::Receiver<Arc<Topology>>,
    cfg: ObserverConfig,
    cancel: CancellationToken,
) {
    let path = store.paths().observation(&cfg.id);
    let mut conns: HashMap<String, RespConn> = HashMap::new();
    let mut last_heard: HashMap<String, Instant> = HashMap::new();
    // When a master last answered or at least accepted a connection.
    let mut last_reached: HashMap<String, Instant> = HashMap::new();
    let mut published: Option<BTreeSet<String>> = None;
    loop {
        let round = Instant::now();
        let masters: BTreeSet<String> = topo
            .borrow()
            .groups
            .values()
            .filter_map(|g| g.master().map(str::to_string))
            .collect();
        conns.retain(|m, _| masters.contains(m));
        last_heard.retain(|m, _| masters.contains(m));
        last_reached.retain(|m, _| masters.contains(m));
        let pings = masters.iter().map(|m| {
            let conn = conns.remove(m);
            let cfg = &cfg;
            async move {
                let conn = ping(m, conn, cfg).await;
                let reached = conn.is_some() || reachable::accepts_connections(m, cfg.interval).await;
                (m.clone(), conn, reached)
            }
        });
        for (master, conn, reached) in futures::future::join_all(pings).await {
            let now = Instant::now();
            if reached {
                last_reached.insert(master.clone(), now);
            } else {
                last_reached.entry(master.clone()).or_insert(round);
            }
            match conn {
                Some(conn) => {
                    conns.insert(master.clone(), conn);
                    last_heard.insert(master, now);
                }
                // A master first seen down counts from now, not from ever.
                None => {
                    last_heard.entry(master).or_insert(round);
                }
            }
        }
        let down: BTreeSet<String> = last_heard
            .iter()
            .filter(|(m, heard)| {
                let unreached = last_reached.get(*m).map_or(Duration::ZERO, |r| r.elapsed());
                cfg.down_after.is_down(heard.elapsed(), unreached)
            })
            .map(|(m, _)| m.clone())
            .collect();
        if published.as_ref() != Some(&down) {
            let observation = Observation { down: down.clone() };
            let data = serde_json::to_vec(&observation).unwrap_or_default();
            match store.register_ephemeral(&path, data).await {
                Ok(()) => {
                    if !down.is_empty() {
                        tracing::warn!(?down, "masters not answering; reported down");
                    }
                    published = Some(down);
                }
                Err(e) => tracing::warn!(error = %e, "cannot publish what this proxy sees of the masters"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(round + cfg.interval) => {}
            _ = cancel.cancelled() => break,
        }
    }
    let _ = store.unregister_ephemeral(&path).await;
}

/// PINGs `master` on `conn` (or a new connection); the connection if it
/// answered. Any answer counts, an error reply (`-LOADING`, `-NOAUTH`) too:
/// the server is alive.
async fn ping(master: &str, conn: Option<RespConn>, cfg: &ObserverConfig) -> Option<RespConn> {
    let attempt = async {
        let mut conn = match conn {
            Some(c) => c,
            None => {
                let mut c = RespConn::connect(master, cfg.interval).await?;
                if let Some(auth) = &cfg.auth {
                    match c.auth(auth).await {
                        Ok(()) | Err(RespError::Server(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                c
            }
        };
        match conn.call(&["PING"]).await {
            Ok(_) | Err(RespError::Server(_)) => Ok(conn),
            Err(e) => Err(e),
        }
    };
    tokio::time::timeout(cfg.interval, attempt).await.ok()?.ok()
}
