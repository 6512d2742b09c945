//! Errors of the coordination layer: every way reading or changing the cluster
//! model in ZooKeeper can fail, worded for the operator who reads them.
//!
//! Imports nothing from the crate but the ZooKeeper client's own error type.

use zookeeper_client as zk;

/// Why a topology read, write or operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TopoError {
    /// No ZooKeeper session could be established.
    #[error("cannot reach ZooKeeper at {addr}: {reason}")]
    Unreachable {
        /// The connect string that was tried.
        addr: String,
        /// What the client reported (timeout, refused, …).
        reason: String,
    },

    /// The product's nodes do not exist yet.
    #[error("product {product:?} is not initialized in ZooKeeper (run `reborn admin init`)")]
    NotInitialized {
        /// The product name.
        product: String,
    },

    /// The named thing (a group, a server, a node) does not exist.
    #[error("{0} does not exist")]
    NotFound(String),

    /// The named thing already exists.
    #[error("{0} already exists")]
    Exists(String),

    /// An argument or a requested change is refused; the message says why.
    #[error("{0}")]
    Invalid(String),

    /// The thing is in a state that does not allow the change (a task past
    /// its switch cannot be cancelled, …); the message says which states do.
    #[error("{0}")]
    State(String),

    /// Another operator holds the product lock.
    #[error("the product lock is held by {holder}; retry later, or check that the holder is still running")]
    Locked {
        /// Who holds it (owner, pid, host, since).
        holder: String,
    },

    /// A compare-and-set lost against a concurrent writer; nothing was written.
    #[error("proxies {missing:?} did not acknowledge action {seq} in time; the change was rolled back")]
    AckTimeout {
        seq: u64,
        /// Live proxies that had not acknowledged.
        missing: Vec<String>,
    },
    #[error("{path} was changed concurrently; nothing was written, retry")]
    Conflict {
        /// The node whose version moved.
        path: String,
    },

    /// The ZooKeeper session expired while the call was in flight.
    #[error("the ZooKeeper session expired")]
    SessionExpired,

    /// The store was closed by [`super::Store::close`].
    #[error("the ZooKeeper store is closed")]
    Closed,

    /// Any other ZooKeeper failure, with the operation and the path.
    #[error("ZooKeeper {op} {path}: {source}")]
    Zk {
        /// What we were doing (`get`, `create`, `set`, …).
        op: &'static str,
        /// The node.
        path: String,
        /// The client's error.
        #[source]
        source: zk::Error,
    },

    /// A node holds data that is not the JSON we expect.
    #[error("bad JSON in {path}: {source}")]
    Json {
        /// The node.
        path: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

impl TopoError {
    /// Maps a ZooKeeper error of `op` on `path`. Errors with a meaning of their own
    /// (missing node, existing node, lost CAS, expiry) get their own variant so
    /// callers can match on them without knowing the client library.
    pub fn zk(op: &'static str, path: &str, source: zk::Error) -> TopoError {
        match source {
            zk::Error::NoNode => TopoError::NotFound(format!("node {path}")),
            zk::Error::NodeExists => TopoError::Exists(format!("node {path}")),
            zk::Error::BadVersion => TopoError::Conflict {
                path: path.to_string(),
            },
            zk::Error::SessionExpired => TopoError::SessionExpired,
            source => TopoError::Zk {
                op,
                path: path.to_string(),
                source,
            },
        }
    }

    /// A closure for `map_err` that calls [`TopoError::zk`].
    pub fn zk_at<'a>(op: &'static str, path: &'a str) -> impl FnOnce(zk::Error) -> TopoError + 'a {
        move |source| TopoError::zk(op, path, source)
    }

    /// True for [`TopoError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, TopoError::NotFound(_))
    }

    /// True for [`TopoError::Exists`].
    pub fn is_exists(&self) -> bool {
        matches!(self, TopoError::Exists(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zk_errors_with_a_meaning_get_their_own_variant() {
        assert!(TopoError::zk("get", "/a", zk::Error::NoNode).is_not_found());
        assert!(TopoError::zk("create", "/a", zk::Error::NodeExists).is_exists());
        assert!(matches!(
            TopoError::zk("set", "/a", zk::Error::BadVersion),
            TopoError::Conflict { .. }
        ));
        let other = TopoError::zk("get", "/a/b", zk::Error::ConnectionLoss);
        assert!(other.to_string().contains("get /a/b"), "{other}");
    }

    #[test]
    fn is_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<TopoError>();
    }
}
