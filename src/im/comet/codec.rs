//! A `tokio-util` codec of goim v2 frames ([`crate::im::frame`]) for byte
//! streams: comet's TCP read path decodes with it, and the protocol client
//! ([`crate::im::client`]) runs it under `Framed`. The frame rules (header
//! length 16, bounded body) are frame.rs's; this file only adapts them.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::im::frame::{DEFAULT_MAX_BODY, Frame, FrameError, HEADER_LEN};

/// Why a stream of frames broke.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid frame; the connection cannot continue.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes and encodes whole frames, refusing bodies over `max_body`.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max_body: usize,
}

impl FrameCodec {
    /// A codec refusing bodies over `max_body` bytes.
    pub fn new(max_body: usize) -> FrameCodec {
        FrameCodec { max_body }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_BODY)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let frame = Frame::decode(src, self.max_body)?;
        if frame.is_none() && src.len() >= HEADER_LEN {
            // The header is here and valid (decode checked it, so the length is
            // bounded): make room for the rest of the frame in one go.
            let pack = i32::from_be_bytes([src[0], src[1], src[2], src[3]]);
            src.reserve(usize::try_from(pack).unwrap_or(0).saturating_sub(src.len()));
        }
        Ok(frame)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::frame::op;
    use bytes::BufMut;

    #[test]
    fn decodes_split_and_glued_frames() {
        let mut codec = FrameCodec::default();
        let a = Frame::new(1, op::HEARTBEAT, 1, bytes::Bytes::new());
        let b = Frame::new(1, op::SEND_MSG, 2, &b"hi"[..]);
        let mut wire = BytesMut::new();
        codec.encode(a.clone(), &mut wire).expect("encode");
        codec.encode(b.clone(), &mut wire).expect("encode");
        let mut src = BytesMut::from(&wire[..20]);
        assert_eq!(codec.decode(&mut src).expect("ok"), Some(a));
        assert_eq!(codec.decode(&mut src).expect("ok"), None);
        src.extend_from_slice(&wire[20..]);
        assert_eq!(codec.decode(&mut src).expect("ok"), Some(b));
        assert!(src.is_empty());
    }

    #[test]
    fn each_bad_header_is_an_error() {
        let mut codec = FrameCodec::new(8);
        let mut big = BytesMut::new();
        crate::im::frame::put_header(&mut big, 9, 1, op::SEND_MSG, 0);
        assert!(matches!(
            codec.decode(&mut big),
            Err(CodecError::Frame(FrameError::BodyTooLong { len: 9, max: 8 }))
        ));
        let mut neg = BytesMut::new();
        neg.put_i32(-5);
        neg.put_i16(16);
        neg.put_slice(&[0; 10]);
        assert!(matches!(
            codec.decode(&mut neg),
            Err(CodecError::Frame(FrameError::PackTooShort(-5)))
        ));
        let mut garbage = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
        assert!(matches!(
            codec.decode(&mut garbage),
            Err(CodecError::Frame(FrameError::HeaderLen(_)))
        ));
    }
}
