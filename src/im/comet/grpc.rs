//! comet's gRPC service, `goim.comet.Comet`, which job calls: PushMsg (by
//! key, filtered by the connections' watched ops), Broadcast (every connection
//! watching the op, optionally paced by `speed`), BroadcastRoom (a room's
//! members, unfiltered) and Rooms. Every push is queued without waiting
//! ([`super::channel::Channel::push`]); one encoding is shared by all the
//! connections it goes to. Imports `hub`, `bucket`, `channel`, `im::proto`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::channel::{Push, PushError};
use super::hub::Hub;
use super::room::Fanout;
use crate::im::proto::comet::comet_server::{Comet, CometServer};
use crate::im::proto::comet::{
    BroadcastReply, BroadcastReq, BroadcastRoomReply, BroadcastRoomReq, PushMsgReply, PushMsgReq, RoomsReply,
    RoomsReq,
};

/// The `goim.comet.Comet` implementation.
pub struct CometService {
    hub: Arc<Hub>,
    shutdown: CancellationToken,
}

impl CometService {
    /// The service over `hub`; background broadcasts stop on `shutdown`.
    pub fn new(hub: Arc<Hub>, shutdown: CancellationToken) -> CometService {
        CometService { hub, shutdown }
    }

    fn count(&self, fanout: Fanout) {
        let s = &self.hub.stats;
        s.pushes_queued
            .fetch_add(fanout.queued, std::sync::atomic::Ordering::Relaxed);
        s.pushes_dropped
            .fetch_add(fanout.dropped, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl Comet for CometService {
    async fn push_msg(&self, request: Request<PushMsgReq>) -> Result<Response<PushMsgReply>, Status> {
        let req = request.into_inner();
        let Some(proto) = req.proto.as_ref().filter(|_| !req.keys.is_empty()) else {
            return Err(Status::invalid_argument("PushMsg needs keys and a proto"));
        };
        let push = Push::from_proto(proto);
        let mut fanout = Fanout::default();
        for key in &req.keys {
            if let Some(ch) = self.hub.buckets.get(key)
                && ch.watches(req.proto_op)
            {
                let r = ch.push(push.clone());
                if r == Err(PushError::Full) {
                    tracing::debug!(key = %key, "send queue full; push dropped");
                }
                fanout.record(r);
            }
        }
        self.count(fanout);
        if fanout.dropped > 0 {
            return Err(Status::resource_exhausted(format!(
                "{} of {} connections had a full send queue; dropped for them",
                fanout.dropped,
                req.keys.len()
            )));
        }
        Ok(Response::new(PushMsgReply {}))
    }

    async fn broadcast(&self, request: Request<BroadcastReq>) -> Result<Response<BroadcastReply>, Status> {
        let req = request.into_inner();
        let Some(proto) = req.proto.as_ref() else {
            return Err(Status::invalid_argument("Broadcast needs a proto"));
        };
        let push = Push::from_proto(proto);
        let (hub, stop, op, speed) = (self.hub.clone(), self.shutdown.clone(), req.proto_op, req.speed);
        // As goim: answered at once, delivered in the background, bucket by
        // bucket; with `speed` > 0 it pauses (connections in the bucket / speed)
        // seconds after each bucket.
        self.hub.tasks.spawn(async move {
            let mut total = Fanout::default();
            for i in 0..hub.buckets.len() {
                let (fanout, conns) = hub.buckets.broadcast_bucket(i, op, &push);
                total.add(fanout);
                if speed > 0 && conns > 0 {
                    let pause = Duration::from_secs_f64(conns as f64 / f64::from(speed));
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
            let s = &hub.stats;
            s.pushes_queued
                .fetch_add(total.queued, std::sync::atomic::Ordering::Relaxed);
            s.pushes_dropped
                .fetch_add(total.dropped, std::sync::atomic::Ordering::Relaxed);
        });
        Ok(Response::new(BroadcastReply {}))
    }

    async fn broadcast_room(
        &self,
        request: Request<BroadcastRoomReq>,
    ) -> Result<Response<BroadcastRoomReply>, Status> {
        let req = request.into_inner();
        let Some(proto) = req.proto.as_ref() else {
            return Err(Status::invalid_argument("BroadcastRoom needs a proto"));
        };
        let fanout = self.hub.buckets.push_room(&req.room_id, &Push::from_proto(proto));
        self.count(fanout);
        Ok(Response::new(BroadcastRoomReply {}))
    }

    async fn rooms(&self, _request: Request<RoomsReq>) -> Result<Response<RoomsReply>, Status> {
        let rooms = self
            .hub
            .buckets
            .room_counts()
            .into_keys()
            .map(|room| (room, true))
            .collect();
        Ok(Response::new(RoomsReply { rooms }))
    }
}

/// Serves the service on `listener` until `shutdown`.
pub async fn serve(hub: Arc<Hub>, listener: TcpListener, shutdown: CancellationToken) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let service = CometServer::new(CometService::new(hub.clone(), shutdown.clone()));
    let result = crate::im::grpc_server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.cancelled())
        .await;
    if let Err(e) = result {
        tracing::error!(?addr, error = %e, "comet gRPC server failed");
    }
}
