//! The data engine of the background migrator: moves every key of a set of
//! slots from a source redis-server to a target with stock Redis commands
//! (`SCAN`, then batches of `DUMP`/`RESTORE` with a `WATCH`-guarded `DEL`, or
//! `MIGRATE … KEYS`; see [`Method`]). The dashboard's task runner calls
//! [`migrate_slots`] once a task's slots are in `migrate`, persists the
//! [`Progress`] it is handed, and on restart calls it again with the saved one.
//! It stops only after a complete pass found no key of the slots ([`remaining`]).
//!
//! How a pass works, why no key is ever lost or skipped, big keys, and the
//! measured throughput: `docs/migration.md` ("Background migrator") and
//! `docs/benchmarks.md`. Files: `pass` (one `SCAN` sweep), `batch` (one
//! `MIGRATE`), `restore` (the `dump-restore` method), `ledger` (the safe resume
//! cursor), `throttle` (keys/s), `unconfirmed` (copies sent whose source
//! deletion is not confirmed yet), `settle` (the two copies after a promote of
//! the source group), `tombstones` (cleared before a task moves anything),
//! `config`, `conn` (a small pipelined connection), `error`. Imports only
//! `crate::libs`.

mod batch;
mod config;
mod conn;
mod contested;
mod error;
mod ledger;
mod pacer;
mod pass;
mod restore;
mod settle;
mod throttle;
mod tombstones;
mod unconfirmed;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use config::{Method, MigratorConfig};
// A plain request-reply connection to a redis-server; promote uses it too.
pub(crate) use conn::{Conn, reply_text};
pub use error::MigrateError;
pub use settle::{Settled, settle_promoted_source};
pub use unconfirmed::{KeyCopy, Sent, Unconfirmed};

use crate::libs::backoff::Backoff;
use crate::libs::hash::{SLOT_COUNT, slot_of};
use batch::Target;
use pass::Pass;

/// Backoff between passes that failed on the source (down, restarting).
const PASS_BACKOFF_BASE: Duration = Duration::from_millis(500);
const PASS_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where a migration task stands. Persisted (JSON, in ZooKeeper) so a restarted
/// dashboard resumes where the last one stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    /// The `SCAN` cursor to resume the current pass from; 0 starts a new pass.
    pub cursor: u64,
    /// Complete passes so far.
    pub passes: u32,
    /// Keys of the task's slots found so far in the current pass (0 after a
    /// complete pass means the slots are empty on the source).
    pub found: u64,
    /// Keys returned by `SCAN`, all slots, over all passes (keys re-scanned after
    /// a resume count again).
    pub scanned: u64,
    /// Keys in batches the source acknowledged with `+OK`: approximate (a key
    /// deleted between `SCAN` and `MIGRATE` is counted; keys moved by an attempt
    /// that then failed part-way are not, they answer `NOKEY` on the retry).
    pub moved: u64,
    /// Keys that raced with a proxy's migrate-on-access during a
    /// `DUMP`/`RESTORE` and were then moved with `MIGRATE` (see `restore`).
    pub contested: u64,
    /// Failed `MIGRATE`s and lost connections; each failed batch was retried.
    pub errors: u64,
    /// Milliseconds spent in passes, over every run of the task (not counting
    /// the time it was queued, paused or its dashboard down): what its keys/s
    /// is measured against.
    pub busy_ms: u64,
    /// The latest failure, naming the key when a single key fails.
    pub last_error: Option<String>,
    /// True once a complete pass found no key of the slots on the source: the
    /// slots may go online at the target.
    pub done: bool,
}

/// How a pass or a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran to its end: a pass swept the whole keyspace; a migration left no
    /// key of the slots on the source (`Progress::done`).
    Finished,
    /// The cancellation token fired; the progress is resumable.
    Cancelled,
}

/// One pass: `SCAN` the source from `progress.cursor` back to cursor 0 and
/// `MIGRATE` every key of `slots` to `target`, in pipelined batches.
///
/// `on_progress` is called about every second and at the end, with a progress
/// that is safe to persist and resume from. Returns early, with
/// [`Outcome::Cancelled`], when `cancel` fires. Failed batches are retried
/// within the pass (see the module docs), so the pass only returns an error for
/// bad settings or a failing source connection; the progress is resumable then
/// too.
///
/// # Errors
/// [`MigrateError::Config`] for bad settings or addresses, else a failure of the
/// source connection ([`MigrateError::is_transient`] says whether retrying may help).
pub async fn migrate_pass(
    source: &str,
    target: &str,
    slots: &BTreeSet<u16>,
    cfg: &MigratorConfig,
    progress: &mut Progress,
    mut on_progress: impl FnMut(&Progress),
    cancel: &CancellationToken,
) -> Result<Outcome, MigrateError> {
    let (target, slots) = check(source, target, slots, cfg)?;
    if progress.cursor == 0 {
        progress.found = 0;
        if progress.passes == 0 {
            // Before the task's first batch; again after a restart that
            // found no pass begun, which only forgets some of this task's.
            let cleared = tombstones::clear(source, &slots, cfg).await?;
            if cleared > 0 {
                tracing::info!(
                    source,
                    cleared,
                    "migrator: cleared an earlier migration's tombstones"
                );
            }
        }
    }
    let (started, base) = (std::time::Instant::now(), progress.busy_ms);
    let mut report = |p: &mut Progress| {
        p.busy_ms = base.saturating_add(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        on_progress(p);
    };
    let outcome = match Pass::start(source, target, slots, cfg, progress.cursor).await {
        Ok(pass) => pass.run(progress, &mut report, cancel).await,
        Err(e) => Err(e),
    };
    report(progress);
    outcome
}

/// Migrates `slots` from `source` to `target` completely: runs passes until a
/// complete pass finds no key of the slots (keys written to the source
/// meanwhile are caught by the next pass), then sets `progress.done`.
///
/// Resumes from `progress` (returns at once if it is already done). Failures of
/// the source connection are counted in the progress and retried with backoff,
/// as are failed batches; only errors that need an operator end it. Returns
/// [`Outcome::Cancelled`] when `cancel` fires.
///
/// # Errors
/// Bad settings, or a source that refuses the password or a command.
pub async fn migrate_slots(
    source: &str,
    target: &str,
    slots: &BTreeSet<u16>,
    cfg: &MigratorConfig,
    progress: &mut Progress,
    mut on_progress: impl FnMut(&Progress),
    cancel: &CancellationToken,
) -> Result<Outcome, MigrateError> {
    check(source, target, slots, cfg)?;
    let mut backoff = Backoff::new(PASS_BACKOFF_BASE, PASS_BACKOFF_MAX);
    while !progress.done {
        match migrate_pass(source, target, slots, cfg, progress, &mut on_progress, cancel).await {
            Ok(Outcome::Cancelled) => return Ok(Outcome::Cancelled),
            Ok(Outcome::Finished) => {
                backoff.reset();
                progress.done = progress.found == 0;
            }
            Err(e) if e.is_transient() => {
                progress.errors += 1;
                progress.last_error = Some(e.to_string());
                tracing::warn!(source, target, error = %e, "migrator: pass failed, resuming after a backoff");
                let pause = tokio::time::sleep(backoff.next_delay());
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = pause => {}
                }
            }
            Err(e) => {
                progress.last_error = Some(e.to_string());
                on_progress(progress);
                return Err(e);
            }
        }
        on_progress(progress);
        if cancel.is_cancelled() {
            return Ok(Outcome::Cancelled);
        }
    }
    Ok(Outcome::Finished)
}

/// The final check: a full `SCAN` of `source` counting keys of `slots`.
/// 0 means the slots may go online at the target.
///
/// # Errors
/// Bad settings, or a failure of the source connection.
pub async fn remaining(
    source: &str,
    slots: &BTreeSet<u16>,
    cfg: &MigratorConfig,
) -> Result<u64, MigrateError> {
    cfg.validate()?;
    let slots = SlotSet::new(slots)?;
    let mut conn = Conn::connect(source, cfg.auth.as_deref()).await?;
    let mut cursor = 0;
    let mut found = 0;
    loop {
        let (next, keys) = conn.scan(cursor, cfg.scan_count).await?;
        found += keys.iter().filter(|k| slots.contains(slot_of(k))).count() as u64;
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// Validates the arguments shared by the entry points.
fn check(
    source: &str,
    target: &str,
    slots: &BTreeSet<u16>,
    cfg: &MigratorConfig,
) -> Result<(Target, SlotSet), MigrateError> {
    cfg.validate()?;
    let target = Target::parse(target)?;
    if source == target.addr {
        return Err(MigrateError::Config(format!(
            "source and target are the same server ({source})"
        )));
    }
    Ok((target, SlotSet::new(slots)?))
}

/// The task's slots as a bitmap: one lookup per scanned key.
#[derive(Debug, Clone)]
struct SlotSet(Box<[bool; SLOT_COUNT]>);

impl SlotSet {
    fn new(slots: &BTreeSet<u16>) -> Result<SlotSet, MigrateError> {
        let mut set = Box::new([false; SLOT_COUNT]);
        for &slot in slots {
            let Some(bit) = set.get_mut(usize::from(slot)) else {
                return Err(MigrateError::Config(format!(
                    "slot {slot} is out of range (0..{SLOT_COUNT})"
                )));
            };
            *bit = true;
        }
        Ok(SlotSet(set))
    }

    fn contains(&self, slot: u16) -> bool {
        self.0.get(usize::from(slot)).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sets_and_argument_checks() {
        let set = SlotSet::new(&BTreeSet::from([0, 1023])).expect("in range");
        assert!(set.contains(0) && set.contains(1023) && !set.contains(5));
        assert!(SlotSet::new(&BTreeSet::from([1024])).is_err());
        let cfg = MigratorConfig::default();
        let slots = BTreeSet::from([1]);
        assert!(check("h:1", "h:1", &slots, &cfg).is_err());
        assert!(check("h:1", "h2", &slots, &cfg).is_err());
        assert!(check("h:1", "h:2", &slots, &cfg).is_ok());
    }

    #[test]
    fn progress_round_trips_and_tolerates_old_records() {
        let p = Progress {
            cursor: 42,
            moved: 7,
            last_error: Some("x".into()),
            ..Progress::default()
        };
        let json = serde_json::to_string(&p).expect("serialize");
        assert_eq!(serde_json::from_str::<Progress>(&json).expect("deserialize"), p);
        let old: Progress = serde_json::from_str(r#"{"cursor": 9}"#).expect("old record");
        assert_eq!(old.cursor, 9);
    }
}
