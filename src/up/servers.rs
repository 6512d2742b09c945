//! The external processes of a local cluster: ZooKeeper, one server or an
//! ensemble (unless an existing one is used), and the redis-servers of every
//! group, wired master → replica. Started in dependency order and stopped in
//! the reverse order.
//!
//! A redis-server that dies while the cluster runs (a crash, a `kill -9` to
//! watch the failover) is started again [`RESTART_AFTER`] later, with its AOF
//! and its config file: [`Servers::tend`].
//!
//! Blocking (it waits for processes); `reborn up` runs it on a blocking thread.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::topo::model::{GroupId, Role};

use super::ensemble::Ensemble;
use super::error::UpError;
use super::plan::GroupPlan;
use super::redis_server::RedisServer;
use super::zookeeper::MemberPorts;

/// How long after a redis-server died [`Servers::tend`] starts it again.
/// Well past the failover's (3 s to notice with the dashboard's defaults, and
/// a switch in tens of milliseconds; 10 s is the bound its tests hold it to):
/// a killed master is replaced first and then comes back as a replica of the
/// new one, as a crashed host does when it reboots. Sooner, it would come back
/// as the master with up to a second of writes missing from its AOF (fsync
/// every second), which its replica would then copy.
pub const RESTART_AFTER: Duration = Duration::from_secs(10);

/// One started redis-server and its place in the cluster.
#[derive(Debug)]
pub struct GroupMember {
    /// Its group.
    pub group: GroupId,
    /// Master or replica, as started (a failover may have swapped them since).
    pub role: Role,
    /// The process.
    pub server: RedisServer,
    /// What [`Servers::tend`] knows of it.
    care: Care,
}

/// Whether a member runs, waits to be started again, or was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Care {
    Running,
    /// Died at this instant; started again [`RESTART_AFTER`] later.
    Died(Instant),
    /// Its port was taken by someone else's process (an operator who
    /// restarted it by hand): that one is theirs, and we leave the port alone.
    LeftAlone,
}

impl GroupMember {
    fn new(group: GroupId, role: Role, server: RedisServer) -> GroupMember {
        GroupMember {
            group,
            role,
            server,
            care: Care::Running,
        }
    }

    /// Notices a death, or restarts after [`RESTART_AFTER`]; see [`Servers::tend`].
    fn tend(&mut self, now: Instant) {
        let addr = self.server.addr();
        match self.care {
            Care::Running => {
                if let Some(status) = self.server.ended() {
                    tracing::warn!(
                        %addr,
                        %status,
                        "redis-server died; reborn up starts it again in {RESTART_AFTER:?}, with its AOF and config"
                    );
                    self.care = Care::Died(now);
                }
            }
            Care::Died(at) if now.duration_since(at) >= RESTART_AFTER => match self.server.restart() {
                Ok(()) => {
                    tracing::info!(%addr, "redis-server started again");
                    self.care = Care::Running;
                }
                Err(e @ UpError::PortInUse { .. }) => {
                    tracing::warn!(%addr, "{e}; reborn up leaves this server to whoever started it");
                    self.care = Care::LeftAlone;
                }
                Err(e) => {
                    tracing::warn!(%addr, "cannot start redis-server again: {e}; trying again in {RESTART_AFTER:?}");
                    self.care = Care::Died(now);
                }
            },
            Care::Died(_) | Care::LeftAlone => {}
        }
    }
}

/// ZooKeeper and the redis-servers of a local cluster; stopped in reverse start
/// order on drop (replicas before their master, every redis before ZooKeeper).
#[derive(Debug)]
pub struct Servers {
    zk: Option<Ensemble>,
    zk_addr: String,
    members: Vec<GroupMember>,
}

impl Servers {
    /// Starts ZooKeeper, one member per entry of `zk_members` (see
    /// [`Ensemble::start`] for where each keeps its data), or uses `existing_zk`;
    /// then every group's master and replicas in `dir/redis-<port>`, and points
    /// each new replica at its master (one that resumes a kept dir follows what
    /// its config says). On any failure what was started is stopped.
    ///
    /// # Errors
    /// The first [`UpError`] of any process.
    pub fn start(
        existing_zk: Option<&str>,
        zk_members: &[MemberPorts],
        groups: &[GroupPlan],
        dir: &Path,
    ) -> Result<Servers, UpError> {
        let mut servers = Servers {
            zk: None,
            zk_addr: existing_zk.unwrap_or_default().to_string(),
            members: Vec::new(),
        };
        if existing_zk.is_none() {
            let zk = Ensemble::start(zk_members, dir)?;
            servers.zk_addr = zk.connect_string();
            servers.zk = Some(zk);
        }
        for group in groups {
            let master = RedisServer::builder(group.master)
                .dir(dir.join(format!("redis-{}", group.master)))
                .persistent()
                .start()?;
            let master_addr = master.addr();
            servers
                .members
                .push(GroupMember::new(group.id, Role::Master, master));
            for &port in &group.replicas {
                let mut replica = RedisServer::builder(port)
                    .dir(dir.join(format!("redis-{port}")))
                    .persistent()
                    .start()?;
                // A kept dir: each server's config already says whom it
                // follows, and a failover since may have swapped the two.
                // Re-pointing by the plan could make the server with the newer
                // data copy the older one (or two servers follow each other).
                if !replica.resumed() {
                    replica.replicaof(&master_addr)?;
                }
                servers
                    .members
                    .push(GroupMember::new(group.id, Role::Replica, replica));
            }
        }
        Ok(servers)
    }

    /// The ZooKeeper connect string (started here or given).
    pub fn zk_addr(&self) -> &str {
        &self.zk_addr
    }

    /// The ZooKeeper started here, if any.
    pub fn zookeeper(&self) -> Option<&Ensemble> {
        self.zk.as_ref()
    }

    /// Every redis-server, in start order (each master before its replicas).
    pub fn members(&self) -> &[GroupMember] {
        &self.members
    }

    /// Reaps every redis-server that died since the last call, and starts
    /// again those dead for [`RESTART_AFTER`]. Call it every second or so;
    /// a restart blocks until the server answers (its AOF loaded).
    pub fn tend(&mut self) {
        let now = Instant::now();
        for member in &mut self.members {
            member.tend(now);
        }
    }

    /// Stops everything in reverse start order. Idempotent; also done on drop.
    pub fn stop(&mut self) {
        while let Some(mut member) = self.members.pop() {
            tracing::info!(addr = %member.server.addr(), "stopping redis-server");
            member.server.stop();
        }
        if let Some(mut zk) = self.zk.take() {
            zk.stop();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}
