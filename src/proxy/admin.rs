//! The proxy's admin HTTP endpoint (default 127.0.0.1:11080):
//!
//! * `GET /stats`: JSON: ops/s, per-command calls and errors, latency
//!   percentiles and histogram, sessions, backends and the routing state;
//! * `GET /metrics`: the same counters in Prometheus text format;
//! * `PUT /loglevel/{level}`: change the log filter at run time (`debug`,
//!   `reborn=trace`, …); a filter that is not levels or `target=level`
//!   directives (`degub`) gets 400 with the reason, and the filter stays.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::stats::StatsSnapshot;
use crate::libs::listener::Listener;
use crate::libs::logging;
use crate::libs::prometheus::{self, Exposition, MetricKind};

/// One backend as `/stats` shows it.
#[derive(Serialize)]
struct BackendStats {
    addr: String,
    up: bool,
    last_error: String,
}

/// The `/stats` document.
#[derive(Serialize)]
struct ProxyStats {
    id: String,
    product: String,
    version: &'static str,
    online: bool,
    routing_epoch: u64,
    #[serde(flatten)]
    stats: StatsSnapshot,
    backends: Vec<BackendStats>,
}

/// Stats of the whole proxy: counters are shared, routes are the same in every
/// worker, backends are listed once per address (up only if up in every worker).
fn collect(workers: &[Arc<Context>]) -> ProxyStats {
    let mut backends: std::collections::BTreeMap<String, BackendStats> = Default::default();
    for ctx in workers {
        for (addr, pool) in ctx.router.pools() {
            let b = backends.entry(addr.clone()).or_insert(BackendStats {
                addr,
                up: true,
                last_error: String::new(),
            });
            b.up &= pool.up_count() > 0;
            if b.last_error.is_empty() {
                b.last_error = pool.last_error();
            }
        }
    }
    let (id, product, online, epoch, stats) = match workers.first() {
        Some(ctx) => {
            let routes = ctx.router.routes();
            (
                ctx.proxy_id.clone(),
                ctx.config.zk.product.clone(),
                routes.online,
                routes.epoch,
                ctx.stats.snapshot(),
            )
        }
        None => (String::new(), String::new(), false, 0, Default::default()),
    };
    ProxyStats {
        id,
        product,
        version: env!("CARGO_PKG_VERSION"),
        online,
        routing_epoch: epoch,
        stats,
        backends: backends.into_values().collect(),
    }
}

async fn stats(State(ctx): State<Workers>) -> Json<ProxyStats> {
    Json(collect(&ctx))
}

async fn metrics(State(ctx): State<Workers>) -> impl IntoResponse {
    let s = collect(&ctx);
    let st = &s.stats;
    let series: [(&str, &str, MetricKind, u64); 15] = [
        (
            "ops_total",
            "Requests answered.",
            MetricKind::Counter,
            st.ops_total,
        ),
        (
            "ops_per_second",
            "Requests answered in the last second.",
            MetricKind::Gauge,
            st.ops_per_sec,
        ),
        (
            "errors_total",
            "Error replies sent.",
            MetricKind::Counter,
            st.errors_total,
        ),
        (
            "protocol_errors_total",
            "Connections closed for malformed input.",
            MetricKind::Counter,
            st.protocol_errors,
        ),
        (
            "pubsub_overflows_total",
            "Pub/sub clients disconnected for not reading their messages.",
            MetricKind::Counter,
            st.pubsub_overflows,
        ),
        (
            "output_limit_kills_total",
            "Clients disconnected past client_output_limit unread bytes.",
            MetricKind::Counter,
            st.output_limit_kills,
        ),
        (
            "output_memory_refusals_total",
            "Requests refused while client buffers were over max_output_memory.",
            MetricKind::Counter,
            st.output_memory_refusals,
        ),
        (
            "busy_replies_total",
            "Requests answered BUSY by the proxy while another client's script ran past busy_reply_threshold on their server.",
            MetricKind::Counter,
            st.busy_replies,
        ),
        (
            "output_memory_bytes",
            "Bytes of replies waiting in client buffers whose sockets are full.",
            MetricKind::Gauge,
            st.output_memory_bytes,
        ),
        (
            "sessions",
            "Connected clients.",
            MetricKind::Gauge,
            st.sessions_alive,
        ),
        (
            "sessions_total",
            "Clients accepted.",
            MetricKind::Counter,
            st.sessions_total,
        ),
        (
            "sessions_refused_total",
            "Clients refused at max_clients.",
            MetricKind::Counter,
            st.sessions_refused,
        ),
        (
            "auth_failures_total",
            "Failed AUTHs (each slows its connection; the tenth closes it).",
            MetricKind::Counter,
            st.auth_failures,
        ),
        (
            "auth_timeouts_total",
            "Clients closed for not giving the password within auth_timeout.",
            MetricKind::Counter,
            st.auth_timeouts,
        ),
        (
            "online",
            "1 when the proxy serves data commands.",
            MetricKind::Gauge,
            u64::from(s.online),
        ),
    ];
    let mut page = Exposition::new();
    for (name, help, kind, value) in series {
        page.single(&format!("reborn_proxy_{name}"), help, kind, value);
    }
    let l = &st.latency_us;
    let quantiles = [("0.5", l.p50), ("0.9", l.p90), ("0.99", l.p99), ("0.999", l.p999)];
    let name = "reborn_proxy_latency_us";
    page.family(
        name,
        "Request latency percentiles in microseconds.",
        MetricKind::Gauge,
    );
    for (q, v) in quantiles {
        page.sample(name, &[("quantile", q)], v);
    }
    let name = "reborn_proxy_command_calls_total";
    page.family(name, "Calls per command.", MetricKind::Counter);
    for c in &st.commands {
        page.sample(name, &[("cmd", &c.name)], c.calls);
    }
    let name = "reborn_proxy_command_errors_total";
    page.family(name, "Error replies per command.", MetricKind::Counter);
    for c in &st.commands {
        page.sample(name, &[("cmd", &c.name)], c.errors);
    }
    let name = "reborn_proxy_backend_up";
    page.family(name, "1 when the backend connection is up.", MetricKind::Gauge);
    for b in &s.backends {
        page.sample(name, &[("addr", &b.addr)], u64::from(b.up));
    }
    ([("content-type", prometheus::CONTENT_TYPE)], page.finish())
}

async fn loglevel(Path(level): Path<String>) -> impl IntoResponse {
    match logging::set_level(&level) {
        Ok(()) => (StatusCode::OK, format!("log level set to {level}\n")),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// How long the admin endpoint finishes its requests after a stop.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// The contexts of every worker.
type Workers = Arc<Vec<Arc<Context>>>;

/// Serves the admin API on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, workers: Vec<Arc<Context>>, cancel: CancellationToken) {
    let app = Router::new()
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/loglevel/{level}", put(loglevel).post(loglevel))
        .with_state(Arc::new(workers));
    let served = Listener::new(listener)
        .grace(ADMIN_GRACE)
        .serve_http(app, cancel)
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "admin http stopped");
    }
}
