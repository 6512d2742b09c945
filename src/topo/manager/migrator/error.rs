//! Errors of the background migrator, worded for the operator who reads them on
//! the task (they end up in `Progress::last_error` and in the dashboard).

use std::time::Duration;

/// Why a migration step failed.
///
/// `MIGRATE` error replies are *not* errors of this type: a batch the target did
/// not take is retried by the pass itself and only counted in the progress. This
/// type is for the source connection and for settings.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The settings or the addresses make no sense; nothing was done.
    #[error("invalid migration settings: {0}")]
    Config(String),

    /// No TCP connection to the source could be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port` of the server.
        addr: String,
        /// What the socket reported.
        source: std::io::Error,
    },

    /// Reading from or writing to an open connection failed.
    #[error("connection to {addr} failed: {source}")]
    Io {
        /// `host:port` of the server.
        addr: String,
        /// What the socket reported.
        source: std::io::Error,
    },

    /// The server closed the connection.
    #[error("{addr} closed the connection")]
    Closed {
        /// `host:port` of the server.
        addr: String,
    },

    /// No reply came in time.
    #[error("{addr} did not answer {cmd} within {waited:?}")]
    Timeout {
        /// `host:port` of the server.
        addr: String,
        /// The command that was waited for.
        cmd: &'static str,
        /// How long we waited.
        waited: Duration,
    },

    /// The bytes received are not a RESP reply, or not the reply expected.
    #[error("{addr} sent an unexpected reply to {cmd}: {detail}")]
    Protocol {
        /// `host:port` of the server.
        addr: String,
        /// The command whose reply it was.
        cmd: &'static str,
        /// What was wrong with it.
        detail: String,
    },

    /// The server refused the password, or wants one and none is configured.
    #[error("{addr} refused authentication: {message} (check the backend password of the product)")]
    Auth {
        /// `host:port` of the server.
        addr: String,
        /// The server's error reply.
        message: String,
    },

    /// The server answered a command with an error reply.
    #[error("{addr} answered {cmd} with: {message}")]
    Redis {
        /// `host:port` of the server.
        addr: String,
        /// The command.
        cmd: &'static str,
        /// The server's error reply, without the leading `-`.
        message: String,
    },

    /// The server answered `READONLY`: it is a replica now (a failover or a
    /// promote moved its group's master). Retrying on it can never succeed;
    /// the task's next step looks the masters up again.
    #[error("{addr} is no longer its group's master ({message}); the masters are looked up again")]
    NotMaster { addr: String, message: String },
}

impl MigrateError {
    /// True if trying again later may succeed (the source is down, restarting or
    /// slow); false for settings, passwords and refused commands, which need an
    /// operator.
    pub fn is_transient(&self) -> bool {
        match self {
            MigrateError::Connect { .. }
            | MigrateError::Io { .. }
            | MigrateError::Closed { .. }
            | MigrateError::Timeout { .. }
            | MigrateError::Protocol { .. } => true,
            MigrateError::Redis { message, .. } => {
                // A restarting or busy server says so; it will answer later.
                ["LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN"]
                    .iter()
                    .any(|p| message.starts_with(p))
            }
            MigrateError::Config(_) | MigrateError::Auth { .. } | MigrateError::NotMaster { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_or_not() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let addr = || "h:1".to_string();
        assert!(
            MigrateError::Connect {
                addr: addr(),
                source: io()
            }
            .is_transient()
        );
        assert!(
            MigrateError::Redis {
                addr: addr(),
                cmd: "SCAN",
                message: "LOADING Redis is loading the dataset in memory".into()
            }
            .is_transient()
        );
        assert!(
            !MigrateError::Redis {
                addr: addr(),
                cmd: "SCAN",
                message: "ERR unknown command".into()
            }
            .is_transient()
        );
        assert!(!MigrateError::Config("x".into()).is_transient());
        assert!(
            !MigrateError::Auth {
                addr: addr(),
                message: "WRONGPASS".into()
            }
            .is_transient()
        );
    }
}
