//! One stream's consumer: joins the group (`XGROUP CREATE … MKSTREAM`), reads
//! new entries with `XREADGROUP … BLOCK` on a connection of its own (BLOCK holds
//! it, and each stream lives in its own slot, so one stream per call), takes
//! over stale entries of dead instances (`claim.rs`) and, after each complete
//! claim pass, deletes their consumers (`reaper.rs`), hands each entry to the
//! dispatcher or its room's batch, and leaves the ack to the `Acker`.
//!
//! At most `max_pending` entries are read but unacked at once: slow comets slow
//! the reading, nothing piles up. Key pushes and broadcasts reach each comet
//! in stream order, but a comet does not wait for another (the [`Outbox`]'s
//! `CometOrder`): a hung comet used to hold up the whole stream until job's
//! call to it timed out. Room messages keep their order through the room's
//! batch.
//! Errors reconnect with backoff, failing over between proxies; one stream's
//! trouble never holds up another. Imports `im::queue`, `libs` and the job's
//! parts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::acker::{AckHandle, Acker};
use super::claim::Claimer;
use super::comet_order::CometOrder;
use super::config::{JobQueueConfig, JobRoomConfig};
use super::dispatch::{Dispatcher, inner_frame};
use super::entry::{self, StreamEntry};
use super::reaper::ConsumerReaper;
use super::room::RoomBatcher;
use super::stats::JobStats;
use crate::im::discovery::Instance;
use crate::im::proto::logic::push_msg::Type as PushType;
use crate::im::proxies::ProxySet;
use crate::im::queue;
use crate::libs::backoff::Backoff;
use crate::libs::outage::Outage;
use crate::libs::resp_client::{RespConn, RespError, check};

/// Everything one stream consumer needs.
#[derive(Debug)]
pub struct StreamConsumer {
    /// The stream key.
    pub stream: String,
    /// This instance's consumer name.
    pub consumer: String,
    /// The proxies.
    pub link: Arc<ProxySet>,
    /// Delivery to the comets (also the rooms' sink).
    pub dispatcher: Arc<Dispatcher>,
    /// `[queue]`.
    pub queue: JobQueueConfig,
    /// `[room]`.
    pub room: JobRoomConfig,
    /// Counters.
    pub stats: Arc<JobStats>,
    /// The job instances in discovery (whose consumers are alive).
    pub jobs: watch::Receiver<Vec<Instance>>,
}

/// What one consumer has on its way to the comets. Dropping it (a kill)
/// aborts every delivery, so nothing more is acked.
struct Outbox {
    rooms: RoomBatcher<Dispatcher>,
    /// Where this stream's pushes and broadcasts are at each comet.
    order: CometOrder,
    /// Pushes and broadcasts under way.
    calls: JoinSet<()>,
}

impl Outbox {
    /// Runs one delivery; the handle says when it ended.
    fn send(&mut self, delivery: impl Future<Output = ()> + Send + 'static) -> AckHandle {
        while self.calls.try_join_next().is_some() {}
        let (ended, handle) = AckHandle::pair();
        self.calls.spawn(async move {
            delivery.await;
            let _ = ended.send(());
        });
        handle
    }

    /// Flushes the room batches and waits for every delivery (a clean stop).
    async fn close(&mut self) {
        self.rooms.close().await;
        while self.calls.join_next().await.is_some() {}
    }
}

/// The reading connection and whether the group is known to exist on it.
struct Reader {
    conn: RespConn,
    grouped: bool,
}

impl StreamConsumer {
    /// Consumes until `stop`, then flushes the room batches and sends the last
    /// acks. Dropping the future instead (a kill) acks nothing more.
    pub async fn run(self, stop: CancellationToken) {
        let mut out = Outbox {
            rooms: RoomBatcher::new(Arc::clone(&self.dispatcher), self.room.clone()),
            order: CometOrder::default(),
            calls: JoinSet::new(),
        };
        let acker = Acker::spawn(
            self.stream.clone(),
            Arc::clone(&self.link),
            Arc::clone(&self.stats),
        );
        let places = Arc::new(Semaphore::new(self.queue.max_pending));
        let page = self.queue.count.min(self.queue.max_pending);
        let mut claimer = Claimer::new(
            &self.stream,
            &self.consumer,
            self.queue.claim_min_idle,
            self.queue.claim_interval,
        );
        // Idle this long, a consumer is not reading: a live one's blocking
        // read touches it every `block`.
        let quiet = self.queue.block * 2;
        let mut reaper = ConsumerReaper::new(
            &self.stream,
            &self.consumer,
            (self.queue.claim_min_idle.max(quiet), quiet),
            self.jobs.clone(),
        );
        let mut reader: Option<Reader> = None;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut outage = Outage::default();
        let what = format!("queue read on {}", self.stream);
        loop {
            let taken = tokio::select! {
                p = Arc::clone(&places).acquire_many_owned(page as u32) => p,
                () = stop.cancelled() => break,
            };
            let Ok(mut taken) = taken else { break };
            // A job instance left: what it left pending is taken over now,
            // not once `claim_min_idle` has passed.
            if reaper.jobs_changed() {
                claimer.hurry();
            }
            // Only once the reader has made sure the group exists: a claim
            // before that (the first pass is due at start, and again after
            // a FLUSHALL) can only get NOGROUP, an error every client sees
            // in the proxy's stats.
            let claiming = claimer.due() && reader.as_ref().is_some_and(|r| r.grouped);
            let step = if claiming {
                self.claim(&mut claimer, &reaper, &acker, page).await
            } else {
                tokio::select! {
                    r = self.read(&mut reader, page) => r,
                    // A read cancelled mid-way leaves its entries pending to
                    // this consumer: they are claimed later, never lost.
                    () = stop.cancelled() => break,
                }
            };
            match step {
                Ok(entries) => {
                    backoff.reset();
                    outage.succeeded(&what);
                    self.dispatcher.forget_gone(&mut out.order);
                    for e in entries {
                        let Some(place) = taken.split(1) else { break };
                        // A claim can return what this consumer is still delivering.
                        if !acker.begin(&e.id) {
                            continue;
                        }
                        if claiming {
                            JobStats::add(&self.stats.claimed, 1);
                        }
                        self.dispatch(e, place, &mut out, &acker).await;
                    }
                }
                Err(e) => {
                    drop(taken);
                    if e.breaks_connection() {
                        if let Some(r) = reader.take() {
                            self.link.failed_at(r.conn.addr());
                        }
                    } else if matches!(&e, RespError::Server(m) if m.starts_with("NOGROUP"))
                        && let Some(r) = reader.as_mut()
                    {
                        // The stream was deleted under us: join the group again.
                        r.grouped = false;
                    }
                    outage.failed(&what, &e);
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = stop.cancelled() => break,
                    }
                }
            }
        }
        out.close().await;
        acker.close().await;
    }

    /// One page of stale entries taken over from other consumers. A claim
    /// that ran but whose reply the proxy withheld (no replica confirmed it)
    /// left what it took pending to this consumer, unseen: those are read
    /// back (`Claimer::own_pending`), skipping what is being delivered.
    async fn claim(
        &self,
        claimer: &mut Claimer,
        reaper: &ConsumerReaper,
        acker: &Acker,
        page: usize,
    ) -> Result<Vec<StreamEntry>, RespError> {
        match self.take_over(claimer, reaper, page).await {
            Err(e) if e.ran_unreplicated() => {
                let entries = claimer
                    .own_pending(&self.link, page, |id| acker.delivering(id))
                    .await?;
                tracing::info!(stream = %self.stream, n = entries.len(), "a claim ran but no replica confirmed it: read back the entries it took");
                Ok(entries)
            }
            taken => taken,
        }
    }

    /// [`Self::claim`]'s claims: the entries of dead instances first, then a
    /// page of the pass; after the last page of a pass, the dead consumers
    /// (now without entries) go.
    async fn take_over(
        &self,
        claimer: &mut Claimer,
        reaper: &ConsumerReaper,
        page: usize,
    ) -> Result<Vec<StreamEntry>, RespError> {
        // First, at the start of a pass, the entries of dead instances,
        // whatever their idle time. A page at a time: the pass proper starts
        // once none are left.
        if !claimer.in_pass() {
            let mut adopted = Vec::new();
            for from in reaper.orphans(&self.link).await.unwrap_or_default() {
                adopted.extend(claimer.adopt(&self.link, &from, page - adopted.len()).await?);
                if adopted.len() >= page {
                    break;
                }
            }
            if !adopted.is_empty() {
                tracing::info!(stream = %self.stream, n = adopted.len(), "took over a dead job instance's entries");
                return Ok(adopted);
            }
        }
        let claimed = match claimer.claim_page(&self.link, page).await {
            Ok(c) => c,
            // No stream or group yet: nothing can be pending; the read creates them.
            Err(RespError::Server(m)) if m.starts_with("NOGROUP") => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if !claimed.entries.is_empty() {
            tracing::info!(stream = %self.stream, n = claimed.entries.len(), "claimed stale entries");
        }
        if !claimer.in_pass() {
            match reaper.reap(&self.link).await {
                Ok(n) => JobStats::add(&self.stats.consumers_deleted, n as u64),
                // Not worth a retry of the claim: the next pass reaps again.
                Err(e) => tracing::warn!(stream = %self.stream, error = %e, "deleting dead consumers failed"),
            }
        }
        Ok(claimed.entries)
    }

    /// New entries, waiting up to `block` for some.
    async fn read(&self, reader: &mut Option<Reader>, page: usize) -> Result<Vec<StreamEntry>, RespError> {
        let r = match reader {
            Some(r) => r,
            None => {
                let mut conn = self.link.connect().await?;
                // The blocking read holds the reply for up to `block`.
                conn.set_timeout(self.queue.block + self.link.timeout());
                reader.insert(Reader { conn, grouped: false })
            }
        };
        if !r.grouped {
            create_group(&mut r.conn, &self.stream).await?;
            r.grouped = true;
        }
        let count = page.to_string();
        let block = self.queue.block.as_millis().max(1).to_string();
        let reply = r
            .conn
            .call(&[
                "XREADGROUP",
                "GROUP",
                queue::GROUP,
                &self.consumer,
                "COUNT",
                &count,
                "BLOCK",
                &block,
                "STREAMS",
                &self.stream,
                ">",
            ])
            .await?;
        entry::from_read(reply)
    }

    /// Hands one entry on; its ack follows its delivery.
    async fn dispatch(&self, e: StreamEntry, place: OwnedSemaphorePermit, out: &mut Outbox, acker: &Acker) {
        JobStats::add(&self.stats.read, 1);
        let msg = match e.value.as_deref().map(queue::decode) {
            Some(Ok(msg)) => msg,
            other => {
                // Never deliverable: ack it so it does not come back for ever.
                JobStats::add(&self.stats.bad_entries, 1);
                tracing::warn!(stream = %self.stream, id = ?e.id, bad = ?other.map(|r| r.err()), "not a push entry; dropped");
                acker.done(e.id, place);
                return;
            }
        };
        match msg.r#type() {
            PushType::Push => match self.dispatcher.push(&mut out.order, &msg) {
                Some(delivery) => acker.after(e.id, out.send(delivery), place),
                None => acker.done(e.id, place),
            },
            PushType::Broadcast => match self.dispatcher.broadcast(&mut out.order, &msg) {
                Some(delivery) => acker.after(e.id, out.send(delivery), place),
                None => acker.done(e.id, place),
            },
            PushType::Room => {
                let handle = out.rooms.push(&msg.room, inner_frame(&msg)).await;
                acker.after(e.id, handle, place);
            }
        }
    }
}

/// `XGROUP CREATE <stream> <group> 0 MKSTREAM`; an existing group is fine.
async fn create_group(conn: &mut RespConn, stream: &str) -> Result<(), RespError> {
    let reply = conn
        .call(&["XGROUP", "CREATE", stream, queue::GROUP, "0", "MKSTREAM"])
        .await?;
    match check(reply) {
        Ok(_) => Ok(()),
        Err(RespError::Server(m)) if m.starts_with("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}
