//! One redis-server's replication state, as `INFO replication` and `DBSIZE`
//! report it: what a promote checks before it trusts a server with its group's
//! data (its role, whom it replicates from, whether that link is up, how far it
//! has applied the stream, how many keys it holds).
//!
//! Uses the migrator's RESP connection; imports `libs` and the topo kernel.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::info_text::InfoText;
use super::migrator::{Conn, MigrateError, reply_text};
use super::server_conns::ServerConns;
use crate::libs::resp_client::Frame;
use crate::topo::error::TopoError;
use crate::topo::model::{GroupId, Role};

/// How long one look at a server may take, connecting included.
pub const LOOK_TIMEOUT: Duration = Duration::from_secs(3);

/// What `INFO replication` and `DBSIZE` said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replication {
    /// `role:master` (false) or `role:slave` (true).
    pub is_replica: bool,
    /// A replica's `master_host:master_port`.
    pub master: Option<String>,
    /// A replica's `master_link_status:up`.
    pub link_up: bool,
    /// How much of the replication stream it has applied: a replica's
    /// `slave_repl_offset`, a master's `master_repl_offset`.
    pub offset: u64,
    /// `DBSIZE`.
    pub keys: u64,
}

impl fmt::Display for Replication {
    /// `a replica of H:P (link up), offset N, K keys` / `a master, offset N, K keys`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_replica {
            let link = if self.link_up { "up" } else { "down" };
            let master = self.master.as_deref().unwrap_or("?");
            write!(f, "a replica of {master} (link {link})")?;
        } else {
            f.write_str("a master")?;
        }
        write!(
            f,
            ", offset {}, {} keys",
            thousands(self.offset),
            thousands(self.keys)
        )
    }
}

/// Why a server could not be looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookError {
    /// No connection, or no reply in time.
    #[error("{addr} does not answer: {reason}")]
    Unreachable {
        /// The server.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// It answered with an error, or with something that is not `INFO`.
    #[error("{addr} answered {what}")]
    Refused {
        /// The server.
        addr: String,
        /// The reply, shortened.
        what: String,
    },
}

/// Looks at `addr`'s replication state (`auth`: the backend password).
///
/// # Errors
/// [`LookError`] when it does not answer or does not answer `INFO`.
pub async fn look(addr: &str, auth: Option<&str>) -> Result<Replication, LookError> {
    tokio::time::timeout(LOOK_TIMEOUT, look_once(addr, auth))
        .await
        .unwrap_or_else(|_| {
            Err(LookError::Unreachable {
                addr: addr.to_string(),
                reason: format!("no reply within {LOOK_TIMEOUT:?}"),
            })
        })
}

async fn look_once(addr: &str, auth: Option<&str>) -> Result<Replication, LookError> {
    let mut conn = Conn::connect(addr, auth)
        .await
        .map_err(|e| unreachable(addr, &e))?;
    look_on(&mut conn).await
}

/// Looks at every address at once, on `conns`' kept connections (opening
/// those missing), each within `wait`; returns address → what it found. A
/// connection goes back to `conns` only if its server answered.
pub(crate) async fn look_many<I>(
    conns: &mut ServerConns,
    addrs: I,
    wait: Duration,
) -> BTreeMap<String, Result<Replication, LookError>>
where
    I: IntoIterator<Item = String>,
{
    let mut set = tokio::task::JoinSet::new();
    for addr in addrs {
        let (kept, auth) = (conns.take(&addr), conns.auth().map(str::to_string));
        set.spawn(async move {
            let look = async {
                let mut conn = match kept {
                    Some(conn) => conn,
                    None => Conn::connect(&addr, auth.as_deref())
                        .await
                        .map_err(|e| unreachable(&addr, &e))?,
                };
                let found = look_on(&mut conn).await;
                Ok::<_, LookError>((found, conn))
            };
            let result = match tokio::time::timeout(wait, look).await {
                Ok(Ok((found, conn))) => {
                    let in_step = !matches!(found, Err(LookError::Unreachable { .. }));
                    (found, in_step.then_some(conn))
                }
                Ok(Err(e)) => (Err(e), None),
                Err(_) => (
                    Err(LookError::Unreachable {
                        addr: addr.clone(),
                        reason: format!("no reply within {wait:?}"),
                    }),
                    None,
                ),
            };
            (addr, result)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((addr, (found, conn))) = joined {
            if let Some(conn) = conn {
                conns.give_back(conn);
            }
            out.insert(addr, found);
        }
    }
    out
}

/// What a failed connect or call means: a refused password is an answer (the
/// server is up), anything else is silence.
fn unreachable(addr: &str, e: &MigrateError) -> LookError {
    match e {
        MigrateError::Auth { message, .. } => LookError::Refused {
            addr: addr.to_string(),
            what: message.clone(),
        },
        _ => LookError::Unreachable {
            addr: addr.to_string(),
            reason: e.to_string(),
        },
    }
}

/// `INFO replication` and `DBSIZE` on an open connection.
async fn look_on(conn: &mut Conn) -> Result<Replication, LookError> {
    let addr = conn.addr().to_string();
    let refused = |what: String| LookError::Refused {
        addr: addr.clone(),
        what,
    };
    let text = match conn.info(Some("replication"), LOOK_TIMEOUT).await {
        Ok(text) => text,
        Err(MigrateError::Redis { message, .. }) => return Err(refused(message)),
        Err(MigrateError::Protocol { detail, .. }) => return Err(refused(format!("INFO: {detail}"))),
        Err(e) => return Err(unreachable(&addr, &e)),
    };
    let keys = conn
        .call(&[b"DBSIZE".as_ref()], "DBSIZE", LOOK_TIMEOUT)
        .await
        .map_err(|e| unreachable(&addr, &e))?;
    let Frame::Integer(keys) = keys else {
        return Err(refused(format!("DBSIZE {}", reply_text(&keys))));
    };
    parse(&text, u64::try_from(keys).unwrap_or(0))
        .ok_or_else(|| refused("an INFO replication without role".into()))
}

/// Reads an `INFO replication` text; `None` without a `role` line.
fn parse(info: &str, keys: u64) -> Option<Replication> {
    let info = InfoText(info);
    let field = |name: &str| info.field(name);
    let is_replica = match field("role")? {
        "slave" => true,
        "master" => false,
        _ => return None,
    };
    // Offsets are -1 before a replica's first sync: nothing applied.
    let number = |name: &str| info.count(name);
    let master = match (field("master_host"), field("master_port")) {
        (Some(h), Some(p)) if is_replica => Some(format!("{h}:{p}")),
        _ => None,
    };
    Some(Replication {
        is_replica,
        master,
        link_up: is_replica && field("master_link_status") == Some("up"),
        offset: if is_replica {
            // A replica whose link is gone may have dropped its cached master:
            // it then reports `slave_repl_offset:1`, while `master_repl_offset`
            // still counts what it applied (and passed on to its own replicas).
            match number("slave_repl_offset") {
                0 | 1 => number("master_repl_offset"),
                n => n,
            }
        } else {
            number("master_repl_offset")
        },
        keys,
    })
}

/// Whether `a` and `b` name the same server: the same text, or host names
/// that resolve to a common address with the same port (a replica reports the
/// host it was told, which may be `localhost` where the group says `127.0.0.1`).
pub async fn same_server(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let (Ok(a), Ok(b)) = (tokio::net::lookup_host(a).await, tokio::net::lookup_host(b).await) else {
        return false;
    };
    let b: Vec<_> = b.collect();
    a.into_iter().any(|x| b.contains(&x))
}

/// `10532` → `10,532`, as operators read numbers.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether `addr` may be added to group `group` as `role`; a master always
/// may (it keeps what it holds: importing a server's data is how a group
/// starts). As a replica: the dashboard
/// points a new replica at the group's master at once, and the full sync
/// replaces whatever it held: one that holds keys (another product's master,
/// a server in use) is refused unless `force` says they are a copy of this
/// group's data. Returns a note for the operator: empty, what `force`
/// replaced, or why the server could not be looked at (down, or it wants a
/// password the caller does not have), which does not refuse it.
///
/// # Errors
/// [`TopoError::Invalid`] for a server that holds keys, without `force`.
pub async fn admit(
    addr: &str,
    (group, role): (GroupId, Role),
    auth: Option<&str>,
    force: bool,
) -> Result<String, TopoError> {
    if role == Role::Master {
        return Ok(String::new());
    }
    match look(addr, auth).await {
        Ok(r) if r.keys == 0 => Ok(String::new()),
        Ok(r) if force => Ok(format!(
            " (forced: its {} are replaced by a copy of the master's)",
            keys_text(r.keys)
        )),
        Ok(r) => Err(TopoError::Invalid(format!(
            "{addr} holds {}; as a replica of group {group} it would drop them for a copy of the \
             group's master. Empty it first (FLUSHALL) if nobody needs them, or add it with force \
             (--force) if they are a copy of this group's data",
            keys_text(r.keys)
        ))),
        Err(e) => Ok(format!(" (not looked at: {e})")),
    }
}

/// `1 key`, `12,345 keys`.
fn keys_text(n: u64) -> String {
    if n == 1 {
        "1 key".into()
    } else {
        format!("{} keys", thousands(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_and_a_master_are_read() {
        let replica = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:6379\r\n\
                       master_link_status:up\r\nslave_read_repl_offset:2947\r\n\
                       slave_repl_offset:1506\r\nmaster_repl_offset:1506\r\n";
        assert_eq!(
            parse(replica, 7),
            Some(Replication {
                is_replica: true,
                master: Some("127.0.0.1:6379".into()),
                link_up: true,
                offset: 1506,
                keys: 7,
            })
        );
        let master = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_repl_offset:0\r\n";
        let m = parse(master, 0).expect("master");
        assert!(!m.is_replica && !m.link_up && m.master.is_none());
        assert_eq!(m.to_string(), "a master, offset 0, 0 keys");
        let syncing = "role:slave\r\nmaster_host:h\r\nmaster_port:1\r\nmaster_link_status:down\r\n\
                       slave_repl_offset:-1\r\n";
        let s = parse(syncing, 0).expect("syncing");
        assert_eq!((s.link_up, s.offset), (false, 0));
        assert_eq!(s.to_string(), "a replica of h:1 (link down), offset 0, 0 keys");
        let uncached = "role:slave\r\nmaster_host:h\r\nmaster_port:1\r\nmaster_link_status:down\r\n\
                        slave_repl_offset:1\r\nmaster_repl_offset:14943\r\n";
        assert_eq!(parse(uncached, 0).map(|r| r.offset), Some(14943));
        assert_eq!(parse("# Replication\r\n", 0), None);
    }

    #[test]
    fn numbers_get_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(10_532_000), "10,532,000");
    }

    #[tokio::test]
    async fn same_server_resolves_names() {
        assert!(same_server("127.0.0.1:6379", "127.0.0.1:6379").await);
        assert!(same_server("localhost:6379", "127.0.0.1:6379").await);
        assert!(!same_server("127.0.0.1:6380", "127.0.0.1:6379").await);
    }
}
