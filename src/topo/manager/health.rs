//! The health of a group's redis-servers, as `reborn admin groups` and
//! `GET /api/groups` show it: one short `INFO persistence` per server, all at
//! once, each bounded by [`PROBE_TIMEOUT`].
//!
//! * `up`: it answered (an error such as `NOAUTH` counts: it is serving);
//! * `loading`: it answered `-LOADING`, or `loading:1` (it is reading its RDB
//!   or AOF and serves nobody yet);
//! * `down`: no connection, or no answer in time.
//!
//! Uses the migrator's RESP connection; imports `libs` and the topo kernel.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::migrator::Conn;
use crate::libs::resp_client::Frame;

/// How long one probe may take, connecting included.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// What a probe found.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// It answers.
    Up,
    /// No connection or no answer within [`PROBE_TIMEOUT`].
    Down,
    /// It is loading its data set and refuses commands meanwhile.
    Loading,
}

impl Health {
    /// `up`, `down` or `loading`.
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Loading => "loading",
        }
    }
}

/// Probes one server (`auth`: the backend password, if any).
pub async fn probe(addr: &str, auth: Option<&str>) -> Health {
    let ask = async {
        // A refused password still proves the server answers.
        let mut conn = match Conn::connect(addr, auth).await {
            Ok(c) => c,
            Err(super::migrator::MigrateError::Auth { .. }) => return Health::Up,
            Err(_) => return Health::Down,
        };
        match conn
            .call(&[b"INFO".as_ref(), b"persistence"], "INFO", PROBE_TIMEOUT)
            .await
        {
            Ok(reply) => judge(&reply),
            Err(_) => Health::Down,
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, ask)
        .await
        .unwrap_or(Health::Down)
}

/// Probes every address at once; returns address → health.
pub async fn probe_all<I>(addrs: I, auth: Option<&str>) -> BTreeMap<String, Health>
where
    I: IntoIterator<Item = String>,
{
    let mut set = tokio::task::JoinSet::new();
    for addr in addrs {
        let auth = auth.map(str::to_string);
        set.spawn(async move {
            let health = probe(&addr, auth.as_deref()).await;
            (addr, health)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((addr, health)) = joined {
            out.insert(addr, health);
        }
    }
    out
}

/// The health an `INFO persistence` reply shows.
fn judge(reply: &Frame) -> Health {
    let text = match reply {
        Frame::Error(e) if e.starts_with("LOADING") => return Health::Loading,
        Frame::Error(_) => return Health::Up,
        Frame::BulkString(text) => text.as_ref(),
        _ => b"",
    };
    let loading = text
        .split(|&b| b == b'\n')
        .any(|line| line.trim_ascii() == b"loading:1");
    if loading { Health::Loading } else { Health::Up }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &'static str) -> Frame {
        Frame::BulkString(bytes::Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn replies_are_judged() {
        assert_eq!(
            judge(&bulk("# Persistence\r\nloading:0\r\nrdb_changes:0\r\n")),
            Health::Up
        );
        assert_eq!(judge(&bulk("# Persistence\r\nloading:1\r\n")), Health::Loading);
        let loading = Frame::Error("LOADING Redis is loading the dataset in memory".into());
        assert_eq!(judge(&loading), Health::Loading);
        assert_eq!(
            judge(&Frame::Error("NOAUTH Authentication required.".into())),
            Health::Up
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_down() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        assert_eq!(probe(&addr, None).await, Health::Down);
        let all = probe_all([addr.clone()], None).await;
        assert_eq!(all.get(&addr), Some(&Health::Down));
    }
}
