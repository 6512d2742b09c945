//! The four pushes of goim's HTTP API, turned into queued `PushMsg`s:
//!
//! * by keys: `MGET key_…` → keys grouped by server → one `PUSH` per server;
//! * by mids: pipelined `HGETALL mid_…` → keys grouped by server → one `PUSH`
//!   per server;
//! * to a room: one `ROOM` with `room = "type://room"`;
//! * to all: one `BROADCAST` with the `speed` hint.
//!
//! Offline keys and mids are skipped (goim). Imports `mapping.rs`,
//! `producer.rs`, `stats.rs` and the generated `PushMsg`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::im::proto::logic::PushMsg;
use crate::im::proto::logic::push_msg::Type as PushType;
use crate::libs::resp_client::RespError;

use super::mapping::Sessions;
use super::producer::Producer;
use super::stats::LogicStats;

/// Why a push was not queued.
#[derive(Debug, thiserror::Error)]
pub enum LogicPushError {
    /// The proxy cluster failed: looking the sessions up or appending. Retry
    /// is safe when [`RespError::is_retry_safe`]; otherwise part of the push
    /// may be queued already.
    #[error("proxy cluster: {0}")]
    Cluster(#[from] RespError),
}

/// goim's room key: `type://room`.
pub fn room_key(typ: &str, room: &str) -> String {
    format!("{typ}://{room}")
}

/// Groups `(key, server)` pairs by server, keys in input order.
pub fn group_by_server<I: IntoIterator<Item = (String, String)>>(pairs: I) -> BTreeMap<String, Vec<String>> {
    let mut by_server: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, server) in pairs {
        by_server.entry(server).or_default().push(key);
    }
    by_server
}

/// Looks sessions up and queues pushes.
#[derive(Debug, Clone)]
pub struct Pusher {
    sessions: Sessions,
    producer: Producer,
    stats: Arc<LogicStats>,
}

impl Pusher {
    /// A pusher over `sessions` and `producer`, counting into `stats`.
    pub fn new(sessions: Sessions, producer: Producer, stats: Arc<LogicStats>) -> Pusher {
        Pusher {
            sessions,
            producer,
            stats,
        }
    }

    /// Pushes `msg` to the connections of `keys`; returns the messages queued.
    /// No keys is nothing to do (goim answers such a push with `code` 0).
    ///
    /// # Errors
    /// The cluster failed.
    pub async fn push_keys(&self, op: i32, keys: &[String], msg: &[u8]) -> Result<usize, LogicPushError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let servers = self.sessions.servers_by_keys(keys).await?;
        let pairs = keys
            .iter()
            .zip(servers)
            .filter_map(|(k, s)| s.map(|s| (k.clone(), s)));
        self.queue_per_server(op, group_by_server(pairs), msg).await
    }

    /// Pushes `msg` to every connection of `mids`; returns the messages queued.
    /// No mids is nothing to do, as for keys.
    ///
    /// # Errors
    /// The cluster failed.
    pub async fn push_mids(&self, op: i32, mids: &[i64], msg: &[u8]) -> Result<usize, LogicPushError> {
        if mids.is_empty() {
            return Ok(0);
        }
        let keys = self.sessions.keys_by_mids(mids).await?;
        self.queue_per_server(op, group_by_server(keys), msg).await
    }

    /// Pushes `msg` to room `type://room`.
    ///
    /// # Errors
    /// The cluster failed.
    pub async fn push_room(
        &self,
        op: i32,
        typ: &str,
        room: &str,
        msg: &[u8],
    ) -> Result<usize, LogicPushError> {
        let m = PushMsg {
            r#type: PushType::Room as i32,
            operation: op,
            room: room_key(typ, room),
            msg: msg.to_vec(),
            ..PushMsg::default()
        };
        self.append(vec![m]).await
    }

    /// Pushes `msg` to every connection (`speed`: goim's rate hint for comets).
    ///
    /// # Errors
    /// The cluster failed.
    pub async fn push_all(&self, op: i32, speed: i32, msg: &[u8]) -> Result<usize, LogicPushError> {
        let m = PushMsg {
            r#type: PushType::Broadcast as i32,
            operation: op,
            speed,
            msg: msg.to_vec(),
            ..PushMsg::default()
        };
        self.append(vec![m]).await
    }

    async fn queue_per_server(
        &self,
        op: i32,
        by_server: BTreeMap<String, Vec<String>>,
        msg: &[u8],
    ) -> Result<usize, LogicPushError> {
        let msgs = by_server
            .into_iter()
            .map(|(server, keys)| PushMsg {
                r#type: PushType::Push as i32,
                operation: op,
                server,
                keys,
                msg: msg.to_vec(),
                ..PushMsg::default()
            })
            .collect();
        self.append(msgs).await
    }

    async fn append(&self, msgs: Vec<PushMsg>) -> Result<usize, LogicPushError> {
        self.producer.append(&msgs).await?;
        self.stats.queued.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        Ok(msgs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_grouped_per_server_in_order() {
        let pairs = [("a", "s1"), ("b", "s2"), ("c", "s1")].map(|(k, s)| (k.to_string(), s.to_string()));
        let g = group_by_server(pairs);
        assert_eq!(g.len(), 2);
        assert_eq!(g["s1"], vec!["a", "c"]);
        assert_eq!(g["s2"], vec!["b"]);
        assert_eq!(room_key("live", "1000"), "live://1000");
    }
}
