//! Migration tasks: the dashboard's queue of slot moves, kept in ZooKeeper under
//! `tasks/<id>` so a dashboard that dies mid-task is resumed by the next leader.
//!
//! A task runs one at a time, in id order:
//!
//! 1. `queued` → the two-phase switch ([`super::action::begin_migration`]). If a
//!    live proxy does not acknowledge, the switch rolls back, the task stays
//!    `queued` with the error shown, and it is tried again later.
//! 2. `migrating` → the background migrator moves every key of the slots
//!    ([`super::migrator::migrate_slots`]), its progress saved about every second.
//! 3. → `online` at the target ([`super::action::finish_migration`]) → `done`.
//!
//! A task can be cancelled only while `queued`: once its slots migrate, finishing
//! is the only safe direction. Imports `libs` and the topo kernel only.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::action::{self, DEFAULT_ACK_TIMEOUT};
use super::error::TopoError;
use super::lock;
use super::migrator::{self, MigratorConfig, Outcome, Progress};
use super::model::GroupId;
use super::store::Store;
use super::watcher;

/// Where a task is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Migrating,
    Done,
    Cancelled,
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
    /// The latest error (a rolled-back switch, a failing batch).
    #[serde(default)]
    pub error: Option<String>,
    /// Set by an operator: the runner leaves the task alone (a running pass
    /// stops at its next progress save, resumable) until resumed.
    #[serde(default)]
    pub paused: bool,
    /// Unix seconds.
    pub created: u64,
    pub updated: u64,
}

/// Queues a migration of `slots` to group `to`; returns the task.
///
/// # Errors
/// No slots, or ZooKeeper errors.
pub async fn enqueue(store: &Store, slots: Vec<u16>, to: GroupId) -> Result<Task, TopoError> {
    if slots.is_empty() {
        return Err(TopoError::Invalid("no slots to migrate".into()));
    }
    let paths = store.paths().clone();
    lock::with_lock(store, "migration task", async |zk: &super::session::ZkSession| {
        zk.mkdir_p(&paths.tasks()).await?;
        let id = zk
            .children(&paths.tasks())
            .await?
            .iter()
            .filter_map(|n| n.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let now = lock::unix_now();
        let task = Task {
            id,
            slots,
            to,
            from: 0,
            state: TaskState::Queued,
            progress: Progress::default(),
            error: None,
            paused: false,
            created: now,
            updated: now,
        };
        zk.create_json(&paths.task(id), &task).await?;
        Ok(task)
    })
    .await
}

/// Every task, oldest first.
///
/// # Errors
/// ZooKeeper errors.
pub async fn list(store: &Store) -> Result<Vec<Task>, TopoError> {
    let paths = store.paths();
    let names = match store.children(&paths.tasks()).await {
        Ok(n) => n,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ids: Vec<u64> = names.iter().filter_map(|n| n.parse().ok()).collect();
    ids.sort_unstable();
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        tasks.push(store.get_json(&paths.task(id)).await?);
    }
    Ok(tasks)
}

/// Cancels a task that has not started moving slots.
///
/// # Errors
/// Unknown task, or a task past `queued`.
pub async fn cancel(store: &Store, id: u64) -> Result<Task, TopoError> {
    let path = store.paths().task(id);
    let (mut task, version) = store.get_json_with_version::<Task>(&path).await.map_err(|e| {
        if e.is_not_found() {
            TopoError::NotFound(format!("task {id}"))
        } else {
            e
        }
    })?;
    if task.state != TaskState::Queued {
        return Err(TopoError::Invalid(format!(
            "task {id} is {:?}: once its slots migrate, finishing is the only safe way",
            task.state
        )));
    }
    task.state = TaskState::Cancelled;
    task.updated = lock::unix_now();
    store.set_json(&path, &task, version).await?;
    Ok(task)
}

/// Pauses (`true`) or resumes a task that is not finished.
///
/// # Errors
/// Unknown or finished task, or ZooKeeper errors.
pub async fn set_paused(store: &Store, id: u64, paused: bool) -> Result<Task, TopoError> {
    let path = store.paths().task(id);
    let (mut task, version) = store.get_json_with_version::<Task>(&path).await.map_err(|e| {
        if e.is_not_found() {
            TopoError::NotFound(format!("task {id}"))
        } else {
            e
        }
    })?;
    if matches!(task.state, TaskState::Done | TaskState::Cancelled) {
        return Err(TopoError::Invalid(format!("task {id} is {:?}", task.state)));
    }
    task.paused = paused;
    task.updated = lock::unix_now();
    store.set_json(&path, &task, version).await?;
    Ok(task)
}

/// How often an idle runner looks for tasks queued by other processes (this
/// dashboard's own API wakes it at once through `changed`).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Runs queued and unfinished tasks, one at a time, until `cancel` (the end of
/// this dashboard's leadership). `changed` wakes an idle runner early.
pub async fn run(store: Store, cfg: MigratorConfig, changed: Arc<Notify>, cancel: CancellationToken) {
    loop {
        let next = list(&store).await.map(|tasks| {
            tasks
                .into_iter()
                .find(|t| !t.paused && matches!(t.state, TaskState::Queued | TaskState::Migrating))
        });
        let pause = match next {
            Ok(Some(task)) => match step(&store, &cfg, task, &cancel).await {
                Ok(()) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %e, "migration task step failed; retrying");
                    Duration::from_secs(2)
                }
            },
            Ok(None) => IDLE_POLL,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list migration tasks");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = changed.notified(), if pause == IDLE_POLL => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Moves `task` one state forward (or records why it could not).
async fn step(
    store: &Store,
    cfg: &MigratorConfig,
    task: Task,
    cancel: &CancellationToken,
) -> Result<(), TopoError> {
    match task.state {
        TaskState::Queued => claim(store, task).await,
        TaskState::Migrating => advance(store, cfg, task, cancel).await,
        TaskState::Done | TaskState::Cancelled => Ok(()),
    }
}

/// `queued` → `migrating`, by compare-and-set: a concurrent cancel either wins
/// (the claim fails, nothing happens) or sees `migrating` and is refused.
async fn claim(store: &Store, mut task: Task) -> Result<(), TopoError> {
    let topo = watcher::load(store).await?;
    task.from = task
        .slots
        .first()
        .and_then(|&s| topo.slots.get(s))
        .map_or(0, |s| s.group);
    task.state = TaskState::Migrating;
    task.updated = lock::unix_now();
    let path = store.paths().task(task.id);
    let (current, version) = store.get_json_with_version::<Task>(&path).await?;
    if current.state != TaskState::Queued {
        return Ok(());
    }
    match store.set_json(&path, &task, version).await {
        Ok(_) | Err(TopoError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Drives a `migrating` task from wherever its slots are, which is also how a
/// new dashboard resumes after the old one died at any point.
async fn advance(
    store: &Store,
    cfg: &MigratorConfig,
    mut task: Task,
    cancel: &CancellationToken,
) -> Result<(), TopoError> {
    use super::model::SlotState;
    let topo = watcher::load(store).await?;
    let states: Vec<(GroupId, SlotState)> = task
        .slots
        .iter()
        .filter_map(|&id| topo.slots.get(id))
        .map(|s| (s.group, s.state))
        .collect();
    if states
        .iter()
        .all(|&(g, st)| g == task.to && st == SlotState::Online)
    {
        task.state = TaskState::Done;
        task.error = None;
        return save(store, &mut task).await.map(drop);
    }
    if states.iter().all(|&(_, st)| st == SlotState::Migrate) {
        return migrate(store, cfg, task, cancel).await;
    }
    // Not switched yet, or a switch cut short: (re)run the two-phase switch.
    match action::begin_migration(store, &task.slots, task.to, DEFAULT_ACK_TIMEOUT).await {
        Ok(()) => task.error = None,
        Err(e) => {
            // Rolled back (or never started): wait in the queue, error shown.
            task.error = Some(e.to_string());
            task.state = TaskState::Queued;
        }
    }
    save(store, &mut task).await.map(drop)
}

async fn migrate(
    store: &Store,
    cfg: &MigratorConfig,
    mut task: Task,
    cancel: &CancellationToken,
) -> Result<(), TopoError> {
    let topo = watcher::load(store).await?;
    let master = |g: GroupId| {
        topo.groups
            .get(&g)
            .and_then(|g| g.master())
            .map(str::to_string)
            .ok_or_else(|| TopoError::Invalid(format!("group {g} has no master")))
    };
    let (source, target) = (master(task.from)?, master(task.to)?);
    let slots: BTreeSet<u16> = task.slots.iter().copied().collect();
    // The migrator reports progress synchronously; a sibling future saves the
    // latest report to ZooKeeper about once a second.
    let latest = Arc::new(parking_lot::Mutex::new(None::<Progress>));
    let report = latest.clone();
    let mut progress = task.progress.clone();
    // Cancelled when the leadership ends, or when an operator pauses the task.
    let stop = cancel.child_token();
    let cancel = &stop;
    let outcome = {
        let work = migrator::migrate_slots(
            &source,
            &target,
            &slots,
            cfg,
            &mut progress,
            move |p: &Progress| *report.lock() = Some(p.clone()),
            cancel,
        );
        tokio::pin!(work);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                _ = tick.tick() => {
                    let snapshot = latest.lock().take();
                    if let Some(p) = snapshot {
                        task.progress = p;
                        if save(store, &mut task).await? {
                            stop.cancel();
                        }
                    }
                }
            }
        }
    };
    task.progress = progress;
    match outcome {
        Ok(Outcome::Finished) => {
            action::finish_migration(store, &task.slots, DEFAULT_ACK_TIMEOUT).await?;
            task.state = TaskState::Done;
            task.error = None;
        }
        Ok(Outcome::Cancelled) => {}
        Err(e) => task.error = Some(e.to_string()),
    }
    save(store, &mut task).await.map(drop)
}

/// Writes `task` back, keeping the operator's `paused` flag as stored (the
/// runner writes everything else; `cancel` only touches queued tasks). Returns
/// whether the task is paused.
async fn save(store: &Store, task: &mut Task) -> Result<bool, TopoError> {
    task.updated = lock::unix_now();
    let path = store.paths().task(task.id);
    let (stored, version) = store.get_json_with_version::<Task>(&path).await?;
    task.paused = stored.paused;
    store.set_json(&path, task, version).await?;
    Ok(task.paused)
}
