//! The proxy's own clients, across every worker thread: who is connected
//! (`CLIENT LIST`, `CLIENT INFO`), a kill switch per connection
//! (`CLIENT KILL`), and the pause every session honours (`CLIENT PAUSE`,
//! `CLIENT UNPAUSE`).
//!
//! Shared like `Stats`: one [`Clients`] per proxy, behind an `Arc` in every
//! worker's context. A session lists itself when it starts and leaves when it
//! ends ([`Listed`]). What it updates while it runs costs the hot path nothing
//! per request: the last command and the time of the last input are stored once
//! per chunk read, name and protocol only when they change. The pause is one
//! relaxed load per chunk read, too.
//!
//! Imports: `command` (for which commands a `WRITE` pause holds) and `libs`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::command::{self, WRITE};
use crate::libs::protocol::Protocol;
use crate::libs::resp::Request;

/// Commands a `CLIENT PAUSE … WRITE` holds besides those flagged `write`:
/// Redis holds every command that may replicate (scripts, `PUBLISH`,
/// `PFCOUNT`, which may rewrite its key).
const MAY_REPLICATE: &[&str] = &[
    "eval", "evalsha", "fcall", "publish", "spublish", "pfcount", "script", "function",
];

/// `last_cmd` before any command.
const NO_CMD: usize = usize::MAX;

/// One client connection of the proxy, as `CLIENT LIST` shows it.
pub struct Connection {
    /// The client's id (`CLIENT ID`), unique across the proxy.
    pub id: u64,
    /// The client's address (unspecified when unknown). Addresses are kept
    /// as `SocketAddr`, not text: a proxy holds many idle clients.
    pub addr: SocketAddr,
    /// The proxy's address the client connected to.
    pub laddr: SocketAddr,
    /// The socket's file descriptor (`-1` when unknown).
    pub fd: i64,
    created: Instant,
    name: parking_lot::Mutex<Option<Bytes>>,
    /// Stats slot (command-table index) of the last command, or `NO_CMD`.
    last_cmd: AtomicUsize,
    /// Milliseconds from `created` to the last chunk of input.
    last_active: AtomicU64,
    protocol: AtomicU8,
    /// Stops the session's reader: tripped by `CLIENT KILL` and, being a child
    /// of the proxy's shutdown token, by shutdown.
    stop: CancellationToken,
    /// Set by `CLIENT KILL`: the session writes nothing more.
    killed: AtomicBool,
    /// Where the session writer finds the client's pub/sub messages.
    pub inbox: super::pubsub::InboxSlot,
}

impl Connection {
    /// A connection `id` from `addr` to `laddr`; `stop` is the token its
    /// session stops on (a child of the proxy's shutdown token).
    pub fn new(
        id: u64,
        (addr, laddr, fd): (SocketAddr, SocketAddr, i64),
        stop: CancellationToken,
    ) -> Arc<Connection> {
        Arc::new(Connection {
            id,
            addr,
            laddr,
            fd,
            created: Instant::now(),
            name: parking_lot::Mutex::new(None),
            last_cmd: AtomicUsize::new(NO_CMD),
            last_active: AtomicU64::new(0),
            protocol: AtomicU8::new(2),
            stop,
            killed: AtomicBool::new(false),
            inbox: super::pubsub::InboxSlot::default(),
        })
    }

    /// A connection not bound to a socket (tests, internal clients).
    pub fn detached(id: u64) -> Arc<Connection> {
        let none = SocketAddr::from(([0, 0, 0, 0], 0));
        Connection::new(id, (none, none, -1), CancellationToken::new())
    }

    /// The name set by `CLIENT SETNAME` or `HELLO … SETNAME`.
    pub fn name(&self) -> Option<Bytes> {
        self.name.lock().clone()
    }

    /// Sets (or clears, with an empty name) the client's name.
    pub fn set_name(&self, name: Bytes) {
        // Copied: the name is a slice of the session's read buffer.
        *self.name.lock() = (!name.is_empty()).then(|| Bytes::copy_from_slice(&name));
    }

    /// Records the protocol the client switched to.
    pub fn set_protocol(&self, protocol: Protocol) {
        self.protocol.store(protocol.number() as u8, Ordering::Relaxed);
    }

    /// The protocol the client speaks now.
    pub fn protocol(&self) -> Protocol {
        match self.protocol.load(Ordering::Relaxed) {
            3 => Protocol::Resp3,
            _ => Protocol::Resp2,
        }
    }

    /// Records input: `cmd` (a stats slot) was the last command read at `now`.
    /// Called once per chunk read, not per request.
    pub fn touch(&self, cmd: usize, now: Instant) {
        self.last_cmd.store(cmd, Ordering::Relaxed);
        let ms = now.saturating_duration_since(self.created).as_millis();
        self.last_active.store(ms as u64, Ordering::Relaxed);
    }

    /// The token the session's reader stops on.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// True once `CLIENT KILL` closed this connection.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Closes the connection: its reader stops at once, its writer writes
    /// nothing more, and the socket closes.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.stop.cancel();
    }

    /// The connection's `CLIENT LIST` line (without the line break), Redis's
    /// fields as far as the proxy knows them truthfully. `current`: the command
    /// being run, for the caller's own line (Redis shows `client|list` there).
    pub fn line(&self, current: Option<&str>) -> String {
        let now = Instant::now();
        let age = now.saturating_duration_since(self.created).as_secs();
        let active = self.created + Duration::from_millis(self.last_active.load(Ordering::Relaxed));
        let idle = now.saturating_duration_since(active).as_secs();
        let cmd = match current {
            Some(c) => c.to_string(),
            None => match self.last_cmd.load(Ordering::Relaxed) {
                NO_CMD => "NULL".to_string(),
                i => command::all()
                    .nth(i)
                    .map_or("NULL", |s| s.name.as_str())
                    .to_string(),
            },
        };
        let name = self.name().map(|n| String::from_utf8_lossy(&n).into_owned());
        let mut out = String::with_capacity(160);
        let _ = write!(
            out,
            "id={} addr={} laddr={} fd={} name={} age={age} idle={idle} flags=N db=0 cmd={cmd} user=default resp={}",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            name.unwrap_or_default(),
            self.protocol.load(Ordering::Relaxed),
        );
        out
    }
}

/// A `CLIENT PAUSE` in force.
#[derive(Clone, Copy)]
struct Pause {
    until: Instant,
    /// `ALL` (every command) rather than `WRITE`.
    all: bool,
}

/// Every live client connection of a proxy, and its pause.
pub struct Clients {
    live: parking_lot::Mutex<BTreeMap<u64, Arc<Connection>>>,
    pause: parking_lot::Mutex<Option<Pause>>,
    /// True while a pause may be in force: the one thing sessions read per
    /// chunk of input.
    paused: AtomicBool,
    /// Bumped when a pause starts, changes or ends.
    changes: watch::Sender<u64>,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            live: parking_lot::Mutex::default(),
            pause: parking_lot::Mutex::default(),
            paused: AtomicBool::new(false),
            changes: watch::Sender::new(0),
        }
    }
}

/// Proof that a connection is listed; dropping it (when the session ends)
/// takes it off the list.
pub struct Listed {
    clients: Arc<Clients>,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.clients.live.lock().remove(&self.id);
    }
}

impl Clients {
    /// Lists `conn` until the returned guard is dropped.
    pub fn add(self: &Arc<Self>, conn: Arc<Connection>) -> Listed {
        let id = conn.id;
        self.live.lock().insert(id, conn);
        Listed {
            clients: self.clone(),
            id,
        }
    }

    /// The live connections, by id.
    pub fn list(&self) -> Vec<Arc<Connection>> {
        self.live.lock().values().cloned().collect()
    }

    /// How many connections are live.
    pub fn count(&self) -> usize {
        self.live.lock().len()
    }

    /// Pauses every client for `timeout`: all commands (`all`) or those that
    /// write. A pause already in force is only ever extended or widened, as in
    /// Redis.
    pub fn pause(&self, timeout: Duration, all: bool) {
        let until = Instant::now() + timeout;
        {
            let mut p = self.pause.lock();
            let next = match *p {
                Some(old) if old.until > Instant::now() => Pause {
                    until: old.until.max(until),
                    all: old.all || all,
                },
                _ => Pause { until, all },
            };
            *p = Some(next);
            self.paused.store(true, Ordering::Relaxed);
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Ends the pause.
    pub fn unpause(&self) {
        *self.pause.lock() = None;
        self.paused.store(false, Ordering::Relaxed);
        self.changes.send_modify(|n| *n += 1);
    }

    /// True while a pause may be in force (cheap; [`Clients::wait`] decides).
    pub fn maybe_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// When `req` may run, or `None` if it may run now.
    fn held_until(&self, req: &Request) -> Option<Instant> {
        let mut p = self.pause.lock();
        let pause = (*p)?;
        if pause.until <= Instant::now() {
            *p = None;
            self.paused.store(false, Ordering::Relaxed);
            return None;
        }
        holds(pause.all, req).then_some(pause.until)
    }

    /// Waits until no pause holds `req` (true), or `stop` fires (false: the
    /// request must not run).
    pub async fn wait(&self, req: &Request, stop: &CancellationToken) -> bool {
        loop {
            let mut changes = self.changes.subscribe();
            let Some(until) = self.held_until(req) else {
                return true;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = changes.changed() => {}
                _ = stop.cancelled() => return false,
            }
        }
    }
}

/// True if a pause (`all`, or writes only) holds `req`. `CLIENT` itself is
/// never held, so `CLIENT UNPAUSE`, `LIST` and `KILL` keep working.
fn holds(all: bool, req: &Request) -> bool {
    let Some(cmd) = command::lookup(req.name()) else {
        return all;
    };
    let name = cmd.spec.name.as_str();
    if name == "client" {
        return false;
    }
    all || cmd.spec.flags & WRITE != 0 || MAY_REPLICATE.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(words: &str) -> Request {
        let args: Vec<Bytes> = words.split(' ').map(|w| Bytes::from(w.to_string())).collect();
        Request {
            raw: crate::libs::resp::encode_array(&args),
            args,
        }
    }

    #[test]
    fn a_write_pause_holds_writes_and_scripts_only() {
        assert!(holds(false, &req("SET k v")) && holds(false, &req("eval x 0")));
        assert!(!holds(false, &req("GET k")) && !holds(false, &req("PING")));
        assert!(holds(true, &req("GET k")) && holds(true, &req("PING")));
        assert!(!holds(true, &req("CLIENT UNPAUSE")), "CLIENT is never held");
    }

    #[test]
    fn pauses_extend_widen_and_end() {
        let c = Clients::default();
        assert!(!c.maybe_paused() && c.held_until(&req("SET k v")).is_none());
        c.pause(Duration::from_secs(60), false);
        assert!(c.maybe_paused());
        assert!(c.held_until(&req("SET k v")).is_some());
        assert!(c.held_until(&req("GET k")).is_none());
        // A shorter ALL pause widens it without shortening it.
        let before = c.held_until(&req("SET k v")).expect("held");
        c.pause(Duration::from_millis(1), true);
        assert_eq!(c.held_until(&req("GET k")), Some(before));
        c.unpause();
        assert!(!c.maybe_paused() && c.held_until(&req("SET k v")).is_none());
        c.pause(Duration::ZERO, true);
        assert!(
            c.held_until(&req("GET k")).is_none(),
            "an expired pause holds nothing"
        );
        assert!(!c.maybe_paused(), "and is cleared");
    }

    #[test]
    fn lines_show_what_the_proxy_knows() {
        let clients = Arc::new(Clients::default());
        let conn = Connection::new(
            7,
            (
                "127.0.0.1:5000".parse().expect("addr"),
                "127.0.0.1:19000".parse().expect("addr"),
                12,
            ),
            CancellationToken::new(),
        );
        let listed = clients.add(conn.clone());
        conn.set_name(Bytes::from_static(b"worker"));
        conn.set_protocol(Protocol::Resp3);
        let line = conn.line(Some("client|list"));
        assert!(
            line.starts_with(
                "id=7 addr=127.0.0.1:5000 laddr=127.0.0.1:19000 fd=12 name=worker age=0 idle=0 "
            ),
            "{line}"
        );
        assert!(
            line.contains(" cmd=client|list ") && line.ends_with(" resp=3"),
            "{line}"
        );
        assert!(conn.line(None).contains(" cmd=NULL "));
        assert_eq!(clients.count(), 1);
        drop(listed);
        assert_eq!(clients.count(), 0);
        conn.kill();
        assert!(conn.is_killed() && conn.stop().is_cancelled());
    }
}
