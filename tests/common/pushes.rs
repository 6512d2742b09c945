//! The push traffic of the push-system tests (tests/push.rs) and the chaos
//! soak (tests/soak.rs): the roles as child processes of the built binary,
//! goim clients, a pusher sending numbered pushes through logic's HTTP API,
//! and watchers recording which of them each client received. Imports the
//! crate's public `im` and the harness.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reborn::im::client::{ImClient, ImClientError};
use reborn::topo::ZkConfig;
use serde_json::{Value, json};

use super::{GuardedChild, eventually, http};

/// The business op every test push carries and every test client accepts.
pub const OP: i32 = 1000;
/// How long a client's login may keep failing (logic not known yet).
const LOGIN_WAIT: Duration = Duration::from_secs(15);
/// job's room batch window in the tests.
pub const ROOM_SIGNAL: Duration = Duration::from_millis(300);

/// goim's auth body.
pub fn auth_body(mid: i64, key: &str, room: &str, accepts: &[i32]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "mid": mid, "key": key, "room_id": room, "platform": "linux", "accepts": accepts
    }))
    .expect("json")
}

/// A client connection to `addr`: a `ws://` URL or a TCP `host:port`.
pub async fn open(addr: &str) -> Result<ImClient, ImClientError> {
    if addr.starts_with("ws://") {
        ImClient::ws(addr).await
    } else {
        ImClient::tcp(addr).await
    }
}

/// Connects to `addr` (a TCP `host:port` or a `ws://` URL) and authenticates
/// with `body`, retrying while the comet does not know logic yet.
pub async fn connect(addr: &str, body: &[u8]) -> ImClient {
    super::eventually_ok(&format!("auth to {addr} succeeds"), LOGIN_WAIT, async || {
        let mut c = open(addr).await?;
        c.auth(body).await.map(|()| c)
    })
    .await
}

/// A role run as a child process of the built binary (so it can be
/// SIGKILLed), with its config file's directory.
pub struct RoleProcess {
    pub process: GuardedChild,
    role: String,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl RoleProcess {
    /// `reborn <role> --config <file>` with `toml` as the file.
    pub fn spawn(role: &str, toml: &str) -> RoleProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join(format!("{role}.toml"));
        std::fs::write(&conf, toml).expect("write config");
        RoleProcess {
            process: run(role, &conf),
            role: role.to_string(),
            conf,
            _dir: dir,
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        self.process.kill().expect("SIGKILL");
        self.process.wait().expect("reap");
    }

    /// SIGKILL, reap, and start again with the same config (the same ports
    /// and names), as a supervisor restarts a crashed role.
    pub fn restart(&mut self) {
        self.kill();
        self.process = run(&self.role, &self.conf);
    }
}

/// Starts `reborn <role> --config <conf>`, logging warnings (or what
/// `REBORN_TEST_ROLE_LOG` asks for, e.g. `warn,reborn::im=debug`).
fn run(role: &str, conf: &Path) -> GuardedChild {
    let log = std::env::var("REBORN_TEST_ROLE_LOG").unwrap_or_else(|_| "warn".into());
    super::spawn_guarded(
        Command::new(env!("CARGO_BIN_EXE_reborn"))
            .arg(role)
            .arg("--config")
            .arg(conf)
            .env("RUST_LOG", log),
    )
}

/// The `[zk]` section of a role's config file for `zk`.
pub fn zk_toml(zk: &ZkConfig) -> String {
    format!(
        "[zk]\naddr = \"{}\"\nroot = \"{}\"\nproduct = \"{}\"\nsession_timeout = \"{}ms\"\n",
        zk.addr,
        zk.root,
        zk.product,
        zk.session_timeout.as_millis()
    )
}

/// A `reborn comet` child process; returns it with its TCP address and
/// WebSocket URL.
pub fn comet_process(zk: &ZkConfig, id: &str, addr: &str) -> (RoleProcess, String, String) {
    let (tcp, ws, grpc) = (super::free_port(), super::free_port(), super::free_port());
    let admin = super::free_port();
    let toml = format!(
        "server_id = \"{id}\"\naddrs = [\"{addr}\"]\nregister_interval = \"200ms\"\nthreads = 2\n\
         admin_listen = \"127.0.0.1:{admin}\"\n\
         [tcp]\nlisten = \"127.0.0.1:{tcp}\"\n[websocket]\nlisten = \"127.0.0.1:{ws}\"\n\
         [grpc]\nlisten = \"127.0.0.1:{grpc}\"\n[protocol]\nrenew_interval = \"1s\"\n\
         [logic]\nonline_interval = \"200ms\"\n{}",
        zk_toml(zk)
    );
    (
        RoleProcess::spawn("comet", &toml),
        format!("127.0.0.1:{tcp}"),
        format!("ws://127.0.0.1:{ws}/sub"),
    )
}

/// A `reborn logic` child process with id `id`, in front of `proxies`, its
/// sessions kept for `expire`; returns it with its HTTP address.
pub fn logic_process(
    zk: &ZkConfig,
    id: &str,
    proxies: &[String],
    expire: Duration,
) -> (RoleProcess, SocketAddr) {
    let (http, grpc) = (super::free_port(), super::free_port());
    let toml = format!(
        "id = \"{id}\"\n[http]\naddr = \"127.0.0.1:{http}\"\n[grpc]\naddr = \"127.0.0.1:{grpc}\"\n\
         [cluster]\naddrs = {proxies:?}\n[session]\nexpire = \"{}s\"\n{}",
        expire.as_secs(),
        zk_toml(zk)
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], http));
    (RoleProcess::spawn("logic", &toml), addr)
}

/// A `reborn job` child process named `consumer`, in front of `proxies`;
/// returns it with its admin address (`/stats`).
pub fn job_process(zk: &ZkConfig, proxies: &[String], consumer: &str) -> (RoleProcess, SocketAddr) {
    let admin = super::free_port();
    let toml = format!(
        "consumer = \"{consumer}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n[cluster]\naddrs = {proxies:?}\n\
         [queue]\nblock = \"500ms\"\nclaim_min_idle = \"1s\"\nclaim_interval = \"300ms\"\n\
         [room]\nsignal = \"{}ms\"\n{}",
        ROOM_SIGNAL.as_millis(),
        zk_toml(zk)
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], admin));
    (RoleProcess::spawn("job", &toml), addr)
}

/// What one client saw during the zero-loss test.
#[derive(Default, Debug)]
pub struct Seen {
    pub numbers: BTreeSet<u64>,
    pub wrong: Vec<String>,
    pub closed: bool,
}

/// Reads pushes into `seen` (heartbeating every 700 ms, which renews the
/// session) until `stop` or the connection closes. A push is this client's
/// when its body names the client's mid or room.
pub fn watch(mut c: ImClient, mid: i64, room: &'static str, stop: Arc<AtomicBool>) -> Arc<Mutex<Seen>> {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let out = seen.clone();
    let note = move |f: &dyn Fn(&mut Seen)| f(&mut seen.lock().expect("seen"));
    tokio::spawn(async move {
        let mine = [format!("mid:{mid}"), format!("room:{room}")];
        let mut last_beat = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if last_beat.elapsed() > Duration::from_millis(700) {
                match c.heartbeat().await {
                    Ok(_) | Err(ImClientError::Timeout { .. }) => {}
                    Err(_) => return note(&|s| s.closed = true),
                }
                last_beat = Instant::now();
            }
            let f = match tokio::time::timeout(Duration::from_millis(200), c.next_push()).await {
                Err(_) | Ok(Err(ImClientError::Timeout { .. })) => continue,
                Ok(Err(_)) => return note(&|s| s.closed = true),
                Ok(Ok(f)) => f,
            };
            let body = String::from_utf8_lossy(&f.body).into_owned();
            let parsed = body
                .strip_prefix("n=")
                .and_then(|r| r.split_once(" to="))
                .and_then(|(n, to)| Some((n.parse::<u64>().ok()?, to.to_string())));
            match parsed {
                Some((n, to)) if f.op == OP && mine.contains(&to) => note(&|s| {
                    s.numbers.insert(n);
                }),
                _ => note(&|s| s.wrong.push(format!("op {} {body:?}", f.op))),
            }
        }
    });
    out
}

/// A non-panicking POST for the pusher: logic's code, or None if the
/// request failed.
pub async fn try_push(addr: SocketAddr, path: &str, body: String) -> Option<i64> {
    let call = async {
        let (_, bytes) = http::try_request(addr, "POST", path, body.into_bytes())
            .await
            .ok()?;
        serde_json::from_slice::<Value>(&bytes).ok()?["code"].as_i64()
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .ok()
        .flatten()
}

/// Numbered pushes through logic's HTTP API, one every 25 ms, going round
/// `targets` (a push path, and whom the push is for: `room:…` or `mid:…`,
/// which its body names), until stopped once at least 300 went. A push is
/// accepted when logic answers code 0.
pub struct Pusher {
    sent: Arc<AtomicU64>,
    accepted: Arc<Mutex<Vec<(u64, String)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Pusher {
    pub fn start(http: SocketAddr, targets: Vec<(String, String)>) -> Pusher {
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
        let task = {
            let (sent, stop, accepted) = (sent.clone(), stop.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(25));
                // After a slow push (a failover), no burst of pushes to catch up.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = 0u64;
                while n < 300 || !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (path, to) = &targets[n as usize % targets.len()];
                    if try_push(http, path, format!("n={n} to={to}")).await == Some(0) {
                        accepted.lock().expect("accepted").push((n, to.clone()));
                    }
                    n += 1;
                    sent.store(n, Ordering::Relaxed);
                }
            })
        };
        Pusher {
            sent,
            accepted,
            stop,
            task,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.lock().expect("accepted").len()
    }

    /// Waits until `n` pushes were sent.
    pub async fn sent_at_least(&self, n: u64) {
        eventually(&format!("{n} pushes sent"), Duration::from_secs(30), || {
            let ok = self.sent() >= n;
            async move { ok }
        })
        .await;
    }

    /// Waits until logic accepted `n` more pushes than it had so far.
    pub async fn accepts(&self, n: usize, what: &str) {
        let want = self.accepted() + n;
        eventually(
            &format!("{n} pushes accepted {what}"),
            Duration::from_secs(30),
            || {
                let ok = self.accepted() >= want;
                async move { ok }
            },
        )
        .await;
    }

    /// Stops (once 300 went): the accepted pushes, and how many were sent.
    pub async fn finish(self) -> (Vec<(u64, String)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("pusher");
        let accepted = self.accepted.lock().expect("accepted").clone();
        (accepted, self.sent.load(Ordering::Relaxed))
    }
}

/// Asserts no watched client was disconnected.
pub fn all_connected(watchers: &BTreeMap<i64, Arc<Mutex<Seen>>>) {
    for (mid, seen) in watchers {
        assert!(
            !seen.lock().expect("seen").closed,
            "client {mid} was disconnected"
        );
    }
}

/// The push paths of [`Pusher`] to `room` (`type://id`) and to each of `mids`.
pub fn push_targets(room: &str, mids: &[i64]) -> Vec<(String, String)> {
    let (kind, id) = room.split_once("://").expect("type://id");
    let mut targets = vec![(
        format!("/goim/push/room?operation={OP}&type={kind}&room={id}"),
        format!("room:{room}"),
    )];
    for mid in mids {
        targets.push((
            format!("/goim/push/mids?operation={OP}&mids={mid}"),
            format!("mid:{mid}"),
        ));
    }
    targets
}

/// The accepted pushes meant for each of `mids` (by mid or by `room`) that
/// it has not seen; only the mids missing some.
pub fn undelivered(
    accepted: &[(u64, String)],
    watchers: &BTreeMap<i64, Arc<Mutex<Seen>>>,
    mids: &[i64],
    room: &str,
) -> BTreeMap<i64, Vec<u64>> {
    let missing = |mid: i64| -> Vec<u64> {
        let mine = [format!("mid:{mid}"), format!("room:{room}")];
        let seen = watchers[&mid].lock().expect("seen");
        accepted
            .iter()
            .filter(|(n, to)| mine.contains(to) && !seen.numbers.contains(n))
            .map(|(n, _)| *n)
            .collect()
    };
    mids.iter()
        .map(|&mid| (mid, missing(mid)))
        .filter(|(_, m)| !m.is_empty())
        .collect()
}

/// Waits until each of `mids` has seen every accepted push meant for it (by
/// mid or by `room`), then checks nobody saw a push meant for another.
pub async fn all_delivered(
    accepted: &[(u64, String)],
    watchers: &BTreeMap<i64, Arc<Mutex<Seen>>>,
    mids: &[i64],
    room: &str,
) {
    super::eventually_ok(
        "accepted pushes are delivered",
        Duration::from_secs(20),
        async || {
            let missing = undelivered(accepted, watchers, mids, room);
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing, by mid: {missing:?}"))
            }
        },
    )
    .await;
    for (mid, seen) in watchers {
        let seen = seen.lock().expect("seen");
        assert!(
            seen.wrong.is_empty(),
            "mid {mid} got pushes of others: {:?}",
            seen.wrong
        );
    }
}
