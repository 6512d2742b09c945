//! Integration tests of `reborn comet` against a real ZooKeeper: clients over
//! TCP, WebSocket and WSS authenticate, heartbeat, change rooms and receive
//! what gRPC pushes (by key with the op filter, by room without it, to all),
//! duplicate keys kick, and bad input of each kind closes only its own
//! connection.
//!
//! Logic is test scaffolding here: a minimal in-test `goim.logic.Logic` server
//! registered in ZooKeeper through `im::discovery`, exactly as the real logic
//! registers (the real one lands separately and is tested end to end there).
//! It accepts goim's auth JSON and refuses any body containing "forged".

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::eventually;
use common::im::heartbeat_until;
use reborn::im::client::{Delivery, ImClient, ImClientError};
use reborn::im::comet::{self, CometConfig, RunningComet};
use reborn::im::discovery::{self, Instance, InstanceKind};
use reborn::im::frame::{self, Frame, op, push_frame};
use reborn::im::proto::comet::comet_client::CometClient;
use reborn::im::proto::comet::{BroadcastReq, BroadcastRoomReq, PushMsgReq, RoomsReq};
use reborn::im::proto::logic::logic_server::{Logic, LogicServer};
use reborn::im::proto::logic::{
    ConnectReply, ConnectReq, DisconnectReply, DisconnectReq, HeartbeatReply, HeartbeatReq, NodesReply,
    NodesReq, OnlineReply, OnlineReq, ReceiveReply, ReceiveReq,
};
use reborn::im::proto::protocol::Proto;
use reborn::topo::Store;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(10);
/// The fake logic adds this to the count of the room "live://cluster" in its
/// RenewOnline answer, standing for members on other comets.
const ELSEWHERE: i32 = 100;

/// What the fake logic was asked.
#[derive(Default, Debug)]
struct Calls {
    disconnects: Vec<String>,
    receives: Vec<(i64, i32, Vec<u8>)>,
    renewals: usize,
    heartbeats: usize,
}

/// Test scaffolding: the smallest `goim.logic.Logic` comet can talk to.
#[derive(Clone, Default)]
struct FakeLogic {
    calls: Arc<Mutex<Calls>>,
}

#[tonic::async_trait]
impl Logic for FakeLogic {
    async fn connect(&self, req: Request<ConnectReq>) -> Result<Response<ConnectReply>, Status> {
        let req = req.into_inner();
        if String::from_utf8_lossy(&req.token).contains("forged") {
            return Err(Status::unauthenticated("forged token"));
        }
        let v: serde_json::Value = serde_json::from_slice(&req.token)
            .map_err(|e| Status::unauthenticated(format!("bad auth body: {e}")))?;
        Ok(Response::new(ConnectReply {
            mid: v["mid"].as_i64().unwrap_or(0),
            key: v["key"].as_str().unwrap_or("").to_string(),
            room_id: v["room_id"].as_str().unwrap_or("").to_string(),
            accepts: v["accepts"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_i64()).map(|x| x as i32).collect())
                .unwrap_or_default(),
            // Test-only knob of the fake: the idle timeout it hands out.
            heartbeat: Duration::from_millis(v["idle_ms"].as_u64().unwrap_or(240_000)).as_nanos() as i64,
        }))
    }

    async fn disconnect(&self, req: Request<DisconnectReq>) -> Result<Response<DisconnectReply>, Status> {
        self.calls.lock().unwrap().disconnects.push(req.into_inner().key);
        Ok(Response::new(DisconnectReply { has: true }))
    }

    async fn heartbeat(&self, _req: Request<HeartbeatReq>) -> Result<Response<HeartbeatReply>, Status> {
        self.calls.lock().unwrap().heartbeats += 1;
        Ok(Response::new(HeartbeatReply {}))
    }

    async fn renew_online(&self, req: Request<OnlineReq>) -> Result<Response<OnlineReply>, Status> {
        let mut all = req.into_inner().room_count;
        if let Some(n) = all.get_mut("live://cluster") {
            *n += ELSEWHERE;
        }
        self.calls.lock().unwrap().renewals += 1;
        Ok(Response::new(OnlineReply { all_room_count: all }))
    }

    async fn receive(&self, req: Request<ReceiveReq>) -> Result<Response<ReceiveReply>, Status> {
        let req = req.into_inner();
        let p = req.proto.unwrap_or_default();
        self.calls.lock().unwrap().receives.push((req.mid, p.op, p.body));
        Ok(Response::new(ReceiveReply {}))
    }

    async fn nodes(&self, _req: Request<NodesReq>) -> Result<Response<NodesReply>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// A fake logic and a comet under one fresh ZooKeeper root, and a gRPC
/// client of the comet (as job would hold).
struct Setup {
    comet: Option<RunningComet>,
    logic: FakeLogic,
    store: Store,
    grpc: CometClient<Channel>,
    stop_logic: CancellationToken,
}

impl Setup {
    async fn start(tune: impl FnOnce(&mut CometConfig)) -> Setup {
        let zk = common::zk_config();
        let store = Store::connect(&zk).await.expect("zk");
        let logic = FakeLogic::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let logic_addr = listener.local_addr().expect("addr");
        let stop_logic = CancellationToken::new();
        let stop = stop_logic.clone();
        let svc = LogicServer::new(logic.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop.cancelled())
                .await
        });
        let me = Instance {
            id: "fake-logic".into(),
            grpc: logic_addr.to_string(),
            ..Instance::default()
        };
        discovery::register(&store, InstanceKind::Logic, &me)
            .await
            .expect("register logic");

        let mut config = CometConfig {
            zk,
            server_id: "comet-test".into(),
            register_interval: Duration::from_millis(300),
            ..CometConfig::default()
        };
        config.tcp.listen = "127.0.0.1:0".into();
        config.websocket.listen = "127.0.0.1:0".into();
        config.grpc.listen = "127.0.0.1:0".into();
        config.admin_listen = "127.0.0.1:0".into();
        config.logic.online_interval = Duration::from_millis(200);
        tune(&mut config);
        let comet = comet::start(config).await.expect("comet starts");
        let endpoint = Endpoint::from_shared(format!("http://{}", comet.grpc_addr)).expect("endpoint");
        Setup {
            grpc: CometClient::new(endpoint.connect_lazy()),
            comet: Some(comet),
            logic,
            store,
            stop_logic,
        }
    }

    fn comet(&self) -> &RunningComet {
        self.comet.as_ref().expect("running")
    }

    async fn tcp(&self, auth: &str) -> ImClient {
        let mut c = ImClient::tcp(&self.comet().tcp_addr.to_string())
            .await
            .expect("tcp connect");
        c.auth(auth.as_bytes()).await.expect("tcp auth");
        c
    }

    async fn ws(&self, auth: &str) -> ImClient {
        let mut c = ImClient::ws(&format!("ws://{}/sub", self.comet().ws_addr))
            .await
            .expect("ws connect");
        c.auth(auth.as_bytes()).await.expect("ws auth");
        c
    }

    async fn push_keys(&self, keys: &[&str], op: i32, msg: &str) -> Result<(), Status> {
        let req = PushMsgReq {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            proto_op: op,
            proto: Some(raw(&[(op, msg)])),
        };
        self.grpc.clone().push_msg(req).await.map(drop)
    }

    fn disconnects(&self, key: &str) -> usize {
        let calls = self.logic.calls.lock().unwrap();
        calls.disconnects.iter().filter(|k| *k == key).count()
    }

    async fn stop(mut self) {
        if let Some(c) = self.comet.take() {
            c.shutdown().await;
        }
        self.stop_logic.cancel();
        self.store.close().await;
    }
}

/// An OpRaw proto whose body is the inner frames `(op, body)`, as job builds it.
fn raw(frames: &[(i32, &str)]) -> Proto {
    let mut body = Vec::new();
    for (op, msg) in frames {
        body.extend_from_slice(&push_frame(*op, msg.as_bytes()));
    }
    Proto {
        ver: 1,
        op: op::RAW,
        seq: 0,
        body,
    }
}

fn auth_body(mid: i64, key: &str, room: &str, accepts: &[i32]) -> String {
    serde_json::json!({"mid": mid, "key": key, "room_id": room, "platform": "web", "accepts": accepts})
        .to_string()
}

fn frame_of(d: &Delivery) -> (i32, String) {
    match d {
        Delivery::Frame(f) => (f.op, String::from_utf8_lossy(&f.body).into_owned()),
        Delivery::Batch(b) => panic!("expected a plain frame, got a batch of {}", b.len()),
    }
}

fn batch_of(d: &Delivery) -> Vec<(i32, String)> {
    match d {
        Delivery::Batch(b) => b
            .iter()
            .map(|f| (f.op, String::from_utf8_lossy(&f.body).into_owned()))
            .collect(),
        Delivery::Frame(f) => panic!("expected an OpRaw batch, got op {}", f.op),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_tcp_as_frames_and_ws_as_batches_with_the_op_filter() {
    let s = Setup::start(|_| {}).await;
    let mut tcp = s.tcp(&auth_body(1, "tcp-1", "live://1000", &[1000])).await;
    let mut ws = s.ws(&auth_body(2, "ws-1", "live://1000", &[1001])).await;

    // By key: the ws client does not watch 1000, so only tcp gets it.
    s.push_keys(&["tcp-1", "ws-1"], 1000, "to watchers of 1000")
        .await
        .expect("push");
    assert_eq!(
        frame_of(&tcp.recv().await.expect("tcp push")),
        (1000, "to watchers of 1000".into())
    );
    s.push_keys(&["ws-1"], 1001, "to ws").await.expect("push");
    assert_eq!(
        batch_of(&ws.recv().await.expect("ws push")),
        vec![(1001, "to ws".to_string())],
        "the filtered push never reached ws: the next message is this one"
    );
    ws.sub(&[1000]).await.expect("sub");
    s.push_keys(&["ws-1"], 1000, "after sub").await.expect("push");
    assert_eq!(
        batch_of(&ws.recv().await.expect("ws push")),
        vec![(1000, "after sub".to_string())]
    );

    // By room: the filter does not apply; TCP gets plain frames, WS one batch.
    let room = BroadcastRoomReq {
        room_id: "live://1000".into(),
        proto: Some(raw(&[(2000, "a"), (2001, "b")])),
    };
    s.grpc.clone().broadcast_room(room).await.expect("room push");
    assert_eq!(frame_of(&tcp.recv().await.expect("1st")), (2000, "a".into()));
    assert_eq!(frame_of(&tcp.recv().await.expect("2nd")), (2001, "b".into()));
    assert_eq!(
        batch_of(&ws.recv().await.expect("batch")),
        vec![(2000, "a".to_string()), (2001, "b".to_string())]
    );

    // To all, filtered: after unsub only tcp watches 1000.
    ws.unsub(&[1000]).await.expect("unsub");
    let all = BroadcastReq {
        proto_op: 1000,
        proto: Some(raw(&[(1000, "everyone")])),
        speed: 0,
    };
    s.grpc.clone().broadcast(all).await.expect("broadcast");
    assert_eq!(
        frame_of(&tcp.recv().await.expect("broadcast")),
        (1000, "everyone".into())
    );
    s.push_keys(&["ws-1"], 1001, "marker").await.expect("push");
    assert_eq!(
        batch_of(&ws.recv().await.expect("marker")),
        vec![(1001, "marker".to_string())]
    );

    let rooms = s
        .grpc
        .clone()
        .rooms(RoomsReq {})
        .await
        .expect("rooms")
        .into_inner()
        .rooms;
    assert_eq!(rooms, HashMap::from([("live://1000".to_string(), true)]));

    // Upstream op 4: echoed empty, handed to logic. WebSocket pings answered.
    tcp.send_msg(b"hello logic").await.expect("op 4 echoed");
    let receives = s.logic.calls.lock().unwrap().receives.clone();
    assert_eq!(receives, vec![(1, op::SEND_MSG, b"hello logic".to_vec())]);
    ws.ping().await.expect("pong");

    // Heartbeat counts: local, then cluster-wide once logic reports others.
    heartbeat_until(&mut tcp, "tcp", 2, WAIT).await;
    tcp.change_room("live://cluster").await.expect("change room");
    heartbeat_until(&mut tcp, "tcp", 1 + ELSEWHERE, WAIT).await;
    heartbeat_until(&mut ws, "ws", 1, WAIT).await;
    ws.change_room("").await.expect("leave");
    heartbeat_until(&mut ws, "ws", 0, WAIT).await;

    // The registration carries the counts; a closed client is reported to logic.
    let store = s.store.clone();
    eventually("the registration counts two connections", WAIT, || {
        let store = store.clone();
        async move {
            let list = discovery::list(&store, InstanceKind::Comet)
                .await
                .unwrap_or_default();
            list.iter()
                .any(|i| i.id == "comet-test" && i.conn_count == 2 && i.ip_count == 1 && i.tcp_port > 0)
        }
    })
    .await;
    drop(tcp);
    eventually("logic is told tcp-1 left", WAIT, || async {
        s.disconnects("tcp-1") == 1
    })
    .await;
    assert!(s.logic.calls.lock().unwrap().renewals > 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_key_kicks_the_old_connection() {
    let s = Setup::start(|_| {}).await;
    let body = auth_body(7, "dup", "live://7", &[1000]);
    let mut old = s.tcp(&body).await;
    let mut new = s.ws(&body).await;
    old.wait_closed().await.expect("the old connection is closed");
    s.push_keys(&["dup"], 1000, "to the new one").await.expect("push");
    assert_eq!(
        batch_of(&new.recv().await.expect("push")),
        vec![(1000, "to the new one".to_string())]
    );
    assert_eq!(s.comet().room_online("live://7"), 1);
    heartbeat_until(&mut new, "new", 1, WAIT).await;
    assert_eq!(s.comet().stats().kicked, 1);
    drop(new);
    eventually("the new connection's end is reported", WAIT, || async {
        s.disconnects("dup") >= 1
    })
    .await;
    assert_eq!(
        s.disconnects("dup"),
        1,
        "the kicked connection must not drop the new session"
    );
    s.stop().await;
}

/// A bad header: `pack` as the pack length, `header` as the header length.
fn header(pack: i32, header: i16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&pack.to_be_bytes());
    b.extend_from_slice(&header.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&op::SEND_MSG.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_its_own_connection() {
    let s = Setup::start(|c| c.protocol.max_body = 128).await;
    let mut good = s.tcp(&auth_body(1, "good", "live://1", &[1000])).await;
    let max = frame::HEADER_LEN as i32 + 128;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("wrong header length", header(16, 17)),
        ("body over the maximum", header(max + 1, 16)),
        ("negative length", header(-1, 16)),
        ("short length", header(3, 16)),
        ("garbage", b"GET / HTTP/1.1\r\nHost: comet\r\n\r\n".to_vec()),
    ];
    let tcp_addr = s.comet().tcp_addr.to_string();
    let ws_url = format!("ws://{}/sub", s.comet().ws_addr);
    for (what, bytes) in &cases {
        for authed in [false, true] {
            let mut bad = ImClient::tcp(&tcp_addr).await.expect("connect");
            if authed {
                bad.auth(auth_body(9, "bad", "live://1", &[]).as_bytes())
                    .await
                    .expect("auth");
            }
            bad.send_raw(bytes).await.expect("send");
            bad.wait_closed()
                .await
                .unwrap_or_else(|e| panic!("tcp {what} (authed {authed}): {e}"));
            s.push_keys(&["good"], 1000, what).await.expect("push");
            assert_eq!(
                frame_of(&good.recv().await.expect("good still served")),
                (1000, what.to_string())
            );
        }
    }
    // Over WebSocket: a message ending inside a frame, and one over the maximum.
    let full = Frame::new(1, op::HEARTBEAT, 1, Bytes::new()).to_bytes();
    let too_big = Frame::new(1, op::SEND_MSG, 1, vec![b'x'; 129]).to_bytes();
    for (what, bytes) in [("truncated", &full[..10]), ("too big", &too_big[..])] {
        let mut bad = ImClient::ws(&ws_url).await.expect("ws connect");
        bad.send_raw(bytes).await.expect("send");
        bad.wait_closed()
            .await
            .unwrap_or_else(|e| panic!("ws {what}: {e}"));
        assert_eq!(good.heartbeat().await.expect("good still answers"), 1);
    }
    let st = s.comet().stats();
    assert_eq!(
        (st.bad_header_len, st.bad_body_len, st.bad_pack_len),
        (4, 3, 4),
        "header x2 + garbage x2; body x2 + ws; negative/short x2 each: {st:?}"
    );
    assert_eq!(st.bad_input, 1, "the truncated WebSocket message: {st:?}");
    assert_eq!(s.comet().conn_count(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_refused_auth_and_wrong_paths() {
    let s = Setup::start(|c| c.protocol.handshake_timeout = Duration::from_secs(1)).await;
    let tcp_addr = s.comet().tcp_addr.to_string();

    let mut silent = ImClient::tcp(&tcp_addr).await.expect("connect");
    let mut chatty = ImClient::tcp(&tcp_addr).await.expect("connect");
    // A heartbeat before auth is skipped, not answered; it does not extend the handshake.
    chatty
        .send(Frame::new(1, op::HEARTBEAT, 1, Bytes::new()))
        .await
        .expect("send");
    silent
        .wait_closed()
        .await
        .expect("closed after the handshake timeout");
    chatty
        .wait_closed()
        .await
        .expect("closed after the handshake timeout");
    assert!(chatty.recv().await.is_err(), "the early heartbeat got no reply");

    let mut forged = ImClient::tcp(&tcp_addr).await.expect("connect");
    match forged.auth(br#"{"mid":5,"token":"forged"}"#).await {
        Err(ImClientError::Refused { code, message }) => {
            assert_eq!(code, -401);
            assert!(message.contains("forged"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    forged.wait_closed().await.expect("closed after the refusal");

    let wrong = ImClient::ws(&format!("ws://{}/other", s.comet().ws_addr)).await;
    assert!(wrong.is_err(), "only /sub is upgraded");

    let st = s.comet().stats();
    assert_eq!((st.handshake_timeouts, st.auth_refused), (2, 1), "{st:?}");
    assert!(st.skipped_before_auth >= 1 && st.bad_input >= 1, "{st:?}");
    s.stop().await;
}

/// A CA and a `localhost` certificate it signed, made with the `openssl` CLI
/// (scripts/install-deps.sh installs it). Panics, naming the step and what
/// openssl said, when the CLI is missing or fails: a WSS test that checked
/// nothing must not pass.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "the openssl CLI is needed for the WSS test (scripts/install-deps.sh installs it): {e}"
                )
            });
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write");
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=reborn test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &["-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=localhost"],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_serves_clients_with_the_configured_certificate() {
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let path = |f: &str| dir.path().join(f).display().to_string();
    let s = Setup::start(|c| {
        c.websocket.tls_listen = "127.0.0.1:0".into();
        c.websocket.cert = path("cert.pem");
        c.websocket.key = path("key.pem");
    })
    .await;
    let wss = s.comet().wss_addr.expect("wss on").to_string();

    let mut roots = RootCertStore::empty();
    let ca = std::fs::read(path("ca.pem")).expect("ca");
    for cert in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(cert.expect("pem")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));

    let mut c = ImClient::wss(&wss, "localhost", connector)
        .await
        .expect("wss connect");
    c.auth(auth_body(3, "wss-1", "live://3", &[1000]).as_bytes())
        .await
        .expect("auth");
    s.push_keys(&["wss-1"], 1000, "over tls").await.expect("push");
    assert_eq!(
        batch_of(&c.recv().await.expect("push")),
        vec![(1000, "over tls".to_string())]
    );
    assert_eq!(c.heartbeat().await.expect("heartbeat"), 1);
    c.ping().await.expect("pong");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_hold_the_idle_timeout_off_and_renew_the_session() {
    let s = Setup::start(|c| c.protocol.renew_interval = Duration::from_millis(300)).await;
    let body =
        serde_json::json!({"mid": 4, "key": "idle", "room_id": "live://4", "idle_ms": 800}).to_string();
    let mut c = s.tcp(&body).await;
    // Heartbeats every 200 ms keep the 800 ms idle timeout off for well past it.
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_millis(2000) {
        assert_eq!(c.heartbeat().await.expect("still open"), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.comet().stats().idle_timeouts, 0);
    // The session was renewed in logic on heartbeats past the renew interval.
    assert!(
        s.logic.calls.lock().unwrap().heartbeats >= 2,
        "renewed every 300 ms of heartbeats"
    );
    c.wait_closed().await.expect("closed once heartbeats stop");
    assert_eq!(s.comet().stats().idle_timeouts, 1);
    eventually("logic is told the idle one left", WAIT, || async {
        s.disconnects("idle") == 1
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_loses_pushes_and_nobody_else_does() {
    let s = Setup::start(|c| c.protocol.send_queue = 2).await;
    let _stuck = s.tcp(&auth_body(1, "stuck", "live://1", &[1000])).await;
    let mut fine = s.tcp(&auth_body(2, "fine", "live://1", &[1000])).await;
    let big = "x".repeat(1 << 20);
    let mut refused = None;
    for i in 0..256 {
        // The socket buffers fill, then the writer blocks, then the queue fills.
        if let Err(status) = s.push_keys(&["stuck"], 1000, &big).await {
            refused = Some((i, status));
            break;
        }
    }
    let (after, status) = refused.expect("a full queue refuses pushes");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(after >= 2, "the first pushes were queued ({after})");
    assert!(s.comet().stats().pushes_dropped >= 1);
    s.push_keys(&["fine"], 1000, "unaffected").await.expect("push");
    assert_eq!(
        frame_of(&fine.recv().await.expect("push")),
        (1000, "unaffected".into())
    );
    assert_eq!(fine.heartbeat().await.expect("heartbeat"), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_at_once() {
    let s = Setup::start(|c| c.max_connections = 2).await;
    let tcp = s.tcp(&auth_body(1, "lim-1", "live://1", &[1000])).await;
    let _ws = s.ws(&auth_body(2, "lim-2", "live://1", &[1000])).await;
    // The third, on either listener, is closed before it can authenticate.
    let mut third = ImClient::tcp(&s.comet().tcp_addr.to_string())
        .await
        .expect("tcp connect");
    let body = auth_body(4, "lim-4", "live://1", &[1000]);
    let refused = tokio::time::timeout(Duration::from_secs(5), third.auth(body.as_bytes())).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "the third connection was served: {refused:?}"
    );
    // A connection that ends frees its place.
    drop(tcp);
    common::eventually("a place frees up", Duration::from_secs(10), || async {
        match ImClient::tcp(&s.comet().tcp_addr.to_string()).await {
            Ok(mut c) => c
                .auth(auth_body(3, "lim-3", "live://1", &[1000]).as_bytes())
                .await
                .is_ok(),
            Err(_) => false,
        }
    })
    .await;
}

/// What a comet renews after the failover history changed: the sessions on
/// the groups whose master the new records changed (a failed attempt changes
/// none), and every session when it cannot tell: the history started again
/// from 1, or a record it cannot read.
#[tokio::test]
async fn the_resync_scope_is_the_changed_groups_or_every_session_when_unsure() {
    use std::collections::BTreeSet;

    use reborn::im::comet::resync::{Changed, Scope, changed_since};

    let store = Store::connect(&common::zk_config()).await.expect("zk");
    let dir = store.paths().failovers();
    store.mkdir_p(&dir).await.expect("mkdir");
    for r in [
        failover_record(1, 1, Some("127.0.0.1:2")),
        failover_record(2, 2, None),
        failover_record(3, 3, Some("127.0.0.1:4")),
    ] {
        store
            .create_json(&store.paths().failover(r.seq), &r)
            .await
            .expect("record");
    }
    let groups = |g: &[u32]| {
        Scope::Changed(Changed {
            groups: g.iter().copied().collect::<BTreeSet<_>>(),
            slots: BTreeSet::new(),
        })
    };
    assert_eq!(changed_since(&store, 0).await, groups(&[1, 3]));
    assert_eq!(changed_since(&store, 1).await, groups(&[3]));
    assert_eq!(
        changed_since(&store, 1).await,
        changed_since(&store, 1).await,
        "reading changes nothing"
    );
    // Only a failed attempt after the last one seen: nothing changed.
    store
        .delete(&store.paths().failover(3), None)
        .await
        .expect("trim");
    assert_eq!(changed_since(&store, 1).await, groups(&[]));
    // The history was started again: the comet saw 5, the newest is 2.
    assert_eq!(changed_since(&store, 5).await, Scope::All);
    // A record that is not one.
    store
        .create_json(&store.paths().failover(4), &"not a record")
        .await
        .expect("bad node");
    assert_eq!(changed_since(&store, 2).await, Scope::All);
    store.close().await;
}

/// A failover record as the dashboard writes it: group `group`'s master
/// replaced by `new_master`, or a failed attempt (`None`).
fn failover_record(seq: u64, group: u32, new_master: Option<&str>) -> reborn::topo::model::FailoverRecord {
    reborn::topo::model::FailoverRecord {
        seq,
        at_ms: 0,
        group,
        old_master: "127.0.0.1:1".into(),
        reason: "test".into(),
        detection_ms: 0,
        switch_ms: 0,
        new_master: new_master.map(str::to_string),
        offset: None,
        keys: None,
        outcome: "test".into(),
        notes: Vec::new(),
        slots: Vec::new(),
    }
}

/// Records a failover like `record(seq)` every half second until the comet
/// ran a resync: records from before its first look at the history are no
/// news to it.
async fn record_until_a_resync(s: &Setup, record: impl Fn(u64) -> reborn::topo::model::FailoverRecord) {
    let dir = s.store.paths().failovers();
    s.store.mkdir_p(&dir).await.expect("mkdir");
    let mut seq = 0;
    let mut written: Option<tokio::time::Instant> = None;
    eventually("a recorded failover makes the comet renew", WAIT, || {
        if written.is_none_or(|at| at.elapsed() > Duration::from_millis(500)) {
            seq += 1;
            written = Some(tokio::time::Instant::now());
            let (store, r) = (s.store.clone(), record(seq));
            tokio::spawn(async move {
                let _ = store.create_json(&store.paths().failover(r.seq), &r).await;
            });
        }
        let stats = s.comet().stats();
        async move { stats.resyncs >= 1 }
    })
    .await;
}

/// A comet that cannot read the slot table when a failover is recorded (here
/// the product has none) cannot tell which sessions were on the group, so it
/// renews every one it holds rather than none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_slot_table_a_failover_renews_every_session() {
    let s = Setup::start(|_| {}).await;
    let _a = s.tcp(&auth_body(1, "rs-1", "live://1", &[1000])).await;
    let _b = s.ws(&auth_body(2, "rs-2", "live://2", &[1000])).await;
    let before = s.logic.calls.lock().unwrap().heartbeats;
    record_until_a_resync(&s, |seq| failover_record(seq, 1, Some("x:1"))).await;
    let stats = s.comet().stats();
    assert_eq!(
        stats.resynced_sessions + stats.resync_failures,
        2 * stats.resyncs,
        "each resync renewed both sessions: {stats:?}"
    );
    assert_eq!(stats.resync_failures, 0, "{stats:?}");
    assert!(
        s.logic.calls.lock().unwrap().heartbeats >= before + 2,
        "logic was asked to renew both"
    );
    s.stop().await;
}

/// A migration can move a slot off a failed group between the switch and the
/// comet's read of the slot table (milliseconds, as the migrator resumes once
/// the promote is done); the sessions in it may still be the ones the old
/// master lost. The record names the slots the group had at the switch, and
/// the comet renews those sessions too. Here every slot is on group 2 by the
/// time the comet reads the table, and group 1's record names the slot of
/// user 1's session key: user 1 is renewed, user 2 (no key in that slot) not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_renews_the_sessions_in_the_slots_its_group_had_at_the_switch() {
    use reborn::im::session_key::{key_key, mid_key};
    use reborn::libs::hash::slot_of;
    use reborn::topo::model::{SlotRange, SlotState, SlotTable};

    let s = Setup::start(|_| {}).await;
    reborn::topo::operation::init_product(&s.store)
        .await
        .expect("init");
    let all_on_2 = SlotTable::from_ranges(&[SlotRange {
        start: 0,
        end: 1023,
        group: 2,
        state: SlotState::Online,
        from: None,
    }])
    .expect("table");
    s.store
        .set_json(&s.store.paths().slots(), &all_on_2, -1)
        .await
        .expect("slot table");
    let moved = slot_of(mid_key(1).as_bytes());
    let elsewhere = |k: String| slot_of(k.as_bytes()) != moved;
    let other = (2..).find(|&m| elsewhere(mid_key(m))).expect("a mid");
    assert!(elsewhere(key_key("rs-1")) && elsewhere(key_key("rs-2")));
    let _a = s.tcp(&auth_body(1, "rs-1", "live://1", &[1000])).await;
    let _b = s.ws(&auth_body(other, "rs-2", "live://2", &[1000])).await;
    let before = s.logic.calls.lock().unwrap().heartbeats;
    record_until_a_resync(&s, |seq| {
        let mut r = failover_record(seq, 1, Some("x:1"));
        r.slots = vec![[moved, moved]];
        r
    })
    .await;
    let stats = s.comet().stats();
    assert_eq!(
        (stats.resynced_sessions, stats.resync_failures),
        (stats.resyncs, 0),
        "each resync renewed user 1's session alone: {stats:?}"
    );
    assert!(
        s.logic.calls.lock().unwrap().heartbeats > before,
        "logic was asked to renew it"
    );
    s.stop().await;
}
