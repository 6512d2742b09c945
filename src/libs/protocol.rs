//! The RESP version a connection speaks (`HELLO 2` or `HELLO 3`), and the few
//! replies whose encoding depends on it: nulls, maps and text.
//!
//! The proxy passes backend replies through untouched, so it never converts
//! between the two versions: a RESP3 client's requests go to backend
//! connections that said `HELLO 3` themselves. Only the replies the proxy makes
//! on its own (HELLO's map, a nil of its own, CLIENT LIST's text) are encoded
//! here, once per version. Framing of every RESP3 type is in
//! [`super::resp::reply_len`]; its tests are below.
//!
//! Imports nothing from the crate but `libs::resp`.

use bytes::{BufMut, Bytes, BytesMut};

use super::resp;

/// A connection's protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
