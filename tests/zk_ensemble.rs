//! A cluster on a three-member ZooKeeper ensemble: losing one member, whichever
//! it is (the one holding the proxy's session, or the leader), costs clients
//! nothing: no error, no lost acknowledged write, and the proxy keeps its
//! session, so it never fences itself off.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::cluster::Cluster;
use common::load::{self, Load};
use reborn::topo::operation;
use reborn::up::Ensemble;

/// The session that owns the proxy's ephemeral node: the proxy's session.
async fn proxy_session(c: &Cluster, proxy: SocketAddr) -> i64 {
    let path = c.store.paths().proxy(&proxy.to_string());
    let stat = c
        .store
        .zk()
        .expect("store open")
        .stat(&path)
        .await
        .expect("stat the proxy's node");
    stat.expect("the proxy is registered").ephemeral_owner
}

/// The proxy's `routing_epoch` (`INFO proxy`): it grows with every topology
/// snapshot the proxy applies.
async fn routing_epoch(proxy: SocketAddr) -> u64 {
    let mut conn = common::client(&proxy.to_string()).await;
    let info: String = redis::cmd("INFO")
        .arg("proxy")
        .query_async(&mut conn)
        .await
        .expect("INFO proxy");
    info.lines()
        .find_map(|l| l.strip_prefix("routing_epoch:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no routing_epoch in {info}"))
}

/// Which member holds `session` now (asked with `cons`, blocking).
fn member_of(ensemble: &Ensemble, session: i64) -> Option<usize> {
    tokio::task::block_in_place(|| ensemble.member_of_session(session))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_any_one_ensemble_member_costs_clients_nothing() {
    let mut ensemble = tokio::task::block_in_place(|| common::ensemble(3));
    let zk = ensemble.connect_string();
    assert_eq!(zk.split(',').count(), 3, "{zk}");
    let c = Cluster::start_on(zk).await;
    let session_timeout = c.zk.session_timeout;
    let proxy = c.proxy().await;
    let session = proxy_session(&c, proxy).await;

    let load = Load::start(proxy, 2, 2);
    load.progressed(500, "the load runs before any failure").await;

    // Twice the member holding the proxy's session (the second time, the
    // one it moved to), then the leader: a new election.
    for round in 0..3 {
        let holder = member_of(&ensemble, session).expect("a member holds the proxy's session");
        let leader = tokio::task::block_in_place(|| ensemble.leader()).expect("a leader");
        let victim = if round < 2 { holder } else { leader };
        let member = ensemble.member_mut(victim).expect("member");
        let killed = Instant::now();
        member.kill();

        common::eventually("the others elect or keep a leader", session_timeout * 3, || {
            let leader = tokio::task::block_in_place(|| ensemble.leader());
            async move { leader.is_some() }
        })
        .await;
        let led = killed.elapsed();
        common::eventually(
            "the proxy's session is on a live member",
            session_timeout * 3,
            || {
                let holder = member_of(&ensemble, session);
                async move { holder.is_some_and(|m| m != victim) }
            },
        )
        .await;
        let moved = killed.elapsed();
        // Under load for a while on two members.
        load.progressed(500, "the load goes on with a member down").await;
        // The proxy still follows the topology on its moved session: a
        // change made now reaches it (a new, empty group).
        let epoch = routing_epoch(proxy).await;
        operation::create_group(&c.store, 10 + round)
            .await
            .expect("create a group");
        common::eventually(
            &format!("the proxy to see group {} (round {round})", 10 + round),
            session_timeout * 3,
            async || routing_epoch(proxy).await > epoch,
        )
        .await;
        let what = match (victim == leader, victim == holder) {
            (true, true) => "the leader, holding the proxy's session",
            (true, false) => "the leader",
            (false, true) => "a follower holding the proxy's session",
            (false, false) => "a follower",
        };
        println!(
            "round {round}: member {} killed ({what}): a leader serves after {led:?}, \
             the proxy's session is on a live member after {moved:?}",
            victim + 1,
        );

        let member = ensemble.member_mut(victim).expect("member");
        tokio::task::block_in_place(|| member.restart()).expect("the member rejoins");
        assert_eq!(
            proxy_session(&c, proxy).await,
            session,
            "the proxy kept its ZooKeeper session"
        );
    }
    load.progressed(500, "the load goes on after the restarts").await;

    let seen = load.finish().await;
    println!("clients saw: {}", seen.summary());
    assert!(seen.errors.is_empty(), "clients saw errors: {:?}", seen.errors);
    assert!(seen.acked.len() > 500, "only {} writes", seen.acked.len());
    let wrong = load::unreadable(proxy, &seen.acked).await;
    assert!(wrong.is_empty(), "acknowledged writes lost: {wrong:?}");
    // A lapsed lease holds requests for up to hold_timeout (5 s); a request
    // that waited anywhere near that long means the proxy fenced itself.
    assert!(
        seen.slowest() < session_timeout,
        "a request waited {:?}: the proxy lost its lease",
        seen.slowest()
    );
}
