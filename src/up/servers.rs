//! The external processes of a local cluster: ZooKeeper, one server or an
//! ensemble (unless an existing one is used), and the redis-servers of every
//! group, wired master → replica. Started in dependency order and stopped in
//! the reverse order.
//!
//! A redis-server that dies while the cluster runs (a crash, a `kill -9` to
//! watch the failover) is started again [`RESTART_AFTER`] later, with its AOF
//! and its config file; a ZooKeeper member at once ([`Servers::tend`], `care`).
//!
//! Blocking (it waits for processes); `reborn up` runs it on a blocking thread.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::topo::model::{GroupId, Role};

use super::care::{Care, Tended};
use super::ensemble::Ensemble;
use super::error::UpError;
use super::plan::GroupPlan;
use super::redis_server::RedisServer;
use super::zookeeper::{MemberPorts, ZooKeeper};

/// How long after a redis-server died [`Servers::tend`] starts it again.
/// Well past the failover's (3 s to notice with the dashboard's defaults, and
/// a switch in tens of milliseconds; 10 s is the bound its tests hold it to):
/// a killed master is replaced first and then comes back as a replica of the
/// new one, as a crashed host does when it reboots. Sooner, it would come back
/// as the master with up to a second of writes missing from its AOF (fsync
/// every second), which its replica would then copy.
pub const RESTART_AFTER: Duration = Duration::from_secs(10);

/// How long after a ZooKeeper member died [`Servers::tend`] starts it again:
/// at once (the next round). Nothing waits on its absence, and with one
/// server every role's session is counting down until it is back.
const ZK_RESTART_AFTER: Duration = Duration::ZERO;

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

impl GroupMember {
    fn new(group: GroupId, role: Role, server: RedisServer) -> GroupMember {
        GroupMember {
            group,
            role,
            server,
            care: Care::Running,
        }
    }
}

impl Tended for RedisServer {
    fn what(&self) -> String {
        format!("redis-server {}", self.addr())
    }

    fn ended(&mut self) -> Option<ExitStatus> {
        RedisServer::ended(self)
    }

    fn restart(&mut self) -> Result<(), UpError> {
        RedisServer::restart(self)
    }
}

impl Tended for ZooKeeper {
    fn what(&self) -> String {
        format!("ZooKeeper {}", self.addr())
    }

    fn ended(&mut self) -> Option<ExitStatus> {
        ZooKeeper::ended(self)
    }

    fn restart(&mut self) -> Result<(), UpError> {
        ZooKeeper::restart(self)
    }
}

/// ZooKeeper and the redis-servers of a local cluster; stopped in reverse start
/// order on drop (replicas before their master, every redis before ZooKeeper).
#[derive(Debug)]
pub struct Servers {
    zk: Option<Ensemble>,
    /// What [`Servers::tend`] knows of each ZooKeeper member, by index.
    zk_care: Vec<Care>,
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
            zk_care: Vec::new(),
            zk_addr: existing_zk.unwrap_or_default().to_string(),
            members: Vec::new(),
        };
        if existing_zk.is_none() {
            let zk = Ensemble::start(zk_members, dir)?;
            servers.zk_addr = zk.connect_string();
            servers.zk_care = vec![Care::Running; zk.members().len()];
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

    /// Reaps every process that died since the last call, and starts again
    /// the ZooKeeper members at once and the redis-servers dead for
    /// [`RESTART_AFTER`]. Call it every second or so; a restart blocks until
    /// the process serves (a redis-server's AOF loaded, a member back in its
    /// quorum).
    pub fn tend(&mut self) {
        let now = Instant::now();
        if let Some(zk) = &mut self.zk {
            for (i, care) in self.zk_care.iter_mut().enumerate() {
                if let Some(member) = zk.member_mut(i) {
                    care.tend(member, ZK_RESTART_AFTER, ", on its data", now);
                }
            }
        }
        for m in &mut self.members {
            m.care
                .tend(&mut m.server, RESTART_AFTER, ", with its AOF and config", now);
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
