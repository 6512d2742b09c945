//! The role service every role shares: one listening socket, its accept loop,
//! and one shutdown and drain contract.
//!
//! The contract of [`Listener::serve`]:
//! * it accepts until `shutdown` is cancelled; a failed accept (`EMFILE` when
//!   out of file descriptors, and the like) waits with a backoff (5 ms growing
//!   to 1 s) instead of spinning; an aborted handshake is simply skipped;
//! * with a connection limit ([`Listener::max_connections`], a semaphore that
//!   several listeners may share), a connection beyond it goes to
//!   [`ConnectionHandler::refuse`] instead;
//! * each connection runs [`ConnectionHandler::handle`] on its own task, on the
//!   runtime `serve` runs on, with a clone of `shutdown`: on shutdown it should
//!   finish what it already accepted and return;
//! * on shutdown it stops accepting (the socket is dropped), then waits for the
//!   handlers up to the grace period ([`Listener::grace`]) and says whether
//!   they all finished ([`Drain`]). Handlers still running after that are left
//!   to their runtime: the proxy drops its worker runtimes, which ends them.
//!
//! [`Listener::serve_http`] keeps the same contract for an axum app: hyper
//! serves the connections (each request's extensions carry the peer as
//! axum's `ConnectInfo<SocketAddr>`), this module accepts them (same backoff)
//! and bounds the drain, and every request passes
//! `browser_guard::same_origin`. A client gets [`HEADER_TIMEOUT`] to send a
//! request's headers, so connections that trickle them in (slowloris) or
//! open and say nothing do not pile up: `axum::serve` sets no timer, which
//! leaves hyper's header timeout off.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//!
//! use reborn::libs::listener::{Drain, Listener};
//! use tokio::io::AsyncWriteExt;
//! use tokio::net::TcpStream;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> std::io::Result<()> {
//! let shutdown = CancellationToken::new(); // or libs::shutdown::on_signal()
//! let listener = Listener::bind("127.0.0.1:0").await?.grace(Duration::from_secs(5));
//! let greet = |mut stream: TcpStream, peer: SocketAddr, _shutdown: CancellationToken| async move {
//!     let _ = stream.write_all(format!("+hello {peer}\r\n").as_bytes()).await;
//! };
//! if let Drain::TimedOut { remaining } = listener.serve(greet, shutdown).await {
//!     eprintln!("{remaining:?} connections still open after the grace period");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Imports nothing from the crate.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backoff::Backoff;

/// The grace period when none is set.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// How long an HTTP client has to send a request's headers, from its
/// connection or from the end of its previous request (hyper's default).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// What serves the connections of a [`Listener`].
///
/// Any `Fn(TcpStream, SocketAddr, CancellationToken) -> impl Future<Output = ()>`
/// closure is one (it refuses by closing the connection).
pub trait ConnectionHandler: Send + Sync + 'static {
    /// Serves one connection until it ends or `shutdown` is cancelled.
    fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static;

    /// Turns away a connection beyond the limit; by default it is closed.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr) -> impl Future<Output = ()> + Send + 'static {
        let _ = peer;
        drop(stream);
        std::future::ready(())
    }
}

impl<F, Fut> ConnectionHandler for F
where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        self(stream, peer, shutdown)
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection's handler returned within the grace period.
    Complete,
    /// The grace period ran out with handlers still running.
    TimedOut {
        /// How many, when known (hyper does not say for [`Listener::serve_http`]).
        remaining: Option<usize>,
    },
}

/// A bound listening socket with its limits, not serving yet.
pub struct Listener {
    socket: TcpListener,
    limit: Option<Arc<Semaphore>>,
    grace: Duration,
    /// [`serve_http`](Listener::serve_http) only.
    header_timeout: Duration,
}

impl Listener {
    /// Binds `addr`.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: &str) -> io::Result<Listener> {
        Ok(Listener::new(TcpListener::bind(addr).await?))
    }

    /// Wraps a socket bound elsewhere (e.g. one `std` socket cloned per worker
    /// thread, converted on that thread's runtime).
    pub fn new(socket: TcpListener) -> Listener {
        Listener {
            socket,
            limit: None,
            grace: DEFAULT_GRACE,
            header_timeout: HEADER_TIMEOUT,
        }
    }

    /// Caps the connections served at once by the permits of `limit`, which
    /// other listeners may share.
    #[must_use]
    pub fn max_connections(mut self, limit: Arc<Semaphore>) -> Listener {
        self.limit = Some(limit);
        self
    }

    /// How long a drain waits for the handlers after shutdown.
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Listener {
        self.grace = grace;
        self
    }

    /// How long an HTTP client may take to send a request's headers
    /// ([`HEADER_TIMEOUT`] unless set).
    #[must_use]
    pub fn header_timeout(mut self, timeout: Duration) -> Listener {
        self.header_timeout = timeout;
        self
    }

    /// The address actually bound (the real port when asked for port 0).
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts and serves connections until `shutdown`, then drains (see the
    /// module doc).
    pub async fn serve<H: ConnectionHandler>(self, handler: H, shutdown: CancellationToken) -> Drain {
        let Listener {
            socket, limit, grace, ..
        } = self;
        let handlers = TaskTracker::new();
        let mut acceptor = Acceptor::new(socket);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = acceptor.next() => accepted,
                _ = shutdown.cancelled() => break,
            };
            let permit = match &limit {
                None => None,
                Some(limit) => match limit.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        handlers.spawn(handler.refuse(stream, peer));
                        continue;
                    }
                },
            };
            let served = handler.handle(stream, peer, shutdown.clone());
            handlers.spawn(async move {
                served.await;
                drop(permit);
            });
        }
        drop(acceptor);
        handlers.close();
        match tokio::time::timeout(grace, handlers.wait()).await {
            Ok(()) => Drain::Complete,
            Err(_) => Drain::TimedOut {
                remaining: Some(handlers.len()),
            },
        }
    }

    /// Serves an axum app until `shutdown`, then drains, under the same
    /// contract as [`serve`](Listener::serve); the connection limit does not
    /// apply (axum owns the connections).
    ///
    /// # Errors
    /// The HTTP server failed.
    pub async fn serve_http(self, app: axum::Router, shutdown: CancellationToken) -> io::Result<Drain> {
        // Every HTTP server of reborn refuses what a web page elsewhere sends
        // through a visitor's browser (see `browser_guard`).
        let app = app.layer(axum::middleware::from_fn(super::browser_guard::same_origin));
        // HTTP/1 only: every client of these ports speaks it, and sniffing
        // for HTTP/2 would wait for a silent client's first bytes untimed.
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        let mut acceptor = Acceptor::new(self.socket);
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = acceptor.next() => accepted,
                _ = shutdown.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone().layer(axum::Extension(ConnectInfo(peer)));
            // No upgrades: no HTTP port of reborn speaks WebSocket (comet's
            // listener is its own).
            let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
            });
        }
        drop(acceptor);
        match tokio::time::timeout(self.grace, graceful.shutdown()).await {
            Ok(()) => Ok(Drain::Complete),
            Err(_) => Ok(Drain::TimedOut { remaining: None }),
        }
    }
}

/// Accepts with a backoff on errors.
struct Acceptor {
    socket: TcpListener,
    backoff: Backoff,
}

impl Acceptor {
    fn new(socket: TcpListener) -> Acceptor {
        Acceptor {
            socket,
            backoff: Backoff::new(Duration::from_millis(5), Duration::from_secs(1)),
        }
    }

    /// The next connection; errors are logged and waited out.
    async fn next(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.socket.accept().await {
                Ok(accepted) => {
                    self.backoff.reset();
                    return accepted;
                }
                // The client gave up between SYN and accept: nothing is wrong here.
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "connection closed before accept");
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn bound(limit: Option<usize>, grace: Duration) -> (Listener, SocketAddr) {
        let mut listener = Listener::bind("127.0.0.1:0").await.expect("bind").grace(grace);
        if let Some(n) = limit {
            listener = listener.max_connections(Arc::new(Semaphore::new(n)));
        }
        let addr = listener.local_addr().expect("addr");
        (listener, addr)
    }

    /// Echoes one line per connection until shutdown.
    async fn echo(mut stream: TcpStream, _peer: SocketAddr, shutdown: CancellationToken) {
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                n = stream.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => { let _ = stream.write_all(&buf[..n]).await; }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> Vec<u8> {
        stream.write_all(text).await.expect("write");
        let mut buf = vec![0u8; text.len()];
        stream.read_exact(&mut buf).await.expect("read");
        buf
    }

    #[tokio::test]
    async fn serves_then_drains_on_shutdown() {
        let (listener, addr) = bound(None, Duration::from_secs(5)).await;
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(listener.serve(echo, shutdown.clone()));
        let mut a = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(round_trip(&mut a, b"ping").await, b"ping");
        shutdown.cancel();
        assert_eq!(serving.await.expect("join"), Drain::Complete);
        // The handler returned, so the connection is closed; nothing accepts any more.
        let mut rest = Vec::new();
        assert_eq!(a.read_to_end(&mut rest).await.expect("eof"), 0);
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn refuses_beyond_the_limit_and_frees_the_permit() {
        #[derive(Default)]
        struct Refusing {
            refused: std::sync::atomic::AtomicUsize,
        }
        impl ConnectionHandler for Arc<Refusing> {
            fn handle(
                &self,
                stream: TcpStream,
                peer: SocketAddr,
                shutdown: CancellationToken,
            ) -> impl Future<Output = ()> + Send + 'static {
                echo(stream, peer, shutdown)
            }
            fn refuse(
                &self,
                mut stream: TcpStream,
                _: SocketAddr,
            ) -> impl Future<Output = ()> + Send + 'static {
                self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    let _ = stream.write_all(b"full").await;
                }
            }
        }
        let handler = Arc::new(Refusing::default());
        let (listener, addr) = bound(Some(1), Duration::from_secs(5)).await;
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(listener.serve(handler.clone(), shutdown.clone()));
        let mut first = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(round_trip(&mut first, b"one").await, b"one");
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let mut said = Vec::new();
        second.read_to_end(&mut said).await.expect("read");
        assert_eq!(said, b"full");
        drop(first);
        // The permit comes back once the first handler returns.
        let third = loop {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"x").await.expect("write");
            let mut b = [0u8; 4];
            match c.read(&mut b).await {
                Ok(1) if b[0] == b'x' => break c,
                _ => tokio::task::yield_now().await,
            }
        };
        drop(third);
        assert!(handler.refused.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        shutdown.cancel();
        assert_eq!(serving.await.expect("join"), Drain::Complete);
    }

    #[tokio::test]
    async fn a_handler_that_ignores_shutdown_times_the_drain_out() {
        let (listener, addr) = bound(None, Duration::from_millis(50)).await;
        let shutdown = CancellationToken::new();
        let (started, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let stubborn = move |mut stream: TcpStream, _: SocketAddr, _: CancellationToken| {
            let started = started.clone();
            async move {
                let _ = started.send(());
                let mut buf = [0u8; 1];
                let _ = stream.read(&mut buf).await;
            }
        };
        let serving = tokio::spawn(listener.serve(stubborn, shutdown.clone()));
        let held = TcpStream::connect(addr).await.expect("connect");
        accepted.recv().await.expect("the handler started");
        shutdown.cancel();
        let drained = serving.await.expect("join");
        assert_eq!(drained, Drain::TimedOut { remaining: Some(1) });
        drop(held);
    }

    /// `GET /` on a new connection: the whole response, and the client's
    /// address.
    async fn get(addr: SocketAddr) -> (Vec<u8>, SocketAddr) {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let local = c.local_addr().expect("local");
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).await.expect("read");
        (reply, local)
    }

    #[tokio::test]
    async fn serve_http_answers_then_drains() {
        let (listener, addr) = bound(None, Duration::from_secs(5)).await;
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(listener.serve_http(app, shutdown.clone()));
        let (reply, _) = get(addr).await;
        assert!(
            reply.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        assert!(reply.ends_with(b"ok"));
        shutdown.cancel();
        assert_eq!(serving.await.expect("join").expect("served"), Drain::Complete);
    }

    #[tokio::test]
    async fn an_http_client_that_does_not_finish_its_headers_is_closed() {
        let (listener, addr) = bound(None, Duration::from_secs(5)).await;
        let listener = listener.header_timeout(Duration::from_millis(300));
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(listener.serve_http(app, shutdown.clone()));
        // One that says nothing, one that trickles its headers.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("write");
        let t = std::time::Instant::now();
        for c in [&mut silent, &mut slow] {
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
            assert!(closed.is_ok(), "still open after 5 s");
        }
        assert!(t.elapsed() >= Duration::from_millis(250), "{:?}", t.elapsed());
        // A client that sends its request in time is answered, and its
        // handler sees its address.
        let (reply, local) = get(addr).await;
        assert!(
            reply.ends_with(local.to_string().as_bytes()),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        shutdown.cancel();
        assert_eq!(serving.await.expect("join").expect("served"), Drain::Complete);
    }
}
