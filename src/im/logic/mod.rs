//! `reborn logic`: goim's logic role. It authenticates client connections for
//! comets (gRPC `goim.logic.Logic` on 3119), keeps their sessions in the proxy
//! cluster (`mid_`, `key_`, `ol_`), serves goim's HTTP push API (3111) and
//! appends each push to the queue (Redis Streams) that job consumes. It finds
//! comets, and registers itself, in ZooKeeper (`im::discovery`).
//!
//! Files, one concept each: `config` (the TOML), `args` (the command line,
//! `reborn logic` and `reborn logic token`),
//! `mapping` (the session contract), `producer` (the queue), `push` (the four
//! pushes), `token` and `auth` (signed tokens, the auth body), `online` (room
//! counts), `nodes` (node selection), `query` and `envelope` (HTTP details),
//! `http` and `grpc` (the two APIs), `state` (what they share), `stats`.
//!
//! [`start`] runs logic in-process and returns a handle with its bound
//! addresses (tests, `reborn up`); [`run`] runs it until a token is cancelled.
//! Imports `libs`, the `topo` kernel (`Store`) and `im`'s shared modules.

pub mod args;
pub mod auth;
pub mod config;
pub mod envelope;
pub mod grpc;
pub mod http;
pub mod mapping;
pub mod nodes;
pub mod online;
pub mod producer;
pub mod push;
pub mod query;
pub mod state;
pub mod stats;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::im::discovery::{self, Instance, InstanceKind};
use crate::im::proto::logic::logic_server::LogicServer;
use crate::im::proxies::{Failover, ProxySet};
use crate::libs::config::ConfigError;
use crate::libs::listener::Listener;
use crate::topo::error::TopoError;
use crate::topo::store::Store;

pub use args::LogicArgs;
pub use config::LogicConfig;

use mapping::Sessions;
use nodes::NodeBalancer;
use online::RoomCounts;
use producer::Producer;
use push::Pusher;
use state::LogicState;
use stats::LogicStats;

/// How long shutdown waits for the servers to finish in-flight calls.
const DRAIN: Duration = Duration::from_secs(5);

/// Why logic could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LogicError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// ZooKeeper is unreachable, or registration failed (the message names
    /// ZooKeeper and its address).
    #[error(transparent)]
    Zk(#[from] TopoError),
    /// A listen address could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running logic instance.
pub struct RunningLogic {
    id: String,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    state: Arc<LogicState>,
    store: Store,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningLogic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningLogic")
            .field("id", &self.id)
            .field("http_addr", &self.http_addr)
            .field("grpc_addr", &self.grpc_addr)
            .finish()
    }
}

impl RunningLogic {
    /// The instance id in ZooKeeper.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The counters.
    pub fn stats(&self) -> &LogicStats {
        &self.state.stats
    }

    /// Waits until the instance's token is cancelled, then stops it.
    pub async fn wait(self) {
        self.cancel.cancelled().await;
        self.shutdown().await;
    }

    /// Stops serving, unregisters, and waits (bounded) for the servers.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(e) = discovery::unregister(&self.store, InstanceKind::Logic, &self.id).await {
            tracing::warn!(error = %e, "unregistering logic");
        }
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(DRAIN, all).await.is_err() {
            tracing::warn!("logic's servers did not stop within {DRAIN:?}");
        }
        self.store.close().await;
    }
}

/// Runs logic until SIGINT or SIGTERM.
///
/// # Errors
/// As [`start`].
pub async fn run_until_signal(config: LogicConfig) -> Result<(), LogicError> {
    run(config, crate::libs::shutdown::on_signal()).await
}

/// Runs logic until `shutdown` is cancelled.
///
/// # Errors
/// As [`start`].
pub async fn run(config: LogicConfig, shutdown: CancellationToken) -> Result<(), LogicError> {
    let running = start_with(config, shutdown.child_token()).await?;
    tracing::info!(http = %running.http_addr, grpc = %running.grpc_addr, id = %running.id, "logic running");
    running.wait().await;
    Ok(())
}

/// Starts logic in-process: binds both APIs, connects to ZooKeeper, follows
/// the comets and registers. Stop it with [`RunningLogic::shutdown`].
///
/// # Errors
/// An invalid config, an address in use, or ZooKeeper unreachable. The proxy
/// cluster is not contacted at start (a proxy may come up later).
pub async fn start(config: LogicConfig) -> Result<RunningLogic, LogicError> {
    start_with(config, CancellationToken::new()).await
}

async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), LogicError> {
    let err = |source| LogicError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// `addr` as others should reach it: the hostname instead of an unspecified IP.
fn reachable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("{}:{}", crate::topo::lock::host_name(), addr.port())
    } else {
        addr.to_string()
    }
}

async fn start_with(config: LogicConfig, cancel: CancellationToken) -> Result<RunningLogic, LogicError> {
    config.validate()?;
    let (http_listener, http_addr) = bind(&config.http.addr).await?;
    let (grpc_listener, grpc_addr) = bind(&config.grpc.addr).await?;
    let store = Store::connect(&config.zk).await?;

    let cluster = Arc::new(
        ProxySet::new(
            &config.cluster.addrs,
            config.cluster.conns,
            config.cluster.timeout,
            Failover::Spread,
        )
        .with_auth(&config.cluster.auth),
    );
    let sessions = Sessions::new(cluster.clone(), config.session.expire.as_secs());
    let stats = Arc::new(LogicStats::default());
    let pusher = Pusher::new(
        sessions.clone(),
        Producer::new(cluster, &config.queue),
        stats.clone(),
    );
    let comets = discovery::follow(store.clone(), InstanceKind::Comet, cancel.clone());
    let state = Arc::new(LogicState {
        sessions: sessions.clone(),
        pusher,
        counts: Arc::new(RoomCounts::default()),
        balancer: Arc::new(NodeBalancer::new(&config)),
        comets: comets.clone(),
        stats,
        config: config.clone(),
    });

    let mut tasks = vec![
        tokio::spawn(follow_nodes(state.clone(), cancel.clone())),
        tokio::spawn(online::run_loader(
            sessions,
            state.counts.clone(),
            comets,
            config.online.clone(),
            cancel.clone(),
        )),
        tokio::spawn(serve_http(http_listener, state.clone(), cancel.clone())),
        tokio::spawn(serve_grpc(grpc_listener, state.clone(), cancel.clone())),
    ];

    let id = if config.id.is_empty() {
        format!("{}-{}", crate::topo::lock::host_name(), grpc_addr.port())
    } else {
        config.id.clone()
    };
    let me = Instance {
        id: id.clone(),
        grpc: if config.grpc.advertise.is_empty() {
            reachable(grpc_addr)
        } else {
            config.grpc.advertise.clone()
        },
        http: reachable(http_addr),
        ..Instance::default()
    };
    if let Err(e) = discovery::register(&store, InstanceKind::Logic, &me).await {
        cancel.cancel();
        store.close().await;
        return Err(e.into());
    }
    tasks.push(tokio::spawn(discovery::refresh_loop(
        store.clone(),
        InstanceKind::Logic,
        me,
        cancel.clone(),
    )));
    Ok(RunningLogic {
        id,
        http_addr,
        grpc_addr,
        state,
        store,
        cancel,
        tasks,
    })
}

/// Feeds the balancer every change of the comet list.
async fn follow_nodes(state: Arc<LogicState>, cancel: CancellationToken) {
    let mut comets = state.comets.clone();
    loop {
        let now = comets.borrow_and_update().clone();
        state.balancer.update(&now);
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = comets.changed() => if changed.is_err() { return },
        }
    }
}

/// The push API, served as every HTTP port is (`libs::listener`: header
/// timeout, the peer's address for `ConnectInfo`, no cross-origin requests).
async fn serve_http(listener: TcpListener, state: Arc<LogicState>, cancel: CancellationToken) {
    let result = Listener::new(listener)
        .serve_http(http::router(state), cancel.clone())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "logic HTTP server failed");
        cancel.cancel();
    }
}

async fn serve_grpc(listener: TcpListener, state: Arc<LogicState>, cancel: CancellationToken) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = crate::im::grpc_server::builder()
        .add_service(LogicServer::new(grpc::LogicService::new(state)))
        .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "logic gRPC server failed");
        cancel.cancel();
    }
}
