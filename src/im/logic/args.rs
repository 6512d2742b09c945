//! The command line of `reborn logic`:
//!
//! ```text
//! reborn logic [--config conf/logic.toml] [--http ADDR] [--grpc ADDR] [--proxy ADDR]... …
//! reborn logic token --mid 123 [--key K] [--ttl 1h] [--secret S | --config conf/logic.toml]
//! ```
//!
//! The first runs the role (flags override the file); the second prints a
//! signed client token and exits. Flags of the role and the `token`
//! subcommand do not mix. Imports `config.rs`, `token.rs` and `libs::config`.

use std::path::PathBuf;
use std::time::Duration;

use humantime_serde::re::humantime;

use crate::libs::config::{self, ConfigError};
use crate::topo::store::ZkArgs;

use super::config::LogicConfig;
use super::token::{self, TokenError};

/// `reborn logic`: run the role, or a subcommand.
#[derive(clap::Args, Debug, Default)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LogicArgs {
    /// A helper instead of running the role.
    #[command(subcommand)]
    pub command: Option<LogicCommand>,
    /// Flags of the role.
    #[command(flatten)]
    pub run: LogicRunArgs,
}

/// Subcommands of `reborn logic`.
#[derive(clap::Subcommand, Debug)]
pub enum LogicCommand {
    /// Print a signed client token for `[auth] secret` (put it in the auth
    /// body's "token" field).
    Token(TokenArgs),
}

/// Flags of `reborn logic`; each overrides the file.
#[derive(clap::Args, Debug, Default)]
pub struct LogicRunArgs {
    /// TOML config file (see conf/logic.toml).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// HTTP API listen address.
    #[arg(long)]
    pub http: Option<String>,
    /// gRPC listen address.
    #[arg(long)]
    pub grpc: Option<String>,
    /// A reborn proxy address (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub proxy: Vec<String>,
    /// ZooKeeper and product.
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Instance id in ZooKeeper.
    #[arg(long)]
    pub id: Option<String>,
    /// Token secret ([auth] secret).
    #[arg(long)]
    pub secret: Option<String>,
}

impl LogicRunArgs {
    /// Loads the file (or defaults), applies the flags and validates.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or the result is invalid.
    pub fn into_config(self) -> Result<LogicConfig, ConfigError> {
        let mut c: LogicConfig = config::load(self.config.as_deref())?;
        let set = config::set_from;
        set(&mut c.http.addr, self.http);
        set(&mut c.grpc.addr, self.grpc);
        if !self.proxy.is_empty() {
            c.cluster.addrs = self.proxy;
        }
        self.zk.apply(&mut c.zk);
        set(&mut c.id, self.id);
        set(&mut c.auth.secret, self.secret);
        c.validate()?;
        Ok(c)
    }
}

/// `reborn logic token`.
#[derive(clap::Args, Debug, Default)]
pub struct TokenArgs {
    /// The user id the token is for.
    #[arg(long, allow_negative_numbers = true)]
    pub mid: i64,
    /// The connection key the client will send (empty: none).
    #[arg(long, default_value = "")]
    pub key: String,
    /// Lifetime, e.g. 1h, 30m (default: [auth] ttl, 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// The secret (default: [auth] secret of --config).
    #[arg(long)]
    pub secret: Option<String>,
    /// TOML config file to take the secret and ttl from.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

/// Why no token was printed.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The config file could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No secret, from the flag or the file.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl TokenArgs {
    /// The token, valid from `now` (unix seconds) for the ttl.
    ///
    /// # Errors
    /// The config cannot be loaded, or there is no secret.
    pub fn mint(&self, now: u64) -> Result<String, MintError> {
        let file: LogicConfig = config::load(self.config.as_deref())?;
        let secret = self.secret.clone().unwrap_or(file.auth.secret);
        let ttl = self.ttl.unwrap_or(file.auth.ttl);
        Ok(token::sign(
            secret.as_bytes(),
            self.mid,
            &self.key,
            now.saturating_add(ttl.as_secs()),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        role: Role,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Role {
        Logic(LogicArgs),
    }

    fn parse(args: &[&str]) -> Result<LogicArgs, clap::Error> {
        let all = ["reborn", "logic"].iter().chain(args).copied();
        Cli::try_parse_from(all).map(|c| match c.role {
            Role::Logic(a) => a,
        })
    }

    #[test]
    fn the_role_and_the_token_helper_share_one_subcommand() {
        let run = parse(&["--http", "127.0.0.1:1", "--proxy", "a:1,b:2"]).expect("run flags");
        assert!(run.command.is_none());
        let c = run.run.into_config().expect("valid");
        assert_eq!(c.http.addr, "127.0.0.1:1");
        assert_eq!(c.cluster.addrs, ["a:1", "b:2"]);

        let tok = parse(&["token", "--mid", "123", "--ttl", "2h", "--secret", "s"]).expect("token");
        let Some(LogicCommand::Token(t)) = tok.command else {
            panic!("not the token subcommand")
        };
        let minted = t.mint(1000).expect("minted");
        assert!(minted.starts_with("123.8200."), "{minted}");
        assert_eq!(token::verify(b"s", &minted, 123, "", 1001), Ok(()));
        assert!(
            parse(&["--http", "x", "token", "--mid", "1"]).is_err(),
            "role flags do not mix with token"
        );
    }

    #[test]
    fn a_bogus_proxy_flag_is_a_start_up_error() {
        let run = parse(&["--proxy", "bogus"]).expect("flags parse");
        let err = run
            .run
            .into_config()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("\"bogus\""), "names the value: {err}");
        assert!(err.contains("expected host:port"), "{err}");
    }

    #[test]
    fn a_token_needs_a_secret_from_somewhere() {
        let t = TokenArgs {
            mid: 1,
            ..TokenArgs::default()
        };
        assert!(matches!(t.mint(0), Err(MintError::Token(TokenError::NoSecret))));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logic.toml");
        std::fs::write(&path, "[auth]\nsecret = \"from-file\"\nttl = \"10s\"\n").expect("write");
        let t = TokenArgs {
            mid: 1,
            config: Some(path),
            ..TokenArgs::default()
        };
        let minted = t.mint(100).expect("minted");
        assert!(minted.starts_with("1.110."), "{minted}");
        assert_eq!(token::verify(b"from-file", &minted, 1, "", 101), Ok(()));
    }
}
