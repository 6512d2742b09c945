//! The two-phase slot switch against real processes: ZooKeeper, redis-servers,
//! in-process proxies and `reborn proxy` child processes that are paused or
//! killed. The background migrator is not involved here: keys move on access.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reborn::libs::hash::slot_of;
use reborn::proxy::{Bound, ProxyConfig};
use reborn::topo::action::{begin_migration, finish_migration};
use reborn::topo::model::{Role, SlotState};
use reborn::topo::{Store, TopoError, ZkConfig, operation, watcher};
use reborn::up::RedisServer;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

struct Cluster {
    zk: ZkConfig,
    store: Store,
    masters: Vec<RedisServer>,
    stop: CancellationToken,
}

impl Cluster {
    async fn start() -> Cluster {
        let zk = ZkConfig {
            addr: common::zk(),
            root: common::unique_root(),
            product: "mig".into(),
            session_timeout: Duration::from_secs(2),
        };
        let masters = vec![common::redis(), common::redis()];
        let store = Store::connect(&zk).await.expect("zk");
        operation::init_product(&store).await.expect("init");
        for (i, m) in masters.iter().enumerate() {
            let g = i as u32 + 1;
            operation::create_group(&store, g).await.expect("group");
            operation::add_server(&store, g, &m.addr(), Role::Master)
                .await
                .expect("server");
        }
        operation::assign_slots(&store, 0, 511, 1).await.expect("assign");
        operation::assign_slots(&store, 512, 1023, 2)
            .await
            .expect("assign");
        Cluster {
            zk,
            store,
            masters,
            stop: CancellationToken::new(),
        }
    }

    /// An in-process proxy; returns its address once it is registered.
    async fn proxy(&self) -> SocketAddr {
        let cfg = ProxyConfig {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            zk: self.zk.clone(),
            ..ProxyConfig::default()
        };
        let bound = Bound::bind(cfg).await.expect("bind");
        let addr = bound.local_addr().expect("addr");
        tokio::spawn(bound.run(self.stop.clone()));
        self.wait_proxy(&addr.to_string(), true).await;
        addr
    }

    /// A `reborn proxy` child process (so it can be paused or killed).
    async fn proxy_process(&self, session: Duration) -> (common::GuardedChild, String) {
        let port = common::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("proxy.toml");
        let text = format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{}\"\n[zk]\naddr = \"{}\"\nroot = \"{}\"\nproduct = \"{}\"\nsession_timeout = \"{}ms\"\n",
            common::free_port(),
            self.zk.addr,
            self.zk.root,
            self.zk.product,
            session.as_millis()
        );
        std::fs::write(&conf, text).expect("write config");
        let child = common::spawn_guarded(
            Command::new(env!("CARGO_BIN_EXE_reborn"))
                .args(["proxy", "--config"])
                .arg(&conf)
                .env("RUST_LOG", "warn"),
        );
        let id = format!("127.0.0.1:{port}");
        self.wait_proxy(&id, true).await;
        std::mem::forget(dir); // the child reads the file at start only; keep it simple
        (child, id)
    }

    async fn wait_proxy(&self, id: &str, present: bool) {
        let path = self.store.paths().proxy(id);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.store.exists(&path).await.unwrap_or(false) != present {
            assert!(
                Instant::now() < deadline,
                "proxy {id} never became present={present}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn slot_state(&self, slot: u16) -> (u32, SlotState) {
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

async fn client(addr: SocketAddr) -> redis::aio::MultiplexedConnection {
    let mut c = redis::Client::open(format!("redis://{addr}/"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    c.set_response_timeout(Duration::from_secs(30));
    c
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_under_load_loses_no_acknowledged_write() {
    let c = Cluster::start().await;
    let proxies = [c.proxy().await, c.proxy().await];
    // 40 hashtags, their slots all on group 1: these slots move to group 2.
    let tags: Vec<String> = (0..2000)
        .map(|i| format!("t{i}"))
        .filter(|t| slot_of(t.as_bytes()) < 512)
        .take(40)
        .collect();
    let mut slots: Vec<u16> = tags.iter().map(|t| slot_of(t.as_bytes())).collect();
    slots.sort_unstable();
    slots.dedup();

    // Writers on both proxies INCR keys of the moving slots and count what was
    // acknowledged; any error fails the test.
    let running = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for (w, &addr) in proxies.iter().cycle().take(4).enumerate() {
        let keys: Vec<String> = tags.iter().map(|t| format!("{{{t}}}w{w}")).collect();
        let running = running.clone();
        writers.push(tokio::spawn(async move {
            let mut conn = client(addr).await;
            let mut acked: BTreeMap<String, i64> = BTreeMap::new();
            let mut i = 0usize;
            while running.load(Ordering::Relaxed) {
                let key = &keys[i % keys.len()];
                let n: i64 = conn
                    .incr(key, 1)
                    .await
                    .unwrap_or_else(|e| panic!("INCR {key}: {e}"));
                let count = acked.entry(key.clone()).or_default();
                *count += 1;
                assert_eq!(n, *count, "{key}: a write was lost or doubled");
                i += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    begin_migration(&c.store, &slots, 2, Duration::from_secs(5))
        .await
        .expect("switch");
    let switched_in = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::Relaxed);
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for w in writers {
        totals.extend(w.await.expect("writer"));
    }
    assert!(
        totals.values().sum::<i64>() > 200,
        "writers barely ran: {totals:?}"
    );
    assert!(
        switched_in < Duration::from_secs(2),
        "the switch took {switched_in:?}"
    );

    // Every written key now lives on group 2 with its exact count (keys moved on
    // access), and group 1 holds none of them.
    let mut g1 = common::client(&c.masters[0].addr()).await;
    let mut g2 = common::client(&c.masters[1].addr()).await;
    for (key, count) in &totals {
        let on2: Option<i64> = g2.get(key).await.expect("get g2");
        assert_eq!(on2, Some(*count), "{key}");
        let on1: bool = g1.exists(key).await.expect("exists g1");
        assert!(!on1, "{key} left on the source");
    }
    assert_eq!(c.slot_state(slots[0]).await, (2, SlotState::Migrate));
    finish_migration(&c.store, &slots, Duration::from_secs(5))
        .await
        .expect("finish");
    assert_eq!(c.slot_state(slots[0]).await, (2, SlotState::Online));
    let mut p = client(proxies[0]).await;
    let (key, count) = totals.iter().next().expect("a key");
    let v: i64 = p.get(key).await.expect("served online at the target");
    assert_eq!(v, *count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_proxy_makes_the_switch_roll_back_and_a_retry_succeeds() {
    let c = Cluster::start().await;
    let live = c.proxy().await;
    let (paused, paused_id) = c.proxy_process(Duration::from_secs(20)).await;
    let slot = slot_of(b"foo");
    let mut p = client(live).await;
    let _: () = p.set("foo", "before").await.expect("set");

    signal(paused.id(), "-STOP");
    let err = begin_migration(&c.store, &[slot], 2, Duration::from_millis(1500))
        .await
        .expect_err("a paused proxy cannot acknowledge");
    match err {
        TopoError::AckTimeout { missing, .. } => assert_eq!(missing, vec![paused_id.clone()]),
        other => panic!("unexpected error: {other}"),
    }
    assert_eq!(
        c.slot_state(slot).await,
        (1, SlotState::Online),
        "not rolled back"
    );
    // Clients of the live proxy kept working and still do, on the source.
    let v: String = p.get("foo").await.expect("served after the rollback");
    assert_eq!(v, "before");

    signal(paused.id(), "-CONT");
    begin_migration(&c.store, &[slot], 2, Duration::from_secs(5))
        .await
        .expect("the retry succeeds once it acknowledges");
    let v: String = p.get("foo").await.expect("served while migrating");
    assert_eq!(v, "before");
    assert_eq!(c.slot_state(slot).await, (2, SlotState::Migrate));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_does_not_block_the_next_action() {
    let c = Cluster::start().await;
    let _live = c.proxy().await;
    let (mut victim, victim_id) = c.proxy_process(Duration::from_secs(2)).await;
    victim.kill().expect("SIGKILL");
    let _ = victim.wait();
    // Its node lingers until the session expires; the action waits for that
    // (ack timeout longer than the session), then proceeds.
    let t = Instant::now();
    begin_migration(&c.store, &[slot_of(b"foo")], 2, Duration::from_secs(10))
        .await
        .expect("proceeds once the dead proxy's session is gone");
    assert!(t.elapsed() < Duration::from_secs(8), "took {:?}", t.elapsed());
    c.wait_proxy(&victim_id, false).await;
}
