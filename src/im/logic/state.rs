//! What the HTTP API and the gRPC service share: the config, the session
//! store, the pusher, the room counts, the node balancer, the live comets and
//! the counters. Built once by `mod.rs`, behind an `Arc`. Imports the sibling
//! modules it holds.

use std::sync::Arc;

use tokio::sync::watch;

use crate::im::discovery::Instance;

use super::config::LogicConfig;
use super::mapping::Sessions;
use super::nodes::NodeBalancer;
use super::online::RoomCounts;
use super::push::Pusher;
use super::stats::LogicStats;

/// Logic's shared state.
#[derive(Debug)]
pub struct LogicState {
    /// The validated config.
    pub config: LogicConfig,
    /// `mid_`, `key_` and `ol_` through the proxy.
    pub sessions: Sessions,
    /// The four pushes.
    pub pusher: Pusher,
    /// Cluster-wide room counts, refreshed by the loader.
    pub counts: Arc<RoomCounts>,
    /// Node selection for clients.
    pub balancer: Arc<NodeBalancer>,
    /// The live comets from discovery.
    pub comets: watch::Receiver<Vec<Instance>>,
    /// Counters.
    pub stats: Arc<LogicStats>,
}
