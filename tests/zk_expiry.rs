//! A proxy whose ZooKeeper session expired must keep acknowledging actions on
//! its next session. Found by the chaos soak: after ZooKeeper was frozen
//! longer than the proxies' 2 s sessions, every proxy re-registered (so the
//! dashboard counted it live) but never acknowledged again, and every failover
//! and migration switch timed out and was rolled back.
//!
//! Each test has a ZooKeeper of its own, so freezing it (SIGSTOP) touches no
//! other test; the last one cuts only its proxy off, through a relay. The
//! first two passed before the fix too: they guard the whole path (watch
//! re-armed, node restored, lease resynced) but did not reproduce the soak.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, ProxyProcess, signal};
use reborn::topo::action::{begin_migration, finish_migration};
use reborn::topo::{SlotState, Store};
use reborn::up::Ensemble;

/// The session timeout of the proxies and of the test's own store.
const SESSION: Duration = Duration::from_secs(2);

/// A cluster on a ZooKeeper of its own, and that ZooKeeper's pid.
async fn cluster() -> (Ensemble, Cluster, u32) {
    let zk = tokio::task::block_in_place(|| common::ensemble(1));
    let pid = zk.members()[0].pid().expect("ZooKeeper runs");
    let c = Cluster::start_on(zk.connect_string()).await;
    (zk, c, pid)
}

/// The session owning `proxy`'s node, if it has one.
async fn owner(store: &Store, proxy: &str) -> Option<i64> {
    let zk = store.zk().ok()?;
    let stat = zk.stat(&store.paths().proxy(proxy)).await.ok()??;
    Some(stat.ephemeral_owner)
}

/// Freezes ZooKeeper for longer than every session, thaws it, and waits until
/// each of `proxies` is registered again on a session other than `before`'s.
///
/// A freeze does not always expire a session: a client that reconnects in the
/// instant after the thaw, before the server's session tracker has run, keeps
/// it. Such a proxy is fine but was not put through an expiry, so the freeze
/// is repeated (at most 5 times) until every proxy was. A proxy without a node
/// 20 s after the thaw is the bug this file guards against.
async fn expire_sessions(c: &Cluster, pid: u32, proxies: &[&ProxyProcess]) {
    let mut before = Vec::new();
    for p in proxies {
        before.push(owner(&c.store, &p.id).await.expect("registered"));
    }
    for attempt in 1..=5 {
        signal(pid, "-STOP");
        tokio::time::sleep(SESSION + Duration::from_secs(1)).await;
        signal(pid, "-CONT");
        // By now a session the thaw expired has lost its nodes. A duration, not
        // a condition: until the server's session tracker has run, a session
        // that survives the thaw looks like one about to expire.
        tokio::time::sleep(SESSION + Duration::from_secs(1)).await;
        let mut kept = Vec::new();
        for (p, old) in proxies.iter().zip(&before) {
            common::eventually(
                &format!("proxy {} registered after the freeze", p.id),
                Duration::from_secs(20),
                || async { owner(&c.store, &p.id).await.is_some() },
            )
            .await;
            if owner(&c.store, &p.id).await == Some(*old) {
                kept.push(p.id.clone());
            }
        }
        if kept.is_empty() {
            return;
        }
        println!("freeze {attempt}: the sessions of {kept:?} survived it; freezing again");
    }
    panic!("five freezes longer than the session did not expire every proxy's session");
}

/// Moves one slot of group 1 to group 2 and back, through both switch phases;
/// every live proxy must acknowledge each within the normal timeout.
async fn switch_both_ways(c: &Cluster, slot: u16) {
    let ack = Duration::from_secs(5);
    for (to, back) in [(2, 1), (1, 2)] {
        let started = Instant::now();
        begin_migration(&c.store, &[slot], to, ack)
            .await
            .unwrap_or_else(|e| panic!("switch of slot {slot} to group {to}: {e}"));
        println!("slot {slot} switched to group {to} in {:?}", started.elapsed());
        assert_eq!(c.slot_state(slot).await, (to, SlotState::Migrate));
        // Nothing to move: the test writes no keys of this slot.
        finish_migration(&c.store, &[slot], ack)
            .await
            .unwrap_or_else(|e| panic!("online at group {to} (from {back}): {e}"));
    }
}

/// `SET`/`GET` through `proxy` work (its lease is back after the new session).
async fn serves(proxy: &ProxyProcess) {
    let addr = proxy.id.parse().expect("proxy address");
    let mut conn = common::cluster::client(addr).await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("SET through {}: {e}", proxy.id));
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("GET through {}: {e}", proxy.id));
    assert_eq!(v, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_acknowledges_after_its_session_expired() {
    let (_zk, c, pid) = cluster().await;
    let a = c.proxy_process_with(SESSION, None, "").await;
    let b = c.proxy_process_with(SESSION, None, "").await;
    switch_both_ways(&c, 3).await;
    for round in 0..2 {
        expire_sessions(&c, pid, &[&a, &b]).await;
        println!("round {round}: both proxies on new sessions");
        switch_both_ways(&c, 3 + round).await;
        serves(&a).await;
        serves(&b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_acknowledges_after_its_session_expired() {
    let (_zk, c, pid) = cluster().await;
    let mut a = c.proxy_process_with(SESSION, None, "").await;
    let b = c.proxy_process_with(SESSION, None, "").await;
    let killed = owner(&c.store, &a.id).await.expect("registered");
    // SIGKILL and start again on the same id: the new process waits out the
    // node of its killed predecessor, then registers.
    a.restart();
    common::eventually(
        "the restarted proxy registered on its own session",
        Duration::from_secs(20),
        || async { owner(&c.store, &a.id).await.is_some_and(|now| now != killed) },
    )
    .await;
    for round in 0..3u16 {
        // As in the soak: clients keep both proxies busy across the freeze.
        let load_a = common::load::Load::start(a.id.parse().expect("addr"), 2, 2);
        let load_b = common::load::Load::start(b.id.parse().expect("addr"), 2, 2);
        expire_sessions(&c, pid, &[&a, &b]).await;
        load_a
            .progressed(100, "clients of the restarted proxy are served")
            .await;
        load_b
            .progressed(100, "clients of the other proxy are served")
            .await;
        switch_both_ways(&c, 5 + round).await;
        load_a.finish().await;
        load_b.finish().await;
        serves(&a).await;
        serves(&b).await;
    }
}

/// An acknowledgement is an ephemeral node of the session that wrote it: if
/// that session expires while the dashboard still waits for other proxies,
/// the acknowledgement vanishes, and the proxy must write it again on its new
/// session (it used to count the action as done for good, so the switch timed
/// out with the proxy "missing" although it had applied the action).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_lost_with_its_session_is_written_again() {
    let (_zk, c, _pid) = cluster().await;
    // Only this proxy's ZooKeeper traffic goes through the relay, so only its
    // session expires.
    let relay = common::relay::Relay::start(c.zk.addr.clone()).await;
    let proxy = c
        .proxy_with(|cfg| cfg.zk.addr = relay.addr.to_string())
        .await
        .to_string();
    // A second live "proxy" the test acknowledges for by hand, late: the
    // dashboard side keeps waiting meanwhile.
    let slow = "127.0.0.1:1";
    c.store
        .register_ephemeral(&c.store.paths().proxy(slow), b"{}".to_vec())
        .await
        .expect("register the slow proxy");
    let slot = 9;
    let store = c.store.clone();
    let switch =
        tokio::spawn(async move { begin_migration(&store, &[slot], 2, Duration::from_secs(20)).await });
    // The pre_migrate action is the latest one; wait for the proxy's ack.
    let seq = common::eventually_some(
        "the proxy acknowledges pre_migrate",
        Duration::from_secs(10),
        async || {
            let names = c
                .store
                .children(&c.store.paths().actions())
                .await
                .unwrap_or_default();
            let s = names.iter().filter_map(|n| n.parse::<u64>().ok()).max()?;
            let acked = c
                .store
                .exists(&c.store.paths().ack(s, &proxy))
                .await
                .unwrap_or(false);
            acked.then_some(s)
        },
    )
    .await;
    let before = owner(&c.store, &proxy).await.expect("registered");
    relay.cut();
    tokio::time::sleep(SESSION + Duration::from_secs(1)).await;
    relay.restore();
    common::eventually(
        "the proxy is on a new session",
        Duration::from_secs(15),
        || async { owner(&c.store, &proxy).await.is_some_and(|now| now != before) },
    )
    .await;
    c.store
        .create_json(&c.store.paths().ack(seq, slow), &())
        .await
        .expect("acknowledge for the slow proxy");
    let switched = switch.await.expect("switch task");
    assert!(
        switched.is_ok(),
        "the proxy's acknowledgement of {seq} was lost with its session: {switched:?}"
    );
    assert_eq!(c.slot_state(slot).await, (2, SlotState::Migrate));
}
