//! `reborn admin`: the operator command line over [`crate::topo::operation`].
//!
//! Listings print aligned tables; changes print one confirmation line. Errors come
//! back as [`AdminError`] and `main` turns them into a non-zero exit. The session is always
//! closed before returning, so the operator lock and the session never linger
//! after the command. `rebalance`, `migrate`, `tasks`, `pause`, `resume`,
//! `cancel` and `promote` ask the dashboard's HTTP API instead of ZooKeeper:
//! those need the one process that runs migrations. They find it through the
//! leader's node in ZooKeeper for the `--zk`/`--zk-root`/`--product` given (never a
//! default port, which may belong to another cluster); `--dashboard` overrides.
//! `groups` probes every server (up, down, loading). Imports `libs` and `topo`.

use super::dashboard::{address, client};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use super::health::{self, Health};
use super::rebalance::{Plan, Weights};
use super::replication;
use super::task::{Task, TaskState};
use crate::libs::hash::SLOT_COUNT;
use crate::libs::table;
use crate::topo::error::TopoError;
use crate::topo::model::{FailoverRecord, GroupId, Role, SlotState, Topology, range_text};
use crate::topo::operation;
use crate::topo::operation::format_slot_ids;
use crate::topo::store::{Store, ZkConfig};
use crate::topo::watcher;

/// Arguments of `reborn admin`.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// ZooKeeper address: host:port, or a comma-separated list.
    #[arg(long, global = true, default_value = "127.0.0.1:2181")]
    pub zk: String,
    /// ZooKeeper root node all products live under (`--zk-root`, as every
    /// role names it; `--root` still works).
    #[arg(long = "zk-root", alias = "root", global = true, default_value = "/reborn")]
    pub root: String,
    /// Product (cluster) name.
    #[arg(long, global = true, default_value = "demo")]
    pub product: String,
    /// host:port of the dashboard, for the commands that ask it (rebalance,
    /// migrate, tasks, pause, resume, cancel, promote). Default: the leader that
    /// the product's node in ZooKeeper names.
    #[arg(long, global = true)]
    pub dashboard: Option<String>,
    /// The dashboard's API token ([auth] token of its config), sent with every
    /// call to it.
    #[arg(long, global = true, env = "REBORN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// One admin command.
#[derive(clap::Subcommand, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Create the product in ZooKeeper (idempotent).
    Init,
    /// List groups and their servers, with each server's health (up, down, loading).
    Groups,
    /// List slot ranges with their group, state and master.
    Slots,
    /// List proxies: live ones and those set offline.
    Proxies,
    /// Create an empty group (id 1..=9999).
    GroupCreate {
        /// Group id.
        id: GroupId,
    },
    /// Remove a group that owns no slots.
    GroupRemove {
        /// Group id.
        id: GroupId,
    },
    /// Add a redis-server to a group (as its master unless --replica).
    ServerAdd {
        /// Group id.
        group: GroupId,
        /// host:port of the redis-server.
        addr: String,
        /// Add it as a replica instead of the master.
        #[arg(long)]
        replica: bool,
        /// Add it as a replica although it holds keys (a copy of this group's
        /// data): it drops them for a full copy of the group's master.
        #[arg(long)]
        force: bool,
    },
    /// Remove a redis-server from a group.
    ServerRemove {
        /// Group id.
        group: GroupId,
        /// host:port of the redis-server.
        addr: String,
    },
    /// Assign slots to a group without moving data (group 0 unassigns).
    SlotsAssign {
        /// `start-end` (inclusive) or a single slot.
        #[arg(value_parser = parse_slot_range)]
        slots: SlotRangeArg,
        /// Group id, 0 to unassign.
        group: GroupId,
    },
    /// Let a proxy serve again (removes its offline marker).
    ProxyOnline {
        /// Proxy id (by default its listen address).
        id: String,
    },
    /// Mark a proxy offline.
    ProxyOffline {
        /// Proxy id (by default its listen address).
        id: String,
    },
    /// List the automatic failovers and operators' promotes (time, group, old and new master, why,
    /// detection and switch times, outcome).
    Failovers {
        /// As JSON (the API's records) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the whole topology.
    Topology {
        /// As JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Plan moves that even out slots per group (asks the dashboard).
    Rebalance {
        /// Only print the plan; without it the plan is applied as migration tasks.
        #[arg(long)]
        dry_run: bool,
        /// Relative weights, group:weight[,group:weight…] (e.g. 1:2,2:1);
        /// unlisted groups weigh 1, weight 0 empties a group.
        #[arg(long)]
        weights: Option<Weights>,
    },
    /// Move slots to a group with their data: queued as a dashboard task.
    Migrate {
        /// Slots to move: `0-255` or `7`.
        #[arg(long, value_parser = parse_slot_range)]
        slots: SlotRangeArg,
        /// The group that receives them.
        #[arg(long)]
        to: GroupId,
        /// Wait until the task is done, printing its progress; exits non-zero
        /// if it fails or is cancelled.
        #[arg(long)]
        wait: bool,
    },
    /// Promote a replica to master of its group (asks the dashboard).
    Promote {
        /// The group.
        #[arg(long)]
        group: GroupId,
        /// host:port of the replica to promote. Default: the replica linked to
        /// a live master, or the most advanced one if the master is down.
        #[arg(long)]
        server: Option<String>,
        /// Promote even if a check refuses (a replica that is behind, not linked
        /// to the master, or a master itself); the reply says what may be lost.
        #[arg(long)]
        force: bool,
    },
    /// Pause a migration task (a running pass stops within a second, resumable).
    Pause {
        /// Task id (see `tasks`).
        task: u64,
    },
    /// Resume a paused migration task.
    Resume {
        /// Task id (see `tasks`).
        task: u64,
    },
    /// List migration tasks: state, slots, keys moved, keys/s, errors.
    Tasks {
        /// As JSON (the API's records, every field) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a migration task whose slots are not switched yet (queued, or
    /// whose switch was rolled back); a switched task can only finish: pause it.
    Cancel {
        /// Task id (see `tasks`).
        task: u64,
    },
}

/// An inclusive slot range given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRangeArg {
    /// First slot.
    pub start: u16,
    /// Last slot, inclusive.
    pub end: u16,
}

/// Why an admin command failed; every message is for the operator's terminal.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// ZooKeeper could not be reached, or refused the change.
    #[error(transparent)]
    Topo(#[from] TopoError),
    /// The dashboard could not be found in ZooKeeper.
    #[error(transparent)]
    Locate(#[from] address::LocateError),
    /// The dashboard could not be reached, or refused the command (its message).
    #[error(transparent)]
    Dashboard(#[from] client::ClientError),
    /// The task `migrate --wait` followed is no longer listed.
    #[error("task {0} is no longer listed by the dashboard")]
    TaskGone(u64),
    /// The task `migrate --wait` followed failed or was cancelled.
    #[error("task {id} {state}: {error}")]
    TaskEnded {
        /// The task.
        id: u64,
        /// `failed` or `cancelled`.
        state: &'static str,
        /// Why, as the dashboard tells.
        error: String,
    },
    /// A command that changes ZooKeeper directly was sent to the dashboard.
    #[error("this command changes ZooKeeper directly, not through the dashboard")]
    NotForDashboard,
}

/// Why a slot range argument was not understood.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlotRangeError {
    #[error("{0:?} is not a slot number")]
    NotANumber(String),
    #[error("slot range {0:?} is reversed")]
    Reversed(String),
    #[error("slot range {0:?} is not within 0-{last}", last = SLOT_COUNT - 1)]
    OutOfRange(String),
}

/// Parses `0-511` or `7`, within the slots: clap then names the argument.
///
/// # Errors
/// A message clap shows next to the argument.
pub fn parse_slot_range(s: &str) -> Result<SlotRangeArg, SlotRangeError> {
    let num = |t: &str| {
        t.trim()
            .parse::<u16>()
            .map_err(|_| SlotRangeError::NotANumber(t.to_string()))
    };
    let (start, end) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(s)?, num(s)?),
    };
    if start > end {
        return Err(SlotRangeError::Reversed(s.to_string()));
    }
    if usize::from(end) >= SLOT_COUNT {
        return Err(SlotRangeError::OutOfRange(s.to_string()));
    }
    Ok(SlotRangeArg { start, end })
}

/// Runs one admin command and prints its result: against ZooKeeper, or
/// against the product's dashboard for the commands that need it (found
/// through ZooKeeper unless `--dashboard` names it).
///
/// # Errors
/// A readable message (unreachable ZooKeeper or dashboard, refused change, …).
pub async fn run(args: AdminArgs) -> Result<(), AdminError> {
    let cfg = ZkConfig {
        addr: args.zk,
        root: args.root,
        product: args.product,
        ..ZkConfig::default()
    };
    if args.command.asks_dashboard() {
        let addr = match args.dashboard {
            Some(addr) => addr,
            None => answering_leader(&cfg).await?,
        };
        let dashboard = client::DashboardClient::new(addr).with_token(args.token);
        print!("{}", ask_dashboard(&dashboard, &args.command).await?);
        return Ok(());
    }
    let store = Store::connect(&cfg).await?;
    let result = execute(&store, &args.command).await;
    store.close().await;
    let text = result?;
    print!("{text}");
    Ok(())
}

/// How long `reborn admin` waits for a standby to replace a leader that
/// does not answer: past the default session timeout (6 s), after which
/// ZooKeeper drops a crashed leader's node.
const STANDBY_WAIT: Duration = Duration::from_secs(15);

/// The address of the product's leading dashboard, once something listens
/// there. A leader that crashed keeps its node until its ZooKeeper session
/// expires, so a refused connection is not the end: the leader is looked up
/// again every half second, for up to [`STANDBY_WAIT`], until a standby has
/// taken over (or the old one is back). Nothing is sent before, so waiting is
/// safe for every command; past the wait the command runs and reports the
/// refusal.
async fn answering_leader(cfg: &ZkConfig) -> Result<String, AdminError> {
    let deadline = Instant::now() + STANDBY_WAIT;
    let mut addr = address::locate(cfg).await?;
    let mut told = false;
    loop {
        let connect =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(&addr)).await;
        let refused = matches!(&connect, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused);
        if !refused || Instant::now() >= deadline {
            return Ok(addr);
        }
        if !told {
            eprintln!(
                "the leading dashboard {addr} does not answer (it may have just stopped); waiting up to {STANDBY_WAIT:?} for a standby to take over…"
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        match address::locate(cfg).await {
            Ok(now) => addr = now,
            // Between the old node's expiry and the standby's: keep waiting.
            Err(address::LocateError::NoDashboard { .. }) if Instant::now() < deadline => {}
            Err(e) => return Err(e.into()),
        }
    }
}

impl AdminCommand {
    /// True for the commands that the dashboard runs (they need the one
    /// process that runs migrations), not ZooKeeper.
    pub fn asks_dashboard(&self) -> bool {
        use AdminCommand as C;
        matches!(
            self,
            C::Rebalance { .. }
                | C::Migrate { .. }
                | C::Promote { .. }
                | C::Pause { .. }
                | C::Resume { .. }
                | C::Cancel { .. }
                | C::Tasks { .. }
        )
    }
}

/// How often `migrate --wait` asks the dashboard about its task: one request
/// from one process, so a benchmark timing the task does not disturb it.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// How long `migrate --wait` keeps asking a dashboard that does not answer (a
/// leader change takes seconds; the task goes on meanwhile).
const WAIT_PATIENCE: Duration = Duration::from_secs(60);

/// Follows task `id` until it ends, printing each change of state, the moment
/// its keys start moving (the switch is done) and the keys moved every second,
/// each with the seconds since `since`. Returns the closing line.
async fn wait_for_task(
    dashboard: &client::DashboardClient,
    id: u64,
    since: Instant,
) -> Result<String, AdminError> {
    let mut tick = tokio::time::interval(WAIT_POLL);
    let (mut state, mut moving, mut reported) = (None, false, Instant::now());
    let mut unanswered_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let tasks: Vec<Task> = match dashboard
            .get("/api/tasks")
            .await
            .and_then(client::ApiReply::into_json::<Vec<Task>>)
        {
            Ok(tasks) => {
                unanswered_since = None;
                tasks
            }
            Err(e) => {
                let first = *unanswered_since.get_or_insert_with(Instant::now);
                if first.elapsed() > WAIT_PATIENCE {
                    return Err(e.into());
                }
                continue;
            }
        };
        let task = tasks
            .into_iter()
            .find(|t| t.id == id)
            .ok_or(AdminError::TaskGone(id))?;
        let secs = since.elapsed().as_secs_f64();
        // A final state is told by the closing line.
        if state != Some(task.state) && !task.state.is_final() {
            state = Some(task.state);
            println!("task {id}: {} after {secs:.2} s", task.state.name());
        }
        // The migrator starts only once every proxy acknowledged the switch.
        if !moving && (task.progress.busy_ms > 0 || task.progress.scanned > 0) {
            moving = true;
            reported = Instant::now();
            println!("task {id}: switched, keys moving after {secs:.2} s");
        }
        match task.state {
            TaskState::Done => {
                return Ok(format!(
                    "task {id}: done after {secs:.2} s: {} keys moved\n",
                    task.progress.moved
                ));
            }
            TaskState::Failed | TaskState::Cancelled => {
                return Err(AdminError::TaskEnded {
                    id,
                    state: task.state.name(),
                    error: task.error.unwrap_or_default(),
                });
            }
            TaskState::Queued | TaskState::Migrating => {}
        }
        if moving && reported.elapsed() >= Duration::from_secs(1) {
            reported = Instant::now();
            println!("task {id}: {} keys moved after {secs:.2} s", task.progress.moved);
        }
        let _ = std::io::stdout().flush();
    }
}

/// How long `promote` waits for the dashboard's reply.
const PROMOTE_WAIT: Duration = Duration::from_secs(90);

/// Runs a dashboard-bound `command` against `dashboard`; returns what to
/// print.
///
/// # Errors
/// An unreachable dashboard, a missing or wrong token, or its refusal (its
/// `error` message).
pub async fn ask_dashboard(
    dashboard: &client::DashboardClient,
    command: &AdminCommand,
) -> Result<String, AdminError> {
    use AdminCommand as C;
    let post = async |path: &str, body: serde_json::Value| dashboard.post(path, &body).await;
    match command {
        C::Rebalance { dry_run, weights } => Ok(rebalance(*dry_run, weights.as_ref(), dashboard).await?),
        C::Migrate { slots, to, wait } => {
            let since = Instant::now();
            let body = serde_json::json!({ "start": slots.start, "end": slots.end, "to": to });
            let task: Task = post("/api/migrate", body).await?.into_json()?;
            let queued = format!(
                "queued task {}: slots {} to group {}\n",
                task.id,
                format_slot_ids(&task.slots),
                task.to
            );
            if !*wait {
                return Ok(queued);
            }
            print!("{queued}");
            wait_for_task(dashboard, task.id, since).await
        }
        C::Promote { group, server, force } => {
            let body = serde_json::json!({ "addr": server, "force": force });
            // It waits for the replica (twice 5 s) and for every proxy (10 s).
            let path = format!("/api/groups/{group}/promote");
            let reply = dashboard.post_within(&path, &body, PROMOTE_WAIT).await?;
            let promoted: super::promote::Promoted = reply.into_json()?;
            Ok(format!("{}\n", promoted.message))
        }
        C::Pause { task } | C::Resume { task } | C::Cancel { task } => {
            let verb = match command {
                C::Pause { .. } => "pause",
                C::Resume { .. } => "resume",
                _ => "cancel",
            };
            let reply = post(&format!("/api/tasks/{task}/{verb}"), serde_json::json!({})).await?;
            let t: Task = reply.into_json()?;
            let done = match verb {
                "cancel" => "cancelled",
                _ if t.paused => "paused",
                _ => "resumed",
            };
            Ok(format!("task {} {done}\n", t.id))
        }
        C::Tasks { json } => {
            let reply = dashboard.get("/api/tasks").await?;
            let tasks: Vec<Task> = reply.into_json()?;
            Ok(if *json {
                json_text(&tasks)
            } else {
                render_tasks(&tasks)
            })
        }
        _ => Err(AdminError::NotForDashboard),
    }
}

/// `value` as pretty JSON and a newline, for scripts.
fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).map_or_else(|e| format!("{{\"error\": \"{e}\"}}\n"), |t| t + "\n")
}

/// Runs `command` and returns what to print.
///
/// # Errors
/// The operation's error.
pub async fn execute(store: &Store, command: &AdminCommand) -> Result<String, TopoError> {
    use AdminCommand as C;
    let done = |s: String| Ok(s + "\n");
    match command {
        C::Init => {
            operation::init_product(store).await?;
            done(format!("product {} initialized", store.paths().product()))
        }
        C::Groups => {
            let topo = watcher::load(store).await?;
            let addrs: Vec<String> = topo
                .groups
                .values()
                .flat_map(|g| &g.servers)
                .map(|s| s.addr.clone())
                .collect();
            // No backend password here: a server that asks for one is up as
            // far as this look can tell (the dashboard, which has reborn's
            // password, says whether it takes it).
            let health = health::probe_all(addrs, None)
                .await
                .into_iter()
                .map(|(addr, h)| (addr, if h == Health::AuthRefused { Health::Up } else { h }))
                .collect();
            Ok(render_groups(&topo, Some(&health)))
        }
        C::Slots => Ok(render_slots(&watcher::load(store).await?)),
        C::Proxies => Ok(render_proxies(&watcher::load(store).await?)),
        C::GroupCreate { id } => {
            operation::create_group(store, *id).await?;
            done(format!("group {id} created"))
        }
        C::GroupRemove { id } => {
            operation::remove_group(store, *id).await?;
            done(format!("group {id} removed"))
        }
        C::ServerAdd {
            group,
            addr,
            replica,
            force,
        } => {
            let role = if *replica { Role::Replica } else { Role::Master };
            // No backend password here: a server that wants one is not
            // looked at, and the note says so.
            let note = replication::admit(addr, (*group, role), None, *force).await?;
            operation::add_server(store, *group, addr, role).await?;
            done(format!(
                "{addr} added to group {group} as {}{note}",
                role_name(role)
            ))
        }
        C::ServerRemove { group, addr } => {
            operation::remove_server(store, *group, addr).await?;
            done(format!("{addr} removed from group {group}"))
        }
        C::SlotsAssign { slots, group } => {
            operation::assign_slots(store, slots.start, slots.end, *group).await?;
            let noun = if slots.start == slots.end { "slot" } else { "slots" };
            let range = range_text(slots.start, slots.end);
            match group {
                0 => done(format!("{noun} {range} unassigned")),
                g => done(format!("{noun} {range} assigned to group {g}")),
            }
        }
        C::ProxyOnline { id } => done(operation::set_proxy_online(store, id, true).await?.to_string()),
        C::ProxyOffline { id } => done(operation::set_proxy_online(store, id, false).await?.to_string()),
        C::Topology { json } => render_topology(&watcher::load(store).await?, *json),
        C::Failovers { json } => {
            let records = super::failover::list(store).await?;
            Ok(if *json {
                json_text(&records)
            } else {
                render_failovers(&records)
            })
        }
        C::Rebalance { .. }
        | C::Migrate { .. }
        | C::Tasks { .. }
        | C::Promote { .. }
        | C::Pause { .. }
        | C::Resume { .. }
        | C::Cancel { .. } => Err(TopoError::Invalid(
            "this command asks the dashboard, not ZooKeeper: run it through admin::run".into(),
        )),
    }
}

/// `rebalance`: with `dry_run`, fetches the dashboard's plan and renders it;
/// without, asks the dashboard to apply it (migration tasks for assigned slots)
/// and lists what it queued.
///
/// # Errors
/// An unreachable dashboard, or the dashboard's own refusal (unknown group in
/// the weights, …).
pub async fn rebalance(
    dry_run: bool,
    weights: Option<&Weights>,
    dashboard: &client::DashboardClient,
) -> Result<String, client::ClientError> {
    let query = weights
        .filter(|w| !w.is_empty())
        .map(|w| format!("?weights={w}"))
        .unwrap_or_default();
    if dry_run {
        let reply = dashboard.get(&format!("/api/rebalance/plan{query}")).await?;
        let plan: Plan = reply.into_json()?;
        return Ok(plan.to_string());
    }
    let reply = dashboard
        .post(&format!("/api/rebalance{query}"), &serde_json::json!({}))
        .await?;
    let applied: super::api::Applied = reply.into_json()?;
    let mut out = applied.plan.to_string();
    if applied.tasks.is_empty() {
        out.push_str("no migration task queued\n");
    }
    for t in &applied.tasks {
        out.push_str(&format!(
            "queued task {}: slots {} to group {}\n",
            t.id,
            format_slot_ids(&t.slots),
            t.to
        ));
    }
    Ok(out)
}

/// The failover records as a table, oldest first.
pub fn render_failovers(records: &[FailoverRecord]) -> String {
    if records.is_empty() {
        return "no automatic failover so far\n".into();
    }
    let rows = records
        .iter()
        .map(|r| {
            vec![
                r.seq.to_string(),
                format_unix_utc(r.at_ms / 1000),
                r.group.to_string(),
                r.old_master.clone(),
                r.new_master.clone().unwrap_or_else(|| "-".into()),
                format!("{} ms", r.detection_ms),
                format!("{} ms", r.switch_ms),
                r.offset.map_or("-".into(), |o| o.to_string()),
                r.outcome.clone(),
                std::iter::once(r.reason.as_str())
                    .chain(r.notes.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join("; "),
            ]
        })
        .collect();
    crate::libs::table::render(
        &[
            "SEQ",
            "AT (UTC)",
            "GROUP",
            "OLD MASTER",
            "NEW MASTER",
            "DETECTED IN",
            "SWITCHED IN",
            "OFFSET",
            "OUTCOME",
            "WHY",
        ],
        rows,
    )
}

/// The task's error, or its last batch's; a task that ended well shows the
/// latter as `earlier: …` (retried and overcome, not a fault now).
fn last_error(t: &Task) -> String {
    match (&t.error, &t.progress.last_error) {
        (Some(e), _) => e.clone(),
        (None, Some(e)) if t.state == TaskState::Done => format!("earlier: {e}"),
        (None, Some(e)) => e.clone(),
        (None, None) => String::new(),
    }
}

/// `ID  STATE  SLOTS  FROM  TO  MOVED  KEYS/S  ERRORS  LAST ERROR`, one line per task.
pub fn render_tasks(tasks: &[Task]) -> String {
    let rows = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                format!(
                    "{}{}",
                    t.state.name(),
                    if t.paused && !t.state.is_final() {
                        " (paused)"
                    } else {
                        ""
                    }
                ),
                format_slot_ids(&t.slots),
                if t.from == 0 {
                    "-".into()
                } else {
                    t.from.to_string()
                },
                t.to.to_string(),
                t.progress.moved.to_string(),
                keys_per_sec(&t.progress),
                t.errors().to_string(),
                last_error(t),
            ]
        })
        .collect();
    crate::libs::table::render(
        &[
            "ID",
            "STATE",
            "SLOTS",
            "FROM",
            "TO",
            "MOVED",
            "KEYS/S",
            "ERRORS",
            "LAST ERROR",
        ],
        rows,
    )
}

/// Keys moved per second of the task's passes; `-` before it has run.
fn keys_per_sec(p: &crate::topo::manager::migrator::Progress) -> String {
    match p.busy_ms {
        0 => "-".into(),
        ms => (p.moved.saturating_mul(1000) / ms).to_string(),
    }
}

/// `GROUP  SERVER  ROLE`, one line per server, and `HEALTH` when `health`
/// (address → probe result) is given.
pub fn render_groups(topo: &Topology, health: Option<&BTreeMap<String, Health>>) -> String {
    let mut rows = Vec::new();
    for group in topo.groups.values() {
        if group.servers.is_empty() {
            rows.push(vec![group.id.to_string(), "-".into(), "-".into(), "-".into()]);
        }
        for s in &group.servers {
            let h = health.map(|h| h.get(&s.addr).copied().unwrap_or(Health::Down).name());
            rows.push(vec![
                group.id.to_string(),
                s.addr.clone(),
                role_name(s.role).into(),
                h.unwrap_or_default().to_string(),
            ]);
        }
    }
    if health.is_none() {
        for row in &mut rows {
            row.pop();
        }
        return table::render(&["GROUP", "SERVER", "ROLE"], rows);
    }
    table::render(&["GROUP", "SERVER", "ROLE", "HEALTH"], rows)
}

/// `SLOTS  GROUP  STATE  MASTER`, one line per run of equal slots.
pub fn render_slots(topo: &Topology) -> String {
    let rows = topo
        .slots
        .to_ranges()
        .iter()
        .map(|r| {
            let group = if r.group == 0 {
                "-".into()
            } else {
                r.group.to_string()
            };
            let state = match (r.state, r.group, r.from) {
                (SlotState::Online, 0, _) => "offline".to_string(),
                (SlotState::Online, _, _) => "online".to_string(),
                (SlotState::PreMigrate, _, _) => "pre_migrate".to_string(),
                (SlotState::Migrate, _, Some(from)) => format!("migrate(from {from})"),
                (SlotState::Migrate, _, None) => "migrate".to_string(),
            };
            let master = topo.groups.get(&r.group).and_then(|g| g.master()).unwrap_or("-");
            vec![range_text(r.start, r.end), group, state, master.to_string()]
        })
        .collect();
    table::render(&["SLOTS", "GROUP", "STATE", "MASTER"], rows)
}

/// `ID  ADDR  ADMIN  PID  STARTED  STATE`: live proxies, then ids that are set
/// offline but not running.
pub fn render_proxies(topo: &Topology) -> String {
    let state = |id: &str| {
        if topo.offline_proxies.contains(id) {
            "offline"
        } else {
            "online"
        }
    };
    let mut rows: Vec<Vec<String>> = topo
        .proxies
        .values()
        .map(|p| {
            vec![
                p.id.clone(),
                p.addr.clone(),
                p.admin_addr.clone(),
                p.pid.to_string(),
                format_unix_utc(p.start_time),
                state(&p.id).to_string(),
            ]
        })
        .collect();
    for id in topo
        .offline_proxies
        .iter()
        .filter(|id| !topo.proxies.contains_key(*id))
    {
        let dash = || "-".to_string();
        rows.push(vec![
            id.clone(),
            dash(),
            dash(),
            dash(),
            dash(),
            "offline (not running)".into(),
        ]);
    }
    table::render(&["ID", "ADDR", "ADMIN", "PID", "STARTED", "STATE"], rows)
}

fn render_topology(topo: &Topology, json: bool) -> Result<String, TopoError> {
    if json {
        let text = serde_json::to_string_pretty(topo).map_err(|source| TopoError::Json {
            path: "(topology)".into(),
            source,
        })?;
        return Ok(text + "\n");
    }
    Ok(format!(
        "product {}\n\n{}\n{}\n{}",
        topo.product,
        render_groups(topo, None),
        render_slots(topo),
        render_proxies(topo)
    ))
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Master => "master",
        Role::Replica => "replica",
    }
}

/// `2026-11-22 03:23:00Z` for unix seconds (UTC): RFC 3339 with a space for
/// the `T`, easier to read in a table.
fn format_unix_utc(secs: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    humantime_serde::re::humantime::format_rfc3339_seconds(at)
        .to_string()
        .replacen('T', " ", 1)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn a_done_tasks_old_batch_error_reads_as_earlier() {
        let mut t = Task {
            state: TaskState::Migrating,
            ..Task::queued(1, vec![0], 2, 0)
        };
        t.progress.last_error = Some("cannot connect".into());
        assert_eq!(last_error(&t), "cannot connect");
        t.state = TaskState::Done;
        assert_eq!(last_error(&t), "earlier: cannot connect");
        t.error = Some("gave up".into());
        assert_eq!(last_error(&t), "gave up");
    }
    use crate::topo::model::{Group, ProxyInfo, Server};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: AdminArgs,
    }

    fn parse(argv: &[&str]) -> Result<AdminArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("admin").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn keys_per_sec_counts_the_time_spent_moving_in_milliseconds() {
        use crate::topo::manager::migrator::Progress;
        let p = |moved, busy_ms| Progress {
            moved,
            busy_ms,
            ..Progress::default()
        };
        assert_eq!(keys_per_sec(&p(0, 0)), "-");
        // 250,000 keys in 4.46 s: whole seconds would say 62,500 (4 s) or 50,000 (5 s).
        assert_eq!(keys_per_sec(&p(250_000, 4_460)), "56053");
        assert_eq!(keys_per_sec(&p(10, 250)), "40");
    }

    #[test]
    fn slot_ranges_parse() {
        assert_eq!(parse_slot_range("0-511"), Ok(SlotRangeArg { start: 0, end: 511 }));
        assert_eq!(parse_slot_range("7"), Ok(SlotRangeArg { start: 7, end: 7 }));
        for bad in ["", "a-b", "5-1", "-3", "1-", "70000"] {
            assert!(parse_slot_range(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_slot_range("1023"),
            Ok(SlotRangeArg {
                start: 1023,
                end: 1023
            })
        );
        let past = parse_slot_range("0-1024").expect_err("past the last slot");
        assert_eq!(past.to_string(), "slot range \"0-1024\" is not within 0-1023");
    }

    #[test]
    fn commands_and_global_flags_parse() {
        let a = parse(&["slots-assign", "0-511", "1", "--product", "p"]).expect("parse");
        assert_eq!(a.product, "p");
        assert_eq!(a.zk, "127.0.0.1:2181");
        assert_eq!(
            a.command,
            AdminCommand::SlotsAssign {
                slots: SlotRangeArg { start: 0, end: 511 },
                group: 1
            }
        );
        let a = parse(&["--zk", "h:1", "server-add", "2", "127.0.0.1:6379", "--replica"]).expect("parse");
        assert_eq!(a.zk, "h:1");
        assert_eq!(
            a.command,
            AdminCommand::ServerAdd {
                group: 2,
                addr: "127.0.0.1:6379".into(),
                replica: true,
                force: false
            }
        );
        assert_eq!(
            parse(&["topology", "--json"]).expect("parse").command,
            AdminCommand::Topology { json: true }
        );
        assert_eq!(
            parse(&["proxy-offline", "127.0.0.1:19000"])
                .expect("parse")
                .command,
            AdminCommand::ProxyOffline {
                id: "127.0.0.1:19000".into()
            }
        );
        assert_eq!(
            parse(&["rebalance", "--dry-run", "--weights", "1:2,2:1"])
                .expect("parse")
                .command,
            AdminCommand::Rebalance {
                dry_run: true,
                weights: Some("1:2,2:1".parse().expect("weights")),
            }
        );
        // --dashboard is global: before or after the command; absent by
        // default (then ZooKeeper names the leader).
        let a = parse(&["tasks", "--dashboard", "h:2"]).expect("parse");
        assert_eq!(
            parse(&["tasks", "--json"]).expect("parse").command,
            AdminCommand::Tasks { json: true }
        );
        assert_eq!(
            (a.dashboard.as_deref(), a.command),
            (Some("h:2"), AdminCommand::Tasks { json: false })
        );
        let a = parse(&["--dashboard", "h:2", "cancel", "4"]).expect("parse");
        assert_eq!(a.command, AdminCommand::Cancel { task: 4 });
        assert!(a.command.asks_dashboard());
        assert_eq!(parse(&["tasks"]).expect("parse").dashboard, None);
        assert!(!AdminCommand::Groups.asks_dashboard());
        assert!(parse(&["rebalance", "--weights", "1=2"]).is_err());
        assert!(parse(&["group-create", "x"]).is_err());
        assert!(parse(&["slots-assign", "9-3", "1"]).is_err());
    }

    fn sample() -> Topology {
        let mut topo = Topology {
            product: "demo".into(),
            ..Topology::default()
        };
        for id in 0..512 {
            if let Some(s) = topo.slots.get_mut(id) {
                s.group = 1;
            }
        }
        topo.groups.insert(
            1,
            Group {
                id: 1,
                servers: vec![
                    Server {
                        addr: "127.0.0.1:16379".into(),
                        role: Role::Master,
                    },
                    Server {
                        addr: "127.0.0.1:16380".into(),
                        role: Role::Replica,
                    },
                ],
            },
        );
        topo.proxies.insert(
            "p1".into(),
            ProxyInfo {
                id: "p1".into(),
                addr: "127.0.0.1:19000".into(),
                admin_addr: "127.0.0.1:11000".into(),
                pid: 7,
                pid_space: String::new(),
                start_time: 0,
                version: "0.1.0".into(),
                write_ack: Default::default(),
            },
        );
        topo.offline_proxies.insert("gone".into());
        topo
    }

    #[test]
    fn tables_are_aligned() {
        let topo = sample();
        assert_eq!(
            render_slots(&topo),
            "SLOTS     GROUP  STATE    MASTER\n\
             0-511     1      online   127.0.0.1:16379\n\
             512-1023  -      offline  -\n"
        );
        assert_eq!(
            render_groups(&topo, None),
            "GROUP  SERVER           ROLE\n\
             1      127.0.0.1:16379  master\n\
             1      127.0.0.1:16380  replica\n"
        );
        let health = BTreeMap::from([("127.0.0.1:16379".to_string(), Health::Up)]);
        assert_eq!(
            render_groups(&topo, Some(&health)),
            "GROUP  SERVER           ROLE     HEALTH\n\
             1      127.0.0.1:16379  master   up\n\
             1      127.0.0.1:16380  replica  down\n"
        );
        let proxies = render_proxies(&topo);
        assert!(
            proxies.contains("p1    127.0.0.1:19000  127.0.0.1:11000  7    1970-01-01 00:00:00Z  online"),
            "{proxies}"
        );
        assert!(proxies.contains("offline (not running)"), "{proxies}");
    }

    #[tokio::test]
    async fn rebalance_names_an_unreachable_dashboard() {
        for dry_run in [true, false] {
            let err = rebalance(dry_run, None, &client::DashboardClient::new("127.0.0.1:1"))
                .await
                .expect_err("unreachable");
            assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(format_unix_utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_unix_utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(format_unix_utc(1_700_000_000), "2023-11-14 22:13:20Z");
    }
}
