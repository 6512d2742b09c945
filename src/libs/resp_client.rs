//! The framed RESP client: one connection to a Redis-protocol server (a
//! redis-server or a reborn proxy), built on the `redis-protocol` crate's codec
//! over `tokio-util`'s `Framed`.
//!
//! Everything that talks RESP off the proxy's hot path uses it: the migrator,
//! `reborn up`'s probes, the push roles and the tests. The hot path keeps its own
//! zero-copy splitter (`libs::resp`), measured against this codec in
//! `benches/`. A [`RespPool`] shares a few pipelined connections between tasks,
//! reconnecting the ones that fail and, before use, the ones the server closed
//! while they sat idle ([`RespConn::is_stale`]).

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use redis_protocol::codec::Resp2;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_util::codec::Framed;

/// A RESP2 frame, as sent and received.
pub use redis_protocol::resp2::types::BytesFrame as Frame;

/// How long a call waits for its reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a reborn proxy in `write_ack = "replica"` mode begins the error it
/// gives for a write that ran on the master but that no replica acknowledged
/// in time. Redis's own `NOREPLICAS` (`min-replicas-to-write`) says otherwise,
/// and means the write was refused.
pub const UNREPLICATED: &str = "NOREPLICAS the write ran on the master";

/// Why a call failed, and whether sending it again is safe.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// The connection could not be made: nothing was sent.
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The connection failed after the request may have been sent.
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The server closed the connection before answering.
    #[error("{addr}: connection closed")]
    Closed { addr: String },
    /// No reply within the deadline (the request may have run).
    #[error("{addr}: no reply within {after:?}")]
    Timeout { addr: String, after: Duration },
    /// The bytes received are not RESP.
    #[error("{addr}: protocol error: {detail}")]
    Protocol { addr: String, detail: String },
    /// The server answered with an error reply.
    #[error("{0}")]
    Server(String),
    /// The server answered with a reply of an unexpected type.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

impl RespError {
    /// True when the request certainly did not run, so sending it again
    /// cannot apply it twice.
    pub fn is_retry_safe(&self) -> bool {
        matches!(self, RespError::Connect { .. })
    }

    /// True for a reborn proxy's [`UNREPLICATED`]: the write ran on the master,
    /// and only its reply was withheld.
    pub fn ran_unreplicated(&self) -> bool {
        matches!(self, RespError::Server(m) if m.starts_with(UNREPLICATED))
    }

    /// True when the connection is unusable afterwards (as opposed to an error
    /// reply, after which it can carry on).
    pub fn breaks_connection(&self) -> bool {
        !matches!(self, RespError::Server(_) | RespError::Unexpected(_))
    }
}

/// Builds a command frame from its arguments.
pub fn cmd<A: AsRef<[u8]>>(args: &[A]) -> Frame {
    Frame::Array(
        args.iter()
            .map(|a| Frame::BulkString(Bytes::copy_from_slice(a.as_ref())))
            .collect(),
    )
}

/// The frame as an `Err` if it is an error reply.
///
/// # Errors
/// [`RespError::Server`] with the error's text.
pub fn check(frame: Frame) -> Result<Frame, RespError> {
    match frame {
        Frame::Error(e) => Err(RespError::Server(e.to_string())),
        other => Ok(other),
    }
}

/// An integer reply.
///
/// # Errors
/// An error reply, or a reply that is not an integer.
pub fn int(frame: Frame) -> Result<i64, RespError> {
    match check(frame)? {
        Frame::Integer(i) => Ok(i),
        other => Err(RespError::Unexpected(format!("{other:?} (wanted an integer)"))),
    }
}

/// A bulk or simple string reply; `None` for a nil.
///
/// # Errors
/// An error reply, or a reply of another type.
pub fn bytes(frame: Frame) -> Result<Option<Bytes>, RespError> {
    match check(frame)? {
        Frame::BulkString(b) | Frame::SimpleString(b) => Ok(Some(b)),
        Frame::Null => Ok(None),
        other => Err(RespError::Unexpected(format!("{other:?} (wanted a string)"))),
    }
}

/// An array reply's elements; empty for a nil.
///
/// # Errors
/// An error reply, or a reply of another type.
pub fn array(frame: Frame) -> Result<Vec<Frame>, RespError> {
    match check(frame)? {
        Frame::Array(items) => Ok(items),
        Frame::Null => Ok(Vec::new()),
        other => Err(RespError::Unexpected(format!("{other:?} (wanted an array)"))),
    }
}

/// One RESP connection.
pub struct RespConn {
    framed: Framed<TcpStream, Resp2>,
    addr: String,
    timeout: Duration,
}

impl std::fmt::Debug for RespConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespConn").field("addr", &self.addr).finish()
    }
}

impl RespConn {
    /// Connects to `addr`, waiting at most `timeout` (which also becomes the
    /// default reply deadline).
    ///
    /// # Errors
    /// [`RespError::Connect`].
    pub async fn connect(addr: &str, timeout: Duration) -> Result<RespConn, RespError> {
        let connect_err = |source| RespError::Connect {
            addr: addr.to_string(),
            source,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
            .map_err(connect_err)?;
        let _ = stream.set_nodelay(true);
        Ok(RespConn {
            framed: Framed::new(stream, Resp2::default()),
            addr: addr.to_string(),
            timeout,
        })
    }

    /// The address this connection was made to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Changes the reply deadline of later calls.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends one command and reads its reply. An error reply is returned as
    /// `Ok(Frame::Error)`: use [`check`] or the typed readers to turn it into an
    /// `Err`.
    ///
    /// # Errors
    /// A connection failure or timeout ([`RespError::breaks_connection`]).
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Frame, RespError> {
        self.call_frame(cmd(args)).await
    }

    /// Sends one prepared command frame and reads its reply.
    ///
    /// # Errors
    /// As [`RespConn::call`].
    pub async fn call_frame(&mut self, frame: Frame) -> Result<Frame, RespError> {
        let mut replies = self.pipeline(vec![frame]).await?;
        replies.pop().ok_or_else(|| RespError::Closed {
            addr: self.addr.clone(),
        })
    }

    /// Sends every command in one write, then reads as many replies, in order.
    ///
    /// # Errors
    /// As [`RespConn::call`]; the whole batch fails together.
    pub async fn pipeline(&mut self, frames: Vec<Frame>) -> Result<Vec<Frame>, RespError> {
        let n = frames.len();
        let after = self.timeout;
        let addr = self.addr.clone();
        let work = async {
            self.send_frames(frames).await?;
            let mut replies = Vec::with_capacity(n);
            while replies.len() < n {
                replies.push(self.read().await?);
            }
            Ok(replies)
        };
        tokio::time::timeout(after, work)
            .await
            .map_err(|_| RespError::Timeout { addr, after })?
    }

    /// Reads one frame the server sends unasked (pub/sub messages, or the
    /// reply to a command sent with [`RespConn::send`]), waiting without limit.
    ///
    /// # Errors
    /// A connection failure.
    pub async fn read(&mut self) -> Result<Frame, RespError> {
        match self.framed.next().await {
            Some(Ok(frame)) => Ok(frame),
            Some(Err(e)) => Err(self.io_error(e)),
            None => Err(RespError::Closed {
                addr: self.addr.clone(),
            }),
        }
    }

    /// Reads the next frame, waiting at most `wait` for it.
    ///
    /// Cancel-safe: bytes of a frame read before the deadline (or before the
    /// future is dropped) stay buffered for the next read.
    ///
    /// # Errors
    /// A connection failure, or [`RespError::Timeout`].
    pub async fn read_within(&mut self, wait: Duration) -> Result<Frame, RespError> {
        match tokio::time::timeout(wait, self.read()).await {
            Ok(read) => read,
            Err(_) => Err(RespError::Timeout {
                addr: self.addr.clone(),
                after: wait,
            }),
        }
    }

    /// Writes every frame in one flush without waiting for the replies (read
    /// them with [`RespConn::read_within`]), so a caller can keep requests in
    /// flight while it does other work.
    ///
    /// # Errors
    /// A connection failure.
    pub async fn send_frames(&mut self, frames: Vec<Frame>) -> Result<(), RespError> {
        for frame in frames {
            self.framed.feed(frame).await.map_err(|e| self.io_error(e))?;
        }
        SinkExt::<Frame>::flush(&mut self.framed)
            .await
            .map_err(|e| self.io_error(e))
    }

    /// `AUTH <password>`.
    ///
    /// # Errors
    /// [`RespError::Server`] with the server's error reply if it refuses the
    /// password; connection failures as [`RespConn::call`].
    pub async fn auth(&mut self, password: &str) -> Result<(), RespError> {
        check(self.call(&[b"AUTH".as_ref(), password.as_bytes()]).await?).map(drop)
    }

    /// Writes one command without waiting for its reply.
    ///
    /// # Errors
    /// A connection failure.
    pub async fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RespError> {
        self.framed.send(cmd(args)).await.map_err(|e| self.io_error(e))
    }

    /// True when this connection, idle between calls, can no longer carry a
    /// request in step: the peer closed or reset it (a restarted proxy), or
    /// it holds bytes nobody asked for. Checked without sending anything, so
    /// a pool can replace such a connection before using it and no request
    /// is ever left in doubt.
    ///
    /// A zero-timeout `poll(2)` on the socket asks the kernel directly rather
    /// than tokio's readiness cache, which learns of the peer's FIN only when
    /// the reactor next turns. On an idle connection any readiness for
    /// reading means EOF, an error, or unsolicited data: each makes the
    /// connection unusable. A FIN still in flight is not seen; that call then
    /// fails as before (without a resend), which only a write could reveal.
    pub fn is_stale(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec};
        if !self.framed.read_buffer().is_empty() {
            return true;
        }
        let mut fds = [PollFd::new(self.framed.get_ref(), PollFlags::IN)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&now)) {
            Ok(0) => false,
            // IN, HUP or ERR on a connection with nothing outstanding.
            Ok(_) => true,
            // poll itself failed (EINTR, ENOMEM): unsure, so play safe and
            // reconnect; a needless reconnect costs one connect, a stale
            // connection costs a failed request.
            Err(_) => true,
        }
    }

    fn io_error(&self, e: redis_protocol::error::RedisProtocolError) -> RespError {
        let addr = self.addr.clone();
        match e.kind() {
            redis_protocol::error::RedisProtocolErrorKind::IO(_) => RespError::Io {
                addr,
                source: std::io::Error::other(e.to_string()),
            },
            _ => RespError::Protocol {
                addr,
                detail: e.to_string(),
            },
        }
    }
}

/// A few RESP connections to one address, shared by many tasks. Each call takes
/// one connection for its whole pipeline (so replies never interleave), opens it
/// if needed, and drops it if it broke.
#[derive(Debug)]
pub struct RespPool {
    addr: String,
    timeout: Duration,
    /// Sent as `AUTH` on each new connection (a proxy with `auth`).
    auth: Option<String>,
    conns: Vec<Mutex<Option<RespConn>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl RespPool {
    /// A pool of `size` (at least 1) lazily opened connections to `addr`.
    pub fn new(addr: &str, size: usize, timeout: Duration) -> RespPool {
        RespPool {
            addr: addr.to_string(),
            timeout,
            auth: None,
            conns: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The pool, logging each new connection in with `password` (none when
    /// empty).
    pub fn with_auth(mut self, password: &str) -> RespPool {
        self.auth = (!password.is_empty()).then(|| password.to_string());
        self
    }

    /// The address the pool connects to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A new connection, logged in.
    ///
    /// # Errors
    /// As [`RespConn::connect`]; a refused password is `RespError::Server`.
    pub async fn open(&self) -> Result<RespConn, RespError> {
        let mut conn = RespConn::connect(&self.addr, self.timeout).await?;
        if let Some(password) = &self.auth {
            conn.auth(password).await?;
        }
        Ok(conn)
    }

    /// One command on one of the pool's connections.
    ///
    /// # Errors
    /// As [`RespConn::call`].
    pub async fn call<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Frame, RespError> {
        let mut replies = self.pipeline(vec![cmd(args)]).await?;
        replies.pop().ok_or_else(|| RespError::Closed {
            addr: self.addr.clone(),
        })
    }

    /// A pipeline on one of the pool's connections.
    ///
    /// # Errors
    /// As [`RespConn::pipeline`].
    pub async fn pipeline(&self, frames: Vec<Frame>) -> Result<Vec<Frame>, RespError> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.conns.len();
        let mut slot = self.conns[i].lock().await;
        // The connection is taken out of its slot for the call and put back
        // only when the call finished with the stream in step: if the caller's
        // future is dropped mid-pipeline (a cancelled gRPC or HTTP handler),
        // the connection goes with it instead of handing its unread replies
        // to the next caller.
        //
        // A kept connection the server has closed meanwhile (a restarted
        // proxy, an idle timeout) is replaced before anything is written to
        // it: sent on it, the request would fail with `Closed`/`Io`, an error
        // after which nobody can tell whether it ran, so it could not be
        // resent. A failing reconnect is `RespError::Connect` (nothing sent),
        // which callers may safely send elsewhere.
        let kept = slot.take().filter(|conn| {
            let stale = conn.is_stale();
            if stale {
                tracing::debug!(addr = %self.addr, "pooled connection closed by the server; reconnecting");
            }
            !stale
        });
        let mut conn = match kept {
            Some(conn) => conn,
            None => self.open().await?,
        };
        let result = conn.pipeline(frames).await;
        if !matches!(&result, Err(e) if e.breaks_connection()) {
            *slot = Some(conn);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_readers_turn_error_replies_into_errors() {
        let err = Frame::Error("ERR boom".into());
        assert!(matches!(int(err.clone()), Err(RespError::Server(s)) if s == "ERR boom"));
        assert!(matches!(bytes(Frame::Null), Ok(None)));
        assert_eq!(int(Frame::Integer(7)).ok(), Some(7));
        assert!(matches!(array(Frame::Integer(1)), Err(RespError::Unexpected(_))));
    }

    #[test]
    fn only_connect_failures_are_retry_safe() {
        let connect = RespError::Connect {
            addr: "a".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(connect.is_retry_safe());
        let timeout = RespError::Timeout {
            addr: "a".into(),
            after: Duration::from_secs(1),
        };
        assert!(!timeout.is_retry_safe());
        assert!(timeout.breaks_connection());
        assert!(!RespError::Server("ERR".into()).breaks_connection());
    }

    #[tokio::test]
    async fn a_timed_out_read_keeps_the_partial_frame_for_the_next() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (go_on, resume) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await?;
            let mut request = [0u8; 28];
            s.read_exact(&mut request).await?;
            assert_eq!(&request, b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n");
            s.write_all(b"+PONG\r\n+PO").await?;
            let _ = resume.await;
            s.write_all(b"NG\r\n").await?;
            std::io::Result::Ok(s)
        });
        let mut conn = RespConn::connect(&addr, Duration::from_secs(5))
            .await
            .map_err(std::io::Error::other)?;
        conn.send_frames(vec![cmd(&["PING"]), cmd(&["PING"])])
            .await
            .map_err(std::io::Error::other)?;
        let pong = Frame::SimpleString(Bytes::from_static(b"PONG"));
        let first = conn.read_within(Duration::from_secs(5)).await;
        assert_eq!(first.ok(), Some(pong.clone()));
        let second = conn.read_within(Duration::from_millis(50)).await;
        assert!(matches!(second, Err(RespError::Timeout { .. })), "{second:?}");
        let _ = go_on.send(());
        let second = conn.read_within(Duration::from_secs(5)).await;
        assert_eq!(second.ok(), Some(pong));
        server.await.map_err(std::io::Error::other)??;
        Ok(())
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_replaced_before_use() -> std::io::Result<()> {
        // A server that answers one PING per connection, then closes it, as
        // a restarted proxy leaves the pool's idle connections behind.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut request = [0u8; 14];
                if s.read_exact(&mut request).await.is_ok() && s.write_all(b"+PONG\r\n").await.is_ok() {
                    drop(s);
                    let _ = closed_tx.send(());
                }
            }
        });
        let pool = RespPool::new(&addr, 1, Duration::from_secs(5));
        let pong = Frame::SimpleString(Bytes::from_static(b"PONG"));
        for i in 0..3 {
            let reply = pool.call(&["PING"]).await;
            assert_eq!(reply.ok(), Some(pong.clone()), "call {i} gets a fresh connection");
            closed
                .recv()
                .await
                .ok_or_else(|| std::io::Error::other("server gone"))?;
            // The kept connection is seen closed once the FIN has arrived
            // (loopback: at once, give or take a scheduling).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while !pool.conns[0]
                .lock()
                .await
                .as_ref()
                .is_some_and(RespConn::is_stale)
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the kept connection is seen closed"
                );
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_idle_open_connection_is_not_stale() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move { listener.accept().await });
        let conn = RespConn::connect(&addr, Duration::from_secs(5))
            .await
            .map_err(std::io::Error::other)?;
        let (peer, _) = server.await.map_err(std::io::Error::other)??;
        assert!(!conn.is_stale());
        drop(peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(conn.is_stale());
        Ok(())
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let (_held, addr) = crate::libs::reachable::refused_addr();
        let err = RespConn::connect(&addr, Duration::from_secs(1)).await.err();
        assert!(matches!(err, Some(RespError::Connect { .. })), "{err:?}");
    }
}
