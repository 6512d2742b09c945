//! `reborn load`: an open-loop RESP load generator, for latency under a
//! realistic, fixed load (`scripts/bench_migration.sh`).
//!
//! A closed-loop tool such as `redis-benchmark` sends a request only when the
//! previous one returned, so when the server stalls it simply sends less, and
//! the stall hides in a few slow samples (coordinated omission). Here every
//! request has an intended send time fixed in advance (`rate` per second,
//! spread over the connections), it is sent at that time or as soon as the
//! connection can, and its latency is counted from the *intended* time: a
//! 10 ms stall at 10,000 requests/s shows as a hundred slow requests, as the
//! clients of a real service would see it.
//!
//! Requests alternate `SET key:%012d <value>` and `GET` of random keys below
//! `keys`. Every `interval` one CSV line goes to stdout:
//! `unix_ms,requests,errors,p50_us,p99_us,max_us`, then a summary on stderr.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::hash::slot_of;
use super::resp;

/// The command line of `reborn load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Proxy (or redis-server) address.
    #[arg(long, default_value = "127.0.0.1:19000")]
    pub addr: String,
    /// Requests per second, in all (half SET, half GET).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u32,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Keys are `key:%012d` below this.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Bytes per SET value.
    #[arg(long, default_value_t = 16)]
    pub value_size: usize,
    /// Connections; the rate is spread evenly over them.
    #[arg(long, default_value_t = 10)]
    pub conns: usize,
    /// Milliseconds per report line.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Also write every request to this file: `intended_unix_us latency_us
    /// error(0/1) slot`, for exact percentiles over any time range or slots.
    #[arg(long)]
    pub samples: Option<std::path::PathBuf>,
    /// Stop early once this file exists (checked every interval).
    #[arg(long)]
    pub stop_file: Option<std::path::PathBuf>,
}

/// Why the generator could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad arguments: {0}")]
    Args(&'static str),
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("samples file: {0}")]
    Samples(std::io::Error),
}

/// One request's outcome: latency from its intended send time.
struct Sample {
    intended: Instant,
    latency: Duration,
    error: bool,
    /// The key's slot: latency can then be split by migrating slots.
    slot: u16,
}

/// Runs the load, printing a line per interval. Plain threads and blocking
/// sockets, not tasks: a thread sleeps to within tens of microseconds of the
/// intended time, where tokio's timer rounds up to the next millisecond.
///
/// # Errors
/// Bad arguments, or a connection that cannot be opened at the start.
pub fn run(args: &LoadArgs) -> Result<(), LoadError> {
    if args.rate == 0 || args.conns == 0 || args.keys == 0 || args.secs == 0 {
        return Err(LoadError::Args("rate, conns, keys and secs must be above 0"));
    }
    let (tx, rx) = mpsc::channel::<Sample>();
    let mut samples = match &args.samples {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(LoadError::Samples)?,
        )),
        None => None,
    };
    // Instants are turned into wall-clock time for the samples file.
    let (epoch_now, instant_now) = (SystemTime::now(), Instant::now());
    let unix_us = |at: Instant| {
        let wall = if at >= instant_now {
            epoch_now + (at - instant_now)
        } else {
            epoch_now - (instant_now - at)
        };
        wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs(args.secs);
    let period = Duration::from_secs_f64(args.conns as f64 / f64::from(args.rate));
    let mut threads = Vec::new();
    for i in 0..args.conns {
        let conn = TcpStream::connect(&args.addr).map_err(|source| LoadError::Connect {
            addr: args.addr.clone(),
            source,
        })?;
        let _ = conn.set_nodelay(true);
        // Connections start staggered, so the requests are evenly spaced.
        let first = start + period.mul_f64(i as f64 / args.conns as f64);
        let plan = Plan {
            first,
            period,
            end,
            keys: args.keys,
            value: vec![b'v'; args.value_size],
            seed: i as u64 + 1,
        };
        threads.extend(drive(conn, plan, stop.clone(), tx.clone()));
    }
    drop(tx);

    let interval = Duration::from_millis(args.interval_ms.max(10));
    let mut next_line = start + interval;
    let (mut window, mut all) = (Vec::new(), Vec::new());
    let (mut errors, mut all_errors) = (0u64, 0u64);
    println!("unix_ms,requests,errors,p50_us,p99_us,max_us");
    loop {
        let wait = next_line.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(s) => {
                errors += u64::from(s.error);
                window.push(s.latency);
                if let Some(out) = samples.as_mut() {
                    let line = format!(
                        "{} {} {} {}\n",
                        unix_us(s.intended),
                        s.latency.as_micros(),
                        u8::from(s.error),
                        s.slot
                    );
                    out.write_all(line.as_bytes()).map_err(LoadError::Samples)?;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if args.stop_file.as_ref().is_some_and(|f| f.exists()) {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                print_line(&mut window, errors);
                all_errors += errors;
                errors = 0;
                all.append(&mut window);
                next_line += interval;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    print_line(&mut window, errors);
    all_errors += errors;
    all.append(&mut window);
    if let Some(mut out) = samples {
        out.flush().map_err(LoadError::Samples)?;
    }
    for t in threads {
        let _ = t.join();
    }
    all.sort_unstable();
    let q = |p: f64| {
        let i = ((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1));
        all.get(i).copied().unwrap_or_default()
    };
    eprintln!(
        "load: {} requests at {}/s over {} connections, {all_errors} errors; latency from the intended \
         send time: p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        all.len(),
        args.rate,
        args.conns,
        q(0.5),
        q(0.99),
        q(0.999),
        all.last().copied().unwrap_or_default()
    );
    Ok(())
}

/// Prints one interval's line (sorting the samples in place).
fn print_line(window: &mut [Duration], errors: u64) {
    window.sort_unstable();
    let us = |d: Option<&Duration>| d.map_or(0, |d| d.as_micros());
    let n = window.len();
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    println!(
        "{unix_ms},{n},{errors},{},{},{}",
        us(window.get(n / 2)),
        us(window.get((n * 99 / 100).min(n.saturating_sub(1)))),
        us(window.last())
    );
}

/// What one connection sends, and when.
struct Plan {
    first: Instant,
    period: Duration,
    end: Instant,
    keys: u64,
    value: Vec<u8>,
    seed: u64,
}

/// One connection, two threads: the writer sends each request at its intended
/// time (at once when behind), the reader reads the replies in order and
/// reports each latency from that time.
fn drive(
    conn: TcpStream,
    plan: Plan,
    stop: Arc<std::sync::atomic::AtomicBool>,
    out: mpsc::Sender<Sample>,
) -> Vec<std::thread::JoinHandle<()>> {
    let Ok(mut rd) = conn.try_clone() else {
        return Vec::new();
    };
    let mut wr = conn;
    let intended = Arc::new(Mutex::new(VecDeque::<(Instant, u16)>::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (intended, done) = (intended.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(plan.seed);
            let mut due = plan.first;
            let mut n = 0u64;
            while due < plan.end && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let key = format!("key:{:012}", rng.u64(..plan.keys));
                let frame = if n.is_multiple_of(2) {
                    resp::encode_array(&[b"SET".as_ref(), key.as_bytes(), &plan.value])
                } else {
                    resp::encode_array(&[b"GET".as_ref(), key.as_bytes()])
                };
                n += 1;
                intended.lock().push_back((due, slot_of(key.as_bytes())));
                if wr.write_all(&frame).is_err() {
                    break;
                }
                due += plan.period;
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let reader = std::thread::spawn(move || {
        let _ = rd.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Ok(Some(n)) = resp::reply_len(&buf) {
                let error = buf.first() == Some(&b'-');
                buf.drain(..n);
                let Some((at, slot)) = intended.lock().pop_front() else {
                    break;
                };
                let _ = out.send(Sample {
                    intended: at,
                    latency: at.elapsed(),
                    error,
                    slot,
                });
            }
            let finished = done.load(std::sync::atomic::Ordering::SeqCst) && intended.lock().is_empty();
            if finished {
                return;
            }
            match rd.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        // The connection is gone: what it still owed counts as errors.
        for (at, slot) in intended.lock().drain(..) {
            let _ = out.send(Sample {
                intended: at,
                latency: at.elapsed(),
                error: true,
                slot,
            });
        }
    });
    vec![writer, reader]
}
