//! One ZooKeeper session's client, with the JSON, compare-and-set and
//! transaction helpers every reader and writer of the model uses.
//!
//! A [`ZkSession`] is bound to one session for good: after expiry its calls fail
//! with [`TopoError::SessionExpired`] instead of silently continuing on a new
//! session. That is what the operator lock relies on (an operation must not
//! outlive the session that holds the lock); [`super::Store`] hands out the
//! current one. Imports only `topo`'s error type.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use zookeeper_client as zk;

use super::error::TopoError;
use super::owner::Owner;

/// The client of one ZooKeeper session, plus helpers that map errors to
/// [`TopoError`] with the path.
#[derive(Clone, Debug)]
pub struct ZkSession {
    client: zk::Client,
    generation: u64,
}

impl ZkSession {
    /// Wraps `client`, the `generation`-th session of its store.
    pub fn new(client: zk::Client, generation: u64) -> ZkSession {
        ZkSession { client, generation }
    }

    /// The raw client, for what the helpers do not cover (watches).
    pub fn client(&self) -> &zk::Client {
        &self.client
    }

    /// Which session of the store this is (see [`super::store::SessionEvent`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The server-assigned session id (the `ephemeral_owner` of its nodes).
    pub fn session_id(&self) -> i64 {
        self.client.session_id().0
    }

    /// Raw data and stat of `path`.
    ///
    /// # Errors
    /// [`TopoError::NotFound`] or a ZooKeeper failure.
    pub async fn get_raw(&self, path: &str) -> Result<(Vec<u8>, zk::Stat), TopoError> {
        self.patiently(|| self.client.get_data(path))
            .await
            .0
            .map_err(TopoError::zk_at("get", path))
    }

    /// Reads `path` as JSON.
    ///
    /// # Errors
    /// [`TopoError::NotFound`], [`TopoError::Json`] or a ZooKeeper failure.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, TopoError> {
        Ok(self.get_json_with_version(path).await?.0)
    }

    /// Reads `path` as JSON, with the version to pass to a later CAS.
    ///
    /// # Errors
    /// As [`ZkSession::get_json`].
    pub async fn get_json_with_version<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(T, i32), TopoError> {
        let (data, stat) = self.get_raw(path).await?;
        Ok((from_json(path, &data)?, stat.version))
    }

    /// Whether `path` exists.
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn exists(&self, path: &str) -> Result<bool, TopoError> {
        Ok(self.stat(path).await?.is_some())
    }

    /// The stat of `path`, `None` if it does not exist.
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn stat(&self, path: &str) -> Result<Option<zk::Stat>, TopoError> {
        self.patiently(|| self.client.check_stat(path))
            .await
            .0
            .map_err(TopoError::zk_at("stat", path))
    }

    /// Creates `path` holding `data` in `mode`.
    ///
    /// # Errors
    /// [`TopoError::Exists`], [`TopoError::NotFound`] for a missing parent, or a
    /// ZooKeeper failure.
    pub async fn create_raw(&self, path: &str, data: &[u8], mode: zk::CreateMode) -> Result<(), TopoError> {
        let options = mode.with_acls(zk::Acls::anyone_all());
        match self.patiently(|| self.client.create(path, data, &options)).await {
            (Ok(_), _) => Ok(()),
            // The lost answer may have been our own create.
            (Err(zk::Error::NodeExists), true) if self.holds(path, data, mode).await? => Ok(()),
            (Err(e), _) => Err(TopoError::zk("create", path, e)),
        }
    }

    /// True if `path` is the node a create of `data` in `mode` by this session
    /// would have made: an ephemeral we own, or a persistent node with `data`.
    async fn holds(&self, path: &str, data: &[u8], mode: zk::CreateMode) -> Result<bool, TopoError> {
        match self.get_raw(path).await {
            Ok((found, stat)) => Ok(found == data
                && (!matches!(mode, zk::CreateMode::Ephemeral) || stat.ephemeral_owner == self.session_id())),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates the persistent node `path` holding `value` as JSON.
    ///
    /// # Errors
    /// As [`ZkSession::create_raw`].
    pub async fn create_json<T: Serialize>(&self, path: &str, value: &T) -> Result<(), TopoError> {
        let data = to_json(path, value)?;
        self.create_raw(path, &data, zk::CreateMode::Persistent).await
    }

    /// Writes `value` to `path` if its version is still `version`; returns the
    /// new version.
    ///
    /// # Errors
    /// [`TopoError::Conflict`] if the version moved, or a ZooKeeper failure.
    pub async fn set_json<T: Serialize>(
        &self,
        path: &str,
        value: &T,
        version: i32,
    ) -> Result<i32, TopoError> {
        let data = to_json(path, value)?;
        match self
            .patiently(|| self.client.set_data(path, &data, Some(version)))
            .await
        {
            (Ok(stat), _) => Ok(stat.version),
            // The lost answer may have been our own write: our data, one
            // version on.
            (Err(zk::Error::BadVersion), true) => match self.get_raw(path).await? {
                (found, stat) if found == data && stat.version == version.wrapping_add(1) => Ok(stat.version),
                _ => Err(TopoError::zk("set", path, zk::Error::BadVersion)),
            },
            (Err(e), _) => Err(TopoError::zk("set", path, e)),
        }
    }

    /// Deletes `path`, checking its version when one is given.
    ///
    /// # Errors
    /// [`TopoError::NotFound`], [`TopoError::Conflict`] or a ZooKeeper failure.
    pub async fn delete(&self, path: &str, version: Option<i32>) -> Result<(), TopoError> {
        match self.patiently(|| self.client.delete(path, version)).await {
            (Ok(()), _) => Ok(()),
            // The lost answer may have been our own delete.
            (Err(zk::Error::NoNode), true) => Ok(()),
            (Err(e), _) => Err(TopoError::zk("delete", path, e)),
        }
    }

    /// Deletes the ephemeral `path` only if this session owns it: after an
    /// expiry another session may own a node of the same name, and that one is
    /// not ours to remove. A missing node is fine.
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn delete_if_owned(&self, path: &str) -> Result<(), TopoError> {
        let Some(stat) = self.stat(path).await? else {
            return Ok(());
        };
        if stat.ephemeral_owner != self.session_id() {
            return Ok(());
        }
        match self.delete(path, Some(stat.version)).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// The names of `path`'s children, sorted.
    ///
    /// # Errors
    /// [`TopoError::NotFound`] or a ZooKeeper failure.
    pub async fn children(&self, path: &str) -> Result<Vec<String>, TopoError> {
        let mut names = self
            .patiently(|| self.client.list_children(path))
            .await
            .0
            .map_err(TopoError::zk_at("list", path))?;
        names.sort();
        Ok(names)
    }

    /// The children of `path`; none when `path` does not exist (a directory
    /// nobody has written to yet).
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn children_or_none(&self, path: &str) -> Result<Vec<String>, TopoError> {
        match self.children(path).await {
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            other => other,
        }
    }

    /// Like [`children`](Self::children), with a watch that fires once they
    /// change. A missing `path` lists as empty, and its watch fires when it is
    /// created.
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn children_and_watch(
        &self,
        path: &str,
    ) -> Result<(Vec<String>, zk::OneshotWatcher), TopoError> {
        loop {
            match self
                .patiently(|| self.client.list_and_watch_children(path))
                .await
                .0
            {
                Ok((mut names, watch)) => {
                    names.sort();
                    return Ok((names, watch));
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(TopoError::zk("list", path, e)),
            }
            let (stat, watch) = self
                .patiently(|| self.client.check_and_watch_stat(path))
                .await
                .0
                .map_err(TopoError::zk_at("watch", path))?;
            if stat.is_none() {
                return Ok((Vec::new(), watch));
            }
            // Created between the two calls: list it.
        }
    }

    /// Creates `path` and its missing ancestors as empty persistent nodes.
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn mkdir_p(&self, path: &str) -> Result<(), TopoError> {
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        // mkdir is idempotent: a retry after a lost answer finds its own work.
        self.patiently(|| self.client.mkdir(path, &options))
            .await
            .0
            .map_err(TopoError::zk_at("mkdir", path))
    }

    /// Starts an atomic multi-operation on this session.
    pub fn txn(&self) -> Txn<'_> {
        Txn {
            zk: self,
            ops: Vec::new(),
        }
    }

    /// Runs `call` until it succeeds, fails for a reason other than a lost
    /// connection, the session ends, or the session timeout passes. Returns its
    /// last result, and whether an earlier attempt lost its answer (a write
    /// may then have been applied already).
    async fn patiently<T, E, F, Fut>(&self, mut call: F) -> (Result<T, E>, bool)
    where
        E: ConnectionLost + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let deadline = tokio::time::Instant::now() + self.client.session_timeout();
        let mut pause = Duration::from_millis(10);
        let mut lost = false;
        loop {
            match call().await {
                Err(e) if e.connection_lost() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "ZooKeeper connection lost mid-call; waiting for the session");
                    lost = true;
                    self.reconnected(deadline, pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                result => return (result, lost),
            }
        }
    }

    /// Waits until the session is connected again (or has ended, or
    /// `deadline`), and at least `pause`, so a retry does not spin.
    async fn reconnected(&self, deadline: tokio::time::Instant, pause: Duration) {
        tokio::time::sleep(pause).await;
        let mut states = self.client.state_watcher();
        loop {
            let state = self.client.state();
            if state.is_terminated()
                || matches!(
                    state,
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly
                )
            {
                return;
            }
            tokio::select! {
                _ = states.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Makes sure the ephemeral `path` exists, owned by this session, holding
    /// `data`.
    ///
    /// A node of `stale_owner` (our own expired session) is replaced at once; a
    /// node of any other session is waited out for `wait` (a crashed previous
    /// run's session takes a session timeout to expire), then refused.
    ///
    /// # Errors
    /// [`TopoError::Exists`] if another session keeps it, or a ZooKeeper failure.
    pub async fn ensure_ephemeral(
        &self,
        path: &str,
        data: &[u8],
        stale_owner: Option<i64>,
        wait: Duration,
    ) -> Result<(), TopoError> {
        let deadline = Instant::now() + wait;
        let mut made_parent = false;
        loop {
            let err = match self.create_raw(path, data, zk::CreateMode::Ephemeral).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if err.is_not_found() && !made_parent {
                self.mkdir_p(parent_of(path)).await?;
                made_parent = true;
                continue;
            }
            if !err.is_exists() {
                return Err(err);
            }
            let (existing, stat) = match self.get_raw(path).await {
                Ok(read) => read,
                Err(e) if e.is_not_found() => continue, // vanished in between: create again
                Err(e) => return Err(e),
            };
            if stat.ephemeral_owner == self.session_id() {
                self.patiently(|| self.client.set_data(path, data, Some(stat.version)))
                    .await
                    .0
                    .map_err(TopoError::zk_at("set", path))?;
                return Ok(());
            }
            if Some(stat.ephemeral_owner) == stale_owner {
                match self.delete(path, Some(stat.version)).await {
                    Ok(()) => continue,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                }
            }
            // Left by a process of this machine that has ended: nobody is
            // behind it.
            if self
                .remove_if_left_by_the_dead(path, &existing, stat.version)
                .await?
            {
                continue;
            }
            if Instant::now() >= deadline {
                return Err(TopoError::Exists(format!(
                    "{path} (owned by another live ZooKeeper session {:#x})",
                    stat.ephemeral_owner
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl ZkSession {
    /// Deletes the registration at `path` if its owner is a process of this
    /// machine that has ended (see [`Owner::has_gone`]). True if it is gone
    /// now (deleted, or vanished meanwhile); a node rewritten since it was
    /// read is left alone.
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn remove_if_owner_gone(&self, path: &str) -> Result<bool, TopoError> {
        match self.get_raw(path).await {
            Ok((data, stat)) => self.remove_if_left_by_the_dead(path, &data, stat.version).await,
            Err(e) if e.is_not_found() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// [`ZkSession::remove_if_owner_gone`] for a node already read: `data`
    /// at `version`.
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn remove_if_left_by_the_dead(
        &self,
        path: &str,
        data: &[u8],
        version: i32,
    ) -> Result<bool, TopoError> {
        if !Owner::has_gone(data) {
            return Ok(false);
        }
        match self.delete(path, Some(version)).await {
            Ok(()) => {
                let owner = String::from_utf8_lossy(data);
                tracing::info!("removed {path}, left by a process that has ended: {owner}");
                Ok(true)
            }
            Err(e) if e.is_not_found() => Ok(true),
            Err(TopoError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// An atomic batch of checks and writes (ZooKeeper `multi`): all apply or none.
pub struct Txn<'a> {
    zk: &'a ZkSession,
    ops: Vec<TxnOp>,
}

/// One operation of a [`Txn`], kept so the batch can be sent again after a
/// lost connection.
enum TxnOp {
    Check {
        path: String,
        version: i32,
    },
    Set {
        path: String,
        data: Vec<u8>,
        version: i32,
    },
    Create {
        path: String,
        data: Vec<u8>,
    },
    Delete {
        path: String,
        version: i32,
    },
}

impl TxnOp {
    fn path(&self) -> &str {
        match self {
            TxnOp::Check { path, .. }
            | TxnOp::Set { path, .. }
            | TxnOp::Create { path, .. }
            | TxnOp::Delete { path, .. } => path,
        }
    }
}

impl Txn<'_> {
    /// Fails the whole batch unless `path` is at `version`.
    ///
    /// # Errors
    /// None today; kept fallible for the callers' `?`.
    pub fn check(&mut self, path: &str, version: i32) -> Result<(), TopoError> {
        self.ops.push(TxnOp::Check {
            path: path.to_string(),
            version,
        });
        Ok(())
    }

    /// Writes `value` to `path` if it is at `version`.
    ///
    /// # Errors
    /// A value that does not serialize.
    pub fn set_json<T: Serialize>(&mut self, path: &str, value: &T, version: i32) -> Result<(), TopoError> {
        let data = to_json(path, value)?;
        self.ops.push(TxnOp::Set {
            path: path.to_string(),
            data,
            version,
        });
        Ok(())
    }

    /// Creates the persistent `path` holding `value`.
    ///
    /// # Errors
    /// A value that does not serialize.
    pub fn create_json<T: Serialize>(&mut self, path: &str, value: &T) -> Result<(), TopoError> {
        let data = to_json(path, value)?;
        self.ops.push(TxnOp::Create {
            path: path.to_string(),
            data,
        });
        Ok(())
    }

    /// Deletes `path` if it is at `version`.
    ///
    /// # Errors
    /// None today; kept fallible for the callers' `?`.
    pub fn delete(&mut self, path: &str, version: i32) -> Result<(), TopoError> {
        self.ops.push(TxnOp::Delete {
            path: path.to_string(),
            version,
        });
        Ok(())
    }

    /// Applies the batch.
    ///
    /// # Errors
    /// The first failing operation's error, with its path ([`TopoError::Conflict`]
    /// for a moved version); nothing was written.
    pub async fn commit(self) -> Result<(), TopoError> {
        let first = self.ops.first().map(|o| o.path().to_string()).unwrap_or_default();
        let (result, lost) = self.zk.patiently(|| self.send()).await;
        let failed = match result {
            Ok(_) => return Ok(()),
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                let path = self.ops.get(index).map_or(first.as_str(), TxnOp::path);
                TopoError::zk("multi", path, source)
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => TopoError::zk("multi", &first, source),
        };
        // A batch whose answer was lost and that now fails may have been
        // applied by the lost attempt: it was if every write is in place.
        if lost && self.applied().await? {
            return Ok(());
        }
        Err(failed)
    }

    /// Sends the whole batch once.
    fn send(
        &self,
    ) -> impl Future<Output = Result<Vec<zk::MultiWriteResult>, zk::MultiWriteError>> + Send + '_ {
        let mut writer = self.zk.client.new_multi_writer();
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let mut built = Ok(());
        for op in &self.ops {
            let added = match op {
                TxnOp::Check { path, version } => writer.add_check_version(path, *version),
                TxnOp::Set { path, data, version } => writer.add_set_data(path, data, Some(*version)),
                TxnOp::Create { path, data } => writer.add_create(path, data, &options),
                TxnOp::Delete { path, version } => writer.add_delete(path, Some(*version)),
            };
            if let Err(source) = added {
                built = Err(zk::MultiWriteError::RequestFailed { source });
                break;
            }
        }
        async move {
            built?;
            writer.commit().await
        }
    }

    /// True if every write of the batch is in place: sets and creates hold
    /// their data, deletes are gone.
    async fn applied(&self) -> Result<bool, TopoError> {
        for op in &self.ops {
            let done = match op {
                TxnOp::Check { .. } => true,
                TxnOp::Set { path, data, .. } | TxnOp::Create { path, data } => {
                    self.zk.holds(path, data, zk::CreateMode::Persistent).await?
                }
                TxnOp::Delete { path, .. } => !self.zk.exists(path).await?,
            };
            if !done {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Errors that can say whether only the connection failed, under a session
/// that may live on (the client reconnects to it), as opposed to an answer or
/// the session's end.
trait ConnectionLost {
    fn connection_lost(&self) -> bool;
}

impl ConnectionLost for zk::Error {
    fn connection_lost(&self) -> bool {
        matches!(
            self,
            zk::Error::ConnectionLoss | zk::Error::Throttled | zk::Error::Custom(_)
        )
    }
}

impl ConnectionLost for zk::MultiWriteError {
    fn connection_lost(&self) -> bool {
        matches!(self, zk::MultiWriteError::RequestFailed { source } if source.connection_lost())
    }
}

/// `value` as compact JSON.
fn to_json<T: Serialize>(path: &str, value: &T) -> Result<Vec<u8>, TopoError> {
    serde_json::to_vec(value).map_err(|source| TopoError::Json {
        path: path.to_string(),
        source,
    })
}

/// `data` of node `path` parsed as JSON.
pub(crate) fn from_json<T: DeserializeOwned>(path: &str, data: &[u8]) -> Result<T, TopoError> {
    serde_json::from_slice(data).map_err(|source| TopoError::Json {
        path: path.to_string(),
        source,
    })
}

/// The parent of an absolute path (`/a/b` → `/a`, `/a` → `/`).
fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        assert_eq!(parent_of("/a/b/c"), "/a/b");
        assert_eq!(parent_of("/a"), "/");
    }
}
