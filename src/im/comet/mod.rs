//! `reborn comet`: the client gateway of the push system (goim's comet).
//!
//! Clients connect over raw TCP ([`tcp`]) or WebSocket/WSS ([`websocket`],
//! [`tls`]) and speak goim v2 frames ([`crate::im::frame`], [`codec`]). Each
//! connection runs in one task ([`connection`]): op 7 auth through logic
//! ([`logic_link`]), heartbeats, room and op control, upstream messages, and
//! batched writes of what job pushed; [`error`] says why one ended. Authenticated connections live in
//! sharded maps ([`bucket`], [`room`], [`channel`]) that the gRPC service job
//! calls ([`grpc`]) pushes into without ever waiting. comet registers in
//! ZooKeeper ([`registration`]) and reports room counts to logic ([`online`]);
//! after a group's master changed it renews the sessions on it ([`resync`]);
//! [`stats`] counts what happened, [`hub`] is what all of them share (and
//! what the admin port, `im::admin_http`, reports).
//!
//! [`start`] runs a comet in-process and returns its bound addresses (tests,
//! `reborn up`); [`run`] is the role's entry. Imports `libs`, the `topo` kernel
//! and `im`'s shared pieces, never `proxy`.

pub mod bucket;
pub mod channel;
pub mod codec;
pub mod config;
pub mod connection;
pub mod error;
pub mod grpc;
pub mod hub;
pub mod logic_link;
pub mod online;
pub mod registration;
pub mod resync;
pub mod room;
pub mod stats;
pub mod tcp;
pub mod tls;
pub mod transport;
pub mod websocket;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{CometArgs, CometConfig};

use self::hub::Hub;
use self::logic_link::LogicLink;
use self::stats::CometStatsSnapshot;
use self::tls::TlsError;
use crate::im::admin_http;
use crate::im::discovery::{self, Instance, InstanceKind};
use crate::libs::config::ConfigError;
use crate::topo::error::TopoError;
use crate::topo::store::Store;

/// How long shutdown waits for connections and background calls to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Why a comet could not start.
#[derive(Debug, thiserror::Error)]
pub enum CometError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// ZooKeeper could not be reached, or the server id is taken.
    #[error("ZooKeeper: {0}")]
    Zk(#[from] TopoError),
    /// The WSS certificate or key is unusable.
    #[error("WSS: {0}")]
    Tls(#[from] TlsError),
}

/// A comet running in this process.
pub struct RunningComet {
    /// The server id it registered under.
    pub server_id: String,
    /// Raw TCP clients' address.
    pub tcp_addr: SocketAddr,
    /// WebSocket clients' address (`ws://{ws_addr}/sub`).
    pub ws_addr: SocketAddr,
    /// WSS address, when configured.
    pub wss_addr: Option<SocketAddr>,
    /// The gRPC server's address.
    pub grpc_addr: SocketAddr,
    /// The admin port's address (`/stats`, `/metrics`), unless it is off.
    pub admin_addr: Option<SocketAddr>,
    hub: Arc<Hub>,
    store: Store,
    shutdown: CancellationToken,
}

impl RunningComet {
    /// The counters now.
    pub fn stats(&self) -> CometStatsSnapshot {
        self.hub.stats.snapshot()
    }

    /// Authenticated connections now.
    pub fn conn_count(&self) -> usize {
        self.hub.buckets.conn_count()
    }

    /// Members of `room` on this comet now.
    pub fn room_online(&self, room: &str) -> usize {
        self.hub.buckets.room_online(room)
    }

    /// Stops accepting, closes every connection, waits (a few seconds at most)
    /// for their Disconnect calls, and leaves ZooKeeper.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.hub.buckets.close_all();
        self.hub.tasks.close();
        if tokio::time::timeout(DRAIN, self.hub.tasks.wait()).await.is_err() {
            tracing::warn!("comet tasks still running after {DRAIN:?}; leaving them");
        }
        if let Err(e) = discovery::unregister(&self.store, InstanceKind::Comet, &self.server_id).await {
            tracing::warn!(error = %e, "leaving ZooKeeper failed");
        }
        self.store.close().await;
        tracing::info!(id = %self.server_id, stats = ?self.hub.stats.snapshot(), "comet stopped");
    }
}

/// Binds every listener, registers in ZooKeeper and starts serving.
///
/// # Errors
/// An invalid config, a port in use, ZooKeeper unreachable, a bad certificate.
pub async fn start(config: CometConfig) -> Result<RunningComet, CometError> {
    config.validate()?;
    let tcp = bind("TCP clients", &config.tcp.listen).await?;
    let ws = bind("WebSocket clients", &config.websocket.listen).await?;
    let wss = if config.wss_enabled() {
        Some((
            bind("WSS clients", &config.websocket.tls_listen).await?,
            tls::acceptor(&config.websocket.cert, &config.websocket.key)?,
        ))
    } else {
        None
    };
    let grpc = bind("gRPC", &config.grpc.listen).await?;
    let admin = admin_http::bind(&config.admin_listen)
        .await
        .map_err(|source| CometError::Bind {
            what: "the admin port",
            addr: config.admin_listen.clone(),
            source,
        })?;
    let admin_addr = match &admin {
        Some(l) => Some(local(l)?),
        None => None,
    };
    let (tcp_addr, ws_addr, grpc_addr) = (local(&tcp)?, local(&ws)?, local(&grpc)?);
    let wss_addr = match &wss {
        Some((l, _)) => Some(local(l)?),
        None => None,
    };
    let server_id = if config.server_id.is_empty() {
        format!("{}-{}", hostname(), tcp_addr.port())
    } else {
        config.server_id.clone()
    };

    let store = Store::connect(&config.zk).await?;
    let shutdown = CancellationToken::new();
    let link = LogicLink::follow(store.clone(), &config.logic, shutdown.clone());
    let hub = Arc::new(Hub::new(
        server_id.clone(),
        config.bucket.size,
        link,
        config.protocol.clone(),
    ));
    let template = Instance {
        id: server_id.clone(),
        grpc: if config.grpc.advertise.is_empty() {
            reachable(grpc_addr).to_string()
        } else {
            config.grpc.advertise.clone()
        },
        addrs: if config.addrs.is_empty() {
            vec![reachable(tcp_addr).ip().to_string()]
        } else {
            config.addrs.clone()
        },
        tcp_port: tcp_addr.port(),
        ws_port: ws_addr.port(),
        wss_port: wss_addr.map_or(0, |a| a.port()),
        weight: config.weight,
        offline: config.offline,
        region: config.region.clone(),
        ..Instance::default()
    };
    if let Err(e) = registration::register(&store, &hub, &template).await {
        shutdown.cancel();
        store.close().await;
        return Err(e.into());
    }

    // One limit for every client listener, within the open-file limit: past
    // it a client is closed at once instead of waiting unaccepted.
    let max = crate::libs::fd_limit::cap_clients(config.max_connections, "max_connections");
    let limit = Arc::new(tokio::sync::Semaphore::new(max));
    let tasks = &hub.tasks;
    tasks.spawn(tcp::accept_loop(
        hub.clone(),
        tcp,
        limit.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(websocket::accept_loop(
        hub.clone(),
        ws,
        None,
        limit.clone(),
        shutdown.clone(),
    ));
    if let Some((listener, acceptor)) = wss {
        tasks.spawn(websocket::accept_loop(
            hub.clone(),
            listener,
            Some(acceptor),
            limit.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(grpc::serve(hub.clone(), grpc, shutdown.clone()));
    if let Some(listener) = admin {
        tasks.spawn(admin_http::serve(listener, hub.clone(), shutdown.clone()));
    }
    tasks.spawn(registration::refresh_loop(
        store.clone(),
        hub.clone(),
        template,
        config.register_interval,
        shutdown.clone(),
    ));
    tasks.spawn(resync::follow_failovers(
        store.clone(),
        hub.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(online::report_loop(
        hub.clone(),
        config.logic.online_interval,
        shutdown.clone(),
    ));
    tracing::info!(
        id = %server_id, tcp = %tcp_addr, ws = %ws_addr, wss = ?wss_addr, grpc = %grpc_addr,
        admin = ?admin_addr, "comet serving"
    );
    Ok(RunningComet {
        server_id,
        tcp_addr,
        ws_addr,
        wss_addr,
        grpc_addr,
        admin_addr,
        hub,
        store,
        shutdown,
    })
}

/// Runs a comet until `shutdown` is cancelled, then stops it cleanly.
///
/// # Errors
/// As [`start`].
pub async fn run(config: CometConfig, shutdown: CancellationToken) -> Result<(), CometError> {
    let comet = start(config).await?;
    shutdown.cancelled().await;
    comet.shutdown().await;
    Ok(())
}

/// Runs a comet until SIGINT or SIGTERM.
///
/// # Errors
/// As [`start`].
pub async fn run_until_signal(config: CometConfig) -> Result<(), CometError> {
    run(config, crate::libs::shutdown::on_signal()).await
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, CometError> {
    TcpListener::bind(addr).await.map_err(|source| CometError::Bind {
        what,
        addr: addr.to_string(),
        source,
    })
}

fn local(l: &TcpListener) -> Result<SocketAddr, CometError> {
    l.local_addr().map_err(|source| CometError::Bind {
        what: "a listener's address",
        addr: String::new(),
        source,
    })
}

/// `addr` with an unspecified IP (0.0.0.0, ::) replaced by 127.0.0.1.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// This machine's name (goim's server id), or "localhost".
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
