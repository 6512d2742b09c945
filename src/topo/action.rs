//! The two-phase action protocol that moves slots between groups, dashboard side.
//!
//! A phase change writes the new slot table and an [`Action`] naming it in one
//! ZooKeeper transaction, then waits until every *live* proxy (its ephemeral node
//! exists) has acknowledged it under `acks/<seq>/<proxy id>`:
//!
//! 1. `pre_migrate`: proxies hold requests of the slots and acknowledge once none
//!    is in flight to the source. If a live proxy does not acknowledge in time,
//!    the slots go back to `online` at the source and the call fails; no proxy is
//!    ever told to exit. A proxy that died simply is not in `proxies/` any more.
//! 2. `migrate`: proxies route the slots to the target and move keys on access.
//!    From here the only safe direction is forward.
//! 3. `online` at the target, once the source holds no key of the slots.
//!
//! A proxy cut off from ZooKeeper cannot acknowledge, and stops serving slot
//! traffic on its own before its session can expire (`proxy::lease`), so waiting
//! for live proxies only is safe. See docs/migration.md. Imports `libs` and the
//! topo kernel only.

use std::collections::BTreeSet;
use std::time::Duration;

use super::error::TopoError;
use super::lock;
use super::model::{Action, Group, GroupId, SlotState, SlotTable};
use super::path::Paths;
use super::session::ZkSession;
use super::store::Store;

use crate::libs::clock::unix_secs;

/// How long a phase waits for every live proxy by default.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Phases 1 and 2: takes `slots` (all online in one group) to `migrate` towards
/// group `to`. Fails, with the slots back `online` at the source, if a live
/// proxy does not acknowledge `pre_migrate` within `ack_timeout`.
///
/// # Errors
/// Invalid slots or group, [`TopoError::AckTimeout`], or ZooKeeper errors.
pub async fn begin_migration(
    store: &Store,
    slots: &[u16],
    to: GroupId,
    ack_timeout: Duration,
) -> Result<(), TopoError> {
    begin_migration_fenced(store, slots, to, ack_timeout, None).await
}

/// A node written in the same transaction as `pre_migrate`, at a version: the
/// switch starts only if nobody changed that node since it was read (a
/// migration task cancelled meanwhile), and anyone who later writes the node
/// by its old version (a cancel) fails instead of missing the switch.
#[derive(Debug, Clone)]
pub struct Fence {
    /// The node (a task's).
    pub path: String,
    /// What to write there.
    pub value: serde_json::Value,
    /// The version it must still have.
    pub version: i32,
}

/// [`begin_migration`], whose first write also writes `fence` by compare-and-set.
///
/// # Errors
/// As [`begin_migration`]; [`TopoError::Conflict`] naming the fence's node if
/// it changed (nothing was written then).
pub async fn begin_migration_fenced(
    store: &Store,
    slots: &[u16],
    to: GroupId,
    ack_timeout: Duration,
    fence: Option<&Fence>,
) -> Result<(), TopoError> {
    let paths = store.paths().clone();
    lock::with_lock(store, "migration", async |zk: &ZkSession| {
        let from = check_begin(zk, &paths, slots, to).await?;
        let pre =
            write_phase_fenced(zk, &paths, slots, SlotState::PreMigrate, (from, to), fence, false).await?;
        if let Err(missing) = wait_acks(zk, &paths, pre.seq, ack_timeout).await {
            write_phase(zk, &paths, slots, SlotState::Online, to, from).await?;
            return Err(TopoError::AckTimeout {
                seq: pre.seq,
                missing,
            });
        }
        let mig = write_phase(zk, &paths, slots, SlotState::Migrate, from, to).await?;
        // No rollback past this point: a proxy that has not applied `migrate`
        // still holds the slots (pre_migrate), which is safe.
        if let Err(missing) = wait_acks(zk, &paths, mig.seq, ack_timeout).await {
            tracing::warn!(
                seq = mig.seq,
                ?missing,
                "migrate phase not acknowledged by every proxy"
            );
        }
        collect_garbage(zk, &paths, mig.seq).await;
        Ok(())
    })
    .await
}

/// Phase 3: `slots` (migrating to one group) become `online` there. Call only
/// once the source holds none of their keys.
///
/// # Errors
/// Slots that are not migrating, or ZooKeeper errors.
pub async fn finish_migration(store: &Store, slots: &[u16], ack_timeout: Duration) -> Result<(), TopoError> {
    let paths = store.paths().clone();
    lock::with_lock(store, "migration", async |zk: &ZkSession| {
        let (table, _) = zk.get_json_with_version::<SlotTable>(&paths.slots()).await?;
        let (from, to) = migrating_pair(&table, slots)?;
        let done = write_phase(zk, &paths, slots, SlotState::Online, from, to).await?;
        if let Err(missing) = wait_acks(zk, &paths, done.seq, ack_timeout).await {
            tracing::warn!(
                seq = done.seq,
                ?missing,
                "online phase not acknowledged by every proxy"
            );
        }
        collect_garbage(zk, &paths, done.seq).await;
        Ok(())
    })
    .await
}

/// Rolls back a switch that was cut short: those of `slots` still in
/// `pre_migrate` (their dashboard died between the phases) go back `online` at
/// their group, so a task that gives up never leaves proxies holding them.
/// Slots in any other state are left alone; the check runs under the lock, so
/// a promote's own `pre_migrate` is over by then.
///
/// # Errors
/// ZooKeeper errors.
pub async fn abort_switch(store: &Store, slots: &[u16], ack_timeout: Duration) -> Result<(), TopoError> {
    let paths = store.paths().clone();
    lock::with_lock(store, "migration abort", async |zk: &ZkSession| {
        let (table, _) = zk.get_json_with_version::<SlotTable>(&paths.slots()).await?;
        let held: Vec<(u16, GroupId)> = slots
            .iter()
            .filter_map(|&id| table.get(id))
            .filter(|s| s.state == SlotState::PreMigrate)
            .map(|s| (s.id, s.group))
            .collect();
        let groups: BTreeSet<GroupId> = held.iter().map(|&(_, g)| g).collect();
        for g in groups {
            let these: Vec<u16> = held.iter().filter(|&&(_, h)| h == g).map(|&(id, _)| id).collect();
            let back = write_phase(zk, &paths, &these, SlotState::Online, g, g).await?;
            if let Err(missing) = wait_acks(zk, &paths, back.seq, ack_timeout).await {
                tracing::warn!(
                    seq = back.seq,
                    ?missing,
                    "rollback not acknowledged by every proxy"
                );
            }
        }
        Ok(())
    })
    .await
}

/// Validates a migration start; returns the source group.
async fn check_begin(
    zk: &ZkSession,
    paths: &Paths,
    slots: &[u16],
    to: GroupId,
) -> Result<GroupId, TopoError> {
    let (table, _) = zk.get_json_with_version::<SlotTable>(&paths.slots()).await?;
    let target = read_group(zk, paths, to).await?;
    check_migration(&table, target.as_ref(), slots, to)
}

/// Group `to` as stored, or `None` if it does not exist.
pub(crate) async fn read_group(
    zk: &ZkSession,
    paths: &Paths,
    to: GroupId,
) -> Result<Option<Group>, TopoError> {
    match zk.get_json::<Group>(&paths.group(to)).await {
        Ok(g) => Ok(Some(g)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `slots` can start moving to group `to` (`target`, `None` if it does
/// not exist) under `table`; returns their source group. The one rule for
/// both a submitted migration task and the switch that starts it.
///
/// # Errors
/// [`TopoError::NotFound`] for a missing target group; [`TopoError::Invalid`]
/// for a target without a master, no slots, unassigned or migrating slots,
/// slots of several groups, or slots that already belong to `to`.
pub fn check_migration(
    table: &SlotTable,
    target: Option<&Group>,
    slots: &[u16],
    to: GroupId,
) -> Result<GroupId, TopoError> {
    let invalid = |m: String| Err(TopoError::Invalid(m));
    if slots.is_empty() {
        return invalid("no slots to migrate".into());
    }
    let Some(group) = target else {
        return Err(TopoError::NotFound(format!("group {to}")));
    };
    if group.master().is_none() {
        return invalid(format!("group {to} has no master; add one with server-add first"));
    }
    let mut sources = BTreeSet::new();
    for &id in slots {
        let Some(slot) = table.get(id) else {
            return invalid(format!("slot {id} does not exist"));
        };
        // `pre_migrate` too: a switch cut short (its dashboard died) is resumed
        // by running it again.
        if slot.state == SlotState::Migrate {
            return invalid(format!(
                "slot {id} is migrating to group {}; wait for that to finish",
                slot.group
            ));
        }
        if slot.group == 0 {
            return invalid(format!(
                "slot {id} is not assigned to a group: it holds no data, assign it with slots-assign"
            ));
        }
        sources.insert(slot.group);
    }
    let from = match sources.into_iter().collect::<Vec<_>>().as_slice() {
        [one] => *one,
        many => {
            return invalid(format!(
                "slots come from several groups {many:?}; migrate one group at a time"
            ));
        }
    };
    if from == to {
        return invalid(format!("slots already belong to group {to}"));
    }
    Ok(from)
}

/// The (source, target) of `slots`, which must all be migrating between the same two groups.
fn migrating_pair(table: &SlotTable, slots: &[u16]) -> Result<(GroupId, GroupId), TopoError> {
    let mut pairs = BTreeSet::new();
    for &id in slots {
        match table.get(id) {
            Some(s) if s.state == SlotState::Migrate => pairs.insert((s.from.unwrap_or(0), s.group)),
            _ => return Err(TopoError::Invalid(format!("slot {id} is not migrating"))),
        };
    }
    match pairs.into_iter().collect::<Vec<_>>().as_slice() {
        [one] => Ok(*one),
        _ => Err(TopoError::Invalid(
            "slots migrate between different groups".into(),
        )),
    }
}

/// Writes `phase` for `slots` and its action in one transaction.
pub(crate) async fn write_phase(
    zk: &ZkSession,
    paths: &Paths,
    slots: &[u16],
    phase: SlotState,
    from: GroupId,
    to: GroupId,
) -> Result<Action, TopoError> {
    write_phase_fenced(zk, paths, slots, phase, (from, to), None, false).await
}

/// Holds `slots`, migrating from `from` to `to`, in `pre_migrate` again: every
/// proxy holds their requests and drains both masters before it acknowledges.
/// `write_phase(…, Migrate, from, to)` lets them go on migrating.
pub(crate) async fn write_hold(
    zk: &ZkSession,
    paths: &Paths,
    slots: &[u16],
    from: GroupId,
    to: GroupId,
) -> Result<Action, TopoError> {
    write_phase_fenced(zk, paths, slots, SlotState::PreMigrate, (from, to), None, true).await
}

/// [`write_phase`], also writing `fence` (if any) in the same transaction.
async fn write_phase_fenced(
    zk: &ZkSession,
    paths: &Paths,
    slots: &[u16],
    phase: SlotState,
    (from, to): (GroupId, GroupId),
    fence: Option<&Fence>,
    drain_target: bool,
) -> Result<Action, TopoError> {
    let (mut table, version) = zk.get_json_with_version::<SlotTable>(&paths.slots()).await?;
    for &id in slots {
        let slot = table
            .get_mut(id)
            .ok_or_else(|| TopoError::Invalid(format!("slot {id} does not exist")))?;
        let (group, source) = match phase {
            SlotState::PreMigrate => (from, None),
            SlotState::Migrate => (to, Some(from)),
            SlotState::Online => (to, None),
        };
        slot.group = group;
        slot.state = phase;
        slot.from = source;
    }
    // The slot table's version after this write: unique and increasing.
    let seq = u64::try_from(version).unwrap_or(0) + 1;
    let action = Action {
        seq,
        phase,
        slots: slots.to_vec(),
        from,
        to,
        created: unix_secs(),
        drain_target,
    };
    zk.mkdir_p(&paths.actions()).await?;
    let mut txn = zk.txn();
    txn.set_json(&paths.slots(), &table, version)?;
    txn.create_json(&paths.action(seq), &action)?;
    if let Some(f) = fence {
        txn.set_json(&f.path, &f.value, f.version)?;
    }
    txn.commit().await?;
    tracing::info!(seq, ?phase, from, to, slots = slots.len(), "action written");
    Ok(action)
}

/// Waits until every live proxy acknowledged action `seq`; on timeout returns
/// the ids still missing.
///
/// A listing that fails proves nothing: it is never read as "no live proxy"
/// (which would skip every acknowledgement), only retried until the deadline.
pub(crate) async fn wait_acks(
    zk: &ZkSession,
    paths: &Paths,
    seq: u64,
    timeout: Duration,
) -> Result<(), Vec<String>> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Live proxies acknowledge within milliseconds: only a proxy still
    // missing after this is looked at as possibly dead (see below), so a
    // normal switch reads nothing more.
    let look_at = tokio::time::Instant::now() + DEAD_PROXY_GRACE;
    let (proxies_path, acks_path) = (paths.proxies(), paths.acks_of(seq));
    loop {
        // Both lists with watches: an ack, or a proxy that leaves, wakes this
        // at once. A missing `acks/<seq>` lists as empty (no proxy has
        // acknowledged yet; the first one creates it).
        let (proxies, acks) = tokio::join!(
            zk.children_and_watch(&proxies_path),
            zk.children_and_watch(&acks_path)
        );
        let (missing, watches) = match (proxies, acks) {
            (Ok((live, live_watch)), Ok((acked, acked_watch))) => {
                let acked: BTreeSet<String> = acked.into_iter().collect();
                let missing: Vec<String> = live.into_iter().filter(|p| !acked.contains(p)).collect();
                (missing, Some((live_watch, acked_watch)))
            }
            (Err(e), _) | (_, Err(e)) => (vec![format!("(unknown: cannot list proxies or acks: {e})")], None),
        };
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(missing);
        }
        // A proxy of this machine that has ended will never acknowledge; its
        // session would hold the moving slots' requests on every live proxy
        // until it times out. Its node goes now (the watch then wakes us).
        let looking = tokio::time::Instant::now() >= look_at;
        if looking {
            for id in &missing {
                let _ = zk.remove_if_owner_gone(&paths.proxy(id)).await;
            }
        }
        let changed = async {
            match watches {
                Some((a, b)) => {
                    tokio::select! {
                        _ = a.changed() => {}
                        _ = b.changed() => {}
                    }
                }
                // ZooKeeper failed: try again soon.
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = tokio::time::sleep_until(look_at), if !looking => {}
        }
    }
}

/// How long [`wait_acks`] waits before it looks whether a missing proxy has
/// ended (see `owner.rs`).
const DEAD_PROXY_GRACE: Duration = Duration::from_millis(200);

/// Deletes actions and acks older than `latest` (best effort: leftovers are
/// harmless and go with the next collection).
async fn collect_garbage(zk: &ZkSession, paths: &Paths, latest: u64) {
    let names = zk.children(&paths.actions()).await.unwrap_or_default();
    for seq in names
        .iter()
        .filter_map(|n| n.parse::<u64>().ok())
        .filter(|&s| s < latest)
    {
        for proxy in zk.children(&paths.acks_of(seq)).await.unwrap_or_default() {
            let _ = zk.delete(&paths.ack(seq, &proxy), None).await;
        }
        let _ = zk.delete(&paths.acks_of(seq), None).await;
        let _ = zk.delete(&paths.action(seq), None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topo::model::{Role, Server};

    fn group(id: GroupId, with_master: bool) -> Group {
        let servers = if with_master {
            vec![Server {
                addr: "h:1".into(),
                role: Role::Master,
            }]
        } else {
            Vec::new()
        };
        Group { id, servers }
    }

    #[test]
    fn a_migration_is_checked_before_anything_moves() {
        let mut table = SlotTable::default();
        for id in 0..8 {
            if let Some(s) = table.get_mut(id) {
                s.group = if id < 4 { 1 } else { 2 };
            }
        }
        let ok = group(2, true);
        assert_eq!(check_migration(&table, Some(&ok), &[0, 1, 2, 3], 2).ok(), Some(1));
        let err = |target: Option<&Group>, slots: &[u16], to| {
            check_migration(&table, target, slots, to)
                .expect_err("refused")
                .to_string()
        };
        assert!(err(None, &[0], 9).contains("group 9 does not exist"));
        assert!(matches!(
            check_migration(&table, None, &[0], 9),
            Err(TopoError::NotFound(_))
        ));
        assert!(err(Some(&group(3, false)), &[0], 3).contains("group 3 has no master"));
        assert!(err(Some(&ok), &[4, 5], 2).contains("already belong to group 2"));
        assert!(err(Some(&ok), &[3, 4], 2).contains("several groups"));
        assert!(err(Some(&ok), &[9], 2).contains("not assigned"));
        assert!(err(Some(&ok), &[], 2).contains("no slots"));
        if let Some(s) = table.get_mut(0) {
            s.state = SlotState::Migrate;
            s.group = 3;
            s.from = Some(1);
        }
        let e = check_migration(&table, Some(&ok), &[0], 2).expect_err("migrating");
        assert!(e.to_string().contains("migrating to group 3"), "{e}");
    }
}
