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
//! A room's batches reach each comet in order, but one comet does not hold up
//! another: the next batch goes to a comet as soon as that comet had the
//! previous one (a [`CometOrder`] per room), up to [`BATCHES_IN_FLIGHT`]
//! batches per room. Before, the room waited for every comet before its next
//! batch, so a hung comet delayed the room's pushes to every other comet's
//! clients until job's call to it timed out.
//!
//! One [`RoomBatcher`] belongs to one stream consumer: a room always maps to the
//! same stream, so no room is ever batched by two consumers of one instance.
//! Imports the job's config, [`AckHandle`] and [`CometOrder`] only; the comets
//! are behind [`RoomSink`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::acker::AckHandle;
use super::comet_order::CometOrder;
use super::config::JobRoomConfig;

/// Batches of one room sent but not yet had by every comet, at most: past it
/// the room's queue fills and its pusher waits. A hung comet holds its batches
/// for job's `comet.timeout` (then it is skipped), so this is how far the other
/// comets' clients can run ahead of it meanwhile.
pub const BATCHES_IN_FLIGHT: usize = 16;

/// Where a finished batch goes (the comets, or a recorder in tests).
pub trait RoomSink: Send + Sync + 'static {
    /// Hands one batch of `count` messages to every comet: `body` is their
    /// inner frames, concatenated. Each comet gets it once it had the room's
    /// previous batch, which `order` (one per room) keeps track of. The
    /// future resolves once every comet had it or was given up (a failure is
    /// counted by the sink; the messages are not retried).
    fn flush(
        self: &Arc<Self>,
        order: &mut CometOrder,
        room: &str,
        body: Bytes,
        count: usize,
    ) -> impl Future<Output = ()> + Send + 'static;
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
        let (ack, handle) = AckHandle::pair();
        let mut item = RoomItem { frame, ack };
        // Twice at most: an aggregator that exited (idle) refuses the item,
        // and a fresh one takes it.
        for _ in 0..2 {
            if let Some(aggregator) = self.rooms.get(room) {
                match aggregator.tx.send(item).await {
                    Ok(()) => return handle,
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
        handle
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

/// A batch on its way to the comets; resolves once every comet had it (and
/// its messages' acks are released).
type Sending = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The batch being gathered for one room, and those on their way.
struct Batch<S> {
    room: String,
    sink: Arc<S>,
    body: BytesMut,
    acks: Vec<oneshot::Sender<()>>,
    previous: Option<oneshot::Receiver<()>>,
    order: CometOrder,
    sending: FuturesOrdered<Sending>,
}

impl<S: RoomSink> Batch<S> {
    fn new(room: String, sink: Arc<S>, previous: Option<oneshot::Receiver<()>>) -> Batch<S> {
        Batch {
            room,
            sink,
            body: BytesMut::with_capacity(4096),
            acks: Vec::new(),
            previous,
            order: CometOrder::default(),
            sending: FuturesOrdered::new(),
        }
    }

    fn add(&mut self, item: RoomItem) {
        self.body.extend_from_slice(&item.frame);
        self.acks.push(item.ack);
    }

    fn len(&self) -> usize {
        self.acks.len()
    }

    /// Sends what is gathered (if anything); its ack handles are released
    /// once every comet had it. Waits while [`BATCHES_IN_FLIGHT`] are on
    /// their way.
    async fn flush(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        if let Some(previous) = self.previous.take() {
            let _ = previous.await;
        }
        while self.sending.len() >= BATCHES_IN_FLIGHT {
            self.sending.next().await;
        }
        let body = self.body.split().freeze();
        let acks = std::mem::take(&mut self.acks);
        let sent = self.sink.flush(&mut self.order, &self.room, body, acks.len());
        self.sending.push_back(Box::pin(async move {
            sent.await;
            for ack in acks {
                let _ = ack.send(());
            }
        }));
    }

    /// Waits until every batch sent is had by every comet.
    async fn sent(&mut self) {
        while self.sending.next().await.is_some() {}
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
            // Releases the acks of batches every comet had.
            Some(()) = batch.sending.next(), if !batch.sending.is_empty() => {}
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
    // The room's next aggregator starts once this one's batches are had.
    batch.sent().await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::im::frame::{Frame, push_frame};

    /// Comets that record every batch they get; each call first takes a
    /// place from its comet's `gate`.
    struct Recorder {
        comets: Vec<RecordingComet>,
    }

    struct RecordingComet {
        tx: mpsc::UnboundedSender<(String, Bytes, usize)>,
        gate: Semaphore,
    }

    impl RoomSink for Recorder {
        fn flush(
            self: &Arc<Self>,
            order: &mut CometOrder,
            room: &str,
            body: Bytes,
            count: usize,
        ) -> impl Future<Output = ()> + Send + 'static {
            let calls: Vec<_> = (0..self.comets.len())
                .map(|i| {
                    let (me, room, body) = (Arc::clone(self), room.to_string(), body.clone());
                    order.after_previous(&i.to_string(), async move {
                        let comet = &me.comets[i];
                        if let Ok(place) = comet.gate.acquire().await {
                            place.forget();
                        }
                        let _ = comet.tx.send((room, body, count));
                    })
                })
                .collect();
            async move {
                futures::future::join_all(calls).await;
            }
        }
    }

    type Flushes = mpsc::UnboundedReceiver<(String, Bytes, usize)>;

    /// A batcher over comets whose gates start with these places, and what
    /// each comet got.
    fn batcher_to(places: &[usize]) -> (RoomBatcher<Recorder>, Vec<Flushes>, Arc<Recorder>) {
        let (comets, flushes) = places
            .iter()
            .map(|&places| {
                let (tx, rx) = mpsc::unbounded_channel();
                let gate = Semaphore::new(places);
                (RecordingComet { tx, gate }, rx)
            })
            .unzip();
        let sink = Arc::new(Recorder { comets });
        (
            RoomBatcher::new(Arc::clone(&sink), JobRoomConfig::default()),
            flushes,
            sink,
        )
    }

    /// One comet, its gate open or shut.
    fn batcher(open: bool) -> (RoomBatcher<Recorder>, Flushes, Arc<Recorder>) {
        let permits = if open { Semaphore::MAX_PERMITS } else { 0 };
        let (rooms, mut flushes, sink) = batcher_to(&[permits]);
        (rooms, flushes.remove(0), sink)
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
            assert!(ack.delivered().await);
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
            assert_eq!(ack.try_delivered(), None, "the flush is still in progress");
        }
        assert!(flushes.try_recv().is_err());
        sink.comets[0].gate.add_permits(1);
        assert_eq!(flushes.recv().await.map(|f| f.2), Some(3));
        for ack in acks {
            assert!(ack.delivered().await);
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
        assert!(ack.delivered().await);
    }

    #[tokio::test(start_paused = true)]
    async fn close_flushes_at_once_and_dropping_never_releases_acks() {
        let (mut rooms, mut flushes, _sink) = batcher(true);
        let start = Instant::now();
        let ack = rooms.push("r", push_frame(1, b"1")).await;
        rooms.close().await;
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(flushes.recv().await.map(|f| f.2), Some(1));
        assert!(ack.delivered().await);

        let (mut rooms, mut flushes, _sink) = batcher(true);
        let ack = rooms.push("r", push_frame(1, b"1")).await;
        drop(rooms); // a kill: nothing sent, nothing acked
        assert!(!ack.delivered().await);
        assert!(flushes.try_recv().is_err());
    }

    /// `wait`'s result within a second (paused time: at once), or `None`.
    async fn within<T>(wait: impl Future<Output = Option<T>>) -> Option<T> {
        tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .ok()
            .flatten()
    }

    /// A comet that does not answer holds up none of the room's batches to
    /// the others, each comet gets them in order, and a batch's acks wait
    /// for every comet.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_comet_holds_up_only_its_own_batches() {
        let (mut rooms, mut flushes, sink) = batcher_to(&[Semaphore::MAX_PERMITS, 0]);
        let batch = JobRoomConfig::default().batch;
        let mut acks = Vec::new();
        for i in 0..3 * batch {
            acks.push(rooms.push("r", push_frame(1, &i.to_be_bytes())).await);
        }
        let first_frame = |body: &Bytes| frames_in(body)[0].body.clone();
        for b in 0..3 {
            let (_, body, count) = within(flushes[0].recv()).await.expect("comet 0 gets every batch");
            assert_eq!(count, batch);
            assert_eq!(
                first_frame(&body),
                Bytes::from((b * batch).to_be_bytes().to_vec())
            );
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(flushes[1].try_recv().is_err(), "comet 1 is stuck");
        assert!(
            acks.iter_mut().all(|a| a.try_delivered().is_none()),
            "no batch is acked before every comet had it"
        );
        // Unstuck one call at a time: comet 1 gets them in order, and each
        // batch's acks are released once it has it.
        for b in 0..3 {
            sink.comets[1].gate.add_permits(1);
            let (_, body, _) = within(flushes[1].recv()).await.expect("comet 1 gets it");
            assert_eq!(
                first_frame(&body),
                Bytes::from((b * batch).to_be_bytes().to_vec())
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
            let acked = acks.iter_mut().filter_map(|a| a.try_delivered()).count();
            assert_eq!(acked, (b + 1) * batch, "acks follow the slowest comet");
        }
    }

    /// While one comet is stuck, the others run at most `BATCHES_IN_FLIGHT`
    /// batches ahead; then the room's queue fills and its pusher waits.
    #[tokio::test(start_paused = true)]
    async fn the_others_run_only_so_far_ahead_of_a_stuck_comet() {
        let (mut rooms, mut flushes, sink) = batcher_to(&[Semaphore::MAX_PERMITS, 0]);
        let batch = JobRoomConfig::default().batch;
        let total = (BATCHES_IN_FLIGHT + 4) * batch;
        let pusher = tokio::spawn(async move {
            for i in 0..total {
                let _ = rooms.push("r", push_frame(1, &i.to_be_bytes())).await;
            }
            rooms
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut got = 0;
        while flushes[0].try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, BATCHES_IN_FLIGHT, "comet 0 ran that far ahead, no further");
        assert!(!pusher.is_finished(), "the pusher waits");
        sink.comets[1].gate.add_permits(Semaphore::MAX_PERMITS);
        let mut rooms = pusher.await.expect("the pusher is done");
        rooms.close().await;
        while flushes[0].try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, BATCHES_IN_FLIGHT + 4);
    }
}
