//! `reborn proxy` configuration: the TOML file, its defaults and the flags that
//! override it. `conf/proxy.toml` is the commented sample.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::CommandsConfig;
use crate::libs::config::{self, ConfigError};
use crate::topo::ZkConfig;
use crate::topo::store::ZkArgs;

/// Everything a proxy needs to run. Defaults live in `impl Default`, only there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// RESP address clients connect to.
    pub listen: String,
    /// HTTP admin address (`/stats`, `/metrics`, `/loglevel`).
    pub admin_listen: String,
    /// Id registered in ZooKeeper; empty means the listen address.
    pub id: String,
    /// Address advertised in ZooKeeper; empty means the listen address.
    pub advertise: String,
    /// The product this proxy serves and where its ZooKeeper lives.
    pub zk: ZkConfig,
    /// Password clients must send with AUTH; empty disables AUTH.
    pub auth: String,
    /// Password the proxy sends to every redis-server of the product.
    pub backend_auth: String,
    /// With `auth` set: close a client that has not given the password this
    /// long after connecting (0s: never), so strangers cannot hold
    /// `max_clients` slots for ever.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Most client connections at once; more get an error and are closed.
    pub max_clients: usize,
    /// Close a client idle this long (0s: never).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest bulk string a client may send, in bytes.
    pub max_bulk_len: usize,
    /// Requests a client may have in flight before the proxy stops reading from
    /// it (back-pressure, not disconnection).
    pub max_pipeline: usize,
    /// Bytes of replies a client may leave unread in its proxy buffer; past
    /// it the client is disconnected (as Redis's `client-output-buffer-limit`).
    /// A client that merely reads slowly is held back long before (`output.rs`).
    pub client_output_limit: usize,
    /// Bytes all clients may leave unread, together; while over it, new
    /// requests get an error and a client holding over 1 MB unread is disconnected.
    pub max_output_memory: usize,
    /// Shared pipelined connections per redis-server.
    pub backend_conns: usize,
    #[serde(with = "humantime_serde")]
    pub backend_connect_timeout: Duration,
    /// Dedicated backend connections for blocking commands, across all clients.
    pub max_blocking: usize,
    /// Timeout of one `MIGRATE` when a request moves its keys off a migrating
    /// slot's source (big values need more).
    #[serde(with = "humantime_serde")]
    pub migrate_timeout: Duration,
    /// How long a request waits while its slot switches groups (`pre_migrate`),
    /// or while the proxy's ZooKeeper lease has lapsed, before it fails.
    #[serde(with = "humantime_serde")]
    pub hold_timeout: Duration,
    /// Most requests held at once across the proxy; beyond it they fail at once.
    pub max_held: usize,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often the proxy pings every master it routes to, as a failover
    /// observer (`observer.rs`).
    #[serde(with = "humantime_serde")]
    pub master_check_interval: Duration,
    /// A master not heard from for this long, whose port does not even
    /// accept a connection, is reported down in ZooKeeper (one vote towards
    /// an automatic failover).
    #[serde(with = "humantime_serde")]
    pub master_down_after: Duration,
    /// A master not heard from for this long is reported down even though
    /// its port accepts connections: a Redis busy with a slow command does
    /// (`libs::reachable`), so it is not failed over before this.
    #[serde(with = "humantime_serde")]
    pub master_busy_down_after: Duration,
    /// When a write is acknowledged to the client: once its master ran it
    /// (`master`, the default), or once a replica has it too (`replica`: the
    /// proxy follows each burst of writes with `WAIT 1 write_ack_timeout`).
    pub write_ack: WriteAck,
    /// How long a write waits for a replica in `write_ack = "replica"`; past
    /// it the client gets `-NOREPLICAS` (the write ran on the master).
    #[serde(with = "humantime_serde")]
    pub write_ack_timeout: Duration,
    /// Like Redis's `busy-reply-threshold`: once a backend connection has
    /// been silent this long with a client's script running on it, other
    /// clients' new requests for it get `-BUSY` at once instead of queueing
    /// behind the script (0s: they always queue).
    #[serde(with = "humantime_serde")]
    pub busy_reply_threshold: Duration,
    /// Tokio worker threads (0: one per core).
    pub threads: usize,
    /// Commands denied or renamed by the operator (see `policy.rs`).
    pub commands: CommandsConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:19000".into(),
            admin_listen: "127.0.0.1:11080".into(),
            id: String::new(),
            advertise: String::new(),
            zk: ZkConfig::default(),
            auth: String::new(),
            backend_auth: String::new(),
            auth_timeout: Duration::from_secs(10),
            max_clients: 50_000,
            idle_timeout: Duration::ZERO,
            max_bulk_len: 512 * 1024 * 1024,
            max_pipeline: 4096,
            client_output_limit: 256 * 1024 * 1024,
            max_output_memory: 1024 * 1024 * 1024,
            backend_conns: 1,
            backend_connect_timeout: Duration::from_secs(1),
            max_blocking: 1000,
            migrate_timeout: Duration::from_secs(5),
            hold_timeout: Duration::from_secs(5),
            max_held: 10_000,
            drain_timeout: Duration::from_secs(5),
            master_check_interval: Duration::from_millis(500),
            master_down_after: Duration::from_secs(3),
            master_busy_down_after: Duration::from_secs(30),
            write_ack: WriteAck::Master,
            write_ack_timeout: Duration::from_secs(1),
            busy_reply_threshold: Duration::from_secs(5),
            threads: 0,
            commands: CommandsConfig::default(),
        }
    }
}

// Published in the proxy's ZooKeeper node too, so it lives in the model.
pub use crate::topo::model::WriteAck;

impl ProxyConfig {
    /// `Some(write_ack_timeout)` with `write_ack = "replica"`.
    pub fn replica_ack(&self) -> Option<Duration> {
        (self.write_ack == WriteAck::Replica).then_some(self.write_ack_timeout)
    }

    /// The id under which the proxy registers.
    pub fn proxy_id(&self) -> String {
        if self.id.is_empty() {
            self.advertised()
        } else {
            self.id.clone()
        }
    }

    /// The address clients are told to use.
    pub fn advertised(&self) -> String {
        if self.advertise.is_empty() {
            self.listen.clone()
        } else {
            self.advertise.clone()
        }
    }

    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// A zero where a positive number is required, or an empty address.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.listen.is_empty() {
            return bad("listen must not be empty");
        }
        if self.zk.product.is_empty() || self.zk.addr.is_empty() {
            return bad("zk.addr and zk.product must be set");
        }
        if self.max_clients == 0 || self.max_pipeline == 0 || self.backend_conns == 0 {
            return bad("max_clients, max_pipeline and backend_conns must be at least 1");
        }
        if self.max_bulk_len == 0 {
            return bad("max_bulk_len must be at least 1");
        }
        if self.master_check_interval.is_zero() || self.master_down_after < self.master_check_interval {
            return bad("master_check_interval must be positive and master_down_after at least as long");
        }
        if self.master_busy_down_after < self.master_down_after {
            return bad("master_busy_down_after must be at least master_down_after");
        }
        self.commands.validate()
    }
}

/// Command-line flags of `reborn proxy`; each overrides the file.
#[derive(clap::Args, Debug, Default)]
pub struct ProxyArgs {
    /// TOML config file (see conf/proxy.toml).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// RESP listen address.
    #[arg(long)]
    pub listen: Option<String>,
    /// HTTP admin listen address.
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// ZooKeeper and product.
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Proxy id in ZooKeeper.
    #[arg(long)]
    pub id: Option<String>,
    /// Client password.
    #[arg(long)]
    pub auth: Option<String>,
    /// Backend (redis) password.
    #[arg(long)]
    pub backend_auth: Option<String>,
    /// Tokio worker threads (0: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ProxyArgs {
    /// Loads the file (or defaults), applies the flags and validates.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or the result is invalid.
    pub fn into_config(self) -> Result<ProxyConfig, ConfigError> {
        let mut c: ProxyConfig = config::load(self.config.as_deref())?;
        let set = config::set_from;
        set(&mut c.listen, self.listen);
        set(&mut c.admin_listen, self.admin_listen);
        self.zk.apply(&mut c.zk);
        set(&mut c.id, self.id);
        set(&mut c.auth, self.auth);
        set(&mut c.backend_auth, self.backend_auth);
        config::set_from(&mut c.threads, self.threads);
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_parses_and_flags_override_it() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf/proxy.toml");
        let args = ProxyArgs {
            config: Some(path),
            listen: Some("127.0.0.1:1".into()),
            ..ProxyArgs::default()
        };
        let c = args.into_config().expect("sample config is valid");
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(c.proxy_id(), "127.0.0.1:1");
    }
}
