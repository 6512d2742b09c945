//! Writes the local cluster's product into ZooKeeper through the operator
//! operations (the same path `reborn admin` takes), or reuses the product if it
//! is already there, e.g. when `reborn up --zk` runs against a kept ZooKeeper.

use crate::topo::model::{Role, SlotRange, Topology};
use crate::topo::{Store, TopoError, ZkConfig, operation, watcher};

use super::error::UpError;
use super::plan::GroupPlan;

/// What [`seed`] found and did.
#[derive(Debug)]
pub enum Seeded {
    /// The product was new: groups, servers and slots were written from the plan.
    Created,
    /// The product existed and was left untouched; `mismatches` lists where it
    /// disagrees with the servers started now (e.g. a group whose master is
    /// elsewhere), so the banner can say so.
    Reused {
        /// Human-readable differences, empty if it matches the plan.
        mismatches: Vec<String>,
        /// Groups whose master is now another of their servers than the
        /// plan's (a failover or promote since the product was created).
        changes: Vec<String>,
        /// The masters ZooKeeper names, by address.
        masters: Vec<String>,
        /// Who owns which slots now (a migration or rebalance may have moved
        /// them since the plan): runs of one group, in slot order.
        slots: Vec<SlotRange>,
    },
}

/// Creates the product from `groups` (group, master, replicas, slot range each),
/// or reuses it if it exists. The session is closed before returning.
///
/// # Errors
/// [`UpError::Topo`] with the product name if ZooKeeper refuses or is unreachable.
pub async fn seed(zk: &ZkConfig, groups: &[GroupPlan]) -> Result<Seeded, UpError> {
    let topo_err = |source| UpError::Topo {
        product: zk.product.clone(),
        source,
    };
    let store = Store::connect(zk).await.map_err(topo_err)?;
    let result = seed_with(&store, groups).await.map_err(topo_err);
    // Close explicitly: a dropped session lingers on the server until it expires.
    store.close().await;
    result
}

async fn seed_with(store: &Store, groups: &[GroupPlan]) -> Result<Seeded, TopoError> {
    match watcher::load(store).await {
        Ok(topo) => {
            let (mismatches, changes) = compare(&topo, groups);
            return Ok(Seeded::Reused {
                mismatches,
                changes,
                masters: topo
                    .groups
                    .values()
                    .filter_map(|g| g.master().map(str::to_string))
                    .collect(),
                slots: topo.slots.to_ranges(),
            });
        }
        Err(TopoError::NotInitialized { .. }) => {}
        Err(e) => return Err(e),
    }
    operation::init_product(store).await?;
    for group in groups {
        operation::create_group(store, group.id).await?;
        operation::add_server(store, group.id, &addr(group.master), Role::Master).await?;
        for &port in &group.replicas {
            operation::add_server(store, group.id, &addr(port), Role::Replica).await?;
        }
    }
    for group in groups {
        operation::assign_slots(store, group.first_slot, group.last_slot, group.id).await?;
    }
    Ok(Seeded::Created)
}

/// Where an existing product's groups disagree with the servers we started
/// (warnings), and groups whose master is another of their own servers now
/// (notes: a failover or promote moved it, which is fine).
fn compare(topo: &Topology, groups: &[GroupPlan]) -> (Vec<String>, Vec<String>) {
    let (mut mismatches, mut changes) = (Vec::new(), Vec::new());
    for group in groups {
        let ours = addr(group.master);
        match topo.groups.get(&group.id).and_then(|g| g.master()) {
            Some(master) if master == ours => {}
            Some(master) if group.replicas.iter().any(|&p| addr(p) == master) => changes.push(format!(
                "group {}'s master is {master} now, no longer {ours} (a failover or promote)",
                group.id
            )),
            Some(master) => mismatches.push(format!(
                "group {} has master {master} in ZooKeeper, not {ours}",
                group.id
            )),
            None => mismatches.push(format!("group {} (master {ours}) is not in ZooKeeper", group.id)),
        }
    }
    (mismatches, changes)
}

impl Seeded {
    /// Whether the server at `addr`, started as `planned`, is its group's
    /// master now.
    pub fn is_master(&self, addr: &str, planned: Role) -> bool {
        match self {
            Seeded::Created => planned == Role::Master,
            Seeded::Reused { masters, .. } => masters.iter().any(|m| m == addr),
        }
    }
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}
