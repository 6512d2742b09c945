//! A slow ZooKeeper slows operations down; it must not fail them.
//!
//! With a 2 s session the client drops a connection that answers nothing for
//! 800 ms and fails the requests in flight, then reconnects to the same
//! session. An operation caught in that (the operator lock's create, a CAS, a
//! transaction) must wait for the session and finish, not report the lost
//! connection as its failure. This binary owns its ZooKeeper alone, because
//! the test pauses it.

mod common;

use std::time::{Duration, Instant};

use common::cluster::signal;
use reborn::topo::operation::{add_server, assign_slots, create_group, init_product};
use reborn::topo::{Role, SlotState, Store, load};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_wait_out_a_stalled_zookeeper() {
    let cfg = common::zk_config();
    assert_eq!(
        cfg.session_timeout,
        Duration::from_secs(2),
        "the stall below is sized for it"
    );
    let store = Store::connect(&cfg).await.expect("connect");
    init_product(&store).await.expect("init");
    create_group(&store, 1).await.expect("group 1");

    let pid = common::zk_pid();
    signal(pid, "-STOP");
    let started = Instant::now();
    let ops = tokio::spawn({
        let store = store.clone();
        async move {
            // The lock's create, the group's create, a group CAS and the slot
            // table's transaction all meet the stall.
            create_group(&store, 2).await?;
            // Only recorded, never contacted, by these operations.
            add_server(&store, 2, "127.0.0.1:6999", Role::Master).await?;
            assign_slots(&store, 0, 1023, 2).await
        }
    });
    // Longer than the client's 800 ms connection timeout, shorter than the
    // session, so the session survives and only the connection is lost.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    signal(pid, "-CONT");
    ops.await
        .expect("join")
        .expect("a stall shorter than the session must not fail an operation");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "the operations did wait"
    );

    let topo = load(&store).await.expect("load");
    assert!(topo.groups.contains_key(&2), "group 2 created");
    assert!(
        topo.slots
            .slots()
            .iter()
            .all(|s| s.group == 2 && s.state == SlotState::Online),
        "every slot assigned to group 2 exactly once"
    );
    store.close().await;
}
