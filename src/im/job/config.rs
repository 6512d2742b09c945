//! `reborn job` configuration: the TOML file, its defaults and the flags that
//! override it. `conf/job.toml` is the commented sample. Imports `libs::config`,
//! the `topo` kernel's `ZkConfig`, `im::proxies`'
//! address check and `im::queue`'s defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::im::queue;
use crate::libs::config::{self, ConfigError};
use crate::topo::ZkConfig;
use crate::topo::store::ZkArgs;

/// Everything a job instance needs. Defaults live in the `Default` impls, only there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    /// This instance's consumer name in the group; empty means `<hostname>-<pid>`.
    pub consumer: String,
    /// How long a clean shutdown waits for deliveries in flight and their acks.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// HTTP admin address (`/stats`, `/metrics`); empty: none.
    pub admin_listen: String,
    /// Where the reborn proxy cluster (holding the queue) is.
    pub cluster: JobClusterConfig,
    /// Where ZooKeeper is (comets are found there).
    pub zk: ZkConfig,
    /// How the queue is read.
    pub queue: JobQueueConfig,
    /// Room batching (goim's `[room]`).
    pub room: JobRoomConfig,
    /// The gRPC calls to the comets.
    pub comet: JobCometConfig,
}

/// The proxy cluster the queue lives in, reached only through proxies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct JobClusterConfig {
    /// Proxy addresses (`host:port`); connections start at a random one and
    /// fail over to the next.
    pub addrs: Vec<String>,
    /// Connect timeout, and the reply deadline of non-blocking calls.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Shared connections per proxy for acks and claims.
    pub conns: usize,
    /// The proxies' password (their `auth`); empty: none.
    pub auth: String,
}

/// The push queue's streams and how they are consumed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct JobQueueConfig {
    /// Number of stream keys; must equal logic's `streams`.
    pub streams: usize,
    /// `XREADGROUP … BLOCK`: how long one read waits for new entries.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// `XREADGROUP … COUNT` and `XAUTOCLAIM … COUNT`: entries per call.
    pub count: usize,
    /// Entries of one stream read but not yet acked before reading pauses
    /// (back-pressure when comets are slow).
    pub max_pending: usize,
    /// Entries pending this long (their consumer died or stalled) are claimed.
    #[serde(with = "humantime_serde")]
    pub claim_min_idle: Duration,
    /// How often each stream looks for entries to claim.
    #[serde(with = "humantime_serde")]
    pub claim_interval: Duration,
}

/// goim's room aggregation: up to `batch` messages or `signal` after the first
/// into one `BroadcastRoom` call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct JobRoomConfig {
    /// Messages per batch at most.
    pub batch: usize,
    /// How long the first message of a batch waits for others.
    #[serde(with = "humantime_serde")]
    pub signal: Duration,
    /// A room without messages this long lets its aggregator go.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
}

/// The gRPC calls to the comets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct JobCometConfig {
    /// Calls in flight to one comet at most (goim's `routineSize`).
    pub routine: usize,
    /// TCP connect timeout of a comet channel.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline of one call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Further attempts of a call that failed with `UNAVAILABLE`.
    pub retries: u32,
    /// First pause between attempts (doubles, with jitter).
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// How long a comet whose registration went away is still called (a
    /// comet whose ZooKeeper session expired registers again on its next
    /// one, and serves its clients meanwhile).
    #[serde(with = "humantime_serde")]
    pub leave_grace: Duration,
}

impl Default for JobClusterConfig {
    fn default() -> Self {
        JobClusterConfig {
            addrs: vec!["127.0.0.1:19000".into()],
            timeout: Duration::from_secs(3),
            conns: 2,
            auth: String::new(),
        }
    }
}

impl Default for JobQueueConfig {
    fn default() -> Self {
        JobQueueConfig {
            streams: queue::DEFAULT_STREAMS,
            block: Duration::from_secs(2),
            count: 64,
            max_pending: 1024,
            claim_min_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(10),
        }
    }
}

impl Default for JobRoomConfig {
    fn default() -> Self {
        JobRoomConfig {
            batch: 20,
            signal: Duration::from_secs(1),
            idle: Duration::from_secs(15 * 60),
        }
    }
}

impl Default for JobCometConfig {
    fn default() -> Self {
        JobCometConfig {
            routine: 32,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            retries: 3,
            retry_backoff: Duration::from_millis(100),
            leave_grace: Duration::from_secs(10),
        }
    }
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            consumer: String::new(),
            drain_timeout: Duration::from_secs(5),
            admin_listen: "127.0.0.1:3121".into(),
            cluster: JobClusterConfig::default(),
            zk: ZkConfig::default(),
            queue: JobQueueConfig::default(),
            room: JobRoomConfig::default(),
            comet: JobCometConfig::default(),
        }
    }
}

impl JobConfig {
    /// The consumer name in use: `consumer`, or `<hostname>-<pid>`.
    pub fn consumer_name(&self) -> String {
        if self.consumer.is_empty() {
            format!("{}-{}", hostname(), std::process::id())
        } else {
            self.consumer.clone()
        }
    }

    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// An empty address list, a proxy address that is not `host:port`, a zero
    /// count or duration where one is needed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.cluster.addrs.is_empty() || self.cluster.addrs.iter().any(String::is_empty) {
            return bad("cluster.addrs must list at least one proxy address");
        }
        crate::im::proxies::check_addrs(&self.cluster.addrs)?;
        if self.zk.addr.is_empty() || self.zk.product.is_empty() {
            return bad("zk.addr and zk.product must be set");
        }
        if !self.admin_listen.is_empty() && self.admin_listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("admin_listen must be an ip:port (or empty: no admin port)");
        }
        let q = &self.queue;
        if q.streams == 0 || q.count == 0 || q.max_pending == 0 {
            return bad("queue.streams, queue.count and queue.max_pending must be at least 1");
        }
        if q.block.is_zero() {
            // BLOCK 0 means "for ever": shutdown could then wait for ever.
            return bad("queue.block must be above 0");
        }
        if q.claim_interval.is_zero() {
            return bad("queue.claim_interval must be above 0");
        }
        if self.room.batch == 0 || self.room.signal.is_zero() || self.room.idle.is_zero() {
            return bad("room.batch, room.signal and room.idle must be above 0");
        }
        if q.claim_min_idle <= self.room.signal {
            // Room messages wait up to `signal` before their ack: a shorter
            // min-idle would claim (and deliver twice) every one of them.
            return bad("queue.claim_min_idle must be longer than room.signal");
        }
        if self.comet.routine == 0 || self.comet.timeout.is_zero() {
            return bad("comet.routine and comet.timeout must be above 0");
        }
        if self.cluster.conns == 0 || self.cluster.timeout.is_zero() {
            return bad("cluster.conns and cluster.timeout must be above 0");
        }
        Ok(())
    }
}

/// This machine's name, or `localhost` when it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Command-line flags of `reborn job`; each overrides the file.
#[derive(clap::Args, Debug, Default)]
pub struct JobArgs {
    /// TOML config file (see conf/job.toml).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Proxy address(es) of the cluster holding the queue, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub proxy: Option<Vec<String>>,
    /// ZooKeeper and product.
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Consumer name in the group (default `<hostname>-<pid>`).
    #[arg(long)]
    pub consumer: Option<String>,
    /// Number of stream keys (must match logic's).
    #[arg(long)]
    pub streams: Option<usize>,
    /// HTTP admin address, /stats and /metrics (default 127.0.0.1:3121; "" for none).
    #[arg(long)]
    pub admin_listen: Option<String>,
}

impl JobArgs {
    /// Loads the file (or defaults), applies the flags and validates.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or the result is invalid.
    pub fn into_config(self) -> Result<JobConfig, ConfigError> {
        let mut c: JobConfig = config::load(self.config.as_deref())?;
        config::set_from(&mut c.cluster.addrs, self.proxy);
        self.zk.apply(&mut c.zk);
        config::set_from(&mut c.consumer, self.consumer);
        config::set_from(&mut c.queue.streams, self.streams);
        config::set_from(&mut c.admin_listen, self.admin_listen);
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_holds_the_defaults_and_flags_override_it() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf/job.toml");
        let sample: JobConfig = config::load(Some(&path)).expect("sample parses");
        assert_eq!(sample, JobConfig::default(), "conf/job.toml shows the defaults");
        let args = JobArgs {
            config: Some(path),
            proxy: Some(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()]),
            streams: Some(4),
            ..JobArgs::default()
        };
        let c = args.into_config().expect("valid");
        assert_eq!(c.cluster.addrs.len(), 2);
        assert_eq!(c.queue.streams, 4);
        assert!(c.consumer_name().ends_with(&format!("-{}", std::process::id())));
    }

    #[test]
    fn nonsense_is_refused() {
        let mut c = JobConfig::default();
        c.room.batch = 0;
        assert!(c.validate().is_err());
        let mut c = JobConfig::default();
        c.cluster.addrs.clear();
        assert!(c.validate().is_err());
        let mut c = JobConfig::default();
        c.queue.block = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = JobConfig::default();
        c.queue.claim_min_idle = c.room.signal;
        assert!(
            c.validate().is_err(),
            "room messages would be claimed while batching"
        );
        assert!(JobConfig::default().validate().is_ok());
    }

    #[test]
    fn a_bogus_proxy_flag_is_refused_naming_the_value() {
        let args = JobArgs {
            proxy: Some(vec!["127.0.0.1:1".into(), "bogus".into()]),
            ..JobArgs::default()
        };
        let err = args
            .into_config()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("\"bogus\""), "names the value: {err}");
        assert!(err.contains("expected host:port"), "{err}");
    }
}
