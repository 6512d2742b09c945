//! The checks behind the AFL targets in `src/bin/`, shared so that a crash input
//! can also be replayed from a plain test. Beyond "no input panics", each target
//! checks the property the proxy relies on: the result of parsing a byte stream
//! does not depend on how it was cut into reads.
//!
//! Imports only `reborn::libs::{resp, protocol}` and `reborn::im::frame`.

use bytes::{Bytes, BytesMut};
use reborn::im::frame::{Frame, HEADER_LEN};
use reborn::libs::protocol;
use reborn::libs::resp::{self, Limits};

/// Small limits, so the fuzzer reaches the limit checks with small inputs.
const SMALL: Limits = Limits {
    max_bulk_len: 64,
    max_args: 16,
    max_inline_len: 64,
    unauthenticated: false,
};

/// A deterministic stream of chunk sizes (1..=16) derived from the input, so a
/// given input is always cut the same way (AFL wants stable runs).
struct Cuts(u64);

impl Cuts {
    fn new(data: &[u8]) -> Cuts {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        Cuts(h | 1)
    }

    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 16) as usize + 1
    }
}

/// Feeds `data` into `buf`, whole or in small reads, and after each read lets
/// `drain` take what it can off `buf`; `drain` returns false to stop there (the
/// input was refused). Returns false if it stopped.
fn feed(
    data: &[u8],
    chunked: bool,
    buf: &mut BytesMut,
    mut drain: impl FnMut(&mut BytesMut) -> bool,
) -> bool {
    let mut cuts = Cuts::new(data);
    let mut fed = 0;
    loop {
        let take = if chunked { cuts.next() } else { data.len() };
        let upto = (fed + take).min(data.len());
        buf.extend_from_slice(&data[fed..upto]);
        fed = upto;
        if !drain(buf) {
            return false;
        }
        if fed == data.len() {
            return true;
        }
    }
}

/// What parsing a whole stream gave: the requests (args, raw), then either
/// the bytes left over waiting for more, or an error.
#[derive(Debug, PartialEq)]
struct Parsed {
    requests: Vec<(Vec<Bytes>, Bytes)>,
    end: Result<Vec<u8>, ()>,
}

/// Chunked, the requests go through one `RequestParser` resumed across the
/// reads, as a session parses them; whole, through `parse_request`.
fn parse_fed(data: &[u8], limits: &Limits, chunked: bool) -> Parsed {
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    let mut parser = resp::RequestParser::default();
    let all = feed(data, chunked, &mut buf, |buf| {
        loop {
            let parsed = if chunked {
                parser.parse(buf, limits)
            } else {
                resp::parse_request(buf, limits)
            };
            match parsed {
                Ok(Some(r)) => requests.push((r.args, r.raw)),
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    });
    Parsed {
        requests,
        end: if all { Ok(buf.to_vec()) } else { Err(()) },
    }
}

fn parse_one(raw: &[u8]) -> Vec<Bytes> {
    let mut buf = BytesMut::from(raw);
    let r = resp::parse_request(&mut buf, &Limits::default())
        .expect("a request's own encoding parses")
        .expect("and is complete");
    assert!(buf.is_empty(), "a request's encoding is one request");
    r.args
}

/// The request parser: no panic; the same requests and the same outcome
/// whether the input arrives whole or in small reads; every request non-empty,
/// its `raw` a request with the same arguments, and the arguments round-trip
/// through `encode_array`.
pub fn request(data: &[u8]) {
    for limits in [SMALL, Limits::default()] {
        let whole = parse_fed(data, &limits, false);
        let chunked = parse_fed(data, &limits, true);
        assert_eq!(whole, chunked, "a split changed the parse");
        for (args, raw) in &whole.requests {
            assert!(!args.is_empty(), "an empty request was returned");
            assert_eq!(&parse_one(raw), args, "raw does not hold the arguments");
            assert_eq!(&parse_one(&resp::encode_array(args)), args, "round trip");
        }
    }
}

/// Splits `data` into reply frames as the backend reader does, fed whole or in
/// small reads: the frames, then the bytes left over or an error. Chunked, a
/// `ReplyScan` resumes across the reads (as the backend reader's does) and must
/// agree with `reply_len` after every read.
fn split_fed(data: &[u8], chunked: bool) -> (Vec<Vec<u8>>, Result<Vec<u8>, ()>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut scan = resp::ReplyScan::default();
    let all = feed(data, chunked, &mut buf, |buf| {
        loop {
            let len = if chunked {
                let resumed = scan.next_len(buf);
                assert_eq!(resumed, resp::reply_len(buf), "a resumed scan disagreed");
                resumed
            } else {
                resp::reply_len(buf)
            };
            match len {
                Ok(Some(n)) => {
                    assert!(n > 0 && n <= buf.len(), "frame length {n} of {}", buf.len());
                    frames.push(buf.split_to(n).to_vec());
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    });
    (frames, if all { Ok(buf.to_vec()) } else { Err(()) })
}

/// The readers the proxy runs on a frame must not panic, and on a whole
/// frame `array_items` must cut an array into frames that add up to it.
fn read_frame(frame: &[u8], whole: bool) {
    let bytes = Bytes::copy_from_slice(frame);
    if let Some(items) = resp::array_items(&bytes).filter(|_| whole) {
        let body: usize = items.iter().map(|i| i.len()).sum();
        let header = frame.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1);
        assert_eq!(header + body, frame.len(), "array items do not add up");
        for item in &items {
            assert_eq!(resp::reply_len(item), Ok(Some(item.len())), "item is one frame");
        }
    }
    let _ = resp::bulk_payload(&bytes);
    let _ = resp::integer(frame);
    let _ = resp::is_error(frame);
    let _ = protocol::is_null(frame);
}

/// The reply splitter: no panic; the same frames and outcome whether the
/// replies arrive whole or in small reads; a frame is never found in a prefix
/// of itself; the frame readers cope with any frame and any bytes.
pub fn reply(data: &[u8]) {
    let whole = split_fed(data, false);
    let chunked = split_fed(data, true);
    assert_eq!(whole, chunked, "a split changed the framing");
    for frame in &whole.0 {
        assert_eq!(
            resp::reply_len(&frame[..frame.len() - 1]),
            Ok(None),
            "prefix framed"
        );
        read_frame(frame, true);
    }
    // Readers on arbitrary bytes, not only on frames.
    read_frame(data, false);
}

/// Decodes push-protocol frames as a comet connection does, fed whole or in
/// small reads, with `max_body`: the frames, then the bytes left over or the error.
fn decode_fed(data: &[u8], max_body: usize, chunked: bool) -> (Vec<Frame>, Result<Vec<u8>, String>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut error = None;
    feed(data, chunked, &mut buf, |buf| {
        loop {
            let before = buf.len();
            match Frame::decode(buf, max_body) {
                Ok(Some(f)) => {
                    assert_eq!(before - buf.len(), f.wire_len(), "consumed != the frame's length");
                    assert!(f.body.len() <= max_body, "a body over the maximum was returned");
                    frames.push(f);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "bytes consumed without a frame");
                    return true;
                }
                Err(e) => {
                    // Refused from the header alone: never after buffering a body.
                    assert!(before >= HEADER_LEN, "an error before a whole header");
                    error = Some(e.to_string());
                    return false;
                }
            }
        }
    });
    (frames, error.map_or_else(|| Ok(buf.to_vec()), Err))
}

/// The push protocol's frame decoder (`im::frame`): no panic; the same frames
/// and outcome whether the bytes arrive whole or in small reads; a frame
/// re-encodes to exactly the bytes it was decoded from, and a prefix of it is
/// never a frame.
pub fn frame(data: &[u8]) {
    for max_body in [32, reborn::im::frame::DEFAULT_MAX_BODY] {
        let whole = decode_fed(data, max_body, false);
        let chunked = decode_fed(data, max_body, true);
        assert_eq!(whole, chunked, "a split changed the decoding");
        let mut at = 0;
        for f in &whole.0 {
            let bytes = f.to_bytes();
            assert_eq!(&data[at..at + bytes.len()], &bytes[..], "re-encoding differs");
            assert_eq!(
                Frame::check(&bytes[..bytes.len() - 1], max_body),
                Ok(None),
                "prefix framed"
            );
            at += bytes.len();
        }
    }
}
