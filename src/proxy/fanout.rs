//! Cluster-wide commands: who is asked, and which merge rule (`merge.rs`)
//! makes their replies one.
//!
//! | command | asked | reply |
//! |---|---|---|
//! | FLUSHALL, FLUSHDB | every master | `+OK` if all are |
//! | DBSIZE / KEYS | every master | summed / concatenated |
//! | RANDOMKEY | every master | a random master's non-nil key |
//! | TIME, CONFIG GET, FUNCTION LIST / DUMP | one master | its reply |
//! | LASTSAVE | every master | the oldest |
//! | CONFIG SET / RESETSTAT | every server, replicas too | `+OK` if all are |
//! | SCRIPT LOAD, FUNCTION LOAD | every master | the common reply |
//! | SCRIPT EXISTS | every master | 1 where all have it |
//! | SCRIPT FLUSH, FUNCTION DELETE / FLUSH / RESTORE | every master | `+OK` if all are |
//! | WAIT | every master, on a connection of its own (`wait.rs`) | the minimum |
//! | MEMORY USAGE, EVAL … with keys | by key | |
//! | INFO | `info.rs` | |
//! | SCAN | `scan.rs` | |
//!
//! "Every master" is the distinct master of each group in the routing
//! snapshot (`Routes::groups`: owners of a slot and sources of a migrating
//! one). Every request is sent before `dispatch` returns, on the client's own
//! connection of each pool, so it is ordered after the client's earlier
//! requests to the same backends; only the merge waits, in a task. A dead
//! backend answers at once with an `-ERR` naming it (`backend.rs`), and the
//! merge names it again.
//!
//! Imports the proxy's routing, reply and merge pieces and `libs::resp`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::backend::BackendConn;
use super::command::Fan;
use super::context::{Client, Context};
use super::merge::{self, FanAnswer};
use super::reply::{Held, Reply, lost};
use super::router::{Pool, Routes};
use super::{info, keyless_script, scan, wait};
use crate::libs::protocol::Protocol;
use crate::libs::resp::{self, Request};

/// What the proxy does with a fanned-out request.
pub enum Fanned {
    /// This reply.
    Reply(Reply),
    /// Route it by its keys like any other command (MEMORY USAGE, EVAL with keys).
    ByKey,
}

fn ready(b: Bytes) -> Fanned {
    Fanned::Reply(Reply::Ready(b))
}

fn err(msg: &str) -> Fanned {
    ready(resp::error(msg))
}

/// True for a request of `fan` that is routed by its keys after all: EVAL and
/// friends with keys, MEMORY USAGE (a transaction queues these as any keyed
/// command).
pub fn by_key(req: &Request, fan: Fan) -> bool {
    let word = |i: usize| req.args.get(i).map(|a| a.as_ref());
    match fan {
        Fan::Eval => word(2) != Some(b"0"),
        Fan::Memory => word(1).is_some_and(|w| w.eq_ignore_ascii_case(b"USAGE")),
        _ => false,
    }
}

/// Handles one fanned-out request, received at `now`.
pub fn dispatch(ctx: &Arc<Context>, client: &mut Client, req: &Request, fan: Fan, now: Instant) -> Fanned {
    // INFO reads no key and is what health checks read: it answers even on a
    // fenced proxy. Everything else follows the rules of slot traffic.
    if fan == Fan::Info {
        return Fanned::Reply(info::dispatch(ctx, client, req));
    }
    if !ctx.lease.valid_at(now) {
        return Fanned::Reply(Reply::Hold(Held::Lease));
    }
    let routes = ctx.router.routes();
    if !routes.online {
        return err(&format!(
            "ERR proxy {} is offline (reborn admin proxy-online {})",
            ctx.proxy_id, ctx.proxy_id
        ));
    }
    let word = |i: usize| {
        let w = req.args.get(i).map_or(&b""[..], |a| &a[..a.len().min(32)]);
        String::from_utf8_lossy(w).to_uppercase()
    };
    let name = word(0);
    // Replies passed on as they are come in the client's protocol.
    let who = (client.id, client.protocol);
    if fan == Fan::Eval {
        // EVAL with keys is common (locks): no more work than the check.
        return keyless(who, &routes, req, &name);
    }
    let sub = word(1);
    let full = format!("{name} {sub}");
    let to_all = |rule: fn(&str, &[FanAnswer]) -> Bytes, what: &str| {
        all_masters(who, &routes, req.raw.clone(), what, rule)
    };
    match fan {
        Fan::Info => Fanned::Reply(info::dispatch(ctx, client, req)),
        Fan::Flush => to_all(merge::all_ok, &name),
        Fan::DbSize => to_all(merge::sum, &name),
        Fan::Keys => to_all(merge::concat, &name),
        Fan::RandomKey => to_all(merge::random_non_nil, &name),
        Fan::LastSave => to_all(merge::min, &name),
        Fan::Time => one_master(who, &routes, req.raw.clone()),
        Fan::Scan => Fanned::Reply(scan::dispatch(client.id, req, &routes)),
        Fan::Wait => wait(ctx, client.id, &routes, req),
        Fan::Memory if sub == "USAGE" => Fanned::ByKey,
        Fan::Memory => refused(&full, "only MEMORY USAGE key is"),
        Fan::Eval => keyless(who, &routes, req, &name),
        Fan::Config => match sub.as_str() {
            "GET" | "HELP" => one_master(who, &routes, req.raw.clone()),
            "SET" => match config_set_refusal(&req.args) {
                Some(refusal) => err(&refusal),
                None => every_server(ctx, client.id, &routes, req.raw.clone(), &full),
            },
            "RESETSTAT" => {
                // The proxy's own counters (INFO stats) too, as one Redis would.
                ctx.stats.reset_counters();
                every_server(ctx, client.id, &routes, req.raw.clone(), &full)
            }
            _ => refused(&full, "only CONFIG GET, SET and RESETSTAT are"),
        },
        Fan::Script => match sub.as_str() {
            "LOAD" => to_all(merge::same, &full),
            "EXISTS" => to_all(merge::all_ones, &full),
            "FLUSH" => to_all(merge::all_ok, &full),
            "KILL" => kill(ctx, &routes, req.raw.clone(), &full),
            "HELP" => one_master(who, &routes, req.raw.clone()),
            _ => refused(&full, "only SCRIPT LOAD, EXISTS, FLUSH and KILL are"),
        },
        Fan::Function => match sub.as_str() {
            "LOAD" => to_all(merge::same, &full),
            "DELETE" | "FLUSH" | "RESTORE" => to_all(merge::all_ok, &full),
            "KILL" => kill(ctx, &routes, req.raw.clone(), &full),
            "LIST" | "DUMP" | "HELP" => one_master(who, &routes, req.raw.clone()),
            _ => refused(
                &full,
                "only FUNCTION LOAD, DELETE, FLUSH, RESTORE, KILL, LIST and DUMP are",
            ),
        },
    }
}

/// The server parameters a client of the proxy may not set: they change how
/// the proxy, the replicas and the dashboard reach the servers, or what the
/// servers write where. Set on every server at once (as CONFIG SET goes), a
/// `requirepass` locked the proxy out at its next reconnect, with every
/// health check still saying "up", and left the replicas without the
/// `masterauth` to resync; `dir` with `dbfilename` is the classic way to
/// make a redis-server write a file of one's choosing. An operator sets
/// these on each redis-server (and in reborn's config), not through it.
const CONFIG_SET_REFUSED: &[&str] = &[
    "requirepass",
    "masterauth",
    "masteruser",
    "port",
    "bind",
    "bind-source-addr",
    "unixsocket",
    "unixsocketperm",
    "tls-port",
    "tls-replication",
    "protected-mode",
    "dir",
    "dbfilename",
    "appendfilename",
    "appenddirname",
    "logfile",
    "replica-announce-ip",
    "replica-announce-port",
    "replica-read-only",
    "slave-read-only",
];

/// Why `CONFIG SET` with `args` is refused, if it is.
fn config_set_refusal(args: &[Bytes]) -> Option<String> {
    // CONFIG SET name value [name value …]
    let names = args.iter().skip(2).step_by(2);
    let refused: Vec<String> = names
        .map(|n| String::from_utf8_lossy(n).to_ascii_lowercase())
        .filter(|n| CONFIG_SET_REFUSED.contains(&n.as_str()))
        .collect();
    (!refused.is_empty()).then(|| {
        format!(
            "ERR CONFIG SET {} is not allowed through reborn proxy: it changes how the proxy, the replicas or the dashboard reach the servers, or where they write; set it on each redis-server (and the password in reborn's config)",
            refused.join(", ")
        )
    })
}

fn refused(what: &str, allowed: &str) -> Fanned {
    err(&format!(
        "ERR command '{}' is not allowed through reborn proxy ({allowed})",
        what.trim()
    ))
}

/// The distinct master pools of the snapshot's groups, or the error of a
/// group without a master.
fn masters(routes: &Routes) -> Result<Vec<Arc<Pool>>, Fanned> {
    let mut out: Vec<Arc<Pool>> = Vec::with_capacity(routes.groups.len());
    for g in &routes.groups {
        let Some(pool) = &g.master else {
            return Err(err(&format!("ERR group {} has no master", g.id)));
        };
        if !out.iter().any(|p| Arc::ptr_eq(p, pool)) {
            out.push(pool.clone());
        }
    }
    Ok(out)
}

/// How long the connection of a KILL may take to open and authenticate: a
/// busy server answers `AUTH` only past its `busy-reply-threshold`.
const KILL_HANDSHAKE: Duration = Duration::from_secs(10);

/// SCRIPT KILL, FUNCTION KILL: every master, each on a connection opened for
/// it. The busy script may run on a shared connection, and Redis reads
/// nothing more from the connection whose script runs: a KILL queued behind
/// it there would wait for ever.
fn kill(ctx: &Context, routes: &Routes, raw: Bytes, what: &str) -> Fanned {
    let pools = match masters(routes) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut opts = ctx.router.backend_options().clone();
    opts.track_id = false;
    // Sent at once: a busy server answers nothing, the handshake included,
    // before its busy-reply-threshold (5 s), and then it takes the KILL.
    opts.probe = false;
    opts.connect_timeout = opts.connect_timeout.max(KILL_HANDSHAKE);
    let parts = pools
        .iter()
        .map(|p| {
            // Dropped after the send: it closes once it has answered.
            let rx = BackendConn::spawn(p.addr(), opts.clone()).send(raw.clone());
            (p.addr().to_string(), rx)
        })
        .collect();
    Fanned::Reply(gather(parts, what.trim().to_string(), merge::any_ok))
}

/// Sends `raw` to every master and merges their replies with `rule`.
pub(super) fn all_masters(
    (client, protocol): (u64, Protocol),
    routes: &Routes,
    raw: Bytes,
    what: &str,
    rule: fn(&str, &[FanAnswer]) -> Bytes,
) -> Fanned {
    let pools = match masters(routes) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let parts = pools
        .iter()
        .map(|p| (p.addr().to_string(), p.send_as(client, protocol, raw.clone())))
        .collect();
    Fanned::Reply(gather(parts, what.trim().to_string(), rule))
}

/// The first group's master answers for the cluster (TIME, CONFIG GET, …), in
/// the client's protocol (CONFIG GET is a map in RESP3).
pub(super) fn one_master((client, protocol): (u64, Protocol), routes: &Routes, raw: Bytes) -> Fanned {
    match masters(routes) {
        Ok(pools) => match pools.first() {
            Some(p) => Fanned::Reply(Reply::Wait(p.send_as(client, protocol, raw))),
            None => err("ERR no group serves a slot yet"),
        },
        Err(e) => e,
    }
}

/// Waits for every part, then answers with `rule`'s merge.
fn gather(
    parts: Vec<(String, oneshot::Receiver<Bytes>)>,
    what: String,
    rule: fn(&str, &[FanAnswer]) -> Bytes,
) -> Reply {
    let (mut tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let answers = async {
            let mut answers = Vec::with_capacity(parts.len());
            for (addr, part) in parts {
                answers.push((addr, part.await.unwrap_or_else(|_| lost())));
            }
            answers
        };
        // A client that leaves stops the wait: its parts are dropped, which
        // ends a WAIT on its own connection (`wait.rs`).
        let answers = tokio::select! {
            a = answers => a,
            _ = tx.closed() => return,
        };
        let _ = tx.send(rule(&what, &answers));
    });
    Reply::Wait(rx)
}

/// CONFIG SET / RESETSTAT: every server of every group, replicas included.
/// Masters the router uses get it on their pool; any other server on a
/// connection opened for this request (the router keeps none to replicas).
fn every_server(ctx: &Context, client: u64, routes: &Routes, raw: Bytes, what: &str) -> Fanned {
    let addrs: Vec<&String> = routes.servers.iter().flat_map(|(_, s)| s).collect();
    if addrs.is_empty() {
        return err("ERR no redis-server in the cluster yet");
    }
    let mut opts = ctx.router.backend_options().clone();
    opts.track_id = false;
    let parts = addrs
        .into_iter()
        .map(|addr| {
            let rx = match ctx.router.pool(addr) {
                Some(pool) => pool.send(client, raw.clone()),
                // Dropped after the send: the connection closes once it answered.
                None => BackendConn::spawn(addr, opts.clone()).send(raw.clone()),
            };
            (addr.clone(), rx)
        })
        .collect();
    Fanned::Reply(gather(parts, what.trim().to_string(), merge::all_ok))
}

/// WAIT numreplicas timeout: every master, the minimum (see `wait.rs`).
fn wait(ctx: &Context, client: u64, routes: &Routes, req: &Request) -> Fanned {
    let pools = match masters(routes) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut opts = ctx.router.backend_options().clone();
    opts.track_id = false;
    let parts = wait::start(client, &pools, &opts, &req.raw);
    Fanned::Reply(gather(parts, "WAIT".into(), merge::min))
}

/// EVAL, EVALSHA, FCALL (and `_RO`): by key, unless `numkeys` is 0; then only a
/// script that cannot touch data runs, on one master (`keyless_script.rs`).
fn keyless(who: (u64, Protocol), routes: &Routes, req: &Request, name: &str) -> Fanned {
    let numkeys = req
        .args
        .get(2)
        .and_then(|n| std::str::from_utf8(n).ok()?.parse::<i64>().ok());
    if numkeys != Some(0) {
        // With keys, or a bad count the server itself reports.
        return Fanned::ByKey;
    }
    let has_text = matches!(name, "EVAL" | "EVAL_RO");
    if has_text && req.args.get(1).is_some_and(|s| keyless_script::is_data_free(s)) {
        return one_master(who, routes, req.raw.clone());
    }
    err(&keyless_script::refusal(name))
}
