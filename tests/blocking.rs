//! Blocking commands across a slot switch, against real processes: a `BLPOP`
//! or `XREAD … BLOCK` parked on the source when its slot starts migrating is
//! interrupted there (`CLIENT UNBLOCK`), re-issued on the target, and woken
//! by a push that lands on the target — with nothing popped twice or lost.
//! A promote takes the same path: without it, Redis itself would answer the
//! client `-UNBLOCKED` when its master turns replica.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, client};
use common::{blocked_clients, wait_blocked};
use reborn::libs::hash::slot_of;
use reborn::topo::action::{begin_migration, finish_migration};
use reborn::topo::model::SlotState;
use redis::AsyncCommands;

/// A hashtag whose slot group 1 owns (slots 0-511), so it migrates to group 2.
fn tag_on_group_1(prefix: &str) -> (String, u16) {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .map(|t| {
            let slot = slot_of(t.as_bytes());
            (t, slot)
        })
        .find(|(_, slot)| *slot < 512)
        .expect("some tag hashes below 512")
}

async fn blpop(addr: SocketAddr, key: String, timeout: f64) -> (Option<(String, String)>, Duration) {
    let mut conn = client(addr).await;
    let t = Instant::now();
    let r: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(&key)
        .arg(timeout)
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("BLPOP {key}: {e}"));
    (r, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_commands_follow_their_slot_to_the_target() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (tag, slot) = tag_on_group_1("b");
    let forever = format!("{{{tag}}}forever");
    let timed = format!("{{{tag}}}timed");
    let stream = format!("{{{tag}}}stream");
    let mut p = client(proxy).await;
    // The stream exists on the source with an old entry, which the blocked
    // XREAD … $ must not be handed after the switch.
    let old: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("f")
        .arg("old")
        .query_async(&mut p)
        .await
        .expect("xadd");

    let waiting_forever = tokio::spawn(blpop(proxy, forever.clone(), 0.0));
    let waiting_timed = tokio::spawn(blpop(proxy, timed.clone(), 2.0));
    let xread = tokio::spawn({
        let stream = stream.clone();
        async move {
            let mut conn = client(proxy).await;
            let v: redis::Value = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(0)
                .arg("STREAMS")
                .arg(&stream)
                .arg("$")
                .query_async(&mut conn)
                .await
                .expect("xread");
            v
        }
    });
    let source = c.masters[0].addr();
    let target = c.masters[1].addr();
    wait_blocked(&[(&source, 3)], "three commands blocked on the source").await;

    let switch = Instant::now();
    begin_migration(&c.store, &[slot], 2, Duration::from_secs(5))
        .await
        .expect("the switch is acknowledged");
    let switched_in = switch.elapsed();
    assert!(
        switched_in < Duration::from_secs(2),
        "switch took {switched_in:?}"
    );
    // All three left the source and wait on the target now.
    wait_blocked(
        &[(&source, 0), (&target, 3)],
        "the commands blocked on the target",
    )
    .await;
    assert!(!waiting_forever.is_finished() && !xread.is_finished());

    // A push through the proxy lands on the target and wakes them.
    let _: i64 = p.lpush(&forever, "x").await.expect("lpush");
    let (got, _) = tokio::time::timeout(Duration::from_secs(5), waiting_forever)
        .await
        .expect("BLPOP 0 woken by a push on the target")
        .expect("join");
    assert_eq!(got, Some((forever.clone(), "x".to_string())));
    let new: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("f")
        .arg("new")
        .query_async(&mut p)
        .await
        .expect("xadd");
    let v = tokio::time::timeout(Duration::from_secs(5), xread)
        .await
        .expect("XREAD woken by an entry on the target")
        .expect("join");
    let text = format!("{v:?}");
    assert!(text.contains(&new) && !text.contains(&old), "XREAD got {text}");

    // The timed BLPOP keeps its own deadline: nil after about 2 s in all.
    let (got, waited) = waiting_timed.await.expect("join");
    assert_eq!(got, None);
    assert!(
        (Duration::from_millis(1900)..Duration::from_millis(3500)).contains(&waited),
        "timed BLPOP returned after {waited:?}"
    );

    // A new blocking command of the migrating slot runs on the target too.
    let fresh = format!("{{{tag}}}fresh");
    let waiting = tokio::spawn(blpop(proxy, fresh.clone(), 0.0));
    wait_blocked(&[(&target, 1)], "the new BLPOP blocked on the target").await;
    let _: i64 = p.rpush(&fresh, "y").await.expect("rpush");
    let (got, _) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken")
        .expect("join");
    assert_eq!(got, Some((fresh, "y".to_string())));

    // The stream moved with its XREAD: the source holds nothing of the slot.
    let mut g1 = common::client(&source).await;
    let exists: bool = g1.exists(&stream).await.expect("exists");
    assert!(!exists, "the stream stayed on the source");
    let len: i64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut p)
        .await
        .expect("xlen");
    assert_eq!(len, 2);
    finish_migration(&c.store, &[slot], Duration::from_secs(5))
        .await
        .expect("finish");
    assert_eq!(c.slot_state(slot).await, (2, SlotState::Online));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poppers_across_a_switch_get_every_element_exactly_once() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (tag, slot) = tag_on_group_1("q");
    let queue = format!("{{{tag}}}queue");
    const N: usize = 3000;

    // Four poppers block on the queue with no timeout, again and again, until
    // each gets an "end": a popper left parked on the source would never see
    // the pushes that land on the target, and the test would time out.
    const POPPERS: usize = 4;
    let popped = Arc::new(AtomicUsize::new(0));
    let mut poppers = Vec::new();
    for _ in 0..POPPERS {
        let (queue, popped) = (queue.clone(), popped.clone());
        poppers.push(tokio::spawn(async move {
            let mut conn = client(proxy).await;
            let mut got = Vec::new();
            loop {
                let (_, v): (String, String) = redis::cmd("BLPOP")
                    .arg(&queue)
                    .arg(0)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("BLPOP: {e}"));
                if v == "end" {
                    return got;
                }
                got.push(v.parse::<usize>().expect("a number"));
                popped.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let pusher = tokio::spawn({
        let queue = queue.clone();
        async move {
            let mut conn = client(proxy).await;
            for i in 0..N {
                let _: i64 = conn
                    .rpush(&queue, i)
                    .await
                    .unwrap_or_else(|e| panic!("RPUSH {i}: {e}"));
                if i % 50 == 0 {
                    // Paced, so that pushes and pops go on across the switch.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            for _ in 0..POPPERS {
                let _: i64 = conn.rpush(&queue, "end").await.expect("RPUSH end");
            }
        }
    });
    // The switch comes while elements are pushed and popped.
    common::eventually(
        "elements are popped before the switch",
        Duration::from_secs(10),
        async || popped.load(Ordering::Relaxed) >= 100,
    )
    .await;
    begin_migration(&c.store, &[slot], 2, Duration::from_secs(5))
        .await
        .expect("switch");
    let popped = async {
        pusher.await.expect("pusher");
        let mut all = Vec::new();
        for p in poppers {
            all.extend(p.await.expect("popper"));
        }
        all
    };
    let all = tokio::time::timeout(Duration::from_secs(30), popped)
        .await
        .expect("every popper got its end (none stayed parked on the source)");
    let distinct: BTreeSet<usize> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "an element was popped twice");
    let missing: Vec<usize> = (0..N).filter(|i| !distinct.contains(i)).take(10).collect();
    assert!(missing.is_empty(), "lost elements, e.g. {missing:?}");
    for m in &c.masters {
        let mut g = common::client(&m.addr()).await;
        let len: i64 = g.llen(&queue).await.expect("llen");
        assert_eq!(len, 0, "{} still holds elements", m.addr());
    }
    assert_eq!(c.slot_state(slot).await, (2, SlotState::Migrate));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_command_follows_its_group_to_the_promoted_replica() {
    use reborn::topo::manager::promote::promote;
    let c = Cluster::start().await;
    let replica = c.replica_of_group_1().await;
    let proxy = c.proxy().await;
    let (tag, _) = tag_on_group_1("p");
    let queue = format!("{{{tag}}}jobs");
    let waiting = tokio::spawn(blpop(proxy, queue.clone(), 0.0));
    let old_master = c.masters[0].addr();
    wait_blocked(&[(&old_master, 1)], "BLPOP blocked on the master").await;

    promote(&c.store, 1, &replica.addr(), None, Duration::from_secs(5))
        .await
        .expect("promote");
    // It left the old master (now a replica, where a push could never reach
    // it) and waits on the new one.
    wait_blocked(
        &[(&old_master, 0), (&replica.addr(), 1)],
        "BLPOP re-issued on the new master",
    )
    .await;
    let mut p = client(proxy).await;
    let _: i64 = p.rpush(&queue, "after").await.expect("rpush");
    let (got, _) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken by a push on the new master")
        .expect("join");
    assert_eq!(got, Some((queue, "after".to_string())));
}

/// `blocked_clients` of INFO through the proxy: its own clients blocked.
async fn proxy_blocked_clients(proxy: SocketAddr) -> i64 {
    blocked_clients(&proxy.to_string()).await
}

/// `CLIENT UNBLOCK` and INFO's `blocked_clients` speak of the proxy's own
/// clients, as they would of one Redis's (Redis's own tests wait on both):
/// the unblocked call's nil (or `-UNBLOCKED` with ERROR) reaches its client
/// instead of being re-issued like a call interrupted by a slot switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_unblock_and_blocked_clients_speak_of_the_proxys_clients() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let mut p = client(proxy).await;
    for error in [false, true] {
        let mut waiter = client(proxy).await;
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut waiter)
            .await
            .expect("id");
        let popped = tokio::spawn(async move {
            redis::cmd("BLPOP")
                .arg("unblock-me")
                .arg(0)
                .query_async::<Option<(String, String)>>(&mut waiter)
                .await
        });
        common::eventually(
            "the proxy counts one blocked client",
            Duration::from_secs(5),
            || async { proxy_blocked_clients(proxy).await == 1 },
        )
        .await;
        let mut unblock = redis::cmd("CLIENT");
        unblock.arg("UNBLOCK").arg(id);
        if error {
            unblock.arg("ERROR");
        }
        let n: i64 = unblock.query_async(&mut p).await.expect("client unblock");
        assert_eq!(n, 1, "one call was unblocked");
        let got = tokio::time::timeout(Duration::from_secs(5), popped)
            .await
            .expect("the BLPOP returned")
            .expect("join");
        if error {
            let e = got.expect_err("ERROR mode answers an error");
            assert!(
                e.to_string().contains("client unblocked via CLIENT UNBLOCK"),
                "{e}"
            );
        } else {
            assert_eq!(got.expect("TIMEOUT mode answers nil"), None);
        }
        assert_eq!(proxy_blocked_clients(proxy).await, 0);
    }
    let own: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut p)
        .await
        .expect("id");
    let n: i64 = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(own)
        .query_async(&mut p)
        .await
        .expect("unblock a client that is not blocked");
    assert_eq!(n, 0);
    let bad: redis::RedisResult<i64> = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg("asd")
        .query_async(&mut p)
        .await;
    assert!(
        bad.expect_err("not a number")
            .to_string()
            .contains("value is not an integer"),
    );
}
