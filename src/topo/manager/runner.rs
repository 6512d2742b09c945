//! The migration-task runner: drives the queue of [`super::task`] one task at a
//! time, in id order, during the dashboard's leadership.
//!
//! Every step starts from what ZooKeeper holds (the task record and the slot
//! table), which is also how a new leader resumes a task its predecessor left
//! at any point. What may end a task, and why each is safe:
//!
//! * A task that can never run (its target group was removed or lost its
//!   master, its slots changed hands) fails at once, before any switch.
//! * A switch that keeps failing (a live proxy that never acknowledges, …) is
//!   rolled back each time; after `switch_attempts` failures in a row the task
//!   fails. Either way its slots are `online` at the source: nothing is half done,
//!   and the queue moves on.
//! * Once switched, a task is never failed nor cancelled: proxies write its keys
//!   to the target already. It retries until done; pausing it lets later tasks
//!   run meanwhile.
//!
//! A promote cut short (its process died, or a ZooKeeper error stopped it,
//! while it held slots) is finished before any task step, and within a
//! second during a long one (`promote::resume_interrupted`).
//!
//! Imports `libs`, the topo core and the manager's `migrator`, `task`,
//! `promote` and `failover` (its record).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::failover;
use super::health::{self, Health};
use super::migration_gate::MigrationGate;
use super::migrator::{self, MigratorConfig, Outcome, Progress};
use super::promote::{self, Resumption};
use super::task::{self, Task, TaskState};
use crate::libs::clock::unix_secs;
use crate::topo::action::{self, DEFAULT_ACK_TIMEOUT, Fence, check_migration};
use crate::topo::error::TopoError;
use crate::topo::model::{GroupId, SlotState, Topology, WriteAck};
use crate::topo::operation::format_slot_ids;
use crate::topo::store::Store;
use crate::topo::watcher;

/// How often an idle runner looks for tasks queued by other processes (this
/// dashboard's own API wakes it at once through `changed`).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// The pause after a step that failed, before the task is tried again.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// How often a task whose group a promote is switching looks again.
const GATE_POLL: Duration = Duration::from_millis(100);

/// Runs queued and unfinished tasks, one at a time, until `cancel` (the end of
/// this dashboard's leadership). `changed` wakes an idle runner early.
pub async fn run(store: Store, cfg: MigratorConfig, changed: Arc<Notify>, cancel: CancellationToken) {
    // A promote that failed half-way in this process (a ZooKeeper error) is
    // finished within a second, even while a long task step runs here.
    tokio::spawn({
        let (store, auth, cancel) = (store.clone(), cfg.auth.clone(), cancel.clone());
        async move {
            loop {
                finish_interrupted_promote(&store, auth.as_deref()).await;
                tokio::select! {
                    _ = tokio::time::sleep(PROMOTE_POLL) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    });
    loop {
        let next = task::list(&store).await.map(|tasks| {
            tasks
                .into_iter()
                .find(|t| !t.paused && matches!(t.state, TaskState::Queued | TaskState::Migrating))
        });
        let pause = match next {
            // A promote cut short holds slots a task would take for its own
            // switch: it is finished first, and no task moves while one runs.
            // (Idle, the loop above looks for one.)
            Ok(Some(_))
                if let Some(pause) = finish_interrupted_promote(&store, cfg.auth.as_deref()).await =>
            {
                pause
            }
            Ok(Some(task)) => match (task.id, step(&store, &cfg, task, &cancel).await) {
                (_, Ok(pause)) => pause,
                (id, Err(e)) => {
                    tracing::warn!(task = id, error = %e, "migration task step failed; retrying");
                    RETRY_PAUSE
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

/// How often the leader looks for a promote cut short besides each step.
const PROMOTE_POLL: Duration = Duration::from_secs(1);

/// Finishes a promote cut short, if there is one and nobody is running it
/// (`promote::resume_interrupted`), and records it. `Some(pause)` while no
/// task may step: a promote is under way, or the one cut short could not be
/// finished yet.
async fn finish_interrupted_promote(store: &Store, auth: Option<&str>) -> Option<Duration> {
    match promote::resume_interrupted(store, auth, DEFAULT_ACK_TIMEOUT).await {
        Ok(Resumption::Nothing) => None,
        Ok(Resumption::Running) => Some(GATE_POLL),
        Ok(Resumption::Resumed(resumed)) => {
            failover::record_resumed(store, &resumed).await;
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot finish a promote cut short; retrying");
            Some(RETRY_PAUSE)
        }
    }
}

/// Moves `task` one state forward (or records why it could not); returns how
/// long to wait before the next step.
async fn step(
    store: &Store,
    cfg: &MigratorConfig,
    task: Task,
    cancel: &CancellationToken,
) -> Result<Duration, TopoError> {
    // The whole step inside the gate: a promote switching one of its groups
    // may hold its slots in `pre_migrate`, which is the promote's to undo,
    // not ours to resume; and one that closes the gate after this waits
    // until the step is over (it closes before taking the operator lock, so
    // a switch or the final online can take it meanwhile).
    let gate = MigrationGate::of(store);
    let Some(_inside) = gate.enter([task.from, task.to]) else {
        return Ok(GATE_POLL);
    };
    match task.state {
        TaskState::Queued => claim(store, cfg, task).await,
        TaskState::Migrating => advance(store, cfg, task, (&gate, cancel)).await,
        _ => Ok(Duration::ZERO),
    }
}

/// `queued` → `migrating`, by compare-and-set: a concurrent cancel either wins
/// (the claim fails, nothing happens) or the claim does, and the cancel then
/// judges by the slots (see [`task::cancel`]).
///
/// A task waits in the queue while the master of its source or target does
/// not answer: once switched, its slots cannot be cancelled, and serve only
/// once that master answers or a failover replaces it, so a switch now would
/// only add slots to the outage.
async fn claim(store: &Store, cfg: &MigratorConfig, mut task: Task) -> Result<Duration, TopoError> {
    let topo = watcher::load(store).await?;
    task.from = task
        .slots
        .first()
        .and_then(|&s| topo.slots.get(s))
        .map_or(0, |s| s.group);
    if let Some(why) = silent_master(&topo, [task.from, task.to], cfg.auth.as_deref()).await {
        return wait_queued(store, task.id, why).await;
    }
    task.state = TaskState::Migrating;
    task.updated = unix_secs();
    if task.error.as_deref().is_some_and(|e| e.starts_with(WAITING)) {
        task.error = None;
    }
    let path = store.paths().task(task.id);
    let (current, version) = store.get_json_with_version::<Task>(&path).await?;
    if current.state != TaskState::Queued || current.paused {
        return Ok(Duration::ZERO);
    }
    task.attempts = current.attempts;
    task.switch_failures = current.switch_failures;
    match store.set_json(&path, &task, version).await {
        Ok(_) | Err(TopoError::Conflict { .. }) => Ok(Duration::ZERO),
        Err(e) => Err(e),
    }
}

/// Why a queued task cannot start now: the master of one of `groups` that
/// does not answer (`None`: both answer, or a group has no master, which the
/// switch's own check reports).
async fn silent_master(topo: &Topology, groups: [GroupId; 2], auth: Option<&str>) -> Option<String> {
    let looks = groups.map(|g| async move {
        let addr = topo.groups.get(&g)?.master()?;
        match health::probe(addr, auth).await {
            Health::Up => None,
            other => Some(format!(
                "the master of group {g}, {addr}, is {}",
                other.describe()
            )),
        }
    });
    let [a, b] = looks;
    let (a, b) = tokio::join!(a, b);
    a.or(b)
}

/// How a queued task's error says why it waits (see [`wait_queued`]).
const WAITING: &str = "waiting to start: ";

/// Leaves task `id` queued with `why` (written only when it changed, so a long
/// wait costs no writes), and says when to look again.
async fn wait_queued(store: &Store, id: u64, why: String) -> Result<Duration, TopoError> {
    let path = store.paths().task(id);
    let (mut current, version) = store.get_json_with_version::<Task>(&path).await?;
    let error = format!("{WAITING}{why}; it starts once that master serves or a failover replaces it");
    if current.state == TaskState::Queued && current.error.as_deref() != Some(error.as_str()) {
        tracing::warn!(task = id, "migration task waits: {why}");
        current.error = Some(error);
        current.updated = unix_secs();
        match store.set_json(&path, &current, version).await {
            Ok(_) | Err(TopoError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(RETRY_PAUSE)
}

/// Drives a `migrating` task from wherever its slots are.
async fn advance(
    store: &Store,
    cfg: &MigratorConfig,
    mut task: Task,
    (gate, cancel): (&MigrationGate, &CancellationToken),
) -> Result<Duration, TopoError> {
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
        return save(store, &mut task).await.map(|_| Duration::ZERO);
    }
    if states
        .iter()
        .all(|&(g, st)| g == task.to && st == SlotState::Migrate)
    {
        return migrate(store, cfg, task, (gate, cancel)).await;
    }
    // Not switched yet, or a switch cut short (pre_migrate): first, can it
    // still run at all?
    if let Err(e) = check_migration(&topo.slots, topo.groups.get(&task.to), &task.slots, task.to) {
        return fail(store, task, e.to_string()).await;
    }
    switch(store, cfg, task).await
}

/// Runs the two-phase switch, fenced by the task node (see [`task::cancel`]).
async fn switch(store: &Store, cfg: &MigratorConfig, mut task: Task) -> Result<Duration, TopoError> {
    let path = store.paths().task(task.id);
    let (stored, version) = store.get_json_with_version::<Task>(&path).await?;
    if stored.state != TaskState::Migrating || stored.paused {
        return Ok(Duration::ZERO);
    }
    let mut fenced = stored;
    fenced.updated = unix_secs();
    let value = serde_json::to_value(&fenced).map_err(|source| TopoError::Json {
        path: path.clone(),
        source,
    })?;
    let fence = Fence { path, value, version };
    let outcome =
        action::begin_migration_fenced(store, &task.slots, task.to, DEFAULT_ACK_TIMEOUT, Some(&fence)).await;
    match outcome {
        Ok(()) => {
            tracing::info!(
                task = task.id,
                from = task.from,
                to = task.to,
                slots = %format_slot_ids(&task.slots),
                "migration task switched; moving its keys"
            );
            task.error = None;
            task.attempts = 0;
            save(store, &mut task).await.map(|_| Duration::ZERO)
        }
        // The task changed (cancelled, paused) before the switch: nothing was
        // written; the next look decides.
        Err(TopoError::Conflict { path }) if path == fence.path => Ok(Duration::ZERO),
        Err(e @ (TopoError::Invalid(_) | TopoError::NotFound(_))) => fail(store, task, e.to_string()).await,
        Err(e) => {
            task.attempts = task.attempts.saturating_add(1);
            task.switch_failures = task.switch_failures.saturating_add(1);
            if task.attempts >= cfg.switch_attempts {
                let reason = format!(
                    "gave up after {} failed switch attempts in a row (switch_attempts = {}); \
                     its slots stay at group {}. Last error: {e}",
                    task.attempts, cfg.switch_attempts, task.from
                );
                return fail(store, task, reason).await;
            }
            // Rolled back (or never started): wait in the queue, error shown.
            task.error = Some(e.to_string());
            task.state = TaskState::Queued;
            save(store, &mut task).await.map(|_| RETRY_PAUSE)
        }
    }
}

/// Ends `task` as failed, with `reason`, freeing the queue. Only for a task
/// whose slots are not switched; a switch its dashboard left half done
/// (`pre_migrate`) is rolled back first.
async fn fail(store: &Store, mut task: Task, reason: String) -> Result<Duration, TopoError> {
    action::abort_switch(store, &task.slots, DEFAULT_ACK_TIMEOUT).await?;
    tracing::warn!(task = task.id, %reason, "migration task failed");
    task.state = TaskState::Failed;
    task.error = Some(reason);
    save(store, &mut task).await.map(|_| Duration::ZERO)
}

/// Moves the keys of a switched task, then brings its slots online.
async fn migrate(
    store: &Store,
    cfg: &MigratorConfig,
    mut task: Task,
    (gate, cancel): (&MigrationGate, &CancellationToken),
) -> Result<Duration, TopoError> {
    // The step is inside the gate (see `step`), so the masters read here are
    // current until a promote closes it, which stops the work below.
    let groups = [task.from, task.to];
    let topo = watcher::load(store).await?;
    let master = |g: GroupId| {
        topo.groups
            .get(&g)
            .and_then(|g| g.master())
            .map(str::to_string)
            .ok_or_else(|| TopoError::Invalid(format!("group {g} has no master")))
    };
    let (source, target) = match (master(task.from), master(task.to)) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => {
            // Shown on the task; retried (the slots are half moved).
            task.error = Some(e.to_string());
            save(store, &mut task).await?;
            return Err(e);
        }
    };
    let slots: BTreeSet<u16> = task.slots.iter().copied().collect();
    // Proxies that acknowledge writes only once a replica has them must not
    // see a moved key lose that guarantee: the target's replica confirms
    // each batch. Read when the keys start moving; a promote, a pause or a
    // new leader starts them again.
    let replica_ack = topo.proxies.values().any(|p| p.write_ack == WriteAck::Replica);
    if replica_ack {
        tracing::info!(
            task = task.id,
            "migration task: proxies acknowledge writes once replicated, so does the migrator"
        );
    }
    let cfg = &MigratorConfig {
        replica_ack,
        ..cfg.clone()
    };
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
                // A promote of one of its groups: stop, and start over from
                // the topology once it is done.
                () = gate.closing(groups), if !stop.is_cancelled() => stop.cancel(),
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
    let pause = match outcome {
        Ok(Outcome::Finished) => {
            // The final progress is stored before the slots go online: if the
            // switch fails after writing them, the next step finds them
            // online and ends the task with what is stored, which would
            // otherwise be the last one-second snapshot (nothing, for a task
            // shorter than a second).
            if save(store, &mut task).await? {
                return Ok(Duration::ZERO);
            }
            action::finish_migration(store, &task.slots, DEFAULT_ACK_TIMEOUT).await?;
            let p = &task.progress;
            tracing::info!(
                task = task.id,
                from = task.from,
                to = task.to,
                slots = %format_slot_ids(&task.slots),
                moved = p.moved,
                busy_s = p.busy_ms as f64 / 1000.0,
                errors = p.errors,
                "migration task done"
            );
            task.state = TaskState::Done;
            task.error = None;
            Duration::ZERO
        }
        Ok(Outcome::Cancelled) => Duration::ZERO,
        Err(e) => {
            task.error = Some(e.to_string());
            RETRY_PAUSE
        }
    };
    save(store, &mut task).await.map(|_| pause)
}

/// How many times [`save`] retries a write that raced with an operator's.
const SAVE_TRIES: usize = 5;

/// Writes `task` back, keeping the operator's `paused` flag as stored, and
/// never over a cancel (the runner writes everything else). Returns true if
/// the runner should stop working on it now (paused or cancelled).
async fn save(store: &Store, task: &mut Task) -> Result<bool, TopoError> {
    let path = store.paths().task(task.id);
    let mut last = None;
    for _ in 0..SAVE_TRIES {
        task.updated = unix_secs();
        let (stored, version) = store.get_json_with_version::<Task>(&path).await?;
        if stored.state == TaskState::Cancelled {
            *task = stored;
            return Ok(true);
        }
        task.paused = stored.paused;
        match store.set_json(&path, task, version).await {
            Ok(_) => return Ok(task.paused),
            Err(e @ TopoError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(TopoError::Conflict { path }))
}
