//! One client connection's life, the same for raw TCP and WebSocket: the
//! handshake (op 7 within the handshake timeout; earlier frames are logged and
//! skipped, as goim does), auth through logic, then one loop that reads client
//! frames, answers them, writes queued pushes in batches and enforces the idle
//! timeout. Everything runs in the connection's single task with one timer, so
//! an idle connection costs one small future and no buffer.
//!
//! Any bad input ends only this connection, with a log line and a counter
//! ([`super::stats`]). Imports the other comet files and `frame`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::channel::{Channel, parse_ops};
use super::error::ConnError;
use super::hub::Hub;
use super::logic_link::LinkError;
use super::stats::CometStats;
use super::transport::Transport;
use crate::im::frame::{Frame, FrameError, op};
use crate::im::proto::logic::ConnectReply;
use crate::im::proto::protocol::Proto;

/// The idle timeout when logic's ConnectReply carries none (goim's 4 min × 2).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(8 * 60);
/// How long a polite close (or a refusal reply) may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A client socket that was just accepted (and upgraded, for WebSocket).
pub struct Accepted<T> {
    /// The socket.
    pub transport: T,
    /// The client's address.
    pub peer: SocketAddr,
    /// The WebSocket `Cookie` header (empty for TCP), forwarded to logic.
    pub cookie: String,
    /// When the handshake timeout fires (counted from the TCP accept).
    pub deadline: Instant,
}

/// Runs one connection to its end, then cleans up after it.
pub async fn serve<T: Transport>(hub: Arc<Hub>, mut acc: Accepted<T>, shutdown: CancellationToken) {
    let sleep = tokio::time::sleep_until(acc.deadline);
    tokio::pin!(sleep);
    let mut conn = Conn {
        hub: &hub,
        peer: acc.peer,
        sleep: sleep.as_mut(),
        shutdown: &shutdown,
        renewing: None,
    };
    let mut channel = None;
    let end = conn.run(&mut acc.transport, &acc.cookie, &mut channel).await;
    let renewing = conn.renewing.take();
    if let Some(ch) = channel {
        hub.buckets.del(&ch);
        // A kicked connection's key now belongs to the newer one: telling logic
        // to forget it would drop the new session (goim does, and loses it).
        if !ch.was_kicked() {
            let h = hub.clone();
            hub.tasks.spawn(async move {
                // A renew still in flight would put the session back after
                // logic removed it (Heartbeat re-adds a missing session).
                if let Some(renew) = renewing {
                    let _ = renew.await;
                }
                if let Err(e) = h.link.disconnect(ch.mid(), ch.key(), &h.server_id).await {
                    tracing::debug!(key = ch.key(), error = %e, "logic Disconnect failed");
                }
            });
        }
    }
    record_end(&hub.stats, &end, acc.peer);
    let _ = tokio::time::timeout(CLOSE_GRACE, acc.transport.close()).await;
}

/// Counts and logs why a connection ended.
fn record_end(stats: &CometStats, end: &ConnError, peer: SocketAddr) {
    CometStats::bump(&stats.closed);
    let counter = match end {
        ConnError::Frame(FrameError::HeaderLen(_)) => Some(&stats.bad_header_len),
        ConnError::Frame(FrameError::BodyTooLong { .. }) | ConnError::TooLarge { .. } => {
            Some(&stats.bad_body_len)
        }
        ConnError::Frame(FrameError::PackTooShort(_)) => Some(&stats.bad_pack_len),
        ConnError::BadInput(_) => Some(&stats.bad_input),
        ConnError::HandshakeTimeout(_) => Some(&stats.handshake_timeouts),
        ConnError::IdleTimeout(_) => Some(&stats.idle_timeouts),
        ConnError::Kicked => Some(&stats.kicked),
        ConnError::Refused(_) => Some(&stats.auth_refused),
        ConnError::AuthFailed(_) => Some(&stats.auth_failed),
        // Ordinary ends: logged at debug, counted only in `closed`.
        ConnError::Io(_) | ConnError::PeerClosed | ConnError::PeerGone(_) | ConnError::Shutdown => None,
    };
    if let Some(c) = counter {
        CometStats::bump(c);
    }
    // Timeouts and kicks are a fleet's daily life (phones that sleep, apps
    // that reconnect): counted, logged at debug. What a client did wrong, or
    // a refusal, is worth a line.
    let notable = matches!(
        end,
        ConnError::Frame(_)
            | ConnError::TooLarge { .. }
            | ConnError::BadInput(_)
            | ConnError::Refused(_)
            | ConnError::AuthFailed(_)
    );
    if notable {
        tracing::info!(%peer, reason = %end, "closing client connection");
    } else {
        tracing::debug!(%peer, reason = %end, "client connection closed");
    }
}

/// The state of one connection's task.
struct Conn<'a> {
    hub: &'a Arc<Hub>,
    peer: SocketAddr,
    /// The connection's only timer: the handshake deadline, then the idle one.
    sleep: Pin<&'a mut Sleep>,
    shutdown: &'a CancellationToken,
    /// The latest session renew sent to logic, awaited before `Disconnect`.
    renewing: Option<JoinHandle<()>>,
}

impl Conn<'_> {
    /// Handshake, auth, then the session; always ends with the reason.
    async fn run<T: Transport>(
        &mut self,
        t: &mut T,
        cookie: &str,
        channel: &mut Option<Arc<Channel>>,
    ) -> ConnError {
        let (auth, backlog) = match self.handshake(t).await {
            Ok(x) => x,
            Err(e) => return e,
        };
        let reply = match self.authenticate(t, &auth, cookie).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        let key = if reply.key.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            reply.key
        };
        let ch = Arc::new(Channel::new(
            &key,
            reply.mid,
            self.peer.ip(),
            &reply.accepts,
            self.hub.protocol.send_queue,
        ));
        let room = (!reply.room_id.is_empty()).then(|| Arc::<str>::from(reply.room_id.as_str()));
        if let Some(old) = self.hub.buckets.put(&ch, room) {
            tracing::info!(key = %key, "a newer connection took the key; kicking the old one");
            if old.mid() != ch.mid() {
                self.forget_kicked_user(&old, &ch);
            }
        }
        CometStats::bump(&self.hub.stats.auth_ok);
        *channel = Some(ch.clone());
        let idle = u64::try_from(reply.heartbeat)
            .ok()
            .filter(|&n| n > 0)
            .map_or(DEFAULT_IDLE, Duration::from_nanos);
        let ok = Frame::new(auth.ver, op::AUTH_REPLY, auth.seq, Bytes::new());
        self.session(t, &ch, idle, vec![ok], backlog).await
    }

    /// A connection of another user took `old`'s key (one device, another
    /// account). The kicked connection tells logic nothing (the key's session
    /// is the new one's now), but `mid_{old}` still names the key on this
    /// comet, and pushes to the old user would reach the new one by it. So
    /// the old user's session goes (`Disconnect`, which also removes `key_`,
    /// both only while they name this comet), and then the new one's is
    /// written again (`Heartbeat` re-adds a missing session).
    fn forget_kicked_user(&self, old: &Arc<Channel>, new: &Arc<Channel>) {
        let hub = self.hub.clone();
        let (old_mid, new_mid, key) = (old.mid(), new.mid(), new.key().to_string());
        self.hub.tasks.spawn(async move {
            let (link, server) = (&hub.link, &hub.server_id);
            let done = async {
                link.disconnect(old_mid, &key, server).await?;
                link.heartbeat(new_mid, &key, server).await
            };
            if let Err(e) = done.await {
                tracing::warn!(%key, old_mid, new_mid, error = %e, "cannot remove the kicked user's session; pushes to that user may reach the key's new user until it expires");
            }
        });
    }

    /// Reads until op 7; returns it and the frames that came after it.
    async fn handshake<T: Transport>(&mut self, t: &mut T) -> Result<(Frame, Vec<Frame>), ConnError> {
        let timeout = self.hub.protocol.handshake_timeout;
        let mut frames = Vec::new();
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(ConnError::Shutdown),
                () = self.sleep.as_mut() => return Err(ConnError::HandshakeTimeout(timeout)),
                r = t.read_frames(&mut frames) => r?,
            }
            let at = frames.iter().position(|f| f.op == op::AUTH);
            let rest = at.map(|i| frames.split_off(i));
            for f in frames.drain(..) {
                CometStats::bump(&self.hub.stats.skipped_before_auth);
                tracing::debug!(peer = %self.peer, op = f.op, "frame before auth skipped");
            }
            if let Some(mut rest) = rest {
                let auth = rest.remove(0);
                return Ok((auth, rest));
            }
        }
    }

    /// Asks logic about the auth body; a refusal is answered with op 8 and an
    /// error body before the connection closes.
    async fn authenticate<T: Transport>(
        &mut self,
        t: &mut T,
        auth: &Frame,
        cookie: &str,
    ) -> Result<ConnectReply, ConnError> {
        let hub = self.hub;
        let timeout = hub.protocol.handshake_timeout;
        // Owned, so that a call the handshake timer gives up on can be left
        // to finish. Boxed, here and for Receive: a gRPC call's future is
        // big, and inline it would size every idle connection's task.
        let mut call = Box::pin({
            let (h, cookie, body) = (hub.clone(), cookie.to_string(), auth.body.clone());
            async move { h.link.connect(&h.server_id, &cookie, &body).await }
        });
        let result = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Err(ConnError::Shutdown),
            () = self.sleep.as_mut() => {
                self.abandon_connect(call);
                Err(ConnError::HandshakeTimeout(timeout))
            }
            r = &mut call => r.map_err(|e| match e {
                LinkError::Refused(msg) => ConnError::Refused(msg),
                e => ConnError::AuthFailed(e),
            }),
        };
        let err = match result {
            Ok(reply) => return Ok(reply),
            Err(e) => e,
        };
        let (code, message) = match &err {
            ConnError::Refused(m) => (-401, m.clone()),
            ConnError::HandshakeTimeout(d) => (
                -504,
                format!("authentication took longer than the handshake timeout ({d:?}), retry later"),
            ),
            _ => (-500, "authentication unavailable, retry later".to_string()),
        };
        let body = serde_json::json!({ "code": code, "message": message }).to_string();
        let refusal = Frame::new(auth.ver, op::AUTH_REPLY, auth.seq, body);
        let _ = tokio::time::timeout(CLOSE_GRACE, t.write(&[refusal], &VecDeque::new())).await;
        Err(err)
    }

    /// The handshake timer fired while logic was answering `Connect`. Logic
    /// may well have written the session already (it is slow, not down), and
    /// no `Disconnect` would ever follow for a connection that never got its
    /// reply: the user would look online here, and pushes would be routed to
    /// this comet, until the session expired. So the call is left to finish
    /// (bounded by the link's timeout), and what it wrote is taken back.
    /// The client may have retried on this comet meanwhile with the same
    /// key; that connection's session is then written again (`Heartbeat`
    /// re-adds a missing session), as after a kick by another user.
    fn abandon_connect<F>(&self, call: Pin<Box<F>>)
    where
        F: Future<Output = Result<ConnectReply, LinkError>> + Send + 'static,
    {
        let hub = self.hub.clone();
        self.hub.tasks.spawn(async move {
            let Ok(reply) = call.await else { return };
            let (link, server) = (&hub.link, &hub.server_id);
            let undone = async {
                link.disconnect(reply.mid, &reply.key, server).await?;
                match hub.buckets.get(&reply.key) {
                    Some(retried) => link.heartbeat(retried.mid(), &reply.key, server).await,
                    None => Ok(()),
                }
            };
            if let Err(e) = undone.await {
                tracing::warn!(key = %reply.key, mid = reply.mid, error = %e, "cannot take back the session of a login that timed out; pushes may be routed to this comet until it expires");
            }
        });
    }

    /// The authenticated connection: answer frames, write pushes, watch the
    /// idle timer, until something ends it.
    async fn session<T: Transport>(
        &mut self,
        t: &mut T,
        ch: &Arc<Channel>,
        idle: Duration,
        mut replies: Vec<Frame>,
        mut frames: Vec<Frame>,
    ) -> ConnError {
        self.sleep.as_mut().reset(Instant::now() + idle);
        let mut last_renew = Instant::now();
        loop {
            for f in std::mem::take(&mut frames) {
                if let Some(reply) = self.handle(ch, f, idle, &mut last_renew).await {
                    replies.push(reply);
                }
            }
            let pushes = ch.take_pushes();
            if !replies.is_empty() || !pushes.is_empty() {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return ConnError::Shutdown,
                    () = self.sleep.as_mut() => return ConnError::IdleTimeout(idle),
                    r = t.write(&replies, &pushes) => if let Err(e) = r { return e },
                }
                // Release the batch's memory: an idle connection holds none.
                replies = Vec::new();
            }
            drop(pushes);
            if ch.is_closed() {
                return if ch.was_kicked() {
                    ConnError::Kicked
                } else {
                    ConnError::Shutdown
                };
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return ConnError::Shutdown,
                () = self.sleep.as_mut() => return ConnError::IdleTimeout(idle),
                () = ch.woken() => {}
                r = t.read_frames(&mut frames) => if let Err(e) = r { return e },
            }
        }
    }

    /// Answers one client frame (`None`: no reply).
    async fn handle(
        &mut self,
        ch: &Arc<Channel>,
        f: Frame,
        idle: Duration,
        last_renew: &mut Instant,
    ) -> Option<Frame> {
        let hub = self.hub;
        CometStats::bump(&hub.stats.client_frames);
        let echo = |op: i32, body: Bytes| Some(Frame::new(f.ver, op, f.seq, body));
        match f.op {
            op::HEARTBEAT => {
                self.sleep.as_mut().reset(Instant::now() + idle);
                if last_renew.elapsed() >= hub.protocol.renew_interval {
                    *last_renew = Instant::now();
                    self.renew(ch);
                }
                let count = hub.room_count(ch.room().as_deref());
                echo(op::HEARTBEAT_REPLY, Bytes::copy_from_slice(&count.to_be_bytes()))
            }
            op::CHANGE_ROOM => {
                let room = String::from_utf8_lossy(&f.body);
                let room = (!room.is_empty()).then(|| Arc::<str>::from(room.as_ref()));
                hub.buckets.change_room(ch, room);
                echo(op::CHANGE_ROOM_REPLY, f.body.clone())
            }
            op::SUB | op::UNSUB => {
                match (parse_ops(&f.body), f.op == op::SUB) {
                    (Some(ops), true) => ch.watch(&ops),
                    (Some(ops), false) => ch.unwatch(&ops),
                    (None, _) => tracing::debug!(peer = %self.peer, "unparsable op list ignored"),
                }
                let reply = if f.op == op::SUB {
                    op::SUB_REPLY
                } else {
                    op::UNSUB_REPLY
                };
                echo(reply, f.body.clone())
            }
            other => {
                // Upstream messages (op 4) and any other op: handed to logic
                // in line (a flooding client slows only itself), echoed empty.
                let proto = Proto {
                    ver: i32::from(f.ver),
                    op: other,
                    seq: f.seq,
                    body: f.body.to_vec(),
                };
                if let Err(e) = Box::pin(hub.link.receive(ch.mid(), proto)).await {
                    tracing::debug!(peer = %self.peer, error = %e, "logic Receive failed");
                }
                echo(other, Bytes::new())
            }
        }
    }

    /// Renews the session in logic without holding up the heartbeat reply.
    ///
    /// Deterministic on purpose: at most `renew_interval` (10 min) plus one
    /// client heartbeat period after the last renew, well inside logic's 30 min
    /// TTL, so a connected client's `key_`/`mid_` never expire. goim renews
    /// after a random 10-30 min, which can pass the TTL and lose pushes.
    fn renew(&mut self, ch: &Arc<Channel>) {
        if self.renewing.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let hub = self.hub.clone();
        let ch = ch.clone();
        self.renewing = Some(self.hub.tasks.spawn(async move {
            if let Err(e) = hub.link.heartbeat(ch.mid(), ch.key(), &hub.server_id).await {
                tracing::warn!(key = ch.key(), error = %e, "logic Heartbeat (session renew) failed");
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::comet::config::{CometLogicConfig, CometProtocolConfig};
    use crate::im::comet::logic_link::LogicLink;
    use crate::im::comet::tcp::TcpTransport;

    /// Every connection's task is one allocation of its future's size: the gRPC
    /// calls and buffers must stay out of it (boxed or dropped when idle).
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let link = LogicLink::detached(&CometLogicConfig::default());
        let hub = Arc::new(Hub::new("t".into(), 4, link, CometProtocolConfig::default()));
        let acc = Accepted {
            transport: TcpTransport::new(server, 4096),
            peer,
            cookie: String::new(),
            deadline: Instant::now(),
        };
        let task = serve(hub, acc, CancellationToken::new());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1536, "a connection's future is {size} bytes");
    }
}
