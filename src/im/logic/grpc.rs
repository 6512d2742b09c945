//! `goim.logic.Logic`, the service comets call (reference §3.2):
//!
//! * `Connect`: authenticate the op-7 body (`auth.rs`), `AddMapping`, answer
//!   with mid, key (a UUID v4 when the client sent none), room, accepts and
//!   the idle timeout in nanoseconds. A refusal is `Status::unauthenticated`
//!   with the reason; comet turns it into op 8 with an error body.
//! * `Disconnect`: `DelMapping`; `has` = whether `key_` existed.
//! * `Heartbeat`: `ExpireMapping`, and `AddMapping` again if `key_` vanished.
//! * `RenewOnline`: store the comet's room counts in `ol_{server}`, answer with
//!   the cluster-wide counts of the last load.
//! * `Receive`: logged only (goim's hook for upstream messages).
//! * `Nodes`: as `/goim/nodes/weighted`.
//!
//! Imports the sibling modules and the generated service.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};

use crate::im::proto::logic::logic_server::Logic;
use crate::im::proto::logic::{
    ConnectReply, ConnectReq, DisconnectReply, DisconnectReq, HeartbeatReply, HeartbeatReq, NodesReply,
    NodesReq, OnlineReply, OnlineReq, ReceiveReply, ReceiveReq,
};
use crate::libs::clock::unix_secs;
use crate::libs::resp_client::RespError;

use super::auth;
use super::mapping::ServerOnline;
use super::state::LogicState;

/// The service over logic's shared state.
#[derive(Debug, Clone)]
pub struct LogicService {
    state: Arc<LogicState>,
}

impl LogicService {
    /// The service over `state`.
    pub fn new(state: Arc<LogicState>) -> LogicService {
        LogicService { state }
    }
}

/// A cluster failure as a gRPC status: `unavailable` when nothing was sent
/// (comet may retry), `internal` otherwise.
fn cluster_status(what: &str, e: &RespError) -> Status {
    let msg = format!("{what}: proxy cluster: {e}");
    if e.is_retry_safe() {
        Status::unavailable(msg)
    } else {
        Status::internal(msg)
    }
}

#[tonic::async_trait]
impl Logic for LogicService {
    async fn connect(&self, request: Request<ConnectReq>) -> Result<Response<ConnectReply>, Status> {
        let req = request.into_inner();
        let s = &self.state;
        let auth =
            match auth::authenticate(&req.token, s.config.auth.secret.as_bytes(), unix_secs(), &req.key) {
                Ok(a) => a,
                Err(e) => {
                    s.stats.auth_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(server = %req.server, error = %e, "connection refused");
                    return Err(Status::unauthenticated(e.to_string()));
                }
            };
        s.sessions
            .add_mapping(auth.mid, &auth.key, &req.server)
            .await
            .map_err(|e| cluster_status("add mapping", &e))?;
        s.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(mid = auth.mid, key = %auth.key, server = %req.server, "connected");
        let heartbeat = i64::try_from(s.config.node.idle_timeout().as_nanos()).unwrap_or(i64::MAX);
        Ok(Response::new(ConnectReply {
            mid: auth.mid,
            key: auth.key,
            room_id: auth.room_id,
            accepts: auth.accepts,
            heartbeat,
        }))
    }

    async fn disconnect(&self, request: Request<DisconnectReq>) -> Result<Response<DisconnectReply>, Status> {
        let req = request.into_inner();
        let has = self
            .state
            .sessions
            .del_mapping(req.mid, &req.key, &req.server)
            .await
            .map_err(|e| cluster_status("delete mapping", &e))?;
        tracing::debug!(mid = req.mid, key = %req.key, server = %req.server, has, "disconnected");
        Ok(Response::new(DisconnectReply { has }))
    }

    async fn heartbeat(&self, request: Request<HeartbeatReq>) -> Result<Response<HeartbeatReply>, Status> {
        let req = request.into_inner();
        let sessions = &self.state.sessions;
        let has = sessions
            .expire_mapping(req.mid, &req.key)
            .await
            .map_err(|e| cluster_status("expire mapping", &e))?;
        if !has {
            sessions
                .add_mapping(req.mid, &req.key, &req.server)
                .await
                .map_err(|e| cluster_status("add mapping", &e))?;
        }
        Ok(Response::new(HeartbeatReply {}))
    }

    async fn renew_online(&self, request: Request<OnlineReq>) -> Result<Response<OnlineReply>, Status> {
        let req = request.into_inner();
        let online = ServerOnline {
            server: req.server,
            room_count: req.room_count.into_iter().collect(),
            updated: unix_secs(),
        };
        self.state
            .sessions
            .add_server_online(&online)
            .await
            .map_err(|e| cluster_status("store room counts", &e))?;
        let all = self.state.counts.all();
        Ok(Response::new(OnlineReply {
            all_room_count: all.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }))
    }

    async fn receive(&self, request: Request<ReceiveReq>) -> Result<Response<ReceiveReply>, Status> {
        let req = request.into_inner();
        let (op, len) = req.proto.as_ref().map_or((0, 0), |p| (p.op, p.body.len()));
        tracing::info!(mid = req.mid, op, body_len = len, "upstream message");
        Ok(Response::new(ReceiveReply {}))
    }

    async fn nodes(&self, request: Request<NodesReq>) -> Result<Response<NodesReply>, Status> {
        let req = request.into_inner();
        let nodes = self.state.balancer.select(&req.platform, &req.client_ip);
        Ok(Response::new(nodes.into_reply()))
    }
}
