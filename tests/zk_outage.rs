//! What a whole-ZooKeeper outage costs clients of the proxy, with the proxy's
//! default fence (6 s session, lease to 2/3 of it, `hold_timeout` 5 s): the
//! only ZooKeeper is frozen (SIGSTOP) under a checked load for a while, then
//! thawed. The figures printed here are the ones in docs/reliability.md.
//!
//! Within the lease (4 s) an outage costs nothing; past it requests are held,
//! so it costs latency; past the lease and the hold together, errors.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, signal};
use common::load::{self, Load, Seen};
use reborn::up::Ensemble;

/// The session that owns the proxy's ephemeral node.
async fn proxy_session(c: &Cluster, proxy: SocketAddr) -> Option<i64> {
    let path = c.store.paths().proxy(&proxy.to_string());
    let stat = c.store.zk().ok()?.stat(&path).await.ok()?;
    stat.map(|s| s.ephemeral_owner)
}

/// A cluster on a ZooKeeper of its own (the test freezes it), and a proxy
/// with the default session timeout and hold.
async fn cluster() -> (Ensemble, Cluster, SocketAddr, u32) {
    let zk = tokio::task::block_in_place(|| common::ensemble(1));
    let pid = zk.members()[0].pid().expect("ZooKeeper runs");
    let c = Cluster::start_on(zk.connect_string()).await;
    let proxy = c
        .proxy_with(|cfg| cfg.zk.session_timeout = reborn::topo::ZkConfig::default().session_timeout)
        .await;
    (zk, c, proxy, pid)
}

/// Freezes ZooKeeper for `outage` under load, thaws it, waits until clients
/// are served again, and returns what they saw, and whether the proxy came
/// back on its old session.
async fn outage(c: &Cluster, proxy: SocketAddr, pid: u32, outage: Duration) -> (Seen, bool) {
    let before = proxy_session(c, proxy).await;
    let load = Load::start(proxy, 2, 2);
    load.progressed(300, "the load runs before the outage").await;
    signal(pid, "-STOP");
    let frozen = Instant::now();
    tokio::time::sleep_until((frozen + outage).into()).await;
    signal(pid, "-CONT");
    load.progressed(300, "clients are served after the outage").await;
    let seen = load.finish().await;
    let wrong = load::unreadable(proxy, &seen.acked).await;
    assert!(wrong.is_empty(), "acknowledged writes lost: {wrong:?}");
    // After a new session the proxy registers again; wait for its node.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match proxy_session(c, proxy).await {
            Some(owner) => break Some(owner),
            None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            None => break None,
        }
    };
    let kept = before == after;
    println!(
        "ZooKeeper frozen {outage:?}: {}; session {}",
        seen.summary(),
        if kept { "kept" } else { "replaced" }
    );
    (seen, kept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shorter_than_the_lease_costs_clients_nothing() {
    let (_zk, c, proxy, pid) = cluster().await;
    for secs in [1, 3] {
        let (seen, kept) = outage(&c, proxy, pid, Duration::from_secs(secs)).await;
        assert!(seen.errors.is_empty(), "{secs} s: errors {:?}", seen.errors);
        assert!(kept, "{secs} s: the proxy lost its session");
        // The lease (4 s after the last probe was sent) outlasts the outage:
        // no request waits for ZooKeeper.
        assert!(
            seen.slowest() < Duration::from_secs(1),
            "{secs} s: a request waited {:?}",
            seen.slowest()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_past_the_lease_costs_latency_then_errors() {
    let (_zk, c, proxy, pid) = cluster().await;
    // Lease lapses after at most 4 s, requests are then held up to 5 s: a 6 s
    // outage is absorbed as latency.
    let (seen, _) = outage(&c, proxy, pid, Duration::from_secs(6)).await;
    assert!(seen.errors.is_empty(), "6 s: errors {:?}", seen.errors);
    assert!(
        seen.slowest() > Duration::from_millis(500),
        "6 s: requests were served without a lease (slowest {:?})",
        seen.slowest()
    );
    // 12 s: past the lease and the hold together, requests are refused.
    let (seen, _) = outage(&c, proxy, pid, Duration::from_secs(12)).await;
    assert!(!seen.errors.is_empty(), "12 s: no request was refused");
    assert!(
        seen.errors.iter().all(|e| e.contains("cannot reach ZooKeeper")),
        "12 s: errors other than the fence's refusal: {:?}",
        seen.errors
    );
}
