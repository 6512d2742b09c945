//! The cluster's traffic as the web UI draws it: every proxy's `/stats`,
//! polled once a second, summed into cluster figures, and the last ten minutes
//! of them kept in a ring.
//!
//! The proxies keep no history (their `/stats` is a snapshot), so the dashboard
//! keeps it: [`Traffic::run`] samples while the dashboard runs, leader or not,
//! and `GET /api/stats` reads [`Traffic::view`]. A proxy that stops answering
//! keeps its last figures, marked with how long ago it last answered, so the
//! Proxies view can show it as stale instead of silently dropping it.
//!
//! Latency: a proxy reports its latency histogram since it started
//! (`latency_buckets`, bucket bounds within 25%). The difference between two
//! reads is the histogram of the second between them, and the histograms of
//! all proxies add up, so the cluster's p50/p99 of each second are taken from
//! that sum: percentiles themselves could be neither subtracted nor added. A
//! proxy without the histogram (an older version) contributes its
//! since-start percentiles instead, and the cluster's are then the highest.
//!
//! Reads the proxies' nodes through the store and their admin endpoints with
//! the dashboard's HTTP client; imports `libs`, the topo core and the manager.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::dashboard::client::{self, ClientError};
use crate::libs::clock::unix_ms;
use crate::topo::model::ProxyInfo;
use crate::topo::store::Store;

/// How often every proxy is asked.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// How many samples the ring keeps: ten minutes at one a second.
pub const HISTORY_LEN: usize = 600;

/// How long one proxy may take to answer `/stats` before it counts as silent
/// for this sample.
const ASK_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a proxy whose ZooKeeper node went is still listed, as gone: a
/// crashed proxy (or one cut off past its session) must not simply vanish
/// from the operator's view.
pub const GONE_KEPT: Duration = Duration::from_secs(600);

/// One second of the whole cluster.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Unix milliseconds when it was taken.
    pub t: u64,
    /// Requests per second, summed over the proxies that answered.
    pub ops: u64,
    /// p50 latency of the requests of this second over every proxy, µs.
    pub p50: u64,
    /// p99 latency of the requests of this second over every proxy, µs.
    pub p99: u64,
}

/// What one proxy said last.
#[derive(Serialize, Clone, Debug, Default)]
pub struct ProxyTraffic {
    /// Proxy id.
    pub id: String,
    /// RESP address.
    pub addr: String,
    /// Admin (HTTP) address.
    pub admin_addr: String,
    /// True when it answered the latest sample.
    pub answering: bool,
    /// Milliseconds since its ZooKeeper node went (it stopped, crashed, or
    /// lost its session), for [`GONE_KEPT`]; `None` while it is registered.
    pub gone_ms: Option<u64>,
    /// Milliseconds since it last answered; `None` if it never did.
    pub silent_ms: Option<u64>,
    /// Why the latest ask failed.
    pub error: Option<String>,
    /// Its `/stats` figures (the last ones it gave).
    pub ops_per_sec: u64,
    /// Client connections open.
    pub clients: u64,
    /// Requests answered with an error since it started.
    pub errors: u64,
    /// p50 latency over the last second (since it started, for a proxy
    /// without a histogram), µs.
    pub p50_us: u64,
    /// p99 latency, likewise, µs.
    pub p99_us: u64,
    /// False while it refuses slot traffic (it cannot prove its ZooKeeper
    /// session is alive).
    pub routing_online: bool,
    /// The routing epoch it serves.
    pub routing_epoch: u64,
}

/// `GET /api/stats`: the cluster now, every proxy, and the ring.
#[derive(Serialize, Clone, Debug, Default)]
pub struct TrafficView {
    /// True while the dashboard's ZooKeeper session has a live connection.
    pub zk_connected: bool,
    /// The latest sample.
    pub now: Sample,
    /// Client connections over every proxy that answered.
    pub clients: u64,
    /// Every registered proxy, and those gone in the last [`GONE_KEPT`],
    /// by id.
    pub proxies: Vec<ProxyTraffic>,
    /// Up to [`HISTORY_LEN`] samples, oldest first.
    pub history: Vec<Sample>,
}

/// A latency histogram: bucket upper bound (µs) → requests.
type Histogram = BTreeMap<u64, u64>;

/// What is kept of one proxy between samples.
#[derive(Default)]
struct Tracked {
    row: ProxyTraffic,
    /// When it last answered.
    last: Option<Instant>,
    /// Its histogram at that answer, to subtract from the next.
    buckets: Option<Histogram>,
    /// When its ZooKeeper node was first seen gone.
    gone: Option<Instant>,
}

#[derive(Default)]
struct State {
    proxies: BTreeMap<String, Tracked>,
    history: VecDeque<Sample>,
}

/// The sampler and its ring; shared by the sampling task and the API.
#[derive(Default)]
pub struct Traffic {
    state: parking_lot::Mutex<State>,
}

impl Traffic {
    /// Samples every [`SAMPLE_EVERY`] until `stop`.
    pub async fn run(self: Arc<Self>, store: Store, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let registered = registered(&store).await;
            let answers = futures::future::join_all(registered.iter().map(ask)).await;
            self.record(registered, answers, Instant::now());
        }
    }

    /// Folds one round of answers in: the registered proxies updated,
    /// those gone from ZooKeeper marked so (and forgotten after
    /// [`GONE_KEPT`]), one sample appended.
    fn record(&self, registered: Vec<ProxyInfo>, answers: Vec<Result<Figures, AskError>>, at: Instant) {
        let mut state = self.state.lock();
        let mut kept = BTreeMap::new();
        let mut sample = Sample {
            t: unix_ms(),
            ..Sample::default()
        };
        // This second's requests over every proxy with a histogram.
        let mut second = Histogram::new();
        let mut histograms = 0;
        for (info, answer) in registered.into_iter().zip(answers) {
            let mut t = state.proxies.remove(&info.id).unwrap_or_default();
            t.gone = None;
            t.row.gone_ms = None;
            t.row.id = info.id.clone();
            t.row.addr = info.addr;
            t.row.admin_addr = info.admin_addr;
            match answer {
                Ok(mut f) => {
                    sample.ops += f.ops_per_sec;
                    sample.p50 = sample.p50.max(f.p50_us);
                    sample.p99 = sample.p99.max(f.p99_us);
                    let now = f.buckets.take();
                    f.apply(&mut t.row);
                    if let Some(now) = &now {
                        // The first answer has nothing to subtract: its
                        // histogram covers the proxy's whole life.
                        let delta = t
                            .buckets
                            .as_ref()
                            .map(|prev| since(prev, now))
                            .unwrap_or_default();
                        t.row.p50_us = quantile(&delta, 0.50);
                        t.row.p99_us = quantile(&delta, 0.99);
                        for (bound, n) in delta {
                            *second.entry(bound).or_default() += n;
                        }
                        histograms += 1;
                    }
                    t.buckets = now;
                    t.row.answering = true;
                    t.row.error = None;
                    t.last = Some(at);
                }
                Err(e) => {
                    t.row.answering = false;
                    t.row.error = Some(e.to_string());
                }
            }
            t.row.silent_ms = t.last.map(|l| at.saturating_duration_since(l).as_millis() as u64);
            kept.insert(info.id, t);
        }
        if histograms > 0 {
            sample.p50 = quantile(&second, 0.50);
            sample.p99 = quantile(&second, 0.99);
        }
        // What is left was not registered this round.
        for (id, mut t) in std::mem::take(&mut state.proxies) {
            let gone = *t.gone.get_or_insert(at);
            let for_ = at.saturating_duration_since(gone);
            if for_ >= GONE_KEPT {
                continue;
            }
            t.row.answering = false;
            t.row.gone_ms = Some(for_.as_millis() as u64);
            t.row.silent_ms = t.last.map(|l| at.saturating_duration_since(l).as_millis() as u64);
            t.row.error = Some("its ZooKeeper node is gone: it stopped, crashed or lost its session".into());
            kept.insert(id, t);
        }
        state.proxies = kept;
        if state.history.len() == HISTORY_LEN {
            state.history.pop_front();
        }
        state.history.push_back(sample);
    }

    /// The figures as `GET /api/stats` shows them.
    pub fn view(&self, zk_connected: bool) -> TrafficView {
        let state = self.state.lock();
        let proxies: Vec<ProxyTraffic> = state.proxies.values().map(|t| t.row.clone()).collect();
        TrafficView {
            zk_connected,
            now: state.history.back().copied().unwrap_or_default(),
            clients: proxies.iter().filter(|p| p.answering).map(|p| p.clients).sum(),
            proxies,
            history: state.history.iter().copied().collect(),
        }
    }
}

/// The fields of a proxy's `/stats` the UI shows.
#[derive(Debug, Default, PartialEq)]
struct Figures {
    ops_per_sec: u64,
    clients: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
    routing_online: bool,
    routing_epoch: u64,
    /// `latency_buckets`, if the proxy sends it.
    buckets: Option<Histogram>,
}

impl Figures {
    /// Reads a `/stats` document (see `proxy::admin`); missing fields are 0.
    fn from_stats(doc: &serde_json::Value) -> Figures {
        let n = |ptr: &str| doc.pointer(ptr).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Figures {
            ops_per_sec: n("/ops_per_sec"),
            clients: n("/sessions_alive"),
            errors: n("/errors_total"),
            p50_us: n("/latency_us/p50"),
            p99_us: n("/latency_us/p99"),
            routing_online: doc
                .get("online")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            routing_epoch: n("/routing_epoch"),
            buckets: doc.get("latency_buckets").and_then(histogram),
        }
    }

    fn apply(self, row: &mut ProxyTraffic) {
        row.ops_per_sec = self.ops_per_sec;
        row.clients = self.clients;
        row.errors = self.errors;
        row.p50_us = self.p50_us;
        row.p99_us = self.p99_us;
        row.routing_online = self.routing_online;
        row.routing_epoch = self.routing_epoch;
    }
}

/// Reads `[[bound, count], …]`.
fn histogram(v: &serde_json::Value) -> Option<Histogram> {
    let pairs = v.as_array()?;
    let mut out = Histogram::new();
    for pair in pairs {
        let bound = pair.get(0)?.as_u64()?;
        let n = pair.get(1)?.as_u64()?;
        out.insert(bound, n);
    }
    Some(out)
}

/// The requests counted in `now` but not in `prev`. A bucket that went down
/// means the proxy restarted or its counters were reset (`CONFIG
/// RESETSTAT`): then everything in `now` is new.
fn since(prev: &Histogram, now: &Histogram) -> Histogram {
    let reset = prev.iter().any(|(b, &p)| now.get(b).copied().unwrap_or(0) < p);
    if reset {
        return now.clone();
    }
    now.iter()
        .map(|(&b, &n)| (b, n - prev.get(&b).copied().unwrap_or(0)))
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// The bucket bound below which a share `q` of the requests of `h` fall; 0
/// for no requests.
fn quantile(h: &Histogram, q: f64) -> u64 {
    let total: u64 = h.values().sum();
    if total == 0 {
        return 0;
    }
    let target = ((total as f64) * q).ceil() as u64;
    let mut seen = 0;
    for (&bound, &n) in h {
        seen += n;
        if seen >= target {
            return bound;
        }
    }
    h.keys().next_back().copied().unwrap_or(0)
}

/// The proxies registered now (their ephemeral nodes); none when ZooKeeper
/// cannot be read (the sample then shows an empty cluster, and the UI shows
/// ZooKeeper as disconnected).
async fn registered(store: &Store) -> Vec<ProxyInfo> {
    let dir = store.paths().proxies();
    let Ok(ids) = store.children(&dir).await else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        // A proxy that left between the listing and this read is skipped.
        if let Ok(info) = store.get_json::<ProxyInfo>(&store.paths().proxy(&id)).await {
            out.push(info);
        }
    }
    out
}

/// Why a proxy's `/stats` could not be read; shown in its row. Every kind is
/// retried on the next round: a proxy that stays silent is shown silent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// Connected or not, nothing came back in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Nothing listens at its admin address, or the answer was not HTTP/JSON.
    #[error("{0}")]
    Unreachable(String),
    /// It answered with another status than 200.
    #[error("HTTP {0}")]
    Status(u16),
}

/// Asks one proxy for its `/stats`.
async fn ask(info: &ProxyInfo) -> Result<Figures, AskError> {
    let call = client::get(&info.admin_addr, "/stats");
    match tokio::time::timeout(ASK_TIMEOUT, call).await {
        Err(_) => Err(AskError::Timeout(ASK_TIMEOUT)),
        // The client's own texts speak of the dashboard; here it is a proxy.
        Ok(Err(ClientError::Unreachable { reason, .. } | ClientError::Protocol { reason, .. })) => {
            Err(AskError::Unreachable(reason))
        }
        Ok(Err(ClientError::Unauthorized { .. })) => Err(AskError::Status(401)),
        Ok(Err(ClientError::Refused { status, .. })) => Err(AskError::Status(status)),
        Ok(Ok(reply)) if reply.status == 200 => Ok(Figures::from_stats(&reply.body)),
        Ok(Ok(reply)) => Err(AskError::Status(reply.status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(id: &str) -> ProxyInfo {
        ProxyInfo {
            id: id.into(),
            addr: id.into(),
            admin_addr: format!("admin-{id}"),
            pid: 1,
            pid_space: String::new(),
            start_time: 0,
            version: String::new(),
            write_ack: Default::default(),
        }
    }

    fn figures(ops: u64, p99: u64) -> Figures {
        Figures {
            ops_per_sec: ops,
            p50_us: p99 / 2,
            p99_us: p99,
            ..Figures::default()
        }
    }

    #[test]
    fn stats_documents_are_read() {
        let doc = serde_json::json!({
            "ops_per_sec": 120, "sessions_alive": 3, "errors_total": 2,
            "online": true, "routing_epoch": 9,
            "latency_us": {"p50": 40, "p99": 900},
        });
        let f = Figures::from_stats(&doc);
        assert_eq!(
            f,
            Figures {
                ops_per_sec: 120,
                clients: 3,
                errors: 2,
                p50_us: 40,
                p99_us: 900,
                routing_online: true,
                routing_epoch: 9,
                buckets: None,
            }
        );
        assert_eq!(Figures::from_stats(&serde_json::json!({})), Figures::default());
        let with = Figures::from_stats(&serde_json::json!({"latency_buckets": [[12, 90], [1024, 10]]}));
        assert_eq!(with.buckets, Some(Histogram::from([(12, 90), (1024, 10)])));
    }

    #[test]
    fn seconds_are_histogram_differences_summed_over_proxies() {
        let t = Traffic::default();
        let with = |buckets: &[(u64, u64)]| Figures {
            buckets: Some(buckets.iter().copied().collect()),
            ..Figures::default()
        };
        let start = Instant::now();
        // Slow requests of the past do not count in the seconds that follow.
        t.record(
            vec![proxy("a"), proxy("b")],
            vec![Ok(with(&[(10, 5), (5000, 100)])), Ok(with(&[(10, 1)]))],
            start,
        );
        assert_eq!(t.view(true).now.p99, 0, "nothing to subtract from yet");
        t.record(
            vec![proxy("a"), proxy("b")],
            vec![
                Ok(with(&[(10, 55), (5000, 100)])),
                Ok(with(&[(10, 1), (800, 50)])),
            ],
            start,
        );
        let v = t.view(true);
        // 50 requests at <= 10 µs on a, 50 at <= 800 µs on b.
        assert_eq!((v.now.p50, v.now.p99), (10, 800));
        assert_eq!((v.proxies[0].p99_us, v.proxies[1].p99_us), (10, 800));
        // b restarted: its counters start again, all of them new.
        t.record(
            vec![proxy("a"), proxy("b")],
            vec![Ok(with(&[(10, 55), (5000, 100)])), Ok(with(&[(2000, 3)]))],
            start,
        );
        assert_eq!(t.view(true).now.p99, 2000);
    }

    #[test]
    fn ops_are_summed_latency_is_the_worst_and_silence_is_marked() {
        let t = Traffic::default();
        let start = Instant::now();
        t.record(
            vec![proxy("a"), proxy("b")],
            vec![Ok(figures(100, 500)), Ok(figures(50, 900))],
            start,
        );
        let v = t.view(true);
        assert_eq!((v.now.ops, v.now.p99), (150, 900));
        // b stops answering: it keeps its last figures, marked silent.
        let later = start + Duration::from_secs(3);
        t.record(
            vec![proxy("a"), proxy("b")],
            vec![Ok(figures(10, 500)), Err(AskError::Status(503))],
            later,
        );
        let v = t.view(true);
        assert_eq!(v.now.ops, 10);
        let b = &v.proxies[1];
        assert!(!b.answering);
        assert_eq!((b.ops_per_sec, b.silent_ms), (50, Some(3000)));
        assert_eq!(v.history.len(), 2);
        // Gone from ZooKeeper: listed as gone, no longer counted...
        t.record(vec![proxy("a")], vec![Ok(figures(1, 1))], later);
        let v = t.view(true);
        let b = &v.proxies[1];
        assert_eq!((b.answering, b.gone_ms), (false, Some(0)));
        assert_eq!(v.now.ops, 1);
        let gone_since = later + Duration::from_secs(5);
        t.record(vec![proxy("a")], vec![Ok(figures(1, 1))], gone_since);
        assert_eq!(t.view(true).proxies[1].gone_ms, Some(5000));
        // ...back when it registers again...
        t.record(
            vec![proxy("a"), proxy("b")],
            vec![Ok(figures(1, 1)), Ok(figures(2, 1))],
            gone_since,
        );
        assert!(t.view(true).proxies.iter().all(|p| p.gone_ms.is_none()));
        // ...and forgotten after GONE_KEPT.
        t.record(vec![proxy("a")], vec![Ok(figures(1, 1))], gone_since);
        t.record(vec![proxy("a")], vec![Ok(figures(1, 1))], gone_since + GONE_KEPT);
        assert_eq!(t.view(true).proxies.len(), 1);
    }

    #[test]
    fn the_ring_keeps_ten_minutes() {
        let t = Traffic::default();
        for _ in 0..HISTORY_LEN + 5 {
            t.record(Vec::new(), Vec::new(), Instant::now());
        }
        assert_eq!(t.view(false).history.len(), HISTORY_LEN);
    }

    #[tokio::test]
    async fn a_proxy_that_does_not_listen_is_named_unreachable_not_a_dashboard() {
        let (_held, addr) = crate::libs::reachable::refused_addr();
        let mut info = proxy("gone");
        info.admin_addr = addr;
        let e = ask(&info).await.expect_err("nothing listens");
        assert!(matches!(e, AskError::Unreachable(_)), "{e:?}");
        assert!(!e.to_string().contains("dashboard"), "{e}");
    }
}
