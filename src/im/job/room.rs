//! goim's room aggregation: the messages of one room are gathered into one
//! `BroadcastRoom` call carrying up to `batch` inner frames, sent when the batch
//! is full or `signal` after its first message, whichever comes first. A room
//! quiet for `idle` lets its aggregator go.
//!
//! Unlike goim (which dropped a message when a room's queue was full and marked
//! it consumed before delivery), every message gets an [`AckHandle`] that
//! resolves only once the batch holding it was handed to the comets, and a
//! full room queue makes the pusher wait. The consumer acks an entry after its
//! handle resolves, so a message is never acked before it was sent.
//!
//! One [`RoomBatcher`] belongs to one stream consumer: a room always maps to the
//! same stream, so no room is ever batched by two consumers of one instance.
//! Imports `libs` and the job's config only; the comets are behind [`RoomSink`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config::JobRoomConfig;

/// Where a finished batch goes (the comets, or a recorder in tests).
pub trait RoomSink: Send + Sync + 'static {
    /// Hands one batch of `count` messages to every comet: `body` is their
    /// inner frames, concatenated. Returns once that is done or given up (a
    /// failure is counted by the sink; the messages are not retried).
    fn flush(&self, room: &str, body: Bytes, count: usize) -> impl Future<Output = ()> + Send;
}

/// Resolves once the batch holding one message was flushed.
#[derive(Debug)]
pub struct AckHandle(oneshot::Receiver<()>);

impl AckHandle {
    /// True once the message's batch was sent; false if its aggregator went
    /// away first (the process is being killed): then the message must not be
    /// acked, so it stays pending and another instance claims it.
    pub async fn flushed(self) -> bool {
        self.0.await.is_ok()
    }

    /// `Some(true)` once flushed, `Some(false)` if it never will be, `None`
    /// while waiting.
    pub fn try_flushed(&mut self) -> Option<bool> {
        match self.0.try_recv() {
            Ok(()) => Some(true),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(false),
        }
    }
}

#[cfg(test)]
impl AckHandle {
    /// A handle and the sender that releases it (for tests of ack users).
    pub(crate) fn pair() -> (oneshot::Sender<()>, AckHandle) {
        let (tx, rx) = oneshot::channel();
        (tx, AckHandle(rx))
    }
}

/// One message on its way into a batch.
#[derive(Debug)]
struct RoomItem {
    frame: Bytes,
    ack: oneshot::Sender<()>,
}

/// The aggregator task of one room, as its owner sees it.
#[derive(Debug)]
struct RoomAggregator {
    tx: mpsc::Sender<RoomItem>,
    /// Closes when the task ends; its successor waits for it before its first
    /// flush, so a room's batches never overtake each other.
    done: oneshot::Receiver<()>,
}

/// The room aggregators of one stream consumer.
#[derive(Debug)]
pub struct RoomBatcher<S> {
    rooms: HashMap<String, RoomAggregator>,
    sink: Arc<S>,
    config: JobRoomConfig,
    /// Dropping the batcher aborts the tasks (a kill loses nothing: the
    /// unflushed messages were never acked).
    tasks: JoinSet<()>,
    /// Map size after the last sweep of exited aggregators.
    swept_at: usize,
}

impl<S: RoomSink> RoomBatcher<S> {
    /// No rooms yet.
    pub fn new(sink: Arc<S>, config: JobRoomConfig) -> RoomBatcher<S> {
        RoomBatcher {
            rooms: HashMap::new(),
            sink,
            config,
            tasks: JoinSet::new(),
            swept_at: 0,
        }
    }

    /// Adds `frame` (one inner frame) to `room`'s batch, waiting while the
    /// room's queue is full.
    pub async fn push(&mut self, room: &str, frame: Bytes) -> AckHandle {
        while self.tasks.try_join_next().is_some() {}
        let (ack, handle) = oneshot::channel();
        let mut item = RoomItem { frame, ack };
        // Twice at most: an aggregator that exited (idle) refuses the item,
        // and a fresh one takes it.
        for _ in 0..2 {
            if let Some(aggregator) = self.rooms.get(room) {
                match aggregator.tx.send(item).await {
                    Ok(()) => return AckHandle(handle),
                    Err(mpsc::error::SendError(back)) => item = back,
                }
            }
            let previous = self.rooms.remove(room).map(|a| a.done);
            let aggregator = self.spawn(room, previous);
            self.rooms.insert(room.to_string(), aggregator);
            self.sweep();
        }
        // Unreachable in practice (a fresh aggregator takes the item); the
        // dropped item leaves its handle unflushed, so it is not acked.
        AckHandle(handle)
    }

    /// Rooms with a live aggregator.
    pub fn active(&self) -> usize {
        self.rooms.values().filter(|a| !a.tx.is_closed()).count()
    }

    /// Flushes every batch now and waits for the aggregators to finish (a
    /// clean shutdown).
    pub async fn close(&mut self) {
        self.rooms.clear();
        while self.tasks.join_next().await.is_some() {}
    }

    fn spawn(&mut self, room: &str, previous: Option<oneshot::Receiver<()>>) -> RoomAggregator {
        let (tx, rx) = mpsc::channel(self.config.batch.saturating_mul(2).max(1));
        let (done_tx, done) = oneshot::channel();
        let batch = Batch::new(room.to_string(), Arc::clone(&self.sink), previous);
        self.tasks
            .spawn(aggregate(batch, rx, self.config.clone(), done_tx));
        RoomAggregator { tx, done }
    }

    /// Forgets aggregators that exited, whenever the map doubled since the
    /// last sweep (amortised: a push never scans every room).
    fn sweep(&mut self) {
        if self.rooms.len() >= 2 * self.swept_at.max(16) {
            self.rooms.retain(|_, a| !a.tx.is_closed());
            self.swept_at = self.rooms.len();
        }
    }
}

/// The batch being gathered for one room.
struct Batch<S> {
    room: String,
    sink: Arc<S>,
    body: BytesMut,
    acks: Vec<oneshot::Sender<()>>,
    previous: Option<oneshot::Receiver<()>>,
}

impl<S: RoomSink> Batch<S> {
    fn new(room: String, sink: Arc<S>, previous: Option<oneshot::Receiver<()>>) -> Batch<S> {
        Batch {
            room,
            sink,
            body: BytesMut::with_capacity(4096),
            acks: Vec::new(),
            previous,
        }
    }

    fn add(&mut self, item: RoomItem) {
        self.body.extend_from_slice(&item.frame);
        self.acks.push(item.ack);
    }

    fn len(&self) -> usize {
        self.acks.len()
    }

    /// Sends what is gathered (if anything), then releases its ack handles.
    async fn flush(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        if let Some(previous) = self.previous.take() {
            let _ = previous.await;
        }
        let body = self.body.split().freeze();
        self.sink.flush(&self.room, body, self.acks.len()).await;
        for ack in self.acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// One room's aggregator: gathers, flushes on `batch` or `signal`, exits after
/// `idle` without messages or when its owner drops the sender (flushing first).
async fn aggregate<S: RoomSink>(
    mut batch: Batch<S>,
    mut rx: mpsc::Receiver<RoomItem>,
    config: JobRoomConfig,
    _done: oneshot::Sender<()>,
) {
    let mut deadline = Instant::now() + config.idle;
    loop {
        tokio::select! {
            item = rx.recv() => {
                let Some(item) = item else { break };
                if batch.len() == 0 {
                    deadline = Instant::now() + config.signal;
                }
                batch.add(item);
                if batch.len() >= config.batch {
                    batch.flush().await;
                    deadline = Instant::now() + config.idle;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                if batch.len() == 0 {
                    // Idle: refuse new items (the owner starts a fresh
                    // aggregator for them), then flush any that slipped in.
                    rx.close();
                    break;
                }
                batch.flush().await;
                deadline = Instant::now() + config.idle;
            }
        }
    }
    // Closed by the owner or idle: whatever is still queued goes out now.
    while let Some(item) = rx.recv().await {
        batch.add(item);
        if batch.len() >= config.batch {
            batch.flush().await;
        }
    }
    batch.flush().await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::im::frame::{Frame, push_frame};

    /// Records every flush; each flush first takes a place from `gate`.
    struct Recorder {
        tx: mpsc::UnboundedSender<(String, Bytes, usize)>,
        gate: Semaphore,
    }

    impl RoomSink for Recorder {
        async fn flush(&self, room: &str, body: Bytes, count: usize) {
            if let Ok(place) = self.gate.acquire().await {
                place.forget();
            }
            let _ = self.tx.send((room.to_string(), body, count));
        }
    }

    type Flushes = mpsc::UnboundedReceiver<(String, Bytes, usize)>;

    fn batcher(open: bool) -> (RoomBatcher<Recorder>, Flushes, Arc<Recorder>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let permits = if open { Semaphore::MAX_PERMITS } else { 0 };
        let sink = Arc::new(Recorder {
            tx,
            gate: Semaphore::new(permits),
        });
        (
            RoomBatcher::new(Arc::clone(&sink), JobRoomConfig::default()),
            rx,
            sink,
        )
    }

    fn frames_in(body: &Bytes) -> Vec<Frame> {
        let mut buf = BytesMut::from(&body[..]);
        let mut out = Vec::new();
        while let Ok(Some(f)) = Frame::decode(&mut buf, 1 << 20) {
            out.push(f);
        }
        assert!(buf.is_empty(), "the body is whole frames");
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_the_rest_after_the_signal() {
        let (mut rooms, mut flushes, _sink) = batcher(true);
        let start = Instant::now();
        let mut acks = Vec::new();
        for i in 0..25 {
            acks.push(
                rooms
                    .push("live://1", push_frame(1000, format!("m{i}").as_bytes()))
                    .await,
            );
        }
        let (room, body, count) = flushes.recv().await.expect("first batch");
        assert_eq!((room.as_str(), count), ("live://1", 20));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "a full batch does not wait"
        );
        let frames = frames_in(&body);
        assert_eq!(frames.len(), 20);
        assert_eq!(frames[0].body, Bytes::from_static(b"m0"));
        assert_eq!(frames[19].op, 1000);

        let (_, body, count) = flushes.recv().await.expect("second batch");
        assert_eq!(count, 5);
        assert_eq!(frames_in(&body)[4].body, Bytes::from_static(b"m24"));
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "the remainder waits for the signal"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        for ack in acks {
            assert!(ack.flushed().await);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_messages_go_together_one_signal_after_the_first() {
        let (mut rooms, mut flushes, _sink) = batcher(true);
        let start = Instant::now();
        rooms.push("a", push_frame(1, b"x")).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        rooms.push("a", push_frame(1, b"y")).await;
        rooms.push("b", push_frame(2, b"z")).await;
        let got = [
            flushes.recv().await.expect("flush"),
            flushes.recv().await.expect("flush"),
        ];
        // "a" is due 1 s after its first message, "b" 1 s after its own.
        assert_eq!((got[0].0.as_str(), got[0].2), ("a", 2));
        assert_eq!(got[0].1.len(), 2 * 17);
        assert_eq!((got[1].0.as_str(), got[1].2), ("b", 1));
        assert!(start.elapsed() >= Duration::from_millis(1600));
    }

    #[tokio::test(start_paused = true)]
    async fn acks_are_released_only_after_the_flush_returns() {
        let (mut rooms, mut flushes, sink) = batcher(false);
        let mut acks = Vec::new();
        for i in 0..3u8 {
            acks.push(rooms.push("r", push_frame(1, &[i])).await);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        for ack in &mut acks {
            assert_eq!(ack.try_flushed(), None, "the flush is still in progress");
        }
        assert!(flushes.try_recv().is_err());
        sink.gate.add_permits(1);
        assert_eq!(flushes.recv().await.map(|f| f.2), Some(3));
        for ack in acks {
            assert!(ack.flushed().await);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_room_lets_its_aggregator_go_and_comes_back_on_demand() {
        let (mut rooms, mut flushes, _sink) = batcher(true);
        rooms.push("r", push_frame(1, b"1")).await;
        assert_eq!(flushes.recv().await.map(|f| f.2), Some(1));
        assert_eq!(rooms.active(), 1);
        tokio::time::sleep(Duration::from_secs(14 * 60)).await;
        assert_eq!(rooms.active(), 1, "not idle yet");
        tokio::time::sleep(Duration::from_secs(2 * 60)).await;
        assert_eq!(rooms.active(), 0, "exited after 15 min without messages");
        let ack = rooms.push("r", push_frame(1, b"2")).await;
        assert_eq!(rooms.active(), 1);
        assert_eq!(flushes.recv().await.map(|f| f.2), Some(1));
        assert!(ack.flushed().await);
    }

    #[tokio::test(start_paused = true)]
    async fn close_flushes_at_once_and_dropping_never_releases_acks() {
        let (mut rooms, mut flushes, _sink) = batcher(true);
        let start = Instant::now();
        let ack = rooms.push("r", push_frame(1, b"1")).await;
        rooms.close().await;
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(flushes.recv().await.map(|f| f.2), Some(1));
        assert!(ack.flushed().await);

        let (mut rooms, mut flushes, _sink) = batcher(true);
        let ack = rooms.push("r", push_frame(1, b"1")).await;
        drop(rooms); // a kill: nothing sent, nothing acked
        assert!(!ack.flushed().await);
        assert!(flushes.try_recv().is_err());
    }
}
