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
//!
//! The generator shares the machine with what it measures, so it is one
//! thread: it sends what is due, then waits in `ppoll` for a reply or the next
//! due time, with a timer slack of a microsecond. Threads per connection (and
//! a channel to a collector) cost three wake-ups per request, each a context
//! switch taken from the proxy and the servers under test; one thread makes a
//! third as many (`docs/benchmarks.md`).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::num::NonZeroU64;
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use rustix::event::{PollFd, PollFlags, Timespec};

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
    #[error("poll: {0}")]
    Poll(std::io::Error),
}

/// How long replies still owed at the end are waited for before they count
/// as errors.
const DRAIN: Duration = Duration::from_secs(5);

/// Runs the load, printing a line per interval.
///
/// # Errors
/// Bad arguments, a connection that cannot be opened at the start, or the
/// samples file.
pub fn run(args: &LoadArgs) -> Result<(), LoadError> {
    if args.rate == 0 || args.conns == 0 || args.keys == 0 || args.secs == 0 {
        return Err(LoadError::Args("rate, conns, keys and secs must be above 0"));
    }
    // The default slack (50 µs) would send every request late by up to that.
    let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1_000));
    let mut conns = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let connect = |addr: &str| {
            let stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        };
        let stream = connect(&args.addr).map_err(|source| LoadError::Connect {
            addr: args.addr.clone(),
            source,
        })?;
        conns.push(Conn::new(stream));
    }
    let samples = match &args.samples {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(LoadError::Samples)?,
        )),
        None => None,
    };
    let start = Instant::now() + Duration::from_millis(50);
    let mut load = Load {
        conns,
        rng: fastrand::Rng::with_seed(1),
        value: vec![b'v'; args.value_size],
        keys: args.keys,
        next_due: start,
        next_conn: 0,
        step: Duration::from_secs_f64(1.0 / f64::from(args.rate)),
        end: start + Duration::from_secs(args.secs),
        record: Record::new(samples),
    };
    let interval = Duration::from_millis(args.interval_ms.max(10));
    let mut next_line = start + interval;
    println!("unix_ms,requests,errors,p50_us,p99_us,max_us");
    loop {
        let now = Instant::now();
        load.send_due(now);
        if now >= next_line {
            if args.stop_file.as_ref().is_some_and(|f| f.exists()) {
                load.end = load.end.min(now);
            }
            load.record.print_line();
            next_line += interval;
        }
        if now >= load.end && load.owed() == 0 {
            break;
        }
        if now >= load.end + DRAIN {
            load.give_up(now);
            break;
        }
        let mut wake = next_line.min(load.end + DRAIN);
        if load.next_due < load.end {
            wake = wake.min(load.next_due);
        }
        load.wait(wake.saturating_duration_since(now))?;
    }
    load.record.finish(args)
}

/// One connection: what it still has to write and which replies it owes, in
/// order, with their intended send times and slots.
struct Conn {
    stream: TcpStream,
    out: BytesMut,
    input: BytesMut,
    /// Where framing `input` stopped, so a reply split over reads is not
    /// walked again.
    scan: resp::ReplyScan,
    owed: VecDeque<(Instant, u16)>,
    sent: u64,
    dead: bool,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            out: BytesMut::with_capacity(4096),
            input: BytesMut::with_capacity(64 * 1024),
            scan: resp::ReplyScan::default(),
            owed: VecDeque::new(),
            sent: 0,
            dead: false,
        }
    }

    /// Writes what it can without blocking.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what has arrived and hands each complete reply to `done`.
    fn read(&mut self, mut done: impl FnMut(Instant, u16, bool)) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    // A short read took all there was: asking again would
                    // only cost a system call to hear "would block".
                    if n < chunk.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while let Some(n) = self.scan.next_len(&self.input).map_err(std::io::Error::other)? {
            let error = resp::is_error(&self.input);
            self.input.advance(n);
            let Some((at, slot)) = self.owed.pop_front() else {
                return Err(std::io::Error::other("a reply nobody asked for"));
            };
            done(at, slot, error);
        }
        Ok(())
    }
}

/// The generator's state: the connections and the schedule.
struct Load {
    conns: Vec<Conn>,
    rng: fastrand::Rng,
    value: Vec<u8>,
    keys: u64,
    /// The next request's intended send time; one every `step`, round robin
    /// over the connections.
    next_due: Instant,
    next_conn: usize,
    step: Duration,
    end: Instant,
    record: Record,
}

impl Load {
    /// Queues and writes every request due by `now` (all at once when behind:
    /// their latency still counts from their own intended time).
    fn send_due(&mut self, now: Instant) {
        while self.next_due <= now && self.next_due < self.end {
            let due = self.next_due;
            self.next_due += self.step;
            let i = self.next_conn;
            self.next_conn = (i + 1) % self.conns.len();
            let key = format!("key:{:012}", self.rng.u64(..self.keys));
            let slot = slot_of(key.as_bytes());
            let conn = &mut self.conns[i];
            if conn.dead {
                self.record.sample(due, now, slot, true);
                continue;
            }
            if conn.sent.is_multiple_of(2) {
                resp::put_header(&mut conn.out, b'*', 3);
                resp::put_bulk(&mut conn.out, b"SET");
                resp::put_bulk(&mut conn.out, key.as_bytes());
                resp::put_bulk(&mut conn.out, &self.value);
            } else {
                resp::put_header(&mut conn.out, b'*', 2);
                resp::put_bulk(&mut conn.out, b"GET");
                resp::put_bulk(&mut conn.out, key.as_bytes());
            }
            conn.sent += 1;
            conn.owed.push_back((due, slot));
        }
        for i in 0..self.conns.len() {
            if !self.conns[i].dead && self.conns[i].flush().is_err() {
                self.kill(i, now);
            }
        }
    }

    /// Replies still owed.
    fn owed(&self) -> usize {
        self.conns.iter().map(|c| c.owed.len()).sum()
    }

    /// A connection that failed: what it owed, and all it would have been
    /// sent, count as errors.
    fn kill(&mut self, i: usize, now: Instant) {
        let conn = &mut self.conns[i];
        conn.dead = true;
        for (at, slot) in conn.owed.drain(..) {
            self.record.sample(at, now, slot, true);
        }
    }

    /// Replies that never came count as errors.
    fn give_up(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            self.kill(i, now);
        }
    }

    /// Waits up to `timeout` for replies (or room to write) and takes them in.
    fn wait(&mut self, timeout: Duration) -> Result<(), LoadError> {
        let mut fds: Vec<PollFd<'_>> = self
            .conns
            .iter()
            .map(|c| {
                let mut flags = PollFlags::empty();
                if !c.dead {
                    flags |= PollFlags::IN;
                    if !c.out.is_empty() {
                        flags |= PollFlags::OUT;
                    }
                }
                PollFd::from_borrowed_fd(c.stream.as_fd(), flags)
            })
            .collect();
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(LoadError::Poll(e.into())),
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        for (i, ready) in ready.into_iter().enumerate() {
            if !ready {
                continue;
            }
            let (conn, record) = (&mut self.conns[i], &mut self.record);
            let mut now = None;
            let read = conn.read(|at, slot, error| {
                let now = *now.get_or_insert_with(Instant::now);
                record.sample(at, now, slot, error);
            });
            let write = conn.flush();
            if read.is_err() || write.is_err() {
                self.kill(i, Instant::now());
            }
        }
        Ok(())
    }
}

/// The latencies seen: per report line, in all, and (optionally) each
/// request to a file.
struct Record {
    window: Vec<Duration>,
    all: Vec<Duration>,
    errors: u64,
    all_errors: u64,
    samples: Option<std::io::BufWriter<std::fs::File>>,
    samples_error: Option<std::io::Error>,
    /// Instants are turned into wall-clock time for the samples file.
    epoch: (SystemTime, Instant),
}

impl Record {
    fn new(samples: Option<std::io::BufWriter<std::fs::File>>) -> Record {
        Record {
            window: Vec::new(),
            all: Vec::new(),
            errors: 0,
            all_errors: 0,
            samples,
            samples_error: None,
            epoch: (SystemTime::now(), Instant::now()),
        }
    }

    fn sample(&mut self, intended: Instant, now: Instant, slot: u16, error: bool) {
        let latency = now.saturating_duration_since(intended);
        self.errors += u64::from(error);
        self.window.push(latency);
        if self.samples_error.is_none() {
            let at = self.unix_us(intended);
            if let Some(Err(e)) = self
                .samples
                .as_mut()
                .map(|out| writeln!(out, "{at} {} {} {slot}", latency.as_micros(), u8::from(error)))
            {
                self.samples_error = Some(e);
            }
        }
    }

    fn unix_us(&self, at: Instant) -> u128 {
        let (epoch_now, instant_now) = self.epoch;
        let wall = if at >= instant_now {
            epoch_now + (at - instant_now)
        } else {
            epoch_now - (instant_now - at)
        };
        wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
    }

    /// Prints one interval's line and starts the next.
    fn print_line(&mut self) {
        self.window.sort_unstable();
        let us = |d: Option<&Duration>| d.map_or(0, |d| d.as_micros());
        let (w, n) = (&self.window, self.window.len());
        let unix_ms = super::clock::unix_ms();
        println!(
            "{unix_ms},{n},{},{},{},{}",
            self.errors,
            us(w.get(n / 2)),
            us(w.get((n * 99 / 100).min(n.saturating_sub(1)))),
            us(w.last())
        );
        self.all_errors += self.errors;
        self.errors = 0;
        self.all.append(&mut self.window);
    }

    /// The last line, the samples file and the summary.
    fn finish(mut self, args: &LoadArgs) -> Result<(), LoadError> {
        self.print_line();
        if let Some(e) = self.samples_error.take() {
            return Err(LoadError::Samples(e));
        }
        if let Some(mut out) = self.samples.take() {
            out.flush().map_err(LoadError::Samples)?;
        }
        let all = &mut self.all;
        all.sort_unstable();
        let q = |p: f64| {
            let i = ((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1));
            all.get(i).copied().unwrap_or_default()
        };
        eprintln!(
            "load: {} requests at {}/s over {} connections, {} errors; latency from the intended \
             send time: p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
            all.len(),
            args.rate,
            args.conns,
            self.all_errors,
            q(0.5),
            q(0.99),
            q(0.999),
            all.last().copied().unwrap_or_default()
        );
        Ok(())
    }
}
