//! A two-group cluster for switch and migration tests: real ZooKeeper (this
//! binary's, under a fresh root), two redis-server masters (group 1 owns slots
//! 0-511, group 2 owns 512-1023), and proxies in-process or as `reborn proxy`
//! child processes (so they can be paused or killed).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use reborn::libs::hash::slot_of;
use reborn::proxy::{Bound, ProxyConfig};
use reborn::topo::manager::dashboard::DashboardConfig;
use reborn::topo::model::{Role, SlotState};
use reborn::topo::{Store, ZkConfig, operation, watcher};
use reborn::up::RedisServer;
use tokio_util::sync::CancellationToken;

/// A `reborn proxy` child process: its client address (also its id), admin
/// address, and the directory of its config file (removed when dropped).
pub struct ProxyProcess {
    pub child: super::GuardedChild,
    pub id: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// SIGKILLs the process, then starts it again with the same config (so
    /// on the same addresses). Its clients reconnect once it listens.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = super::spawn_guarded(
            Command::new(env!("CARGO_BIN_EXE_reborn"))
                .args(["proxy", "--config"])
                .arg(self.dir.path().join("proxy.toml"))
                .env("RUST_LOG", "warn"),
        );
    }

    /// Resident memory of the process, in bytes (Linux).
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    /// One counter or gauge of the admin endpoint's `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let admin = self.admin.parse().expect("admin address");
        let (_, body) = super::http::request(admin, "GET", "/metrics", Vec::new()).await;
        let text = String::from_utf8_lossy(&body);
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next().is_some_and(|n| n.ends_with(name)))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("a number")
    }
}

/// The cluster; dropping it stops its in-process proxies.
pub struct Cluster {
    pub zk: ZkConfig,
    pub store: Store,
    pub masters: Vec<RedisServer>,
    pub stop: CancellationToken,
}

impl Cluster {
    /// Two groups of persistent masters (AOF and config file, as `reborn up`
    /// runs them), each with a persistent replica: the replicas, in group order.
    pub async fn with_persistent_replicas() -> (Cluster, Vec<RedisServer>) {
        let zk = ZkConfig {
            addr: super::zk(),
            root: super::unique_root(),
            product: "fo".into(),
            session_timeout: Duration::from_secs(2),
        };
        let masters = vec![super::redis_persistent(), super::redis_persistent()];
        let store = Store::connect(&zk).await.expect("zk");
        seed_two_groups(&store, &masters).await;
        let mut replicas = Vec::new();
        for (i, m) in masters.iter().enumerate() {
            let mut r = super::redis_persistent();
            r.replicaof(&m.addr()).expect("replicaof");
            operation::add_server(&store, i as u32 + 1, &r.addr(), Role::Replica)
                .await
                .expect("add replica");
            replicas.push(r);
        }
        let c = Cluster {
            zk,
            store,
            masters,
            stop: CancellationToken::new(),
        };
        (c, replicas)
    }

    pub async fn start() -> Cluster {
        Cluster::start_on(super::zk()).await
    }

    /// [`Cluster::start`] on the ZooKeeper at `zk_addr` (a connect string:
    /// one server or every member of an ensemble).
    pub async fn start_on(zk_addr: String) -> Cluster {
        let zk = ZkConfig {
            addr: zk_addr,
            root: super::unique_root(),
            product: "mig".into(),
            session_timeout: Duration::from_secs(2),
        };
        let masters = vec![super::redis(), super::redis()];
        let store = Store::connect(&zk).await.expect("zk");
        seed_two_groups(&store, &masters).await;
        Cluster {
            zk,
            store,
            masters,
            stop: CancellationToken::new(),
        }
    }

    /// An in-process dashboard on a free port (stopped with the cluster);
    /// its address. It may not lead yet.
    pub async fn dashboard(&self) -> String {
        self.dashboard_with(|_| {}).await
    }

    /// [`Cluster::dashboard`], its config changed by `tune` first.
    pub async fn dashboard_with(&self, tune: impl FnOnce(&mut DashboardConfig)) -> String {
        let mut cfg = DashboardConfig {
            listen: "127.0.0.1:0".into(),
            zk: self.zk.clone(),
            ..DashboardConfig::default()
        };
        tune(&mut cfg);
        let bound = reborn::topo::manager::dashboard::BoundDashboard::bind(cfg)
            .await
            .expect("bind dashboard");
        let addr = bound.local_addr().to_string();
        tokio::spawn(bound.run(self.stop.clone()));
        addr
    }

    /// A replica of group 1's master, registered in the group.
    pub async fn replica_of_group_1(&self) -> RedisServer {
        self.replica_of(1).await
    }

    /// A replica of `group`'s master (1 or 2), registered in the group.
    pub async fn replica_of(&self, group: u32) -> RedisServer {
        let mut replica = super::redis();
        let master = &self.masters[group as usize - 1];
        replica.replicaof(&master.addr()).expect("replicaof");
        operation::add_server(&self.store, group, &replica.addr(), Role::Replica)
            .await
            .expect("add replica");
        replica
    }

    /// An in-process proxy; returns its address once it is registered.
    pub async fn proxy(&self) -> SocketAddr {
        self.proxy_with(|_| {}).await
    }

    /// [`Cluster::proxy`], its config changed by `tune` first.
    pub async fn proxy_with(&self, tune: impl FnOnce(&mut ProxyConfig)) -> SocketAddr {
        let mut cfg = ProxyConfig {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            zk: self.zk.clone(),
            ..ProxyConfig::default()
        };
        tune(&mut cfg);
        let bound = Bound::bind(cfg).await.expect("bind");
        let addr = bound.local_addr().expect("addr");
        tokio::spawn(bound.run(self.stop.clone()));
        self.wait_proxy(&addr.to_string(), true).await;
        addr
    }

    /// A `reborn proxy` child process (so it can be paused or killed), its id,
    /// and the directory of its config file (removed when dropped).
    pub async fn proxy_process(&self, session: Duration) -> (super::GuardedChild, String, tempfile::TempDir) {
        self.proxy_process_with_fd_limit(session, None).await
    }

    /// [`Cluster::proxy_process`] under an open-file limit (soft and hard).
    pub async fn proxy_process_with_fd_limit(
        &self,
        session: Duration,
        fd_limit: Option<u64>,
    ) -> (super::GuardedChild, String, tempfile::TempDir) {
        let p = self.proxy_process_with(session, fd_limit, "").await;
        (p.child, p.id, p.dir)
    }

    /// A `reborn proxy` child process with `settings` (top-level TOML lines)
    /// added to its config, under an open-file limit when given.
    pub async fn proxy_process_with(
        &self,
        session: Duration,
        fd_limit: Option<u64>,
        settings: &str,
    ) -> ProxyProcess {
        let port = super::free_port();
        let admin = format!("127.0.0.1:{}", super::free_port());
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("proxy.toml");
        let text = format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"{admin}\"\n{settings}\n[zk]\naddr = \"{}\"\nroot = \"{}\"\nproduct = \"{}\"\nsession_timeout = \"{}ms\"\n",
            self.zk.addr,
            self.zk.root,
            self.zk.product,
            session.as_millis()
        );
        std::fs::write(&conf, text).expect("write config");
        let mut cmd = match fd_limit {
            // `ulimit -n` sets both limits; exec keeps the pid ours.
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")])
                    .arg(env!("CARGO_BIN_EXE_reborn"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_reborn")),
        };
        let child = super::spawn_guarded(cmd.args(["proxy", "--config"]).arg(&conf).env("RUST_LOG", "warn"));
        let id = format!("127.0.0.1:{port}");
        self.wait_proxy(&id, true).await;
        ProxyProcess {
            child,
            id,
            admin,
            dir,
        }
    }

    pub async fn wait_proxy(&self, id: &str, present: bool) {
        let path = self.store.paths().proxy(id);
        super::eventually(
            &format!("proxy {id} present={present}"),
            Duration::from_secs(15),
            async || self.store.exists(&path).await.unwrap_or(false) == present,
        )
        .await;
    }

    pub async fn slot_state(&self, slot: u16) -> (u32, SlotState) {
        let topo = watcher::load(&self.store).await.expect("load");
        let s = topo.slots.get(slot).expect("slot");
        (s.group, s.state)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The master of `group` as ZooKeeper says (`None`: no such group, or none
/// of its servers is the master).
pub async fn master_of(store: &Store, group: u32) -> Option<String> {
    let topo = watcher::load(store).await.ok()?;
    topo.groups.get(&group)?.master().map(str::to_string)
}

/// Freezes `replica` (SIGSTOP) and cuts its link to `master`, so that what
/// the master applies from now on is not even in the frozen replica's socket
/// buffer. Returns its pid, to thaw it (SIGCONT).
pub async fn freeze_and_cut_off(replica: &RedisServer, master: &str) -> u32 {
    let pid = replica.pid().expect("pid");
    signal(pid, "-STOP");
    let mut m = super::client(master).await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut m)
        .await
        .expect("client kill");
    pid
}

/// Initialises the product of `store` with group 1 (master `masters[0]`) owning
/// slots 0-511 and group 2 (master `masters[1]`) owning 512-1023.
pub async fn seed_two_groups(store: &Store, masters: &[RedisServer]) {
    operation::init_product(store).await.expect("init");
    for (i, m) in masters.iter().enumerate() {
        let g = i as u32 + 1;
        operation::create_group(store, g).await.expect("group");
        operation::add_server(store, g, &m.addr(), Role::Master)
            .await
            .expect("server");
    }
    operation::assign_slots(store, 0, 511, 1).await.expect("assign");
    operation::assign_slots(store, 512, 1023, 2)
        .await
        .expect("assign");
}

/// A `redis` connection to `addr` with a 30 s response timeout.
pub async fn client(addr: SocketAddr) -> redis::aio::MultiplexedConnection {
    let mut c = redis::Client::open(format!("redis://{addr}/"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    c.set_response_timeout(Duration::from_secs(30));
    c
}

/// Sends `sig` (`-STOP`, `-CONT`, …) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {sig} {pid}");
}

/// `n` keys named `{prefix}{i}` whose slots belong to `group` (1 or 2).
pub fn keys_in(group: u32, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| (slot_of(k.as_bytes()) < 512) == (group == 1))
        .take(n)
        .collect()
}

/// Writes `keys` (strings) through the proxy.
pub async fn set_all(p: &mut redis::aio::MultiplexedConnection, keys: &[String]) {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.set(k, "v").ignore();
    }
    let _: () = pipe.query_async(p).await.expect("set keys");
}
