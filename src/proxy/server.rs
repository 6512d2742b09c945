//! The proxy's life cycle: bind, join ZooKeeper, follow the topology, accept
//! clients, and shut down cleanly.
//!
//! Start-up order matters: the listener is bound first (a busy port fails fast),
//! then the first topology snapshot is applied *before* the proxy registers in
//! ZooKeeper, so a registered proxy always routes correctly. Shutdown runs in
//! reverse: stop accepting, let sessions drain their in-flight requests (bounded
//! by `drain_timeout`), remove the ZooKeeper node, close the session.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admin;
use super::backend::BackendOptions;
use super::config::ProxyConfig;
use super::context::Context;
use super::error::ProxyError;
use super::router::Router;
use super::session;
use crate::libs::backoff::Backoff;
use crate::topo::model::ProxyInfo;
use crate::topo::{Store, watcher};

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
        let store = Store::connect(&config.zk).await?;
        let topo_stop = cancel.child_token();
        let mut topo = watcher::watch(store.clone(), topo_stop.clone()).await?;
        let opts = BackendOptions {
            auth: (!config.backend_auth.is_empty()).then(|| config.backend_auth.clone()),
            connect_timeout: config.backend_connect_timeout,
        };
        let router = Router::new(&config.proxy_id(), opts, config.backend_conns);
        router.apply(&topo.borrow_and_update());
        let ctx = Arc::new(Context::new(config, router));
        tokio::spawn(ctx.stats.clone().sample_ops());

        let follow_ctx = ctx.clone();
        tokio::spawn(async move {
            while topo.changed().await.is_ok() {
                let snapshot = topo.borrow_and_update().clone();
                follow_ctx.router.apply(&snapshot);
            }
        });

        let admin_task = tokio::spawn(admin::serve(admin, ctx.clone(), cancel.clone()));
        let info = ProxyInfo {
            id: ctx.proxy_id.clone(),
            addr: ctx.config.advertised(),
            admin_addr,
            pid: std::process::id(),
            start_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let node = store.paths().proxy(&info.id);
        let data = serde_json::to_vec(&info).unwrap_or_default();
        store.register_ephemeral(&node, data).await?;
        tracing::info!(id = %info.id, addr = %info.addr, admin = %info.admin_addr, "proxy online");

        let sessions = TaskTracker::new();
        accept_loop(&listener, &ctx, &sessions, &cancel).await;
        drop(listener);

        tracing::info!("draining sessions");
        sessions.close();
        if tokio::time::timeout(ctx.config.drain_timeout, sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: closing remaining sessions");
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

async fn accept_loop(
    listener: &TcpListener,
    ctx: &Arc<Context>,
    sessions: &TaskTracker,
    cancel: &CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(ctx.config.max_clients));
    let mut backoff = Backoff::new(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_secs(1),
    );
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = cancel.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            ctx.stats
                .sessions_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(refuse(stream));
            continue;
        };
        let ctx = ctx.clone();
        let shutdown = cancel.clone();
        sessions.spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            ctx.stats.sessions_total.fetch_add(1, Relaxed);
            ctx.stats.sessions_alive.fetch_add(1, Relaxed);
            session::serve(stream, ctx.clone(), shutdown).await;
            ctx.stats.sessions_alive.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
}

async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
    let _ = stream.shutdown().await;
}

/// Binds and runs a proxy until `cancel` fires.
///
/// # Errors
/// See [`Bound::bind`] and [`Bound::run`].
pub async fn run(config: ProxyConfig, cancel: CancellationToken) -> Result<(), ProxyError> {
    Bound::bind(config).await?.run(cancel).await
}
