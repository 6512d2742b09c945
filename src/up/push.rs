//! The push system (logic, one comet, one job) as `reborn up` runs it: in this
//! process, on 127.0.0.1, pointed at up's proxy and ZooKeeper product.
//!
//! Each role's settings come from its own `--*-config` file (or the defaults),
//! then up's addresses replace the file's, as for the proxy. Logic is told the
//! comet's client ports, because `/goim/nodes/weighted` reports logic's
//! `[node]` ports, not the comet's (goim's design: one port set per cluster).
//! Imports the three `im` roles and `up`'s role plumbing.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};

use tokio_util::sync::CancellationToken;

use crate::topo::ZkConfig;

use super::error::UpError;
use super::roles::{Ready, RoleError, RoleFuture};
use super::{UpArgs, load_role_config, role_error, up_zk};

/// Where the push roles listen, decided before anything starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushPlan {
    /// Logic's HTTP API (and the demo page).
    pub logic_http: SocketAddr,
    /// Logic's gRPC server (comet calls it).
    pub logic_grpc: SocketAddr,
    /// Comet's raw TCP clients.
    pub comet_tcp: SocketAddr,
    /// Comet's WebSocket clients (`/sub`).
    pub comet_ws: SocketAddr,
    /// Comet's gRPC server (job calls it).
    pub comet_grpc: SocketAddr,
    /// Comet's HTTP admin (`/stats`, `/metrics`).
    pub comet_admin: SocketAddr,
    /// Job's HTTP admin (`/stats`, `/metrics`).
    pub job_admin: SocketAddr,
}

impl PushPlan {
    /// The plan from up's flags; `None` with `--no-push`.
    pub fn from_args(args: &UpArgs) -> Option<PushPlan> {
        let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        (!args.no_push).then(|| PushPlan {
            logic_http: local(args.logic_http_port),
            logic_grpc: local(args.logic_grpc_port),
            comet_tcp: local(args.comet_tcp_port),
            comet_ws: local(args.comet_ws_port),
            comet_grpc: local(args.comet_grpc_port),
            comet_admin: local(args.comet_admin_port),
            job_admin: local(args.job_admin_port),
        })
    }

    /// Every address with what listens there, for the port checks.
    pub fn listens(&self) -> [(SocketAddr, &'static str); 7] {
        [
            (self.logic_http, "logic's HTTP API (--logic-http-port)"),
            (self.logic_grpc, "logic's gRPC (--logic-grpc-port)"),
            (self.comet_tcp, "comet's TCP clients (--comet-tcp-port)"),
            (self.comet_ws, "comet's WebSocket clients (--comet-ws-port)"),
            (self.comet_grpc, "comet's gRPC (--comet-grpc-port)"),
            (self.comet_admin, "comet's admin HTTP (--comet-admin-port)"),
            (self.job_admin, "job's admin HTTP (--job-admin-port)"),
        ]
    }
}

/// A push role as up runs it: `start` (lazy, like any future) runs once up
/// starts the role; up hears it is ready when `start` returns; the role then
/// runs until up cancels it, and `stop` drains it.
fn until_cancelled<R, E, S>(
    start: impl Future<Output = Result<R, E>> + Send + 'static,
    stop: impl FnOnce(R) -> S + Send + 'static,
) -> impl FnOnce(CancellationToken, Ready) -> RoleFuture
where
    R: Send + 'static,
    S: Future<Output = ()> + Send,
    RoleError: From<E>,
{
    move |cancel: CancellationToken, ready: Ready| -> RoleFuture {
        Box::pin(async move {
            let running = start.await?;
            let _ = ready.send(());
            cancel.cancelled().await;
            stop(running).await;
            Ok(())
        })
    }
}

/// Logic: its file's settings with up's addresses, proxy (and its password,
/// `proxy_auth`, unless the file gives one) and product.
pub fn logic_role(
    args: &UpArgs,
    plan: &PushPlan,
    zk: &ZkConfig,
    proxy_auth: &str,
) -> Result<impl FnOnce(CancellationToken, Ready) -> RoleFuture + use<>, UpError> {
    use crate::im::logic::LogicConfig;
    let mut config: LogicConfig = load_role_config("logic", args.logic_config.as_deref())?;
    config.http.addr = plan.logic_http.to_string();
    config.grpc.addr = plan.logic_grpc.to_string();
    config.cluster.addrs = vec![args.proxy.to_string()];
    if config.cluster.auth.is_empty() {
        config.cluster.auth = proxy_auth.to_string();
    }
    config.zk = up_zk(zk, &config.zk);
    config.node.tcp_port = plan.comet_tcp.port();
    config.node.ws_port = plan.comet_ws.port();
    config.validate().map_err(|e| role_error("logic", e))?;
    Ok(until_cancelled(
        crate::im::logic::start(config),
        crate::im::logic::RunningLogic::shutdown,
    ))
}

/// The comet: its file's settings with up's ports and product.
pub fn comet_role(
    args: &UpArgs,
    plan: &PushPlan,
    zk: &ZkConfig,
) -> Result<impl FnOnce(CancellationToken, Ready) -> RoleFuture + use<>, UpError> {
    use crate::im::comet::CometConfig;
    let mut config: CometConfig = load_role_config("comet", args.comet_config.as_deref())?;
    config.tcp.listen = plan.comet_tcp.to_string();
    config.websocket.listen = plan.comet_ws.to_string();
    config.grpc.listen = plan.comet_grpc.to_string();
    config.admin_listen = plan.comet_admin.to_string();
    config.zk = up_zk(zk, &config.zk);
    config.validate().map_err(|e| role_error("comet", e))?;
    Ok(until_cancelled(
        crate::im::comet::start(config),
        crate::im::comet::RunningComet::shutdown,
    ))
}

/// The job: its file's settings with up's proxy (and its password, as for
/// logic) and product.
pub fn job_role(
    args: &UpArgs,
    plan: &PushPlan,
    zk: &ZkConfig,
    proxy_auth: &str,
) -> Result<impl FnOnce(CancellationToken, Ready) -> RoleFuture + use<>, UpError> {
    use crate::im::job::JobConfig;
    let mut config: JobConfig = load_role_config("job", args.job_config.as_deref())?;
    config.admin_listen = plan.job_admin.to_string();
    config.cluster.addrs = vec![args.proxy.to_string()];
    if config.cluster.auth.is_empty() {
        config.cluster.auth = proxy_auth.to_string();
    }
    config.zk = up_zk(zk, &config.zk);
    config.validate().map_err(|e| role_error("job", e))?;
    Ok(until_cancelled(
        crate::im::job::start(config),
        crate::im::job::RunningJob::shutdown,
    ))
}
