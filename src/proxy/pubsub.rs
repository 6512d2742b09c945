//! The worker's pub/sub hub: upstream subscriptions shared by the worker's
//! subscribed clients.
//!
//! Each channel, pattern or shard channel any client of the worker listens to
//! is one [`Entry`]: the clients' mailboxes, and the masters ("homes") where the
//! worker is subscribed to it on its [`Upstream`] connection (one per master,
//! see `upstream.rs`). A channel's home is the master of its slot
//! (`slot_of(channel)`, the `to` side of a migrating slot), so it meets the
//! publishers that `subscription.rs` routes the same way; a pattern's homes are
//! every master.
//!
//! * The first subscriber of a name subscribes upstream; its confirmation (and
//!   that of every client arriving before the upstream confirmed) waits for
//!   the upstream's, so a `PUBLISH` sent after the client saw its confirmation
//!   reaches it. The last subscriber to leave unsubscribes upstream, and its
//!   `UNSUBSCRIBE` reply waits for the upstream's too.
//! * A message from upstream is copied (a reference count, not the bytes) into
//!   the mailbox of every subscriber: RESP2 clients get the frame as the server
//!   sent it, RESP3 clients the same frame as a push (`>`). A mailbox holding
//!   more than [`OUTPUT_LIMIT`] bytes belongs to a client that does not read:
//!   it is disconnected (as Redis's `client-output-buffer-limit pubsub`).
//! * After a routing change ([`PubSubHub::rehome`]) an entry whose home changed is
//!   subscribed on the new master first and unsubscribed from the old one only
//!   once the new one confirmed: a message may come twice during the switch,
//!   none published after it is lost.
//! * While an upstream is down its entries are unconfirmed; it resubscribes
//!   when it is back. Messages published meanwhile are lost, as for any Redis
//!   client whose connection dropped.
//!
//! One hub per worker thread; its lock is only ever taken on that thread, so
//! it is never contended. Imports the proxy's router, clients and stats.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::backend::BackendOptions;
use super::clients::Connection;
use super::router::{Routes, SlotRoute};
use super::stats::Stats;
use super::upstream::Upstream;
use crate::libs::hash::slot_of;
use crate::libs::protocol::Protocol;

/// Bytes of messages a client may have waiting before it is disconnected
/// (Redis's default hard `client-output-buffer-limit` for pub/sub clients).
pub const OUTPUT_LIMIT: usize = 32 << 20;

/// The three namespaces of pub/sub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// `SUBSCRIBE` / `PUBLISH`.
    Channel,
    /// `PSUBSCRIBE`: glob patterns matched by every master.
    Pattern,
    /// `SSUBSCRIBE` / `SPUBLISH`.
    Shard,
}

impl Class {
    /// The command that subscribes upstream.
    pub fn subscribe(self) -> &'static [u8] {
        match self {
            Class::Channel => b"SUBSCRIBE",
            Class::Pattern => b"PSUBSCRIBE",
            Class::Shard => b"SSUBSCRIBE",
        }
    }

    /// The command that unsubscribes upstream.
    pub fn unsubscribe(self) -> &'static [u8] {
        match self {
            Class::Channel => b"UNSUBSCRIBE",
            Class::Pattern => b"PUNSUBSCRIBE",
            Class::Shard => b"SUNSUBSCRIBE",
        }
    }

    /// The class and meaning of an upstream frame's first word.
    fn of_word(word: &[u8]) -> Option<(Class, FrameKind)> {
        Some(match word {
            b"subscribe" => (Class::Channel, FrameKind::Subscribed),
            b"psubscribe" => (Class::Pattern, FrameKind::Subscribed),
            b"ssubscribe" => (Class::Shard, FrameKind::Subscribed),
            b"unsubscribe" => (Class::Channel, FrameKind::Unsubscribed),
            b"punsubscribe" => (Class::Pattern, FrameKind::Unsubscribed),
            b"sunsubscribe" => (Class::Shard, FrameKind::Unsubscribed),
            b"message" => (Class::Channel, FrameKind::Message),
            b"pmessage" => (Class::Pattern, FrameKind::Message),
            b"smessage" => (Class::Shard, FrameKind::Message),
            _ => return None,
        })
    }
}

/// What an upstream frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    Subscribed,
    Unsubscribed,
    Message,
}

/// Messages waiting for one client, as its session writer receives them.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
}

impl Inbox {
    /// The next message, `None` once the client has no mailbox any more.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let m = self.rx.recv().await?;
        self.queued.fetch_sub(m.len(), Ordering::Relaxed);
        Some(m)
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let m = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(m.len(), Ordering::Relaxed);
        Some(m)
    }
}

/// Where a session's writer picks up its [`Inbox`], made by the client's
/// first subscription (idle clients pay one flag and an empty lock).
#[derive(Default)]
pub struct InboxSlot {
    ready: AtomicBool,
    inbox: parking_lot::Mutex<Option<Inbox>>,
}

impl InboxSlot {
    /// The inbox, once, after [`Mailbox::open`] put it here.
    pub fn take(&self) -> Option<Inbox> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        self.inbox.lock().take()
    }
}

/// The sending side of one client's inbox.
pub struct Mailbox {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    /// Its protocol is read per message: `HELLO` may switch it.
    conn: Arc<Connection>,
    /// Set once the client overflowed: it gets nothing more.
    dead: AtomicBool,
}

impl Mailbox {
    /// A mailbox for the client of `conn`; its inbox is left in the
    /// connection's slot for the session writer.
    pub fn open(conn: &Arc<Connection>) -> Arc<Mailbox> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        *conn.inbox.inbox.lock() = Some(Inbox {
            rx,
            queued: queued.clone(),
        });
        conn.inbox.ready.store(true, Ordering::Release);
        Arc::new(Mailbox {
            tx,
            queued,
            conn: conn.clone(),
            dead: AtomicBool::new(false),
        })
    }

    /// Queues `frame`; a client past [`OUTPUT_LIMIT`] is disconnected instead.
    fn push(&self, frame: Bytes, stats: &Stats) {
        if self.dead.load(Ordering::Relaxed) {
            return;
        }
        let queued = self.queued.fetch_add(frame.len(), Ordering::Relaxed) + frame.len();
        if queued > OUTPUT_LIMIT {
            self.dead.store(true, Ordering::Relaxed);
            stats.pubsub_overflows.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                client = self.conn.id,
                addr = %self.conn.addr,
                queued,
                "pub/sub client does not read its messages: disconnected (output limit)"
            );
            self.conn.kill();
            return;
        }
        let _ = self.tx.send(frame);
    }
}

/// One master an entry is subscribed on.
struct Home {
    addr: String,
    confirmed: bool,
}

/// One channel, pattern or shard channel the worker listens to.
#[derive(Default)]
struct Entry {
    /// Mailboxes of the subscribed clients, by client id.
    subscribers: HashMap<u64, Arc<Mailbox>>,
    homes: Vec<Home>,
    /// Former homes, unsubscribed once every home has confirmed.
    leaving: Vec<String>,
    /// Clients waiting for their confirmation.
    waiters: Vec<oneshot::Sender<()>>,
}

impl Entry {
    fn confirmed(&self) -> bool {
        self.homes.iter().all(|h| h.confirmed)
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(Class, Bytes), Entry>,
    upstreams: HashMap<String, Upstream>,
    /// Clients whose `UNSUBSCRIBE` released a name upstream, waiting for the
    /// upstream's confirmation, by (class, name, master).
    leaving: HashMap<(Class, Bytes, String), Vec<oneshot::Sender<()>>>,
}

/// The worker's shared upstream subscriptions.
pub struct PubSubHub {
    inner: parking_lot::Mutex<Inner>,
    stats: Arc<Stats>,
    /// Set once the routing watcher runs (see `subscription.rs`).
    pub watching: AtomicBool,
    me: Weak<PubSubHub>,
}

impl PubSubHub {
    /// An empty hub counting overflows in `stats`.
    pub fn new(stats: Arc<Stats>) -> Arc<PubSubHub> {
        Arc::new_cyclic(|me| PubSubHub {
            inner: parking_lot::Mutex::default(),
            stats,
            watching: AtomicBool::new(false),
            me: me.clone(),
        })
    }

    /// Adds `mailbox` (client `id`) to the subscribers of `name`, subscribing
    /// upstream if it is the first. The receiver fires once the upstream
    /// subscription is confirmed; `None` when it already is.
    pub fn subscribe(
        &self,
        (routes, opts): (&Routes, &BackendOptions),
        (class, name): (Class, &Bytes),
        id: u64,
        mailbox: &Arc<Mailbox>,
    ) -> Option<oneshot::Receiver<()>> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let entry = match inner.entries.entry((class, name.clone())) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let homes = homes_of(routes, class, name).unwrap_or_default();
                for addr in &homes {
                    self.upstream(&mut inner.upstreams, addr, opts)
                        .subscribe(class, name.clone());
                }
                v.insert(Entry {
                    homes: homes
                        .into_iter()
                        .map(|addr| Home {
                            addr,
                            confirmed: false,
                        })
                        .collect(),
                    ..Entry::default()
                })
            }
        };
        entry.subscribers.insert(id, mailbox.clone());
        if entry.confirmed() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        entry.waiters.push(tx);
        Some(rx)
    }

    /// Removes client `id` from the subscribers of `name`, unsubscribing
    /// upstream if it was the last. With `wait`, the receiver fires once
    /// every upstream confirmed (so a `PUBLISH` after it counts nobody here).
    pub fn unsubscribe(
        &self,
        class: Class,
        name: &Bytes,
        id: u64,
        wait: bool,
    ) -> Option<oneshot::Receiver<()>> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let key = (class, name.clone());
        let entry = inner.entries.get_mut(&key)?;
        entry.subscribers.remove(&id);
        if !entry.subscribers.is_empty() {
            return None;
        }
        let entry = inner.entries.remove(&key)?;
        let (tx, rx) = oneshot::channel();
        let mut tx = wait.then_some(tx);
        let addrs = entry.homes.iter().map(|h| &h.addr).chain(&entry.leaving);
        for addr in addrs {
            let Some(up) = inner.upstreams.get(addr) else {
                continue;
            };
            up.unsubscribe(class, name.clone());
            if let Some(tx) = tx.take() {
                // One confirmation is enough: the others are on their way.
                inner
                    .leaving
                    .entry((class, name.clone(), addr.clone()))
                    .or_default()
                    .push(tx);
            }
        }
        (wait && tx.is_none()).then_some(rx)
    }

    /// The (class, name) of a subscription confirmation frame, `None` for any
    /// other frame (the upstream counts its confirmations, see `upstream.rs`).
    pub fn confirmation_of(frame: &Bytes) -> Option<(Class, Bytes)> {
        let items = crate::libs::resp::array_items(frame)?;
        let word = |i: usize| items.get(i).and_then(crate::libs::resp::bulk_payload);
        match Class::of_word(&word(0)?)? {
            (class, FrameKind::Subscribed) => Some((class, word(1)?)),
            _ => None,
        }
    }

    /// Handles one frame from the upstream connection to `addr`: a message for
    /// the subscribers, or a subscription confirmed.
    pub fn on_frame(&self, addr: &str, frame: &Bytes) {
        let Some(items) = crate::libs::resp::array_items(frame) else {
            return;
        };
        let word = |i: usize| items.get(i).and_then(crate::libs::resp::bulk_payload);
        let Some((class, kind)) = word(0).and_then(|w| Class::of_word(&w)) else {
            return;
        };
        let Some(name) = word(1) else { return };
        match kind {
            FrameKind::Message => self.deliver(class, name, frame),
            FrameKind::Subscribed => self.confirm(addr, class, name),
            FrameKind::Unsubscribed => {
                let mut inner = self.inner.lock();
                // Dropping the senders wakes the waiting clients.
                inner.leaving.remove(&(class, name, addr.to_string()));
            }
        }
    }

    fn deliver(&self, class: Class, name: Bytes, frame: &Bytes) {
        let inner = self.inner.lock();
        let Some(entry) = inner.entries.get(&(class, name)) else {
            return;
        };
        let mut push: Option<Bytes> = None;
        for mailbox in entry.subscribers.values() {
            let out = match mailbox.conn.protocol() {
                Protocol::Resp2 => frame.clone(),
                Protocol::Resp3 => push.get_or_insert_with(|| as_push(frame)).clone(),
            };
            mailbox.push(out, &self.stats);
        }
    }

    /// `name` is subscribed on `addr`: its waiting clients get their
    /// confirmation once every home of it is.
    pub fn confirm(&self, addr: &str, class: Class, name: Bytes) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let Some(entry) = inner.entries.get_mut(&(class, name.clone())) else {
            return;
        };
        for h in entry.homes.iter_mut().filter(|h| h.addr == addr) {
            h.confirmed = true;
        }
        if !entry.confirmed() {
            return;
        }
        for w in entry.waiters.drain(..) {
            let _ = w.send(());
        }
        for old in entry.leaving.drain(..) {
            if let Some(up) = inner.upstreams.get(&old) {
                up.unsubscribe(class, name.clone());
            }
        }
    }

    /// The upstream connection to `addr` was lost: its subscriptions wait for
    /// the upstream's confirmation again.
    pub fn down(&self, addr: &str) {
        let mut inner = self.inner.lock();
        // What it was leaving, it has left.
        inner.leaving.retain(|(_, _, a), _| a != addr);
        for entry in inner.entries.values_mut() {
            for h in entry.homes.iter_mut().filter(|h| h.addr == addr) {
                h.confirmed = false;
            }
        }
    }

    /// Follows a routing change: entries whose home changed subscribe on the
    /// new one (and leave the old one once it confirmed); upstream
    /// connections nobody uses any more are closed.
    pub fn rehome(&self, routes: &Routes, opts: &BackendOptions) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let mut used: HashSet<String> = HashSet::new();
        for ((class, name), entry) in inner.entries.iter_mut() {
            if let Some(wanted) = homes_of(routes, *class, name) {
                let mut gone: Vec<String> = Vec::new();
                entry.homes.retain(|h| {
                    let keep = wanted.contains(&h.addr);
                    if !keep {
                        gone.push(h.addr.clone());
                    }
                    keep
                });
                for addr in wanted {
                    if !entry.homes.iter().any(|h| h.addr == addr) {
                        self.upstream(&mut inner.upstreams, &addr, opts)
                            .subscribe(*class, name.clone());
                        entry.leaving.retain(|a| a != &addr);
                        entry.homes.push(Home {
                            addr,
                            confirmed: false,
                        });
                    }
                }
                entry.leaving.extend(gone);
                if entry.confirmed() {
                    for old in entry.leaving.drain(..) {
                        if let Some(up) = inner.upstreams.get(&old) {
                            up.unsubscribe(*class, name.clone());
                        }
                    }
                    for w in entry.waiters.drain(..) {
                        let _ = w.send(());
                    }
                }
            }
            used.extend(entry.homes.iter().map(|h| h.addr.clone()));
            used.extend(entry.leaving.iter().cloned());
        }
        // Dropping the handle ends the connection's task.
        inner.upstreams.retain(|addr, _| used.contains(addr));
        let upstreams = &inner.upstreams;
        inner.leaving.retain(|(_, _, a), _| upstreams.contains_key(a));
    }

    /// Upstream subscriber connections open (for tests and stats).
    pub fn upstream_count(&self) -> usize {
        self.inner.lock().upstreams.len()
    }

    fn upstream<'a>(
        &self,
        upstreams: &'a mut HashMap<String, Upstream>,
        addr: &str,
        opts: &BackendOptions,
    ) -> &'a Upstream {
        upstreams
            .entry(addr.to_string())
            .or_insert_with(|| Upstream::spawn(addr, opts.clone(), self.me.clone()))
    }
}

/// Where `name` must be subscribed under `routes`; `None` while that is not
/// known (a slot without a master, or no group at all): it stays where it is.
///
/// Keyspace notifications are published by the server that holds the key,
/// not by a `PUBLISH` routed by the channel's name: `__keyevent@…` channels
/// (every key) are subscribed on every master, and `__keyspace@<db>__:<key>`
/// on the master of the key's slot (both masters while it migrates: either
/// may change the key then).
fn homes_of(routes: &Routes, class: Class, name: &[u8]) -> Option<Vec<String>> {
    let keyspace = (class == Class::Channel).then(|| keyspace_key(name)).flatten();
    if class == Class::Pattern || (class == Class::Channel && name.starts_with(b"__keyevent@")) {
        let mut masters: Vec<String> = Vec::new();
        for g in &routes.groups {
            let addr = g.master.as_ref()?.addr().to_string();
            if !masters.contains(&addr) {
                masters.push(addr);
            }
        }
        return (!masters.is_empty()).then_some(masters);
    }
    match routes.get(slot_of(keyspace.unwrap_or(name))) {
        SlotRoute::Serve { pool, .. } => Some(vec![pool.addr().to_string()]),
        SlotRoute::Migrate { from, to } if keyspace.is_some() => {
            Some(vec![to.addr().to_string(), from.addr().to_string()])
        }
        // Publishers of a migrating slot publish on the target.
        SlotRoute::Migrate { to, .. } => Some(vec![to.addr().to_string()]),
        // About to migrate: publishers wait, subscribers stay on the source.
        SlotRoute::Switching { source: Some(p) } => Some(vec![p.addr().to_string()]),
        _ => None,
    }
}

/// The key of a keyspace notification channel, `__keyspace@<db>__:<key>`.
fn keyspace_key(name: &[u8]) -> Option<&[u8]> {
    let rest = name.strip_prefix(b"__keyspace@")?;
    let at = rest.windows(3).position(|w| w == b"__:")?;
    Some(&rest[at + 3..])
}

/// A RESP2 message frame (`*3 …`) as a RESP3 push (`>3 …`).
fn as_push(frame: &Bytes) -> Bytes {
    let mut out = BytesMut::from(&frame[..]);
    if let Some(first) = out.first_mut() {
        *first = b'>';
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_channels_name_their_key() {
        assert_eq!(keyspace_key(b"__keyspace@0__:user:{1}"), Some(&b"user:{1}"[..]));
        assert_eq!(keyspace_key(b"__keyspace@12__:a__:b"), Some(&b"a__:b"[..]));
        assert_eq!(keyspace_key(b"__keyspace@0__:"), Some(&b""[..]));
        assert_eq!(keyspace_key(b"__keyevent@0__:expired"), None);
        assert_eq!(keyspace_key(b"news"), None);
    }

    #[test]
    fn words_name_their_class() {
        assert_eq!(
            Class::of_word(b"pmessage"),
            Some((Class::Pattern, FrameKind::Message))
        );
        assert_eq!(
            Class::of_word(b"ssubscribe"),
            Some((Class::Shard, FrameKind::Subscribed))
        );
        assert_eq!(
            Class::of_word(b"unsubscribe"),
            Some((Class::Channel, FrameKind::Unsubscribed))
        );
        assert_eq!(Class::of_word(b"pong"), None);
    }

    #[test]
    fn a_message_becomes_a_push() {
        let f = Bytes::from_static(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n");
        assert_eq!(&as_push(&f)[..], b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n");
    }

    #[test]
    fn a_client_past_the_limit_is_killed_and_gets_nothing_more() {
        let conn = Connection::detached(7);
        let stats = Stats::default();
        let m = Mailbox::open(&conn);
        let mut inbox = conn.inbox.take().expect("inbox in the slot");
        m.push(Bytes::from(vec![b'x'; 16]), &stats);
        assert_eq!(inbox.try_recv().map(|b| b.len()), Some(16));
        m.push(Bytes::from(vec![b'x'; OUTPUT_LIMIT + 1]), &stats);
        assert!(conn.is_killed());
        assert_eq!(stats.pubsub_overflows.load(Ordering::Relaxed), 1);
        m.push(Bytes::from_static(b"y"), &stats);
        assert!(inbox.try_recv().is_none());
    }
}
