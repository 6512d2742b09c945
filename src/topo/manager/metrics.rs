//! The dashboard's `GET /metrics`, Prometheus text: what an operator alerts
//! on. Each scrape looks at every server (`INFO`, as `GET /api/servers` does)
//! and reads the tasks and failovers from ZooKeeper, so it shows the product
//! as it is now, whichever dashboard answers: a standby says `leader 0` and
//! the rest as it sees it. Alerts it is made for: a server down, or not in
//! the role the topology gives it (`server_up`, `server_role_ok`); a replica
//! whose link is down or that falls behind (`replica_link_up`,
//! `replica_lag_bytes`); a migration that stopped moving
//! (`rate(task_moved_keys)` of an unfinished task, `task_errors`); failovers
//! that failed (`failovers_total{outcome="failed"}`).

use super::api::ApiState;
use super::dashboard::leader::Leadership;
use super::failover;
use super::server_info::{self, ServerInfo};
use super::task::{self, TaskState};
use crate::libs::prometheus::{Exposition, MetricKind};
use crate::topo::error::TopoError;
use crate::topo::watcher;

/// A gauge with a sample per server of a list: name, help, the servers, and
/// each one's value (none: no sample).
type ServerFamily<'a> = (
    &'a str,
    &'a str,
    &'a [&'a ServerInfo],
    fn(&ServerInfo) -> Option<u64>,
);

/// The page, or the ZooKeeper error that kept it from being read.
///
/// # Errors
/// The topology, tasks or failovers could not be read.
pub async fn render(s: &ApiState) -> Result<String, TopoError> {
    let topo = watcher::load(&s.store).await?;
    let (servers, tasks, failovers) = tokio::join!(
        server_info::gather(&topo, s.backend_auth.as_deref()),
        task::list(&s.store),
        failover::list(&s.store)
    );
    let (tasks, failovers) = (tasks?, failovers?);
    let leads = matches!(*s.role.borrow(), Leadership::Leader);
    let zk = s.store.session().borrow().connected;

    let mut page = Exposition::new();
    page.single(
        "reborn_dashboard_leader",
        "1 when this dashboard leads (runs tasks and failovers).",
        MetricKind::Gauge,
        u8::from(leads),
    );
    page.single(
        "reborn_dashboard_zk_connected",
        "1 while this dashboard's ZooKeeper session is connected.",
        MetricKind::Gauge,
        u8::from(zk),
    );
    page.single(
        "reborn_dashboard_proxies",
        "Proxies registered in ZooKeeper.",
        MetricKind::Gauge,
        topo.proxies.len(),
    );

    let all: Vec<&ServerInfo> = servers.iter().collect();
    let up: Vec<&ServerInfo> = all.iter().copied().filter(|x| x.up).collect();
    let replicas: Vec<&ServerInfo> = up.iter().copied().filter(|x| x.role == "replica").collect();
    let families: [ServerFamily; 6] = [
        (
            "reborn_dashboard_server_up",
            "1 when the server answered INFO just now.",
            &all,
            |x| Some(u64::from(x.up)),
        ),
        (
            "reborn_dashboard_server_role_ok",
            "1 when a server that answered reports the role the topology gives it.",
            &up,
            |x| {
                let ok = matches!(
                    (x.role.as_str(), x.reported_role.as_str()),
                    ("master", "master") | ("replica", "slave")
                );
                Some(u64::from(ok))
            },
        ),
        (
            "reborn_dashboard_replica_link_up",
            "1 when a replica's link to its master is up.",
            &replicas,
            |x| Some(u64::from(x.link == "up")),
        ),
        (
            "reborn_dashboard_replica_lag_bytes",
            "How far a replica is behind its group's master, bytes of the replication stream.",
            &replicas,
            |x| x.lag,
        ),
        (
            "reborn_dashboard_server_keys",
            "Keys a server holds (db 0).",
            &up,
            |x| Some(x.keys),
        ),
        (
            "reborn_dashboard_server_memory_bytes",
            "A server's used_memory.",
            &up,
            |x| Some(x.memory),
        ),
    ];
    for (name, help, rows, value) in families {
        page.family(name, help, MetricKind::Gauge);
        for x in rows {
            if let Some(v) = value(x) {
                let group = x.group.to_string();
                page.sample(
                    name,
                    &[("group", &group), ("addr", &x.addr), ("role", &x.role)],
                    v,
                );
            }
        }
    }

    let name = "reborn_dashboard_tasks";
    page.family(name, "Migration tasks by state.", MetricKind::Gauge);
    for state in [
        TaskState::Queued,
        TaskState::Migrating,
        TaskState::Done,
        TaskState::Cancelled,
        TaskState::Failed,
    ] {
        let n = tasks.iter().filter(|t| t.state == state).count();
        page.sample(name, &[("state", state.name())], n);
    }
    let unfinished: Vec<_> = tasks.iter().filter(|t| !t.state.is_final()).collect();
    let name = "reborn_dashboard_task_moved_keys";
    page.family(
        name,
        "Keys an unfinished migration task has moved (flat while it is stuck).",
        MetricKind::Counter,
    );
    for t in &unfinished {
        let (id, paused) = (t.id.to_string(), u8::from(t.paused).to_string());
        page.sample(name, &[("id", &id), ("paused", &paused)], t.progress.moved);
    }
    let name = "reborn_dashboard_task_errors";
    page.family(
        name,
        "Failed batches and switch attempts of an unfinished migration task (each retried).",
        MetricKind::Counter,
    );
    for t in &unfinished {
        let id = t.id.to_string();
        page.sample(name, &[("id", &id)], t.errors());
    }

    let name = "reborn_dashboard_failovers_total";
    page.family(
        name,
        "Failovers and operator promotes recorded, by outcome (failed: refused or broken off).",
        MetricKind::Counter,
    );
    let promoted = failovers.iter().filter(|f| f.new_master.is_some()).count();
    page.sample(name, &[("outcome", "promoted")], promoted);
    page.sample(name, &[("outcome", "failed")], failovers.len() - promoted);
    Ok(page.finish())
}
