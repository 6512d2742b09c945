//! Leadership of a product's dashboard: one EPHEMERAL node,
//! `<root>/<product>/dashboard`, holding the leader's [`DashboardInfo`].
//!
//! Whoever creates the node leads; ZooKeeper lets only one session own it. The
//! others wait as standbys with a watch on it and try again the moment it goes,
//! so a stopped leader (which deletes its node) is replaced within milliseconds,
//! and a crashed one within its session timeout.
//!
//! Why the node is not a [`Store::register_ephemeral`] node: the store re-creates
//! those after a session expiry, but after an expiry a standby may already lead.
//! A leader must instead *notice* that it may have lost, stop leading, and then
//! campaign like anyone else. So leadership belongs to one ZooKeeper session (a
//! `Term`) and ends when:
//!
//! * the node is deleted or owned by another session (a watch, at once);
//! * the session expires (the watch and every call report it);
//! * the leader cannot *prove* its session alive for two thirds of the session
//!   timeout. A probe read that succeeds was handled by the server after it was
//!   sent, so the session cannot expire before `sent + timeout`; without a
//!   successful probe the lease simply runs out. This way a leader cut off from
//!   ZooKeeper steps down before the server expires its session, which is the
//!   earliest a standby could take over: two dashboards never lead at once.
//!
//! Imports `libs` and `topo`'s kernel.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::error::DashboardError;
use crate::libs::backoff::Backoff;
use crate::libs::clock::unix_secs;
use crate::topo::error::TopoError;
use crate::topo::lock::host_name;
use crate::topo::session::{ZkSession, from_json};
use crate::topo::store::Store;

/// A standby re-reads the node this often even without a watch event, in case
/// the watch was lost with a connection.
const RECHECK: Duration = Duration::from_secs(2);
/// How long stepping down may spend deleting the node.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(1);

/// What the leader publishes about itself: the node's JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DashboardInfo {
    /// `host:port` of its HTTP API.
    pub addr: String,
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// Unix seconds: when it started leading (or, before that, started).
    pub since: u64,
    /// The pid space `pid` is unique in (see `topo::owner`): a standby on
    /// the same machine takes over at once from a leader that crashed.
    #[serde(default)]
    pub pid_space: String,
}

impl DashboardInfo {
    /// The record of this process, serving at `addr`.
    pub fn for_this_process(addr: String) -> DashboardInfo {
        DashboardInfo {
            addr,
            pid: std::process::id(),
            host: host_name(),
            since: unix_secs(),
            pid_space: crate::libs::pid_space::current().to_string(),
        }
    }
}

impl fmt::Display for DashboardInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let age = unix_secs().saturating_sub(self.since);
        write!(
            f,
            "http://{} (pid {} on {}, leading for {age}s)",
            self.addr, self.pid, self.host
        )
    }
}

/// Where a dashboard stands.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Leadership {
    /// It leads: its API serves.
    Leader,
    /// It waits; `leader` is who leads, if known (none while starting, or
    /// between two leaders).
    Standby {
        /// The current leader.
        leader: Option<DashboardInfo>,
    },
}

/// One period of leadership: the session that created the node.
struct Term {
    zk: ZkSession,
    /// When the create was sent: the lease starts from there.
    sent: Instant,
}

/// Why a term ended.
enum End {
    Cancelled,
    Lost(String),
}

/// What one attempt to take the node found.
enum Attempt {
    Taken(Term),
    /// Someone else leads; the watch fires when that changes.
    Held {
        holder: Option<DashboardInfo>,
        raw: String,
        watch: zk::OneshotWatcher,
    },
    /// The node vanished between two calls: try again at once.
    Vanished,
}

/// Campaigns for the leadership of the store's product, holds it, and
/// campaigns again after losing it, publishing the [`Leadership`] as it goes.
pub(super) struct Campaign {
    pub store: Store,
    pub me: DashboardInfo,
    pub standby: bool,
    pub role: watch::Sender<Leadership>,
}

impl Campaign {
    /// Runs until `cancel` (then resigns and returns `Ok`).
    ///
    /// # Errors
    /// With `standby = false`: [`DashboardError::Taken`] if another dashboard
    /// leads, [`DashboardError::Lost`] after losing the leadership. Always: the
    /// product disappearing, or the store being closed.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), DashboardError> {
        let path = self.store.paths().dashboard();
        loop {
            let Some(term) = self.acquire(&path, &cancel).await? else {
                return Ok(());
            };
            self.role.send_replace(Leadership::Leader);
            tracing::info!(
                "leading product {:?}: the dashboard API serves at http://{}",
                self.product(),
                self.me.addr
            );
            let end = tokio::select! {
                () = cancel.cancelled() => End::Cancelled,
                why = watch_node(&term.zk, &path) => End::Lost(why),
                why = keep_lease(&term, &path) => End::Lost(why),
            };
            // Stop serving first, then free the node so a standby takes over at
            // once rather than after a session timeout.
            self.role.send_replace(Leadership::Standby { leader: None });
            match tokio::time::timeout(RESIGN_TIMEOUT, term.zk.delete_if_owned(&path)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("resigning the dashboard leadership: {e}"),
                Err(_) => tracing::debug!("resigning the dashboard leadership: ZooKeeper did not answer"),
            }
            match end {
                End::Cancelled => return Ok(()),
                End::Lost(reason) if !self.standby => {
                    return Err(DashboardError::Lost {
                        product: self.product().to_string(),
                        reason,
                    });
                }
                End::Lost(reason) => {
                    tracing::warn!("stepped down as the dashboard leader: {reason}; campaigning again");
                }
            }
        }
    }

    fn product(&self) -> &str {
        self.store.paths().product_name()
    }

    /// True if `holder` describes this process: same address, pid and host.
    fn is_me(&self, holder: &DashboardInfo) -> bool {
        (holder.addr.as_str(), holder.pid, holder.host.as_str())
            == (self.me.addr.as_str(), self.me.pid, self.me.host.as_str())
    }

    /// Takes the node, waiting as a standby while someone else holds it.
    /// `None` when cancelled first.
    async fn acquire(&self, path: &str, cancel: &CancellationToken) -> Result<Option<Term>, DashboardError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut last_holder = None;
        loop {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            let zk = self.store.zk()?;
            let attempt = self.try_take(&zk, path).await;
            let watch = match attempt {
                Ok(Attempt::Taken(term)) => return Ok(Some(term)),
                Ok(Attempt::Vanished) => continue,
                Ok(Attempt::Held { holder, raw, watch }) => {
                    if !self.standby {
                        return Err(DashboardError::Taken {
                            product: self.product().to_string(),
                            holder: raw,
                        });
                    }
                    // Once per leader, not per recheck: `raw` also says for
                    // how long it has led, which changes every time.
                    let who = holder.as_ref().map(|h| (h.addr.clone(), h.pid, h.host.clone()));
                    if last_holder.as_ref() != Some(&who) {
                        tracing::info!(
                            "standby: product {:?} is led by the dashboard {raw}; taking over when it goes",
                            self.product()
                        );
                        last_holder = Some(who);
                    }
                    self.role.send_replace(Leadership::Standby { leader: holder });
                    backoff.reset();
                    Some(watch)
                }
                Err(e @ (TopoError::NotInitialized { .. } | TopoError::Closed)) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!("campaigning for the dashboard leadership: {e}; retrying");
                    None
                }
            };
            let pause = match watch {
                Some(_) => RECHECK,
                None => backoff.next_delay(),
            };
            let fired = async {
                match watch {
                    Some(w) => drop(w.changed().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                () = fired => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One attempt: create the node, or find out who holds it (and watch it).
    async fn try_take(&self, zk: &ZkSession, path: &str) -> Result<Attempt, TopoError> {
        let me = DashboardInfo {
            since: unix_secs(),
            ..self.me.clone()
        };
        let data = serde_json::to_vec(&me).map_err(|source| TopoError::Json {
            path: path.to_string(),
            source,
        })?;
        let sent = Instant::now();
        match zk.create_raw(path, &data, zk::CreateMode::Ephemeral).await {
            Ok(()) => return Ok(Attempt::Taken(Term { zk: zk.clone(), sent })),
            Err(e) if e.is_not_found() => {
                return Err(TopoError::NotInitialized {
                    product: self.product().to_string(),
                });
            }
            Err(e) if !e.is_exists() => return Err(e),
            Err(_) => {}
        }
        let (stat, watch) = zk
            .client()
            .check_and_watch_stat(path)
            .await
            .map_err(TopoError::zk_at("watch", path))?;
        let Some(stat) = stat else {
            return Ok(Attempt::Vanished);
        };
        if stat.ephemeral_owner == zk.session_id() {
            // Our own node, left when we stepped down on this same session (the
            // lease ran out, then the connection came back): nobody else can
            // have led meanwhile, so it is still ours.
            let sent = Instant::now();
            zk.client()
                .set_data(path, &data, Some(stat.version))
                .await
                .map_err(TopoError::zk_at("set", path))?;
            return Ok(Attempt::Taken(Term { zk: zk.clone(), sent }));
        }
        match zk.get_raw(path).await {
            Ok((data, read)) => {
                let holder = from_json::<DashboardInfo>(path, &data).ok();
                if holder.as_ref().is_some_and(|h| self.is_me(h)) {
                    // Ours, from a session this process has since replaced
                    // (it expired in a ZooKeeper outage; a restarted
                    // ZooKeeper keeps such a node until the old session's
                    // timeout runs out). Nobody else can lead meanwhile, so
                    // waiting behind it would only leave the product without
                    // a dashboard: remove it, if it is still that node.
                    return match zk.delete(path, Some(stat.version)).await {
                        Ok(()) => {
                            tracing::info!("removed this dashboard's node left by an expired session");
                            Ok(Attempt::Vanished)
                        }
                        Err(e) if e.is_not_found() => Ok(Attempt::Vanished),
                        Err(e) => Err(e),
                    };
                }
                // A leader of this machine that crashed: the same, or the
                // product waits a session timeout without a dashboard (and
                // failover).
                if zk.remove_if_left_by_the_dead(path, &data, read.version).await? {
                    return Ok(Attempt::Vanished);
                }
                let raw = match &holder {
                    Some(info) => info.to_string(),
                    None => format!("of unknown shape ({:?})", String::from_utf8_lossy(&data)),
                };
                Ok(Attempt::Held { holder, raw, watch })
            }
            Err(e) if e.is_not_found() => Ok(Attempt::Vanished),
            Err(e) => Err(e),
        }
    }
}

/// Returns when the node stops being ours (deleted, re-created by another
/// session) or our session ends; waits on a watch in between.
async fn watch_node(zk: &ZkSession, path: &str) -> String {
    loop {
        match zk.client().check_and_watch_stat(path).await {
            Ok((None, _)) => return "the dashboard node was deleted".into(),
            Ok((Some(stat), _)) if stat.ephemeral_owner != zk.session_id() => {
                return "the dashboard node belongs to another session".into();
            }
            Ok((Some(_), watch)) => {
                let event = watch.changed().await;
                if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                    return format!("the ZooKeeper session ended ({})", event.session_state);
                }
            }
            Err(zk::Error::SessionExpired) => return "the ZooKeeper session expired".into(),
            Err(zk::Error::ClientClosed) => return "the ZooKeeper session was closed".into(),
            // A connection loss: the lease decides how long that may last.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Proves the session alive (and the node ours) every sixth of the session
/// timeout; returns once that proof is older than two thirds of the timeout
/// (see the module docs), or the node turns out not to be ours.
async fn keep_lease(term: &Term, path: &str) -> String {
    let timeout = term.zk.client().session_timeout();
    let (every, span) = (timeout / 6, timeout * 2 / 3);
    let mut until = term.sent + span;
    loop {
        let sent = Instant::now();
        match tokio::time::timeout_at(until, term.zk.stat(path)).await {
            Err(_) => {
                return format!(
                    "no answer from ZooKeeper for {span:?}, so the session may expire and another dashboard take over"
                );
            }
            Ok(Ok(Some(stat))) if stat.ephemeral_owner == term.zk.session_id() => until = sent + span,
            Ok(Ok(_)) => return "the dashboard node is gone or belongs to another session".into(),
            Ok(Err(TopoError::SessionExpired)) => return "the ZooKeeper session expired".into(),
            Ok(Err(e)) => tracing::debug!("dashboard lease probe: {e}"),
        }
        let next = (sent + every).min(until);
        tokio::time::sleep_until(next).await;
        if Instant::now() >= until {
            return format!("no proof from ZooKeeper for {span:?} that the session is alive");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_serialize_with_a_tag() {
        let leader = serde_json::to_value(Leadership::Leader).expect("json");
        assert_eq!(leader, serde_json::json!({"role": "leader"}));
        let info = DashboardInfo::for_this_process("h:1".into());
        let standby = serde_json::to_value(Leadership::Standby {
            leader: Some(info.clone()),
        })
        .expect("json");
        assert_eq!(standby["role"], "standby");
        assert_eq!(standby["leader"]["addr"], "h:1");
        assert!(info.to_string().starts_with("http://h:1 (pid "), "{info}");
    }
}
