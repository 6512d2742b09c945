//! What every part of a running comet shares: its server id, the buckets, the
//! counters, the way to logic, the cluster-wide room counts and the protocol
//! settings. One `Arc<Hub>` is handed to each connection, the gRPC service and
//! the background loops, and what the admin port reports. Imports the other
//! comet files' types, `im::admin_http` and `libs`.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::task::TaskTracker;

use super::bucket::Buckets;
use super::config::CometProtocolConfig;
use super::logic_link::LogicLink;
use super::stats::CometStats;
use crate::im::admin_http::AdminReport;
use crate::libs::counters::write_counters;
use crate::libs::prometheus::{Exposition, MetricKind};

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

/// The admin port: the counters, and the connections, client IPs and rooms
/// held now.
impl AdminReport for Hub {
    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "server_id": self.server_id,
            "connections": self.buckets.conn_count(),
            "ips": self.buckets.ip_count(),
            "rooms": self.buckets.room_counts().len(),
            "counters": self.stats.snapshot(),
        })
    }

    fn metrics(&self) -> String {
        let mut page = Exposition::new();
        let gauges = [
            (
                "connections",
                "Authenticated client connections.",
                self.buckets.conn_count(),
            ),
            ("ips", "Distinct client IPs among them.", self.buckets.ip_count()),
            (
                "rooms",
                "Rooms with a member here.",
                self.buckets.room_counts().len(),
            ),
        ];
        for (name, help, value) in gauges {
            page.single(&format!("reborn_comet_{name}"), help, MetricKind::Gauge, value);
        }
        write_counters(&mut page, "reborn_comet", &self.stats.snapshot().rows());
        page.finish()
    }
}
