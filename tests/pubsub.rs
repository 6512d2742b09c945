//! Pub/sub through the proxy against real processes (ZooKeeper, two
//! redis-server groups, an in-process proxy): channels of both groups,
//! patterns heard from both, shared upstream subscriptions (200 subscribers,
//! at most one upstream connection per worker), release on the last
//! unsubscribe and on disconnect, Redis's subscribed-mode rules for RESP2,
//! RESP3 pushes, sharded channels, a channel whose slot migrates, patterns
//! following a new group, a master restart, and a subscriber that never
//! reads.

mod common;

use std::collections::BTreeSet;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::{Cluster, client};
use common::{RawConn, Resp, eventually};
use reborn::libs::hash::slot_of;
use reborn::topo::action::{begin_migration, finish_migration};

/// A channel name whose slot belongs to group 1 (`low`) or group 2.
fn channel(prefix: &str, low: bool) -> (String, u16) {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .map(|t| {
            let slot = slot_of(t.as_bytes());
            (t, slot)
        })
        .find(|(_, slot)| (*slot < 512) == low)
        .expect("some name hashes there")
}

async fn raw(proxy: SocketAddr) -> RawConn {
    RawConn::connect(&proxy.to_string()).await
}

fn bulk(s: &str) -> Resp {
    Resp::bulk(s)
}

fn arr(items: Vec<Resp>) -> Resp {
    Resp::Array(Some(items))
}

fn confirm(kind: &str, name: &str, n: i64) -> Resp {
    arr(vec![bulk(kind), bulk(name), Resp::Int(n)])
}

fn message(ch: &str, data: &str) -> Resp {
    arr(vec![bulk("message"), bulk(ch), bulk(data)])
}

/// `PUBSUB NUMSUB channel` asked of a redis-server directly.
async fn numsub_direct(addr: &str, ch: &str) -> i64 {
    let mut c = client(addr.parse().expect("addr")).await;
    let r: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(ch)
        .query_async(&mut c)
        .await
        .expect("numsub");
    r.1
}

/// Subscriber connections a redis-server sees (`CLIENT LIST TYPE pubsub`).
async fn pubsub_clients(addr: &str) -> usize {
    let mut c = client(addr.parse().expect("addr")).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut c)
        .await
        .expect("client list");
    list.lines().filter(|l| !l.is_empty()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_and_patterns_of_both_groups_and_subscribed_mode() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (ch1, _) = channel("news", true);
    let (ch2, _) = channel("news", false);
    let mut sub = raw(proxy).await;
    let mut psub = raw(proxy).await;
    let mut publisher = raw(proxy).await;

    sub.send(&common::cmd(&["SUBSCRIBE", &ch1, &ch2])).await;
    assert_eq!(
        sub.read_replies(2).await,
        vec![confirm("subscribe", &ch1, 1), confirm("subscribe", &ch2, 2)]
    );
    assert_eq!(
        psub.call(&["PSUBSCRIBE", "news*"]).await,
        confirm("psubscribe", "news*", 1)
    );

    for (ch, data) in [(&ch1, "one"), (&ch2, "two")] {
        // One upstream subscriber for the channel, one for the pattern.
        assert_eq!(publisher.call(&["PUBLISH", ch, data]).await, Resp::Int(2));
        assert_eq!(sub.read_reply().await, message(ch, data));
        assert_eq!(
            psub.read_reply().await,
            arr(vec![bulk("pmessage"), bulk("news*"), bulk(ch), bulk(data)])
        );
    }

    // Redis's rules for a subscribed RESP2 connection.
    assert_eq!(
        sub.call(&["GET", "k"]).await,
        Resp::Error(
            "ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context".into()
        )
    );
    assert_eq!(sub.call(&["PING"]).await, arr(vec![bulk("pong"), bulk("")]));
    assert_eq!(
        sub.call(&["PING", "hi"]).await,
        arr(vec![bulk("pong"), bulk("hi")])
    );

    // A connection that never subscribed gets a confirmation per name.
    let mut never = raw(proxy).await;
    never.send(&common::cmd(&["UNSUBSCRIBE", "a", "b"])).await;
    assert_eq!(
        never.read_replies(2).await,
        vec![confirm("unsubscribe", "a", 0), confirm("unsubscribe", "b", 0)]
    );

    // PUBSUB, merged across the masters.
    let chans = publisher.call(&["PUBSUB", "CHANNELS", "news*"]).await;
    let Resp::Array(Some(mut names)) = chans else {
        panic!("{chans:?}")
    };
    names.sort_by_key(|n| format!("{n:?}"));
    let mut want = vec![bulk(&ch1), bulk(&ch2)];
    want.sort_by_key(|n| format!("{n:?}"));
    assert_eq!(names, want);
    assert_eq!(publisher.call(&["PUBSUB", "NUMPAT"]).await, Resp::Int(1));
    assert_eq!(
        publisher.call(&["PUBSUB", "NUMSUB", &ch1, &ch2, "nobody"]).await,
        arr(vec![
            bulk(&ch1),
            Resp::Int(1),
            bulk(&ch2),
            Resp::Int(1),
            bulk("nobody"),
            Resp::Int(0)
        ])
    );

    // Unsubscribing everything leaves subscribed mode.
    sub.send(&common::cmd(&["UNSUBSCRIBE"])).await;
    let left = sub.read_replies(2).await;
    let counts: Vec<Resp> = left
        .iter()
        .map(|r| match r {
            Resp::Array(Some(items)) if items.len() == 3 => items[2].clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(counts, vec![Resp::Int(1), Resp::Int(0)], "{left:?}");
    assert_eq!(sub.call(&["PING"]).await, Resp::Simple("PONG".into()));
    assert_eq!(sub.call(&["GET", "k"]).await, Resp::Bulk(None));
    assert_eq!(
        sub.call(&["UNSUBSCRIBE"]).await,
        arr(vec![bulk("unsubscribe"), Resp::Bulk(None), Resp::Int(0)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_share_upstream_connections_and_release_them() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (ch, _) = channel("crowd", true);
    let master = c.masters[0].addr();
    let mut subs = Vec::new();
    for _ in 0..200 {
        let mut s = raw(proxy).await;
        assert_eq!(s.call(&["SUBSCRIBE", &ch]).await, confirm("subscribe", &ch, 1));
        subs.push(s);
    }
    // One upstream subscriber per worker (2 on this machine at most).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let upstream = pubsub_clients(&master).await;
    assert!(
        upstream >= 1 && upstream <= workers,
        "{upstream} upstream subscribers"
    );
    assert_eq!(numsub_direct(&master, &ch).await, upstream as i64);

    let mut publisher = raw(proxy).await;
    assert_eq!(
        publisher.call(&["PUBLISH", &ch, "hello"]).await,
        Resp::Int(upstream as i64)
    );
    for s in &mut subs {
        assert_eq!(s.read_reply().await, message(&ch, "hello"));
    }

    // Half leave by UNSUBSCRIBE, half by hanging up: the last one out
    // unsubscribes upstream.
    let half = subs.split_off(100);
    for mut s in subs {
        assert_eq!(
            s.call(&["UNSUBSCRIBE", &ch]).await,
            confirm("unsubscribe", &ch, 0)
        );
    }
    assert_eq!(
        numsub_direct(&master, &ch).await,
        upstream as i64,
        "others still listen"
    );
    drop(half);
    eventually(
        "the last subscriber's release unsubscribes upstream",
        Duration::from_secs(5),
        || {
            let master = master.clone();
            let ch = ch.clone();
            async move { numsub_direct(&master, &ch).await == 0 }
        },
    )
    .await;
    assert_eq!(publisher.call(&["PUBLISH", &ch, "nobody"]).await, Resp::Int(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_gets_pushes_and_runs_commands_while_subscribed() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (ch, _) = channel("push", false);
    let mut s = raw(proxy).await;
    let hello = s.call_raw(&["HELLO", "3"]).await;
    assert_eq!(hello.first(), Some(&b'%'), "{}", String::from_utf8_lossy(&hello));
    assert_eq!(
        s.call_raw(&["SUBSCRIBE", &ch]).await,
        format!(">3\r\n$9\r\nsubscribe\r\n${}\r\n{ch}\r\n:1\r\n", ch.len()).into_bytes()
    );
    assert_eq!(s.call_raw(&["SET", "k3", "v"]).await, b"+OK\r\n");
    assert_eq!(s.call_raw(&["GET", "k3"]).await, b"$1\r\nv\r\n");
    let mut publisher = raw(proxy).await;
    assert_eq!(publisher.call(&["PUBLISH", &ch, "hi"]).await, Resp::Int(1));
    assert_eq!(
        s.read_frame().await,
        format!(">3\r\n$7\r\nmessage\r\n${}\r\n{ch}\r\n$2\r\nhi\r\n", ch.len()).into_bytes()
    );
    assert_eq!(s.call_raw(&["PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_channels() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (ch1, _) = channel("shard", true);
    let (ch2, _) = channel("shard", false);
    let mut s = raw(proxy).await;
    s.send(&common::cmd(&["SSUBSCRIBE", &ch1, &ch2])).await;
    assert_eq!(
        s.read_replies(2).await,
        vec![confirm("ssubscribe", &ch1, 1), confirm("ssubscribe", &ch2, 2)]
    );
    let mut publisher = raw(proxy).await;
    for ch in [&ch1, &ch2] {
        assert_eq!(publisher.call(&["SPUBLISH", ch, "s"]).await, Resp::Int(1));
        assert_eq!(
            s.read_reply().await,
            arr(vec![bulk("smessage"), bulk(ch), bulk("s")])
        );
    }
    assert_eq!(numsub_direct(&c.masters[1].addr(), &ch1).await, 0);
    let shard = publisher.call(&["PUBSUB", "SHARDNUMSUB", &ch1]).await;
    assert_eq!(shard, arr(vec![bulk(&ch1), Resp::Int(1)]));
    assert_eq!(
        s.call(&["SUNSUBSCRIBE", &ch1]).await,
        confirm("sunsubscribe", &ch1, 1)
    );
    assert_eq!(publisher.call(&["SPUBLISH", &ch1, "s"]).await, Resp::Int(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_follows_its_slot_to_the_other_group() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (ch, slot) = channel("moving", true);
    let (source, target) = (c.masters[0].addr(), c.masters[1].addr());
    let mut s = raw(proxy).await;
    assert_eq!(s.call(&["SUBSCRIBE", &ch]).await, confirm("subscribe", &ch, 1));
    let mut publisher = raw(proxy).await;
    assert_eq!(publisher.call(&["PUBLISH", &ch, "before"]).await, Resp::Int(1));
    assert_eq!(s.read_reply().await, message(&ch, "before"));

    begin_migration(&c.store, &[slot], 2, Duration::from_secs(5))
        .await
        .expect("switch");
    // The subscription moves to the target; the source lets it go after.
    eventually("subscribed on the target", Duration::from_secs(5), || {
        let (target, ch) = (target.clone(), ch.clone());
        async move { numsub_direct(&target, &ch).await >= 1 }
    })
    .await;
    assert_eq!(publisher.call(&["PUBLISH", &ch, "during"]).await, Resp::Int(1));
    assert_eq!(s.read_reply().await, message(&ch, "during"));
    eventually("released on the source", Duration::from_secs(5), || {
        let (source, ch) = (source.clone(), ch.clone());
        async move { numsub_direct(&source, &ch).await == 0 }
    })
    .await;

    finish_migration(&c.store, &[slot], Duration::from_secs(5))
        .await
        .expect("finish");
    assert_eq!(publisher.call(&["PUBLISH", &ch, "after"]).await, Resp::Int(1));
    assert_eq!(s.read_reply().await, message(&ch, "after"));
    assert_eq!(numsub_direct(&target, &ch).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_disconnected_without_stalling_others() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (ch, _) = channel("flood", false);
    let mut slow = raw(proxy).await;
    let mut fast = raw(proxy).await;
    assert_eq!(slow.call(&["SUBSCRIBE", &ch]).await, confirm("subscribe", &ch, 1));
    assert_eq!(fast.call(&["SUBSCRIBE", &ch]).await, confirm("subscribe", &ch, 1));
    let mut publisher = raw(proxy).await;
    let payload = "x".repeat(256 * 1024);
    // 80 MB in all: more than the 32 MB limit plus what the sockets buffer.
    for _ in 0..320 {
        let n = publisher.call(&["PUBLISH", &ch, &payload]).await;
        // One upstream subscriber per worker the two clients landed on.
        assert!(matches!(n, Resp::Int(1 | 2)), "{n:?}");
        assert_eq!(fast.read_reply().await, message(&ch, &payload));
    }
    assert!(
        slow.is_closed_by_peer().await,
        "the slow subscriber is disconnected"
    );
    // The others go on.
    let n = publisher.call(&["PUBLISH", &ch, "still"]).await;
    assert!(matches!(n, Resp::Int(1 | 2)), "{n:?}");
    assert_eq!(fast.read_reply().await, message(&ch, "still"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_come_back_after_their_master_restarts() {
    let mut c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (ch, _) = channel("phoenix", true);
    let master = c.masters[0].addr();
    let mut s = raw(proxy).await;
    assert_eq!(s.call(&["SUBSCRIBE", &ch]).await, confirm("subscribe", &ch, 1));
    assert_eq!(
        s.call(&["PSUBSCRIBE", "phoenix*"]).await,
        confirm("psubscribe", "phoenix*", 2)
    );

    c.masters[0].kill();
    c.masters[0].restart().expect("restart");
    eventually(
        "resubscribed on the restarted master",
        Duration::from_secs(10),
        || {
            let (master, ch) = (master.clone(), ch.clone());
            async move {
                let mut d = client(master.parse().expect("addr")).await;
                let pats: i64 = redis::cmd("PUBSUB")
                    .arg("NUMPAT")
                    .query_async(&mut d)
                    .await
                    .expect("numpat");
                numsub_direct(&master, &ch).await == 1 && pats == 1
            }
        },
    )
    .await;
    // Straight on the master: the client hears it through the proxy again.
    let mut d = client(master.parse().expect("addr")).await;
    let n: i64 = redis::cmd("PUBLISH")
        .arg(&ch)
        .arg("back")
        .query_async(&mut d)
        .await
        .expect("publish");
    assert_eq!(n, 2, "the channel and the pattern, on one upstream connection");
    let mut got = s.read_replies(2).await;
    got.sort_by_key(|r| format!("{r:?}"));
    let mut want = vec![
        message(&ch, "back"),
        arr(vec![bulk("pmessage"), bulk("phoenix*"), bulk(&ch), bulk("back")]),
    ];
    want.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_follow_the_set_of_masters() {
    use reborn::topo::model::Role;
    use reborn::topo::operation;
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let mut s = raw(proxy).await;
    assert_eq!(
        s.call(&["PSUBSCRIBE", "wide*"]).await,
        confirm("psubscribe", "wide*", 1)
    );

    // A third group that gets a slot joins the masters the pattern is on.
    let third = common::redis();
    operation::create_group(&c.store, 3).await.expect("group");
    operation::add_server(&c.store, 3, &third.addr(), Role::Master)
        .await
        .expect("server");
    let (ch, slot) = channel("wide", true);
    begin_migration(&c.store, &[slot], 3, Duration::from_secs(5))
        .await
        .expect("switch");
    let addr = third.addr();
    eventually(
        "the pattern is subscribed on the new master",
        Duration::from_secs(5),
        || {
            let addr = addr.clone();
            async move {
                let mut d = client(addr.parse().expect("addr")).await;
                let n: i64 = redis::cmd("PUBSUB")
                    .arg("NUMPAT")
                    .query_async(&mut d)
                    .await
                    .expect("numpat");
                n == 1
            }
        },
    )
    .await;
    let mut publisher = raw(proxy).await;
    // The migrating slot publishes on its target, the new group.
    assert_eq!(publisher.call(&["PUBLISH", &ch, "3"]).await, Resp::Int(1));
    assert_eq!(
        s.read_reply().await,
        arr(vec![bulk("pmessage"), bulk("wide*"), bulk(&ch), bulk("3")])
    );
}

/// Keyspace notifications come from the server holding the key: a
/// `__keyevent@0__:` channel hears every group's keys, and a
/// `__keyspace@0__:<key>` channel hears its key, whatever group the channel's
/// own name hashes to (plain `SUBSCRIBE`, no pattern).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_notifications_are_heard_from_the_group_of_their_key() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let mut cmd = raw(proxy).await;
    assert_eq!(
        cmd.call(&["CONFIG", "SET", "notify-keyspace-events", "KEA"])
            .await,
        Resp::Simple("OK".into())
    );
    let (low, _) = channel("low", true);
    // A key of group 2 whose channel name hashes to group 1: routed by the
    // name, the subscription would be on the wrong server.
    // (crc32 is linear: for keys of one length, the key's slot and the
    // channel's agree on the group bit, hence keys of several lengths.)
    let high = (0..10_000)
        .map(|i| format!("high{}{i}", "x".repeat(i % 8)))
        .find(|k| slot_of(k.as_bytes()) >= 512 && slot_of(format!("__keyspace@0__:{k}").as_bytes()) < 512)
        .expect("some key hashes there");
    let mut s = raw(proxy).await;
    let event = "__keyevent@0__:set";
    let space = format!("__keyspace@0__:{high}");
    assert_eq!(
        s.call(&["SUBSCRIBE", event]).await,
        confirm("subscribe", event, 1)
    );
    assert_eq!(
        s.call(&["SUBSCRIBE", &space]).await,
        confirm("subscribe", &space, 2)
    );

    for key in [&low, &high] {
        assert_eq!(cmd.call(&["SET", key, "1"]).await, Resp::Simple("OK".into()));
    }
    // One `set` event per key, from either group, and the keyspace event of
    // the second key; their order across groups is not defined.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(s.read_reply().await);
    }
    for want in [
        message(event, &low),
        message(event, &high),
        message(&space, "set"),
    ] {
        assert!(got.contains(&want), "{want:?} missing from {got:?}");
    }
}

/// An upstream subscriber that lost its connection while subscribed to
/// nothing stays away until a client subscribes again (it used to reconnect,
/// and warn, every 2 s for ever, however long the server refused it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_reconnects_only_when_asked_for_something() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (ch, _) = channel("idle", true);
    let master = c.masters[0].addr();
    // A routing change closes upstreams nobody uses: let the one that
    // follows the proxy's own registration (epoch 2) pass first, so that
    // nothing but the fix keeps the idle upstream away below.
    let topo = reborn::topo::watcher::load(&c.store).await.expect("topology");
    let admin: SocketAddr = topo.proxies[&proxy.to_string()]
        .admin_addr
        .parse()
        .expect("admin address");
    eventually(
        "the proxy routes by its registration",
        Duration::from_secs(5),
        || async move {
            let (_, body) = common::http::request(admin, "GET", "/stats", Vec::new()).await;
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["routing_epoch"].as_u64())
                .is_some_and(|e| e >= 2)
        },
    )
    .await;
    let mut s = raw(proxy).await;
    assert_eq!(s.call(&["SUBSCRIBE", &ch]).await, confirm("subscribe", &ch, 1));
    assert_eq!(
        s.call(&["UNSUBSCRIBE", &ch]).await,
        confirm("unsubscribe", &ch, 0)
    );
    eventually("upstream unsubscribed", Duration::from_secs(5), || {
        let (master, ch) = (master.clone(), ch.clone());
        async move { numsub_direct(&master, &ch).await == 0 }
    })
    .await;
    // The idle upstream: the connection whose last command was UNSUBSCRIBE.
    let mut control = client(master.parse().expect("addr")).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut control)
        .await
        .expect("list");
    let id = list
        .lines()
        .find(|l| l.contains("cmd=unsubscribe"))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("no idle upstream in {list}"))
        .to_string();
    // Every connection the server has but ours, by id.
    let me: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut control)
        .await
        .expect("id");
    let ids = async |c: &mut redis::aio::MultiplexedConnection| -> BTreeSet<i64> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(c)
            .await
            .expect("list");
        list.lines()
            .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("id=")))
            .filter_map(|id| id.parse().ok())
            .filter(|&id| id != me)
            .collect()
    };
    let before = ids(&mut control).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut control)
        .await
        .expect("kill");
    assert_eq!(killed, 1);
    // Longer than the longest backoff after a loss (2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let new: Vec<i64> = ids(&mut control).await.difference(&before).copied().collect();
    assert!(new.is_empty(), "the idle upstream came back: {new:?}");
    // Asked for something, it connects and serves.
    assert_eq!(s.call(&["SUBSCRIBE", &ch]).await, confirm("subscribe", &ch, 1));
    let mut publisher = raw(proxy).await;
    eventually("subscribed upstream again", Duration::from_secs(5), || {
        let (master, ch) = (master.clone(), ch.clone());
        async move { numsub_direct(&master, &ch).await >= 1 }
    })
    .await;
    assert_eq!(publisher.call(&["PUBLISH", &ch, "back"]).await, Resp::Int(1));
    assert_eq!(s.read_reply().await, message(&ch, "back"));
}
