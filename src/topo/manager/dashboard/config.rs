//! `reborn dashboard` configuration: the TOML file, its defaults and the flags
//! that override it. `conf/dashboard.toml` is the commented sample.
//!
//! Imports `libs` (config loading), `topo`'s core and the manager's `migrator`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::access::AuthConfig;
use crate::libs::config::{self, ConfigError};
use crate::topo::manager::failover::FailoverConfig;
use crate::topo::manager::migrator::{MigrateError, MigratorConfig};
use crate::topo::path::Paths;
use crate::topo::store::{ZkArgs, ZkConfig};

/// Default HTTP address of the dashboard API (Codis's dashboard port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:18087";

/// Everything a dashboard needs to run. Defaults live in `impl Default`, only there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// HTTP address of the JSON API (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// Address written to ZooKeeper for operators and standbys to find the
    /// leader; empty means the listen address (this host's name when listening
    /// on every interface).
    pub advertise: String,
    /// When another dashboard leads the product: wait as a standby and take over
    /// when it goes (true), or refuse to start (false).
    pub standby: bool,
    /// The product and where its ZooKeeper lives.
    pub zk: ZkConfig,
    /// Password of the product's redis-servers (the migrator connects to them).
    pub backend_auth: String,
    /// How the background migrator scans and moves keys.
    pub migration: MigratorConfig,
    /// Automatic failover of dead masters.
    pub failover: FailoverConfig,
    /// Who may use the API: the bearer token, and whether reads need it.
    pub auth: AuthConfig,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            listen: DEFAULT_LISTEN.to_string(),
            advertise: String::new(),
            standby: true,
            zk: ZkConfig::default(),
            backend_auth: String::new(),
            migration: MigratorConfig::default(),
            failover: FailoverConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl DashboardConfig {
    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !has_port(&self.listen) {
            return bad(format!("listen = {:?}: expected host:port", self.listen));
        }
        if !self.advertise.is_empty() && !has_port(&self.advertise) {
            return bad(format!("advertise = {:?}: expected host:port", self.advertise));
        }
        if self.zk.addr.is_empty() {
            return bad("zk.addr must be set".into());
        }
        if let Err(e) = Paths::new(&self.zk.root, &self.zk.product) {
            return bad(format!("zk: {e}"));
        }
        // Checked here, at start, not first when a task runs: by then its
        // slots are switched and the task can only finish, never with these.
        if let Err(e) = self.migration.validate() {
            let e = match e {
                MigrateError::Config(what) => what,
                other => other.to_string(),
            };
            return bad(format!("[migration] {e}"));
        }
        let f = &self.failover;
        if f.check_interval.is_zero() || f.down_after.is_zero() {
            return bad("[failover] check_interval and down_after must be above zero".into());
        }
        if f.busy_down_after < f.down_after {
            return bad("[failover] busy_down_after must be at least down_after".into());
        }
        self.auth.validate()
    }
}

/// `host:port` with a numeric port.
fn has_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Command-line flags of `reborn dashboard`; each overrides the file.
#[derive(clap::Args, Debug, Default)]
pub struct DashboardArgs {
    /// TOML config file (see conf/dashboard.toml).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// HTTP listen address of the JSON API.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address published in ZooKeeper (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// ZooKeeper and product.
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Refuse to start if another dashboard leads the product, instead of
    /// waiting as its standby.
    #[arg(long)]
    pub no_standby: bool,
    /// Bearer token every change through the API must carry ([auth] token).
    #[arg(long, env = "REBORN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve a non-loopback address even without a token ([auth] insecure).
    #[arg(long)]
    pub insecure: bool,
}

impl DashboardArgs {
    /// Loads the file (or defaults), applies the flags and validates.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or the result is invalid.
    pub fn into_config(self) -> Result<DashboardConfig, ConfigError> {
        let mut c: DashboardConfig = config::load(self.config.as_deref())?;
        let set = config::set_from;
        set(&mut c.listen, self.listen);
        set(&mut c.advertise, self.advertise);
        self.zk.apply(&mut c.zk);
        if self.no_standby {
            c.standby = false;
        }
        set(&mut c.auth.token, self.token);
        if self.insecure {
            c.auth.insecure = true;
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_sample_holds_the_defaults_and_flags_override_it() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf/dashboard.toml");
        let from_file: DashboardConfig = config::load(Some(&path)).expect("sample parses");
        assert_eq!(from_file, DashboardConfig::default());
        let args = DashboardArgs {
            config: Some(path),
            listen: Some("127.0.0.1:0".into()),
            zk: ZkArgs {
                product: Some("p".into()),
                ..ZkArgs::default()
            },
            no_standby: true,
            token: Some("t0ken".into()),
            insecure: true,
            ..DashboardArgs::default()
        };
        let c = args.into_config().expect("valid");
        assert_eq!(
            (c.listen.as_str(), c.zk.product.as_str(), c.standby),
            ("127.0.0.1:0", "p", false)
        );
        assert_eq!((c.auth.token.as_str(), c.auth.insecure), ("t0ken", true));
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let check = |c: DashboardConfig| c.validate().expect_err("invalid").to_string();
        let msg = check(DashboardConfig {
            listen: "18087".into(),
            ..DashboardConfig::default()
        });
        assert!(msg.contains("listen"), "{msg}");
        let mut c = DashboardConfig::default();
        c.zk.product = "a b".into();
        assert!(check(c).contains("product"));
        assert!(toml::from_str::<DashboardConfig>("standby = true\nstandy = 1\n").is_err());
        // A migration setting that would fail a task once its slots switched
        // stops the dashboard at start instead.
        let mut c = DashboardConfig::default();
        c.migration.batch_keys = 0;
        assert_eq!(
            check(c),
            "invalid config: [migration] batch_keys must be at least 1"
        );
        let mut c = DashboardConfig::default();
        c.failover.check_interval = Duration::ZERO;
        assert!(check(c).contains("[failover] check_interval"));
    }
}
