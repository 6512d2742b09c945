//! The health of a group's redis-servers, as `reborn admin groups` and
//! `GET /api/groups` show it: one short `INFO persistence` per server, all at
//! once, each bounded by [`PROBE_TIMEOUT`].
//!
//! * `up`: it answered (an error such as `unknown command` counts: it is
//!   serving);
//! * `loading`: it answered `-LOADING`, or `loading:1` (it is reading its RDB
//!   or AOF and serves nobody yet);
//! * `auth_refused`: it answered `NOAUTH` or `WRONGPASS`: alive, but not with
//!   the password reborn has (`backend_auth`), so the proxies get the same
//!   refusal for every request. (A `CONFIG SET requirepass` on the servers
//!   behind reborn's back once showed as `up` while every client failed.)
//! * `down`: no connection, or no answer in time.
//!
//! Uses the migrator's RESP connection; imports `libs` and the topo kernel.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::info_text::InfoText;
use super::migrator::{Conn, MigrateError};

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
    /// It answers, but refuses reborn's password (`NOAUTH`, `WRONGPASS`).
    AuthRefused,
}

impl Health {
    /// `up`, `down`, `loading` or `auth_refused`.
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Loading => "loading",
            Health::AuthRefused => "auth_refused",
        }
    }

    /// What it means, in a sentence's words.
    pub fn describe(self) -> &'static str {
        match self {
            Health::AuthRefused => "refusing reborn's password (NOAUTH or WRONGPASS: see backend_auth)",
            other => other.name(),
        }
    }
}

/// Probes one server (`auth`: the backend password, if any).
pub async fn probe(addr: &str, auth: Option<&str>) -> Health {
    let ask = async {
        let mut conn = match Conn::connect(addr, auth).await {
            Ok(c) => c,
            Err(super::migrator::MigrateError::Auth { .. }) => return Health::AuthRefused,
            Err(_) => return Health::Down,
        };
        judge(conn.info(Some("persistence"), PROBE_TIMEOUT).await)
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

/// The health an `INFO persistence` answer shows: `LOADING` or `loading:1`
/// is loading, a refused password is `auth_refused`, any other answer is up,
/// since a server that refuses `INFO` still serves.
fn judge(answer: Result<String, MigrateError>) -> Health {
    match answer {
        Ok(text) if InfoText(&text).field("loading") == Some("1") => Health::Loading,
        Ok(_) => Health::Up,
        Err(MigrateError::Redis { message, .. }) if message.starts_with("LOADING") => Health::Loading,
        Err(MigrateError::Redis { message, .. })
            if message.starts_with("NOAUTH") || message.starts_with("WRONGPASS") =>
        {
            Health::AuthRefused
        }
        Err(MigrateError::Auth { .. }) => Health::AuthRefused,
        Err(MigrateError::Redis { .. } | MigrateError::Protocol { .. }) => Health::Up,
        Err(_) => Health::Down,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(message: &str) -> Result<String, MigrateError> {
        Err(MigrateError::Redis {
            addr: "h:1".into(),
            cmd: "INFO",
            message: message.into(),
        })
    }

    #[test]
    fn answers_are_judged() {
        let text = |s: &str| Ok(s.to_string());
        assert_eq!(
            judge(text("# Persistence\r\nloading:0\r\nrdb_changes:0\r\n")),
            Health::Up
        );
        assert_eq!(judge(text("# Persistence\r\nloading:1\r\n")), Health::Loading);
        assert_eq!(
            judge(refused("LOADING Redis is loading the dataset in memory")),
            Health::Loading
        );
        assert_eq!(judge(refused("ERR unknown command 'INFO'")), Health::Up);
        let noauth = MigrateError::Auth {
            addr: "h:1".into(),
            message: "NOAUTH Authentication required.".into(),
        };
        assert_eq!(judge(Err(noauth)), Health::AuthRefused);
        assert_eq!(
            judge(refused("NOAUTH Authentication required.")),
            Health::AuthRefused
        );
        let silent = MigrateError::Closed { addr: "h:1".into() };
        assert_eq!(judge(Err(silent)), Health::Down);
    }

    #[tokio::test]
    async fn nothing_listening_is_down() {
        let (_held, addr) = crate::libs::reachable::refused_addr();
        assert_eq!(probe(&addr, None).await, Health::Down);
        let all = probe_all([addr.clone()], None).await;
        assert_eq!(all.get(&addr), Some(&Health::Down));
    }
}
