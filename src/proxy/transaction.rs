//! Transactions through the proxy: `MULTI`, `EXEC`, `DISCARD`, `WATCH` and
//! `UNWATCH`, as on one Redis, for keys that all hash to one slot.
//!
//! The proxy keeps a client's transaction state ([`Transaction`]) and runs it
//! on a backend connection of its own (a `Dedicated` one, as blocking
//! commands use, see `blocked.rs`), pinned to the master of the transaction's
//! slot from its first `WATCH` or its `EXEC` until the reply, then handed to
//! the next transaction (`pinned::SpareLines`):
//!
//! * The slot is decided by the first key seen, a `WATCH`ed one or a queued
//!   command's. A later key of another slot gets Redis Cluster's `CROSSSLOT`.
//! * `WATCH` is sent at once, on the pinned connection, so a write by anyone
//!   between it and `EXEC` is seen by Redis.
//! * Between `MULTI` and `EXEC` the proxy checks and queues the commands itself
//!   and answers `+QUEUED`. An error while queueing (unknown command, wrong
//!   arity, `CROSSSLOT`, a command that cannot run in a transaction here)
//!   marks the transaction, and `EXEC` answers `EXECABORT`, as Redis does:
//!   nothing of it runs, so a client's retry can never apply it twice.
//! * `EXEC` sends `MULTI`, the queued commands and `EXEC` as one pipeline on the
//!   pinned connection ([`pinned`](super::pinned)), which also makes sure the
//!   slot did not switch groups since the transaction's first key (else
//!   `-TRYAGAIN`, and nothing ran).
//!
//! `WATCH` and `EXEC` are [`Reply::Ordered`]: they go to the backend only once
//! every earlier reply of the client is in, and the session reads nothing more
//! from the client until they are answered (`Client::barrier`), so neither
//! overtakes, nor is overtaken by, the client's requests on shared connections.
//!
//! Commands the proxy answers itself (`PING`, `ECHO`, …) are answered when
//! queued; their replies take their places in `EXEC`'s array.
//!
//! Imports: `blocked`, `command`, `context`, `dispatch` (its routing and error
//! wording), `local`, `pinned`, `reply` and `libs`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::blocked::Dedicated;
use super::command::{self, Kind, Spec};
use super::context::{Client, Context};
use super::dispatch::{CROSSSLOT, Destination, destination_for};
use super::fanout;
use super::local;
use super::pinned::{self, Exec, WatchCall};
use super::policy::unknown_command;
use super::reply::{Held, Ordered, Pending, Reply};
use crate::libs::hash::slot_of;
use crate::libs::resp::{self, Request};

/// Redis's answer to `EXEC` after an error while queueing.
pub const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

/// Most bytes of commands one transaction may queue in the proxy.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// A client's transaction state: what it `WATCH`es and, between `MULTI` and
/// `EXEC`, what it queued.
#[derive(Default)]
pub struct Transaction {
    /// `Some` between `MULTI` and `EXEC`/`DISCARD`.
    multi: Option<Queue>,
    /// The slot, decided by the first key seen.
    pin: Option<Pin>,
    /// While a `WATCH` is on: the server's id of the connection that ran it
    /// (see `pinned`).
    watch: Option<Arc<AtomicU64>>,
    /// The pinned connection, from the first `WATCH` on.
    line: Option<Dedicated>,
}

impl Transaction {
    /// True between `MULTI` and `EXEC`/`DISCARD`: every request is queued.
    pub fn queuing(&self) -> bool {
        self.multi.is_some()
    }

    /// Ends the transaction without running it; the pinned connection, if
    /// any, forgets its watch and becomes a spare.
    fn abandon(self, ctx: &Context) {
        if let Some(line) = self.line {
            ctx.spare_lines.put(ctx, line, self.watch.is_some());
        }
    }
}

/// The commands queued since `MULTI`.
#[derive(Default)]
struct Queue {
    items: Vec<Queued>,
    /// Every key of the backend commands (moved first if the slot migrates).
    keys: Vec<Bytes>,
    bytes: usize,
    /// An error while queueing: `EXEC` answers `EXECABORT`.
    failed: bool,
}

/// One queued command.
pub enum Queued {
    /// Run by the backend inside `MULTI … EXEC` (the request, copied).
    Backend(Bytes),
    /// Answered by the proxy when queued.
    Local(Bytes),
}

/// Where a transaction runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pin {
    slot: u16,
    /// The master the slot's commands went to when it was decided (the
    /// target, for a migrating slot); `None` while the slot was switching
    /// groups.
    addr: Option<String>,
}

fn err(msg: &str) -> Reply {
    Reply::Ready(resp::error(msg))
}

fn ok() -> Reply {
    Reply::Ready(Bytes::from_static(resp::OK))
}

fn upper(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_uppercase()
}

/// A transaction command outside `MULTI`.
pub fn command(
    ctx: &Arc<Context>,
    client: &mut Client,
    req: &Request,
    spec: &'static Spec,
    now: Instant,
) -> Reply {
    match spec.name.as_str() {
        "multi" => {
            client.txn.get_or_insert_default().multi = Some(Queue::default());
            ok()
        }
        "exec" => err("ERR EXEC without MULTI"),
        "discard" => err("ERR DISCARD without MULTI"),
        "watch" => watch(ctx, client, req, spec, now),
        "unwatch" => {
            if let Some(t) = client.txn.take() {
                t.abandon(ctx);
            }
            ok()
        }
        _ => err("ERR internal: not a transaction command"),
    }
}

/// A request between `MULTI` and `EXEC`.
pub fn queue(ctx: &Arc<Context>, client: &mut Client, req: &Request, start: Instant) -> Pending {
    // The operator's deny and rename lists hold inside a transaction too.
    let Some(cmd) = ctx.policy.lookup(req.name()) else {
        fail(client);
        return Pending {
            cmd: ctx.stats.unknown_cmd(),
            start,
            reply: Reply::Ready(unknown_command(&req.args)),
        };
    };
    let reply = match cmd.spec.name.as_str() {
        "exec" => exec(ctx, client),
        "discard" => {
            if let Some(t) = client.txn.take() {
                t.abandon(ctx);
            }
            ok()
        }
        // Neither marks the transaction, as in Redis.
        "multi" => err("ERR MULTI calls can not be nested"),
        "watch" => err("ERR WATCH inside MULTI is not allowed"),
        // Runs now, as in Redis: the connection closes and the transaction with it.
        "quit" => local::answer(ctx, client, req, cmd.spec),
        _ => {
            let req = &*ctx.policy.real_request(req, cmd);
            let reply = queue_one(ctx, client, req, cmd.spec, cmd.kind);
            if resp::is_error(reply.as_ref()) {
                fail(client);
            }
            Reply::Ready(reply)
        }
    };
    Pending {
        cmd: cmd.id,
        start,
        reply,
    }
}

/// Marks the open transaction: its `EXEC` will answer `EXECABORT`.
fn fail(client: &mut Client) {
    if let Some(q) = client.txn.as_mut().and_then(|t| t.multi.as_mut()) {
        q.failed = true;
    }
}

/// Checks and queues one command; returns `+QUEUED` or the error it gets.
fn queue_one(ctx: &Context, client: &mut Client, req: &Request, spec: &'static Spec, kind: Kind) -> Bytes {
    if !spec.arity_ok(req.args.len()) {
        return resp::error(&format!(
            "ERR wrong number of arguments for '{}' command",
            String::from_utf8_lossy(req.name()).to_lowercase()
        ));
    }
    if !client.authed {
        return resp::error("NOAUTH Authentication required.");
    }
    let queued = match kind {
        Kind::Forward | Kind::Blocking | Kind::Split(_) => match keyed(ctx, client, req, spec) {
            Ok(q) => q,
            Err(reply) => return reply,
        },
        Kind::Fanout(fan) if fanout::by_key(req, fan) => match keyed(ctx, client, req, spec) {
            Ok(q) => q,
            Err(reply) => return reply,
        },
        // Runs inside EXEC in Redis; EXEC unwatches anyway.
        Kind::Transaction => Queued::Local(Bytes::from_static(resp::OK)),
        Kind::Local => match local::answer(ctx, client, req, spec) {
            Reply::Ready(answer) => Queued::Local(answer),
            _ => return not_in_multi(req),
        },
        Kind::Refused => {
            return resp::error(&format!(
                "ERR Command not allowed inside a transaction: '{}' is not allowed through reborn proxy",
                upper(req.name())
            ));
        }
        _ => return not_in_multi(req),
    };
    let Some(q) = client.txn.as_mut().and_then(|t| t.multi.as_mut()) else {
        return resp::error("ERR internal: no transaction open");
    };
    let size = match &queued {
        Queued::Backend(raw) | Queued::Local(raw) => raw.len(),
    };
    if q.bytes + size > MAX_QUEUED_BYTES {
        return resp::error(&format!(
            "ERR transaction too large for reborn proxy (more than {MAX_QUEUED_BYTES} bytes queued)"
        ));
    }
    q.bytes += size;
    q.items.push(queued);
    Bytes::from_static(b"+QUEUED\r\n")
}

fn not_in_multi(req: &Request) -> Bytes {
    resp::error(&format!(
        "ERR Command not allowed inside a transaction through reborn proxy: '{}' is not routed by one key's slot",
        upper(req.name())
    ))
}

/// A command with keys: checks they share the transaction's slot, pins the
/// transaction to it if it is the first key seen, and copies the request (its
/// words are slices of the client's read buffer, which must not stay pinned).
fn keyed(ctx: &Context, client: &mut Client, req: &Request, spec: &'static Spec) -> Result<Queued, Bytes> {
    let keys = spec.keys(&req.args);
    let slot = one_slot(&keys)?.ok_or_else(|| not_in_multi(req))?;
    if let Some(refusal) = command::sort_pattern_refusal(&spec.name, &req.args, slot) {
        return Err(resp::error(&refusal));
    }
    let txn = client.txn.get_or_insert_default();
    let pin = match &txn.pin {
        Some(pin) if pin.slot != slot => return Err(resp::error(CROSSSLOT)),
        Some(pin) => pin.clone(),
        None => Pin {
            slot,
            addr: match where_now(ctx, slot) {
                Ok(addr) => Some(addr),
                // Switching groups: nothing of the transaction is anywhere yet,
                // so its EXEC may wait for the new route (see `pinned`).
                Err(Reply::Hold(_)) => None,
                Err(Reply::Ready(e)) => return Err(e),
                Err(_) => return Err(resp::error("ERR internal: unexpected route")),
            },
        },
    };
    txn.pin = Some(pin);
    if let Some(q) = txn.multi.as_mut() {
        q.keys.extend(keys.iter().map(|k| Bytes::copy_from_slice(k)));
    }
    Ok(Queued::Backend(Bytes::copy_from_slice(&req.raw)))
}

/// The one slot of `keys` (`None` without keys), or `CROSSSLOT`.
fn one_slot(keys: &[Bytes]) -> Result<Option<u16>, Bytes> {
    let mut slot = None;
    for k in keys {
        let s = slot_of(k);
        if slot.is_some_and(|prev| prev != s) {
            return Err(resp::error(CROSSSLOT));
        }
        slot = Some(s);
    }
    Ok(slot)
}

/// The master that runs `slot`'s commands now (the target of a migrating
/// slot), or what a request of the slot gets instead (`Reply::Hold` while it
/// switches groups).
fn where_now(ctx: &Context, slot: u16) -> Result<String, Reply> {
    let routes = ctx.router.routes();
    match destination_for(ctx, &routes, slot)? {
        Destination::Pool(pool) => Ok(pool.addr().to_string()),
        Destination::Migrate { to, .. } => Ok(to.addr().to_string()),
    }
}

/// `WATCH key…`: pins the client to the keys' slot and sends the `WATCH` on
/// the pinned connection.
fn watch(ctx: &Arc<Context>, client: &mut Client, req: &Request, spec: &'static Spec, now: Instant) -> Reply {
    if !ctx.lease.valid_at(now) {
        return Reply::Hold(Held::Lease);
    }
    let keys = spec.keys(&req.args);
    let slot = match one_slot(&keys) {
        Ok(Some(slot)) => slot,
        Ok(None) => return err("ERR wrong number of arguments for 'watch' command"),
        Err(e) => return Reply::Ready(e),
    };
    let addr = match where_now(ctx, slot) {
        Ok(addr) => addr,
        Err(reply) => return reply,
    };
    let txn = client.txn.get_or_insert_default();
    match &txn.pin {
        Some(pin) if pin.slot != slot => return err(CROSSSLOT),
        Some(pin) if pin.addr.as_deref() != Some(addr.as_str()) => {
            // The slot switched groups since the first WATCH: what that one
            // watches is on another server. EXEC will ask for a retry.
            if let Some(held) = &txn.watch {
                pinned::lose(held);
            }
            return ok();
        }
        _ => {}
    }
    let line = match &txn.line {
        Some(d) => d.line.clone(),
        None => match ctx.spare_lines.take(ctx, &addr, client.protocol) {
            Ok(d) => txn.line.insert(d).line.clone(),
            Err(e) => return Reply::Ready(e),
        },
    };
    let held = txn.watch.get_or_insert_with(Arc::default).clone();
    txn.pin = Some(Pin {
        slot,
        addr: Some(addr.clone()),
    });
    let call = WatchCall {
        ctx: ctx.clone(),
        client: client.id,
        slot,
        addr,
        keys: keys.iter().map(|k| Bytes::copy_from_slice(k)).collect(),
        line,
        held,
        raw: Bytes::copy_from_slice(&req.raw),
    };
    ordered(client, call.run())
}

/// `EXEC` of the open transaction.
fn exec(ctx: &Arc<Context>, client: &mut Client) -> Reply {
    let Some(txn) = client.txn.take() else {
        return err("ERR EXEC without MULTI");
    };
    if txn.multi.as_ref().is_some_and(|q| q.failed) {
        txn.abandon(ctx);
        return err(EXECABORT);
    }
    let Transaction {
        multi,
        pin,
        watch,
        line,
    } = *txn;
    let queue = multi.unwrap_or_default();
    let Some(pin) = pin else {
        // No key and no WATCH: every command was answered by the proxy.
        return Reply::Ready(pinned::splice(&queue.items, Bytes::from_static(b"*0\r\n")));
    };
    let line = match (line, &pin.addr) {
        (Some(line), _) => Some(line),
        (None, Some(addr)) => match ctx.spare_lines.take(ctx, addr, client.protocol) {
            Ok(line) => Some(line),
            Err(e) => return Reply::Ready(e),
        },
        (None, None) => None,
    };
    let run = Exec {
        ctx: ctx.clone(),
        client: client.id,
        protocol: client.protocol,
        slot: pin.slot,
        addr: pin.addr,
        line,
        watch,
        items: queue.items,
        keys: queue.keys,
    };
    ordered(client, run.run())
}

/// Runs `work` once every earlier reply of the client is in, and holds the
/// client's next requests until it is done.
fn ordered(client: &mut Client, work: impl Future<Output = Bytes> + Send + 'static) -> Reply {
    let (tx, rx) = oneshot::channel();
    let (done, done_rx) = oneshot::channel::<()>();
    let task = Box::pin(async move {
        let _ = tx.send(work.await);
        drop(done);
    });
    client.barrier = Some(done_rx);
    Reply::Ordered(Box::new(Ordered { rx, task: Some(task) }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proxy::ProxyConfig;
    use crate::proxy::backend::BackendOptions;
    use crate::proxy::router::Router;

    /// A context whose router has no topology: every slot is unassigned.
    fn context() -> Arc<Context> {
        let opts = BackendOptions {
            auth: None,
            connect_timeout: Duration::from_secs(1),
            track_id: false,
            protocol: crate::libs::protocol::Protocol::Resp2,
            replica_ack: None,
            busy_after: None,
            probe: true,
        };
        Arc::new(Context::new(ProxyConfig::default(), Router::new("p", opts, 1)))
    }

    fn send(ctx: &Arc<Context>, client: &mut Client, words: &str) -> Bytes {
        let args: Vec<Bytes> = words.split(' ').map(|w| Bytes::from(w.to_string())).collect();
        let req = Request {
            raw: resp::encode_array(&args),
            args,
        };
        let mut pending = super::super::dispatch::dispatch(ctx, client, &req, Instant::now());
        pending.reply.try_take().expect("answered at once")
    }

    #[test]
    fn queueing_follows_redis() {
        let ctx = context();
        let mut c = Client::new(&ctx);
        assert_eq!(&send(&ctx, &mut c, "EXEC")[..], b"-ERR EXEC without MULTI\r\n");
        assert_eq!(
            &send(&ctx, &mut c, "DISCARD")[..],
            b"-ERR DISCARD without MULTI\r\n"
        );
        assert_eq!(&send(&ctx, &mut c, "MULTI")[..], resp::OK);
        assert_eq!(&send(&ctx, &mut c, "PING")[..], b"+QUEUED\r\n");
        assert_eq!(
            &send(&ctx, &mut c, "MULTI")[..],
            b"-ERR MULTI calls can not be nested\r\n"
        );
        assert_eq!(
            &send(&ctx, &mut c, "WATCH k")[..],
            b"-ERR WATCH inside MULTI is not allowed\r\n"
        );
        assert_eq!(&send(&ctx, &mut c, "ECHO hi")[..], b"+QUEUED\r\n");
        // Neither refusal aborted it; only proxy answers, so no backend at all.
        assert_eq!(&send(&ctx, &mut c, "EXEC")[..], b"*2\r\n+PONG\r\n$2\r\nhi\r\n");
        assert!(c.txn.is_none());
    }

    #[test]
    fn any_queueing_error_makes_exec_abort() {
        let ctx = context();
        for bad in ["NOSUCH x", "GET", "KEYS *", "EVAL s 0", "SHUTDOWN", "GET k"] {
            let mut c = Client::new(&ctx);
            assert_eq!(&send(&ctx, &mut c, "MULTI")[..], resp::OK);
            assert_eq!(&send(&ctx, &mut c, "PING")[..], b"+QUEUED\r\n");
            // "GET k": its slot has no group here, a routing error.
            assert!(resp::is_error(&send(&ctx, &mut c, bad)), "{bad}");
            assert_eq!(&send(&ctx, &mut c, "PING")[..], b"+QUEUED\r\n");
            assert_eq!(
                &send(&ctx, &mut c, "EXEC")[..],
                format!("-{EXECABORT}\r\n").as_bytes(),
                "{bad}"
            );
            assert!(c.txn.is_none(), "{bad}: the transaction is over");
        }
    }

    #[test]
    fn discard_ends_the_transaction() {
        let ctx = context();
        let mut c = Client::new(&ctx);
        assert_eq!(&send(&ctx, &mut c, "MULTI")[..], resp::OK);
        assert_eq!(&send(&ctx, &mut c, "NOSUCH")[..][..4], b"-ERR");
        assert_eq!(&send(&ctx, &mut c, "DISCARD")[..], resp::OK);
        assert!(c.txn.is_none());
        assert_eq!(&send(&ctx, &mut c, "MULTI")[..], resp::OK);
        assert_eq!(&send(&ctx, &mut c, "EXEC")[..], b"*0\r\n");
    }

    #[test]
    fn keys_of_two_slots_are_crossslot() {
        assert!(one_slot(&[Bytes::from_static(b"{a}x"), Bytes::from_static(b"{a}y")]).is_ok());
        assert_eq!(
            one_slot(&[Bytes::from_static(b"a"), Bytes::from_static(b"b")]).expect_err("two slots"),
            resp::error(CROSSSLOT)
        );
        assert_eq!(one_slot(&[]).expect("no keys"), None);
    }
}
