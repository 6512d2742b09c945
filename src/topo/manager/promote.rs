//! Promote: a manual failover of one group to one of its replicas, through the
//! same action protocol as a migration, so every proxy switches and none writes
//! to the old master afterwards.
//!
//! 0. Every server of the group is looked at (`INFO replication`, `DBSIZE`) and
//!    [`super::candidate::choose`] decides: with the master alive, only a
//!    replica linked to it, and only once it has applied what the master had
//!    (a bounded wait); with the master gone, only the replica that applied
//!    the most. A refusal names the reason and changes nothing, neither in
//!    ZooKeeper nor on a server; `force` overrides it and says what may be lost.
//! 1. Slots migrating to or from the group go back to `pre_migrate` (each
//!    proxy holds their requests and drains both masters), then the group's
//!    own slots go to `pre_migrate` (source = target = the group): every live
//!    proxy holds their requests and drains the old master, or the promote
//!    rolls back. The migration runner of this dashboard has stopped moving
//!    the group's keys before ([`super::migration_gate`]).
//! 2. With the old master alive, the replica catches up with it again, writes
//!    held: every write a client was told succeeded is then on the replica. If
//!    it cannot, the hold is released and the promote refused.
//! 3. `REPLICAOF NO ONE` on the replica; the group node names it master.
//! 4. The group's other servers replicate from the new master, except one that
//!    has applied more than it (it would full-sync from the less advanced server
//!    and drop what only it holds): that one is left alone with a warning.
//! 5. The group's own slots go back `online`, now routed to the new master.
//! 6. Without step 2's guarantee (the old master dead, or a forced promote),
//!    slots migrating *from* the group are settled with their target
//!    ([`migrator::settle_promoted_source`]): the new master may hold keys
//!    the old one had moved and deleted. Then the migrating slots go back to
//!    `migrate`, and the runner goes on with the new master.
//!
//! With the old master dead, writes it acknowledged but had not replicated are
//! lost: that is replication's limit, which no proxy can undo.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::candidate::{self, Choice, Follow, Looked};
use super::migration_gate::MigrationGate;
use super::migrator::{self, Conn, Sent, Unconfirmed};
pub use super::promote_journal::{HeldMigration, Journal};
use super::replication::{self, Replication, thousands};
use crate::libs::clock::unix_secs;
use crate::libs::resp_client::Frame;
use crate::topo::action::{wait_acks, write_hold, write_phase};
use crate::topo::error::TopoError;
use crate::topo::lock;
use crate::topo::model::{Group, GroupId, Role, SlotState, SlotTable};
use crate::topo::operation::get_group;
use crate::topo::path::Paths;
use crate::topo::session::ZkSession;
use crate::topo::store::Store;

/// How long the replica may take to catch up with a live master, once before
/// the hold (writes flowing: up to the master's offset when the wait began)
/// and once under it (up to the master's offset).
const CATCH_UP: Duration = Duration::from_secs(5);
const CALL: Duration = Duration::from_secs(5);

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct PromoteRequest {
    /// The server to promote; `None`: the best one (see [`candidate::choose`]).
    pub server: Option<String>,
    /// Promote although a check refuses, accepting what it says may be lost.
    pub force: bool,
}

/// What a promote did.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Promoted {
    /// `ADDR is now the master of group G (…)`, then the forced and warning lines.
    pub message: String,
    /// The group.
    pub group: GroupId,
    /// The new master.
    pub master: String,
    /// The master before, if the group had one.
    pub previous: Option<String>,
    /// The new master's applied offset and keys when it was promoted.
    pub offset: u64,
    /// `DBSIZE` of the new master when it was promoted.
    pub keys: u64,
    /// The refusals `force` overrode, each naming what may be lost.
    pub forced: Vec<String>,
    /// Servers left alone (unreachable, or ahead of the new master).
    pub warnings: Vec<String>,
    /// The group's slots, own and migrating, at the switch (for the failover
    /// record; not part of the API's answer).
    #[serde(skip)]
    pub slots: Vec<u16>,
}

impl Promoted {
    /// What the promote said besides its outcome: the checks forced past,
    /// then the warnings (servers left alone, migrations settled).
    pub fn notes(&self) -> Vec<String> {
        self.forced.iter().chain(&self.warnings).cloned().collect()
    }
}

/// Promotes `addr`, a replica of group `id`, to master, refusing anything that
/// could lose data (see the module comment).
///
/// # Errors
/// As [`promote_with`].
pub async fn promote(
    store: &Store,
    id: GroupId,
    addr: &str,
    auth: Option<&str>,
    ack_timeout: Duration,
) -> Result<(), TopoError> {
    let request = PromoteRequest {
        server: Some(addr.to_string()),
        force: false,
    };
    promote_with(store, id, &request, auth, ack_timeout)
        .await
        .map(|_| ())
}

/// Promotes the requested (or the best) server of group `id` to master.
///
/// # Errors
/// [`TopoError::Invalid`]: not a replica of the group; [`TopoError::State`]:
/// a check refused (the message says which and what `force` would lose), a
/// slot of the group in the middle of a task's switch, or the master of a
/// migration's target not answering when a settle will be needed;
/// [`TopoError::AckTimeout`] (rolled back); or a server that refuses
/// `REPLICAOF`.
pub async fn promote_with(
    store: &Store,
    id: GroupId,
    request: &PromoteRequest,
    auth: Option<&str>,
    ack_timeout: Duration,
) -> Result<Promoted, TopoError> {
    crate::topo::operation::check_group_id(id)?;
    let paths = store.paths().clone();
    // Before the lock: a migration task ending now takes the lock to bring its
    // slots online, and must not wait for us while we wait for it.
    let _stopped = MigrationGate::of(store).close(id).await;
    lock::with_lock(store, "promote", async |zk: &ZkSession| {
        let resumed = resume_under_lock(zk, &paths, auth, ack_timeout).await?;
        let (group, group_version) = get_group(zk, &paths, id).await?;
        check_named(&group, id, request.server.as_deref())?;
        let old = group.master().map(str::to_string);
        let (table, _) = zk.get_json_with_version::<SlotTable>(&paths.slots()).await?;
        let held = Held::of(zk, &paths, &table, id)?;

        // Everything is checked before anything is written or sent.
        let looked = look_all(&group, old.as_deref(), auth).await;
        let mut choice = candidate::choose(old.as_deref(), &looked, request.server.as_deref(), request.force)
            .map_err(|e| TopoError::State(format!("group {id}: {e}")))?;
        let caught_up = first_catch_up(&mut choice, id, request.force, auth).await?;
        let targets = held.targets().await?;
        if !caught_up {
            targets_answer(&targets, id, auth).await?;
        }

        // From here until every slot is released, a plan in ZooKeeper lets
        // whoever comes next finish the promote if this process cannot.
        let mut journal = held.journal(old.clone(), choice.addr.clone(), !caught_up);
        journal.create(zk, &paths).await?;
        if let Err(e) = held.hold(ack_timeout).await {
            if matches!(e, TopoError::AckTimeout { .. }) {
                // Rolled back: nothing is held.
                Journal::remove(zk, &paths).await?;
            }
            return Err(e);
        }
        let switched = switch_master(
            zk,
            &paths,
            (group, group_version),
            &mut choice,
            caught_up,
            request.force,
            auth,
        )
        .await;
        if let Ok(s) = &switched
            && journal.settle == s.guarded
        {
            journal.settle = !s.guarded;
            journal.update(zk, &paths).await?;
        }
        // Back online either way: on the new master, or (the switch failed
        // before touching ZooKeeper) on the old one.
        held.release_own(Some(ack_timeout)).await?;
        let mut settled = Vec::new();
        if let Ok(s) = &switched {
            // The old master's notes are of no use past this promote either way.
            let sent = old
                .as_deref()
                .map(|o| Unconfirmed::global().take(o))
                .unwrap_or_default();
            if !s.guarded {
                settled = held.settle(&targets, &choice.addr, &sent, auth).await;
            }
        }
        held.release_migrating(Some(ack_timeout)).await?;
        Journal::remove(zk, &paths).await?;
        let mut switched = switched?;
        switched.warnings.extend(settled);
        if let Some(r) = resumed {
            switched.warnings.extend(r.notes);
        }
        Ok(report(id, old, choice, switched, journal.slots()))
    })
    .await
}

/// Refuses a promote of `named` unless it is a replica of group `id`.
fn check_named(group: &Group, id: GroupId, named: Option<&str>) -> Result<(), TopoError> {
    let Some(addr) = named else { return Ok(()) };
    match group.servers.iter().find(|s| s.addr == addr).map(|s| s.role) {
        Some(Role::Replica) => Ok(()),
        // A state, not a mistake in the request: a failover may have got
        // there first. Nothing to do, and nothing was done.
        Some(Role::Master) => Err(TopoError::State(format!(
            "{addr} is already the master of group {id}; nothing was changed"
        ))),
        None => Err(TopoError::Invalid(format!(
            "{addr} is not a server of group {id}"
        ))),
    }
}

/// Step 0's wait: with the master alive, the chosen replica catches up with
/// it before anything is held. Returns whether it did; a lag is a refusal,
/// unless `force` records it as what the promote may lose.
async fn first_catch_up(
    choice: &mut Choice,
    id: GroupId,
    force: bool,
    auth: Option<&str>,
) -> Result<bool, TopoError> {
    let Some(master) = choice.live_master.clone() else {
        return Ok(false);
    };
    // A server already refused (and forced) is only measured, not waited for.
    let target = if choice.forced.is_empty() {
        Target::WhenAsked
    } else {
        Target::Now
    };
    match catch_up(&master, &choice.addr, auth, target).await {
        Ok(()) => Ok(true),
        Err(lag) if force => {
            choice.forced.push(lag.forced(&choice.addr, &master));
            Ok(false)
        }
        Err(lag) => Err(TopoError::State(format!(
            "group {id}: refused: {}; nothing was changed{}",
            lag.refusal(&choice.addr, &master),
            FORCE_HINT
        ))),
    }
}

/// Without the old master's last writes, slots migrating from group `id`
/// are settled with their target after the switch, so each target's master
/// must answer now. (With them, a settle is needed only if a forced promote
/// loses the second catch-up; a target that cannot be reached then is
/// reported.)
async fn targets_answer(
    targets: &BTreeMap<GroupId, Option<String>>,
    id: GroupId,
    auth: Option<&str>,
) -> Result<(), TopoError> {
    for (to, master) in targets {
        let down = match master {
            Some(addr) => {
                let health = super::health::probe(addr, auth).await;
                (health != super::health::Health::Up).then(|| format!("{addr} is {}", health.describe()))
            }
            None => Some("it has none".to_string()),
        };
        if let Some(why) = down {
            return Err(TopoError::State(format!(
                "group {id}: refused: slots of group {id} migrate to group {to}, whose master is needed \
                 to settle their copies after the switch, and {why}. Promote group {to} first; nothing \
                 was changed"
            )));
        }
    }
    Ok(())
}

/// What finishing a promote that was cut short did (see [`resume_interrupted`]).
#[derive(Debug, Clone)]
pub struct Resumed {
    /// Its plan.
    pub journal: Journal,
    /// The group named the promoted server master: the switch had happened.
    pub switched: bool,
    /// What was done, for the failover record.
    pub notes: Vec<String>,
}

/// Whether [`resume_interrupted`] found a promote to finish.
#[derive(Debug)]
pub enum Resumption {
    /// No promote's plan is in ZooKeeper.
    Nothing,
    /// A promote is under way (its plan is there and the lock is held).
    Running,
    /// One was left half done, and is finished now.
    Resumed(Resumed),
}

/// Finishes a promote whose process stopped (or whose ZooKeeper session
/// ended) while it held slots: its plan is in ZooKeeper
/// ([`Journal`]) and nobody holds the operator lock. The slots it held are
/// released, to the promoted server if the switch had happened, after the
/// settle the plan calls for. Cheap when there is no plan (one `exists`).
///
/// The leader's migration runner calls it before each step, so no task
/// resumes a held slot as its own; a promote calls it first, under the lock.
///
/// # Errors
/// A ZooKeeper failure (the plan stays, for the next call).
pub async fn resume_interrupted(
    store: &Store,
    auth: Option<&str>,
    ack_timeout: Duration,
) -> Result<Resumption, TopoError> {
    let paths = store.paths();
    if !store.exists(&paths.promoting()).await? {
        return Ok(Resumption::Nothing);
    }
    let guard = match lock::acquire_within(store, "resume an interrupted promote", Duration::ZERO).await {
        Ok(guard) => guard,
        Err(TopoError::Locked { .. }) => return Ok(Resumption::Running),
        Err(e) => return Err(e),
    };
    let resumed = resume_under_lock(guard.zk(), paths, auth, ack_timeout).await;
    if let Err(e) = guard.release().await {
        tracing::warn!("releasing the product lock: {e}");
    }
    Ok(resumed?.map_or(Resumption::Nothing, Resumption::Resumed))
}

/// [`resume_interrupted`]'s work, the lock held.
async fn resume_under_lock(
    zk: &ZkSession,
    paths: &Paths,
    auth: Option<&str>,
    ack_timeout: Duration,
) -> Result<Option<Resumed>, TopoError> {
    let Some(journal) = Journal::read(zk, paths).await? else {
        return Ok(None);
    };
    let id = journal.group;
    let master = match zk.get_json::<Group>(&paths.group(id)).await {
        Ok(group) => group.master().map(str::to_string),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e),
    };
    let switched = master.as_deref() == Some(journal.master.as_str()) && journal.previous != master;
    let (table, _) = zk.get_json_with_version::<SlotTable>(&paths.slots()).await?;
    let held = Held::resumed(zk, paths, &table, &journal);
    tracing::warn!(
        group = id,
        master = %journal.master,
        switched,
        "resuming a promote that stopped half-way"
    );
    held.release_own(Some(ack_timeout)).await?;
    let age = unix_secs().saturating_sub(journal.started);
    let mut notes = vec![format!(
        "resumed a promote of group {id} to {} that stopped half-way {age} s before ({}); its slots were \
         released{}",
        journal.master,
        if switched {
            "after the switch"
        } else {
            "before the switch: the master is unchanged"
        },
        if switched && journal.settle {
            " after the settle (the migrator's unconfirmed copies are known only to the process that \
             sent them: if that was another, the target's copy won for those)"
        } else {
            ""
        }
    )];
    if switched && journal.settle {
        let targets = held.targets().await?;
        let sent = journal
            .previous
            .as_deref()
            .map(|o| Unconfirmed::global().take(o))
            .unwrap_or_default();
        notes.extend(held.settle(&targets, &journal.master, &sent, auth).await);
    }
    held.release_migrating(Some(ack_timeout)).await?;
    Journal::remove(zk, paths).await?;
    Ok(Some(Resumed {
        journal,
        switched,
        notes,
    }))
}

/// The slots a promote of one group holds while it switches masters, and
/// the phases it writes for them.
struct Held<'a> {
    zk: &'a ZkSession,
    paths: &'a Paths,
    /// The group promoted.
    id: GroupId,
    /// The group's own `online` slots.
    own: Vec<u16>,
    /// Its migrating slots (as source or target), by (source, target).
    migrating: BTreeMap<(GroupId, GroupId), Vec<u16>>,
}

impl<'a> Held<'a> {
    fn of(
        zk: &'a ZkSession,
        paths: &'a Paths,
        table: &SlotTable,
        id: GroupId,
    ) -> Result<Held<'a>, TopoError> {
        let mut held = Held {
            zk,
            paths,
            id,
            own: Vec::new(),
            migrating: BTreeMap::new(),
        };
        for s in table
            .slots()
            .iter()
            .filter(|s| s.group == id || s.from == Some(id))
        {
            match (s.state, s.from) {
                (SlotState::Online, _) => held.own.push(s.id),
                (SlotState::Migrate, Some(from)) => {
                    held.migrating.entry((from, s.group)).or_default().push(s.id)
                }
                // A task's switch in progress (or cut short, which its runner
                // resumes): which group serves the slot is not settled yet.
                _ => {
                    return Err(TopoError::State(format!(
                        "slot {} of group {id} is being switched by a migration task (state {:?}); retry in a \
                         few seconds; nothing was changed",
                        s.id, s.state
                    )));
                }
            }
        }
        Ok(held)
    }

    /// The plan of a promote of this group to `master` (see [`Journal`]).
    fn journal(&self, previous: Option<String>, master: String, settle: bool) -> Journal {
        Journal {
            group: self.id,
            previous,
            master,
            own: self.own.clone(),
            migrating: self
                .migrating
                .iter()
                .map(|(&(from, to), slots)| HeldMigration {
                    from,
                    to,
                    slots: slots.clone(),
                })
                .collect(),
            settle,
            started: unix_secs(),
        }
    }

    /// The slots of `journal` that are still held (in `pre_migrate`, at
    /// the group the hold left them with): a promote stopped before its hold,
    /// or after a release, holds fewer or none.
    fn resumed(zk: &'a ZkSession, paths: &'a Paths, table: &SlotTable, journal: &Journal) -> Held<'a> {
        let held_at = |slot: u16, group: GroupId| {
            table
                .get(slot)
                .is_some_and(|s| s.state == SlotState::PreMigrate && s.group == group)
        };
        Held {
            zk,
            paths,
            id: journal.group,
            own: journal
                .own
                .iter()
                .copied()
                .filter(|&s| held_at(s, journal.group))
                .collect(),
            migrating: journal
                .migrating
                .iter()
                .map(|m| {
                    let slots = m.slots.iter().copied().filter(|&s| held_at(s, m.from)).collect();
                    ((m.from, m.to), slots)
                })
                .filter(|(_, slots): &(_, Vec<u16>)| !slots.is_empty())
                .collect(),
        }
    }

    /// The groups this group's slots migrate to, with their master when
    /// they have one.
    async fn targets(&self) -> Result<BTreeMap<GroupId, Option<String>>, TopoError> {
        let mut targets = BTreeMap::new();
        for &(from, to) in self.migrating.keys() {
            if from == self.id {
                let group = self.zk.get_json::<Group>(&self.paths.group(to)).await?;
                targets.insert(to, group.master().map(str::to_string));
            }
        }
        Ok(targets)
    }

    /// Every proxy holds the slots' requests and drains the masters they
    /// were sent to; rolled back if one does not acknowledge.
    async fn hold(&self, ack_timeout: Duration) -> Result<(), TopoError> {
        let id = self.id;
        let migrating = self
            .migrating
            .iter()
            .map(|(&(from, to), slots)| (from, to, slots));
        for (from, to, slots) in migrating {
            let hold = write_hold(self.zk, self.paths, slots, from, to).await?;
            self.acked_or_undone(hold.seq, ack_timeout, false).await?;
        }
        if !self.own.is_empty() {
            let hold = write_phase(self.zk, self.paths, &self.own, SlotState::PreMigrate, id, id).await?;
            self.acked_or_undone(hold.seq, ack_timeout, true).await?;
        }
        Ok(())
    }

    /// Waits for every proxy's ack of `seq`; without it, releases the hold
    /// (the group's own slots too if `own`), without waiting: a proxy that
    /// did not acknowledge the hold would not acknowledge this either.
    async fn acked_or_undone(&self, seq: u64, ack_timeout: Duration, own: bool) -> Result<(), TopoError> {
        let Err(missing) = wait_acks(self.zk, self.paths, seq, ack_timeout).await else {
            return Ok(());
        };
        if own {
            self.release_own(None).await?;
        }
        self.release_migrating(None).await?;
        Err(TopoError::AckTimeout { seq, missing })
    }

    /// The group's own slots go back online (on whichever master it has
    /// now); with `ack_timeout`, waiting that long for the proxies' acks.
    async fn release_own(&self, ack_timeout: Option<Duration>) -> Result<(), TopoError> {
        if !self.own.is_empty() {
            let done = write_phase(
                self.zk,
                self.paths,
                &self.own,
                SlotState::Online,
                self.id,
                self.id,
            )
            .await?;
            if let Some(wait) = ack_timeout {
                let _ = wait_acks(self.zk, self.paths, done.seq, wait).await;
            }
        }
        Ok(())
    }

    /// The migrating slots go on migrating, between the masters named now;
    /// with `ack_timeout`, waiting that long for the proxies' acks.
    async fn release_migrating(&self, ack_timeout: Option<Duration>) -> Result<(), TopoError> {
        for (&(from, to), slots) in &self.migrating {
            let done = write_phase(self.zk, self.paths, slots, SlotState::Migrate, from, to).await?;
            if let Some(wait) = ack_timeout {
                let _ = wait_acks(self.zk, self.paths, done.seq, wait).await;
            }
        }
        Ok(())
    }

    /// Settles each migration from the group with its target
    /// ([`migrator::settle_promoted_source`]), `source` being the new master
    /// and `sent` the old one's unconfirmed copies; the lines for the report.
    async fn settle(
        &self,
        targets: &BTreeMap<GroupId, Option<String>>,
        source: &str,
        sent: &HashMap<Bytes, Sent>,
        auth: Option<&str>,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        for (&(from, to), slots) in self.migrating.iter().filter(|((from, _), _)| *from == self.id) {
            let unsettled = |why: String| {
                format!(
                    "could not settle slots migrating from group {from} to group {to} ({why}): a key the old \
                     master had moved but whose DEL this replica missed may be served from here, stale"
                )
            };
            let Some(Some(target)) = targets.get(&to) else {
                lines.push(unsettled(format!("group {to} has no master")));
                continue;
            };
            let ids: BTreeSet<u16> = slots.iter().copied().collect();
            let mut tries = 0;
            let line = loop {
                tries += 1;
                match migrator::settle_promoted_source(source, target, &ids, sent, auth).await {
                    Ok(s) => {
                        tracing::info!(
                            from,
                            to,
                            found = s.found,
                            dropped = s.dropped,
                            kept = s.kept,
                            "migrating slots settled"
                        );
                        break format!(
                            "settled slots migrating from group {from} to group {to}: of {} keys on {source}, {} \
                             the target {target} also held were deleted here (the old master had moved them; its \
                             last DELs had not reached this replica), {} kept (the migrator's copy there was never \
                             served)",
                            s.found, s.dropped, s.kept
                        );
                    }
                    Err(e) if tries < SETTLE_TRIES => {
                        tracing::warn!(from, to, error = %e, "settling migrating slots failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        tracing::error!(from, to, error = %e, "settling migrating slots failed; they migrate on unsettled");
                        break unsettled(e.to_string());
                    }
                }
            };
            lines.push(line);
        }
        lines
    }
}

/// How many times the settle of one migration is tried (its target
/// failing), a second apart.
const SETTLE_TRIES: u32 = 5;

const FORCE_HINT: &str = " (--force promotes anyway, and loses what the other servers hold that it lacks)";

/// What [`switch_master`] did.
struct Switched {
    /// The new master's offset and keys when it was promoted.
    offset: u64,
    keys: u64,
    /// Servers left alone.
    warnings: Vec<String>,
    /// The new master applied everything the old one had, writes held: no
    /// copy needs settling.
    guarded: bool,
}

/// Steps 2 to 4, writes held.
async fn switch_master(
    zk: &ZkSession,
    paths: &Paths,
    (mut group, version): (Group, i32),
    choice: &mut Choice,
    caught_up: bool,
    force: bool,
    auth: Option<&str>,
) -> Result<Switched, TopoError> {
    let addr = choice.addr.clone();
    let mut guarded_by_catch_up = None;
    if let Some(master) = choice.live_master.clone() {
        // A forced promote of a lagging replica looks once more, to say what is lost.
        let target = if caught_up { Target::Master } else { Target::Now };
        match catch_up(&master, &addr, auth, target).await {
            Ok(()) => guarded_by_catch_up = Some(master),
            Err(lag) if force => {
                if caught_up {
                    choice.forced.push(lag.forced(&addr, &master));
                }
            }
            Err(lag) => {
                return Err(TopoError::State(format!(
                    "group {}: refused: {} with writes held; the hold was released and nothing else changed{}",
                    group.id,
                    lag.refusal(&addr, &master),
                    FORCE_HINT
                )));
            }
        }
    }
    // What the new master applied, read before it stops replicating: after
    // `REPLICAOF NO ONE` its offset may count bytes it read but never applied.
    let before = replication::look(&addr, auth)
        .await
        .map_err(|e| TopoError::Invalid(format!("promoting {addr}: {e}")))?;
    replicaof(&addr, None, auth).await?;
    for s in &mut group.servers {
        s.role = if s.addr == addr {
            Role::Master
        } else {
            Role::Replica
        };
    }
    zk.set_json(&paths.group(group.id), &group, version).await?;
    let mut warnings = Vec::new();
    for s in group.servers.iter().filter(|s| s.addr != addr) {
        let decision = if guarded_by_catch_up.as_deref() == Some(s.addr.as_str()) {
            // The new master applied all it had when the writes were held.
            Follow::Repoint
        } else {
            let state = replication::look(&s.addr, auth).await;
            candidate::follow(&s.addr, &state, (&addr, &before), force)
        };
        match decision {
            Follow::Repoint => {}
            Follow::RepointForced(what) => choice.forced.push(what),
            Follow::Skip(why) => {
                tracing::warn!(group = group.id, server = %s.addr, "{why}");
                warnings.push(why);
                continue;
            }
        }
        // A dead server cannot be repointed; it is reported instead.
        if let Err(e) = replicaof(&s.addr, Some(&addr), auth).await {
            tracing::warn!(server = %s.addr, error = %e, "could not repoint to the new master");
            warnings.push(format!("{} was not repointed: {e}", s.addr));
        }
    }
    for f in &choice.forced {
        tracing::warn!(group = group.id, master = %addr, "forced: {f}");
    }
    tracing::info!(group = group.id, master = %addr, offset = before.offset, keys = before.keys, "promoted");
    Ok(Switched {
        offset: before.offset,
        keys: before.keys,
        warnings,
        guarded: guarded_by_catch_up.is_some(),
    })
}

fn report(
    group: GroupId,
    previous: Option<String>,
    choice: Choice,
    switched: Switched,
    slots: Vec<u16>,
) -> Promoted {
    let Switched {
        offset,
        keys,
        warnings,
        ..
    } = switched;
    let mut message = format!(
        "{} is now the master of group {group} (offset {}, {} keys)",
        choice.addr,
        thousands(offset),
        thousands(keys)
    );
    for f in &choice.forced {
        message.push_str(&format!("\nforced: {f}"));
    }
    for w in &warnings {
        message.push_str(&format!("\nwarning: {w}"));
    }
    Promoted {
        message,
        group,
        master: choice.addr,
        previous,
        offset,
        keys,
        forced: choice.forced,
        warnings,
        slots,
    }
}

/// Looks at every server of the group at once.
async fn look_all(group: &Group, master: Option<&str>, auth: Option<&str>) -> Vec<Looked> {
    let mut set = tokio::task::JoinSet::new();
    for (i, s) in group.servers.iter().enumerate() {
        let (addr, master) = (s.addr.clone(), master.map(str::to_string));
        let auth = auth.map(str::to_string);
        set.spawn(async move {
            let state = replication::look(&addr, auth.as_deref()).await;
            let follows_master = match (&state, &master) {
                (Ok(Replication { master: Some(of), .. }), Some(m)) => replication::same_server(of, m).await,
                _ => false,
            };
            (
                i,
                Looked {
                    addr,
                    state,
                    follows_master,
                },
            )
        });
    }
    let mut looked = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(l) = joined {
            looked.push(l);
        }
    }
    looked.sort_by_key(|(i, _)| *i);
    looked.into_iter().map(|(_, l)| l).collect()
}

/// What the replica must reach.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The master's offset when the wait began (writes still flow).
    WhenAsked,
    /// The master's offset as it is at each look (writes held).
    Master,
    /// One look, no wait: a forced promote only reports the lag.
    Now,
}

/// How far a replica is behind its master.
struct Lag {
    replica: Option<Replication>,
    master: Option<Replication>,
    waited: Duration,
}

impl Lag {
    fn numbers(&self, master_addr: &str) -> String {
        match (&self.replica, &self.master) {
            (Some(r), Some(m)) => format!(
                "it is {} bytes behind after {} s (offset {} of {}; it has {} keys, {master_addr} has {})",
                thousands(m.offset.saturating_sub(r.offset)),
                self.waited.as_secs(),
                thousands(r.offset),
                thousands(m.offset),
                thousands(r.keys),
                thousands(m.keys)
            ),
            (None, _) => "it stopped answering while catching up".into(),
            (_, None) => format!("{master_addr} stopped answering while it caught up"),
        }
    }

    fn refusal(&self, replica: &str, master: &str) -> String {
        format!(
            "{replica} has not caught up with the master {master}: {}",
            self.numbers(master)
        )
    }

    fn forced(&self, replica: &str, master: &str) -> String {
        format!(
            "{replica} had not caught up with {master}: {}; the writes past its offset are lost",
            self.numbers(master)
        )
    }
}

/// Waits (bounded by [`CATCH_UP`]) until `replica` has applied what `master`
/// has (see [`Target`]).
async fn catch_up(master: &str, replica: &str, auth: Option<&str>, target: Target) -> Result<(), Lag> {
    let start = Instant::now();
    let mut goal = None;
    loop {
        let (m, r) = tokio::join!(replication::look(master, auth), replication::look(replica, auth));
        let lag = |m: Option<Replication>, r: Option<Replication>| Lag {
            replica: r,
            master: m,
            waited: start.elapsed(),
        };
        let (m, r) = match (m, r) {
            (Ok(m), Ok(r)) => (m, r),
            (m, r) => return Err(lag(m.ok(), r.ok())),
        };
        let want = match target {
            Target::WhenAsked => *goal.get_or_insert(m.offset),
            Target::Master | Target::Now => m.offset,
        };
        if r.offset >= want && r.link_up {
            return Ok(());
        }
        if target == Target::Now || start.elapsed() >= CATCH_UP {
            return Err(lag(Some(m), Some(r)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `REPLICAOF NO ONE`, or `REPLICAOF host port`, with `CONFIG REWRITE`, so
/// a restart keeps the server in its new role: a promoted master that crashes
/// and restarts must not come back as a replica of its old master (which the
/// topology may now call a replica: a loop nobody can write to). Both run in
/// one `MULTI`, so no client and no crash sees the new role before the config
/// file has it (a test that read the file as soon as the role changed found
/// it not yet rewritten). A server started without a config file refuses the
/// rewrite; that is not an error.
pub(crate) async fn replicaof(addr: &str, master: Option<&str>, auth: Option<&str>) -> Result<(), TopoError> {
    let fail = |e: String| TopoError::Invalid(format!("REPLICAOF on {addr}: {e}"));
    let mut conn = Conn::connect(addr, auth).await.map_err(|e| fail(e.to_string()))?;
    let (host, port) = match master {
        Some(m) => m
            .rsplit_once(':')
            .ok_or_else(|| fail(format!("bad address {m}")))?,
        None => ("NO", "ONE"),
    };
    let queued: [(&[&[u8]], &'static str); 3] = [
        (&[b"MULTI"], "MULTI"),
        (&[b"REPLICAOF", host.as_bytes(), port.as_bytes()], "REPLICAOF"),
        (&[b"CONFIG", b"REWRITE"], "CONFIG REWRITE"),
    ];
    for (args, cmd) in queued {
        let reply = conn
            .call(args, cmd, CALL)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if let Frame::Error(e) = reply {
            return Err(fail(e.to_string()));
        }
    }
    let reply = conn
        .call(&[b"EXEC"], "EXEC", CALL)
        .await
        .map_err(|e| fail(e.to_string()))?;
    // The first reply is REPLICAOF's; the second, the rewrite's, may be the
    // "no config file" error.
    match reply {
        Frame::Array(items) => match items.first() {
            Some(Frame::Error(e)) => Err(fail(e.to_string())),
            Some(_) => Ok(()),
            None => Err(fail("EXEC answered nothing".into())),
        },
        Frame::Error(e) => Err(fail(e.to_string())),
        other => Err(fail(format!("EXEC answered {other:?}"))),
    }
}
