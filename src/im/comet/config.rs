//! `reborn comet` configuration: the TOML file, its defaults and the flags that
//! override it. `conf/comet.toml` is the commented sample. Imports `libs` and the
//! `topo` kernel's [`ZkConfig`] only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::im::frame::DEFAULT_MAX_BODY;
use crate::libs::config::{self, ConfigError};
use crate::topo::ZkConfig;
use crate::topo::store::ZkArgs;

/// Everything a comet needs to run. Defaults live in the `Default` impls, only there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CometConfig {
    /// The server id (Instance.id in ZooKeeper, the `server` of every logic
    /// call, the value of `key_*`/`mid_*` sessions). Empty: `<hostname>-<tcp port>`.
    pub server_id: String,
    /// Public addresses clients connect to, published for node selection.
    /// Empty: the TCP listen IP (127.0.0.1 when it listens on every interface).
    pub addrs: Vec<String>,
    /// Region for node selection (may be empty).
    pub region: String,
    /// Fixed weight for node selection.
    pub weight: i64,
    /// An offline comet keeps its clients but is left out of node selection.
    pub offline: bool,
    /// Most client connections at once (TCP, WebSocket and WSS together);
    /// beyond it a new one is closed at once. Lowered at start to what the
    /// open-file limit allows (raised to its hard limit first).
    pub max_connections: usize,
    /// How often the ZooKeeper registration is rewritten with fresh counts.
    #[serde(with = "humantime_serde")]
    pub register_interval: Duration,
    /// Tokio worker threads (0: one per core).
    pub threads: usize,
    /// HTTP admin address (`/stats`, `/metrics`); empty: none.
    pub admin_listen: String,
    /// Raw TCP clients.
    pub tcp: CometTcpConfig,
    /// WebSocket (and WSS) clients.
    pub websocket: CometWsConfig,
    /// The gRPC server job calls.
    pub grpc: CometGrpcConfig,
    /// The client protocol's limits and timers.
    pub protocol: CometProtocolConfig,
    /// Sharding of the connection maps.
    pub bucket: CometBucketConfig,
    /// Calls to logic.
    pub logic: CometLogicConfig,
    /// ZooKeeper (discovery).
    pub zk: ZkConfig,
}

/// `[tcp]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CometTcpConfig {
    /// Address raw TCP clients connect to.
    pub listen: String,
}

/// `[websocket]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CometWsConfig {
    /// Address WebSocket clients connect to (path `/sub`).
    pub listen: String,
    /// Address of WSS; used only when `cert` and `key` are set.
    pub tls_listen: String,
    /// PEM certificate chain for WSS (empty: WSS off).
    pub cert: String,
    /// PEM private key for WSS.
    pub key: String,
}

/// `[grpc]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CometGrpcConfig {
    /// Address of the `goim.comet.Comet` server.
    pub listen: String,
    /// `host:port` published for job; empty: the bound address (127.0.0.1 for
    /// an unspecified IP).
    pub advertise: String,
}

/// `[protocol]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CometProtocolConfig {
    /// Largest frame body a client may send (goim: 4096).
    pub max_body: usize,
    /// A connection that has not authenticated this long after connecting is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Server pushes queued per connection; a push to a full queue is dropped.
    pub send_queue: usize,
    /// A client heartbeat renews the session in logic when this long has passed
    /// since the last renew. Must stay well under logic's session TTL (30 min).
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
}

/// `[bucket]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CometBucketConfig {
    /// Number of shards of the key → connection map (goim: 32).
    pub size: usize,
}

/// `[logic]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CometLogicConfig {
    /// Connect timeout to a logic instance.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout of one call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A call that may safely run twice and is not answered within this is
    /// sent to the next logic too, the first answer winning (0: never).
    #[serde(with = "humantime_serde")]
    pub hedge_after: Duration,
    /// How often room counts are reported (RenewOnline).
    #[serde(with = "humantime_serde")]
    pub online_interval: Duration,
}

impl Default for CometConfig {
    fn default() -> Self {
        CometConfig {
            server_id: String::new(),
            addrs: Vec::new(),
            region: String::new(),
            weight: 10,
            offline: false,
            max_connections: 1_000_000,
            register_interval: Duration::from_secs(10),
            threads: 0,
            admin_listen: "127.0.0.1:3108".into(),
            tcp: CometTcpConfig::default(),
            websocket: CometWsConfig::default(),
            grpc: CometGrpcConfig::default(),
            protocol: CometProtocolConfig::default(),
            bucket: CometBucketConfig::default(),
            logic: CometLogicConfig::default(),
            zk: ZkConfig::default(),
        }
    }
}

impl Default for CometTcpConfig {
    fn default() -> Self {
        CometTcpConfig {
            listen: "127.0.0.1:3101".into(),
        }
    }
}

impl Default for CometWsConfig {
    fn default() -> Self {
        CometWsConfig {
            listen: "127.0.0.1:3102".into(),
            tls_listen: "127.0.0.1:3103".into(),
            cert: String::new(),
            key: String::new(),
        }
    }
}

impl Default for CometGrpcConfig {
    fn default() -> Self {
        CometGrpcConfig {
            listen: "127.0.0.1:3109".into(),
            advertise: String::new(),
        }
    }
}

impl Default for CometProtocolConfig {
    fn default() -> Self {
        CometProtocolConfig {
            max_body: DEFAULT_MAX_BODY,
            handshake_timeout: Duration::from_secs(8),
            send_queue: 64,
            renew_interval: Duration::from_secs(600),
        }
    }
}

impl Default for CometBucketConfig {
    fn default() -> Self {
        CometBucketConfig { size: 32 }
    }
}

impl Default for CometLogicConfig {
    fn default() -> Self {
        CometLogicConfig {
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            hedge_after: Duration::from_millis(100),
            online_interval: Duration::from_secs(10),
        }
    }
}

impl CometConfig {
    /// True when WSS is configured.
    pub fn wss_enabled(&self) -> bool {
        !self.websocket.cert.is_empty()
    }

    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// An unparsable listen address, a zero where a positive number is
    /// required, or half a TLS configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
        }
        let mut listens = vec![
            ("tcp.listen", &self.tcp.listen),
            ("websocket.listen", &self.websocket.listen),
            ("grpc.listen", &self.grpc.listen),
        ];
        if self.wss_enabled() {
            listens.push(("websocket.tls_listen", &self.websocket.tls_listen));
        }
        if !self.admin_listen.is_empty() {
            listens.push(("admin_listen", &self.admin_listen));
        }
        for (name, addr) in listens {
            if addr.parse::<SocketAddr>().is_err() {
                return bad(format!("{name} = {addr:?} is not an ip:port"));
            }
        }
        if self.websocket.cert.is_empty() != self.websocket.key.is_empty() {
            return bad("websocket.cert and websocket.key must be set together".into());
        }
        if self.zk.product.is_empty() || self.zk.addr.is_empty() {
            return bad("zk.addr and zk.product must be set".into());
        }
        let p = &self.protocol;
        if p.max_body == 0 || p.max_body > i32::MAX as usize / 2 {
            return bad(format!("protocol.max_body = {} is out of range", p.max_body));
        }
        if p.send_queue == 0 || self.bucket.size == 0 {
            return bad("protocol.send_queue and bucket.size must be at least 1".into());
        }
        let zero = [
            ("protocol.handshake_timeout", p.handshake_timeout),
            ("protocol.renew_interval", p.renew_interval),
            ("register_interval", self.register_interval),
            ("logic.timeout", self.logic.timeout),
            ("logic.online_interval", self.logic.online_interval),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, d)| d.is_zero()) {
            return bad(format!("{name} must be more than 0s"));
        }
        Ok(())
    }
}

/// Command-line flags of `reborn comet`; each overrides the file.
#[derive(clap::Args, Debug, Default)]
pub struct CometArgs {
    /// TOML config file (see conf/comet.toml).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Raw TCP listen address (default 127.0.0.1:3101).
    #[arg(long)]
    pub tcp_listen: Option<String>,
    /// WebSocket listen address (default 127.0.0.1:3102).
    #[arg(long)]
    pub ws_listen: Option<String>,
    /// WSS listen address (needs --cert and --key).
    #[arg(long)]
    pub wss_listen: Option<String>,
    /// PEM certificate chain for WSS.
    #[arg(long)]
    pub cert: Option<String>,
    /// PEM private key for WSS.
    #[arg(long)]
    pub key: Option<String>,
    /// gRPC listen address (default 127.0.0.1:3109).
    #[arg(long)]
    pub grpc_listen: Option<String>,
    /// HTTP admin address, /stats and /metrics (default 127.0.0.1:3108; "" for none).
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// ZooKeeper and product.
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Server id (default `<hostname>-<tcp port>`).
    #[arg(long)]
    pub server_id: Option<String>,
    /// Public client addresses, comma separated. goim's `ADDRS`, `WEIGHT`,
    /// `OFFLINE` and `REGION` variables set these four, as in goim's
    /// deployments; a flag wins over its variable.
    #[arg(long, value_delimiter = ',', env = "ADDRS")]
    pub addrs: Option<Vec<String>>,
    /// Node-selection weight.
    #[arg(long, env = "WEIGHT")]
    pub weight: Option<i64>,
    /// Register as offline (kept out of node selection).
    #[arg(long, env = "OFFLINE")]
    pub offline: bool,
    /// Region, for logic's node selection by client address.
    #[arg(long, env = "REGION")]
    pub region: Option<String>,
    /// Tokio worker threads (0: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl CometArgs {
    /// Loads the file (or defaults), applies the flags and validates.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or the result is invalid.
    pub fn into_config(self) -> Result<CometConfig, ConfigError> {
        let mut c: CometConfig = config::load(self.config.as_deref())?;
        let set = config::set_from;
        set(&mut c.tcp.listen, self.tcp_listen);
        set(&mut c.websocket.listen, self.ws_listen);
        set(&mut c.websocket.tls_listen, self.wss_listen);
        set(&mut c.websocket.cert, self.cert);
        set(&mut c.websocket.key, self.key);
        set(&mut c.grpc.listen, self.grpc_listen);
        set(&mut c.admin_listen, self.admin_listen);
        self.zk.apply(&mut c.zk);
        set(&mut c.server_id, self.server_id);
        config::set_from(&mut c.addrs, self.addrs);
        config::set_from(&mut c.weight, self.weight);
        config::set_from(&mut c.region, self.region);
        config::set_from(&mut c.threads, self.threads);
        c.offline |= self.offline;
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// goim's comets are deployed with these variables set (its
    /// `cmd/comet/main.go` reads them); they must not be ignored silently.
    #[test]
    fn goims_environment_variables_set_the_registration() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            comet: CometArgs,
        }
        let cmd = <Cli as clap::CommandFactory>::command();
        let env = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .and_then(|e| e.to_str())
                .map(str::to_string)
        };
        for (flag, var) in [
            ("addrs", "ADDRS"),
            ("weight", "WEIGHT"),
            ("offline", "OFFLINE"),
            ("region", "REGION"),
        ] {
            assert_eq!(env(flag).as_deref(), Some(var), "--{flag}");
        }
    }

    #[test]
    fn sample_config_is_the_defaults_and_flags_override_it() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf/comet.toml");
        let from_file: CometConfig = config::load(Some(&path)).expect("sample parses");
        assert_eq!(
            from_file,
            CometConfig::default(),
            "conf/comet.toml shows the defaults"
        );
        let args = CometArgs {
            config: Some(path),
            tcp_listen: Some("127.0.0.1:1".into()),
            server_id: Some("c1".into()),
            addrs: Some(vec!["10.0.0.1".into()]),
            ..CometArgs::default()
        };
        let c = args.into_config().expect("valid");
        assert_eq!(
            (c.tcp.listen.as_str(), c.server_id.as_str()),
            ("127.0.0.1:1", "c1")
        );
        assert_eq!(c.addrs, vec!["10.0.0.1".to_string()]);
    }

    #[test]
    fn nonsense_is_refused() {
        let mut c = CometConfig::default();
        c.protocol.send_queue = 0;
        assert!(c.validate().is_err());
        let mut c = CometConfig::default();
        c.websocket.cert = "x.pem".into();
        assert!(c.validate().is_err(), "cert without key");
        let mut c = CometConfig::default();
        c.tcp.listen = "nowhere".into();
        assert!(c.validate().is_err());
        assert!(CometConfig::default().validate().is_ok());
    }
}
