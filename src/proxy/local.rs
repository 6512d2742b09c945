//! Commands the proxy answers itself: PING, ECHO, QUIT, SELECT, AUTH, HELLO
//! and CLIENT, and the proxy's own INFO sections (`info.rs` merges them with
//! the backends'). They touch no backend, so they keep working while groups
//! are down, which is what a client's health check should see. The
//! exceptions describe the servers: COMMAND, which one of them answers, and
//! HELLO's `version`, which is theirs (asked once, then remembered).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::auth_throttle::Gate;
use super::client_command;
use super::command::Spec;
use super::context::{Client, Context};
use super::info;
use super::reply::Reply;
use crate::libs::protocol::Protocol;
use crate::libs::resp::{self, Request};

/// Answers a local command.
pub fn answer(ctx: &Context, client: &mut Client, req: &Request, spec: &'static Spec) -> Reply {
    let args = &req.args;
    let arg = |i: usize| args.get(i).map(|a| a.as_ref()).unwrap_or(b"");
    let ready = Reply::Ready;
    match spec.name.as_str() {
        // Redis's table gives PING arity -1; the command itself takes at most
        // one argument, so its error comes from here, also inside MULTI
        // (queued, then the error in EXEC's reply, as in Redis).
        "ping" if args.len() > 2 => ready(resp::error("ERR wrong number of arguments for 'ping' command")),
        "ping" if args.len() > 1 => ready(resp::bulk(arg(1))),
        "ping" => ready(Bytes::from_static(b"+PONG\r\n")),
        "echo" => ready(resp::bulk(arg(1))),
        "quit" => Reply::Close(Bytes::from_static(resp::OK)),
        "select" => match arg(1) {
            b"0" => ready(Bytes::from_static(resp::OK)),
            _ => ready(resp::error(
                "ERR DB index is out of range (reborn proxy serves db 0 only)",
            )),
        },
        "auth" => gated(ctx, client, |ctx, client| {
            let reply = auth(ctx, client, &args[1..]);
            throttled(ctx, client, reply)
        }),
        "hello" if args.iter().skip(2).any(|a| a.eq_ignore_ascii_case(b"AUTH")) => {
            gated(ctx, client, |ctx, client| hello_answer(ctx, client, args))
        }
        "hello" => hello_answer(ctx, client, args),
        "client" => client_command::answer(ctx, client, args),
        "command" => command_cmd(ctx, client, req),
        _ => ready(resp::error("ERR internal: not a local command")),
    }
}

fn hello_answer(ctx: &Context, client: &mut Client, args: &[Bytes]) -> Reply {
    match hello(ctx, client, args) {
        Err(refusal) => throttled(ctx, client, refusal),
        Ok(()) => {
            // A success starts the AUTH throttle over, as in `throttled`.
            client.auth_failures = 0;
            hello_reply(ctx, client)
        }
    }
}

/// Makes an attempt to authenticate when the client's address may
/// (`auth_throttle.rs`): now, or checked now and answered at the address's
/// next slot (with the connection's later requests waiting for it), or
/// refused unchecked.
fn gated(ctx: &Context, client: &mut Client, attempt: impl FnOnce(&Context, &mut Client) -> Reply) -> Reply {
    match ctx.auth_throttle.reserve(client.conn.addr.ip(), Instant::now()) {
        Gate::Open => attempt(ctx, client),
        Gate::Full => {
            tracing::debug!(client = client.id, addr = %client.conn.addr, "AUTH refused unchecked: too many attempts from this address");
            Reply::Close(resp::error(
                "ERR too many failed AUTH attempts from this address, retry later",
            ))
        }
        Gate::At(at) => {
            let reply = attempt(ctx, client);
            answer_at(client, reply, at)
        }
    }
}

/// `reply`, delivered at `at`; the client's next request waits until then
/// too (and for the wait `throttled` may have set), so an attempt that
/// succeeded runs nothing before its slot.
fn answer_at(client: &mut Client, mut reply: Reply, at: Instant) -> Reply {
    if matches!(reply, Reply::Close(_)) {
        return reply;
    }
    let earlier = client.barrier.take();
    let (go, barrier) = oneshot::channel();
    client.barrier = Some(barrier);
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        tokio::time::sleep_until(at.into()).await;
        if let Some(earlier) = earlier {
            let _ = earlier.await;
        }
        let _ = tx.send(reply.take().await);
        let _ = go.send(());
    });
    Reply::Wait(rx)
}

/// Failed `AUTH`s a connection may make; the last one closes it.
pub const MAX_AUTH_FAILURES: u32 = 10;

/// Slows down password guessing: after a failed `AUTH` (or `HELLO … AUTH`),
/// the connection's next request waits 100 ms, doubling per failure up to
/// 1 s (the first failure is free: a typo), and the tenth failure closes the
/// connection. A success starts over.
fn throttled(ctx: &Context, client: &mut Client, reply: Bytes) -> Reply {
    if !reply.starts_with(b"-WRONGPASS") {
        if client.authed {
            client.auth_failures = 0;
        }
        return Reply::Ready(reply);
    }
    client.auth_failures += 1;
    ctx.auth_throttle.failed(client.conn.addr.ip(), Instant::now());
    ctx.stats
        .auth_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if client.auth_failures >= MAX_AUTH_FAILURES {
        tracing::warn!(
            client = client.id,
            failures = client.auth_failures,
            "too many failed AUTHs: closing"
        );
        return Reply::Close(resp::error(
            "ERR too many failed AUTH attempts, closing the connection",
        ));
    }
    if client.auth_failures >= 2 {
        let delay = (Duration::from_millis(100) * (1 << (client.auth_failures - 2).min(4)))
            .min(Duration::from_secs(1));
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(());
        });
        client.barrier = Some(rx);
    }
    Reply::Ready(reply)
}

/// Constant-time comparison, so response timing does not leak the password.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        let y = b.get(i % b.len().max(1)).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// AUTH password, or AUTH user password (Redis 6 form), against the proxy's
/// one user, `default`, as Redis 7 checks them: with a password configured
/// (`auth`), it must match; without one, `default` is Redis's `nopass` user,
/// whom any password logs in, and only the one-argument form is an error.
/// A failed AUTH leaves an authenticated connection authenticated, as in
/// Redis.
fn auth(ctx: &Context, client: &mut Client, args: &[Bytes]) -> Bytes {
    let (user, password) = match args {
        [pw] => (None, pw),
        [user, pw] => (Some(user), pw),
        _ => return resp::error("ERR syntax error"),
    };
    if user.is_some_and(|u| u.as_ref() != b"default") {
        return resp::error(WRONGPASS);
    }
    let expected = ctx.config.auth.as_bytes();
    if expected.is_empty() {
        if user.is_none() {
            return resp::error(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            );
        }
        client.authed = true;
        return Bytes::from_static(resp::OK);
    }
    if same_secret(password, expected) {
        client.authed = true;
        Bytes::from_static(resp::OK)
    } else {
        resp::error(WRONGPASS)
    }
}

/// An integer as Redis's `string2ll` reads one: an optional `-`, then digits
/// without a leading zero (`0` alone aside), within 64 bits. Stricter than
/// Rust's parser, which takes `+3` and `03`.
fn redis_int(s: &[u8]) -> Option<i64> {
    if s == b"0" {
        return Some(0);
    }
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    match digits.first() {
        Some(b'1'..=b'9') if digits.iter().all(u8::is_ascii_digit) => {
            std::str::from_utf8(s).ok()?.parse().ok()
        }
        _ => None,
    }
}

/// HELLO [2|3 [AUTH user pass] [SETNAME name]]. `HELLO 3` switches the client
/// to RESP3: from then on its requests go to backend connections that speak
/// RESP3 too (see `router::Pool`), and the session lets requests still out on
/// RESP2 connections finish first (`Client::fence`).
fn hello(ctx: &Context, client: &mut Client, args: &[Bytes]) -> Result<(), Bytes> {
    let mut protocol = client.protocol;
    if let Some(ver) = args.get(1) {
        protocol = match redis_int(ver) {
            Some(2) => Protocol::Resp2,
            Some(3) => Protocol::Resp3,
            Some(_) => return Err(resp::error("NOPROTO unsupported protocol version")),
            None => {
                return Err(resp::error(
                    "ERR Protocol version is not an integer or out of range",
                ));
            }
        };
    }
    let mut i = 2;
    while i < args.len() {
        let opt = &args[i];
        if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
            let reply = auth(ctx, client, &args[i + 1..i + 3]);
            if resp::is_error(&reply) {
                return Err(reply);
            }
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() {
            let reply = client_command::set_name(&client.conn, &args[i + 1]);
            if resp::is_error(&reply) {
                return Err(reply);
            }
            i += 2;
        } else {
            // Redis prints the option as a C string: up to a NUL byte.
            let opt = opt.split(|&b| b == 0).next().unwrap_or_default();
            let mut msg = b"ERR Syntax error in HELLO option '".to_vec();
            msg.extend_from_slice(opt);
            msg.push(b'\'');
            return Err(resp::error_bytes(&msg));
        }
    }
    if !client.authed {
        return Err(resp::error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        ));
    }
    if protocol != client.protocol {
        client.protocol = protocol;
        client.fence = true;
        client.conn.set_protocol(protocol);
    }
    Ok(())
}

/// HELLO's reply, in the client's (new) protocol. `version` is the masters'
/// Redis version (`server_version.rs`): from memory, or asked of them the
/// first time (within `info::BACKEND_WAIT`; reborn's own version if none
/// answers). Inside MULTI the reply must be ready at once: there, a proxy that
/// never heard the version says its own.
fn hello_reply(ctx: &Context, client: &Client) -> Reply {
    let (protocol, id) = (client.protocol, client.id);
    let in_multi = client.txn.as_ref().is_some_and(|t| t.queuing());
    match ctx.server_version.get() {
        Some((version, ask)) => {
            if ask {
                tokio::spawn(info::learn_server_version(ctx, id));
            }
            Reply::Ready(hello_map(protocol, id, &version))
        }
        None if in_multi => Reply::Ready(hello_map(protocol, id, env!("CARGO_PKG_VERSION"))),
        None => {
            let learn = info::learn_server_version(ctx, id);
            let (tx, rx) = oneshot::channel();
            tokio::spawn(async move {
                let version = learn.await;
                let version = version.as_deref().unwrap_or(env!("CARGO_PKG_VERSION"));
                let _ = tx.send(hello_map(protocol, id, version));
            });
            Reply::Wait(rx)
        }
    }
}

/// HELLO's map: Redis's fields, the masters' `version`, `mode` `proxy`.
fn hello_map(protocol: Protocol, id: u64, version: &str) -> Bytes {
    let mut out = BytesMut::new();
    protocol.put_map_header(&mut out, 7);
    for (k, v) in [("server", "reborn"), ("version", version)] {
        resp::put_bulk(&mut out, k.as_bytes());
        resp::put_bulk(&mut out, v.as_bytes());
    }
    resp::put_bulk(&mut out, b"proto");
    out.extend_from_slice(&resp::int(protocol.number()));
    resp::put_bulk(&mut out, b"id");
    out.extend_from_slice(&resp::int(id as i64));
    for (k, v) in [("mode", "proxy"), ("role", "master")] {
        resp::put_bulk(&mut out, k.as_bytes());
        resp::put_bulk(&mut out, v.as_bytes());
    }
    resp::put_bulk(&mut out, b"modules");
    out.extend_from_slice(b"*0\r\n");
    out.freeze()
}

/// COMMAND in all its forms, answered by a master: the servers' own reply is
/// Redis 7's whole description of each command (flags, ACL categories, tips,
/// key specs, subcommands, and the docs of COMMAND DOCS) in the client's
/// protocol, which a table kept by the proxy would have to copy and keep in
/// step with the servers' version. The proxy's table (`commands.json`) stays
/// what routes requests. Any master will do, so the first that is up.
fn command_cmd(ctx: &Context, client: &Client, req: &Request) -> Reply {
    let routes = ctx.router.routes();
    let mut masters = routes.groups.iter().filter_map(|g| g.master.as_ref());
    let Some(first) = masters.clone().next() else {
        return Reply::Ready(resp::error("ERR no group serves a slot yet"));
    };
    let pool = masters.find(|p| p.up_count() > 0).unwrap_or(first);
    Reply::Wait(pool.send_as(client.id, client.protocol, req.raw.clone()))
}

/// The proxy's own INFO sections, as `(title, lines)`: each line ends in CRLF
/// and the title has no `# `. `info.rs` adds the backends' fields and honours
/// the sections a client asks for.
pub fn info_sections(ctx: &Context) -> Vec<(&'static str, String)> {
    let s = ctx.stats.snapshot();
    let routes = ctx.router.routes();
    let pools = ctx.router.pools();
    let up = pools.iter().filter(|(_, p)| p.up_count() > 0).count();
    let uptime = ctx.started.elapsed().as_secs();
    let mut server = String::new();
    let _ = write!(
        server,
        "reborn_version:{}\r\nproxy_id:{}\r\nproduct:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        ctx.proxy_id,
        ctx.config.zk.product,
        std::process::id(),
        ctx.config.listen.rsplit(':').next().unwrap_or(""),
        uptime,
        uptime / 86400
    );
    let clients = format!(
        "connected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:{}\r\ntotal_connections_received:{}\r\nrejected_connections:{}\r\n",
        s.sessions_alive,
        ctx.config.max_clients,
        ctx.stats.blocked_calls.load(std::sync::atomic::Ordering::Relaxed),
        s.sessions_total,
        s.sessions_refused
    );
    let stats = format!(
        "total_commands_processed:{}\r\ninstantaneous_ops_per_sec:{}\r\ntotal_error_replies:{}\r\nlatency_p50_us:{}\r\nlatency_p99_us:{}\r\n",
        s.ops_total, s.ops_per_sec, s.errors_total, s.latency_us.p50, s.latency_us.p99
    );
    let proxy = format!(
        "online:{}\r\nrouting_epoch:{}\r\nbackends:{}\r\nbackends_up:{}\r\n",
        u8::from(routes.online),
        routes.epoch,
        pools.len(),
        up
    );
    vec![
        ("Server", server),
        ("Clients", clients),
        ("Stats", stats),
        ("Proxy", proxy),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"hunter2", b"hunter2"));
        assert!(!same_secret(b"hunter2", b"hunter3"));
        assert!(!same_secret(b"hunter", b"hunter2"));
        assert!(!same_secret(b"hunter22", b"hunter2"));
        assert!(!same_secret(b"", b"x"));
    }
}
