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
//!   [`FIRST_WINDOW`]). Small replies open the window up to `max_pipeline`;
//!   256 KB replies narrow it to four. So a client learns to wait before it
//!   can queue much behind the others, and waits by the proxy no longer
//!   reading from it: TCP back-pressure, as `max_pipeline` already does.
//! * **A per-client limit** (`client_output_limit`): replies the client does
//!   not read pile up in the session's buffer while its socket is full; past
//!   the limit it is disconnected, logged and counted, as Redis's
//!   `client-output-buffer-limit` does.
//! * **A global cap** (`max_output_memory`): the bytes stuck in every
//!   session's buffer, summed; while over it, new requests get an error
//!   instead of adding to it.
//!
//! Only a write that could not finish at once counts towards the global cap,
//! so the common path (the socket takes the whole reply) touches no shared
//! counter.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Bytes of replies a session may expect in flight (see the module doc).
pub const WINDOW_BYTES: usize = 1024 * 1024;
/// Requests a new session may have in flight before it has seen a reply.
pub const FIRST_WINDOW: usize = 16;

/// The reader's and the writer's shared view of one session's output.
pub struct Meter {
    /// Requests dispatched whose replies are not written yet.
    inflight: AtomicUsize,
    /// Bytes of replies taken but not written yet (the session's buffer).
    unwritten: AtomicUsize,
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
    pub fn new(max_pipeline: usize) -> Meter {
        Meter {
            inflight: AtomicUsize::new(0),
            unwritten: AtomicUsize::new(0),
            reply_size: AtomicUsize::new(WINDOW_BYTES / FIRST_WINDOW),
            window: AtomicUsize::new(FIRST_WINDOW.min(max_pipeline)),
            waiting: std::sync::atomic::AtomicBool::new(false),
            max_pipeline,
            room: Notify::new(),
        }
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
        self.inflight() < self.window() && self.unwritten() < WINDOW_BYTES
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

    #[test]
    fn the_window_follows_the_reply_size() {
        let m = Meter::new(4096);
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
        let m = Meter::new(2);
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
    }

    #[tokio::test]
    async fn a_write_wakes_a_waiting_reader() {
        let m = std::sync::Arc::new(Meter::new(1));
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
