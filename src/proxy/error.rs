//! Errors that stop a proxy from starting or running. Per-request failures are
//! not errors in this sense: they become `-ERR` replies and the session goes on.

use crate::libs::config::ConfigError;
use crate::topo::TopoError;

/// Why the proxy could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start a worker thread: {0}")]
    Worker(std::io::Error),
    #[error("zookeeper: {0}")]
    Topo(#[from] TopoError),
}
