//! `write_ack = "replica"`: the proxy acknowledges a write only once a
//! replica has it (`WAIT 1` after each burst of writes, on the same backend
//! connection). Real ZooKeeper, redis-servers and an in-process proxy.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, client, signal};
use reborn::libs::hash::slot_of;
use reborn::proxy::config::WriteAck;
use redis::AsyncCommands;

const ACK_TIMEOUT: Duration = Duration::from_millis(300);

fn key_of_group(group: u32, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| (slot_of(k.as_bytes()) < 512) == (group == 1))
        .expect("a key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_acknowledged_only_once_a_replica_has_it() {
    let c = Cluster::start().await;
    let replica = c.replica_of_group_1().await;
    let proxy = c
        .proxy_with(|cfg| {
            cfg.write_ack = WriteAck::Replica;
            cfg.write_ack_timeout = ACK_TIMEOUT;
        })
        .await;
    let mut p = client(proxy).await;
    let k1 = key_of_group(1, "wa");
    common::wait_replica_streaming(&c.masters[0].addr()).await;
    // With the replica up: writes and pipelined bursts go through, and the
    // replica has each one by the time its OK arrives.
    let () = p.set(&k1, "one").await.expect("set");
    let mut r = common::client(&replica.addr()).await;
    let there: Option<String> = r.get(&k1).await.expect("replica get");
    assert_eq!(
        there.as_deref(),
        Some("one"),
        "acknowledged before the replica had it"
    );
    let mut pipe = redis::pipe();
    for i in 0..200 {
        // The hash tag keeps them in group 1, the one with a replica.
        pipe.set(format!("{{{k1}}}:{i}"), i).ignore();
    }
    pipe.get(&k1);
    let (got,): (String,) = pipe.query_async(&mut p).await.expect("pipeline");
    assert_eq!(got, "one");

    // A replica that does not answer: the write ran on the master, but the
    // client is told it was not acknowledged; reads are unaffected.
    let pid = replica.pid().expect("pid");
    signal(pid, "-STOP");
    let t = Instant::now();
    let e = p
        .set::<_, _, ()>(&k1, "two")
        .await
        .expect_err("no replica acknowledged it");
    assert!(e.to_string().contains("NOREPLICAS"), "{e}");
    assert!(
        t.elapsed() >= ACK_TIMEOUT - Duration::from_millis(20),
        "{:?}",
        t.elapsed()
    );
    let v: String = p.get(&k1).await.expect("get");
    assert_eq!(v, "two", "it did run on the master");
    // An error reply means nothing was written: it passes as it is.
    let e = p.incr::<_, _, i64>(&k1, 1).await.expect_err("not an integer");
    assert!(e.to_string().contains("not an integer"), "{e}");
    signal(pid, "-CONT");
    let () = p.set(&k1, "three").await.expect("acknowledged again");

    // A group without a replica cannot acknowledge any write in this mode.
    let k2 = key_of_group(2, "wa");
    let e = p
        .set::<_, _, ()>(&k2, "x")
        .await
        .expect_err("group 2 has no replica");
    assert!(e.to_string().contains("NOREPLICAS"), "{e}");
}
