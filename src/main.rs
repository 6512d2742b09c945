//! The `reborn` binary: one subcommand per role. Thin on purpose: parse the command
//! line, set up logging, load the role's config and hand over to the library.

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "reborn",
    version,
    about = "Redis cluster proxy over ZooKeeper, and its push system"
)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Run a RESP proxy in front of the product's redis groups.
    Proxy(reborn::proxy::ProxyArgs),
    /// Operator commands: groups, servers, slots, proxies.
    Admin(reborn::topo::admin::AdminArgs),
    /// Start a whole local cluster (ZooKeeper, redis, proxy) until Ctrl-C.
    Up(reborn::up::UpArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(async move {
        match cli.role {
            Role::Proxy(args) => {
                reborn::libs::logging::init("info");
                let config = args.into_config().context("load proxy config")?;
                reborn::proxy::run_until_signal(config).await.context("proxy")
            }
            Role::Admin(args) => {
                reborn::libs::logging::init("warn");
                reborn::topo::admin::run(args)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
            }
            Role::Up(args) => {
                reborn::libs::logging::init("info");
                reborn::up::run(args).await.map_err(|e| anyhow::anyhow!("{e}"))
            }
        }
    })
}
