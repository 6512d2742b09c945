//! A goim v2 protocol client of our own, over raw TCP or WebSocket (plain or
//! TLS): auth, heartbeat, sub/unsub, change room, upstream messages, and
//! receiving pushes. Used by the tests and by the load generator.
//!
//! The two transports deliver pushes differently (the compatibility trap of
//! goim): over TCP an OpRaw batch arrives as plain inner frames, one by one;
//! over WebSocket it arrives as one binary message, an outer op-9 header around
//! the inner frames. [`ImClient::recv`] keeps that difference visible
//! ([`Delivery::Frame`] vs [`Delivery::Batch`]); [`ImClient::next_push`]
//! flattens it. Imports `frame` and comet's frame codec.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::codec::Framed;

use crate::im::comet::codec::{CodecError, FrameCodec};
use crate::im::frame::{Frame, FrameError, op};

/// The largest body the client accepts from a server (pushes may be batches).
const MAX_BODY: usize = 1 << 20;
/// How long a call waits for its answer unless told otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ImClientError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent something that is not a frame.
    #[error("bad frame from the server: {0}")]
    Frame(#[from] FrameError),
    /// The WebSocket layer failed.
    #[error("websocket: {0}")]
    Ws(#[from] WsError),
    /// A TLS name or handshake problem.
    #[error("tls: {0}")]
    Tls(String),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// Nothing came within the timeout.
    #[error("no {what} within {after:?}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// Auth refused: op 8 carried an error body.
    #[error("auth refused ({code}): {message}")]
    Refused {
        /// The error code (-401 for a refused token).
        code: i64,
        /// The server's message.
        message: String,
    },
}

impl From<CodecError> for ImClientError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Frame(f) => ImClientError::Frame(f),
            CodecError::Io(io) => ImClientError::Io(io),
        }
    }
}

/// What one read from the server brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// One frame: every TCP read, or a non-OpRaw WebSocket message.
    Frame(Frame),
    /// One WebSocket OpRaw message: the inner frames of the batch.
    Batch(Vec<Frame>),
}

/// A byte stream the WebSocket runs over (TCP or TLS).
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

enum Link {
    Tcp(Framed<TcpStream, FrameCodec>),
    Ws(Box<WebSocketStream<Box<dyn ClientIo>>>),
}

/// One client connection to a comet.
pub struct ImClient {
    link: Link,
    seq: i32,
    inbox: VecDeque<Delivery>,
    timeout: Duration,
}

impl ImClient {
    /// Connects over raw TCP to `addr` (`host:port`).
    ///
    /// # Errors
    /// The connection failed.
    pub async fn tcp(addr: &str) -> Result<ImClient, ImClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(ImClient::with(Link::Tcp(Framed::new(
            stream,
            FrameCodec::new(MAX_BODY),
        ))))
    }

    /// Connects over WebSocket to `url` (`ws://host:port/sub`).
    ///
    /// # Errors
    /// The connection or the upgrade failed (a wrong path gets HTTP 404).
    pub async fn ws(url: &str) -> Result<ImClient, ImClientError> {
        let host = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default();
        let tcp = TcpStream::connect(host).await?;
        tcp.set_nodelay(true)?;
        ImClient::ws_over(Box::new(tcp), url).await
    }

    /// Runs the WebSocket handshake for `url` over an open `stream`.
    ///
    /// # Errors
    /// The upgrade failed.
    pub async fn ws_over(stream: Box<dyn ClientIo>, url: &str) -> Result<ImClient, ImClientError> {
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        Ok(ImClient::with(Link::Ws(Box::new(ws))))
    }

    /// Connects over WSS to `addr`, checking the certificate for `domain`
    /// with `tls`, and upgrades on `/sub`.
    ///
    /// # Errors
    /// The connection, the TLS handshake or the upgrade failed.
    pub async fn wss(addr: &str, domain: &str, tls: TlsConnector) -> Result<ImClient, ImClientError> {
        let name = ServerName::try_from(domain.to_string()).map_err(|e| ImClientError::Tls(e.to_string()))?;
        let tcp = TcpStream::connect(addr).await?;
        let stream = tls.connect(name, tcp).await?;
        ImClient::ws_over(Box::new(stream), &format!("wss://{domain}/sub")).await
    }

    fn with(link: Link) -> ImClient {
        ImClient {
            link,
            seq: 0,
            inbox: VecDeque::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long calls wait for their answer (default 5 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// True over WebSocket.
    pub fn is_ws(&self) -> bool {
        matches!(self.link, Link::Ws(_))
    }

    /// Sends one frame.
    ///
    /// # Errors
    /// The socket failed.
    pub async fn send(&mut self, frame: Frame) -> Result<(), ImClientError> {
        match &mut self.link {
            Link::Tcp(f) => f.send(frame).await?,
            Link::Ws(ws) => ws.send(Message::Binary(frame.to_bytes())).await?,
        }
        Ok(())
    }

    /// Sends bytes as they are (TCP) or as one binary message (WebSocket):
    /// for tests of bad input.
    ///
    /// # Errors
    /// The socket failed.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ImClientError> {
        match &mut self.link {
            Link::Tcp(f) => {
                let s = f.get_mut();
                s.write_all(bytes).await?;
                s.flush().await?;
            }
            Link::Ws(ws) => ws.send(Message::Binary(Bytes::copy_from_slice(bytes))).await?,
        }
        Ok(())
    }

    /// Sends op 7 with `body` (goim's JSON) and waits for op 8.
    ///
    /// # Errors
    /// [`ImClientError::Refused`] when op 8 carries an error body; a timeout or
    /// a closed connection otherwise.
    pub async fn auth(&mut self, body: &[u8]) -> Result<(), ImClientError> {
        let reply = self
            .call(op::AUTH, Bytes::copy_from_slice(body), op::AUTH_REPLY)
            .await?;
        if reply.body.is_empty() {
            return Ok(());
        }
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        Err(ImClientError::Refused {
            code: v["code"].as_i64().unwrap_or(0),
            message: v["message"].as_str().map_or_else(
                || String::from_utf8_lossy(&reply.body).into_owned(),
                str::to_string,
            ),
        })
    }

    /// Sends op 2 and returns the room online count of the op-3 reply.
    ///
    /// # Errors
    /// A timeout, a closed connection, or a reply body that is not 4 bytes.
    pub async fn heartbeat(&mut self) -> Result<i32, ImClientError> {
        let reply = self
            .call(op::HEARTBEAT, Bytes::new(), op::HEARTBEAT_REPLY)
            .await?;
        let b: [u8; 4] = reply.body[..]
            .try_into()
            .map_err(|_| ImClientError::Frame(FrameError::PackTooShort(reply.body.len() as i32)))?;
        Ok(i32::from_be_bytes(b))
    }

    /// Moves to `room` (`""`: out of any room); waits for op 13.
    ///
    /// # Errors
    /// A timeout or a closed connection.
    pub async fn change_room(&mut self, room: &str) -> Result<(), ImClientError> {
        let body = Bytes::copy_from_slice(room.as_bytes());
        self.call(op::CHANGE_ROOM, body, op::CHANGE_ROOM_REPLY)
            .await
            .map(drop)
    }

    /// Watches `ops` too; waits for op 15.
    ///
    /// # Errors
    /// A timeout or a closed connection.
    pub async fn sub(&mut self, ops: &[i32]) -> Result<(), ImClientError> {
        self.call(op::SUB, join(ops), op::SUB_REPLY).await.map(drop)
    }

    /// Stops watching `ops`; waits for op 17.
    ///
    /// # Errors
    /// A timeout or a closed connection.
    pub async fn unsub(&mut self, ops: &[i32]) -> Result<(), ImClientError> {
        self.call(op::UNSUB, join(ops), op::UNSUB_REPLY).await.map(drop)
    }

    /// Sends an upstream message (op 4) and waits for its empty echo.
    ///
    /// # Errors
    /// A timeout or a closed connection.
    pub async fn send_msg(&mut self, body: &[u8]) -> Result<(), ImClientError> {
        let body = Bytes::copy_from_slice(body);
        self.call(op::SEND_MSG, body, op::SEND_MSG).await.map(drop)
    }

    /// Sends a WebSocket ping and waits for the pong (TCP: nothing to do).
    ///
    /// # Errors
    /// A timeout or a closed connection.
    pub async fn ping(&mut self) -> Result<(), ImClientError> {
        let Link::Ws(ws) = &mut self.link else {
            return Ok(());
        };
        ws.send(Message::Ping(Bytes::from_static(b"are you there")))
            .await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, ws.next()).await;
            match next {
                Err(_) => {
                    return Err(ImClientError::Timeout {
                        what: "pong",
                        after: self.timeout,
                    });
                }
                Ok(None | Some(Ok(Message::Close(_)))) => return Err(ImClientError::Closed),
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(Some(Ok(Message::Pong(_)))) => return Ok(()),
                Ok(Some(Ok(Message::Binary(b)))) => self.inbox.push_back(ws_delivery(b)?),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// The next delivery from the server.
    ///
    /// # Errors
    /// A timeout or a closed connection.
    pub async fn recv(&mut self) -> Result<Delivery, ImClientError> {
        if let Some(d) = self.inbox.pop_front() {
            return Ok(d);
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.read_until(deadline, "delivery").await
    }

    /// The next pushed frame, batches flattened.
    ///
    /// # Errors
    /// A timeout or a closed connection.
    pub async fn next_push(&mut self) -> Result<Frame, ImClientError> {
        loop {
            match self.recv().await? {
                Delivery::Frame(f) => return Ok(f),
                Delivery::Batch(frames) => {
                    let mut it = frames.into_iter();
                    if let Some(first) = it.next() {
                        for rest in it.rev() {
                            self.inbox.push_front(Delivery::Frame(rest));
                        }
                        return Ok(first);
                    }
                }
            }
        }
    }

    /// Waits until the server closes the connection (what arrives before is
    /// kept for [`ImClient::recv`]).
    ///
    /// # Errors
    /// [`ImClientError::Timeout`] if it is still open after the timeout.
    pub async fn wait_closed(&mut self) -> Result<(), ImClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match self.read_until(deadline, "close").await {
                Ok(d) => self.inbox.push_back(d),
                Err(e @ ImClientError::Timeout { .. }) => return Err(e),
                Err(_) => return Ok(()),
            }
        }
    }

    /// Sends `op` with `body` under the next seq, and waits for `reply_op`
    /// (other deliveries meanwhile are kept).
    async fn call(&mut self, op: i32, body: Bytes, reply_op: i32) -> Result<Frame, ImClientError> {
        self.seq = self.seq.wrapping_add(1);
        self.send(Frame::new(1, op, self.seq, body)).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut kept = Vec::new();
        let found = loop {
            match self.read_until(deadline, "reply").await {
                Ok(Delivery::Frame(f)) if f.op == reply_op && f.seq == self.seq => break Ok(f),
                Ok(d) => kept.push(d),
                Err(e) => break Err(e),
            }
        };
        self.inbox.extend(kept);
        found
    }

    async fn read_until(
        &mut self,
        deadline: tokio::time::Instant,
        what: &'static str,
    ) -> Result<Delivery, ImClientError> {
        let after = self.timeout;
        match tokio::time::timeout_at(deadline, self.read()).await {
            Ok(r) => r,
            Err(_) => Err(ImClientError::Timeout { what, after }),
        }
    }

    /// One delivery off the socket.
    async fn read(&mut self) -> Result<Delivery, ImClientError> {
        match &mut self.link {
            Link::Tcp(f) => match f.next().await {
                Some(Ok(frame)) => Ok(Delivery::Frame(frame)),
                Some(Err(e)) => Err(e.into()),
                None => Err(ImClientError::Closed),
            },
            Link::Ws(ws) => loop {
                let bytes = match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Err(ImClientError::Closed),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => Bytes::copy_from_slice(t.as_bytes()),
                    Some(Ok(_)) => continue,
                };
                return ws_delivery(bytes);
            },
        }
    }
}

/// Parses one WebSocket message: an OpRaw batch or a single frame.
fn ws_delivery(bytes: Bytes) -> Result<Delivery, ImClientError> {
    let mut buf = BytesMut::from(&bytes[..]);
    let frame = Frame::decode(&mut buf, MAX_BODY)?.ok_or(FrameError::PackTooShort(bytes.len() as i32))?;
    if frame.op != op::RAW {
        return Ok(Delivery::Frame(frame));
    }
    let mut inner = BytesMut::from(&frame.body[..]);
    let mut frames = Vec::new();
    while let Some(f) = Frame::decode(&mut inner, MAX_BODY)? {
        frames.push(f);
    }
    Ok(Delivery::Batch(frames))
}

fn join(ops: &[i32]) -> Bytes {
    let s: Vec<String> = ops.iter().map(i32::to_string).collect();
    Bytes::from(s.join(","))
}
