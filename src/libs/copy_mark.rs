//! The mark a copy of ours carries while it waits on a migration's target,
//! and the script that takes such a copy back.
//!
//! Keys sometimes sit on both masters for a while: the migrator restores a
//! batch on the target before the source's guarded `DEL`, and with
//! `write_ack = "replica"` a proxy restores a key it moves on access before
//! the source lets it go, so that a replica of the target has it first. While
//! the source holds the key, its copy is the one served. If a client deletes
//! the key on the source meanwhile, the target's copy must go too, or the key
//! comes back. But "gone from the source" also means that someone moved it
//! (a proxy's `MIGRATE … REPLACE`, our own `DEL` whose reply was lost), and
//! then the target's copy is the only one.
//!
//! So our copies are restored with `IDLETIME` [`SECS`]: no other write gives
//! a key such an idle time, and any access of it since (a client's read or
//! write, a `MIGRATE`'s restore) resets it. `EXISTS`, `OBJECT` and
//! `PEXPIRETIME` do not. A copy still idle for the mark plus the time since we
//! sent it ([`min_idle`]) is ours and nobody used it: [`TAKE_BACK`] deletes
//! exactly those.
//!
//! Two kinds of copies cannot be told apart this way, and are never taken
//! back:
//! * Redis shares one object per small integer (0-9999) between every key
//!   that holds it (without `maxmemory`), so such a copy's idle time is every
//!   holder's (`OBJECT REFCOUNT` is then not 1);
//! * with an LFU `maxmemory-policy` Redis tracks no idle time at all
//!   (`OBJECT IDLETIME` fails).

use std::time::Duration;

/// The idle time, in seconds, our `RESTORE`s give a copy. Far above the
/// slack of Redis's one-second LRU clock, and far below the idle time of the
/// keys an LRU eviction picks anyway.
pub const SECS: u64 = 60;

/// How far below the expected idle time a marked copy may read: the LRU
/// clock's resolution and its update lag.
const SLACK: u64 = 2;

/// The least idle time (seconds) that shows our mark unworn on a copy
/// restored `since` ago.
pub fn min_idle(since: Duration) -> u64 {
    (SECS + since.as_secs()).saturating_sub(SLACK)
}

/// Deletes each of `KEYS` that still shows our mark: a value of its own
/// (`OBJECT REFCOUNT` 1) idle for at least `ARGV[i]` seconds. Returns how many
/// it deleted. Atomic, so a key written between the check and the `DEL` is
/// not possible; a missing key (nil), a shared value and an LFU policy (an
/// error) are left alone.
pub const TAKE_BACK: &str = "local n = 0 \
for i, k in ipairs(KEYS) do \
local ok, refs = pcall(redis.call, 'OBJECT', 'REFCOUNT', k) \
local ok2, idle = pcall(redis.call, 'OBJECT', 'IDLETIME', k) \
if ok and ok2 and refs == 1 and type(idle) == 'number' and idle >= tonumber(ARGV[i]) then \
redis.call('DEL', k) n = n + 1 end end \
return n";

/// The words of `EVAL` [`TAKE_BACK`] for `copies`, each key with how long
/// ago its copy was sent, handed to `f` (which encodes them: bytes for the
/// proxy, a frame for the migrator).
pub fn take_back_words<'a, R>(
    copies: impl Iterator<Item = (&'a [u8], Duration)>,
    f: impl FnOnce(&[&[u8]]) -> R,
) -> R {
    let (keys, idle): (Vec<&[u8]>, Vec<String>) = copies
        .map(|(key, since)| (key, min_idle(since).to_string()))
        .unzip();
    let count = keys.len().to_string();
    let mut words: Vec<&[u8]> = Vec::with_capacity(3 + 2 * keys.len());
    words.extend([b"EVAL".as_ref(), TAKE_BACK.as_bytes(), count.as_bytes()]);
    words.extend(keys);
    words.extend(idle.iter().map(String::as_bytes));
    f(&words)
}

/// The least idle time (seconds) a copy must read for [`REPLACE_STALE`] to
/// tell it, later, from any copy written since. The same copy, untouched,
/// reads at least its idle time then plus the time since, less one second;
/// one written since reads at most that time plus two (the LRU clock's
/// resolution and lag). So the two cannot meet once the first read exceeds
/// [`SLACK`] and those seconds.
pub const AGED: u64 = 3 * SLACK;

/// For a copy that read `idle` seconds (by [`OBSERVE`]), the least idle time
/// less the time since that the same copy, untouched, reads later: what
/// [`REPLACE_STALE`] takes for the key. `None` if it is too young to be
/// told from a copy written after it was seen ([`AGED`]).
pub fn stale_floor(idle: u64) -> Option<u64> {
    (idle >= AGED).then(|| idle - SLACK)
}

/// True if a copy idle for `idle` seconds may carry a mark given less than
/// [`AGED`] seconds before (ours or a proxy's). Whoever gave it may still
/// take it back, and a marked copy written over it by another mover within
/// those seconds would look like the one it takes back ([`min_idle`]), and go
/// in its stead. An older mark is safe to write over: its owner's take-back
/// expects the age of its own copy, which ours is [`AGED`] seconds short of.
pub fn may_be_taken_back(idle: u64) -> bool {
    (SECS - SLACK..SECS + AGED + SLACK).contains(&idle)
}

/// Reads the target's clock, then what each of `KEYS` holds: `-1` nothing,
/// the copy's idle time in seconds if it is a value of its own, `-2` if that
/// cannot be read (a shared value, an LFU policy). Returns the clock (Unix
/// ms) first. Touches nothing.
pub const OBSERVE: &str = "local t = redis.call('TIME') \
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)} \
for i, k in ipairs(KEYS) do \
local ok, refs = pcall(redis.call, 'OBJECT', 'REFCOUNT', k) \
local ok2, idle = pcall(redis.call, 'OBJECT', 'IDLETIME', k) \
if ok and not refs then out[i + 1] = -1 \
elseif ok and ok2 and refs == 1 and type(idle) == 'number' then out[i + 1] = idle \
else out[i + 1] = -2 end end \
return out";

/// Restores our marked copy of each of `KEYS` over a stale one, but only
/// over the very copy [`OBSERVE`] saw, untouched since. `ARGV[1]` is the
/// mark ([`SECS`]), `ARGV[2]` the clock `OBSERVE` returned; then for key `i`,
/// `ARGV[3i]` its expiry (Unix ms, 0 for none), `ARGV[3i+1]` its payload and
/// `ARGV[3i+2]` what was seen: `-1` for nothing (the key must still be
/// missing; no `REPLACE`), else its [`stale_floor`]: the copy must still be
/// a value of its own, idle for at least that plus the whole seconds since,
/// by the target's own clock, so a late run cannot mistake a newer copy for
/// the old one. Returns per key `1` (restored), `0` (the copy there is not
/// the one seen: left alone) or the `RESTORE`'s error text.
pub const REPLACE_STALE: &str = "local t = redis.call('TIME') \
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
local since = math.floor((now - tonumber(ARGV[2])) / 1000) \
local mark = ARGV[1] \
local out = {} \
for i, k in ipairs(KEYS) do \
local j = 3 * i \
local seen = tonumber(ARGV[j + 2]) \
local r = 0 \
if seen < 0 then \
if redis.call('EXISTS', k) == 0 then \
r = redis.pcall('RESTORE', k, ARGV[j], ARGV[j + 1], 'ABSTTL', 'IDLETIME', mark) end \
else \
local ok, refs = pcall(redis.call, 'OBJECT', 'REFCOUNT', k) \
local ok2, idle = pcall(redis.call, 'OBJECT', 'IDLETIME', k) \
if ok and ok2 and refs == 1 and type(idle) == 'number' and idle >= seen + since then \
r = redis.pcall('RESTORE', k, ARGV[j], ARGV[j + 1], 'ABSTTL', 'IDLETIME', mark, 'REPLACE') end end \
if type(r) == 'table' then out[i] = r.err or 1 else out[i] = r end end \
return out";

/// True if a `DUMP` payload holds an integer Redis may share between keys
/// (0-9999): a string whose RDB encoding is an 8, 16 or 32-bit integer of
/// that range. Such a copy cannot carry our mark (see the module docs).
pub fn shared_integer(payload: &[u8]) -> bool {
    // RDB type 0 (string), then a length byte `11xxxxxx`: a special
    // encoding, of which 0, 1 and 2 are little-endian integers.
    let (Some(0), Some(&len)) = (payload.first(), payload.get(1)) else {
        return false;
    };
    if len & 0xC0 != 0xC0 {
        return false;
    }
    let value = match len & 0x3F {
        0 => payload.get(2).map(|&b| i64::from(b as i8)),
        1 => payload
            .get(2..4)
            .map(|b| i64::from(i16::from_le_bytes([b[0], b[1]]))),
        2 => payload
            .get(2..6)
            .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        _ => None,
    };
    value.is_some_and(|v| (0..10_000).contains(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_idle_time_counts_whole_seconds_since_the_copy() {
        assert_eq!(min_idle(Duration::from_millis(900)), 58);
        assert_eq!(min_idle(Duration::from_secs(5)), 63);
    }

    #[test]
    fn take_back_names_each_key_then_its_least_idle_time() {
        let copies = [
            (b"a".as_ref(), Duration::ZERO),
            (b"b".as_ref(), Duration::from_secs(3)),
        ];
        let words = take_back_words(copies.into_iter(), |w| {
            w.iter().map(|w| w.to_vec()).collect::<Vec<_>>()
        });
        let want: Vec<&[u8]> = vec![b"EVAL", TAKE_BACK.as_bytes(), b"2", b"a", b"b", b"58", b"61"];
        assert_eq!(words, want);
    }

    #[test]
    fn only_a_copy_older_than_the_clock_can_blur_is_told_later() {
        assert_eq!(stale_floor(AGED - 1), None);
        assert_eq!(stale_floor(AGED), Some(AGED - SLACK));
        assert_eq!(stale_floor(SECS), Some(SECS - SLACK));
        // A copy written after it was seen reads at most `since + 2`; the
        // one seen reads at least `floor + since`.
        assert!(stale_floor(AGED).is_some_and(|f| f > 2));
        // A fresh mark may be taken back by its owner; one given AGED
        // seconds and more before may not.
        assert!(!may_be_taken_back(SECS - SLACK - 1));
        assert!(may_be_taken_back(SECS) && may_be_taken_back(SECS + AGED));
        assert!(!may_be_taken_back(SECS + AGED + SLACK));
    }

    #[test]
    fn shared_integers_are_told_from_their_payload() {
        // `DUMP` of "7", "300", "9999", "10000", "-5" and "hello" (Redis 7,
        // RDB version 10): type byte, encoded value, version, CRC64.
        let tail = [0x0a, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
        let dump = |head: &[u8]| [head, &tail].concat();
        assert!(shared_integer(&dump(&[0x00, 0xc0, 0x07])));
        assert!(shared_integer(&dump(&[0x00, 0xc1, 0x2c, 0x01])));
        assert!(shared_integer(&dump(&[0x00, 0xc1, 0x0f, 0x27])));
        assert!(!shared_integer(&dump(&[0x00, 0xc1, 0x10, 0x27])));
        assert!(!shared_integer(&dump(&[0x00, 0xc0, 0xfb])));
        assert!(!shared_integer(&dump(b"\x00\x05hello")));
        assert!(!shared_integer(&dump(&[0x02, 0xc0, 0x07])), "not a string");
        assert!(!shared_integer(&[]));
    }
}
