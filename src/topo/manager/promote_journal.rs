//! A promote's plan, in ZooKeeper (`<product>/promoting`) from before it
//! holds any slot until it has released them all.
//!
//! A promote holds its group's slots, and those migrating to or from it,
//! while it switches masters. If its process dies, or its ZooKeeper session
//! ends, in between, nothing would let them go: every request for them would
//! wait out the proxies' `hold_timeout` and fail, for ever, and the migration
//! runner would take the held migrating slots for a task's cut-short switch
//! and resume them without the settle the new master may need. The plan says
//! what was held, to which server, and whether to settle, so the next
//! promote or the leader's migration runner finishes the job
//! (`promote::resume_interrupted`). It is only written and deleted under the
//! operator lock: found while nobody holds the lock, it was left behind.

use serde::{Deserialize, Serialize};

use crate::topo::error::TopoError;
use crate::topo::model::GroupId;
use crate::topo::path::Paths;
use crate::topo::session::ZkSession;

/// The plan (see the module docs).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// The group promoted.
    pub group: GroupId,
    /// Its master before.
    pub previous: Option<String>,
    /// The server promoted.
    pub master: String,
    /// The group's own slots, held while it switches.
    pub own: Vec<u16>,
    /// Its migrating slots, held too.
    pub migrating: Vec<HeldMigration>,
    /// Once the group names `master`: settle the slots migrating from the
    /// group (the new master may lack the old one's last `DEL`s).
    pub settle: bool,
    /// Unix seconds when the promote began.
    pub started: u64,
}

/// Slots migrating between two groups, held by a promote of one of them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeldMigration {
    pub from: GroupId,
    pub to: GroupId,
    pub slots: Vec<u16>,
}

impl Journal {
    /// Every slot it holds, own and migrating, sorted.
    pub fn slots(&self) -> Vec<u16> {
        let mut slots = self.own.clone();
        slots.extend(self.migrating.iter().flat_map(|m| m.slots.iter().copied()));
        slots.sort_unstable();
        slots
    }

    /// Writes a new plan.
    ///
    /// # Errors
    /// [`TopoError::State`] if a plan is there already (resume it first).
    pub(super) async fn create(&self, zk: &ZkSession, paths: &Paths) -> Result<(), TopoError> {
        match zk.create_json(&paths.promoting(), self).await {
            Err(e) if e.is_exists() => Err(TopoError::State(
                "an interrupted promote has to be resumed first; retry".into(),
            )),
            other => other,
        }
    }

    /// Rewrites the plan (the switch decided whether to settle).
    pub(super) async fn update(&self, zk: &ZkSession, paths: &Paths) -> Result<(), TopoError> {
        // -1: any version; only the lock holder writes it.
        zk.set_json(&paths.promoting(), self, -1).await.map(|_| ())
    }

    /// The plan left in ZooKeeper, if any.
    pub(super) async fn read(zk: &ZkSession, paths: &Paths) -> Result<Option<Journal>, TopoError> {
        match zk.get_json::<Journal>(&paths.promoting()).await {
            Ok(j) => Ok(Some(j)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes the plan: every slot it held is released.
    pub(super) async fn remove(zk: &ZkSession, paths: &Paths) -> Result<(), TopoError> {
        match zk.delete(&paths.promoting(), None).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_round_trips() {
        let j = Journal {
            group: 1,
            previous: Some("h:1".into()),
            master: "h:2".into(),
            own: vec![0, 1],
            migrating: vec![HeldMigration {
                from: 1,
                to: 2,
                slots: vec![5],
            }],
            settle: true,
            started: 7,
        };
        let json = serde_json::to_string(&j).expect("json");
        assert_eq!(serde_json::from_str::<Journal>(&json).expect("parse"), j);
    }
}
