//! WebSocket clients (goim's `/sub`), plain and over TLS (WSS): the accept
//! loop, the upgrade and the [`Transport`] over a tokio-tungstenite stream.
//!
//! Only the path `/sub` is upgraded; anything else gets 404. Each binary (or
//! text) message carries whole frames; a push goes out as one binary message
//! holding the whole frame, so an OpRaw batch keeps its outer header (goim's
//! `WriteWebsocket`). Pings are answered by tungstenite; a Close ends the
//! connection. Messages are capped at one maximal frame. The TLS handshake and
//! the upgrade count against the handshake timeout. Imports `connection`,
//! `transport`, `channel`, `frame`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::channel::Push;
use super::connection::{Accepted, serve};
use super::error::ConnError;
use super::hub::Hub;
use super::stats::CometStats;
use super::transport::Transport;
use crate::im::frame::{Frame, HEADER_LEN};
use crate::libs::listener::Listener;

/// The only path upgraded (goim's).
pub const PATH: &str = "/sub";
/// tungstenite's read buffer per connection (its default is 128 KiB).
const READ_BUFFER: usize = 1024;
/// Bytes of messages gathered before tungstenite writes (a flush ends each batch).
const WRITE_BUFFER: usize = 8 * 1024;

/// A WebSocket client socket over `S` (TCP or TLS).
pub struct WsTransport<S> {
    ws: WebSocketStream<S>,
    max_body: usize,
}

impl<S> Transport for WsTransport<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn read_frames(&mut self, out: &mut Vec<Frame>) -> Result<(), ConnError> {
        // The only await is `next`, which keeps partial messages inside
        // tungstenite: cancel-safe.
        loop {
            let msg = match self.ws.next().await {
                None => return Err(ConnError::PeerClosed),
                Some(Err(e)) => return Err(ws_error(e, self.max_body)),
                Some(Ok(m)) => m,
            };
            match msg {
                Message::Binary(b) => return decode_message(&b, self.max_body, out),
                Message::Text(t) => return decode_message(t.as_bytes(), self.max_body, out),
                Message::Close(_) => return Err(ConnError::PeerClosed),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    async fn write(&mut self, replies: &[Frame], pushes: &VecDeque<Push>) -> Result<(), ConnError> {
        let max = self.max_body;
        for r in replies {
            self.ws
                .feed(Message::Binary(r.to_bytes()))
                .await
                .map_err(|e| ws_error(e, max))?;
        }
        for p in pushes {
            self.ws
                .feed(Message::Binary(p.ws_message()))
                .await
                .map_err(|e| ws_error(e, max))?;
        }
        self.ws.flush().await.map_err(|e| ws_error(e, max))
    }

    async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The whole frames of one message; a partial frame left over is garbage.
fn decode_message(msg: &[u8], max_body: usize, out: &mut Vec<Frame>) -> Result<(), ConnError> {
    let mut buf = BytesMut::from(msg);
    while let Some(frame) = Frame::decode(&mut buf, max_body)? {
        out.push(frame);
    }
    if buf.is_empty() {
        Ok(())
    } else {
        Err(ConnError::BadInput(format!(
            "websocket message ends inside a frame ({} bytes left)",
            buf.len()
        )))
    }
}

/// Why a WebSocket read or write failed. A client that drops the socket
/// without the close handshake is reported by tungstenite as a protocol
/// error, but it is an ordinary disconnect ([`ConnError::PeerGone`]), not bad
/// input; only real protocol violations are.
fn ws_error(e: WsError, max_body: usize) -> ConnError {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => ConnError::PeerClosed,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            ConnError::PeerGone("no close handshake".into())
        }
        WsError::Io(io) => ConnError::from(io),
        WsError::Capacity(_) => ConnError::TooLarge {
            max: max_body + HEADER_LEN,
        },
        other => ConnError::BadInput(format!("websocket: {other}")),
    }
}

/// Accepts WebSocket clients (WSS when `tls` is set) until `shutdown`, through
/// the role service every role shares (`libs::listener`).
pub async fn accept_loop(
    hub: Arc<Hub>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let serve_one = move |stream: TcpStream, peer: SocketAddr, stop: CancellationToken| {
        let (h, tls) = (hub.clone(), tls.clone());
        async move {
            let _ = stream.set_nodelay(true);
            let deadline = Instant::now() + h.protocol.handshake_timeout;
            match tls {
                None => upgrade_and_serve(h, stream, peer, deadline, stop).await,
                Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => upgrade_and_serve(h, tls_stream, peer, deadline, stop).await,
                    Ok(Err(e)) => refused(&h, peer, &format!("TLS handshake: {e}")),
                    Err(_) => refused(&h, peer, "TLS handshake timed out"),
                },
            }
        }
    };
    Listener::new(listener)
        .max_connections(limit)
        .serve(serve_one, shutdown)
        .await;
}

/// Upgrades `stream` on `/sub` and runs the connection.
async fn upgrade_and_serve<S>(
    hub: Arc<Hub>,
    stream: S,
    peer: SocketAddr,
    deadline: Instant,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut cookie = String::new();
    // The callback's shape (and its large error type) is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != PATH {
            let mut refusal = ErrorResponse::new(Some(format!("comet serves WebSocket on {PATH} only\n")));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        if let Some(c) = req.headers().get("cookie").and_then(|v| v.to_str().ok()) {
            cookie = c.to_string();
        }
        Ok(resp)
    };
    let max_message = hub.protocol.max_body + HEADER_LEN;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    let ws = match tokio::time::timeout_at(deadline, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return refused(&hub, peer, &format!("WebSocket upgrade: {e}")),
        Err(_) => return refused(&hub, peer, "WebSocket upgrade timed out"),
    };
    CometStats::bump(&hub.stats.accepted_ws);
    let acc = Accepted {
        transport: WsTransport {
            ws,
            max_body: hub.protocol.max_body,
        },
        peer,
        cookie,
        deadline,
    };
    serve(hub, acc, shutdown).await;
}

/// Counts and logs a client that never became a WebSocket connection.
fn refused(hub: &Hub, peer: SocketAddr, why: &str) {
    CometStats::bump(&hub.stats.bad_input);
    tracing::info!(%peer, reason = why, "refusing a WebSocket client");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::frame::op;

    #[test]
    fn a_message_must_hold_whole_frames() {
        let a = Frame::new(1, op::HEARTBEAT, 1, bytes::Bytes::new()).to_bytes();
        let b = Frame::new(1, op::AUTH, 2, &b"{}"[..]).to_bytes();
        let mut out = Vec::new();
        let both = [&a[..], &b[..]].concat();
        decode_message(&both, 4096, &mut out).expect("two frames");
        assert_eq!(
            out.iter().map(|f| f.op).collect::<Vec<_>>(),
            vec![op::HEARTBEAT, op::AUTH]
        );
        assert!(matches!(
            decode_message(&b[..5], 4096, &mut out),
            Err(ConnError::BadInput(_))
        ));
        assert!(matches!(
            decode_message(&b, 1, &mut out),
            Err(ConnError::Frame(_))
        ));
    }

    #[test]
    fn a_client_going_away_is_a_disconnect_and_violations_are_bad_input() {
        use std::io::{Error, ErrorKind};
        let reset = WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        let gone = ws_error(reset, 4096);
        assert!(matches!(gone, ConnError::PeerGone(_)), "{gone:?}");
        assert!(gone.to_string().starts_with("client went away"), "{gone}");
        let tcp_reset = ws_error(WsError::Io(Error::from(ErrorKind::ConnectionReset)), 4096);
        assert!(matches!(tcp_reset, ConnError::PeerGone(_)), "{tcp_reset:?}");
        assert!(matches!(
            ws_error(WsError::ConnectionClosed, 4096),
            ConnError::PeerClosed
        ));
        let other_io = ws_error(WsError::Io(Error::from(ErrorKind::PermissionDenied)), 4096);
        assert!(matches!(other_io, ConnError::Io(_)), "{other_io:?}");
        let violation = WsError::Protocol(ProtocolError::UnmaskedFrameFromClient);
        assert!(matches!(ws_error(violation, 4096), ConnError::BadInput(_)));
    }
}
