//! End-to-end tests of the push system (reborn issue 9, part 7) against real
//! processes: ZooKeeper and two redis-server groups behind a reborn proxy
//! (tests/common/cluster.rs), with logic, comet(s) and job started in-process
//! through their `start()` functions and pointed at the proxy. Where a test
//! must SIGKILL a role, that role runs as a child process of the built binary
//! (`reborn comet` / `reborn job` with a config file in a temp dir).
//!
//! Pushes go in through logic's HTTP API (`/goim/push/*`) and are read by
//! protocol clients (`im::client`, TCP and WebSocket); sessions and streams are
//! read back through the proxy only. Absence is proved by a later marker push,
//! never by sleeping.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reborn::im::client::{Delivery, ImClient, ImClientError};
use reborn::im::comet::{self, CometConfig, RunningComet};
use reborn::im::discovery::InstanceKind;
use reborn::im::frame::Frame;
use reborn::im::job::{self, JobConfig, RunningJob};
use reborn::im::logic::{LogicConfig, token};
use reborn::im::proto::logic::PushMsg;
use reborn::im::proto::logic::push_msg::Type as PushType;
use reborn::im::queue;
use reborn::libs::resp_client::{self, RespConn};
use reborn::proxy::config::WriteAck;
use reborn::topo::ZkConfig;
use serde_json::{Value, json};

use common::cluster::{Cluster, freeze_and_cut_off, master_of, signal};
use common::eventually;
use common::im::{LogicUp, group_consumers, heartbeat_until, logic_json, proxy_conn};
use common::pushes::{
    OP, Pusher, ROOM_SIGNAL, RoleProcess, Seen, all_connected, all_delivered, auth_body, comet_process,
    connect, job_process, logic_process, open, push_targets, watch,
};

const WAIT: Duration = Duration::from_secs(15);
/// Another business op, for the op filter.
const OTHER_OP: i32 = 1001;
/// Session TTL of logic in these tests (short, so a dead comet's sessions go).
const SESSION_TTL: Duration = Duration::from_secs(5);

/// The cluster and logic (`common::im::LogicUp`), and the in-process comets
/// and jobs of a test.
struct Push {
    up: LogicUp,
    comets: Vec<RunningComet>,
    jobs: Vec<RunningJob>,
}

impl Deref for Push {
    type Target = LogicUp;

    fn deref(&self) -> &LogicUp {
        &self.up
    }
}

impl Push {
    /// The cluster and logic (tuned by `tune`), no comet or job yet.
    async fn start(tune: impl FnOnce(&mut LogicConfig)) -> Push {
        let cluster = Cluster::start().await;
        let proxy = cluster.proxy().await;
        Push::on(cluster, proxy, tune).await
    }

    /// Logic (tuned by `tune`) in front of `proxy`, a proxy of `cluster`; no
    /// comet or job yet.
    async fn on(cluster: Cluster, proxy: SocketAddr, tune: impl FnOnce(&mut LogicConfig)) -> Push {
        let up = LogicUp::on(cluster, proxy, |c| {
            c.session.expire = SESSION_TTL;
            tune(c);
        })
        .await;
        Push {
            up,
            comets: Vec::new(),
            jobs: Vec::new(),
        }
    }

    /// The cluster, logic, `comets` comets and one job: the usual setup.
    async fn with(comets: usize, tune: impl FnOnce(&mut LogicConfig)) -> Push {
        let mut p = Push::start(tune).await;
        for i in 0..comets {
            p.comet(&format!("comet-{i}"), &format!("10.9.0.{}", i + 1)).await;
        }
        p.job("job-0").await;
        p
    }

    /// Starts an in-process comet with id `id`, publishing `addr`.
    async fn comet(&mut self, id: &str, addr: &str) -> usize {
        self.comet_with(id, addr, |_| {}).await
    }

    /// Starts an in-process comet with id `id`, publishing `addr`, its
    /// config tuned by `tune`.
    async fn comet_with(&mut self, id: &str, addr: &str, tune: impl FnOnce(&mut CometConfig)) -> usize {
        let mut config = CometConfig {
            protocol: comet::config::CometProtocolConfig {
                renew_interval: Duration::from_secs(1),
                ..Default::default()
            },
            ..common::im::loopback_comet(id, addr, &self.cluster.zk)
        };
        tune(&mut config);
        self.comets
            .push(comet::start(config).await.expect("comet starts"));
        self.comets.len() - 1
    }

    /// Starts an in-process job named `consumer`; returns once it knows every
    /// in-process comet.
    async fn job(&mut self, consumer: &str) {
        self.job_with(consumer, |_| {}).await;
    }

    /// [`Push::job`], its config tuned by `tune`.
    async fn job_with(&mut self, consumer: &str, tune: impl FnOnce(&mut JobConfig)) {
        let mut config = job_config(&self.cluster.zk, self.proxy, consumer);
        tune(&mut config);
        let job = job::start(config).await.expect("job starts");
        let want: BTreeSet<String> = self.comets.iter().map(|c| c.server_id.clone()).collect();
        eventually("job knows the comets", WAIT, || {
            let known: BTreeSet<String> = job.comets().into_iter().collect();
            let ok = want.is_subset(&known);
            async move { ok }
        })
        .await;
        self.jobs.push(job);
    }

    fn tcp(&self, comet: usize) -> String {
        self.comets[comet].tcp_addr.to_string()
    }

    fn ws(&self, comet: usize) -> String {
        format!("ws://{}/sub", self.comets[comet].ws_addr)
    }

    async fn shutdown(mut self) {
        for j in self.jobs.drain(..) {
            j.shutdown().await;
        }
        for c in self.comets.drain(..) {
            c.shutdown().await;
        }
        self.up.shutdown().await;
    }
}

/// A job config for the cluster: short room window, fast claims.
fn job_config(zk: &ZkConfig, proxy: SocketAddr, consumer: &str) -> JobConfig {
    let mut c = JobConfig {
        consumer: consumer.into(),
        zk: zk.clone(),
        ..Default::default()
    };
    c.cluster.addrs = vec![proxy.to_string()];
    c.admin_listen = "127.0.0.1:0".into();
    c.queue.block = Duration::from_millis(500);
    c.queue.claim_min_idle = Duration::from_secs(1);
    c.queue.claim_interval = Duration::from_millis(300);
    c.room.signal = ROOM_SIGNAL;
    c
}

/// POSTs a push and asserts logic accepted it (code 0).
async fn push(addr: SocketAddr, path: &str, body: &str) {
    let reply = logic_json(addr, "POST", path, body.as_bytes().to_vec()).await;
    assert_eq!(reply["code"], 0, "POST {path}: {reply}");
}

async fn get(addr: SocketAddr, path: &str) -> Value {
    logic_json(addr, "GET", path, Vec::new()).await
}

fn pairs(frames: &[Frame]) -> Vec<(i32, String)> {
    frames
        .iter()
        .map(|f| (f.op, String::from_utf8_lossy(&f.body).into_owned()))
        .collect()
}

/// Reads what the next push delivery brings and asserts it is exactly
/// `want`: over TCP one plain frame per push, over WebSocket one OpRaw
/// message holding them all.
async fn expect(c: &mut ImClient, who: &str, want: &[(i32, &str)]) {
    let want: Vec<(i32, String)> = want.iter().map(|(o, b)| (*o, b.to_string())).collect();
    let got = if c.is_ws() {
        match c.recv().await {
            Ok(Delivery::Batch(frames)) => pairs(&frames),
            other => panic!("{who}: want one OpRaw message with {want:?}, got {other:?}"),
        }
    } else {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            match c.recv().await {
                Ok(Delivery::Frame(f)) => got.extend(pairs(&[f])),
                other => panic!("{who}: want plain frames {want:?}, got {other:?}"),
            }
        }
        got
    };
    assert_eq!(got, want, "{who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_exactly_their_clients_with_the_op_filter_and_room_batches() {
    let p = Push::with(1, |_| {}).await;
    let h = p.http();
    // TCP and WebSocket clients authenticate (op 8, empty body: `connect`).
    let mut a = connect(&p.tcp(0), &auth_body(1, "ka", "live://1", &[OP])).await;
    let mut b = connect(&p.ws(0), &auth_body(2, "kb", "live://1", &[OP])).await;
    let mut c = connect(&p.tcp(0), &auth_body(3, "kc", "live://2", &[OTHER_OP])).await;
    let mut d = connect(&p.ws(0), &auth_body(4, "kd", "live://2", &[OTHER_OP])).await;

    push(h, &format!("/goim/push/keys?operation={OP}&keys=ka"), "key to a").await;
    expect(&mut a, "a", &[(OP, "key to a")]).await;
    push(h, &format!("/goim/push/mids?operation={OP}&mids=2"), "mid to b").await;
    expect(&mut b, "b", &[(OP, "mid to b")]).await;
    push(
        h,
        &format!("/goim/push/room?operation={OP}&type=live&room=1"),
        "room 1",
    )
    .await;
    expect(&mut a, "a", &[(OP, "room 1")]).await;
    expect(&mut b, "b", &[(OP, "room 1")]).await;
    // The op filter: c and d watch only OTHER_OP, so key, mid and broadcast
    // pushes of OP skip them; room pushes ignore the filter.
    push(
        h,
        &format!("/goim/push/keys?operation={OP}&keys=kc&keys=kd"),
        "filtered key",
    )
    .await;
    push(
        h,
        &format!("/goim/push/mids?operation={OP}&mids=3&mids=4"),
        "filtered mid",
    )
    .await;
    push(h, &format!("/goim/push/all?operation={OP}"), "to all").await;
    expect(&mut a, "a", &[(OP, "to all")]).await;
    expect(&mut b, "b", &[(OP, "to all")]).await;
    push(
        h,
        &format!("/goim/push/room?operation={OP}&type=live&room=2"),
        "room 2",
    )
    .await;
    expect(&mut c, "c", &[(OP, "room 2")]).await;
    expect(&mut d, "d", &[(OP, "room 2")]).await;
    push(
        h,
        &format!("/goim/push/mids?operation={OTHER_OP}&mids=3"),
        "other op to c",
    )
    .await;
    expect(&mut c, "c", &[(OTHER_OP, "other op to c")]).await;

    // Room batching: three pushes within job's window reach the WebSocket
    // client as one OpRaw message of three frames, the TCP client as three
    // plain frames.
    let bodies = ["batch 1", "batch 2", "batch 3"];
    let room = format!("/goim/push/room?operation={OP}&type=live&room=1");
    futures::future::join_all(bodies.iter().map(|b| push(h, &room, b))).await;
    let got = match b.recv().await {
        Ok(Delivery::Batch(frames)) => pairs(&frames),
        other => panic!("b: want one OpRaw message, got {other:?}"),
    };
    let mut sorted = got.clone();
    sorted.sort();
    let want: Vec<(i32, String)> = bodies.iter().map(|s| (OP, s.to_string())).collect();
    assert_eq!(sorted, want, "b gets the three room pushes in one message");
    let order: Vec<&str> = got.iter().map(|(_, s)| s.as_str()).collect();
    let order_ref: Vec<(i32, &str)> = order.iter().map(|s| (OP, *s)).collect();
    expect(&mut a, "a", &order_ref).await;

    // Markers: the next thing every client gets is its marker, so nothing
    // meant for others (or filtered) came before it.
    for (k, op, who) in [
        ("ka", OP, "a"),
        ("kb", OP, "b"),
        ("kc", OTHER_OP, "c"),
        ("kd", OTHER_OP, "d"),
    ] {
        push(
            h,
            &format!("/goim/push/keys?operation={op}&keys={k}"),
            &format!("marker {who}"),
        )
        .await;
    }
    expect(&mut a, "a", &[(OP, "marker a")]).await;
    expect(&mut b, "b", &[(OP, "marker b")]).await;
    expect(&mut c, "c", &[(OTHER_OP, "marker c")]).await;
    expect(&mut d, "d", &[(OTHER_OP, "marker d")]).await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_comets_share_room_counts_and_the_online_views() {
    let p = Push::with(2, |_| {}).await;
    let h = p.http();
    let room = "live://9";
    let mut clients = [
        connect(&p.tcp(0), &auth_body(11, "k11", room, &[OP])).await,
        connect(&p.ws(0), &auth_body(12, "k12", room, &[OP])).await,
        connect(&p.tcp(1), &auth_body(13, "k13", room, &[OP])).await,
    ];
    // The heartbeat reply carries the cluster-wide count of the room, on both
    // comets, once each comet's RenewOnline went round.
    for (i, c) in clients.iter_mut().enumerate() {
        heartbeat_until(c, &format!("client {i}"), 3, WAIT).await;
    }
    eventually("/online/top counts both comets", WAIT, || async {
        get(h, "/goim/online/top?type=live&limit=10").await["data"] == json!([{"room_id": "9", "count": 3}])
    })
    .await;
    assert_eq!(
        get(h, "/goim/online/room?type=live&rooms=9&rooms=404").await["data"],
        json!({"9": 3, "404": 0})
    );
    eventually("/online/total sums both comets", WAIT, || async {
        get(h, "/goim/online/total").await["data"] == json!({"ip_count": 2, "conn_count": 3})
    })
    .await;
    let nodes = get(h, "/goim/nodes/weighted?platform=ios").await["data"]["nodes"].clone();
    let mut nodes: Vec<String> = serde_json::from_value(nodes).expect("node list");
    nodes.sort();
    assert_eq!(nodes, ["10.9.0.1", "10.9.0.2"]);

    // A room push reaches the room's members on both comets.
    push(
        h,
        "/goim/push/room?operation=1000&type=live&room=9",
        "both comets",
    )
    .await;
    for (i, c) in clients.iter_mut().enumerate() {
        expect(c, &format!("client {i}"), &[(OP, "both comets")]).await;
    }
    p.shutdown().await;
}

/// A comet that dies leaves the room counts as soon as its ZooKeeper node
/// goes (not when its `ol_` expires), and logic deletes its `ol_` after the
/// grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_comets_clients_leave_the_room_counts_and_its_ol_key_goes() {
    let p = Push::with(1, |c| {
        // Sessions and ol_ would outlive the test: only logic deletes ol_.
        c.session.expire = Duration::from_secs(300);
        c.online.gone_grace = Duration::from_millis(500);
    })
    .await;
    let h = p.http();
    let (mut dead, dead_tcp, dead_ws) = comet_process(&p.cluster.zk, "comet-dead", "10.9.0.9");
    let room = "live://5";
    let mut alive = connect(&p.tcp(0), &auth_body(51, "k51", room, &[OP])).await;
    let _on_dead = [
        connect(&dead_tcp, &auth_body(52, "k52", room, &[OP])).await,
        connect(&dead_ws, &auth_body(53, "k53", room, &[OP])).await,
    ];
    heartbeat_until(&mut alive, "the survivor", 3, WAIT).await;
    eventually("/online/top counts both comets", WAIT, || async {
        get(h, "/goim/online/top?type=live&limit=10").await["data"] == json!([{"room_id": "5", "count": 3}])
    })
    .await;
    let mut r = p.resp().await;
    let exists = r.call(&["EXISTS", "ol_comet-dead"]).await.map(resp_client::int);
    assert!(matches!(exists, Ok(Ok(1))), "ol_comet-dead: {exists:?}");

    dead.kill();
    // The ZooKeeper session (2 s) expires, the node goes, logic reloads.
    let promptly = Duration::from_secs(10);
    eventually("/online/top drops the dead comet's clients", promptly, || async {
        get(h, "/goim/online/top?type=live&limit=10").await["data"] == json!([{"room_id": "5", "count": 1}])
    })
    .await;
    heartbeat_until(&mut alive, "the survivor", 1, WAIT).await;
    eventually("ol_comet-dead is deleted", promptly, || {
        let proxy = p.proxy.to_string();
        async move {
            let r = &mut proxy_conn(&proxy).await;
            matches!(
                r.call(&["EXISTS", "ol_comet-dead"]).await.map(resp_client::int),
                Ok(Ok(0))
            )
        }
    })
    .await;
    let kept = r.call(&["EXISTS", "ol_comet-0"]).await.map(resp_client::int);
    assert!(
        matches!(kept, Ok(Ok(1))),
        "the live comet keeps its ol_: {kept:?}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_key_kicks_and_bad_frames_close_only_their_connection() {
    let p = Push::with(1, |_| {}).await;
    let h = p.http();
    let mut old = connect(&p.tcp(0), &auth_body(21, "dup", "live://5", &[OP])).await;
    let mut new = connect(&p.ws(0), &auth_body(21, "dup", "live://5", &[OP])).await;
    old.wait_closed()
        .await
        .expect("the older connection of the key is closed");
    push(h, &format!("/goim/push/keys?operation={OP}&keys=dup"), "to dup").await;
    expect(&mut new, "new", &[(OP, "to dup")]).await;

    let mut good_tcp = connect(&p.tcp(0), &auth_body(22, "good-tcp", "live://5", &[OP])).await;
    let mut good_ws = connect(&p.ws(0), &auth_body(23, "good-ws", "live://5", &[OP])).await;
    // A header claiming a 16 MiB body, a header length that is not 16, and
    // bytes that are no frame at all, each on its own connection.
    let mut huge = vec![0u8; 16];
    huge[..4].copy_from_slice(&(16u32 << 20).to_be_bytes());
    huge[4..6].copy_from_slice(&16u16.to_be_bytes());
    let mut bad_header = vec![0u8; 16];
    bad_header[..4].copy_from_slice(&20u32.to_be_bytes());
    bad_header[4..6].copy_from_slice(&4u16.to_be_bytes());
    let garbage = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    let mut n = 0;
    for (addr, bytes) in [
        (p.tcp(0), huge.clone()),
        (p.tcp(0), bad_header.clone()),
        (p.ws(0), huge),
        (p.ws(0), garbage),
    ] {
        n += 1;
        let mut bad = connect(&addr, &auth_body(30 + n, &format!("bad{n}"), "live://5", &[OP])).await;
        bad.send_raw(&bytes).await.expect("send bad bytes");
        bad.wait_closed()
            .await
            .unwrap_or_else(|e| panic!("bad input {n} on {addr}: {e}"));
    }
    push(h, "/goim/push/room?operation=1000&type=live&room=5", "still here").await;
    expect(&mut good_tcp, "good tcp", &[(OP, "still here")]).await;
    expect(&mut good_ws, "good ws", &[(OP, "still here")]).await;
    expect(&mut new, "new", &[(OP, "still here")]).await;
    p.shutdown().await;
}

/// One device, two accounts: a connection of another mid that takes a key
/// kicks the old one, and the old mid's pushes no longer reach the key's new
/// user (its `mid_` entry goes); the new user gets its own pushes and the
/// key's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_taken_by_another_user_stops_the_old_users_pushes() {
    let p = Push::with(1, |_| {}).await;
    let h = p.http();
    let mut old = connect(&p.tcp(0), &auth_body(40, "device-1", "live://6", &[OP])).await;
    let mut new = connect(&p.tcp(0), &auth_body(41, "device-1", "live://6", &[OP])).await;
    old.wait_closed()
        .await
        .expect("the older connection of the key is closed");
    let proxy = p.proxy.to_string();
    // Both at once: the sessions of a connection that ended (idle) go too.
    common::eventually("mid_40 no longer names device-1, mid_41 does", WAIT, async || {
        let r = &mut proxy_conn(&proxy).await;
        let mut has = async |mid: &str| r.call(&["HEXISTS", mid, "device-1"]).await.map(resp_client::int);
        matches!((has("mid_40").await, has("mid_41").await), (Ok(Ok(0)), Ok(Ok(1))))
    })
    .await;
    push(
        h,
        &format!("/goim/push/mids?operation={OP}&mids=40"),
        "for mid 40",
    )
    .await;
    push(
        h,
        &format!("/goim/push/mids?operation={OP}&mids=41"),
        "for mid 41",
    )
    .await;
    expect(&mut new, "mid 41", &[(OP, "for mid 41")]).await;
    push(
        h,
        &format!("/goim/push/keys?operation={OP}&keys=device-1"),
        "for the key",
    )
    .await;
    expect(&mut new, "mid 41", &[(OP, "for the key")]).await;
    let r = &mut proxy_conn(&proxy).await;
    let kept = r
        .call(&["HEXISTS", "mid_41", "device-1"])
        .await
        .map(resp_client::int);
    assert!(matches!(kept, Ok(Ok(1))), "mid 41 keeps its session: {kept:?}");
    let key = r.call(&["EXISTS", "key_device-1"]).await.map(resp_client::int);
    assert!(matches!(key, Ok(Ok(1))), "the key's session is back: {key:?}");
    p.shutdown().await;
}

/// How many `mid_` sessions of `mids` still exist, through the proxy.
async fn sessions_left(r: &mut RespConn, mids: std::ops::Range<i64>) -> i64 {
    let keys: Vec<String> = mids.map(|m| format!("mid_{m}")).collect();
    let mut left = 0;
    for chunk in keys.chunks(500) {
        let mut args = vec!["EXISTS"];
        args.extend(chunk.iter().map(String::as_str));
        match r.call(&args).await.map(resp_client::int) {
            Ok(Ok(n)) => left += n,
            other => panic!("EXISTS mid_*: {other:?}"),
        }
    }
    left
}

/// Thousands of clients arriving and leaving at once (a crowd's comet
/// restart, a mobile network flapping) make a burst of gRPC calls from comet
/// to logic on one HTTP/2 connection. h2 guards its servers against floods of
/// small DATA frames; with each call a small frame, an unbounded burst tripped
/// that guard, logic's server sent GOAWAY, and every call in flight failed:
/// logins refused, sessions never removed (found by scripts/bench_push.sh).
/// Then, under CI's load: calls queued behind the burst timed out before they
/// were sent (comet now holds at most 256 in flight and retries a
/// `Disconnect`), and a session renew still in flight when its client left put
/// the session back after logic removed it (`Disconnect` now waits for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_and_logouts_loses_no_call() {
    use reborn::im::bench::crowd::{Crowd, CrowdSpec};
    const CONNS: usize = 4_000;
    const MID_BASE: i64 = 700_000;
    let mut p = Push::start(|c| c.session.expire = Duration::from_secs(300)).await;
    // What is tested is that no call is lost, not how fast a debug build on
    // a shared machine logs in 4,000 clients at once: under a parallel
    // cargo build the slowest of them once took past the 8 s handshake
    // timeout. A timed-out login is its own test (it leaves no session).
    let slow_machine = Duration::from_secs(40);
    p.comet_with("comet-0", "10.9.0.1", |c| {
        c.protocol.handshake_timeout = slow_machine
    })
    .await;
    p.job("job-0").await;
    let spec = CrowdSpec {
        comet: p.comets[0].tcp_addr,
        conns: CONNS,
        sources: Vec::new(),
        mid_base: MID_BASE,
        rooms: 0,
        room_type: String::new(),
        room_prefix: String::new(),
        op: OP,
        heartbeat: Duration::from_secs(60),
        timeout: slow_machine,
        concurrency: CONNS,
    };
    let crowd = Crowd::open(spec, None).await;
    let up = crowd.stats.up.load(Ordering::Relaxed);
    let first_error = crowd.stats.first_error.lock().clone();
    assert_eq!(
        up, CONNS as u64,
        "logins that failed: first error {first_error:?}"
    );
    let mids = MID_BASE..MID_BASE + CONNS as i64;
    let mut r = p.resp().await;
    assert_eq!(
        sessions_left(&mut r, mids.clone()).await,
        CONNS as i64,
        "a session per login"
    );

    crowd.close().await;
    let mut left = CONNS as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while left > 0 && Instant::now() < deadline {
        left = sessions_left(&mut r, mids.clone()).await;
        if left > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(left, 0, "sessions logic was never told to remove");
    p.shutdown().await;
}

/// Logic slow to answer `Connect` (its writes to the cluster stalled) while
/// the comet's handshake timer runs out: the client is told so (-504), not
/// merely closed on, and the session logic wrote after the comet gave up is
/// taken back. Before, the comet dropped the call and never sent a
/// `Disconnect`: the user looked online, and pushes were routed to a comet
/// without the connection, until the session expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_outlasts_the_handshake_timeout_leaves_no_session() {
    // The session TTL is long, so only a Disconnect removes it in time.
    let mut p = Push::start(|c| c.session.expire = Duration::from_secs(300)).await;
    let comet = p
        .comet_with("comet-slow", "10.9.0.1", |c| {
            c.protocol.handshake_timeout = Duration::from_secs(1);
            // Longer than the stall: the call the comet gives up on ends.
            c.logic.timeout = Duration::from_secs(10);
        })
        .await;
    // The comet knows logic (a first login succeeds), then every master
    // holds writes for 2 s.
    drop(connect(&p.tcp(comet), &auth_body(90, "warm", "", &[OP])).await);
    let connects = p.logic().stats().connects.load(Ordering::Relaxed);
    for m in &p.cluster.masters {
        let mut admin = common::client(&m.addr()).await;
        let _: () = redis::cmd("CLIENT")
            .arg(&["PAUSE", "2000", "WRITE"])
            .query_async(&mut admin)
            .await
            .expect("CLIENT PAUSE");
    }
    let started = Instant::now();
    let mut c = open(&p.tcp(comet)).await.expect("connect");
    match c.auth(&auth_body(91, "slow", "", &[OP])).await {
        Err(ImClientError::Refused { code, message }) => {
            assert_eq!(code, -504, "{message}");
            assert!(message.contains("handshake timeout"), "{message}");
        }
        other => panic!("a login past the handshake timeout: want -504, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "told after {:?}",
        started.elapsed()
    );
    // Logic wrote the session once the masters took writes again...
    eventually("logic completes the Connect", WAIT, async || {
        p.logic().stats().connects.load(Ordering::Relaxed) > connects
    })
    .await;
    // ...and the comet took it back.
    let mut r = p.resp().await;
    eventually("the timed-out login's session is removed", WAIT, async || {
        let exists = r
            .call(&["EXISTS", "mid_91", "key_slow"])
            .await
            .map(resp_client::int);
        matches!(exists, Ok(Ok(0)))
    })
    .await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_tokens_forged_and_expired_are_refused_valid_accepted() {
    const SECRET: &str = "e2e-secret";
    let p = Push::with(1, |l| l.auth.secret = SECRET.into()).await;
    let now = reborn::libs::clock::unix_secs();
    let body = |token: &str| {
        serde_json::to_vec(&json!({
            "mid": 41, "key": "tk", "room_id": "live://7", "platform": "linux", "accepts": [OP], "token": token
        }))
        .expect("json")
    };
    let valid = token::sign(SECRET.as_bytes(), 41, "tk", now + 3600).expect("sign");
    let forged = token::sign(b"not the secret", 41, "tk", now + 3600).expect("sign");
    let expired = token::sign(SECRET.as_bytes(), 41, "tk", now - 10).expect("sign");
    // The comet must know logic before a refusal means anything: a valid
    // token first (retried while it does not).
    let mut ok = connect(&p.tcp(0), &body(&valid)).await;
    for (what, token) in [("forged", forged), ("expired", expired)] {
        for addr in [p.tcp(0), p.ws(0)] {
            let mut c = open(&addr).await.expect("connect");
            match c.auth(&body(&token)).await {
                Err(ImClientError::Refused { code, .. }) => assert_eq!(code, -401, "{what} on {addr}"),
                other => panic!("{what} token on {addr}: want a refusal, got {other:?}"),
            }
            c.wait_closed()
                .await
                .unwrap_or_else(|e| panic!("{what} on {addr} stays open: {e}"));
        }
    }
    let mut ok_ws = connect(&p.ws(0), &body(&valid)).await;
    ok.wait_closed()
        .await
        .expect("same key: the TCP session was replaced");
    push(p.http(), "/goim/push/mids?operation=1000&mids=41", "signed").await;
    expect(&mut ok_ws, "valid token", &[(OP, "signed")]).await;
    p.shutdown().await;
}
/// Entries job-b read and did not ack, over every stream.
async fn job_b_pending(r: &mut RespConn) -> i64 {
    let mut left = 0;
    for i in 0..queue::DEFAULT_STREAMS {
        left += group_consumers(r, &queue::stream_key(i))
            .await
            .get("job-b")
            .copied()
            .unwrap_or(0);
    }
    left
}

/// Migrates slots `start..=end` to group `to` through the dashboard's API
/// (retrying until it leads) and waits for the task to finish.
async fn migrate(dash: &str, start: u16, end: u16, to: u32) {
    use reborn::topo::manager::dashboard::client;
    use reborn::topo::manager::task::{Task, TaskState};
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = json!({ "start": start, "end": end, "to": to });
    let task: Task =
        common::eventually_ok(
            "the dashboard leads",
            Duration::from_secs(30),
            async || match client::post(dash, "/api/migrate", &body).await {
                Ok(r) if r.error().is_none() => Ok(r.into_json().expect("task")),
                Ok(r) => Err(format!("{:?}", r.error())),
                Err(e) => Err(e.to_string()),
            },
        )
        .await;
    common::eventually_ok(
        &format!("migration {start}-{end} finishes"),
        deadline.saturating_duration_since(Instant::now()),
        async || {
            // A dashboard may step down for a moment on a loaded machine (its
            // ZooKeeper lease) and answer 503 until it leads again: poll on.
            let tasks: Vec<Task> = match client::get(dash, "/api/tasks").await {
                Ok(r) if r.error().is_none() => r.into_json().map_err(|e| e.to_string())?,
                Ok(r) => return Err(format!("the dashboard does not lead: {:?}", r.error())),
                Err(e) => return Err(e.to_string()),
            };
            let t = tasks.into_iter().find(|t| t.id == task.id).expect("our task");
            if t.state == TaskState::Done {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            }
        },
    )
    .await;
}

/// Mid 101 over TCP and mid 102 over WebSocket on comet `a`, in `room`, with
/// session keys `keys`, each read by [`watch`] until `stop`.
async fn two_watched_clients(
    p: &Push,
    a: usize,
    keys: [&str; 2],
    room: &'static str,
    stop: &Arc<AtomicBool>,
) -> BTreeMap<i64, Arc<Mutex<Seen>>> {
    let tcp = connect(&p.tcp(a), &auth_body(101, keys[0], room, &[OP])).await;
    let ws = connect(&p.ws(a), &auth_body(102, keys[1], room, &[OP])).await;
    [(101, tcp), (102, ws)]
        .into_iter()
        .map(|(mid, c)| (mid, watch(c, mid, room, stop.clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_push_is_lost_across_migration_and_killed_job_and_comet() {
    const ROOM: &str = "live://zl";
    let mut p = Push::start(|_| {}).await;
    let zk = p.cluster.zk.clone();
    let a = p.comet("comet-a", "10.9.0.1").await;
    let (mut comet_b, b_tcp, b_ws) = comet_process(&zk, "comet-b", "10.9.0.2");
    // Survivors on comet A (in-process), victims on comet B (killed later).
    let survivors = [
        (101, connect(&p.tcp(a), &auth_body(101, "ks1", ROOM, &[OP])).await),
        (102, connect(&p.ws(a), &auth_body(102, "ks2", ROOM, &[OP])).await),
    ];
    let victims = [
        (201, connect(&b_tcp, &auth_body(201, "kv1", ROOM, &[OP])).await),
        (202, connect(&b_ws, &auth_body(202, "kv2", ROOM, &[OP])).await),
    ];
    // Two jobs: a child process (killed later) and one in-process.
    let (mut job_b, _) = job_process(&zk, &[p.proxy.to_string()], "job-b");
    let mut r = p.resp().await;
    let proxy = p.proxy.to_string();
    // A consumer shows in XINFO once it read an entry (Redis 7.0 creates
    // it then): warm-up room pushes (to rooms nobody is in, hence spread over
    // the streams) until job-b shows.
    let mut warm = 0;
    eventually("the job process consumes", WAIT, || {
        warm += 1;
        let (proxy, h) = (proxy.clone(), p.http());
        async move {
            push(
                h,
                &format!("/goim/push/room?operation={OP}&type=warm&room={warm}"),
                "warm-up",
            )
            .await;
            let mut r = proxy_conn(&proxy).await;
            for i in 0..queue::DEFAULT_STREAMS {
                if group_consumers(&mut r, &queue::stream_key(i))
                    .await
                    .contains_key("job-b")
                {
                    return true;
                }
            }
            false
        }
    })
    .await;
    p.job("job-a").await;
    eventually("job-a knows comet-b", WAIT, || {
        let ok = p.jobs[0].comets().contains(&"comet-b".to_string());
        async move { ok }
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let watchers: BTreeMap<i64, Arc<Mutex<Seen>>> = survivors
        .into_iter()
        .chain(victims)
        .map(|(mid, c)| (mid, watch(c, mid, ROOM, stop.clone())))
        .collect();

    // The pusher: by room and by mid (survivors and a victim).
    let pusher = Pusher::start(p.http(), push_targets(ROOM, &[101, 102, 201]));

    // 1. Move every slot, so sessions and streams all change groups.
    let dash = p.cluster.dashboard().await;
    pusher.sent_at_least(30).await;
    let t = Instant::now();
    migrate(&dash, 0, 511, 2).await;
    migrate(&dash, 512, 1023, 1).await;
    eprintln!(
        "zero-loss: both migrations took {:?}, {} pushes sent so far",
        t.elapsed(),
        pusher.sent()
    );
    assert_eq!(p.cluster.slot_state(0).await.0, 2);
    assert_eq!(p.cluster.slot_state(1023).await.0, 1);
    // 2. SIGKILL the job process: job-a claims what it left pending.
    // Every session and stream of the test now lives on the other group.
    let mut g = [
        common::client(&p.cluster.masters[0].addr()).await,
        common::client(&p.cluster.masters[1].addr()).await,
    ];
    let mut moved: Vec<String> = ["mid_101", "mid_102", "key_ks1", "key_ks2"]
        .map(String::from)
        .into();
    moved.extend(queue::stream_keys(queue::DEFAULT_STREAMS));
    for key in &moved {
        // Slots 0-511 moved to group 2 (masters[1]), 512-1023 to group 1.
        let owner = usize::from(reborn::libs::hash::slot_of(key.as_bytes()) < 512);
        let here: (bool, bool) = (
            redis::AsyncCommands::exists(&mut g[owner], key)
                .await
                .expect("exists"),
            redis::AsyncCommands::exists(&mut g[1 - owner], key)
                .await
                .expect("exists"),
        );
        assert_eq!(here, (true, false), "{key} after the migrations");
    }
    // 2. SIGKILL the job process (when it holds entries read but not acked,
    // if that happens within 5 s): job-a must claim them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while job_b_pending(&mut r).await == 0 && Instant::now() < deadline {}
    let mark = pusher.sent();
    job_b.kill();
    let left_by_b = job_b_pending(&mut r).await;
    eprintln!("zero-loss: job-b killed with {left_by_b} entries pending");
    pusher.sent_at_least(mark + 30).await;
    // 3. SIGKILL comet B.
    let mark = pusher.sent();
    comet_b.kill();
    pusher.sent_at_least(mark + 30).await;
    let (accepted, total) = pusher.finish().await;
    assert!(
        accepted.len() as u64 * 10 >= total * 9,
        "logic accepted only {} of {total} pushes",
        accepted.len()
    );
    // Every accepted push reaches every survivor it was meant for.
    all_delivered(&accepted, &watchers, &[101, 102], ROOM).await;
    for (mid, seen) in &watchers {
        let seen = seen.lock().expect("seen");
        if *mid < 200 {
            assert!(!seen.closed, "survivor {mid} was disconnected");
        } else {
            assert!(seen.closed, "victim {mid} still connected");
        }
    }

    // job-b's pending entries were all claimed (and acked) by job-a.
    eventually("job-b has nothing pending", WAIT, || {
        let proxy = proxy.clone();
        async move {
            let r = &mut proxy_conn(&proxy).await;
            let mut left = 0;
            for i in 0..queue::DEFAULT_STREAMS {
                left += group_consumers(r, &queue::stream_key(i))
                    .await
                    .get("job-b")
                    .copied()
                    .unwrap_or(0);
            }
            left == 0
        }
    })
    .await;
    // comet B's sessions go: its room counts and its clients' mappings.
    eventually("comet-b's sessions expire", Duration::from_secs(20), || {
        let proxy = proxy.clone();
        async move {
            let r = &mut proxy_conn(&proxy).await;
            let keys = ["ol_comet-b", "key_kv1", "key_kv2", "mid_201", "mid_202"];
            let mut args = vec!["EXISTS"];
            args.extend(keys);
            matches!(r.call(&args).await.map(resp_client::int), Ok(Ok(0)))
        }
    })
    .await;
    let live = r
        .call(&["EXISTS", "key_ks1", "key_ks2", "mid_101", "mid_102", "ol_comet-a"])
        .await
        .map(resp_client::int);
    assert!(matches!(live, Ok(Ok(5))), "survivors' sessions: {live:?}");
    // Only now may the survivors hang up: their comet then drops their sessions.
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "zero-loss: {} of {total} pushes accepted; job-a {:?}",
        accepted.len(),
        p.jobs[0].stats()
    );
    p.shutdown().await;
}

/// The group whose master holds the stream a push to `room` (`type://id`),
/// or to a session key, is appended to.
fn queue_group(room: Option<&str>, key: Option<&str>) -> u32 {
    let stream = queue::stream_key(queue_stream(room, key));
    if reborn::libs::hash::slot_of(stream.as_bytes()) < 512 {
        1
    } else {
        2
    }
}

/// The stream a push to `room` (`type://id`), or to a session key, goes to.
fn queue_stream(room: Option<&str>, key: Option<&str>) -> usize {
    let msg = PushMsg {
        r#type: if room.is_some() {
            PushType::Room
        } else {
            PushType::Push
        } as i32,
        operation: OP,
        room: room.unwrap_or_default().into(),
        keys: key.into_iter().map(str::to_string).collect(),
        ..PushMsg::default()
    };
    queue::stream_of(&msg, queue::DEFAULT_STREAMS)
}

/// Half the push system's state is in the cluster: sessions, room counts and
/// the queue. Each group's master in turn dies while pushes wait in the
/// queue (job is stopped) and its replica has missed them (frozen and cut
/// off): the failover promotes that replica, the old master comes back as
/// its replica, and job starts again. Returns the pushes logic accepted and
/// those of them no client received.
async fn push_failover_with_a_lagging_replica(write_ack: WriteAck) -> (usize, usize) {
    const ROOM: &str = "live://fo";
    const KEYS: [&str; 2] = ["kf1", "kf3"];
    // The pushes must wait on both groups' masters.
    let groups: BTreeSet<u32> = KEYS
        .iter()
        .map(|k| queue_group(None, Some(k)))
        .chain([queue_group(Some(ROOM), None)])
        .collect();
    assert_eq!(groups, BTreeSet::from([1, 2]), "the test's streams");
    let (c, replicas) = Cluster::with_persistent_replicas().await;
    for m in &c.masters {
        common::wait_replica_streaming(&m.addr()).await;
    }
    let proxy = c
        .proxy_with(|cfg| {
            cfg.write_ack = write_ack;
            cfg.write_ack_timeout = Duration::from_millis(500);
        })
        .await;
    let _dash = c.dashboard().await;
    // Sessions outlive the failovers: while a replica is cut off, their
    // renewals reach no replica, and a 5 s TTL would run out on the promoted
    // one (the next heartbeat adds the session again, but pushes to it meanwhile
    // find nobody).
    let mut p = Push::on(c, proxy, |c| c.session.expire = Duration::from_secs(60)).await;
    let a = p.comet("comet-a", "10.9.0.1").await;
    p.job("job-a").await;
    let stop = Arc::new(AtomicBool::new(false));
    let watchers = two_watched_clients(&p, a, KEYS, ROOM, &stop).await;
    let pusher = Pusher::start(p.http(), push_targets(ROOM, &[101, 102]));
    pusher.accepts(30, "before the failovers").await;

    for (i, replica) in replicas.iter().enumerate() {
        let group = i as u32 + 1;
        let old = p.up.cluster.masters[i].addr();
        p.jobs.pop().expect("the job").shutdown().await;
        let pid = freeze_and_cut_off(replica, &old).await;
        // Pushes logic answers from now on are on no replica of this group's
        // streams (accepted with write_ack = master, refused with replica).
        pusher.sent_at_least(pusher.sent() + 9).await;
        p.up.cluster.masters[i].kill();
        signal(pid, "-CONT");
        let killed = Instant::now();
        let new = common::eventually_some(
            &format!("group {group}'s master is replaced"),
            Duration::from_secs(20),
            async || master_of(&p.cluster.store, group).await.filter(|m| *m != old),
        )
        .await;
        assert_eq!(new, replica.addr(), "group {group}'s only replica");
        let took = killed.elapsed();
        // Until the old master rejoins, the group has no replica.
        p.up.cluster.masters[i].restart().expect("restart the old master");
        common::wait_replica_streaming(&new).await;
        p.job("job-a").await;
        pusher
            .accepts(30, &format!("after group {group}'s failover"))
            .await;
        eprintln!(
            "push failover ({write_ack:?}): group {group} replaced in {took:?}, pushes accepted again {:?} after the kill",
            killed.elapsed()
        );
    }
    let (accepted, total) = pusher.finish().await;
    // A marker per target, numbered after every push: once each client has
    // its own, job has delivered what came before them in their streams.
    let targets = push_targets(ROOM, &[101, 102]);
    for (k, (path, to)) in targets.iter().enumerate() {
        push(p.http(), path, &format!("n={} to={to}", total + k as u64)).await;
    }
    for (mid, seen) in &watchers {
        let want: Vec<u64> = targets
            .iter()
            .enumerate()
            .filter(|(_, (_, to))| *to == format!("mid:{mid}") || *to == format!("room:{ROOM}"))
            .map(|(k, _)| total + k as u64)
            .collect();
        eventually(&format!("mid {mid} has its markers"), WAIT, || {
            let ok = want
                .iter()
                .all(|n| seen.lock().expect("seen").numbers.contains(n));
            async move { ok }
        })
        .await;
    }
    let lost = accepted
        .iter()
        .filter(|(n, to)| {
            watchers.iter().any(|(mid, seen)| {
                let mine = *to == format!("mid:{mid}") || *to == format!("room:{ROOM}");
                mine && !seen.lock().expect("seen").numbers.contains(n)
            })
        })
        .count();
    if write_ack == WriteAck::Replica {
        all_delivered(&accepted, &watchers, &[101, 102], ROOM).await;
    }
    all_connected(&watchers);
    // The sessions, written before the failovers, survived them.
    let mut r = p.resp().await;
    let live = r
        .call(&["EXISTS", "key_kf1", "key_kf3", "mid_101", "mid_102", "ol_comet-a"])
        .await
        .map(resp_client::int);
    assert!(
        matches!(live, Ok(Ok(5))),
        "sessions after the failovers: {live:?}"
    );
    eprintln!(
        "push failover ({write_ack:?}): {} of {total} pushes accepted, {lost} of them lost",
        accepted.len()
    );
    stop.store(true, Ordering::Relaxed);
    p.shutdown().await;
    (accepted.len(), lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_ack_replica_no_accepted_push_is_lost_when_each_master_fails_over() {
    let (accepted, lost) = push_failover_with_a_lagging_replica(WriteAck::Replica).await;
    assert_eq!(lost, 0, "of {accepted} accepted pushes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_ack_master_a_failover_loses_the_queued_pushes_the_replica_missed() {
    // The default mode's window of loss, made visible: pushes logic accepted
    // while the replica was cut off, still queued when the master died.
    let (accepted, lost) = push_failover_with_a_lagging_replica(WriteAck::Master).await;
    assert!(
        lost > 0,
        "the frozen replicas missed none of {accepted} accepted pushes?"
    );
}

/// A session written while group 1's replica was cut off is lost when its
/// master dies: its client, still connected, would get no push until its
/// next renew (10 minutes by default). The comet sees the failover recorded
/// in ZooKeeper and renews the sessions it holds on group 1, which adds this
/// one back. Nothing else writes it: the promoted replica was cut off before
/// the session was written, and the renew interval is the default's. Of two
/// other clients, the one with a key on group 1 is renewed too, and the one
/// with both keys on group 2 is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_comet_adds_back_the_sessions_it_lost() {
    use reborn::im::session_key::{key_key, mid_key};
    use reborn::libs::hash::slot_of;
    const ROOM: &str = "live://rs";
    let (c, replicas) = Cluster::with_persistent_replicas().await;
    common::wait_replica_streaming(&c.masters[0].addr()).await;
    // The default write_ack: a session write is acknowledged by the master alone.
    let proxy = c.proxy().await;
    let _dash = c.dashboard().await;
    let mut p = Push::on(c, proxy, |c| c.session.expire = Duration::from_secs(60)).await;
    let a = p
        .comet_with("comet-a", "10.9.0.1", |c| {
            c.protocol.renew_interval = Duration::from_secs(600);
        })
        .await;
    p.job("job-a").await;
    // A session whose keys both live on group 1.
    let on_group_1 = |k: &String| slot_of(k.as_bytes()) < 512;
    let mid = (1000..).find(|&m| on_group_1(&mid_key(m))).expect("a mid");
    let key = (0..)
        .map(|i| format!("kr{i}"))
        .find(|k| on_group_1(&key_key(k)))
        .expect("a key");
    let session = [mid_key(mid), key_key(&key)];
    // Two more clients of one user whose key is on group 2: one connection's
    // key on group 1, the other's on group 2.
    let mid_2 = (1000..).find(|&m| !on_group_1(&mid_key(m))).expect("a mid");
    let keys_of = |on_1: bool| {
        (0..)
            .map(|i| format!("kr-{on_1}-{i}"))
            .find(move |k| on_group_1(&key_key(k)) == on_1)
            .expect("a key")
    };
    let _mixed = connect(&p.tcp(a), &auth_body(mid_2, &keys_of(true), ROOM, &[OP])).await;
    let _elsewhere = connect(&p.tcp(a), &auth_body(mid_2, &keys_of(false), ROOM, &[OP])).await;
    let proxy = p.proxy.to_string();
    let exists = async || {
        let mut r = proxy_conn(&proxy).await;
        let mut args = vec!["EXISTS"];
        args.extend(session.iter().map(String::as_str));
        r.call(&args).await.map(resp_client::int)
    };

    let old = p.up.cluster.masters[0].addr();
    let pid = freeze_and_cut_off(&replicas[0], &old).await;
    let mut client = connect(&p.tcp(a), &auth_body(mid, &key, ROOM, &[OP])).await;
    assert!(
        matches!(exists().await, Ok(Ok(2))),
        "the session is on the master"
    );
    p.up.cluster.masters[0].kill();
    signal(pid, "-CONT");
    let new = common::eventually_some(
        "group 1's master is replaced",
        Duration::from_secs(20),
        async || master_of(&p.cluster.store, 1).await.filter(|m| *m != old),
    )
    .await;
    assert_eq!(new, replicas[0].addr());
    let replaced = Instant::now();
    eventually(
        "the comet adds the session back",
        Duration::from_secs(10),
        async || matches!(exists().await, Ok(Ok(2))),
    )
    .await;
    eprintln!(
        "resync: the session was back {:?} after the topology named the new master",
        replaced.elapsed()
    );
    push(
        p.http(),
        &format!("/goim/push/mids?operation={OP}&mids={mid}"),
        "back",
    )
    .await;
    expect(&mut client, "the client", &[(OP, "back")]).await;
    let stats = p.comets[a].stats();
    assert!(stats.resyncs >= 1, "{stats:?}");
    assert_eq!(
        stats.resynced_sessions + stats.resync_failures,
        2 * stats.resyncs,
        "each resync renewed the two sessions with a key on group 1, not the third: {stats:?}"
    );
    p.shutdown().await;
}

/// The ephemeral owner (session id) of `kind`'s instance `id`, if registered.
async fn instance_owner(store: &reborn::topo::Store, kind: InstanceKind, id: &str) -> Option<i64> {
    let zk = store.zk().ok()?;
    let path = store.paths().im_instance(kind.dir(), id);
    Some(zk.stat(&path).await.ok()??.ephemeral_owner)
}

/// ZooKeeper frozen past every session: the proxy fences and the push roles'
/// sessions expire, their nodes with them. After the thaw every role must come
/// back by itself: the comet registered again on a new session, job and logic
/// finding it, pushes accepted and delivered, and the clients never cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_system_recovers_by_itself_after_its_zookeeper_sessions_expire() {
    const ROOM: &str = "live://zk";
    let zk = tokio::task::block_in_place(|| common::ensemble(1));
    let zk_pid = zk.members()[0].pid().expect("ZooKeeper runs");
    let c = Cluster::start_on(zk.connect_string()).await;
    let session = c.zk.session_timeout;
    let proxy = c.proxy().await;
    let mut p = Push::on(c, proxy, |c| c.session.expire = Duration::from_secs(60)).await;
    let a = p.comet("comet-a", "10.9.0.1").await;
    p.job("job-a").await;
    let stop = Arc::new(AtomicBool::new(false));
    let watchers = two_watched_clients(&p, a, ["kz1", "kz2"], ROOM, &stop).await;
    let pusher = Pusher::start(p.http(), push_targets(ROOM, &[101, 102]));
    pusher.accepts(30, "before the freeze").await;

    let store = p.cluster.store.clone();
    let before = instance_owner(&store, InstanceKind::Comet, "comet-a")
        .await
        .expect("comet-a is registered");
    // A freeze does not always expire a session (a client may reconnect in
    // the instant after the thaw, before the server's session tracker runs):
    // freeze again, at most 5 times, until the comet's has.
    let mut expired = false;
    for attempt in 1..=5 {
        signal(zk_pid, "-STOP");
        // Time is the point: longer than every session.
        tokio::time::sleep(session + Duration::from_secs(1)).await;
        signal(zk_pid, "-CONT");
        let registered = common::eventually_some(
            "comet-a is registered after the thaw",
            Duration::from_secs(20),
            async || instance_owner(&store, InstanceKind::Comet, "comet-a").await,
        )
        .await;
        if registered != before {
            eprintln!("zk freeze {attempt}: comet-a registered again on a new session");
            expired = true;
            break;
        }
    }
    assert!(expired, "five freezes did not expire the comet's session");
    let thawed = Instant::now();
    eventually("logic offers the comet again", WAIT, async || {
        get(p.http(), "/goim/nodes/weighted").await["data"]["nodes"] == json!(["10.9.0.1"])
    })
    .await;
    eventually("job knows the comet", WAIT, || {
        let ok = p.jobs[0].comets().contains(&"comet-a".to_string());
        async move { ok }
    })
    .await;
    pusher.accepts(30, "after the thaw").await;
    eprintln!(
        "zk freeze: 30 more pushes accepted within {:?} of the comet's new registration",
        thawed.elapsed()
    );
    let (accepted, total) = pusher.finish().await;
    all_delivered(&accepted, &watchers, &[101, 102], ROOM).await;
    all_connected(&watchers);
    eprintln!(
        "zk freeze: {} of {total} pushes accepted, all delivered",
        accepted.len()
    );
    stop.store(true, Ordering::Relaxed);
    p.shutdown().await;
}

/// A second logic, `logic-b`, as a child process on the cluster of `p`. It
/// keeps its node 10 s after its death (its session's timeout). Returns once
/// both logics are registered.
async fn logic_b(p: &Push) -> RoleProcess {
    let zk = ZkConfig {
        session_timeout: Duration::from_secs(10),
        ..p.cluster.zk.clone()
    };
    let (child, _) = logic_process(&zk, "logic-b", &[p.proxy.to_string()], Duration::from_secs(60));
    eventually("both logics are registered", WAIT, async || logics(p).await == 2).await;
    child
}

/// Logic instances registered in ZooKeeper.
async fn logics(p: &Push) -> usize {
    reborn::im::discovery::list(&p.cluster.store, InstanceKind::Logic)
        .await
        .map_or(0, |l| l.len())
}

/// `n` logins to comet `a` (mids from `first`), each in one attempt; how long
/// each took.
async fn logins(p: &Push, a: usize, first: i64, n: i64) -> (Vec<ImClient>, Vec<Duration>) {
    let (mut clients, mut took) = (Vec::new(), Vec::new());
    for mid in first..first + n {
        let t = Instant::now();
        let mut c = open(&p.tcp(a)).await.expect("open");
        c.auth(&auth_body(mid, &format!("kl{mid}"), "live://lk", &[OP]))
            .await
            .unwrap_or_else(|e| panic!("login of mid {mid}: {e}"));
        took.push(t.elapsed());
        clients.push(c);
    }
    (clients, took)
}

/// [`logins`], all at once: `n` clients from mid `first` log in together.
async fn logins_at_once(p: &Push, a: usize, first: i64, n: i64) -> (Vec<ImClient>, Vec<Duration>) {
    let addr = p.tcp(a);
    let all = (first..first + n).map(|mid| {
        let addr = addr.clone();
        async move {
            let t = Instant::now();
            let mut c = open(&addr).await.expect("open");
            c.auth(&auth_body(mid, &format!("kl{mid}"), "live://lk", &[OP]))
                .await
                .unwrap_or_else(|e| panic!("login of mid {mid}: {e}"));
            (c, t.elapsed())
        }
    });
    futures::future::join_all(all).await.into_iter().unzip()
}

/// A push to each client, by its mid from `first`, reaches it.
async fn each_gets_a_push(p: &Push, clients: &mut [ImClient], first: i64) {
    for (mid, c) in (first..).zip(clients.iter_mut()) {
        let body = format!("to {mid}");
        push(
            p.http(),
            &format!("/goim/push/mids?operation={OP}&mids={mid}"),
            &body,
        )
        .await;
        expect(c, &format!("mid {mid}"), &[(OP, &body)]).await;
    }
}

/// A logic SIGKILLed while its node is still in ZooKeeper: a comet's call to
/// it finds the connection refused, which never reached logic, so the comet
/// tries the other one. Logins right after the kill go through at once, and
/// pushes reach the clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_logic_costs_no_login_and_no_push() {
    let p = Push::with(1, |_| {}).await;
    let mut b = logic_b(&p).await;
    // Logins go round robin over the logics: some reach logic-b while it lives.
    logins(&p, 0, 400, 4).await;
    b.kill();
    let (mut clients, took) = logins(&p, 0, 300, 8).await;
    assert!(took.iter().all(|t| *t < Duration::from_secs(1)), "{took:?}");
    assert_eq!(
        logics(&p).await,
        2,
        "the dead logic was still registered during the logins"
    );
    each_gets_a_push(&p, &mut clients, 300).await;
    p.shutdown().await;
}

/// A logic that hangs (SIGSTOP; the same for a partition between comet and
/// logic) while ZooKeeper still lists it: calls to it are not answered within
/// `hedge_after` and go to the other logic too, and the hung one is then tried
/// last for a while, so no login fails and none waits for the timeout. 16
/// logins at once, then 8 one at a time (before hedging, half of the 16 waited
/// for the timeout, since they reached the hung logic before any timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_logic_costs_a_hedge_delay_and_no_login() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let mut p = Push::start(|_| {}).await;
    let a = p
        .comet_with("comet-a", "10.9.0.1", |c| c.logic.timeout = TIMEOUT)
        .await;
    let b = logic_b(&p).await;
    logins(&p, a, 400, 4).await;
    let pid = b.process.id();
    signal(pid, "-STOP");
    let (mut clients, took) = logins_at_once(&p, a, 300, 16).await;
    let (more, then) = logins(&p, a, 316, 8).await;
    signal(pid, "-CONT");
    clients.extend(more);
    eprintln!("hung logic: 16 logins at once took {took:?}, then one at a time {then:?}");
    let slow = took.iter().chain(&then).filter(|t| **t >= TIMEOUT).count();
    assert!(
        slow == 0,
        "{slow} logins waited for the timeout: {took:?}, {then:?}"
    );
    assert_eq!(
        logics(&p).await,
        2,
        "the hung logic was still registered during the logins"
    );
    p.job("job-0").await;
    each_gets_a_push(&p, &mut clients, 300).await;
    p.shutdown().await;
}

/// A comet that hangs (SIGSTOP) while ZooKeeper still lists it: job's first
/// call to it waits for its deadline, and then job skips it until it answers
/// a probe. Meanwhile nothing for the other comet waits: a stream's pushes
/// and broadcasts, and a room's batches, go to each comet as soon as that
/// comet had the previous one, and only their acks wait for every comet.
/// Before, a push to the hung comet held up its whole stream, and a room's
/// next batch waited for the hung comet's call, both until the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_comet_holds_up_no_push_to_the_others_and_is_served_again_once_it_answers() {
    const ROOM: &str = "live://hc";
    const DEADLINE: Duration = Duration::from_secs(1);
    // The clients here do not heartbeat: sessions must outlast the test.
    let mut p = Push::start(|c| c.session.expire = Duration::from_secs(60)).await;
    let a = p.comet("comet-a", "10.9.0.1").await;
    // Comet B stays registered while it hangs (a 30 s session), as a comet
    // cut off from job by a partition would.
    let zk = ZkConfig {
        session_timeout: Duration::from_secs(30),
        ..p.cluster.zk.clone()
    };
    let (b, b_tcp, _) = comet_process(&zk, "comet-b", "10.9.0.2");
    p.job_with("job-0", |c| c.comet.timeout = DEADLINE).await;
    eventually("job knows comet-b", WAIT, || {
        let ok = p.jobs[0].comets().contains(&"comet-b".to_string());
        async move { ok }
    })
    .await;
    // The two clients' pushes by mid share a stream (by their keys).
    let stream = |key: &str| queue_stream(None, Some(key));
    let key_b = (0..)
        .map(|i| format!("hb{i}"))
        .find(|k| stream(k) == stream("ha1"))
        .expect("some key shares the stream");
    let mut on_a = connect(&p.tcp(a), &auth_body(101, "ha1", ROOM, &[OP])).await;
    let mut on_b = connect(&b_tcp, &auth_body(201, &key_b, ROOM, &[OP])).await;
    signal(b.process.id(), "-STOP");
    // First a push to the client on the hung comet; then, one at a time,
    // pushes the client on comet A gets: by mid (in the same stream), two
    // broadcasts (in one stream), then by room and by mid in turn.
    push(
        p.http(),
        &format!("/goim/push/mids?operation={OP}&mids=201"),
        "to B",
    )
    .await;
    let mut took = Vec::new();
    for n in 0..30 {
        let (path, body) = match n {
            1 | 2 => (format!("/goim/push/all?operation={OP}"), format!("all {n}")),
            _ if n > 0 && n % 2 == 0 => (
                format!("/goim/push/room?operation={OP}&type=live&room=hc"),
                format!("room {n}"),
            ),
            _ => (
                format!("/goim/push/mids?operation={OP}&mids=101"),
                format!("mid {n}"),
            ),
        };
        let sent = Instant::now();
        push(p.http(), &path, &body).await;
        expect(&mut on_a, &format!("push {n}"), &[(OP, &body)]).await;
        took.push(sent.elapsed());
    }
    signal(b.process.id(), "-CONT");
    eprintln!("hung comet: pushes to comet A took {took:?}");
    // Every push went at once (a room push waits for its batch window, 300
    // ms here); none waited for the hung comet's deadline.
    let slow = took.iter().filter(|t| **t > Duration::from_millis(900)).count();
    assert!(
        slow == 0,
        "{slow} pushes to comet A waited for the hung comet: {took:?}"
    );
    assert!(
        p.jobs[0].comets().contains(&"comet-b".to_string()),
        "comet B was registered all along"
    );
    let dropped = p.jobs[0].stats().dropped_rpc_failed;
    assert!(
        dropped >= 15,
        "the room batches for the hung comet were given up: {dropped}"
    );
    // Thawed, comet B answers the probe and gets room pushes again.
    common::eventually_ok("comet B's client gets a room push again", WAIT, async || {
        push(
            p.http(),
            &format!("/goim/push/room?operation={OP}&type=live&room=hc"),
            "again",
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(500), on_b.recv()).await {
                Ok(Ok(Delivery::Frame(f))) if f.body.as_ref() == b"again" => return Ok(()),
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => return Err(format!("comet B's client: {e}")),
            }
        }
        Err("not yet".to_string())
    })
    .await;
    p.shutdown().await;
}

/// With `write_ack = "replica"`, a claim made while the stream's replica is
/// away gets `-NOREPLICAS` although it ran on the master: what it took is
/// pending to the claimer, unseen. job reads those entries back without a
/// write and delivers them at once, and treats its own acks, refused the same
/// way, as done. Before, every claim got the same reply for as long as the
/// replica was away, so the entries waited until it was back and then another
/// `claim_min_idle`, while the acks were retried in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_ack_replica_a_claim_no_replica_confirmed_still_delivers_at_once() {
    const ROOM: &str = "live://cl";
    const PUSHES: usize = 5;
    let group = queue_group(Some(ROOM), None) as usize;
    let stream = {
        let msg = PushMsg {
            r#type: PushType::Room as i32,
            operation: OP,
            room: ROOM.into(),
            ..PushMsg::default()
        };
        queue::stream_key(queue::stream_of(&msg, queue::DEFAULT_STREAMS))
    };
    let (c, replicas) = Cluster::with_persistent_replicas().await;
    for m in &c.masters {
        common::wait_replica_streaming(&m.addr()).await;
    }
    let proxy = c
        .proxy_with(|cfg| {
            cfg.write_ack = WriteAck::Replica;
            cfg.write_ack_timeout = Duration::from_millis(300);
        })
        .await;
    let mut p = Push::on(c, proxy, |_| {}).await;
    let a = p.comet("comet-a", "10.9.0.1").await;
    let mut client = connect(&p.tcp(a), &auth_body(1, "kc1", ROOM, &[OP])).await;
    // Only a dead instance's entries can be claimed within the test: stale
    // ones wait 30 s, and job-a holds its room pushes for 20 s.
    let slow_claims = |c: &mut JobConfig| {
        c.queue.claim_min_idle = Duration::from_secs(30);
        c.room.signal = Duration::from_secs(20);
    };
    p.job_with("job-a", slow_claims).await;
    for i in 0..PUSHES {
        push(
            p.http(),
            &format!("/goim/push/room?operation={OP}&type=live&room=cl"),
            &format!("r{i}"),
        )
        .await;
    }
    let mut r = proxy_conn(&p.proxy.to_string()).await;
    eventually("job-a holds the pushes, read and not acked", WAIT, async || {
        group_consumers(&mut r, &stream).await.get("job-a") == Some(&(PUSHES as i64))
    })
    .await;
    p.job_with("job-b", |c| {
        slow_claims(c);
        c.room.signal = ROOM_SIGNAL;
    })
    .await;

    let master = p.up.cluster.masters[group - 1].addr();
    let pid = freeze_and_cut_off(&replicas[group - 1], &master).await;
    let job_a = p.jobs.remove(0);
    job_a.kill();
    let killed = Instant::now();
    let mut got = Vec::new();
    while got.len() < PUSHES {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "{} of {PUSHES} pushes delivered {:?} after job-a died, with the replica away",
            got.len(),
            killed.elapsed()
        );
        match client.recv().await {
            Ok(Delivery::Frame(f)) => got.extend(pairs(&[f])),
            Err(ImClientError::Timeout { .. }) => {}
            other => panic!("want plain frames, got {other:?}"),
        }
    }
    eprintln!(
        "claim: job-a's pushes delivered {:?} after it died",
        killed.elapsed()
    );
    let want: Vec<(i32, String)> = (0..PUSHES).map(|i| (OP, format!("r{i}"))).collect();
    got.sort();
    assert_eq!(got, want, "each push exactly once");
    // The XACK ran on the master at once; job-b counts it once the proxy
    // answers, after its `WAIT` gave up.
    let job_b = &p.jobs[0];
    eventually("job-b acked them all", WAIT, async || {
        job_b.stats().acked >= PUSHES as u64
            && group_consumers(&mut r, &stream)
                .await
                .values()
                .all(|pending| *pending == 0)
    })
    .await;
    assert!(job_b.stats().claimed >= PUSHES as u64, "{:?}", job_b.stats());
    signal(pid, "-CONT");
    p.shutdown().await;
}

/// A comet whose ZooKeeper session expires (its link to ZooKeeper cut) serves
/// its clients all along, but its registration goes with the session until
/// it has a new one. job keeps calling it for `comet.leave_grace`, so pushes
/// accepted meanwhile, by mid and by room, still reach its client. Before,
/// job dropped them as pushes for an unknown comet (a grace of 0 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comet_whose_zookeeper_session_expires_still_gets_its_pushes() {
    const ROOM: &str = "live://zx";
    let mut p = Push::start(|c| c.session.expire = Duration::from_secs(60)).await;
    let relay = common::relay::Relay::start(p.cluster.zk.addr.clone()).await;
    let a = p
        .comet_with("comet-a", "10.9.0.1", |c| c.zk.addr = relay.addr.to_string())
        .await;
    p.job("job-a").await;
    let mut client = connect(&p.tcp(a), &auth_body(101, "kzx", ROOM, &[OP])).await;
    push(
        p.http(),
        &format!("/goim/push/mids?operation={OP}&mids=101"),
        "before",
    )
    .await;
    expect(&mut client, "before the cut", &[(OP, "before")]).await;

    relay.cut();
    let store = p.cluster.store.clone();
    eventually("comet-a's session expired and its node went", WAIT, async || {
        instance_owner(&store, InstanceKind::Comet, "comet-a")
            .await
            .is_none()
    })
    .await;
    // Departed, and still called; or, with no grace, forgotten.
    eventually("job saw comet-a go", WAIT, || {
        let j = &p.jobs[0];
        let gone = j.departed_comets() == ["comet-a"] || j.comets().is_empty();
        async move { gone }
    })
    .await;
    push(
        p.http(),
        &format!("/goim/push/mids?operation={OP}&mids=101"),
        "by mid",
    )
    .await;
    expect(&mut client, "by mid, while unregistered", &[(OP, "by mid")]).await;
    push(
        p.http(),
        &format!("/goim/push/room?operation={OP}&type=live&room=zx"),
        "by room",
    )
    .await;
    expect(&mut client, "by room, while unregistered", &[(OP, "by room")]).await;
    assert_eq!(p.jobs[0].stats().dropped_unknown_server, 0);
    let admin = p.jobs[0].admin_addr.expect("job's admin port");
    let (_, page) = common::http::try_request(admin, "GET", "/metrics", Vec::new())
        .await
        .expect("job's metrics");
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("\nreborn_job_comets_departed 1\n"), "{page}");

    relay.restore();
    eventually("comet-a registered again, and job knows it", WAIT, || {
        let back = p.jobs[0].departed_comets().is_empty() && p.jobs[0].comets() == ["comet-a"];
        async move { back }
    })
    .await;
    push(
        p.http(),
        &format!("/goim/push/mids?operation={OP}&mids=101"),
        "after",
    )
    .await;
    expect(&mut client, "after", &[(OP, "after")]).await;
    p.shutdown().await;
}
