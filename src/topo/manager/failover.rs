//! Automatic failover, run by the dashboard leader.
//!
//! * **Detection, by quorum.** The observers are every live proxy (its
//!   `observations/<id>` node, `proxy::observer`) and this dashboard (its own
//!   pings). A master is down only when a majority of them, and at least two,
//!   have not heard from it for `down_after` and cannot even connect to it,
//!   or have not heard from it for `busy_down_after` (a Redis busy with a
//!   slow command still accepts connections, `libs::reachable`, and a
//!   failover would only replace a healthy master): one observer's broken
//!   link never fails a group over. We chose this over Redis Sentinel because the proxies
//!   already see every master, ZooKeeper already says which proxies are alive,
//!   and the switch must go through our own action protocol and promote checks
//!   anyway; Sentinel would be a second source of truth to reconcile.
//! * **Switch.** The same promote as an operator's (`promote`): the replica
//!   that applied the most becomes master, through the action protocol, so
//!   proxies hold the group's requests and resume on the new master. A promote
//!   that fails changes nothing and is tried again after `retry_after`.
//! * **Rejoin.** A server the topology names a replica but that is a master (an
//!   old master restarted) or follows another server is made a replica of the
//!   group's master, under the operator lock, and its config is rewritten so a
//!   later restart keeps it a replica. Proxies never route to it meanwhile: the
//!   topology does not name it master.
//! * **Master again.** A server the topology names master but that follows
//!   another server (an operator's `REPLICAOF`, a config file that says
//!   `replicaof`, a loop of two replicas after a restart) answers every write
//!   with `READONLY`, and a full sync from its master may replace its data.
//!   Every write the proxies acknowledged went to it, so it holds the
//!   group's data or a copy of its master's: it is made a master again
//!   (`REPLICAOF NO ONE`, config rewritten), under the lock and on a fresh
//!   look, and its replicas are repointed to it as above. Recorded like a
//!   failover, with what it followed.
//! * **Record.** Every attempt is a node `failovers/<seq>`: when, why (the
//!   votes), how long detection and the switch took, offsets, and the outcome.
//!
//! Every round looks at every server of the topology at once, on connections
//! kept for the leadership term (`server_conns`), not on new ones each round.
//!
//! Imports `libs`, the topo core and the manager's `promote`, `replication`,
//! `server_conns` and `health`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::health;
use super::promote::{self, PromoteRequest, Promoted};
use super::replication::{self, LookError, Replication};
use super::server_conns::ServerConns;
use crate::libs::clock::unix_ms;
use crate::libs::reachable::{self, DownAfter};
use crate::topo::error::TopoError;
use crate::topo::lock;
use crate::topo::model::{FailoverRecord, Group, GroupId, Observation, Role, slot_runs};
use crate::topo::session::ZkSession;
use crate::topo::store::Store;
use crate::topo::watcher;

/// Records kept; older ones are deleted.
const KEEP_RECORDS: usize = 100;

/// How the leader detects and replaces dead masters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailoverConfig {
    /// Fail over automatically (false: only report, an operator promotes).
    pub enabled: bool,
    /// How often the leader looks at the votes and pings the masters.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Silence after which this dashboard votes a master down, if its port
    /// does not even accept a connection (the proxies have their own
    /// `master_down_after`).
    #[serde(with = "humantime_serde")]
    pub down_after: Duration,
    /// Silence after which this dashboard votes a master down however
    /// reachable: a Redis busy with a slow command still accepts
    /// connections (`libs::reachable`; the proxies' `master_busy_down_after`).
    #[serde(with = "humantime_serde")]
    pub busy_down_after: Duration,
    /// Pause before a failed failover of a group is tried again.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            enabled: true,
            check_interval: Duration::from_millis(500),
            down_after: Duration::from_secs(3),
            busy_down_after: Duration::from_secs(30),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// What a leadership term fails over with.
struct Leader<'a> {
    store: &'a Store,
    cfg: &'a FailoverConfig,
    auth: Option<&'a str>,
    ack_timeout: Duration,
}

/// What the leader remembers between rounds.
struct Watch {
    /// A connection to every server of the topology, kept between rounds.
    conns: ServerConns,
    /// When this dashboard last heard from each master (a master first seen
    /// down counts from then); its silence is the detection time.
    heard: HashMap<String, Instant>,
    /// When each master last answered or at least accepted a connection.
    reached: HashMap<String, Instant>,
    /// Groups whose failover failed, and when to try again.
    retry_at: HashMap<GroupId, Instant>,
    /// Groups already reported as having no replica to promote.
    reported: HashMap<GroupId, String>,
}

/// Runs failover rounds until `term` ends (the leadership term).
pub async fn run(
    store: Store,
    cfg: FailoverConfig,
    auth: Option<String>,
    ack_timeout: Duration,
    term: CancellationToken,
) {
    if !cfg.enabled {
        tracing::info!("automatic failover is off");
        // Returning early would make the leader start us again at once.
        return term.cancelled().await;
    }
    let leader = Leader {
        store: &store,
        cfg: &cfg,
        auth: auth.as_deref(),
        ack_timeout,
    };
    let mut watch = Watch {
        conns: ServerConns::new(leader.auth),
        heard: HashMap::new(),
        reached: HashMap::new(),
        retry_at: HashMap::new(),
        reported: HashMap::new(),
    };
    loop {
        let round = Instant::now();
        if let Err(e) = leader.round(&mut watch).await {
            tracing::debug!(error = %e, "failover round");
        }
        tokio::select! {
            _ = tokio::time::sleep_until(round + cfg.check_interval) => {}
            _ = term.cancelled() => return,
        }
    }
}

impl Leader<'_> {
    /// One look at every server, the failovers the votes call for, then the
    /// masters that follow another server and the replicas to repoint.
    async fn round(&self, watch: &mut Watch) -> Result<(), TopoError> {
        let topo = watcher::load(self.store).await?;
        let votes = observations(self.store).await?;
        let masters: BTreeMap<GroupId, String> = topo
            .groups
            .iter()
            .filter_map(|(id, g)| g.master().map(|m| (*id, m.to_string())))
            .collect();
        let servers: BTreeSet<String> = topo
            .groups
            .values()
            .flat_map(|g| g.servers.iter().map(|s| s.addr.clone()))
            .collect();
        watch.conns.retain(|addr| servers.contains(addr));
        let looks = replication::look_many(&mut watch.conns, servers, health::PROBE_TIMEOUT).await;
        // A refused command (loading, a wrong password) still proves it is up.
        let silent = |m: &String| !matches!(looks.get(m), Some(Ok(_) | Err(LookError::Refused { .. })));
        // A silent master that accepts connections may only be busy.
        let reachable = masters
            .values()
            .filter(|m| silent(m))
            .map(|m| async move { (m, reachable::accepts_connections(m, health::PROBE_TIMEOUT).await) });
        let reachable: HashMap<&String, bool> =
            futures::future::join_all(reachable).await.into_iter().collect();
        let now = Instant::now();
        for master in masters.values() {
            if silent(master) {
                watch.heard.entry(master.clone()).or_insert(now);
            } else {
                watch.heard.insert(master.clone(), now);
            }
            if !silent(master) || reachable.get(master).copied().unwrap_or(false) {
                watch.reached.insert(master.clone(), now);
            } else {
                watch.reached.entry(master.clone()).or_insert(now);
            }
        }
        watch.heard.retain(|m, _| masters.values().any(|x| x == m));
        watch.reached.retain(|m, _| masters.values().any(|x| x == m));
        let down_after = DownAfter {
            unreachable: self.cfg.down_after,
            busy: self.cfg.busy_down_after,
        };

        for (group, master) in topo.groups.values().filter_map(|g| g.master().map(|m| (g, m))) {
            let id = group.id;
            let silence = watch.heard.get(master).map_or(Duration::ZERO, |h| h.elapsed());
            let unreached = watch.reached.get(master).map_or(Duration::ZERO, |r| r.elapsed());
            let own_down = down_after.is_down(silence, unreached);
            let voters: Vec<&str> = votes
                .iter()
                .filter(|(_, o)| o.down.contains(master))
                .map(|(proxy, _)| proxy.as_str())
                .collect();
            let observers = votes.len() + 1;
            let down = voters.len() + usize::from(own_down);
            if down < 2 || down * 2 <= observers {
                continue;
            }
            if watch.retry_at.get(&id).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            if !group.servers.iter().any(|s| s.role == Role::Replica) {
                if watch.reported.get(&id).map(String::as_str) != Some(master) {
                    tracing::error!(group = id, %master, "master down and no replica to promote");
                    watch.reported.insert(id, master.to_string());
                }
                continue;
            }
            let mut who: Vec<String> = voters.iter().map(|p| format!("proxy {p}")).collect();
            if own_down {
                who.push("the dashboard".into());
            }
            let reason = format!(
                "{master} down for {down} of {observers} observers: {}",
                who.join(", ")
            );
            // The dashboard's own silence is the detection time.
            self.fail_over(id, master, reason, silence, watch).await;
        }

        for (group, master) in topo.groups.values().filter_map(|g| g.master().map(|m| (g, m))) {
            if let Some(Ok(state)) = looks.get(master)
                && state.is_replica
            {
                self.make_master_again(group.id, master, state).await;
            }
        }
        rejoin(self.store, &topo.groups, &looks, self.auth).await;
        Ok(())
    }

    /// Group `id`'s master follows another server (see the module docs):
    /// makes it a master again, under the lock, and records it.
    async fn make_master_again(&self, id: GroupId, master: &str, seen: &Replication) {
        let at_ms = unix_ms();
        let started = Instant::now();
        let reason = format!("{master}, the group's master, was {seen}");
        let result = lock::with_lock(self.store, "failover: master again", async |zk: &ZkSession| {
            restore_master(zk, self.store, id, master, self.auth).await
        })
        .await;
        let (offset, keys, outcome) = match result {
            Ok(Some(state)) => {
                tracing::warn!(group = id, %master, %reason, "made a master again");
                (
                    Some(state.offset),
                    Some(state.keys),
                    "made a master again".to_string(),
                )
            }
            Ok(None) => return, // it changed meanwhile: nothing to repair
            Err(e) => {
                tracing::error!(group = id, %master, error = %e, "cannot make the master a master again");
                (None, None, format!("failed: {e}"))
            }
        };
        let mut record = FailoverRecord {
            seq: 0,
            at_ms,
            group: id,
            old_master: master.to_string(),
            reason,
            detection_ms: 0,
            switch_ms: started.elapsed().as_millis() as u64,
            new_master: offset.map(|_| master.to_string()),
            offset,
            keys,
            outcome,
            notes: Vec::new(),
            slots: Vec::new(),
        };
        if let Err(e) = save(self.store, &mut record).await {
            tracing::warn!(error = %e, "cannot record the repair");
        }
    }

    /// Promotes group `id`'s best replica in place of `master`, and records it.
    async fn fail_over(
        &self,
        id: GroupId,
        master: &str,
        reason: String,
        detection: Duration,
        watch: &mut Watch,
    ) {
        tracing::warn!(group = id, %master, %reason, "failing over");
        let at_ms = unix_ms();
        let started = Instant::now();
        let request = PromoteRequest::default();
        let result = promote::promote_with(self.store, id, &request, self.auth, self.ack_timeout).await;
        let mut record = FailoverRecord {
            seq: 0,
            at_ms,
            group: id,
            old_master: master.to_string(),
            reason,
            detection_ms: detection.as_millis() as u64,
            switch_ms: started.elapsed().as_millis() as u64,
            new_master: None,
            offset: None,
            keys: None,
            outcome: String::new(),
            notes: Vec::new(),
            slots: Vec::new(),
        };
        match result {
            Ok(p) => {
                tracing::warn!(group = id, old = %master, new = %p.master, switch_ms = record.switch_ms, "failed over");
                record.notes = p.notes();
                record.slots = slot_runs(&p.slots);
                record.new_master = Some(p.master);
                record.offset = Some(p.offset);
                record.keys = Some(p.keys);
                record.outcome = "promoted".into();
                watch.retry_at.remove(&id);
            }
            Err(e) => {
                let retry = self.cfg.retry_after;
                tracing::error!(group = id, %master, error = %e, "failover failed; trying again in {retry:?}");
                record.outcome = format!("failed: {e}");
                watch.retry_at.insert(id, Instant::now() + retry);
            }
        }
        if let Err(e) = save(self.store, &mut record).await {
            tracing::warn!(error = %e, "cannot record the failover");
        }
    }
}

/// The proxies' observations: (proxy id, what it sees). Every node is
/// ephemeral, so every one belongs to a live proxy.
async fn observations(store: &Store) -> Result<Vec<(String, Observation)>, TopoError> {
    store.json_children(&store.paths().observations()).await
}

/// Repoints servers the topology names replicas that do not follow their
/// group's master (see the module docs).
async fn rejoin(
    store: &Store,
    groups: &BTreeMap<GroupId, Group>,
    looks: &BTreeMap<String, Result<Replication, LookError>>,
    auth: Option<&str>,
) {
    for group in groups.values() {
        let Some(master) = group.master() else { continue };
        for s in group.servers.iter().filter(|s| s.role == Role::Replica) {
            let Some(Ok(state)) = looks.get(&s.addr) else {
                continue; // down: nothing to repoint yet
            };
            if state.is_replica && state.master.as_deref() == Some(master) {
                continue;
            }
            // Confirm under the lock, on a fresh read: a promote may be
            // switching this group right now.
            let (id, addr) = (group.id, s.addr.clone());
            let result = lock::with_lock(store, "failover: rejoin", async |zk: &ZkSession| {
                repoint_if_astray(zk, store, id, &addr, auth).await
            })
            .await;
            match result {
                Ok(Some(to)) => {
                    tracing::warn!(group = id, server = %addr, master = %to, "rejoined as a replica")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(group = id, server = %addr, error = %e, "cannot repoint"),
            }
        }
    }
}

/// Under the lock: group `id` as ZooKeeper has it now, and `addr`'s
/// replication state now (`None` if it does not answer): what a repair checks
/// again before it acts, since a promote may have changed either meanwhile.
async fn fresh_look(
    zk: &ZkSession,
    store: &Store,
    id: GroupId,
    addr: &str,
    auth: Option<&str>,
) -> Result<(Group, Option<Replication>), TopoError> {
    let group: Group = zk.get_json(&store.paths().group(id)).await?;
    Ok((group, replication::look(addr, auth).await.ok()))
}

/// Under the lock: makes `addr` a replica of group `id`'s master if it still
/// is a replica there and follows anything else. Returns the master if it did.
async fn repoint_if_astray(
    zk: &ZkSession,
    store: &Store,
    id: GroupId,
    addr: &str,
    auth: Option<&str>,
) -> Result<Option<String>, TopoError> {
    let (group, state) = fresh_look(zk, store, id, addr, auth).await?;
    let Some(master) = group.master().map(str::to_string) else {
        return Ok(None);
    };
    let named_replica = group
        .servers
        .iter()
        .any(|s| s.addr == addr && s.role == Role::Replica);
    let Some(state) = state.filter(|_| named_replica) else {
        return Ok(None);
    };
    if state.is_replica && state.master.as_deref() == Some(master.as_str()) {
        return Ok(None);
    }
    super::promote::replicaof(addr, Some(&master), auth).await?;
    Ok(Some(master))
}

/// Under the lock: `REPLICAOF NO ONE` on group `id`'s master if the topology
/// still names `addr` its master and it still follows another server. Returns
/// what it held just before, if it did.
async fn restore_master(
    zk: &ZkSession,
    store: &Store,
    id: GroupId,
    addr: &str,
    auth: Option<&str>,
) -> Result<Option<Replication>, TopoError> {
    let (group, state) = fresh_look(zk, store, id, addr, auth).await?;
    let Some(state) = state.filter(|s| s.is_replica && group.master() == Some(addr)) else {
        return Ok(None);
    };
    super::promote::replicaof(addr, None, auth).await?;
    Ok(Some(state))
}

/// Records a promote an operator asked for (`reborn admin promote`, the API
/// or the web UI) in the same history as the automatic failovers, so the
/// history says every time a group's master changed. `started` is when the
/// request arrived. A failure to record is logged: the promote happened.
pub async fn record_promote(store: &Store, promoted: &Promoted, at_ms: u64, started: Instant) {
    let mut reason = "promoted by an operator".to_string();
    if !promoted.forced.is_empty() {
        reason.push_str(" (forced)");
    }
    let mut record = FailoverRecord {
        seq: 0,
        at_ms,
        group: promoted.group,
        old_master: promoted.previous.clone().unwrap_or_default(),
        reason,
        detection_ms: 0,
        switch_ms: started.elapsed().as_millis() as u64,
        new_master: Some(promoted.master.clone()),
        offset: Some(promoted.offset),
        keys: Some(promoted.keys),
        outcome: "promoted".into(),
        notes: promoted.notes(),
        slots: slot_runs(&promoted.slots),
    };
    if let Err(e) = save(store, &mut record).await {
        tracing::warn!(error = %e, "cannot record the promote");
    }
}

/// Records the finishing of a promote that was cut short (`outcome`
/// `resumed`), so an operator sees it next to the failovers.
pub async fn record_resumed(store: &Store, resumed: &promote::Resumed) {
    let j = &resumed.journal;
    let mut record = FailoverRecord {
        seq: 0,
        at_ms: unix_ms(),
        group: j.group,
        old_master: j.previous.clone().unwrap_or_default(),
        reason: "a promote stopped half-way (its process or ZooKeeper session ended)".into(),
        detection_ms: 0,
        switch_ms: 0,
        new_master: resumed.switched.then(|| j.master.clone()),
        offset: None,
        keys: None,
        outcome: "resumed".into(),
        notes: resumed.notes.clone(),
        slots: if resumed.switched {
            slot_runs(&j.slots())
        } else {
            Vec::new()
        },
    };
    if let Err(e) = save(store, &mut record).await {
        tracing::warn!(error = %e, "cannot record the resumed promote");
    }
}

/// Writes `record` as the next `failovers/<seq>` node and trims old ones.
async fn save(store: &Store, record: &mut FailoverRecord) -> Result<(), TopoError> {
    let paths = store.paths();
    store.mkdir_p(&paths.failovers()).await?;
    loop {
        let names = store.children(&paths.failovers()).await?;
        let seqs: Vec<u64> = names.iter().filter_map(|n| n.parse().ok()).collect();
        record.seq = seqs.iter().max().map_or(1, |m| m + 1);
        match store.create_json(&paths.failover(record.seq), record).await {
            Ok(()) => {
                let mut old = seqs;
                old.sort_unstable();
                let excess = (old.len() + 1).saturating_sub(KEEP_RECORDS);
                for seq in old.into_iter().take(excess) {
                    let _ = store.delete(&paths.failover(seq), None).await;
                }
                return Ok(());
            }
            Err(e) if e.is_exists() => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Every recorded failover, oldest first.
///
/// # Errors
/// A ZooKeeper failure or a bad node.
pub async fn list(store: &Store) -> Result<Vec<FailoverRecord>, TopoError> {
    let mut out: Vec<FailoverRecord> = (store.json_children(&store.paths().failovers()).await?)
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    out.sort_by_key(|r| r.seq);
    Ok(out)
}
