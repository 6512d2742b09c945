//! Property tests (proptest) of the RESP parsers in [`super::resp`]: the request
//! parser [`parse_request`] and the reply splitter [`reply_len`], with the frame
//! readers that run on its frames. They run in plain `cargo test`; the case
//! counts keep the whole file to a few seconds in a debug build.
//!
//! The properties are the ones the proxy relies on:
//! * a byte stream parses the same whether it arrives whole or cut into reads
//!   at any points (valid pipelines, random bytes and mutated frames alike);
//! * no input panics;
//! * a length header beyond the limits is an error as soon as the header is
//!   read, with nothing more buffered and nothing reserved for it;
//! * requests round-trip through the encoder [`encode_array`];
//! * an inline line whose arguments are quoted the way Redis quotes them
//!   (`sdscatrepr`, single quotes, bare words) parses back to them.
//!
//! The regression tests at the end are inputs the fuzzer (`fuzz/`,
//! `scripts/fuzz.sh`) found. Imports only `libs::resp` and `libs::protocol`.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;

use super::protocol;
use super::resp::{
    Limits, ReplyScan, RequestParser, array_items, bulk_payload, encode_array, integer, parse_request,
    reply_len,
};

/// Small limits, so random inputs reach the limit checks.
const SMALL: Limits = Limits {
    max_bulk_len: 64,
    max_args: 16,
    max_inline_len: 64,
    unauthenticated: false,
};

/// `data` cut at `cuts` (indexes into it; any order, repeats allowed).
fn pieces<'a>(data: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
    at.push(0);
    at.push(data.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

/// Requests parsed from `reads` fed one after the other as a session does, then
/// the bytes left over (or `Err` if the parser refused the input).
type Parsed = (Vec<(Vec<Bytes>, Bytes)>, Result<Vec<u8>, ()>);

fn parse_reads(reads: &[&[u8]], limits: &Limits) -> Parsed {
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    // As the session does: one parser, resumed across reads.
    let mut parser = RequestParser::default();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match parser.parse(&mut buf, limits) {
                Ok(Some(r)) => got.push((r.args, r.raw)),
                Ok(None) => break,
                Err(_) => return (got, Err(())),
            }
        }
    }
    (got, Ok(buf.to_vec()))
}

/// Reply frames split off `reads` as the backend reader does, then the bytes
/// left over (or `Err`).
type Framed = (Vec<Vec<u8>>, Result<Vec<u8>, ()>);

fn frame_reads(reads: &[&[u8]]) -> Framed {
    let mut buf: Vec<u8> = Vec::new();
    let mut got = Vec::new();
    let mut scan = ReplyScan::default();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            let resumed = scan.next_len(&buf);
            // Resuming never changes the answer, only what it costs.
            assert_eq!(resumed, reply_len(&buf));
            match resumed {
                Ok(Some(n)) => {
                    assert!(n > 0 && n <= buf.len(), "frame of {n} in {}", buf.len());
                    got.push(buf.drain(..n).collect());
                }
                Ok(None) => break,
                Err(_) => return (got, Err(())),
            }
        }
    }
    (got, Ok(buf))
}

/// Every check that holds for any bytes: parsing and framing do not depend on
/// the cuts, and the frame readers cope with every frame and with `data` itself.
fn check_any(data: &[u8], cuts: &[Index]) {
    let reads = pieces(data, cuts);
    for limits in [SMALL, Limits::default()] {
        assert_eq!(parse_reads(&[data], &limits), parse_reads(&reads, &limits));
    }
    let whole = frame_reads(&[data]);
    assert_eq!(whole, frame_reads(&reads));
    for frame in &whole.0 {
        let items = read_frame(frame);
        if let Some(items) = items {
            // An array's items add up to it, each one frame.
            let header = frame.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1);
            assert_eq!(header + items.iter().map(|i| i.len()).sum::<usize>(), frame.len());
            for item in &items {
                assert_eq!(reply_len(item), Ok(Some(item.len())));
            }
        }
    }
    read_frame(data);
}

/// Runs every frame reader on `bytes`; the array's items, if it is one.
fn read_frame(bytes: &[u8]) -> Option<Vec<Bytes>> {
    let owned = Bytes::copy_from_slice(bytes);
    let _ = (bulk_payload(&owned), integer(bytes), protocol::is_null(bytes));
    array_items(&owned)
}

/// One command's arguments: any bytes, CR and LF included.
fn args() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..6)
}

/// `arg` as Redis's `sdscatrepr` writes it (what redis-cli prints, and what
/// an inline command may say): in double quotes, with `\\`, `\"`, `\n`,
/// `\r`, `\t`, `\a`, `\b` and `\xHH` for every other unprintable byte.
fn redis_repr(arg: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &c in arg {
        match c {
            b'\\' | b'"' => out.extend_from_slice(&[b'\\', c]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x07 => out.extend_from_slice(b"\\a"),
            0x08 => out.extend_from_slice(b"\\b"),
            b' '..=b'~' => out.push(c),
            _ => out.extend_from_slice(format!("\\x{c:02x}").as_bytes()),
        }
    }
    out.push(b'"');
    out
}

/// An inline line whose arguments are any bytes: each one written the way
/// `redis_repr` does, or bare when it is a plain word, or in single quotes
/// when that can hold it. Separators are C whitespace, though `\v` and `\f`
/// only after a quote: a bare word runs on through them, as in Redis.
fn quoted_inline() -> impl Strategy<Value = (Vec<u8>, Vec<Vec<u8>>)> {
    let sep = prop::sample::select(vec![&b" "[..], b"\t", b"  ", b"\x0b", b"\x0c "]);
    (args(), prop::collection::vec(sep, 6), any::<bool>()).prop_map(|(args, seps, single)| {
        let mut line = Vec::new();
        let mut after_word = false;
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                line.extend_from_slice(if after_word { b" " } else { seps[i] });
            }
            // A line that starts with a bare `*` is a multibulk header, not
            // an inline command: a first word of that shape gets quotes.
            let plain = a.first().is_some_and(|&c| i > 0 || c != b'*')
                && a.iter().all(|&c| c.is_ascii_graphic() && c != b'"' && c != b'\'');
            let single_ok = !a.contains(&b'\n') && !a.contains(&0) && a.last() != Some(&b'\\');
            after_word = plain;
            if plain {
                line.extend_from_slice(a);
            } else if single && single_ok {
                line.push(b'\'');
                for &c in a {
                    if c == b'\'' {
                        line.push(b'\\');
                    }
                    line.push(c);
                }
                line.push(b'\'');
            } else {
                line.extend_from_slice(&redis_repr(a));
            }
        }
        line.extend_from_slice(b"\r\n");
        (line, args)
    })
}

/// One command as a client may send it: its bytes and the arguments expected
/// (none for the things a parser skips: empty lines, `*0`, `*-1`).
fn command() -> impl Strategy<Value = (Vec<u8>, Vec<Vec<u8>>)> {
    prop_oneof![
        4 => args().prop_map(|a| (encode_array(&a).to_vec(), a)),
        2 => prop::collection::vec("[a-zA-Z0-9_{}:.-]{1,8}", 1..5).prop_map(|words| {
            let line = format!("{}\r\n", words.join(" ")).into_bytes();
            (line, words.into_iter().map(String::into_bytes).collect())
        }),
        2 => quoted_inline(),
        1 => prop::sample::select(vec![&b"\r\n"[..], b"\n", b"*0\r\n", b"*-1\r\n"])
            .prop_map(|b| (b.to_vec(), Vec::new())),
    ]
}

fn decimal(kind: u8, n: i64) -> Vec<u8> {
    format!("{}{n}\r\n", char::from(kind)).into_bytes()
}

fn length_prefixed(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = decimal(kind, payload.len() as i64);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

/// One reply frame of any RESP2 or RESP3 type, nested up to 4 deep.
fn reply_frame() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop::collection::vec(any::<u8>(), 0..20);
    let leaf = prop_oneof![
        "[a-zA-Z0-9 ]{0,12}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        "[A-Z]{1,6} [a-z ]{0,12}".prop_map(|s| format!("-{s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| decimal(b':', n)),
        payload.clone().prop_map(|p| length_prefixed(b'$', &p)),
        payload.clone().prop_map(|p| length_prefixed(b'!', &p)),
        payload.prop_map(|p| length_prefixed(b'=', &[b"txt:".as_slice(), &p].concat())),
        prop::sample::select(vec![
            &b"$-1\r\n"[..],
            b"*-1\r\n",
            b"_\r\n",
            b"#t\r\n",
            b"#f\r\n",
            b",3.14\r\n",
            b",-inf\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
        ])
        .prop_map(<[u8]>::to_vec),
    ];
    leaf.prop_recursive(4, 48, 4, |inner| {
        prop_oneof![
            // array, set, push: n frames.
            (
                prop::sample::select(vec![b'*', b'~', b'>']),
                prop::collection::vec(inner.clone(), 0..4)
            )
                .prop_map(|(kind, items)| [decimal(kind, items.len() as i64), items.concat()].concat()),
            // map: n pairs.
            prop::collection::vec((inner.clone(), inner.clone()), 0..3).prop_map(|pairs| {
                let body: Vec<u8> = pairs
                    .iter()
                    .flat_map(|(k, v)| [k.as_slice(), v].concat())
                    .collect();
                [decimal(b'%', pairs.len() as i64), body].concat()
            }),
            // attribute: n pairs, then the frame they annotate.
            (prop::collection::vec((inner.clone(), inner.clone()), 0..2), inner).prop_map(
                |(pairs, annotated)| {
                    let body: Vec<u8> = pairs
                        .iter()
                        .flat_map(|(k, v)| [k.as_slice(), v].concat())
                        .collect();
                    [decimal(b'|', pairs.len() as i64), body, annotated].concat()
                }
            ),
        ]
    })
}

/// Bytes drawn mostly from RESP's own alphabet, to get past the first byte.
fn resp_ish() -> impl Strategy<Value = Vec<u8>> {
    let alphabet = b"*$+-:_,#(!=~>%|\r\n\r\n0123456789-- aZ\"'\\".to_vec();
    prop::collection::vec(
        prop_oneof![4 => prop::sample::select(alphabet), 1 => any::<u8>()],
        0..160,
    )
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// A pipeline of random commands (arrays of any bytes, inline commands,
    /// skipped empties) fed in random reads parses to exactly those commands,
    /// the same as when fed whole.
    #[test]
    fn a_pipeline_parses_the_same_at_any_cuts(
        cmds in prop::collection::vec(command(), 1..8),
        cuts in cuts(),
    ) {
        let stream: Vec<u8> = cmds.iter().flat_map(|(b, _)| b.clone()).collect();
        let want: Vec<Vec<Vec<u8>>> =
            cmds.into_iter().map(|(_, a)| a).filter(|a| !a.is_empty()).collect();
        let (got, end) = parse_reads(&pieces(&stream, &cuts), &Limits::default());
        let args: Vec<Vec<Vec<u8>>> =
            got.iter().map(|(a, _)| a.iter().map(|x| x.to_vec()).collect()).collect();
        prop_assert_eq!(args, want);
        prop_assert_eq!(end, Ok(Vec::new()));
        prop_assert_eq!(parse_reads(&[&stream], &Limits::default()), (got, Ok(Vec::new())));
    }

    /// Random nested RESP2/RESP3 replies, cut at random points, split into
    /// exactly the frames they were made of; no prefix of a frame is framed.
    #[test]
    fn replies_frame_the_same_at_any_cuts(
        frames in prop::collection::vec(reply_frame(), 1..6),
        cuts in cuts(),
    ) {
        let stream = frames.concat();
        prop_assert_eq!(frame_reads(&pieces(&stream, &cuts)), (frames.clone(), Ok(Vec::new())));
        for frame in &frames {
            prop_assert_eq!(reply_len(frame), Ok(Some(frame.len())));
            prop_assert_eq!(reply_len(&frame[..frame.len() - 1]), Ok(None));
        }
    }

    /// The parser agrees with the encoder: `encode_array` of any arguments
    /// parses back to them, with `raw` the exact encoding.
    #[test]
    fn requests_round_trip_through_the_encoder(args in args()) {
        let encoded = encode_array(&args);
        let mut buf = BytesMut::from(&encoded[..]);
        let req = parse_request(&mut buf, &Limits::default());
        let req = req.expect("valid").expect("complete");
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&req.raw, &encoded);
        prop_assert_eq!(req.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>(), args);
        // And an inline request is forwarded as the encoder's array.
        let line = b"SET k v\r\n";
        let inline = parse_request(&mut BytesMut::from(&line[..]), &Limits::default());
        let inline = inline.expect("valid").expect("complete");
        prop_assert_eq!(inline.raw, encode_array(&[&b"SET"[..], b"k", b"v"]));
    }

    /// Any arguments, written into an inline line the way Redis quotes them,
    /// parse back to themselves: the parser reads what `sdscatrepr` writes,
    /// as Redis's `sdssplitargs` does.
    #[test]
    fn quoted_inline_arguments_parse_back(cmd in quoted_inline()) {
        let (line, args) = cmd;
        let mut buf = BytesMut::from(&line[..]);
        let req = parse_request(&mut buf, &Limits::default());
        let req = req.expect("valid").expect("complete");
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&req.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>(), &args);
        prop_assert_eq!(req.raw, encode_array(&args));
    }

    /// No input panics, and cuts change nothing: arbitrary bytes.
    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..200), cuts in cuts()) {
        check_any(&data, &cuts);
    }

    /// The same for bytes that look like RESP, so deeper paths are reached.
    #[test]
    fn resp_like_bytes_never_panic(data in resp_ish(), cuts in cuts()) {
        check_any(&data, &cuts);
    }

    /// The same for valid requests and replies with a few bytes overwritten,
    /// inserted or removed.
    #[test]
    fn mutated_frames_never_panic(
        cmds in prop::collection::vec(command(), 1..4),
        frames in prop::collection::vec(reply_frame(), 1..3),
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), 0..3u8), 1..5),
        cuts in cuts(),
    ) {
        let requests: Vec<u8> = cmds.iter().flat_map(|(b, _)| b.clone()).collect();
        for mut data in [requests, frames.concat()] {
            for (at, byte, op) in &edits {
                let i = at.index(data.len() + 1);
                match op {
                    0 if i < data.len() => data[i] = *byte,
                    1 => data.insert(i, *byte),
                    _ if i < data.len() => { data.remove(i); }
                    _ => {}
                }
            }
            check_any(&data, &cuts);
        }
    }

    /// A header announcing more arguments or a longer argument than the limits
    /// allow is refused as soon as it is read: only the header is in the
    /// buffer, and nothing was reserved for the announced size.
    #[test]
    fn oversized_headers_fail_before_anything_is_buffered(
        max_bulk_len in 0usize..1 << 20,
        max_args in 1usize..1 << 16,
        over in prop_oneof![1u64..1000, 1000u64..999_999_999_999_999_999 ],
        prefix in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..3),
    ) {
        let limits = Limits { max_bulk_len, max_args, max_inline_len: 1024, unauthenticated: false };
        let many = max_args as u64 + over;
        let mut buf = BytesMut::from(&format!("*{many}\r\n").into_bytes()[..]);
        prop_assert!(parse_request(&mut buf, &limits).is_err(), "*{}", many);
        prop_assert!(buf.capacity() < 64, "reserved {}", buf.capacity());

        // A long argument after some fine ones: refused on its `$` header.
        let long = (max_bulk_len as u64 + over).min(999_999_999_999_999_999);
        let n = prefix.len() + 1;
        let mut req = format!("*{n}\r\n").into_bytes();
        for a in &prefix {
            req.extend_from_slice(&encode_array(&[a])[4..]);
        }
        req.extend_from_slice(format!("${long}\r\n").as_bytes());
        let mut buf = BytesMut::from(&req[..]);
        prop_assert!(parse_request(&mut buf, &limits).is_err(), "${}", long);
        prop_assert!(buf.capacity() < req.len() + 64, "reserved {}", buf.capacity());

        // At the limit, the header alone waits for the data and consumes nothing.
        let mut at = format!("*1\r\n${max_bulk_len}\r\n").into_bytes();
        if max_bulk_len == 0 {
            at.truncate(at.len() - 1);
        }
        let mut buf = BytesMut::from(&at[..]);
        prop_assert!(parse_request(&mut buf, &limits).expect("within limits").is_none());
        prop_assert_eq!(&buf[..], &at[..]);
    }
}

// Found by the fuzzer (scripts/fuzz.sh); each failed before its fix.

/// An inline line longer than `max_inline_len` was refused when it arrived in
/// pieces (the incomplete-line check) but accepted when it arrived whole.
#[test]
fn a_long_inline_line_is_refused_however_it_arrives() {
    let line = [vec![b'a'; 100], b"\r\n".to_vec()].concat();
    assert!(parse_reads(&[&line], &SMALL).1.is_err());
    assert!(parse_reads(&[&line[..70], &line[70..]], &SMALL).1.is_err());
    let short = [vec![b'a'; 60], b"\r\n".to_vec()].concat();
    assert_eq!(parse_reads(&[&short], &SMALL).0.len(), 1);
}

/// `*0` and `*-1` were skipped by recursion, one stack frame each: a run of
/// them overflowed the stack and aborted the whole proxy.
#[test]
fn a_long_run_of_empty_arrays_does_not_grow_the_stack() {
    let mut input = b"*0\r\n*-1\r\n".repeat(50_000);
    input.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
    let parsed = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || parse_reads(&[&input], &Limits::default()))
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert_eq!(parsed.0.len(), 1);
    assert_eq!(parsed.0[0].0, vec![&b"PING"[..]]);
}

/// Nested aggregates announcing huge counts overflowed the frame counter
/// (a panic in debug builds, a frame ended too early in release).
#[test]
fn nested_huge_aggregate_counts_are_an_error_not_an_overflow() {
    let reply = b"%999999999999999999\r\n".repeat(12);
    assert!(reply_len(&reply).is_err());
    let reply = b"|999999999999999999\r\n".repeat(12);
    assert!(reply_len(&reply).is_err());
    // One such header alone is just incomplete.
    assert_eq!(reply_len(b"*999999999999999999\r\n"), Ok(None));
}

/// The frame readers trusted lengths from the frame: a huge array count
/// reserved memory for it, a huge bulk length overflowed an addition.
#[test]
fn frame_readers_do_not_trust_lengths() {
    assert_eq!(
        array_items(&Bytes::from_static(b"*999999999999999999\r\n:1\r\n")),
        None
    );
    let huge = format!("${}\r\nabc\r\n", usize::MAX - 10);
    assert_eq!(bulk_payload(&Bytes::from(huge)), None);
}
