//! The session contract in the proxy cluster, exactly goim's (reference §3.3):
//!
//! * `mid_{mid}`: hash `{key: server}`, only for `mid > 0`;
//! * `key_{key}`: string `server`;
//! * `ol_{server}`: hash of 64 shards (`"0".."63"`, a room's shard is
//!   `crc32(room) % 64`; goim used CityHash32) → JSON `{"server",
//!   "room_count", "updated"}`. Every comet report rewrites all 64 shards
//!   (empty ones too), so it replaces the previous report completely.
//!
//! All three carry the session TTL (`[session] expire`, 1800 s by default),
//! renewed on add and heartbeat. Each operation is one pipeline through the
//! proxy, which splits cross-slot `MGET` and keeps pipeline order. Imports
//! `libs::resp_client`, `im::proxies` and `im::session_key` (the key names).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::im::proxies::ProxySet;
use crate::im::session_key::{key_key, mid_key};
use crate::libs::resp_client::{self, Frame, RespError, cmd};

/// Shards of an `ol_{server}` hash.
pub const ONLINE_SHARDS: u32 = 64;

/// `ol_{server}`.
pub fn online_key(server: &str) -> String {
    format!("ol_{server}")
}

/// The shard of `ol_{server}` holding `room`'s count.
pub fn online_shard(room: &str) -> u32 {
    crc32fast::hash(room.as_bytes()) % ONLINE_SHARDS
}

/// One comet's room counts as stored in (one shard of) `ol_{server}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerOnline {
    /// The comet's server id.
    pub server: String,
    /// Room id → connections in it.
    pub room_count: HashMap<String, i32>,
    /// Unix seconds of the comet's report.
    pub updated: u64,
}

/// The session store: goim's `dao` Redis half, through the proxy.
#[derive(Debug, Clone)]
pub struct Sessions {
    cluster: Arc<ProxySet>,
    expire: String,
}

impl Sessions {
    /// Sessions in `cluster` with a TTL of `expire_secs`.
    pub fn new(cluster: Arc<ProxySet>, expire_secs: u64) -> Sessions {
        Sessions {
            cluster,
            expire: expire_secs.to_string(),
        }
    }

    /// Runs `frames` and turns any error reply into an `Err`.
    async fn run(&self, frames: Vec<Frame>) -> Result<Vec<Frame>, RespError> {
        self.cluster
            .pipeline(frames)
            .await?
            .into_iter()
            .map(resp_client::check)
            .collect()
    }

    /// `AddMapping`: `HSET mid_ key server` + `EXPIRE` (when `mid > 0`), `SET
    /// key_ server` + `EXPIRE`.
    ///
    /// # Errors
    /// The cluster failed (the mapping may be partly written).
    pub async fn add_mapping(&self, mid: i64, key: &str, server: &str) -> Result<(), RespError> {
        let mut frames = Vec::with_capacity(4);
        if mid > 0 {
            let m = mid_key(mid);
            frames.push(cmd(&["HSET", &m, key, server]));
            frames.push(cmd(&["EXPIRE", &m, &self.expire]));
        }
        let k = key_key(key);
        frames.push(cmd(&["SET", &k, server]));
        frames.push(cmd(&["EXPIRE", &k, &self.expire]));
        self.run(frames).await.map(drop)
    }

    /// `ExpireMapping`: renews both TTLs; true when `key_` still existed.
    ///
    /// # Errors
    /// The cluster failed.
    pub async fn expire_mapping(&self, mid: i64, key: &str) -> Result<bool, RespError> {
        let mut frames = Vec::with_capacity(2);
        if mid > 0 {
            frames.push(cmd(&["EXPIRE", &mid_key(mid), &self.expire]));
        }
        frames.push(cmd(&["EXPIRE", &key_key(key), &self.expire]));
        last_is_positive(self.run(frames).await?)
    }

    /// `DelMapping`: `HDEL mid_ key` (when `mid > 0`) and `DEL key_`, each
    /// only while it still names `server`; true when `key_` was deleted.
    ///
    /// goim deletes unconditionally, so a client that reconnected to another
    /// comet before the old one reported the disconnect lost its new session.
    /// The check and the delete run as one script on the key's group.
    ///
    /// # Errors
    /// The cluster failed.
    pub async fn del_mapping(&self, mid: i64, key: &str, server: &str) -> Result<bool, RespError> {
        const DEL_FIELD_IF: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";
        const DEL_KEY_IF: &str =
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
        let mut frames = Vec::with_capacity(2);
        if mid > 0 {
            frames.push(cmd(&["EVAL", DEL_FIELD_IF, "1", &mid_key(mid), key, server]));
        }
        frames.push(cmd(&["EVAL", DEL_KEY_IF, "1", &key_key(key), server]));
        last_is_positive(self.run(frames).await?)
    }

    /// `ServersByKeys`: one `MGET key_…`; positional, `None` for offline keys.
    ///
    /// # Errors
    /// The cluster failed, or the reply is not an array of strings.
    pub async fn servers_by_keys(&self, keys: &[String]) -> Result<Vec<Option<String>>, RespError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Vec::with_capacity(keys.len() + 1);
        args.push("MGET".to_string());
        args.extend(keys.iter().map(|k| key_key(k)));
        let reply = self.cluster.call(&args).await?;
        resp_client::array(reply)?
            .into_iter()
            .map(|f| resp_client::bytes(f).map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned())))
            .collect()
    }

    /// `KeysByMids`: pipelined `HGETALL mid_…`; every `key → server` found.
    ///
    /// # Errors
    /// The cluster failed, or a reply is not a hash.
    pub async fn keys_by_mids(&self, mids: &[i64]) -> Result<HashMap<String, String>, RespError> {
        if mids.is_empty() {
            return Ok(HashMap::new());
        }
        let frames = mids.iter().map(|m| cmd(&["HGETALL", &mid_key(*m)])).collect();
        let mut out = HashMap::new();
        for reply in self.run(frames).await? {
            let items = resp_client::array(reply)?;
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let (Some(k), Some(v)) = (resp_client::bytes(k)?, resp_client::bytes(v)?) {
                    out.insert(
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
        }
        Ok(out)
    }

    /// `AddServerOnline`: a comet's report *replaces* its previous one, so
    /// all 64 shards of `ol_{server}` are written, the empty ones as `{"server",
    /// "room_count": {}, "updated"}`, in a single multi-field `HSET ol_ 0 json
    /// … 63 json` followed by `EXPIRE`: one pipeline, two commands.
    ///
    /// goim writes only the shards holding a room, and comets leave empty rooms
    /// out of their reports, so a shard whose rooms all emptied kept its last
    /// counts until the whole key expired: rooms everyone had left still
    /// counted. Writing every shard fixes that with no read and no `HDEL` of
    /// "shards no longer present" (which would need the previous report or a
    /// script): the field set is always exactly `"0".."63"`, and one `HSET`
    /// is atomic, so a reader never sees half of one report and half of the
    /// next. It also refreshes `updated` of a comet with no rooms at all, so
    /// its (empty) report is not taken for a stale one.
    ///
    /// # Errors
    /// The cluster failed.
    pub async fn add_server_online(&self, online: &ServerOnline) -> Result<(), RespError> {
        let shards = shards_of(online);
        let key = online_key(&online.server);
        let mut hset: Vec<Vec<u8>> = Vec::with_capacity(2 + 2 * shards.len());
        hset.push(b"HSET".to_vec());
        hset.push(key.as_bytes().to_vec());
        for (shard, part) in shards.iter().enumerate() {
            let json = serde_json::to_vec(part).map_err(|e| RespError::Unexpected(e.to_string()))?;
            hset.push(shard.to_string().into_bytes());
            hset.push(json);
        }
        let frames = vec![cmd(&hset), cmd(&["EXPIRE", &key, &self.expire])];
        self.run(frames).await.map(drop)
    }

    /// `ServerOnline`: the 64 shards of `ol_{server}` (pipelined `HGET`s),
    /// merged; `updated` is the newest shard's. `None` when nothing is stored.
    ///
    /// # Errors
    /// The cluster failed.
    pub async fn server_online(&self, server: &str) -> Result<Option<ServerOnline>, RespError> {
        let key = online_key(server);
        let frames = (0..ONLINE_SHARDS)
            .map(|s| cmd(&["HGET", &key, &s.to_string()]))
            .collect();
        let mut merged: Option<ServerOnline> = None;
        for reply in self.run(frames).await? {
            let Some(json) = resp_client::bytes(reply)? else {
                continue;
            };
            let Ok(part) = serde_json::from_slice::<ServerOnline>(&json) else {
                tracing::warn!(server, "skipping an unreadable ol_ shard");
                continue;
            };
            let m = merged.get_or_insert_with(|| ServerOnline {
                server: server.to_string(),
                ..ServerOnline::default()
            });
            m.updated = m.updated.max(part.updated);
            m.room_count.extend(part.room_count);
        }
        Ok(merged)
    }

    /// `DelServerOnline`: `DEL ol_{server}`.
    ///
    /// # Errors
    /// The cluster failed.
    pub async fn del_server_online(&self, server: &str) -> Result<(), RespError> {
        self.run(vec![cmd(&["DEL", &online_key(server)])]).await.map(drop)
    }
}

/// `online` split into all [`ONLINE_SHARDS`] shards, in shard order; the
/// shards without a room carry an empty `room_count`.
fn shards_of(online: &ServerOnline) -> Vec<ServerOnline> {
    let mut shards: Vec<ServerOnline> = (0..ONLINE_SHARDS)
        .map(|_| ServerOnline {
            server: online.server.clone(),
            room_count: HashMap::new(),
            updated: online.updated,
        })
        .collect();
    for (room, count) in &online.room_count {
        // `online_shard` is below ONLINE_SHARDS, the length of `shards`.
        if let Some(shard) = shards.get_mut(online_shard(room) as usize) {
            shard.room_count.insert(room.clone(), *count);
        }
    }
    shards
}

/// True when the last reply is an integer above 0 (goim's `has`).
fn last_is_positive(replies: Vec<Frame>) -> Result<bool, RespError> {
    match replies.into_iter().last() {
        Some(f) => Ok(resp_client::int(f)? > 0),
        None => Err(RespError::Unexpected("no reply".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_and_shards_follow_goim() {
        assert_eq!(mid_key(42), "mid_42");
        assert_eq!(key_key("abc"), "key_abc");
        assert_eq!(online_key("host-3101"), "ol_host-3101");
        assert!(online_shard("live://1000") < ONLINE_SHARDS);
        assert_eq!(online_shard("live://1000"), online_shard("live://1000"));
    }

    #[test]
    fn a_report_fills_every_shard_so_emptied_ones_are_overwritten() {
        let online = ServerOnline {
            server: "c1".into(),
            room_count: [("live://a".to_string(), 2), ("live://b".to_string(), 1)].into(),
            updated: 7,
        };
        let shards = shards_of(&online);
        assert_eq!(shards.len(), ONLINE_SHARDS as usize);
        assert!(shards.iter().all(|s| s.server == "c1" && s.updated == 7));
        for (room, count) in &online.room_count {
            assert_eq!(
                shards[online_shard(room) as usize].room_count.get(room),
                Some(count)
            );
        }
        let rooms: usize = shards.iter().map(|s| s.room_count.len()).sum();
        assert_eq!(rooms, 2, "each room in exactly one shard");
        // No rooms at all still writes 64 (empty) shards.
        let empty = shards_of(&ServerOnline {
            server: "c1".into(),
            ..ServerOnline::default()
        });
        assert_eq!(empty.len(), ONLINE_SHARDS as usize);
        assert!(empty.iter().all(|s| s.room_count.is_empty()));
    }

    #[test]
    fn has_is_the_last_integer_reply() {
        assert!(matches!(
            last_is_positive(vec![Frame::Integer(0), Frame::Integer(1)]),
            Ok(true)
        ));
        assert!(matches!(
            last_is_positive(vec![Frame::Integer(1), Frame::Integer(0)]),
            Ok(false)
        ));
        assert!(last_is_positive(vec![]).is_err());
    }
}
