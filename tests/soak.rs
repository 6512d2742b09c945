//! The chaos soak (issue 10, part 8), run by `scripts/soak.sh`, ignored by a
//! plain `cargo test` because it runs for minutes.
//!
//! Real processes on loopback: ZooKeeper, two groups of persistent
//! redis-servers (master and replica, AOF), two `reborn proxy` processes and a
//! `reborn dashboard` process (the failover leader and migration runner).
//! Writers INCR keys of their own through either proxy and check every reply:
//! INCR returns the key's new value, so a value lower than the last one
//! acknowledged is an acknowledged write lost, seen at once, and a value above
//! what was sent is a write that never happened. Readers GET the same keys and
//! check them against what was acknowledged and sent; one speaks RESP3, so its
//! reads of a migrating slot move their keys on access. Meanwhile faults come one
//! after another: a master SIGKILLed (the failover replaces it, the old one
//! restarts and must rejoin as a replica), a replica SIGKILLed and restarted,
//! a proxy and the dashboard SIGKILLed and restarted, ZooKeeper SIGSTOPped for
//! 3 s, and slot migrations started. The keyspace also holds `SOAK_FILL` keys
//! written once at the start, and migrations are paced, so that a migration
//! is still moving keys when the next master dies (a failover mid-migration).
//! A deleter deletes every tenth filler key while all this goes on (most of
//! them while their slots migrate, so deletes race the migrator's copies),
//! and reads each right after its delete, and again 300 ms later through
//! the other proxy, over RESP3.
//! The push system runs on the same cluster (logic, a comet and job as
//! processes): a pusher sends a numbered push every 25 ms through logic, by
//! mid to a TCP and a WebSocket client and by room to both, and logic and job
//! are SIGKILLed and restarted with the proxy and the dashboard.
//! At the end, once every fault is repaired, every key is read and compared
//! with what its writer had acknowledged, every filler key with its value,
//! every acknowledged delete must have stayed deleted, and every accepted
//! push must have reached its clients (in `replica` mode; counted in both).
//!
//! Settings (environment): `SOAK_SECS` (default 60), `SOAK_WRITE_ACK`
//! (`master` or `replica`, default `master`), `SOAK_FAULT_EVERY` (seconds
//! between faults, default 6), `SOAK_FILL` (filler keys, default 60,000),
//! `SOAK_MIGRATE_SLOTS` (slots per migration, default 32) and
//! `SOAK_MIGRATE_RATE` (the migrator's keys/s, default 250).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, ProxyProcess, signal};
use common::pushes::{
    OP, Pusher, RoleProcess, Seen, auth_body, comet_process, connect, job_process, logic_process,
    push_targets, undelivered, watch,
};
use common::{GuardedChild, came_true, spawn_guarded};
use parking_lot::Mutex;
use reborn::topo::manager::task::{self, TaskState};
use reborn::topo::model::{Role, SlotState};
use reborn::topo::{Store, ZkConfig, watcher};
use reborn::up::RedisServer;

/// Keys per writer; writers own their keys, so each reply can be checked.
const KEYS_PER_WRITER: usize = 64;
const WRITERS: usize = 4;
const READERS: usize = 2;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One key's history as its writer knows it.
#[derive(Default)]
struct KeyState {
    /// The value of the last acknowledged INCR.
    acked: AtomicI64,
    /// INCRs sent, acknowledged or not: the value can never exceed it.
    sent: AtomicI64,
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    writes: AtomicU64,
    reads: AtomicU64,
    /// Acknowledged increments found missing by a later reply.
    lost_live: AtomicU64,
    /// A value above what was ever sent.
    phantoms: AtomicU64,
    /// A read below what was acknowledged before it was sent.
    stale_reads: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn error(&self, e: &str) {
        // Group errors by their start, without addresses and numbers.
        let kind: String = e
            .chars()
            .take(60)
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        *self.errors.lock().entry(kind).or_default() += 1;
    }
}

/// A client connection that reconnects, trying the proxies in turn.
struct Conn {
    proxies: Arc<Vec<String>>,
    next: usize,
    conn: Option<redis::aio::MultiplexedConnection>,
    /// Speaks RESP3 (`HELLO 3`), as redis-py 8 does by default.
    resp3: bool,
}

impl Conn {
    fn new(proxies: Arc<Vec<String>>, first: usize) -> Conn {
        Conn {
            proxies,
            next: first,
            conn: None,
            resp3: false,
        }
    }

    /// The connection speaking RESP3.
    fn resp3(mut self) -> Conn {
        self.resp3 = true;
        self
    }

    async fn call<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, String> {
        let c = self.connected().await?;
        let got = tokio::time::timeout(Duration::from_secs(5), cmd.query_async::<T>(c)).await;
        self.judge(got)
    }

    async fn pipe<T: redis::FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> Result<T, String> {
        let c = self.connected().await?;
        let got = tokio::time::timeout(Duration::from_secs(5), pipe.query_async::<T>(c)).await;
        self.judge(got)
    }

    /// The connection, opened to the next proxy in turn if there is none.
    async fn connected(&mut self) -> Result<&mut redis::aio::MultiplexedConnection, String> {
        if self.conn.is_none() {
            let addr = &self.proxies[self.next % self.proxies.len()];
            self.next += 1;
            let query = if self.resp3 { "/?protocol=resp3" } else { "" };
            let client = redis::Client::open(format!("redis://{addr}{query}")).map_err(|e| e.to_string())?;
            let c = tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection())
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| format!("connect: {e}"))?;
            self.conn = Some(c);
        }
        self.conn.as_mut().ok_or_else(|| "no connection".to_string())
    }

    /// A reply, or its error; a connection that broke or timed out is dropped.
    fn judge<T>(
        &mut self,
        got: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, String> {
        match got {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.conn = None;
                }
                Err(e.to_string())
            }
            Err(_) => {
                self.conn = None;
                Err("timed out after 5s".into())
            }
        }
    }
}

async fn writer(
    keys: Vec<(String, Arc<KeyState>)>,
    mut conn: Conn,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let (key, st) = &keys[i % keys.len()];
        i += 1;
        let sent = st.sent.fetch_add(1, Ordering::SeqCst) + 1;
        match conn.call::<i64>(redis::cmd("INCR").arg(key)).await {
            Ok(v) => {
                tally.writes.fetch_add(1, Ordering::Relaxed);
                let acked = st.acked.load(Ordering::SeqCst);
                if v <= acked {
                    // The key went back: acknowledged increments are gone.
                    tally
                        .lost_live
                        .fetch_add((acked - v + 1) as u64, Ordering::Relaxed);
                    eprintln!("soak: {key} answered {v} after {acked} was acknowledged");
                }
                if v > sent {
                    tally.phantoms.fetch_add(1, Ordering::Relaxed);
                    eprintln!("soak: {key} answered {v}, only {sent} INCRs were sent");
                }
                st.acked.store(v, Ordering::SeqCst);
            }
            Err(e) => {
                tally.error(&e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// What the deleter saw of its filler keys.
#[derive(Default)]
struct Deletes {
    /// `DEL` answered 1: the key must stay gone.
    done: Mutex<Vec<String>>,
    /// `DEL` failed: it may or may not have run.
    unsure: Mutex<Vec<String>>,
    /// `DEL` answered 0: the filler key was gone already, lost.
    missing: AtomicU64,
    /// `DEL` answered 1, and the `GET` pipelined right behind it still found
    /// the key (a mover's copy on a migration's target, served once the
    /// source lacked the key).
    read_back: AtomicU64,
    /// Acknowledged deletes read again later, by another client.
    read_later: AtomicU64,
    /// Of those, found again: a mover's copy that landed after the delete,
    /// served (`libs::tombstone`).
    back_later: AtomicU64,
}

/// How long after its delete the deleter reads a key again, through the
/// other proxy, over RESP3 (so the read moves keys on access): long enough
/// for a mover's copy read just before the delete to land.
const READ_AGAIN_AFTER: Duration = Duration::from_millis(300);

/// Deletes `keys` in turn, ten a second, each with a `GET` of it right behind
/// its `DEL`, in one pipeline; and [`READ_AGAIN_AFTER`] later, reads it again
/// on `later`.
async fn deleter(
    keys: Vec<String>,
    (mut conn, mut later): (Conn, Conn),
    deletes: Arc<Deletes>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut again: std::collections::VecDeque<(Instant, String)> = Default::default();
    for key in keys {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        while let Some((at, old)) = again.front()
            && at.elapsed() >= READ_AGAIN_AFTER
        {
            match later.call::<Option<String>>(redis::cmd("GET").arg(old)).await {
                Ok(read) => {
                    deletes.read_later.fetch_add(1, Ordering::Relaxed);
                    if let Some(value) = read {
                        deletes.back_later.fetch_add(1, Ordering::Relaxed);
                        eprintln!("soak: {old} read as {value:?} by another client after its DEL");
                    }
                }
                Err(e) => tally.error(&e),
            }
            again.pop_front();
        }
        let mut pipe = redis::pipe();
        pipe.del(&key).get(&key);
        match conn.pipe::<(i64, Option<String>)>(&pipe).await {
            Ok((1, read)) => {
                if let Some(value) = read {
                    deletes.read_back.fetch_add(1, Ordering::Relaxed);
                    eprintln!("soak: {key} read as {value:?} right after its DEL was acknowledged");
                }
                again.push_back((Instant::now(), key.clone()));
                deletes.done.lock().push(key)
            }
            Ok(_) => {
                deletes.missing.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: filler key {key} was gone before its DEL");
            }
            Err(e) => {
                tally.error(&e);
                deletes.unsure.lock().push(key);
            }
        }
    }
}

async fn reader(
    keys: Vec<(String, Arc<KeyState>)>,
    mut conn: Conn,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = fastrand::Rng::with_seed(7);
    while !stop.load(Ordering::Relaxed) {
        let (key, st) = &keys[rng.usize(..keys.len())];
        let acked = st.acked.load(Ordering::SeqCst);
        match conn.call::<Option<i64>>(redis::cmd("GET").arg(key)).await {
            Ok(v) => {
                tally.reads.fetch_add(1, Ordering::Relaxed);
                let v = v.unwrap_or(0);
                if v < acked {
                    tally.stale_reads.fetch_add(1, Ordering::Relaxed);
                }
                if v > st.sent.load(Ordering::SeqCst) {
                    tally.phantoms.fetch_add(1, Ordering::Relaxed);
                    eprintln!("soak: read {key} = {v}, more than was sent");
                }
            }
            Err(e) => {
                tally.error(&e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A `reborn dashboard` process that can be killed and started again.
struct Dashboard {
    conf: PathBuf,
    child: Option<GuardedChild>,
    _dir: tempfile::TempDir,
}

impl Dashboard {
    fn start(c: &Cluster) -> Dashboard {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("dashboard.toml");
        let text = format!(
            "listen = \"127.0.0.1:{}\"\n[zk]\naddr = \"{}\"\nroot = \"{}\"\nproduct = \"{}\"\nsession_timeout = \"2s\"\n\
             [failover]\nenabled = true\n[migration]\nmax_keys_per_sec = {}\n",
            common::free_port(),
            c.zk.addr,
            c.zk.root,
            c.zk.product,
            env_or("SOAK_MIGRATE_RATE", 250u64)
        );
        std::fs::write(&conf, text).expect("write config");
        let mut d = Dashboard {
            conf,
            child: None,
            _dir: dir,
        };
        d.restart();
        d
    }

    fn restart(&mut self) {
        if let Some(mut old) = self.child.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        self.child = Some(spawn_guarded(
            Command::new(env!("CARGO_BIN_EXE_reborn"))
                .args(["dashboard", "--config"])
                .arg(&self.conf)
                .env("RUST_LOG", "warn"),
        ));
    }
}

/// Every server of the cluster, found by address whatever its role now.
struct Servers(Vec<RedisServer>);

impl Servers {
    fn by_addr(&mut self, addr: &str) -> &mut RedisServer {
        self.0
            .iter_mut()
            .find(|s| s.addr() == addr)
            .unwrap_or_else(|| panic!("no server {addr}"))
    }
}

/// `(master, replicas)` of `group`, from ZooKeeper.
async fn members(store: &Store, group: u32) -> (Option<String>, Vec<String>) {
    let Ok(topo) = watcher::load(store).await else {
        return (None, Vec::new());
    };
    let Some(g) = topo.groups.get(&group) else {
        return (None, Vec::new());
    };
    let replicas = g
        .servers
        .iter()
        .filter(|s| s.role == Role::Replica)
        .map(|s| s.addr.clone())
        .collect();
    (g.master().map(str::to_string), replicas)
}

/// Whether `replica` streams from its master (`master_link_status:up`).
async fn link_up(replica: &str) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://{replica}")) else {
        return false;
    };
    let Ok(Ok(mut c)) =
        tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
    else {
        return false;
    };
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    info.contains("master_link_status:up")
}

/// A group is healthy when it has a master and every replica streams from it.
async fn healthy(store: &Store, group: u32) -> bool {
    let (master, replicas) = members(store, group).await;
    if master.is_none() || replicas.is_empty() {
        return false;
    }
    for r in &replicas {
        if !link_up(r).await {
            return false;
        }
    }
    true
}

/// The push system on the soak's cluster: logic, a comet and job as
/// processes (logic and job are killed and restarted among the faults), a
/// pusher sending a numbered push every 25 ms by mid to a TCP and a
/// WebSocket client and by room to both, and watchers recording what each
/// client received.
struct PushLoad {
    logic: RoleProcess,
    job_admin: std::net::SocketAddr,
    _comet: RoleProcess,
    job: RoleProcess,
    pusher: Pusher,
    watchers: BTreeMap<i64, Arc<std::sync::Mutex<Seen>>>,
    stop: Arc<AtomicBool>,
}

/// The soak's clients of the push system, and their room.
const PUSH_MIDS: [i64; 2] = [101, 102];
const PUSH_ROOM: &str = "live://soak";

impl PushLoad {
    async fn start(zk: &ZkConfig, proxies: &[String]) -> PushLoad {
        let (logic, http) = logic_process(zk, "logic-soak", proxies, Duration::from_secs(1800));
        let (comet, tcp, ws) = comet_process(zk, "comet-soak", "127.0.0.1");
        let (job, job_admin) = job_process(zk, proxies, "job-soak");
        let stop = Arc::new(AtomicBool::new(false));
        let mut watchers = BTreeMap::new();
        for (mid, addr) in PUSH_MIDS.into_iter().zip([tcp, ws]) {
            let c = connect(&addr, &auth_body(mid, &format!("soak-{mid}"), PUSH_ROOM, &[OP])).await;
            watchers.insert(mid, watch(c, mid, PUSH_ROOM, stop.clone()));
        }
        PushLoad {
            logic,
            job_admin,
            _comet: comet,
            job,
            pusher: Pusher::start(http, push_targets(PUSH_ROOM, &PUSH_MIDS)),
            watchers,
            stop,
        }
    }

    /// Stops pushing and waits up to `wait` for every accepted push to
    /// arrive: (pushes sent, accepted, accepted but not delivered, pushes a
    /// client got that were not its own, clients disconnected).
    async fn finish(self, wait: Duration) -> (u64, usize, usize, usize, usize) {
        let (accepted, sent) = self.pusher.finish().await;
        let missing = || -> usize {
            undelivered(&accepted, &self.watchers, &PUSH_MIDS, PUSH_ROOM)
                .values()
                .map(Vec::len)
                .sum()
        };
        came_true(wait, async || missing() == 0).await;
        self.stop.store(true, Ordering::Relaxed);
        if let Ok((_, stats)) = common::http::try_request(self.job_admin, "GET", "/stats", Vec::new()).await {
            eprintln!("soak: job's stats {}", String::from_utf8_lossy(&stats));
        }
        for (mid, numbers) in undelivered(&accepted, &self.watchers, &PUSH_MIDS, PUSH_ROOM) {
            let to: BTreeMap<u64, &str> = accepted.iter().map(|(n, to)| (*n, to.as_str())).collect();
            let listed: Vec<String> = numbers.iter().map(|n| format!("{n} ({})", to[n])).collect();
            eprintln!(
                "soak: client {mid} never got accepted pushes {}",
                listed.join(", ")
            );
        }
        let seen = |f: fn(&Seen) -> usize| -> usize {
            self.watchers.values().map(|s| f(&s.lock().expect("seen"))).sum()
        };
        (
            sent,
            accepted.len(),
            missing(),
            seen(|s| s.wrong.len()),
            seen(|s| usize::from(s.closed)),
        )
    }
}

#[derive(Default)]
struct Faults {
    log: Vec<String>,
    counts: BTreeMap<&'static str, u32>,
    failover_secs: Vec<f64>,
    not_replaced: u32,
    skipped: u32,
    /// Masters killed while slots of their group migrated.
    mid_migration: u32,
}

impl Faults {
    fn note(&mut self, kind: &'static str, what: String) {
        eprintln!("soak fault: {what}");
        *self.counts.entry(kind).or_default() += 1;
        self.log.push(what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: scripts/soak.sh runs it"]
async fn chaos_soak_loses_no_acknowledged_write() {
    let secs: u64 = env_or("SOAK_SECS", 60);
    let write_ack: String = env_or("SOAK_WRITE_ACK", "master".to_string());
    let fault_every = Duration::from_secs(env_or("SOAK_FAULT_EVERY", 6));
    assert!(
        matches!(write_ack.as_str(), "master" | "replica"),
        "SOAK_WRITE_ACK={write_ack}"
    );

    let (mut c, replicas) = Cluster::with_persistent_replicas().await;
    let mut servers = Servers(
        std::mem::take(&mut c.masters)
            .into_iter()
            .chain(replicas)
            .collect(),
    );
    let settings = format!("write_ack = \"{write_ack}\"\nhold_timeout = \"10s\"");
    let mut proxies: Vec<ProxyProcess> = Vec::new();
    for _ in 0..2 {
        proxies.push(
            c.proxy_process_with(Duration::from_secs(2), None, &settings)
                .await,
        );
    }
    let addrs = Arc::new(proxies.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
    let mut dashboard = Dashboard::start(&c);
    let mut push = PushLoad::start(&c.zk, &addrs).await;

    // Load: writers own their keys (spread over both groups), readers read them all.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let all: Vec<(String, Arc<KeyState>)> = (0..WRITERS * KEYS_PER_WRITER)
        .map(|i| (format!("soak:{i}"), Arc::new(KeyState::default())))
        .collect();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let keys = all.iter().skip(w).step_by(WRITERS).cloned().collect();
        let conn = Conn::new(addrs.clone(), w);
        tasks.push(tokio::spawn(writer(keys, conn, tally.clone(), stop.clone())));
    }
    for r in 0..READERS {
        let conn = Conn::new(addrs.clone(), r);
        // A RESP3 reader's requests of a migrating slot cannot be served
        // by the source's script (`proxy::source_call`): its reads move
        // their keys on access, as a write does.
        let conn = if r % 2 == 1 { conn.resp3() } else { conn };
        tasks.push(tokio::spawn(reader(
            all.clone(),
            conn,
            tally.clone(),
            stop.clone(),
        )));
    }

    // Filler: written once, read back at the end; it makes a migration last.
    let fill: usize = env_or("SOAK_FILL", 60_000);
    let fill_keys: Vec<String> = (0..fill).map(|i| format!("soakfill:{i}")).collect();
    {
        // In replica mode a write waits for a replica: let them stream first.
        for g in [1, 2] {
            let (Some(m), _) = members(&c.store, g).await else {
                panic!("group {g} has no master");
            };
            common::wait_replica_streaming(&m).await;
        }
        let mut conn = Conn::new(addrs.clone(), 0);
        for chunk in fill_keys.chunks(1000) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.set(k, k).ignore();
            }
            // SET again is harmless: retried until it is acknowledged.
            let mut tries = 0;
            while let Err(e) = conn.pipe::<()>(&pipe).await {
                tries += 1;
                assert!(tries < 20, "writing the filler: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let deletes = Arc::new(Deletes::default());
    {
        let mut doomed: Vec<String> = fill_keys.iter().skip(3).step_by(10).cloned().collect();
        fastrand::Rng::with_seed(3).shuffle(&mut doomed);
        let conns = (Conn::new(addrs.clone(), 1), Conn::new(addrs.clone(), 0).resp3());
        tasks.push(tokio::spawn(deleter(
            doomed,
            conns,
            deletes.clone(),
            tally.clone(),
            stop.clone(),
        )));
    }
    let migrate_slots: usize = env_or("SOAK_MIGRATE_SLOTS", 32);

    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut faults = Faults::default();
    let mut rng = fastrand::Rng::with_seed(env_or("SOAK_SEED", 1));
    let mut round = 0usize;
    while Instant::now() < deadline {
        tokio::time::sleep(fault_every).await;
        let group = 1 + (round / 6 % 2) as u32;
        let kind = round % 6;
        round += 1;
        match kind {
            0 => {
                // A master dies; the failover must replace it, and the old
                // one must come back as a replica.
                if !came_true(Duration::from_secs(20), async || healthy(&c.store, group).await).await {
                    faults.skipped += 1;
                    eprintln!("soak: group {group} not healthy, master kill skipped");
                    continue;
                }
                let (Some(old), _) = members(&c.store, group).await else {
                    continue;
                };
                let migrating = watcher::load(&c.store).await.is_ok_and(|t| {
                    t.slots
                        .slots()
                        .iter()
                        .any(|s| s.state != SlotState::Online && (s.group == group || s.from == Some(group)))
                });
                if migrating {
                    faults.mid_migration += 1;
                }
                servers.by_addr(&old).kill();
                let killed = Instant::now();
                let replaced = came_true(Duration::from_secs(15), async || {
                    members(&c.store, group).await.0.is_some_and(|m| m != old)
                })
                .await;
                if replaced {
                    faults.failover_secs.push(killed.elapsed().as_secs_f64());
                } else {
                    faults.not_replaced += 1;
                }
                servers.by_addr(&old).restart().expect("restart the old master");
                faults.note(
                    "master killed",
                    format!(
                        "{:>4.0}s master {old} of group {group} killed{}, replaced: {replaced} after {:.1}s",
                        started.elapsed().as_secs_f64(),
                        if migrating {
                            " while its slots migrated"
                        } else {
                            ""
                        },
                        killed.elapsed().as_secs_f64()
                    ),
                );
            }
            1 => {
                let (_, replicas) = members(&c.store, group).await;
                let Some(r) = replicas.first() else { continue };
                servers.by_addr(r).kill();
                tokio::time::sleep(Duration::from_secs(2)).await;
                servers.by_addr(r).restart().expect("restart replica");
                faults.note(
                    "replica killed",
                    format!(
                        "{:>4.0}s replica {r} of group {group} killed for 2s",
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
            2 => {
                let p = &mut proxies[round / 6 % 2];
                p.restart();
                faults.note(
                    "proxy killed",
                    format!(
                        "{:>4.0}s proxy {} killed and restarted",
                        started.elapsed().as_secs_f64(),
                        p.id
                    ),
                );
                push.job.restart();
                faults.note(
                    "job killed",
                    format!(
                        "{:>4.0}s job killed and restarted",
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
            3 => {
                dashboard.restart();
                faults.note(
                    "dashboard killed",
                    format!(
                        "{:>4.0}s dashboard killed and restarted",
                        started.elapsed().as_secs_f64()
                    ),
                );
                push.logic.restart();
                faults.note(
                    "logic killed",
                    format!(
                        "{:>4.0}s logic killed and restarted",
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
            4 => {
                let zk = common::zk_pid();
                signal(zk, "-STOP");
                tokio::time::sleep(Duration::from_secs(3)).await;
                signal(zk, "-CONT");
                faults.note(
                    "zookeeper stopped",
                    format!(
                        "{:>4.0}s ZooKeeper SIGSTOPped for 3s",
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
            _ => {
                // `migrate_slots` slots of one group, from a random one on,
                // move to the other group.
                let first = rng.u16(0..1024);
                let topo = watcher::load(&c.store).await;
                let Ok(topo) = topo else { continue };
                let from = topo.slots.get(first).map_or(1, |s| s.group);
                let to = if from == 1 { 2 } else { 1 };
                let slots: Vec<u16> = (0..1024u16)
                    .map(|i| (first + i) % 1024)
                    .filter(|&id| {
                        topo.slots
                            .get(id)
                            .is_some_and(|s| s.group == from && s.state == SlotState::Online)
                    })
                    .take(migrate_slots)
                    .collect();
                let n = slots.len();
                match task::enqueue(&c.store, slots, to).await {
                    Ok(t) => faults.note(
                        "migration started",
                        format!(
                            "{:>4.0}s migration {} of {n} slots from slot {first} on to group {to}",
                            started.elapsed().as_secs_f64(),
                            t.id,
                        ),
                    ),
                    Err(e) => eprintln!("soak: migration not queued: {e}"),
                }
            }
        }
    }

    // Repair: every group healthy, every task ended, then the last writes.
    let repaired = came_true(Duration::from_secs(60), async || {
        healthy(&c.store, 1).await && healthy(&c.store, 2).await
    })
    .await;
    let tasks_done = came_true(Duration::from_secs(120), async || {
        task::list(&c.store).await.is_ok_and(|ts| {
            ts.iter().all(|t| {
                matches!(
                    t.state,
                    TaskState::Done | TaskState::Failed | TaskState::Cancelled
                )
            })
        })
    })
    .await;
    let writes_before = tally.writes.load(Ordering::Relaxed);
    let writes_go_on = came_true(Duration::from_secs(30), async || {
        tally.writes.load(Ordering::Relaxed) > writes_before + 100
    })
    .await;
    let (pushes_sent, pushes_accepted, pushes_lost, pushes_wrong, push_clients_cut) =
        push.finish(Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }

    // The checker: every key against what its writer acknowledged.
    let mut conn = Conn::new(addrs.clone(), 0);
    let mut lost_final = 0i64;
    let mut unreadable = 0;
    for (key, st) in &all {
        let mut got = None;
        for _ in 0..50 {
            match conn.call::<Option<i64>>(redis::cmd("GET").arg(key)).await {
                Ok(v) => {
                    got = Some(v.unwrap_or(0));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        match got {
            Some(v) => {
                let acked = st.acked.load(Ordering::SeqCst);
                if v < acked {
                    eprintln!("soak: {key} holds {v}, {acked} was acknowledged");
                    lost_final += acked - v;
                }
                if v > st.sent.load(Ordering::SeqCst) {
                    tally.phantoms.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => unreadable += 1,
        }
    }
    // Every filler key, once, with its value, or gone if its delete was
    // acknowledged (either, if its delete failed).
    let deleted: std::collections::HashSet<String> = deletes.done.lock().iter().cloned().collect();
    let unsure: std::collections::HashSet<String> = deletes.unsure.lock().iter().cloned().collect();
    let mut resurrected = 0usize;
    let mut fill_lost = deletes.missing.load(Ordering::Relaxed) as usize;
    for chunk in fill_keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.get(k);
        }
        let mut values = None;
        for _ in 0..50 {
            match conn.pipe::<Vec<Option<String>>>(&pipe).await {
                Ok(v) => {
                    values = Some(v);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        match values {
            Some(v) => {
                for (k, v) in chunk.iter().zip(&v) {
                    // A filler key keeps its value, unless deleted; one whose
                    // delete failed may have either.
                    let kept = v.as_deref() == Some(k.as_str());
                    let may_be_gone = unsure.contains(k) && v.is_none();
                    if deleted.contains(k) {
                        if v.is_some() {
                            eprintln!("soak: {k} came back after its DEL was acknowledged");
                            resurrected += 1;
                        }
                    } else if !(kept || may_be_gone) {
                        fill_lost += 1;
                    }
                }
            }
            None => unreadable += chunk.len(),
        }
    }
    let records = reborn::topo::manager::failover::list(&c.store)
        .await
        .unwrap_or_default();
    let task_list = task::list(&c.store).await.unwrap_or_default();
    let migrated = task_list.iter().filter(|t| t.state == TaskState::Done).count();
    let failed_tasks: Vec<String> = task_list
        .iter()
        .filter(|t| t.state == TaskState::Failed)
        .map(|t| format!("{} ({})", t.id, t.error.clone().unwrap_or_default()))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();

    let mut report = String::new();
    let w = tally.writes.load(Ordering::Relaxed);
    let r = tally.reads.load(Ordering::Relaxed);
    let _ = writeln!(
        report,
        "soak: {elapsed:.0} s, write_ack = {write_ack}, 2 groups (master + replica, AOF), 2 proxies, 1 dashboard"
    );
    let _ = writeln!(
        report,
        "  operations: {w} INCRs acknowledged ({:.0}/s), {r} GETs ({:.0}/s)",
        w as f64 / elapsed,
        r as f64 / elapsed
    );
    let _ = writeln!(
        report,
        "  faults: {:?}, {} skipped (group not healthy yet)",
        faults.counts, faults.skipped
    );
    let fo = &faults.failover_secs;
    if !fo.is_empty() {
        let max = fo.iter().copied().fold(0.0, f64::max);
        let avg = fo.iter().sum::<f64>() / fo.len() as f64;
        let _ = writeln!(
            report,
            "  failovers: {} replaced (avg {avg:.1} s, max {max:.1} s), {} not within 15 s, {} while its slots \
             migrated; {} records",
            fo.len(),
            faults.not_replaced,
            faults.mid_migration,
            records.len()
        );
    }
    let _ = writeln!(
        report,
        "  migrations: {} queued, {migrated} done, failed: {failed_tasks:?}",
        task_list.len()
    );
    let errors = tally.errors.lock().clone();
    let total_errors: u64 = errors.values().sum();
    let _ = writeln!(report, "  client errors: {total_errors}");
    for (kind, n) in &errors {
        let _ = writeln!(report, "    {n:>6}  {kind}");
    }
    let lost_live = tally.lost_live.load(Ordering::Relaxed);
    let _ = writeln!(
        report,
        "  acknowledged writes lost: {lost_live} seen by writers, {lost_final} missing at the end; \
         phantom values: {}; stale reads: {}; unreadable keys: {unreadable}; filler keys lost: {fill_lost} of {fill}",
        tally.phantoms.load(Ordering::Relaxed),
        tally.stale_reads.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        report,
        "  deletes of filler keys: {} acknowledged, {} failed; read back right after: {}; read again by another client: {}, of them found: {}; acknowledged deletes undone at the end: {resurrected}",
        deleted.len(),
        unsure.len(),
        deletes.read_back.load(Ordering::Relaxed),
        deletes.read_later.load(Ordering::Relaxed),
        deletes.back_later.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        report,
        "  pushes (by mid to a TCP and a WebSocket client, by room to both): {pushes_sent} sent, \
         {pushes_accepted} accepted, {pushes_lost} accepted but never delivered; pushes to the wrong \
         client: {pushes_wrong}; clients disconnected: {push_clients_cut}"
    );
    let _ = writeln!(
        report,
        "  repaired: {repaired}, tasks ended: {tasks_done}, writes go on after: {writes_go_on}"
    );
    eprintln!("{report}");
    for l in &faults.log {
        eprintln!("  {l}");
    }

    assert!(repaired, "the cluster did not heal\n{report}");
    assert!(tasks_done, "a migration task never ended\n{report}");
    assert!(writes_go_on, "writes stopped\n{report}");
    assert_eq!(unreadable, 0, "{report}");
    assert_eq!(tally.phantoms.load(Ordering::Relaxed), 0, "{report}");
    assert_eq!(faults.not_replaced, 0, "a dead master was not replaced\n{report}");
    assert_eq!(pushes_wrong, 0, "pushes reached the wrong client\n{report}");
    assert_eq!(push_clients_cut, 0, "push clients were disconnected\n{report}");
    assert!(pushes_accepted > 100, "the pusher barely ran\n{report}");
    if write_ack == "replica" {
        assert_eq!(pushes_lost, 0, "accepted pushes lost\n{report}");
        assert_eq!(
            (lost_live, lost_final),
            (0, 0),
            "acknowledged writes lost\n{report}"
        );
        assert_eq!(resurrected, 0, "acknowledged deletes undone\n{report}");
        assert_eq!(
            deletes.read_back.load(Ordering::Relaxed),
            0,
            "keys read back right after their delete\n{report}"
        );
        assert_eq!(
            deletes.back_later.load(Ordering::Relaxed),
            0,
            "keys read back by another client after their delete\n{report}"
        );
    }
    assert!(deleted.len() > 100, "the deleter barely ran\n{report}");
    // Written once, long before any fault: every replica has them, in both modes.
    assert_eq!(fill_lost, 0, "filler keys lost\n{report}");
    drop(dashboard);
    drop(proxies);
}
