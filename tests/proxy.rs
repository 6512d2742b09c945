//! Integration tests of `reborn proxy` against real redis-servers and a real
//! ZooKeeper: routing, multi-key splits, pipelining, blocking commands, failures,
//! bad input, live topology changes, AUTH, refused commands and shutdown.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reborn::libs::hash::slot_of;
use reborn::proxy::{Bound, ProxyConfig, ProxyError};
use reborn::topo::{Store, ZkConfig, operation};
use reborn::up::RedisServer;
use redis::AsyncCommands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Two groups (one master each), product initialised with slots 0-511 on group 1
/// and 512-1023 on group 2, and one proxy in-process.
struct Cluster {
    store: Store,
    masters: Vec<RedisServer>,
    proxy: SocketAddr,
    admin: SocketAddr,
    proxy_id: String,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), ProxyError>>>,
}

impl Cluster {
    async fn start() -> Cluster {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tune: impl FnOnce(&mut ProxyConfig)) -> Cluster {
        Self::build(None, tune).await
    }

    /// `backend_password` protects the redis-servers (`requirepass`).
    async fn build(backend_password: Option<&str>, tune: impl FnOnce(&mut ProxyConfig)) -> Cluster {
        let zk = ZkConfig {
            addr: common::zk(),
            root: common::unique_root(),
            product: "test".into(),
            session_timeout: Duration::from_secs(4),
        };
        let masters = match backend_password {
            None => vec![common::redis(), common::redis()],
            Some(pw) => vec![common::redis_with_password(pw), common::redis_with_password(pw)],
        };
        let store = Store::connect(&zk).await.expect("zk connect");
        common::cluster::seed_two_groups(&store, &masters).await;
        let mut cfg = ProxyConfig {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            zk: zk.clone(),
            backend_auth: backend_password.unwrap_or_default().to_string(),
            ..ProxyConfig::default()
        };
        tune(&mut cfg);
        let bound = Bound::bind(cfg).await.expect("bind");
        let proxy = bound.local_addr().expect("addr");
        let admin = bound.admin_addr().expect("admin addr");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(bound.run(cancel.clone()));
        let proxy_id = proxy.to_string();
        let cluster = Cluster {
            store,
            masters,
            proxy,
            admin,
            proxy_id,
            cancel,
            task: Some(task),
        };
        cluster.wait_registered(true).await;
        cluster
    }

    async fn wait_registered(&self, present: bool) {
        let path = self.store.paths().proxy(&self.proxy_id);
        common::eventually(
            &format!("proxy node {path} present={present}"),
            Duration::from_secs(10),
            async || self.store.exists(&path).await.unwrap_or(false) == present,
        )
        .await;
    }

    /// Waits until `n` clients are blocked (`BLPOP`, …) on the master that
    /// owns `key`.
    async fn wait_blocked_on_owner_of(&self, key: &str, n: i64) {
        let master = self.masters[group_of(key)].addr();
        common::eventually(
            &format!("{n} client(s) blocked on {master}, the owner of {key}"),
            Duration::from_secs(10),
            async || common::blocked_clients(&master).await == n,
        )
        .await;
    }

    /// Waits until one client per key of `keys` is blocked on each master.
    async fn wait_blocked_on_owners<'k>(&self, keys: impl Iterator<Item = &'k str> + Clone) {
        for g in 0..self.masters.len() {
            let n = keys.clone().filter(|k| group_of(k) == g).count() as i64;
            let key = keys.clone().find(|k| group_of(k) == g).unwrap_or("-");
            self.wait_blocked_on_owner_of(key, n).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.proxy)
    }

    async fn client(&self) -> redis::aio::MultiplexedConnection {
        let mut conn = redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to proxy");
        // redis-rs gives up on a reply after 500 ms by default; blocking
        // commands here wait for seconds on purpose.
        conn.set_response_timeout(Duration::from_secs(30));
        conn
    }

    /// A direct connection to the master of `group` (1-based).
    async fn direct(&self, group: usize) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://{}/", self.masters[group - 1].addr()))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    async fn shutdown(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("proxy run");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Sends `bytes` on a raw connection and reads until `expect` bytes arrived or the
/// peer closed.
async fn raw_exchange(stream: &mut TcpStream, bytes: &[u8], expect: usize) -> Vec<u8> {
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < expect {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_lands_on_the_master_that_owns_its_slot() {
    let c = Cluster::start().await;
    let mut p = c.client().await;
    let keys: Vec<String> = (0..400).map(|i| format!("key:{i}")).collect();
    for k in &keys {
        let _: () = p.set(k, k).await.expect("set");
    }
    let mut g1 = c.direct(1).await;
    let mut g2 = c.direct(2).await;
    let (mut on1, mut on2) = (0, 0);
    for k in &keys {
        let owner = if slot_of(k.as_bytes()) < 512 { 1 } else { 2 };
        let in1: Option<String> = g1.get(k).await.expect("get g1");
        let in2: Option<String> = g2.get(k).await.expect("get g2");
        if owner == 1 {
            assert_eq!(in1.as_deref(), Some(k.as_str()), "{k} missing on group 1");
            assert_eq!(in2, None, "{k} leaked to group 2");
            on1 += 1;
        } else {
            assert_eq!(in2.as_deref(), Some(k.as_str()), "{k} missing on group 2");
            assert_eq!(in1, None, "{k} leaked to group 1");
            on2 += 1;
        }
    }
    assert!(on1 > 100 && on2 > 100, "keys should spread: {on1}/{on2}");
    // Hashtags keep related keys together.
    let _: () = p.set("{user42}.name", "ann").await.expect("set");
    let _: () = p.set("{user42}.mail", "a@x").await.expect("set");
    let g = if slot_of(b"user42") < 512 {
        &mut g1
    } else {
        &mut g2
    };
    let both: Vec<Option<String>> = g.mget(&["{user42}.name", "{user42}.mail"]).await.expect("mget");
    assert_eq!(both, vec![Some("ann".into()), Some("a@x".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_commands_split_across_groups() {
    let c = Cluster::start().await;
    let mut p = c.client().await;
    // a→579 (group 2), b→1017 (group 2), c→879 (group 2), foo→289 (group 1).
    let pairs: Vec<(String, String)> = (0..50).map(|i| (format!("mk{i}"), format!("v{i}"))).collect();
    let _: () = p.mset(&pairs).await.expect("mset");
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let mut with_missing = keys.clone();
    with_missing.insert(7, "absent-key");
    let got: Vec<Option<String>> = p.mget(&with_missing).await.expect("mget");
    let mut want: Vec<Option<String>> = pairs.iter().map(|(_, v)| Some(v.clone())).collect();
    want.insert(7, None);
    assert_eq!(got, want, "MGET must keep key order across groups");
    let groups: std::collections::BTreeSet<bool> = keys.iter().map(|k| slot_of(k.as_bytes()) < 512).collect();
    assert_eq!(groups.len(), 2, "test keys must span both groups");

    let n: i64 = redis::cmd("EXISTS")
        .arg(&keys)
        .arg("absent-key")
        .query_async(&mut p)
        .await
        .expect("exists");
    assert_eq!(n, 50);
    let n: i64 = redis::cmd("TOUCH")
        .arg(&keys[..10])
        .query_async(&mut p)
        .await
        .expect("touch");
    assert_eq!(n, 10);
    let n: i64 = redis::cmd("UNLINK")
        .arg(&keys[..5])
        .query_async(&mut p)
        .await
        .expect("unlink");
    assert_eq!(n, 5);
    let n: i64 = redis::cmd("DEL")
        .arg(&keys)
        .arg("absent-key")
        .query_async(&mut p)
        .await
        .expect("del");
    assert_eq!(n, 45);
    let left: Vec<Option<String>> = p.mget(&keys).await.expect("mget");
    assert!(left.iter().all(Option::is_none));

    // Same-slot multi-key commands pass; cross-slot ones get CROSSSLOT.
    let _: () = p.set("{t}a", "1").await.expect("set");
    let _: () = redis::cmd("RENAME")
        .arg("{t}a")
        .arg("{t}b")
        .query_async(&mut p)
        .await
        .expect("rename");
    let v: String = p.get("{t}b").await.expect("get");
    assert_eq!(v, "1");
    let e = redis::cmd("RENAME")
        .arg("{t}b")
        .arg("other")
        .query_async::<()>(&mut p)
        .await
        .expect_err("cross-slot");
    assert!(e.to_string().to_uppercase().contains("CROSSSLOT"), "{e}");
    let e = redis::cmd("EVAL")
        .arg("return 1")
        .arg(2)
        .arg("a")
        .arg("foo")
        .query_async::<i64>(&mut p)
        .await
        .expect_err("x");
    assert!(e.to_string().to_uppercase().contains("CROSSSLOT"), "{e}");
    let v: String = redis::cmd("EVAL")
        .arg("return redis.call('get', KEYS[1])")
        .arg(1)
        .arg("{t}b")
        .query_async(&mut p)
        .await
        .expect("eval");
    assert_eq!(v, "1");

    // SORT's BY and GET patterns form keys the server looks up on itself:
    // with the sorted key's hashtag they work, without it they are refused,
    // as in Redis Cluster (they read keys of other groups as missing).
    let _: () = p.rpush("{t}ids", &[2, 1]).await.expect("rpush");
    for (k, v) in [
        ("{t}w_1", "10"),
        ("{t}w_2", "5"),
        ("{t}o_1", "x"),
        ("{t}o_2", "y"),
    ] {
        let _: () = p.set(k, v).await.expect("set");
    }
    let sorted: Vec<String> = redis::cmd("SORT")
        .arg(&["{t}ids", "BY", "{t}w_*", "GET", "{t}o_*"])
        .query_async(&mut p)
        .await
        .expect("sort");
    assert_eq!(sorted, ["y", "x"]);
    for pattern in [["BY", "w_*"], ["GET", "o_*"]] {
        let e = redis::cmd("SORT")
            .arg("{t}ids")
            .arg(&pattern)
            .query_async::<Vec<String>>(&mut p)
            .await
            .expect_err("a pattern of other slots");
        assert!(e.to_string().contains("option of SORT denied"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_pipelined_commands_come_back_in_order() {
    let c = Cluster::start().await;
    let mut s = TcpStream::connect(c.proxy).await.expect("connect");
    let n = 100_000;
    let mut req = Vec::with_capacity(n * 40);
    let mut expected = Vec::with_capacity(n * 12);
    for i in 0..n {
        let key = format!("pk{}", i % 1000);
        match i % 4 {
            0 => {
                let v = format!("{i}");
                req.extend_from_slice(
                    format!(
                        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{v}\r\n",
                        key.len(),
                        v.len()
                    )
                    .as_bytes(),
                );
                expected.extend_from_slice(b"+OK\r\n");
            }
            1 => {
                // GET of the key the previous command set, to value i-1: a reply
                // delivered out of order cannot match.
                let prev = format!("pk{}", (i - 1) % 1000);
                let v = format!("{}", i - 1);
                req.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n{prev}\r\n", prev.len()).as_bytes());
                expected.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
            }
            2 => {
                req.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
                expected.extend_from_slice(b"+PONG\r\n");
            }
            _ => {
                let e = format!("{i}");
                req.extend_from_slice(format!("*2\r\n$4\r\nECHO\r\n${}\r\n{e}\r\n", e.len()).as_bytes());
                expected.extend_from_slice(format!("${}\r\n{e}\r\n", e.len()).as_bytes());
            }
        }
    }
    let (mut rd, mut wr) = s.split();
    let writer = async {
        wr.write_all(&req).await.expect("write pipeline");
    };
    let reader = async {
        let mut got = Vec::with_capacity(expected.len());
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < expected.len() {
            let n = tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf))
                .await
                .expect("replies stalled")
                .expect("read");
            assert!(n > 0, "proxy closed the connection after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "replies out of order or wrong");
    s.shutdown().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_does_not_stall_other_clients() {
    let c = Cluster::start().await;
    let mut blocker = c.client().await;
    let started = Instant::now();
    let blpop = tokio::spawn(async move {
        let r: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("queue")
            .arg(5)
            .query_async(&mut blocker)
            .await
            .expect("blpop");
        r
    });
    c.wait_blocked_on_owner_of("queue", 1).await;
    // Every key of group 1 and 2 shares the proxy's backend connections with the
    // blocked client's keys; none of them may wait behind the BLPOP.
    let mut other = c.client().await;
    let mut worst = Duration::ZERO;
    for i in 0..200 {
        let t = Instant::now();
        let _: () = other.set(format!("o{i}"), i).await.expect("set");
        let _: i64 = other.get(format!("o{i}")).await.expect("get");
        worst = worst.max(t.elapsed() / 2);
    }
    assert!(
        worst < Duration::from_millis(10),
        "a reply took {worst:?} while BLPOP waited"
    );
    let r = blpop.await.expect("join");
    assert_eq!(r, None, "BLPOP should time out with nil");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4900),
        "BLPOP returned early: {waited:?}"
    );

    // And a BLPOP that is served gets its value.
    let mut a = c.client().await;
    let waiter = tokio::spawn(async move {
        let r: (String, String) = redis::cmd("BLPOP")
            .arg("q2")
            .arg(5)
            .query_async(&mut a)
            .await
            .expect("blpop");
        r
    });
    // Pushed only once the BLPOP waits: it must be woken, not find the value.
    c.wait_blocked_on_owner_of("q2", 1).await;
    let _: i64 = other.rpush("q2", "hello").await.expect("rpush");
    assert_eq!(
        waiter.await.expect("join"),
        ("q2".to_string(), "hello".to_string())
    );
}

/// The time a client spends blocked (BLPOP, XREAD … BLOCK, WAIT) is its own
/// choice of waiting, not proxy latency: such calls are counted, but their
/// wait stays out of the percentiles, the histogram and the command's µs, as
/// Redis's commandstats leave it out. (The job role's `XREADGROUP … BLOCK
/// 2000` once put 2 s into every p99 of an idle cluster.) A non-blocking XREAD
/// and a BLPOP queued in MULTI do not block, and are timed as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_spent_blocked_is_counted_but_is_not_latency() {
    let c = Cluster::start().await;
    let mut p = c.client().await;
    for i in 0..20 {
        let _: () = p.set(format!("k{i}"), i).await.expect("set");
    }
    let _: String = redis::cmd("XADD")
        .arg("s")
        .arg("*")
        .arg("f")
        .arg("v")
        .query_async(&mut p)
        .await
        .expect("xadd");
    let _: redis::Value = redis::cmd("XREAD")
        .arg("STREAMS")
        .arg("s")
        .arg("0")
        .query_async(&mut p)
        .await
        .expect("xread");
    let queued: redis::Value = redis::pipe()
        .atomic()
        .cmd("BLPOP")
        .arg("empty")
        .arg(1)
        .query_async(&mut p)
        .await
        .expect("BLPOP in MULTI");
    assert_eq!(queued, redis::Value::Array(vec![redis::Value::Nil]));

    // Three clients wait a second each, at once: for a list, for a stream,
    // and for replicas no group has.
    let started = Instant::now();
    let blpop = async {
        let mut conn = c.client().await;
        let r: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("empty")
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("blpop");
        r
    };
    let xread = async {
        let mut conn = c.client().await;
        let r: redis::Value = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg("s")
            .arg("$")
            .query_async(&mut conn)
            .await
            .expect("xread block");
        r
    };
    let wait = async {
        let mut conn = c.client().await;
        let r: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("wait");
        r
    };
    let (b, x, w) = tokio::join!(blpop, xread, wait);
    assert_eq!((b, x, w), (None, redis::Value::Nil, 0), "each one timed out");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(950), "returned early: {waited:?}");

    // Replies are counted right after they are written: the client may read
    // one before then.
    let command = |stats: &serde_json::Value, name: &str| {
        stats["commands"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    let stats = common::eventually_some(
        "the blocking calls in /stats",
        Duration::from_secs(10),
        async || {
            let body = common::http::get_text(c.admin, "/stats").await;
            let stats: serde_json::Value = serde_json::from_str(&body).ok()?;
            let counted = [("blpop", 2), ("xread", 2), ("wait", 1)]
                .iter()
                .all(|&(name, n)| command(&stats, name)["calls"] == n);
            counted.then_some(stats)
        },
    )
    .await;
    // Well under the second each of the three waited.
    let under = 900_000;
    let p99 = stats["latency_us"]["p99"].as_u64().expect("p99");
    assert!(p99 < under, "p99 {p99} µs counts a blocked wait: {stats}");
    let buckets = stats["latency_buckets"].as_array().expect("histogram");
    assert!(
        buckets
            .iter()
            .all(|b| b[0].as_u64().is_some_and(|bound| bound < under)),
        "a blocked wait is in the histogram: {stats}"
    );
    let timed: u64 = buckets.iter().filter_map(|b| b[1].as_u64()).sum();
    let ops = stats["ops_total"].as_u64().expect("ops_total");
    assert_eq!(ops - timed, 3, "all counted, three not timed: {stats}");
    let blpop = command(&stats, "blpop");
    assert_eq!(blpop["blocking_calls"], 1, "{blpop}");
    let queued_us = blpop["usecs"].as_u64().expect("usecs");
    assert!(
        queued_us > 0 && queued_us < under,
        "the queued BLPOP is timed: {blpop}"
    );
    let xread = command(&stats, "xread");
    assert_eq!(xread["blocking_calls"], 1, "{xread}");
    let plain_us = xread["usecs"].as_u64().expect("usecs");
    assert!(
        plain_us > 0 && plain_us < under,
        "the plain XREAD is timed: {xread}"
    );
    assert_eq!(xread["usecs_per_call"].as_f64(), Some(plain_us as f64), "{xread}");
    let wait = command(&stats, "wait");
    assert_eq!(
        (&wait["blocking_calls"], &wait["usecs"]),
        (&1.into(), &0.into()),
        "{wait}"
    );
    // INFO through the proxy reads the same figures.
    let info_p99 = common::info_number(&c.proxy.to_string(), "stats", "latency_p99_us").await;
    assert!(info_p99 < under as i64, "INFO latency_p99_us {info_p99}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_fails_fast_for_its_group_only_and_recovers() {
    let mut c = Cluster::start().await;
    let mut p = c.client().await;
    let k1 = "foo"; // slot 289, group 1
    let k2 = "a"; // slot 579, group 2
    assert!(slot_of(k1.as_bytes()) < 512 && slot_of(k2.as_bytes()) >= 512);
    let _: () = p.set(k1, 1).await.expect("set");
    let _: () = p.set(k2, 2).await.expect("set");
    c.masters[0].kill();
    // The first request may be the one that discovers the loss; all must be fast.
    for _ in 0..20 {
        let t = Instant::now();
        let e = p.get::<_, String>(k1).await.expect_err("group 1 is down");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "error took {:?}",
            t.elapsed()
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&c.masters[0].addr()),
            "error must name the backend: {msg}"
        );
        let t = Instant::now();
        let v: i64 = p.get(k2).await.expect("group 2 unaffected");
        assert_eq!(v, 2);
        assert!(t.elapsed() < Duration::from_millis(100));
    }
    c.masters[0].restart().expect("restart");
    common::eventually_ok("group 1 recovers", Duration::from_secs(10), async || {
        p.set::<_, _, ()>(k1, 3).await
    })
    .await;
    let v: i64 = p.get(k1).await.expect("get after recovery");
    assert_eq!(v, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_huge_lengths_are_refused_without_hurting_others() {
    let c = Cluster::start().await;
    let mut good = c.client().await;
    let _: () = good.set("stable", "yes").await.expect("set");

    let mut g = TcpStream::connect(c.proxy).await.expect("connect");
    let out = raw_exchange(
        &mut g,
        b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1099511627776\r\n",
        1 << 20,
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("+PONG\r\n-ERR Protocol error: invalid bulk length"),
        "{text:?}"
    );

    let mut g = TcpStream::connect(c.proxy).await.expect("connect");
    let out = raw_exchange(
        &mut g,
        b"*1\r\n$4\r\nPING\r\n*2\r\n:1\r\n\x00\xff garbage\r\n",
        1 << 20,
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("+PONG\r\n-ERR Protocol error"), "{text:?}");

    let mut g = TcpStream::connect(c.proxy).await.expect("connect");
    let out = raw_exchange(&mut g, &[b'*'; 200], 1 << 20).await;
    assert!(String::from_utf8_lossy(&out).starts_with("-ERR Protocol error"));

    // Inline commands work as in Redis; unknown commands keep the connection.
    let mut t = TcpStream::connect(c.proxy).await.expect("connect");
    let out = raw_exchange(&mut t, b"PING\r\nNOSUCH a b\r\nGET stable\r\n", 80).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(
        text,
        "+PONG\r\n-ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b' \r\n$3\r\nyes\r\n"
    );

    let v: String = good.get("stable").await.expect("good client unaffected");
    assert_eq!(v, "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_reassignment_is_seen_live() {
    let c = Cluster::start().await;
    let mut p = c.client().await;
    let key = "foo"; // slot 289, group 1
    let _: () = p.set(key, "on-g1").await.expect("set");
    // Reassign the slot to group 2 (no data moves: setup-only operation). The
    // clock starts once ZooKeeper holds the change: what is measured is how
    // fast it reaches the proxy, not how long the locked write took.
    operation::assign_slots(&c.store, 289, 289, 2)
        .await
        .expect("assign");
    let t = Instant::now();
    // Served by group 2, which never had the key, once the proxy saw it.
    common::eventually("the proxy sees the change", Duration::from_secs(2), async || {
        p.get::<_, Option<String>>(key).await.expect("get").is_none()
    })
    .await;
    let seen = t.elapsed();
    assert!(
        seen < Duration::from_secs(1),
        "change took {seen:?} to reach the proxy"
    );
    let _: () = p.set(key, "on-g2").await.expect("set");
    let mut g2 = c.direct(2).await;
    let v: String = g2.get(key).await.expect("direct get");
    assert_eq!(v, "on-g2");

    // Unassigned slots and an offline proxy give clear errors.
    operation::assign_slots(&c.store, 289, 289, 0)
        .await
        .expect("unassign");
    let e = common::eventually_some(
        "the proxy sees slot 289 unassigned",
        Duration::from_secs(5),
        async || p.get::<_, Option<String>>(key).await.err(),
    )
    .await;
    assert!(e.to_string().contains("slot 289 is not assigned"), "{e}");
    let marked = operation::set_proxy_online(&c.store, &c.proxy_id, false)
        .await
        .expect("offline");
    assert!(marked.running, "the proxy is registered");
    assert_eq!(marked.to_string(), format!("proxy {} set offline", c.proxy_id));
    let e = common::eventually_some(
        "the proxy sees itself offline",
        Duration::from_secs(5),
        async || p.get::<_, Option<String>>("a").await.err(),
    )
    .await;
    assert!(e.to_string().contains("is offline"), "{e}");
    let pong: String = redis::cmd("PING")
        .query_async(&mut p)
        .await
        .expect("ping still local");
    assert_eq!(pong, "PONG");
    operation::set_proxy_online(&c.store, &c.proxy_id, true)
        .await
        .expect("online");
    common::eventually_ok(
        "the proxy serves again once online",
        Duration::from_secs(5),
        async || p.get::<_, Option<String>>("a").await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_local_commands() {
    let c = Cluster::start_with(|cfg| cfg.auth = "s3cret".into()).await;
    let mut s = TcpStream::connect(c.proxy).await.expect("connect");
    let out = raw_exchange(&mut s, b"GET k\r\n", 40).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "-NOAUTH Authentication required.\r\n"
    );
    let out = raw_exchange(&mut s, b"AUTH wrong\r\n", 20).await;
    assert!(String::from_utf8_lossy(&out).starts_with("-WRONGPASS"));
    let out = raw_exchange(&mut s, b"AUTH s3cret\r\nSET k v\r\nGET k\r\n", 17).await;
    assert_eq!(String::from_utf8_lossy(&out), "+OK\r\n+OK\r\n$1\r\nv\r\n");

    let url = format!("redis://:s3cret@{}/", c.proxy);
    let mut p = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("auth via url");
    let v: String = p.get("k").await.expect("get");
    assert_eq!(v, "v");
    let e = redis::cmd("SELECT")
        .arg(1)
        .query_async::<()>(&mut p)
        .await
        .expect_err("db 1");
    assert!(e.to_string().contains("db 0 only"), "{e}");
    let _: () = redis::cmd("SELECT")
        .arg(0)
        .query_async(&mut p)
        .await
        .expect("select 0");
    // HELLO 3 works (tests/resp3.rs); an unknown version gets NOPROTO.
    let e = redis::cmd("HELLO")
        .arg(4)
        .query_async::<redis::Value>(&mut p)
        .await
        .expect_err("resp4");
    assert!(e.to_string().contains("NOPROTO"), "{e}");
    let _: redis::Value = redis::cmd("HELLO")
        .arg(2)
        .query_async(&mut p)
        .await
        .expect("hello 2");
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("tester")
        .query_async(&mut p)
        .await
        .expect("setname");
    let name: String = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query_async(&mut p)
        .await
        .expect("getname");
    assert_eq!(name, "tester");
    let info: String = redis::cmd("INFO").query_async(&mut p).await.expect("info");
    assert!(
        info.contains("reborn_version:") && info.contains("connected_clients:"),
        "{info}"
    );
    let n: i64 = redis::cmd("COMMAND")
        .arg("COUNT")
        .query_async(&mut p)
        .await
        .expect("command count");
    assert!(n > 200);
    let keys: Vec<String> = redis::cmd("COMMAND")
        .arg("GETKEYS")
        .arg("MSET")
        .arg("a")
        .arg("1")
        .arg("b")
        .arg("2")
        .query_async(&mut p)
        .await
        .expect("getkeys");
    assert_eq!(keys, ["a", "b"]);
    let echo: String = redis::cmd("ECHO")
        .arg("hi")
        .query_async(&mut p)
        .await
        .expect("echo");
    assert_eq!(echo, "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_get_a_clear_error_and_keep_the_connection() {
    let c = Cluster::start().await;
    let mut p = c.client().await;
    for cmd in [
        "SHUTDOWN",
        "DEBUG SLEEP 0",
        "MONITOR",
        "SYNC",
        "PSYNC ? -1",
        "REPLICAOF NO ONE",
        "CLUSTER INFO",
        "MIGRATE 127.0.0.1 1 k 0 10",
    ] {
        let mut parts = cmd.split(' ');
        let name = parts.next().expect("name");
        let mut c = redis::cmd(name);
        for a in parts {
            c.arg(a);
        }
        let e = c.query_async::<redis::Value>(&mut p).await.expect_err(cmd);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("'{name}'")) && msg.contains("reborn proxy"),
            "{cmd}: {msg}"
        );
    }
    let pong: String = redis::cmd("PING")
        .query_async(&mut p)
        .await
        .expect("connection still open");
    assert_eq!(pong, "PONG");
    // The backends were not touched: a refused SHUTDOWN left group 1 serving.
    let _: () = p.set("foo", "still-here").await.expect("set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_removes_the_node_and_drains() {
    let mut c = Cluster::start().await;
    let mut p = c.client().await;
    let _: () = p.set("foo", "1").await.expect("set");
    // A stats endpoint is up while serving.
    let body = common::http::get_text(c.admin, "/stats").await;
    assert!(
        body.contains("\"ops_total\"") && body.contains("\"latency_us\""),
        "{body}"
    );
    let metrics = common::http::get_text(c.admin, "/metrics").await;
    for line in [
        "# TYPE reborn_proxy_ops_total counter",
        "reborn_proxy_command_calls_total{cmd=\"set\"} 1",
        "reborn_proxy_latency_us{quantile=\"0.99\"}",
        "reborn_proxy_online 1",
        "reborn_proxy_backend_up{addr=",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in {metrics}");
    }
    // The log-level switch accepts a filter and refuses garbage.
    reborn::libs::logging::init("warn");
    let put = |path: &'static str| common::http::request(c.admin, "PUT", path, Vec::new());
    assert_eq!(put("/loglevel/info").await.0, 200);
    assert_eq!(put("/loglevel/a=b=c").await.0, 400);
    // A typo is not a target name that silences everything else.
    let (status, body) = put("/loglevel/degub").await;
    assert!(
        status == 400 && String::from_utf8_lossy(&body).contains("degub"),
        "{status} {body:?}"
    );
    assert_eq!(put("/loglevel/debug").await.0, 200);
    let mut raw = TcpStream::connect(c.proxy).await.expect("connect");
    assert_eq!(raw_exchange(&mut raw, b"PING\r\n", 7).await, b"+PONG\r\n");
    c.shutdown().await;
    let path = c.store.paths().proxy(&c.proxy_id);
    assert!(
        !c.store.exists(&path).await.expect("exists"),
        "proxy node left behind after shutdown"
    );
    // The drained session was closed by the proxy, not left hanging. (A fresh
    // connect is not asserted to fail: a parallel test may already have been
    // given the freed ephemeral port.)
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(2), raw.read(&mut buf))
        .await
        .expect("session not closed after shutdown")
        .unwrap_or(0);
    assert_eq!(n, 0, "session still open after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_without_reading_is_slowed_not_dropped() {
    let c = Cluster::start_with(|cfg| cfg.max_pipeline = 64).await;
    let mut s = TcpStream::connect(c.proxy).await.expect("connect");
    let n = 50_000;
    let req = b"*2\r\n$4\r\nINCR\r\n$3\r\nfoo\r\n".repeat(n);
    // Write everything before reading anything: the proxy must stop reading
    // (back-pressure) rather than buffer without bound or disconnect.
    let (mut rd, mut wr) = s.split();
    let writer = async {
        wr.write_all(&req).await.expect("write");
    };
    let reader = async {
        // A client that does not read for a while, on purpose: a duration, not
        // a condition (the proxy gives no sign of having stopped reading).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut lines = 0;
        while lines < n {
            let k = tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf))
                .await
                .expect("stalled")
                .expect("read");
            assert!(k > 0, "disconnected after {lines} replies");
            got.extend_from_slice(&buf[..k]);
            lines = got.iter().filter(|&&b| b == b'\n').count();
        }
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    let last = String::from_utf8_lossy(&got);
    assert!(last.ends_with(&format!(":{n}\r\n")), "last reply should be :{n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_password_is_sent_to_every_group() {
    let c = Cluster::build(Some("backend-pw"), |_| {}).await;
    let mut p = c.client().await;
    // foo → group 1, a → group 2: both groups require the password.
    let _: () = p.set("foo", "1").await.expect("set on group 1 through AUTH");
    let _: () = p.set("a", "2").await.expect("set on group 2 through AUTH");
    let got: Vec<String> = p.mget(&["foo", "a"]).await.expect("mget");
    assert_eq!(got, ["1", "2"]);
    // Without the password the backends refuse: the proxy really authenticated.
    let mut raw = TcpStream::connect(c.masters[0].addr()).await.expect("connect");
    let out = raw_exchange(&mut raw, b"GET foo\r\n", 8).await;
    assert!(String::from_utf8_lossy(&out).starts_with("-NOAUTH"), "{out:?}");
}

/// The error a `GET foo` through `proxy` gets once it contains `marker`.
/// The first request may race the failing handshake; a retry sees the error.
async fn backend_error(proxy: SocketAddr, marker: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    common::eventually_ok(
        "the backend's error is reported",
        Duration::from_secs(5),
        async || {
            let out = raw_exchange(&mut s, b"GET foo\r\n", 10).await;
            let text = String::from_utf8_lossy(&out).into_owned();
            if text.contains(marker) {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_backend_password_gives_a_clear_error() {
    let c = Cluster::build(Some("right"), |cfg| cfg.backend_auth = "wrong".into()).await;
    let text = backend_error(c.proxy, "AUTH failed").await;
    assert!(text.contains(&c.masters[0].addr()), "{text}");
}

/// Servers that want a password the proxy was not given: the backend is
/// down with the server's `NOAUTH` as the reason, not up with every request
/// failing (before, the proxy saw no error in its handshake and logged the
/// backend "connected again").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_backend_password_gives_a_clear_error() {
    let c = Cluster::build(Some("right"), |cfg| cfg.backend_auth = String::new()).await;
    let text = backend_error(c.proxy, "is down").await;
    let want = format!(
        "-ERR backend {} is down: PING failed: -NOAUTH",
        c.masters[0].addr()
    );
    assert!(text.starts_with(&want), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_refuses_the_extra_client_only() {
    let c = Cluster::start_with(|cfg| cfg.max_clients = 2).await;
    let mut a = TcpStream::connect(c.proxy).await.expect("a");
    let mut b = TcpStream::connect(c.proxy).await.expect("b");
    assert_eq!(raw_exchange(&mut a, b"PING\r\n", 7).await, b"+PONG\r\n");
    assert_eq!(raw_exchange(&mut b, b"PING\r\n", 7).await, b"+PONG\r\n");
    let mut extra = TcpStream::connect(c.proxy).await.expect("extra");
    let out = raw_exchange(&mut extra, b"PING\r\n", 1 << 10).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "-ERR max number of clients reached\r\n"
    );
    assert_eq!(raw_exchange(&mut a, b"PING\r\n", 7).await, b"+PONG\r\n");
    drop(b);
    // The slot frees once the session ends.
    common::eventually("the slot frees", Duration::from_secs(5), async || {
        let mut again = TcpStream::connect(c.proxy).await.expect("again");
        raw_exchange(&mut again, b"PING\r\n", 7).await == b"+PONG\r\n"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_but_blocked_ones_are_not() {
    let c = Cluster::start_with(|cfg| cfg.idle_timeout = Duration::from_millis(300)).await;
    let mut idle = TcpStream::connect(c.proxy).await.expect("connect");
    assert_eq!(raw_exchange(&mut idle, b"PING\r\n", 7).await, b"+PONG\r\n");
    let mut blocked = TcpStream::connect(c.proxy).await.expect("connect");
    blocked.write_all(b"BLPOP never 1\r\n").await.expect("write");
    c.wait_blocked_on_owner_of("never", 1).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "idle client should be closed");
    // The blocked client got its nil after 1 s, not a disconnect at 300 ms.
    let out = raw_exchange(&mut blocked, b"", 5).await;
    assert_eq!(out, b"*-1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_pass_through_intact() {
    let c = Cluster::start().await;
    let mut p = c.client().await;
    // 8 MiB arrives in many reads on both sides of the proxy.
    let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let _: () = p.set("big:a", &big).await.expect("set big");
    let _: () = p.set("big:b", &big[..1000]).await.expect("set small");
    let back: Vec<u8> = p.get("big:a").await.expect("get big");
    assert!(back == big, "8 MiB value corrupted");
    let both: Vec<Vec<u8>> = p.mget(&["big:a", "big:b"]).await.expect("mget");
    assert_eq!(both.len(), 2);
    assert!(both[0] == big && both[1] == big[..1000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_cut_off_from_zookeeper_stops_before_its_session_can_expire() {
    let relay = common::relay::Relay::start(common::zk()).await;
    let timeout = Duration::from_secs(2);
    let hold = Duration::from_millis(500);
    let c = Cluster::start_with(|cfg| {
        cfg.zk.addr = relay.addr.to_string();
        cfg.zk.session_timeout = timeout;
        cfg.hold_timeout = hold;
    })
    .await;
    let mut p = c.client().await;
    let _: () = p.set("foo", "on-g1").await.expect("set"); // slot 289: group 1

    relay.cut();
    let cut = Instant::now();
    let refused_at = loop {
        let sent = cut.elapsed();
        match p.get::<_, Option<String>>("foo").await {
            // No answer from the old table once the session may be gone.
            Ok(_) => assert!(
                cut.elapsed() < timeout,
                "still serving {:?} after the cut",
                cut.elapsed()
            ),
            Err(e) => {
                assert!(e.to_string().contains("cannot reach ZooKeeper"), "{e}");
                // Held for the lease first, refused only when the hold ran out.
                let waited = cut.elapsed() - sent;
                assert!(
                    waited >= hold - Duration::from_millis(50),
                    "refused after {waited:?}"
                );
                break sent;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused_at < timeout,
        "a request sent {refused_at:?} after the cut was still served"
    );
    let pong: String = redis::cmd("PING")
        .query_async(&mut p)
        .await
        .expect("local commands still answered");
    assert_eq!(pong, "PONG");

    // While the proxy cannot see ZooKeeper, slot 289 moves to group 2. Wait until
    // its session is certainly gone (the server removed its ephemeral node).
    operation::assign_slots(&c.store, 289, 289, 2)
        .await
        .expect("reassign");
    c.wait_registered(false).await;
    relay.restore();

    // It comes back on a new session and must resync before serving: the first
    // successful read comes from group 2, which never had the key.
    let v = common::eventually_ok("served again", Duration::from_secs(15), async || {
        p.get::<_, Option<String>>("foo").await
    })
    .await;
    assert_eq!(v, None, "served from the stale table after the cut");
    c.wait_registered(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_zookeeper_stall_costs_clients_latency_not_errors() {
    let relay = common::relay::Relay::start(common::zk()).await;
    let timeout = Duration::from_secs(2);
    let c = Cluster::start_with(|cfg| {
        cfg.zk.addr = relay.addr.to_string();
        cfg.zk.session_timeout = timeout;
        cfg.hold_timeout = Duration::from_secs(10);
    })
    .await;
    let mut p = c.client().await;
    let _: () = p.set("foo", "kept").await.expect("set");

    // Cut long enough for the lease (2/3 of the session) to lapse for sure.
    relay.cut();
    tokio::time::sleep(timeout).await;
    let sent = Instant::now();
    let get = tokio::spawn(async move { p.get::<_, Option<String>>("foo").await });
    let stall = Duration::from_millis(700);
    tokio::time::sleep(stall).await;
    assert!(
        !get.is_finished(),
        "answered while the proxy could not prove its session"
    );
    relay.restore();
    let got = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .expect("answered once ZooKeeper is back")
        .expect("task");
    assert_eq!(got.expect("held, not refused").as_deref(), Some("kept"));
    assert!(sent.elapsed() >= stall, "not held: {:?}", sent.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_zookeeper_keeps_the_lease() {
    let relay = common::relay::Relay::start(common::zk()).await;
    let c = Cluster::start_with(|cfg| {
        cfg.zk.addr = relay.addr.to_string();
        cfg.zk.session_timeout = Duration::from_secs(2);
        // A held request would hide a lapse: refuse at once instead.
        cfg.hold_timeout = Duration::ZERO;
    })
    .await;
    let mut p = c.client().await;
    // Every ZooKeeper answer now takes 600 ms, longer than the probe period
    // (333 ms) but well within the session (2 s): the session lives, and so
    // must the lease.
    relay.slow_down(Duration::from_millis(300));
    let until = Instant::now() + Duration::from_secs(4);
    let mut n = 0u64;
    while Instant::now() < until {
        let _: () = p
            .set("foo", n)
            .await
            .unwrap_or_else(|e| panic!("request {n} refused with a slow ZooKeeper: {e}"));
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.slow_down(Duration::ZERO);
    assert!(n > 100, "only {n} requests");
}

/// Puts slot `slot` into `migrate` from group `from` to group `to`, as the
/// dashboard's migration will (written directly here: the action protocol that
/// drives it is a later step).
/// Puts the slot of `{foo}` in `migrate` from group 1 to group 2 and waits
/// until the proxy serves it so: a key only the target (`g2`) holds shows
/// through `p`.
async fn migrating_foo(
    c: &Cluster,
    p: &mut redis::aio::MultiplexedConnection,
    g2: &mut redis::aio::MultiplexedConnection,
) {
    set_migrating(&c.store, slot_of(b"foo"), 1, 2).await;
    let _: () = g2.set("{foo}probe", "t").await.expect("set");
    common::eventually(
        "the proxy serves the slot as migrating",
        Duration::from_secs(3),
        async || {
            p.get::<_, Option<String>>("{foo}probe")
                .await
                .expect("get")
                .is_some()
        },
    )
    .await;
}

async fn set_migrating(store: &Store, slot: u16, from: u32, to: u32) {
    use reborn::topo::model::{SlotState, SlotTable};
    let path = store.paths().slots();
    let (mut table, version) = store
        .get_json_with_version::<SlotTable>(&path)
        .await
        .expect("read slots");
    let s = table.get_mut(slot).expect("slot");
    s.group = to;
    s.from = Some(from);
    s.state = SlotState::Migrate;
    store.set_json(&path, &table, version).await.expect("write slots");
}

async fn migrate_on_access(backend_password: Option<&str>) {
    let c = Cluster::build(backend_password, |_| {}).await;
    let mut p = c.client().await;
    let slot = slot_of(b"foo");
    assert!(slot < 512, "{{foo}} keys live on group 1");
    let names: Vec<String> = (0..20).map(|i| format!("{{foo}}k{i}")).collect();
    for n in &names {
        let _: () = p.set(n, n).await.expect("set");
    }
    let _: () = p.set("{foo}n", 1000).await.expect("set counter");
    let _: () = p.set("{foo}untouched", "stay").await.expect("set");

    set_migrating(&c.store, slot, 1, 2).await;
    let auth = |pw: Option<&str>| pw.map(|p| format!(":{p}@")).unwrap_or_default();
    let direct = |i: usize| {
        let url = format!("redis://{}{}/", auth(backend_password), c.masters[i - 1].addr());
        async move {
            redis::Client::open(url)
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("direct")
        }
    };
    let (mut g1, mut g2) = (direct(1).await, direct(2).await);
    // Wait until the proxy serves the slot as migrating: INCRBY keeps the
    // MIGRATE-first path (its reply must not pass through Lua), so it moves
    // the counter to the target.
    common::eventually(
        "the proxy migrates on access",
        Duration::from_secs(3),
        async || {
            let v: i64 = p.incr("{foo}n", 0).await.expect("incrby 0");
            assert_eq!(v, 1000);
            g2.exists::<_, bool>("{foo}n").await.expect("exists")
        },
    )
    .await;
    assert!(
        !g1.exists::<_, bool>("{foo}n").await.expect("exists"),
        "source kept the key"
    );

    // Pipelined writes of one client stay in order and exact.
    let mut pipe = redis::pipe();
    for _ in 0..200 {
        pipe.incr("{foo}n", 1);
    }
    let counts: Vec<i64> = pipe.query_async(&mut p).await.expect("pipelined incr");
    assert_eq!(counts, (1001..=1200).collect::<Vec<i64>>());

    // A key the source still holds is read and written there (source call),
    // and stays until the migrator moves it.
    let v: String = p.get(&names[0]).await.expect("get");
    assert_eq!(v, names[0]);
    let _: () = p.set(&names[1], "changed").await.expect("set on the source");
    for n in &names[..2] {
        assert!(
            g1.exists::<_, bool>(n).await.expect("exists"),
            "{n} left the source"
        );
        assert!(
            !g2.exists::<_, bool>(n).await.expect("exists"),
            "{n} copied early"
        );
    }
    let on_source: String = g1.get(&names[1]).await.expect("get");
    assert_eq!(on_source, "changed");

    // A request whose keys are partly on the source moves them first.
    let _: () = p
        .mset(&[(names[2].as_str(), "x"), ("{foo}fresh", "y")])
        .await
        .expect("mset");
    for n in [names[2].as_str(), "{foo}fresh"] {
        assert!(
            !g1.exists::<_, bool>(n).await.expect("exists"),
            "{n} on the source"
        );
        assert!(
            g2.exists::<_, bool>(n).await.expect("exists"),
            "{n} not on the target"
        );
    }
    // A new key is written to the target.
    let _: () = p.set("{foo}new", "x").await.expect("set new");
    assert!(g2.exists::<_, bool>("{foo}new").await.expect("exists"));
    assert!(!g1.exists::<_, bool>("{foo}new").await.expect("exists"));
    // The proxy now knows that key left (never to return) the source: further
    // requests for it, and for the counter MIGRATE moved, skip the source.
    let source_calls = async |g: &mut redis::aio::MultiplexedConnection| -> (u64, u64) {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(g)
            .await
            .expect("info");
        let calls = |cmd: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
                .and_then(|rest| rest.split(',').next()?.parse().ok())
                .unwrap_or(0)
        };
        (calls("eval") + calls("evalsha"), calls("migrate"))
    };
    let before = source_calls(&mut g1).await;
    for _ in 0..20 {
        let v: String = p.get("{foo}new").await.expect("get");
        assert_eq!(v, "x");
        let _: i64 = p.incr("{foo}n", 1).await.expect("incr");
    }
    let n: i64 = g2.get("{foo}n").await.expect("counter on the target");
    assert_eq!(n, 1220);
    assert_eq!(source_calls(&mut g1).await, before, "the source was asked again");

    // A multi-key read spanning both servers of the slot and another group.
    let _: () = p.set("a", "other").await.expect("set a"); // slot 579: group 2, not migrating
    let mut keys: Vec<&str> = names.iter().map(String::as_str).collect();
    keys.push("a");
    let got: Vec<String> = p.mget(&keys).await.expect("mget");
    let mut want: Vec<String> = names.clone();
    want[1] = "changed".into();
    want[2] = "x".into();
    want.push("other".into());
    assert_eq!(got, want);
    let stay: String = p.get("{foo}untouched").await.expect("get");
    assert_eq!(stay, "stay");
    assert!(g1.exists::<_, bool>("{foo}untouched").await.expect("exists"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_slot_serves_each_key_where_it_is() {
    migrate_on_access(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_on_access_authenticates_to_the_target() {
    migrate_on_access(Some("backend-pw")).await;
}

/// A key a client removes on the source while a mover's copy of it waits on
/// the target (the migrator restored its batch and has yet to send the
/// source's guarded `DEL`; a proxy copied it ahead of a move): the proxy
/// takes that copy back before it answers. Served from the target, where a
/// proxy looks for a key the source lacks, the copy would bring the key back,
/// and that read would also wear the mark that the mover's own take-back
/// looks for, so the key would stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_on_the_source_takes_a_movers_copy_on_the_target_with_it() {
    let c = Cluster::start().await;
    let mut p = c.client().await;
    let (mut g1, mut g2) = (c.direct(1).await, c.direct(2).await);
    let _: () = p.set("{foo}del", "a").await.expect("set");
    let _: () = p.set("{foo}getdel", "b").await.expect("set");
    let _: () = p.rpush("{foo}list", "x").await.expect("rpush");
    let _: () = p.sadd("{foo}set", &["m1", "m2"]).await.expect("sadd");
    migrating_foo(&c, &mut p, &mut g2).await;
    let keys: Vec<String> = ["del", "getdel", "list", "set"]
        .iter()
        .map(|k| format!("{{foo}}{k}"))
        .collect();
    let mut copies = redis::pipe();
    common::marked_copies(&mut copies, &mut g1, &keys).await;
    let () = copies.query_async(&mut g2).await.expect("the movers' copies");

    let deleted: i64 = p.del("{foo}del").await.expect("del");
    let got: Option<String> = redis::cmd("GETDEL")
        .arg("{foo}getdel")
        .query_async(&mut p)
        .await
        .expect("getdel");
    let popped: Option<String> = p.lpop("{foo}list", None).await.expect("lpop");
    let removed: i64 = p.srem("{foo}set", "m1").await.expect("srem");
    assert_eq!(
        (deleted, got.as_deref(), popped.as_deref(), removed),
        (1, Some("b"), Some("x"), 1)
    );

    // Each key reads as removed through the proxy, and is on neither master.
    let read: (Option<String>, Option<String>, i64) = redis::pipe()
        .get("{foo}del")
        .get("{foo}getdel")
        .llen("{foo}list")
        .query_async(&mut p)
        .await
        .expect("reads");
    assert_eq!(read, (None, None, 0), "a removed key came back");
    for k in &keys[..3] {
        for (g, conn) in [("source", &mut g1), ("target", &mut g2)] {
            assert!(
                !conn.exists::<_, bool>(k).await.expect("exists"),
                "{k} is still on the {g}"
            );
        }
    }
    // The set kept a member, so it stays on the source, and the mover's copy
    // on the target stays the mover's: unread, its mark intact.
    let members: Vec<String> = p.smembers("{foo}set").await.expect("smembers");
    assert_eq!(members, vec!["m2".to_string()]);
    assert!(g1.exists::<_, bool>("{foo}set").await.expect("exists"));
    let idle: i64 = redis::cmd("OBJECT")
        .arg("IDLETIME")
        .arg("{foo}set")
        .query_async(&mut g2)
        .await
        .expect("object idletime");
    let marked = reborn::libs::copy_mark::min_idle(Duration::ZERO);
    assert!(
        idle >= marked as i64,
        "the copy of a key still on the source was touched: idle {idle} s"
    );
}

/// A mover's copy that lands on the target after a client removed its key
/// through the proxy (the mover read the key just before) is taken back by
/// the next request for the key, of any client, before it is served: the
/// removal left a tombstone on the source (`libs::tombstone`), which the
/// proxy reads in its source call, or behind its `MIGRATE` when it moves the
/// keys instead. A key a client wrote since stays.
#[tokio::test]
async fn a_removed_keys_late_copy_is_taken_back_by_the_next_request_for_it() {
    let c = Cluster::start().await;
    let (mut p, mut q) = (c.client().await, c.client().await);
    let (mut g1, mut g2) = (c.direct(1).await, c.direct(2).await);
    let names = ["a", "b", "c", "d", "e", "f", "n", "g", "h"];
    let keys: Vec<String> = names.iter().map(|k| format!("{{foo}}{k}")).collect();
    for k in &keys {
        let _: () = p.set(k, format!("old {k}")).await.expect("set");
    }
    // A counter beyond the small integers Redis shares between keys, which
    // cannot carry a mover's mark (`copy_mark`).
    let _: () = p.set(&keys[6], 123_456).await.expect("set");
    let _: () = p.del(&keys[8]).await.expect("del");
    let _: () = p.rpush(&keys[8], "old item").await.expect("rpush");
    let _: () = p.set("{foo}live", "here").await.expect("set");
    migrating_foo(&c, &mut p, &mut g2).await;
    // The movers read every key now, and their copies land after the
    // removals below.
    let mut late = redis::pipe();
    common::marked_copies(&mut late, &mut g1, &keys).await;
    let removed: i64 = p.del(&keys[..]).await.expect("del");
    assert_eq!(removed, keys.len() as i64);
    let () = late.query_async(&mut g2).await.expect("the late copies");

    // The removing client, another client, a read, a multi-key read with a
    // key still on the source, a conditional write: each finds the key
    // removed.
    let a: Option<String> = p.get(&keys[0]).await.expect("get");
    let b: Option<String> = q.get(&keys[1]).await.expect("get");
    let (c_, live): (Option<String>, Option<String>) = q.mget(&[&keys[2], "{foo}live"]).await.expect("mget");
    let took: bool = redis::cmd("SET")
        .arg(&keys[3])
        .arg("new")
        .arg("NX")
        .query_async::<Option<String>>(&mut p)
        .await
        .expect("set nx")
        .is_some();
    let e: i64 = q.exists(&keys[4]).await.expect("exists");
    // Requests that move their keys with `MIGRATE` instead of a source call
    // ask for tombstones too: a RESP3 client's, and a command Lua would
    // change the reply of.
    let mut r3 = common::RawConn::connect(&c.proxy.to_string()).await;
    assert!(r3.call_raw(&["HELLO", "3"]).await.starts_with(b"%"));
    let f = r3.call_raw(&["GET", &keys[5]]).await;
    let n: i64 = p.incr(&keys[6], 1).await.expect("incr");
    // So do a transaction and a blocked call.
    let (g,): (Option<String>,) = redis::pipe()
        .atomic()
        .get(&keys[7])
        .query_async(&mut q)
        .await
        .expect("multi");
    let h: Option<(String, String)> = q.blpop(&keys[8], 0.2).await.expect("blpop");
    assert_eq!(
        (
            a.as_deref(),
            b.as_deref(),
            c_.as_deref(),
            took,
            e,
            &f[..],
            n,
            g,
            h
        ),
        (None, None, None, true, 0, &b"_\r\n"[..], 1, None, None),
        "a removed key came back from its late copy"
    );
    assert_eq!(live.as_deref(), Some("here"));
    for k in [
        &keys[0], &keys[1], &keys[2], &keys[4], &keys[5], &keys[7], &keys[8],
    ] {
        for (g, conn) in [("source", &mut g1), ("target", &mut g2)] {
            assert!(
                !conn.exists::<_, bool>(k).await.expect("exists"),
                "{k} is still on the {g}"
            );
        }
    }
    // The key written since is the client's, and stays through the next
    // requests, which find its tombstone again.
    for conn in [&mut p, &mut q] {
        let d: Option<String> = conn.get(&keys[3]).await.expect("get");
        assert_eq!(d.as_deref(), Some("new"));
    }
    let d: Option<String> = g2.get(&keys[3]).await.expect("get");
    assert_eq!(d.as_deref(), Some("new"));
}

/// A removal whose take-back cannot reach the target (down) is answered at
/// once all the same; the copy it could not take back is taken by the next
/// request for the key once the target is back, which the tombstone tells
/// to (`libs::tombstone`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_is_answered_while_the_target_is_down_and_its_take_back_is_done_later() {
    let mut c = Cluster::start().await;
    let mut p = c.client().await;
    let (mut g1, mut g2) = (c.direct(1).await, c.direct(2).await);
    let key = "{foo}gone".to_string();
    let _: () = p.set(&key, "old").await.expect("set");
    migrating_foo(&c, &mut p, &mut g2).await;
    let mut copy = redis::pipe();
    common::marked_copies(&mut copy, &mut g1, std::slice::from_ref(&key)).await;
    c.masters[1].kill();

    let started = Instant::now();
    let removed: i64 = tokio::time::timeout(Duration::from_secs(5), p.del(&key))
        .await
        .expect("DEL answered")
        .expect("del");
    assert_eq!(removed, 1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the DEL waited {:?} for a target that is down",
        started.elapsed()
    );
    assert!(!g1.exists::<_, bool>(&key).await.expect("exists"));

    // The target comes back holding the copy (as a persistent one would).
    c.masters[1].restart().expect("restart the target");
    let mut g2 = c.direct(2).await;
    let () = copy.query_async(&mut g2).await.expect("the copy");
    let read = common::eventually_some("the target serves again", Duration::from_secs(10), async || {
        p.get::<_, Option<String>>(&key).await.ok()
    })
    .await;
    assert_eq!(read, None, "the removed key came back");
    assert!(!g2.exists::<_, bool>(&key).await.expect("exists"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_requests_keep_their_order_over_several_backend_connections() {
    let c = Cluster::start_with(|cfg| cfg.backend_conns = 4).await;
    let mut pipe = redis::pipe();
    for _ in 0..1000 {
        pipe.incr("counter", 1);
    }
    // Several clients at once, so every backend connection is in use.
    let mut runs = Vec::new();
    for i in 0..4 {
        let mut conn = c.client().await;
        let mut pipe = pipe.clone();
        pipe.get(format!("other{i}"));
        runs.push(tokio::spawn(async move {
            let out: Vec<redis::Value> = pipe.query_async(&mut conn).await.expect("pipeline");
            out.into_iter()
                .take(1000)
                .map(|v| redis::from_redis_value::<i64>(v).expect("int"))
                .collect::<Vec<i64>>()
        }));
    }
    for run in runs {
        let seen = run.await.expect("join");
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "a client's INCRs came back out of order"
        );
    }
    let mut p = c.client().await;
    let total: i64 = p.get("counter").await.expect("get");
    assert_eq!(total, 4000);
}

/// The index in `Cluster::masters` of the group that owns `key`'s slot.
fn group_of(key: &str) -> usize {
    usize::from(slot_of(key.as_bytes()) >= 512)
}

/// A RESP array of bulk strings.
fn resp_command(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_call_ends_with_the_connection_and_pops_nothing_when_the_proxy_shuts_down() {
    let mut c = Cluster::start().await;
    // Blocked on both groups, for ever or with a timeout, and one behind a
    // PING whose reply must still arrive.
    let calls: [(&str, &[&str]); 5] = [
        ("foo", &["BLPOP", "foo", "0"]),
        ("q1", &["BLPOP", "q1", "30"]),
        ("{bar}", &["BRPOPLPUSH", "{bar}", "{bar}out", "0"]),
        ("q3", &["BZPOPMIN", "q3", "0"]),
        ("q4", &["BLPOP", "q4", "0"]),
    ];
    let mut raws = Vec::new();
    for (i, (_, words)) in calls.iter().enumerate() {
        let mut s = TcpStream::connect(c.proxy).await.expect("connect");
        let mut req = if i == 4 {
            resp_command(&["PING"])
        } else {
            Vec::new()
        };
        req.extend(resp_command(words));
        s.write_all(&req).await.expect("write");
        raws.push(s);
    }
    c.wait_blocked_on_owners(calls.iter().map(|(k, _)| *k)).await;
    let started = Instant::now();
    c.shutdown().await;
    let took = started.elapsed();
    // Well within the drain timeout (5 s): nothing waited for it.
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    // Each connection is closed with no reply to its blocked call: not an
    // error, not a nil that `… 0` can never return. What came before it
    // is delivered.
    for (i, s) in raws.iter_mut().enumerate() {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got))
            .await
            .expect("blocked session not closed after shutdown")
            .expect("read");
        let want: &[u8] = if i == 4 { b"+PONG\r\n" } else { b"" };
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "client of {:?}",
            calls[i].1
        );
    }
    // Nothing is left blocked on the servers, so an element pushed now is
    // popped by no one and stays.
    let mut direct = [c.direct(1).await, c.direct(2).await];
    for g in 0..2 {
        assert_eq!(common::blocked_clients(&c.masters[g].addr()).await, 0);
    }
    for (key, _) in calls.iter().filter(|(k, _)| *k != "q3") {
        let d = &mut direct[group_of(key)];
        let _: () = d.lpush(*key, "late").await.expect("lpush");
        let len: usize = d.llen(*key).await.expect("llen");
        assert_eq!(len, 1, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_element_pushed_as_the_proxy_shuts_down_is_delivered_or_kept() {
    let mut c = Cluster::start().await;
    let keys: Vec<String> = (0..24).map(|i| format!("race{i}")).collect();
    let mut raws = Vec::new();
    for k in &keys {
        let mut s = TcpStream::connect(c.proxy).await.expect("connect");
        s.write_all(&resp_command(&["BLPOP", k, "0"]))
            .await
            .expect("write");
        raws.push(s);
    }
    c.wait_blocked_on_owners(keys.iter().map(String::as_str)).await;
    // The pushes race the shutdown: each element is either delivered to its
    // client or left in its list, never popped for a connection that is gone.
    let mut direct = [c.direct(1).await, c.direct(2).await];
    let mut pushers = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let mut d = direct[group_of(k)].clone();
        let k = k.clone();
        pushers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(400 * i as u64)).await;
            let _: () = d.lpush(&k, "v").await.expect("lpush");
        }));
    }
    tokio::time::sleep(Duration::from_millis(4)).await;
    c.shutdown().await;
    for p in pushers {
        p.await.expect("pusher");
    }
    let mut delivered = 0;
    for (k, s) in keys.iter().zip(raws.iter_mut()) {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got))
            .await
            .expect("blocked session not closed after shutdown")
            .expect("read");
        let len: usize = direct[group_of(k)].llen(k).await.expect("llen");
        let popped = format!("*2\r\n${}\r\n{k}\r\n$1\r\nv\r\n", k.len());
        match (String::from_utf8_lossy(&got).as_ref(), len) {
            (g, 0) if g == popped => delivered += 1,
            ("", 1) => {}
            (g, len) => panic!("{k}: the client got {g:?} and the list holds {len}"),
        }
    }
    eprintln!("{delivered} of {} elements delivered, the rest kept", keys.len());
}
