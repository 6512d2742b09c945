//! Adding this comet's sessions back after a group's master changed.
//!
//! A failover promotes a replica, which lacks the old master's last writes
//! (its replication lag; none with the proxy's `write_ack = "replica"`). A
//! session written in that window is gone, and so is a session whose TTL
//! renewals were: its client stays connected and heartbeating, but pushes to
//! it find nobody until its next renew, up to `renew_interval` (10 min) later.
//! So the comet watches the failover history in ZooKeeper, where the dashboard
//! records every change of a group's master once it is done, and on each new
//! record that changed one renews, through logic's `Heartbeat` (which adds
//! back a session that is missing), the sessions with a key on that group:
//! in a slot the record says the group had at the switch (a migration may
//! have moved it off since), or that the group owns or gives up in the slot
//! table read then. Failed attempts change nothing and renew nothing; a
//! history it cannot read renews every session. [`CONCURRENCY`] calls run at
//! a time.
//! Imports the `topo` kernel, `im::session_key` and the comet's `hub`.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::channel::Channel;
use super::hub::Hub;
use super::stats::CometStats;
use crate::im::session_key::session_keys;
use crate::libs::hash::slot_of;
use crate::topo::error::TopoError;
use crate::topo::model::{FailoverRecord, GroupId, SlotTable};
use crate::topo::operation::format_slot_ids;
use crate::topo::store::Store;
use crate::topo::watcher;

/// Heartbeat calls in flight at once during a resync.
pub const CONCURRENCY: usize = 64;
/// Wait before watching again after a ZooKeeper error.
const RETRY: Duration = Duration::from_secs(1);

/// Which sessions a resync renews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Those with a key on a group whose master changed.
    Changed(Changed),
    /// Every one (the records could not be read).
    All,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("every session"),
            Scope::Changed(c) => {
                let groups: Vec<String> = c.groups.iter().map(ToString::to_string).collect();
                let slots: Vec<u16> = c.slots.iter().copied().collect();
                write!(f, "groups {}", groups.join(", "))?;
                if !slots.is_empty() {
                    write!(f, "; slots {} at the switch", format_slot_ids(&slots))?;
                }
                Ok(())
            }
        }
    }
}

/// What new failover records changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// The groups whose master changed.
    pub groups: BTreeSet<GroupId>,
    /// The slots the records say those groups had at the switch.
    pub slots: BTreeSet<u16>,
}

impl Changed {
    /// What `records` changed: an attempt that failed changed nothing (it
    /// names no new master).
    pub fn of(records: &[FailoverRecord]) -> Changed {
        let mut changed = Changed::default();
        for r in records.iter().filter(|r| r.new_master.is_some()) {
            changed.groups.insert(r.group);
            changed.slots.extend(r.slot_ids());
        }
        changed
    }

    /// Whether the session of `mid`/`key` has a key in a slot the changed
    /// groups had at the switch, or own or are giving up in `table` now (a
    /// migrating slot's keys may be on either side).
    pub fn covers(&self, table: &SlotTable, mid: i64, key: &str) -> bool {
        session_keys(mid, key).iter().any(|k| {
            let slot = slot_of(k.as_bytes());
            self.slots.contains(&slot)
                || table.get(slot).is_some_and(|s| {
                    self.groups.contains(&s.group) || s.from.is_some_and(|from| self.groups.contains(&from))
                })
        })
    }
}

/// Watches the failover history until `shutdown`, and renews the sessions on
/// the groups whose master changed, after each record added since the comet
/// started.
pub async fn follow_failovers(store: Store, hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut seen: Option<u64> = None;
    loop {
        let watched = tokio::select! {
            () = shutdown.cancelled() => return,
            w = newest_and_watch(&store) => w,
        };
        let watch = match watched {
            Ok((newest, watch)) => {
                match seen {
                    // The first look: records from before the comet started
                    // are no news to it.
                    None => seen = Some(newest),
                    // Any change of the newest record (records are only ever
                    // added, and trimmed from the oldest end).
                    Some(last) if newest != last => {
                        seen = Some(newest);
                        let scope = changed_since(&store, last).await;
                        if scope == Scope::Changed(Changed::default()) {
                            tracing::debug!(
                                "only failed failover attempts: no master changed, nothing to renew"
                            );
                        } else {
                            // Thousands of calls when logic is slow: shutdown
                            // must not wait for them.
                            tokio::select! {
                                () = shutdown.cancelled() => return,
                                () = renew(&hub, &store, scope) => {}
                            }
                        }
                    }
                    Some(_) => {}
                }
                Some(watch)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the failover history; retrying");
                None
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = async {
                match watch {
                    Some(w) => {
                        w.changed().await;
                    }
                    None => tokio::time::sleep(RETRY).await,
                }
            } => {}
        }
    }
}

/// The newest failover record's number (0: none), and a watch that fires when
/// the records change.
async fn newest_and_watch(store: &Store) -> Result<(u64, zookeeper_client::OneshotWatcher), TopoError> {
    let zk = store.zk()?;
    let (names, watch) = zk.children_and_watch(&store.paths().failovers()).await?;
    let newest = names
        .iter()
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Ok((newest, watch))
}

/// The groups whose master the records after `last` changed; [`Scope::All`]
/// when one of them cannot be read, or when none is after `last` although
/// the newest changed (the history was started again from 1).
pub async fn changed_since(store: &Store, last: u64) -> Scope {
    let read = async {
        let dir = store.paths().failovers();
        let mut records = Vec::new();
        for name in store.children(&dir).await? {
            if name.parse::<u64>().is_ok_and(|seq| seq > last) {
                records.push(store.get_json::<FailoverRecord>(&format!("{dir}/{name}")).await?);
            }
        }
        Ok::<_, TopoError>(records)
    };
    match read.await {
        Ok(records) if !records.is_empty() => Scope::Changed(Changed::of(&records)),
        Ok(_) => Scope::All,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the failover records; renewing every session");
            Scope::All
        }
    }
}

/// The connections `scope` covers, of those the comet holds now. The slot
/// table is read now; if it cannot be, every connection is covered.
async fn covered(hub: &Hub, store: &Store, scope: Scope) -> Vec<Arc<Channel>> {
    let channels = hub.buckets.channels();
    let changed = match scope {
        Scope::All => return channels,
        Scope::Changed(changed) => changed,
    };
    match watcher::load(store).await {
        Ok(topo) => channels
            .into_iter()
            .filter(|ch| changed.covers(&topo.slots, ch.mid(), ch.key()))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the slot table; renewing every session");
            channels
        }
    }
}

/// Renews the sessions `scope` covers.
pub async fn renew(hub: &Hub, store: &Store, scope: Scope) {
    let started = Instant::now();
    let held = hub.buckets.conn_count();
    let channels = covered(hub, store, scope.clone()).await;
    if channels.is_empty() {
        tracing::info!(
            %scope,
            "a failover was recorded; no session of this comet is on its group"
        );
        return;
    }
    let sessions = channels.len();
    let failed = futures::stream::iter(channels)
        .map(|ch| async move { hub.link.heartbeat(ch.mid(), ch.key(), &hub.server_id).await })
        .buffer_unordered(CONCURRENCY)
        .fold(
            0usize,
            |failed, r| async move { failed + usize::from(r.is_err()) },
        )
        .await;
    CometStats::bump(&hub.stats.resyncs);
    let s = &hub.stats;
    s.resynced_sessions
        .fetch_add((sessions - failed) as u64, Ordering::Relaxed);
    s.resync_failures.fetch_add(failed as u64, Ordering::Relaxed);
    tracing::warn!(
        %scope,
        sessions,
        held,
        failed,
        took_ms = started.elapsed().as_millis() as u64,
        "a group's master changed: its sessions renewed (a failover may have lost some)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::session_key::{key_key, mid_key};
    use crate::topo::model::{SlotRange, SlotState};

    fn record(group: GroupId, new_master: Option<&str>) -> FailoverRecord {
        FailoverRecord {
            seq: 1,
            at_ms: 0,
            group,
            old_master: "a:1".into(),
            reason: String::new(),
            detection_ms: 0,
            switch_ms: 0,
            new_master: new_master.map(str::to_string),
            offset: None,
            keys: None,
            outcome: String::new(),
            notes: Vec::new(),
            slots: Vec::new(),
        }
    }

    #[test]
    fn only_records_that_changed_a_master_name_their_group_and_slots() {
        let mut one = record(1, Some("b:1"));
        one.slots = vec![[0, 2], [7, 7]];
        let mut failed = record(2, None);
        failed.slots = vec![[9, 9]];
        let records = [one, failed, record(3, Some("c:1"))];
        let changed = Changed::of(&records);
        assert_eq!(changed.groups, BTreeSet::from([1, 3]));
        assert_eq!(changed.slots, BTreeSet::from([0, 1, 2, 7]));
        assert_eq!(
            Scope::Changed(changed).to_string(),
            "groups 1, 3; slots 0-2, 7 at the switch"
        );
        assert_eq!(Changed::of(&[record(2, None)]), Changed::default());
    }

    #[test]
    fn a_session_is_on_a_group_if_either_key_is_or_may_be() {
        // Slots 0-511 on group 1, 512-1023 on group 2 but migrating from 3.
        let slots = SlotTable::from_ranges(&[
            SlotRange {
                start: 0,
                end: 511,
                group: 1,
                state: SlotState::Online,
                from: None,
            },
            SlotRange {
                start: 512,
                end: 1023,
                group: 2,
                state: SlotState::Migrate,
                from: Some(3),
            },
        ])
        .expect("slot table");
        let low = |k: &String| slot_of(k.as_bytes()) < 512;
        let mid_low = (1..).find(|&m| low(&mid_key(m))).expect("a mid");
        let mid_high = (1..).find(|&m| !low(&mid_key(m))).expect("a mid");
        let key_low = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| low(&key_key(k)))
            .expect("a key");
        let key_high = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| !low(&key_key(k)))
            .expect("a key");
        let on = |groups: &[GroupId], mid, key: &str| {
            let changed = Changed {
                groups: groups.iter().copied().collect(),
                slots: BTreeSet::new(),
            };
            changed.covers(&slots, mid, key)
        };
        assert!(on(&[1], mid_low, &key_low));
        assert!(on(&[1], mid_low, &key_high), "the user's key alone");
        assert!(on(&[1], mid_high, &key_low), "the connection's key alone");
        assert!(!on(&[1], mid_high, &key_high));
        assert!(on(&[2], mid_high, &key_high));
        assert!(on(&[3], mid_high, &key_high), "the group a migrating slot leaves");
        assert!(!on(&[1], 0, &key_high), "no user key without a user");
        assert!(on(&[1], 0, &key_low));
        assert!(!on(&[4], mid_low, &key_low));

        // A slot the record says group 4 had at the switch, since moved off
        // it: its sessions are covered, the others not.
        let moved = Changed {
            groups: BTreeSet::from([4]),
            slots: BTreeSet::from([slot_of(mid_key(mid_low).as_bytes())]),
        };
        assert!(moved.covers(&slots, mid_low, &key_high));
        assert!(!moved.covers(&slots, mid_high, &key_high));
    }
}
