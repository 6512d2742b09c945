//! `reborn logic` configuration: the TOML file and its defaults (in `impl
//! Default`, only there) and the checks run at start. `conf/logic.toml` is the
//! commented sample; the flags that override it are in `args.rs`.
//!
//! Imports `libs::config`, the `topo` kernel's `ZkConfig`, `im::proxies`'
//! address check and the queue's defaults; nothing else of the crate.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::im::queue;
use crate::libs::config::ConfigError;
use crate::topo::ZkConfig;

/// Everything a logic instance needs to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicConfig {
    /// The instance id in ZooKeeper; empty means `<hostname>-<grpc port>`.
    pub id: String,
    /// The HTTP push API (goim's `/goim/*`).
    pub http: LogicHttpConfig,
    /// The gRPC service comets call (`goim.logic.Logic`).
    pub grpc: LogicGrpcConfig,
    /// Where the reborn proxies are: sessions, online counts and the queue.
    pub cluster: LogicClusterConfig,
    /// ZooKeeper: discovery of comets, registration of this instance.
    pub zk: ZkConfig,
    /// Session mappings (`mid_`, `key_`, `ol_`).
    pub session: LogicSessionConfig,
    /// What `/goim/nodes/weighted` and `ConnectReply` tell clients.
    pub node: LogicNodeConfig,
    /// Reconnect hints for clients, returned by `/goim/nodes/weighted`.
    pub backoff: BackoffHint,
    /// Region name → client IP prefixes in that region (goim mapped provinces
    /// of a GeoIP lookup; reborn matches the client's address by prefix).
    pub regions: BTreeMap<String, Vec<String>>,
    /// The push queue (Redis Streams through the proxy).
    pub queue: LogicQueueConfig,
    /// The loader of cluster-wide room counts.
    pub online: LogicOnlineConfig,
    /// Signed client tokens.
    pub auth: LogicAuthConfig,
}

/// `[http]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicHttpConfig {
    /// Listen address of the HTTP API.
    pub addr: String,
    /// Largest push body accepted, in bytes.
    pub max_body: usize,
}

impl Default for LogicHttpConfig {
    fn default() -> Self {
        LogicHttpConfig {
            addr: "127.0.0.1:3111".into(),
            max_body: 64 * 1024,
        }
    }
}

/// `[grpc]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicGrpcConfig {
    /// Listen address of the gRPC service.
    pub addr: String,
    /// Address written to ZooKeeper for comets; empty means the bound address
    /// (with the hostname in place of an unspecified IP).
    pub advertise: String,
}

impl Default for LogicGrpcConfig {
    fn default() -> Self {
        LogicGrpcConfig {
            addr: "127.0.0.1:3119".into(),
            advertise: String::new(),
        }
    }
}

/// `[cluster]`: the reborn proxies logic talks RESP to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicClusterConfig {
    /// Proxy addresses; calls round-robin over them and fail over when one
    /// cannot be reached.
    pub addrs: Vec<String>,
    /// Pipelined connections per proxy.
    pub conns: usize,
    /// Deadline of one call (connect, or a pipeline's replies).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The proxies' password (their `auth`); empty: none.
    pub auth: String,
}

impl Default for LogicClusterConfig {
    fn default() -> Self {
        LogicClusterConfig {
            addrs: vec!["127.0.0.1:19000".into()],
            conns: 8,
            timeout: Duration::from_secs(1),
            auth: String::new(),
        }
    }
}

/// `[session]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicSessionConfig {
    /// TTL of `mid_`, `key_` and `ol_` (goim: 30m).
    #[serde(with = "humantime_serde")]
    pub expire: Duration,
}

impl Default for LogicSessionConfig {
    fn default() -> Self {
        LogicSessionConfig {
            expire: Duration::from_secs(30 * 60),
        }
    }
}

/// `[node]`: client-facing facts about comets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicNodeConfig {
    /// Returned as the only node when no comet is known (empty: none).
    pub default_domain: String,
    /// Suffix making a comet's id a host name for `platform=web` (e.g.
    /// `.goim.io`); empty means web clients get addresses like the others.
    pub host_domain: String,
    /// Suggested client heartbeat interval.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Missed heartbeats before comet closes a connection: the idle timeout
    /// given to comet is `heartbeat × heartbeat_max`.
    pub heartbeat_max: u32,
    /// Comet client ports told to clients.
    pub tcp_port: u16,
    /// WebSocket port.
    pub ws_port: u16,
    /// WSS port; told to clients only when every comet returned serves WSS
    /// (0 otherwise).
    pub wss_port: u16,
    /// Weight gain of a comet in the client's region.
    pub region_weight: f64,
}

impl Default for LogicNodeConfig {
    fn default() -> Self {
        LogicNodeConfig {
            default_domain: String::new(),
            host_domain: String::new(),
            heartbeat: Duration::from_secs(4 * 60),
            heartbeat_max: 2,
            tcp_port: 3101,
            ws_port: 3102,
            wss_port: 3103,
            region_weight: 1.6,
        }
    }
}

impl LogicNodeConfig {
    /// The idle timeout comet applies to a connection.
    pub fn idle_timeout(&self) -> Duration {
        self.heartbeat.saturating_mul(self.heartbeat_max)
    }
}

/// `[backoff]`: client reconnect hints (goim's names and defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffHint {
    /// Longest delay, seconds.
    pub max_delay: i32,
    /// First delay, seconds.
    pub base_delay: i32,
    /// Growth per attempt.
    pub factor: f32,
    /// Random spread, as a fraction of the delay.
    pub jitter: f32,
}

impl Default for BackoffHint {
    fn default() -> Self {
        BackoffHint {
            max_delay: 300,
            base_delay: 3,
            factor: 1.8,
            jitter: 0.3,
        }
    }
}

/// `[queue]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicQueueConfig {
    /// Number of stream keys; job must use the same number.
    pub streams: usize,
    /// Approximate length cap of each stream (`XADD … MAXLEN ~`).
    pub maxlen: usize,
}

impl Default for LogicQueueConfig {
    fn default() -> Self {
        LogicQueueConfig {
            streams: queue::DEFAULT_STREAMS,
            maxlen: queue::DEFAULT_MAXLEN,
        }
    }
}

/// `[online]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicOnlineConfig {
    /// How often the cluster-wide room counts are summed from `ol_*`.
    #[serde(with = "humantime_serde")]
    pub load_interval: Duration,
    /// A comet's counts older than this are deleted and ignored.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// How long a comet must stay out of discovery before its `ol_{server}`
    /// is deleted (its counts stop counting at once): a comet that
    /// re-registers within it, after a ZooKeeper blip, keeps its counts.
    #[serde(with = "humantime_serde")]
    pub gone_grace: Duration,
}

impl Default for LogicOnlineConfig {
    fn default() -> Self {
        LogicOnlineConfig {
            load_interval: Duration::from_secs(10),
            stale_after: Duration::from_secs(5 * 60),
            gone_grace: Duration::from_secs(60),
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicAuthConfig {
    /// HMAC key of client tokens; empty means goim's behaviour (trust the
    /// auth body's mid).
    pub secret: String,
    /// Lifetime of tokens minted by `reborn logic token` without `--ttl`.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for LogicAuthConfig {
    fn default() -> Self {
        LogicAuthConfig {
            secret: String::new(),
            ttl: Duration::from_secs(60 * 60),
        }
    }
}

impl LogicConfig {
    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// An empty address or proxy list, a proxy address that is not
    /// `host:port`, or a zero where a positive number is required.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.http.addr.is_empty() || self.grpc.addr.is_empty() {
            return bad("http.addr and grpc.addr must be set");
        }
        if self.cluster.addrs.is_empty() || self.cluster.addrs.iter().any(String::is_empty) {
            return bad("cluster.addrs must list at least one proxy address");
        }
        crate::im::proxies::check_addrs(&self.cluster.addrs)?;
        if self.cluster.conns == 0 || self.cluster.timeout.is_zero() {
            return bad("cluster.conns and cluster.timeout must be positive");
        }
        if self.zk.product.is_empty() || self.zk.addr.is_empty() {
            return bad("zk.addr and zk.product must be set");
        }
        if self.session.expire.as_secs() == 0 {
            return bad("session.expire must be at least 1s");
        }
        if self.queue.streams == 0 || self.queue.maxlen == 0 {
            return bad("queue.streams and queue.maxlen must be at least 1");
        }
        if self.http.max_body == 0 {
            return bad("http.max_body must be at least 1");
        }
        if self.online.load_interval.is_zero() || self.online.stale_after.is_zero() {
            return bad("online.load_interval and online.stale_after must be positive");
        }
        if self.node.heartbeat.is_zero() || self.node.heartbeat_max == 0 {
            return bad("node.heartbeat and node.heartbeat_max must be positive");
        }
        if !(self.node.region_weight.is_finite() && self.node.region_weight > 0.0) {
            return bad("node.region_weight must be a positive number");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_parses_to_the_defaults() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf/logic.toml");
        let c: LogicConfig = crate::libs::config::load(Some(&path)).expect("sample parses");
        c.validate().expect("sample is valid");
        let d = LogicConfig::default();
        assert_eq!(c.http.addr, d.http.addr);
        assert_eq!(c.http.max_body, d.http.max_body);
        assert_eq!(c.grpc.addr, d.grpc.addr);
        assert_eq!(c.cluster.addrs, d.cluster.addrs);
        assert_eq!(c.session.expire, Duration::from_secs(1800));
        assert_eq!(c.node.idle_timeout(), Duration::from_secs(480));
        assert_eq!(c.backoff, d.backoff);
        assert_eq!(c.queue.streams, queue::DEFAULT_STREAMS);
        assert_eq!(c.auth.ttl, d.auth.ttl);
    }

    #[test]
    fn nonsense_values_are_refused() {
        let mut c = LogicConfig::default();
        c.cluster.addrs.clear();
        assert!(c.validate().is_err());
        let mut c = LogicConfig::default();
        c.queue.streams = 0;
        assert!(c.validate().is_err());
        assert!(LogicConfig::default().validate().is_ok());
    }

    #[test]
    fn a_proxy_address_that_is_not_host_port_is_refused_at_start() {
        for bogus in ["bogus", "127.0.0.1", "host:port", "127.0.0.1:0", ":19000"] {
            let mut c = LogicConfig::default();
            c.cluster.addrs = vec!["127.0.0.1:19000".into(), bogus.into()];
            let err = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(&format!("{bogus:?}")), "names the value: {err}");
            assert!(err.contains("cluster.addrs"), "names the key: {err}");
            if !bogus.contains(':') {
                assert!(err.contains("expected host:port"), "{err}");
            }
        }
        let mut c = LogicConfig::default();
        c.cluster.addrs = vec!["localhost:19000".into(), "[::1]:19001".into()];
        assert!(c.validate().is_ok(), "host names and IPv6 are fine");
    }
}
