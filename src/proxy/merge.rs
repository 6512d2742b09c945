//! How the replies of a fanned-out command become the one reply a single Redis
//! would give (see `fanout.rs` for who gets asked).
//!
//! Every rule takes the replies with the address of the server that gave each,
//! so a failure can name the servers that failed. The rule for failures is the
//! same everywhere ([`failure`]): when every server gave the same error, that
//! error is the reply, unchanged (a bad CONFIG SET parameter reads as on one
//! Redis); otherwise the reply is an `-ERR` naming each server that failed.
//!
//! Pure functions over frames; imports only `libs::resp`.

use std::hash::{BuildHasher, RandomState};

use bytes::{Bytes, BytesMut};

use crate::libs::resp;

/// One server's reply: its address and the frame it answered.
pub type FanAnswer = (String, Bytes);

/// The error reply when some server failed, `None` when none did. `cmd` names
/// the command in the message (e.g. `CONFIG SET`).
pub fn failure(cmd: &str, answers: &[FanAnswer]) -> Option<Bytes> {
    let failed: Vec<&FanAnswer> = answers.iter().filter(|(_, r)| resp::is_error(r)).collect();
    let first = failed.first()?;
    if failed.len() == answers.len() && failed.iter().all(|(_, r)| r == &first.1) {
        return Some(first.1.clone());
    }
    let each: Vec<String> = failed
        .iter()
        .map(|(addr, r)| format!("{addr} ({})", error_text(r)))
        .collect();
    Some(resp::error(&format!(
        "ERR {cmd} failed on {} of {} servers: {}",
        failed.len(),
        answers.len(),
        each.join(", ")
    )))
}

/// The text of an error frame, without its `-` and line end.
fn error_text(reply: &[u8]) -> String {
    let body = reply.strip_prefix(b"-").unwrap_or(reply);
    let body = body.strip_suffix(b"\r\n").unwrap_or(body);
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

fn unexpected(addr: &str, reply: &[u8]) -> Bytes {
    let shown = String::from_utf8_lossy(&reply[..reply.len().min(64)]).into_owned();
    resp::error(&format!(
        "ERR unexpected reply from {addr} while merging: {shown:?}"
    ))
}

/// `+OK` when every server said OK (FLUSHALL, CONFIG SET, SCRIPT FLUSH, …).
pub fn all_ok(cmd: &str, answers: &[FanAnswer]) -> Bytes {
    if let Some(e) = failure(cmd, answers) {
        return e;
    }
    match answers.iter().find(|(_, r)| r.as_ref() != resp::OK) {
        Some((addr, r)) => unexpected(addr, r),
        None => Bytes::from_static(resp::OK),
    }
}

/// `+OK` if any server said it (SCRIPT KILL, FUNCTION KILL: the script ran on
/// one master, the others answer `NOTBUSY`); else the one server's error
/// that is not `NOTBUSY` (`UNKILLABLE`, which clients match on), as that
/// server gave it; else their common error.
pub fn any_ok(cmd: &str, answers: &[FanAnswer]) -> Bytes {
    if answers.iter().any(|(_, r)| r.as_ref() == resp::OK) {
        return Bytes::from_static(resp::OK);
    }
    let mut busy = answers.iter().filter(|(_, r)| !r.starts_with(b"-NOTBUSY"));
    if let (Some((_, only)), None) = (busy.next(), busy.next())
        && only.starts_with(b"-")
    {
        return only.clone();
    }
    failure(cmd, answers).unwrap_or_else(|| match answers.first() {
        Some((addr, r)) => unexpected(addr, r),
        None => resp::error(&format!("ERR {cmd}: no server to ask")),
    })
}

/// The one reply every server gave (SCRIPT LOAD's SHA, FUNCTION LOAD's library
/// name); servers that disagree are named.
pub fn same(cmd: &str, answers: &[FanAnswer]) -> Bytes {
    if let Some(e) = failure(cmd, answers) {
        return e;
    }
    let Some((first_addr, first)) = answers.first() else {
        return resp::error(&format!("ERR {cmd}: no server to ask"));
    };
    match answers.iter().find(|(_, r)| r != first) {
        Some((addr, _)) => resp::error(&format!(
            "ERR {cmd} answered differently on {first_addr} and {addr}"
        )),
        None => first.clone(),
    }
}

/// Integers summed (DBSIZE).
pub fn sum(cmd: &str, answers: &[FanAnswer]) -> Bytes {
    fold_ints(cmd, answers, 0, |a, b| a.saturating_add(b))
}

/// The smallest integer (WAIT: replicas every master reached; LASTSAVE: the
/// moment by which every master had saved). No server: 0.
pub fn min(cmd: &str, answers: &[FanAnswer]) -> Bytes {
    if answers.is_empty() {
        return resp::int(0);
    }
    fold_ints(cmd, answers, i64::MAX, i64::min)
}

fn fold_ints(cmd: &str, answers: &[FanAnswer], init: i64, f: impl Fn(i64, i64) -> i64) -> Bytes {
    if let Some(e) = failure(cmd, answers) {
        return e;
    }
    let mut acc = init;
    for (addr, r) in answers {
        match resp::integer(r) {
            Some(n) => acc = f(acc, n),
            None => return unexpected(addr, r),
        }
    }
    resp::int(acc)
}

/// Arrays concatenated, in server order (KEYS).
pub fn concat(cmd: &str, answers: &[FanAnswer]) -> Bytes {
    if let Some(e) = failure(cmd, answers) {
        return e;
    }
    let mut items = Vec::new();
    for (addr, r) in answers {
        match resp::array_items(r) {
            Some(mut part) => items.append(&mut part),
            None => return unexpected(addr, r),
        }
    }
    array_of(&items)
}

/// An array of already-encoded frames.
pub fn array_of(items: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + items.iter().map(|i| i.len()).sum::<usize>());
    resp::put_header(&mut out, b'*', items.len() as i64);
    for i in items {
        out.extend_from_slice(i);
    }
    out.freeze()
}

/// Integer arrays combined position by position: 1 only where every server
/// said 1 (SCRIPT EXISTS: a script one master lacks would fail there).
pub fn all_ones(cmd: &str, answers: &[FanAnswer]) -> Bytes {
    if let Some(e) = failure(cmd, answers) {
        return e;
    }
    let mut acc: Option<Vec<i64>> = None;
    for (addr, r) in answers {
        let Some(items) = resp::array_items(r) else {
            return unexpected(addr, r);
        };
        let Some(ints) = items
            .iter()
            .map(|i| resp::integer(i))
            .collect::<Option<Vec<i64>>>()
        else {
            return unexpected(addr, r);
        };
        acc = Some(match acc {
            None => ints,
            Some(prev) if prev.len() == ints.len() => prev
                .iter()
                .zip(&ints)
                .map(|(a, b)| i64::from(*a == 1 && *b == 1))
                .collect(),
            Some(_) => return unexpected(addr, r),
        });
    }
    let ints = acc.unwrap_or_default();
    let frames: Vec<Bytes> = ints.into_iter().map(resp::int).collect();
    array_of(&frames)
}

/// A random server's non-nil reply, trying the others in turn while nil
/// (RANDOMKEY). Nil only when every server said nil (in their protocol: `$-1`
/// or RESP3's `_`).
pub fn random_non_nil(cmd: &str, answers: &[FanAnswer]) -> Bytes {
    const NIL3: &[u8] = b"_\r\n";
    let Some((_, first)) = answers.first() else {
        return Bytes::from_static(resp::NIL);
    };
    let start = (RandomState::new().hash_one(0u8) % answers.len() as u64) as usize;
    let rotated = answers.iter().cycle().skip(start).take(answers.len());
    let mut errors = false;
    for (_, r) in rotated {
        if resp::is_error(r) {
            errors = true;
        } else if r.as_ref() != resp::NIL && r.as_ref() != NIL3 {
            return r.clone();
        }
    }
    // Nothing found: an error somewhere means the answer is unknown, not nil.
    match errors.then(|| failure(cmd, answers)).flatten() {
        Some(e) => e,
        None if first.as_ref() == NIL3 => Bytes::from_static(NIL3),
        None => Bytes::from_static(resp::NIL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(addr: &str, reply: &'static str) -> FanAnswer {
        (addr.to_string(), Bytes::from_static(reply.as_bytes()))
    }

    #[test]
    fn ok_only_when_all_are_and_failures_name_their_servers() {
        assert_eq!(
            &all_ok("FLUSHALL", &[a("h:1", "+OK\r\n"), a("h:2", "+OK\r\n")])[..],
            b"+OK\r\n"
        );
        let e = all_ok("CONFIG SET", &[a("h:1", "+OK\r\n"), a("h:2", "-ERR nope\r\n")]);
        assert_eq!(
            &e[..],
            b"-ERR CONFIG SET failed on 1 of 2 servers: h:2 (ERR nope)\r\n".as_slice()
        );
        // The same error everywhere reads as one Redis's error.
        let e = all_ok(
            "CONFIG SET",
            &[a("h:1", "-ERR bad\r\n"), a("h:2", "-ERR bad\r\n")],
        );
        assert_eq!(&e[..], b"-ERR bad\r\n");
        let e = all_ok("X", &[a("h:1", "-ERR a\r\n"), a("h:2", "-ERR b\r\n")]);
        assert!(e.starts_with(b"-ERR X failed on 2 of 2 servers: h:1 (ERR a), h:2 (ERR b)"));
        assert!(resp::is_error(&all_ok("X", &[a("h:1", ":1\r\n")])));
    }

    #[test]
    fn sums_minimums_and_arrays() {
        assert_eq!(
            &sum("DBSIZE", &[a("x", ":2\r\n"), a("y", ":40\r\n")])[..],
            b":42\r\n"
        );
        assert_eq!(&sum("DBSIZE", &[])[..], b":0\r\n");
        assert_eq!(&min("WAIT", &[a("x", ":2\r\n"), a("y", ":1\r\n")])[..], b":1\r\n");
        assert_eq!(&min("WAIT", &[])[..], b":0\r\n");
        assert!(
            sum("DBSIZE", &[a("x", ":2\r\n"), a("y", "-ERR down\r\n")])
                .starts_with(b"-ERR DBSIZE failed on 1 of 2 servers: y")
        );
        assert_eq!(
            &concat(
                "KEYS",
                &[
                    a("x", "*1\r\n$1\r\na\r\n"),
                    a("y", "*0\r\n"),
                    a("z", "*2\r\n$1\r\nb\r\n$1\r\nc\r\n")
                ]
            )[..],
            b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
        );
        assert_eq!(
            &all_ones(
                "SCRIPT EXISTS",
                &[
                    a("x", "*3\r\n:1\r\n:1\r\n:0\r\n"),
                    a("y", "*3\r\n:1\r\n:0\r\n:0\r\n")
                ]
            )[..],
            b"*3\r\n:1\r\n:0\r\n:0\r\n"
        );
    }

    #[test]
    fn same_reply_or_named_disagreement() {
        assert_eq!(
            &same("SCRIPT LOAD", &[a("x", "$2\r\nab\r\n"), a("y", "$2\r\nab\r\n")])[..],
            b"$2\r\nab\r\n"
        );
        let e = same("SCRIPT LOAD", &[a("x", "$2\r\nab\r\n"), a("y", "$2\r\ncd\r\n")]);
        assert!(e.starts_with(b"-ERR SCRIPT LOAD answered differently on x and y"));
    }

    #[test]
    fn a_kill_is_done_if_any_server_did_it() {
        let busy = "-NOTBUSY No scripts in execution right now.\r\n";
        assert_eq!(
            &any_ok("SCRIPT KILL", &[a("x", busy), a("y", "+OK\r\n")])[..],
            b"+OK\r\n"
        );
        assert_eq!(
            &any_ok("SCRIPT KILL", &[a("x", busy), a("y", busy)])[..],
            busy.as_bytes()
        );
        let unkillable = "-UNKILLABLE Sorry the script already executed write commands\r\n";
        assert_eq!(
            &any_ok("SCRIPT KILL", &[a("x", busy), a("y", unkillable)])[..],
            unkillable.as_bytes()
        );
    }

    #[test]
    fn random_key_skips_nils_and_errors_are_not_nil() {
        for _ in 0..20 {
            let r = random_non_nil(
                "RANDOMKEY",
                &[a("x", "$-1\r\n"), a("y", "$1\r\nk\r\n"), a("z", "$-1\r\n")],
            );
            assert_eq!(&r[..], b"$1\r\nk\r\n");
        }
        assert_eq!(&random_non_nil("RANDOMKEY", &[a("x", "$-1\r\n")])[..], b"$-1\r\n");
        assert_eq!(
            &random_non_nil("RANDOMKEY", &[a("x", "_\r\n"), a("y", "_\r\n")])[..],
            b"_\r\n"
        );
        assert!(resp::is_error(&random_non_nil(
            "RANDOMKEY",
            &[a("x", "$-1\r\n"), a("y", "-ERR down\r\n")]
        )));
    }
}
