//! The errors of `reborn up` and of the process helpers it shares with the
//! integration tests ([`super::ZooKeeper`], [`super::RedisServer`]).
//!
//! Messages are written for a newcomer on a fresh machine: when something is
//! missing they say which package to install, when a port is taken they say which.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while starting, probing or stopping local processes.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// `redis-server` is not on the `PATH`.
    #[error("redis-server not found: apt-get install redis-server redis-tools")]
    RedisNotInstalled,

    /// One of the Debian ZooKeeper jars is missing.
    #[error("ZooKeeper is not installed ({} is missing): apt-get install zookeeper", missing.display())]
    ZooKeeperNotInstalled {
        /// The first jar that was not found.
        missing: PathBuf,
    },

    /// `java` is not on the `PATH` (the `zookeeper` package pulls in a JRE).
    #[error("java not found: apt-get install zookeeper (it depends on default-jre)")]
    JavaNotInstalled,

    /// Something already listens on a port we were asked to use.
    #[error(
        "port {port} is already in use (wanted for {what}); stop whatever listens there or pick another port"
    )]
    PortInUse {
        /// The port.
        port: u16,
        /// What we wanted to put there, e.g. "redis-server".
        what: String,
    },

    /// The process could not be spawned at all.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// What we tried to start.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The process exited while we waited for it to become ready.
    #[error("{what} exited during start-up ({status}); last lines of {}:\n{tail}", log.display())]
    ExitedEarly {
        /// What exited.
        what: String,
        /// Its exit status, as text.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// The process is running but did not answer its readiness probe in time.
    #[error("{what} did not become ready within {waited:?}; see {}", log.display())]
    NotReady {
        /// What we waited for.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// Its log file.
        log: PathBuf,
    },

    /// The port answered, but not the process we started: another process took it
    /// between our check and our start (ours then failed to bind).
    #[error("port {port} answered, but not by the {what} we started; another process took the port")]
    Impostor {
        /// The port.
        port: u16,
        /// What we started there.
        what: String,
    },

    /// An operation on a process that is not running.
    #[error("{what} is not running")]
    NotRunning {
        /// The process.
        what: String,
    },

    /// A file-system or socket error, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A redis-server answered a command with an error, or with something unexpected.
    #[error("redis-server {addr}: {message}")]
    Redis {
        /// The server.
        addr: String,
        /// Its error reply, or what was wrong with its reply.
        message: String,
    },

    /// A command-line value that makes no sense.
    #[error("invalid argument: {0}")]
    Invalid(String),

    /// Reading or writing the product in ZooKeeper failed.
    #[error("ZooKeeper setup of product {product:?}: {source}")]
    Topo {
        /// The product.
        product: String,
        /// What went wrong.
        #[source]
        source: crate::topo::TopoError,
    },

    /// A role run in-process (the proxy, later the dashboard and the push roles)
    /// failed to start or stopped by itself.
    #[error("{role}: {message}")]
    Role {
        /// The role.
        role: String,
        /// What happened.
        message: String,
    },
}

impl UpError {
    /// Wraps an I/O error with what we were doing.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpError {
        let context = context.into();
        move |source| UpError::Io { context, source }
    }
}
