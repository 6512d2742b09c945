//! The words of a blocking command, as the proxy must read them to re-issue
//! it after a slot switch (see `blocked.rs`): where its timeout is and how much
//! of it is left, which `XREAD` ids are `$`, the last id of a stream, and the
//! reply it gives when its time is up.
//!
//! Imports: `libs` only.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::libs::protocol::{self, Protocol};
use crate::libs::resp;

/// How long a call may block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Wait {
    /// Timeout 0 (or too large to matter): keep the argument as it is.
    Forever,
    Until(Instant),
}

/// Where the timeout is among a call's words, and in which unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Timeout {
    /// Index of the timeout among the words.
    pub(super) at: usize,
    /// Milliseconds (`XREAD … BLOCK`), else seconds.
    pub(super) millis: bool,
    pub(super) wait: Wait,
}

/// The reply of a call that timed out, for a client speaking `protocol`
/// (RESP3 has one null for both).
pub(super) fn nil_of(args: &[Bytes], protocol: Protocol) -> Bytes {
    let name = args.first().map(|a| a.to_ascii_lowercase()).unwrap_or_default();
    match name.as_slice() {
        b"blmove" | b"brpoplpush" => protocol.null(),
        _ => protocol.null_array(),
    }
}

/// A null (RESP2 bulk or array, or RESP3's `_`): the reply of a timed-out
/// blocking command.
pub(super) fn is_nil(reply: &[u8]) -> bool {
    protocol::is_null(reply)
}

/// The timeout of a blocking command, from its words, counted from `start`.
pub(super) fn timeout_of(args: &[Bytes], start: Instant) -> Option<Timeout> {
    let name = args.first()?.to_ascii_lowercase();
    let (at, millis) = match name.as_slice() {
        b"blmpop" | b"bzmpop" => (1, false),
        b"xread" | b"xreadgroup" => (xread_block_at(args)?, true),
        _ => (args.len().checked_sub(1)?, false),
    };
    let text = std::str::from_utf8(args.get(at)?).ok()?;
    let wait = if millis {
        let ms: u64 = text.parse().ok()?;
        until(start, Duration::from_millis(ms))
    } else {
        let secs: f64 = text.parse().ok()?;
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        until(start, Duration::try_from_secs_f64(secs).ok()?)
    };
    Some(Timeout { at, millis, wait })
}

fn until(start: Instant, d: Duration) -> Wait {
    match start.checked_add(d) {
        Some(t) if !d.is_zero() => Wait::Until(t),
        _ => Wait::Forever,
    }
}

/// Index of the value of `BLOCK` in `XREAD`/`XREADGROUP`, among the options
/// before `STREAMS`: `None` for a call that does not block.
pub(super) fn xread_block_at(args: &[Bytes]) -> Option<usize> {
    let mut i = 1;
    while let Some(a) = args.get(i) {
        if a.eq_ignore_ascii_case(b"STREAMS") {
            return None;
        } else if a.eq_ignore_ascii_case(b"BLOCK") {
            return Some(i + 1);
        } else if a.eq_ignore_ascii_case(b"GROUP") {
            i += 3;
        } else if a.eq_ignore_ascii_case(b"COUNT") {
            i += 2;
        } else {
            i += 1;
        }
    }
    None
}

/// For `XREAD`: where its stream keys start and where their ids start.
pub(super) fn xread_streams(args: &[Bytes]) -> Option<(usize, usize)> {
    if !args.first()?.eq_ignore_ascii_case(b"xread") {
        return None;
    }
    let streams = (1..args.len()).find(|&i| args[i].eq_ignore_ascii_case(b"STREAMS"))?;
    let n = (args.len() - streams - 1) / 2;
    Some((streams + 1, streams + 1 + n))
}

/// `last-generated-id` of an `XINFO STREAM` reply (RESP2: field, value, …).
pub(super) fn last_generated_id(reply: &Bytes) -> Option<Bytes> {
    let items = resp::array_items(reply)?;
    let at = items
        .iter()
        .step_by(2)
        .position(|f| resp::bulk_payload(f).is_some_and(|b| b.as_ref() == b"last-generated-id"))?;
    resp::bulk_payload(items.get(at * 2 + 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|w| Bytes::from(w.to_string())).collect()
    }

    #[test]
    fn timeouts_are_found_where_each_command_keeps_them() {
        let now = Instant::now();
        let t = timeout_of(&words("BLPOP a b 2.5"), now).expect("parses");
        assert_eq!((t.at, t.millis), (3, false));
        assert_eq!(t.wait, Wait::Until(now + Duration::from_millis(2500)));
        let t = timeout_of(&words("blmove a b LEFT RIGHT 0"), now).expect("parses");
        assert_eq!((t.at, t.wait), (5, Wait::Forever));
        let t = timeout_of(&words("BZMPOP 7 1 z MIN"), now).expect("parses");
        assert_eq!(t.at, 1);
        let t = timeout_of(
            &words("XREADGROUP GROUP BLOCK c COUNT 2 BLOCK 300 STREAMS s >"),
            now,
        )
        .expect("parses");
        assert_eq!((t.at, t.millis), (7, true));
        assert_eq!(t.wait, Wait::Until(now + Duration::from_millis(300)));
        assert_eq!(timeout_of(&words("BLPOP a -1"), now), None);
        assert_eq!(timeout_of(&words("BLPOP a x"), now), None);
    }

    #[test]
    fn xread_dollar_ids_are_located_and_the_last_id_is_read() {
        let args = words("XREAD COUNT 1 BLOCK 0 STREAMS a b $ 5-0");
        assert_eq!(xread_streams(&args), Some((6, 8)));
        let info = Bytes::from_static(
            b"*6\r\n$6\r\nlength\r\n:2\r\n$17\r\nlast-generated-id\r\n$3\r\n7-1\r\n$11\r\nfirst-entry\r\n*-1\r\n",
        );
        assert_eq!(last_generated_id(&info).as_deref(), Some(&b"7-1"[..]));
        assert!(is_nil(b"*-1\r\n") && is_nil(b"$-1\r\n") && !is_nil(b"*0\r\n"));
        assert!(is_nil(b"_\r\n"), "RESP3's null");
        let blpop = words("BLPOP q 1");
        assert_eq!(&nil_of(&blpop, Protocol::Resp2)[..], b"*-1\r\n");
        assert_eq!(&nil_of(&blpop, Protocol::Resp3)[..], b"_\r\n");
        assert_eq!(
            &nil_of(&words("BLMOVE a b LEFT LEFT 1"), Protocol::Resp2)[..],
            b"$-1\r\n"
        );
    }
}
