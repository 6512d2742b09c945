//! `reborn up`: a whole local cluster on one machine, for a newcomer's first five
//! minutes — ZooKeeper (one server, or an ensemble with `--zk-nodes`), two
//! groups of redis-servers (master + replica each), the product written into
//! ZooKeeper, the dashboard and a proxy in front, and the push system (logic,
//! one comet, one job) on that proxy, until Ctrl-C.
//!
//! The process helpers here ([`ZooKeeper`], [`RedisServer`]) are also what the
//! integration tests start their real servers with, so "how to start ZooKeeper /
//! redis on this machine" lives in one place.
//!
//! * [`zookeeper`], [`redis_server`]: one local server process each;
//!   [`ensemble`]: several ZooKeeper servers as one ensemble.
//! * [`orphan_guard`]: a started process dies with us, however we die.
//! * `process`, `workdir`, `port`, `probe`: what the servers share (child process,
//!   data dir, "is the port free", tiny protocol probes).
//! * `plan` → `servers` → `seed` → `roles` (+ `push`) → `banner`: the steps of
//!   `reborn up`; `care`: what it does with a server of its own that dies.
//!
//! This module sits on top of the crate and may import every other module.

mod banner;
mod care;
pub mod ensemble;
mod error;
pub mod orphan_guard;
mod plan;
mod port;
mod probe;
mod process;
mod push;
pub mod redis_server;
mod roles;
mod seed;
mod servers;
mod workdir;
pub mod zookeeper;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use tokio_util::sync::CancellationToken;

use crate::topo::ZkConfig;

pub use ensemble::Ensemble;
pub use error::UpError;
pub use orphan_guard::OrphanGuard;
pub use redis_server::{RedisServer, RedisServerBuilder};
pub use zookeeper::{MemberPorts, ZooKeeper};

use banner::Banner;
use plan::GroupPlan;
use push::PushPlan;
use roles::{RoleFuture, Roles};
use servers::Servers;
use workdir::Workdir;

/// Arguments of `reborn up`. Every default can be overridden.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Use this ZooKeeper (`host:port[,host:port…]`) instead of starting one.
    /// A product already there is reused unchanged.
    #[arg(long, value_name = "ADDR")]
    pub zk: Option<String>,

    /// Port of the ZooKeeper started here (ignored with --zk); with
    /// --zk-nodes, of its first member, the others take the next ports.
    #[arg(long, default_value_t = 2181)]
    pub zk_port: u16,

    /// ZooKeeper servers to start as one ensemble (an odd number: 1, 3, 5…).
    /// Every role gets the multi-host connect string.
    #[arg(long, default_value_t = 1)]
    pub zk_nodes: usize,

    /// With --zk-nodes above 1: the first member's quorum port; members talk
    /// on this port + i (quorum) and + 1000 + i (leader election).
    #[arg(long, default_value_t = 2888)]
    pub zk_peer_port: u16,

    /// ZooKeeper root node products live under.
    #[arg(long, default_value = "/reborn")]
    pub zk_root: String,

    /// redis-server ports, group after group, each group's master first.
    #[arg(long, value_delimiter = ',', default_value = "16379,16380,16381,16382")]
    pub redis_ports: Vec<u16>,

    /// Replicas per group (so groups take 1 + this many ports).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,

    /// RESP address of the proxy.
    #[arg(long, default_value = "127.0.0.1:19000")]
    pub proxy: SocketAddr,

    /// HTTP admin address of the proxy.
    #[arg(long, default_value = "127.0.0.1:11080")]
    pub proxy_admin: SocketAddr,

    /// HTTP address of the dashboard's JSON API.
    #[arg(long, default_value = crate::topo::manager::dashboard::DEFAULT_LISTEN)]
    pub dashboard: SocketAddr,

    /// Data-plane threads of the proxy (default: half the cores, at least 1).
    #[arg(long)]
    pub proxy_threads: Option<usize>,

    /// The product (cluster name) in ZooKeeper.
    #[arg(long, default_value = "demo")]
    pub product: String,

    /// The dashboard's TOML config (see conf/dashboard.toml), e.g. for its
    /// `[migration]` settings. Its address and ZooKeeper settings are replaced
    /// by this command's.
    #[arg(long, value_name = "FILE")]
    pub dashboard_config: Option<PathBuf>,

    /// The proxy's TOML config (see conf/proxy.toml). Its addresses and
    /// ZooKeeper settings are replaced by this command's, and its thread count
    /// by --proxy-threads when given.
    #[arg(long, value_name = "FILE")]
    pub proxy_config: Option<PathBuf>,

    /// Leave the push system (logic, comet, job) out.
    #[arg(long)]
    pub no_push: bool,

    /// Port of logic's HTTP API (push, online, nodes, the /demo page).
    #[arg(long, default_value_t = 3111)]
    pub logic_http_port: u16,

    /// Port of logic's gRPC server (comet calls it).
    #[arg(long, default_value_t = 3119)]
    pub logic_grpc_port: u16,

    /// Port of the comet's raw TCP clients (goim v2 protocol).
    #[arg(long, default_value_t = 3101)]
    pub comet_tcp_port: u16,

    /// Port of the comet's WebSocket clients (path /sub).
    #[arg(long, default_value_t = 3102)]
    pub comet_ws_port: u16,

    /// Port of the comet's gRPC server (job calls it).
    #[arg(long, default_value_t = 3109)]
    pub comet_grpc_port: u16,

    /// Port of the comet's HTTP admin (/stats, /metrics).
    #[arg(long, default_value_t = 3108)]
    pub comet_admin_port: u16,

    /// Port of the job's HTTP admin (/stats, /metrics).
    #[arg(long, default_value_t = 3121)]
    pub job_admin_port: u16,

    /// Logic's TOML config (see conf/logic.toml), e.g. for `[auth] secret`.
    /// Its addresses, proxy, ZooKeeper settings and `[node]` ports are replaced
    /// by this command's.
    #[arg(long, value_name = "FILE")]
    pub logic_config: Option<PathBuf>,

    /// The comet's TOML config (see conf/comet.toml). Its listen addresses and
    /// ZooKeeper settings are replaced by this command's.
    #[arg(long, value_name = "FILE")]
    pub comet_config: Option<PathBuf>,

    /// The job's TOML config (see conf/job.toml). Its proxy and ZooKeeper
    /// settings are replaced by this command's.
    #[arg(long, value_name = "FILE")]
    pub job_config: Option<PathBuf>,

    /// Directory for data and logs, kept after exit. Default: a fresh
    /// `/tmp/reborn-up-<pid>-<n>`, removed with its data on exit. Either way each
    /// redis-server keeps an AOF and a config file there, so one that dies comes
    /// back with its data (reborn up starts it again 10 s later).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Starts the local cluster and runs until SIGINT/SIGTERM, then stops everything
/// it started, in reverse order.
///
/// # Errors
/// The first failure ([`UpError`]), worded for the terminal (missing package, taken port,
/// unreachable ZooKeeper, a role that stopped).
pub async fn run(args: UpArgs) -> Result<(), UpError> {
    let cancel = crate::libs::shutdown::on_signal();
    run_until(args, cancel).await
}

/// [`run`] with the stop signal given: returns after `cancel` is cancelled and
/// everything is stopped. Usable in-process (tests).
///
/// # Errors
/// As [`run`], typed.
pub async fn run_until(args: UpArgs, cancel: CancellationToken) -> Result<(), UpError> {
    let groups = plan::groups(&args.redis_ports, args.replicas)?;
    let zk_members = plan::zk_members(args.zk_port, args.zk_peer_port, args.zk_nodes)?;
    let push = PushPlan::from_args(&args);
    check_ports(&args, &zk_members, push.as_ref())?;
    let (dir, dir_kept) = match &args.dir {
        Some(dir) => (Workdir::given(dir)?, true),
        None => (Workdir::temp("up")?, false),
    };
    tracing::info!(dir = %dir.path().display(), "starting the local cluster");

    let servers = {
        let (zk, groups, path) = (args.zk.clone(), groups.clone(), dir.path().to_path_buf());
        blocking(move || Servers::start(zk.as_deref(), &zk_members, &groups, &path)).await?
    };
    let servers = Arc::new(Mutex::new(servers));
    let tending = CancellationToken::new();
    let tender = tokio::spawn(tend(servers.clone(), tending.clone()));

    let mut roles = Roles::default();
    let outcome = serve(
        &args,
        (&groups, push.as_ref()),
        &servers,
        &mut roles,
        (&dir, dir_kept),
        &cancel,
    )
    .await;

    // Reverse start order: roles (they hold ZooKeeper sessions), then redis, then
    // ZooKeeper, then the temp dir. No restart may race the stop.
    tending.cancel();
    let _ = tender.await;
    roles.stop().await;
    blocking(move || {
        drop(servers);
        Ok(())
    })
    .await?;
    drop(dir);
    outcome
}

/// How often [`Servers::tend`] looks for redis-servers that died.
const TEND_EVERY: Duration = Duration::from_secs(1);

/// Tends the redis-servers until `stop`: a dead one is reaped at once (no
/// zombie) and started again after [`servers::RESTART_AFTER`].
async fn tend(servers: Arc<Mutex<Servers>>, stop: CancellationToken) {
    let mut every = tokio::time::interval(TEND_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.run_until_cancelled(every.tick()).await.is_some() {
        let servers = servers.clone();
        // A restart waits for the server to load its AOF: off the workers.
        let _ = tokio::task::spawn_blocking(move || servers.lock().tend()).await;
    }
}

/// Seeds the product, starts the roles, prints the banner and waits for the stop
/// signal (or a role that stops by itself).
async fn serve(
    args: &UpArgs,
    (groups, push): (&[GroupPlan], Option<&PushPlan>),
    servers: &Mutex<Servers>,
    roles: &mut Roles,
    dir: (&Workdir, bool),
    cancel: &CancellationToken,
) -> Result<(), UpError> {
    let zk = ZkConfig {
        addr: servers.lock().zk_addr().to_string(),
        root: args.zk_root.clone(),
        product: args.product.clone(),
        ..ZkConfig::default()
    };
    let seeded = seed::seed(&zk, groups).await?;
    if cancel.is_cancelled() {
        return Ok(());
    }

    roles
        .start("dashboard", args.dashboard, dashboard_role(args, &zk)?)
        .await?;
    let mut proxy = None;
    // The proxy's password, which logic and job log in with.
    let mut proxy_auth = String::new();
    if let Some((make, auth)) = proxy_role(args, &zk)? {
        roles.start("proxy", args.proxy, make).await?;
        proxy = Some((args.proxy, args.proxy_admin));
        proxy_auth = auth;
    }
    // The push system needs the proxy (sessions and queue live behind it).
    // Each starts after what it calls: logic, then the comet (calls logic),
    // then job (calls the comet); shutdown runs the other way.
    let push = match (push, proxy) {
        (Some(plan), Some(_)) => {
            roles
                .start_signalled("logic", push::logic_role(args, plan, &zk, &proxy_auth)?)
                .await?;
            roles
                .start_signalled("comet", push::comet_role(args, plan, &zk)?)
                .await?;
            roles
                .start_signalled("job", push::job_role(args, plan, &zk, &proxy_auth)?)
                .await?;
            Some(*plan)
        }
        _ => None,
    };

    let banner = Banner {
        product: &args.product,
        servers: &servers.lock(),
        groups,
        seeded: &seeded,
        proxy,
        push,
        dashboard: args.dashboard,
        dir: (dir.0.path(), dir.1),
        admin_flags: admin_flags(args, &zk),
    }
    .render();
    println!("{banner}");

    tokio::select! {
        () = cancel.cancelled() => Ok(()),
        ended = roles.any_ended() => Err(ended),
    }
}

/// The dashboard's main future: `reborn dashboard` with its defaults (or
/// `--dashboard-config`), on our address and product. Standby stays on: a
/// dashboard already leading this product (with `--zk`) keeps leading and ours
/// waits behind it.
fn dashboard_role(
    args: &UpArgs,
    zk: &ZkConfig,
) -> Result<impl FnOnce(CancellationToken) -> RoleFuture + use<>, UpError> {
    let file: crate::topo::manager::dashboard::DashboardConfig =
        load_role_config("dashboard", args.dashboard_config.as_deref())?;
    let config = crate::topo::manager::dashboard::DashboardConfig {
        listen: args.dashboard.to_string(),
        advertise: String::new(),
        standby: true,
        zk: up_zk(zk, &file.zk),
        ..file
    };
    Ok(move |cancel| -> RoleFuture {
        Box::pin(async move { Ok(crate::topo::manager::dashboard::run(config, cancel).await?) })
    })
}

/// Reads a role's `--*-config` file (defaults without one), for the role's
/// settings that `reborn up` has no flag of its own for.
fn load_role_config<T: serde::de::DeserializeOwned + Default>(
    role: &str,
    path: Option<&std::path::Path>,
) -> Result<T, UpError> {
    crate::libs::config::load(path).map_err(|e| role_error(role, e))
}

/// An error of one role, as up reports it.
fn role_error(role: &str, e: impl std::fmt::Display) -> UpError {
    UpError::Role {
        role: role.to_string(),
        message: e.to_string(),
    }
}

/// Up's ZooKeeper and product, with the session timeout of the role's own
/// file: how long a role may be cut off is the role's to choose.
fn up_zk(up: &ZkConfig, file: &ZkConfig) -> ZkConfig {
    ZkConfig {
        session_timeout: file.session_timeout,
        ..up.clone()
    }
}

/// The proxy's main future: `reborn proxy` with its defaults (or
/// `--proxy-config`), on our addresses and product, and its password (`auth`,
/// empty for none). `None` is for roles that are switched off (none yet).
fn proxy_role(
    args: &UpArgs,
    zk: &ZkConfig,
) -> Result<Option<(impl FnOnce(CancellationToken) -> RoleFuture + use<>, String)>, UpError> {
    // Here the proxy shares the machine with ZooKeeper, every redis-server and
    // whatever load the newcomer points at it: give its data plane half the
    // cores. A dedicated proxy host keeps the default of one per core. (On this
    // project's 2-core machine one worker used less CPU per request than two;
    // figures in docs/benchmarks.md.)
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let file: crate::proxy::ProxyConfig = load_role_config("proxy", args.proxy_config.as_deref())?;
    let threads = match (args.proxy_threads, &args.proxy_config) {
        (Some(n), _) => n,
        (None, Some(_)) => file.threads,
        (None, None) => (cores / 2).max(1),
    };
    let config = crate::proxy::ProxyConfig {
        listen: args.proxy.to_string(),
        admin_listen: args.proxy_admin.to_string(),
        zk: up_zk(zk, &file.zk),
        threads,
        ..file
    };
    config.validate().map_err(|e| role_error("proxy", e))?;
    let auth = config.auth.clone();
    let run =
        move |cancel| -> RoleFuture { Box::pin(async move { Ok(crate::proxy::run(config, cancel).await?) }) };
    Ok(Some((run, auth)))
}

/// The flags `reborn admin` needs to find this cluster, beyond its defaults.
fn admin_flags(args: &UpArgs, zk: &ZkConfig) -> String {
    let defaults = ZkConfig::default();
    let mut flags = String::new();
    if zk.addr != defaults.addr {
        flags.push_str(&format!(" --zk {}", zk.addr));
    }
    if args.zk_root != defaults.root {
        flags.push_str(&format!(" --zk-root {}", args.zk_root));
    }
    if args.product != defaults.product {
        flags.push_str(&format!(" --product {}", args.product));
    }
    flags
}

/// Checks every port before starting anything, so a taken port fails in
/// milliseconds, not after ZooKeeper's seconds of start-up.
fn check_ports(args: &UpArgs, zk_members: &[MemberPorts], push: Option<&PushPlan>) -> Result<(), UpError> {
    // A lone server binds only its client port; members bind their peer ports too.
    let zk_ports: Vec<(u16, &str)> = match (&args.zk, zk_members) {
        (Some(_), _) => Vec::new(),
        (None, [one]) => vec![(one.client, "ZooKeeper")],
        (None, all) => all.iter().flat_map(MemberPorts::named).collect(),
    };
    if let Some(&(first, _)) = zk_ports.first() {
        let what = format!("ZooKeeper; to use the one already running there, pass --zk 127.0.0.1:{first}");
        port::ensure_free(first, &what)?;
    }
    for &(p, what) in zk_ports.iter().skip(1) {
        port::ensure_free(p, what)?;
    }
    for &p in &args.redis_ports {
        port::ensure_free(p, "redis-server")?;
    }
    let mut listens = vec![
        (args.dashboard, "the dashboard"),
        (args.proxy, "the proxy"),
        (args.proxy_admin, "the proxy's admin HTTP"),
    ];
    listens.extend(push.iter().flat_map(|p| p.listens()));
    // Two of our own servers on one port would pass the checks below and fail
    // later, after ZooKeeper and redis had started.
    let mut ours: Vec<(u16, &str)> = args.redis_ports.iter().map(|&p| (p, "a redis-server")).collect();
    ours.extend(zk_ports.iter().copied());
    ours.extend(listens.iter().map(|(a, what)| (a.port(), *what)));
    for (i, (p, what)) in ours.iter().enumerate() {
        if let Some((_, first)) = ours[..i].iter().find(|(q, _)| q == p) {
            return Err(UpError::Invalid(format!(
                "port {p} is given to both {first} and {what}"
            )));
        }
    }
    for (addr, what) in listens {
        port::ensure_addr_free(addr, what)?;
    }
    Ok(())
}

/// Runs process start/stop (which sleep and wait) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UpError> + Send + 'static,
) -> Result<T, UpError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| role_error("reborn up", format!("start-up thread failed: {e}")))?
}
