//! Where a promote and the migration runner of one product meet, inside the
//! leading dashboard (both run only there).
//!
//! A promote of a group closes the gate for that group: the runner stops
//! the step of a task whose source or target it is (moving keys, above all),
//! and the promote waits until it has stopped, so no batch of the
//! migrator reaches a server after it changed roles. When the promote is
//! over the gate opens, and the runner starts again from the topology, with
//! the masters it names then.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::topo::model::GroupId;
use crate::topo::store::Store;

/// The gate of one product (see the module docs).
#[derive(Debug)]
pub struct MigrationGate {
    state: Mutex<GateState>,
    /// Bumped on every change of `state`; waiters look again.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct GateState {
    /// Groups a promote is switching, with how many promotes hold each.
    closed: HashMap<GroupId, usize>,
    /// Groups of the task steps the runner is in, as source or target.
    inside: HashMap<GroupId, usize>,
}

impl MigrationGate {
    /// The gate of `store`'s product in this process.
    pub fn of(store: &Store) -> Arc<MigrationGate> {
        static GATES: OnceLock<Mutex<HashMap<String, Weak<MigrationGate>>>> = OnceLock::new();
        let key = format!("{}{}", store.config().addr, store.paths().product());
        let mut gates = GATES.get_or_init(Mutex::default).lock();
        gates.retain(|_, g| g.strong_count() > 0);
        if let Some(gate) = gates.get(&key).and_then(Weak::upgrade) {
            return gate;
        }
        let gate = Arc::new(MigrationGate {
            state: Mutex::default(),
            changed: watch::channel(0).0,
        });
        gates.insert(key, Arc::downgrade(&gate));
        gate
    }

    /// Closes the gate for `group` and waits until no runner step of it is
    /// left (keys moving, above all); it
    /// opens again when the returned guard is dropped.
    pub async fn close(self: &Arc<Self>, group: GroupId) -> GateClosed {
        self.update(|s| *s.closed.entry(group).or_default() += 1);
        let guard = GateClosed {
            gate: self.clone(),
            group,
        };
        self.wait_for(|s| s.inside.get(&group).copied().unwrap_or(0) == 0)
            .await;
        guard
    }

    /// Registers a runner step for a task between `groups`, unless the gate is
    /// closed for one of them.
    pub fn enter(self: &Arc<Self>, groups: [GroupId; 2]) -> Option<Inside> {
        let mut entered = false;
        self.update(|s| {
            if groups.iter().all(|g| !s.closed.contains_key(g)) {
                for g in groups {
                    *s.inside.entry(g).or_default() += 1;
                }
                entered = true;
            }
        });
        entered.then(|| Inside {
            gate: self.clone(),
            groups,
        })
    }

    /// Returns once the gate is closed for one of `groups`.
    pub async fn closing(&self, groups: [GroupId; 2]) {
        self.wait_for(|s| groups.iter().any(|g| s.closed.contains_key(g)))
            .await;
    }

    fn update(&self, change: impl FnOnce(&mut GateState)) {
        change(&mut self.state.lock());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn wait_for(&self, ready: impl Fn(&GateState) -> bool) {
        let mut changes = self.changed.subscribe();
        loop {
            if ready(&self.state.lock()) {
                return;
            }
            // The sender lives as long as `self`.
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A promote's hold on one group; dropping it opens the gate again.
#[derive(Debug)]
pub struct GateClosed {
    gate: Arc<MigrationGate>,
    group: GroupId,
}

impl Drop for GateClosed {
    fn drop(&mut self) {
        let group = self.group;
        self.gate.update(|s| {
            if let Some(n) = s.closed.get_mut(&group) {
                *n -= 1;
                if *n == 0 {
                    s.closed.remove(&group);
                }
            }
        });
    }
}

/// A runner step for a task between two groups; dropped once it is over.
#[derive(Debug)]
pub struct Inside {
    gate: Arc<MigrationGate>,
    groups: [GroupId; 2],
}

impl Drop for Inside {
    fn drop(&mut self) {
        let groups = self.groups;
        self.gate.update(|s| {
            for g in groups {
                if let Some(n) = s.inside.get_mut(&g) {
                    *n -= 1;
                    if *n == 0 {
                        s.inside.remove(&g);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Arc<MigrationGate> {
        Arc::new(MigrationGate {
            state: Mutex::default(),
            changed: watch::channel(0).0,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_waits_for_the_mover_and_keeps_it_out() {
        let g = gate();
        let inside = g.enter([1, 2]).expect("open");
        let closing = tokio::spawn({
            let g = g.clone();
            async move { g.close(2).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!closing.is_finished(), "the close waits for the mover");
        g.closing([1, 2]).await;
        drop(inside);
        let closed = closing.await.expect("closed");
        assert!(g.enter([2, 3]).is_none() && g.enter([3, 1]).is_some());
        drop(closed);
        assert!(g.enter([2, 3]).is_some());
    }
}
