//! Raw TCP clients: the accept loop and the [`Transport`] over a `TcpStream`.
//!
//! Reads wait for readiness without a buffer, then read into a small
//! `BytesMut` that grows only to hold one partial frame and is released as
//! soon as it is empty, so an idle connection holds no read buffer. A batch of
//! replies and pushes goes out in one write (OpRaw pushes as their bare inner
//! frames, goim's `WriteTCP`). Imports `codec`, `connection`, `transport`.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::channel::Push;
use super::codec::FrameCodec;
use super::connection::{Accepted, serve};
use super::error::ConnError;
use super::hub::Hub;
use super::stats::CometStats;
use super::transport::Transport;
use crate::im::frame::Frame;
use crate::libs::listener::Listener;

/// Bytes asked of the socket per read when the buffer has less room.
const READ_CHUNK: usize = 512;

/// A raw TCP client socket.
pub struct TcpTransport {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl TcpTransport {
    /// Wraps an accepted stream; bodies over `max_body` end the connection.
    pub fn new(stream: TcpStream, max_body: usize) -> TcpTransport {
        TcpTransport {
            stream,
            buf: BytesMut::new(),
            codec: FrameCodec::new(max_body),
        }
    }
}

impl Transport for TcpTransport {
    async fn read_frames(&mut self, out: &mut Vec<Frame>) -> Result<(), ConnError> {
        // The only await is `readable`: dropped there, nothing was read yet.
        loop {
            self.stream.readable().await?;
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
                self.buf.reserve(READ_CHUNK);
            }
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => return Err(ConnError::PeerClosed),
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
        while let Some(frame) = self.codec.decode(&mut self.buf)? {
            out.push(frame);
        }
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    async fn write(&mut self, replies: &[Frame], pushes: &VecDeque<Push>) -> Result<(), ConnError> {
        let wire: Vec<_> = pushes.iter().map(Push::tcp_bytes).collect();
        let len =
            replies.iter().map(Frame::wire_len).sum::<usize>() + wire.iter().map(|b| b.len()).sum::<usize>();
        let mut out = BytesMut::with_capacity(len);
        for r in replies {
            r.encode(&mut out);
        }
        for b in &wire {
            out.extend_from_slice(b);
        }
        self.stream.write_all(&out).await?;
        Ok(())
    }

    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// Accepts raw TCP clients until `shutdown`, each in its own task, through
/// the role service every role shares (`libs::listener`: accept backoff on
/// `EMFILE`, shutdown, bounded drain).
pub async fn accept_loop(
    hub: Arc<Hub>,
    listener: TcpListener,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let serve_one = move |stream: TcpStream, peer: SocketAddr, stop: CancellationToken| {
        let hub = hub.clone();
        async move {
            CometStats::bump(&hub.stats.accepted_tcp);
            let _ = stream.set_nodelay(true);
            let acc = Accepted {
                transport: TcpTransport::new(stream, hub.protocol.max_body),
                peer,
                cookie: String::new(),
                deadline: Instant::now() + hub.protocol.handshake_timeout,
            };
            serve(hub, acc, stop).await;
        }
    };
    Listener::new(listener)
        .max_connections(limit)
        .serve(serve_one, shutdown)
        .await;
}
