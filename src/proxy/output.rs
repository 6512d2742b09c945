//! What a client has not read yet: the bound that keeps one slow or
//! never-reading client from hurting the others.
//!
//! A proxy session shares its backend connections with every other client,
//! and Redis answers a connection's requests in order. A client that pipelines
//! `GET`s of big values and never reads would make the proxy pull its replies
//! through the shared connection without bound: every other client's reply
//! queues behind them (issue 10 measured 1 GB and a 4.1 s stall for a 256 KB
//! value). Three bounds, from the cheapest:
//!
//! * **A window**: a session sends requests only while its replies in flight
//!   are expected to stay under [`WINDOW_BYTES`], the expectation being the
//!   session's recent reply size (starting at [`WINDOW_BYTES`] /
//!   [`FIRST_WINDOW`]), and while the replies already in and not written stay
//!   under it too. Small replies open the window up to `max_pipeline`;
//!   256 KB replies narrow it to four. So a client learns to wait before it
//!   can queue much behind the others, and waits by the proxy no longer
//!   reading from it: TCP back-pressure, as `max_pipeline` already does.
//! * **A per-client limit** (`client_output_limit`): a window is a guess made
//!   before the replies' sizes are known (a burst of big `GET`s after small
//!   ones is 4,096 requests in flight), so every reply is counted from the
//!   moment its backend delivers it until the session writes it. Past the
//!   limit the reply is dropped at arrival and the client disconnected,
//!   logged and counted, as Redis's `client-output-buffer-limit` does.
//! * **A global cap** (`max_output_memory`): those bytes summed over every
//!   session; while over it, new requests get an error instead of adding to
//!   it, and a reply for a session that already holds more than
//!   [`WINDOW_BYTES`] unread is dropped and that session disconnected, as
//!   past its own limit (a client that reads holds nothing when its reply
//!   comes, however big the reply). Requests already sent would otherwise still bring
//!   their replies in: 30 clients with four 50 MB GETs each took a proxy to
//!   3.9 GB under the 1 GB cap (each under its own 256 MB limit).
//!
//! The counting costs each reply two uncontended atomic operations on its
//! session's [`Meter`] and two on the proxy-wide [`OutputMemory`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Bytes of replies a session may expect in flight (see the module doc).
pub const WINDOW_BYTES: usize = 1024 * 1024;
/// Requests a new session may have in flight before it has seen a reply.
pub const FIRST_WINDOW: usize = 16;

/// Set in [`Meter::held`] once the session ended: its bytes left the
/// proxy-wide count, and replies that still arrive are not counted.
const ENDED: usize = 1 << (usize::BITS - 1);

/// The reader's, the writer's and the backends' shared view of one session's
/// output.
pub struct Meter {
    /// Requests dispatched whose replies are not written yet.
    inflight: AtomicUsize,
    /// Bytes of replies taken but not written yet (the session's buffer).
    unwritten: AtomicUsize,
    /// Bytes of replies delivered by backends and not taken by the writer
    /// yet, with the [`ENDED`] bit.
    held: AtomicUsize,
    /// `client_output_limit`.
    limit: usize,
    /// `max_output_memory`: past it, a reply for a session that already
    /// holds more than [`WINDOW_BYTES`] unread is refused.
    memory_cap: usize,
    /// Set when a reply would have taken the session past `limit`; a flag
    /// the writer reads per reply, and a wake-up for a write stuck on a
    /// full socket (a token's registration would cost every wait).
    over: AtomicBool,
    over_wake: Notify,
    /// The proxy-wide count the held bytes are part of.
    memory: Arc<OutputMemory>,
    /// Recent reply size, moving average.
    reply_size: AtomicUsize,
    /// The window at that size, kept so the reader's check per request is
    /// two loads and no division.
    window: AtomicUsize,
    /// The reader waits for room: only then does a write need to wake it.
    waiting: std::sync::atomic::AtomicBool,
    /// Most requests in flight, whatever the reply size.
    max_pipeline: usize,
    /// The writer made room.
    room: Notify,
}

impl Meter {
    /// A session's meter: at most `max_pipeline` requests in flight, and
    /// `limit` bytes of replies held, counted in `memory` too.
    pub fn new(max_pipeline: usize, limit: usize, memory: Arc<OutputMemory>) -> Meter {
        Meter {
            inflight: AtomicUsize::new(0),
            unwritten: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            limit,
            memory_cap: usize::MAX,
            over: AtomicBool::new(false),
            over_wake: Notify::new(),
            memory,
            reply_size: AtomicUsize::new(WINDOW_BYTES / FIRST_WINDOW),
            window: AtomicUsize::new(FIRST_WINDOW.min(max_pipeline)),
            waiting: std::sync::atomic::AtomicBool::new(false),
            max_pipeline,
            room: Notify::new(),
        }
    }

    /// The proxy-wide cap (`max_output_memory`) this session's replies obey.
    pub fn capped(mut self, cap: usize) -> Meter {
        self.memory_cap = cap;
        self
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// One more request dispatched.
    pub fn dispatched(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` replies written: makes room for the reader.
    pub fn written(&self, n: usize) {
        // SeqCst with the reader's `waiting` store: one of the two sees the
        // other's write (the reader and the writer share a task today, but
        // the wake-up must not depend on it).
        self.inflight.fetch_sub(n, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            self.room.notify_one();
        }
    }

    /// The writer took a reply of `len` bytes.
    pub fn took(&self, len: usize) {
        // A moving average over about eight replies: a burst of big replies
        // narrows the window within a few, small ones open it as fast.
        let avg = self.reply_size.load(Ordering::Relaxed);
        let avg = if len > avg {
            avg + (len - avg) / 8
        } else {
            avg - (avg - len) / 8
        };
        self.reply_size.store(avg, Ordering::Relaxed);
        let window = (WINDOW_BYTES / avg.max(1)).clamp(1, self.max_pipeline);
        self.window.store(window, Ordering::Relaxed);
    }

    /// The session's buffer now holds `bytes` unwritten.
    pub fn set_unwritten(&self, bytes: usize) {
        self.unwritten.store(bytes, Ordering::Relaxed);
    }

    /// Bytes taken but not written.
    pub fn unwritten(&self) -> usize {
        self.unwritten.load(Ordering::Relaxed)
    }

    /// How many requests may be in flight at the current reply size.
    pub fn window(&self) -> usize {
        self.window.load(Ordering::Relaxed)
    }

    /// Whether the reader may dispatch another request now.
    pub fn has_room(&self) -> bool {
        self.inflight() < self.window() && self.unwritten() + self.held() < WINDOW_BYTES
    }

    /// Bytes of replies delivered and not taken by the writer yet.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed) & !ENDED
    }

    /// A backend delivers a reply of `len` bytes: counted, unless it would
    /// take the session past its limit. Then it is refused (false) and the
    /// session is marked over ([`Meter::over`]).
    pub fn admit(&self, len: usize) -> bool {
        self.add_held(len, true)
    }

    /// A backend delivers `len` bytes that are counted whatever the limit
    /// (the small error that replaces a refused reply).
    pub fn add(&self, len: usize) {
        self.add_held(len, false);
    }

    fn add_held(&self, len: usize, limited: bool) -> bool {
        // Proxy-wide first, so an ended session's subtraction of what it
        // held never runs ahead of the addition (see `end`).
        self.memory.add(len);
        let unwritten = self.unwritten();
        // Over the proxy-wide cap, only a session holding little may add.
        let global_over = limited && self.memory.get() > self.memory_cap;
        let added = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                let before = held + unwritten;
                let refused =
                    limited && (before + len > self.limit || (global_over && before > WINDOW_BYTES));
                if held & ENDED != 0 || refused {
                    None
                } else {
                    Some(held + len)
                }
            });
        match added {
            Ok(_) => true,
            Err(held) => {
                self.memory.sub(len);
                if held & ENDED != 0 {
                    // Nobody takes it any more; the reply is dropped anyway.
                    return true;
                }
                self.over.store(true, Ordering::Release);
                self.over_wake.notify_waiters();
                false
            }
        }
    }

    /// The writer took `len` counted bytes (or a backend took back a reply
    /// nobody would receive).
    pub fn taken(&self, len: usize) {
        if len == 0 {
            return;
        }
        let took = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held & ENDED == 0).then(|| held.saturating_sub(len))
            });
        if let Ok(held) = took {
            self.memory.sub(len.min(held));
        }
    }

    /// The session ended: what it still held leaves the proxy-wide count,
    /// and nothing is counted for it any more.
    pub fn end(&self) {
        let held = self.held.fetch_or(ENDED, Ordering::AcqRel);
        if held & ENDED == 0 {
            self.memory.sub(held);
        }
    }

    /// Whether a reply was refused for the limit.
    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// Fires once a reply was refused for the limit.
    pub async fn over(&self) {
        loop {
            let woken = self.over_wake.notified();
            tokio::pin!(woken);
            // Registered before looking, so a refusal in between wakes it.
            woken.as_mut().enable();
            if self.is_over() {
                return;
            }
            woken.await;
        }
    }

    /// Waits until the reader may dispatch again.
    pub async fn wait_room(&self) {
        while !self.has_room() {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered, and said so, before looking again: a write in
            // between either sees `waiting` or is seen by the second look.
            room.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if !self.has_room() {
                room.await;
            }
            self.waiting.store(false, Ordering::SeqCst);
        }
    }
}

/// The bytes stuck in every session's buffer, proxy-wide.
#[derive(Default)]
pub struct OutputMemory {
    bytes: AtomicUsize,
}

impl OutputMemory {
    pub fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(max_pipeline: usize) -> Meter {
        Meter::new(max_pipeline, usize::MAX >> 2, Arc::default())
    }

    #[test]
    fn the_window_follows_the_reply_size() {
        let m = meter(4096);
        assert_eq!(m.window(), FIRST_WINDOW);
        for _ in 0..100 {
            m.took(10);
        }
        assert_eq!(m.window(), 4096, "small replies open it to max_pipeline");
        for _ in 0..40 {
            m.took(256 * 1024);
        }
        assert_eq!(m.window(), 4, "256 KB replies: four in flight");
        for _ in 0..5 {
            m.took(100 * 1024 * 1024);
        }
        assert_eq!(m.window(), 1, "never below one");
    }

    #[test]
    fn room_depends_on_inflight_and_unwritten_bytes() {
        let m = meter(2);
        for _ in 0..100 {
            m.took(10);
        }
        assert!(m.has_room());
        m.dispatched();
        m.dispatched();
        assert!(!m.has_room(), "max_pipeline reached");
        m.written(1);
        assert!(m.has_room());
        m.set_unwritten(WINDOW_BYTES);
        assert!(!m.has_room(), "a full buffer closes it");
        m.set_unwritten(0);
        assert!(m.admit(WINDOW_BYTES));
        assert!(!m.has_room(), "so do replies in and not taken");
    }

    #[test]
    fn held_bytes_are_counted_until_taken_or_ended() {
        let memory = Arc::new(OutputMemory::default());
        let a = Meter::new(16, 1000, memory.clone());
        let b = Meter::new(16, 1000, memory.clone());
        assert!(a.admit(600));
        assert!(b.admit(300));
        assert_eq!(memory.get(), 900);
        a.taken(600);
        assert_eq!((a.held(), memory.get()), (0, 300));
        assert!(a.admit(700));
        b.end();
        assert_eq!(memory.get(), 700, "an ended session's bytes leave the count");
        assert!(b.admit(5000), "an ended session counts nothing, refuses nothing");
        b.taken(5000);
        assert_eq!(memory.get(), 700);
        a.end();
        assert_eq!(memory.get(), 0);
    }

    #[test]
    fn a_reply_past_the_limit_is_refused_and_marks_the_session() {
        let memory = Arc::new(OutputMemory::default());
        let m = Meter::new(16, 1000, memory.clone());
        assert!(m.admit(900));
        m.set_unwritten(50);
        assert!(!m.is_over());
        assert!(!m.admit(51), "900 held + 50 unwritten + 51 > 1000");
        assert!(m.is_over());
        assert_eq!(memory.get(), 900, "the refused reply is not counted");
        m.add(20);
        assert_eq!((m.held(), memory.get()), (920, 920));
    }

    #[test]
    fn over_the_proxy_wide_cap_only_sessions_within_their_window_may_add() {
        let memory = Arc::new(OutputMemory::default());
        let big = Meter::new(16, usize::MAX >> 2, memory.clone()).capped(3 * WINDOW_BYTES);
        let small = Meter::new(16, usize::MAX >> 2, memory.clone()).capped(3 * WINDOW_BYTES);
        assert!(big.admit(3 * WINDOW_BYTES), "under the cap: anything");
        assert!(
            !big.admit(1),
            "over it, a session holding more than a window is refused"
        );
        assert!(big.is_over());
        assert!(
            small.admit(WINDOW_BYTES),
            "one holding nothing gets its reply, however big"
        );
        assert!(small.admit(1), "one holding a window still does");
        assert!(!small.admit(1), "not once it holds more");
        big.end();
        let fresh = Meter::new(16, usize::MAX >> 2, memory.clone()).capped(3 * WINDOW_BYTES);
        assert!(fresh.admit(2 * WINDOW_BYTES), "under the cap again");
    }

    #[tokio::test]
    async fn a_write_wakes_a_waiting_reader() {
        let m = Arc::new(meter(1));
        m.dispatched();
        let waiter = tokio::spawn({
            let m = m.clone();
            async move { m.wait_room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        m.written(1);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }
}
