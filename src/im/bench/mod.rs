//! `reborn push-bench`: the push system's load generator (issue 9, part 8),
//! driven by scripts/bench_push.sh. Modes:
//! - `idle`: N authenticated TCP connections from a 127.0.0.x range, rare
//!   heartbeats; prints how many came up, holds them until SIGTERM.
//! - `room`: the same in rooms, counting pushed frames received.
//! - `latency`: connections by mid plus a pusher POSTing /goim/push/mids at a
//!   fixed rate with a timestamp body; prints p50/p90/p99 POST-to-receipt.
//! - `push`: POSTs to /goim/push/room or /mids at a fixed rate or closed loop;
//!   prints how many logic accepted per second.
//!
//! Every mode prints one `key=value` result line the script parses. Imports
//! only its own submodules (and `frame` through them).

pub mod crowd;
pub mod error;
pub mod http;
pub mod latency;
pub mod pusher;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Subcommand};
use humantime_serde::re::humantime;
use tokio_util::sync::CancellationToken;

use crowd::{Crowd, CrowdSpec};
use pusher::{PushSpec, PushTarget};

/// `reborn push-bench`.
#[derive(Args, Debug)]
pub struct PushBenchArgs {
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1, global = true)]
    pub threads: usize,
    /// The mode.
    #[command(subcommand)]
    pub mode: BenchMode,
}

/// The generator's modes.
#[derive(Subcommand, Debug)]
pub enum BenchMode {
    /// Hold idle authenticated connections until SIGTERM (or --hold).
    Idle(CrowdArgs),
    /// Hold connections in rooms and count the pushes they receive.
    Room(CrowdArgs),
    /// Connections by mid plus a fixed-rate mid pusher: POST-to-receipt latency.
    Latency(LatencyArgs),
    /// Push through logic's HTTP API; count accepted pushes per second.
    Push(PushArgs),
}

/// A crowd of connections.
#[derive(Args, Debug, Clone)]
pub struct CrowdArgs {
    /// The comet's TCP address.
    #[arg(long, default_value = "127.0.0.1:3101")]
    pub comet: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Source addresses: "127.0.0.2" or "127.0.0.2-127.0.0.9" (round robin).
    #[arg(long, default_value = "")]
    pub src: String,
    /// Connection i authenticates as mid `mid-base + i`.
    #[arg(long, default_value_t = 1)]
    pub mid_base: i64,
    /// Rooms joined round robin (room mode; idle: 0 = none).
    #[arg(long, default_value_t = 0)]
    pub rooms: usize,
    /// Room type.
    #[arg(long, default_value = "live")]
    pub room_type: String,
    /// Room name prefix (rooms are "<prefix>0", "<prefix>1", ...).
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,
    /// The business op watched and pushed.
    #[arg(long, default_value_t = 1000)]
    pub op: i32,
    /// Heartbeat period per connection.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// Connect + auth deadline per connection.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Stop after this long once up (0s: hold until SIGTERM/SIGINT).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

/// The pushing side.
#[derive(Args, Debug, Clone)]
pub struct PusherArgs {
    /// Logic's HTTP address.
    #[arg(long, default_value = "127.0.0.1:3111")]
    pub http: SocketAddr,
    /// Pushes per second in all (0: closed loop, as fast as logic answers).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// How long to push.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// HTTP connections (one request in flight each).
    #[arg(long, default_value_t = 8)]
    pub http_conns: usize,
    /// Push body size in bytes (room and mid pushes; latency bodies are stamps).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
}

/// `latency`.
#[derive(Args, Debug, Clone)]
pub struct LatencyArgs {
    /// The connections (by mid).
    #[command(flatten)]
    pub crowd: CrowdArgs,
    /// The pusher.
    #[command(flatten)]
    pub push: PusherArgs,
}

/// `push`.
#[derive(Args, Debug, Clone)]
pub struct PushArgs {
    /// Room or mid pushes.
    #[arg(long, value_enum, default_value = "room")]
    pub target: PushTarget,
    /// The pusher.
    #[command(flatten)]
    pub push: PusherArgs,
    /// The business op.
    #[arg(long, default_value_t = 1000)]
    pub op: i32,
    /// Rooms pushed round robin (room target).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Room type.
    #[arg(long, default_value = "live")]
    pub room_type: String,
    /// Room name prefix.
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,
    /// First mid pushed (mids target).
    #[arg(long, default_value_t = 1)]
    pub mid_base: i64,
    /// Mids pushed round robin from mid-base (mids target).
    #[arg(long, default_value_t = 1000)]
    pub mids: u64,
}

/// Why the generator could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum PushBenchError {
    /// A bad --src.
    #[error("--src: {0}")]
    Sources(#[from] crowd::SourcesError),
    /// No connection came up.
    #[error("no connection came up: {0}")]
    NoneUp(String),
}

impl CrowdArgs {
    fn spec(&self) -> Result<CrowdSpec, PushBenchError> {
        Ok(CrowdSpec {
            comet: self.comet,
            conns: self.conns,
            sources: crowd::parse_sources(&self.src).map_err(PushBenchError::Sources)?,
            mid_base: self.mid_base,
            rooms: self.rooms,
            room_type: self.room_type.clone(),
            room_prefix: self.room_prefix.clone(),
            op: self.op,
            heartbeat: self.heartbeat,
            timeout: self.timeout,
            concurrency: self.concurrency,
        })
    }
}

/// Runs one mode; returns when it is done (or on SIGTERM / SIGINT).
///
/// # Errors
/// Bad arguments, or not a single connection came up.
pub async fn run(args: PushBenchArgs) -> Result<(), PushBenchError> {
    let stop = crate::libs::shutdown::on_signal();
    match args.mode {
        BenchMode::Idle(c) | BenchMode::Room(c) => hold_crowd(c, stop).await,
        BenchMode::Latency(l) => latency_mode(l).await,
        BenchMode::Push(p) => {
            let body = vec![b'x'; p.push.size];
            let spec = PushSpec {
                http: p.push.http,
                target: p.target,
                rate: p.push.rate,
                duration: p.push.duration,
                conns: p.push.http_conns,
                op: p.op,
                room_type: p.room_type,
                room_prefix: p.room_prefix,
                rooms: p.rooms,
                mid_base: p.mid_base,
                mids: p.mids,
            };
            let target = p.target;
            let t = pusher::run(spec, Arc::new(move |_| body.clone())).await;
            let secs = t.elapsed.as_secs_f64().max(1e-9);
            println!(
                "push target={target:?} sent={} ok={} rejected={} errors={} secs={secs:.2} ok_per_sec={:.0} first_error={:?}",
                t.sent,
                t.ok,
                t.rejected,
                t.errors,
                t.ok as f64 / secs,
                t.first_error.unwrap_or_default()
            );
            Ok(())
        }
    }
}

/// Idle and room modes: open, report, hold, report.
async fn hold_crowd(c: CrowdArgs, stop: CancellationToken) -> Result<(), PushBenchError> {
    let spec = c.spec()?;
    let crowd = Crowd::open(spec, None).await;
    let s = crowd.stats.clone();
    let first_error = s.first_error.lock().clone().unwrap_or_default();
    println!(
        "ready up={} failed={} first_error={first_error:?}",
        s.up.load(Ordering::Relaxed),
        s.failed.load(Ordering::Relaxed)
    );
    if s.up.load(Ordering::Relaxed) == 0 {
        return Err(PushBenchError::NoneUp(first_error));
    }
    if c.hold.is_zero() {
        stop.cancelled().await;
    } else {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(c.hold) => {}
        }
    }
    println!(
        "done up={} dropped={} received={} first_ms={} last_ms={}",
        s.up.load(Ordering::Relaxed),
        s.dropped.load(Ordering::Relaxed),
        s.received.load(Ordering::Relaxed),
        s.first_ms.load(Ordering::Relaxed),
        s.last_ms.load(Ordering::Relaxed)
    );
    crowd.close().await;
    Ok(())
}

/// Latency mode: a crowd by mid, then mid pushes stamped with the send time.
async fn latency_mode(l: LatencyArgs) -> Result<(), PushBenchError> {
    let spec = l.crowd.spec()?;
    let samples = Arc::new(latency::Latencies::default());
    let crowd = Crowd::open(spec, Some(latency::sink(&samples))).await;
    let s = crowd.stats.clone();
    let up = s.up.load(Ordering::Relaxed);
    let first_error = s.first_error.lock().clone().unwrap_or_default();
    println!(
        "ready up={up} failed={} first_error={first_error:?}",
        s.failed.load(Ordering::Relaxed)
    );
    if up == 0 {
        return Err(PushBenchError::NoneUp(first_error));
    }
    // Sessions are written by logic during auth; give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spec = PushSpec {
        http: l.push.http,
        target: PushTarget::Mids,
        rate: l.push.rate,
        duration: l.push.duration,
        conns: l.push.http_conns,
        op: l.crowd.op,
        room_type: String::new(),
        room_prefix: String::new(),
        rooms: 0,
        mid_base: l.crowd.mid_base,
        mids: u64::try_from(l.crowd.conns).unwrap_or(1),
    };
    let t = pusher::run(spec, Arc::new(|_| latency::stamp())).await;
    // Wait for the stragglers (up to 3 s) before reading the samples.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while (samples.len() as u64) < t.ok && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed.as_secs_f64().max(1e-9);
    println!(
        "latency sent={} ok={} rejected={} errors={} received={} rate={:.0} p50_us={} p90_us={} p99_us={} max_us={} first_error={:?}",
        t.sent,
        t.ok,
        t.rejected,
        t.errors,
        samples.len(),
        t.sent as f64 / secs,
        samples.quantile(0.5),
        samples.quantile(0.9),
        samples.quantile(0.99),
        samples.quantile(1.0),
        t.first_error.unwrap_or_default()
    );
    crowd.close().await;
    Ok(())
}
