//! Acknowledging one stream's entries once their delivery is done: `XACK` goes
//! out only after a push was handed to the comets, and for a room message only
//! after the batch holding it was sent; an [`AckHandle`] says when. Entries
//! finished close together are acked in one command. An ack that fails is
//! retried (the entry would otherwise be claimed and delivered again, which
//! at-least-once allows but need not cost). Imports `im::queue`,
//! `im::proxies` and stats.
//!
//! The acker also keeps the set of ids still in flight, so that a claim pass
//! of this very consumer does not deliver again what it is still delivering
//! (a slow comet can keep an entry pending longer than `claim_min_idle`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use super::stats::JobStats;
use crate::im::proxies::ProxySet;
use crate::im::queue;
use crate::libs::backoff::Backoff;
use crate::libs::resp_client::int;

/// The ids of one stream read by this consumer and not acked yet.
pub type InFlight = Arc<parking_lot::Mutex<HashSet<Bytes>>>;

/// One entry waiting for its ack.
#[derive(Debug)]
struct Unacked {
    id: Bytes,
    /// `None`: delivered already; else the delivery it waits for.
    wait: Option<AckHandle>,
    /// The entry's place among the stream's unacked entries, freed on ack.
    place: OwnedSemaphorePermit,
}

/// The acking side of one stream consumer. Dropping it aborts the acks not
/// sent yet (a kill); [`Acker::close`] sends them first.
#[derive(Debug)]
pub struct Acker {
    tx: mpsc::UnboundedSender<Unacked>,
    task: AbortOnDropHandle<()>,
    in_flight: InFlight,
}

impl Acker {
    /// Starts acking entries of `stream` through `link`.
    pub fn spawn(stream: String, link: Arc<ProxySet>, stats: Arc<JobStats>) -> Acker {
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = InFlight::default();
        let task = tokio::spawn(run(stream, link, stats, rx, Arc::clone(&in_flight)));
        Acker {
            tx,
            task: AbortOnDropHandle::new(task),
            in_flight,
        }
    }

    /// Marks `id` as being delivered; false if it already is (a claim pass met
    /// an entry this consumer is still working on: leave it to that work).
    pub fn begin(&self, id: &Bytes) -> bool {
        self.in_flight.lock().insert(id.clone())
    }

    /// True while `id` is being delivered (begun, not yet acked).
    pub fn delivering(&self, id: &Bytes) -> bool {
        self.in_flight.lock().contains(id)
    }

    /// Acks `id` now (its delivery is done, or it can never be delivered).
    pub fn done(&self, id: Bytes, place: OwnedSemaphorePermit) {
        let _ = self.tx.send(Unacked {
            id,
            wait: None,
            place,
        });
    }

    /// Acks `id` once `handle` says its delivery ended.
    pub fn after(&self, id: Bytes, handle: AckHandle, place: OwnedSemaphorePermit) {
        let _ = self.tx.send(Unacked {
            id,
            wait: Some(handle),
            place,
        });
    }

    /// Waits until every entry handed over was acked (or its batch was
    /// abandoned).
    pub async fn close(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// Resolves once one entry's delivery ended: its push or broadcast call, or
/// the room batch holding it, had by every comet.
#[derive(Debug)]
pub struct AckHandle(oneshot::Receiver<()>);

impl AckHandle {
    /// True once the delivery ended; false if it was abandoned first (the
    /// process is being killed): then the entry must not be acked, so it
    /// stays pending and another instance claims it.
    pub async fn delivered(self) -> bool {
        self.0.await.is_ok()
    }

    /// `Some(true)` once delivered, `Some(false)` if it never will be, `None`
    /// while waiting.
    pub fn try_delivered(&mut self) -> Option<bool> {
        match self.0.try_recv() {
            Ok(()) => Some(true),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(false),
        }
    }

    /// A handle and the sender that releases it; dropping the sender
    /// abandons the delivery (nothing is acked).
    pub fn pair() -> (oneshot::Sender<()>, AckHandle) {
        let (tx, rx) = oneshot::channel();
        (tx, AckHandle(rx))
    }
}

/// Outcome of one wait: the id, whether to ack it, and its place.
type Finished = (Bytes, bool, OwnedSemaphorePermit);

async fn run(
    stream: String,
    link: Arc<ProxySet>,
    stats: Arc<JobStats>,
    mut rx: mpsc::UnboundedReceiver<Unacked>,
    in_flight: InFlight,
) {
    let mut waiting = FuturesUnordered::new();
    let mut open = true;
    let mut ready: Vec<Finished> = Vec::new();
    let wait = |u: Unacked| async move {
        let ok = match u.wait {
            None => true,
            Some(handle) => handle.delivered().await,
        };
        (u.id, ok, u.place)
    };
    while open || !waiting.is_empty() {
        tokio::select! {
            item = rx.recv(), if open => match item {
                Some(u) => waiting.push(wait(u)),
                None => open = false,
            },
            Some(finished) = waiting.next(), if !waiting.is_empty() => ready.push(finished),
        }
        // Gather whatever else is finished already, for one XACK.
        while let Ok(u) = rx.try_recv() {
            waiting.push(wait(u));
        }
        while let Some(Some(finished)) = waiting.next().now_or_never() {
            ready.push(finished);
        }
        let done = std::mem::take(&mut ready);
        let ids: Vec<Bytes> = done
            .iter()
            .filter(|(_, ok, _)| *ok)
            .map(|(id, _, _)| id.clone())
            .collect();
        if !ids.is_empty() {
            xack(&stream, &link, &stats, &ids).await;
        }
        let mut set = in_flight.lock();
        for (id, _, _) in &done {
            set.remove(id);
        }
        // `done` drops here: the entries' places are free only after their ack.
    }
}

/// `XACK <stream> <group> <id>…`, retried until it goes through.
async fn xack(stream: &str, link: &ProxySet, stats: &JobStats, ids: &[Bytes]) {
    let mut args: Vec<&[u8]> = Vec::with_capacity(ids.len() + 3);
    args.extend([&b"XACK"[..], stream.as_bytes(), queue::GROUP.as_bytes()]);
    args.extend(ids.iter().map(|id| &id[..]));
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        match link.call(&args).await.and_then(int) {
            Ok(n) => {
                JobStats::add(&stats.acked, n.max(0) as u64);
                return;
            }
            // The proxy's `write_ack = "replica"` mode, with the stream's
            // replica away: the XACK ran. Should the master die before the
            // replica has it, the entries come back pending and are delivered
            // again, as after any crash; retrying until the replica is back
            // would only hold up every later ack of the stream.
            Err(e) if e.ran_unreplicated() => {
                tracing::debug!(stream, n = ids.len(), "XACK ran; no replica confirmed it yet");
                JobStats::add(&stats.acked, ids.len() as u64);
                return;
            }
            Err(e) => {
                tracing::warn!(stream, error = %e, n = ids.len(), "XACK failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::im::proxies::Failover;

    /// A fake proxy answering `:1` to every command and recording what it got.
    async fn fake_proxy() -> (String, mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let replies = text.matches("XACK").count();
                        if n == 0 || tx.send(text).is_err() {
                            return;
                        }
                        let _ = s.write_all(":1\r\n".repeat(replies).as_bytes()).await;
                    }
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn acks_wait_for_their_batch_and_abandoned_ones_are_never_sent() {
        let (addr, mut got) = fake_proxy().await;
        let link = Arc::new(ProxySet::new(
            &[addr],
            1,
            Duration::from_secs(2),
            Failover::Sticky,
        ));
        let stats = Arc::new(JobStats::default());
        let acker = Acker::spawn("goim-push-0".into(), link, Arc::clone(&stats));
        let places = Arc::new(Semaphore::new(3));
        let place = || Arc::clone(&places).try_acquire_owned().expect("a place");

        let (id1, id2, id3) = (
            Bytes::from_static(b"1-0"),
            Bytes::from_static(b"2-0"),
            Bytes::from_static(b"3-0"),
        );
        assert!(acker.begin(&id1) && acker.begin(&id2) && acker.begin(&id3));
        assert!(!acker.begin(&id2), "already in flight");
        let (flush2, handle2) = AckHandle::pair();
        let (abandon3, handle3) = AckHandle::pair();
        acker.after(id2.clone(), handle2, place());
        acker.after(id3.clone(), handle3, place());
        acker.done(id1.clone(), place());

        let first = got.recv().await.expect("an XACK");
        assert!(first.contains("1-0") && !first.contains("2-0"), "{first:?}");
        // 1's place comes back once the reply to its XACK arrived; 2 and 3 keep theirs.
        let freed = tokio::time::timeout(Duration::from_secs(2), async {
            while places.available_permits() != 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        assert!(freed.await.is_ok(), "1-0's place is freed after its ack");
        drop(abandon3); // its batch was never sent (a kill)
        flush2.send(()).expect("acker waits");
        let second = got.recv().await.expect("an XACK");
        assert!(second.contains("2-0") && !second.contains("3-0"), "{second:?}");
        acker.close().await;
        assert_eq!(places.available_permits(), 3);
        assert_eq!(stats.snapshot().acked, 2);
        assert!(got.try_recv().is_err(), "3-0 was never acked");
    }
}
