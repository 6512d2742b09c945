//! Logic's HTTP API with goim's paths, parameters and envelope (reference
//! §3.1), so business backends and goim's push benchmarks work unchanged:
//!
//! | method | path | params (`*` required) |
//! |---|---|---|
//! | POST | `/goim/push/keys` | `operation*`, `keys` (repeated; none: nothing to do, `code` 0, as goim) |
//! | POST | `/goim/push/mids` | `operation*`, `mids` (repeated; likewise) |
//! | POST | `/goim/push/room` | `operation*`, `type*`, `room*` |
//! | POST | `/goim/push/all` | `operation*`, `speed` |
//! | GET | `/goim/online/top` | `type*`, `limit*` |
//! | GET | `/goim/online/room` | `type*`, `rooms*` (repeated) |
//! | GET | `/goim/online/total` | |
//! | GET | `/goim/nodes/weighted` | `platform` |
//! | GET | `/goim/nodes/instances` | |
//! | GET | `/metrics` | (reborn: Prometheus counters) |
//! | GET | `/demo` | (reborn: a browser client of comet's WebSocket, `../demo.html`) |
//!
//! A push's body is the raw message, any content type, at most `[http]
//! max_body` bytes. Every answer is HTTP 200 with `{code, message, data}`:
//! -400 for bad parameters or an oversized body, -500 when the proxy cluster
//! fails (goim answered -400 for both). A query string is limited to 64 KiB
//! (the HTTP library's bound on a request line: about 5,400 `mids` per call;
//! goim's Go server took 1 MB); past it the answer is HTTP 414 without the
//! envelope. Imports the sibling modules and `im::discovery`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Serialize;

use super::envelope::Envelope;
use super::push::LogicPushError;
use super::query::{QueryError, QueryParams};
use super::state::LogicState;
use crate::im::discovery::Instance;

type Shared = State<Arc<LogicState>>;

/// The API's routes over `state`. Serve with connect info (`SocketAddr`) so
/// `/goim/nodes/weighted` sees the client's address.
pub fn router(state: Arc<LogicState>) -> Router {
    Router::new()
        .route("/goim/push/keys", post(push_keys))
        .route("/goim/push/mids", post(push_mids))
        .route("/goim/push/room", post(push_room))
        .route("/goim/push/all", post(push_all))
        .route("/goim/online/top", get(online_top))
        .route("/goim/online/room", get(online_room))
        .route("/goim/online/total", get(online_total))
        .route("/goim/nodes/weighted", get(nodes_weighted))
        .route("/goim/nodes/instances", get(nodes_instances))
        .route("/metrics", get(metrics))
        .route("/demo", get(demo))
        .with_state(state)
}

/// The demo page, compiled in so the binary serves it from anywhere.
async fn demo() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../demo.html"))
}

fn params(raw: Option<String>) -> QueryParams {
    QueryParams::parse(raw.as_deref().unwrap_or(""))
}

fn bad(s: &LogicState, e: impl std::fmt::Display) -> Envelope {
    s.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
    Envelope::bad_request(e.to_string())
}

/// Reads the push body, bounded by `[http] max_body`.
async fn read_body(s: &LogicState, body: Body) -> Result<Bytes, Envelope> {
    let limit = s.config.http.max_body;
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| bad(s, format!("message body over {limit} bytes (or unreadable)")))
}

/// Runs a push whose parameters parsed, and answers.
async fn push<T, F>(s: &LogicState, args: Result<T, QueryError>, body: Body, run: F) -> Envelope
where
    F: AsyncFnOnce(T, Bytes) -> Result<usize, LogicPushError>,
{
    let args = match args {
        Ok(args) => args,
        Err(e) => return bad(s, e),
    };
    let msg = match read_body(s, body).await {
        Ok(m) => m,
        Err(reply) => return reply,
    };
    match run(args, msg).await {
        Ok(_) => {
            s.stats.pushes.fetch_add(1, Ordering::Relaxed);
            Envelope::ok()
        }
        Err(e) => {
            s.stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "push failed");
            Envelope::server_error(e.to_string())
        }
    }
}

const INT32: &str = "an int32";
const INT64: &str = "an int64";
const TEXT: &str = "text";

async fn push_keys(State(s): Shared, RawQuery(q): RawQuery, body: Body) -> Envelope {
    let q = params(q);
    let args = q
        .required::<i32>("operation", INT32)
        .and_then(|op| Ok((op, q.many::<String>("keys", TEXT)?)));
    push(&s, args, body, async |(op, keys), msg| {
        s.pusher.push_keys(op, &keys, &msg).await
    })
    .await
}

async fn push_mids(State(s): Shared, RawQuery(q): RawQuery, body: Body) -> Envelope {
    let q = params(q);
    let args = q
        .required::<i32>("operation", INT32)
        .and_then(|op| Ok((op, q.many::<i64>("mids", INT64)?)));
    push(&s, args, body, async |(op, mids), msg| {
        s.pusher.push_mids(op, &mids, &msg).await
    })
    .await
}

async fn push_room(State(s): Shared, RawQuery(q): RawQuery, body: Body) -> Envelope {
    let q = params(q);
    let args = q.required::<i32>("operation", INT32).and_then(|op| {
        let typ = q.required::<String>("type", TEXT)?;
        Ok((op, typ, q.required::<String>("room", TEXT)?))
    });
    push(&s, args, body, async |(op, typ, room), msg| {
        s.pusher.push_room(op, &typ, &room, &msg).await
    })
    .await
}

async fn push_all(State(s): Shared, RawQuery(q): RawQuery, body: Body) -> Envelope {
    let q = params(q);
    let args = q
        .required::<i32>("operation", INT32)
        .and_then(|op| Ok((op, q.optional::<i32>("speed", INT32)?.unwrap_or(0))));
    push(&s, args, body, async |(op, speed), msg| {
        s.pusher.push_all(op, speed, &msg).await
    })
    .await
}

async fn online_top(State(s): Shared, RawQuery(q): RawQuery) -> Envelope {
    let q = params(q);
    let args = q
        .required::<String>("type", TEXT)
        .and_then(|typ| Ok((typ, q.required::<usize>("limit", "a count")?)));
    match args {
        Ok((typ, limit)) => Envelope::data(&s.counts.top(&typ, limit)),
        Err(e) => bad(&s, e),
    }
}

async fn online_room(State(s): Shared, RawQuery(q): RawQuery) -> Envelope {
    let q = params(q);
    let args = q
        .required::<String>("type", TEXT)
        .and_then(|typ| Ok((typ, q.list::<String>("rooms", TEXT)?)));
    match args {
        Ok((typ, rooms)) => Envelope::data(&s.counts.rooms(&typ, &rooms)),
        Err(e) => bad(&s, e),
    }
}

/// `/goim/online/total`'s data.
#[derive(Debug, Serialize)]
struct OnlineTotal {
    ip_count: u64,
    conn_count: u64,
}

async fn online_total(State(s): Shared) -> Envelope {
    let comets = s.comets.borrow();
    let live = comets.iter().filter(|c| !c.offline);
    let total = live.fold(
        OnlineTotal {
            ip_count: 0,
            conn_count: 0,
        },
        |t, c| OnlineTotal {
            ip_count: t.ip_count.saturating_add(c.ip_count),
            conn_count: t.conn_count.saturating_add(c.conn_count),
        },
    );
    Envelope::data(&total)
}

/// The client's address: a proxy's `X-Real-IP` / `X-Forwarded-For` (as gin's
/// `ClientIP`), else the peer.
fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    header("x-real-ip")
        .or_else(|| header("x-forwarded-for"))
        .or_else(|| peer.map(|p| p.ip().to_string()))
        .unwrap_or_default()
}

async fn nodes_weighted(
    State(s): Shared,
    RawQuery(q): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Envelope {
    let q = params(q);
    let platform = q.all("platform").next().unwrap_or("").to_string();
    let ip = client_ip(&headers, Some(peer));
    Envelope::data(&s.balancer.select(&platform, &ip))
}

async fn nodes_instances(State(s): Shared) -> Envelope {
    let comets = s.comets.borrow().clone();
    let listed: Vec<ListedInstance> = comets.iter().map(ListedInstance::of).collect();
    Envelope::data(&listed)
}

/// A comet as `/goim/nodes/instances` lists it: what it registered, plus
/// the fields of goim's discovery instance that monitoring reads (`hostname`,
/// `appid`, and `metadata` with goim's string values). `addrs` stays the
/// client addresses; goim's held the gRPC URL, which is `grpc` here.
#[derive(Serialize)]
struct ListedInstance<'a> {
    #[serde(flatten)]
    instance: &'a Instance,
    hostname: &'a str,
    appid: &'static str,
    metadata: BTreeMap<&'static str, String>,
}

impl<'a> ListedInstance<'a> {
    fn of(c: &'a Instance) -> Self {
        let metadata = BTreeMap::from([
            ("weight", c.weight.to_string()),
            ("offline", c.offline.to_string()),
            ("addrs", c.addrs.join(",")),
            ("ip_count", c.ip_count.to_string()),
            ("conn_count", c.conn_count.to_string()),
        ]);
        ListedInstance {
            instance: c,
            hostname: &c.id,
            appid: "goim.comet",
            metadata,
        }
    }
}

async fn metrics(State(s): Shared) -> String {
    s.stats.prometheus()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_ip_prefers_proxy_headers() {
        let peer: Option<SocketAddr> = "10.0.0.1:5000".parse().ok();
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(&h, peer), "10.0.0.1");
        h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.1".parse().expect("header"));
        assert_eq!(client_ip(&h, peer), "1.2.3.4");
        h.insert("x-real-ip", "5.6.7.8".parse().expect("header"));
        assert_eq!(client_ip(&h, peer), "5.6.7.8");
        assert_eq!(client_ip(&HeaderMap::new(), None), "");
    }
}
