//! Operator changes to a product: groups, servers, slot assignment, proxy state.
//!
//! Every operation takes the product lock, reads what it needs, validates
//! *everything* before writing, and writes with compare-and-set (`multi` with
//! version checks when two nodes are involved), so a refused or bad request never
//! leaves ZooKeeper half-written. None of them moves data: moving slots between
//! live groups is the migration manager's job. Imports `libs` and `topo`'s kernel.

use crate::libs::clock::unix_secs;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::TopoError;
use super::lock::with_lock;
use super::model::{Group, GroupId, Role, Server, SlotState, SlotTable, range_text, slot_runs};
use super::path::{MAX_GROUP_ID, Paths, check_node_name, parse_group_node_name};
use super::session::ZkSession;
use super::store::Store;
use crate::libs::hash::SLOT_COUNT;

/// The product node's JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProductInfo {
    /// The product name.
    pub name: String,
    /// Unix seconds of `init`.
    pub created: u64,
}

/// The JSON of an offline marker (`offline/<id>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OfflineMarker {
    /// Unix seconds when the operator set the proxy offline.
    pub since: u64,
}

/// Creates the product (node, unassigned slot table, `groups/`, `proxies/`,
/// `offline/`). Idempotent: what exists is left alone.
///
/// # Errors
/// A ZooKeeper failure, or the lock held by someone else.
pub async fn init_product(store: &Store) -> Result<(), TopoError> {
    let zk = store.zk()?;
    let paths = store.paths();
    if paths.root() != "/" {
        zk.mkdir_p(paths.root()).await?;
    }
    let info = ProductInfo {
        name: paths.product_name().to_string(),
        created: unix_secs(),
    };
    // The lock lives under the product node, so the node comes first.
    ignore_exists(zk.create_json(paths.product(), &info).await)?;
    with_lock(store, "admin init", async |zk: &ZkSession| {
        ignore_exists(zk.create_json(&paths.slots(), &SlotTable::default()).await)?;
        for dir in [paths.groups(), paths.proxies(), paths.offline()] {
            zk.mkdir_p(&dir).await?;
        }
        Ok(())
    })
    .await
}

/// Creates the empty group `id` (1..=9999).
///
/// # Errors
/// [`TopoError::Invalid`] for a bad id, [`TopoError::Exists`] for a duplicate.
pub async fn create_group(store: &Store, id: GroupId) -> Result<(), TopoError> {
    check_group_id(id)?;
    let paths = store.paths();
    let owner = format!("admin group-create {id}");
    with_lock(store, &owner, async |zk: &ZkSession| {
        require_initialized(zk, paths).await?;
        let group = Group {
            id,
            servers: Vec::new(),
        };
        match zk.create_json(&paths.group(id), &group).await {
            Err(e) if e.is_exists() => Err(TopoError::Exists(format!("group {id}"))),
            other => other,
        }
    })
    .await
}

/// Removes group `id`.
///
/// # Errors
/// [`TopoError::NotFound`]; [`TopoError::Invalid`] while the group has servers,
/// or any slot belongs to the group or migrates from it.
pub async fn remove_group(store: &Store, id: GroupId) -> Result<(), TopoError> {
    check_group_id(id)?;
    let paths = store.paths();
    let owner = format!("admin group-remove {id}");
    with_lock(store, &owner, async |zk: &ZkSession| {
        require_initialized(zk, paths).await?;
        let (group, group_version) = get_group(zk, paths, id).await?;
        let (slots, slots_version) = zk.get_json_with_version::<SlotTable>(&paths.slots()).await?;
        let owned = slots_of_group(&slots, id);
        if !owned.is_empty() {
            return Err(TopoError::Invalid(format!(
                "group {id} still owns slots {}; move them and their keys to the other groups first \
                 (`reborn admin rebalance --weights {id}:0`, or `migrate`; `slots-assign` moves no keys)",
                format_slot_ids(&owned)
            )));
        }
        // Its servers would go on running as they are (replicating, holding
        // keys) with nothing in the product naming them any more.
        if !group.servers.is_empty() {
            let addrs: Vec<&str> = group.servers.iter().map(|s| s.addr.as_str()).collect();
            return Err(TopoError::Invalid(format!(
                "group {id} still has servers {}; remove them first (`server-remove`, the replicas \
                 before the master)",
                addrs.join(", ")
            )));
        }
        // The slot check is part of the write: a concurrent assignment aborts it.
        let mut txn = zk.txn();
        txn.check(&paths.slots(), slots_version)?;
        txn.delete(&paths.group(id), group_version)?;
        txn.commit().await
    })
    .await
}

/// Adds redis-server `addr` (`host:port`) to group `id` as `role`.
///
/// # Errors
/// [`TopoError::Invalid`] for a bad address or a second master;
/// [`TopoError::Exists`] if `addr` is in any group already;
/// [`TopoError::NotFound`] for a missing group.
pub async fn add_server(store: &Store, id: GroupId, addr: &str, role: Role) -> Result<(), TopoError> {
    check_group_id(id)?;
    let addr = check_server_addr(addr)?;
    let paths = store.paths();
    let owner = format!("admin server-add {id} {addr}");
    with_lock(store, &owner, async |zk: &ZkSession| {
        require_initialized(zk, paths).await?;
        let groups = all_groups(zk, paths).await?;
        if let Some(other) = groups.values().find(|(g, _)| has_server(g, &addr)) {
            return Err(TopoError::Exists(format!(
                "server {addr} (in group {})",
                other.0.id
            )));
        }
        let Some((mut group, version)) = groups.get(&id).cloned() else {
            return Err(TopoError::NotFound(format!("group {id}")));
        };
        if let (Role::Master, Some(master)) = (role, group.master()) {
            return Err(TopoError::Invalid(format!(
                "group {id} already has master {master}; add {addr} with --replica"
            )));
        }
        group.servers.push(Server { addr, role });
        zk.set_json(&paths.group(id), &group, version).await.map(|_| ())
    })
    .await
}

/// Removes redis-server `addr` from group `id`. The master can only go last, and
/// only once the group owns no slots: otherwise those slots would have nowhere
/// to be served.
///
/// # Errors
/// [`TopoError::NotFound`] for a missing group or server; [`TopoError::Invalid`]
/// for a master that cannot go yet.
pub async fn remove_server(store: &Store, id: GroupId, addr: &str) -> Result<(), TopoError> {
    check_group_id(id)?;
    let paths = store.paths();
    let owner = format!("admin server-remove {id} {addr}");
    with_lock(store, &owner, async |zk: &ZkSession| {
        require_initialized(zk, paths).await?;
        let (mut group, group_version) = get_group(zk, paths, id).await?;
        let Some(pos) = group.servers.iter().position(|s| s.addr == addr) else {
            return Err(TopoError::NotFound(format!("server {addr} in group {id}")));
        };
        let (slots, slots_version) = zk.get_json_with_version::<SlotTable>(&paths.slots()).await?;
        if group.servers[pos].role == Role::Master {
            check_master_removable(&group, &slots, addr)?;
        }
        group.servers.remove(pos);
        let mut txn = zk.txn();
        txn.check(&paths.slots(), slots_version)?;
        txn.set_json(&paths.group(id), &group, group_version)?;
        txn.commit().await
    })
    .await
}

/// Assigns slots `start..=end` to group `id` (0 unassigns them). No data moves:
/// this is for empty slots or an operator who knows the data is already there.
///
/// # Errors
/// [`TopoError::Invalid`] for a bad range, a group without a master, or a slot in
/// migration; [`TopoError::NotFound`] for a missing group.
pub async fn assign_slots(store: &Store, start: u16, end: u16, id: GroupId) -> Result<(), TopoError> {
    check_slot_range(start, end)?;
    if id != 0 {
        check_group_id(id)?;
    }
    let paths = store.paths();
    let owner = format!("admin slots-assign {start}-{end} {id}");
    with_lock(store, &owner, async |zk: &ZkSession| {
        require_initialized(zk, paths).await?;
        let (mut slots, slots_version) = zk.get_json_with_version::<SlotTable>(&paths.slots()).await?;
        let group_version = match id {
            0 => None,
            id => Some(serving_group_version(zk, paths, id).await?),
        };
        check_not_migrating(&slots, start, end)?;
        for slot in start..=end {
            if let Some(s) = slots.get_mut(slot) {
                s.group = id;
                s.state = SlotState::Online;
                s.from = None;
            }
        }
        let mut txn = zk.txn();
        if let Some(version) = group_version {
            // The group must still exist, with its master, when the slots land.
            txn.check(&paths.group(id), version)?;
        }
        txn.set_json(&paths.slots(), &slots, slots_version)?;
        txn.commit().await
    })
    .await
}

/// What [`set_proxy_online`] did, worded for the operator by `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyMarked {
    pub id: String,
    pub online: bool,
    /// A proxy with this id is registered (running) now. The mark is made
    /// either way, so a proxy can be taken out before it starts; saying so
    /// keeps a mistyped id from passing unnoticed.
    pub running: bool,
}

impl std::fmt::Display for ProxyMarked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = &self.id;
        match (self.online, self.running) {
            (true, true) => write!(f, "proxy {id} set online"),
            (false, true) => write!(f, "proxy {id} set offline"),
            (true, false) => write!(f, "proxy {id} set online (no proxy {id} is running)"),
            (false, false) => write!(
                f,
                "proxy {id} set offline; no proxy {id} is running, so it will start offline \
                 (check the id with `proxies`; `proxy-online {id}` removes the mark)"
            ),
        }
    }
}

/// Sets proxy `proxy_id` online (removes its offline marker) or offline (writes
/// one). The marker is persistent, so it also applies to a proxy not running yet.
///
/// # Errors
/// [`TopoError::Invalid`] for an id that cannot be a node name.
pub async fn set_proxy_online(store: &Store, proxy_id: &str, online: bool) -> Result<ProxyMarked, TopoError> {
    check_node_name(proxy_id)?;
    let paths = store.paths();
    let verb = if online { "proxy-online" } else { "proxy-offline" };
    let owner = format!("admin {verb} {proxy_id}");
    with_lock(store, &owner, async |zk: &ZkSession| {
        require_initialized(zk, paths).await?;
        let marker = paths.offline_proxy(proxy_id);
        if online {
            match zk.delete(&marker, None).await {
                Err(e) if e.is_not_found() => Ok(()),
                other => other,
            }?;
        } else {
            zk.mkdir_p(&paths.offline()).await?;
            ignore_exists(
                zk.create_json(&marker, &OfflineMarker { since: unix_secs() })
                    .await,
            )?;
        }
        Ok(ProxyMarked {
            id: proxy_id.to_string(),
            online,
            running: zk.exists(&paths.proxy(proxy_id)).await?,
        })
    })
    .await
}

/// Refuses ids outside `1..=9999`.
///
/// # Errors
/// [`TopoError::Invalid`].
pub fn check_group_id(id: GroupId) -> Result<(), TopoError> {
    if (1..=MAX_GROUP_ID).contains(&id) {
        Ok(())
    } else {
        Err(TopoError::Invalid(format!(
            "group id {id} is out of range 1..={MAX_GROUP_ID}"
        )))
    }
}

/// Checks `host:port` (or `[v6]:port`) syntax and returns it trimmed.
///
/// # Errors
/// [`TopoError::Invalid`] naming what is wrong.
pub fn check_server_addr(addr: &str) -> Result<String, TopoError> {
    let addr = addr.trim();
    let bad = |why: &str| TopoError::Invalid(format!("server address {addr:?}: {why}"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("expected host:port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 && !port.starts_with('+') => {}
        _ => return Err(bad("the port must be a number in 1..=65535")),
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !v6.is_empty() && v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if host_ok {
        Ok(addr.to_string())
    } else {
        Err(bad("bad host name"))
    }
}

/// `0-511, 600` for a sorted list of slot ids.
pub fn format_slot_ids(ids: &[u16]) -> String {
    let parts: Vec<String> = slot_runs(ids)
        .into_iter()
        .map(|[first, last]| range_text(first, last))
        .collect();
    parts.join(", ")
}

/// Refuses a reversed range or one past the last slot, in the words every
/// entry point (CLI, API, operations) uses.
///
/// # Errors
/// [`TopoError::Invalid`].
pub fn check_slot_range(start: u16, end: u16) -> Result<(), TopoError> {
    if start > end {
        return Err(TopoError::Invalid(format!(
            "slot range {start}-{end} is reversed: the first slot comes first ({end}-{start})"
        )));
    }
    if usize::from(end) >= SLOT_COUNT {
        return Err(TopoError::Invalid(format!(
            "slot range {start}-{end} is not within 0-{}",
            SLOT_COUNT - 1
        )));
    }
    Ok(())
}

fn check_not_migrating(slots: &SlotTable, start: u16, end: u16) -> Result<(), TopoError> {
    let busy: Vec<u16> = (start..=end)
        .filter(|&id| slots.get(id).is_some_and(|s| s.state != SlotState::Online))
        .collect();
    if busy.is_empty() {
        return Ok(());
    }
    Err(TopoError::Invalid(format!(
        "slots {} are migrating; wait for the migration to finish",
        format_slot_ids(&busy)
    )))
}

fn check_master_removable(group: &Group, slots: &SlotTable, addr: &str) -> Result<(), TopoError> {
    let owned = slots_of_group(slots, group.id);
    if !owned.is_empty() {
        return Err(TopoError::Invalid(format!(
            "{addr} is the master of group {}, which owns slots {}; move them and their keys to the \
             other groups first (`reborn admin rebalance --weights {}:0`, or `migrate`; `slots-assign` \
             moves no keys)",
            group.id,
            format_slot_ids(&owned),
            group.id
        )));
    }
    if group.servers.len() > 1 {
        return Err(TopoError::Invalid(format!(
            "{addr} is the master of group {}, which still has replicas; remove them first",
            group.id
        )));
    }
    Ok(())
}

/// Slots that belong to `id` or migrate from it.
fn slots_of_group(slots: &SlotTable, id: GroupId) -> Vec<u16> {
    slots
        .slots()
        .iter()
        .filter(|s| s.group == id || s.from == Some(id))
        .map(|s| s.id)
        .collect()
}

fn has_server(group: &Group, addr: &str) -> bool {
    group.servers.iter().any(|s| s.addr == addr)
}

async fn require_initialized(zk: &ZkSession, paths: &Paths) -> Result<(), TopoError> {
    if zk.exists(&paths.slots()).await? {
        Ok(())
    } else {
        Err(TopoError::NotInitialized {
            product: paths.product_name().to_string(),
        })
    }
}

/// Group `id` and its node's version; [`TopoError::NotFound`] naming the group if it is missing.
pub(crate) async fn get_group(zk: &ZkSession, paths: &Paths, id: GroupId) -> Result<(Group, i32), TopoError> {
    match zk.get_json_with_version(&paths.group(id)).await {
        Err(e) if e.is_not_found() => Err(TopoError::NotFound(format!("group {id}"))),
        other => other,
    }
}

/// The version of group `id`, which must exist and have a master.
async fn serving_group_version(zk: &ZkSession, paths: &Paths, id: GroupId) -> Result<i32, TopoError> {
    let (group, version) = get_group(zk, paths, id).await?;
    if group.master().is_none() {
        return Err(TopoError::Invalid(format!(
            "group {id} has no master; add one with server-add first"
        )));
    }
    Ok(version)
}

async fn all_groups(zk: &ZkSession, paths: &Paths) -> Result<BTreeMap<GroupId, (Group, i32)>, TopoError> {
    let mut groups = BTreeMap::new();
    for name in zk.children(&paths.groups()).await? {
        if let Some(id) = parse_group_node_name(&name) {
            groups.insert(id, get_group(zk, paths, id).await?);
        }
    }
    Ok(groups)
}

fn ignore_exists(r: Result<(), TopoError>) -> Result<(), TopoError> {
    match r {
        Err(e) if e.is_exists() => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reversed_range_is_called_reversed_and_a_long_one_out_of_range() {
        let msg = |r: Result<(), TopoError>| r.map_err(|e| e.to_string()).err();
        assert_eq!(check_slot_range(3, 3).ok(), Some(()));
        let reversed = msg(check_slot_range(700, 600)).unwrap_or_default();
        assert!(
            reversed.contains("700-600 is reversed") && reversed.contains("(600-700)"),
            "{reversed}"
        );
        let past = msg(check_slot_range(0, 1024)).unwrap_or_default();
        assert!(past.contains("0-1024 is not within 0-1023"), "{past}");
    }

    #[test]
    fn server_addresses_are_checked() {
        for good in ["127.0.0.1:6379", " redis-1.local:16379 ", "[::1]:6379", "h_1:1"] {
            assert!(check_server_addr(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "6379",
            "host:",
            "host:0",
            "host:65536",
            "host:+1",
            ":6379",
            "a b:1",
            "[]:1",
            "h/x:1",
        ] {
            assert!(check_server_addr(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_server_addr(" h:1 ").expect("trim"), "h:1");
    }

    #[test]
    fn group_ids_are_checked() {
        assert!(check_group_id(1).is_ok() && check_group_id(9999).is_ok());
        assert!(check_group_id(0).is_err() && check_group_id(10000).is_err());
    }

    #[test]
    fn slot_lists_are_compact() {
        assert_eq!(format_slot_ids(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(format_slot_ids(&[]), "");
    }

    #[test]
    fn a_master_goes_last_and_only_without_slots() {
        let mut slots = SlotTable::default();
        let group = Group {
            id: 2,
            servers: vec![Server {
                addr: "m:1".into(),
                role: Role::Master,
            }],
        };
        assert!(check_master_removable(&group, &slots, "m:1").is_ok());
        if let Some(s) = slots.get_mut(9) {
            s.from = Some(2);
            s.group = 3;
            s.state = SlotState::Migrate;
        }
        assert!(check_master_removable(&group, &slots, "m:1").is_err());
        let with_replica = Group {
            id: 4,
            servers: vec![
                Server {
                    addr: "m:1".into(),
                    role: Role::Master,
                },
                Server {
                    addr: "r:1".into(),
                    role: Role::Replica,
                },
            ],
        };
        assert!(check_master_removable(&with_replica, &SlotTable::default(), "m:1").is_err());
    }

    /// The dashboard will run operations in spawned tasks.
    #[allow(dead_code)]
    fn operations_are_send(store: &Store) {
        fn send<T: Send>(_: T) {}
        send(init_product(store));
        send(create_group(store, 1));
        send(remove_group(store, 1));
        send(add_server(store, 1, "h:1", Role::Master));
        send(remove_server(store, 1, "h:1"));
        send(assign_slots(store, 0, 1, 1));
        send(set_proxy_online(store, "p", true));
    }
}
