//! Cluster-wide room counts (goim's `roomCount`).
//!
//! Every comet reports its rooms through `RenewOnline`, which logic stores in
//! `ol_{server}` (`mapping.rs`). A loader sums the stored counts of the comets
//! registered in discovery, and only those: every `[online] load_interval`
//! (10 s), and at once whenever the comet list changes, so a dead comet's
//! clients leave the counts as soon as its ephemeral node goes. A comet whose
//! report is older than `stale_after` (5 min) is deleted and skipped. A comet
//! out of discovery for `gone_grace` (1 min) has its `ol_{server}` deleted
//! ([`Departures`]); within the grace it keeps it, so one that re-registers
//! after a ZooKeeper blip counts again at once. The sum is served by
//! `/goim/online/top`, `/goim/online/room` and returned to comets by
//! `RenewOnline` (their heartbeat replies). Imports `mapping.rs`, `config.rs`
//! and `im::discovery`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::im::discovery::Instance;
use crate::libs::clock::unix_secs;

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

/// The comets that left discovery, each with when it was first missed.
#[derive(Debug, Default)]
pub struct Departures {
    /// The comets registered at the last [`Departures::observe`].
    live: HashSet<String>,
    /// Comets seen once and missing since.
    gone: HashMap<String, Instant>,
}

impl Departures {
    /// Records that `live` are the registered comets at `now`: a comet seen
    /// before and missing now starts its grace, one back in the list ends it.
    pub fn observe(&mut self, live: &[String], now: Instant) {
        let live: HashSet<String> = live.iter().cloned().collect();
        for left in self.live.difference(&live) {
            self.gone.entry(left.clone()).or_insert(now);
        }
        self.gone.retain(|id, _| !live.contains(id));
        self.live = live;
    }

    /// The comets missing for at least `grace` at `now`, sorted.
    pub fn due(&self, now: Instant, grace: Duration) -> Vec<String> {
        let mut due: Vec<String> = self
            .gone
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= grace)
            .map(|(id, _)| id.clone())
            .collect();
        due.sort();
        due
    }

    /// Stops tracking `id` (its `ol_` is deleted).
    pub fn forget(&mut self, id: &str) {
        self.gone.remove(id);
    }
}

/// Deletes the `ol_{server}` of every comet past its grace; a failed delete
/// is retried on the next round.
async fn delete_departed(sessions: &Sessions, departures: &mut Departures, grace: Duration) {
    for server in departures.due(Instant::now(), grace) {
        match sessions.del_server_online(&server).await {
            Ok(()) => {
                tracing::info!(server, "comet left discovery; deleted its room counts");
                departures.forget(&server);
            }
            Err(e) => tracing::warn!(server, error = %e, "deleting a departed comet's room counts"),
        }
    }
}

/// Reloads `counts` from the comets registered in `comets` every
/// `config.load_interval` and whenever that list changes, and deletes the
/// counts of comets gone for `config.gone_grace`, until `cancel`.
pub async fn run_loader(
    sessions: Sessions,
    counts: Arc<RoomCounts>,
    mut comets: watch::Receiver<Vec<Instance>>,
    config: LogicOnlineConfig,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.load_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut departures = Departures::default();
    let mut following = true;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
            changed = comets.changed(), if following => {
                // The sender stops with logic; keep the last list till then.
                following = changed.is_ok();
            }
        }
        let servers: Vec<String> = comets.borrow_and_update().iter().map(|c| c.id.clone()).collect();
        departures.observe(&servers, Instant::now());
        let sum = load(&sessions, &servers, config.stale_after.as_secs(), unix_secs()).await;
        counts.set(sum);
        delete_departed(&sessions, &mut departures, config.gone_grace).await;
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

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_departed_comet_is_due_after_its_grace_unless_it_returns() {
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut d = Departures::default();
        d.observe(&ids(&["a", "b", "c"]), t0);
        assert!(d.due(t0 + grace * 10, grace).is_empty(), "nobody left");
        d.observe(&ids(&["a"]), t0 + Duration::from_secs(1));
        d.observe(&ids(&["a"]), t0 + Duration::from_secs(30));
        assert!(
            d.due(t0 + Duration::from_secs(60), grace).is_empty(),
            "within the grace"
        );
        // b re-registers (a ZooKeeper blip): its grace ends, c's runs on.
        d.observe(&ids(&["a", "b"]), t0 + Duration::from_secs(40));
        assert_eq!(d.due(t0 + Duration::from_secs(61), grace), ids(&["c"]));
        d.forget("c");
        assert!(d.due(t0 + grace * 10, grace).is_empty(), "c deleted once");
        // b leaves again: a fresh grace from its second departure.
        d.observe(&ids(&["a"]), t0 + Duration::from_secs(100));
        assert!(d.due(t0 + Duration::from_secs(159), grace).is_empty());
        assert_eq!(d.due(t0 + Duration::from_secs(160), grace), ids(&["b"]));
    }

    #[test]
    fn a_comet_seen_once_is_tracked_once_it_goes() {
        let t0 = Instant::now();
        let mut d = Departures::default();
        d.observe(&ids(&[]), t0);
        d.observe(&ids(&["x"]), t0);
        d.observe(&ids(&[]), t0 + Duration::from_secs(1));
        assert_eq!(
            d.due(t0 + Duration::from_secs(2), Duration::from_secs(1)),
            ids(&["x"])
        );
    }

    #[test]
    fn rooms_are_looked_up_by_type_and_id() {
        let r = counts().rooms("live", &["1".into(), "404".into()]);
        assert_eq!(r, HashMap::from([("1".to_string(), 5), ("404".to_string(), 0)]));
    }
}
