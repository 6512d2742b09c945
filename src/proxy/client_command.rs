//! `CLIENT` and its subcommands, answered for the proxy's own clients: a
//! client's name and id, `LIST` and `INFO` of the connections of this proxy
//! (every worker's, from `clients.rs`), `KILL` by any of Redis's filters,
//! `PAUSE` / `UNPAUSE` of this proxy's sessions, and the switches that have no
//! meaning behind a proxy (`NO-EVICT`, `NO-TOUCH`), accepted as Redis accepts
//! them. Client-side caching (`TRACKING`) is refused clearly: the proxy would
//! have to route invalidation pushes from every group to each client.
//!
//! A subcommand Redis does not have gets Redis's own error; one it has that
//! the proxy does not answer (`HELP`, `REPLY`) gets the proxy's.
//!
//! Imports: `clients`, `command`, `context`, `policy`, `reply` and `libs`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::clients::Connection;
use super::command;
use super::context::{Client, Context};
use super::policy;
use super::reply::Reply;
use crate::libs::resp;

const TRACKING: &str = "ERR client tracking is not supported by reborn proxy";

/// Answers `CLIENT <sub> …` for `client`.
pub fn answer(ctx: &Context, client: &mut Client, args: &[Bytes]) -> Reply {
    let sub = args.get(1).map(|s| s.to_ascii_lowercase()).unwrap_or_default();
    let ok = || Reply::Ready(Bytes::from_static(resp::OK));
    let ready = |b: Bytes| Reply::Ready(b);
    let protocol = client.protocol;
    match (sub.as_slice(), args.len()) {
        (b"setname", 3) => ready(set_name(&client.conn, &args[2])),
        (b"getname", 2) => ready(match client.conn.name() {
            Some(n) => resp::bulk(&n),
            None => protocol.null(),
        }),
        (b"setinfo", 4) | (b"no-evict" | b"no-touch", 3) if !is_switch(&sub, &args[2]) => {
            ready(resp::error("ERR syntax error"))
        }
        (b"setinfo", 4) | (b"no-evict" | b"no-touch", 3) => ok(),
        (b"id", 2) => ready(resp::int(client.id as i64)),
        (b"info", 2) => {
            let line = client.conn.line(Some("client|info"));
            ready(protocol.text(format!("{line}\n").as_bytes()))
        }
        (b"list", _) => ready(list(ctx, client, &args[2..])),
        (b"kill", 3..) => kill(ctx, client, &args[2..]),
        (b"pause", 3 | 4) => ready(pause(ctx, &args[2..])),
        (b"unpause", 2) => {
            ctx.clients.unpause();
            ok()
        }
        (b"getredir", 2) => ready(resp::int(-1)),
        (b"unblock", 3 | 4) => unblock(ctx, &args[2..]),
        (b"tracking" | b"caching" | b"trackinginfo", _) => ready(resp::error(TRACKING)),
        (
            b"setname" | b"getname" | b"setinfo" | b"id" | b"info" | b"kill" | b"no-evict" | b"no-touch"
            | b"pause" | b"unpause" | b"getredir" | b"unblock",
            _,
        ) => ready(resp::error(&format!(
            "ERR wrong number of arguments for 'client|{}' command",
            String::from_utf8_lossy(&sub)
        ))),
        _ if redis_has(&sub) => ready(resp::error(&format!(
            "ERR CLIENT {} is not supported by reborn proxy",
            String::from_utf8_lossy(&sub).to_uppercase()
        ))),
        _ => ready(policy::unknown_subcommand(
            args.first().map_or(&b"client"[..], |a| &a[..]),
            args.get(1).map_or(&b""[..], |a| &a[..]),
        )),
    }
}

/// True if Redis's `CLIENT` has the subcommand `sub` (lower case), by the
/// command table taken from a real server.
fn redis_has(sub: &[u8]) -> bool {
    command::lookup(b"client").is_some_and(|c| c.spec.subcommands.iter().any(|s| s.name.as_bytes() == sub))
}

/// `CLIENT UNBLOCK id [TIMEOUT|ERROR]` for a client of this proxy: its
/// blocking call is unblocked on its server, and the client gets that
/// server's timeout or `-UNBLOCKED` reply, as from one Redis.
fn unblock(ctx: &Context, args: &[Bytes]) -> Reply {
    let Some(id) = std::str::from_utf8(&args[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Reply::Ready(resp::error("ERR value is not an integer or out of range"));
    };
    let error = match args.get(1).map(|m| m.to_ascii_uppercase()) {
        None => false,
        Some(m) if m == b"TIMEOUT" => false,
        Some(m) if m == b"ERROR" => true,
        Some(_) => {
            return Reply::Ready(resp::error(
                "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
            ));
        }
    };
    Reply::Wait(ctx.by_client.unblock(ctx, id, error))
}

/// `NO-EVICT` and `NO-TOUCH` take `on` or `off`; `SETINFO` takes anything.
fn is_switch(sub: &[u8], value: &[u8]) -> bool {
    sub == b"setinfo" || value.eq_ignore_ascii_case(b"on") || value.eq_ignore_ascii_case(b"off")
}

/// CLIENT SETNAME (and HELLO … SETNAME): Redis's rule on names.
pub fn set_name(conn: &Connection, name: &Bytes) -> Bytes {
    if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return resp::error("ERR Client names cannot contain spaces, newlines or special characters.");
    }
    conn.set_name(name.clone());
    Bytes::from_static(resp::OK)
}

/// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id …]`: one line per
/// connection of this proxy.
fn list(ctx: &Context, client: &Client, opts: &[Bytes]) -> Bytes {
    let mut ids: Option<Vec<u64>> = None;
    let mut none = false;
    match opts {
        [] => {}
        [t, kind] if t.eq_ignore_ascii_case(b"TYPE") => match client_type(kind) {
            Ok(matches) => none = !matches,
            Err(e) => return e,
        },
        [i, rest @ ..] if i.eq_ignore_ascii_case(b"ID") && !rest.is_empty() => {
            let mut v = Vec::with_capacity(rest.len());
            for id in rest {
                match parse_id(id) {
                    Some(id) => v.push(id),
                    None => return resp::error("ERR Invalid client ID"),
                }
            }
            ids = Some(v);
        }
        _ => return resp::error("ERR syntax error"),
    }
    let mut out = String::new();
    for conn in ctx.clients.list() {
        if none || ids.as_ref().is_some_and(|ids| !ids.contains(&conn.id)) {
            continue;
        }
        let current = (conn.id == client.id).then_some("client|list");
        out.push_str(&conn.line(current));
        out.push('\n');
    }
    client.protocol.text(out.as_bytes())
}

/// Whether the proxy's clients are of `TYPE kind`: all are `normal`; none is a
/// master or a replica. Subscribers are not told apart here, so `pubsub`
/// matches none of them.
fn client_type(kind: &[u8]) -> Result<bool, Bytes> {
    match kind.to_ascii_lowercase().as_slice() {
        b"normal" => Ok(true),
        b"master" | b"replica" | b"slave" | b"pubsub" => Ok(false),
        _ => Err(resp::error(&format!(
            "ERR Unknown client type '{}'",
            String::from_utf8_lossy(kind)
        ))),
    }
}

fn parse_id(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id).ok()?.parse().ok().filter(|&n| n > 0)
}

/// What a `CLIENT KILL` selects.
#[derive(Default)]
struct Filter {
    id: Option<u64>,
    addr: Option<Bytes>,
    laddr: Option<Bytes>,
    /// False for a `TYPE` or `USER` that no client of the proxy has.
    any: bool,
    skipme: bool,
}

impl Filter {
    fn matches(&self, conn: &Connection, me: u64) -> bool {
        self.any
            && !(self.skipme && conn.id == me)
            && self.id.is_none_or(|id| id == conn.id)
            && self.addr.as_ref().is_none_or(|a| same_addr(a, conn.addr))
            && self.laddr.as_ref().is_none_or(|a| same_addr(a, conn.laddr))
    }
}

/// True if `text` names `addr` (`ip:port`, as `CLIENT LIST` shows it).
fn same_addr(text: &[u8], addr: SocketAddr) -> bool {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<SocketAddr>().ok())
        .is_some_and(|a| a == addr)
}

/// `CLIENT KILL addr:port` (the old form: `+OK` or an error) or
/// `CLIENT KILL <filter> <value> …` (`ID`, `ADDR`, `LADDR`, `USER`, `TYPE`,
/// `SKIPME`; the number killed). The caller itself, when selected, gets its
/// reply and then its connection closes, as in Redis.
fn kill(ctx: &Context, client: &Client, opts: &[Bytes]) -> Reply {
    if let [addr] = opts {
        let filter = Filter {
            addr: Some(addr.clone()),
            any: true,
            ..Filter::default()
        };
        return match kill_matching(ctx, client, &filter) {
            (0, _) => Reply::Ready(resp::error("ERR No such client")),
            (_, true) => Reply::Close(Bytes::from_static(resp::OK)),
            (_, false) => Reply::Ready(Bytes::from_static(resp::OK)),
        };
    }
    let filter = match parse_filter(opts) {
        Ok(f) => f,
        Err(e) => return Reply::Ready(e),
    };
    match kill_matching(ctx, client, &filter) {
        (n, true) => Reply::Close(resp::int(n as i64)),
        (n, false) => Reply::Ready(resp::int(n as i64)),
    }
}

fn parse_filter(opts: &[Bytes]) -> Result<Filter, Bytes> {
    if !opts.len().is_multiple_of(2) {
        return Err(resp::error("ERR syntax error"));
    }
    let mut f = Filter {
        any: true,
        skipme: true,
        ..Filter::default()
    };
    for pair in opts.chunks(2) {
        let [key, value] = pair else {
            return Err(resp::error("ERR syntax error"));
        };
        match key.to_ascii_lowercase().as_slice() {
            b"id" => {
                f.id = Some(
                    parse_id(value).ok_or_else(|| resp::error("ERR client-id should be greater than 0"))?,
                )
            }
            b"addr" => f.addr = Some(value.clone()),
            b"laddr" => f.laddr = Some(value.clone()),
            b"type" => f.any &= client_type(value)?,
            b"user" if value.as_ref() == b"default" => {}
            b"user" => {
                return Err(resp::error(&format!(
                    "ERR No such user '{}'",
                    String::from_utf8_lossy(value)
                )));
            }
            b"skipme" if value.eq_ignore_ascii_case(b"yes") => f.skipme = true,
            b"skipme" if value.eq_ignore_ascii_case(b"no") => f.skipme = false,
            _ => return Err(resp::error("ERR syntax error")),
        }
    }
    Ok(f)
}

/// Kills every other connection `filter` selects; returns how many it
/// selected and whether the caller is one of them (closed after its reply).
fn kill_matching(ctx: &Context, client: &Client, filter: &Filter) -> (usize, bool) {
    let mut n = 0;
    let mut me = false;
    for conn in ctx.clients.list() {
        // A connection killed already is gone for its clients, though its
        // session may not have left the list yet: killing it again finds
        // nothing, as in Redis.
        if !filter.matches(&conn, client.id) || conn.is_killed() {
            continue;
        }
        n += 1;
        if conn.id == client.id {
            me = true;
        } else {
            conn.kill();
        }
    }
    (n, me)
}

/// `CLIENT PAUSE <ms> [WRITE|ALL]`.
fn pause(ctx: &Context, opts: &[Bytes]) -> Bytes {
    let Some(ms) = std::str::from_utf8(&opts[0])
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
    else {
        return resp::error("ERR timeout is not an integer or out of range");
    };
    let Ok(ms) = u64::try_from(ms) else {
        return resp::error("ERR timeout is negative");
    };
    let all = match opts.get(1) {
        None => true,
        Some(m) if m.eq_ignore_ascii_case(b"ALL") => true,
        Some(m) if m.eq_ignore_ascii_case(b"WRITE") => false,
        Some(_) => return resp::error("ERR syntax error"),
    };
    ctx.clients.pause(Duration::from_millis(ms), all);
    Bytes::from_static(resp::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn kill_filters_parse_like_redis() {
        let f = parse_filter(&[b("ID"), b("5"), b("skipme"), b("no")]).expect("valid");
        assert_eq!((f.id, f.skipme, f.any), (Some(5), false, true));
        let conn = Connection::detached(5);
        assert!(f.matches(&conn, 5), "SKIPME no selects the caller too");
        let f = parse_filter(&[b("ID"), b("5")]).expect("valid");
        assert!(!f.matches(&conn, 5), "SKIPME yes is the default");
        assert!(!f.matches(&Connection::detached(6), 1));
        assert!(parse_filter(&[b("ID"), b("0")]).is_err());
        assert!(parse_filter(&[b("ID")]).is_err());
        assert!(parse_filter(&[b("USER"), b("bob")]).is_err());
        assert!(parse_filter(&[b("TYPE"), b("bogus")]).is_err());
        assert!(!parse_filter(&[b("TYPE"), b("master")]).expect("valid").any);
        let f = parse_filter(&[b("ADDR"), b("0.0.0.0:0"), b("USER"), b("default")]).expect("valid");
        assert!(f.matches(&conn, 1));
    }
}
