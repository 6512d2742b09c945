//! Migration tasks: the dashboard's queue of slot moves, kept in ZooKeeper under
//! `tasks/<id>` so a dashboard that dies mid-task is resumed by the next leader.
//! This file holds the record and what operators do to it (submit, list,
//! pause, cancel); [`super::runner`] drives the tasks.
//!
//! A task's life (one task runs at a time, in id order):
//!
//! * `queued` → `migrating` when the runner claims it, then the two-phase switch
//!   ([`crate::topo::action::begin_migration_fenced`]). A switch that a live proxy
//!   does not acknowledge rolls back: the task is `queued` again, error shown.
//! * `migrating`, slots switched → the background migrator moves every key,
//!   then the slots go `online` at the target → `done`.
//! * `failed`, with the reason, when it cannot progress: its target group was
//!   removed or lost its master, its slots changed hands, or its switch failed
//!   `switch_attempts` times in a row. A failed task frees the queue.
//! * `cancelled` by an operator, only while its slots have not been switched
//!   (see [`cancel`]).
//!
//! A submission is checked against the topology with the same rule as the
//! switch ([`crate::topo::action::check_migration`]) and refused, with nothing
//! queued, if it could never run. Imports the topo core and the manager's
//! `migrator` and `runner`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::migrator::Progress;
use crate::libs::clock::unix_secs;
use crate::topo::action::{check_migration, read_group};
use crate::topo::error::TopoError;
use crate::topo::lock;
use crate::topo::model::{GroupId, SlotState, SlotTable};
use crate::topo::operation::{check_group_id, format_slot_ids};
use crate::topo::session::ZkSession;
use crate::topo::store::Store;
use crate::topo::watcher;

/// Where a task is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its turn (or for another try at its switch).
    Queued,
    /// Claimed by the runner: switching, or moving keys once switched.
    Migrating,
    /// Every slot is online at the target.
    Done,
    /// Cancelled by an operator before its switch.
    Cancelled,
    /// Gave up before its switch; `error` says why.
    Failed,
}

impl TaskState {
    /// True once nothing will happen to the task any more.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Done | TaskState::Cancelled | TaskState::Failed)
    }

    /// Lower-case name, as in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Migrating => "migrating",
            TaskState::Done => "done",
            TaskState::Cancelled => "cancelled",
            TaskState::Failed => "failed",
        }
    }
}

/// One migration task, as stored in ZooKeeper and shown by the API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub id: u64,
    pub slots: Vec<u16>,
    pub to: GroupId,
    /// The source group, known once the switch succeeded.
    #[serde(default)]
    pub from: GroupId,
    pub state: TaskState,
    #[serde(default)]
    pub progress: Progress,
    /// The latest error (a rolled-back switch, a failing batch), or why the
    /// task failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Switch attempts that failed in a row (reset by a switch that succeeds).
    #[serde(default)]
    pub attempts: u32,
    /// Switch attempts that failed over the task's life (rolled back, then
    /// retried or given up on): with `progress.errors`, its error count.
    #[serde(default)]
    pub switch_failures: u32,
    /// Set by an operator: the runner leaves the task alone (a running pass
    /// stops at its next progress save, resumable) until resumed; later tasks
    /// run meanwhile.
    #[serde(default)]
    pub paused: bool,
    /// Unix seconds.
    pub created: u64,
    pub updated: u64,
}

impl Task {
    /// A new task `id` moving `slots` to group `to`, queued at `now` (Unix seconds).
    pub fn queued(id: u64, slots: Vec<u16>, to: GroupId, now: u64) -> Task {
        Task {
            id,
            slots,
            to,
            from: 0,
            state: TaskState::Queued,
            progress: Progress::default(),
            error: None,
            attempts: 0,
            switch_failures: 0,
            paused: false,
            created: now,
            updated: now,
        }
    }

    /// What went wrong and was retried or given up on: failed `MIGRATE`s
    /// and lost connections of its passes, and failed switch attempts.
    pub fn errors(&self) -> u64 {
        self.progress.errors + u64::from(self.switch_failures)
    }
}

/// Queues a migration of `slots` to group `to`; returns the task.
///
/// # Errors
/// As [`enqueue_many`].
pub async fn enqueue(store: &Store, slots: Vec<u16>, to: GroupId) -> Result<Task, TopoError> {
    let mut tasks = enqueue_many(store, vec![(slots, to)]).await?;
    tasks
        .pop()
        .ok_or_else(|| TopoError::Invalid("no migration to queue".into()))
}

/// Queues one task per `(slots, to)`, all or none: every one is checked first.
///
/// # Errors
/// [`TopoError::NotFound`] for a missing target group; [`TopoError::Invalid`]
/// for a target without a master, slots that already belong to it, or slots
/// that cannot move (unassigned, migrating, of several groups);
/// [`TopoError::State`] for slots of an unfinished task; ZooKeeper errors.
pub async fn enqueue_many(store: &Store, moves: Vec<(Vec<u16>, GroupId)>) -> Result<Vec<Task>, TopoError> {
    let paths = store.paths().clone();
    lock::with_lock(store, "migration task", async |zk: &ZkSession| {
        zk.mkdir_p(&paths.tasks()).await?;
        let table: SlotTable = zk.get_json(&paths.slots()).await?;
        let existing = list_on(zk, &paths).await?;
        let mut busy: Vec<(u64, BTreeSet<u16>)> = existing
            .iter()
            .filter(|t| !t.state.is_final())
            .map(|t| (t.id, t.slots.iter().copied().collect()))
            .collect();
        let mut id = existing.iter().map(|t| t.id).max().unwrap_or(0);
        let mut tasks = Vec::with_capacity(moves.len());
        for (slots, to) in moves {
            check_group_id(to)?;
            let target = read_group(zk, &paths, to).await?;
            check_migration(&table, target.as_ref(), &slots, to)?;
            let mine: BTreeSet<u16> = slots.iter().copied().collect();
            if let Some((other, overlap)) = busy.iter().find_map(|(other, theirs)| {
                let both: Vec<u16> = theirs.intersection(&mine).copied().collect();
                (!both.is_empty()).then_some((*other, both))
            }) {
                return Err(TopoError::State(format!(
                    "slots {} belong to unfinished task {other}; wait for it, or cancel it",
                    format_slot_ids(&overlap)
                )));
            }
            id += 1;
            busy.push((id, mine));
            tasks.push(Task::queued(id, slots, to, unix_secs()));
        }
        for task in &tasks {
            zk.create_json(&paths.task(task.id), task).await?;
        }
        Ok(tasks)
    })
    .await
}

/// Every task, oldest first.
///
/// # Errors
/// ZooKeeper errors.
pub async fn list(store: &Store) -> Result<Vec<Task>, TopoError> {
    list_on(&store.zk()?, store.paths()).await
}

async fn list_on(zk: &ZkSession, paths: &crate::topo::path::Paths) -> Result<Vec<Task>, TopoError> {
    let names = zk.children_or_none(&paths.tasks()).await?;
    let mut ids: Vec<u64> = names.iter().filter_map(|n| n.parse().ok()).collect();
    ids.sort_unstable();
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        tasks.push(zk.get_json(&paths.task(id)).await?);
    }
    Ok(tasks)
}

/// Task `id` and its node's version.
///
/// # Errors
/// [`TopoError::NotFound`] naming the task; ZooKeeper errors.
pub async fn get(store: &Store, id: u64) -> Result<(Task, i32), TopoError> {
    let path = store.paths().task(id);
    store.get_json_with_version::<Task>(&path).await.map_err(|e| {
        if e.is_not_found() {
            TopoError::NotFound(format!("task {id}"))
        } else {
            e
        }
    })
}

/// How many times [`cancel`] retries when the task changes under it.
const CANCEL_TRIES: usize = 5;

/// Cancels task `id` if its slots have not been switched: a `queued` task, or
/// a `migrating` one whose switch has not started or was rolled back (every
/// slot still `online` at its source). A task whose slots are switched (in
/// `pre_migrate` or `migrate`) can only finish: proxies already write its keys
/// to the target, so stopping would leave the slots split between two groups
/// for ever. Such a cancel is refused, saying to pause instead.
///
/// The runner's switch writes the task node in the same transaction as
/// `pre_migrate` (a fence), and this writes it by compare-and-set: either the
/// cancel lands first and the switch never starts, or the switch does and the
/// cancel re-reads and is refused.
///
/// # Errors
/// [`TopoError::NotFound`]; [`TopoError::State`] for a task past its switch or
/// finished; ZooKeeper errors.
pub async fn cancel(store: &Store, id: u64) -> Result<Task, TopoError> {
    let path = store.paths().task(id);
    for _ in 0..CANCEL_TRIES {
        let (mut task, version) = get(store, id).await?;
        match task.state {
            TaskState::Queued => {}
            TaskState::Migrating => {
                let topo = watcher::load(store).await?;
                check_unswitched(&task, &topo.slots)?;
            }
            done => {
                return Err(TopoError::State(format!(
                    "task {id} is {}: only a queued task, or a migrating one whose slots are not \
                     switched yet, can be cancelled",
                    done.name()
                )));
            }
        }
        task.state = TaskState::Cancelled;
        // Pausing is about a task that runs; an ended one is only ended.
        task.paused = false;
        task.error = Some("cancelled by an operator".into());
        task.updated = unix_secs();
        match store.set_json(&path, &task, version).await {
            Ok(_) => return Ok(task),
            Err(TopoError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(TopoError::State(format!(
        "task {id} kept changing while it was being cancelled; retry"
    )))
}

/// Refuses to cancel `task` unless every slot is `online` and not yet at the
/// target.
fn check_unswitched(task: &Task, table: &SlotTable) -> Result<(), TopoError> {
    let slots: Vec<_> = task.slots.iter().filter_map(|&s| table.get(s)).collect();
    let switched = slots.iter().any(|s| s.state != SlotState::Online);
    let arrived = slots.iter().all(|s| s.group == task.to);
    if !switched && !arrived {
        return Ok(());
    }
    let ids = format_slot_ids(&task.slots);
    if slots.iter().any(|s| s.state == SlotState::PreMigrate) {
        return Err(TopoError::State(format!(
            "task {} is switching slots {ids} right now; retry in a few seconds (a switch that \
             rolls back leaves the task cancellable)",
            task.id
        )));
    }
    Err(TopoError::State(if arrived && !switched {
        format!(
            "task {} has already moved slots {ids} to group {}; nothing to cancel",
            task.id, task.to
        )
    } else {
        format!(
            "task {id} has switched slots {ids} to group {to}: proxies already write their keys \
             there, so it can only finish. Pause it instead (`reborn admin pause {id}`): the \
             background moving stops, the slots keep serving (keys move as they are accessed), \
             later tasks run, and `resume` finishes it",
            id = task.id,
            to = task.to
        )
    }))
}

/// Pauses (`true`) or resumes a task that is not finished.
///
/// # Errors
/// Unknown or finished task, or ZooKeeper errors.
pub async fn set_paused(store: &Store, id: u64, paused: bool) -> Result<Task, TopoError> {
    let path = store.paths().task(id);
    for _ in 0..CANCEL_TRIES {
        let (mut task, version) = get(store, id).await?;
        if task.state.is_final() {
            return Err(TopoError::State(format!("task {id} is {}", task.state.name())));
        }
        task.paused = paused;
        task.updated = unix_secs();
        match store.set_json(&path, &task, version).await {
            Ok(_) => return Ok(task),
            Err(TopoError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(TopoError::State(format!("task {id} kept changing; retry")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(slots: &[u16], to: GroupId) -> Task {
        Task {
            state: TaskState::Migrating,
            ..Task::queued(7, slots.to_vec(), to, 0)
        }
    }

    fn table(state: SlotState, group: GroupId) -> SlotTable {
        let mut t = SlotTable::default();
        for id in 0..4 {
            if let Some(s) = t.get_mut(id) {
                s.group = group;
                s.state = state;
            }
        }
        t
    }

    #[test]
    fn only_unswitched_tasks_can_be_cancelled() {
        let t = task(&[0, 1, 2, 3], 2);
        assert!(check_unswitched(&t, &table(SlotState::Online, 1)).is_ok());
        let e = check_unswitched(&t, &table(SlotState::Migrate, 2)).expect_err("switched");
        assert!(e.to_string().contains("reborn admin pause 7"), "{e}");
        let e = check_unswitched(&t, &table(SlotState::PreMigrate, 1)).expect_err("switching");
        assert!(e.to_string().contains("retry"), "{e}");
        let e = check_unswitched(&t, &table(SlotState::Online, 2)).expect_err("arrived");
        assert!(e.to_string().contains("nothing to cancel"), "{e}");
    }

    #[test]
    fn old_records_without_attempts_still_parse() {
        let json = r#"{"id":1,"slots":[0],"to":2,"state":"queued","created":0,"updated":0}"#;
        let t: Task = serde_json::from_str(json).expect("old record");
        assert_eq!((t.attempts, t.state), (0, TaskState::Queued));
        let failed = serde_json::to_value(TaskState::Failed).expect("json");
        assert_eq!(failed, "failed");
    }
}
