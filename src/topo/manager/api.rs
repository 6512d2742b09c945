//! The dashboard's HTTP JSON API (axum), served by `reborn dashboard`.
//!
//! Reads load the product from ZooKeeper per request, so a client always reads
//! its own writes. Every write goes through [`crate::topo::operation`] (product lock,
//! validation of everything before writing, compare-and-set), so the API adds no
//! rule of its own and a refused request leaves ZooKeeper untouched. Errors are
//! `{"error": "…"}` with a status from the [`TopoError`] variant: 400 refused
//! input, 404 missing, 409 conflicting state, 503 ZooKeeper or leadership
//! unavailable. Only the leader serves; a standby answers 503 with
//! `"leader": "host:port"`, except `GET /api/dashboard`, which every dashboard
//! answers. With a token configured, a call without it is refused with 401
//! before it gets here ([`super::dashboard::access`]). The table of endpoints
//! is in README.md.
//!
//! Imports `libs` and `topo`.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::dashboard::leader::{DashboardInfo, Leadership};
use super::failover;
use super::health::{self, Health};
use super::rebalance::{self, Plan, Weights, WeightsError};
use super::replication;
use super::server_info::{self, ServerInfo};
use super::task::{self, Task};
use super::traffic::{Traffic, TrafficView};
use crate::topo::error::TopoError;
use crate::topo::model::{FailoverRecord, GroupId, ProxyInfo, Role, Server, SlotTable, Topology};
use crate::topo::operation;
use crate::topo::store::Store;
use crate::topo::watcher;

/// What the handlers share.
pub struct ApiState {
    /// The dashboard's ZooKeeper store.
    pub store: Store,
    /// This dashboard, as it publishes itself.
    pub me: DashboardInfo,
    /// Whether it leads now.
    pub role: watch::Receiver<Leadership>,
    /// Password of the product's redis-servers (promote talks to them).
    pub backend_auth: Option<String>,
    /// Wakes this dashboard's task runner when a task is queued or resumed,
    /// instead of leaving it to its next look.
    pub tasks_changed: Arc<tokio::sync::Notify>,
    /// The proxies' figures of the last ten minutes, for the web UI.
    pub traffic: Arc<Traffic>,
}

type Shared = Arc<ApiState>;

/// The API's routes.
pub fn router(state: Shared) -> Router {
    let leader_only = Router::new()
        .route("/api/topology", get(topology))
        .route("/api/groups", get(groups).post(create_group))
        .route("/api/groups/{id}", axum::routing::delete(remove_group))
        .route("/api/groups/{id}/servers", post(add_server))
        .route(
            "/api/groups/{id}/servers/{addr}",
            axum::routing::delete(remove_server),
        )
        .route("/api/slots", get(slots))
        .route("/api/slots/assign", post(assign_slots))
        .route("/api/proxies", get(proxies))
        .route("/api/proxies/{id}/online", post(proxy_online))
        .route("/api/proxies/{id}/offline", post(proxy_offline))
        .route("/api/rebalance/plan", get(rebalance_plan))
        .route("/api/rebalance", post(rebalance_apply))
        .route("/api/groups/{id}/promote", post(promote))
        .route("/api/migrate", post(migrate))
        .route("/api/tasks", get(tasks))
        .route("/api/failovers", get(failovers))
        .route("/api/tasks/{id}/cancel", post(cancel_task))
        .route("/api/tasks/{id}/pause", post(pause_task))
        .route("/api/tasks/{id}/resume", post(resume_task))
        .route("/api/servers", get(servers))
        .route("/api/push", get(push))
        .route_layer(middleware::from_fn_with_state(state.clone(), leader_gate));
    Router::new()
        .route("/api/dashboard", get(status))
        .route("/api/loglevel/{level}", axum::routing::put(loglevel))
        .route("/api/stats", get(stats))
        .route("/metrics", get(metrics))
        .merge(leader_only)
        .merge(super::ui::router())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; see the API table in README.md",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .with_state(state)
}

/// An error reply: `{"error": message}` (and `"leader"` from a standby).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    leader: Option<String>,
}

impl ApiError {
    /// An error reply with `status` and `message`.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            leader: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<TopoError> for ApiError {
    fn from(e: TopoError) -> ApiError {
        use TopoError as E;
        let status = match &e {
            E::Invalid(_) => StatusCode::BAD_REQUEST,
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Exists(_)
            | E::State(_)
            | E::Conflict { .. }
            | E::Locked { .. }
            | E::NotInitialized { .. }
            | E::AckTimeout { .. } => StatusCode::CONFLICT,
            E::Unreachable { .. } | E::SessionExpired | E::Closed | E::Zk { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            E::Json { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(leader) = self.leader {
            body["leader"] = leader.into();
        }
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body whose rejection is an [`ApiError`] (400 with serde's message).
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(JsonRejection::MissingJsonContentType(e)) => {
                Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.body_text()))
            }
            // Over axum's body limit (2 MB): what HTTP calls it.
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.body_text()))
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Path parameters whose rejection is an [`ApiError`] (400).
struct Params<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Params(value)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Lets requests through only while this dashboard leads.
async fn leader_gate(State(s): State<Shared>, req: Request, next: Next) -> Response {
    // Cloned so that the borrow of the watch ends before the handler runs.
    let role = s.role.borrow().clone();
    match role {
        Leadership::Leader => next.run(req).await,
        Leadership::Standby { leader } => {
            let (message, leader) = match leader {
                Some(l) => (
                    format!("this dashboard is a standby; the leader is at {}", l.addr),
                    Some(l.addr),
                ),
                None => (
                    "this dashboard is a standby and no dashboard leads right now; retry".into(),
                    None,
                ),
            };
            ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message,
                leader,
            }
            .into_response()
        }
    }
}

/// `GET /api/dashboard`.
#[derive(Serialize)]
struct Status {
    role: &'static str,
    #[serde(rename = "self")]
    me: DashboardInfo,
    leader: Option<DashboardInfo>,
    product: String,
    /// The ZooKeeper connect string this dashboard uses (every member of an
    /// ensemble), so an operator sees which ZooKeeper the cluster lives in.
    zk: String,
}

async fn status(State(s): State<Shared>) -> Json<Status> {
    let role = s.role.borrow().clone();
    let (role, leader) = match role {
        Leadership::Leader => ("leader", Some(s.me.clone())),
        Leadership::Standby { leader } => ("standby", leader),
    };
    Json(Status {
        role,
        me: s.me.clone(),
        leader,
        product: s.store.paths().product_name().to_string(),
        zk: s.store.config().addr.clone(),
    })
}

/// `PUT /api/loglevel/{filter}`: this dashboard's log filter (every dashboard
/// answers; see [`crate::libs::logging::set_level`] for what is accepted).
async fn loglevel(Params(filter): Params<String>) -> Changed {
    crate::libs::logging::set_level(&filter).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(done(StatusCode::OK, format!("log level set to {filter}")))
}

/// The reply to a change: what was done, in `reborn admin`'s words.
#[derive(Serialize, Deserialize, Debug)]
pub struct Done {
    /// e.g. `group 3 created`.
    pub message: String,
}

fn done(status: StatusCode, message: String) -> (StatusCode, Json<Done>) {
    (status, Json(Done { message }))
}

type Changed = Result<(StatusCode, Json<Done>), ApiError>;

async fn load(s: &ApiState) -> Result<Topology, ApiError> {
    Ok(watcher::load(&s.store).await?)
}

async fn topology(State(s): State<Shared>) -> Result<Json<Topology>, ApiError> {
    Ok(Json(load(&s).await?))
}

/// One group in `GET /api/groups`.
#[derive(Serialize, Deserialize, Debug)]
pub struct GroupView {
    /// Group id.
    pub id: GroupId,
    /// Its servers, as stored, each with its health.
    pub servers: Vec<ServerView>,
    /// How many slots it owns.
    pub slots: usize,
}

/// One server in `GET /api/groups`.
#[derive(Serialize, Deserialize, Debug)]
pub struct ServerView {
    /// The server as stored.
    #[serde(flatten)]
    pub server: Server,
    /// What a short probe found just now ([`health`]).
    pub health: Health,
}

async fn groups(State(s): State<Shared>) -> Result<Json<Vec<GroupView>>, ApiError> {
    let topo = load(&s).await?;
    let addrs: Vec<String> = topo
        .groups
        .values()
        .flat_map(|g| &g.servers)
        .map(|x| x.addr.clone())
        .collect();
    let health = health::probe_all(addrs, s.backend_auth.as_deref()).await;
    let views = topo
        .groups
        .values()
        .map(|g| GroupView {
            id: g.id,
            servers: g
                .servers
                .iter()
                .map(|x| ServerView {
                    server: x.clone(),
                    health: health.get(&x.addr).copied().unwrap_or(Health::Down),
                })
                .collect(),
            slots: topo.slots.slots().iter().filter(|x| x.group == g.id).count(),
        })
        .collect();
    Ok(Json(views))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    id: GroupId,
}

async fn create_group(State(s): State<Shared>, Body(b): Body<NewGroup>) -> Changed {
    operation::create_group(&s.store, b.id).await?;
    Ok(done(StatusCode::CREATED, format!("group {} created", b.id)))
}

async fn remove_group(State(s): State<Shared>, Params(id): Params<GroupId>) -> Changed {
    operation::remove_group(&s.store, id).await?;
    Ok(done(StatusCode::OK, format!("group {id} removed")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewServer {
    addr: String,
    /// `master` (the default) or `replica`.
    #[serde(default = "master")]
    role: Role,
    /// Add a replica although it holds keys (see [`replication::admit`]).
    #[serde(default)]
    force: bool,
}

fn master() -> Role {
    Role::Master
}

async fn add_server(
    State(s): State<Shared>,
    Params(id): Params<GroupId>,
    Body(b): Body<NewServer>,
) -> Changed {
    let note = replication::admit(b.addr.trim(), (id, b.role), s.backend_auth.as_deref(), b.force).await?;
    operation::add_server(&s.store, id, &b.addr, b.role).await?;
    let role = match b.role {
        Role::Master => "master",
        Role::Replica => "replica",
    };
    Ok(done(
        StatusCode::CREATED,
        format!("{} added to group {id} as {role}{note}", b.addr.trim()),
    ))
}

async fn remove_server(State(s): State<Shared>, Params((id, addr)): Params<(GroupId, String)>) -> Changed {
    operation::remove_server(&s.store, id, &addr).await?;
    Ok(done(StatusCode::OK, format!("{addr} removed from group {id}")))
}

async fn slots(State(s): State<Shared>) -> Result<Json<SlotTable>, ApiError> {
    Ok(Json(load(&s).await?.slots))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Assign {
    start: u16,
    end: u16,
    /// 0 unassigns.
    group: GroupId,
}

async fn assign_slots(State(s): State<Shared>, Body(b): Body<Assign>) -> Changed {
    operation::assign_slots(&s.store, b.start, b.end, b.group).await?;
    let noun = if b.start == b.end { "slot" } else { "slots" };
    let range = crate::topo::model::range_text(b.start, b.end);
    let message = match b.group {
        0 => format!("{noun} {range} unassigned"),
        g => format!("{noun} {range} assigned to group {g}"),
    };
    Ok(done(StatusCode::OK, message))
}

/// `POST /api/migrate`: move slots `start..=end` to group `to`, with their data.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Migrate {
    start: u16,
    end: u16,
    to: GroupId,
}

async fn migrate(
    State(s): State<Shared>,
    Body(b): Body<Migrate>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    operation::check_slot_range(b.start, b.end)?;
    let task = task::enqueue(&s.store, (b.start..=b.end).collect(), b.to).await?;
    s.tasks_changed.notify_one();
    Ok((StatusCode::CREATED, Json(task)))
}

async fn failovers(State(s): State<Shared>) -> Result<Json<Vec<FailoverRecord>>, ApiError> {
    Ok(Json(failover::list(&s.store).await?))
}

async fn tasks(State(s): State<Shared>) -> Result<Json<Vec<Task>>, ApiError> {
    Ok(Json(task::list(&s.store).await?))
}

async fn pause_task(State(s): State<Shared>, Path(id): Path<u64>) -> Result<Json<Task>, ApiError> {
    Ok(Json(task::set_paused(&s.store, id, true).await?))
}

async fn resume_task(State(s): State<Shared>, Path(id): Path<u64>) -> Result<Json<Task>, ApiError> {
    let task = task::set_paused(&s.store, id, false).await?;
    s.tasks_changed.notify_one();
    Ok(Json(task))
}

async fn cancel_task(State(s): State<Shared>, Path(id): Path<u64>) -> Result<Json<Task>, ApiError> {
    Ok(Json(task::cancel(&s.store, id).await?))
}

/// One proxy in `GET /api/proxies`: every live proxy, and every id set offline.
#[derive(Serialize, Deserialize, Debug)]
pub struct ProxyView {
    /// Proxy id.
    pub id: String,
    /// False when an operator set it offline.
    pub online: bool,
    /// True while its ephemeral node exists.
    pub running: bool,
    /// What it publishes, while running.
    pub info: Option<ProxyInfo>,
}

async fn proxies(State(s): State<Shared>) -> Result<Json<Vec<ProxyView>>, ApiError> {
    let topo = load(&s).await?;
    let mut ids: Vec<&String> = topo.proxies.keys().chain(topo.offline_proxies.iter()).collect();
    ids.sort();
    ids.dedup();
    let views = ids
        .into_iter()
        .map(|id| ProxyView {
            id: id.clone(),
            online: !topo.offline_proxies.contains(id),
            running: topo.proxies.contains_key(id),
            info: topo.proxies.get(id).cloned(),
        })
        .collect();
    Ok(Json(views))
}

async fn proxy_online(State(s): State<Shared>, Params(id): Params<String>) -> Changed {
    let marked = operation::set_proxy_online(&s.store, &id, true).await?;
    Ok(done(StatusCode::OK, marked.to_string()))
}

async fn proxy_offline(State(s): State<Shared>, Params(id): Params<String>) -> Changed {
    let marked = operation::set_proxy_online(&s.store, &id, false).await?;
    Ok(done(StatusCode::OK, marked.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    /// `1:2,2:1`.
    #[serde(default)]
    weights: String,
}

/// The weights of a rebalance query; a query that does not parse is a 400.
fn weights_of(query: Result<Query<PlanQuery>, QueryRejection>) -> Result<Weights, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    q.weights
        .parse()
        .map_err(|e: WeightsError| ApiError::bad_request(e.to_string()))
}

async fn rebalance_plan(
    State(s): State<Shared>,
    query: Result<Query<PlanQuery>, QueryRejection>,
) -> Result<Json<Plan>, ApiError> {
    let weights = weights_of(query)?;
    let topo = load(&s).await?;
    Ok(Json(rebalance::plan(&topo, &weights)?))
}

/// `POST /api/groups/{id}/promote`: make replica `addr` (or, without it, the
/// best replica) the group's master; `force` overrides the safety checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Promote {
    #[serde(default)]
    addr: Option<String>,
    #[serde(default)]
    force: bool,
}

async fn promote(
    State(s): State<Shared>,
    Path(id): Path<GroupId>,
    Body(b): Body<Promote>,
) -> Result<Json<super::promote::Promoted>, ApiError> {
    let request = super::promote::PromoteRequest {
        server: b.addr,
        force: b.force,
    };
    let (at_ms, started) = (crate::libs::clock::unix_ms(), tokio::time::Instant::now());
    let promoted = super::promote::promote_with(
        &s.store,
        id,
        &request,
        s.backend_auth.as_deref(),
        crate::topo::action::DEFAULT_ACK_TIMEOUT,
    )
    .await?;
    super::failover::record_promote(&s.store, &promoted, at_ms, started).await;
    Ok(Json(promoted))
}

/// `GET /api/stats`: this dashboard's samples of the proxies (every dashboard
/// samples, so a standby's web UI has a chart too).
async fn stats(State(s): State<Shared>) -> Json<TrafficView> {
    let zk_connected = s.store.session().borrow().connected;
    Json(s.traffic.view(zk_connected))
}

/// `GET /metrics`: Prometheus text (see [`super::metrics`]); every dashboard
/// answers, a standby too.
async fn metrics(State(s): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    let page = super::metrics::render(&s).await?;
    Ok((
        [(header::CONTENT_TYPE, crate::libs::prometheus::CONTENT_TYPE)],
        page,
    ))
}

/// `GET /api/servers`: every group's servers as their `INFO` describes them.
async fn servers(State(s): State<Shared>) -> Result<Json<Vec<ServerInfo>>, ApiError> {
    let topo = load(&s).await?;
    Ok(Json(server_info::gather(&topo, s.backend_auth.as_deref()).await))
}

/// `GET /api/push`: the push system's registered instances and its queue.
async fn push(State(s): State<Shared>) -> Result<Json<super::push_roles::PushRoles>, ApiError> {
    let mut roles = super::push_roles::read(&s.store).await?;
    let topo = load(&s).await?;
    roles.queue = super::push_queue::read(&topo, s.backend_auth.as_deref()).await;
    roles.rooms = super::push_rooms::read(&topo, &roles.comet_ids(), s.backend_auth.as_deref()).await;
    Ok(Json(roles))
}

/// What `POST /api/rebalance` did: the plan, and the tasks queued for it.
#[derive(Serialize, Deserialize, Debug)]
pub struct Applied {
    pub plan: Plan,
    /// One migration task per move of assigned slots (unassigned slots carry no
    /// data and are assigned at once).
    pub tasks: Vec<Task>,
}

async fn rebalance_apply(
    State(s): State<Shared>,
    query: Result<Query<PlanQuery>, QueryRejection>,
) -> Result<Json<Applied>, ApiError> {
    let weights = weights_of(query)?;
    let topo = load(&s).await?;
    let plan = rebalance::plan(&topo, &weights)?;
    // Every task is checked before any is queued, and before unassigned slots
    // are handed out: a refused plan changes nothing.
    let moves = plan
        .moves
        .iter()
        .filter(|m| m.from != 0)
        .map(|m| ((m.start..=m.end).collect(), m.to))
        .collect();
    let tasks = task::enqueue_many(&s.store, moves).await?;
    for m in plan.moves.iter().filter(|m| m.from == 0) {
        operation::assign_slots(&s.store, m.start, m.end, m.to).await?;
    }
    s.tasks_changed.notify_one();
    Ok(Json(Applied { plan, tasks }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topo_errors_map_to_statuses() {
        let status = |e: TopoError| ApiError::from(e).status;
        assert_eq!(status(TopoError::Invalid("x".into())), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(TopoError::NotFound("group 3".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(status(TopoError::Exists("group 3".into())), StatusCode::CONFLICT);
        assert_eq!(
            status(TopoError::Locked { holder: "h".into() }),
            StatusCode::CONFLICT
        );
        assert_eq!(status(TopoError::SessionExpired), StatusCode::SERVICE_UNAVAILABLE);
    }
}
