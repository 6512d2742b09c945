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
        self.client
            .get_data(path)
            .await
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
        self.client
            .check_stat(path)
            .await
            .map_err(TopoError::zk_at("stat", path))
    }

    /// Creates `path` holding `data` in `mode`.
    ///
    /// # Errors
    /// [`TopoError::Exists`], [`TopoError::NotFound`] for a missing parent, or a
    /// ZooKeeper failure.
    pub async fn create_raw(&self, path: &str, data: &[u8], mode: zk::CreateMode) -> Result<(), TopoError> {
        let options = mode.with_acls(zk::Acls::anyone_all());
        self.client
            .create(path, data, &options)
            .await
            .map(|_| ())
            .map_err(TopoError::zk_at("create", path))
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
        self.client
            .set_data(path, &data, Some(version))
            .await
            .map(|stat| stat.version)
            .map_err(TopoError::zk_at("set", path))
    }

    /// Deletes `path`, checking its version when one is given.
    ///
    /// # Errors
    /// [`TopoError::NotFound`], [`TopoError::Conflict`] or a ZooKeeper failure.
    pub async fn delete(&self, path: &str, version: Option<i32>) -> Result<(), TopoError> {
        self.client
            .delete(path, version)
            .await
            .map_err(TopoError::zk_at("delete", path))
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
            .client
            .list_children(path)
            .await
            .map_err(TopoError::zk_at("list", path))?;
        names.sort();
        Ok(names)
    }

    /// Creates `path` and its missing ancestors as empty persistent nodes.
    ///
    /// # Errors
    /// A ZooKeeper failure.
    pub async fn mkdir_p(&self, path: &str) -> Result<(), TopoError> {
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        self.client
            .mkdir(path, &options)
            .await
            .map_err(TopoError::zk_at("mkdir", path))
    }

    /// Starts an atomic multi-operation on this session.
    pub fn txn(&self) -> Txn<'_> {
        Txn {
            writer: self.client.new_multi_writer(),
            paths: Vec::new(),
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
            let Some(stat) = self.stat(path).await? else {
                continue; // vanished in between: create again
            };
            if stat.ephemeral_owner == self.session_id() {
                self.client
                    .set_data(path, data, Some(stat.version))
                    .await
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

/// An atomic batch of checks and writes (ZooKeeper `multi`): all apply or none.
pub struct Txn<'a> {
    writer: zk::MultiWriter<'a>,
    /// Path of each operation, to name the one that failed.
    paths: Vec<String>,
}

impl Txn<'_> {
    /// Fails the whole batch unless `path` is at `version`.
    ///
    /// # Errors
    /// A malformed path.
    pub fn check(&mut self, path: &str, version: i32) -> Result<(), TopoError> {
        self.paths.push(path.to_string());
        self.writer
            .add_check_version(path, version)
            .map_err(TopoError::zk_at("check", path))
    }

    /// Writes `value` to `path` if it is at `version`.
    ///
    /// # Errors
    /// A malformed path or a value that does not serialize.
    pub fn set_json<T: Serialize>(&mut self, path: &str, value: &T, version: i32) -> Result<(), TopoError> {
        let data = to_json(path, value)?;
        self.paths.push(path.to_string());
        self.writer
            .add_set_data(path, &data, Some(version))
            .map_err(TopoError::zk_at("set", path))
    }

    /// Creates the persistent `path` holding `value`.
    ///
    /// # Errors
    /// A malformed path or a value that does not serialize.
    pub fn create_json<T: Serialize>(&mut self, path: &str, value: &T) -> Result<(), TopoError> {
        let data = to_json(path, value)?;
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        self.paths.push(path.to_string());
        self.writer
            .add_create(path, &data, &options)
            .map_err(TopoError::zk_at("create", path))
    }

    /// Deletes `path` if it is at `version`.
    ///
    /// # Errors
    /// A malformed path.
    pub fn delete(&mut self, path: &str, version: i32) -> Result<(), TopoError> {
        self.paths.push(path.to_string());
        self.writer
            .add_delete(path, Some(version))
            .map_err(TopoError::zk_at("delete", path))
    }

    /// Applies the batch.
    ///
    /// # Errors
    /// The first failing operation's error, with its path ([`TopoError::Conflict`]
    /// for a moved version); nothing was written.
    pub async fn commit(mut self) -> Result<(), TopoError> {
        let first = self.paths.first().cloned().unwrap_or_default();
        match self.writer.commit().await {
            Ok(_) => Ok(()),
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                let path = self.paths.get(index).unwrap_or(&first);
                Err(TopoError::zk("multi", path, source))
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(TopoError::zk("multi", &first, source)),
        }
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
