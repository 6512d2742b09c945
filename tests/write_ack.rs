//! `write_ack = "replica"`: the proxy acknowledges a write only once a
//! replica has it (`WAIT 1` after each burst of writes, on the same backend
//! connection). Real ZooKeeper, redis-servers and an in-process proxy.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, client, signal};
use reborn::libs::hash::slot_of;
use reborn::proxy::config::WriteAck;
use reborn::topo::action::begin_migration;
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

    // A client's own WAIT counts replicas, as on one Redis, rather than get
    // this mode's `NOREPLICAS`: the least of any group is group 2's none.
    let n: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(100)
        .query_async(&mut p)
        .await
        .expect("WAIT answers a count");
    assert_eq!(n, 0);
}

/// A key that a read moves on access (a RESP3 client's `GET`, `OBJECT`, a
/// multi-key read whose keys are split) leaves the source only once a replica
/// of the target has it: a target master dying right after the move cannot
/// take the key's last acknowledged write with it. A key deleted on the
/// source while its copy waits stays deleted. A replica that does not answer
/// within `write_ack_timeout` only delays the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_moved_on_access_leaves_the_source_only_once_a_replica_of_the_target_has_it() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let c = Cluster::start().await;
    let _source_replica = c.replica_of(1).await;
    let target_replica = c.replica_of(2).await;
    let proxy = c
        .proxy_with(|cfg| {
            cfg.write_ack = WriteAck::Replica;
            cfg.write_ack_timeout = TIMEOUT;
        })
        .await;
    for master in &c.masters {
        common::wait_replica_streaming(&master.addr()).await;
    }
    let tag = key_of_group(1, "moved");
    let [k1, k2, k3] = [1, 2, 3].map(|i| format!("{{{tag}}}{i}"));
    let mut p = client(proxy).await;
    for (k, v) in [(&k1, "one"), (&k2, "two"), (&k3, "three")] {
        let () = p.set(k, v).await.expect("set");
    }
    begin_migration(&c.store, &[slot_of(tag.as_bytes())], 2, Duration::from_secs(5))
        .await
        .expect("the slot migrates to group 2");
    let mut source = common::client(&c.masters[0].addr()).await;
    let mut target = common::client(&c.masters[1].addr()).await;
    let mut target_replica_conn = common::client(&target_replica.addr()).await;
    // `OBJECT` keeps the MIGRATE path (its reply must not pass through Lua).
    let encoding = |key: String| async move {
        let mut p = client(proxy).await;
        let t = Instant::now();
        let reply: redis::RedisResult<String> = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(&key)
            .query_async(&mut p)
            .await;
        (reply, t.elapsed())
    };

    let pid = target_replica.pid().expect("pid");
    signal(pid, "-STOP");
    let read = tokio::spawn(encoding(k1.clone()));
    common::eventually(
        "the target master gets a copy",
        Duration::from_secs(5),
        async || target.exists::<_, bool>(&k1).await.expect("exists"),
    )
    .await;
    // Within the wait for the frozen replica: the source still holds the key
    // (and so serves it), and the read waits.
    tokio::time::sleep(TIMEOUT / 4).await;
    assert!(
        source.exists::<_, bool>(&k1).await.expect("exists"),
        "the key left the source before a replica of the target had it"
    );
    assert!(!read.is_finished(), "the read was answered before the move was");
    signal(pid, "-CONT");
    let (reply, took) = read.await.expect("read");
    assert_eq!(reply.expect("served once the replica confirmed"), "embstr");
    assert!(
        took < TIMEOUT,
        "the replica's confirmation ended the wait: {took:?}"
    );
    // The replica had the key before the source let it go, so it has it now
    // without waiting.
    let there: Option<String> = target_replica_conn.get(&k1).await.expect("replica get");
    assert_eq!(
        there.as_deref(),
        Some("one"),
        "the target's replica lacks the moved key"
    );
    assert!(
        !source.exists::<_, bool>(&k1).await.expect("exists"),
        "the source kept the key"
    );

    // A client deletes the key on the source while its copy waits for the
    // replica: the move then finds it gone, and takes its copy back.
    signal(pid, "-STOP");
    let read = tokio::spawn(encoding(k3.clone()));
    common::eventually(
        "the target master gets a copy",
        Duration::from_secs(5),
        async || target.exists::<_, bool>(&k3).await.expect("exists"),
    )
    .await;
    let deleted: i64 = source.del(&k3).await.expect("del");
    assert_eq!(deleted, 1, "the source held the key");
    signal(pid, "-CONT");
    let (reply, _) = read.await.expect("read");
    assert!(reply.is_err(), "no such key any more: {reply:?}");
    assert!(
        !target.exists::<_, bool>(&k3).await.expect("exists"),
        "a key deleted while it moved came back from its copy"
    );

    // A replica away for longer than `write_ack_timeout`: the key moves
    // anyway, as in the default mode, rather than staying copied on both.
    signal(pid, "-STOP");
    let (reply, took) = encoding(k2.clone()).await;
    signal(pid, "-CONT");
    assert_eq!(reply.expect("served after the timeout"), "embstr");
    assert!(took >= TIMEOUT - Duration::from_millis(20), "{took:?}");
    assert!(
        !source.exists::<_, bool>(&k2).await.expect("exists"),
        "the source kept the key"
    );
    let moved: Option<String> = target.get(&k2).await.expect("get");
    assert_eq!(moved.as_deref(), Some("two"));
}

/// What a move on access costs with `write_ack = "replica"` (the copy ahead
/// and its `WAIT 1` on the target, then the `MIGRATE` and its `WAIT 1` on the
/// source) against the default mode (the `MIGRATE` alone). One client reads
/// keys of a migrating slot one at a time (`OBJECT ENCODING`, which always
/// moves its key first), through a proxy of each mode in turn, 50 keys at a
/// time, and prints the time per move of each and their ratio. Run it with
/// `scripts/bench_moves_on_access.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench_moves_on_access.sh"]
async fn bench_moves_on_access() {
    let n: usize = std::env::var("BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000);
    let c = Cluster::start().await;
    let _replicas = (c.replica_of(1).await, c.replica_of(2).await);
    for master in &c.masters {
        common::wait_replica_streaming(&master.addr()).await;
    }
    let plain = c.proxy().await;
    let replicated = c.proxy_with(|cfg| cfg.write_ack = WriteAck::Replica).await;
    let tag = key_of_group(1, "bench");
    let keys: Vec<String> = (0..n).map(|i| format!("{{{tag}}}{i}")).collect();
    let mut source = common::client(&c.masters[0].addr()).await;
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.set(k, "v".repeat(100)).ignore();
        }
        let () = pipe.query_async(&mut source).await.expect("fill");
    }
    begin_migration(&c.store, &[slot_of(tag.as_bytes())], 2, Duration::from_secs(5))
        .await
        .expect("the slot migrates to group 2");
    let mut clients = [client(plain).await, client(replicated).await];
    let mut took: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for (round, chunk) in keys.chunks(50).enumerate() {
        let mode = round % 2;
        for k in chunk {
            let t = Instant::now();
            let _: String = redis::cmd("OBJECT")
                .arg("ENCODING")
                .arg(k)
                .query_async(&mut clients[mode])
                .await
                .expect("OBJECT ENCODING");
            took[mode].push(t.elapsed());
        }
    }
    let left: usize = redis::cmd("EXISTS")
        .arg(&keys)
        .query_async(&mut source)
        .await
        .expect("EXISTS");
    assert_eq!(left, 0, "every key moved");
    let stats = |d: &mut Vec<Duration>| {
        d.sort();
        let mean = d.iter().sum::<Duration>() / d.len() as u32;
        (mean, d[d.len() / 2], d[d.len() * 99 / 100])
    };
    let (m, r) = (stats(&mut took[0]), stats(&mut took[1]));
    println!(
        "moves on access, {} keys each, µs per move (mean / p50 / p99):",
        took[0].len()
    );
    println!(
        "  write_ack = \"master\":  {:>7.0} / {:>7.0} / {:>7.0}",
        us(m.0),
        us(m.1),
        us(m.2)
    );
    println!(
        "  write_ack = \"replica\": {:>7.0} / {:>7.0} / {:>7.0}",
        us(r.0),
        us(r.1),
        us(r.2)
    );
    println!("  ratio (replica / master, mean): {:.2}", us(r.0) / us(m.0));
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
