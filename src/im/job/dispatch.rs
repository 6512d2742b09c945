//! Turning one queued push into calls to the comets, as goim's job does:
//! PUSH goes to the comet its `server` names, BROADCAST to every comet with the
//! speed shared out between them, ROOM into the room's batch (see `room.rs`;
//! the batch is sent by [`Dispatcher`]'s [`RoomSink`] side, to each comet once
//! that comet had the room's previous batch).
//!
//! Every push ends counted: handed over, or dropped with a reason (unknown
//! server, no comet, a call given up). Imports `im::frame`, `im::proto` and the
//! job's comet links and stats.

use std::sync::Arc;

use bytes::Bytes;
use tonic::Status;
use tonic::transport::Channel;

use super::comet_link::{CometCallError, CometLink, CometLinks};
use super::comet_order::CometOrder;
use super::room::RoomSink;
use super::stats::JobStats;
use crate::im::frame::{PUSH_VER, op, push_frame};
use crate::im::proto::comet::comet_client::CometClient;
use crate::im::proto::comet::{BroadcastReq, BroadcastRoomReq, PushMsgReq};
use crate::im::proto::logic::PushMsg;
use crate::im::proto::protocol::Proto;

/// Delivers pushes to the comets.
#[derive(Debug)]
pub struct Dispatcher {
    links: Arc<CometLinks>,
    stats: Arc<JobStats>,
}

/// The OpRaw envelope around `body` (one or more inner frames).
pub fn raw_proto(body: &[u8]) -> Proto {
    Proto {
        ver: i32::from(PUSH_VER),
        op: op::RAW,
        seq: 0,
        body: body.to_vec(),
    }
}

/// The inner frame of `msg`: its business op and its bytes.
pub fn inner_frame(msg: &PushMsg) -> Bytes {
    push_frame(msg.operation, &msg.msg)
}

/// A broadcast's speed for each of `comets` comets: goim divides the whole
/// speed between them; a share never rounds down to 0 (0 means "unthrottled"
/// to comet), and 0 stays 0.
pub fn speed_share(speed: i32, comets: usize) -> i32 {
    if speed <= 0 || comets == 0 {
        return speed.max(0);
    }
    let comets = i32::try_from(comets).unwrap_or(i32::MAX);
    (speed / comets).max(1)
}

impl Dispatcher {
    /// A dispatcher over these comets, counting into `stats`.
    pub fn new(links: Arc<CometLinks>, stats: Arc<JobStats>) -> Dispatcher {
        Dispatcher { links, stats }
    }

    /// Sends a key push to the comet named by `msg.server`, after this
    /// stream's previous call to that comet (`order`); the future ends once
    /// the call did. An unknown server is dropped and counted (`None`): that
    /// comet is gone and its connections with it.
    pub fn push(
        self: &Arc<Self>,
        order: &mut CometOrder,
        msg: &PushMsg,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let Some(link) = self.links.get(&msg.server) else {
            JobStats::add(&self.stats.dropped_unknown_server, 1);
            tracing::debug!(server = %msg.server, "push for an unknown comet dropped");
            return None;
        };
        let req = PushMsgReq {
            keys: msg.keys.clone(),
            proto_op: msg.operation,
            proto: Some(raw_proto(&inner_frame(msg))),
        };
        let me = Arc::clone(self);
        let id = link.id.clone();
        Some(order.after_previous(&id, async move {
            let sent = me
                .links
                .call(&link, |mut c| {
                    let req = req.clone();
                    async move { c.push_msg(req).await }
                })
                .await;
            match sent {
                Ok(_) => JobStats::add(&me.stats.pushed, 1),
                Err(e) => me.given_up(&e),
            }
        }))
    }

    /// Sends a broadcast to every comet, each with its share of the speed and
    /// after this stream's previous call to it; `None` when there is no comet.
    pub fn broadcast(
        self: &Arc<Self>,
        order: &mut CometOrder,
        msg: &PushMsg,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let comets = self.comets_for(1)?;
        let req = BroadcastReq {
            proto_op: msg.operation,
            proto: Some(raw_proto(&inner_frame(msg))),
            speed: speed_share(msg.speed, comets.len()),
        };
        let sent = self.to_every(
            order,
            comets,
            req,
            |mut c, req| async move { c.broadcast(req).await },
        );
        let me = Arc::clone(self);
        Some(async move {
            sent.await;
            JobStats::add(&me.stats.broadcast, 1);
        })
    }

    /// Every comet now; `None`, with `entries` counted as dropped, when there
    /// is none.
    fn comets_for(&self, entries: u64) -> Option<Vec<Arc<CometLink>>> {
        let comets = self.links.all();
        if comets.is_empty() {
            JobStats::add(&self.stats.dropped_no_comet, entries);
            return None;
        }
        Some(comets)
    }

    /// Sends `req` through `rpc` to every one of `comets`, each after the
    /// previous call to it in `order`; failures are counted per comet. The
    /// future ends once every comet had it or was given up.
    fn to_every<Q, R, F, Fut>(
        self: &Arc<Self>,
        order: &mut CometOrder,
        comets: Vec<Arc<CometLink>>,
        req: Q,
        rpc: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        Q: Clone + Send + Sync + 'static,
        R: Send + 'static,
        F: Fn(CometClient<Channel>, Q) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<R>, Status>> + Send + 'static,
    {
        let calls: Vec<_> = comets
            .into_iter()
            .map(|link| {
                let (me, req, rpc) = (Arc::clone(self), req.clone(), rpc.clone());
                let id = link.id.clone();
                order.after_previous(&id, async move {
                    if let Err(e) = me.links.call(&link, |c| rpc(c, req.clone())).await {
                        me.given_up(&e);
                    }
                })
            })
            .collect();
        async move {
            futures::future::join_all(calls).await;
        }
    }

    /// Forgets, in `order`, the comets job no longer calls whose last call
    /// ended: a stream's order once per page read, a room's once per batch.
    pub fn forget_gone(&self, order: &mut CometOrder) {
        order.retain(|id| self.links.get(id).is_some());
    }

    fn given_up(&self, e: &CometCallError) {
        JobStats::add(&self.stats.dropped_rpc_failed, 1);
        if e.skipped {
            tracing::debug!(error = %e, "push dropped for a silent comet");
        } else {
            tracing::warn!(error = %e, "comet call given up; push dropped for that comet");
        }
    }
}

impl RoomSink for Dispatcher {
    fn flush(
        self: &Arc<Self>,
        order: &mut CometOrder,
        room: &str,
        body: Bytes,
        count: usize,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.forget_gone(order);
        let comets = self.comets_for(count as u64);
        let req = BroadcastRoomReq {
            room_id: room.to_string(),
            proto: Some(raw_proto(&body)),
        };
        let sent = comets.map(|comets| {
            self.to_every(order, comets, req, |mut c, req| async move {
                c.broadcast_room(req).await
            })
        });
        let me = Arc::clone(self);
        async move {
            // None: counted as dropped, no comet.
            if let Some(sent) = sent {
                sent.await;
                JobStats::add(&me.stats.room_batches, 1);
                JobStats::add(&me.stats.room_messages, count as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_speed_is_shared_without_dividing_by_zero() {
        assert_eq!(speed_share(100, 4), 25);
        assert_eq!(speed_share(1, 3), 1, "never rounds down to unthrottled");
        assert_eq!(speed_share(0, 3), 0);
        assert_eq!(speed_share(10, 0), 10);
        assert_eq!(speed_share(-5, 2), 0);
    }

    #[test]
    fn the_raw_envelope_holds_the_inner_frame() {
        let msg = PushMsg {
            operation: 1000,
            msg: b"hi".to_vec(),
            ..PushMsg::default()
        };
        let p = raw_proto(&inner_frame(&msg));
        assert_eq!((p.ver, p.op, p.seq), (1, 9, 0));
        assert_eq!(p.body.len(), 18);
        assert_eq!(&p.body[8..12], &1000i32.to_be_bytes());
        assert_eq!(&p.body[16..], b"hi");
    }
}
