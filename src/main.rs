//! The `reborn` binary: one subcommand per role. Thin on purpose: parse the command
//! line, set up logging, load the role's config and hand over to the library.

use std::process::ExitCode;

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
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a RESP proxy in front of the product's redis groups.
    Proxy(reborn::proxy::ProxyArgs),
    /// Run the dashboard: the HTTP JSON API over the product (one leader, standbys wait).
    Dashboard(reborn::topo::manager::dashboard::DashboardArgs),
    /// Operate the cluster: groups and servers, slots, proxies, migrations, rebalance, promote, failovers.
    Admin(reborn::topo::manager::admin::AdminArgs),
    /// Run a comet: the push system's client gateway (goim v2 over TCP and WebSocket).
    Comet(reborn::im::comet::CometArgs),
    /// Run a push-system logic (`reborn logic token --mid N` mints a client token).
    Logic(reborn::im::logic::LogicArgs),
    /// Consume the push queue and fan pushes out to the comets (goim's job).
    Job(reborn::im::job::JobArgs),
    /// The push system's load generator (scripts/bench_push.sh drives it).
    PushBench(reborn::im::bench::PushBenchArgs),
    /// Start a whole local cluster (ZooKeeper, redis, dashboard, proxy) until Ctrl-C.
    Up(reborn::up::UpArgs),
    /// An open-loop RESP load: a fixed rate, latency from each request's intended send time.
    Load(reborn::libs::load::LoadArgs),
}

/// A tokio runtime with `threads` workers (0: one per core).
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    b.enable_all().build().context("start the tokio runtime")
}

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start: a background thread returns
/// freed pages to the system after a second, even when the proxy is idle.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes for the operator's terminal, one per line, each
/// said once: many of our errors already carry their source in their own
/// message ("cannot listen on 127.0.0.1:19000: Address already in use"),
/// which a plain chain would repeat. No backtrace: these are refusals and
/// outages, not bugs (a panic still prints its own).
fn report(e: &anyhow::Error) -> String {
    let mut out = format!("error: {e}");
    let mut said = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !said.contains(&text) {
            out.push_str("\n  caused by: ");
            out.push_str(&text);
            said.push_str(&text);
        }
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Proxy(args) => {
            let config = args.into_config().context("load proxy config")?;
            reborn::libs::logging::init("info,zookeeper_client=warn");
            // Client traffic runs on the proxy's own worker threads; this runtime
            // only carries ZooKeeper, the admin endpoint and signals.
            runtime(1)?
                .block_on(reborn::proxy::run_until_signal(config))
                .context("proxy")
        }
        Command::Dashboard(args) => {
            let config = args.into_config().context("load dashboard config")?;
            reborn::libs::logging::init("info,zookeeper_client=warn");
            // HTTP requests and one ZooKeeper session: two workers are plenty.
            runtime(2)?
                .block_on(reborn::topo::manager::dashboard::run_until_signal(config))
                .context("dashboard")
        }
        Command::Admin(args) => {
            reborn::libs::logging::init("warn,zookeeper_client=error");
            runtime(1)?
                .block_on(reborn::topo::manager::admin::run(args))
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
        Command::Comet(args) => {
            let config = args.into_config().context("load comet config")?;
            reborn::libs::logging::init("info,zookeeper_client=warn");
            runtime(config.threads)?
                .block_on(reborn::im::comet::run_until_signal(config))
                .context("comet")
        }
        Command::Logic(args) => match args.command {
            Some(reborn::im::logic::args::LogicCommand::Token(t)) => {
                let token = t.mint(reborn::libs::clock::unix_secs()).context("mint a token")?;
                println!("{token}");
                Ok(())
            }
            None => {
                let config = args.run.into_config().context("load logic config")?;
                reborn::libs::logging::init("info,zookeeper_client=warn");
                runtime(0)?
                    .block_on(reborn::im::logic::run_until_signal(config))
                    .context("logic")
            }
        },
        Command::Job(args) => {
            let config = args.into_config().context("load job config")?;
            reborn::libs::logging::init("info,zookeeper_client=warn");
            // A consumer task per stream and gRPC calls: two workers are plenty.
            runtime(2)?
                .block_on(async {
                    let stop = reborn::libs::shutdown::on_signal();
                    reborn::im::job::run(config, stop).await
                })
                .context("job")
        }
        Command::PushBench(args) => {
            reborn::libs::logging::init("warn");
            runtime(args.threads)?
                .block_on(reborn::im::bench::run(args))
                .context("push-bench")
        }
        Command::Load(args) => {
            reborn::libs::logging::init("warn");
            reborn::libs::load::run(&args).context("load")
        }
        Command::Up(args) => {
            reborn::libs::logging::init("info,zookeeper_client=warn");
            runtime(0)?
                .block_on(reborn::up::run(args))
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on 127.0.0.1:1: {source}")]
        struct Listen {
            source: std::io::Error,
        }
        let e = anyhow::Error::new(Listen { source: io }).context("proxy");
        let text = report(&e);
        assert_eq!(text.matches("address in use").count(), 1, "{text}");
        assert!(
            text.starts_with("error: proxy\n  caused by: cannot listen on 127.0.0.1:1: "),
            "{text}"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(report(&plain), "error: outer\n  caused by: inner");
    }
}
