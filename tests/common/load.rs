//! A checked client load through the proxy, for tests that break something
//! (a ZooKeeper member, the whole ZooKeeper) and then assert what clients saw.
//!
//! Writers `SET` fresh keys and remember every acknowledged one; readers `GET`
//! the latest key a writer had acknowledged and check its value. Every reply is
//! checked: an error reply, a lost connection or a wrong value is kept with its
//! message (and the client reconnects, as a real one would); every request is
//! timed, so a stall shows as latency even when nothing fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;

/// The running load; [`Load::finish`] stops it and says what clients saw.
pub struct Load {
    shared: Shared,
    tasks: Vec<JoinHandle<Seen>>,
}

/// What every client of the load shares.
#[derive(Clone)]
struct Shared {
    proxy: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Requests answered as expected, by all clients.
    ops: Arc<AtomicU64>,
    /// The latest acknowledged write of each writer, for the readers.
    latest: Arc<Vec<Mutex<Option<Acked>>>>,
}

/// An acknowledged write: key and value.
type Acked = (String, u64);

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Requests answered as expected.
    pub ops: u64,
    /// Every failure, in words.
    pub errors: Vec<String>,
    /// Every acknowledged write.
    pub acked: Vec<Acked>,
    /// Latency of every request, sorted once merged.
    latencies: Vec<Duration>,
}

impl Seen {
    /// The slowest request.
    pub fn slowest(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }

    /// The `q` quantile (0.99 for p99) of the request latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        self.latencies[i]
    }

    /// One line for the test's output: ops, errors, p50/p99/max latency.
    pub fn summary(&self) -> String {
        format!(
            "{} ops, {} errors, latency p50 {:?} p99 {:?} max {:?}",
            self.ops,
            self.errors.len(),
            self.quantile(0.5),
            self.quantile(0.99),
            self.slowest()
        )
    }
}

impl Load {
    /// Starts `writers` writers and `readers` readers against `proxy`, each on
    /// its own connection, as fast as the proxy answers.
    pub fn start(proxy: SocketAddr, writers: usize, readers: usize) -> Load {
        let shared = Shared {
            proxy,
            stop: Arc::new(AtomicBool::new(false)),
            ops: Arc::new(AtomicU64::new(0)),
            latest: Arc::new((0..writers).map(|_| Mutex::new(None)).collect()),
        };
        let mut tasks: Vec<JoinHandle<Seen>> = (0..writers)
            .map(|w| tokio::spawn(write(shared.clone(), w)))
            .collect();
        tasks.extend((0..readers).map(|r| tokio::spawn(read(shared.clone(), r))));
        Load { shared, tasks }
    }

    /// Requests answered as expected so far.
    pub fn ops(&self) -> u64 {
        self.shared.ops.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests were answered as expected.
    pub async fn progressed(&self, n: u64, what: &str) {
        let target = self.ops() + n;
        let ops = self.shared.ops.clone();
        super::eventually(what, Duration::from_secs(30), || {
            let ops = ops.clone();
            async move { ops.load(Ordering::Relaxed) >= target }
        })
        .await;
    }

    /// Stops every client and merges what they saw.
    pub async fn finish(self) -> Seen {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut all = Seen::default();
        for task in self.tasks {
            let seen = task.await.expect("load task");
            all.ops += seen.ops;
            all.errors.extend(seen.errors);
            all.acked.extend(seen.acked);
            all.latencies.extend(seen.latencies);
        }
        all.latencies.sort_unstable();
        all
    }
}

/// The acknowledged writes in `acked` that the proxy does not return as
/// written, in words (empty: every acknowledged write is readable).
pub async fn unreadable(proxy: SocketAddr, acked: &[Acked]) -> Vec<String> {
    let mut conn = super::cluster::client(proxy).await;
    let mut wrong = Vec::new();
    for chunk in acked.chunks(500) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        let got: Vec<Option<u64>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("MGET the acknowledged keys");
        for ((key, want), got) in chunk.iter().zip(got) {
            if got != Some(*want) {
                wrong.push(format!("{key}: acknowledged {want}, reads {got:?}"));
            }
        }
    }
    wrong
}

/// One writer: `SET load:<w>:<n> <n>` for n = 0, 1, …
async fn write(shared: Shared, w: usize) -> Seen {
    let mut conn = super::cluster::client(shared.proxy).await;
    let mut seen = Seen::default();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let key = format!("load:{w}:{n}");
        let sent = Instant::now();
        let reply: redis::RedisResult<()> = redis::AsyncCommands::set(&mut conn, &key, n).await;
        seen.latencies.push(sent.elapsed());
        match reply {
            Ok(()) => {
                shared.ops.fetch_add(1, Ordering::Relaxed);
                seen.ops += 1;
                *shared.latest[w].lock() = Some((key.clone(), n));
                seen.acked.push((key, n));
            }
            Err(e) => failed(&mut seen, &mut conn, shared.proxy, format!("SET {key}: {e}")).await,
        }
        n += 1;
    }
    seen
}

/// One reader: `GET` of writer `r % writers`'s latest acknowledged key.
async fn read(shared: Shared, r: usize) -> Seen {
    let mut conn = super::cluster::client(shared.proxy).await;
    let mut seen = Seen::default();
    let mine = shared.latest.get(r % shared.latest.len().max(1));
    while !shared.stop.load(Ordering::Relaxed) {
        let Some((key, want)) = mine.and_then(|l| l.lock().clone()) else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let sent = Instant::now();
        let reply: redis::RedisResult<Option<u64>> = redis::AsyncCommands::get(&mut conn, &key).await;
        seen.latencies.push(sent.elapsed());
        match reply {
            Ok(Some(got)) if got == want => {
                shared.ops.fetch_add(1, Ordering::Relaxed);
                seen.ops += 1;
            }
            Ok(other) => seen
                .errors
                .push(format!("GET {key}: acknowledged {want}, read {other:?}")),
            Err(e) => failed(&mut seen, &mut conn, shared.proxy, format!("GET {key}: {e}")).await,
        }
    }
    seen
}

/// Records a failed request and, if the connection broke, opens a new one.
async fn failed(seen: &mut Seen, conn: &mut MultiplexedConnection, proxy: SocketAddr, what: String) {
    seen.errors.push(what);
    if redis::cmd("PING").query_async::<()>(conn).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(fresh) = redis::Client::open(format!("redis://{proxy}/"))
            && let Ok(c) = fresh.get_multiplexed_async_connection().await
        {
            *conn = c;
        }
    }
}
