//! One authenticated client connection as the rest of comet sees it: its key,
//! mid, room and watched ops, and its bounded outbound queue.
//!
//! The connection's own task ([`super::connection`]) owns the socket; pushes
//! from gRPC handlers only touch this shared half: [`Channel::push`] appends to
//! the queue without ever waiting (a full queue drops the push), and a
//! [`Notify`] wakes the connection task, which takes the whole queue at once
//! and writes it in one go. An idle channel holds no buffer: the queue's
//! allocation leaves with the batch that is written. Imports `frame` and `proto`.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::im::frame::{Frame, HEADER_LEN, op};
use crate::im::proto::protocol::Proto;

/// Most ops one connection may watch (Sub bodies cannot grow it without bound).
pub const MAX_WATCHED_OPS: usize = 256;

/// A server push, encoded once and shared by every connection it goes to.
#[derive(Clone, Debug)]
pub struct Push {
    /// The whole frame: header and body.
    wire: Bytes,
    /// An OpRaw envelope: TCP clients get only its body (the inner frames).
    raw: bool,
}

impl Push {
    /// A push of `proto` as job sent it.
    pub fn from_proto(proto: &Proto) -> Push {
        let ver = i16::try_from(proto.ver).unwrap_or(crate::im::frame::PUSH_VER);
        Push::from_frame(&Frame::new(ver, proto.op, proto.seq, proto.body.clone()))
    }

    /// A push of one frame.
    pub fn from_frame(frame: &Frame) -> Push {
        Push {
            wire: frame.to_bytes(),
            raw: frame.op == op::RAW,
        }
    }

    /// What a raw TCP client gets: an OpRaw's inner frames as they are (goim's
    /// `WriteTCP`), any other frame whole.
    pub fn tcp_bytes(&self) -> Bytes {
        if self.raw {
            self.wire.slice(HEADER_LEN..)
        } else {
            self.wire.clone()
        }
    }

    /// What a WebSocket client gets as one binary message: the whole frame,
    /// outer OpRaw header included (goim's `WriteWebsocket`).
    pub fn ws_message(&self) -> Bytes {
        self.wire.clone()
    }
}

/// Why a push was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The connection's queue is full (it does not read fast enough); dropped.
    #[error("the connection's send queue is full")]
    Full,
    /// The connection is closing.
    #[error("the connection is closed")]
    Closed,
}

/// The mutable part, under one small lock.
#[derive(Default)]
struct ChannelState {
    room: Option<Arc<str>>,
    watched: Vec<i32>,
    queue: VecDeque<Push>,
    /// A push was dropped for this connection already (logged once).
    dropped: bool,
}

/// One authenticated connection.
pub struct Channel {
    id: u64,
    key: Arc<str>,
    mid: i64,
    ip: IpAddr,
    send_queue: usize,
    state: Mutex<ChannelState>,
    wake: Notify,
    closed: AtomicBool,
    kicked: AtomicBool,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("mid", &self.mid)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel for `key`/`mid` from `ip`, watching `accepts`, queueing at
    /// most `send_queue` pushes. It joins no room until a bucket puts it in one.
    pub fn new(key: &str, mid: i64, ip: IpAddr, accepts: &[i32], send_queue: usize) -> Channel {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let ch = Channel {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            key: key.into(),
            mid,
            ip,
            send_queue,
            state: Mutex::new(ChannelState::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            kicked: AtomicBool::new(false),
        };
        ch.watch(accepts);
        ch
    }

    /// A process-unique id (room membership is by id).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The connection key (device key).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key, shared (the bucket's map holds it without a copy).
    pub fn shared_key(&self) -> Arc<str> {
        self.key.clone()
    }

    /// The user id (0 or less: anonymous).
    pub fn mid(&self) -> i64 {
        self.mid
    }

    /// The client's IP.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The room the channel is in.
    pub fn room(&self) -> Option<Arc<str>> {
        self.state.lock().room.clone()
    }

    /// Records the room; only the bucket calls it, under its own lock.
    pub(super) fn set_room(&self, room: Option<Arc<str>>) {
        self.state.lock().room = room;
    }

    /// Adds `ops` to the watched set (up to [`MAX_WATCHED_OPS`]).
    pub fn watch(&self, ops: &[i32]) {
        let mut st = self.state.lock();
        for &op in ops {
            if !st.watched.contains(&op) && st.watched.len() < MAX_WATCHED_OPS {
                st.watched.push(op);
            }
        }
    }

    /// Removes `ops` from the watched set.
    pub fn unwatch(&self, ops: &[i32]) {
        self.state.lock().watched.retain(|o| !ops.contains(o));
    }

    /// True if key pushes and broadcasts of `op` are for this connection.
    pub fn watches(&self, op: i32) -> bool {
        self.state.lock().watched.contains(&op)
    }

    /// Queues `push` without waiting, and wakes the connection's task.
    ///
    /// # Errors
    /// [`PushError::Full`] when `send_queue` pushes are already waiting (the
    /// push is dropped), [`PushError::Closed`] once the connection is closing.
    pub fn push(&self, push: Push) -> Result<(), PushError> {
        if self.is_closed() {
            return Err(PushError::Closed);
        }
        {
            let mut st = self.state.lock();
            if st.queue.len() >= self.send_queue {
                if !st.dropped {
                    st.dropped = true;
                    // Once per connection: a client that stopped reading
                    // would otherwise log every push it misses.
                    tracing::warn!(
                        key = %self.key,
                        mid = self.mid,
                        ip = %self.ip,
                        send_queue = self.send_queue,
                        "client does not read its pushes; dropping those past send_queue (counted in pushes_dropped)"
                    );
                }
                return Err(PushError::Full);
            }
            st.queue.push_back(push);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Takes every queued push, and the queue's allocation with them.
    pub fn take_pushes(&self) -> VecDeque<Push> {
        std::mem::take(&mut self.state.lock().queue)
    }

    /// Resolves after a push or a close (a wake that arrives before anyone waits
    /// is kept, so none is lost).
    pub fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Asks the connection to close; later pushes are refused.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Closes the connection because a newer one took its key.
    pub fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        self.close();
    }

    /// True once [`Channel::close`] or [`Channel::kick`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// True if the connection was replaced by a newer one with the same key.
    pub fn was_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }
}

/// Parses a Sub/Unsub body, comma-separated int32 ops, as goim does: all of it
/// or nothing (`None` for any bad item). Empty items (`"1000,"`) are skipped.
pub fn parse_ops(body: &[u8]) -> Option<Vec<i32>> {
    let text = std::str::from_utf8(body).ok()?;
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i32>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn channel(queue: usize) -> Channel {
        Channel::new("k", 7, IpAddr::V4(Ipv4Addr::LOCALHOST), &[1000, 1001], queue)
    }

    #[test]
    fn the_op_filter_follows_sub_and_unsub() {
        let ch = channel(4);
        assert!(ch.watches(1000) && !ch.watches(1002));
        ch.watch(&[1002, 1000]);
        ch.unwatch(&[1000]);
        assert!(!ch.watches(1000) && ch.watches(1001) && ch.watches(1002));
        ch.watch(&(0..10_000).collect::<Vec<_>>());
        assert_eq!(ch.state.lock().watched.len(), MAX_WATCHED_OPS);
    }

    #[test]
    fn a_full_queue_drops_and_a_closed_one_refuses() {
        let ch = channel(2);
        let p = Push::from_frame(&Frame::new(1, 1000, 0, &b"x"[..]));
        assert_eq!(ch.push(p.clone()), Ok(()));
        assert_eq!(ch.push(p.clone()), Ok(()));
        assert_eq!(ch.push(p.clone()), Err(PushError::Full));
        assert_eq!(ch.take_pushes().len(), 2);
        assert_eq!(ch.state.lock().queue.capacity(), 0, "nothing held when idle");
        assert_eq!(ch.push(p.clone()), Ok(()));
        ch.kick();
        assert!(ch.is_closed() && ch.was_kicked());
        assert_eq!(ch.push(p), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn a_push_wakes_the_connection_even_before_it_waits() {
        let ch = channel(2);
        let p = Push::from_frame(&Frame::new(1, 1000, 0, &b"x"[..]));
        ch.push(p).expect("queued");
        tokio::time::timeout(std::time::Duration::from_secs(1), ch.woken())
            .await
            .expect("the wake was kept");
    }

    #[test]
    fn raw_pushes_lose_their_outer_header_on_tcp_only() {
        let inner = crate::im::frame::push_frame(1000, b"hello");
        let raw = Push::from_proto(&Proto {
            ver: 1,
            op: op::RAW,
            seq: 0,
            body: inner.to_vec(),
        });
        assert_eq!(raw.tcp_bytes(), inner);
        assert_eq!(raw.ws_message().len(), HEADER_LEN + inner.len());
        assert_eq!(&raw.ws_message()[HEADER_LEN..], &inner[..]);
        let plain = Push::from_frame(&Frame::new(1, 1000, 0, &b"x"[..]));
        assert_eq!(plain.tcp_bytes(), plain.ws_message());
    }

    #[test]
    fn ops_parse_all_or_nothing() {
        assert_eq!(parse_ops(b"1000,1001"), Some(vec![1000, 1001]));
        assert_eq!(parse_ops(b" 5 ,"), Some(vec![5]));
        assert_eq!(parse_ops(b""), Some(vec![]));
        assert_eq!(parse_ops(b"1000,x"), None);
    }
}
