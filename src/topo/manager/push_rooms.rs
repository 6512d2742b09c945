//! The busiest rooms of the push system, as the web UI's Push view shows them:
//! every registered comet's room counts, summed.
//!
//! logic keeps each comet's counts in `ol_{server}` (the layout of
//! `im::logic::mapping`, which the manager cannot import: the push roles build
//! on the topo core): a hash of 64 shards, each a JSON object
//! `{"server", "room_count": {room: count}, "updated"}`. Each hash is read on
//! the master of its slot ([`super::master_conns`]), like the queue in
//! [`super::push_queue`]. Imports `libs` and the topo kernel.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use super::master_conns::MasterConns;
use super::migrator::reply_text;
use crate::libs::resp_client::Frame;
use crate::topo::model::Topology;

/// How many rooms the view lists.
pub const TOP: usize = 10;

/// How long one command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The key of `server`'s room counts (`im::logic::mapping::online_key`).
pub fn online_key(server: &str) -> String {
    format!("ol_{server}")
}

/// One room and the connections in it, over every comet.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RoomView {
    /// The room, as clients name it (`type://id`).
    pub room: String,
    /// Connections in it.
    pub online: i64,
}

/// The busiest rooms, and why the figures may be partial.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomsView {
    /// Busiest first, at most [`TOP`].
    pub top: Vec<RoomView>,
    /// Set when some comet's counts could not be read.
    pub error: Option<String>,
}

/// Sums the room counts of `comets` (server ids); `auth` is the backend
/// password.
pub async fn read(topo: &Topology, comets: &[String], auth: Option<&str>) -> RoomsView {
    let mut totals: HashMap<String, i64> = HashMap::new();
    let mut out = RoomsView::default();
    let mut masters = MasterConns::new(topo, auth);
    for server in comets {
        let key = online_key(server);
        let shards = match masters.for_key(&key).await {
            None => Err(format!("no master serves {key}")),
            Some(Err(e)) => Err(format!("{key}: {e}")),
            Some(Ok(conn)) => conn
                .call(&["HVALS", key.as_str()], "HVALS", CALL_TIMEOUT)
                .await
                .map_err(|e| format!("{key} on {}: {e}", conn.addr())),
        };
        match shards {
            Ok(Frame::Array(shards)) => add_shards(&mut totals, &shards),
            Ok(other) => out.error = Some(format!("HVALS {key} answered {}", reply_text(&other))),
            Err(e) => out.error = Some(e),
        }
    }
    out.top = busiest(totals, TOP);
    out
}

/// Adds each shard's `room_count` to `totals`; a shard that is not the JSON
/// logic writes is skipped.
fn add_shards(totals: &mut HashMap<String, i64>, shards: &[Frame]) {
    #[derive(serde::Deserialize)]
    struct Shard {
        #[serde(default)]
        room_count: HashMap<String, i64>,
    }
    for shard in shards {
        let Frame::BulkString(json) = shard else { continue };
        let Ok(shard) = serde_json::from_slice::<Shard>(json) else {
            continue;
        };
        for (room, n) in shard.room_count {
            *totals.entry(room).or_default() += n;
        }
    }
}

/// The `limit` rooms with the most connections, busiest first (ties by name).
fn busiest(totals: HashMap<String, i64>, limit: usize) -> Vec<RoomView> {
    let mut rooms: Vec<RoomView> = totals
        .into_iter()
        .filter(|&(_, online)| online > 0)
        .map(|(room, online)| RoomView { room, online })
        .collect();
    rooms.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.room.cmp(&b.room)));
    rooms.truncate(limit);
    rooms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Frame {
        Frame::BulkString(s.as_bytes().to_vec().into())
    }

    #[test]
    fn shards_of_every_comet_add_up_and_the_busiest_come_first() {
        let mut totals = HashMap::new();
        add_shards(
            &mut totals,
            &[
                bulk(r#"{"server":"a","room_count":{"live://1":5,"live://2":1},"updated":1}"#),
                bulk(r#"{"server":"a","room_count":{"chat://9":2}}"#),
                bulk("not json"),
                Frame::Integer(3),
            ],
        );
        add_shards(
            &mut totals,
            &[bulk(r#"{"server":"b","room_count":{"live://2":4,"live://3":0}}"#)],
        );
        let top = busiest(totals, 2);
        assert_eq!(
            top,
            vec![
                RoomView {
                    room: "live://1".into(),
                    online: 5
                },
                RoomView {
                    room: "live://2".into(),
                    online: 5
                },
            ]
        );
    }
}
