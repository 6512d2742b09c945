//! One pass of the background migrator: a single `SCAN` sweep of the source
//! from a saved cursor back to 0, moving every key of the task's slots in
//! batches, with `DUMP`/`RESTORE` (`restore`) or pipelined `MIGRATE … KEYS`.
//!
//! The pass is one loop that does one thing per turn, so its state is owned
//! by one task:
//!
//! 1. collect the `DUMP`/`RESTORE` batches that finished moving;
//! 2. cut the keys found so far into batches;
//! 3. start batches: a `DUMP`/`RESTORE` batch on each free *lane* (a source
//!    and a target connection of its own, moving one batch on a task of its
//!    own) up to `inflight` lanes, and `MIGRATE` batches until `inflight` are
//!    outstanding on the `MIGRATE` connection (unless a backoff holds them, or
//!    the throttle says wait);
//! 4. then either `SCAN` more (while fewer than `batch_keys × inflight` keys wait
//!    to be sent), or read the oldest `MIGRATE` reply, or wait for a lane to
//!    finish, or sleep out the backoff.
//!
//! `SCAN` has a connection of its own, so a `SCAN` reply is not queued behind
//! a batch, and the lanes keep moving while the loop scans: the source always
//! has work of ours queued, but never more than `inflight` batches of it.
//! Lanes never share a connection, so each has its own `WATCH` (their batches
//! hold different keys).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::{Batch, Key, Target, Verdict, verdict};
use super::config::{Method, MigratorConfig};
use super::conn::{Conn, reply_text};
use super::contested;
use super::error::MigrateError;
use super::ledger::Ledger;
use super::pacer::Pacer;
use super::restore::{self, Failure, Transferred};
use super::throttle::Throttle;
use super::unconfirmed::Unconfirmed;
use super::{Outcome, Progress, SlotSet};
use crate::libs::backoff::Backoff;
use crate::libs::hash::slot_of;
use crate::libs::resp_client::Frame;

/// How long past a batch's own timeout we wait for its reply before giving up
/// on the connection: Redis applies the `MIGRATE` timeout per socket operation,
/// so a healthy transfer of a big value can take several timeouts in all.
const REPLY_GRACE: Duration = Duration::from_secs(30);

/// How often the caller hears of progress (to persist it).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How many times a copy of contested keys may be aborted by writes on the
/// source before they move by a plain `MIGRATE` (see [`Pass::on_lane`]).
const COPY_TRIES: u8 = 3;

/// Backoff after a failed batch (target down, out of memory, too slow, …).
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The state of one pass; see the module docs.
pub(super) struct Pass<'a> {
    source: &'a str,
    target: Target,
    cfg: &'a MigratorConfig,
    slots: SlotSet,
    scan: Conn,
    /// The source connection of `MIGRATE` batches; dropped when it fails and
    /// reopened on the next send.
    migrate: Option<Conn>,
    /// Lanes not moving a batch now (their connections stay open).
    idle_lanes: Vec<RestoreLane>,
    /// `DUMP`/`RESTORE` batches moving, each on its lane's task.
    moving: JoinSet<LaneBack>,
    /// The cursor of the next `SCAN`.
    cursor: u64,
    scan_done: bool,
    /// Keys found and not in a batch yet.
    pending: Vec<Key>,
    /// Batches to send, retries first.
    ready: VecDeque<Batch>,
    /// Batches sent, oldest first: the order their replies come back in.
    inflight: VecDeque<Batch>,
    ledger: Ledger,
    /// No batch is sent before this (backoff after a failed batch).
    hold_until: Option<Instant>,
    backoff: Backoff,
    throttle: Throttle,
    /// The latency budget's probe of the source (`pacer.rs`), when on.
    pacer: Option<Pacer>,
}

impl<'a> Pass<'a> {
    /// Connects to the source for a pass starting at `cursor`.
    pub(super) async fn start(
        source: &'a str,
        target: Target,
        slots: SlotSet,
        cfg: &'a MigratorConfig,
        cursor: u64,
    ) -> Result<Pass<'a>, MigrateError> {
        let scan = Conn::connect(source, cfg.auth.as_deref()).await?;
        Ok(Pass {
            source,
            target,
            cfg,
            slots,
            scan,
            migrate: None,
            idle_lanes: Vec::new(),
            moving: JoinSet::new(),
            cursor,
            scan_done: false,
            pending: Vec::new(),
            ready: VecDeque::new(),
            inflight: VecDeque::new(),
            ledger: Ledger::default(),
            hold_until: None,
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_MAX),
            throttle: Throttle::new(cfg.max_keys_per_sec),
            pacer: Pacer::start(
                source,
                cfg.auth.as_deref(),
                cfg.latency_budget,
                cfg.max_keys_per_sec,
                cfg.batch_keys,
            ),
        })
    }

    /// Runs the pass to its end (every key found is settled and the cursor is
    /// back at 0) or until `cancel` fires. `progress.cursor` only ever holds a
    /// cursor it is safe to resume from.
    ///
    /// Batches still moving when it returns early are stopped, and waited
    /// for: once this returns, no command of the pass reaches a server any
    /// more (a promote waits for that, see `manager::migration_gate`).
    pub(super) async fn run(
        mut self,
        progress: &mut Progress,
        on_progress: &mut impl FnMut(&mut Progress),
        cancel: &CancellationToken,
    ) -> Result<Outcome, MigrateError> {
        let outcome = self.sweep(progress, on_progress, cancel).await;
        self.moving.shutdown().await;
        outcome
    }

    async fn sweep(
        &mut self,
        progress: &mut Progress,
        on_progress: &mut impl FnMut(&mut Progress),
        cancel: &CancellationToken,
    ) -> Result<Outcome, MigrateError> {
        let mut reported = Instant::now();
        loop {
            if cancel.is_cancelled() {
                return Ok(Outcome::Cancelled);
            }
            while let Some(done) = self.moving.try_join_next() {
                self.moved(done, progress)?;
            }
            self.cut_batches();
            self.send_ready(progress, cancel).await?;
            if self.wants_scan() {
                self.scan_step(progress, cancel).await?;
            } else if !self.inflight.is_empty() {
                self.reply_step(progress, cancel).await?;
            } else if !self.moving.is_empty() {
                if let Some(Some(done)) = or_cancel(cancel, self.moving.join_next()).await {
                    self.moved(done, progress)?;
                }
            } else if !self.ready.is_empty() {
                self.sit_out_backoff(cancel).await;
            } else {
                break;
            }
            if let Some(commit) = self.ledger.commit() {
                progress.cursor = commit.cursor;
                progress.found += commit.found;
            }
            if reported.elapsed() >= REPORT_EVERY {
                on_progress(progress);
                reported = Instant::now();
            }
        }
        // Every batch is settled (the last one perhaps by `send_ready` just
        // now), so the last SCAN call (cursor 0) commits.
        if let Some(commit) = self.ledger.commit() {
            progress.cursor = commit.cursor;
            progress.found += commit.found;
        }
        debug_assert!(self.ledger.is_empty() && progress.cursor == 0);
        progress.passes += 1;
        Ok(Outcome::Finished)
    }

    /// True while the pass needs more keys: the scan is not over and fewer
    /// than `batch_keys × inflight` keys wait to be sent. The bound keeps memory
    /// flat while batches are held back (target down, throttle).
    fn wants_scan(&self) -> bool {
        let queued = self.pending.len() + self.ready.iter().map(Batch::len).sum::<usize>();
        !self.scan_done && queued < self.cfg.batch_keys.saturating_mul(self.cfg.inflight)
    }

    /// Keys per batch: the configured size, or less while the pacer says so.
    fn batch_keys(&self) -> usize {
        self.pacer
            .as_ref()
            .map_or(self.cfg.batch_keys, |p| p.limits.batch())
    }

    /// Moves pending keys into batches of `batch_keys`; the remainder too when
    /// the scan is over or nothing else is queued (sparse slots would otherwise
    /// leave the source idle while the scan fills a batch).
    fn cut_batches(&mut self) {
        let size = self.batch_keys().max(1);
        while self.pending.len() >= size {
            let rest = self.pending.split_off(size);
            let keys = std::mem::replace(&mut self.pending, rest);
            self.ready.push_back(self.batch(keys));
        }
        let idle = self.inflight.is_empty() && self.moving.is_empty() && self.ready.is_empty();
        if !self.pending.is_empty() && (self.scan_done || idle) {
            let keys = std::mem::take(&mut self.pending);
            self.ready.push_back(self.batch(keys));
        }
    }

    fn batch(&self, keys: Vec<Key>) -> Batch {
        Batch {
            keys,
            method: self.cfg.method(),
            timeout: self.cfg.timeout,
            copies: 0,
        }
    }

    /// Whether `batch` moves on a lane: every `DUMP`/`RESTORE` batch, and
    /// with `replica_ack` a `MIGRATE` one too, as a copy that waits for the
    /// target's replica (`contested`), until writes on the
    /// source aborted it [`COPY_TRIES`] times: then a plain `MIGRATE`, whose
    /// move is atomic, so a key written all the time still moves.
    fn on_lane(&self, batch: &Batch) -> bool {
        batch.method == Method::DumpRestore || (self.cfg.replica_ack && batch.copies < COPY_TRIES)
    }

    /// One `SCAN`; keys of the task's slots become pending.
    async fn scan_step(
        &mut self,
        progress: &mut Progress,
        cancel: &CancellationToken,
    ) -> Result<(), MigrateError> {
        let count = self.cfg.scan_count;
        let Some(reply) = or_cancel(cancel, self.scan.scan(self.cursor, count)).await else {
            return Ok(());
        };
        let (next, keys) = reply?;
        progress.scanned += keys.len() as u64;
        // Copied out of the reply: a zero-copy slice would pin the whole reply
        // (all slots' keys) in memory for as long as the key waits.
        let mine: Vec<_> = keys
            .iter()
            .filter(|k| self.slots.contains(slot_of(k)))
            .map(|k| Bytes::copy_from_slice(k))
            .collect();
        let call = self.ledger.scanned(next, mine.len());
        self.pending
            .extend(mine.into_iter().map(|name| Key { name, scan: call }));
        self.cursor = next;
        self.scan_done = next == 0;
        Ok(())
    }

    /// Starts ready batches, oldest first: `DUMP`/`RESTORE` batches on free
    /// lanes and `MIGRATE`s on their connection, each up to `inflight`.
    async fn send_ready(
        &mut self,
        progress: &mut Progress,
        cancel: &CancellationToken,
    ) -> Result<(), MigrateError> {
        while !self.held() {
            let Some(lane) = self.ready.front().map(|b| self.on_lane(b)) else {
                return Ok(());
            };
            let busy = if lane {
                self.moving.len()
            } else {
                self.inflight.len()
            };
            if busy >= self.cfg.inflight {
                return Ok(());
            }
            let Some(batch) = self.ready.pop_front() else {
                return Ok(());
            };
            if let Some(p) = &self.pacer {
                self.throttle.set_rate(Some(p.limits.rate()));
            }
            if let Some(wait) = self.throttle.admit(batch.len())
                && or_cancel(cancel, tokio::time::sleep(wait)).await.is_none()
            {
                self.ready.push_front(batch);
                return Ok(());
            }
            if lane {
                self.start_moving(batch);
                continue;
            }
            if self.cfg.replica_ack {
                tracing::warn!(
                    source = self.source,
                    keys = %batch.describe(),
                    "migrator: written on the source while copied {COPY_TRIES} times; moved by MIGRATE, without \
                     waiting for a replica of the target"
                );
            }
            if self.migrate.is_none() {
                match Conn::connect(self.source, self.cfg.auth.as_deref()).await {
                    Ok(conn) => self.migrate = Some(conn),
                    Err(e) => {
                        self.ready.push_front(batch);
                        return Err(e);
                    }
                }
            }
            let cmd = batch.command(&self.target, self.cfg.auth.as_deref());
            let sent = match self.migrate.as_mut() {
                Some(conn) => conn.send(vec![cmd]).await,
                None => Ok(()),
            };
            self.inflight.push_back(batch);
            if let Err(e) = sent {
                self.connection_lost(e, false, progress);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Moves `batch` with `DUMP`/`RESTORE` on a free lane, on a task of its own.
    fn start_moving(&mut self, batch: Batch) {
        let lane = self.idle_lanes.pop().unwrap_or_default();
        let addrs = (self.source.to_string(), self.target.addr.clone());
        let auth = self.cfg.auth.clone();
        self.moving
            .spawn(lane.carry(batch, addrs, auth, self.cfg.replica_ack));
    }

    /// Acts on a batch a lane finished with; one that did not move is
    /// requeued. A source that cannot be reached ends the pass (as for
    /// `MIGRATE`): the caller retries it.
    fn moved(
        &mut self,
        done: Result<LaneBack, tokio::task::JoinError>,
        progress: &mut Progress,
    ) -> Result<(), MigrateError> {
        let LaneBack {
            mut lane,
            batch,
            outcome,
        } = done.map_err(|e| MigrateError::Protocol {
            addr: self.source.to_string(),
            cmd: "DUMP",
            detail: format!("a migrator lane stopped: {e}"),
        })?;
        let failure = match outcome {
            Ok(done) => {
                self.idle_lanes.push(lane);
                self.transferred(batch, done, progress);
                return Ok(());
            }
            Err(failure) => failure,
        };
        // Its group's master moved: this pass can never finish on these
        // servers, so it ends and the task's next step starts over.
        if let Some(e) = failure.not_master(self.source, &self.target.addr) {
            self.idle_lanes.push(lane);
            self.ready.push_front(batch);
            return Err(e);
        }
        let (why, slow) = match failure {
            Failure::Source(e @ (MigrateError::Connect { .. } | MigrateError::Auth { .. })) => {
                self.idle_lanes.push(lane);
                self.ready.push_front(batch);
                return Err(e);
            }
            Failure::Source(e) => {
                lane.source = None;
                (format!("source: {e}"), matches!(e, MigrateError::Timeout { .. }))
            }
            Failure::Target(e) => {
                lane.target = None;
                (format!("target: {e}"), matches!(e, MigrateError::Timeout { .. }))
            }
            Failure::Refused(why) | Failure::Unreplicated(why) => (format!("target: {why}"), false),
        };
        self.idle_lanes.push(lane);
        self.note_error(progress, &batch, &why);
        if slow {
            self.retry_smaller(batch);
        } else {
            self.hold(Duration::ZERO);
            self.ready.push_front(batch);
        }
        Ok(())
    }

    /// Settles a transferred batch; its contested keys go first in line, to
    /// be moved with `MIGRATE`.
    fn transferred(&mut self, mut batch: Batch, done: Transferred, progress: &mut Progress) {
        progress.moved += done.moved as u64;
        progress.contested += done.contested.len() as u64;
        let mut indexes = done.contested;
        // Highest first, so each swap_remove moves in a key that stays.
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        let contested: Vec<Key> = indexes.into_iter().map(|i| batch.keys.swap_remove(i)).collect();
        self.settle(&batch);
        if !contested.is_empty() {
            // A copy aborted by a write on the source counts as one try.
            let copies = match batch.method {
                Method::Migrate => batch.copies.saturating_add(1),
                Method::DumpRestore => 0,
            };
            self.ready.push_front(Batch {
                keys: contested,
                method: Method::Migrate,
                timeout: batch.timeout,
                copies,
            });
        }
    }

    /// Reads the oldest batch's reply and acts on it.
    async fn reply_step(
        &mut self,
        progress: &mut Progress,
        cancel: &CancellationToken,
    ) -> Result<(), MigrateError> {
        let longest = self
            .inflight
            .iter()
            .map(|b| b.timeout)
            .max()
            .unwrap_or(self.cfg.timeout);
        let wait = REPLY_GRACE + longest * 4;
        let Some(conn) = self.migrate.as_mut() else {
            // Nothing can answer these; send them again.
            self.requeue_inflight();
            return Ok(());
        };
        let Some(read) = or_cancel(cancel, conn.read("MIGRATE", wait)).await else {
            return Ok(());
        };
        match read {
            Ok(reply) => match self.inflight.pop_front() {
                Some(batch) => self.judge(batch, &reply, progress).await,
                None => Ok(()),
            },
            Err(e) => {
                // No reply in time: treat the oldest batch as too slow (retry it
                // smaller, with a longer timeout). The source may still be busy
                // with it; our next commands just queue behind.
                let slow = matches!(e, MigrateError::Timeout { .. });
                self.connection_lost(e, slow, progress);
                Ok(())
            }
        }
    }

    /// Acts on one `MIGRATE` reply. A batch that is not moved goes back to the
    /// front of the queue: retried, never skipped.
    async fn judge(
        &mut self,
        batch: Batch,
        reply: &Frame,
        progress: &mut Progress,
    ) -> Result<(), MigrateError> {
        match verdict(reply) {
            Some(Verdict::Moved) => {
                progress.moved += batch.len() as u64;
                self.settle(&batch);
            }
            Some(Verdict::NoKey) => self.settle(&batch),
            Some(Verdict::Slow(why)) if self.target.reachable().await => {
                self.note_error(progress, &batch, &why);
                self.retry_smaller(batch);
            }
            Some(Verdict::Slow(why) | Verdict::Refused(why)) => {
                self.note_error(progress, &batch, &why);
                self.hold(Duration::ZERO);
                self.ready.push_front(batch);
            }
            None => {
                return Err(MigrateError::Protocol {
                    addr: self.source.to_string(),
                    cmd: "MIGRATE",
                    detail: reply_text(reply),
                });
            }
        }
        Ok(())
    }

    /// Requeues a batch that was too slow, split and with a longer timeout.
    /// The failed attempt blocked the source for about its timeout (MIGRATE is
    /// synchronous), so the source gets at least as long to serve its clients
    /// before the next attempt.
    fn retry_smaller(&mut self, batch: Batch) {
        self.hold(batch.timeout);
        for half in batch.split().into_iter().rev() {
            self.ready.push_front(half);
        }
    }

    /// A `MIGRATE` batch moved its keys, or found them gone: nothing of
    /// them is left on the source, so no copy sent earlier is unconfirmed.
    fn settle(&mut self, batch: &Batch) {
        for key in &batch.keys {
            self.ledger.settle(key.scan);
        }
        Unconfirmed::global().forget(self.source, batch.keys.iter().map(|k| k.name.as_ref()));
        self.backoff.reset();
    }

    /// The `MIGRATE` connection failed: every batch on it goes back to the queue
    /// (`slow`: the oldest one split, as after a timeout) and a new connection
    /// is opened on the next send.
    fn connection_lost(&mut self, e: MigrateError, slow: bool, progress: &mut Progress) {
        self.migrate = None;
        progress.errors += 1;
        progress.last_error = Some(format!("MIGRATE to {}: {e}", self.target.addr));
        tracing::warn!(source = self.source, target = %self.target.addr, error = %e, "migrator: connection lost");
        let oldest = if slow { self.inflight.pop_front() } else { None };
        self.requeue_inflight();
        match oldest {
            Some(batch) => self.retry_smaller(batch),
            None => self.hold(Duration::ZERO),
        }
    }

    fn requeue_inflight(&mut self) {
        while let Some(batch) = self.inflight.pop_back() {
            self.ready.push_front(batch);
        }
    }

    fn note_error(&self, progress: &mut Progress, batch: &Batch, why: &str) {
        progress.errors += 1;
        let what = format!(
            "moving {} to {} (timeout {:?}) failed: {why}; retrying",
            batch.describe(),
            self.target.addr,
            batch.timeout
        );
        tracing::warn!(source = self.source, "migrator: {what}");
        progress.last_error = Some(what);
    }

    /// Holds every batch back for the next backoff delay, and at least `min`,
    /// unless a hold is running already.
    fn hold(&mut self, min: Duration) {
        if !self.held() {
            self.hold_until = Some(Instant::now() + self.backoff.next_delay().max(min));
        }
    }

    fn held(&self) -> bool {
        self.hold_until.is_some_and(|t| Instant::now() < t)
    }

    async fn sit_out_backoff(&mut self, cancel: &CancellationToken) {
        if let Some(until) = self.hold_until {
            let _ = or_cancel(cancel, tokio::time::sleep_until(until)).await;
        }
    }
}

/// A source and a target connection that move one `DUMP`/`RESTORE` batch at
/// a time; a connection that failed is dropped and reopened on the next batch.
#[derive(Default)]
struct RestoreLane {
    source: Option<Conn>,
    target: Option<Conn>,
}

/// A lane back from moving `batch`.
struct LaneBack {
    lane: RestoreLane,
    batch: Batch,
    outcome: Result<Transferred, Failure>,
}

impl RestoreLane {
    /// Moves `batch` from `source` to `target` (see `restore`), connecting
    /// first where needed. Dropped half-way (the pass was cancelled), it
    /// leaves at worst keys copied and not deleted, which the next run settles.
    async fn carry(
        mut self,
        batch: Batch,
        (source, target): (String, String),
        auth: Option<String>,
        replicated: bool,
    ) -> LaneBack {
        let outcome = self
            .transfer(&batch, (&source, &target), auth.as_deref(), replicated)
            .await;
        LaneBack {
            lane: self,
            batch,
            outcome,
        }
    }

    async fn transfer(
        &mut self,
        batch: &Batch,
        (source, target): (&str, &str),
        auth: Option<&str>,
        replicated: bool,
    ) -> Result<Transferred, Failure> {
        let src = match &mut self.source {
            Some(conn) => conn,
            empty => empty.insert(Conn::connect(source, auth).await.map_err(Failure::Source)?),
        };
        let dst = match &mut self.target {
            Some(conn) => conn,
            empty => empty.insert(Conn::connect(target, auth).await.map_err(Failure::Target)?),
        };
        let noted = Unconfirmed::global();
        match batch.method {
            Method::DumpRestore => {
                restore::transfer(src, dst, &batch.keys, batch.timeout, noted, replicated).await
            }
            // Contested keys, with `replica_ack` (see `Pass::on_lane`).
            Method::Migrate => {
                contested::move_contested(src, dst, &batch.keys, (target, auth), batch.timeout, noted).await
            }
        }
    }
}

/// Runs `fut` unless `cancel` fires first (`None` then).
///
/// Not tokio-util's `CancellationToken::run_until_cancelled`: once polled,
/// that one prefers the future when both are ready, so a throttle sleep that
/// ends as the task is cancelled would still start its batch. Here the
/// cancel wins, and the batch goes back to the queue.
async fn or_cancel<T>(cancel: &CancellationToken, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        out = fut => Some(out),
    }
}
