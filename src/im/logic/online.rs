//! Cluster-wide room counts (goim's `roomCount`).
//!
//! Every comet reports its rooms through `RenewOnline`, which logic stores in
//! `ol_{server}` (`mapping.rs`). A loader sums, every `[online]
//! load_interval` (10 s), the stored counts of every comet live in discovery;
//! a comet whose report is older than `stale_after` (5 min) is deleted and
//! skipped. The sum is served by `/goim/online/top`, `/goim/online/room` and
//! returned to comets by `RenewOnline` (so ≤ one interval stale). Imports
//! `mapping.rs`, `config.rs` and `im::discovery`.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::im::discovery::{Instance, unix_now};

use super::config::LogicOnlineConfig;
use super::mapping::Sessions;

/// One row of `/goim/online/top`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomTop {
    /// The room id without its `type://`.
    pub room_id: String,
    /// Connections in it, cluster-wide.
    pub count: i32,
}

/// The latest cluster-wide counts, `type://id` → connections.
#[derive(Debug, Default)]
pub struct RoomCounts {
    all: ArcSwap<HashMap<String, i32>>,
}

impl RoomCounts {
    /// The current map.
    pub fn all(&self) -> Arc<HashMap<String, i32>> {
        self.all.load_full()
    }

    /// Replaces the map.
    pub fn set(&self, counts: HashMap<String, i32>) {
        self.all.store(Arc::new(counts));
    }

    /// The `limit` busiest rooms whose key starts with `typ` (goim matches by
    /// prefix), busiest first.
    pub fn top(&self, typ: &str, limit: usize) -> Vec<RoomTop> {
        let all = self.all();
        let mut tops: Vec<RoomTop> = all
            .iter()
            .filter(|(room, _)| room.starts_with(typ))
            .map(|(room, count)| RoomTop {
                room_id: room
                    .split_once("://")
                    .map_or(room.as_str(), |(_, id)| id)
                    .to_string(),
                count: *count,
            })
            .collect();
        tops.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.room_id.cmp(&b.room_id)));
        tops.truncate(limit);
        tops
    }

    /// The counts of `rooms` of type `typ`, keyed by room id (0 for none).
    pub fn rooms(&self, typ: &str, rooms: &[String]) -> HashMap<String, i32> {
        let all = self.all();
        rooms
            .iter()
            .map(|r| (r.clone(), all.get(&format!("{typ}://{r}")).copied().unwrap_or(0)))
            .collect()
    }
}

/// Sums the stored counts of `servers` at time `now` (unix seconds), deleting
/// reports older than `stale_secs`. A server that cannot be read is skipped.
pub async fn load(
    sessions: &Sessions,
    servers: &[String],
    stale_secs: u64,
    now: u64,
) -> HashMap<String, i32> {
    let mut sum: HashMap<String, i32> = HashMap::new();
    for server in servers {
        let online = match sessions.server_online(server).await {
            Ok(Some(o)) => o,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(server, error = %e, "reading a comet's room counts");
                continue;
            }
        };
        if now.saturating_sub(online.updated) > stale_secs {
            tracing::info!(server, updated = online.updated, "dropping stale room counts");
            if let Err(e) = sessions.del_server_online(server).await {
                tracing::warn!(server, error = %e, "deleting stale room counts");
            }
            continue;
        }
        for (room, count) in online.room_count {
            let c = sum.entry(room).or_insert(0);
            *c = c.saturating_add(count);
        }
    }
    sum
}

/// Reloads `counts` every `config.load_interval` from the comets in `comets`
/// until `cancel`.
pub async fn run_loader(
    sessions: Sessions,
    counts: Arc<RoomCounts>,
    comets: watch::Receiver<Vec<Instance>>,
    config: LogicOnlineConfig,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.load_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let servers: Vec<String> = comets.borrow().iter().map(|c| c.id.clone()).collect();
        let sum = load(&sessions, &servers, config.stale_after.as_secs(), unix_now()).await;
        counts.set(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> RoomCounts {
        let c = RoomCounts::default();
        c.set(HashMap::from([
            ("live://1".to_string(), 5),
            ("live://2".to_string(), 9),
            ("live2://3".to_string(), 1),
            ("game://4".to_string(), 7),
        ]));
        c
    }

    #[test]
    fn top_matches_the_type_by_prefix_busiest_first() {
        let c = counts();
        let top = c.top("live", 10);
        let ids: Vec<&str> = top.iter().map(|t| t.room_id.as_str()).collect();
        assert_eq!(ids, ["2", "1", "3"], "live2:// matches the prefix 'live' (goim)");
        assert_eq!(
            c.top("live", 1),
            vec![RoomTop {
                room_id: "2".into(),
                count: 9
            }]
        );
        assert!(c.top("none", 10).is_empty());
    }

    #[test]
    fn rooms_are_looked_up_by_type_and_id() {
        let r = counts().rooms("live", &["1".into(), "404".into()]);
        assert_eq!(r, HashMap::from([("1".to_string(), 5), ("404".to_string(), 0)]));
    }
}
