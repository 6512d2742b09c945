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
//! A command that removes a key from the source (`DEL`, `GETDEL`, popping
//! the last element, …) says so in its answer ([`Answer::ServedRemoving`]).
//! A mover may have copied that key to the target already, where its copy
//! waits for the source's `DEL` that now never comes; the proxies serve a key
//! the source lacks from the target, so that copy would bring the key back.
//! The caller takes such copies back (`migrate`) before it answers. The
//! removal also leaves a tombstone on the source, and a later call that finds
//! the key gone names it, so that its caller takes back a copy that landed
//! after the first take-back, or that another client's request would have
//! been served in between (`libs::tombstone`).
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

/// A script a source call runs, and its SHA1 as `SCRIPT LOAD` names it:
/// requests go as `EVALSHA`, which costs the source about a third less than
/// `EVAL` (no script text to read and hash each time); a server that does not
/// have it cached yet answers `NOSCRIPT` and gets one `EVAL`, which caches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Script {
    /// The Lua text.
    pub text: &'static str,
    /// Its SHA1, in hex.
    pub sha: &'static str,
}

/// Counts the request's keys on this server, and runs the request (its words
/// are `ARGV`) only if all of them are here. `pcall`: the command's own error
/// replies pass through unchanged. For a command that only reads. Else the
/// answer is `-REBORNMOVED <keys here>`, and when none is here, then the
/// 1-based index of each key with a tombstone (`libs::tombstone`: a client
/// removed it during this migration). When some are here the request moves
/// its keys with `MIGRATE`, which looks for tombstones itself
/// (`migrate::move_keys`).
pub const READS: Script = Script {
    text: "local n = 0 \
for i = 1, #KEYS do n = n + redis.call('EXISTS', KEYS[i]) end \
if n == #KEYS then return redis.pcall(unpack(ARGV)) end \
local s = 'REBORNMOVED ' .. n \
if n == 0 and pcall(redis.call, 'SELECT', 1) then \
for i = 1, #KEYS do if redis.call('EXISTS', KEYS[i]) == 1 then s = s .. ' ' .. i end end \
redis.call('SELECT', 0) end \
return {err = s}",
    sha: "12e8d495df2e4eba1790facb63964ed2babdcbb0",
};

/// As [`READS`], for a command that may write; it also says whether the
/// command removed any of its keys (`DEL`, `GETDEL`, a pop of the last
/// element, …): the reply is then wrapped, `[+REBORNREMOVED, reply, i…]`,
/// `i` the 1-based index of each key removed, and each such key gets a
/// tombstone (`libs::tombstone`). No data command's reply nests a status
/// reply in an array, so the wrapper cannot be taken for a reply. Looking
/// again costs the source about 0.4 µs per request
/// (`scripts/bench_source_call.sh`), which is why reads do not.
pub const WRITES: Script = Script {
    text: "local n = 0 \
for i = 1, #KEYS do n = n + redis.call('EXISTS', KEYS[i]) end \
if n ~= #KEYS then \
local s = 'REBORNMOVED ' .. n \
if n == 0 and pcall(redis.call, 'SELECT', 1) then \
for i = 1, #KEYS do if redis.call('EXISTS', KEYS[i]) == 1 then s = s .. ' ' .. i end end \
redis.call('SELECT', 0) end \
return {err = s} end \
local r = redis.pcall(unpack(ARGV)) \
local out = nil \
for i = 1, #KEYS do if redis.call('EXISTS', KEYS[i]) == 0 then \
out = out or {{ok = 'REBORNREMOVED'}, r} out[#out + 1] = i end end \
if out and pcall(redis.call, 'SELECT', 1) then \
for j = 3, #out do pcall(redis.call, 'SET', KEYS[out[j]], '1', 'PX', '30000') end \
redis.call('SELECT', 0) end \
return out or r",
    sha: "2a29d7f1c24542b28933d5491ff32e52cc93f5b6",
};

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
    /// As `Served`, and the command removed these of its keys from the
    /// source (0-based indices into the request's keys, in order).
    ServedRemoving(Bytes, Vec<usize>),
    /// It held none of the keys: send the request to the target as it is,
    /// once movers' copies of the keys it names (0-based indices, those a
    /// client removed during this migration) are taken back there.
    NoKeyHere(Vec<usize>),
    /// It held some of them, or cannot run the command in a script: move the
    /// keys with `MIGRATE`, then send the request to the target (the move
    /// looks for tombstones itself, `migrate::move_keys`).
    Classic,
}

/// A request wrapped in [`READS`] or [`WRITES`]: its keys and words, encoded
/// once.
#[derive(Debug, Clone)]
pub struct ScriptCall {
    script: Script,
    /// Bulk strings after the script: numkeys, the keys, the request's words.
    tail: Bytes,
    /// How many bulk strings `tail` holds.
    count: usize,
}

impl ScriptCall {
    /// The script it runs.
    pub fn script(&self) -> Script {
        self.script
    }

    /// `EVALSHA <sha> …`: what is sent first.
    pub fn evalsha(&self) -> Bytes {
        self.with_head(b"EVALSHA", self.script.sha.as_bytes())
    }

    /// `EVAL <script> …`: after a `NOSCRIPT` (see [`is_noscript`]).
    pub fn eval(&self) -> Bytes {
        self.with_head(b"EVAL", self.script.text.as_bytes())
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
    let ours = [READS, WRITES].iter().any(|s| {
        (head.eq_ignore_ascii_case(b"EVALSHA") && body == s.sha.as_bytes())
            || (head.eq_ignore_ascii_case(b"EVAL") && body == s.text.as_bytes())
    });
    if !ours {
        return None;
    }
    let numkeys: usize = std::str::from_utf8(&words.next()??).ok()?.parse().ok()?;
    words.nth(numkeys)?
}

/// The call that runs `args` (keys `keys`) on the source if it holds all the
/// keys, through [`WRITES`] if the command `writes`; `None` for requests that
/// take the classic path.
pub fn command(args: &[Bytes], keys: &[Bytes], writes: bool) -> Option<ScriptCall> {
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
        script: if writes { WRITES } else { READS },
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
        return moved(rest);
    }
    if reply.starts_with(b"-") && contains(&reply, b"not allowed from script") {
        return Answer::Classic;
    }
    removing(&reply).unwrap_or(Answer::Served(reply))
}

/// `<keys here> [i…]\r\n`, the rest of a `-REBORNMOVED` answer: the keys
/// held, then, when none is, the 1-based index of each key with a
/// tombstone. A word that does not parse counts as no tombstone (the safe
/// side is the path without the take-back, as before tombstones).
fn moved(rest: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(rest);
    let mut words = text.split_whitespace();
    if words.next() != Some("0") {
        return Answer::Classic;
    }
    Answer::NoKeyHere(
        words
            .filter_map(|i| i.parse::<usize>().ok()?.checked_sub(1))
            .collect(),
    )
}

/// The wrapped reply of a command that removed keys (see [`WRITES`]), if
/// `reply` is one.
fn removing(reply: &Bytes) -> Option<Answer> {
    const TAG: &[u8] = b"+REBORNREMOVED\r\n";
    // Cheap test first: array replies can be big.
    let header = reply
        .starts_with(b"*")
        .then(|| reply.iter().position(|&b| b == b'\n'))??;
    if !reply[header + 1..].starts_with(TAG) {
        return None;
    }
    let items = resp::array_items(reply)?;
    let (inner, indices) = items.get(1..).and_then(|rest| rest.split_first())?;
    let removed = indices
        .iter()
        .map(|i| resp::integer(i).and_then(|i| usize::try_from(i).ok()?.checked_sub(1)))
        .collect::<Option<_>>()?;
    Some(Answer::ServedRemoving(inner.clone(), removed))
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
        let call = command(&[b("SET"), b("k"), b("v")], &[b("k")], true).expect("wrapped");
        assert_eq!(call.script(), WRITES);
        let words = |raw: Bytes| -> Vec<Bytes> {
            let mut buf = BytesMut::from(&raw[..]);
            resp::parse_request(&mut buf, &resp::Limits::default())
                .expect("valid")
                .expect("complete")
                .args
        };
        let tail = [b("1"), b("k"), b("SET"), b("k"), b("v")];
        let sha = [&[b("EVALSHA"), b(WRITES.sha)][..], &tail].concat();
        let eval = [&[b("EVAL"), b(WRITES.text)][..], &tail].concat();
        assert_eq!(words(call.evalsha()), sha);
        assert_eq!(words(call.eval()), eval);
        assert_eq!(wrapped(&call.evalsha()), Some(b("SET")));
        assert_eq!(wrapped(&call.eval()), Some(b("SET")));
        let read = command(&[b("GET"), b("k")], &[b("k")], false).expect("wrapped");
        assert_eq!(read.script(), READS);
        assert_eq!(wrapped(&read.evalsha()), Some(b("GET")));
        assert_eq!(wrapped(&read.eval()), Some(b("GET")));
        let other = resp::encode_array(&[b("EVALSHA"), b("0123"), b("1"), b("k"), b("GET"), b("k")]);
        assert_eq!(wrapped(&other), None, "another script");
        assert_eq!(wrapped(&resp::encode_array(&[b("GET"), b("k")])), None);
        assert!(is_noscript(b"-NOSCRIPT No matching script. Please use EVAL.\r\n"));
        assert!(!is_noscript(b"$1\r\nv\r\n"));
        assert!(command(&[b("incrby"), b("k"), b("1")], &[b("k")], true).is_none());
        assert!(command(&[b("GEOPOS"), b("k"), b("m")], &[b("k")], false).is_none());
        assert!(command(&[b("PING")], &[], false).is_none());
        let many: Vec<Bytes> = std::iter::repeat_n(b("k"), MAX_ARGS + 1).collect();
        assert!(command(&many, &[b("k")], true).is_none());
    }

    #[test]
    fn the_scripts_keep_tombstones_where_and_as_long_as_libs_tombstone_says() {
        let db = format!("'SELECT', {}", crate::libs::tombstone::DB);
        let ttl = format!("'PX', '{}'", crate::libs::tombstone::TTL_MS);
        for script in [READS, WRITES] {
            assert!(script.text.contains(&db), "{}", script.text);
        }
        assert!(crate::libs::tombstone::FIND.contains(&db));
        assert!(WRITES.text.contains(&ttl), "{}", WRITES.text);
    }

    #[test]
    fn answers() {
        assert_eq!(answer(b("-REBORNMOVED 0\r\n")), Answer::NoKeyHere(vec![]));
        assert_eq!(answer(b("-REBORNMOVED 2\r\n")), Answer::Classic);
        assert_eq!(answer(b("-REBORNMOVED 0 1 3\r\n")), Answer::NoKeyHere(vec![0, 2]));
        assert_eq!(answer(b("-REBORNMOVED 0 x 2\r\n")), Answer::NoKeyHere(vec![1]));
        assert_eq!(
            answer(b("-ERR This Redis command is not allowed from script\r\n")),
            Answer::Classic
        );
        assert_eq!(answer(b("$1\r\nv\r\n")), Answer::Served(b("$1\r\nv\r\n")));
        let wrongtype = b("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
        assert_eq!(answer(wrongtype.clone()), Answer::Served(wrongtype));
        assert_eq!(
            answer(b("*3\r\n+REBORNREMOVED\r\n$1\r\nv\r\n:1\r\n")),
            Answer::ServedRemoving(b("$1\r\nv\r\n"), vec![0])
        );
        // `DEL k k`: one key, named twice.
        assert_eq!(
            answer(b("*4\r\n+REBORNREMOVED\r\n:1\r\n:1\r\n:2\r\n")),
            Answer::ServedRemoving(b(":1\r\n"), vec![0, 1])
        );
        let nested = b("*3\r\n+REBORNREMOVED\r\n*2\r\n$1\r\na\r\n$-1\r\n:2\r\n");
        assert_eq!(
            answer(nested),
            Answer::ServedRemoving(b("*2\r\n$1\r\na\r\n$-1\r\n"), vec![1])
        );
        // A list whose first element merely reads like the tag.
        let list = b("*2\r\n$13\r\nREBORNREMOVED\r\n:1\r\n");
        assert_eq!(answer(list.clone()), Answer::Served(list));
    }
}
