//! `reborn dashboard`: the long-running service that operators (and `reborn
//! admin`) talk to over HTTP, one leader per product.
//!
//! * [`config`]: the TOML config and the flags.
//! * [`access`]: who may use the API (`[auth]`: the bearer token; loopback
//!   only without one).
//! * [`leader`]: who leads, through an ephemeral ZooKeeper node; standbys wait
//!   and take over; a leader that may have lost its session steps down.
//! * [`client`]: the HTTP client `reborn admin` calls the API with.
//! * [`address`]: where the leader is, from its node in ZooKeeper.
//! * [`error`]: why the dashboard could not start or had to stop.
//!
//! The HTTP API itself is [`crate::topo::manager::api`], served through the
//! shared role service (`libs::listener`). The listener is bound before anything
//! else ([`BoundDashboard`]), so the address is known (port 0 works, for tests) and a
//! taken port fails at once. It serves the whole time: a leader answers every
//! endpoint, a standby answers `GET /api/dashboard` and 503 with the leader's
//! address for the rest, so an operator who reaches the wrong process learns
//! where to go instead of finding a closed port. The migration tasks
//! ([`crate::topo::manager::runner`]) run only within a leadership term and write
//! on that term's session, so their writes fail once the session has expired.
//!
//! Imports `libs`, the topo core and the manager.

pub mod access;
pub mod address;
pub mod client;
pub mod config;
pub mod error;
pub mod leader;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::libs::listener::{Drain, Listener};
use crate::topo::error::TopoError;
use crate::topo::lock::host_name;
use crate::topo::manager::api::{self, ApiState};
use crate::topo::store::Store;

pub use config::{DEFAULT_LISTEN, DashboardArgs, DashboardConfig};
pub use error::DashboardError;
pub use leader::{DashboardInfo, Leadership};

/// How long the HTTP server may take to finish its requests after a stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a dashboard until SIGINT/SIGTERM.
///
/// # Errors
/// As [`run`].
pub async fn run_until_signal(config: DashboardConfig) -> Result<(), DashboardError> {
    run(config, crate::libs::shutdown::on_signal()).await
}

/// Binds the listener, then runs until `cancel` is cancelled.
///
/// # Errors
/// The address cannot be bound; ZooKeeper is unreachable or the product is not
/// initialized; with `standby = false`, another dashboard leads.
pub async fn run(config: DashboardConfig, cancel: CancellationToken) -> Result<(), DashboardError> {
    BoundDashboard::bind(config).await?.run(cancel).await
}

/// A dashboard whose HTTP listener is bound but which does not run yet.
pub struct BoundDashboard {
    config: DashboardConfig,
    listener: TcpListener,
    addr: SocketAddr,
}

impl BoundDashboard {
    /// Binds `config.listen`.
    ///
    /// # Errors
    /// [`DashboardError::Bind`] naming the address; an invalid config;
    /// [`DashboardError::Exposed`] for a non-loopback address without a token.
    pub async fn bind(config: DashboardConfig) -> Result<BoundDashboard, DashboardError> {
        config.validate()?;
        let bind_err = |source| DashboardError::Bind {
            addr: config.listen.clone(),
            source,
        };
        let listener = TcpListener::bind(&config.listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        // Checked on the bound address, so a host name is judged by what it
        // resolved to.
        config.auth.check_exposure(addr)?;
        Ok(BoundDashboard {
            config,
            listener,
            addr,
        })
    }

    /// The address the API listens on (the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address published to ZooKeeper: `advertise`, else the bound address,
    /// with this host's name instead of an unspecified IP (0.0.0.0 reaches
    /// nobody from elsewhere).
    pub fn advertised(&self) -> String {
        if !self.config.advertise.is_empty() {
            return self.config.advertise.clone();
        }
        if self.addr.ip().is_unspecified() {
            return format!("{}:{}", host_name(), self.addr.port());
        }
        self.addr.to_string()
    }

    /// Connects to ZooKeeper, serves the API and campaigns for the leadership
    /// until `cancel`; then resigns, drains the HTTP server and closes the
    /// session.
    ///
    /// # Errors
    /// As [`run`].
    pub async fn run(self, cancel: CancellationToken) -> Result<(), DashboardError> {
        let store = Store::connect(&self.config.zk).await?;
        let result = self.serve(&store, cancel).await;
        store.close().await;
        result
    }

    async fn serve(self, store: &Store, cancel: CancellationToken) -> Result<(), DashboardError> {
        // A dashboard for a product nobody created would lead nothing.
        if !store.exists(&store.paths().slots()).await? {
            return Err(TopoError::NotInitialized {
                product: store.paths().product_name().to_string(),
            }
            .into());
        }
        let me = DashboardInfo::for_this_process(self.advertised());
        let (role_tx, role_rx) = watch::channel(Leadership::Standby { leader: None });
        let state = Arc::new(ApiState {
            store: store.clone(),
            me: me.clone(),
            role: role_rx,
            backend_auth: (!self.config.backend_auth.is_empty()).then(|| self.config.backend_auth.clone()),
            tasks_changed: Arc::default(),
            traffic: Arc::default(),
        });
        let stop_http = CancellationToken::new();
        let app = access::protect(api::router(state.clone()), &self.config.auth);
        let mut http = tokio::spawn(
            Listener::new(self.listener)
                .grace(DRAIN_TIMEOUT)
                .serve_http(app, stop_http.clone()),
        );
        tracing::info!(
            "dashboard of product {:?} listening on http://{}",
            store.paths().product_name(),
            self.addr
        );
        let mut migration = self.config.migration.clone();
        if !self.config.backend_auth.is_empty() {
            migration.auth = Some(self.config.backend_auth.clone());
        }
        let runner = tokio::spawn(while_leading(state.role.clone(), cancel.clone(), {
            let (store, changed) = (store.clone(), state.tasks_changed.clone());
            move |term| {
                crate::topo::manager::runner::run(store.clone(), migration.clone(), changed.clone(), term)
            }
        }));
        let failover = tokio::spawn(while_leading(state.role.clone(), cancel.clone(), {
            let store = store.clone();
            let cfg = self.config.failover.clone();
            let auth = state.backend_auth.clone();
            move |term| {
                crate::topo::manager::failover::run(
                    store.clone(),
                    cfg.clone(),
                    auth.clone(),
                    crate::topo::action::DEFAULT_ACK_TIMEOUT,
                    term,
                )
            }
        }));
        // Sampled whether this dashboard leads or not: a standby's web UI
        // shows the chart too, and a new leader has history at once.
        let traffic = tokio::spawn(state.traffic.clone().run(store.clone(), cancel.clone()));
        let campaign = leader::Campaign {
            store: store.clone(),
            me,
            standby: self.config.standby,
            role: role_tx,
        };
        let outcome = tokio::select! {
            result = campaign.run(cancel) => result,
            joined = &mut http => {
                let why = match joined {
                    Ok(Ok(_)) => "it returned".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(DashboardError::Serve(why));
            }
        };
        runner.abort();
        failover.abort();
        traffic.abort();
        stop_http.cancel();
        if let Ok(Ok(Drain::TimedOut { .. })) = http.await {
            tracing::warn!("the dashboard API did not drain within {DRAIN_TIMEOUT:?}; closing it");
        }
        outcome
    }
}

/// Runs `job` (the migration tasks of [`crate::topo::manager::runner`], the
/// automatic failover of [`crate::topo::manager::failover`]) during every
/// leadership term of this dashboard, and stops it the moment the term ends:
/// two dashboards must never drive the same task or fail over the same group.
async fn while_leading<F, Fut>(mut role: watch::Receiver<Leadership>, stop: CancellationToken, job: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // A job that returned because `stop` ended its term is not started again.
    while !stop.is_cancelled() {
        while !matches!(*role.borrow_and_update(), Leadership::Leader) {
            tokio::select! {
                changed = role.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
        }
        let term = stop.child_token();
        let tasks = job(term.clone());
        tokio::pin!(tasks);
        loop {
            tokio::select! {
                _ = &mut tasks => break,
                changed = role.changed() => {
                    if changed.is_err() || !matches!(*role.borrow(), Leadership::Leader) {
                        term.cancel();
                        (&mut tasks).await;
                        break;
                    }
                }
            }
        }
    }
}
