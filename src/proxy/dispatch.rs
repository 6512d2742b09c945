//! Turning one client request into a [`Pending`] reply: classify, check, route,
//! and send to the right backend(s). Nothing here waits for a backend; the
//! session writer does that, in request order.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::blocked::Call;
use super::command::{self, Command, Fan, Kind, Merge, Spec};
use super::context::{Client, Context};
use super::fanout::{self, Fanned};
use super::local;
use super::reply::{Held, Merger, Part, Pending, Reply};
use super::router::{Pool, Routes, SlotRoute};
use super::{subscription, transaction};
use crate::libs::hash::slot_of;
use crate::libs::resp::{self, Request};

/// Redis Cluster's wording, which client libraries already recognise.
pub(super) const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// Handles one request, received at `start`, and returns the reply it will get.
pub fn dispatch(ctx: &Arc<Context>, client: &mut Client, req: &Request, start: Instant) -> Pending {
    if client.txn.as_ref().is_some_and(|t| t.queuing()) {
        return transaction::queue(ctx, client, req, start);
    }
    let Some(cmd) = ctx.policy.lookup(req.name()) else {
        return Pending {
            cmd: ctx.stats.unknown_cmd(),
            start,
            reply: Reply::Ready(super::policy::unknown_command(&req.args)),
        };
    };
    // Client buffers are full of replies nobody reads (`output.rs`): adding
    // to them would only grow the proxy, so new requests wait for room.
    if ctx.stats.output_memory.get() >= ctx.config.max_output_memory {
        ctx.stats
            .output_memory_refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Pending {
            cmd: cmd.id,
            start,
            reply: err("ERR proxy client buffers are over max_output_memory, retry later"),
        };
    }
    // A command renamed by the operator goes to the backends under its real name.
    let req = &*ctx.policy.real_request(req, cmd);
    let reply = dispatch_known(ctx, client, req, cmd, start);
    Pending {
        cmd: cmd.id,
        start,
        reply,
    }
}

fn err(msg: &str) -> Reply {
    Reply::Ready(resp::error(msg))
}

fn upper(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_uppercase()
}

fn dispatch_known(
    ctx: &Arc<Context>,
    client: &mut Client,
    req: &Request,
    cmd: Command,
    now: Instant,
) -> Reply {
    if !cmd.spec.arity_ok(req.args.len()) {
        return err(&format!(
            "ERR wrong number of arguments for '{}' command",
            String::from_utf8_lossy(req.name()).to_lowercase()
        ));
    }
    if !client.authed && !matches!(cmd.spec.name.as_str(), "auth" | "hello" | "quit") {
        return err("NOAUTH Authentication required.");
    }
    // A subscribed RESP2 connection only takes what Redis allows there.
    if subscription::in_subscribed_mode(client)
        && let Some(reply) = subscription::restricted(req, cmd.spec)
    {
        return reply;
    }
    match cmd.kind {
        Kind::Local => local::answer(ctx, client, req, cmd.spec),
        Kind::PubSub => subscription::command(ctx, client, req, cmd.spec, now),
        Kind::Refused => err(&format!(
            "ERR command '{}' is not allowed through reborn proxy",
            upper(req.name())
        )),
        Kind::Unsupported => err(&format!(
            "ERR command '{}' is not supported by reborn proxy yet",
            upper(req.name())
        )),
        // Slot traffic needs a live ZooKeeper lease (see lease.rs): it waits
        // for one. Local commands keep answering, so health checks see a live,
        // fenced proxy.
        Kind::Split(_) | Kind::Blocking | Kind::Forward if !ctx.lease.valid_at(now) => {
            Reply::Hold(Held::Lease)
        }
        Kind::Transaction => transaction::command(ctx, client, req, cmd.spec, now),
        Kind::Fanout(fan) => match fanout::dispatch(ctx, client, req, fan, now) {
            Fanned::Reply(reply) => reply,
            // EVAL and friends with keys, MEMORY USAGE.
            Fanned::ByKey => forward(ctx, client, req, cmd.spec, fan == Fan::Eval),
        },
        Kind::Split(merge) => split(ctx, client, req, merge),
        // XREAD and XREADGROUP block only with a BLOCK option; without it
        // they are ordinary reads and share connections like any other. One
        // rule with the stats, which keep a blocked wait out of latency.
        Kind::Blocking if command::may_block(cmd.id, &req.args) => blocking(ctx, client, req, cmd.spec, now),
        Kind::Blocking | Kind::Forward => forward(ctx, client, req, cmd.spec, false),
    }
}

/// The single slot all of the request's keys hash to. Requests without keys
/// (OBJECT HELP, say) go to slot 0, as in Codis: deterministic, and the slot of
/// the empty hash key. Keyless scripts never get here (`keyless_script.rs`).
fn request_slot(spec: &'static Spec, req: &Request) -> Result<u16, Reply> {
    let spec = spec.resolve(&req.args);
    let mut slot: Option<u16> = None;
    for i in spec.key_indices(&req.args) {
        let Some(key) = req.args.get(i) else { continue };
        let s = slot_of(key);
        match slot {
            Some(prev) if prev != s => return Err(err(CROSSSLOT)),
            _ => slot = Some(s),
        }
    }
    let slot = slot.unwrap_or(0);
    if let Some(refusal) = command::sort_pattern_refusal(&spec.name, &req.args, slot) {
        return Err(err(&refusal));
    }
    Ok(slot)
}

/// Where the requests of one slot go.
#[derive(Clone, Copy)]
pub(super) enum Destination<'a> {
    /// Straight to this pool.
    Pool(&'a Arc<Pool>),
    /// Keys move from `from` to `to` first (migrate on access).
    Migrate {
        from: &'a Arc<Pool>,
        to: &'a Arc<Pool>,
        /// The routing epoch (see `migrate::MovedKeys`).
        epoch: u64,
    },
}

impl<'a> Destination<'a> {
    /// Identity for grouping keys of a split command.
    fn id(&self) -> (*const Pool, *const Pool) {
        match self {
            Destination::Pool(p) => (Arc::as_ptr(p), std::ptr::null()),
            Destination::Migrate { from, to, .. } => (Arc::as_ptr(to), Arc::as_ptr(from)),
        }
    }

    /// Sends `req`, whose keys are `keys`, to this target; true if its
    /// reply is counted against the client's output (see `output.rs`: a
    /// request of a migrating slot waits for its keys to move, one at a
    /// time, so it is not).
    fn send(
        &self,
        ctx: &Context,
        client: &mut Client,
        keys: Vec<Bytes>,
        req: Bytes,
    ) -> (oneshot::Receiver<Bytes>, bool) {
        let protocol = client.protocol;
        match self {
            Destination::Pool(p) => match p.send_counted((client.id, protocol), req, &client.output, false) {
                Ok(rx) => (rx, true),
                Err(busy) => {
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send(answered_busy(ctx, busy));
                    (rx, false)
                }
            },
            Destination::Migrate { from, to, epoch } => {
                let rx = client
                    .migrator(ctx)
                    .send((from, to), *epoch, (keys, req), protocol);
                (rx, false)
            }
        }
    }

    /// [`send`](Self::send) as a whole reply.
    fn reply(&self, ctx: &Context, client: &mut Client, keys: Vec<Bytes>, req: Bytes) -> Reply {
        match self.send(ctx, client, keys, req) {
            (rx, true) => Reply::Counted(rx),
            (rx, false) => Reply::Wait(rx),
        }
    }
}

/// Where requests for `slot` go, or the error they get.
pub(super) fn destination_for<'a>(
    ctx: &Context,
    routes: &'a Routes,
    slot: u16,
) -> Result<Destination<'a>, Reply> {
    if !routes.online {
        return Err(err(&format!(
            "ERR proxy {} is offline (reborn admin proxy-online {})",
            ctx.proxy_id, ctx.proxy_id
        )));
    }
    match routes.get(slot) {
        SlotRoute::Serve { pool, .. } => Ok(Destination::Pool(pool)),
        SlotRoute::Migrate { from, to } => Ok(Destination::Migrate {
            from,
            to,
            epoch: routes.epoch,
        }),
        SlotRoute::Unassigned => Err(err(&format!("ERR slot {slot} is not assigned to any group"))),
        SlotRoute::NoMaster(g) => Err(err(&format!("ERR group {g} of slot {slot} has no master"))),
        SlotRoute::Switching { .. } => Err(Reply::Hold(Held::Slot(slot))),
    }
}

/// Sends a request routed by its keys; `script` if it runs one (see
/// `backend.rs`: a script that runs long makes its connection answer other
/// clients `-BUSY`).
fn forward(ctx: &Context, client: &mut Client, req: &Request, spec: &'static Spec, script: bool) -> Reply {
    let slot = match request_slot(spec, req) {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    let routes = ctx.router.routes();
    match destination_for(ctx, &routes, slot) {
        // The common case, without collecting the keys.
        Ok(Destination::Pool(pool)) => {
            let sent = pool.send_counted(
                (client.id, client.protocol),
                req.raw.clone(),
                &client.output,
                script,
            );
            match sent {
                Ok(rx) => Reply::Counted(rx),
                Err(busy) => Reply::Ready(answered_busy(ctx, busy)),
            }
        }
        Ok(target) => target.reply(ctx, client, spec.keys(&req.args), req.raw.clone()),
        Err(reply) => reply,
    }
}

/// The proxy's own `-BUSY` for a request it did not send (see `backend.rs`),
/// counted.
fn answered_busy(ctx: &Context, busy: Bytes) -> Bytes {
    ctx.stats
        .busy_replies
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    busy
}

/// A blocking command: on the client's dedicated connection to the slot's
/// server, watched so a slot switch can interrupt and re-issue it; for a slot
/// in `migrate`, its keys move to the target first and it runs there (see
/// `blocked.rs`).
fn blocking(
    ctx: &Arc<Context>,
    client: &mut Client,
    req: &Request,
    spec: &'static Spec,
    now: Instant,
) -> Reply {
    let slot = match request_slot(spec, req) {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    let protocol = client.protocol;
    let call = Call::new(
        ctx,
        (client.id, protocol, client.lane()),
        slot,
        req,
        spec.keys(&req.args),
        now,
    );
    let routes = ctx.router.routes();
    let pool = match destination_for(ctx, &routes, slot) {
        Ok(Destination::Pool(pool)) => pool,
        Ok(Destination::Migrate { .. }) => return Reply::Wait(call.start_moving()),
        Err(reply) => return reply,
    };
    let line = match client.dedicated.entry(pool.addr().to_string()) {
        Entry::Occupied(d) if d.get().protocol == protocol => d.get().line.clone(),
        // After a HELLO that switched protocols (nothing is out on it then).
        Entry::Occupied(mut d) => match ctx.spare_lines.take(ctx, pool.addr(), protocol) {
            Ok(new) => {
                d.insert(new);
                d.get().line.clone()
            }
            Err(reply) => return Reply::Ready(reply),
        },
        // A connection opened ahead of need (`pinned::SpareLines`): the call
        // goes out at once, not after a connect.
        Entry::Vacant(vacant) => match ctx.spare_lines.take(ctx, pool.addr(), protocol) {
            Ok(d) => vacant.insert(d).line.clone(),
            Err(reply) => return Reply::Ready(reply),
        },
    };
    Reply::Wait(call.start_on(&line, req.raw.clone()))
}

/// MGET, MSET, DEL, UNLINK, EXISTS, TOUCH: one sub-request per backend (not per
/// key), merged back into one reply.
fn split(ctx: &Context, client: &mut Client, req: &Request, merge: Merge) -> Reply {
    // MSET takes key-value pairs; the others take keys.
    let stride = if merge == Merge::Ok { 2 } else { 1 };
    if merge == Merge::Ok && req.args.len().is_multiple_of(2) {
        return err("ERR wrong number of arguments for 'mset' command");
    }
    let routes = ctx.router.routes();
    // Targets in first-seen order, each with the client positions of its keys.
    let mut groups: Vec<(Destination, Vec<usize>)> = Vec::new();
    let mut index: HashMap<(*const Pool, *const Pool), usize> = HashMap::new();
    for (n, i) in (1..req.args.len()).step_by(stride).enumerate() {
        let target = match destination_for(ctx, &routes, slot_of(&req.args[i])) {
            Ok(t) => t,
            Err(reply) => return reply,
        };
        let at = *index.entry(target.id()).or_insert_with(|| {
            groups.push((target, Vec::new()));
            groups.len() - 1
        });
        if let Some(g) = groups.get_mut(at) {
            g.1.push(n);
        }
    }
    let key_at = |n: usize| req.args[1 + n * stride].clone();
    if let [(target, positions)] = groups.as_slice() {
        // Every key on one target: forward the request untouched.
        let keys = positions.iter().map(|&n| key_at(n)).collect();
        return target.reply(ctx, client, keys, req.raw.clone());
    }
    let total = (req.args.len() - 1) / stride;
    let mut parts = Vec::with_capacity(groups.len());
    for (target, positions) in groups {
        let mut args: Vec<&[u8]> = Vec::with_capacity(1 + positions.len() * stride);
        args.push(req.name());
        for &n in &positions {
            let first = 1 + n * stride;
            args.extend(req.args[first..first + stride].iter().map(|a| a.as_ref()));
        }
        let keys = positions.iter().map(|&n| key_at(n)).collect();
        let (rx, counted) = target.send(ctx, client, keys, resp::encode_array(&args));
        parts.push(Part {
            rx,
            counted,
            got: None,
            positions,
        });
    }
    Reply::Merge(Box::new(Merger { merge, parts, total }))
}
