//! One pipelined connection to a redis-server.
//!
//! Sessions hand requests to a [`BackendConn`] and get a [`oneshot`] receiver for
//! the reply. A supervisor task owns the socket:
//!
//! * the **writer** takes every queued request at once (`recv_many`) and writes
//!   them with one syscall, so concurrent clients share packets;
//! * the **reader** splits replies off its buffer and completes the waiting
//!   requests in FIFO order: Redis answers a connection's requests in order, so
//!   the n-th reply belongs to the n-th request written;
//! * on any I/O or protocol error, every request in flight or queued gets an
//!   `-ERR` naming the backend, then the supervisor reconnects with backoff.
//!   While it is down, new requests fail at once instead of queueing
//!   ([`BackendConn::is_down`]), so a dead group costs its clients a fast error and
//!   costs nothing to other groups.
//!
//! Dropping every handle closes the connection after its in-flight replies.
//!
//! A **script that runs long** (`EVAL`, `FCALL`, …) on a shared connection
//! holds every request queued behind it. On one Redis, once a script has run
//! for `busy-reply-threshold`, every other client gets `-BUSY` at once; so
//! here, once a server with a client's script out has been silent for
//! [`BackendOptions::busy_after`], another client's new request for it gets
//! that `-BUSY` instead of joining the queue ([`BackendConn::send_client`],
//! `script_watch.rs`). Above all, a client that retries its timed-out script
//! gets `BUSY`, as from Redis, instead of queueing a second run behind the
//! first. The script's own client still queues, as its connection would on
//! one Redis.
//!
//! A connection opened with [`BackendOptions::track_id`] also asks the server for
//! its `CLIENT ID` during the handshake, before any request is written: that is
//! how a blocking command parked on a dedicated connection can later be
//! interrupted with `CLIENT UNBLOCK` (see `blocked.rs`).
//!
//! A connection opened with [`Protocol::Resp3`] says `HELLO 3` instead of
//! `AUTH`: it carries the requests of RESP3 clients, and the splitter
//! (`resp::reply_len`) frames every RESP3 type, so the replies pass through
//! as the server encoded them. Such a connection never gets an out-of-band push
//! frame, which would be taken for the next reply: Redis pushes only to a
//! subscribed connection or one with client tracking on, and neither `SUBSCRIBE`
//! nor `CLIENT` (answered by the proxy, `TRACKING` refused) ever reaches a shared
//! connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::output::Meter;
use super::script_watch::{ScriptRun, ScriptWatch};
use crate::libs::backoff::Backoff;
use crate::libs::protocol::Protocol;
use crate::libs::resp;
use crate::libs::resp_client::UNREPLICATED;

/// A request on its way to a backend.
pub struct Job {
    /// The request, RESP-encoded.
    pub req: Bytes,
    /// Completed with the raw reply frame (or a proxy `-ERR`).
    pub reply: ReplyTo,
}

/// Where a request's reply goes: its session's receiver, and, for the
/// requests a session counts (`output.rs`), that session's [`Meter`], so the
/// reply is counted from the moment it is read off the backend.
///
/// Dropped unanswered (never, while its connection task runs), its
/// receiver gets `reply::lost()`, whose bytes the session then uncounts
/// though they were never counted: `Meter::taken` takes no more than the
/// session holds, so the proxy-wide count stays the sum of the sessions'.
pub struct ReplyTo {
    tx: oneshot::Sender<Bytes>,
    meter: Option<Arc<Meter>>,
    /// A client's script, counted until this is dropped ([`ScriptWatch`]).
    script: Option<ScriptRun>,
}

impl ReplyTo {
    /// Completes the request with `reply`.
    pub fn send(self, reply: Bytes) {
        let ReplyTo { tx, meter, script } = self;
        // A script's reply is in: the server is free again.
        drop(script);
        let Some(meter) = meter else {
            // The client may have gone; its reply is simply dropped.
            let _ = tx.send(reply);
            return;
        };
        let reply = if meter.admit(reply.len()) {
            reply
        } else {
            // Dropped here, so the bytes of a client that does not read are
            // never held; its session disconnects it (`Meter::over`).
            let refusal = resp::error("ERR client_output_limit reached, reply dropped");
            meter.add(refusal.len());
            refusal
        };
        if let Err(unreceived) = tx.send(reply) {
            meter.taken(unreceived.len());
        }
    }
}

/// How backend connections are made.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Sent as `AUTH` right after connecting, when set.
    pub auth: Option<String>,
    pub connect_timeout: Duration,
    /// Ask `CLIENT ID` after connecting ([`BackendConn::client_id`]). Only
    /// dedicated connections need it; shared ones skip the round trip.
    pub track_id: bool,
    /// The protocol the connection speaks. RESP3 connections open with
    /// `HELLO 3` (authenticating in the same command), so the server itself
    /// encodes the replies of the RESP3 clients they carry.
    pub protocol: Protocol,
    /// `write_ack = "replica"`: a burst of requests with a write in it is
    /// followed by `WAIT 1 <this>`, and its replies are delivered only once
    /// that answers (see [`Awaited`]). Only on shared connections: a
    /// transaction's or a blocked call's connection never gets it.
    pub replica_ack: Option<Duration>,
    /// `busy_reply_threshold`: silent this long with a client's script out,
    /// the connection answers other clients' new requests `-BUSY` (see the
    /// module doc). Only shared connections; `None` never.
    pub busy_after: Option<Duration>,
    /// Ask the server something in the handshake when nothing else is asked
    /// (RESP2, no password), so a server that wants a password is refused
    /// there instead of failing every request. Off for the connection of a
    /// `SCRIPT KILL`, which must not wait for a busy server to answer.
    pub probe: bool,
}

/// Why a backend connection could not be opened, or was lost.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The server answered `AUTH` or `HELLO 3` with an error, or the first
    /// command with `NOAUTH`: a wrong or missing password or protocol stays
    /// wrong, retrying only helps once the config is fixed.
    #[error("{command} failed: {reply}")]
    Refused { command: &'static str, reply: String },
    #[error("connection closed during handshake")]
    ClosedInHandshake,
    #[error("connection closed by server")]
    Closed,
    #[error("reply without a request")]
    UnexpectedReply,
    #[error("reader stopped")]
    ReaderStopped,
    #[error(transparent)]
    Protocol(#[from] resp::ProtocolError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl BackendError {
    /// Whether the requests this connection carried may be sent again
    /// elsewhere: only if it failed before any was written (connect and
    /// handshake). Once serving, a lost connection may have run them.
    pub fn retry_safe(&self) -> bool {
        match self {
            BackendError::ConnectTimeout(_)
            | BackendError::HandshakeTimeout
            | BackendError::Refused { .. }
            | BackendError::ClosedInHandshake => true,
            BackendError::Closed
            | BackendError::UnexpectedReply
            | BackendError::ReaderStopped
            | BackendError::Protocol(_)
            | BackendError::Io(_) => false,
        }
    }
}

const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

struct Shared {
    addr: Arc<str>,
    state: AtomicU8,
    last_error: parking_lot::Mutex<String>,
    /// The server's id for the current connection, 0 while unknown (Redis
    /// numbers its clients from 1).
    client_id: AtomicU64,
    /// The scripts out on this server ([`BackendOptions::busy_after`]).
    scripts: Option<Arc<ScriptWatch>>,
}

/// Handle to one backend connection. Cheap to clone; the connection lives while
/// any handle does.
#[derive(Clone)]
pub struct BackendConn {
    tx: mpsc::UnboundedSender<Job>,
    shared: Arc<Shared>,
}

impl BackendConn {
    /// Starts connecting to `addr` in the background. Requests sent before the
    /// first connection is up wait for it.
    pub fn spawn(addr: &str, opts: BackendOptions) -> BackendConn {
        Self::spawn_with_handle(addr, opts).0
    }

    /// Like [`BackendConn::spawn_with_handle`], on the runtime `rt`.
    pub fn spawn_on(
        rt: &tokio::runtime::Handle,
        addr: &str,
        opts: BackendOptions,
    ) -> (BackendConn, tokio::task::AbortHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            addr: Arc::from(addr),
            state: AtomicU8::new(CONNECTING),
            last_error: parking_lot::Mutex::new(String::new()),
            client_id: AtomicU64::new(0),
            scripts: opts.busy_after.map(|after| ScriptWatch::of(addr, after)),
        });
        let task = rt.spawn(supervise(shared.clone(), opts, rx));
        (BackendConn { tx, shared }, task.abort_handle())
    }

    /// Like [`BackendConn::spawn`], also returning a handle that kills the
    /// connection at once, in-flight requests included. Dedicated connections of
    /// blocking commands use it: a client that leaves while blocked must not keep
    /// its backend connection blocked.
    pub fn spawn_with_handle(addr: &str, opts: BackendOptions) -> (BackendConn, tokio::task::AbortHandle) {
        Self::spawn_on(&tokio::runtime::Handle::current(), addr, opts)
    }

    /// The backend's address.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// True while the backend is known to be unreachable.
    pub fn is_down(&self) -> bool {
        self.shared.state.load(Ordering::Relaxed) == DOWN
    }

    /// True once connected (and authenticated).
    pub fn is_up(&self) -> bool {
        self.shared.state.load(Ordering::Relaxed) == UP
    }

    /// The server's `CLIENT ID` of this connection while it is up, when it was
    /// opened with [`BackendOptions::track_id`].
    pub fn client_id(&self) -> Option<u64> {
        match self.shared.client_id.load(Ordering::SeqCst) {
            0 => None,
            id => Some(id),
        }
    }

    /// The error that made the backend go down.
    pub fn last_error(&self) -> String {
        self.shared.last_error.lock().clone()
    }

    /// The `-ERR` a request gets while this backend is down.
    pub fn down_error(&self) -> Bytes {
        down_reply(&self.shared)
    }

    /// Queues `req`; the receiver yields its reply. While the backend is down the
    /// receiver is completed at once with an error.
    pub fn send(&self, req: Bytes) -> oneshot::Receiver<Bytes> {
        self.send_counted(req, None)
    }

    /// [`send`](Self::send), with the reply counted against `meter` from its
    /// arrival until its session takes it.
    pub fn send_counted(&self, req: Bytes, meter: Option<&Arc<Meter>>) -> oneshot::Receiver<Bytes> {
        self.submit(req, meter, None)
    }

    /// A client's request ([`send_counted`](Self::send_counted)), `script`
    /// if it runs one.
    ///
    /// # Errors
    /// While another client's script runs long on this server, the `-BUSY`
    /// to answer at once, nothing sent (see the module doc).
    pub fn send_client(
        &self,
        client: u64,
        script: bool,
        req: Bytes,
        meter: Option<&Arc<Meter>>,
    ) -> Result<oneshot::Receiver<Bytes>, Bytes> {
        let watch = self.shared.scripts.as_ref();
        if let Some(silent) = watch.and_then(|w| w.busy_for(client)) {
            return Err(resp::error(&format!(
                "BUSY Redis is busy running a script. You can only call SCRIPT KILL or FUNCTION KILL \
                 (reborn proxy: {} silent for {silent} ms with a script running)",
                self.shared.addr
            )));
        }
        let run = watch.filter(|_| script).map(|w| w.start(client));
        Ok(self.submit(req, meter, run))
    }

    fn submit(
        &self,
        req: Bytes,
        meter: Option<&Arc<Meter>>,
        script: Option<ScriptRun>,
    ) -> oneshot::Receiver<Bytes> {
        let (tx, rx) = oneshot::channel();
        let reply = ReplyTo {
            tx,
            meter: meter.cloned(),
            script,
        };
        if self.is_down() {
            reply.send(self.down_error());
            return rx;
        }
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job { req, reply }) {
            job.reply.send(self.down_error());
        }
        rx
    }
}

/// Which servers' refusals were logged: a pool holds several connections to
/// a server and every worker has its own pools, and one warning says it.
mod refusals {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use parking_lot::Mutex;

    fn logged() -> &'static Mutex<HashMap<String, String>> {
        static LOGGED: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
        LOGGED.get_or_init(Mutex::default)
    }

    /// True the first time `addr` refuses with `error` (since it last let a
    /// connection in).
    pub(super) fn is_news(addr: &str, error: &str) -> bool {
        let mut logged = logged().lock();
        if logged.get(addr).is_some_and(|e| e == error) {
            return false;
        }
        logged.insert(addr.to_string(), error.to_string());
        true
    }

    /// `addr` let a connection in: a refusal after this is news again.
    pub(super) fn accepted(addr: &str) {
        let mut logged = logged().lock();
        if !logged.is_empty() {
            logged.remove(addr);
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_refusal_is_said_once_per_server_until_it_lets_one_in() {
            let (a, b) = ("refusals-test-a:1", "refusals-test-b:1");
            assert!(super::is_news(a, "NOAUTH"));
            assert!(!super::is_news(a, "NOAUTH"), "another connection, same news");
            assert!(super::is_news(b, "NOAUTH"), "another server");
            assert!(super::is_news(a, "WRONGPASS"), "another reason");
            super::accepted(a);
            assert!(super::is_news(a, "WRONGPASS"));
        }
    }
}

fn down_reply(shared: &Shared) -> Bytes {
    let why = shared.last_error.lock().clone();
    resp::error(&format!("ERR backend {} is down: {}", shared.addr, why))
}

async fn supervise(shared: Arc<Shared>, opts: BackendOptions, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    // A proxy opens dozens of connections at start, one per client for
    // blocking calls: only a connection that comes back is news.
    let mut failed = false;
    loop {
        let outcome = match connect(&shared.addr, &opts).await {
            Ok((stream, id)) => {
                shared.client_id.store(id, Ordering::SeqCst);
                shared.state.store(UP, Ordering::Relaxed);
                refusals::accepted(&shared.addr);
                backoff.reset();
                if std::mem::take(&mut failed) {
                    tracing::info!(backend = %shared.addr, "backend connected again");
                } else {
                    tracing::debug!(backend = %shared.addr, "backend connected");
                }
                serve(stream, &mut rx, &shared, opts.replica_ack).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            // Every handle is gone and the in-flight replies were delivered.
            Ok(()) => return,
            Err(e) => {
                failed = true;
                shared.client_id.store(0, Ordering::SeqCst);
                let was_up = shared.state.swap(DOWN, Ordering::Relaxed) == UP;
                let error = e.to_string();
                if was_up {
                    tracing::warn!(backend = %shared.addr, error = %e, "backend connection lost");
                } else if matches!(e, BackendError::Refused { .. }) && refusals::is_news(&shared.addr, &error)
                {
                    // A password or protocol the server refuses is the
                    // operator's to fix: said once per server, not per
                    // retry nor per connection.
                    tracing::warn!(backend = %shared.addr, error = %e, "backend refused the proxy");
                } else {
                    tracing::debug!(backend = %shared.addr, error = %e, "backend connect failed");
                }
                *shared.last_error.lock() = error;
            }
        }
        // Requests that raced with the failure are answered now, not after the
        // backoff: the client deserves a fast error.
        let delay = backoff.next_delay();
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                job = rx.recv() => match job {
                    Some(job) => job.reply.send(down_reply(&shared)),
                    None => return,
                },
            }
        }
    }
}

/// Connects, authenticates (with `HELLO 3` for RESP3) and, with `track_id`,
/// learns the connection's
/// `CLIENT ID` (0 when not asked).
pub(super) async fn connect(addr: &str, opts: &BackendOptions) -> Result<(TcpStream, u64), BackendError> {
    let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| BackendError::ConnectTimeout(opts.connect_timeout))??;
    stream.set_nodelay(true)?;
    let mut stream = stream;
    if opts.protocol == Protocol::Resp3 {
        let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
        if let Some(pw) = &opts.auth {
            hello.extend([b"AUTH".as_ref(), b"default", pw.as_bytes()]);
        }
        stream.write_all(&resp::encode_array(&hello)).await?;
        let reply = read_one(&mut stream, opts.connect_timeout).await?;
        if resp::is_error(&reply) {
            return Err(refused("HELLO 3", &reply));
        }
    } else if let Some(pw) = &opts.auth {
        let req = resp::encode_array(&[b"AUTH".as_ref(), pw.as_bytes()]);
        stream.write_all(&req).await?;
        let reply = read_one(&mut stream, opts.connect_timeout).await?;
        if resp::is_error(&reply) {
            return Err(refused("AUTH", &reply));
        }
    }
    let mut id = 0;
    if opts.track_id {
        stream.write_all(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n").await?;
        let reply = read_one(&mut stream, opts.connect_timeout).await?;
        no_password_needed("CLIENT ID", &reply)?;
        // A server without CLIENT ID (Redis < 5) still serves; its blocked
        // commands just cannot be interrupted.
        id = resp::integer(&reply)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
    } else if opts.probe && opts.auth.is_none() && opts.protocol == Protocol::Resp2 {
        // Nothing above asked the server anything: without this a server
        // that wants a password would count as up while every request got
        // `NOAUTH`. (A server busy with a script answers `BUSY`: it is up.)
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
        let reply = read_one(&mut stream, opts.connect_timeout).await?;
        no_password_needed("PING", &reply)?;
    }
    Ok((stream, id))
}

/// A `NOAUTH` reply to the handshake's first command: the server wants a
/// password the proxy was not given (`backend_auth`).
fn no_password_needed(command: &'static str, reply: &[u8]) -> Result<(), BackendError> {
    if reply.starts_with(b"-NOAUTH") {
        return Err(refused(command, reply));
    }
    Ok(())
}

/// The error for a handshake command the server answered with an error.
fn refused(command: &'static str, reply: &[u8]) -> BackendError {
    BackendError::Refused {
        command,
        reply: String::from_utf8_lossy(reply).trim().to_string(),
    }
}

/// Reads exactly one reply frame (used only during the handshake).
async fn read_one(stream: &mut TcpStream, timeout: Duration) -> Result<Bytes, BackendError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if let Some(n) = resp::reply_len(&buf)? {
            return Ok(buf.split_to(n).freeze());
        }
        let read = tokio::time::timeout(timeout, stream.read_buf(&mut buf))
            .await
            .map_err(|_| BackendError::HandshakeTimeout)??;
        if read == 0 {
            return Err(BackendError::ClosedInHandshake);
        }
    }
}

/// What the reader expects next, in write order.
pub(crate) enum Awaited {
    /// A reply, delivered as soon as it arrives.
    Now(ReplyTo),
    /// A reply of a burst followed by `WAIT` (`write_ack = "replica"`): kept
    /// until the `WAIT` answers. `true` for a write, which fails with
    /// `-NOREPLICAS` if no replica acknowledged it.
    Held(ReplyTo, bool),
    /// The `WAIT` closing such a burst.
    Wait,
}

/// Runs one connected socket until an error, or until every handle is dropped and
/// the in-flight replies are delivered (`Ok`).
async fn serve(
    stream: TcpStream,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    shared: &Shared,
    replica_ack: Option<Duration>,
) -> Result<(), BackendError> {
    let (rd, wr) = stream.into_split();
    // What the reader expects travels from writer to reader in write order, a
    // batch at a time.
    let (inflight_tx, mut inflight_rx) = mpsc::unbounded_channel::<Vec<Awaited>>();
    let mut waiting: VecDeque<Awaited> = VecDeque::new();
    let mut held: Vec<(ReplyTo, Bytes, bool)> = Vec::new();
    // True while a WAIT is out: the writer sends the next writes only after
    // it answered (they gather meanwhile, and one WAIT then covers them all).
    let wait_out = tokio::sync::watch::Sender::new(false);
    let scripts = shared.scripts.as_deref();
    let result = tokio::try_join!(
        write_loop(wr, rx, inflight_tx, (replica_ack, &wait_out)),
        read_loop(
            rd,
            &mut inflight_rx,
            (&mut waiting, &mut held),
            (replica_ack, &wait_out),
            scripts
        )
    );
    if let Err(e) = result {
        // Fail everything that was in flight or queued, naming the backend.
        // A held reply too: its write was never acknowledged by a replica.
        let reply = resp::error(&format!("ERR backend {} connection lost: {e}", shared.addr));
        inflight_rx.close();
        while let Ok(batch) = inflight_rx.try_recv() {
            waiting.extend(batch);
        }
        for (s, _, _) in held.drain(..) {
            s.send(reply.clone());
        }
        for slot in waiting.drain(..) {
            if let Awaited::Now(s) | Awaited::Held(s, _) = slot {
                s.send(reply.clone());
            }
        }
        while let Ok(job) = rx.try_recv() {
            job.reply.send(reply.clone());
        }
        return Err(e);
    }
    Ok(())
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    inflight: mpsc::UnboundedSender<Vec<Awaited>>,
    (replica_ack, wait_out): (Option<Duration>, &tokio::sync::watch::Sender<bool>),
) -> Result<(), BackendError> {
    let mut jobs = Vec::with_capacity(256);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let wait = replica_ack.map(|t| {
        let ms = t.as_millis().max(1).to_string();
        resp::encode_array(&[
            Bytes::from_static(b"WAIT"),
            Bytes::from_static(b"1"),
            Bytes::from(ms),
        ])
    });
    loop {
        if rx.recv_many(&mut jobs, 1024).await == 0 {
            // All handles dropped: let the reader finish the in-flight replies.
            return Ok(());
        }
        // Each request is classified once, and only in `write_ack = "replica"`:
        // `kinds[i]` says whether `jobs[i]` writes.
        let mut kinds: Vec<bool> = Vec::new();
        let classify = |jobs: &[Job], kinds: &mut Vec<bool>| {
            if wait.is_some() {
                let new = &jobs[kinds.len()..];
                kinds.extend(new.iter().map(|j| super::command::writes(&j.req)));
            }
        };
        classify(&jobs, &mut kinds);
        // One WAIT out at a time: Redis runs nothing else of a connection
        // blocked in WAIT anyway, so writes arriving meanwhile gather here
        // and one WAIT covers them all (a group commit under load).
        if *wait_out.borrow() && kinds.contains(&true) {
            let mut answered = wait_out.subscribe();
            loop {
                tokio::select! {
                    done = answered.wait_for(|out| !out) => {
                        done.map_err(|_| BackendError::ReaderStopped)?;
                        break;
                    }
                    n = rx.recv_many(&mut jobs, 1024) => if n == 0 { break },
                }
            }
            classify(&jobs, &mut kinds);
        }
        buf.clear();
        let mut slots = Vec::with_capacity(jobs.len() + 1);
        // One WAIT per burst, not per command: it covers every write before it.
        let writes = kinds.contains(&true);
        let mut kinds = kinds.into_iter();
        for job in jobs.drain(..) {
            buf.extend_from_slice(&job.req);
            let write = kinds.next();
            slots.push(if writes {
                Awaited::Held(job.reply, write.unwrap_or(true))
            } else {
                Awaited::Now(job.reply)
            });
        }
        if let (true, Some(wait)) = (writes, &wait) {
            buf.extend_from_slice(wait);
            slots.push(Awaited::Wait);
            wait_out.send_replace(true);
        }
        // Hand the slots over before writing, so a reply can never arrive
        // before the reader knows whom it is for.
        inflight.send(slots).map_err(|_| BackendError::ReaderStopped)?;
        wr.write_all(&buf).await?;
    }
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    inflight: &mut mpsc::UnboundedReceiver<Vec<Awaited>>,
    (waiting, held): (&mut VecDeque<Awaited>, &mut Vec<(ReplyTo, Bytes, bool)>),
    (replica_ack, wait_out): (Option<Duration>, &tokio::sync::watch::Sender<bool>),
    scripts: Option<&ScriptWatch>,
) -> Result<(), BackendError> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // A big reply arrives in many reads; the scan resumes where it stopped.
    let mut scan = resp::ReplyScan::default();
    loop {
        while let Some(n) = scan.next_len(&buf)? {
            let frame = buf.split_to(n).freeze();
            // A reply says the server is not stuck, unless it is the `-BUSY`
            // Redis itself gives once a script has run past its own threshold.
            if let Some(scripts) = scripts
                && !frame.starts_with(b"-BUSY")
            {
                scripts.heard();
            }
            let slot = match waiting.pop_front() {
                Some(s) => s,
                None => match inflight.recv().await {
                    Some(batch) => {
                        waiting.extend(batch);
                        // The writer never sends an empty batch.
                        waiting.pop_front().ok_or(BackendError::UnexpectedReply)?
                    }
                    None => return Err(BackendError::UnexpectedReply),
                },
            };
            match slot {
                Awaited::Now(sender) => sender.send(frame),
                Awaited::Held(sender, write) => held.push((sender, frame, write)),
                Awaited::Wait => {
                    release(held, &frame, replica_ack.unwrap_or_default());
                    wait_out.send_replace(false);
                }
            }
        }
        // Part of a big reply came: the server is not stuck either.
        if !buf.is_empty()
            && let Some(scripts) = scripts
        {
            scripts.heard();
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        let read = if waiting.is_empty() {
            // Nothing in flight: wait for the next batch or for bytes, and finish
            // cleanly once the writer is gone (every handle dropped).
            tokio::select! {
                batch = inflight.recv() => match batch {
                    Some(batch) => { waiting.extend(batch); continue; }
                    None if buf.is_empty() => return Ok(()),
                    None => return Err(BackendError::UnexpectedReply),
                },
                read = rd.read_buf(&mut buf) => read?,
            }
        } else {
            rd.read_buf(&mut buf).await?
        };
        if read == 0 {
            return Err(BackendError::Closed);
        }
    }
}

/// Delivers the replies a `WAIT` held, given its answer: a write's succeeds
/// only if a replica acknowledged it; an error reply (nothing was written)
/// and a read's pass as they are.
fn release(held: &mut Vec<(ReplyTo, Bytes, bool)>, wait_reply: &[u8], timeout: Duration) {
    let acked = resp::integer(wait_reply).is_some_and(|n| n >= 1);
    for (sender, reply, write) in held.drain(..) {
        let failed = reply.starts_with(b"-") || reply.starts_with(b"!");
        let reply = if write && !acked && !failed {
            resp::error(&format!(
                "{UNREPLICATED}, but no replica acknowledged it within {} ms",
                timeout.as_millis()
            ))
        } else {
            reply
        };
        sender.send(reply);
    }
}
