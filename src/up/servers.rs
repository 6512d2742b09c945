//! The external processes of a local cluster: ZooKeeper, one server or an
//! ensemble (unless an existing one is used), and the redis-servers of every
//! group, wired master → replica. Started in dependency order and stopped in
//! the reverse order.
//!
//! Blocking (it waits for processes); `reborn up` runs it on a blocking thread.

use std::path::Path;

use crate::topo::model::{GroupId, Role};

use super::ensemble::Ensemble;
use super::error::UpError;
use super::plan::GroupPlan;
use super::redis_server::RedisServer;
use super::zookeeper::MemberPorts;

/// One started redis-server and its place in the cluster.
#[derive(Debug)]
pub struct GroupMember {
    /// Its group.
    pub group: GroupId,
    /// Master or replica.
    pub role: Role,
    /// The process.
    pub server: RedisServer,
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
    /// each replica at its master. On any failure what was started is stopped.
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
            servers.members.push(GroupMember {
                group: group.id,
                role: Role::Master,
                server: master,
            });
            for &port in &group.replicas {
                let mut replica = RedisServer::builder(port)
                    .dir(dir.join(format!("redis-{port}")))
                    .persistent()
                    .start()?;
                replica.replicaof(&master_addr)?;
                servers.members.push(GroupMember {
                    group: group.id,
                    role: Role::Replica,
                    server: replica,
                });
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
