//! Property tests (proptest) of the push protocol's frame decoder
//! ([`Frame::decode`]), the code comet runs on every byte a client sends over
//! TCP or inside a WebSocket message. They run in plain `cargo test`; the
//! coverage-guided target for the same code is `fuzz/src/bin/frame.rs`.
//!
//! * a byte stream decodes the same whether it arrives whole or cut into reads
//!   at any points (valid frames, random bytes and mutated frames alike), and
//!   nothing panics;
//! * frames round-trip: each decodes to what was encoded, consuming exactly its
//!   bytes;
//! * a header that announces a body over the maximum, or a bad header, is an
//!   error as soon as its 16 bytes are in, before any body is buffered.

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::Index;

use super::frame::{Frame, FrameError, HEADER_LEN, put_header};

/// A small maximum body, so random inputs reach the limit check.
const MAX_BODY: usize = 64;

/// `data` cut at `cuts` (indexes into it; any order, repeats allowed).
fn pieces<'a>(data: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
    at.extend([0, data.len()]);
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

/// Frames decoded from `reads` fed one after the other as a comet connection
/// does, then the bytes left over, or the error that closed the connection.
fn decode_reads(reads: &[&[u8]]) -> (Vec<Frame>, Result<Vec<u8>, FrameError>) {
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match Frame::decode(&mut buf, MAX_BODY) {
                Ok(Some(f)) => got.push(f),
                Ok(None) => break,
                Err(e) => return (got, Err(e)),
            }
        }
    }
    (got, Ok(buf.to_vec()))
}

fn a_frame() -> impl Strategy<Value = Frame> {
    (
        any::<i16>(),
        any::<i32>(),
        any::<i32>(),
        prop::collection::vec(any::<u8>(), 0..=MAX_BODY),
    )
        .prop_map(|(ver, op, seq, body)| Frame::new(ver, op, seq, body))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_frames_decode_the_same_at_any_cut(
        frames in prop::collection::vec(a_frame(), 1..8),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let (got, rest) = decode_reads(&pieces(&wire, &cuts));
        prop_assert_eq!(got, frames);
        prop_assert_eq!(rest, Ok(Vec::new()));
    }

    #[test]
    fn any_bytes_decode_the_same_at_any_cut(
        data in prop::collection::vec(any::<u8>(), 0..200),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        prop_assert_eq!(decode_reads(&pieces(&data, &cuts)), decode_reads(&[&data]));
    }

    #[test]
    fn mutated_frames_decode_the_same_at_any_cut(
        frames in prop::collection::vec(a_frame(), 1..4),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        for (at, byte) in &flips {
            let i = at.index(wire.len());
            wire[i] = *byte;
        }
        prop_assert_eq!(decode_reads(&pieces(&wire, &cuts)), decode_reads(&[&wire]));
    }

    #[test]
    fn an_oversized_body_is_refused_from_the_header_alone(
        body_len in (MAX_BODY + 1)..=(i32::MAX as usize - HEADER_LEN),
        op in any::<i32>(),
    ) {
        let mut header = BytesMut::new();
        put_header(&mut header, body_len, 1, op, 0);
        prop_assert_eq!(header.len(), HEADER_LEN);
        let (got, end) = decode_reads(&[&header]);
        prop_assert!(got.is_empty());
        prop_assert_eq!(end, Err(FrameError::BodyTooLong { len: body_len, max: MAX_BODY }));
    }
}
