//! Integration tests of `reborn logic` against a real cluster: ZooKeeper, two
//! redis-servers and a reborn proxy in-process (tests/common/cluster.rs), and
//! logic in-process pointed at the proxy. Sessions and the queue are read back
//! with a RESP client *through the proxy*; comets are ZooKeeper registrations
//! made with `im::discovery`, except in the room-count test, which runs a real
//! comet with real clients.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use reborn::im::discovery::{self, Instance, InstanceKind};
use reborn::im::logic::{LogicConfig, token};
use reborn::im::proto::logic::logic_client::LogicClient;
use reborn::im::proto::logic::push_msg::Type as PushType;
use reborn::im::proto::logic::{ConnectReq, DisconnectReq, HeartbeatReq, NodesReq, OnlineReq, PushMsg};
use reborn::im::queue;
use reborn::libs::resp_client::{self, Frame, RespConn};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

use common::eventually;
use common::http;
use common::im::{LogicUp, logic_json};

const WAIT: Duration = Duration::from_secs(15);

/// The cluster and logic (`common::im::LogicUp`), with logic's gRPC API.
struct Harness {
    up: LogicUp,
}

impl Deref for Harness {
    type Target = LogicUp;

    fn deref(&self) -> &LogicUp {
        &self.up
    }
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tune: impl FnOnce(&mut LogicConfig)) -> Harness {
        Harness {
            up: LogicUp::start(tune).await,
        }
    }

    fn grpc(&self) -> LogicClient<Channel> {
        let endpoint =
            Endpoint::from_shared(format!("http://{}", self.logic().grpc_addr())).expect("endpoint");
        LogicClient::new(endpoint.connect_lazy())
    }

    async fn connect(
        &self,
        server: &str,
        body: Value,
    ) -> Result<reborn::im::proto::logic::ConnectReply, tonic::Status> {
        let req = ConnectReq {
            server: server.into(),
            cookie: String::new(),
            token: serde_json::to_vec(&body).expect("json"),
            key: String::new(),
        };
        self.grpc().connect(req).await.map(tonic::Response::into_inner)
    }

    async fn shutdown(mut self) {
        self.up.shutdown().await;
    }
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> Value {
    logic_json(addr, "POST", path, body.as_bytes().to_vec()).await
}

async fn get(addr: SocketAddr, path: &str) -> Value {
    logic_json(addr, "GET", path, Vec::new()).await
}

fn text(f: Frame) -> Option<String> {
    resp_client::bytes(f)
        .expect("a string reply")
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

async fn hgetall(c: &mut RespConn, key: &str) -> BTreeMap<String, String> {
    let items = resp_client::array(c.call(&["HGETALL", key]).await.expect("hgetall")).expect("array");
    let mut it = items.into_iter();
    let mut out = BTreeMap::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.insert(text(k).unwrap_or_default(), text(v).unwrap_or_default());
    }
    out
}

async fn ttl(c: &mut RespConn, key: &str) -> i64 {
    resp_client::int(c.call(&["TTL", key]).await.expect("ttl")).expect("int")
}

async fn get_key(c: &mut RespConn, key: &str) -> Option<String> {
    text(c.call(&["GET", key]).await.expect("get"))
}

/// Every queued message, with the index of the stream it is in.
async fn queued(c: &mut RespConn) -> Vec<(usize, PushMsg)> {
    let mut out = Vec::new();
    for i in 0..queue::DEFAULT_STREAMS {
        let reply = c
            .call(&["XRANGE", &queue::stream_key(i), "-", "+"])
            .await
            .expect("xrange");
        for entry in resp_client::array(reply).expect("entries") {
            let mut parts = resp_client::array(entry).expect("entry").into_iter();
            let fields = resp_client::array(parts.nth(1).expect("fields")).expect("fields");
            assert_eq!(fields.len(), 2, "one field per entry");
            let mut f = fields.into_iter();
            assert_eq!(text(f.next().expect("name")).as_deref(), Some(queue::FIELD));
            let value = resp_client::bytes(f.next().expect("value"))
                .expect("bytes")
                .expect("value");
            out.push((i, queue::decode(&value).expect("a PushMsg")));
        }
    }
    out
}

/// The queued key pushes of `op`: server → keys (sorted), each checked to sit
/// in its own stream and to carry `body`.
fn pushes_of(all: &[(usize, PushMsg)], op: i32, body: &[u8]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (stream, m) in all.iter().filter(|(_, m)| m.operation == op) {
        assert_eq!(m.r#type(), PushType::Push);
        assert_eq!(m.msg, body);
        assert_eq!(
            *stream,
            queue::stream_of(m, queue::DEFAULT_STREAMS),
            "right stream"
        );
        assert!(
            out.insert(m.server.clone(), m.keys.iter().cloned().collect())
                .is_none(),
            "one message per server: {m:?}"
        );
    }
    out
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_stores_the_session_and_disconnect_removes_it() {
    let h = Harness::start().await;
    let body =
        json!({"mid": 123, "key": "k1", "room_id": "live://1", "platform": "web", "accepts": [1000, 1001]});
    let reply = h.connect("c1", body).await.expect("connected");
    assert_eq!(
        (reply.mid, reply.key.as_str(), reply.room_id.as_str()),
        (123, "k1", "live://1")
    );
    assert_eq!(reply.accepts, vec![1000, 1001]);
    assert_eq!(
        reply.heartbeat,
        Duration::from_secs(480).as_nanos() as i64,
        "4m × 2 in ns"
    );

    let mut r = h.resp().await;
    assert_eq!(
        hgetall(&mut r, "mid_123").await,
        BTreeMap::from([("k1".into(), "c1".into())])
    );
    assert_eq!(get_key(&mut r, "key_k1").await.as_deref(), Some("c1"));
    for key in ["mid_123", "key_k1"] {
        let t = ttl(&mut r, key).await;
        assert!((1700..=1800).contains(&t), "{key} TTL {t}");
    }

    // No mid, no key: a UUID key and no mid_ hash (goim).
    let anon = h.connect("c1", json!({"room_id": ""})).await.expect("connected");
    assert!(uuid::Uuid::parse_str(&anon.key).is_ok(), "{}", anon.key);
    assert_eq!(
        get_key(&mut r, &format!("key_{}", anon.key)).await.as_deref(),
        Some("c1")
    );
    assert!(hgetall(&mut r, "mid_0").await.is_empty());

    let del = |mid, key: &str| DisconnectReq {
        mid,
        key: key.into(),
        server: "c1".into(),
    };
    let has = h
        .grpc()
        .disconnect(del(123, "k1"))
        .await
        .expect("disconnect")
        .into_inner()
        .has;
    assert!(has);
    assert!(hgetall(&mut r, "mid_123").await.is_empty());
    assert_eq!(get_key(&mut r, "key_k1").await, None);
    let again = h
        .grpc()
        .disconnect(del(123, "k1"))
        .await
        .expect("disconnect")
        .into_inner()
        .has;
    assert!(!again, "nothing left to remove");

    // The client reconnected to comet c2 before c1 reported the old
    // connection gone: c1's late Disconnect must leave c2's session alone.
    let body = json!({"mid": 123, "key": "k1", "room_id": "", "platform": "web", "accepts": []});
    h.connect("c2", body).await.expect("connected to c2");
    let late = h
        .grpc()
        .disconnect(del(123, "k1"))
        .await
        .expect("disconnect")
        .into_inner()
        .has;
    assert!(!late, "c1 no longer owns k1");
    assert_eq!(get_key(&mut r, "key_k1").await.as_deref(), Some("c2"));
    assert_eq!(
        hgetall(&mut r, "mid_123").await,
        BTreeMap::from([("k1".into(), "c2".into())])
    );

    // A client that sent no key, its Connect run twice (the comet tried the
    // next logic after a timeout, or hedged): the key the comet drew for the
    // connection both times, so one session, not two.
    let keyless = ConnectReq {
        server: "c1".into(),
        cookie: String::new(),
        token: serde_json::to_vec(&json!({"mid": 124, "room_id": "", "accepts": []})).expect("json"),
        key: "drawn-by-c1".into(),
    };
    for _ in 0..2 {
        let reply = h.grpc().connect(keyless.clone()).await.expect("connected");
        assert_eq!(reply.into_inner().key, "drawn-by-c1");
    }
    assert_eq!(
        hgetall(&mut r, "mid_124").await,
        BTreeMap::from([("drawn-by-c1".into(), "c1".into())])
    );

    // Not JSON: refused with a clear message.
    let req = ConnectReq {
        server: "c1".into(),
        cookie: String::new(),
        token: b"not json".to_vec(),
        key: String::new(),
    };
    let err = h.grpc().connect(req).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("bad auth body"), "{}", err.message());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_renews_and_re_adds_a_vanished_key() {
    let h = Harness::start().await;
    h.connect("c1", json!({"mid": 5, "key": "hb"}))
        .await
        .expect("connected");
    let mut r = h.resp().await;
    let _ = r.call(&["EXPIRE", "mid_5", "100"]).await.expect("expire");
    let _ = r.call(&["DEL", "key_hb"]).await.expect("del");
    assert_eq!(get_key(&mut r, "key_hb").await, None);

    let hb = HeartbeatReq {
        mid: 5,
        key: "hb".into(),
        server: "c1".into(),
    };
    h.grpc().heartbeat(hb).await.expect("heartbeat");
    assert_eq!(get_key(&mut r, "key_hb").await.as_deref(), Some("c1"), "re-added");
    assert!(ttl(&mut r, "key_hb").await > 1700);
    assert!(ttl(&mut r, "mid_5").await > 1700, "renewed from 100 s");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_by_mids_and_keys_queue_one_message_per_server() {
    let h = Harness::start().await;
    for (server, mid, key) in [("c1", 7, "a"), ("c2", 7, "b"), ("c1", 8, "c")] {
        h.connect(server, json!({"mid": mid, "key": key}))
            .await
            .expect("connected");
    }
    let a = h.http();
    let r = post(
        a,
        "/goim/push/mids?operation=1000&mids=7&mids=8&mids=999",
        "hello",
    )
    .await;
    assert_eq!(r, json!({"code": 0, "message": ""}));
    let r = post(
        a,
        "/goim/push/keys?operation=1001&keys=a&keys=b&keys=gone",
        "by key",
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");

    let mut c = h.resp().await;
    let all = queued(&mut c).await;
    let by_mid = pushes_of(&all, 1000, b"hello");
    assert_eq!(
        by_mid,
        BTreeMap::from([("c1".into(), set(&["a", "c"])), ("c2".into(), set(&["b"]))])
    );
    let by_key = pushes_of(&all, 1001, b"by key");
    assert_eq!(
        by_key,
        BTreeMap::from([("c1".into(), set(&["a"])), ("c2".into(), set(&["b"]))])
    );
    assert_eq!(all.len(), 4);

    let metrics = http_text(a, "/metrics").await;
    assert!(
        metrics.contains("reborn_logic_pushes_accepted_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("reborn_logic_push_messages_queued_total 4\n"),
        "{metrics}"
    );
    h.shutdown().await;
}

async fn http_text(addr: SocketAddr, path: &str) -> String {
    let (_, bytes) = http::request(addr, "GET", path, Vec::new()).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_and_broadcast_pushes_are_queued() {
    let h = Harness::start().await;
    let a = h.http();
    assert_eq!(
        post(
            a,
            "/goim/push/room?operation=1000&type=live&room=1000",
            "to the room"
        )
        .await["code"],
        0
    );
    assert_eq!(
        post(a, "/goim/push/all?operation=1002&speed=5", "to everyone").await["code"],
        0
    );
    let mut c = h.resp().await;
    let all = queued(&mut c).await;
    assert_eq!(all.len(), 2, "{all:?}");
    for (stream, m) in &all {
        assert_eq!(*stream, queue::stream_of(m, queue::DEFAULT_STREAMS));
        match m.r#type() {
            PushType::Room => {
                assert_eq!((m.operation, m.room.as_str()), (1000, "live://1000"));
                assert_eq!(m.msg, b"to the room");
            }
            PushType::Broadcast => {
                assert_eq!((m.operation, m.speed), (1002, 5));
                assert_eq!(m.msg, b"to everyone");
            }
            PushType::Push => panic!("no key push was made: {m:?}"),
        }
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_code_minus_400_with_the_reason() {
    let h = Harness::start_with(|c| c.http.max_body = 1024).await;
    let a = h.http();
    let cases = [
        ("POST", "/goim/push/room?operation=1000&type=live", "'room'"),
        ("POST", "/goim/push/room?type=live&room=1", "'operation'"),
        (
            "POST",
            "/goim/push/mids?operation=1000&mids=abc",
            "'mids' = 'abc' is not an int64",
        ),
        ("POST", "/goim/push/keys?operation=x&keys=a", "'operation' = 'x'"),
        ("POST", "/goim/push/all", "'operation'"),
        ("GET", "/goim/online/top?type=live", "'limit'"),
        ("GET", "/goim/online/room?type=live", "'rooms'"),
    ];
    for (method, path, reason) in cases {
        let r = logic_json(a, method, path, b"m".to_vec()).await;
        assert_eq!(r["code"], -400, "{path}: {r}");
        let msg = r["message"].as_str().unwrap_or_default();
        assert!(msg.contains(reason), "{path}: {msg}");
        assert!(r.get("data").is_none(), "{r}");
    }
    let big = post(a, "/goim/push/all?operation=1", &"x".repeat(2000)).await;
    assert_eq!(big["code"], -400, "{big}");
    assert!(
        big["message"]
            .as_str()
            .unwrap_or_default()
            .contains("over 1024 bytes"),
        "{big}"
    );
    // A web page elsewhere cannot push through a visitor's browser (a
    // text/plain POST needs no preflight); tools send no Origin.
    let mut sock = tokio::net::TcpStream::connect(a).await.expect("connect");
    let req = format!(
        "POST /goim/push/all?operation=1000 HTTP/1.1\r\nHost: {a}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    );
    tokio::io::AsyncWriteExt::write_all(&mut sock, req.as_bytes())
        .await
        .expect("write");
    let mut reply = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut sock, &mut reply)
        .await
        .expect("read");
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    // No recipients is no error, as in goim (a fan-out script's empty list):
    // code 0, nothing queued.
    for path in [
        "/goim/push/mids?operation=1000",
        "/goim/push/mids?operation=1000&mids=",
        "/goim/push/keys?operation=1000",
    ] {
        let r = post(a, path, "m").await;
        assert_eq!(r["code"], 0, "{path}: {r}");
    }
    let mut c = h.resp().await;
    assert!(queued(&mut c).await.is_empty(), "nothing queued by a bad request");
    h.shutdown().await;
}

fn comet(id: &str, addr: &str, conns: u64, ips: u64) -> Instance {
    Instance {
        id: id.into(),
        grpc: "127.0.0.1:1".into(),
        addrs: vec![addr.into()],
        tcp_port: 3101,
        ws_port: 3102,
        weight: 10,
        conn_count: conns,
        ip_count: ips,
        ..Instance::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_counts_of_two_comets_are_summed() {
    let h = Harness::start().await;
    h.register_comet(comet("c1", "10.0.0.1", 4, 3)).await;
    h.register_comet(comet("c2", "10.0.0.2", 6, 2)).await;
    let renew = |server: &str, rooms: &[(&str, i32)]| OnlineReq {
        server: server.into(),
        room_count: rooms.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
    };
    let mut g = h.grpc();
    g.renew_online(renew("c1", &[("live://1", 3), ("live://2", 1)]))
        .await
        .expect("renew");
    g.renew_online(renew("c2", &[("live://1", 4), ("game://9", 2)]))
        .await
        .expect("renew");
    // A third comet whose report is 10 minutes old: deleted, not counted.
    h.register_comet(comet("c3", "10.0.0.3", 0, 0)).await;
    let mut r = h.resp().await;
    let ten_minutes_ago = reborn::libs::clock::unix_secs() - 600;
    let stale = json!({"server": "c3", "room_count": {"live://1": 100}, "updated": ten_minutes_ago});
    r.call(&["HSET", "ol_c3", "0", &stale.to_string()])
        .await
        .expect("hset");

    let a = h.http();
    let want_top = json!([{"room_id": "1", "count": 7}, {"room_id": "2", "count": 1}]);
    eventually("/online/top sums both comets", WAIT, || async {
        get(a, "/goim/online/top?type=live&limit=10").await["data"] == want_top
    })
    .await;
    let top1 = get(a, "/goim/online/top?type=live&limit=1").await;
    assert_eq!(top1["data"], json!([{"room_id": "1", "count": 7}]));
    let none = get(a, "/goim/online/top?type=nothing&limit=5").await;
    assert_eq!(none, json!({"code": 0, "message": "", "data": []}));
    let rooms = get(a, "/goim/online/room?type=live&rooms=1&rooms=404").await;
    assert_eq!(rooms["data"], json!({"1": 7, "404": 0}));
    // The loader sees c3 once discovery does; its stale report then goes.
    eventually("the stale report is deleted", WAIT, || {
        let proxy = h.proxy.to_string();
        async move {
            let Ok(mut c) = RespConn::connect(&proxy, Duration::from_secs(5)).await else {
                return false;
            };
            let exists = c.call(&["EXISTS", "ol_c3"]).await.map(resp_client::int);
            matches!(exists, Ok(Ok(0)))
        }
    })
    .await;
    assert_eq!(
        get(a, "/goim/online/top?type=live&limit=10").await["data"],
        want_top
    );
    let ol_c1 = ttl(&mut r, "ol_c1").await;
    assert!((1700..=1800).contains(&ol_c1), "ol_ TTL {ol_c1}");

    // RenewOnline answers with the cluster-wide counts.
    let all = g
        .renew_online(renew("c1", &[("live://1", 3)]))
        .await
        .expect("renew")
        .into_inner();
    assert_eq!(all.all_room_count.get("live://1"), Some(&7));
    assert_eq!(all.all_room_count.get("game://9"), Some(&2));

    eventually("/online/total sums the comets' metadata", WAIT, || async {
        get(a, "/goim/online/total").await["data"] == json!({"ip_count": 5, "conn_count": 10})
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_nodes_reflect_the_registered_comets() {
    let h = Harness::start().await;
    // Equal weights; c2 already holds many connections, so c1 comes first.
    h.register_comet(comet("c1", "10.0.0.1", 0, 0)).await;
    h.register_comet(comet("c2", "10.0.0.2", 1000, 10)).await;
    let a = h.http();
    eventually("both comets are nodes", WAIT, || async {
        get(a, "/goim/nodes/weighted?platform=ios").await["data"]["nodes"] == json!(["10.0.0.1", "10.0.0.2"])
    })
    .await;
    let w = get(a, "/goim/nodes/weighted").await["data"].clone();
    assert_eq!(
        (w["tcp_port"].as_i64(), w["ws_port"].as_i64()),
        (Some(3101), Some(3102))
    );
    assert_eq!(w["wss_port"], 0, "neither comet serves WSS");
    assert_eq!(
        (w["heartbeat"].as_i64(), w["heartbeat_max"].as_i64()),
        (Some(240), Some(2))
    );
    assert_eq!(w["backoff"]["max_delay"], 300);
    let listed = get(a, "/goim/nodes/instances").await["data"].clone();
    let ids: Vec<Value> = listed
        .as_array()
        .map(|l| l.iter().map(|i| i["id"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [json!("c1"), json!("c2")]);
    // goim's discovery fields, which monitoring written for goim reads.
    let first = &listed[0];
    assert_eq!(
        (&first["hostname"], &first["appid"]),
        (&json!("c1"), &json!("goim.comet"))
    );
    assert_eq!(
        first["metadata"]["conn_count"],
        json!(first["conn_count"].to_string()),
        "{first}"
    );
    assert_eq!(first["metadata"]["offline"], json!("false"), "{first}");
    let nodes = h
        .grpc()
        .nodes(NodesReq {
            platform: "android".into(),
            client_ip: String::new(),
        })
        .await
        .expect("nodes")
        .into_inner();
    assert_eq!(nodes.nodes.len(), 2);
    assert_eq!((nodes.tcp_port, nodes.wss_port), (3101, 0));

    // Both comets now serve WSS: clients are told [node] wss_port.
    for (id, addr) in [("c1", "10.0.0.1"), ("c2", "10.0.0.2")] {
        h.register_comet(Instance {
            wss_port: 3103,
            ..comet(id, addr, 0, 0)
        })
        .await;
    }
    eventually(
        "the WSS port is told once every comet serves it",
        WAIT,
        || async { get(a, "/goim/nodes/weighted?platform=ios").await["data"]["wss_port"] == 3103 },
    )
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_forged_and_expired_tokens_are_refused() {
    let h = Harness::start_with(|c| c.auth.secret = "s3cret".into()).await;
    let now = reborn::libs::clock::unix_secs();
    let good = token::sign(b"s3cret", 42, "dev", now + 3600).expect("sign");
    let reply = h
        .connect("c1", json!({"mid": 42, "key": "dev", "token": good}))
        .await
        .expect("a valid token connects");
    assert_eq!((reply.mid, reply.key.as_str()), (42, "dev"));

    let forged = token::sign(b"guess", 42, "dev", now + 3600).expect("sign");
    let expired = token::sign(b"s3cret", 42, "dev", now - 1).expect("sign");
    let cases: [(Value, &str); 5] = [
        (json!({"mid": 42, "key": "dev", "token": forged}), "signature"),
        (json!({"mid": 42, "key": "dev", "token": expired}), "expired"),
        (json!({"mid": 43, "key": "dev", "token": good}), "not mid 43"),
        (json!({"mid": 42, "key": "other", "token": good}), "signature"),
        (json!({"mid": 42, "key": "dev"}), "token is required"),
    ];
    for (body, reason) in cases {
        let err = h.connect("c1", body.clone()).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{body}");
        assert!(err.message().contains(reason), "{body}: {}", err.message());
    }
    let mut r = h.resp().await;
    assert_eq!(
        hgetall(&mut r, "mid_43").await,
        BTreeMap::new(),
        "no session for a refused mid"
    );
    assert_eq!(get_key(&mut r, "key_other").await, None);

    // Logic registered itself with both addresses.
    let logics = discovery::list(&h.cluster.store, InstanceKind::Logic)
        .await
        .expect("list");
    let me: HashMap<&str, &Instance> = logics.iter().map(|i| (i.id.as_str(), i)).collect();
    let l = me.get(h.logic().id()).expect("logic registered");
    assert_eq!(l.grpc, h.logic().grpc_addr().to_string());
    assert_eq!(l.http, h.logic().http_addr().to_string());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_proxy_is_skipped_and_no_live_proxy_is_code_minus_500() {
    let dead = format!("127.0.0.1:{}", common::free_port());
    let h = Harness::start_with(|c| c.cluster.addrs.insert(0, dead.clone())).await;
    let a = h.http();
    // Round robin starts at each proxy in turn: every push must still land.
    for i in 0..4 {
        let r = post(
            a,
            &format!("/goim/push/room?operation=1000&type=live&room={i}"),
            "m",
        )
        .await;
        assert_eq!(r["code"], 0, "push {i}: {r}");
    }
    let mut c = h.resp().await;
    assert_eq!(queued(&mut c).await.len(), 4);
    h.shutdown().await;

    let h = Harness::start_with(|c| c.cluster.addrs = vec![dead.clone()]).await;
    let r = post(h.http(), "/goim/push/all?operation=1000", "m").await;
    assert_eq!(r["code"], -500, "{r}");
    let msg = r["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&dead), "names the proxy: {msg}");
    let err = h
        .connect("c1", json!({"mid": 1}))
        .await
        .expect_err("no session store");
    assert_eq!(
        err.code(),
        tonic::Code::Unavailable,
        "nothing was written: comet may retry"
    );
    h.shutdown().await;
}

/// Defect 3: a comet's report replaces its previous one, rooms gone to zero
/// included. Unlike the rest of this file a real comet runs here (in-process,
/// reporting every 200 ms), with real clients: X in `live://alpha`, Y in
/// `live://beta`. When Y leaves, beta's count must drop to 0 (it stayed 1
/// while `ol_` kept the shard that emptied), and when X leaves too, alpha's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_everyone_left_drops_to_zero_after_the_next_report() {
    use reborn::im::client::ImClient;
    use reborn::im::comet;

    let h = Harness::start().await;
    let config = common::im::loopback_comet("vm-26301", "10.8.0.1", &h.cluster.zk);
    let running = comet::start(config).await.expect("comet starts");
    let tcp = running.tcp_addr.to_string();
    let login = async |mid: i64, room: &str| -> ImClient {
        let body = serde_json::to_vec(&json!({
            "mid": mid, "key": format!("k{mid}"), "room_id": room, "platform": "linux", "accepts": [1000]
        }))
        .expect("json");
        // The comet learns logic's address from ZooKeeper: retry until then.
        common::eventually_ok("auth succeeds", WAIT, async || {
            let mut c = ImClient::tcp(&tcp).await?;
            c.auth(&body).await.map(|()| c)
        })
        .await
    };
    let x = login(1, "live://alpha").await;
    let y = login(2, "live://beta").await;

    let a = h.http();
    let path = "/goim/online/room?type=live&rooms=alpha&rooms=beta";
    eventually("both rooms count their client", WAIT, || async {
        get(a, path).await["data"] == json!({"alpha": 1, "beta": 1})
    })
    .await;

    drop(y);
    eventually("beta drops to 0, alpha stays 1", WAIT, || async {
        get(a, path).await["data"] == json!({"alpha": 1, "beta": 0})
    })
    .await;
    // The shard that held beta is rewritten, not left with the old count.
    let mut r = h.resp().await;
    let ol = hgetall(&mut r, "ol_vm-26301").await;
    assert!(
        ol.values().all(|shard| !shard.contains("live://beta")),
        "beta left ol_: {ol:?}"
    );
    assert!(
        ol.values().any(|shard| shard.contains("live://alpha")),
        "alpha is in ol_: {ol:?}"
    );
    assert_eq!(
        get(a, "/goim/online/top?type=live&limit=10").await["data"],
        json!([{"room_id": "alpha", "count": 1}])
    );

    // The last client leaves: an empty report still replaces the old one.
    drop(x);
    eventually("alpha drops to 0 too", WAIT, || async {
        get(a, path).await["data"] == json!({"alpha": 0, "beta": 0})
    })
    .await;
    assert_eq!(
        get(a, "/goim/online/top?type=live&limit=10").await["data"],
        json!([])
    );

    running.shutdown().await;
    h.shutdown().await;
}

/// Logic in front of two proxies: `restarted`, a `reborn proxy` process, and an
/// in-process one; its pools hold open connections to both (default `conns`).
async fn logic_on_two_proxies(
    cluster: &common::cluster::Cluster,
) -> (
    common::cluster::ProxyProcess,
    SocketAddr,
    reborn::im::logic::RunningLogic,
) {
    let restarted = cluster.proxy_process_with(Duration::from_secs(5), None, "").await;
    let steady = cluster.proxy().await;
    let mut config = LogicConfig::default();
    config.http.addr = "127.0.0.1:0".into();
    config.grpc.addr = "127.0.0.1:0".into();
    config.cluster.addrs = vec![restarted.id.clone(), steady.to_string()];
    config.cluster.timeout = Duration::from_secs(5);
    config.zk = cluster.zk.clone();
    // Only the pushes below use the pools: a room-count reload would meet
    // (and drop) the stale connections first.
    config.online.load_interval = Duration::from_secs(3600);
    let logic = reborn::im::logic::start(config).await.expect("logic starts");
    (restarted, steady, logic)
}

/// `n` room pushes; the replies that are not code 0.
async fn failed_pushes(http: SocketAddr, tag: &str, n: usize) -> Vec<Value> {
    let mut failed = Vec::new();
    for i in 0..n {
        let r = post(
            http,
            &format!("/goim/push/room?operation=1000&type=live&room={tag}{i}"),
            "m",
        )
        .await;
        if r["code"] != 0 {
            failed.push(r);
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_or_stopped_proxy_costs_no_push() {
    let cluster = common::cluster::Cluster::start().await;
    let (mut restarted, steady, logic) = logic_on_two_proxies(&cluster).await;
    let http = logic.http_addr();
    // Warm up: round robin over two proxies, each pool's 8 connections open.
    assert_eq!(failed_pushes(http, "warm", 40).await, Vec::<Value>::new());

    // A routine restart: SIGTERM, wait for the exit, start again on the same
    // address, and wait until it serves commands.
    common::cluster::signal(restarted.child.id(), "-TERM");
    let _ = restarted.child.wait();
    restarted.restart();
    common::eventually_ok("the restarted proxy serves", WAIT, async || {
        let mut c = RespConn::connect(&restarted.id, Duration::from_secs(1)).await?;
        resp_client::check(c.call(&["GET", "probe"]).await?)
    })
    .await;
    let failed = failed_pushes(http, "restarted", 30).await;
    assert!(
        failed.is_empty(),
        "stale pooled connections failed pushes: {failed:?}"
    );

    // Stopped for good: every push goes to the other proxy.
    let _ = restarted.child.kill();
    let _ = restarted.child.wait();
    let failed = failed_pushes(http, "stopped", 30).await;
    assert!(failed.is_empty(), "a stopped proxy failed pushes: {failed:?}");

    // Nothing was sent twice: one queued message per push.
    let mut c = common::im::proxy_conn(&steady.to_string()).await;
    assert_eq!(queued(&mut c).await.len(), 100);
    logic.shutdown().await;
}

/// Logic behind a proxy with a password: with `[cluster] auth` it logs in
/// (before, every push failed with NOAUTH and `reborn up` could not run the
/// push system behind a proxy with `auth`); with a wrong one, a push says
/// why it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logic_logs_in_to_a_proxy_with_a_password() {
    let h = Harness::start().await;
    let guarded = h.cluster.proxy_with(|cfg| cfg.auth = "pw".into()).await;
    let logic_on = async |password: &str| {
        let mut config = LogicConfig::default();
        config.http.addr = "127.0.0.1:0".into();
        config.grpc.addr = "127.0.0.1:0".into();
        config.cluster.addrs = vec![guarded.to_string()];
        config.cluster.auth = password.into();
        config.zk = h.cluster.zk.clone();
        reborn::im::logic::start(config).await.expect("logic starts")
    };
    let right = logic_on("pw").await;
    let r = post(right.http_addr(), "/goim/push/mids?operation=1000&mids=1", "m").await;
    assert_eq!(r["code"], 0, "{r}");
    right.shutdown().await;
    let wrong = logic_on("nope").await;
    let r = post(wrong.http_addr(), "/goim/push/mids?operation=1000&mids=1", "m").await;
    assert_eq!(r["code"], -500, "{r}");
    assert!(
        r["message"].as_str().is_some_and(|m| m.contains("WRONGPASS")),
        "{r}"
    );
    wrong.shutdown().await;
    h.shutdown().await;
}
