//! What one redis-server's `INFO` says, as the web UI's Groups view shows it:
//! role, replication link, memory, keys, clients, ops/s and replication offset,
//! and for a replica how far it lags behind its group's master.
//!
//! One `INFO` (the default sections) per server, all servers at once, each
//! bounded by [`INFO_TIMEOUT`]; a server that does not answer is listed with
//! its error rather than left out. Keys are `db0`'s count from the keyspace
//! section, which is what `DBSIZE` answers (the proxy uses db 0 only).
//!
//! Uses the migrator's RESP connection; imports `libs` and the topo kernel.

use std::time::Duration;

use serde::Serialize;

use super::info_text::InfoText;
use super::migrator::Conn;
use crate::topo::model::{GroupId, Role, Topology};

/// How long one `INFO` may take, connecting included.
pub const INFO_TIMEOUT: Duration = Duration::from_millis(1500);

/// One server in `GET /api/servers`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct ServerInfo {
    /// The group it belongs to.
    pub group: GroupId,
    /// `host:port`.
    pub addr: String,
    /// The role ZooKeeper gives it: `master` or `replica`.
    pub role: String,
    /// Whether it answered.
    pub up: bool,
    /// Why it did not.
    pub error: Option<String>,
    /// The role it reports itself (`master` / `slave`), which differs from
    /// `role` while a promote or a failover is under way.
    pub reported_role: String,
    /// A replica's `master_link_status` (`up`/`down`); empty for a master.
    pub link: String,
    /// `used_memory`, bytes.
    pub memory: u64,
    /// Keys in db 0.
    pub keys: u64,
    /// `connected_clients`.
    pub clients: u64,
    /// `instantaneous_ops_per_sec`.
    pub ops_per_sec: u64,
    /// Replication offset: `master_repl_offset` of a master, what a replica applied.
    pub offset: u64,
    /// A replica's lag behind its group's master, bytes of the stream.
    pub lag: Option<u64>,
}

/// Asks every server of `topo` at once (`auth`: the backend password).
pub async fn gather(topo: &Topology, auth: Option<&str>) -> Vec<ServerInfo> {
    let asks = topo.groups.values().flat_map(|g| {
        g.servers.iter().map(move |s| {
            let role = match s.role {
                Role::Master => "master",
                Role::Replica => "replica",
            };
            ask(g.id, s.addr.clone(), role, auth)
        })
    });
    let mut all = futures::future::join_all(asks).await;
    fill_lag(&mut all);
    all
}

async fn ask(group: GroupId, addr: String, role: &str, auth: Option<&str>) -> ServerInfo {
    let base = ServerInfo {
        group,
        addr: addr.clone(),
        role: role.to_string(),
        ..ServerInfo::default()
    };
    let read = async {
        let mut conn = Conn::connect(&addr, auth).await?;
        conn.info(None, INFO_TIMEOUT).await
    };
    match tokio::time::timeout(INFO_TIMEOUT, read).await {
        Ok(Ok(text)) => parse(&text, base),
        Ok(Err(e)) => ServerInfo {
            error: Some(e.to_string()),
            ..base
        },
        Err(_) => ServerInfo {
            error: Some(format!("no answer within {INFO_TIMEOUT:?}")),
            ..base
        },
    }
}

/// Reads an `INFO` text into `base`.
fn parse(info: &str, base: ServerInfo) -> ServerInfo {
    let info = InfoText(info);
    let field = |name: &str| info.field(name);
    // Offsets are -1 before a replica's first sync.
    let number = |name: &str| info.count(name);
    let reported_role = field("role").unwrap_or_default().to_string();
    let is_replica = reported_role == "slave";
    ServerInfo {
        up: true,
        link: if is_replica {
            field("master_link_status").unwrap_or("down").to_string()
        } else {
            String::new()
        },
        memory: number("used_memory"),
        keys: db0_keys(field("db0")),
        clients: number("connected_clients"),
        ops_per_sec: number("instantaneous_ops_per_sec"),
        offset: if is_replica {
            number("slave_repl_offset")
        } else {
            number("master_repl_offset")
        },
        reported_role,
        ..base
    }
}

/// `keys=12,expires=0,avg_ttl=0` → 12; no `db0` line means no keys.
fn db0_keys(line: Option<&str>) -> u64 {
    line.and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("keys=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sets each answering replica's lag behind the master of its group (when
/// that master answered too).
fn fill_lag(all: &mut [ServerInfo]) {
    let masters: Vec<(GroupId, u64)> = all
        .iter()
        .filter(|s| s.up && s.role == "master")
        .map(|s| (s.group, s.offset))
        .collect();
    for s in all.iter_mut().filter(|s| s.up && s.role == "replica") {
        if let Some((_, m)) = masters.iter().find(|(g, _)| *g == s.group) {
            s.lag = Some(m.saturating_sub(s.offset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLICA: &str = "# Clients\r\nconnected_clients:4\r\n# Memory\r\nused_memory:1048576\r\n\
        # Stats\r\ninstantaneous_ops_per_sec:17\r\n# Replication\r\nrole:slave\r\n\
        master_link_status:up\r\nslave_repl_offset:900\r\nmaster_repl_offset:900\r\n\
        # Keyspace\r\ndb0:keys=12,expires=1,avg_ttl=0\r\n";

    #[test]
    fn info_is_read() {
        let s = parse(REPLICA, ServerInfo::default());
        assert!(s.up);
        assert_eq!(s.reported_role, "slave");
        assert_eq!(s.link, "up");
        assert_eq!(
            (s.memory, s.keys, s.clients, s.ops_per_sec),
            (1_048_576, 12, 4, 17)
        );
        assert_eq!(s.offset, 900);
        let master = parse(
            "role:master\r\nmaster_repl_offset:1000\r\n",
            ServerInfo::default(),
        );
        assert_eq!((master.keys, master.offset, master.link.as_str()), (0, 1000, ""));
    }

    #[test]
    fn replicas_lag_behind_their_own_master() {
        let server = |group, role: &str, offset| ServerInfo {
            group,
            role: role.into(),
            up: true,
            offset,
            ..ServerInfo::default()
        };
        let mut all = vec![
            server(1, "master", 1000),
            server(1, "replica", 900),
            server(2, "replica", 5),
        ];
        fill_lag(&mut all);
        assert_eq!(all[1].lag, Some(100));
        assert_eq!(all[2].lag, None, "group 2 has no master that answered");
    }
}
