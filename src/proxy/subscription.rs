//! The pub/sub commands of one client: `(P|S)SUBSCRIBE`, `(P|S)UNSUBSCRIBE`,
//! `PUBLISH`, `SPUBLISH` and `PUBSUB`, and what a client keeps of its
//! subscriptions ([`Subscriptions`]).
//!
//! Subscribing goes through the worker's hub (`pubsub.rs`), which shares one
//! upstream subscription per name between all the worker's clients; the
//! client's confirmation waits for the upstream's. Replies carry this
//! client's own subscription count, as Redis's do. `PUBLISH`/`SPUBLISH` go to
//! the master of their channel's slot (a migrating slot's target; a slot about
//! to switch holds them as any request), which is where the hub subscribes.
//! `PUBSUB CHANNELS / NUMPAT / SHARDCHANNELS / NUMSUB / SHARDNUMSUB` ask every
//! master and merge.
//!
//! A RESP2 client with a subscription may only run the commands Redis allows
//! in that state ([`restricted`]); a RESP3 client may run anything, and gets
//! its messages as push frames. A client's subscriptions are released when it
//! goes ([`Subscriptions`]' `Drop`).
//!
//! Imports the proxy's context, routing, fan-out and hub.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::command::Spec;
use super::context::{Client, Context};
use super::dispatch::{Destination, destination_for};
use super::fanout::{self, Fanned};
use super::merge::{FanAnswer, array_of, failure};
use super::pubsub::{Class, Mailbox, PubSubHub};
use super::reply::{Held, Reply};
use crate::libs::hash::slot_of;
use crate::libs::protocol::Protocol;
use crate::libs::resp::{self, Request};

/// What one client is subscribed to.
pub struct Subscriptions {
    hub: Arc<PubSubHub>,
    id: u64,
    mailbox: Arc<Mailbox>,
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shards: HashSet<Bytes>,
}

impl Subscriptions {
    /// Subscriptions of every class.
    pub fn count(&self) -> usize {
        self.channels.len() + self.patterns.len() + self.shards.len()
    }

    fn set(&mut self, class: Class) -> &mut HashSet<Bytes> {
        match class {
            Class::Channel => &mut self.channels,
            Class::Pattern => &mut self.patterns,
            Class::Shard => &mut self.shards,
        }
    }

    /// The count a (un)subscribe reply of `class` carries: channels and
    /// patterns together, shard channels apart (as Redis).
    fn reply_count(&self, class: Class) -> usize {
        match class {
            Class::Shard => self.shards.len(),
            _ => self.channels.len() + self.patterns.len(),
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        let all = [
            (Class::Channel, &self.channels),
            (Class::Pattern, &self.patterns),
            (Class::Shard, &self.shards),
        ];
        for (class, names) in all {
            for name in names {
                self.hub.unsubscribe(class, name, self.id, false);
            }
        }
    }
}

/// True while `client` is a RESP2 client with a subscription.
pub fn in_subscribed_mode(client: &Client) -> bool {
    client.protocol == Protocol::Resp2 && client.pubsub.as_ref().is_some_and(|s| s.count() > 0)
}

/// The reply of a command a subscribed RESP2 client may not run (Redis's
/// words), or of `PING` in that state; `None` when the command may run.
pub fn restricted(req: &Request, spec: &Spec) -> Option<Reply> {
    match spec.name.as_str() {
        "subscribe" | "psubscribe" | "ssubscribe" | "unsubscribe" | "punsubscribe" | "sunsubscribe"
        | "quit" | "reset" => None,
        // Redis checks the arity before the context: the ordinary PING's
        // arity error, not the subscribed form.
        "ping" if req.args.len() > 2 => None,
        "ping" => {
            let mut out = BytesMut::new();
            resp::put_header(&mut out, b'*', 2);
            resp::put_bulk(&mut out, b"pong");
            resp::put_bulk(&mut out, req.args.get(1).map_or(&b""[..], |a| &a[..]));
            Some(Reply::Ready(out.freeze()))
        }
        name => Some(Reply::Ready(resp::error(&format!(
            "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
        )))),
    }
}

/// Handles one pub/sub command.
pub fn command(
    ctx: &Arc<Context>,
    client: &mut Client,
    req: &Request,
    spec: &'static Spec,
    now: Instant,
) -> Reply {
    match spec.name.as_str() {
        "subscribe" => subscribe(ctx, client, req, Class::Channel),
        "psubscribe" => subscribe(ctx, client, req, Class::Pattern),
        "ssubscribe" => subscribe(ctx, client, req, Class::Shard),
        "unsubscribe" => unsubscribe(client, req, Class::Channel),
        "punsubscribe" => unsubscribe(client, req, Class::Pattern),
        "sunsubscribe" => unsubscribe(client, req, Class::Shard),
        "publish" | "spublish" => publish(ctx, client, req, now),
        _ => pubsub(ctx, client, req, now),
    }
}

fn lease_error(ctx: &Context, now: Instant) -> Option<Reply> {
    (!ctx.lease.valid_at(now)).then_some(Reply::Hold(Held::Lease))
}

/// `(UN)SUBSCRIBE`-style confirmation: `[kind, name, count]`, a push in RESP3.
fn confirmation(out: &mut BytesMut, protocol: Protocol, kind: &[u8], name: Option<&[u8]>, count: usize) {
    let head = if protocol == Protocol::Resp3 { b'>' } else { b'*' };
    resp::put_header(out, head, 3);
    resp::put_bulk(out, kind);
    match name {
        Some(n) => resp::put_bulk(out, n),
        None if protocol == Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
        None => out.extend_from_slice(resp::NIL),
    }
    resp::put_header(out, b':', count as i64);
}

fn subscribe(ctx: &Arc<Context>, client: &mut Client, req: &Request, class: Class) -> Reply {
    watch_routes(ctx);
    let protocol = client.protocol;
    let subs = client.pubsub.get_or_insert_with(|| {
        Box::new(Subscriptions {
            hub: ctx.pubsub.clone(),
            id: client.id,
            mailbox: Mailbox::open(&client.conn),
            channels: HashSet::new(),
            patterns: HashSet::new(),
            shards: HashSet::new(),
        })
    });
    let kind = class.subscribe().to_ascii_lowercase();
    let routes = ctx.router.routes();
    let opts = ctx.router.backend_options();
    let mut out = BytesMut::new();
    let mut waits: Vec<oneshot::Receiver<()>> = Vec::new();
    for name in req.args.iter().skip(1) {
        if subs.set(class).insert(name.clone())
            && let Some(w) = ctx
                .pubsub
                .subscribe((&routes, opts), (class, name), subs.id, &subs.mailbox)
        {
            waits.push(w);
        }
        confirmation(&mut out, protocol, &kind, Some(name), subs.reply_count(class));
    }
    // A dropped waiter (the name was released meanwhile) confirms too.
    after(waits, out.freeze())
}

fn unsubscribe(client: &mut Client, req: &Request, class: Class) -> Reply {
    let protocol = client.protocol;
    let kind = class.unsubscribe().to_ascii_lowercase();
    let mut out = BytesMut::new();
    let Some(subs) = client.pubsub.as_mut() else {
        // Never subscribed: each name is confirmed with a count of 0.
        if req.args.len() == 1 {
            confirmation(&mut out, protocol, &kind, None, 0);
        }
        for name in &req.args[1..] {
            confirmation(&mut out, protocol, &kind, Some(name), 0);
        }
        return Reply::Ready(out.freeze());
    };
    let names: Vec<Bytes> = if req.args.len() > 1 {
        req.args[1..].to_vec()
    } else {
        subs.set(class).iter().cloned().collect()
    };
    if names.is_empty() {
        let count = subs.reply_count(class);
        confirmation(&mut out, protocol, &kind, None, count);
    }
    let mut waits = Vec::new();
    for name in names {
        if subs.set(class).remove(&name)
            && let Some(w) = subs.hub.unsubscribe(class, &name, subs.id, true)
        {
            waits.push(w);
        }
        confirmation(&mut out, protocol, &kind, Some(&name), subs.reply_count(class));
    }
    after(waits, out.freeze())
}

/// `out` once every receiver of `waits` fired (or was dropped).
fn after(waits: Vec<oneshot::Receiver<()>>, out: Bytes) -> Reply {
    if waits.is_empty() {
        return Reply::Ready(out);
    }
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        for w in waits {
            let _ = w.await;
        }
        let _ = tx.send(out);
    });
    Reply::Wait(rx)
}

/// Starts, once per worker, the task that re-homes the worker's
/// subscriptions after every routing change.
fn watch_routes(ctx: &Arc<Context>) {
    if ctx.pubsub.watching.swap(true, Ordering::Relaxed) {
        return;
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let mut changes = ctx.router.subscribe();
        while changes.changed().await.is_ok() {
            let routes = ctx.router.routes();
            ctx.pubsub.rehome(&routes, ctx.router.backend_options());
        }
    });
}

/// `PUBLISH` / `SPUBLISH channel message`: to the master of the channel's slot.
fn publish(ctx: &Context, client: &mut Client, req: &Request, now: Instant) -> Reply {
    if let Some(e) = lease_error(ctx, now) {
        return e;
    }
    let Some(channel) = req.args.get(1) else {
        return Reply::Ready(resp::error("ERR wrong number of arguments"));
    };
    let routes = ctx.router.routes();
    let pool = match destination_for(ctx, &routes, slot_of(channel)) {
        Ok(Destination::Pool(pool)) => pool,
        // Nothing to move for a message: it goes where subscribers listen.
        Ok(Destination::Migrate { to, .. }) => to,
        Err(reply) => return reply,
    };
    Reply::Wait(pool.send_as(client.id, client.protocol, req.raw.clone()))
}

/// `PUBSUB` subcommands, asked of every master (RESP2 replies, merged).
fn pubsub(ctx: &Arc<Context>, client: &mut Client, req: &Request, now: Instant) -> Reply {
    if let Some(e) = lease_error(ctx, now) {
        return e;
    }
    let sub = req
        .args
        .get(1)
        .map(|s| String::from_utf8_lossy(&s[..s.len().min(32)]).to_uppercase())
        .unwrap_or_default();
    let rule: fn(&str, &[FanAnswer]) -> Bytes = match sub.as_str() {
        "CHANNELS" | "SHARDCHANNELS" => union,
        "NUMPAT" => max,
        "NUMSUB" | "SHARDNUMSUB" => numsub,
        _ => {
            return fanned(fanout::one_master(
                (client.id, Protocol::Resp2),
                &ctx.router.routes(),
                req.raw.clone(),
            ));
        }
    };
    let routes = ctx.router.routes();
    let what = format!("PUBSUB {sub}");
    fanned(fanout::all_masters(
        (client.id, Protocol::Resp2),
        &routes,
        req.raw.clone(),
        &what,
        rule,
    ))
}

fn fanned(f: Fanned) -> Reply {
    match f {
        Fanned::Reply(r) => r,
        Fanned::ByKey => Reply::Ready(resp::error("ERR internal: PUBSUB has no key")),
    }
}

fn unexpected(addr: &str) -> Bytes {
    resp::error(&format!("ERR unexpected PUBSUB reply from {addr}"))
}

/// Channel names of every master, each once (a channel being re-homed is
/// subscribed on two masters for a moment).
fn union(cmd: &str, answers: &[FanAnswer]) -> Bytes {
    if let Some(e) = failure(cmd, answers) {
        return e;
    }
    let mut seen: HashSet<Bytes> = HashSet::new();
    let mut items = Vec::new();
    for (addr, r) in answers {
        let Some(part) = resp::array_items(r) else {
            return unexpected(addr);
        };
        items.extend(part.into_iter().filter(|i| seen.insert(i.clone())));
    }
    array_of(&items)
}

/// NUMPAT: every master has every pattern of every proxy, so the largest
/// count is the number of distinct patterns.
fn max(cmd: &str, answers: &[FanAnswer]) -> Bytes {
    if let Some(e) = failure(cmd, answers) {
        return e;
    }
    let mut best = 0;
    for (addr, r) in answers {
        match resp::integer(r) {
            Some(n) => best = best.max(n),
            None => return unexpected(addr),
        }
    }
    resp::int(best)
}

/// NUMSUB: `[channel, count, …]` from every master; a channel lives on one
/// master (two for a moment while re-homed), so its count is the largest.
fn numsub(cmd: &str, answers: &[FanAnswer]) -> Bytes {
    if let Some(e) = failure(cmd, answers) {
        return e;
    }
    let mut merged: Vec<(Bytes, i64)> = Vec::new();
    for (addr, r) in answers {
        let Some(items) = resp::array_items(r) else {
            return unexpected(addr);
        };
        for (i, pair) in items.chunks(2).enumerate() {
            let [name, count] = pair else {
                return unexpected(addr);
            };
            let Some(n) = resp::integer(count) else {
                return unexpected(addr);
            };
            match merged.get_mut(i) {
                Some((_, best)) => *best = (*best).max(n),
                None => merged.push((name.clone(), n)),
            }
        }
    }
    let items: Vec<Bytes> = merged
        .into_iter()
        .flat_map(|(name, n)| [name, resp::int(n)])
        .collect();
    array_of(&items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(addr: &str, reply: &'static [u8]) -> FanAnswer {
        (addr.to_string(), Bytes::from_static(reply))
    }

    #[test]
    fn numsub_takes_each_channels_largest_count() {
        let got = numsub(
            "PUBSUB NUMSUB",
            &[
                a("m1", b"*4\r\n$1\r\na\r\n:2\r\n$1\r\nb\r\n:0\r\n"),
                a("m2", b"*4\r\n$1\r\na\r\n:0\r\n$1\r\nb\r\n:1\r\n"),
            ],
        );
        assert_eq!(&got[..], b"*4\r\n$1\r\na\r\n:2\r\n$1\r\nb\r\n:1\r\n");
    }

    #[test]
    fn channels_are_listed_once() {
        let got = union(
            "PUBSUB CHANNELS",
            &[
                a("m1", b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
                a("m2", b"*1\r\n$1\r\na\r\n"),
            ],
        );
        assert_eq!(&got[..], b"*2\r\n$1\r\na\r\n$1\r\nb\r\n");
    }

    #[test]
    fn confirmations_are_pushes_in_resp3() {
        let mut out = BytesMut::new();
        confirmation(&mut out, Protocol::Resp3, b"unsubscribe", None, 0);
        assert_eq!(&out[..], b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n");
        let mut out = BytesMut::new();
        confirmation(&mut out, Protocol::Resp2, b"subscribe", Some(b"c"), 1);
        assert_eq!(&out[..], b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n");
    }
}
