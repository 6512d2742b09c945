//! The goim v2 client frame: a 16-byte big-endian header and an opaque body,
//! the same on TCP and inside WebSocket messages.
//!
//! ```text
//! 0        4         6     8    12    16
//! | packLen | headerLen | ver | op | seq | body (packLen - 16 bytes) |
//! ```
//!
//! `headerLen` must be 16. Bodies are bounded (4096 bytes by default, as goim),
//! so a peer can never make comet buffer more than one maximal frame. Imports
//! nothing from the crate.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The fixed header length.
pub const HEADER_LEN: usize = 16;
/// goim's default maximum body.
pub const DEFAULT_MAX_BODY: usize = 4096;
/// The `ver` job puts on the frames it builds.
pub const PUSH_VER: i16 = 1;

/// The operation codes of goim v2 (`api/protocol/operation.go`).
pub mod op {
    /// Client heartbeat.
    pub const HEARTBEAT: i32 = 2;
    /// Heartbeat reply: the body is the room's online count (int32).
    pub const HEARTBEAT_REPLY: i32 = 3;
    /// Upstream message; echoed with an empty body.
    pub const SEND_MSG: i32 = 4;
    /// Reserved in goim (never sent).
    pub const SEND_MSG_REPLY: i32 = 5;
    /// Authentication (the first frame), JSON body.
    pub const AUTH: i32 = 7;
    /// Authentication reply.
    pub const AUTH_REPLY: i32 = 8;
    /// A push envelope whose body is one or more whole inner frames.
    pub const RAW: i32 = 9;
    /// Change room: the body is the new room id (`type://id`), empty to leave.
    pub const CHANGE_ROOM: i32 = 12;
    /// Change room reply (echoes the body).
    pub const CHANGE_ROOM_REPLY: i32 = 13;
    /// Watch more ops: comma-separated int32s.
    pub const SUB: i32 = 14;
    /// Sub reply (echoes the body).
    pub const SUB_REPLY: i32 = 15;
    /// Stop watching ops: comma-separated int32s.
    pub const UNSUB: i32 = 16;
    /// Unsub reply (echoes the body).
    pub const UNSUB_REPLY: i32 = 17;
}

/// Why bytes are not a valid frame. Each closes the connection that sent them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// `headerLen` is not 16.
    #[error("header length {0}, want 16")]
    HeaderLen(i16),
    /// `packLen` is negative or shorter than the header.
    #[error("pack length {0} is shorter than the header")]
    PackTooShort(i32),
    /// The body is over the configured maximum.
    #[error("body of {len} bytes is over the maximum {max}")]
    BodyTooLong {
        /// The announced body length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Protocol version; replies echo the client's.
    pub ver: i16,
    /// Operation.
    pub op: i32,
    /// Sequence; replies echo the client's, pushes use 0.
    pub seq: i32,
    /// Opaque body.
    pub body: Bytes,
}

impl Frame {
    /// A frame with these fields.
    pub fn new(ver: i16, op: i32, seq: i32, body: impl Into<Bytes>) -> Frame {
        Frame {
            ver,
            op,
            seq,
            body: body.into(),
        }
    }

    /// The bytes of the whole frame on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Appends the frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.wire_len());
        put_header(dst, self.body.len(), self.ver, self.op, self.seq);
        dst.put_slice(&self.body);
    }

    /// The frame as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.wire_len());
        self.encode(&mut b);
        b.freeze()
    }

    /// Takes one whole frame off the front of `src`, or `None` if more bytes
    /// are needed. Nothing is consumed on `None` or on an error.
    ///
    /// # Errors
    /// A header that can never become a valid frame.
    pub fn decode(src: &mut BytesMut, max_body: usize) -> Result<Option<Frame>, FrameError> {
        let Some(len) = Frame::check(src, max_body)? else {
            return Ok(None);
        };
        let mut whole = src.split_to(len);
        let _pack = whole.get_i32();
        let _header = whole.get_i16();
        let ver = whole.get_i16();
        let op = whole.get_i32();
        let seq = whole.get_i32();
        Ok(Some(Frame {
            ver,
            op,
            seq,
            body: whole.freeze(),
        }))
    }

    /// The length of the whole frame at the front of `src` once it is all
    /// there (`None` until then), without consuming anything.
    ///
    /// # Errors
    /// As [`Frame::decode`].
    pub fn check(src: &[u8], max_body: usize) -> Result<Option<usize>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let pack = i32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let header = i16::from_be_bytes([src[4], src[5]]);
        if header != HEADER_LEN as i16 {
            return Err(FrameError::HeaderLen(header));
        }
        if pack < HEADER_LEN as i32 {
            return Err(FrameError::PackTooShort(pack));
        }
        let body = pack as usize - HEADER_LEN;
        if body > max_body {
            return Err(FrameError::BodyTooLong {
                len: body,
                max: max_body,
            });
        }
        Ok((src.len() >= pack as usize).then_some(pack as usize))
    }
}

/// Appends a header for a body of `body_len` bytes.
pub fn put_header(dst: &mut BytesMut, body_len: usize, ver: i16, op: i32, seq: i32) {
    dst.put_i32((HEADER_LEN + body_len) as i32);
    dst.put_i16(HEADER_LEN as i16);
    dst.put_i16(ver);
    dst.put_i32(op);
    dst.put_i32(seq);
}

/// A push as job builds it: `ver` 1, the business `op`, `seq` 0.
pub fn push_frame(op: i32, body: &[u8]) -> Bytes {
    Frame::new(PUSH_VER, op, 0, Bytes::copy_from_slice(body)).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_at_every_cut() {
        let f = Frame::new(1, 1000, 7, &b"hello"[..]);
        let wire = f.to_bytes();
        assert_eq!(wire.len(), 21);
        assert_eq!(&wire[..4], &21i32.to_be_bytes());
        for cut in 0..wire.len() {
            let mut part = BytesMut::from(&wire[..cut]);
            assert_eq!(Frame::decode(&mut part, DEFAULT_MAX_BODY), Ok(None), "cut {cut}");
            assert_eq!(part.len(), cut, "nothing consumed at cut {cut}");
        }
        let mut two = BytesMut::from(&wire[..]);
        two.extend_from_slice(&wire);
        assert_eq!(Frame::decode(&mut two, DEFAULT_MAX_BODY), Ok(Some(f.clone())));
        assert_eq!(Frame::decode(&mut two, DEFAULT_MAX_BODY), Ok(Some(f)));
        assert!(two.is_empty());
    }

    #[test]
    fn bad_headers_are_refused_before_the_body_arrives() {
        let mut b = BytesMut::new();
        put_header(&mut b, 0, 1, 2, 0);
        b[5] = 17;
        assert_eq!(Frame::decode(&mut b, 4096), Err(FrameError::HeaderLen(17)));

        let mut b = BytesMut::new();
        put_header(&mut b, 5000, 1, 4, 0);
        assert_eq!(
            Frame::decode(&mut b, 4096),
            Err(FrameError::BodyTooLong { len: 5000, max: 4096 })
        );

        let mut b = BytesMut::new();
        b.put_i32(-1);
        b.put_i16(16);
        b.put_slice(&[0; 10]);
        assert_eq!(Frame::decode(&mut b, 4096), Err(FrameError::PackTooShort(-1)));
    }

    #[test]
    fn an_empty_body_is_a_sixteen_byte_frame() {
        let mut b = BytesMut::from(&Frame::new(1, op::HEARTBEAT, 3, Bytes::new()).to_bytes()[..]);
        assert_eq!(b.len(), HEADER_LEN);
        let f = Frame::decode(&mut b, 0).ok().flatten();
        assert_eq!(
            f.map(|f| (f.op, f.seq, f.body.len())),
            Some((op::HEARTBEAT, 3, 0))
        );
    }
}
