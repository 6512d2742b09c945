//! The ZooKeeper store: one long-lived session per process that survives
//! disconnects *and* expiry.
//!
//! zookeeper-client reconnects by itself within a session, but never creates a new
//! session after expiry. [`Store`] does: a supervisor task follows the session
//! state, builds a new client after `Expired`, re-creates the ephemeral nodes
//! registered through [`Store::register_ephemeral`] and bumps a generation number
//! that consumers (the watcher, the proxy's safety fence) follow through
//! [`Store::session`]. Reads and writes go through [`ZkSession`] (the client of
//! one session plus JSON and compare-and-set helpers); the `Store` methods of the
//! same names use the current session. Imports `libs` and `topo`'s kernel only.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::error::TopoError;
use super::path::Paths;
use super::session::ZkSession;
use crate::libs::backoff::Backoff;

/// How long [`Store::connect`] waits for a first session before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Store::close`] waits for the server to acknowledge the close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The ZooKeeper flags every role takes (`--zk`, `--zk-root`, `--product`),
/// flattened into each role's arguments so they are spelled and applied once.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ZkArgs {
    /// ZooKeeper address: host:port, or a comma-separated list of every
    /// member of an ensemble (127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183).
    #[arg(long)]
    pub zk: Option<String>,
    /// ZooKeeper root path.
    #[arg(long)]
    pub zk_root: Option<String>,
    /// Product name.
    #[arg(long)]
    pub product: Option<String>,
}

impl ZkArgs {
    /// Overrides `cfg` with the flags that were given.
    pub fn apply(self, cfg: &mut ZkConfig) {
        crate::libs::config::set_from(&mut cfg.addr, self.zk);
        crate::libs::config::set_from(&mut cfg.root, self.zk_root);
        crate::libs::config::set_from(&mut cfg.product, self.product);
    }
}

/// Where ZooKeeper is and which product to work on. Part of every role's config.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ZkConfig {
    /// `host:port`, or a comma-separated list of them for an ensemble.
    pub addr: String,
    /// Root node all products live under.
    pub root: String,
    /// The product (one cluster) under the root.
    pub product: String,
    /// Session timeout asked of the server (it clamps it to its own min/max).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl Default for ZkConfig {
    fn default() -> Self {
        ZkConfig {
            addr: "127.0.0.1:2181".to_string(),
            root: "/reborn".to_string(),
            product: "demo".to_string(),
            session_timeout: Duration::from_secs(6),
        }
    }
}

/// Session health as consumers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionEvent {
    /// Bumped every time a new session replaces an expired one (starts at 1).
    /// Ephemeral nodes and watches of an older generation are gone.
    pub generation: u64,
    /// True while the current session has a live connection to a server.
    pub connected: bool,
}

/// A ZooKeeper session that is renewed after expiry. Cheap to clone (shared).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ZkConfig,
    paths: Paths,
    /// The live session; `None` once closed. Swapped whole after expiry, so a
    /// caller holding an old [`ZkSession`] gets `SessionExpired`, never a mix.
    current: parking_lot::Mutex<Option<ZkSession>>,
    /// Ephemeral nodes to re-create on every new session: path → data.
    ephemerals: parking_lot::Mutex<BTreeMap<String, Vec<u8>>>,
    session_tx: watch::Sender<SessionEvent>,
    closed: CancellationToken,
}

impl Store {
    /// Opens a session to `cfg.addr` and starts following it.
    ///
    /// # Errors
    /// [`TopoError::Unreachable`] (with the address) if no session is established
    /// within a few seconds; [`TopoError::Invalid`] for a bad root or product.
    pub async fn connect(cfg: &ZkConfig) -> Result<Store, TopoError> {
        let paths = Paths::new(&cfg.root, &cfg.product)?;
        let client = open_session(cfg).await?;
        let states = client.state_watcher();
        let (session_tx, _) = watch::channel(SessionEvent {
            generation: 1,
            connected: true,
        });
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            paths,
            current: parking_lot::Mutex::new(Some(ZkSession::new(client, 1))),
            ephemerals: parking_lot::Mutex::new(BTreeMap::new()),
            session_tx,
            closed: CancellationToken::new(),
        });
        // The supervisor holds only a Weak: dropping every Store drops the client,
        // which closes the session, which ends the supervisor.
        tokio::spawn(supervise(Arc::downgrade(&inner), states, inner.closed.clone()));
        Ok(Store { inner })
    }

    /// The product's paths.
    pub fn paths(&self) -> &Paths {
        &self.inner.paths
    }

    /// The config the store was opened with.
    pub fn config(&self) -> &ZkConfig {
        &self.inner.cfg
    }

    /// The current session (a new one after expiry) with JSON helpers.
    ///
    /// # Errors
    /// [`TopoError::Closed`] after [`Store::close`].
    pub fn zk(&self) -> Result<ZkSession, TopoError> {
        self.inner.current.lock().clone().ok_or(TopoError::Closed)
    }

    /// The current `zookeeper_client::Client` (a new one after session expiry).
    ///
    /// Do not keep it for long: a live clone keeps the session open after
    /// [`Store::close`].
    ///
    /// # Errors
    /// [`TopoError::Closed`] after [`Store::close`].
    pub fn client(&self) -> Result<zk::Client, TopoError> {
        Ok(self.zk()?.client().clone())
    }

    /// Session health: `generation` bumps on every new session, `connected`
    /// follows the connection of the current one.
    pub fn session(&self) -> watch::Receiver<SessionEvent> {
        self.inner.session_tx.subscribe()
    }

    /// Resolves when [`Store::close`] is called; background tasks stop on it.
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await
    }

    /// Creates the ephemeral node `path` (parents are created if missing) and
    /// re-creates it after every session re-establishment until
    /// [`Store::unregister_ephemeral`] or [`Store::close`].
    ///
    /// A node left by a crashed previous run (another session that has not
    /// expired yet) is waited out for up to the session timeout.
    ///
    /// # Errors
    /// [`TopoError::Exists`] if another live session keeps owning `path`, or any
    /// ZooKeeper failure.
    pub async fn register_ephemeral(&self, path: &str, data: Vec<u8>) -> Result<(), TopoError> {
        let wait = self.inner.cfg.session_timeout + Duration::from_secs(1);
        let mut zk = self.zk()?;
        zk.ensure_ephemeral(path, &data, None, wait).await?;
        self.inner
            .ephemerals
            .lock()
            .insert(path.to_string(), data.clone());
        // A session renewed between the create and the insert would have missed
        // this node: create it on the newer session too.
        loop {
            let now = self.zk()?;
            if now.generation() == zk.generation() {
                return Ok(());
            }
            now.ensure_ephemeral(path, &data, Some(zk.session_id()), wait)
                .await?;
            zk = now;
        }
    }

    /// Stops re-creating `path` and deletes it. A missing node is fine.
    ///
    /// # Errors
    /// A ZooKeeper failure other than a missing node.
    pub async fn unregister_ephemeral(&self, path: &str) -> Result<(), TopoError> {
        self.inner.ephemerals.lock().remove(path);
        match self.zk()?.delete(path, None).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Deletes the registered ephemerals, closes the session and waits until the
    /// server acknowledged the close, so nothing of this process lingers for a
    /// session timeout (dropping a client closes it only in the background).
    ///
    /// Other clones of the [`Store`] see [`TopoError::Closed`] afterwards.
    pub async fn close(&self) {
        self.inner.closed.cancel();
        let Some(zk) = self.inner.current.lock().take() else {
            return;
        };
        let paths: Vec<String> = std::mem::take(&mut *self.inner.ephemerals.lock())
            .into_keys()
            .collect();
        for path in paths {
            // Best effort: closing the session deletes them anyway, but a client
            // clone held elsewhere would keep the session (and them) alive.
            let _ = tokio::time::timeout(Duration::from_secs(1), zk.delete(&path, None)).await;
        }
        let mut states = zk.client().state_watcher();
        drop(zk);
        if states.peek_state().is_terminated() {
            return;
        }
        let wait = async { while !states.changed().await.is_terminated() {} };
        if tokio::time::timeout(CLOSE_TIMEOUT, wait).await.is_err() {
            tracing::warn!(
                "ZooKeeper session not closed within {CLOSE_TIMEOUT:?}: a client clone is still held"
            );
        }
        let last = *self.inner.session_tx.borrow();
        self.inner.session_tx.send_replace(SessionEvent {
            connected: false,
            ..last
        });
    }

    /// Reads `path` as JSON.
    ///
    /// # Errors
    /// [`TopoError::NotFound`], bad JSON, or a ZooKeeper failure.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, TopoError> {
        self.zk()?.get_json(path).await
    }

    /// Reads `path` as JSON with its version, for a later [`Store::set_json`].
    ///
    /// # Errors
    /// As [`Store::get_json`].
    pub async fn get_json_with_version<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(T, i32), TopoError> {
        self.zk()?.get_json_with_version(path).await
    }

    /// Writes `value` to `path` if its version is still `version` (CAS).
    ///
    /// # Errors
    /// [`TopoError::Conflict`] if someone wrote in between; a ZooKeeper failure.
    pub async fn set_json<T: Serialize>(
        &self,
        path: &str,
        value: &T,
        version: i32,
    ) -> Result<i32, TopoError> {
        self.zk()?.set_json(path, value, version).await
    }

    /// Creates the persistent node `path` holding `value`.
    ///
    /// # Errors
    /// [`TopoError::Exists`], a missing parent, or a ZooKeeper failure.
    pub async fn create_json<T: Serialize>(&self, path: &str, value: &T) -> Result<(), TopoError> {
        self.zk()?.create_json(path, value).await
    }

    /// Deletes `path`, if its version is `version` when one is given.
    ///
    /// # Errors
    /// [`TopoError::NotFound`], [`TopoError::Conflict`] or a ZooKeeper failure.
    pub async fn delete(&self, path: &str, version: Option<i32>) -> Result<(), TopoError> {
        self.zk()?.delete(path, version).await
    }

    /// The names of `path`'s children, sorted.
    ///
    /// # Errors
    /// [`TopoError::NotFound`] or a ZooKeeper failure.
    pub async fn children(&self, path: &str) -> Result<Vec<String>, TopoError> {
        self.zk()?.children(path).await
    }

    /// The children of `path`; none when `path` does not exist (a directory
    /// nobody has written to yet).
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn children_or_none(&self, path: &str) -> Result<Vec<String>, TopoError> {
        self.zk()?.children_or_none(path).await
    }

    /// Every child of `path` read as JSON: (name, value), in ZooKeeper's
    /// order. A child that vanishes while being read is skipped (ephemeral
    /// nodes come and go); a missing `path` has none.
    ///
    /// # Errors
    /// A ZooKeeper failure or a child that is not the JSON of `T`.
    pub async fn json_children<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Vec<(String, T)>, TopoError> {
        let names = self.children_or_none(path).await?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.get_json::<T>(&format!("{path}/{name}")).await {
                Ok(value) => out.push((name, value)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Whether `path` exists.
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn exists(&self, path: &str) -> Result<bool, TopoError> {
        self.zk()?.exists(path).await
    }

    /// Creates `path` and its missing ancestors as empty persistent nodes.
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn mkdir_p(&self, path: &str) -> Result<(), TopoError> {
        self.zk()?.mkdir_p(path).await
    }
}

impl Inner {
    fn publish(&self, connected: bool) {
        self.session_tx.send_if_modified(|e| {
            let changed = e.connected != connected;
            e.connected = connected;
            changed
        });
    }

    /// Puts `zk` in place unless the store was closed meanwhile. Returns the
    /// session it replaced.
    fn install(&self, zk: ZkSession) -> Option<ZkSession> {
        let mut current = self.current.lock();
        // close() cancels before taking `current`: checking under the lock means
        // either close() sees the new session, or we see the cancellation.
        if self.closed.is_cancelled() {
            return None;
        }
        current.replace(zk)
    }

    async fn restore_ephemerals(&self, zk: &ZkSession, stale_owner: i64) {
        let wanted: Vec<(String, Vec<u8>)> = self
            .ephemerals
            .lock()
            .iter()
            .map(|(p, d)| (p.clone(), d.clone()))
            .collect();
        let wait = self.cfg.session_timeout + Duration::from_secs(1);
        for (path, data) in wanted {
            if let Err(e) = zk.ensure_ephemeral(&path, &data, Some(stale_owner), wait).await {
                tracing::error!("cannot re-create ephemeral {path} after session expiry: {e}");
            }
        }
    }
}

/// Connects a new session, failing clearly when nobody answers.
///
/// A refused connection is retried until [`CONNECT_TIMEOUT`]: a server that was
/// just started accepts TCP a moment before it serves sessions.
async fn open_session(cfg: &ZkConfig) -> Result<zk::Client, TopoError> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    // Backing off keeps the client library's per-attempt warnings to a few lines.
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let unreachable = |reason: String| TopoError::Unreachable {
        addr: cfg.addr.clone(),
        reason,
    };
    loop {
        let connector = zk::Client::connector()
            .with_session_timeout(cfg.session_timeout)
            .with_fail_eagerly();
        match tokio::time::timeout_at(deadline, connector.connect(&cfg.addr)).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(zk::Error::NoHosts)) => {}
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no session established within {CONNECT_TIMEOUT:?}"
                )));
            }
        }
        let pause = backoff.next_delay();
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(unreachable(format!(
                "no server accepted a session within {CONNECT_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(pause).await;
    }
}

/// Follows the session state: publishes connect/disconnect, and after a terminal
/// state (expired, closed by the server) builds a new session.
async fn supervise(weak: Weak<Inner>, mut states: zk::StateWatcher, closed: CancellationToken) {
    loop {
        let state = tokio::select! {
            () = closed.cancelled() => return,
            state = states.changed() => state,
        };
        let Some(inner) = weak.upgrade() else { return };
        tracing::debug!("ZooKeeper session state: {state}");
        if !state.is_terminated() {
            inner.publish(matches!(
                state,
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly
            ));
            continue;
        }
        inner.publish(false);
        tracing::warn!("ZooKeeper session ended ({state}); opening a new one");
        drop(inner);
        match renew(&weak, &closed).await {
            Some(next) => states = next,
            None => return,
        }
    }
}

/// Opens sessions with backoff until one works, installs it, restores the
/// ephemerals and bumps the generation. `None` if the store went away.
async fn renew(weak: &Weak<Inner>, closed: &CancellationToken) -> Option<zk::StateWatcher> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let inner = weak.upgrade()?;
        let attempt = tokio::select! {
            () = closed.cancelled() => return None,
            r = open_session(&inner.cfg) => r,
        };
        match attempt {
            Ok(client) => {
                let states = client.state_watcher();
                let generation = inner.session_tx.borrow().generation + 1;
                let zk = ZkSession::new(client, generation);
                let old = inner.install(zk.clone())?;
                inner.restore_ephemerals(&zk, old.session_id()).await;
                inner.session_tx.send_replace(SessionEvent {
                    generation,
                    connected: true,
                });
                tracing::info!("new ZooKeeper session {:#x}", zk.session_id());
                return Some(states);
            }
            Err(e) => {
                tracing::warn!("ZooKeeper reconnect failed: {e}");
                drop(inner);
                tokio::select! {
                    () = closed.cancelled() => return None,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_parses_humantime() {
        let d = ZkConfig::default();
        assert_eq!(d.addr, "127.0.0.1:2181");
        assert_eq!(d.root, "/reborn");
        assert_eq!(d.session_timeout, Duration::from_secs(6));
        let c: ZkConfig = toml::from_str("product = \"p\"\nsession_timeout = \"1500ms\"\n").expect("parse");
        assert_eq!(c.product, "p");
        assert_eq!(c.session_timeout, Duration::from_millis(1500));
        assert!(toml::from_str::<ZkConfig>("prodcut = \"p\"").is_err());
    }

    #[tokio::test]
    async fn connect_fails_clearly_when_nobody_listens() {
        let (_held, addr) = crate::libs::reachable::refused_addr();
        let cfg = ZkConfig {
            addr,
            ..ZkConfig::default()
        };
        let started = std::time::Instant::now();
        let err = Store::connect(&cfg).await.err().expect("must fail");
        assert!(started.elapsed() < Duration::from_secs(8));
        let msg = err.to_string();
        assert!(msg.contains(&cfg.addr), "{msg}");
    }
}
