//! A transaction's `WATCH` and `EXEC` on its pinned connection, a
//! [`Dedicated`] backend connection of its own (see `transaction.rs` for the
//! state they come from), and the worker's spare ones ([`SpareLines`]).
//!
//! A transaction must run whole on the master that owned its slot when it
//! began, or not at all:
//!
//! * `EXEC` checks the slot's route, registers itself with the worker's
//!   [`Registry`](super::blocked::Registry) and queues `MULTI`, the commands
//!   and `EXEC` on the connection, all in one synchronous step on the worker
//!   thread, which is where routing changes are applied too. An
//!   acknowledgement of a `pre_migrate` (`ack.rs`) that sees the new routes
//!   therefore also sees the registration, and waits until the `EXEC` is
//!   answered before it lets the migration start; an `EXEC` that sees the new
//!   routes is not sent.
//! * If the slot's master is not the one the transaction was pinned to (the
//!   slot is switching groups or moved since its first key), `EXEC` answers
//!   `-TRYAGAIN` and nothing of the transaction runs anywhere. A transaction
//!   pinned while its slot was switching has nothing anywhere yet: its `EXEC`
//!   waits for the new route, as a held request does.
//! * In a migrating slot the transaction runs on the target, after its keys
//!   moved there (`migrate::move_keys`), as any request of the slot would.
//! * A `WATCH` lives on one server connection. Each `WATCH` is followed by a
//!   `CLIENT ID` on the same connection; `EXEC` goes only to the connection
//!   with that id. A connection that was lost and reopened has another id, so
//!   a transaction whose watch was lost gets `-TRYAGAIN`, never an unwatched
//!   run. (Jobs queued on a connection that fails are all answered with an
//!   error, never written to the next one: see `backend.rs`.)
//!
//! Imports: `blocked`, `context`, `dispatch` (its routing), `migrate`,
//! `reply`, `router`, `transaction` and `libs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::blocked::{Dedicated, Line, Registration};
use super::context::Context;
use super::dispatch::{Destination, destination_for};
use super::migrate::{MoveOptions, move_keys};
use super::reply::{Reply, lost};
use super::router::Pool;
use super::transaction::Queued;
use crate::libs::protocol::Protocol;
use crate::libs::resp;

/// A transaction's watch id once it cannot be trusted: no connection has this id.
pub const LOST: u64 = u64::MAX;

const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";
const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";
const CLIENT_ID: &[u8] = b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n";
const UNWATCH: &[u8] = b"*1\r\n$7\r\nUNWATCH\r\n";

/// Marks a watch as lost: its transaction's `EXEC` will answer `-TRYAGAIN`.
pub fn lose(held: &AtomicU64) {
    held.store(LOST, Ordering::SeqCst);
}

/// Records that a `WATCH` ran on the server connection `id`; every `WATCH` of
/// a transaction must have run on the same one.
fn held_on(held: &AtomicU64, id: u64) {
    if let Err(current) = held.compare_exchange(0, id, Ordering::SeqCst, Ordering::SeqCst)
        && current != id
    {
        lose(held);
    }
}

/// True if every `WATCH` ran on the server connection that `line` has now.
fn still_held(held: &AtomicU64, line: &Line) -> bool {
    let id = held.load(Ordering::SeqCst);
    id != 0 && id != LOST && line.client_id() == Some(id)
}

/// The retryable answer of a transaction that did not run.
fn tryagain(slot: u16, why: &str) -> Bytes {
    resp::error(&format!(
        "TRYAGAIN transaction discarded, nothing of it ran: {why} (slot {slot}), retry"
    ))
}

/// Where a transaction's slot is served now.
enum Route {
    /// Switching groups (`pre_migrate`).
    Switching,
    /// At the master `addr`; for a migrating slot, keys move from the source
    /// to `addr` first.
    At {
        addr: String,
        moving: Option<(Arc<Pool>, Arc<Pool>)>,
    },
}

fn route_now(ctx: &Context, slot: u16) -> Result<Route, Bytes> {
    if !ctx.lease.valid_at(Instant::now()) {
        return Err(super::reply::lease_refusal(Some(&ctx.proxy_id)));
    }
    let routes = ctx.router.routes();
    match destination_for(ctx, &routes, slot) {
        Ok(Destination::Pool(pool)) => Ok(Route::At {
            addr: pool.addr().to_string(),
            moving: None,
        }),
        Ok(Destination::Migrate { from, to, .. }) => Ok(Route::At {
            addr: to.addr().to_string(),
            moving: Some((from.clone(), to.clone())),
        }),
        Err(Reply::Hold(_)) => Ok(Route::Switching),
        Err(Reply::Ready(e)) => Err(e),
        Err(_) => Err(resp::error("ERR internal: unexpected route")),
    }
}

/// Moves `keys` of a migrating slot to its target, on `client`'s connection.
async fn move_to_target(
    ctx: &Context,
    client: u64,
    (from, to): (Arc<Pool>, Arc<Pool>),
    keys: &[Bytes],
) -> Result<(), Bytes> {
    move_keys(client, (&from, &to), keys, &MoveOptions::of(&ctx.config))
        .await
        .map(drop)
}

/// One `WATCH`, sent at once on the pinned connection.
pub struct WatchCall {
    pub ctx: Arc<Context>,
    pub client: u64,
    pub slot: u16,
    /// The master the transaction is pinned to.
    pub addr: String,
    pub keys: Vec<Bytes>,
    pub line: Arc<Line>,
    pub held: Arc<AtomicU64>,
    /// The `WATCH` request.
    pub raw: Bytes,
}

impl WatchCall {
    /// Sends the `WATCH` (started once the client's earlier replies are in,
    /// see `reply::Ordered`); yields its reply.
    pub async fn run(self) -> Bytes {
        match route_now(&self.ctx, self.slot) {
            Ok(Route::At { addr, moving }) if addr == self.addr => {
                if let Some(pools) = moving
                    && let Err(e) = move_to_target(&self.ctx, self.client, pools, &self.keys).await
                {
                    lose(&self.held);
                    return e;
                }
            }
            // The slot switched groups since the WATCH was read: what it
            // would watch is not where the transaction runs. EXEC will ask
            // for a retry.
            Ok(_) => {
                lose(&self.held);
                return Bytes::from_static(resp::OK);
            }
            Err(e) => {
                lose(&self.held);
                return e;
            }
        }
        let watched = self.line.send(self.raw);
        let id = self.line.send(Bytes::from_static(CLIENT_ID));
        let reply = watched.await.unwrap_or_else(|_| lost());
        let id = id.await.ok().and_then(|r| resp::integer(&r));
        match id.and_then(|id| u64::try_from(id).ok()) {
            Some(id) if !resp::is_error(&reply) => held_on(&self.held, id),
            _ => lose(&self.held),
        }
        reply
    }
}

/// One `EXEC`: the queued commands, run whole on the pinned master or not at all.
pub struct Exec {
    pub ctx: Arc<Context>,
    pub client: u64,
    /// The client's protocol: the transaction's connection speaks it.
    pub protocol: Protocol,
    pub slot: u16,
    /// The master the transaction is pinned to; `None` if the slot was
    /// switching groups when it was decided.
    pub addr: Option<String>,
    /// The pinned connection to `addr`.
    pub line: Option<Dedicated>,
    /// The transaction's `WATCH`, if any (see [`held_on`]).
    pub watch: Option<Arc<AtomicU64>>,
    pub items: Vec<Queued>,
    pub keys: Vec<Bytes>,
}

impl Exec {
    /// Runs the transaction (started once the client's earlier replies are
    /// in, see `reply::Ordered`); yields `EXEC`'s reply.
    pub async fn run(mut self) -> Bytes {
        let sent = match self.send().await {
            Ok(sent) => sent,
            Err(e) => {
                // Not sent: the server may still hold the watch.
                if let Some(line) = self.line.take() {
                    self.ctx.spare_lines.put(&self.ctx, line, self.watch.is_some());
                }
                return e;
            }
        };
        let multi = sent.multi.await.unwrap_or_else(|_| lost());
        for q in sent.queued {
            let _ = q.await;
        }
        let exec = sent.exec.await.unwrap_or_else(|_| lost());
        // Only now may an acknowledgement waiting for it go on.
        drop(sent.registration);
        // EXEC ends the transaction and its watch on the server, whatever it
        // answered: the connection is clean for the next one.
        self.ctx.spare_lines.put(&self.ctx, sent.line, false);
        if resp::is_error(&multi) {
            return multi;
        }
        splice(&self.items, exec)
    }

    /// Checks the route and queues the pipeline.
    ///
    /// # Errors
    /// The client's reply when nothing was sent.
    async fn send(&mut self) -> Result<Sent, Bytes> {
        let ctx = self.ctx.clone();
        let slot = self.slot;
        let mut changes = ctx.router.subscribe();
        let deadline = tokio::time::Instant::now() + ctx.config.hold_timeout;
        let mut moved_to: Option<String> = None;
        loop {
            let (addr, moving) = match route_now(&ctx, slot)? {
                Route::At { addr, moving } => (addr, moving),
                Route::Switching if self.addr.is_none() => {
                    tokio::select! {
                        changed = changes.changed() => if changed.is_err() {
                            return Err(tryagain(slot, "the router stopped"));
                        },
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(tryagain(slot, "its slot is switching groups"));
                        }
                    }
                    continue;
                }
                Route::Switching => return Err(tryagain(slot, "its slot started to switch groups")),
            };
            if self.addr.as_ref().is_some_and(|pinned| *pinned != addr) {
                return Err(tryagain(slot, "its slot switched groups while it was open"));
            }
            if let Some(pools) = moving
                && moved_to.as_deref() != Some(addr.as_str())
            {
                move_to_target(&ctx, self.client, pools, &self.keys).await?;
                moved_to = Some(addr);
                // The route may have changed meanwhile: look again.
                continue;
            }
            // From here to the sends nothing awaits: the route just checked
            // stays the worker's until the EXEC is registered.
            let dedicated = match self.line.take() {
                Some(d) => d,
                None => ctx.spare_lines.take(&ctx, &addr, self.protocol)?,
            };
            let line = dedicated.line.clone();
            if let Some(held) = &self.watch
                && !still_held(held, &line)
            {
                self.line = Some(dedicated);
                return Err(tryagain(slot, "the connection holding its WATCH was lost"));
            }
            let registration = ctx.blocked.register(slot, None, &line);
            let multi = line.send(Bytes::from_static(MULTI));
            let queued = self
                .items
                .iter()
                .filter_map(|q| match q {
                    Queued::Backend(raw) => Some(line.send(raw.clone())),
                    Queued::Local(_) => None,
                })
                .collect();
            let exec = line.send(Bytes::from_static(EXEC));
            return Ok(Sent {
                multi,
                queued,
                exec,
                registration,
                line: dedicated,
            });
        }
    }
}

/// A transaction on its way: the replies it waits for, and what must live
/// until they are in.
struct Sent {
    multi: oneshot::Receiver<Bytes>,
    queued: Vec<oneshot::Receiver<Bytes>>,
    exec: oneshot::Receiver<Bytes>,
    /// Seen by an acknowledgement of the slot's switch, which waits for it.
    registration: Registration,
    line: Dedicated,
}

/// Most idle transaction connections a worker keeps per backend.
const SPARE_PER_BACKEND: usize = 8;

/// A worker's idle transaction connections, by backend address.
///
/// A transaction needs a connection of its own only while it runs (from its
/// `WATCH` or its `EXEC` to the reply), and after `EXEC`, `DISCARD` or
/// `UNWATCH` a connection holds no state, so the next transaction of any
/// client may use it. Keeping a few saves a connect per transaction without
/// holding one per client: they count against `max_blocking`.
#[derive(Default)]
pub struct SpareLines {
    /// By backend address and protocol: a RESP3 client's transaction must get
    /// RESP3 replies.
    idle: parking_lot::Mutex<HashMap<(String, Protocol), Vec<Dedicated>>>,
}

impl SpareLines {
    /// An idle connection to `addr`, or a new one; then one more is opened
    /// ahead of need if none is left idle.
    ///
    /// # Errors
    /// The client's error reply when `max_blocking` connections are open.
    pub fn take(&self, ctx: &Context, addr: &str, protocol: Protocol) -> Result<Dedicated, Bytes> {
        let key = (addr.to_string(), protocol);
        let idle = {
            let mut idle = self.idle.lock();
            let spare = idle.entry(key.clone()).or_default();
            let mut found = None;
            // One that lost its connection since is dropped, not reused; one
            // still connecting is fine (its requests wait for the connect).
            while let Some(d) = spare.pop() {
                if !d.line.is_down() {
                    found = Some(d);
                    break;
                }
            }
            found
        };
        let d = match idle {
            Some(d) => d,
            None => Dedicated::open(ctx, addr, protocol)?,
        };
        self.warm(ctx, key);
        Ok(d)
    }

    /// Opens a connection to a backend ahead of need when none is idle, so the
    /// next blocking command or transaction there goes out at once: a fresh
    /// connection first costs a connect and a `CLIENT ID`, long enough for a
    /// push sent just after the blocking command, on another connection, to
    /// overtake it (Redis's own tests, and applications, count on that order).
    fn warm(&self, ctx: &Context, (addr, protocol): (String, Protocol)) {
        if ctx.router.pool(&addr).is_none() || ctx.blocking.available_permits() < ctx.config.max_blocking / 2
        {
            return;
        }
        let mut idle = self.idle.lock();
        let spare = idle.entry((addr.clone(), protocol)).or_default();
        if spare.is_empty()
            && let Ok(d) = Dedicated::open(ctx, &addr, protocol)
        {
            spare.push(d);
        }
    }

    /// Takes back a connection after its transaction; `unwatch` when a
    /// `WATCH` may still be on (queued before any later use, so the next
    /// transaction never sees it). Kept only while it is up, its backend is
    /// in use and most dedicated connections are free; otherwise it closes.
    pub fn put(&self, ctx: &Context, d: Dedicated, unwatch: bool) {
        if unwatch {
            drop(d.line.send(Bytes::from_static(UNWATCH)));
        }
        let addr = d.line.addr();
        if !d.line.is_up()
            || ctx.router.pool(addr).is_none()
            || ctx.blocking.available_permits() < ctx.config.max_blocking / 2
        {
            return;
        }
        let mut idle = self.idle.lock();
        let spare = idle.entry((addr.to_string(), d.protocol)).or_default();
        if spare.len() < SPARE_PER_BACKEND {
            spare.push(d);
        }
    }
}

/// `EXEC`'s reply with the proxy's own answers put back in their places. A
/// reply that is not the expected array (nil after a `WATCH` conflict,
/// `EXECABORT`, an error) is passed on as it is.
pub fn splice(items: &[Queued], exec: Bytes) -> Bytes {
    if items.iter().all(|q| matches!(q, Queued::Backend(_))) {
        return exec;
    }
    let backend = items.iter().filter(|q| matches!(q, Queued::Backend(_))).count();
    let Some(replies) = resp::array_items(&exec).filter(|r| r.len() == backend) else {
        return exec;
    };
    let mut replies = replies.into_iter();
    let mut out = BytesMut::with_capacity(exec.len() + 64);
    resp::put_header(&mut out, b'*', items.len() as i64);
    for q in items {
        match q {
            Queued::Local(answer) => out.extend_from_slice(answer),
            Queued::Backend(_) => out.extend_from_slice(&replies.next().unwrap_or_else(lost)),
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_answers_take_their_places_in_the_exec_array() {
        let items = [
            Queued::Local(Bytes::from_static(b"+PONG\r\n")),
            Queued::Backend(Bytes::new()),
            Queued::Local(Bytes::from_static(b"$2\r\nhi\r\n")),
            Queued::Backend(Bytes::new()),
        ];
        let exec = Bytes::from_static(b"*2\r\n:1\r\n:2\r\n");
        assert_eq!(
            &splice(&items, exec)[..],
            b"*4\r\n+PONG\r\n:1\r\n$2\r\nhi\r\n:2\r\n"
        );
        // A WATCH conflict, an abort or a short array is passed on untouched.
        for other in [&b"*-1\r\n"[..], b"-EXECABORT x\r\n", b"*1\r\n:1\r\n"] {
            assert_eq!(&splice(&items, Bytes::copy_from_slice(other))[..], other);
        }
        // Only proxy answers: no backend at all.
        assert_eq!(
            &splice(&items[..1], Bytes::from_static(b"*0\r\n"))[..],
            b"*1\r\n+PONG\r\n"
        );
        assert_eq!(&splice(&[], Bytes::from_static(b"*0\r\n"))[..], b"*0\r\n");
    }

    #[test]
    fn every_watch_must_run_on_one_connection() {
        let held = AtomicU64::new(0);
        held_on(&held, 7);
        held_on(&held, 7);
        assert_eq!(held.load(Ordering::SeqCst), 7);
        held_on(&held, 8);
        assert_eq!(held.load(Ordering::SeqCst), LOST, "a reconnect loses the watch");
        held_on(&held, 8);
        assert_eq!(held.load(Ordering::SeqCst), LOST, "lost stays lost");
    }
}
