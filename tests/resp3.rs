//! RESP3 and the proxy's own clients, against real processes: a client that
//! said `HELLO 3` gets, byte for byte, what a redis-server that was told
//! `HELLO 3` sends (maps, sets, doubles, `_` nulls, merged `MGET`s, blocking
//! timeouts, and in a migrating slot too), while RESP2 clients keep getting
//! RESP2; and `CLIENT LIST`, `INFO`, `KILL` and `PAUSE` act on the proxy's own
//! connections.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::RawConn;
use common::cluster::Cluster;
use reborn::libs::hash::slot_of;
use reborn::libs::resp::reply_len;
use reborn::topo::action::begin_migration;

/// A key of `prefix` whose slot group 1 (`true`, slots 0-511) or group 2 owns.
fn key_on(prefix: &str, group_1: bool) -> String {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| (slot_of(k.as_bytes()) < 512) == group_1)
        .expect("some key hashes there")
}

/// A raw connection that said `HELLO 3` (its reply is checked to be a map).
async fn resp3(addr: &str) -> RawConn {
    let mut c = RawConn::connect(addr).await;
    let hello = c.call_raw(&["HELLO", "3"]).await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", show(&hello));
    c
}

fn show(frame: &[u8]) -> String {
    String::from_utf8_lossy(frame).into_owned()
}

/// The keys of a RESP3 map frame, and the type byte of each value.
fn map_shape(frame: &[u8]) -> Vec<(String, u8)> {
    assert_eq!(frame.first(), Some(&b'%'), "not a map: {}", show(frame));
    let eol = frame.windows(2).position(|w| w == b"\r\n").expect("header");
    let pairs: usize = std::str::from_utf8(&frame[1..eol])
        .expect("utf8")
        .parse()
        .expect("count");
    let mut pos = eol + 2;
    let mut out = Vec::new();
    for _ in 0..pairs {
        let k = reply_len(&frame[pos..]).expect("valid").expect("complete");
        let key = show(&frame[pos..pos + k]);
        pos += k;
        let v = reply_len(&frame[pos..]).expect("valid").expect("complete");
        out.push((key, frame[pos]));
        pos += v;
    }
    assert_eq!(pos, frame.len(), "trailing bytes in {}", show(frame));
    out
}

struct Setup {
    cluster: Cluster,
    proxy: String,
    k1: String,
    k2: String,
}

impl Setup {
    async fn start() -> Setup {
        let cluster = Cluster::start().await;
        let proxy = cluster.proxy().await.to_string();
        Setup {
            cluster,
            proxy,
            k1: key_on("r3a", true),
            k2: key_on("r3b", false),
        }
    }

    /// The master that owns `key`.
    fn master_of(&self, key: &str) -> String {
        let group = usize::from(slot_of(key.as_bytes()) >= 512);
        self.cluster.masters[group].addr()
    }
}

/// Sends `args` through the proxy (`p`) and straight to the owner of `key`
/// (`d`, a connection of the same protocol) and returns both replies.
async fn both(p: &mut RawConn, d: &mut RawConn, args: &[&str]) -> (Vec<u8>, Vec<u8>) {
    (p.call_raw(args).await, d.call_raw(args).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_replies_are_redis_own_byte_for_byte() {
    let s = Setup::start().await;
    let (h, set, z) = (format!("{}h", s.k1), format!("{}s", s.k2), format!("{}z", s.k1));
    let mut p = resp3(&s.proxy).await;
    for (key, args) in [
        (&h, vec!["HSET", &h, "f1", "v1", "f2", "v2"]),
        (&set, vec!["SADD", &set, "a", "b", "c"]),
        (&z, vec!["ZADD", &z, "1.5", "m"]),
    ] {
        let reply = p.call_raw(&args).await;
        assert!(reply.starts_with(b":"), "{key}: {}", show(&reply));
    }
    let missing = "r3-missing{x}";
    for (owner, args, starts) in [
        (&h, vec!["HGETALL", h.as_str()], "%2\r\n"),
        (&set, vec!["SMEMBERS", set.as_str()], "~3\r\n"),
        (&z, vec!["ZSCORE", z.as_str(), "m"], ",1.5\r\n"),
        (
            &z,
            vec!["ZRANGE", z.as_str(), "0", "-1", "WITHSCORES"],
            "*1\r\n*2\r\n",
        ),
        (&h, vec!["HRANDFIELD", "r3-none{h}", "1"], "*0\r\n"),
    ]
    .into_iter()
    .chain([(&missing.to_string(), vec!["GET", missing], "_\r\n")].map(|(k, a, w)| (k, a, w)))
    {
        let mut d = resp3(&s.master_of(owner)).await;
        let (via, want) = both(&mut p, &mut d, &args).await;
        assert_eq!(show(&via), show(&want), "{args:?}");
        assert!(via.starts_with(starts.as_bytes()), "{args:?}: {}", show(&via));
    }

    // MGET across both groups, merged, with a null in the middle.
    let (v1, v2) = ("one", "two");
    assert_eq!(p.call_raw(&["SET", &s.k1, v1]).await, b"+OK\r\n");
    assert_eq!(p.call_raw(&["SET", &s.k2, v2]).await, b"+OK\r\n");
    let merged = p.call_raw(&["MGET", &s.k1, "r3-missing{y}", &s.k2]).await;
    let mut want = b"*3\r\n".to_vec();
    for key in [s.k1.as_str(), "r3-missing{y}", s.k2.as_str()] {
        want.extend(resp3(&s.master_of(key)).await.call_raw(&["GET", key]).await);
    }
    assert_eq!(show(&merged), show(&want));
    assert_eq!(show(&merged), format!("*3\r\n$3\r\none\r\n_\r\n$3\r\ntwo\r\n"));

    // A blocking command that times out: RESP3's null, as from Redis.
    let list = format!("{}list", s.k1);
    let mut direct = resp3(&s.master_of(&list)).await;
    let (via, want) = both(&mut p, &mut direct, &["BLPOP", &list, "0.1"]).await;
    assert_eq!(show(&via), show(&want));
    assert_eq!(via, b"_\r\n");

    // HELLO's map has Redis's keys, in Redis's order, with the same types.
    let (via, want) = both(&mut p, &mut direct, &["HELLO", "3"]).await;
    assert_eq!(map_shape(&via), map_shape(&want));
    assert!(show(&via).contains("$5\r\nproto\r\n:3\r\n"), "{}", show(&via));
    // Its version is the servers' (StackExchange.Redis gates features on
    // it), not reborn's own.
    let version = |reply: &[u8]| {
        let text = show(reply);
        let after = text.split("$7\r\nversion\r\n").nth(1).map(str::to_string);
        after.and_then(|a| a.split("\r\n").nth(1).map(str::to_string))
    };
    assert!(
        version(&want).is_some_and(|v| v.split('.').all(|n| n.parse::<u32>().is_ok())),
        "{}",
        show(&want)
    );
    assert_eq!(version(&via), version(&want), "{}", show(&via));

    // A RESP2 client of the same proxy still gets RESP2.
    let mut p2 = RawConn::connect(&s.proxy).await;
    let mut d2 = RawConn::connect(&s.master_of(&h)).await;
    for args in [
        vec!["HGETALL", h.as_str()],
        vec!["ZSCORE", z.as_str(), "m"],
        vec!["GET", "r3-missing{x}"],
        vec!["BLPOP", list.as_str(), "0.1"],
    ] {
        let (via, want) = both(&mut p2, &mut d2, &args).await;
        assert_eq!(show(&via), show(&want), "{args:?}");
        assert!(!via.starts_with(b"%") && !via.starts_with(b"_"), "{}", show(&via));
    }
    let nil = p2.call_raw(&["MGET", &s.k1, "r3-missing{y}", &s.k2]).await;
    assert_eq!(show(&nil), "*3\r\n$3\r\none\r\n$-1\r\n$3\r\ntwo\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_switches_protocols_in_request_order() {
    let s = Setup::start().await;
    let mut p = RawConn::connect(&s.proxy).await;
    // Pipelined: the SET goes out on a RESP2 connection, the GET after HELLO
    // on a RESP3 one; the GET must still see the SET.
    let mut burst = common::cmd(&["SET", &s.k1, "v"]);
    burst.extend(common::cmd(&["HELLO", "3"]));
    burst.extend(common::cmd(&["GET", &s.k1]));
    burst.extend(common::cmd(&["HGETALL", &s.k1]));
    p.send(&burst).await;
    assert_eq!(p.read_frame().await, b"+OK\r\n");
    assert!(p.read_frame().await.starts_with(b"%7\r\n"));
    assert_eq!(p.read_frame().await, b"$1\r\nv\r\n");
    assert!(show(&p.read_frame().await).starts_with("-WRONGTYPE"));
    assert_eq!(p.call_raw(&["GET", "r3-nothing"]).await, b"_\r\n");
    assert_eq!(p.call_raw(&["CLIENT", "GETNAME"]).await, b"_\r\n");
    let hello2 = p.call_raw(&["HELLO", "2", "SETNAME", "back"]).await;
    assert!(hello2.starts_with(b"*14\r\n"), "{}", show(&hello2));
    assert_eq!(p.call_raw(&["GET", "r3-nothing"]).await, b"$-1\r\n");
    assert_eq!(p.call_raw(&["CLIENT", "GETNAME"]).await, b"$4\r\nback\r\n");
    for (args, want) in [
        (vec!["HELLO", "4"], "-NOPROTO unsupported protocol version\r\n"),
        (vec!["HELLO", "1"], "-NOPROTO unsupported protocol version\r\n"),
        (
            vec!["HELLO", "three"],
            "-ERR Protocol version is not an integer or out of range\r\n",
        ),
        (
            vec!["CLIENT", "TRACKING", "on"],
            "-ERR client tracking is not supported by reborn proxy\r\n",
        ),
        (
            vec!["SELECT", "1"],
            "-ERR DB index is out of range (reborn proxy serves db 0 only)\r\n",
        ),
    ] {
        assert_eq!(show(&p.call_raw(&args).await), want, "{args:?}");
    }
    // The connection is still usable, and still RESP2.
    assert_eq!(p.call_raw(&["GET", &s.k1]).await, b"$1\r\nv\r\n");
}

/// COMMAND is answered by a master in the client's protocol: RESP3's sets
/// and maps in COMMAND INFO and DOCS, byte for byte as from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_info_and_docs_come_from_redis_in_resp3() {
    let s = Setup::start().await;
    let mut p = resp3(&s.proxy).await;
    let mut d = resp3(&s.cluster.masters[0].addr()).await;
    for args in [
        vec!["COMMAND", "INFO", "set", "ping", "nosuch"],
        vec!["COMMAND", "DOCS", "get", "hello"],
        vec!["COMMAND", "GETKEYSANDFLAGS", "SET", "k", "v"],
    ] {
        let (via, want) = both(&mut p, &mut d, &args).await;
        assert_eq!(show(&via), show(&want), "{args:?}");
    }
    let ping = show(&p.call_raw(&["COMMAND", "INFO", "ping"]).await);
    assert!(ping.starts_with("*1\r\n*10\r\n$4\r\nping\r\n:-1\r\n~"), "{ping}");
    assert!(ping.contains("+fast\r\n"), "{ping}");
    let docs = p.call_raw(&["COMMAND", "DOCS", "get"]).await;
    assert!(docs.starts_with(b"%1\r\n$3\r\nget\r\n%"), "{}", show(&docs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_requests_of_a_migrating_slot_get_the_targets_own_reply() {
    let s = Setup::start().await;
    let (h, z) = (format!("{{{}}}h", s.k1), format!("{{{}}}z", s.k1));
    let mut p = resp3(&s.proxy).await;
    assert_eq!(p.call_raw(&["HSET", &h, "a", "1", "b", "2"]).await, b":2\r\n");
    assert_eq!(p.call_raw(&["ZADD", &z, "2.5", "m"]).await, b":1\r\n");
    let slot = slot_of(h.as_bytes());
    begin_migration(&s.cluster.store, &[slot], 2, Duration::from_secs(5))
        .await
        .expect("switch to migrate");
    let target = s.cluster.masters[1].addr();
    common::eventually(
        "the proxy routes the slot as migrating",
        Duration::from_secs(5),
        || {
            let proxy = s.proxy.clone();
            let h = h.clone();
            let target = target.clone();
            async move {
                // Any read moves the key; wait until it is on the target.
                let _ = resp3(&proxy).await.call_raw(&["HLEN", &h]).await;
                resp3(&target).await.call_raw(&["EXISTS", &h]).await == b":1\r\n"
            }
        },
    )
    .await;
    let mut direct = resp3(&target).await;
    for args in [vec!["HGETALL", h.as_str()], vec!["ZSCORE", z.as_str(), "m"]] {
        let (via, want) = both(&mut p, &mut direct, &args).await;
        assert_eq!(show(&via), show(&want), "{args:?}");
    }
    assert!(p.call_raw(&["HGETALL", &h]).await.starts_with(b"%2\r\n"));
    assert_eq!(p.call_raw(&["ZSCORE", &z, "m"]).await, b",2.5\r\n");
    let mut source = resp3(&s.cluster.masters[0].addr()).await;
    assert_eq!(source.call_raw(&["EXISTS", &h, &z]).await, b":0\r\n");
}

/// This client's `CLIENT LIST` lines.
async fn client_list(c: &mut RawConn) -> Vec<String> {
    let text = c.call_raw(&["CLIENT", "LIST"]).await;
    let text = show(&text);
    // `$n\r\n…\r\n` (RESP2) or `=n\r\ntxt:…\r\n` (RESP3).
    let body = text.split_once("\r\n").expect("header").1;
    let body = body.strip_prefix("txt:").unwrap_or(body);
    body.trim_end_matches("\r\n")
        .lines()
        .map(str::to_string)
        .collect()
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_info_and_kill_act_on_the_proxys_own_clients() {
    let s = Setup::start().await;
    let mut a = RawConn::connect(&s.proxy).await;
    let hello = a.call_raw(&["HELLO", "3", "SETNAME", "alice"]).await;
    assert!(hello.starts_with(b"%7\r\n"));
    let mut b = RawConn::connect(&s.proxy).await;
    assert_eq!(b.call_raw(&["CLIENT", "SETNAME", "bob"]).await, b"+OK\r\n");
    assert_eq!(b.call_raw(&["GET", &s.k2]).await, b"$-1\r\n");

    let lines = client_list(&mut a).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let alice = lines
        .iter()
        .find(|l| field(l, "name") == "alice")
        .expect("alice listed");
    let bob = lines
        .iter()
        .find(|l| field(l, "name") == "bob")
        .expect("bob listed");
    assert_eq!((field(alice, "resp"), field(alice, "cmd")), ("3", "client|list"));
    assert_eq!((field(bob, "resp"), field(bob, "cmd")), ("2", "get"));
    assert_eq!(field(bob, "laddr"), s.proxy);
    assert_eq!(field(bob, "db"), "0");
    let info = b.call_raw(&["CLIENT", "INFO"]).await;
    let info = show(&info);
    assert!(info.contains(&format!("id={} ", field(bob, "id"))), "{info}");
    assert!(
        info.contains(" name=bob ") && info.contains(" cmd=client|info "),
        "{info}"
    );

    // KILL by ID closes the other connection, and only it.
    let bob_id = field(bob, "id").to_string();
    assert_eq!(a.call_raw(&["CLIENT", "KILL", "ID", &bob_id]).await, b":1\r\n");
    assert!(b.is_closed_by_peer().await, "bob's connection was closed");
    common::eventually("bob is gone from CLIENT LIST", Duration::from_secs(5), || async {
        let mut a = RawConn::connect(&s.proxy).await;
        client_list(&mut a)
            .await
            .iter()
            .all(|l| field(l, "name") != "bob")
    })
    .await;
    assert_eq!(a.call_raw(&["CLIENT", "KILL", "ID", &bob_id]).await, b":0\r\n");

    // The old form, by address; and a filter that selects the caller itself
    // only with SKIPME no.
    let mut c = RawConn::connect(&s.proxy).await;
    let c_info = show(&c.call_raw(&["CLIENT", "INFO"]).await);
    let c_addr = field(c_info.trim_end(), "addr").to_string();
    assert_eq!(a.call_raw(&["CLIENT", "KILL", &c_addr]).await, b"+OK\r\n");
    assert!(c.is_closed_by_peer().await, "killed by address");
    let gone = show(&a.call_raw(&["CLIENT", "KILL", &c_addr]).await);
    assert_eq!(gone, "-ERR No such client\r\n");
    assert_eq!(
        a.call_raw(&["CLIENT", "KILL", "USER", "default"]).await,
        b":0\r\n"
    );
    for (args, want) in [
        (vec!["CLIENT", "NO-EVICT", "on"], "+OK\r\n"),
        (vec!["CLIENT", "NO-TOUCH", "off"], "+OK\r\n"),
        (vec!["CLIENT", "NO-EVICT", "maybe"], "-ERR syntax error\r\n"),
        (
            vec!["CLIENT", "KILL", "ID", "0"],
            "-ERR client-id should be greater than 0\r\n",
        ),
        (
            vec!["CLIENT", "KILL", "USER", "bob"],
            "-ERR No such user 'bob'\r\n",
        ),
    ] {
        assert_eq!(show(&a.call_raw(&args).await), want, "{args:?}");
    }
    let me = show(
        &a.call_raw(&["CLIENT", "KILL", "LADDR", &s.proxy, "SKIPME", "no"])
            .await,
    );
    assert_eq!(me, ":1\r\n");
    assert!(a.is_closed_by_peer().await, "the caller closed after its reply");
}

/// Sends `args` on `c` and returns the reply and how long it took.
async fn timed(c: &mut RawConn, args: &[&str]) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    let reply = c.call_raw(args).await;
    (reply, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_holds_the_proxys_clients() {
    let s = Setup::start().await;
    let proxy: SocketAddr = s.proxy.parse().expect("addr");
    let mut admin = RawConn::connect(&s.proxy).await;
    let mut reader = RawConn::connect(&s.proxy).await;
    let mut writer = resp3(&s.proxy).await;
    assert_eq!(reader.call_raw(&["SET", &s.k1, "before"]).await, b"+OK\r\n");

    // ALL: a GET waits for about the pause.
    let pause = Duration::from_millis(400);
    let ms = pause.as_millis().to_string();
    assert_eq!(admin.call_raw(&["CLIENT", "PAUSE", &ms, "ALL"]).await, b"+OK\r\n");
    let (reply, took) = timed(&mut reader, &["GET", &s.k1]).await;
    assert_eq!(reply, b"$6\r\nbefore\r\n");
    assert!(took >= pause - Duration::from_millis(100), "held {took:?} only");
    assert!(took < Duration::from_secs(4), "held {took:?}");

    // WRITE: reads go on, writes wait until UNPAUSE.
    assert_eq!(
        admin.call_raw(&["CLIENT", "PAUSE", "20000", "WRITE"]).await,
        b"+OK\r\n"
    );
    writer.send(&common::cmd(&["SET", &s.k1, "after"])).await;
    let (reply, took) = timed(&mut reader, &["GET", &s.k1]).await;
    assert_eq!(reply, b"$6\r\nbefore\r\n", "the write is held");
    assert!(took < Duration::from_secs(4), "a read was held {took:?}");
    let early = tokio::time::timeout(Duration::from_millis(300), writer.read_frame()).await;
    assert!(early.is_err(), "the SET was answered during the pause");
    assert_eq!(admin.call_raw(&["CLIENT", "UNPAUSE"]).await, b"+OK\r\n");
    let done = tokio::time::timeout(Duration::from_secs(4), writer.read_frame())
        .await
        .expect("the SET runs after UNPAUSE");
    assert_eq!(done, b"+OK\r\n");
    assert_eq!(reader.call_raw(&["GET", &s.k1]).await, b"$5\r\nafter\r\n");
    for (args, want) in [
        (
            vec!["CLIENT", "PAUSE", "x"],
            "-ERR timeout is not an integer or out of range\r\n",
        ),
        (vec!["CLIENT", "PAUSE", "-1"], "-ERR timeout is negative\r\n"),
        (vec!["CLIENT", "PAUSE", "10", "SOME"], "-ERR syntax error\r\n"),
    ] {
        assert_eq!(show(&admin.call_raw(&args).await), want, "{args:?}");
    }
    // Unaffected: a fresh client through the `redis` crate.
    let mut c = common::cluster::client(proxy).await;
    let v: String = redis::cmd("GET")
        .arg(&s.k1)
        .query_async(&mut c)
        .await
        .expect("get");
    assert_eq!(v, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_authenticates_and_backends_with_a_password_speak_resp3() {
    use reborn::proxy::{Bound, ProxyConfig};
    let zk = common::zk_config();
    let masters = vec![
        common::redis_with_password("backpw"),
        common::redis_with_password("backpw"),
    ];
    let store = reborn::topo::Store::connect(&zk).await.expect("zk");
    common::cluster::seed_two_groups(&store, &masters).await;
    let cfg = ProxyConfig {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        zk,
        auth: "frontpw".into(),
        backend_auth: "backpw".into(),
        ..ProxyConfig::default()
    };
    let bound = Bound::bind(cfg).await.expect("bind");
    let proxy = bound.local_addr().expect("addr").to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    tokio::spawn(bound.run(stop));

    let node = store.paths().proxy(&proxy);
    common::eventually("the proxy registers", Duration::from_secs(15), || async {
        store.exists(&node).await.unwrap_or(false)
    })
    .await;
    let mut c = RawConn::connect(&proxy).await;
    let refused = show(&c.call_raw(&["HELLO", "3"]).await);
    assert!(refused.starts_with("-NOAUTH"), "{refused}");
    let wrong = show(&c.call_raw(&["HELLO", "3", "AUTH", "default", "nope"]).await);
    assert!(wrong.starts_with("-WRONGPASS"), "{wrong}");
    let hello = c
        .call_raw(&["HELLO", "3", "AUTH", "default", "frontpw", "SETNAME", "app"])
        .await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", show(&hello));
    let key = key_on("auth", false);
    assert_eq!(c.call_raw(&["HSET", &key, "f", "v"]).await, b":1\r\n");
    // The backend connection said HELLO 3 AUTH default backpw: a map comes back.
    assert_eq!(
        c.call_raw(&["HGETALL", &key]).await,
        b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    assert_eq!(c.call_raw(&["CLIENT", "GETNAME"]).await, b"$3\r\napp\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_blocked_command_follows_its_slot_and_keeps_speaking_resp3() {
    let s = Setup::start().await;
    let queue = format!("{{{}}}q", s.k1);
    let (source, target) = (s.cluster.masters[0].addr(), s.cluster.masters[1].addr());
    let mut waiting = resp3(&s.proxy).await;
    waiting.send(&common::cmd(&["BLPOP", &queue, "0"])).await;
    common::wait_blocked(&[(&source, 1)], "BLPOP parked on the source").await;
    begin_migration(
        &s.cluster.store,
        &[slot_of(queue.as_bytes())],
        2,
        Duration::from_secs(5),
    )
    .await
    .expect("switch to migrate");
    common::wait_blocked(&[(&source, 0), (&target, 1)], "BLPOP re-issued on the target").await;
    let mut p = resp3(&s.proxy).await;
    assert_eq!(p.call_raw(&["RPUSH", &queue, "x"]).await, b":1\r\n");
    let got = tokio::time::timeout(Duration::from_secs(5), waiting.read_frame())
        .await
        .expect("woken by the push on the target");
    let want = format!("*2\r\n${}\r\n{queue}\r\n$1\r\nx\r\n", queue.len());
    assert_eq!(show(&got), want);
    // The re-issued call ran on a RESP3 connection: a timeout is RESP3's null.
    assert_eq!(waiting.call_raw(&["BLPOP", &queue, "0.1"]).await, b"_\r\n");
}
