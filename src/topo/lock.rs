//! The product-wide operator lock: one ephemeral node, `<root>/<product>/lock`.
//!
//! Every operation that changes the model runs under it, so two operators (or an
//! operator and the dashboard) never interleave their read-validate-write steps.
//! It is ephemeral, so a crashed holder releases it when its session expires. The
//! guard keeps the [`ZkSession`] that created the node: if that session expires
//! mid-operation, the lock is gone and the remaining writes fail with
//! `SessionExpired` instead of continuing unlocked on a new session.
//! Imports `libs` and `topo`'s kernel.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use super::error::TopoError;
use super::session::{ZkSession, from_json};
use super::store::Store;

use crate::libs::clock::unix_secs;

/// How long [`acquire`] waits for a held lock before giving up.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// Pause between attempts while the lock is held by someone else.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Who holds the lock: the JSON of the lock node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// What took it (`admin group-create 3`, `dashboard`, …).
    pub owner: String,
    /// Process id of the holder.
    pub pid: u32,
    /// Host name of the holder.
    pub host: String,
    /// Unix seconds when it was taken.
    pub since: u64,
}

impl LockInfo {
    /// A lock record for this process.
    pub fn for_this_process(owner: &str) -> LockInfo {
        LockInfo {
            owner: owner.to_string(),
            pid: std::process::id(),
            host: host_name(),
            since: unix_secs(),
        }
    }
}

impl fmt::Display for LockInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let age = unix_secs().saturating_sub(self.since);
        write!(
            f,
            "{:?} (pid {} on {}, for {age}s)",
            self.owner, self.pid, self.host
        )
    }
}

/// A held lock. Release it with [`LockGuard::release`]; dropping it releases in
/// the background (and the session's end releases it in any case).
#[derive(Debug)]
pub struct LockGuard {
    zk: ZkSession,
    path: String,
    released: bool,
}

impl LockGuard {
    /// The session that holds the lock: do the locked operation's I/O on it.
    pub fn zk(&self) -> &ZkSession {
        &self.zk
    }

    /// Deletes the lock node if this session still owns it.
    ///
    /// # Errors
    /// A ZooKeeper failure (the node then goes away with the session).
    pub async fn release(mut self) -> Result<(), TopoError> {
        self.released = true;
        release(&self.zk, &self.path).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Dropped on an error path or by a cancelled task: free the lock now
        // rather than after a session timeout, if there is a runtime to do it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let zk = self.zk.clone();
            let path = std::mem::take(&mut self.path);
            rt.spawn(async move {
                if let Err(e) = release(&zk, &path).await {
                    tracing::warn!("releasing the lock {path}: {e}");
                }
            });
        }
    }
}

/// Takes the product lock for `owner`, waiting up to [`DEFAULT_WAIT`].
///
/// # Errors
/// As [`acquire_within`].
pub async fn acquire(store: &Store, owner: &str) -> Result<LockGuard, TopoError> {
    acquire_within(store, owner, DEFAULT_WAIT).await
}

/// Takes the product lock for `owner`, waiting up to `wait` while someone else
/// holds it.
///
/// # Errors
/// [`TopoError::Locked`] naming the holder when the wait runs out;
/// [`TopoError::NotInitialized`] if the product does not exist.
pub async fn acquire_within(store: &Store, owner: &str, wait: Duration) -> Result<LockGuard, TopoError> {
    let zk = store.zk()?;
    let path = store.paths().lock();
    let data = serde_json::to_vec(&LockInfo::for_this_process(owner)).map_err(|source| TopoError::Json {
        path: path.clone(),
        source,
    })?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match zk.create_raw(&path, &data, zk::CreateMode::Ephemeral).await {
            Ok(()) => {
                return Ok(LockGuard {
                    zk,
                    path,
                    released: false,
                });
            }
            Err(e) if e.is_not_found() => {
                return Err(TopoError::NotInitialized {
                    product: store.paths().product_name().to_string(),
                });
            }
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
        let holder = match zk.get_raw(&path).await {
            Ok((data, _)) => describe_holder(&path, &data),
            Err(e) if e.is_not_found() => continue, // released meanwhile
            Err(e) => return Err(e),
        };
        if tokio::time::Instant::now() + RETRY_EVERY > deadline {
            return Err(TopoError::Locked { holder });
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Runs `op` under the product lock, on the locking session, and releases the
/// lock whatever `op` returns.
///
/// # Errors
/// Failing to take the lock, or `op`'s error.
pub async fn with_lock<T>(
    store: &Store,
    owner: &str,
    op: impl AsyncFnOnce(&ZkSession) -> Result<T, TopoError>,
) -> Result<T, TopoError> {
    let guard = acquire(store, owner).await?;
    let result = op(guard.zk()).await;
    if let Err(e) = guard.release().await {
        // The operation's outcome is what matters; the node dies with the session.
        tracing::warn!("releasing the product lock: {e}");
    }
    result
}

/// Who holds the lock, readable; falls back to the raw bytes if they are not ours.
fn describe_holder(path: &str, data: &[u8]) -> String {
    match from_json::<LockInfo>(path, data) {
        Ok(info) => info.to_string(),
        Err(_) => format!("an unknown holder ({:?})", String::from_utf8_lossy(data)),
    }
}

async fn release(zk: &ZkSession, path: &str) -> Result<(), TopoError> {
    // Only delete our own node: after an expiry someone else may hold it now.
    zk.delete_if_owned(path).await
}

/// This machine's host name, for the records that say who holds something.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_is_described_readably() {
        let info = LockInfo {
            owner: "admin slots-assign".into(),
            pid: 42,
            host: "h1".into(),
            since: unix_secs(),
        };
        let data = serde_json::to_vec(&info).expect("json");
        let text = describe_holder("/l", &data);
        assert!(text.contains("admin slots-assign") && text.contains("pid 42") && text.contains("h1"));
        assert!(describe_holder("/l", b"zz").contains("unknown holder"));
    }
}
