//! RESP decoding speed: the proxy's zero-copy splitter (`libs::resp`:
//! `parse_request` for client requests, `reply_len` + `split_to` for backend
//! replies, as `proxy/session.rs` and `proxy/backend.rs` use them) against
//! `redis-protocol`'s decoder (`resp2::decode::decode_bytes_mut`, what the
//! framed client `libs::resp_client` runs on).
//!
//! Three inputs: a pipeline of 16 `SET key:NNN value` requests, 16 small `GET`
//! bulk replies, one 16 KB bulk reply. Each iteration splits every frame off a
//! fresh copy of the input (the copy is made outside the timed part).
//! Two more cases arrive in many reads, over a link that delivers 16 KB at a
//! time: an `LRANGE` reply of 100,000 elements (`reply_len` from the buffer's
//! start after each read, against a resumed `ReplyScan`) and an `RPUSH` of
//! 100,000 elements (`parse_request` against a resumed `RequestParser`).
//! Run: `cargo bench --bench resp_decode`; figures in docs/benchmarks.md.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use reborn::libs::resp::{Limits, ReplyScan, RequestParser, encode_array, parse_request, reply_len};
use redis_protocol::resp2::decode::decode_bytes_mut;

/// Frames in the pipelined inputs.
const FRAMES: usize = 16;

/// 16 `SET key:NNN value` requests, as one client pipelines them.
fn set_pipeline() -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..FRAMES {
        let key = format!("key:{i:03}");
        buf.extend_from_slice(&encode_array(&[b"SET".as_ref(), key.as_bytes(), b"value"]));
    }
    buf
}

/// 16 small bulk replies, as 16 pipelined `GET`s get them.
fn get_replies() -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..FRAMES {
        let value = format!("value:{i:03}");
        buf.extend_from_slice(format!("${}\r\n{value}\r\n", value.len()).as_bytes());
    }
    buf
}

/// One 16 KB bulk reply.
fn big_reply() -> BytesMut {
    let mut buf = BytesMut::from(&b"$16384\r\n"[..]);
    buf.extend_from_slice(&[b'x'; 16 * 1024]);
    buf.extend_from_slice(b"\r\n");
    buf
}

/// The proxy's request parser: every request split off `buf`.
fn proxy_requests(mut buf: BytesMut) -> usize {
    let limits = Limits::default();
    let mut n = 0;
    while let Ok(Some(req)) = parse_request(&mut buf, &limits) {
        black_box(req);
        n += 1;
    }
    n
}

/// The proxy's reply splitter: every reply framed by `reply_len`, split off whole.
fn proxy_replies(mut buf: BytesMut) -> usize {
    let mut n = 0;
    while let Ok(Some(len)) = reply_len(&buf) {
        black_box(buf.split_to(len).freeze());
        n += 1;
    }
    n
}

/// redis-protocol's decoder: every frame decoded off `buf`.
fn redis_protocol(mut buf: BytesMut) -> usize {
    let mut n = 0;
    while let Ok(Some(frame)) = decode_bytes_mut(&mut buf) {
        black_box(frame);
        n += 1;
    }
    n
}

/// An array reply of `n` small bulk strings, as `LRANGE list 0 -1` gets it.
fn long_array(n: usize) -> Vec<u8> {
    let mut buf = format!("*{n}\r\n").into_bytes();
    for i in 0..n {
        let item = i.to_string();
        buf.extend_from_slice(format!("${}\r\n{item}\r\n", item.len()).as_bytes());
    }
    buf
}

/// Frames `reply` as it arrives in `read`-byte pieces, asking after each piece
/// whether it is complete; `resume` keeps one `ReplyScan` across the pieces.
fn frame_in_reads(reply: &[u8], read: usize, resume: bool) -> usize {
    let mut buf = Vec::with_capacity(reply.len());
    let mut scan = ReplyScan::default();
    for piece in reply.chunks(read) {
        buf.extend_from_slice(piece);
        let len = if resume {
            scan.next_len(&buf)
        } else {
            reply_len(&buf)
        };
        if let Ok(Some(n)) = len {
            return n;
        }
    }
    0
}

/// Parses `request` as it arrives in `read`-byte pieces, trying after each
/// piece; `resume` keeps one `RequestParser` across the pieces.
fn parse_in_reads(request: &[u8], read: usize, resume: bool) -> usize {
    let limits = Limits::default();
    let mut buf = BytesMut::with_capacity(request.len());
    let mut parser = RequestParser::default();
    for piece in request.chunks(read) {
        buf.extend_from_slice(piece);
        let parsed = if resume {
            parser.parse(&mut buf, &limits)
        } else {
            parse_request(&mut buf, &limits)
        };
        if let Ok(Some(req)) = parsed {
            return req.args.len();
        }
    }
    0
}

fn bench_reads(c: &mut Criterion) {
    let reply = long_array(100_000);
    let read = 16 * 1024;
    assert_eq!(frame_in_reads(&reply, read, false), reply.len());
    assert_eq!(frame_in_reads(&reply, read, true), reply.len());
    let mut group = c.benchmark_group("a 100,000-element reply in 16 KB reads");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reply_len from the start", |b| {
        b.iter(|| frame_in_reads(black_box(&reply), read, false))
    });
    group.bench_function("ReplyScan resumed", |b| {
        b.iter(|| frame_in_reads(black_box(&reply), read, true))
    });
    group.finish();

    let mut args: Vec<Vec<u8>> = vec![b"RPUSH".to_vec(), b"list".to_vec()];
    args.extend((0..100_000).map(|i: u32| i.to_string().into_bytes()));
    let request = encode_array(&args);
    assert_eq!(parse_in_reads(&request, read, false), args.len());
    assert_eq!(parse_in_reads(&request, read, true), args.len());
    let mut group = c.benchmark_group("a 100,000-element RPUSH in 16 KB reads");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_request from the start", |b| {
        b.iter(|| parse_in_reads(black_box(&request), read, false))
    });
    group.bench_function("RequestParser resumed", |b| {
        b.iter(|| parse_in_reads(black_box(&request), read, true))
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    type Splitter = fn(BytesMut) -> usize;
    let cases: [(&str, BytesMut, usize, Splitter); 3] = [
        ("16 SET requests", set_pipeline(), FRAMES, proxy_requests),
        ("16 GET replies", get_replies(), FRAMES, proxy_replies),
        ("one 16 KB reply", big_reply(), 1, proxy_replies),
    ];
    for (name, input, frames, proxy) in cases {
        // Both sides must see every frame, or the comparison is void.
        assert_eq!(proxy(input.clone()), frames, "{name}: proxy splitter");
        assert_eq!(redis_protocol(input.clone()), frames, "{name}: redis-protocol");
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(frames as u64));
        group.bench_function("proxy splitter", |b| {
            b.iter_batched(|| input.clone(), proxy, BatchSize::SmallInput)
        });
        group.bench_function("redis-protocol", |b| {
            b.iter_batched(|| input.clone(), redis_protocol, BatchSize::SmallInput)
        });
        group.finish();
    }
}

criterion_group!(benches, bench, bench_reads);
criterion_main!(benches);
