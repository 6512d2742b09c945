//! A reply the session owes its client, in request order.
//!
//! The session queues one [`Pending`] per request as soon as the request is
//! dispatched; the writer resolves them strictly in queue order, whichever backend
//! answers first. That is the whole ordering guarantee: no sequence numbers, no
//! reordering buffer.
//!
//! A split multi-key command (MGET across groups, say) is one `Pending` holding
//! the parts' receivers and how to merge them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::command::Merge;
use crate::libs::resp;

/// A reply in the making, with what stats need to know about its request.
pub struct Pending {
    /// Stats slot of the command (see `stats.rs`).
    pub cmd: usize,
    pub start: Instant,
    pub reply: Reply,
}

/// Where the reply comes from.
pub enum Reply {
    /// Already known (local commands, proxy errors).
    Ready(Bytes),
    /// One backend reply.
    Wait(oneshot::Receiver<Bytes>),
    /// One backend reply, counted against the session's output from its
    /// arrival (`output.rs`): the session uncounts it when it takes it.
    Counted(oneshot::Receiver<Bytes>),
    /// Several backend replies to merge.
    Merge(Box<Merger>),
    /// Write this, then close the connection (QUIT, protocol errors).
    Close(Bytes),
    /// Not dispatched yet (see [`Held`]): the session holds the request and
    /// dispatches it again once the reason is gone.
    Hold(Held),
    /// One backend reply to a request that must not overtake the client's
    /// earlier ones (transactions, see `transaction.rs`).
    Ordered(Box<Ordered>),
}

/// Why a request is held rather than dispatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Its slot is switching groups (`pre_migrate`): until the next routing change.
    Slot(u16),
    /// The ZooKeeper lease has lapsed (`lease.rs`): until a probe renews it.
    Lease,
}

/// A request sent only once every earlier reply of its client is in: it is
/// released when the session writer reaches it, that is when all of them
/// were taken, so the backends ran them all (or at once, when the session
/// sees every earlier reply already written).
pub struct Ordered {
    pub rx: oneshot::Receiver<Bytes>,
    /// The work that sends the request and fills `rx`: it starts on release
    /// (see [`Ordered::release`]), and never if the reply is dropped first.
    pub task: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Ordered {
    /// Lets the request go (once). Its work runs right here up to its first
    /// wait, which is after it queued its commands on the backend connection,
    /// and then goes on as a task of its own. Spawned at once, it would send
    /// them a task hop later, behind whatever the runtime polls first: a
    /// client's `EXEC` would reach Redis after a command another client sent
    /// after it (Redis's own suite, "BRPOPLPUSH does not affect WATCH while
    /// still blocked", failed 2 runs in 3 that way).
    pub fn release(&mut self) {
        if let Some(mut task) = self.task.take() {
            // A no-op waker: the task is polled again, with its own, once
            // spawned, so nothing it waits for is missed.
            let mut cx = Context::from_waker(Waker::noop());
            if task.as_mut().poll(&mut cx).is_pending() {
                tokio::spawn(task);
            }
        }
    }
}

/// The parts of a split command.
pub struct Merger {
    pub merge: Merge,
    pub parts: Vec<Part>,
    /// MGET only: how many keys the client asked for.
    pub total: usize,
}

/// One sub-request of a split command.
pub struct Part {
    pub rx: oneshot::Receiver<Bytes>,
    /// Its reply is counted against the session's output (see [`Reply::Counted`]).
    pub counted: bool,
    pub got: Option<Bytes>,
    /// MGET only: the client-side positions of this part's keys, in order.
    pub positions: Vec<usize>,
}

/// A backend reply that never came (its connection task ended without answering).
pub(crate) fn lost() -> Bytes {
    resp::error("ERR backend reply lost")
}

/// The "reply" of a request that ends without one: the session closes the
/// connection instead of writing it or anything queued after it (see
/// `Lane::end` in `blocked.rs`). Empty, which no RESP reply is.
pub(crate) fn unanswered() -> Bytes {
    Bytes::new()
}

/// True for [`unanswered`].
pub(crate) fn is_unanswered(reply: &[u8]) -> bool {
    reply.is_empty()
}

/// The reply of a request held too long (sessions normally resolve holds).
pub fn held(why: Held) -> Bytes {
    match why {
        Held::Slot(slot) => slot_switching(slot, None),
        Held::Lease => lease_refusal(None),
    }
}

/// The error for a request of `slot` that cannot wait for the slot's switch to
/// end; `detail` says why it gave up, if it waited.
pub fn slot_switching(slot: u16, detail: Option<&str>) -> Bytes {
    match detail {
        Some(d) => resp::error(&format!("ERR slot {slot} is switching groups ({d}), retry")),
        None => resp::error(&format!("ERR slot {slot} is switching groups, retry")),
    }
}

/// The error a request of slot traffic gets while the proxy's ZooKeeper lease
/// is not valid (`proxy::lease`); `proxy_id` names the proxy where it is known.
pub fn lease_refusal(proxy_id: Option<&str>) -> Bytes {
    let who = proxy_id.map_or_else(|| "proxy".to_string(), |id| format!("proxy {id}"));
    resp::error(&format!(
        "ERR {who} cannot reach ZooKeeper; slot traffic is refused until it can"
    ))
}

impl Reply {
    /// Of `reply`, just taken from this, the bytes that were counted against
    /// the session's output at their arrival.
    pub fn counted_len(&self, reply: &[u8]) -> usize {
        match self {
            Reply::Counted(_) => reply.len(),
            Reply::Merge(m) => m
                .parts
                .iter()
                .filter(|p| p.counted)
                .filter_map(|p| p.got.as_ref())
                .map(Bytes::len)
                .sum(),
            _ => 0,
        }
    }

    /// The reply if it is complete now, without waiting.
    pub fn try_take(&mut self) -> Option<Bytes> {
        match self {
            Reply::Ready(b) | Reply::Close(b) => Some(b.clone()),
            Reply::Hold(why) => Some(held(*why)),
            Reply::Wait(rx) | Reply::Counted(rx) => try_recv(rx),
            Reply::Ordered(o) => {
                o.release();
                try_recv(&mut o.rx)
            }
            Reply::Merge(m) => {
                for p in m.parts.iter_mut().filter(|p| p.got.is_none()) {
                    match p.rx.try_recv() {
                        Ok(b) => p.got = Some(b),
                        Err(oneshot::error::TryRecvError::Empty) => return None,
                        Err(oneshot::error::TryRecvError::Closed) => p.got = Some(lost()),
                    }
                }
                Some(m.finish())
            }
        }
    }

    /// Waits for the reply.
    pub async fn take(&mut self) -> Bytes {
        match self {
            Reply::Ready(b) | Reply::Close(b) => b.clone(),
            Reply::Hold(why) => held(*why),
            Reply::Wait(rx) | Reply::Counted(rx) => rx.await.unwrap_or_else(|_| lost()),
            Reply::Ordered(o) => {
                o.release();
                (&mut o.rx).await.unwrap_or_else(|_| lost())
            }
            Reply::Merge(m) => {
                for p in m.parts.iter_mut().filter(|p| p.got.is_none()) {
                    p.got = Some((&mut p.rx).await.unwrap_or_else(|_| lost()));
                }
                m.finish()
            }
        }
    }
}

/// A backend reply if it is in, without waiting.
fn try_recv(rx: &mut oneshot::Receiver<Bytes>) -> Option<Bytes> {
    match rx.try_recv() {
        Ok(b) => Some(b),
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(oneshot::error::TryRecvError::Closed) => Some(lost()),
    }
}

impl Merger {
    /// Combines the parts' replies. The first error reply wins: a partial MGET
    /// must not look like a set of nils.
    fn finish(&self) -> Bytes {
        let replies = self.parts.iter().map(|p| p.got.clone().unwrap_or_else(lost));
        let replies: Vec<Bytes> = replies.collect();
        if let Some(err) = replies.iter().find(|r| resp::is_error(r)) {
            return err.clone();
        }
        match self.merge {
            Merge::Ok => Bytes::from_static(resp::OK),
            Merge::Sum => {
                let mut sum = 0i64;
                for r in &replies {
                    match resp::integer(r) {
                        Some(n) => sum += n,
                        None => return unexpected(r),
                    }
                }
                resp::int(sum)
            }
            Merge::Values => {
                let mut slots: Vec<Option<Bytes>> = vec![None; self.total];
                for (part, reply) in self.parts.iter().zip(&replies) {
                    let Some(items) = resp::array_items(reply) else {
                        return unexpected(reply);
                    };
                    if items.len() != part.positions.len() {
                        return unexpected(reply);
                    }
                    for (&pos, item) in part.positions.iter().zip(items) {
                        if let Some(s) = slots.get_mut(pos) {
                            *s = Some(item);
                        }
                    }
                }
                let size: usize = slots.iter().map(|s| s.as_ref().map_or(5, |b| b.len())).sum();
                let mut out = BytesMut::with_capacity(size + 16);
                resp::put_header(&mut out, b'*', self.total as i64);
                for s in slots {
                    out.extend_from_slice(s.as_deref().unwrap_or(resp::NIL));
                }
                out.freeze()
            }
        }
    }
}

fn unexpected(reply: &[u8]) -> Bytes {
    let shown = String::from_utf8_lossy(&reply[..reply.len().min(64)]).into_owned();
    resp::error(&format!("ERR unexpected backend reply while merging: {shown:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(reply: &'static [u8], positions: Vec<usize>) -> Part {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Bytes::from_static(reply));
        Part {
            rx,
            counted: false,
            got: None,
            positions,
        }
    }

    #[test]
    fn mget_parts_are_put_back_in_key_order() {
        let mut r = Reply::Merge(Box::new(Merger {
            merge: Merge::Values,
            total: 3,
            parts: vec![
                part(b"*2\r\n$1\r\na\r\n$-1\r\n", vec![0, 2]),
                part(b"*1\r\n$1\r\nb\r\n", vec![1]),
            ],
        }));
        assert_eq!(
            &r.try_take().expect("ready")[..],
            b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n"
        );
    }

    #[test]
    fn sums_and_errors() {
        let mut r = Reply::Merge(Box::new(Merger {
            merge: Merge::Sum,
            total: 0,
            parts: vec![part(b":2\r\n", vec![]), part(b":3\r\n", vec![])],
        }));
        assert_eq!(&r.try_take().expect("ready")[..], b":5\r\n");
        let mut r = Reply::Merge(Box::new(Merger {
            merge: Merge::Ok,
            total: 0,
            parts: vec![part(b"+OK\r\n", vec![]), part(b"-ERR down\r\n", vec![])],
        }));
        assert_eq!(&r.try_take().expect("ready")[..], b"-ERR down\r\n");
    }

    #[test]
    fn an_ordered_request_goes_when_the_writer_reaches_it() {
        let (started, mut seen) = oneshot::channel();
        let (tx, rx) = oneshot::channel::<Bytes>();
        let mut r = Reply::Ordered(Box::new(Ordered {
            rx,
            task: Some(Box::pin(async move {
                let _ = started.send(());
                let _ = tx.send(Bytes::from_static(b"+OK\r\n"));
            })),
        }));
        assert!(seen.try_recv().is_err(), "not before the writer looks at it");
        // The writer reached it: its work runs at once, inline, up to its
        // first wait (here, to its end), so the reply is there already.
        assert_eq!(&r.try_take().expect("ready")[..], b"+OK\r\n");
        assert!(seen.try_recv().is_ok(), "it ran");
    }

    #[test]
    fn a_dropped_sender_becomes_an_error_not_a_hang() {
        let (tx, rx) = oneshot::channel::<Bytes>();
        drop(tx);
        let mut r = Reply::Wait(rx);
        assert!(resp::is_error(&r.try_take().expect("ready")));
    }
}
