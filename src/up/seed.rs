//! Writes the local cluster's product into ZooKeeper through the operator
//! operations (the same path `reborn admin` takes), or reuses the product if it
//! is already there, e.g. when `reborn up --zk` runs against a kept ZooKeeper.

use crate::topo::model::{Role, Topology};
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
            return Ok(Seeded::Reused {
                mismatches: mismatches(&topo, groups),
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

/// Where an existing product's groups disagree with the servers we started.
fn mismatches(topo: &Topology, groups: &[GroupPlan]) -> Vec<String> {
    let mut out = Vec::new();
    for group in groups {
        let ours = addr(group.master);
        match topo.groups.get(&group.id).and_then(|g| g.master()) {
            Some(master) if master == ours => {}
            Some(master) => out.push(format!(
                "group {} has master {master} in ZooKeeper, not {ours}",
                group.id
            )),
            None => out.push(format!("group {} (master {ours}) is not in ZooKeeper", group.id)),
        }
    }
    out
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}
