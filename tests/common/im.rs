//! Helpers of the push-system tests (tests/logic.rs, tests/push.rs,
//! tests/up.rs, tests/job.rs, tests/comet.rs): the cluster with logic in front
//! of it, logic's HTTP API, heartbeats, the queue's consumer groups. Imports
//! the crate's public `im`, `libs::resp_client` and the cluster harness.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use reborn::im::client::ImClient;
use reborn::im::comet::{self, CometConfig};
use reborn::im::discovery::{self, Instance, InstanceKind};
use reborn::im::job::reaper;
use reborn::im::logic::{self, LogicConfig, RunningLogic};
use reborn::im::queue;
use reborn::libs::resp_client::RespConn;
use reborn::topo::ZkConfig;
use serde_json::Value;

use super::cluster::Cluster;

/// An in-process comet's config: id `id` publishing `addr`, every listener on
/// a free loopback port, registering and reporting room counts every 200 ms.
pub fn loopback_comet(id: &str, addr: &str, zk: &ZkConfig) -> CometConfig {
    CometConfig {
        server_id: id.into(),
        addrs: vec![addr.into()],
        register_interval: Duration::from_millis(200),
        admin_listen: "127.0.0.1:0".into(),
        tcp: comet::config::CometTcpConfig {
            listen: "127.0.0.1:0".into(),
        },
        websocket: comet::config::CometWsConfig {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        },
        grpc: comet::config::CometGrpcConfig {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        },
        logic: comet::config::CometLogicConfig {
            online_interval: Duration::from_millis(200),
            ..Default::default()
        },
        zk: zk.clone(),
        ..Default::default()
    }
}

/// ZooKeeper and two redis groups behind one in-process proxy, and logic in
/// front of it (HTTP and gRPC on free ports, room counts reloaded every
/// 100 ms).
pub struct LogicUp {
    pub cluster: Cluster,
    pub proxy: SocketAddr,
    logic: Option<RunningLogic>,
}

impl LogicUp {
    /// Starts it all, logic's config tuned by `tune`.
    pub async fn start(tune: impl FnOnce(&mut LogicConfig)) -> LogicUp {
        let cluster = Cluster::start().await;
        let proxy = cluster.proxy().await;
        LogicUp::on(cluster, proxy, tune).await
    }

    /// Logic in front of `proxy`, a proxy of `cluster`, its config tuned by
    /// `tune`.
    pub async fn on(cluster: Cluster, proxy: SocketAddr, tune: impl FnOnce(&mut LogicConfig)) -> LogicUp {
        let mut config = LogicConfig::default();
        config.http.addr = "127.0.0.1:0".into();
        config.grpc.addr = "127.0.0.1:0".into();
        config.cluster.addrs = vec![proxy.to_string()];
        config.cluster.timeout = Duration::from_secs(5);
        config.zk = cluster.zk.clone();
        config.online.load_interval = Duration::from_millis(100);
        tune(&mut config);
        let logic = logic::start(config).await.expect("logic starts");
        LogicUp {
            cluster,
            proxy,
            logic: Some(logic),
        }
    }

    /// The running logic.
    pub fn logic(&self) -> &RunningLogic {
        self.logic.as_ref().expect("logic runs")
    }

    /// Logic's HTTP address.
    pub fn http(&self) -> SocketAddr {
        self.logic().http_addr()
    }

    /// A RESP connection through the proxy (never to a redis-server).
    pub async fn resp(&self) -> RespConn {
        proxy_conn(&self.proxy.to_string()).await
    }

    /// Registers a comet in ZooKeeper, as a running comet would.
    pub async fn register_comet(&self, comet: Instance) {
        discovery::register(&self.cluster.store, InstanceKind::Comet, &comet)
            .await
            .expect("register comet");
    }

    /// Stops logic (the cluster stops when dropped).
    pub async fn shutdown(&mut self) {
        if let Some(l) = self.logic.take() {
            l.shutdown().await;
        }
    }
}

/// A RESP connection through the proxy at `proxy`.
pub async fn proxy_conn(proxy: &str) -> RespConn {
    RespConn::connect(proxy, Duration::from_secs(5))
        .await
        .expect("connect to the proxy")
}

/// One call of logic's JSON API: its `{code, message, data}` envelope (HTTP
/// 200 asserted, the code left to the caller).
pub async fn logic_json(addr: SocketAddr, method: &str, path: &str, body: Vec<u8>) -> Value {
    let (status, bytes) = super::http::request(addr, method, path, body).await;
    assert_eq!(status, 200, "{method} {path}");
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {bytes:?}"))
}

/// Heartbeats until the reply (the room's cluster-wide count) is `want`,
/// for up to `wait`.
pub async fn heartbeat_until(c: &mut ImClient, who: &str, want: i32, wait: Duration) {
    super::eventually_ok(
        &format!("{who}: heartbeat count {want}"),
        wait,
        async || match c.heartbeat().await {
            Ok(n) if n == want => Ok(()),
            got => Err(format!("{got:?}")),
        },
    )
    .await;
}

/// The consumers of the job group on `stream` and their pending counts
/// (empty while the group does not exist).
pub async fn group_consumers(r: &mut RespConn, stream: &str) -> BTreeMap<String, i64> {
    let Ok(reply) = r.call(&["XINFO", "CONSUMERS", stream, queue::GROUP]).await else {
        return BTreeMap::new();
    };
    reaper::from_xinfo(reply)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.pending))
        .collect()
}
