//! The pusher: keep-alive POSTs to logic's push API, either at a fixed rate
//! spread over several connections or closed loop (as fast as logic answers),
//! counting what logic accepted (`{"code":0`). Imports the generator's HTTP
//! client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::im::bench::http::HttpConn;

/// What the pushes address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PushTarget {
    /// POST /goim/push/room, round robin over the rooms.
    Room,
    /// POST /goim/push/mids, one mid per push, round robin over the mids.
    Mids,
}

/// Builds the body of push number `seq`.
pub type BodyFn = Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>;

/// How to push.
#[derive(Clone, Debug)]
pub struct PushSpec {
    /// Logic's HTTP address.
    pub http: SocketAddr,
    /// Room or mid pushes.
    pub target: PushTarget,
    /// Pushes per second in all (0: closed loop).
    pub rate: u64,
    /// How long to push.
    pub duration: Duration,
    /// HTTP connections (each one request in flight).
    pub conns: usize,
    /// The business op (`operation`).
    pub op: i32,
    /// Room type, prefix and count (room pushes).
    pub room_type: String,
    /// See `room_type`.
    pub room_prefix: String,
    /// See `room_type`.
    pub rooms: usize,
    /// Mids `mid_base .. mid_base + mids` (mid pushes).
    pub mid_base: i64,
    /// See `mid_base`.
    pub mids: u64,
}

/// What a push run did.
#[derive(Debug, Default)]
pub struct PushTally {
    /// Requests sent.
    pub sent: u64,
    /// Answered `{"code":0`.
    pub ok: u64,
    /// Answered with another code or status.
    pub rejected: u64,
    /// Requests that failed at the socket.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The first rejection or error, for the report.
    pub first_error: Option<String>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn note(&self, e: String) {
        let mut first = self.first_error.lock();
        if first.is_none() {
            *first = Some(e);
        }
    }
}

impl PushSpec {
    fn path(&self, seq: u64) -> String {
        match self.target {
            PushTarget::Room => {
                let room = seq % u64::try_from(self.rooms.max(1)).unwrap_or(1);
                format!(
                    "/goim/push/room?operation={}&type={}&room={}{room}",
                    self.op, self.room_type, self.room_prefix
                )
            }
            PushTarget::Mids => {
                let mid = self.mid_base + i64::try_from(seq % self.mids.max(1)).unwrap_or(0);
                format!("/goim/push/mids?operation={}&mids={mid}", self.op)
            }
        }
    }
}

/// Pushes until `spec.duration` is over.
pub async fn run(spec: PushSpec, body: BodyFn) -> PushTally {
    let spec = Arc::new(spec);
    let counters = Arc::new(Counters::default());
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.duration;
    let conns = spec.conns.max(1);
    let mut tasks = JoinSet::new();
    for w in 0..conns {
        let (spec, counters, seq, body) = (spec.clone(), counters.clone(), seq.clone(), body.clone());
        tasks.spawn(async move {
            let mut conn = match HttpConn::open(spec.http).await {
                Ok(c) => c,
                Err(e) => {
                    counters.note(format!("connect: {e}"));
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            // Each connection carries rate/conns pushes a second, its ticks
            // offset so the connections interleave evenly.
            let mut tick = (spec.rate > 0).then(|| {
                let period = Duration::from_secs_f64(conns as f64 / spec.rate as f64);
                let offset = period.mul_f64(w as f64 / conns as f64);
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                t.set_missed_tick_behavior(MissedTickBehavior::Burst);
                t
            });
            loop {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                counters.sent.fetch_add(1, Ordering::Relaxed);
                match conn.post(&spec.path(n), &body(n)).await {
                    Ok((200, resp)) if resp.starts_with(b"{\"code\":0") => {
                        counters.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, resp)) => {
                        counters.rejected.fetch_add(1, Ordering::Relaxed);
                        counters.note(format!("{status} {}", String::from_utf8_lossy(&resp)));
                    }
                    Err(e) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        counters.note(e.to_string());
                        match HttpConn::open(spec.http).await {
                            Ok(c) => conn = c,
                            Err(_) => return,
                        }
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let first_error = counters.first_error.lock().take();
    PushTally {
        sent: counters.sent.load(Ordering::Relaxed),
        ok: counters.ok.load(Ordering::Relaxed),
        rejected: counters.rejected.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        first_error,
    }
}
