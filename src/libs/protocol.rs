//! The RESP version a connection speaks (`HELLO 2` or `HELLO 3`), and the few
//! replies whose encoding depends on it: nulls, maps and text.
//!
//! The proxy passes backend replies through untouched, so it never converts
//! between the two versions: a RESP3 client's requests go to backend
//! connections that said `HELLO 3` themselves. Only the replies the proxy makes
//! on its own (HELLO's map, a nil of its own, CLIENT LIST's text) are encoded
//! here, once per version. Framing of every RESP3 type is in
//! [`super::resp::reply_len`]; its tests are below, checked against the
//! `redis-protocol` crate's RESP3 encoder and decoder (a dev-dependency).
//!
//! Imports nothing from the crate but `libs::resp`.

use bytes::{BufMut, Bytes, BytesMut};

use super::resp;

/// A connection's protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// RESP2: what every connection speaks until `HELLO 3`.
    #[default]
    Resp2,
    /// RESP3: typed replies (maps, sets, doubles, `_` nulls, …).
    Resp3,
}

impl Protocol {
    /// The version number, as `HELLO` and `CLIENT LIST` (`resp=`) show it.
    pub fn number(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }

    /// The null of a missing value: `$-1` (RESP2) or `_` (RESP3).
    pub fn null(self) -> Bytes {
        Bytes::from_static(match self {
            Protocol::Resp2 => resp::NIL,
            Protocol::Resp3 => NULL,
        })
    }

    /// The null of a missing aggregate: `*-1` (RESP2) or `_` (RESP3).
    pub fn null_array(self) -> Bytes {
        Bytes::from_static(match self {
            Protocol::Resp2 => b"*-1\r\n",
            Protocol::Resp3 => NULL,
        })
    }

    /// Appends the header of a map of `pairs` key-value pairs: `%n` (RESP3) or
    /// the flat array of 2n items that RESP2 uses instead.
    pub fn put_map_header(self, out: &mut BytesMut, pairs: usize) {
        match self {
            Protocol::Resp2 => resp::put_header(out, b'*', 2 * pairs as i64),
            Protocol::Resp3 => resp::put_header(out, b'%', pairs as i64),
        }
    }

    /// Text meant for people (CLIENT LIST, CLIENT INFO): a bulk string
    /// (RESP2) or a verbatim string of format `txt` (RESP3), as Redis sends.
    pub fn text(self, text: &[u8]) -> Bytes {
        match self {
            Protocol::Resp2 => resp::bulk(text),
            Protocol::Resp3 => {
                let mut out = BytesMut::with_capacity(text.len() + 24);
                resp::put_header(&mut out, b'=', text.len() as i64 + 4);
                out.put_slice(b"txt:");
                out.put_slice(text);
                out.put_slice(b"\r\n");
                out.freeze()
            }
        }
    }
}

/// `_\r\n`, RESP3's null.
pub const NULL: &[u8] = b"_\r\n";

/// True for any null reply: `$-1`, `*-1` (RESP2) or `_` (RESP3).
pub fn is_null(reply: &[u8]) -> bool {
    reply == NULL || reply == resp::NIL || reply == b"*-1\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libs::resp::reply_len;

    /// One frame of every RESP3 type (and the RESP2 ones), each complete.
    const FRAMES: &[&[u8]] = &[
        b"+OK\r\n",
        b"-ERR no\r\n",
        b":-7\r\n",
        b"$3\r\nfoo\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"_\r\n",
        b",3.14\r\n",
        b",inf\r\n",
        b"#t\r\n",
        b"#f\r\n",
        b"(3492890328409238509324850943850943825024385\r\n",
        b"!21\r\nSYNTAX invalid syntax\r\n",
        b"=15\r\ntxt:Some string\r\n",
        b"*2\r\n$1\r\na\r\n_\r\n",
        b"~3\r\n$1\r\na\r\n:1\r\n,2.5\r\n",
        b"%2\r\n$5\r\nfirst\r\n:1\r\n$6\r\nsecond\r\n%1\r\n+k\r\n~0\r\n",
        b"%0\r\n",
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nhi!\r\n",
        b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2\r\n:9\r\n",
        b"*3\r\n|1\r\n+ttl\r\n:3600\r\n$1\r\nx\r\n%1\r\n#t\r\n_\r\n(12\r\n",
        b"|0\r\n:5\r\n",
    ];

    #[test]
    fn every_resp3_type_is_framed_whole() {
        for frame in FRAMES {
            let shown = String::from_utf8_lossy(frame);
            assert_eq!(reply_len(frame).expect("valid"), Some(frame.len()), "{shown}");
            // Followed by another frame, it still ends where it ends.
            let two = [*frame, b"+next\r\n"].concat();
            assert_eq!(reply_len(&two).expect("valid"), Some(frame.len()), "{shown}");
        }
    }

    #[test]
    fn a_frame_split_at_any_byte_waits_then_parses_as_whole() {
        let all: Vec<u8> = FRAMES.concat();
        for cut in 0..=all.len() {
            // Frames are taken off the front as they complete, as the backend
            // reader does; the rest waits for the second half.
            let mut buf = all[..cut].to_vec();
            let mut got = Vec::new();
            let mut rest = &all[cut..];
            loop {
                match reply_len(&buf).expect("valid at every cut") {
                    Some(n) => {
                        got.push(buf.drain(..n).collect::<Vec<u8>>());
                    }
                    None if rest.is_empty() => break,
                    None => {
                        buf.extend_from_slice(rest);
                        rest = &[];
                    }
                }
            }
            assert!(buf.is_empty(), "cut {cut}: bytes left over");
            let want: Vec<Vec<u8>> = FRAMES.iter().map(|f| f.to_vec()).collect();
            assert_eq!(got, want, "cut {cut}");
        }
    }

    /// A pseudo-random RESP3 frame of every kind, nested up to `depth`, with
    /// attributes now and then (a fixed LCG: the same frames every run).
    fn random_frame(seed: &mut u64, depth: u32) -> redis_protocol::resp3::types::OwnedFrame {
        use redis_protocol::resp3::types::{FrameMap, OwnedFrame as F, VerbatimStringFormat};
        let mut next = |n: u64| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*seed >> 33) % n
        };
        let text = |n: u64| format!("v{n}\r\n{n}").into_bytes();
        let attributes = match next(5) {
            0 => Some(FrameMap::from_iter([(
                F::SimpleString {
                    data: b"ttl".to_vec(),
                    attributes: None,
                },
                F::Number {
                    data: next(1000) as i64,
                    attributes: None,
                },
            )])),
            _ => None,
        };
        let kinds = if depth == 0 { 10 } else { 14 };
        let children =
            |seed: &mut u64, n: u64| -> Vec<F> { (0..n).map(|_| random_frame(seed, depth - 1)).collect() };
        match next(kinds) {
            0 => F::BlobString {
                data: text(next(99)),
                attributes,
            },
            1 => F::BlobError {
                data: text(next(99)),
                attributes,
            },
            2 => F::SimpleString {
                data: b"OK".to_vec(),
                attributes,
            },
            3 => F::SimpleError {
                data: "ERR no".into(),
                attributes,
            },
            4 => F::Boolean {
                data: next(2) == 1,
                attributes,
            },
            5 => F::Null,
            6 => F::Number {
                data: next(1 << 40) as i64 - (1 << 39),
                attributes,
            },
            7 => F::Double {
                data: next(1000) as f64 / 8.0,
                attributes,
            },
            8 => F::BigNumber {
                data: b"3492890328409238509324850943850943825024385".to_vec(),
                attributes,
            },
            9 => F::VerbatimString {
                data: text(next(99)),
                format: VerbatimStringFormat::Text,
                attributes,
            },
            10 => {
                let n = next(4);
                F::Array {
                    data: children(seed, n),
                    attributes,
                }
            }
            11 => {
                let n = next(4);
                F::Push {
                    data: children(seed, n),
                    attributes,
                }
            }
            12 => {
                let n = next(4);
                let data = (0..n).map(|i| {
                    (
                        F::Number {
                            data: i as i64,
                            attributes: None,
                        },
                        random_frame(seed, depth - 1),
                    )
                });
                F::Map {
                    data: FrameMap::from_iter(data),
                    attributes,
                }
            }
            _ => {
                let n = next(4);
                let data = (0..n).map(|i| F::BlobString {
                    data: format!("m{i}").into_bytes(),
                    attributes: None,
                });
                F::Set {
                    data: data.collect(),
                    attributes,
                }
            }
        }
    }

    #[test]
    fn frames_encoded_by_redis_protocol_are_framed_whole_and_at_every_cut() {
        use redis_protocol::resp3::{encode, types::Resp3Frame};
        let mut seed = 8;
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let frame = random_frame(&mut seed, 3);
            let mut buf = vec![0; frame.encode_len(false)];
            let n = encode::complete::encode(&mut buf, &frame, false).expect("encodes");
            let bytes = &buf[..n];
            kinds.extend(bytes.first().copied());
            assert_eq!(
                reply_len(bytes).expect("valid"),
                Some(n),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            for cut in 0..n {
                assert_eq!(reply_len(&bytes[..cut]).expect("valid prefix"), None, "cut {cut}");
            }
        }
        let seen: String = kinds.into_iter().map(char::from).collect();
        // Every type came up, attributes (`|`) included (sorted by byte).
        assert_eq!(seen, "!#$%(*+,-:=>_|~");
    }

    #[test]
    fn redis_protocol_decodes_each_frame_to_the_same_length() {
        use redis_protocol::resp3::decode;
        // `$-1` and `*-1` are RESP2 only; RESP3 has `_`.
        for frame in FRAMES.iter().filter(|f| !f.ends_with(b"-1\r\n")) {
            let (_, used) = decode::complete::decode(frame)
                .unwrap_or_else(|e| panic!("{}: {e:?}", String::from_utf8_lossy(frame)))
                .expect("complete");
            assert_eq!(used, frame.len(), "{}", String::from_utf8_lossy(frame));
        }
    }

    #[test]
    fn unknown_type_bytes_are_errors() {
        assert!(reply_len(b"?x\r\n").is_err());
        assert!(reply_len(b"%x\r\n").is_err());
        assert!(reply_len(b"=x\r\n").is_err());
    }

    #[test]
    fn replies_of_the_proxy_in_each_version() {
        assert_eq!(&Protocol::Resp2.null()[..], b"$-1\r\n");
        assert_eq!(&Protocol::Resp3.null()[..], b"_\r\n");
        assert_eq!(&Protocol::Resp2.null_array()[..], b"*-1\r\n");
        assert_eq!(&Protocol::Resp3.null_array()[..], b"_\r\n");
        let mut out = BytesMut::new();
        Protocol::Resp3.put_map_header(&mut out, 7);
        Protocol::Resp2.put_map_header(&mut out, 7);
        assert_eq!(&out[..], b"%7\r\n*14\r\n");
        assert_eq!(&Protocol::Resp2.text(b"a b")[..], b"$3\r\na b\r\n");
        let verbatim = Protocol::Resp3.text(b"a b");
        assert_eq!(&verbatim[..], b"=7\r\ntxt:a b\r\n");
        assert_eq!(reply_len(&verbatim).expect("valid"), Some(verbatim.len()));
        assert!(is_null(b"_\r\n") && is_null(b"$-1\r\n") && is_null(b"*-1\r\n"));
        assert!(!is_null(b"*0\r\n") && !is_null(b"$0\r\n\r\n"));
    }
}
