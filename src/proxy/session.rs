//! One client connection.
//!
//! Two halves run in one task:
//!
//! * the **reader** parses every complete request in its buffer, dispatches each
//!   at once (so a pipeline reaches the backends as a pipeline) and queues its
//!   [`Pending`] reply on a bounded channel. When `max_pipeline` replies are
//!   outstanding the queue is full, the reader stops reading, and TCP pushes back
//!   on the client: back-pressure, never disconnection.
//! * the **writer** resolves the pending replies strictly in order. It appends
//!   every reply that is already complete to one buffer and writes only when the
//!   next reply is not ready yet (or the buffer is large), so a pipelined burst
//!   goes back in one syscall.
//!
//! A transaction's `WATCH` and `EXEC` run on a backend connection of their own
//! (`transaction.rs`): the reader waits for their reply before it dispatches
//! the client's next request, so nothing the client sent later overtakes them.
//!
//! A protocol error or QUIT is answered, the buffered replies are flushed, and the
//! connection closes. On shutdown the reader stops taking requests while the
//! writer delivers everything already accepted; a blocking call still out is
//! first unblocked at its server, then ends the connection unanswered
//! (`Lane::end` in `blocked.rs`). `CLIENT KILL` stops both halves (see
//! `clients.rs`, where every session is listed while it runs).
//!
//! A subscribed client also gets pub/sub messages: the writer takes them from
//! its inbox (`pubsub.rs`) whenever no reply is due, whole frames only. A
//! subscriber is never idle-timed-out.
//!
//! A client that does not read its replies is held back by the window of
//! `output.rs`: the reader sends only a reply-size-dependent number of requests
//! ahead, and the writer, while the client's socket is full, keeps taking the
//! replies that come in so their bytes are counted (per client, and
//! proxy-wide) and a client past `client_output_limit` is disconnected.
//!
//! With `auth` set, a client that has not given the password within
//! `auth_timeout` of connecting is closed: Redis has no such bound, but a
//! proxy's `max_clients` slots should not be held by strangers for ever.
//!
//! Once per chunk of input (not per request) the reader looks whether a
//! `CLIENT PAUSE` is in force, and records the chunk's last command and time for
//! `CLIENT LIST`.
//!
//! Each reply's time, from its request's arrival to its write, goes to the
//! stats, except for requests that may block at the server (BLPOP, XREAD …
//! BLOCK, WAIT, …): the reader marks those ([`Outgoing`]) and the writer only
//! counts them, since their wait is not latency (`stats.rs`).

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::clients::Connection;
use super::command;
use super::context::{Client, Context};
use super::dispatch::dispatch;
use super::output::{Meter, WINDOW_BYTES};
use super::pubsub::Inbox;
use super::reply::{self, Held, Pending, Reply};
use crate::libs::resp;

/// Flush the output buffer once it holds this much, even mid-burst.
const FLUSH_AT: usize = 64 * 1024;
/// Smallest and largest step by which the read buffer grows.
const READ_MIN: usize = 1024;
const READ_MAX: usize = 64 * 1024;

/// A reply on its way from the reader to the writer.
struct Outgoing {
    pending: Pending,
    /// Its request may block at the server: counted, not timed (see
    /// [`Stats::record_blocking`](super::stats::Stats::record_blocking)).
    blocks: bool,
}

/// Serves one client until it disconnects, sends QUIT or garbage, idles out, or
/// the proxy shuts down (`shutdown`).
pub async fn serve(stream: TcpStream, ctx: Arc<Context>, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let unknown = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let ends = (
        stream.peer_addr().unwrap_or(unknown),
        stream.local_addr().unwrap_or(unknown),
        i64::from(stream.as_raw_fd()),
    );
    // The reader stops on this token: on shutdown, or on CLIENT KILL.
    let conn = Connection::new(ctx.next_client_id(), ends, shutdown.child_token());
    let _listed = ctx.clients.add(conn.clone());
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(ctx.config.max_pipeline);
    // Tripped by the writer when it stops, so the reader stops too.
    let writer_done = CancellationToken::new();
    // The reader owns the client state, so a client that hangs up drops its
    // dedicated connections at once and a blocked BLPOP does not outlive it.
    let client = Client::on(&ctx, conn.clone());
    let meter = client.output.clone();
    let reader = async {
        let mut client = client;
        read_loop(rd, &ctx, &mut client, tx, &meter, &writer_done, conn.stop()).await;
        if conn.stop().is_cancelled() && !conn.is_killed() {
            end_blocked_calls(&ctx, &client).await;
        }
    };
    let writer = write_loop(wr, (&ctx, &conn), rx, &meter, &writer_done);
    tokio::join!(reader, writer);
    // Replies that arrived for requests never written stop counting.
    meter.end();
}

/// The proxy shuts down while `client` may have blocking calls out: each is
/// ended at its server before the client (and so its dedicated connections)
/// is dropped, so no element is popped for a session that is gone. A call
/// that got an element delivers it; the others end unanswered and the writer
/// closes the connection (see `Lane::end`).
async fn end_blocked_calls(ctx: &Arc<Context>, client: &Client) {
    // Most clients never block: no registry scan for them.
    if !client.end_lane() {
        return;
    }
    let limit = ctx.config.drain_timeout;
    match super::blocked::end_calls_of(ctx, client.id, limit).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(client = client.id, calls = n, "blocking calls ended for shutdown"),
        Err(e) => tracing::warn!(client = client.id, error = %e, "blocking calls not ended for shutdown"),
    }
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    ctx: &Arc<Context>,
    client: &mut Client,
    tx: mpsc::Sender<Outgoing>,
    meter: &Meter,
    writer_done: &CancellationToken,
    stop: &CancellationToken,
) {
    // Start small: most connections are idle most of the time, and idle memory
    // per client is what limits how many a proxy holds. Busy clients grow it.
    let mut buf = BytesMut::with_capacity(READ_MIN);
    // A big request arrives in many reads; parsing resumes where it stopped.
    let mut parser = resp::RequestParser::default();
    // A stranger has `auth_timeout` from its connection to give the password.
    let mut login = (!client.authed && !ctx.config.auth_timeout.is_zero())
        .then(|| tokio::time::Instant::now() + ctx.config.auth_timeout);
    loop {
        // One clock read per chunk of input, not per request: every request of a
        // pipelined burst arrived at the same moment anyway.
        let now = Instant::now();
        let paused = ctx.clients.maybe_paused();
        let mut last = None;
        loop {
            // A client that has not given the password yet gets Redis's
            // limits for strangers (`Limits::unauthenticated`).
            const STRANGER: resp::Limits = resp::Limits::unauthenticated();
            let limits = if client.authed { &ctx.limits } else { &STRANGER };
            let Some(parsed) = parser.parse(&mut buf, limits).transpose() else {
                if let Some(cmd) = last {
                    client.conn.touch(cmd, now);
                }
                break;
            };
            // Replies it does not read yet hold the client back (`output.rs`).
            if !meter.has_room() && !unless_ended(meter.wait_room(), writer_done, stop).await {
                return;
            }
            // The reply's place in the queue is taken before the request is
            // dispatched, so nothing runs between the two: a pub/sub message
            // cannot overtake the confirmation of its subscription.
            let Ok(permit) = tx.reserve().await else { return };
            let out = match &parsed {
                Err(e) => refuse(ctx, client, e, now),
                Ok(req) => {
                    let at = if paused {
                        if !ctx.clients.wait(req, stop).await {
                            // Killed or shut down while held: it never runs.
                            return;
                        }
                        Instant::now()
                    } else {
                        now
                    };
                    let (p, blocks) = dispatched(ctx, client, req, at, meter);
                    // The awaits stay in this loop: in a function of their
                    // own, its arguments would make every session's future
                    // (an idle client's memory) bigger.
                    let pending = match p.reply {
                        Reply::Hold(why) => hold(ctx, client, req, (p.cmd, p.start, why), stop).await,
                        // Only HELLO switches the protocol; its reply may
                        // wait (`auth_throttle.rs`), so any kind of reply.
                        _ if client.fence => {
                            client.fence = false;
                            drained(meter, stop).await;
                            p
                        }
                        _ => p,
                    };
                    Outgoing { pending, blocks }
                }
            };
            let close = matches!(out.pending.reply, Reply::Close(_));
            last = Some(out.pending.cmd);
            meter.dispatched();
            permit.send(out);
            if close {
                return;
            }
            // WATCH and EXEC run on the client's own backend connection: its
            // next requests, on shared ones, must not overtake them.
            if let Some(done) = client.barrier.take()
                && !unless_ended(done, writer_done, stop).await
            {
                return;
            }
        }
        if client.authed {
            login = None;
        }
        if buf.capacity() - buf.len() < READ_MIN / 2 {
            // Doubling: a client that keeps filling the buffer gets bigger reads.
            buf.reserve(buf.capacity().clamp(READ_MIN, READ_MAX));
        }
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = writer_done.cancelled() => return,
            _ = stop.cancelled() => return,
            timeout = timer(ctx.config.idle_timeout, login) => if still_open(ctx, client, meter, timeout) {
                continue;
            } else {
                return;
            },
        };
        if !matches!(read, Ok(n) if n > 0) {
            return;
        }
    }
}

/// Waits for `until`; false if the session ends first (the writer stopped,
/// or the session was stopped).
async fn unless_ended(until: impl Future, writer_done: &CancellationToken, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = until => true,
        _ = writer_done.cancelled() => false,
        _ = stop.cancelled() => false,
    }
}

/// The answer to a request that does not parse: an error, then the
/// connection closes (`Reply::Close`). `now` is when its input arrived.
fn refuse(ctx: &Context, client: &Client, e: &resp::ProtocolError, now: Instant) -> Outgoing {
    ctx.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(client = client.id, error = %e, "protocol error");
    let pending = Pending {
        cmd: ctx.stats.unknown_cmd(),
        start: now,
        reply: Reply::Close(resp::error(&format!("ERR Protocol error: {e}"))),
    };
    Outgoing {
        pending,
        blocks: false,
    }
}

/// Dispatches one request, at `at`. Returns its pending reply and whether
/// the request may block at its server (counted, not timed).
fn dispatched(
    ctx: &Arc<Context>,
    client: &mut Client,
    req: &resp::Request,
    at: Instant,
    meter: &Meter,
) -> (Pending, bool) {
    // Asked before dispatching: while MULTI queues, this request is queued,
    // not run, so even a BLPOP cannot block.
    let queuing = client.txn.as_ref().is_some_and(|t| t.queuing());
    let mut p = dispatch(ctx, client, req, at);
    // Every earlier reply is written, so the backends ran every earlier
    // request: a transaction's WATCH or EXEC goes now, not a task hop later
    // when the writer reaches it (the writer is idle, so nothing is saved by
    // waiting).
    if let Reply::Ordered(o) = &mut p.reply
        && meter.inflight() == 0
    {
        o.release();
    }
    // By the command's stats slot: no second name lookup.
    let blocks = !queuing && command::may_block(p.cmd, &req.args);
    (p, blocks)
}

/// Whether a session whose `timeout` ran out stays open: a client that has
/// not given the password in time (`auth_timeout`) is closed, and an idle one
/// (`idle_timeout`) too, unless it waits for something: a blocked command's
/// reply, or a subscriber's messages (as in Redis).
fn still_open(ctx: &Context, client: &Client, meter: &Meter, timeout: Timeout) -> bool {
    match timeout {
        Timeout::Idle if meter.inflight() == 0 && client.pubsub.is_none() => {
            tracing::debug!(client = client.id, "idle timeout");
            false
        }
        Timeout::Idle => true,
        Timeout::Login => {
            ctx.stats.auth_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = client.id, "closed: no password within auth_timeout");
            false
        }
    }
}

/// Holds a request that cannot be dispatched yet ([`Held`]: its slot is
/// switching groups, or the ZooKeeper lease lapsed) and dispatches it again
/// after each routing change or lease renewal, until it goes through or
/// `hold_timeout` passes. The whole session waits: this client's later
/// requests must not overtake the held one. At most `max_held` requests wait
/// across the proxy.
async fn hold(
    ctx: &Arc<Context>,
    client: &mut Client,
    req: &resp::Request,
    (cmd, start, why): (usize, Instant, Held),
    shutdown: &CancellationToken,
) -> Pending {
    let give_up = |why: Held, detail: &str| Pending {
        cmd,
        start,
        reply: Reply::Ready(match why {
            Held::Slot(slot) => reply::slot_switching(slot, Some(detail)),
            Held::Lease => reply::lease_refusal(Some(&ctx.proxy_id)),
        }),
    };
    let Ok(_permit) = ctx.held.try_acquire() else {
        return give_up(why, "too many requests held");
    };
    let deadline = tokio::time::Instant::now() + ctx.config.hold_timeout;
    // Subscribe before re-dispatching, so a change in between is not missed.
    let mut changes = ctx.router.subscribe();
    loop {
        let mut p = dispatch(ctx, client, req, Instant::now());
        p.start = start;
        let Reply::Hold(why) = p.reply else { return p };
        match why {
            Held::Slot(_) => tokio::select! {
                changed = changes.changed() => if changed.is_err() { return give_up(why, "router gone") },
                _ = tokio::time::sleep_until(deadline) => return give_up(why, "held too long"),
                _ = shutdown.cancelled() => return give_up(why, "proxy shutting down"),
            },
            Held::Lease => tokio::select! {
                valid = ctx.lease.wait_valid(deadline) => if !valid { return give_up(why, "held too long") },
                _ = shutdown.cancelled() => return give_up(why, "proxy shutting down"),
            },
        }
    }
}

/// Waits until every reply queued so far has been written (or `stop` fires).
/// Only after `HELLO` switched the protocol, with requests still out on the
/// other protocol's connections: the next request must not overtake them.
/// Rare enough that polling the counter is simpler than a wake-up on every
/// write of every session.
async fn drained(meter: &Meter, stop: &CancellationToken) {
    while meter.inflight() > 0 && !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Which of a session's timers ran out.
enum Timeout {
    /// `idle_timeout` without a request.
    Idle,
    /// `auth_timeout` since the connection, without the password.
    Login,
}

/// Sleeps until the idle timeout (`idle`, zero: none) or the deadline to
/// authenticate (`login`, `None` once authenticated or with AUTH off),
/// whichever comes first; for ever if neither applies. One timer, so the
/// reader's wait polls one future for both (P1 requests are a read each).
async fn timer(idle: Duration, login: Option<tokio::time::Instant>) -> Timeout {
    match (idle.is_zero(), login) {
        (true, None) => std::future::pending().await,
        (false, None) => {
            tokio::time::sleep(idle).await;
            Timeout::Idle
        }
        (true, Some(at)) => {
            tokio::time::sleep_until(at).await;
            Timeout::Login
        }
        (false, Some(at)) => {
            let idle_at = tokio::time::Instant::now() + idle;
            tokio::time::sleep_until(at.min(idle_at)).await;
            if at <= idle_at {
                Timeout::Login
            } else {
                Timeout::Idle
            }
        }
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    (ctx, conn): (&Context, &Connection),
    mut rx: mpsc::Receiver<Outgoing>,
    meter: &Meter,
    done: &CancellationToken,
) {
    let mut out = Output {
        // Allocated on first use and sized by what the client actually gets.
        buf: BytesMut::new(),
        written: Vec::new(),
        conn,
        inbox: None,
        next: None,
        closing: false,
    };
    let result: std::io::Result<()> = async {
        loop {
            if meter.is_over() {
                return Err(output_limit(ctx, conn, meter.held() + out.buf.len()));
            }
            if out.closing {
                // A QUIT or protocol error was taken while the socket was full.
                out.flush(&mut wr, ctx, meter, &mut rx).await?;
                return Ok(());
            }
            let next = match out.next.take() {
                Some(p) => Ok(p),
                None => rx.try_recv(),
            };
            let mut q = match next {
                Ok(q) => q,
                Err(_) => {
                    // Nothing queued right now: send what we have, then wait.
                    out.flush(&mut wr, ctx, meter, &mut rx).await?;
                    if out.next.is_some() || out.closing {
                        continue;
                    }
                    if out.inbox.is_none() {
                        out.inbox = conn.inbox.take();
                    }
                    match out.inbox.as_mut() {
                        None => match rx.recv().await {
                            Some(q) => q,
                            None => return Ok(()),
                        },
                        // Pub/sub messages go out between replies, never inside
                        // one, and only while no reply is due: a confirmation
                        // already queued goes before the channel's messages.
                        Some(inbox) => tokio::select! {
                        biased;
                        q = rx.recv() => match q {
                            Some(q) => q,
                            None => return Ok(()),
                        },
                        m = inbox.recv() => {
                            let Some(m) = m else {
                                out.inbox = None;
                                continue;
                            };
                            out.buf.extend_from_slice(&m);
                            while out.buf.len() < FLUSH_AT {
                                let Some(m) = inbox.try_recv() else { break };
                                out.buf.extend_from_slice(&m);
                            }
                            continue;
                        }
                        },
                    }
                }
            };
            let reply = match q.pending.reply.try_take() {
                Some(r) => r,
                // A call that may block for long: a client that passes its
                // limit meanwhile (later replies piled up behind it) is
                // disconnected now, not when the call returns.
                None if out.buf.is_empty() && q.blocks => tokio::select! {
                    r = q.pending.reply.take() => r,
                    _ = meter.over() => continue,
                },
                // Otherwise once this reply is in; the bytes past the limit
                // were dropped as they came (`output.rs`), and waiting for
                // the flag would cost every reply a registration.
                None if out.buf.is_empty() => q.pending.reply.take().await,
                None => {
                    // Send what we have while this one is on its way. A full
                    // socket makes the flush take it (and more) meanwhile.
                    out.next = Some(q);
                    out.flush(&mut wr, ctx, meter, &mut rx).await?;
                    continue;
                }
            };
            if reply::is_unanswered(&reply) {
                // Nothing more goes out: a later reply would pass for this one.
                out.closing = true;
                continue;
            }
            out.push(&q, &reply, meter);
            if out.closing {
                continue;
            }
            if out.buf.len() >= FLUSH_AT {
                out.flush(&mut wr, ctx, meter, &mut rx).await?;
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "client write failed");
    }
    let _ = wr.shutdown().await;
    done.cancel();
}

/// Fires once `conn` is killed (not on a mere shutdown, when the writer
/// still delivers what it accepted).
async fn killed(conn: &Connection) {
    conn.stop().cancelled().await;
    if !conn.is_killed() {
        std::future::pending::<()>().await;
    }
}

/// What the stats need to know about one reply in the output buffer.
struct Written {
    cmd: usize,
    /// When its request arrived.
    start: Instant,
    error: bool,
    /// See [`Outgoing::blocks`].
    blocks: bool,
}

/// Replies waiting to be written, with what stats need to know about each.
struct Output<'a> {
    buf: BytesMut,
    /// What the stats need of each reply in `buf`.
    written: Vec<Written>,
    /// Killed connections write nothing more.
    conn: &'a Connection,
    /// Pub/sub messages, once the client subscribed (see `pubsub.rs`).
    inbox: Option<Inbox>,
    /// A reply taken off the queue while the socket was full, not in yet.
    next: Option<Outgoing>,
    /// A reply that closes the connection is in `buf`.
    closing: bool,
}

impl Output<'_> {
    /// Appends a complete reply, just taken from `q`.
    fn push(&mut self, q: &Outgoing, reply: &Bytes, meter: &Meter) {
        // From the session's held bytes to its buffer, counted only when
        // the buffer cannot be written at once.
        meter.taken(q.pending.reply.counted_len(reply));
        meter.took(reply.len());
        let p = &q.pending;
        self.written.push(Written {
            cmd: p.cmd,
            start: p.start,
            error: resp::is_error(reply),
            blocks: q.blocks,
        });
        self.buf.extend_from_slice(reply);
        self.closing |= matches!(p.reply, Reply::Close(_));
    }

    /// Writes the buffered replies, then records their stats with one clock read.
    async fn flush(
        &mut self,
        wr: &mut OwnedWriteHalf,
        ctx: &Context,
        meter: &Meter,
        rx: &mut mpsc::Receiver<Outgoing>,
    ) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.conn.is_killed() {
            return Err(std::io::Error::other("killed by CLIENT KILL"));
        }
        // Most of the time the socket takes it all at once.
        match wr.try_write(&self.buf) {
            Ok(n) => self.buf.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if !self.buf.is_empty() {
            let counted = &ctx.stats.output_memory;
            let mut stuck = self.buf.len();
            counted.add(stuck);
            let r = self.write_stalled(wr, ctx, meter, rx, &mut stuck).await;
            counted.sub(stuck);
            meter.set_unwritten(0);
            r?;
        }
        self.buf.clear();
        let now = Instant::now();
        meter.written(self.written.len());
        for w in self.written.drain(..) {
            if w.blocks {
                ctx.stats.record_blocking(w.cmd, w.error);
            } else {
                ctx.stats
                    .record(w.cmd, now.saturating_duration_since(w.start), w.error);
            }
        }
        Ok(())
    }

    /// Writes `buf` to a socket that is full, taking the replies that come in
    /// meanwhile (up to the window) so their bytes are counted: `stuck` is
    /// what this session adds to the proxy-wide total. Past
    /// `client_output_limit` the client is disconnected.
    async fn write_stalled(
        &mut self,
        wr: &mut OwnedWriteHalf,
        ctx: &Context,
        meter: &Meter,
        rx: &mut mpsc::Receiver<Outgoing>,
        stuck: &mut usize,
    ) -> std::io::Result<()> {
        let subscriber = self.inbox.is_some();
        let mut queue_open = true;
        while !self.buf.is_empty() {
            let len = self.buf.len();
            if len > ctx.config.client_output_limit || meter.is_over() {
                return Err(output_limit(ctx, self.conn, len + meter.held()));
            }
            meter.set_unwritten(len);
            let take_more = queue_open && len < WINDOW_BYTES && !self.closing;
            let Output { buf, next, conn, .. } = self;
            tokio::select! {
                biased;
                r = wr.write(buf) => match r? {
                    0 => return Err(std::io::ErrorKind::WriteZero.into()),
                    n => buf.advance(n),
                },
                // Replies piled up while this write waits (`output.rs`).
                _ = meter.over() => continue,
                reply = next_reply(rx, next), if take_more => {
                    match (reply, self.next.take()) {
                        (Some(reply), Some(q)) => self.push(&q, &reply, meter),
                        // The reader ended: write what is left.
                        _ => queue_open = false,
                    }
                }
                // A subscriber that does not read is killed when its messages
                // pile up (`pubsub.rs`): that must end a write stuck on it.
                _ = killed(conn), if subscriber => {
                    return Err(std::io::Error::other("killed: pub/sub output limit"));
                }
            }
            let now = self.buf.len();
            if now > *stuck {
                ctx.stats.output_memory.add(now - *stuck);
            } else {
                ctx.stats.output_memory.sub(*stuck - now);
            }
            *stuck = now;
        }
        Ok(())
    }
}

/// Disconnects a client whose unread replies passed `client_output_limit`:
/// counted and logged, as Redis does.
fn output_limit(ctx: &Context, conn: &Connection, unread: usize) -> std::io::Error {
    ctx.stats.output_limit_kills.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        client = conn.id,
        addr = %conn.addr,
        unread,
        limit = ctx.config.client_output_limit,
        "client disconnected: it does not read its replies (client_output_limit, or max_output_memory while it holds over 1 MB)"
    );
    std::io::Error::other("client_output_limit")
}

/// The reply of the next queued request, once it is in. Cancel-safe: the
/// request waits in `next` until its reply comes.
async fn next_reply(rx: &mut mpsc::Receiver<Outgoing>, next: &mut Option<Outgoing>) -> Option<Bytes> {
    if next.is_none() {
        *next = Some(rx.recv().await?);
    }
    Some(next.as_mut()?.pending.reply.take().await)
}
