//! The admin port of comet and job (`admin_listen`): `GET /stats` (JSON) and
//! `GET /metrics` (Prometheus), so an operator sees connections, pushes and
//! every drop of the push system as they see the proxy's. Served as every
//! HTTP port of reborn is (`libs::listener`: header timeout, drain, no
//! cross-origin requests). Logic has no port of its own for this: its push
//! API carries `/metrics`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::libs::listener::Listener;
use crate::libs::prometheus::CONTENT_TYPE;

/// How long the admin port finishes its requests after a stop.
const GRACE: Duration = Duration::from_secs(1);

/// What a role shows on its admin port.
pub trait AdminReport: Send + Sync + 'static {
    /// The `/stats` document.
    fn stats(&self) -> serde_json::Value;
    /// The `/metrics` page.
    fn metrics(&self) -> String;
}

/// Binds `addr`, or nothing when it is empty (the port is off).
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(addr: &str) -> io::Result<Option<TcpListener>> {
    if addr.is_empty() {
        return Ok(None);
    }
    TcpListener::bind(addr).await.map(Some)
}

/// Serves `report` on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, report: Arc<dyn AdminReport>, cancel: CancellationToken) {
    let app = Router::new()
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .with_state(report);
    let served = Listener::new(listener).grace(GRACE).serve_http(app, cancel).await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "admin http stopped");
    }
}

async fn stats(State(r): State<Arc<dyn AdminReport>>) -> impl IntoResponse {
    axum::Json(r.stats())
}

async fn metrics(State(r): State<Arc<dyn AdminReport>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], r.metrics())
}
