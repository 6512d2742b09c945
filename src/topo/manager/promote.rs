//! Promote: a manual failover of one group to one of its replicas, through the
//! same action protocol as a migration, so every proxy switches and none writes
//! to the old master afterwards.
//!
//! 0. Every server of the group is looked at (`INFO replication`, `DBSIZE`) and
//!    [`super::candidate::choose`] decides: with the master alive, only a
//!    replica linked to it, and only once it has applied what the master had
//!    (a bounded wait); with the master gone, only the replica that applied
//!    the most. A refusal names the reason and changes nothing, neither in
//!    ZooKeeper nor on a server; `force` overrides it and says what may be lost.
//! 1. The group's slots go to `pre_migrate` (source = target = the group): every
//!    live proxy holds their requests and drains the old master, or the promote
//!    rolls back.
//! 2. With the old master alive, the replica catches up with it again, writes
//!    held: every write a client was told succeeded is then on the replica. If
//!    it cannot, the hold is released and the promote refused.
//! 3. `REPLICAOF NO ONE` on the replica; the group node names it master.
//! 4. The group's other servers replicate from the new master, except one that
//!    has applied more than it (it would full-sync from the less advanced server
//!    and drop what only it holds): that one is left alone with a warning.
//! 5. The slots go back `online`, now routed to the new master.
//!
//! With the old master dead, writes it acknowledged but had not replicated are
//! lost: that is replication's limit, which no proxy can undo.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::candidate::{self, Choice, Follow, Looked};
use super::migrator::Conn;
use super::replication::{self, Replication, thousands};
use crate::libs::resp_client::Frame;
use crate::topo::action::{wait_acks, write_phase};
use crate::topo::error::TopoError;
use crate::topo::lock;
use crate::topo::model::{Group, GroupId, Role, SlotState, SlotTable};
use crate::topo::session::ZkSession;
use crate::topo::store::Store;

/// How long the replica may take to catch up with a live master, once before
/// the hold (writes flowing: up to the master's offset when the wait began)
/// and once under it (up to the master's offset).
const CATCH_UP: Duration = Duration::from_secs(5);
const CALL: Duration = Duration::from_secs(5);

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct PromoteRequest {
    /// The server to promote; `None`: the best one (see [`candidate::choose`]).
    pub server: Option<String>,
    /// Promote although a check refuses, accepting what it says may be lost.
    pub force: bool,
}

/// What a promote did.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Promoted {
    /// `ADDR is now the master of group G (…)`, then the forced and warning lines.
    pub message: String,
    /// The group.
    pub group: GroupId,
    /// The new master.
    pub master: String,
    /// The master before, if the group had one.
    pub previous: Option<String>,
    /// The new master's applied offset and keys when it was promoted.
    pub offset: u64,
    /// `DBSIZE` of the new master when it was promoted.
    pub keys: u64,
    /// The refusals `force` overrode, each naming what may be lost.
    pub forced: Vec<String>,
    /// Servers left alone (unreachable, or ahead of the new master).
    pub warnings: Vec<String>,
}

/// Promotes `addr`, a replica of group `id`, to master, refusing anything that
/// could lose data (see the module comment).
///
/// # Errors
/// As [`promote_with`].
pub async fn promote(
    store: &Store,
    id: GroupId,
    addr: &str,
    auth: Option<&str>,
    ack_timeout: Duration,
) -> Result<(), TopoError> {
    let request = PromoteRequest {
        server: Some(addr.to_string()),
        force: false,
    };
    promote_with(store, id, &request, auth, ack_timeout)
        .await
        .map(|_| ())
}

/// Promotes the requested (or the best) server of group `id` to master.
///
/// # Errors
/// [`TopoError::Invalid`]: not a replica of the group, or a migrating slot of
/// the group; [`TopoError::State`]: a check refused (the message says which and
/// what `force` would lose); [`TopoError::AckTimeout`] (rolled back); or a
/// server that refuses `REPLICAOF`.
pub async fn promote_with(
    store: &Store,
    id: GroupId,
    request: &PromoteRequest,
    auth: Option<&str>,
    ack_timeout: Duration,
) -> Result<Promoted, TopoError> {
    crate::topo::operation::check_group_id(id)?;
    let paths = store.paths().clone();
    lock::with_lock(store, "promote", async |zk: &ZkSession| {
        let (group, group_version) = zk
            .get_json_with_version::<Group>(&paths.group(id))
            .await
            .map_err(|e| {
                if e.is_not_found() {
                    TopoError::NotFound(format!("group {id}"))
                } else {
                    e
                }
            })?;
        if let Some(addr) = &request.server {
            match group.servers.iter().find(|s| &s.addr == addr).map(|s| s.role) {
                Some(Role::Replica) => {}
                // A state, not a mistake in the request: a failover may have
                // got there first. Nothing to do, and nothing was done.
                Some(Role::Master) => {
                    return Err(TopoError::State(format!(
                        "{addr} is already the master of group {id}; nothing was changed"
                    )));
                }
                None => {
                    return Err(TopoError::Invalid(format!(
                        "{addr} is not a server of group {id}"
                    )));
                }
            }
        }
        let old = group.master().map(str::to_string);
        let (table, _) = zk.get_json_with_version::<SlotTable>(&paths.slots()).await?;
        let mut slots = Vec::new();
        for s in table
            .slots()
            .iter()
            .filter(|s| s.group == id || s.from == Some(id))
        {
            if s.state != SlotState::Online {
                // Which copy of a key is the newer one, the source's or the
                // target's, is only known while both masters keep every write
                // they acknowledged (docs/reliability.md, "A group whose slots
                // migrate").
                return Err(TopoError::State(format!(
                    "slot {} of group {id} is migrating (group {} to {}); promote once the migration \
                     is over. If a master of the migration is down, start it again (with its AOF it \
                     keeps its data) and the task goes on",
                    s.id,
                    s.from.unwrap_or(s.group),
                    s.group
                )));
            }
            slots.push(s.id);
        }

        // Everything is checked before anything is written or sent.
        let looked = look_all(&group, old.as_deref(), auth).await;
        let mut choice = candidate::choose(old.as_deref(), &looked, request.server.as_deref(), request.force)
            .map_err(|e| TopoError::State(format!("group {id}: {e}")))?;
        let mut caught_up = false;
        if let Some(master) = choice.live_master.clone() {
            // A server already refused (and forced) is only measured, not waited for.
            let target = if choice.forced.is_empty() {
                Target::WhenAsked
            } else {
                Target::Now
            };
            match catch_up(&master, &choice.addr, auth, target).await {
                Ok(()) => caught_up = true,
                Err(lag) if request.force => choice.forced.push(lag.forced(&choice.addr, &master)),
                Err(lag) => {
                    return Err(TopoError::State(format!(
                        "group {id}: refused: {}; nothing was changed{}",
                        lag.refusal(&choice.addr, &master),
                        FORCE_HINT
                    )));
                }
            }
        }

        if !slots.is_empty() {
            let hold = write_phase(zk, &paths, &slots, SlotState::PreMigrate, id, id).await?;
            if let Err(missing) = wait_acks(zk, &paths, hold.seq, ack_timeout).await {
                write_phase(zk, &paths, &slots, SlotState::Online, id, id).await?;
                return Err(TopoError::AckTimeout {
                    seq: hold.seq,
                    missing,
                });
            }
        }
        let switched = switch_master(
            zk,
            &paths,
            (group, group_version),
            &mut choice,
            caught_up,
            request.force,
            auth,
        )
        .await;
        if !slots.is_empty() {
            // Back online either way: on the new master, or (the switch failed
            // before touching ZooKeeper) on the old one.
            let done = write_phase(zk, &paths, &slots, SlotState::Online, id, id).await?;
            let _ = wait_acks(zk, &paths, done.seq, ack_timeout).await;
        }
        let (offset, keys, warnings) = switched?;
        Ok(report(id, old, choice, offset, keys, warnings))
    })
    .await
}

const FORCE_HINT: &str = " (--force promotes anyway, and loses what the other servers hold that it lacks)";

/// Steps 2 to 4, writes held. Returns the new master's offset and keys when
/// it was promoted, and the warnings about servers left alone.
async fn switch_master(
    zk: &ZkSession,
    paths: &crate::topo::path::Paths,
    (mut group, version): (Group, i32),
    choice: &mut Choice,
    caught_up: bool,
    force: bool,
    auth: Option<&str>,
) -> Result<(u64, u64, Vec<String>), TopoError> {
    let addr = choice.addr.clone();
    let mut guarded_by_catch_up = None;
    if let Some(master) = choice.live_master.clone() {
        // A forced promote of a lagging replica looks once more, to say what is lost.
        let target = if caught_up { Target::Master } else { Target::Now };
        match catch_up(&master, &addr, auth, target).await {
            Ok(()) => guarded_by_catch_up = Some(master),
            Err(lag) if force => {
                if caught_up {
                    choice.forced.push(lag.forced(&addr, &master));
                }
            }
            Err(lag) => {
                return Err(TopoError::State(format!(
                    "group {}: refused: {} with writes held; the hold was released and nothing else changed{}",
                    group.id,
                    lag.refusal(&addr, &master),
                    FORCE_HINT
                )));
            }
        }
    }
    // What the new master applied, read before it stops replicating: after
    // `REPLICAOF NO ONE` its offset may count bytes it read but never applied.
    let before = replication::look(&addr, auth)
        .await
        .map_err(|e| TopoError::Invalid(format!("promoting {addr}: {e}")))?;
    replicaof(&addr, None, auth).await?;
    for s in &mut group.servers {
        s.role = if s.addr == addr {
            Role::Master
        } else {
            Role::Replica
        };
    }
    zk.set_json(&paths.group(group.id), &group, version).await?;
    let mut warnings = Vec::new();
    for s in group.servers.iter().filter(|s| s.addr != addr) {
        let decision = if guarded_by_catch_up.as_deref() == Some(s.addr.as_str()) {
            // The new master applied all it had when the writes were held.
            Follow::Repoint
        } else {
            let state = replication::look(&s.addr, auth).await;
            candidate::follow(&s.addr, &state, (&addr, &before), force)
        };
        match decision {
            Follow::Repoint => {}
            Follow::RepointForced(what) => choice.forced.push(what),
            Follow::Skip(why) => {
                tracing::warn!(group = group.id, server = %s.addr, "{why}");
                warnings.push(why);
                continue;
            }
        }
        // A dead server cannot be repointed; it is reported instead.
        if let Err(e) = replicaof(&s.addr, Some(&addr), auth).await {
            tracing::warn!(server = %s.addr, error = %e, "could not repoint to the new master");
            warnings.push(format!("{} was not repointed: {e}", s.addr));
        }
    }
    for f in &choice.forced {
        tracing::warn!(group = group.id, master = %addr, "forced: {f}");
    }
    tracing::info!(group = group.id, master = %addr, offset = before.offset, keys = before.keys, "promoted");
    Ok((before.offset, before.keys, warnings))
}

fn report(
    group: GroupId,
    previous: Option<String>,
    choice: Choice,
    offset: u64,
    keys: u64,
    warnings: Vec<String>,
) -> Promoted {
    let mut message = format!(
        "{} is now the master of group {group} (offset {}, {} keys)",
        choice.addr,
        thousands(offset),
        thousands(keys)
    );
    for f in &choice.forced {
        message.push_str(&format!("\nforced: {f}"));
    }
    for w in &warnings {
        message.push_str(&format!("\nwarning: {w}"));
    }
    Promoted {
        message,
        group,
        master: choice.addr,
        previous,
        offset,
        keys,
        forced: choice.forced,
        warnings,
    }
}

/// Looks at every server of the group at once.
async fn look_all(group: &Group, master: Option<&str>, auth: Option<&str>) -> Vec<Looked> {
    let mut set = tokio::task::JoinSet::new();
    for (i, s) in group.servers.iter().enumerate() {
        let (addr, master) = (s.addr.clone(), master.map(str::to_string));
        let auth = auth.map(str::to_string);
        set.spawn(async move {
            let state = replication::look(&addr, auth.as_deref()).await;
            let follows_master = match (&state, &master) {
                (Ok(Replication { master: Some(of), .. }), Some(m)) => replication::same_server(of, m).await,
                _ => false,
            };
            (
                i,
                Looked {
                    addr,
                    state,
                    follows_master,
                },
            )
        });
    }
    let mut looked = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(l) = joined {
            looked.push(l);
        }
    }
    looked.sort_by_key(|(i, _)| *i);
    looked.into_iter().map(|(_, l)| l).collect()
}

/// What the replica must reach.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The master's offset when the wait began (writes still flow).
    WhenAsked,
    /// The master's offset as it is at each look (writes held).
    Master,
    /// One look, no wait: a forced promote only reports the lag.
    Now,
}

/// How far a replica is behind its master.
struct Lag {
    replica: Option<Replication>,
    master: Option<Replication>,
    waited: Duration,
}

impl Lag {
    fn numbers(&self, master_addr: &str) -> String {
        match (&self.replica, &self.master) {
            (Some(r), Some(m)) => format!(
                "it is {} bytes behind after {} s (offset {} of {}; it has {} keys, {master_addr} has {})",
                thousands(m.offset.saturating_sub(r.offset)),
                self.waited.as_secs(),
                thousands(r.offset),
                thousands(m.offset),
                thousands(r.keys),
                thousands(m.keys)
            ),
            (None, _) => "it stopped answering while catching up".into(),
            (_, None) => format!("{master_addr} stopped answering while it caught up"),
        }
    }

    fn refusal(&self, replica: &str, master: &str) -> String {
        format!(
            "{replica} has not caught up with the master {master}: {}",
            self.numbers(master)
        )
    }

    fn forced(&self, replica: &str, master: &str) -> String {
        format!(
            "{replica} had not caught up with {master}: {}; the writes past its offset are lost",
            self.numbers(master)
        )
    }
}

/// Waits (bounded by [`CATCH_UP`]) until `replica` has applied what `master`
/// has (see [`Target`]).
async fn catch_up(master: &str, replica: &str, auth: Option<&str>, target: Target) -> Result<(), Lag> {
    let start = Instant::now();
    let mut goal = None;
    loop {
        let (m, r) = tokio::join!(replication::look(master, auth), replication::look(replica, auth));
        let lag = |m: Option<Replication>, r: Option<Replication>| Lag {
            replica: r,
            master: m,
            waited: start.elapsed(),
        };
        let (m, r) = match (m, r) {
            (Ok(m), Ok(r)) => (m, r),
            (m, r) => return Err(lag(m.ok(), r.ok())),
        };
        let want = match target {
            Target::WhenAsked => *goal.get_or_insert(m.offset),
            Target::Master | Target::Now => m.offset,
        };
        if r.offset >= want && r.link_up {
            return Ok(());
        }
        if target == Target::Now || start.elapsed() >= CATCH_UP {
            return Err(lag(Some(m), Some(r)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `REPLICAOF NO ONE`, or `REPLICAOF host port`, then `CONFIG REWRITE`, so
/// a restart keeps the server in its new role: a promoted master that crashes
/// and restarts must not come back as a replica of its old master (which the
/// topology may now call a replica: a loop nobody can write to). A server
/// started without a config file refuses the rewrite; that is not an error.
pub(crate) async fn replicaof(addr: &str, master: Option<&str>, auth: Option<&str>) -> Result<(), TopoError> {
    let fail = |e: String| TopoError::Invalid(format!("REPLICAOF on {addr}: {e}"));
    let mut conn = Conn::connect(addr, auth).await.map_err(|e| fail(e.to_string()))?;
    let (host, port) = match master {
        Some(m) => m
            .rsplit_once(':')
            .ok_or_else(|| fail(format!("bad address {m}")))?,
        None => ("NO", "ONE"),
    };
    let reply = conn
        .call(
            &[b"REPLICAOF".as_ref(), host.as_bytes(), port.as_bytes()],
            "REPLICAOF",
            CALL,
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    if let Frame::Error(e) = reply {
        return Err(fail(e.to_string()));
    }
    let _ = conn
        .call(&[b"CONFIG".as_ref(), b"REWRITE"], "CONFIG REWRITE", CALL)
        .await;
    Ok(())
}
