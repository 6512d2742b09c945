//! Blocking commands (BLPOP, BLMOVE, BZPOPMIN, XREAD … BLOCK, …) and slot
//! switches.
//!
//! A blocking command runs on a backend connection its client owns
//! ([`Dedicated`]), so it never stalls a shared one. Such a command can stay
//! parked on its server for as long as its timeout says (forever for `0`), so
//! when its slot switches groups (`pre_migrate`: a migration or a promote
//! begins) it must not stay parked on the source: the element a later `LPUSH`
//! puts on the target would never reach it, and the proxy could not honestly
//! acknowledge that nothing of the slot is in flight to the source.
//!
//! So every call on a dedicated connection is [registered](Registry) with its
//! slot, and the acknowledgement of a `pre_migrate` action ([`interrupt`], run
//! by `ack.rs`) sends `CLIENT UNBLOCK <id> TIMEOUT` for each connection that has
//! a call of the action's slots out, until all of them have come back. The id
//! comes from `CLIENT ID`, asked when the connection opens (`backend.rs`).
//!
//! Nothing may be lost or done twice on the way:
//!
//! * `CLIENT UNBLOCK … TIMEOUT` makes the command return as if it timed out,
//!   having done nothing. A call counts as *interrupted* only if its reply is
//!   that nil, an `UNBLOCK` for its connection was on its way or later sent
//!   while it was out ([`Line`] counts them), and its own deadline has not
//!   passed. Any other reply — an element popped just before the `UNBLOCK`
//!   arrived, say — is the client's real reply and is delivered as it is.
//! * An interrupted call is re-issued for the client (`Call::reissue`) with
//!   the time it has left (`0` stays `0`): held while the slot is in
//!   `pre_migrate`, then on the slot's new route. In `migrate` its keys first
//!   move from the source with `MIGRATE` (as any request of a migrating slot,
//!   see `migrate.rs`), then it runs on a dedicated connection to the target;
//!   a key that left the source is never created there again, so a later push
//!   lands on the target and wakes it. New blocking calls of a migrating slot
//!   take the same path. The client only ever sees the final reply, or a clear
//!   error when re-issuing is impossible.
//! * `XREAD … $` means "entries newer than the last one now": the `$` is pinned
//!   to the stream's last id at the source when the call is interrupted, so an
//!   entry added during the switch still wakes it.
//!
//! The fast path is untouched: ordinary requests never see this module, and a
//! blocking call pays one registry insert and one task.
//!
//! Imports: `backend`, `blocking_args`, `context`, `migrate`, `reply`, `router` and `libs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::backend::BackendConn;
use super::blocking_args::{Timeout, Wait, is_nil, last_generated_id, nil_of, timeout_of, xread_streams};
use super::context::Context;
use super::migrate::{MoveOptions, move_keys};
use super::reply::{lost, unanswered};
use super::router::SlotRoute;
use super::stats::Stats;
use crate::libs::protocol::Protocol;
use crate::libs::resp::{self, Request};

/// A deadline this close counts as passed: Redis measures timeouts in
/// milliseconds, from a moment a little after ours.
const SLACK: Duration = Duration::from_millis(10);

/// How often the acknowledgement looks again at calls that are not back yet.
const RECHECK: Duration = Duration::from_millis(10);

/// One connection to a redis-server for blocking commands, as the interruption
/// sees it.
pub struct Line {
    conn: BackendConn,
    /// `CLIENT UNBLOCK`s sent for this connection, and those answered.
    unblocks_sent: AtomicU64,
    unblocks_answered: AtomicU64,
}

impl Line {
    /// Queues `req` on the connection.
    pub fn send(&self, req: Bytes) -> oneshot::Receiver<Bytes> {
        self.conn.send(req)
    }

    /// The server's `CLIENT ID` of the connection while it is up.
    pub fn client_id(&self) -> Option<u64> {
        self.conn.client_id()
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        self.conn.addr()
    }

    /// True while the connection is up.
    pub fn is_up(&self) -> bool {
        self.conn.is_up()
    }

    /// True while its backend is known to be unreachable.
    pub fn is_down(&self) -> bool {
        self.conn.is_down()
    }
}

/// A backend connection owned by one client (or by one re-issued call) for its
/// blocking commands, within `max_blocking`. Dropping it closes the connection
/// at once, so Redis forgets a command still blocked there.
pub struct Dedicated {
    pub line: Arc<Line>,
    /// What the connection speaks: its client's protocol when it opened.
    pub protocol: Protocol,
    task: tokio::task::AbortHandle,
    _permit: OwnedSemaphorePermit,
}

impl Dedicated {
    /// Opens a connection speaking `protocol` to `addr` on the current runtime.
    ///
    /// # Errors
    /// The error reply for the client when `max_blocking` connections are open.
    pub fn open(ctx: &Context, addr: &str, protocol: Protocol) -> Result<Dedicated, Bytes> {
        let Ok(permit) = ctx.blocking.clone().try_acquire_owned() else {
            return Err(resp::error(&format!(
                "ERR too many blocking clients (max_blocking = {})",
                ctx.config.max_blocking
            )));
        };
        let mut opts = ctx.router.backend_options().clone();
        opts.track_id = true;
        opts.protocol = protocol;
        let (conn, task) = BackendConn::spawn_with_handle(addr, opts);
        let line = Arc::new(Line {
            conn,
            unblocks_sent: AtomicU64::new(0),
            unblocks_answered: AtomicU64::new(0),
        });
        Ok(Dedicated {
            line,
            protocol,
            task,
            _permit: permit,
        })
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The blocking calls of one worker that are out on a dedicated connection.
#[derive(Default)]
pub struct Registry {
    calls: parking_lot::Mutex<HashMap<u64, Out>>,
    next: AtomicU64,
}

/// A blocking call out at its server, counted for INFO's `blocked_clients`
/// (which Redis's own tests wait on) until dropped.
struct Counted(Arc<Stats>);

impl Counted {
    fn new(ctx: &Context) -> Counted {
        ctx.stats.blocked_calls.fetch_add(1, Ordering::Relaxed);
        Counted(ctx.stats.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.blocked_calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One registered call.
struct Out {
    slot: u16,
    /// The client whose blocking call it is (`None`: a transaction's `EXEC`).
    client: Option<u64>,
    line: Arc<Line>,
    /// Cancelled when the call is back (its registration dropped).
    back: CancellationToken,
}

/// Proof that a call is registered; dropping it unregisters the call and tells
/// a waiting acknowledgement that it came back.
pub struct Registration {
    registry: Arc<Registry>,
    key: u64,
    line: Arc<Line>,
    back: CancellationToken,
    /// `unblocks_answered` of the line when the call was registered: an
    /// `UNBLOCK` answered before then was done before the call was even sent.
    answered_before: u64,
}

impl Registration {
    /// True if an `UNBLOCK` for the call's connection may have reached the
    /// server while the call was there.
    fn unblocked(&self) -> bool {
        self.line.unblocks_sent.load(Ordering::SeqCst) > self.answered_before
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.calls.lock().remove(&self.key);
        self.back.cancel();
    }
}

impl Registry {
    /// Registers a call of `slot` about to be sent on `line`, for `client`'s
    /// blocking command. Must happen before the send, in the same synchronous
    /// step as the routing decision: then an acknowledgement that sees the
    /// routes changed also sees the call. (A transaction's `EXEC` registers the
    /// same way with no client, see `pinned.rs`.)
    pub fn register(self: &Arc<Self>, slot: u16, client: Option<u64>, line: &Arc<Line>) -> Registration {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let back = CancellationToken::new();
        let answered_before = line.unblocks_answered.load(Ordering::SeqCst);
        self.calls.lock().insert(
            key,
            Out {
                slot,
                client,
                line: line.clone(),
                back: back.clone(),
            },
        );
        Registration {
            registry: self.clone(),
            key,
            line: line.clone(),
            back,
            answered_before,
        }
    }

    /// The connections with a call out that `which` picks, each with those
    /// calls' "back" tokens.
    fn lines_of(&self, which: &Which) -> Vec<(Arc<Line>, Vec<CancellationToken>)> {
        let calls = self.calls.lock();
        let mut out: Vec<(Arc<Line>, Vec<CancellationToken>)> = Vec::new();
        for c in calls.values().filter(|c| which.picks(c)) {
            match out.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &c.line)) {
                Some((_, backs)) => backs.push(c.back.clone()),
                None => out.push((c.line.clone(), vec![c.back.clone()])),
            }
        }
        out
    }
}

/// Why the blocking calls of some slots could not all be brought back.
/// Either way the action must not be acknowledged: a call still out could
/// yet be answered by the source after the slots moved.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// Calls still out when the time was up.
    #[error("{0} blocking command(s) did not come back from the source")]
    StillOut(usize),
    /// The server did not answer a `CLIENT UNBLOCK` in time.
    #[error("CLIENT UNBLOCK got no answer in time")]
    UnblockUnanswered,
}

/// Which registered calls an interruption is for.
enum Which {
    /// Those of slots that switch groups.
    Slots(HashSet<u16>),
    /// Those of one client whose session ends.
    Client(u64),
}

impl Which {
    fn picks(&self, call: &Out) -> bool {
        match self {
            Which::Slots(slots) => slots.contains(&call.slot),
            Which::Client(id) => call.client == Some(*id),
        }
    }
}

/// Interrupts every blocking call of `slots` out on a dedicated connection of
/// any of `workers` and waits, at most `limit`, until each has come back from
/// its server (with its real reply or interrupted). Returns how many calls it
/// waited for.
///
/// A connection runs its commands in order, so the call blocked there may be
/// another one queued before ours: `UNBLOCK` goes again, round after round,
/// while a call of `slots` is still out. Calls of other slots unblocked on the
/// way are re-issued on their unchanged route.
///
/// # Errors
/// [`InterruptError`]: some call is still out after `limit`.
pub async fn interrupt(
    slots: &[u16],
    workers: &[Arc<Context>],
    limit: Duration,
) -> Result<usize, InterruptError> {
    let which = Which::Slots(slots.iter().copied().collect());
    interrupt_where(&which, workers, limit).await
}

/// Ends the blocking calls `client` has out, for a session that ends while
/// the connection is still up (the proxy shuts down): each is interrupted
/// with `CLIENT UNBLOCK … TIMEOUT` and waited for, at most `limit`, so none
/// can pop an element after the session is gone. A call that got an element
/// first delivers it; the others end unanswered (see [`Lane::end`]).
///
/// # Errors
/// [`InterruptError`]: some call is still out after `limit`.
pub async fn end_calls_of(ctx: &Arc<Context>, client: u64, limit: Duration) -> Result<usize, InterruptError> {
    interrupt_where(&Which::Client(client), std::slice::from_ref(ctx), limit).await
}

async fn interrupt_where(
    which: &Which,
    workers: &[Arc<Context>],
    limit: Duration,
) -> Result<usize, InterruptError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = 0;
    loop {
        let mut backs = Vec::new();
        let mut sent = Vec::new();
        for w in workers {
            for (line, calls) in w.blocked.lines_of(which) {
                backs.extend(calls);
                if let Some(rx) = unblock(w, &line) {
                    sent.push((line, rx));
                }
            }
        }
        seen = seen.max(backs.len());
        if backs.is_empty() {
            return Ok(seen);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(InterruptError::StillOut(backs.len()));
        }
        for (line, rx) in sent {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(_)) => {
                    line.unblocks_answered.fetch_add(1, Ordering::SeqCst);
                }
                // The connection was killed: the UNBLOCK may yet have been
                // done, so it stays counted as on its way.
                Ok(Err(_)) => {}
                Err(_) => return Err(InterruptError::UnblockUnanswered),
            }
        }
        let all_back = async {
            for b in &backs {
                b.cancelled().await;
            }
        };
        let _ = tokio::time::timeout(RECHECK, all_back).await;
    }
}

/// Sends `CLIENT UNBLOCK <id> TIMEOUT` for `line` to its server, on the
/// worker's shared connection there (or a short-lived one). `None` while the
/// line is not connected: its commands are not at the server yet either.
fn unblock(w: &Context, line: &Line) -> Option<oneshot::Receiver<Bytes>> {
    let id = line.conn.client_id()?.to_string();
    let req = resp::encode_array(&[b"CLIENT".as_ref(), b"UNBLOCK", id.as_bytes(), b"TIMEOUT"]);
    line.unblocks_sent.fetch_add(1, Ordering::SeqCst);
    let addr = line.conn.addr();
    Some(match w.router.pool(addr) {
        Some(pool) => pool.send(0, req),
        // Dropping the handle closes it after the reply.
        None => BackendConn::spawn(addr, w.router.backend_options().clone()).send(req),
    })
}

/// The blocking call each client of the proxy has out at a server, for
/// `CLIENT UNBLOCK <id>` (shared by every worker, like the stats).
#[derive(Default)]
pub struct ByClient {
    calls: parking_lot::Mutex<HashMap<u64, Exposed>>,
}

/// One client's call out: its line, and the flag that tells its watcher the
/// nil that comes back was asked for by `CLIENT UNBLOCK`, not by a slot
/// switch, so it goes to the client instead of being re-issued.
#[derive(Clone)]
struct Exposed {
    line: Arc<Line>,
    released: Arc<std::sync::atomic::AtomicBool>,
}

/// Proof that a client's call is listed in [`ByClient`]; dropping it (the
/// reply came back) takes it off.
struct ListedCall {
    by: Arc<ByClient>,
    client: u64,
    released: Arc<std::sync::atomic::AtomicBool>,
}

impl ListedCall {
    fn released(&self) -> bool {
        self.released.load(Ordering::SeqCst)
    }
}

impl Drop for ListedCall {
    fn drop(&mut self) {
        let mut calls = self.by.calls.lock();
        if calls
            .get(&self.client)
            .is_some_and(|e| Arc::ptr_eq(&e.released, &self.released))
        {
            calls.remove(&self.client);
        }
    }
}

impl ByClient {
    fn list(self: &Arc<Self>, client: u64, line: &Arc<Line>) -> ListedCall {
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.calls.lock().insert(
            client,
            Exposed {
                line: line.clone(),
                released: released.clone(),
            },
        );
        ListedCall {
            by: self.clone(),
            client,
            released,
        }
    }

    /// `CLIENT UNBLOCK client TIMEOUT|ERROR` (`error`): unblocks the call the
    /// client has out, on its server. Yields Redis's answer, `:1` if a call was
    /// unblocked and `:0` if none was out.
    ///
    /// The proxy lists a call once it has handed it to its connection, so the
    /// connection may still be connecting, or the server may not have read the
    /// call yet: while the call is still out and the server answers `:0` (or
    /// cannot be asked yet), the unblock is tried again for up to
    /// [`UNBLOCK_PATIENCE`], instead of telling the client that nothing was
    /// blocked.
    pub fn unblock(self: &Arc<Self>, w: &Context, client: u64, error: bool) -> oneshot::Receiver<Bytes> {
        let exposed = self.calls.lock().get(&client).cloned();
        let (tx, rx) = oneshot::channel();
        let Some(e) = exposed else {
            let _ = tx.send(resp::int(0));
            return rx;
        };
        e.released.store(true, Ordering::SeqCst);
        let mode: &[u8] = if error { b"ERROR" } else { b"TIMEOUT" };
        let addr = e.line.conn.addr().to_string();
        let pool = w.router.pool(&addr);
        let options = w.router.backend_options().clone();
        let by = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + UNBLOCK_PATIENCE;
            loop {
                let reply = match e.line.conn.client_id() {
                    // Still connecting: the call is not at its server yet.
                    None => resp::int(0),
                    Some(id) => {
                        let id = id.to_string();
                        let req = resp::encode_array(&[b"CLIENT".as_ref(), b"UNBLOCK", id.as_bytes(), mode]);
                        let sent = match &pool {
                            Some(pool) => pool.send(0, req),
                            None => BackendConn::spawn(&addr, options.clone()).send(req),
                        };
                        sent.await.unwrap_or_else(|_| lost())
                    }
                };
                let still_out = by
                    .calls
                    .lock()
                    .get(&client)
                    .is_some_and(|now| Arc::ptr_eq(&now.released, &e.released));
                if reply.as_ref() != b":0\r\n" || !still_out || tokio::time::Instant::now() >= deadline {
                    let _ = tx.send(reply);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        rx
    }
}

/// How long `CLIENT UNBLOCK` keeps trying a call its server has not read yet.
/// Only a server that stopped reading uses it up: a call the server read is
/// either blocked there (the retry unblocks it) or answered (then it is no
/// longer out, which ends the retries), and a connection that cannot connect
/// fails its call. On a loaded machine connecting and reading can take
/// hundreds of milliseconds, so this is generous.
pub const UNBLOCK_PATIENCE: Duration = Duration::from_secs(5);

/// What a client's blocking calls share: a signal that the client is gone,
/// one that its session is ending, and the order in which its interrupted
/// calls are re-issued.
pub struct Lane {
    closed: CancellationToken,
    _closed_on_drop: DropGuard,
    ending: CancellationToken,
    order: Arc<tokio::sync::Mutex<()>>,
}

impl Lane {
    /// A lane for a new client; dropping it (with the client) ends its calls.
    pub fn new() -> Lane {
        let closed = CancellationToken::new();
        Lane {
            _closed_on_drop: closed.clone().drop_guard(),
            closed,
            ending: CancellationToken::new(),
            order: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The client's session is ending with its connection still up (the proxy
    /// shuts down): from now on an interrupted call is not re-issued but ends
    /// [unanswered](super::reply::unanswered), so the session closes the
    /// connection the way a redis-server that shuts down does. Nothing was
    /// popped for it, and a client library sees a dropped connection, which it
    /// knows to retry, rather than an error reply or a nil that `BLPOP … 0`
    /// can never return.
    pub fn end(&self) {
        self.ending.cancel();
    }
}

impl Default for Lane {
    fn default() -> Self {
        Lane::new()
    }
}

/// One blocking command, from dispatch to its client's final reply.
pub struct Call {
    ctx: Arc<Context>,
    client: u64,
    /// The client's protocol: re-issued calls run on connections of it, and
    /// a call whose time ran out gets that protocol's null.
    protocol: Protocol,
    slot: u16,
    args: Vec<Bytes>,
    keys: Vec<Bytes>,
    /// `None` if the timeout does not parse (Redis answers with an error).
    timeout: Option<Timeout>,
    closed: CancellationToken,
    ending: CancellationToken,
    order: Arc<tokio::sync::Mutex<()>>,
}

impl Call {
    /// A call of `req` (whose keys are `keys`, all in `slot`) received at `start`.
    pub fn new(
        ctx: &Arc<Context>,
        (client, protocol, lane): (u64, Protocol, &Lane),
        slot: u16,
        req: &Request,
        keys: Vec<Bytes>,
        start: Instant,
    ) -> Call {
        Call {
            ctx: ctx.clone(),
            client,
            protocol,
            slot,
            timeout: timeout_of(&req.args, start),
            // Copies: the words are slices of the client's read buffer, and a
            // call may wait for ever.
            args: req.args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
            keys: keys.iter().map(|k| Bytes::copy_from_slice(k)).collect(),
            closed: lane.closed.clone(),
            ending: lane.ending.clone(),
            order: lane.order.clone(),
        }
    }

    /// Sends the call (encoded as `raw`) on the client's dedicated connection
    /// `line` to the slot's server; the receiver yields the client's reply.
    pub fn start_on(self, line: &Arc<Line>, raw: Bytes) -> oneshot::Receiver<Bytes> {
        let registration = self.ctx.blocked.register(self.slot, Some(self.client), line);
        let out = (
            Counted::new(&self.ctx),
            self.ctx.by_client.list(self.client, line),
        );
        let first = line.send(raw);
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let reply = self.watch(registration, first, out).await;
            let _ = tx.send(reply);
        });
        rx
    }

    /// Runs the call for a slot in `migrate`: its keys move to the target, then
    /// it runs there.
    pub fn start_moving(self) -> oneshot::Receiver<Bytes> {
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(self.reissue().await);
        });
        rx
    }

    /// Waits for the first reply; re-issues the call if it was interrupted.
    async fn watch(
        mut self,
        registration: Registration,
        first: oneshot::Receiver<Bytes>,
        (counted, listed): (Counted, ListedCall),
    ) -> Bytes {
        let reply = first.await.unwrap_or_else(|_| lost());
        drop(counted);
        if listed.released() || !self.interrupted(&registration, &reply) {
            return reply;
        }
        if self.ending.is_cancelled() {
            return unanswered();
        }
        if let Err(e) = self.pin_stream_ids(registration.line.conn.addr()).await {
            return e;
        }
        drop(registration);
        self.reissue().await
    }

    /// True if `reply` is the nil of an `UNBLOCK` sent by us while the call
    /// still had time: then nothing was served and it may run again.
    fn interrupted(&self, registration: &Registration, reply: &[u8]) -> bool {
        is_nil(reply) && registration.unblocked() && self.time_left() != Some(None)
    }

    /// `None` if the call cannot tell; `Some(None)` once its deadline passed.
    fn time_left(&self) -> Option<Option<Wait>> {
        match self.timeout?.wait {
            Wait::Forever => Some(Some(Wait::Forever)),
            Wait::Until(t) if t > Instant::now() + SLACK => Some(Some(Wait::Until(t))),
            Wait::Until(_) => Some(None),
        }
    }

    /// Runs the call again, in this client's order, until it gets a real
    /// reply, its time runs out, or it cannot run (a clear error).
    async fn reissue(mut self) -> Bytes {
        let _turn = tokio::select! {
            turn = self.order.clone().lock_owned() => turn,
            _ = self.closed.cancelled() => return lost(),
        };
        let mut changes = self.ctx.router.subscribe();
        loop {
            if self.ending.is_cancelled() {
                return unanswered();
            }
            let wait = match self.time_left() {
                None => return cannot_reissue(self.slot),
                Some(None) => return nil_of(&self.args, self.protocol),
                Some(Some(w)) => w,
            };
            let routed = self.route();
            let run = match routed {
                Err(reply) => return reply,
                Ok(Route::Hold) => {
                    let until = match wait {
                        Wait::Until(t) => tokio::time::Instant::from_std(t),
                        Wait::Forever => tokio::time::Instant::now() + Duration::from_secs(86400 * 365),
                    };
                    tokio::select! {
                        changed = changes.changed() => if changed.is_err() { return cannot_reissue(self.slot) },
                        _ = tokio::time::sleep_until(until) => {}
                        _ = self.closed.cancelled() => return lost(),
                        _ = self.ending.cancelled() => return unanswered(),
                    }
                    continue;
                }
                Ok(Route::Serve(addr)) => self.run_at(&addr, wait).await,
                Ok(Route::Move { from, to }) => {
                    let how = MoveOptions::of(&self.ctx.config);
                    match move_keys(self.client, (&from, &to), &self.keys, &how).await {
                        Ok(_) => self.run_at(to.addr(), wait).await,
                        Err(reply) => return reply,
                    }
                }
            };
            if let Some(reply) = run {
                return reply;
            }
        }
    }

    /// The slot's route now, as this call needs it.
    fn route(&self) -> Result<Route, Bytes> {
        let ctx = &self.ctx;
        if !ctx.lease.valid_at(Instant::now()) {
            return Err(super::reply::lease_refusal(Some(&ctx.proxy_id)));
        }
        let routes = ctx.router.routes();
        if !routes.online {
            return Err(resp::error(&format!("ERR proxy {} is offline", ctx.proxy_id)));
        }
        let slot = self.slot;
        match routes.get(slot) {
            SlotRoute::Serve { pool, .. } => Ok(Route::Serve(pool.addr().to_string())),
            SlotRoute::Migrate { from, to } => Ok(Route::Move {
                from: from.clone(),
                to: to.clone(),
            }),
            SlotRoute::Switching { .. } => Ok(Route::Hold),
            SlotRoute::Unassigned => Err(resp::error(&format!(
                "ERR slot {slot} is not assigned to any group"
            ))),
            SlotRoute::NoMaster(g) => Err(resp::error(&format!(
                "ERR group {g} of slot {slot} has no master"
            ))),
        }
    }

    /// Runs the call with the time it has left on a connection of its own to
    /// `addr`: `Some(reply)` when done, `None` when interrupted again.
    async fn run_at(&mut self, addr: &str, wait: Wait) -> Option<Bytes> {
        let dedicated = match Dedicated::open(&self.ctx, addr, self.protocol) {
            Ok(d) => d,
            Err(reply) => return Some(reply),
        };
        let registration = self
            .ctx
            .blocked
            .register(self.slot, Some(self.client), &dedicated.line);
        let out = Counted::new(&self.ctx);
        let listed = self.ctx.by_client.list(self.client, &dedicated.line);
        let rx = dedicated.line.send(self.request(wait));
        let reply = tokio::select! {
            r = rx => r.unwrap_or_else(|_| lost()),
            _ = self.closed.cancelled() => return Some(lost()),
        };
        drop(out);
        if listed.released() || !self.interrupted(&registration, &reply) {
            return Some(reply);
        }
        if let Err(e) = self.pin_stream_ids(addr).await {
            return Some(e);
        }
        None
    }

    /// The call's words with its timeout set to what is left of it.
    fn request(&self, wait: Wait) -> Bytes {
        let mut args = self.args.clone();
        if let (Some(t), Wait::Until(deadline)) = (self.timeout, wait) {
            let left = deadline.saturating_duration_since(Instant::now()).max(SLACK);
            let value = if t.millis {
                left.as_millis().to_string()
            } else {
                format!("{:.3}", left.as_secs_f64())
            };
            if let Some(a) = args.get_mut(t.at) {
                *a = Bytes::from(value);
            }
        }
        resp::encode_array(&args)
    }

    /// For `XREAD … STREAMS k… $…`: replaces each `$` by the stream's last id
    /// on `addr`, so entries added from now on are still news to the call.
    async fn pin_stream_ids(&mut self, addr: &str) -> Result<(), Bytes> {
        let Some((keys, ids)) = xread_streams(&self.args) else {
            return Ok(());
        };
        let dollars: Vec<(usize, Bytes)> = (0..ids - keys)
            .filter(|&i| self.args.get(ids + i).is_some_and(|a| a.as_ref() == b"$"))
            .filter_map(|i| Some((ids + i, self.args.get(keys + i)?.clone())))
            .collect();
        if dollars.is_empty() {
            return Ok(());
        }
        let Some(pool) = self.ctx.router.pool(addr) else {
            return Err(cannot_reissue(self.slot));
        };
        for (at, key) in dollars {
            let req = resp::encode_array(&[b"XINFO".as_ref(), b"STREAM", key.as_ref()]);
            let info = pool.send(self.client, req).await.unwrap_or_else(|_| lost());
            let id = match last_generated_id(&info) {
                Some(id) => id,
                // No stream yet: every entry will be new.
                None if info.starts_with(b"-ERR no such key") => Bytes::from_static(b"0-0"),
                None => return Err(cannot_reissue(self.slot)),
            };
            if let Some(a) = self.args.get_mut(at) {
                *a = id;
            }
        }
        Ok(())
    }
}

/// Where a re-issued call goes.
enum Route {
    /// The slot is switching groups: wait for its next state.
    Hold,
    Serve(String),
    Move {
        from: Arc<super::router::Pool>,
        to: Arc<super::router::Pool>,
    },
}

fn cannot_reissue(slot: u16) -> Bytes {
    resp::error(&format!(
        "ERR blocking command interrupted: slot {slot} switched groups and the command could not be run again, retry"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|w| Bytes::from(w.to_string())).collect()
    }

    #[test]
    fn the_remaining_time_replaces_the_timeout() {
        let ctx = Arc::new(Context::new(
            crate::proxy::ProxyConfig::default(),
            crate::proxy::router::Router::new(
                "p",
                crate::proxy::backend::BackendOptions {
                    auth: None,
                    connect_timeout: Duration::from_secs(1),
                    track_id: false,
                    protocol: crate::libs::protocol::Protocol::Resp2,
                    replica_ack: None,
                    busy_after: None,
                    probe: true,
                },
                1,
            ),
        ));
        let lane = Lane::new();
        let req = Request {
            raw: Bytes::new(),
            args: words("BLPOP q 30"),
        };
        let start = Instant::now() - Duration::from_secs(10);
        let call = Call::new(&ctx, (1, Protocol::Resp2, &lane), 0, &req, Vec::new(), start);
        let Some(Some(wait)) = call.time_left() else {
            panic!("time left")
        };
        let mut raw = bytes::BytesMut::from(&call.request(wait)[..]);
        let again = resp::parse_request(&mut raw, &resp::Limits::default())
            .expect("valid")
            .expect("complete");
        let secs: f64 = std::str::from_utf8(&again.args[2])
            .expect("utf8")
            .parse()
            .expect("number");
        assert!((19.0..=20.0).contains(&secs), "{secs}");
        let forever = Request {
            raw: Bytes::new(),
            args: words("BLPOP q 0"),
        };
        let call = Call::new(&ctx, (1, Protocol::Resp2, &lane), 0, &forever, Vec::new(), start);
        assert_eq!(
            &call.request(Wait::Forever)[..],
            &resp::encode_array(&words("BLPOP q 0"))[..]
        );
    }
}
