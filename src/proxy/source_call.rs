//! The source call: a request of a migrating slot, run on the source master
//! only if the source still holds every one of its keys, in one round trip.
//!
//! Moving a key before every access (`MIGRATE` on access) costs the client a
//! second round trip, and for a key still on the source it blocks the source
//! inside a synchronous `MIGRATE` while the target restores it: every other
//! client of the source waits too. Most requests early in a migration are for
//! keys still on the source, so this proxy first asks the source to serve the
//! request itself, atomically, through a small Lua script:
//!
//! * all keys on the source: the source runs the command and that reply is
//!   the answer (one round trip, like an online slot);
//! * none of them: the keys moved already or never existed; the request goes
//!   straight to the target, no `MIGRATE` needed;
//! * some of them: the classic path, `MIGRATE` and then the target.
//!
//! This is safe because a key of a migrating slot is never *created* on the
//! source: writes reach the source only through this script, and only when
//! every key already exists there. A key that left the source therefore never
//! comes back, and the source's copy is authoritative while it exists (the
//! background migrator deletes a source key only if it did not change since
//! it copied it; see `topo::manager::migrator::restore`). Redis Cluster's `ASK`
//! redirection rests on the same rule.
//!
//! Lua changes a few replies on the way, so some commands keep the classic
//! path: integers travel through Lua as doubles (exact only up to 2^53, and
//! counters can be bigger), and a null array (`*-1`) comes back as a null
//! bulk string. Commands that are not allowed in scripts answer with an error
//! that is recognised and also take the classic path; nothing ran then.
//! Requests of RESP3 clients always take the classic path (see
//! `migrate::source_call_of`): Lua would turn their maps, sets and doubles into
//! RESP2 shapes.

use bytes::{Bytes, BytesMut};

use crate::libs::resp;

/// Counts the request's keys on this server and runs the request (its words
/// are `ARGV`) only if all of them are here. `pcall`: the command's own error
/// replies pass through unchanged.
const SCRIPT: &str = "local n = 0 \
for i = 1, #KEYS do n = n + redis.call('EXISTS', KEYS[i]) end \
if n == #KEYS then return redis.pcall(unpack(ARGV)) end \
return {err = 'REBORNMOVED ' .. n}";

/// SHA1 of `SCRIPT`, as `SCRIPT LOAD` names it: requests go as `EVALSHA`,
/// which costs the source about a third less than `EVAL` (no script text to
/// read and hash each time); a server that does not have it cached yet
/// answers `NOSCRIPT` and gets one `EVAL`, which caches it.
pub const SCRIPT_SHA: &str = "ad5b9847fc04fd95f0e67ac0fbb50897eafed2f4";

/// Arguments Lua's `unpack` handles safely (its C stack allows about 8000).
const MAX_ARGS: usize = 4096;

/// Commands whose replies Lua would change (see the module docs), lower case.
const CLASSIC_ONLY: &[&[u8]] = &[
    // integer replies that may exceed 2^53
    b"incr",
    b"incrby",
    b"decr",
    b"decrby",
    b"hincrby",
    b"bitfield",
    b"bitfield_ro",
    b"object",
    // null array replies
    b"geopos",
    b"lmpop",
    b"zmpop",
    b"xread",
    b"xreadgroup",
    b"xautoclaim",
    b"xclaim",
    // scripts inside scripts are refused anyway
    b"eval",
    b"evalsha",
    b"eval_ro",
    b"evalsha_ro",
    b"fcall",
    b"fcall_ro",
];

/// What the source answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// It held every key and ran the command: this is the client's reply.
    Served(Bytes),
    /// It held none of the keys: send the request to the target as it is.
    NoKeyHere,
    /// It held some of them, or cannot run the command in a script: move the
    /// keys with `MIGRATE`, then send the request to the target.
    Classic,
}

/// A request wrapped in `SCRIPT`: its keys and words, encoded once.
#[derive(Debug, Clone)]
pub struct ScriptCall {
    /// Bulk strings after the script: numkeys, the keys, the request's words.
    tail: Bytes,
    /// How many bulk strings `tail` holds.
    count: usize,
}

impl ScriptCall {
    /// `EVALSHA <sha> …`: what is sent first.
    pub fn evalsha(&self) -> Bytes {
        self.with_head(b"EVALSHA", SCRIPT_SHA.as_bytes())
    }

    /// `EVAL <script> …`: after a `NOSCRIPT` (see [`is_noscript`]).
    pub fn eval(&self) -> Bytes {
        self.with_head(b"EVAL", SCRIPT.as_bytes())
    }

    fn with_head(&self, cmd: &[u8], script: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(32 + cmd.len() + script.len() + self.tail.len());
        resp::put_header(&mut out, b'*', (2 + self.count) as i64);
        resp::put_bulk(&mut out, cmd);
        resp::put_bulk(&mut out, script);
        out.extend_from_slice(&self.tail);
        out.freeze()
    }
}

/// The name of the command a source call runs, if `req` is one (see
/// [`ScriptCall`]): with `write_ack = "replica"` a source call writes only if
/// that command does, so a read served by the source is not held for a
/// replica's `WAIT` (nor refused `NOREPLICAS` while the replica is away).
pub fn wrapped(req: &Bytes) -> Option<Bytes> {
    let items = resp::array_items(req)?;
    let mut words = items.iter().map(resp::bulk_payload);
    let (head, body) = (words.next()??, words.next()??);
    let ours = (head.eq_ignore_ascii_case(b"EVALSHA") && body == SCRIPT_SHA.as_bytes())
        || (head.eq_ignore_ascii_case(b"EVAL") && body == SCRIPT.as_bytes());
    if !ours {
        return None;
    }
    let numkeys: usize = std::str::from_utf8(&words.next()??).ok()?.parse().ok()?;
    words.nth(numkeys)?
}

/// The call that runs `args` (keys `keys`) on the source if it holds all the
/// keys; `None` for requests that take the classic path.
pub fn command(args: &[Bytes], keys: &[Bytes]) -> Option<ScriptCall> {
    let name = args.first()?;
    if keys.is_empty() || args.len() > MAX_ARGS || is_classic_only(name) {
        return None;
    }
    let mut tail = BytesMut::with_capacity(16 + args.iter().chain(keys).map(|a| a.len() + 16).sum::<usize>());
    resp::put_bulk(&mut tail, keys.len().to_string().as_bytes());
    for k in keys.iter().chain(args) {
        resp::put_bulk(&mut tail, k);
    }
    Some(ScriptCall {
        tail: tail.freeze(),
        count: 1 + keys.len() + args.len(),
    })
}

/// True if the server did not have the script cached (answer with
/// [`ScriptCall::eval`]).
pub fn is_noscript(reply: &[u8]) -> bool {
    reply.starts_with(b"-NOSCRIPT")
}

fn is_classic_only(name: &[u8]) -> bool {
    CLASSIC_ONLY.iter().any(|c| c.eq_ignore_ascii_case(name))
}

/// Reads the source's reply to [`command`].
pub fn answer(reply: Bytes) -> Answer {
    if let Some(rest) = reply.strip_prefix(b"-REBORNMOVED ") {
        return if rest.starts_with(b"0\r\n") {
            Answer::NoKeyHere
        } else {
            Answer::Classic
        };
    }
    if reply.starts_with(b"-") && contains(&reply, b"not allowed from script") {
        return Answer::Classic;
    }
    Answer::Served(reply)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn wraps_keyed_requests_and_leaves_the_rest_classic() {
        let call = command(&[b("SET"), b("k"), b("v")], &[b("k")]).expect("wrapped");
        let words = |raw: Bytes| -> Vec<Bytes> {
            let mut buf = BytesMut::from(&raw[..]);
            resp::parse_request(&mut buf, &resp::Limits::default())
                .expect("valid")
                .expect("complete")
                .args
        };
        let tail = [b("1"), b("k"), b("SET"), b("k"), b("v")];
        let sha = [&[b("EVALSHA"), b(SCRIPT_SHA)][..], &tail].concat();
        let eval = [&[b("EVAL"), b(SCRIPT)][..], &tail].concat();
        assert_eq!(words(call.evalsha()), sha);
        assert_eq!(words(call.eval()), eval);
        assert_eq!(wrapped(&call.evalsha()), Some(b("SET")));
        assert_eq!(wrapped(&call.eval()), Some(b("SET")));
        let other = resp::encode_array(&[b("EVALSHA"), b("0123"), b("1"), b("k"), b("GET"), b("k")]);
        assert_eq!(wrapped(&other), None, "another script");
        assert_eq!(wrapped(&resp::encode_array(&[b("GET"), b("k")])), None);
        assert!(is_noscript(b"-NOSCRIPT No matching script. Please use EVAL.\r\n"));
        assert!(!is_noscript(b"$1\r\nv\r\n"));
        assert!(command(&[b("incrby"), b("k"), b("1")], &[b("k")]).is_none());
        assert!(command(&[b("GEOPOS"), b("k"), b("m")], &[b("k")]).is_none());
        assert!(command(&[b("PING")], &[]).is_none());
        let many: Vec<Bytes> = std::iter::repeat_n(b("k"), MAX_ARGS + 1).collect();
        assert!(command(&many, &[b("k")]).is_none());
    }

    #[test]
    fn answers() {
        assert_eq!(answer(b("-REBORNMOVED 0\r\n")), Answer::NoKeyHere);
        assert_eq!(answer(b("-REBORNMOVED 2\r\n")), Answer::Classic);
        assert_eq!(
            answer(b("-ERR This Redis command is not allowed from script\r\n")),
            Answer::Classic
        );
        assert_eq!(answer(b("$1\r\nv\r\n")), Answer::Served(b("$1\r\nv\r\n")));
        let wrongtype = b("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
        assert_eq!(answer(wrongtype.clone()), Answer::Served(wrongtype));
    }
}
