//! Promote: a manual failover of one group to one of its replicas, through the
//! same action protocol as a migration, so every proxy switches and none writes
//! to the old master afterwards.
//!
//! 1. The group's slots go to `pre_migrate` (source = target = the group): every
//!    live proxy holds their requests and drains the old master, or the promote
//!    rolls back.
//! 2. If the old master answers, wait until the replica has replicated all of it:
//!    every write a client was told succeeded is then on the replica.
//! 3. `REPLICAOF NO ONE` on the replica; the group node names it master.
//! 4. The group's other servers, and the old master if it is alive, replicate
//!    from the new master.
//! 5. The slots go back `online`, now routed to the new master.
//!
//! With the old master dead, writes it acknowledged but had not replicated are
//! lost: that is replication's limit, which no proxy can undo.

use std::time::{Duration, Instant};

use super::action::{wait_acks, write_phase};
use super::error::TopoError;
use super::lock;
use super::migrator::{Conn, error_text};
use super::model::{Group, GroupId, Role, SlotState, SlotTable};
use super::session::ZkSession;
use super::store::Store;
use crate::libs::resp;
use crate::libs::resp::bulk_payload;

/// How long the replica may take to catch up with a live old master.
const CATCH_UP: Duration = Duration::from_secs(10);
const CALL: Duration = Duration::from_secs(5);

/// Promotes `addr`, a replica of group `id`, to master.
///
/// # Errors
/// Not a replica of the group, a migrating slot of the group, a live proxy that
/// does not acknowledge ([`TopoError::AckTimeout`], rolled back), or a server
/// that refuses `REPLICAOF`.
pub async fn promote(
    store: &Store,
    id: GroupId,
    addr: &str,
    auth: Option<&str>,
    ack_timeout: Duration,
) -> Result<(), TopoError> {
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
        if !group
            .servers
            .iter()
            .any(|s| s.addr == addr && s.role == Role::Replica)
        {
            return Err(TopoError::Invalid(format!(
                "{addr} is not a replica of group {id}"
            )));
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
                return Err(TopoError::Invalid(format!(
                    "slot {} of group {id} is migrating",
                    s.id
                )));
            }
            slots.push(s.id);
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
        let switched = switch_master(zk, &paths, group, group_version, old.as_deref(), addr, auth).await;
        if !slots.is_empty() {
            // Back online either way: on the new master, or (the switch failed
            // before touching ZooKeeper) on the old one.
            let done = write_phase(zk, &paths, &slots, SlotState::Online, id, id).await?;
            let _ = wait_acks(zk, &paths, done.seq, ack_timeout).await;
        }
        switched
    })
    .await
}

async fn switch_master(
    zk: &ZkSession,
    paths: &super::path::Paths,
    mut group: Group,
    version: i32,
    old: Option<&str>,
    addr: &str,
    auth: Option<&str>,
) -> Result<(), TopoError> {
    if let Some(old) = old {
        catch_up(old, addr, auth).await;
    }
    replicaof(addr, None, auth).await?;
    for s in &mut group.servers {
        s.role = if s.addr == addr {
            Role::Master
        } else {
            Role::Replica
        };
    }
    zk.set_json(&paths.group(group.id), &group, version).await?;
    for s in group.servers.iter().filter(|s| s.addr != addr) {
        // The old master may be dead; the others follow when they can.
        if let Err(e) = replicaof(&s.addr, Some(addr), auth).await {
            tracing::warn!(server = %s.addr, error = %e, "could not repoint to the new master");
        }
    }
    tracing::info!(group = group.id, master = addr, "promoted");
    Ok(())
}

/// Waits (bounded) until `replica` has applied everything `master` has, if the
/// master answers at all.
async fn catch_up(master: &str, replica: &str, auth: Option<&str>) {
    let deadline = Instant::now() + CATCH_UP;
    while Instant::now() < deadline {
        let (Some(m), Some(r)) = (offset(master, auth).await, offset(replica, auth).await) else {
            return; // the old master is gone: nothing more can arrive
        };
        if r >= m {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(
        master,
        replica,
        "replica did not catch up in time; promoting anyway"
    );
}

/// `master_repl_offset` from `INFO replication`.
async fn offset(addr: &str, auth: Option<&str>) -> Option<u64> {
    let mut conn = Conn::connect(addr, auth).await.ok()?;
    let reply = conn
        .call(&[b"INFO".as_ref(), b"replication"], "INFO", CALL)
        .await
        .ok()?;
    let text = bulk_payload(&reply)?;
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `REPLICAOF NO ONE`, or `REPLICAOF host port`.
async fn replicaof(addr: &str, master: Option<&str>, auth: Option<&str>) -> Result<(), TopoError> {
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
    if resp::is_error(&reply) {
        return Err(fail(error_text(&reply)));
    }
    Ok(())
}
