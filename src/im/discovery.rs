//! Discovery of the push roles through ZooKeeper, in place of goim's
//! bilibili/discovery.
//!
//! Each comet, logic and job instance keeps an ephemeral node
//! `<product>/im/<kind>/<id>` holding its [`Instance`] as JSON. The `Store`
//! re-creates the node after a session expiry, and the instance rewrites it
//! every 10 s with fresh counts. Readers follow a kind with [`follow`], which
//! publishes the live set on every change (children watch) and re-reads the
//! data every few seconds, since counts change without a child event.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::libs::clock::unix_secs;
use crate::topo::error::TopoError;
use crate::topo::store::Store;

/// How often an instance rewrites its node, and how often readers re-read.
pub const REFRESH: Duration = Duration::from_secs(10);

/// The kinds of instance that register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceKind {
    /// A comet: holds client connections, serves `goim.comet.Comet`.
    Comet,
    /// A logic: serves the HTTP API and `goim.logic.Logic`.
    Logic,
    /// A job: consumes the push queue; its id is its consumer name in the
    /// stream groups (only the id is published).
    Job,
}

impl InstanceKind {
    /// The node name of this kind's directory.
    pub fn dir(self) -> &'static str {
        match self {
            InstanceKind::Comet => "comet",
            InstanceKind::Logic => "logic",
            InstanceKind::Job => "job",
        }
    }
}

/// What one instance publishes about itself (goim's discovery metadata).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Instance {
    /// The server id: for a comet, the value stored in `mid_`/`key_` sessions
    /// and the name job looks the comet up by (goim uses the hostname).
    pub id: String,
    /// `host:port` of the instance's gRPC server.
    pub grpc: String,
    /// `host:port` of logic's HTTP API (empty for a comet).
    pub http: String,
    /// Public addresses clients connect to (comet).
    pub addrs: Vec<String>,
    /// Client ports (comet): raw TCP, WebSocket and WSS (0 when off).
    pub tcp_port: u16,
    /// WebSocket port.
    pub ws_port: u16,
    /// WSS port.
    pub wss_port: u16,
    /// The operator's fixed weight for `/goim/nodes/weighted`.
    pub weight: i64,
    /// An offline instance is kept out of node selection.
    pub offline: bool,
    /// Client connections held now.
    pub conn_count: u64,
    /// Distinct client IPs held now.
    pub ip_count: u64,
    /// The region for node selection (may be empty).
    pub region: String,
    /// Unix seconds of the last rewrite.
    pub updated: u64,
    /// The registering process and its pid space (see `topo::owner`), set by
    /// [`register`]: a restarted instance removes the node of a crashed one.
    pub pid: u32,
    pub pid_space: String,
}

/// Publishes (or refreshes) `instance` under `kind`. Calling it again with new
/// counts rewrites the node; the store re-creates it after a session expiry.
///
/// # Errors
/// A ZooKeeper failure, or another live session owning the same id.
pub async fn register(store: &Store, kind: InstanceKind, instance: &Instance) -> Result<(), TopoError> {
    let path = store.paths().im_instance(kind.dir(), &instance.id);
    let mut instance = instance.clone();
    instance.updated = unix_secs();
    let me = crate::topo::owner::Owner::me();
    (instance.pid, instance.pid_space) = (me.pid, me.pid_space);
    let data = serde_json::to_vec(&instance).map_err(|source| TopoError::Json {
        path: path.clone(),
        source,
    })?;
    store.register_ephemeral(&path, data).await
}

/// Rewrites `instance`'s node every [`REFRESH`] until `cancel` (the contract
/// of every registered instance whose data does not change; comet publishes
/// fresh counts instead).
pub async fn refresh_loop(store: Store, kind: InstanceKind, instance: Instance, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(REFRESH) => {}
        }
        if let Err(e) = register(&store, kind, &instance).await {
            tracing::warn!(error = %e, kind = kind.dir(), "refreshing the registration");
        }
    }
}

/// Removes this instance's node (on a clean shutdown).
///
/// # Errors
/// A ZooKeeper failure.
pub async fn unregister(store: &Store, kind: InstanceKind, id: &str) -> Result<(), TopoError> {
    store
        .unregister_ephemeral(&store.paths().im_instance(kind.dir(), id))
        .await
}

/// The live instances of `kind`, sorted by id. A missing directory is an empty
/// list; a node that vanishes or holds garbage while being read is skipped.
///
/// # Errors
/// A ZooKeeper failure.
pub async fn list(store: &Store, kind: InstanceKind) -> Result<Vec<Instance>, TopoError> {
    let dir = store.paths().im_instances(kind.dir());
    let children = store.children_or_none(&dir).await?;
    let mut out = Vec::with_capacity(children.len());
    for child in children {
        match store.get_json::<Instance>(&format!("{dir}/{child}")).await {
            Ok(instance) => out.push(instance),
            Err(e) if e.is_not_found() => {}
            Err(e @ TopoError::Json { .. }) => {
                tracing::warn!(error = %e, "skipping an unreadable instance node")
            }
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Follows the live instances of `kind` until `cancel`: the receiver holds the
/// latest list, and changes when an instance comes, goes or rewrites its node.
/// Read errors keep the last good list (a ZooKeeper outage must not make every
/// comet look gone).
pub fn follow(store: Store, kind: InstanceKind, cancel: CancellationToken) -> watch::Receiver<Vec<Instance>> {
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        let dir = store.paths().im_instances(kind.dir());
        let poll = REFRESH / 4;
        loop {
            // Wake on a child coming or going, or after `poll` for data
            // changes. The watch is set before the list is read: an instance
            // registering between the two fires it. Set after, as it was, it
            // missed such an instance until the next poll, 2.5 s later, and a
            // job starting beside a comet dropped that comet's pushes meanwhile
            // (found by the chaos soak: the first 2.5 s of pushes, lost).
            let watcher = match store.client() {
                Ok(client) => {
                    if let Err(e) = store.mkdir_p(&dir).await {
                        tracing::debug!(error = %e, "creating the instance directory");
                    }
                    client.list_and_watch_children(&dir).await.ok().map(|(_, w)| w)
                }
                Err(_) => None,
            };
            match list(&store, kind).await {
                Ok(now) => {
                    tx.send_if_modified(|last| {
                        let changed = *last != now;
                        if changed {
                            *last = now;
                        }
                        changed
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = kind.dir(), "listing instances failed; keeping the last list")
                }
            }
            let changed = async {
                match watcher {
                    Some(w) => {
                        w.changed().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tx.closed() => return,
                () = changed => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    });
    rx
}
