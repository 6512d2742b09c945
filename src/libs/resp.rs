//! RESP, the Redis wire protocol: parsing client requests, finding reply frames
//! (RESP2 and RESP3) and encoding the replies the proxy makes itself.
//!
//! The proxy forwards bytes, it does not re-encode them, so parsing is shaped
//! around that:
//!
//! * [`parse_request`] splits one request off the input buffer. Its arguments are
//!   [`Bytes`] slices of the same allocation (zero-copy) and `raw` is the exact
//!   request, ready to be written to a backend. Inline commands (`PING\r\n`, as
//!   typed into telnet) are accepted as Redis does and re-encoded as an array.
//! * [`reply_len`] finds where one reply frame ends without allocating, so backend
//!   replies are split off the read buffer and passed through untouched.
//! * [`array_items`] and [`integer`] read a reply only where the proxy must merge
//!   split multi-key results.
//!
//! Incomplete input is never an error: the parsers return `Ok(None)` and leave the
//! buffer alone until more bytes arrive. Lengths are checked *before* waiting for
//! data, so a client announcing a 2^40-byte bulk string is refused at once instead
//! of making us buffer forever.

use bytes::{BufMut, Bytes, BytesMut};

/// Bounds a request must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest bulk string accepted, in bytes (Redis: `proto-max-bulk-len`).
    pub max_bulk_len: usize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest inline command line, newline excluded; also the most an
    /// incomplete inline line may buffer.
    pub max_inline_len: usize,
    /// The limits of a client that has not authenticated yet
    /// ([`Limits::unauthenticated`]): their refusals say so, in Redis's words.
    pub unauthenticated: bool,
}

/// Longest inline line, for every client.
///
/// Redis's limit is 64 KiB, but it checks it only on a buffer that
/// holds no newline yet, after each read of (usually) 16 KiB: a line
/// that arrives whole is accepted up to about 80 KiB (81,910 bytes
/// with its CRLF, measured on 7.0.15), one that trickles in is
/// refused past 64 KiB. Copying that would make the answer depend
/// on how the line was cut into reads. One bound for complete and
/// incomplete lines alike instead: 80 KiB takes every line Redis can
/// take, keeps the answer independent of the cuts (the fuzz and
/// property tests check that), and bounds what a client can make us
/// buffer.
const MAX_INLINE_LEN: usize = 80 * 1024;

impl Limits {
    /// Redis 7's limits for a client that has not authenticated: at most 10
    /// arguments of 16 KiB, so that a stranger cannot make the proxy buffer
    /// `max_bulk_len` (512 MB) per connection before its password is checked.
    /// `AUTH` and `HELLO … AUTH` fit in them.
    pub const fn unauthenticated() -> Limits {
        Limits {
            max_bulk_len: 16 * 1024,
            max_args: 10,
            max_inline_len: MAX_INLINE_LEN,
            unauthenticated: true,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline_len: MAX_INLINE_LEN,
            unauthenticated: false,
        }
    }
}

/// Input that is not valid RESP. The message is sent to the client after
/// `-ERR Protocol error: `, then the connection is closed, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

fn perr(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// One client request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Command name and arguments, as sent.
    pub args: Vec<Bytes>,
    /// The request as a RESP array: what a backend is sent.
    pub raw: Bytes,
}

impl Request {
    /// The command name (first argument). Requests are never empty.
    pub fn name(&self) -> &[u8] {
        self.args.first().map(|a| a.as_ref()).unwrap_or(b"")
    }
}

/// Position of the first `\r\n` at or after `from`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let mut i = 0;
    while let Some(off) = memchr(b'\r', rest.get(i..)?) {
        let at = i + off;
        match rest.get(at + 1) {
            Some(b'\n') => return Some(from + at),
            Some(_) => i = at + 1,
            None => return None,
        }
    }
    None
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Parses a RESP integer (an optional `-` then ASCII digits), as in length headers.
fn parse_int(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if neg { -n } else { n })
}

/// Splits one request off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds no complete request yet (nothing is
/// consumed). Empty inline lines are skipped, like Redis does for `redis-cli --pipe`.
/// A reader whose buffer grows across reads uses a [`RequestParser`] instead,
/// which does not walk again the arguments it walked before.
///
/// # Errors
/// The bytes are not a valid request or break `limits`; the connection should be
/// closed after replying.
pub fn parse_request(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Request>, ProtocolError> {
    RequestParser::default().parse(buf, limits)
}

/// [`parse_request`] resumed across reads: a request of n arguments that
/// arrives in k reads costs O(n), not O(n·k) (an `RPUSH` of a million elements
/// from a client on a slow link would otherwise be walked from its start after
/// every read). It keeps the spans of the arguments already here.
///
/// The buffer may only grow between calls, except by what a call consumed.
/// After an error the parser means nothing (the connection is closed).
#[derive(Debug, Default)]
pub struct RequestParser {
    /// The multibulk request under way, if one was incomplete.
    partial: Option<Partial>,
}

/// How far an incomplete multibulk request got.
#[derive(Debug)]
struct Partial {
    /// Arguments it announced.
    n: usize,
    /// Where the next argument's header starts.
    pos: usize,
    /// The arguments complete so far (start, end), in the buffer.
    spans: Vec<(usize, usize)>,
}

impl RequestParser {
    /// Splits one request off the front of `buf`, or remembers how far an
    /// incomplete one got and returns `None`.
    ///
    /// # Errors
    /// As [`parse_request`].
    pub fn parse(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Option<Request>, ProtocolError> {
        loop {
            let step = match (self.partial.take(), buf.first()) {
                (Some(partial), _) => resume_multibulk(buf, limits, partial)?,
                (None, None) => return Ok(None),
                (None, Some(b'*')) => parse_multibulk(buf, limits)?,
                (None, Some(_)) => parse_inline(buf, limits)?,
            };
            match step {
                Step::Incomplete(partial) => {
                    self.partial = partial;
                    return Ok(None);
                }
                Step::Empty => continue,
                Step::Request(r) => return Ok(Some(r)),
            }
        }
    }
}

/// What one parsing step did with the front of the buffer.
enum Step {
    /// Not all here yet; nothing consumed. A multibulk request says how far it
    /// got.
    Incomplete(Option<Partial>),
    /// Consumed something that is no request (an empty line, `*0`, `*-1`).
    Empty,
    /// Consumed one request.
    Request(Request),
}

fn parse_multibulk(buf: &mut BytesMut, limits: &Limits) -> Result<Step, ProtocolError> {
    let Some(eol) = find_crlf(buf, 1) else {
        check_header_len(buf, 0)?;
        return Ok(Step::Incomplete(None));
    };
    let n = parse_int(&buf[1..eol]).ok_or_else(|| perr("invalid multibulk length"))?;
    if n > limits.max_args as i64 {
        return Err(perr(if limits.unauthenticated {
            "unauthenticated multibulk length"
        } else {
            "invalid multibulk length"
        }));
    }
    if n <= 0 {
        // `*0` and `*-1` are accepted and ignored by Redis; so do we. The caller
        // loops (no recursion: a run of them must not grow the stack).
        let _ = buf.split_to(eol + 2);
        return Ok(Step::Empty);
    }
    let n = n as usize;
    let partial = Partial {
        n,
        pos: eol + 2,
        // The count is the client's word: room grows with the arguments that
        // actually arrive, not with what a header claims.
        spans: Vec::with_capacity(n.min(64)),
    };
    resume_multibulk(buf, limits, partial)
}

/// Finds the span of every argument not found yet without copying, so nothing
/// is consumed unless the whole request is here.
fn resume_multibulk(buf: &mut BytesMut, limits: &Limits, mut p: Partial) -> Result<Step, ProtocolError> {
    while p.spans.len() < p.n {
        let pos = p.pos;
        match buf.get(pos) {
            None => return Ok(Step::Incomplete(Some(p))),
            Some(b'$') => {}
            Some(&b) => {
                return Err(perr(format!("expected '$', got '{}'", char::from(b))));
            }
        }
        let Some(eol) = find_crlf(buf, pos + 1) else {
            check_header_len(buf, pos)?;
            return Ok(Step::Incomplete(Some(p)));
        };
        let len = parse_int(&buf[pos + 1..eol]).ok_or_else(|| perr("invalid bulk length"))?;
        if len < 0 {
            return Err(perr("invalid bulk length"));
        }
        if len as u64 > limits.max_bulk_len as u64 {
            return Err(perr(if limits.unauthenticated {
                "unauthenticated bulk length"
            } else {
                "invalid bulk length"
            }));
        }
        let start = eol + 2;
        let end = start + len as usize;
        if buf.len() < end + 2 {
            // Make room once for the rest of a large argument instead of letting
            // the buffer grow by doubling while it trickles in.
            buf.reserve(end + 2 - buf.len());
            return Ok(Step::Incomplete(Some(p)));
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(perr("bulk string not terminated by CRLF"));
        }
        p.spans.push((start, end));
        p.pos = end + 2;
    }
    let raw = buf.split_to(p.pos).freeze();
    let args = p.spans.into_iter().map(|(s, e)| raw.slice(s..e)).collect();
    Ok(Step::Request(Request { args, raw }))
}

/// A length header (`*123` or `$123`) without its CRLF yet: fine while short,
/// garbage once it is longer than any number could be.
fn check_header_len(buf: &[u8], start: usize) -> Result<(), ProtocolError> {
    if buf.len() - start > 32 {
        Err(perr("invalid length header"))
    } else {
        Ok(())
    }
}

fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Step, ProtocolError> {
    // Redis looks for the newline with `strchr`, which stops at a NUL byte: a
    // line with a NUL before its newline never ends for Redis, and the request
    // waits (until the size limit below refuses it). The same here, rather
    // than running a command Redis would never have run.
    let Some(nl) = buf
        .iter()
        .position(|&b| b == b'\n' || b == 0)
        .filter(|&i| buf[i] == b'\n')
    else {
        if buf.len() > limits.max_inline_len {
            return Err(perr("too big inline request"));
        }
        return Ok(Step::Incomplete(None));
    };
    if nl > limits.max_inline_len {
        // Checked here too, not only while the line is incomplete: otherwise a
        // long line would be refused or accepted depending on how it was cut
        // into reads (found by fuzzing).
        return Err(perr("too big inline request"));
    }
    let line = buf.split_to(nl + 1).freeze();
    let text = line.slice(..nl);
    let text = match text.last() {
        Some(b'\r') => text.slice(..text.len() - 1),
        _ => text,
    };
    let args = split_inline(&text)?;
    if args.is_empty() {
        return Ok(Step::Empty);
    }
    let raw = encode_array(&args);
    Ok(Step::Request(Request { args, raw }))
}

/// C's `isspace`: what separates arguments and may follow a closing quote.
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Splits an inline command line into arguments by the rules of Redis's
/// `sdssplitargs`, so a line means what it means to redis-server:
///
/// * arguments are separated by C whitespace (space, `\t`, `\n`, `\r`, `\v`,
///   `\f`), though only space, `\t`, `\n` and `\r` end an unquoted one (`a\vb`
///   is one argument, as in Redis);
/// * a quote starts a quoted part anywhere in an argument (`a"b c"` is `ab c`),
///   and its closing quote ends the argument: it must be followed by
///   whitespace or the end of the line, or the line is "unbalanced";
/// * inside double quotes, `\xHH` (two hex digits) is that byte, `\n`, `\r`,
///   `\t`, `\b` and `\a` are control characters, and a backslash before any
///   other character stands for that character;
/// * inside single quotes, only `\'` is an escape.
///
/// A NUL byte ends the line (Redis reads it as a C string); the caller sends
/// none, as such a line never completes (see `parse_inline`).
fn split_inline(line: &Bytes) -> Result<Vec<Bytes>, ProtocolError> {
    let unbalanced = || perr("unbalanced quotes in request");
    let end = line.iter().position(|&c| c == 0).unwrap_or(line.len());
    let b = &line[..end];
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while b.get(i).copied().is_some_and(is_c_space) {
            i += 1;
        }
        if i >= b.len() {
            return Ok(args);
        }
        let start = i;
        while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'\'') {
            i += 1;
        }
        let quote = match b.get(i) {
            Some(&q @ (b'"' | b'\'')) => q,
            // An unquoted argument is a slice of the line: no copy.
            _ => {
                args.push(line.slice(start..i));
                continue;
            }
        };
        let mut arg = b[start..i].to_vec();
        i += 1;
        loop {
            let Some(&c) = b.get(i) else {
                return Err(unbalanced());
            };
            let next = b.get(i + 1).copied();
            if c == quote {
                if next.is_some_and(|n| !is_c_space(n)) {
                    return Err(unbalanced());
                }
                i += 1;
                break;
            }
            if c != b'\\' || next.is_none() {
                arg.push(c);
                i += 1;
                continue;
            }
            if quote == b'\'' {
                if next == Some(b'\'') {
                    arg.push(b'\'');
                    i += 2;
                } else {
                    arg.push(c);
                    i += 1;
                }
                continue;
            }
            let hex = |j: usize| b.get(j).and_then(|&d| char::from(d).to_digit(16));
            if let (Some(b'x'), Some(hi), Some(lo)) = (next, hex(i + 2), hex(i + 3)) {
                arg.push((hi * 16 + lo) as u8);
                i += 4;
                continue;
            }
            arg.push(match next {
                Some(b'n') => b'\n',
                Some(b'r') => b'\r',
                Some(b't') => b'\t',
                Some(b'b') => 0x08,
                Some(b'a') => 0x07,
                Some(other) => other,
                None => c,
            });
            i += 2;
        }
        args.push(Bytes::from(arg));
    }
}

/// Length of the first complete reply frame in `buf`, or `None` if it is not all
/// here yet. Nested aggregates are walked iteratively: no recursion, no
/// allocation. A reader whose buffer grows across reads uses a [`ReplyScan`]
/// instead, which does not walk again what it walked before.
///
/// Every RESP3 type is framed too (a backend connection that said `HELLO 3`
/// answers in RESP3): the line types null `_`, double `,`, boolean `#` and big
/// number `(`; the length-prefixed blob error `!` and verbatim string `=`; the
/// aggregates set `~` and push `>` (n frames), map `%` (2n frames) and
/// attribute `|` (2n frames, then the frame they annotate, all one reply).
///
/// # Errors
/// `buf` does not start with a RESP2 or RESP3 frame.
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    ReplyScan::default().next_len(buf)
}

/// [`reply_len`] resumed across reads. A reply of n elements that arrives in k
/// reads would be walked k times from its start by `reply_len`: O(n·k), which
/// for a million-element `LRANGE` in 64 KB reads is seconds of CPU. The scan
/// keeps where the last call stopped (a frame boundary, and how many frames the
/// reply still owes there), so each byte is walked once.
///
/// The buffer may only grow between calls; once a call returns a length, the
/// scan starts over, and the caller splits that reply off the front. After an
/// error the scan means nothing (the connection is dropped).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplyScan {
    /// Where the next frame to walk starts.
    pos: usize,
    /// Frames the reply still owes from `pos`; 0 when no reply is under way.
    pending: u64,
}

impl ReplyScan {
    /// The length of the first complete reply in `buf`, or `None` (remembering
    /// how far it got) if it is not all here yet.
    ///
    /// # Errors
    /// As [`reply_len`].
    pub fn next_len(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let (mut pos, mut pending) = match self.pending {
            0 => (0, 1),
            n => (self.pos, n),
        };
        while pending > 0 {
            // A frame is walked whole or not at all: what is kept is a boundary.
            (self.pos, self.pending) = (pos, pending);
            let Some(&kind) = buf.get(pos) else {
                return Ok(None);
            };
            let Some(eol) = find_crlf(buf, pos + 1) else {
                return Ok(None);
            };
            pending -= 1;
            match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => pos = eol + 2,
                b'$' | b'!' | b'=' => {
                    let n = parse_int(&buf[pos + 1..eol]).ok_or_else(|| perr("bad bulk length in reply"))?;
                    pos = eol + 2;
                    if n >= 0 {
                        pos += n as usize + 2;
                        if buf.len() < pos {
                            return Ok(None);
                        }
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(&buf[pos + 1..eol]).ok_or_else(|| perr("bad array length in reply"))?;
                    pos = eol + 2;
                    let more = match kind {
                        _ if n <= 0 => u64::from(kind == b'|'),
                        b'%' => 2 * n as u64,
                        // An attribute's pairs come before the reply itself.
                        b'|' => 2 * n as u64 + 1,
                        _ => n as u64,
                    };
                    // Nested huge counts must not wrap the counter (a wrapped one
                    // would end the frame early).
                    pending = pending
                        .checked_add(more)
                        .ok_or_else(|| perr("array length overflow in reply"))?;
                }
                other => {
                    return Err(perr(format!("unexpected reply type byte 0x{other:02x}")));
                }
            }
        }
        *self = ReplyScan::default();
        Ok(Some(pos))
    }
}

/// The elements of an array reply, each as its own complete frame (zero-copy).
/// `None` if `reply` is not an array (an error reply, say) or is a nil array.
pub fn array_items(reply: &Bytes) -> Option<Vec<Bytes>> {
    if reply.first() != Some(&b'*') {
        return None;
    }
    let eol = find_crlf(reply, 1)?;
    let n = parse_int(&reply[1..eol])?;
    if n < 0 {
        return None;
    }
    // Each item takes at least 3 bytes: the count cannot make us reserve more.
    let mut items = Vec::with_capacity((n as usize).min(reply.len() / 3));
    let mut pos = eol + 2;
    for _ in 0..n {
        let len = reply_len(reply.get(pos..)?).ok()??;
        items.push(reply.slice(pos..pos + len));
        pos += len;
    }
    Some(items)
}

/// The payload of a bulk string frame (`$3\r\nfoo\r\n` → `foo`), zero-copy.
/// `None` for any other frame, including the nil bulk.
pub fn bulk_payload(frame: &Bytes) -> Option<Bytes> {
    if frame.first() != Some(&b'$') {
        return None;
    }
    let eol = frame.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(frame.get(1..eol)?).ok()?.parse().ok()?;
    let start = eol + 2;
    let end = start.checked_add(len)?;
    (frame.len() >= end.checked_add(2)?).then(|| frame.slice(start..end))
}

/// The value of an integer reply (`:42\r\n`), or `None` for any other frame.
pub fn integer(reply: &[u8]) -> Option<i64> {
    if reply.first() != Some(&b':') {
        return None;
    }
    let eol = find_crlf(reply, 1)?;
    parse_int(&reply[1..eol])
}

/// True for an error reply (`-…`).
pub fn is_error(reply: &[u8]) -> bool {
    reply.first() == Some(&b'-')
}

/// Encodes `args` as a RESP array of bulk strings (a request).
pub fn encode_array<B: AsRef<[u8]>>(args: &[B]) -> Bytes {
    let size: usize = args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>() + 16;
    let mut out = BytesMut::with_capacity(size);
    put_header(&mut out, b'*', args.len() as i64);
    for a in args {
        put_bulk(&mut out, a.as_ref());
    }
    out.freeze()
}

/// Appends `$<len>\r\n<data>\r\n`.
pub fn put_bulk(out: &mut BytesMut, data: &[u8]) {
    put_header(out, b'$', data.len() as i64);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Appends a `<kind><n>\r\n` header (array, bulk or integer).
pub fn put_header(out: &mut BytesMut, kind: u8, n: i64) {
    out.put_u8(kind);
    let mut digits = itoa_buf(n);
    out.put_slice(digits.as_bytes_mut());
    out.put_slice(b"\r\n");
}

/// Small stack buffer for formatting integers without allocating.
struct ItoaBuf {
    buf: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(n: i64) -> ItoaBuf {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    ItoaBuf { buf, start: i }
}

/// `+<s>\r\n`
pub fn simple(s: &str) -> Bytes {
    Bytes::from(format!("+{s}\r\n"))
}

/// `-<msg>\r\n`; CR and LF inside `msg` become spaces so the frame stays valid.
pub fn error(msg: &str) -> Bytes {
    let clean: String = msg
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    Bytes::from(format!("-{clean}\r\n"))
}

/// [`error`] for a message of any bytes (one that quotes a client's
/// arguments, as Redis's do, byte for byte).
pub fn error_bytes(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(msg.len() + 3);
    out.put_u8(b'-');
    out.extend(
        msg.iter()
            .map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
    );
    out.put_slice(b"\r\n");
    out.freeze()
}

/// `:<n>\r\n`
pub fn int(n: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(24);
    put_header(&mut out, b':', n);
    out.freeze()
}

/// A bulk string reply.
pub fn bulk(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    put_bulk(&mut out, data);
    out.freeze()
}

/// `$-1\r\n`, the nil bulk reply.
pub const NIL: &[u8] = b"$-1\r\n";
/// `+OK\r\n`
pub const OK: &[u8] = b"+OK\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_scan_resumes_at_the_first_frame_not_all_here() {
        let reply = b"*3\r\n$3\r\nfoo\r\n*2\r\n:1\r\n:2\r\n$5\r\nhello\r\n";
        let third = reply.len() - b"$5\r\nhello\r\n".len();
        let mut scan = ReplyScan::default();
        // Cut inside the last bulk: the walk stops at its header, one frame owed.
        assert_eq!(scan.next_len(&reply[..reply.len() - 3]), Ok(None));
        assert_eq!((scan.pos, scan.pending), (third, 1));
        // Cut inside the nested array: it stops at `:2`, which the nested array
        // and the outer one's last element still owe.
        let mut scan = ReplyScan::default();
        let at_two = third - b":2\r\n".len();
        assert_eq!(scan.next_len(&reply[..at_two + 2]), Ok(None));
        assert_eq!((scan.pos, scan.pending), (at_two, 2));
        // The rest arrives: the reply's length, and the scan starts over.
        assert_eq!(scan.next_len(reply), Ok(Some(reply.len())));
        assert_eq!(scan, ReplyScan::default());
        let mut two = reply.to_vec();
        two.extend_from_slice(b"+OK\r\n");
        assert_eq!(scan.next_len(&two), Ok(Some(reply.len())));
        assert_eq!(scan.next_len(&two[reply.len()..]), Ok(Some(5)));
    }

    #[test]
    fn a_request_parser_resumes_at_the_first_argument_not_all_here() {
        let limits = Limits::default();
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1\r\nk"[..]);
        assert_eq!(parser.parse(&mut buf, &limits).map(|r| r.is_none()), Ok(true));
        let p = parser.partial.as_ref().expect("under way");
        assert_eq!((p.n, p.pos, p.spans.clone()), (3, 13, vec![(8, 11)]));
        buf.extend_from_slice(b"\r\n$1\r\nv\r\n*1\r\n$4\r\nPING\r\n");
        let set = parser.parse(&mut buf, &limits).expect("valid").expect("complete");
        assert_eq!(set.args, [&b"SET"[..], b"k", b"v"]);
        assert!(parser.partial.is_none());
        let ping = parser.parse(&mut buf, &limits).expect("valid").expect("complete");
        assert_eq!(&ping.raw[..], b"*1\r\n$4\r\nPING\r\n");
        assert!(buf.is_empty());
        // A header's count is not taken at its word: what is kept grows with
        // the arguments that arrive.
        let mut buf = BytesMut::from(&b"*1048576\r\n$1\r\na\r\n"[..]);
        assert_eq!(parser.parse(&mut buf, &limits).map(|r| r.is_none()), Ok(true));
        assert!(parser.partial.as_ref().expect("under way").spans.capacity() <= 64);
    }

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = parse_request(&mut buf, &Limits::default())? {
            out.push(r.args.iter().map(|a| a.to_vec()).collect());
        }
        Ok(out)
    }

    #[test]
    fn pipelined_requests_share_the_allocation() {
        let input = b"*3\r\n$3\r\nSET\r\n$3\r\nfoo\r\n$3\r\nbar\r\n*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n";
        let mut buf = BytesMut::from(&input[..]);
        let base = buf.as_ptr() as usize;
        let set = parse_request(&mut buf, &Limits::default())
            .expect("ok")
            .expect("some");
        assert_eq!(set.args, vec![&b"SET"[..], b"foo", b"bar"]);
        assert_eq!(&set.raw[..], &input[..31]);
        // Zero-copy: the argument points into the original buffer.
        assert_eq!(set.args[1].as_ptr() as usize, base + 17);
        let get = parse_request(&mut buf, &Limits::default())
            .expect("ok")
            .expect("some");
        assert_eq!(get.name(), b"GET");
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_wait_for_more_bytes_at_every_cut() {
        let input = b"*3\r\n$3\r\nSET\r\n$5\r\nhello\r\n$0\r\n\r\n";
        for cut in 0..input.len() {
            let mut buf = BytesMut::from(&input[..cut]);
            let r = parse_request(&mut buf, &Limits::default()).expect("no error");
            assert!(r.is_none(), "cut at {cut} parsed early");
            assert_eq!(buf.len(), cut, "cut at {cut} consumed bytes");
            buf.extend_from_slice(&input[cut..]);
            let r = parse_request(&mut buf, &Limits::default())
                .expect("ok")
                .expect("complete");
            assert_eq!(r.args, vec![&b"SET"[..], b"hello", b""]);
        }
    }

    #[test]
    fn inline_commands_are_accepted_like_redis() {
        let got = parse_all(b"PING\r\n\r\n  set k \"a b\\n\" 'c d'\nECHO x\r\n").expect("ok");
        assert_eq!(
            got,
            vec![
                vec![b"PING".to_vec()],
                vec![b"set".to_vec(), b"k".to_vec(), b"a b\n".to_vec(), b"c d".to_vec()],
                vec![b"ECHO".to_vec(), b"x".to_vec()],
            ]
        );
        let mut buf = BytesMut::from(&b"GET fo"[..]);
        assert!(parse_request(&mut buf, &Limits::default()).expect("ok").is_none());
        let mut buf = BytesMut::from(&b"ECHO \"open\r\n"[..]);
        assert!(parse_request(&mut buf, &Limits::default()).is_err());
    }

    /// Each case was checked against redis-server 7.0.15 (`sdssplitargs`).
    #[test]
    fn inline_lines_split_as_redis_does() {
        let ok: &[(&[u8], &[&[u8]])] = &[
            (br#"SET "\x41" hexval"#, &[b"SET", b"A", b"hexval"]),
            (br"SET 'it\'s' 1", &[b"SET", b"it's", b"1"]),
            (br#"SET a"b c" v"#, &[b"SET", b"ab c", b"v"]),
            (br"ECHO 'a\nb'", &[b"ECHO", br"a\nb"]),
            (
                br#"ECHO "a\qb\x4g\x4A\a\b\n\r\t""#,
                &[b"ECHO", b"aqbx4gJ\x07\x08\n\r\t"],
            ),
            (br#"ECHO "\xff\x00z""#, &[b"ECHO", b"\xff\x00z"]),
            (b"ECHO\x0bx", &[b"ECHO\x0bx"]),
            (b"\x0bECHO x", &[b"ECHO", b"x"]),
            (b"ECHO \"a\"\x0b", &[b"ECHO", b"a"]),
            (b"ECHO a\x0cb", &[b"ECHO", b"a\x0cb"]),
            (b"ECHO '' \"\"", &[b"ECHO", b"", b""]),
            (br#"ECHO "a\"b""#, &[b"ECHO", b"a\"b"]),
            (br"ECHO 'a\\b' a\b", &[b"ECHO", br"a\\b", br"a\b"]),
            (br#"ECHO "\\""#, &[b"ECHO", b"\\"]),
            (b"  PING \t \r", &[b"PING"]),
        ];
        for (line, want) in ok {
            let got = parse_all(&[*line, b"\r\n"].concat());
            let want: Vec<Vec<u8>> = want.iter().map(|a| a.to_vec()).collect();
            assert_eq!(got, Ok(vec![want]), "{}", String::from_utf8_lossy(line));
        }
        let unbalanced: &[&[u8]] = &[
            br#"ECHO "foo"bar"#,
            br#"ECHO "x"#,
            br#"ECHO "a\"#,
            b"ECHO 'a",
            b"ECHO 'a'b",
            br"ECHO 'a\'",
        ];
        for line in unbalanced {
            let got = parse_all(&[*line, b"\r\n"].concat());
            assert_eq!(
                got,
                Err(perr("unbalanced quotes in request")),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// Redis finds the end of an inline line with `strchr`, which stops at a
    /// NUL: such a line never ends, and waits until it is too long.
    #[test]
    fn an_inline_line_with_a_nul_never_ends() {
        let input = b"ECHO a\0b\r\nPING\r\n";
        let mut buf = BytesMut::from(&input[..]);
        assert_eq!(
            parse_request(&mut buf, &Limits::default()).map(|r| r.is_none()),
            Ok(true)
        );
        assert_eq!(&buf[..], &input[..]);
        let small = Limits {
            max_inline_len: 8,
            ..Limits::default()
        };
        assert!(parse_request(&mut buf, &small).is_err());
    }

    /// A line Redis takes when it arrives whole (up to 81,910 bytes with its
    /// CRLF) is taken however it arrives; one byte over the bound is not.
    #[test]
    fn inline_lines_are_bounded_just_above_what_redis_takes() {
        let max = Limits::default().max_inline_len;
        for total in [65_636, 81_910, max + 1] {
            let line = [b"SET ".as_slice(), &vec![b'a'; total - 8], b" v\r\n"].concat();
            let got = parse_all(&line).expect("accepted");
            assert_eq!(got[0][1].len(), total - 8);
            // Cut just before its newline, it waits.
            let mut buf = BytesMut::from(&line[..total - 1]);
            assert!(
                parse_request(&mut buf, &Limits::default())
                    .expect("waits")
                    .is_none()
            );
        }
        let line = [b"SET ".as_slice(), &vec![b'a'; max - 6], b" v\r\n"].concat();
        assert!(parse_all(&line).is_err());
        let mut buf = BytesMut::from(&line[..max + 1]);
        assert!(parse_request(&mut buf, &Limits::default()).is_err());
    }

    #[test]
    fn inline_request_is_forwarded_as_an_array() {
        let mut buf = BytesMut::from(&b"get foo\r\n"[..]);
        let r = parse_request(&mut buf, &Limits::default())
            .expect("ok")
            .expect("some");
        assert_eq!(&r.raw[..], b"*2\r\n$3\r\nget\r\n$3\r\nfoo\r\n");
    }

    #[test]
    fn huge_and_malformed_lengths_fail_at_once() {
        // 2^40 bytes announced: refused before any data arrives.
        assert!(parse_all(b"*2\r\n$3\r\nGET\r\n$1099511627776\r\n").is_err());
        assert!(parse_all(b"*1099511627776\r\n").is_err());
        assert!(parse_all(b"*2\r\n$-5\r\n").is_err());
        assert!(parse_all(b"*1\r\n:12\r\n").is_err());
        assert!(parse_all(b"*1\r\n$3\r\nGETX\r\n").is_err());
        assert!(parse_all(b"*x\r\n").is_err());
        // A header that never ends is garbage, not a partial frame.
        assert!(parse_all(&[b'*'; 100]).is_err());
        let limits = Limits {
            max_bulk_len: 4,
            ..Limits::default()
        };
        let mut buf = BytesMut::from(&b"*1\r\n$5\r\n"[..]);
        assert!(parse_request(&mut buf, &limits).is_err());
    }

    #[test]
    fn empty_multibulk_is_skipped() {
        assert_eq!(parse_all(b"*0\r\n*1\r\n$4\r\nPING\r\n").expect("ok").len(), 1);
    }

    #[test]
    fn reply_len_walks_nested_frames() {
        let r = b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n-ERR x\r\n+OK\r\n";
        assert_eq!(reply_len(r).expect("ok"), Some(r.len() - 5));
        assert_eq!(reply_len(b"*-1\r\n").expect("ok"), Some(5));
        for cut in 0..r.len() - 5 {
            assert_eq!(reply_len(&r[..cut]).expect("ok"), None, "cut {cut}");
        }
        assert!(reply_len(b"?x\r\n").is_err());
    }

    #[test]
    fn array_items_and_integers() {
        let r = Bytes::from_static(b"*3\r\n$1\r\na\r\n$-1\r\n:7\r\n");
        let items = array_items(&r).expect("array");
        assert_eq!(items, vec![&b"$1\r\na\r\n"[..], b"$-1\r\n", b":7\r\n"]);
        assert_eq!(integer(&items[2]), Some(7));
        assert_eq!(integer(b":-3\r\n"), Some(-3));
        assert!(array_items(&Bytes::from_static(b"-ERR no\r\n")).is_none());
    }

    #[test]
    fn encoders() {
        assert_eq!(
            &encode_array(&[b"GET".as_ref(), b"k"])[..],
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
        assert_eq!(&int(-42)[..], b":-42\r\n");
        assert_eq!(&int(0)[..], b":0\r\n");
        assert_eq!(&error("ERR a\r\nb")[..], b"-ERR a  b\r\n");
        assert_eq!(&error_bytes(b"ERR \xff\r\nb")[..], b"-ERR \xff  b\r\n");
        assert_eq!(&bulk(b"")[..], b"$0\r\n\r\n");
    }

    #[test]
    fn bulk_payloads() {
        let f = Bytes::from_static(b"$3\r\nfoo\r\n");
        assert_eq!(bulk_payload(&f).as_deref(), Some(&b"foo"[..]));
        assert_eq!(
            bulk_payload(&Bytes::from_static(b"$0\r\n\r\n")).as_deref(),
            Some(&b""[..])
        );
        assert_eq!(bulk_payload(&Bytes::from_static(b"$-1\r\n")), None);
        assert_eq!(bulk_payload(&Bytes::from_static(b"+OK\r\n")), None);
        assert_eq!(bulk_payload(&Bytes::from_static(b"$5\r\nfoo\r\n")), None);
    }
}
