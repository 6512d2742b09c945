//! What every part of a running comet shares: its server id, the buckets, the
//! counters, the way to logic, the cluster-wide room counts and the protocol
//! settings. One `Arc<Hub>` is handed to each connection, the gRPC service and
//! the background loops. Imports the other comet files' types only.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::task::TaskTracker;

use super::bucket::Buckets;
use super::config::CometProtocolConfig;
use super::logic_link::LogicLink;
use super::stats::CometStats;

/// The shared state of one comet.
pub struct Hub {
    /// This comet's server id.
    pub server_id: String,
    /// The connection maps.
    pub buckets: Buckets,
    /// Counters.
    pub stats: CometStats,
    /// Calls to logic.
    pub link: LogicLink,
    /// Limits and timers of the client protocol.
    pub protocol: CometProtocolConfig,
    /// Background calls (Disconnect, Heartbeat renewals) that shutdown waits for.
    pub tasks: TaskTracker,
    /// Cluster-wide online counts per room, as logic last answered RenewOnline.
    all_online: ArcSwap<HashMap<String, i32>>,
}

impl Hub {
    /// A hub with empty buckets.
    pub fn new(server_id: String, buckets: usize, link: LogicLink, protocol: CometProtocolConfig) -> Hub {
        Hub {
            server_id,
            buckets: Buckets::new(buckets),
            stats: CometStats::default(),
            link,
            protocol,
            tasks: TaskTracker::new(),
            all_online: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The count a heartbeat reply carries for `room`: the cluster-wide count
    /// when logic reported one above zero, else this comet's own (goim's
    /// `Room.OnlineNum`); 0 outside any room.
    pub fn room_count(&self, room: Option<&str>) -> i32 {
        let Some(room) = room else { return 0 };
        match self.all_online.load().get(room) {
            Some(&n) if n > 0 => n,
            _ => i32::try_from(self.buckets.room_online(room)).unwrap_or(i32::MAX),
        }
    }

    /// Stores the cluster-wide counts from RenewOnline.
    pub fn set_all_online(&self, counts: HashMap<String, i32>) {
        self.all_online.store(Arc::new(counts));
    }
}
