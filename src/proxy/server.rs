//! The proxy's life cycle: bind, join ZooKeeper, follow the topology, start the
//! data-plane workers, and shut down cleanly.
//!
//! Start-up order matters: the listener is bound first (a busy port fails fast),
//! then every worker applies the first topology snapshot *before* the proxy
//! registers in ZooKeeper, so a registered proxy always routes correctly.
//! Shutdown runs in reverse: stop accepting, let sessions drain their in-flight
//! requests (bounded by `drain_timeout`), remove the ZooKeeper node, close the
//! session. ZooKeeper, the admin endpoint and stats sampling run on the caller's
//! runtime; client traffic runs on the workers ([`super::worker`]).

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::ack;
use super::admin;
use super::backend::BackendOptions;
use super::config::ProxyConfig;
use super::context::Context;
use super::error::ProxyError;
use super::lease;
use super::observer::{self, ObserverConfig};
use super::router::Router;
use super::worker::{self, Worker, WorkerSpec};
use crate::libs::fd_limit;
use crate::libs::protocol::Protocol;
use crate::libs::reachable::DownAfter;
use crate::topo::model::ProxyInfo;
use crate::topo::{Store, Topology, watcher};

/// A proxy that is listening: its addresses are known, it has not started yet.
pub struct Bound {
    listener: TcpListener,
    admin: TcpListener,
    config: ProxyConfig,
}

impl Bound {
    /// Binds the RESP and admin listeners.
    ///
    /// # Errors
    /// Either address cannot be bound.
    pub async fn bind(config: ProxyConfig) -> Result<Bound, ProxyError> {
        let bind = |addr: String| async move {
            TcpListener::bind(&addr)
                .await
                .map_err(|source| ProxyError::Bind { addr, source })
        };
        let listener = bind(config.listen.clone()).await?;
        let admin = bind(config.admin_listen.clone()).await?;
        Ok(Bound {
            listener,
            admin,
            config,
        })
    }

    /// The RESP address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin HTTP address actually bound.
    pub fn admin_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.admin.local_addr()
    }

    /// Runs the proxy until `cancel` fires, then shuts down cleanly.
    ///
    /// # Errors
    /// ZooKeeper is unreachable or the product is not initialised at start.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), ProxyError> {
        let Bound {
            listener,
            admin,
            mut config,
        } = self;
        // With port 0, advertise the port actually bound.
        if let Ok(addr) = listener.local_addr() {
            config.listen = addr.to_string();
        }
        let admin_addr = admin.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let listener = listener.into_std().map_err(|source| ProxyError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        let store = Store::connect(&config.zk).await?;
        let topo_stop = cancel.child_token();
        let loaded_at = Instant::now();
        let topo = watcher::watch(store.clone(), topo_stop.clone()).await?;
        let opts = BackendOptions {
            auth: (!config.backend_auth.is_empty()).then(|| config.backend_auth.clone()),
            connect_timeout: config.backend_connect_timeout,
            track_id: false,
            protocol: Protocol::Resp2,
            replica_ack: config.replica_ack(),
            busy_after: (!config.busy_reply_threshold.is_zero()).then_some(config.busy_reply_threshold),
            probe: true,
        };
        // Clients past the fd limit would hang in the accept queue: refuse
        // them with an error instead, as past max_clients.
        config.max_clients = fd_limit::cap_clients(config.max_clients, "max_clients");
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let first = Context::new(
            config.clone(),
            Router::new(&config.proxy_id(), opts, config.backend_conns),
        );
        let (contexts, mut workers) = spawn_workers(&listener, &first, threads, &topo, &cancel)?;
        drop(listener);
        // Register only once every worker routes by the current topology.
        for w in &mut workers {
            let _ = (&mut w.ready).await;
        }
        // The reads just done prove the session alive as of `loaded_at`: grant the
        // first lease from there, then keep it renewed.
        let timeout = lease::session_timeout(&store);
        first.lease.extend(loaded_at + timeout * 2 / 3);
        spawn_keepers(&store, &first, &contexts, &topo, &topo_stop);
        let admin_task = tokio::spawn(admin::serve(admin, contexts, cancel.clone()));
        let info = proxy_info(&first, admin_addr);
        let node = store.paths().proxy(&info.id);
        let data = serde_json::to_vec(&info).unwrap_or_default();
        store.register_ephemeral(&node, data).await?;
        tracing::info!(id = %info.id, addr = %info.addr, admin = %info.admin_addr, threads, "proxy online");

        cancel.cancelled().await;
        tracing::info!("draining sessions");
        for w in workers {
            let _ = w.done.await;
        }
        if let Err(e) = store.unregister_ephemeral(&node).await {
            tracing::warn!(error = %e, "could not remove the proxy node");
        }
        topo_stop.cancel();
        store.close().await;
        admin_task.abort();
        tracing::info!("proxy stopped");
        Ok(())
    }
}

/// Starts `threads` workers accepting on clones of `listener`. Each gets a
/// router of its own, since its backend connections must live on its own
/// runtime; they share one client limit.
fn spawn_workers(
    listener: &std::net::TcpListener,
    first: &Context,
    threads: usize,
    topo: &watch::Receiver<Arc<Topology>>,
    cancel: &CancellationToken,
) -> Result<(Vec<Arc<Context>>, Vec<Worker>), ProxyError> {
    let clients = Arc::new(Semaphore::new(first.config.max_clients));
    let mut contexts = Vec::with_capacity(threads);
    let mut workers = Vec::with_capacity(threads);
    for index in 0..threads {
        let ctx = Arc::new(first.with_router(first.router.sibling(index == 0)));
        let listener = listener.try_clone().map_err(|source| ProxyError::Bind {
            addr: first.config.listen.clone(),
            source,
        })?;
        let spec = WorkerSpec {
            index,
            listener,
            ctx: ctx.clone(),
            topo: topo.clone(),
            clients: clients.clone(),
            cancel: cancel.clone(),
        };
        workers.push(worker::spawn(spec).map_err(ProxyError::Worker)?);
        contexts.push(ctx);
    }
    Ok((contexts, workers))
}

/// Starts what keeps a running proxy in step with ZooKeeper and its backends,
/// until `stop`: the lease renewal, the action acknowledgements, the masters'
/// observer (for failover) and the ops sampling.
fn spawn_keepers(
    store: &Store,
    first: &Context,
    contexts: &[Arc<Context>],
    topo: &watch::Receiver<Arc<Topology>>,
    stop: &CancellationToken,
) {
    let config = &first.config;
    tokio::spawn(lease::keep(
        store.clone(),
        first.lease.clone(),
        contexts.to_vec(),
        stop.clone(),
    ));
    tokio::spawn(ack::run(
        store.clone(),
        topo.clone(),
        contexts.to_vec(),
        first.proxy_id.clone(),
        stop.clone(),
    ));
    tokio::spawn(observer::run(
        store.clone(),
        topo.clone(),
        ObserverConfig {
            id: first.proxy_id.clone(),
            interval: config.master_check_interval,
            down_after: DownAfter {
                unreachable: config.master_down_after,
                busy: config.master_busy_down_after,
            },
            auth: (!config.backend_auth.is_empty()).then(|| config.backend_auth.clone()),
        },
        stop.clone(),
    ));
    tokio::spawn(first.stats.clone().sample_ops());
}

/// The node a running proxy registers in ZooKeeper.
fn proxy_info(first: &Context, admin_addr: String) -> ProxyInfo {
    ProxyInfo {
        id: first.proxy_id.clone(),
        addr: first.config.advertised(),
        admin_addr,
        pid: std::process::id(),
        pid_space: crate::libs::pid_space::current().to_string(),
        start_time: crate::libs::clock::unix_secs(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        write_ack: first.config.write_ack,
    }
}

/// Binds and runs a proxy until `cancel` fires.
///
/// # Errors
/// See [`Bound::bind`] and [`Bound::run`].
pub async fn run(config: ProxyConfig, cancel: CancellationToken) -> Result<(), ProxyError> {
    Bound::bind(config).await?.run(cancel).await
}
