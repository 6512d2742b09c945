//! Cluster-wide commands through `reborn proxy` against a real two-group
//! cluster (group 1: slots 0-511, group 2: 512-1023, one master each) and a
//! real ZooKeeper: FLUSHALL, DBSIZE, KEYS, CONFIG, SCRIPT, FUNCTION, INFO,
//! WAIT, keyless scripts, and the operator's deny/rename list. SCAN has its
//! own file (cluster_scan.rs). At the end, compared byte for byte with a
//! plain redis-server: inline commands, the proxy's own answers (PING, AUTH,
//! HELLO, CLIENT), COMMAND and unknown commands.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::RawConn;
use common::cluster::{Cluster, client, keys_in, set_all};
use reborn::proxy::policy::CommandsConfig;
use reborn::proxy::{Bound, ProxyConfig};
use reborn::topo::model::Role;
use reborn::topo::operation;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

type Conn = MultiplexedConnection;

async fn dbsize(c: &mut Conn) -> i64 {
    redis::cmd("DBSIZE").query_async(c).await.expect("dbsize")
}

async fn masters(c: &Cluster) -> (Conn, Conn) {
    (
        common::client(&c.masters[0].addr()).await,
        common::client(&c.masters[1].addr()).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_dbsize_keys_and_randomkey_cover_both_groups() {
    let c = Cluster::start().await;
    let mut p = client(c.proxy().await).await;
    let (mut g1, mut g2) = masters(&c).await;
    assert_eq!(
        redis::cmd("RANDOMKEY")
            .query_async::<Option<String>>(&mut p)
            .await
            .expect("randomkey"),
        None
    );
    let (a, b) = (keys_in(1, "k", 7), keys_in(2, "k", 11));
    set_all(&mut p, &[a.clone(), b.clone()].concat()).await;
    assert_eq!((dbsize(&mut g1).await, dbsize(&mut g2).await), (7, 11));
    assert_eq!(dbsize(&mut p).await, 18);

    let listed: BTreeSet<String> = p.keys("k*").await.expect("keys");
    let all: BTreeSet<String> = a.iter().chain(&b).cloned().collect();
    assert_eq!(listed, all);
    let only_a: Vec<String> = p.keys(&a[0]).await.expect("keys one");
    assert_eq!(only_a, [a[0].clone()]);

    // RANDOMKEY finds a key even when one group is empty.
    let _: () = g2.del(&b).await.expect("del on group 2");
    for _ in 0..10 {
        let k: Option<String> = redis::cmd("RANDOMKEY")
            .query_async(&mut p)
            .await
            .expect("randomkey");
        assert!(k.is_some_and(|k| a.contains(&k)));
    }
    set_all(&mut p, &b).await;

    let time: Vec<String> = redis::cmd("TIME").query_async(&mut p).await.expect("time");
    assert_eq!(time.len(), 2);
    let lastsave: i64 = redis::cmd("LASTSAVE")
        .query_async(&mut p)
        .await
        .expect("lastsave");
    let direct: i64 = redis::cmd("LASTSAVE")
        .query_async(&mut g1)
        .await
        .expect("lastsave");
    let direct2: i64 = redis::cmd("LASTSAVE")
        .query_async(&mut g2)
        .await
        .expect("lastsave");
    assert_eq!(lastsave, direct.min(direct2));

    let _: () = redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async(&mut p)
        .await
        .expect("flushall");
    assert_eq!((dbsize(&mut g1).await, dbsize(&mut g2).await), (0, 0));
    set_all(&mut p, &[a.clone(), b.clone()].concat()).await;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut p).await.expect("flushdb");
    assert_eq!((dbsize(&mut g1).await, dbsize(&mut g2).await), (0, 0));
    assert_eq!(dbsize(&mut p).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_set_reaches_replicas_and_names_the_servers_that_failed() {
    let c = Cluster::start().await;
    let mut p = client(c.proxy().await).await;
    let replica = c.replica_of_group_1().await;
    let mut r = common::client(&replica.addr()).await;
    let get = async |conn: &mut Conn| -> String {
        let v: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("slowlog-log-slower-than")
            .query_async(conn)
            .await
            .expect("config get");
        v.get(1).cloned().unwrap_or_default()
    };
    // The proxy learns of the replica through its watch: retry until it has.
    common::eventually(
        "CONFIG SET reaches the replica",
        Duration::from_secs(10),
        || async {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("slowlog-log-slower-than")
                .arg("12345")
                .query_async(&mut p.clone())
                .await
                .expect("config set");
            get(&mut r.clone()).await == "12345"
        },
    )
    .await;
    let (mut g1, mut g2) = masters(&c).await;
    assert_eq!(
        (get(&mut g1).await, get(&mut g2).await),
        ("12345".into(), "12345".into())
    );
    assert_eq!(get(&mut p).await, "12345", "CONFIG GET answers from a master");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut p)
        .await
        .expect("resetstat");
    // What the proxy answers a CONFIG request that must fail.
    let config_error = async |args: &[&str]| {
        redis::cmd("CONFIG")
            .arg(args)
            .query_async::<()>(&mut p.clone())
            .await
            .expect_err("refused")
            .to_string()
    };
    // A bad parameter: every server gives the same error, passed on as is.
    let e = config_error(&["SET", "no-such-param", "1"]).await;
    assert!(e.contains("no-such-param") && !e.contains("failed on"), "{e}");
    // What would lock the proxy out of its servers (or make them write a
    // file of the client's choosing) is refused, all of the request.
    let e = config_error(&["SET", "slowlog-max-len", "77", "RequirePass", "x"]).await;
    assert!(
        e.contains("CONFIG SET requirepass is not allowed through reborn proxy"),
        "{e}"
    );
    for (param, refused) in [("requirepass", "x"), ("slowlog-max-len", "77")] {
        let v: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(param)
            .query_async(&mut g1)
            .await
            .expect("config get");
        assert_ne!(v.get(1).map(String::as_str), Some(refused), "{param} was set");
    }
    let e = config_error(&["SET", "dir", "/tmp", "dbfilename", "x.so"]).await;
    assert!(e.contains("dir, dbfilename"), "{e}");
    let e = config_error(&["REWRITE"]).await;
    assert!(
        e.contains("'CONFIG REWRITE' is not allowed through reborn proxy"),
        "{e}"
    );

    // A server nobody listens on joins group 2: a partial failure, named.
    let dead = format!("127.0.0.1:{}", common::free_port());
    operation::add_server(&c.store, 2, &dead, Role::Replica)
        .await
        .expect("add dead replica");
    common::eventually("CONFIG SET names the dead server", Duration::from_secs(10), || async {
        let e = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg("777")
            .query_async::<()>(&mut p.clone())
            .await;
        matches!(e, Err(e) if e.to_string().contains(&dead) && e.to_string().contains("failed on 1 of 4 servers"))
    })
    .await;
    assert_eq!(get(&mut r).await, "777", "the servers that could took it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_and_functions_run_on_every_group() {
    let c = Cluster::start().await;
    let mut p = client(c.proxy().await).await;
    let (mut g1, mut g2) = masters(&c).await;
    let (a, b) = (&keys_in(1, "sc", 1)[0], &keys_in(2, "sc", 1)[0]);
    let _: () = p.set(a, "in-1").await.expect("set");
    let _: () = p.set(b, "in-2").await.expect("set");
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('get', KEYS[1])")
        .query_async(&mut p)
        .await
        .expect("script load");
    for (k, want) in [(a, "in-1"), (b, "in-2")] {
        let v: String = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(k)
            .query_async(&mut p)
            .await
            .expect("evalsha");
        assert_eq!(v, want);
    }
    // EXISTS is 1 only where every master has the script.
    let only_one: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 42")
        .query_async(&mut g1)
        .await
        .expect("load");
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .arg(&only_one)
        .query_async(&mut p)
        .await
        .expect("exists");
    assert_eq!(exists, [1, 0]);
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut p)
        .await
        .expect("flush");
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query_async(&mut g2)
        .await
        .expect("exists");
    assert_eq!(exists, [0]);

    let lib = "#!lua name=rebornlib\nredis.register_function('rget', function(keys, args) return redis.call('get', keys[1]) end)";
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib)
        .query_async(&mut p)
        .await
        .expect("function load");
    assert_eq!(name, "rebornlib");
    let v: String = redis::cmd("FCALL")
        .arg("rget")
        .arg(1)
        .arg(b)
        .query_async(&mut p)
        .await
        .expect("fcall");
    assert_eq!(v, "in-2");
    let listed: redis::Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut p)
        .await
        .expect("list");
    assert!(format!("{listed:?}").contains("rebornlib"));
    let _: () = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg("rebornlib")
        .query_async(&mut p)
        .await
        .expect("delete");
    for g in [&mut g1, &mut g2] {
        let listed: Vec<redis::Value> = redis::cmd("FUNCTION")
            .arg("LIST")
            .query_async(g)
            .await
            .expect("list");
        assert!(listed.is_empty());
    }
    let e = redis::cmd("FUNCTION")
        .arg("STATS")
        .query_async::<()>(&mut p)
        .await
        .expect_err("stats");
    assert!(e.to_string().contains("not allowed through reborn proxy"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_scripts_run_only_when_they_cannot_touch_data() {
    let c = Cluster::start().await;
    let mut p = client(c.proxy().await).await;
    let _: () = p.set("foo", "bar").await.expect("set");
    for (cmd, args) in [
        ("EVAL", vec!["return redis.call('get','foo')", "0"]),
        ("EVAL_RO", vec!["return redis.call('get','foo')", "0"]),
        ("EVALSHA", vec!["0123456789012345678901234567890123456789", "0"]),
        ("FCALL", vec!["f", "0"]),
    ] {
        let e = redis::cmd(cmd)
            .arg(&args)
            .query_async::<redis::Value>(&mut p)
            .await
            .expect_err(cmd);
        assert!(
            e.to_string().contains("numkeys 0 is refused by reborn proxy"),
            "{cmd}: {e}"
        );
    }
    let v: i64 = redis::cmd("EVAL")
        .arg("return 1 + ARGV[1]")
        .arg(0)
        .arg(41)
        .query_async(&mut p)
        .await
        .expect("pure eval");
    assert_eq!(v, 42);
    let v: String = redis::cmd("EVAL")
        .arg("return redis.call('get', KEYS[1])")
        .arg(1)
        .arg("foo")
        .query_async(&mut p)
        .await
        .expect("eval with key");
    assert_eq!(v, "bar");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_merges_backends_and_honours_sections() {
    let c = Cluster::start().await;
    let mut p = client(c.proxy().await).await;
    let (mut g1, mut g2) = masters(&c).await;
    set_all(&mut p, &[keys_in(1, "i", 5), keys_in(2, "i", 8)].concat()).await;
    let _: () = p.set_ex(&keys_in(2, "t", 1)[0], "v", 100).await.expect("setex");
    let total = dbsize(&mut g1).await + dbsize(&mut g2).await;
    assert_eq!(total, 14);
    let info: String = redis::cmd("INFO").query_async(&mut p).await.expect("info");
    let version: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut g1)
        .await
        .expect("direct");
    let version = version
        .lines()
        .find(|l| l.starts_with("redis_version:"))
        .expect("version")
        .trim()
        .to_string();
    assert!(info.contains(&format!("{version}\r\n")), "{info}");
    assert!(
        info.contains("redis_mode:standalone") && info.contains("reborn_version:"),
        "{info}"
    );
    assert!(
        info.contains("# Stats") && info.contains("connected_clients:"),
        "{info}"
    );
    assert!(
        info.contains(&format!("db0:keys={total},expires=1,avg_ttl=")),
        "{info}"
    );
    // The sections shown (docs/compatibility.md lists them): Redis's default
    // ones that describe the cluster, the proxy's own, and with `all` the
    // summed Commandstats.
    let titles = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# "))
            .map(|t| t.trim().to_string())
            .collect()
    };
    let default = [
        "Server",
        "Clients",
        "Persistence",
        "Stats",
        "Proxy",
        "Errorstats",
        "Keyspace",
    ];
    assert_eq!(titles(&info), default, "{info}");
    let all: String = redis::cmd("INFO")
        .arg("all")
        .query_async(&mut p)
        .await
        .expect("info all");
    let mut with_commandstats = default.to_vec();
    with_commandstats.insert(5, "Commandstats");
    assert_eq!(titles(&all), with_commandstats, "{all}");

    let server: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut p)
        .await
        .expect("info server");
    assert!(
        server.contains("redis_version:") && !server.contains("# Stats") && !server.contains("# Keyspace"),
        "{server}"
    );
    let ks: String = redis::cmd("INFO")
        .arg("KEYSPACE")
        .query_async(&mut p)
        .await
        .expect("info keyspace");
    assert!(
        ks.starts_with("# Keyspace\r\ndb0:keys=14,") && !ks.contains("# Server"),
        "{ks}"
    );
    let none: String = redis::cmd("INFO")
        .arg("nosuchsection")
        .query_async(&mut p)
        .await
        .expect("info");
    assert_eq!(none, "");

    // commandstats only when asked (not a default section), summed over the
    // masters; CONFIG RESETSTAT zeroes them and the proxy's own error counter.
    assert!(!info.contains("cmdstat_"), "{info}");
    let _: Result<String, _> = redis::cmd("GET")
        .arg(&keys_in(1, "i", 1)[0])
        .arg("x")
        .query_async(&mut p)
        .await;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut p)
        .await
        .expect("cmdstats");
    let sets = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_set:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(sets.is_some_and(|n| n >= 13), "{stats}");
    let errors = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("total_error_replies:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    let before: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut p)
        .await
        .expect("stats");
    assert!(errors(&before).is_some_and(|n| n >= 1), "{before}");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut p)
        .await
        .expect("resetstat");
    let after: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut p)
        .await
        .expect("stats");
    assert_eq!(errors(&after), Some(0), "{after}");
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut p)
        .await
        .expect("cmdstats");
    assert!(!stats.contains("cmdstat_set:"), "{stats}");

    // A paused master neither fails nor hangs INFO: it is left out.
    let pid = c.masters[1].pid().expect("pid");
    common::cluster::signal(pid, "-STOP");
    let started = Instant::now();
    let info: Result<String, _> = redis::cmd("INFO").query_async(&mut p).await;
    common::cluster::signal(pid, "-CONT");
    let info = info.expect("info with a paused master");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        info.contains("redis_version:") && info.contains("db0:keys=5,"),
        "{info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_memory_and_object_follow_their_rules() {
    let c = Cluster::start().await;
    let mut p = client(c.proxy().await).await;
    let k = &keys_in(2, "m", 1)[0];
    let _: () = p.set(k, 12345).await.expect("set");
    let n: i64 = redis::cmd("WAIT")
        .arg(0)
        .arg(0)
        .query_async(&mut p)
        .await
        .expect("wait");
    assert_eq!(n, 0);
    // No replica anywhere: WAIT with a timeout answers 0 after it, and other
    // clients are not held meanwhile (WAIT has a connection of its own).
    let mut waiter = p.clone();
    let wait = tokio::spawn(async move {
        redis::cmd("WAIT")
            .arg(1)
            .arg(800)
            .query_async::<i64>(&mut waiter)
            .await
    });
    let mut other = client(c.proxy().await).await;
    for _ in 0..20 {
        let t = Instant::now();
        let _: i64 = other.get(k).await.expect("get");
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "GET held {:?} behind WAIT",
            t.elapsed()
        );
    }
    assert_eq!(wait.await.expect("join").expect("wait"), 0);
    let usage: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(k)
        .query_async(&mut p)
        .await
        .expect("memory usage");
    assert!(usage > 0);
    let enc: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(k)
        .query_async(&mut p)
        .await
        .expect("object");
    assert_eq!(enc, "int");
    let e = redis::cmd("MEMORY")
        .arg("STATS")
        .query_async::<redis::Value>(&mut p)
        .await
        .expect_err("stats");
    assert!(e.to_string().contains("not allowed through reborn proxy"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_counts_the_clients_writes_on_every_group() {
    let c = Cluster::start().await;
    let mut p = client(c.proxy().await).await;
    let _r1 = c.replica_of_group_1().await;
    let mut r2 = common::redis();
    r2.replicaof(&c.masters[1].addr()).expect("replicaof");
    let (mut g1, mut g2) = masters(&c).await;
    for g in [&mut g1, &mut g2] {
        common::eventually("the replica is connected", Duration::from_secs(10), || async {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut g.clone())
                .await
                .expect("info");
            info.contains("connected_slaves:1") && info.contains("state=online")
        })
        .await;
    }
    let (a, b) = (&keys_in(1, "w", 1)[0], &keys_in(2, "w", 1)[0]);
    let _: () = p.set(a, 1).await.expect("set");
    let _: () = p.set(b, 1).await.expect("set");
    let n: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(0)
        .query_async(&mut p)
        .await
        .expect("wait");
    assert_eq!(n, 1, "both groups' replicas acknowledged");
    let n: i64 = redis::cmd("WAIT")
        .arg(2)
        .arg(200)
        .query_async(&mut p)
        .await
        .expect("wait");
    assert_eq!(n, 1, "no group has two replicas");
    // Group 2's replica stops: a new write there is not acknowledged, which
    // WAIT must see (it counts this client's write, not an old offset).
    let pid = r2.pid().expect("pid");
    common::cluster::signal(pid, "-STOP");
    let _: () = p.set(b, 2).await.expect("set");
    let n: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(300)
        .query_async(&mut p)
        .await
        .expect("wait");
    common::cluster::signal(pid, "-CONT");
    assert_eq!(n, 0, "group 2's replica never got the write");
    let n: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(0)
        .query_async(&mut p)
        .await
        .expect("wait");
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_fails_fanned_out_commands_fast_and_by_name() {
    let mut c = Cluster::start().await;
    let mut p = client(c.proxy().await).await;
    let _: i64 = dbsize(&mut p).await;
    let dead = c.masters[1].addr();
    c.masters[1].kill();
    common::eventually(
        "DBSIZE names the dead master",
        Duration::from_secs(10),
        || async {
            let started = Instant::now();
            let e = redis::cmd("DBSIZE").query_async::<i64>(&mut p.clone()).await;
            matches!(e, Err(e) if e.to_string().contains(&dead)) && started.elapsed() < Duration::from_secs(2)
        },
    )
    .await;
    let e = redis::cmd("FLUSHALL")
        .query_async::<()>(&mut p)
        .await
        .expect_err("flushall");
    assert!(e.to_string().contains(&dead), "{e}");
    let pong: String = redis::cmd("PING").query_async(&mut p).await.expect("ping");
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_proxy_refuses_cluster_wide_commands_but_answers_info() {
    let c = Cluster::start().await;
    let addr = c.proxy().await;
    let mut p = client(addr).await;
    let _: () = p.set("foo", "1").await.expect("set");
    operation::set_proxy_online(&c.store, &addr.to_string(), false)
        .await
        .expect("offline");
    common::eventually("DBSIZE is refused offline", Duration::from_secs(10), || async {
        let e = redis::cmd("DBSIZE").query_async::<i64>(&mut p.clone()).await;
        matches!(e, Err(e) if e.to_string().contains("is offline"))
    })
    .await;
    let e = redis::cmd("FLUSHALL")
        .query_async::<()>(&mut p)
        .await
        .expect_err("offline");
    assert!(e.to_string().contains("is offline"), "{e}");
    let (mut g1, mut g2) = masters(&c).await;
    assert_eq!(
        dbsize(&mut g1).await + dbsize(&mut g2).await,
        1,
        "nothing was flushed"
    );
    let info: String = redis::cmd("INFO")
        .arg("proxy")
        .query_async(&mut p)
        .await
        .expect("info");
    assert!(info.contains("online:0"), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_renamed_commands_follow_the_config() {
    let c = Cluster::start().await;
    let cfg = ProxyConfig {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        zk: c.zk.clone(),
        commands: CommandsConfig {
            deny: vec!["flushall".into(), "KEYS".into()],
            rename: [("config".to_string(), "xconfig".to_string())].into(),
        },
        ..ProxyConfig::default()
    };
    let bound = Bound::bind(cfg).await.expect("bind");
    let addr: SocketAddr = bound.local_addr().expect("addr");
    tokio::spawn(bound.run(c.stop.clone()));
    c.wait_proxy(&addr.to_string(), true).await;
    let mut p = client(addr).await;
    let _: () = p.set("foo", "1").await.expect("set");
    for cmd in ["FLUSHALL", "KEYS"] {
        let e = redis::cmd(cmd)
            .arg("*")
            .query_async::<redis::Value>(&mut p)
            .await
            .expect_err(cmd);
        assert!(
            e.to_string()
                .contains(&format!("'{cmd}' is not allowed through reborn proxy")),
            "{e}"
        );
    }
    let e = redis::cmd("CONFIG")
        .arg("GET")
        .arg("hz")
        .query_async::<redis::Value>(&mut p)
        .await
        .expect_err("config");
    assert!(e.to_string().contains("unknown command"), "{e}");
    let hz: Vec<String> = redis::cmd("XCONFIG")
        .arg("GET")
        .arg("hz")
        .query_async(&mut p)
        .await
        .expect("xconfig");
    assert_eq!(hz.first().map(String::as_str), Some("hz"));
    let v: String = p.get("foo").await.expect("get");
    assert_eq!(v, "1", "FLUSHALL was refused, not run");

    // Bad entries stop the proxy at start.
    let bad = ProxyConfig {
        zk: c.zk.clone(),
        commands: CommandsConfig {
            deny: vec!["nosuchcommand".into()],
            ..CommandsConfig::default()
        },
        ..ProxyConfig::default()
    };
    let e = bad.validate().expect_err("unknown command in deny");
    assert!(e.to_string().contains("nosuchcommand"), "{e}");
}

/// `INFO persistence` sums the masters' unsaved changes (Redis's own tests
/// count writes with it), and PFDEBUG, a debugging aid of one key, routes by
/// that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_persistence_sums_changes_and_pfdebug_routes_by_key() {
    let c = Cluster::start().await;
    let mut p = client(c.proxy().await).await;
    let field = |text: &str, name: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    let changes = |text: String| field(&text, "rdb_changes_since_last_save");
    let before = changes(
        redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut p)
            .await
            .expect("info"),
    );
    let (a, b) = (&keys_in(1, "pc", 1)[0], &keys_in(2, "pc", 1)[0]);
    let _: () = p.set(a, "1").await.expect("set");
    let _: () = p.set(b, "2").await.expect("set");
    let after = changes(
        redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut p)
            .await
            .expect("info"),
    );
    assert_eq!(after - before, 2, "one change on each group, summed");
    let (mut g1, mut g2) = masters(&c).await;
    let direct = changes(
        redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut g1)
            .await
            .expect("info"),
    ) + changes(
        redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut g2)
            .await
            .expect("info"),
    );
    assert_eq!(after, direct);

    let hll = &keys_in(2, "hll", 1)[0];
    let _: i64 = redis::cmd("PFADD")
        .arg(hll)
        .arg("x")
        .query_async(&mut p)
        .await
        .expect("pfadd");
    let regs: Vec<i64> = redis::cmd("PFDEBUG")
        .arg("GETREG")
        .arg(hll)
        .query_async(&mut p)
        .await
        .expect("pfdebug getreg");
    assert_eq!(regs.len(), 16384, "the registers of the key on its own group");
    assert_eq!(regs.iter().filter(|&&r| r != 0).count(), 1);
}

// Where the proxy answers by itself, it answers as Redis does: each check
// below sends the same bytes to the proxy and to a plain redis-server (a
// master of the cluster, or one started alone) and compares what comes back.

/// What `bytes`, sent on a new connection, gets from `proxy` and from `redis`.
async fn from_both(proxy: &str, redis: &str, bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
    tokio::join!(common::send_raw(proxy, bytes), common::send_raw(redis, bytes))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Inline commands (what telnet and `redis-cli --pipe` users type) are split
/// by Redis's `sdssplitargs` rules: `\xHH` and the other escapes in double
/// quotes, `\'` in single quotes, quotes inside an argument, a closing quote
/// that must end it, C whitespace, and a NUL that keeps the line from ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_parse_as_redis_does() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await.to_string();
    let redis = c.masters[0].addr();
    let cases: Vec<Vec<u8>> = [
        &b"SET \"\\x41\" hexval\r\nGET A\r\n"[..],
        b"SET 'it\\'s' 1\r\nGET \"it's\"\r\n",
        b"SET a\"b c\" v\r\nGET \"ab c\"\r\n",
        b"ECHO 'a\\nb' \"a\\qb\\x4g\\x4A\\a\\b\\n\"\r\n",
        b"ECHO a\x0bb\r\n\x0bECHO x\r\nECHO \"a\"\x0b\r\nECHO a\x0cb\r\n",
        b"ECHO ''\r\nECHO \"a\\\"b\"\r\nECHO 'a\\\\b'\r\nECHO \"\\\\\"\r\n",
        b"  \r\n\r\n\n  PING  \r\r\n",
        // Unbalanced: an error, then the connection closes.
        b"ECHO \"foo\"bar\r\nPING\r\n",
        b"ECHO \"x\r\nPING\r\n",
        b"ECHO \"a\\\r\nPING\r\n",
        b"ECHO 'a'b\r\nPING\r\n",
        // Never ends: no reply at all.
        b"ECHO a\0b\r\nPING\r\n",
    ]
    .iter()
    .map(|c| c.to_vec())
    .collect();
    let replies = futures::future::join_all(cases.iter().map(|case| from_both(&proxy, &redis, case))).await;
    for (case, (p, r)) in cases.iter().zip(replies) {
        assert_eq!(text(&p), text(&r), "for {:?}", text(case));
    }

    // A 65,636-byte line (CRLF included) arriving whole: Redis takes it, and
    // so does the proxy.
    let line = |total: usize| [b"SET ".as_slice(), &vec![b'a'; total - 8], b" v\r\n"].concat();
    let (p, r) = from_both(&proxy, &redis, &line(65_636)).await;
    assert_eq!((text(&p), text(&r)), ("+OK\r\n".into(), "+OK\r\n".into()));
    // The proxy's bound, 80 KiB without the newline, is just above the
    // longest line Redis takes (81,910 bytes with its CRLF); beyond it, both
    // give the same refusal and close.
    assert_eq!(common::send_raw(&proxy, &line(80 * 1024 + 1)).await, b"+OK\r\n");
    let (p, r) = from_both(&proxy, &redis, &line(90_000)).await;
    assert_eq!(text(&p), "-ERR Protocol error: too big inline request\r\n");
    assert_eq!(text(&p), text(&r));
    assert_eq!(
        text(&common::send_raw(&proxy, &line(80 * 1024 + 2)).await),
        "-ERR Protocol error: too big inline request\r\n"
    );
}

/// The errors and answers of the commands the proxy answers itself, byte for
/// byte as a redis-server without a password gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_commands_answer_in_redis_own_words() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await.to_string();
    let redis = c.masters[0].addr();
    let (mut p, mut r) = (RawConn::connect(&proxy).await, RawConn::connect(&redis).await);
    let calls: &[&[&str]] = &[
        &["PING", "a", "b"],
        &["PING", "a"],
        &["PING"],
        &["CLIENT", "foo"],
        &["CLIENT", "FOO", "x"],
        &["HELLO", "3", "setname"],
        &["HELLO", "3", "AUTH", "x"],
        &["HELLO", "2", "SETNAME", "a", "b"],
        &["HELLO", "03"],
        &["HELLO", "+3"],
        &["HELLO", "x"],
        &["HELLO", "4"],
        // Without a password, `default` is Redis's nopass user: any password
        // logs it in; the one-argument form and other users fail.
        &["AUTH", "x"],
        &["AUTH", "default", "x"],
        &["AUTH", "bob", "x"],
        &["HELLO", "2", "AUTH", "bob", "x"],
        &["AUTH", "a", "b", "c"],
        &["MULTI"],
        &["PING", "a", "b"],
        &["EXEC"],
    ];
    for args in calls {
        let (got, want) = (p.call_raw(args).await, r.call_raw(args).await);
        assert_eq!(text(&got), text(&want), "for {args:?}");
    }
    // HELLO's map differs (server, version, id, mode): its shape does not.
    for args in [
        ["HELLO", "3", "AUTH", "default", "wrong"],
        ["HELLO", "2", "AUTH", "default", "x"],
    ] {
        let mut p = RawConn::connect(&proxy).await;
        let mut r = RawConn::connect(&redis).await;
        let (got, want) = (p.call_raw(&args).await, r.call_raw(&args).await);
        assert_eq!(got[..5], want[..5], "{} / {}", text(&got), text(&want));
    }
    // A subscribed RESP2 client: PING answers in the subscribed form, but the
    // arity is checked first.
    let (mut p, mut r) = (RawConn::connect(&proxy).await, RawConn::connect(&redis).await);
    for args in [&["SUBSCRIBE", "ch"][..], &["PING", "a"], &["PING", "a", "b"]] {
        let (got, want) = (p.call_raw(args).await, r.call_raw(args).await);
        assert_eq!(text(&got), text(&want), "subscribed, for {args:?}");
    }
}

/// With a password (the proxy's `auth`, the server's `requirepass`), AUTH and
/// HELLO … AUTH check it as Redis does, and a failed AUTH does not log out a
/// connection that had logged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_a_password_follows_redis() {
    let c = Cluster::start().await;
    let proxy = c.proxy_with(|cfg| cfg.auth = "pw".into()).await.to_string();
    let server = common::redis_with_password("pw");
    let redis = server.addr();
    let (mut p, mut r) = (RawConn::connect(&proxy).await, RawConn::connect(&redis).await);
    let calls: &[&[&str]] = &[
        &["PING"],
        &["HELLO", "3"],
        &["HELLO"],
        &["HELLO", "3", "AUTH", "default", "pw", "SETNAME"],
        &["PING"],
        &["AUTH", "wrong"],
        &["PING"],
        &["AUTH", "bob", "pw"],
        &["AUTH", "default", "pw"],
        &["AUTH", "pw"],
        &["AUTH", "x", "y", "z"],
    ];
    for args in calls {
        let (got, want) = (p.call_raw(args).await, r.call_raw(args).await);
        assert_eq!(text(&got), text(&want), "for {args:?}");
    }
    for args in [
        &["HELLO", "3", "AUTH", "default", "wrong"][..],
        &["HELLO", "2", "AUTH", "default", "pw"],
    ] {
        let mut p = RawConn::connect(&proxy).await;
        let mut r = RawConn::connect(&redis).await;
        let (got, want) = (p.call_raw(args).await, r.call_raw(args).await);
        assert_eq!(got[..5], want[..5], "{} / {}", text(&got), text(&want));
    }
}

/// COMMAND is answered by a master: Redis 7's own description of each
/// command (flags, ACL categories, tips, key specs, subcommands, docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_describes_commands_as_the_servers_do() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await.to_string();
    let redis = c.masters[0].addr();
    let (mut p, mut r) = (RawConn::connect(&proxy).await, RawConn::connect(&redis).await);
    let calls: &[&[&str]] = &[
        &["COMMAND", "INFO", "set", "ping", "nosuch"],
        &["COMMAND", "DOCS", "get"],
        &["COMMAND", "COUNT"],
        &["COMMAND", "LIST", "FILTERBY", "PATTERN", "xadd"],
        &["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"],
        &["COMMAND", "GETKEYSANDFLAGS", "LMOVE", "a", "b", "LEFT", "RIGHT"],
        &["COMMAND", "FOO"],
    ];
    for args in calls {
        let (got, want) = (p.call_raw(args).await, r.call_raw(args).await);
        assert_eq!(text(&got), text(&want), "for {args:?}");
    }
    // The whole table: the same number of commands (its order is the
    // server's hash order, which differs from one server to another).
    let header = |reply: Vec<u8>| text(&reply[..reply.iter().position(|&b| b == b'\n').unwrap_or(0)]);
    let (got, want) = (p.call_raw(&["COMMAND"]).await, r.call_raw(&["COMMAND"]).await);
    assert_eq!(header(got), header(want));
    let info = text(&p.call_raw(&["COMMAND", "INFO", "set"]).await);
    assert!(info.starts_with("*1\r\n*10\r\n$3\r\nset\r\n:-3\r\n"), "{info}");
    assert!(info.contains("+write\r\n+denyoom\r\n"), "{info}");
}

/// Unknown commands get Redis's own error, byte for byte: every argument
/// quoted and followed by a space, 128 bytes of them at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_get_redis_own_error() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await.to_string();
    let redis = c.masters[0].addr();
    let (mut p, mut r) = (RawConn::connect(&proxy).await, RawConn::connect(&redis).await);
    let long = "x".repeat(200);
    let calls: Vec<Vec<&str>> = vec![
        vec!["foo"],
        vec!["foo", "a", "b"],
        vec!["foo", &long, "b"],
        vec![&long],
        vec!["f\0oo", "a\0b", "c\r\nd"],
    ];
    for args in &calls {
        let (got, want) = (p.call_raw(args).await, r.call_raw(args).await);
        assert_eq!(text(&got), text(&want), "for {args:?}");
    }
    for args in &calls {
        let line = [
            args.join(" ").replace(['\0', '\r', '\n'], "_").as_bytes(),
            b"\r\n",
        ]
        .concat();
        let (got, want) = from_both(&proxy, &redis, &line).await;
        assert_eq!(text(&got), text(&want), "for {line:?}");
    }
}
