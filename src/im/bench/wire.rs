//! A lean raw-TCP goim v2 connection for the load generator: connect from a
//! chosen source address, authenticate (op 7 / op 8), heartbeat, and read
//! frames from one growable buffer. Deliberately smaller than
//! `im::client::ImClient` (no codec, no WebSocket, no inbox), because the idle
//! benchmark holds thousands of them per generator process. Imports `frame`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::im::bench::error::BenchError;
use crate::im::frame::{HEADER_LEN, PUSH_VER, op};

/// The largest frame accepted from the comet (a room batch is well below).
const MAX_FRAME: usize = 1 << 20;

/// One authenticated connection to a comet.
pub struct WireConn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Encodes one frame: goim's 16-byte big-endian header, then the body.
fn encode(op: i32, seq: i32, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&i32::try_from(len).unwrap_or(i32::MAX).to_be_bytes());
    out.extend_from_slice(&(HEADER_LEN as i16).to_be_bytes());
    out.extend_from_slice(&PUSH_VER.to_be_bytes());
    out.extend_from_slice(&op.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(body);
    out
}

impl WireConn {
    /// Connects to `comet` from `src` (port chosen by the kernel), sends the
    /// auth body and waits for an empty op 8.
    ///
    /// Binding distinct 127.0.0.x sources lets one machine open more
    /// connections to one comet port than a single source's ephemeral ports.
    ///
    /// # Errors
    /// Connect, auth or timeout failures.
    pub async fn open(
        comet: SocketAddr,
        src: Option<Ipv4Addr>,
        auth: &[u8],
        timeout: Duration,
    ) -> Result<WireConn, BenchError> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = src {
            socket.bind(SocketAddr::new(ip.into(), 0))?;
        }
        let stream = tokio::time::timeout(timeout, socket.connect(comet))
            .await
            .map_err(|_| BenchError::Timeout("connect"))??;
        stream.set_nodelay(true)?;
        let mut conn = WireConn {
            stream,
            buf: BytesMut::new(),
        };
        conn.stream.write_all(&encode(op::AUTH, 1, auth)).await?;
        let (reply, body) = tokio::time::timeout(timeout, conn.next_frame())
            .await
            .map_err(|_| BenchError::Timeout("auth reply"))??;
        if reply != op::AUTH_REPLY {
            return Err(BenchError::Refused(format!("op {reply} instead of op 8")));
        }
        if !body.is_empty() {
            return Err(BenchError::Refused(String::from_utf8_lossy(&body).into_owned()));
        }
        // The handshake buffer is not needed any more; idle connections
        // should hold as little as possible.
        conn.buf = BytesMut::new();
        Ok(conn)
    }

    /// Sends a heartbeat (op 2); the comet answers op 3 with the room count.
    ///
    /// # Errors
    /// The socket failed.
    pub async fn heartbeat(&mut self) -> Result<(), BenchError> {
        self.stream.write_all(&encode(op::HEARTBEAT, 0, b"")).await?;
        Ok(())
    }

    /// The next frame: its op and body. Cancel-safe (bytes read stay in the
    /// buffer), so it can sit in a `select!` next to a heartbeat timer.
    ///
    /// # Errors
    /// The comet closed the connection or sent a malformed header.
    pub async fn next_frame(&mut self) -> Result<(i32, Bytes), BenchError> {
        loop {
            if self.buf.len() >= HEADER_LEN {
                let pack = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                let head = i16::from_be_bytes([self.buf[4], self.buf[5]]);
                let pack = usize::try_from(pack).unwrap_or(0);
                let head = usize::try_from(head).unwrap_or(0);
                if head < HEADER_LEN || pack < head || pack > MAX_FRAME {
                    return Err(BenchError::Frame(format!("packLen {pack}, headerLen {head}")));
                }
                if self.buf.len() >= pack {
                    let opc = i32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]]);
                    let mut frame = self.buf.split_to(pack);
                    frame.advance(head);
                    return Ok((opc, frame.freeze()));
                }
                self.buf.reserve(pack - self.buf.len());
            } else if self.buf.capacity() < HEADER_LEN {
                self.buf.reserve(512);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(BenchError::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::frame::Frame;

    #[test]
    fn encode_matches_the_frame_module() {
        let ours = encode(op::AUTH, 1, b"{}");
        let theirs = Frame::new(PUSH_VER, op::AUTH, 1, &b"{}"[..]).to_bytes();
        assert_eq!(&ours[..], &theirs[..]);
    }
}
