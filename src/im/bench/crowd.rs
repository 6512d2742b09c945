//! A crowd: many authenticated comet connections held open by one generator
//! process, spread over 127.0.0.x source addresses, each heartbeating rarely
//! and counting what it receives. The idle, room and latency modes are crowds
//! with different auth bodies and sinks. Imports the generator's wire
//! connection, `frame::op` and `libs::clock`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::im::bench::error::BenchError;
use crate::im::bench::wire::WireConn;
use crate::im::frame::op;
use crate::libs::clock::unix_ms;

/// What each pushed frame's body is handed to (the latency mode's clock).
pub type PushSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// How to build a crowd.
#[derive(Clone, Debug)]
pub struct CrowdSpec {
    /// The comet's TCP address.
    pub comet: SocketAddr,
    /// How many connections.
    pub conns: usize,
    /// Source addresses, used round robin (empty: the kernel's choice).
    pub sources: Vec<Ipv4Addr>,
    /// Connection i authenticates as mid `mid_base + i`.
    pub mid_base: i64,
    /// Rooms: connection i joins `"{room_type}://{room_prefix}{i % rooms}"` (0: none).
    pub rooms: usize,
    /// The room type (goim's `type` of /goim/push/room).
    pub room_type: String,
    /// The room name prefix.
    pub room_prefix: String,
    /// The business op watched (goim's `accepts`).
    pub op: i32,
    /// Heartbeat period of each connection.
    pub heartbeat: Duration,
    /// Connect and auth deadline.
    pub timeout: Duration,
    /// Connections being opened at once.
    pub concurrency: usize,
}

/// Counters shared by a crowd's connections.
#[derive(Default)]
pub struct CrowdStats {
    /// Connections authenticated and still open.
    pub up: AtomicU64,
    /// Connections that never came up.
    pub failed: AtomicU64,
    /// Connections lost after coming up.
    pub dropped: AtomicU64,
    /// Pushed frames received (heartbeat replies not counted).
    pub received: AtomicU64,
    /// Unix ms of the first and the last pushed frame.
    pub first_ms: AtomicU64,
    /// See `first_ms`.
    pub last_ms: AtomicU64,
    /// The first failure, for the report.
    pub first_error: Mutex<Option<String>>,
}

impl CrowdStats {
    fn note_error(&self, e: &BenchError) {
        let mut first = self.first_error.lock();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

/// A running crowd.
pub struct Crowd {
    /// Its counters.
    pub stats: Arc<CrowdStats>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

impl CrowdSpec {
    fn auth_body(&self, i: usize) -> Vec<u8> {
        let mid = self.mid_base + i64::try_from(i).unwrap_or(0);
        let room = if self.rooms > 0 {
            format!("{}://{}{}", self.room_type, self.room_prefix, i % self.rooms)
        } else {
            String::new()
        };
        serde_json::json!({
            "mid": mid,
            "key": "",
            "room_id": room,
            "platform": "bench",
            "accepts": [self.op],
        })
        .to_string()
        .into_bytes()
    }
}

impl Crowd {
    /// Opens every connection (at most `concurrency` handshakes at once) and
    /// returns once each is up or has failed.
    pub async fn open(spec: CrowdSpec, sink: Option<PushSink>) -> Crowd {
        let stats = Arc::new(CrowdStats::default());
        let stop = CancellationToken::new();
        let gate = Arc::new(Semaphore::new(spec.concurrency.max(1)));
        let spec = Arc::new(spec);
        let mut tasks = JoinSet::new();
        for i in 0..spec.conns {
            let (spec, stats, stop, gate, sink) = (
                spec.clone(),
                stats.clone(),
                stop.clone(),
                gate.clone(),
                sink.clone(),
            );
            tasks.spawn(async move {
                let src = (!spec.sources.is_empty()).then(|| spec.sources[i % spec.sources.len()]);
                let opened = {
                    let Ok(_permit) = gate.acquire().await else {
                        return;
                    };
                    WireConn::open(spec.comet, src, &spec.auth_body(i), spec.timeout).await
                };
                match opened {
                    Ok(conn) => {
                        stats.up.fetch_add(1, Ordering::Relaxed);
                        hold(conn, i, &spec, &stats, &stop, sink.as_ref()).await;
                    }
                    Err(e) => {
                        stats.note_error(&e);
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let target = u64::try_from(spec.conns).unwrap_or(u64::MAX);
        while stats.up.load(Ordering::Relaxed)
            + stats.failed.load(Ordering::Relaxed)
            + stats.dropped.load(Ordering::Relaxed)
            < target
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Crowd { stats, tasks, stop }
    }

    /// Closes every connection.
    pub async fn close(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Holds one connection: heartbeats every `spec.heartbeat` (phase spread by
/// the connection's index so they do not all fire together), counts pushes.
async fn hold(
    mut conn: WireConn,
    i: usize,
    spec: &CrowdSpec,
    stats: &CrowdStats,
    stop: &CancellationToken,
    sink: Option<&PushSink>,
) {
    let period = spec.heartbeat.max(Duration::from_secs(1));
    let phase = period.mul_f64((i % 1000) as f64 / 1000.0);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = beat.tick() => {
                if let Err(e) = conn.heartbeat().await {
                    stats.note_error(&e);
                    break;
                }
            }
            got = conn.next_frame() => match got {
                Ok((opc, _)) if opc == op::HEARTBEAT_REPLY => {}
                Ok((_, body)) => {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let now = unix_ms();
                    let _ = stats.first_ms.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                    stats.last_ms.store(now, Ordering::Relaxed);
                    if let Some(sink) = sink {
                        sink(&body);
                    }
                }
                Err(e) => {
                    stats.note_error(&e);
                    break;
                }
            }
        }
    }
    stats.up.fetch_sub(1, Ordering::Relaxed);
    stats.dropped.fetch_add(1, Ordering::Relaxed);
}

/// A `--src` that is not an address or a range of them.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// One end is not an IPv4 address.
    #[error("{text}: {source}")]
    Address {
        /// The text given.
        text: String,
        /// Why it is not an address.
        source: std::net::AddrParseError,
    },
    /// The end is below the start, or more than 65,536 addresses past it.
    #[error("bad source range {0}")]
    Range(String),
}

/// Parses source addresses: `""` (none), `"127.0.0.2"` or a last-octet range
/// `"127.0.0.2-127.0.0.9"`.
///
/// # Errors
/// [`SourcesError`]: not an address or range.
pub fn parse_sources(text: &str) -> Result<Vec<Ipv4Addr>, SourcesError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let address = |end: &str| {
        end.trim()
            .parse::<Ipv4Addr>()
            .map_err(|source| SourcesError::Address {
                text: end.to_string(),
                source,
            })
    };
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let (lo, hi) = (u32::from(address(a)?), u32::from(address(b)?));
    if hi < lo || hi - lo > 65_536 {
        return Err(SourcesError::Range(text.to_string()));
    }
    Ok((lo..=hi).map(Ipv4Addr::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges_parse() {
        assert_eq!(parse_sources("").ok(), Some(vec![]));
        assert_eq!(
            parse_sources("127.0.0.2-127.0.0.4").ok(),
            Some(vec![
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3),
                Ipv4Addr::new(127, 0, 0, 4)
            ])
        );
        assert!(matches!(
            parse_sources("127.0.0.4-127.0.0.2"),
            Err(SourcesError::Range(r)) if r == "127.0.0.4-127.0.0.2"
        ));
        let bad = parse_sources("127.0.0.2-localhost").err().map(|e| e.to_string());
        assert_eq!(bad.as_deref(), Some("localhost: invalid IPv4 address syntax"));
    }
}
