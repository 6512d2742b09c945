//! The cluster model: what ZooKeeper stores for one product, as plain data.
//!
//! Every type here is the JSON payload of a ZooKeeper node (see [`super::path`]),
//! so field names are part of the on-disk schema: rename with care. Imports only
//! `libs`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::libs::hash::SLOT_COUNT;

/// A group id. Groups are numbered from 1; 0 means "no group" (an unassigned slot).
pub type GroupId = u32;

/// The role of a redis-server inside its group.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Serves every request of the group's slots.
    Master,
    /// Replicates the master; not routed to by the proxy yet.
    Replica,
}

/// One redis-server of a group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// `host:port` the proxy connects to.
    pub addr: String,
    pub role: Role,
}

/// A group: one master and zero or more replicas holding the same data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub id: GroupId,
    pub servers: Vec<Server>,
}

impl Group {
    /// The master's address, if the group has one.
    pub fn master(&self) -> Option<&str> {
        self.servers
            .iter()
            .find(|s| s.role == Role::Master)
            .map(|s| s.addr.as_str())
    }
}

/// Where a slot is in its life cycle (`online → pre_migrate → migrate → online`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Served by `group`.
    #[default]
    Online,
    /// About to migrate: proxies hold its requests until the next phase.
    PreMigrate,
    /// Migrating from `from` to `group`: keys are moved on access.
    Migrate,
}

/// One slot's routing entry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Slot {
    pub id: u16,
    /// Owning group; 0 when the slot is unassigned (offline).
    pub group: GroupId,
    #[serde(default)]
    pub state: SlotState,
    /// The source group while the slot is migrating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<GroupId>,
}

/// A run of consecutive slots sharing the same entry: the compact form the slot
/// table takes in ZooKeeper (1024 entries collapse to a handful of ranges).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SlotRange {
    /// First slot of the run, inclusive.
    pub start: u16,
    /// Last slot of the run, inclusive.
    pub end: u16,
    pub group: GroupId,
    #[serde(default)]
    pub state: SlotState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<GroupId>,
}

/// The whole slot table: always exactly [`SLOT_COUNT`] entries, indexed by slot id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotTable {
    slots: Vec<Slot>,
}

impl Default for SlotTable {
    fn default() -> Self {
        SlotTable {
            slots: (0..SLOT_COUNT as u16)
                .map(|id| Slot {
                    id,
                    ..Slot::default()
                })
                .collect(),
        }
    }
}

impl SlotTable {
    /// All slots, indexed by id.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The entry of slot `id`, if `id < SLOT_COUNT`.
    pub fn get(&self, id: u16) -> Option<&Slot> {
        self.slots.get(usize::from(id))
    }

    /// Mutable entry of slot `id`, if `id < SLOT_COUNT`.
    pub fn get_mut(&mut self, id: u16) -> Option<&mut Slot> {
        self.slots.get_mut(usize::from(id))
    }

    /// Collapses the table into runs of equal entries.
    pub fn to_ranges(&self) -> Vec<SlotRange> {
        let mut out: Vec<SlotRange> = Vec::new();
        for s in &self.slots {
            match out.last_mut() {
                Some(r) if r.group == s.group && r.state == s.state && r.from == s.from => r.end = s.id,
                _ => out.push(SlotRange {
                    start: s.id,
                    end: s.id,
                    group: s.group,
                    state: s.state,
                    from: s.from,
                }),
            }
        }
        out
    }

    /// Expands ranges into a full table. Slots no range covers stay unassigned.
    ///
    /// # Errors
    /// [`BadSlotRange`]: a range that is reversed or reaches past the last slot.
    pub fn from_ranges(ranges: &[SlotRange]) -> Result<SlotTable, BadSlotRange> {
        let mut table = SlotTable::default();
        for r in ranges {
            if r.start > r.end || usize::from(r.end) >= SLOT_COUNT {
                return Err(BadSlotRange {
                    start: r.start,
                    end: r.end,
                });
            }
            for id in r.start..=r.end {
                if let Some(s) = table.get_mut(id) {
                    *s = Slot {
                        id,
                        group: r.group,
                        state: r.state,
                        from: r.from,
                    };
                }
            }
        }
        Ok(table)
    }
}

/// A stored slot range that is reversed or reaches past the last slot: the
/// slot table node was not written by reborn, or by a broken version of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad slot range {start}-{end} (slots are 0-{last})", last = SLOT_COUNT - 1)]
pub struct BadSlotRange {
    /// The range's first slot.
    pub start: u16,
    /// Its last slot.
    pub end: u16,
}

impl Serialize for SlotTable {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        self.to_ranges().serialize(ser)
    }
}

impl<'de> Deserialize<'de> for SlotTable {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let ranges = Vec::<SlotRange>::deserialize(de)?;
        SlotTable::from_ranges(&ranges).map_err(serde::de::Error::custom)
    }
}

/// Sorted slot ids as inclusive runs `[first, last]`: `[0, 1, 2, 5]` is
/// `[[0, 2], [5, 5]]`.
pub fn slot_runs(ids: &[u16]) -> Vec<[u16; 2]> {
    let mut runs: Vec<[u16; 2]> = Vec::new();
    for &id in ids {
        match runs.last_mut() {
            Some([_, end]) if end.checked_add(1) == Some(id) => *end = id,
            _ => runs.push([id, id]),
        }
    }
    runs
}

/// `0-511` for an inclusive slot range, or `7` for a single slot.
pub fn range_text(start: u16, end: u16) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

/// What a running proxy publishes about itself (an ephemeral node).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProxyInfo {
    /// Stable id; defaults to the listen address.
    pub id: String,
    /// RESP address clients connect to.
    pub addr: String,
    /// HTTP admin address (`/stats`, `/metrics`).
    pub admin_addr: String,
    pub pid: u32,
    /// The pid space `pid` is unique in (see `topo::owner`): a proxy
    /// restarted on the same machine removes the node of one that crashed.
    #[serde(default)]
    pub pid_space: String,
    /// Unix seconds.
    pub start_time: u64,
    /// reborn version of the process.
    pub version: String,
    /// When it acknowledges writes. Published so the migrator can match it:
    /// with `replica`, a moved key is deleted from its source only once a
    /// replica of the target has it. Left out for `master`, so the node reads
    /// the same as before to a dashboard that predates the field.
    #[serde(default, skip_serializing_if = "WriteAck::is_master")]
    pub write_ack: WriteAck,
}

/// When a proxy tells a client its write succeeded (`write_ack` in its config).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WriteAck {
    /// When the master ran it (Redis's own behaviour): a failover can lose
    /// what the replica had not received yet.
    #[default]
    Master,
    /// When a replica has it too (`WAIT 1`): a failover loses nothing acknowledged.
    Replica,
}

impl WriteAck {
    fn is_master(&self) -> bool {
        *self == WriteAck::Master
    }
}

/// What one proxy sees of the masters it routes to (its ephemeral node
/// `observations/<proxy id>`): the ones it has not heard from for a while.
/// The dashboard leader counts these as votes before an automatic failover.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    /// The masters (`host:port`) this proxy finds down.
    pub down: std::collections::BTreeSet<String>,
}

/// A slot change every live proxy must apply and acknowledge before the next
/// phase of a migration may start (see `topo::action`). Numbered by the slot
/// table's ZooKeeper version it was written with, so numbers only grow.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub seq: u64,
    /// The state the slots entered.
    pub phase: SlotState,
    pub slots: Vec<u16>,
    pub from: GroupId,
    pub to: GroupId,
    /// Unix seconds.
    pub created: u64,
    /// With `pre_migrate`: drain the target group's master too before
    /// acknowledging. Set when migrating slots are held again (a promote of
    /// one of their groups), so nothing sent for them is in flight anywhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain_target: bool,
}

/// One change of a group's master, or an attempt at one, as recorded in
/// ZooKeeper (`failovers/<seq>`) by the dashboard: automatic failovers,
/// operators' promotes, masters made masters again. Shown by the API, and
/// watched by comets, which renew the sessions kept on that group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    /// Its number, in order.
    pub seq: u64,
    /// Unix milliseconds when the switch began.
    pub at_ms: u64,
    pub group: GroupId,
    /// The master declared down.
    pub old_master: String,
    /// Who voted it down, e.g. "2 of 2 observers: proxy 127.0.0.1:19000, the dashboard".
    pub reason: String,
    /// From this dashboard's first failed ping to the decision.
    pub detection_ms: u64,
    /// How long the promote took.
    pub switch_ms: u64,
    /// The new master, when it worked.
    pub new_master: Option<String>,
    /// The new master's applied replication offset and keys when promoted.
    pub offset: Option<u64>,
    pub keys: Option<u64>,
    /// "promoted", or why it failed.
    pub outcome: String,
    /// What the promote reported besides: checks it was forced past, servers
    /// it left alone, migrating slots it settled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The slots the group owned or shared with a migration when its master
    /// changed, as runs ([`slot_runs`]). A comet renews the sessions in them
    /// even when a migration has moved a slot off the group since (see
    /// `im::comet::resync`). Empty when not known: a failed attempt, a repair
    /// that kept the master, a record written by an older version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<[u16; 2]>,
}

impl FailoverRecord {
    /// The slots of [`FailoverRecord::slots`], one by one.
    pub fn slot_ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.slots.iter().flat_map(|&[first, last]| first..=last)
    }
}

/// One consistent view of a product, as a proxy or operator sees it.
///
/// Built whole from ZooKeeper and published behind an `Arc`; readers never see a
/// half-applied change.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    pub product: String,
    pub slots: SlotTable,
    pub groups: BTreeMap<GroupId, Group>,
    /// Live proxies (their ephemeral nodes), by id.
    pub proxies: BTreeMap<String, ProxyInfo>,
    /// Ids of proxies an operator set offline. Persistent, so it survives restarts.
    pub offline_proxies: BTreeSet<String>,
    /// The latest action, which live proxies acknowledge.
    #[serde(default)]
    pub action: Option<Action>,
}

impl Topology {
    /// The master address serving slot `id`, if the slot is assigned to a group
    /// that has a master.
    pub fn master_of_slot(&self, id: u16) -> Option<&str> {
        let slot = self.slots.get(id)?;
        self.groups.get(&slot.group)?.master()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_node_names_its_write_ack_only_when_it_is_replica() {
        let old = r#"{"id":"p","addr":"a:1","admin_addr":"a:2","pid":1,"pid_space":"","start_time":0,"version":"0.1.0"}"#;
        let mut info: ProxyInfo = serde_json::from_str(old).expect("a node written before the field");
        assert_eq!(info.write_ack, WriteAck::Master);
        assert_eq!(
            serde_json::to_string(&info).expect("json"),
            old,
            "master nodes read as before"
        );
        info.write_ack = WriteAck::Replica;
        let json = serde_json::to_string(&info).expect("json");
        assert!(json.contains(r#""write_ack":"replica""#), "{json}");
        assert_eq!(
            serde_json::from_str::<ProxyInfo>(&json).expect("round trip"),
            info
        );
    }

    #[test]
    fn slot_table_round_trips_as_ranges() {
        let mut t = SlotTable::default();
        for id in 0..512 {
            if let Some(s) = t.get_mut(id) {
                s.group = 1;
            }
        }
        for id in 512..1024 {
            if let Some(s) = t.get_mut(id) {
                s.group = 2;
            }
        }
        let json = serde_json::to_string(&t).expect("serialize");
        assert_eq!(
            json,
            r#"[{"start":0,"end":511,"group":1,"state":"online"},{"start":512,"end":1023,"group":2,"state":"online"}]"#
        );
        let back: SlotTable = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, t);
    }

    #[test]
    fn bad_ranges_are_rejected() {
        assert!(serde_json::from_str::<SlotTable>(r#"[{"start":5,"end":1024,"group":1}]"#).is_err());
        assert!(serde_json::from_str::<SlotTable>(r#"[{"start":9,"end":3,"group":1}]"#).is_err());
    }
}
