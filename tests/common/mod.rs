//! The integration-test harness, shared by every test binary (`mod common;`).
//!
//! Real processes only: one ZooKeeper per test binary (each test isolates itself
//! under its own [`unique_root`]), and a fresh `redis-server` per call of
//! [`redis`], on ports nobody else was handed. The servers are started by the
//! same code as `reborn up` ([`reborn::up::ZooKeeper`], [`reborn::up::RedisServer`]).
//! A test that kills ZooKeeper members starts an [`ensemble`] of its own.
//!
//! Why the shared ZooKeeper cannot outlive the test binary although it lives in a
//! `static` (statics are never dropped): every process the library starts has an
//! *orphan guard*, a tiny `sh` blocked reading a pipe whose write end only this
//! process holds. When the test binary exits — normally, by panic, or SIGKILL from
//! a CI timeout — the kernel closes that pipe, the guard wakes up, stops the java
//! process and removes its temp dir. See `src/up/orphan_guard.rs`.
//!
//! Also: raw-RESP helpers ([`send_raw`], [`RawConn`], [`Resp`]) for tests that
//! must control the exact bytes on the wire (partial frames, pipelines written
//! in pieces, RESP3 replies compared byte for byte), which is why they keep a
//! plain socket rather than the framed client. They decode with redis-protocol
//! and frame with the proxy's splitter (`libs::resp::reply_len`), so no RESP
//! parser is written here. For ordinary commands use the `redis` crate through
//! [`client`], or `reborn::libs::resp_client::RespConn`.

// Every test binary includes this file and uses only part of it.
#![allow(dead_code)]

pub mod cluster;
pub mod http;
pub mod im;
pub mod load;
pub mod pushes;
pub mod relay;

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use reborn::libs::resp::reply_len;
use reborn::topo::ZkConfig;
use reborn::up::{Ensemble, MemberPorts, OrphanGuard, RedisServer, UpError, ZooKeeper};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ZooKeeper of this test binary (see the module docs for its lifetime).
static ZK: OnceLock<ZooKeeper> = OnceLock::new();

/// `host:port` of this binary's ZooKeeper, started on first use (~1-3 s).
/// Tests share it: put everything under [`unique_root`].
pub fn zk() -> String {
    ZK.get_or_init(|| with_free_port("ZooKeeper", ZooKeeper::start_in_temp_dir))
        .addr()
}

/// The process id of this binary's ZooKeeper (to pause it with
/// [`cluster::signal`]); only for a test binary that owns it alone.
pub fn zk_pid() -> u32 {
    zk();
    ZK.get().and_then(ZooKeeper::pid).expect("ZooKeeper runs")
}

/// A ZooKeeper root no other test (of any binary run at the same time) uses:
/// `/t<pid>_<n>`.
pub fn unique_root() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "/t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A [`ZkConfig`] for this binary's ZooKeeper under a fresh [`unique_root`],
/// product `test`, with a short session (2 s) so expiry tests stay fast.
pub fn zk_config() -> ZkConfig {
    ZkConfig {
        addr: zk(),
        root: unique_root(),
        product: "test".to_string(),
        session_timeout: Duration::from_secs(2),
    }
}

/// A free TCP port on 127.0.0.1, never the same twice in this process.
///
/// Picked at random below the kernel's ephemeral range (32768+), where the
/// `bind(:0)` trick would hand out ports that outgoing connections may grab
/// before the server starts; and away from `reborn up`'s defaults, so a running
/// demo cluster does not collide with tests.
pub fn free_port() -> u16 {
    static HANDED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed = HANDED.get_or_init(|| Mutex::new(HashSet::new()));
    let random = RandomState::new();
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let seed = random.hash_one((attempt, std::process::id(), Instant::now()));
        let port = 20000 + (seed % 12000) as u16;
        let mut taken = handed.lock().expect("port set poisoned");
        if !taken.contains(&port) && port_is_free(port) {
            taken.insert(port);
            return port;
        }
    }
}

/// True if nothing listens on `127.0.0.1:port` and we could bind it.
pub fn port_is_free(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() && TcpListener::bind(addr).is_ok()
}

/// A fresh `redis-server` on a free port, in a temp dir; stopped and cleaned up
/// when dropped.
pub fn redis() -> RedisServer {
    with_free_port("redis-server", RedisServer::start_in_temp_dir)
}

/// Like [`redis`], keeping an AOF and a config file (as `reborn up` runs
/// them): a restart brings its data and its `REPLICAOF` back.
pub fn redis_persistent() -> RedisServer {
    with_free_port("redis-server", |port| {
        RedisServer::builder(port).persistent().start()
    })
}

/// Waits until `master` streams to a replica: a `WAIT 1` sent to it
/// directly is answered 1. (Redis 7 starts streaming to a new replica on its
/// first ACK, up to a second after the replica's link is up; until then the
/// replica does not count for `WAIT`.)
pub async fn wait_replica_streaming(master: &str) {
    let master = master.to_string();
    eventually(
        "the master streams to its replica",
        Duration::from_secs(10),
        || {
            let master = master.clone();
            async move {
                let mut m = client(&master).await;
                let _: Result<(), _> = redis::AsyncCommands::set(&mut m, "reborn:probe", 1).await;
                let n: i64 = redis::cmd("WAIT")
                    .arg(1)
                    .arg(100)
                    .query_async(&mut m)
                    .await
                    .unwrap_or(0);
                n == 1
            }
        },
    )
    .await;
}

/// Like [`redis`], with a single database: no room for a migration's
/// tombstones (`libs::tombstone`).
pub fn redis_one_database() -> RedisServer {
    with_free_port("redis-server", |port| {
        RedisServer::builder(port).databases(1).start()
    })
}

/// Like [`redis`], with `requirepass` and `masterauth` set to `password`.
pub fn redis_with_password(password: &str) -> RedisServer {
    with_free_port("redis-server", |port| {
        RedisServer::builder(port).password(password).start()
    })
}

/// A ZooKeeper ensemble of `nodes` members (an odd number) on free ports, in
/// temp dirs, of the calling test alone: for tests that kill its members.
/// Takes a few seconds (every member's JVM, then the election).
pub fn ensemble(nodes: usize) -> Ensemble {
    with_free_ports("a ZooKeeper ensemble", || {
        let ports: Vec<MemberPorts> = (0..nodes)
            .map(|_| MemberPorts {
                client: free_port(),
                quorum: free_port(),
                election: free_port(),
            })
            .collect();
        Ensemble::start_in_temp_dirs(&ports)
    })
}

/// Starts something on a fresh port, retrying on another port if someone else
/// (another test binary, another user of this machine) took it meanwhile.
fn with_free_port<T>(what: &str, start: impl Fn(u16) -> Result<T, UpError>) -> T {
    with_free_ports(what, || start(free_port()))
}

/// Runs `start`, which picks its own free ports, again while it fails on a
/// port taken meanwhile.
fn with_free_ports<T>(what: &str, start: impl Fn() -> Result<T, UpError>) -> T {
    let mut last = None;
    for _ in 0..5 {
        match start() {
            Ok(server) => return server,
            Err(e @ (UpError::PortInUse { .. } | UpError::Impostor { .. })) => last = Some(e),
            Err(e) => panic!("cannot start {what}: {e}"),
        }
    }
    panic!("cannot start {what}: ports keep being taken: {last:?}")
}

/// A child process (e.g. the `reborn` binary) that is killed when dropped *and*
/// when the test binary dies without dropping it (see the module docs).
/// Derefs to [`Child`] for `id()`, `try_wait()`, the pipes, ….
pub struct GuardedChild {
    // Option: disarmed first on drop, before the child is reaped.
    guard: Option<OrphanGuard>,
    child: Child,
}

/// Spawns `cmd` as a [`GuardedChild`].
pub fn spawn_guarded(cmd: &mut Command) -> GuardedChild {
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let guard = OrphanGuard::watch(child.id()).expect("orphan guard");
    GuardedChild {
        guard: Some(guard),
        child,
    }
}

impl Deref for GuardedChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for GuardedChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for GuardedChild {
    fn drop(&mut self) {
        drop(self.guard.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis` crate connection to `addr` (`host:port`).
pub async fn client(addr: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}/"))
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// The number `field` of `INFO <section>` from the server (or proxy) at `addr`.
pub async fn info_number(addr: &str, section: &str, field: &str) -> i64 {
    let mut c = client(addr).await;
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("INFO {section} on {addr}: {e}"));
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO {section} of {addr}"))
}

/// `blocked_clients` of `INFO clients` at `addr`: a redis-server's clients
/// blocked there, or through a proxy, the proxy's own.
pub async fn blocked_clients(addr: &str) -> i64 {
    info_number(addr, "clients", "blocked_clients").await
}

/// Waits (5 s at most) until each server's `blocked_clients` is as given.
pub async fn wait_blocked(expected: &[(&str, i64)], what: &str) {
    eventually(what, Duration::from_secs(5), async || {
        for &(addr, n) in expected {
            if blocked_clients(addr).await != n {
                return false;
            }
        }
        true
    })
    .await;
}

/// Polls `check` every 20 ms until it returns true; panics naming `what` after
/// `timeout`. For conditions that become true asynchronously (replication,
/// watches, session expiry). `check` may be an `async ||` closure that
/// borrows (even mutably) what the test holds, e.g. a connection.
pub async fn eventually(what: &str, timeout: Duration, check: impl AsyncFnMut() -> bool) {
    assert!(
        came_true(timeout, check).await,
        "timed out after {timeout:?}: {what}"
    );
}

/// Polls `check` every 20 ms until it returns true or `timeout` has passed;
/// whether it came true. For tests that count a condition that did not come
/// (the soak's faults) rather than fail at once.
pub async fn came_true(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Like [`eventually`], for a condition that yields a value: polls `check`
/// every 20 ms until it returns `Ok(value)`, and returns that value. `Err(why)`
/// means not yet; after `timeout` it panics naming `what` and the last `why`
/// (the last error, or what was seen instead).
pub async fn eventually_ok<T, E: std::fmt::Display>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(why) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?}: {what}; last: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually_ok`] for a check that has nothing to say while not ready:
/// returns the value of the first `Some`.
pub async fn eventually_some<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    eventually_ok(what, timeout, async || check().await.ok_or("nothing yet")).await
}

/// Encodes one command as a RESP array of bulk strings.
pub fn cmd<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `EVAL` of a script that keeps its Redis busy for `d`, on the slot of
/// `key`: Redis answers nothing else meanwhile (until its
/// `busy-reply-threshold`, 5 s), as during any slow command. Its reply is
/// `:1`.
pub fn busy_eval(d: Duration, key: &str) -> Vec<u8> {
    let script = format!("{} return 1", spin_lua(d));
    cmd(&["EVAL", script.as_str(), "1", key])
}

/// Lua that spins for `d` by Redis's `TIME`, counting only the steps under
/// 100 ms between two readings. `TIME` is the wall clock, which the host may
/// step (a microVM restored or moved); a script timed by the plain
/// difference was once seen to end early, the likeliest cause of which is
/// such a step. A stall of Redis itself is not counted either, so the spin
/// can only run longer than `d`.
pub fn spin_lua(d: Duration) -> String {
    format!(
        "local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end \
         local spun, prev = 0, now() \
         while spun < {} do local t = now() local dt = t - prev \
         if dt > 0 and dt < 100000 then spun = spun + dt end prev = t end",
        d.as_micros()
    )
}

/// How long the raw helpers wait for bytes before giving up.
const RAW_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `bytes` on a new connection and returns everything that comes back.
///
/// It stops reading when as many replies arrived as `bytes` holds complete
/// RESP commands, when the server closes the connection, or — if `bytes` is not
/// clean RESP (inline commands, garbage, a partial frame) — after 300 ms without
/// new data. At most 5 s in all.
pub async fn send_raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let expected = count_frames(bytes);
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.write_all(bytes).await.expect("write request");
    let deadline = Instant::now() + RAW_TIMEOUT;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(n) = expected
            && count_frames(&out) == Some(n)
        {
            return out;
        }
        let wait = match expected {
            Some(_) => deadline.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(300),
        };
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if out.is_empty() => panic!("read from {addr}: {e}"),
            Ok(Err(_)) => return out,
        }
        if Instant::now() >= deadline {
            return out;
        }
    }
}

/// How many complete RESP frames `bytes` holds; `None` unless it is exactly a
/// sequence of complete frames.
pub fn count_frames(bytes: &[u8]) -> Option<usize> {
    let mut n = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        let (_, used) = Resp::parse(rest).ok()??;
        rest = &rest[used..];
        n += 1;
    }
    Some(n)
}

/// One RESP2 value, for asserting on raw replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3 foo`, `None` for `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*2 …`, `None` for `*-1`.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// A bulk string value.
    pub fn bulk(s: impl AsRef<[u8]>) -> Resp {
        Resp::Bulk(Some(s.as_ref().to_vec()))
    }

    /// Parses one value from the front of `buf` with redis-protocol's decoder:
    /// `Ok(None)` if incomplete, `Ok(Some((value, bytes used)))`, or an error
    /// for bytes that are not RESP2.
    pub fn parse(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
        match decode(buf).map_err(|e| format!("not RESP: {e}"))? {
            None => Ok(None),
            Some((frame, used)) => Ok(Some((Resp::from_frame(frame, buf), used))),
        }
    }

    /// The decoded `frame` as a [`Resp`]. `raw` starts with the frame's own
    /// bytes: they tell a null bulk (`$-1`) from a null array (`*-1`), which
    /// the decoder merges into one `Null` and the tests tell apart.
    fn from_frame(frame: OwnedFrame, raw: &[u8]) -> Resp {
        match frame {
            OwnedFrame::SimpleString(s) => Resp::Simple(String::from_utf8_lossy(&s).into_owned()),
            OwnedFrame::Error(e) => Resp::Error(e),
            OwnedFrame::Integer(i) => Resp::Int(i),
            OwnedFrame::BulkString(b) => Resp::Bulk(Some(b)),
            OwnedFrame::Null if raw.first() == Some(&b'*') => Resp::Array(None),
            OwnedFrame::Null => Resp::Bulk(None),
            OwnedFrame::Array(items) => {
                // Each item's bytes follow the header line, framed by the
                // proxy's splitter.
                let mut at = raw.iter().position(|&b| b == b'\n').map_or(raw.len(), |p| p + 1);
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let rest = raw.get(at..).unwrap_or_default();
                    out.push(Resp::from_frame(item, rest));
                    at += reply_len(rest).ok().flatten().unwrap_or(0);
                }
                Resp::Array(Some(out))
            }
        }
    }
}

/// A raw connection for tests that interleave writes and reads byte by byte
/// (pipelining, partial frames, ordering).
pub struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: &str) -> RawConn {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends one command and reads its reply.
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Resp {
        self.send(&cmd(args)).await;
        self.read_reply().await
    }

    /// Reads the next reply; panics on timeout (5 s), EOF or bytes that are not RESP.
    pub async fn read_reply(&mut self) -> Resp {
        loop {
            if let Some((reply, used)) = Resp::parse(&self.buf).expect("reply is RESP") {
                self.buf.drain(..used);
                return reply;
            }
            assert!(
                self.fill().await,
                "connection closed before a complete reply; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads the next reply frame as raw bytes, whatever its protocol
    /// (RESP2 or RESP3); panics like [`RawConn::read_reply`].
    pub async fn read_frame(&mut self) -> Vec<u8> {
        loop {
            if let Some(n) = reply_len(&self.buf).expect("reply is RESP") {
                return self.buf.drain(..n).collect();
            }
            assert!(
                self.fill().await,
                "connection closed before a complete reply; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Sends one command and reads its reply as raw bytes ([`RawConn::read_frame`]).
    pub async fn call_raw<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Vec<u8> {
        self.send(&cmd(args)).await;
        self.read_frame().await
    }

    /// Reads `n` replies.
    pub async fn read_replies(&mut self, n: usize) -> Vec<Resp> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.read_reply().await);
        }
        out
    }

    /// True if the peer closes the connection within 5 s (after any unread bytes).
    pub async fn is_closed_by_peer(&mut self) -> bool {
        let deadline = Instant::now() + RAW_TIMEOUT;
        while Instant::now() < deadline {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(RAW_TIMEOUT, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        }
        false
    }

    /// Reads more bytes into the buffer; false on EOF. Panics after 5 s of silence.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(RAW_TIMEOUT, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => panic!(
                "no reply within {RAW_TIMEOUT:?}; buffered {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }
}

/// The pid of a process that has ended: run and reaped here.
pub fn ended_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    child.wait().expect("reap");
    child.id()
}

/// Creates the dashboard leader node of `store`'s product, describing
/// `info`, on `store`'s session: a leader whose session has not expired.
pub async fn plant_leader(
    store: &reborn::topo::Store,
    info: &reborn::topo::manager::dashboard::leader::DashboardInfo,
) {
    store
        .zk()
        .expect("session")
        .create_raw(
            &store.paths().dashboard(),
            &serde_json::to_vec(info).expect("json"),
            zookeeper_client::CreateMode::Ephemeral,
        )
        .await
        .expect("the leader node");
}

/// How many times the redis-server behind `conn` has run `command` (lower
/// case, as `INFO commandstats` names it), `conn`'s own calls included.
pub async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> i64 {
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    let field = format!("cmdstat_{command}:calls=");
    text.lines()
        .find_map(|l| l.strip_prefix(field.as_str()))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Adds to `pipe` a mover's copy of each of `keys` as it waits on a
/// migration's target: the source's bytes and expiry, read from `source`,
/// restored with the mark (`RESTORE … ABSTTL IDLETIME 60`), as the background
/// migrator's batches and a proxy's copies ahead (`write_ack = "replica"`)
/// are.
pub async fn marked_copies(
    pipe: &mut redis::Pipeline,
    source: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) {
    for k in keys {
        let payload: Vec<u8> = redis::cmd("DUMP").arg(k).query_async(source).await.expect("DUMP");
        let expire_at: i64 = redis::cmd("PEXPIRETIME")
            .arg(k)
            .query_async(source)
            .await
            .expect("PEXPIRETIME");
        pipe.cmd("RESTORE")
            .arg(k)
            .arg(expire_at.max(0))
            .arg(payload)
            .arg("ABSTTL")
            .arg("IDLETIME")
            .arg(reborn::libs::copy_mark::SECS)
            .ignore();
    }
}
