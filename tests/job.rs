//! `reborn job` against a real cluster: this binary's ZooKeeper, two
//! redis-servers behind an in-process reborn proxy (the queue lives there), job
//! in-process, and comets found through ZooKeeper.
//!
//! The comets here are test scaffolding: a minimal in-test implementation of
//! the `goim.comet.Comet` gRPC service that records what it receives,
//! registered through `im::discovery` like a real comet. The real comet lands
//! separately (issue 9 part 2); job only sees the gRPC service and the
//! registration, which are the same.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reborn::im::discovery::{self, Instance, InstanceKind};
use reborn::im::frame::{Frame, op, push_frame};
use reborn::im::job::{self, JobConfig, RunningJob};
use reborn::im::proto::comet::comet_server::{Comet, CometServer};
use reborn::im::proto::comet::{
    BroadcastReply, BroadcastReq, BroadcastRoomReply, BroadcastRoomReq, PushMsgReply, PushMsgReq, RoomsReply,
    RoomsReq,
};
use reborn::im::proto::logic::PushMsg;
use reborn::im::proto::logic::push_msg::Type as PushType;
use reborn::im::queue;
use reborn::libs::resp_client;
use reborn::topo::Store;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use common::cluster::Cluster;
use common::eventually;
use common::im::{group_consumers, proxy_conn};

/// Streams of the test queue (fewer than the default 16: fewer connections).
const STREAMS: usize = 4;
const WAIT: Duration = Duration::from_secs(20);

/// What one test comet received.
#[derive(Default, Debug)]
struct Received {
    push: Vec<PushMsgReq>,
    broadcast: Vec<BroadcastReq>,
    room: Vec<BroadcastRoomReq>,
}

/// The in-test comet service (see the module docs): records every call.
#[derive(Clone, Default)]
struct RecordingComet {
    got: Arc<Mutex<Received>>,
}

impl RecordingComet {
    fn with<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.got.lock().expect("not poisoned"))
    }
}

#[tonic::async_trait]
impl Comet for RecordingComet {
    async fn push_msg(&self, req: Request<PushMsgReq>) -> Result<Response<PushMsgReply>, Status> {
        self.got.lock().expect("lock").push.push(req.into_inner());
        Ok(Response::new(PushMsgReply {}))
    }

    async fn broadcast(&self, req: Request<BroadcastReq>) -> Result<Response<BroadcastReply>, Status> {
        self.got.lock().expect("lock").broadcast.push(req.into_inner());
        Ok(Response::new(BroadcastReply {}))
    }

    async fn broadcast_room(
        &self,
        req: Request<BroadcastRoomReq>,
    ) -> Result<Response<BroadcastRoomReply>, Status> {
        self.got.lock().expect("lock").room.push(req.into_inner());
        Ok(Response::new(BroadcastRoomReply {}))
    }

    async fn rooms(&self, _req: Request<RoomsReq>) -> Result<Response<RoomsReply>, Status> {
        Ok(Response::new(RoomsReply::default()))
    }
}

/// Serves a [`RecordingComet`] on a free port until `stop`; returns it and its address.
async fn serve_comet(stop: &CancellationToken) -> (RecordingComet, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let comet = RecordingComet::default();
    let service = CometServer::new(comet.clone());
    let stop = stop.clone();
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
    });
    (comet, addr)
}

/// Registers comet `id` at `grpc` in ZooKeeper, as a comet does.
async fn register(store: &Store, id: &str, grpc: &str) {
    let me = Instance {
        id: id.into(),
        grpc: grpc.into(),
        tcp_port: 3101,
        ..Instance::default()
    };
    discovery::register(store, InstanceKind::Comet, &me)
        .await
        .expect("register comet");
}

/// A job config for this cluster with quick timings.
fn job_config(cluster: &Cluster, proxy: &str, consumer: &str) -> JobConfig {
    let mut c = JobConfig {
        consumer: consumer.into(),
        zk: cluster.zk.clone(),
        ..JobConfig::default()
    };
    c.cluster.addrs = vec![proxy.to_string()];
    c.admin_listen = "127.0.0.1:0".into();
    c.queue.streams = STREAMS;
    c.queue.block = Duration::from_millis(200);
    c.queue.claim_interval = Duration::from_millis(200);
    c.comet.retry_backoff = Duration::from_millis(10);
    c
}

fn push(server: &str, keys: &[&str], operation: i32, body: &str) -> PushMsg {
    PushMsg {
        r#type: PushType::Push as i32,
        operation,
        server: server.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        msg: body.as_bytes().to_vec(),
        ..PushMsg::default()
    }
}

fn room_msg(room: &str, operation: i32, body: &str) -> PushMsg {
    PushMsg {
        r#type: PushType::Room as i32,
        operation,
        room: room.into(),
        msg: body.as_bytes().to_vec(),
        ..PushMsg::default()
    }
}

/// Appends `msgs` to their streams through the proxy, in one pipeline (as
/// logic does).
async fn xadd(proxy: &str, msgs: &[PushMsg]) {
    let mut conn = proxy_conn(proxy).await;
    let frames = msgs
        .iter()
        .map(|m| {
            let key = queue::stream_key(queue::stream_of(m, STREAMS));
            let value = queue::encode(m);
            resp_client::cmd(&[
                &b"XADD"[..],
                key.as_bytes(),
                b"*",
                queue::FIELD.as_bytes(),
                &value,
            ])
        })
        .collect();
    for reply in conn.pipeline(frames).await.expect("XADD") {
        resp_client::bytes(reply).expect("XADD gives an id");
    }
}

/// Entries pending (read, not acked) over every stream, per consumer.
async fn pending(proxy: &str) -> Vec<(String, i64)> {
    let mut conn = proxy_conn(proxy).await;
    let mut out = Vec::new();
    for key in queue::stream_keys(STREAMS) {
        let reply = conn
            .call(&["XPENDING", &key, queue::GROUP])
            .await
            .expect("XPENDING");
        let Ok(summary) = resp_client::array(reply) else {
            continue; // no stream or group yet
        };
        let Some(consumers) = summary.into_iter().nth(3) else {
            continue;
        };
        for c in resp_client::array(consumers).expect("consumers") {
            let mut pair = resp_client::array(c).expect("pair").into_iter();
            let name = pair.next().map(resp_client::bytes);
            let count = pair.next().map(resp_client::bytes);
            if let (Some(Ok(Some(name))), Some(Ok(Some(count)))) = (name, count) {
                let n = String::from_utf8_lossy(&count).parse().expect("count");
                out.push((String::from_utf8_lossy(&name).into_owned(), n));
            }
        }
    }
    out
}

async fn total_pending(proxy: &str) -> i64 {
    pending(proxy).await.iter().map(|(_, n)| n).sum()
}

/// The inner frames of an OpRaw body.
fn frames_in(body: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(body);
    let mut out = Vec::new();
    while let Ok(Some(f)) = Frame::decode(&mut buf, 1 << 20) {
        out.push(f);
    }
    assert!(buf.is_empty(), "an OpRaw body is whole frames");
    out
}

/// Waits until `job` knows the comets `ids`.
async fn wait_comets(job: &RunningJob, ids: &[&str]) {
    eventually("job sees the comets", WAIT, || async {
        job.comets() == ids.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    })
    .await;
}

/// Two recording comets and a job instance on one cluster.
struct Setup {
    cluster: Cluster,
    proxy: String,
    c1: RecordingComet,
    c2: RecordingComet,
    comets: Store,
    job: RunningJob,
    stop: CancellationToken,
}

impl Setup {
    async fn start() -> Setup {
        let cluster = Cluster::start().await;
        let proxy = cluster.proxy().await.to_string();
        let stop = CancellationToken::new();
        let (c1, c1_addr) = serve_comet(&stop).await;
        let (c2, c2_addr) = serve_comet(&stop).await;
        let comets = Store::connect(&cluster.zk).await.expect("zk");
        register(&comets, "comet-1", &c1_addr).await;
        register(&comets, "comet-2", &c2_addr).await;
        let job = job::start(job_config(&cluster, &proxy, "job-a"))
            .await
            .expect("job starts");
        wait_comets(&job, &["comet-1", "comet-2"]).await;
        Setup {
            cluster,
            proxy,
            c1,
            c2,
            comets,
            job,
            stop,
        }
    }

    async fn stop(self) {
        self.job.shutdown().await;
        self.comets.close().await;
        self.stop.cancel();
    }
}

/// A key push reaches the comet its server names, and only that one.
async fn key_push_reaches_its_comet(t: &Setup) {
    xadd(&t.proxy, &[push("comet-1", &["k1", "k2"], 1000, "hello")]).await;
    eventually("the push reaches comet-1", WAIT, || async {
        t.c1.with(|r| r.push.len() == 1)
    })
    .await;
    let got = t.c1.with(|r| r.push[0].clone());
    assert_eq!(got.keys, vec!["k1".to_string(), "k2".to_string()]);
    assert_eq!(got.proto_op, 1000);
    let proto = got.proto.expect("proto");
    assert_eq!((proto.ver, proto.op, proto.seq), (1, op::RAW, 0));
    assert_eq!(Bytes::from(proto.body), push_frame(1000, b"hello"));
    assert!(t.c2.with(|r| r.push.is_empty()), "comet-2 got nothing");
}

/// A push to a comet that is gone is dropped, counted, and acked all the same.
async fn push_to_a_gone_comet_is_dropped_and_counted(t: &Setup) {
    xadd(&t.proxy, &[push("comet-gone", &["k9"], 1000, "lost")]).await;
    eventually("the push to a gone comet is counted", WAIT, || async {
        t.job.stats().dropped_unknown_server == 1
    })
    .await;
}

/// A broadcast reaches both comets, the speed shared between them.
async fn broadcast_reaches_every_comet(t: &Setup) {
    let mut all = push("", &[], 1001, "everyone");
    all.r#type = PushType::Broadcast as i32;
    all.speed = 10;
    xadd(&t.proxy, &[all]).await;
    eventually("the broadcast reaches both comets", WAIT, || async {
        t.c1.with(|r| r.broadcast.len()) == 1 && t.c2.with(|r| r.broadcast.len()) == 1
    })
    .await;
    for c in [&t.c1, &t.c2] {
        let b = c.with(|r| r.broadcast[0].clone());
        assert_eq!((b.proto_op, b.speed), (1001, 5));
        let body = b.proto.expect("proto").body;
        assert_eq!(Bytes::from(body), push_frame(1001, b"everyone"));
    }
}

/// The inner frames of each batch `c` received for `room`.
fn batches(c: &RecordingComet, room: &str) -> Vec<Vec<Frame>> {
    c.with(|r| {
        r.room
            .iter()
            .filter(|b| b.room_id == room)
            .map(|b| frames_in(&b.proto.as_ref().expect("proto").body))
            .collect()
    })
}

/// Rooms: 5 messages well within the signal go as one batch; 25 as 20 + 5.
async fn room_messages_are_batched(t: &Setup) {
    let mut msgs: Vec<PushMsg> = (0..5)
        .map(|i| room_msg("live://small", 1002, &format!("s{i}")))
        .collect();
    msgs.extend((0..25).map(|i| room_msg("live://big", 1003, &format!("b{i}"))));
    xadd(&t.proxy, &msgs).await;
    eventually("the room batches reach both comets", WAIT, || async {
        [&t.c1, &t.c2].iter().all(|c| {
            let big: usize = batches(c, "live://big").iter().map(Vec::len).sum();
            batches(c, "live://small").len() == 1 && big == 25
        })
    })
    .await;
    for c in [&t.c1, &t.c2] {
        let small = batches(c, "live://small");
        let bodies: Vec<Bytes> = small[0].iter().map(|f| f.body.clone()).collect();
        let want: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("s{i}"))).collect();
        assert_eq!(bodies, want);
        assert!(small[0].iter().all(|f| (f.op, f.ver, f.seq) == (1002, 1, 0)));
        let big: Vec<usize> = batches(c, "live://big").iter().map(Vec::len).collect();
        assert_eq!(big, vec![20, 5], "a full batch of 20, then the rest");
        let raw = c.with(|r| {
            r.room
                .iter()
                .all(|b| b.proto.as_ref().map(|p| p.op) == Some(op::RAW))
        });
        assert!(raw, "room batches are OpRaw");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_broadcasts_and_rooms_reach_the_comets_and_are_acked() {
    let t = Setup::start().await;
    key_push_reaches_its_comet(&t).await;
    push_to_a_gone_comet_is_dropped_and_counted(&t).await;
    broadcast_reaches_every_comet(&t).await;
    room_messages_are_batched(&t).await;

    // Everything delivered (or dropped for good) was acked.
    eventually("nothing left pending", WAIT, || async {
        total_pending(&t.proxy).await == 0
    })
    .await;
    let stats = t.job.stats();
    assert_eq!((stats.read, stats.acked), (33, 33));
    assert_eq!((stats.pushed, stats.broadcast, stats.room_messages), (1, 1, 30));
    assert_eq!((stats.room_batches, stats.dropped_rpc_failed), (3, 0));
    // No call was made before its group existed: a fresh job claims only
    // once its reader created the group, so no server counted a NOGROUP.
    for master in &t.cluster.masters {
        let mut m = common::client(&master.addr()).await;
        let errors: String = redis::cmd("INFO")
            .arg("errorstats")
            .query_async(&mut m)
            .await
            .expect("INFO errorstats");
        assert!(!errors.contains("NOGROUP"), "{}: {errors}", master.addr());
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_claims_and_delivers_what_a_killed_one_left_pending() {
    let cluster = Cluster::start().await;
    let proxy = cluster.proxy().await.to_string();
    let stop = CancellationToken::new();
    // comet-1 first registers an address that accepts TCP but never answers
    // gRPC: job A's calls hang, so what it read stays unacked.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let blackhole_addr = blackhole.local_addr().expect("addr").to_string();
    let comets = Store::connect(&cluster.zk).await.expect("zk");
    register(&comets, "comet-1", &blackhole_addr).await;

    // Everything is queued before job A starts, so its first read of each
    // stream takes all of that stream's entries at once.
    let mut msgs: Vec<PushMsg> = (0..6)
        .map(|i| push("comet-1", &[&format!("k{i}")], 1000, &format!("p{i}")))
        .collect();
    msgs.extend((0..3).map(|i| room_msg("live://r", 1001, &format!("r{i}"))));
    xadd(&proxy, &msgs).await;

    let mut a = job_config(&cluster, &proxy, "job-a");
    a.comet.timeout = Duration::from_secs(120);
    a.queue.claim_min_idle = Duration::from_secs(60);
    let job_a = job::start(a).await.expect("job A starts");
    eventually("every entry is read by job A and none acked", WAIT, || async {
        let p = pending(&proxy).await;
        p.iter().all(|(c, _)| c == "job-a") && p.iter().map(|(_, n)| n).sum::<i64>() == 9
    })
    .await;
    assert_eq!(job_a.comets(), vec!["comet-1".to_string()]);
    assert_eq!(job_a.stats().acked, 0);

    job_a.kill();
    let (c1, c1_addr) = serve_comet(&stop).await;
    register(&comets, "comet-1", &c1_addr).await;
    // Two more idle consumers without entries: job-parked is a registered job
    // instance (alive, only quiet), job-ghost is not (a dead one's leftover).
    let parked = Instance {
        id: "job-parked".into(),
        ..Instance::default()
    };
    discovery::register(&comets, InstanceKind::Job, &parked)
        .await
        .expect("register job-parked");
    let mut conn = proxy_conn(&proxy).await;
    for key in queue::stream_keys(STREAMS) {
        for name in ["job-parked", "job-ghost"] {
            let reply = conn
                .call(&["XGROUP", "CREATECONSUMER", &key, queue::GROUP, name])
                .await
                .expect("XGROUP CREATECONSUMER");
            assert_eq!(resp_client::int(reply).expect("int"), 1, "{name} on {key}");
        }
    }

    let mut b = job_config(&cluster, &proxy, "job-b");
    // Short, but well above job B's own time to deliver (room signal
    // included), so it never claims back what it is delivering itself.
    b.queue.claim_min_idle = Duration::from_secs(1);
    b.room.signal = Duration::from_millis(100);
    let job_b = job::start(b).await.expect("job B starts");
    eventually("job B delivers job A's entries", WAIT, || async {
        c1.with(|r| {
            r.push.len() == 6
                && r.room
                    .iter()
                    .map(|b| frames_in(&b.proto.as_ref().expect("proto").body).len())
                    .sum::<usize>()
                    == 3
        })
    })
    .await;
    let mut bodies: Vec<Bytes> = c1.with(|r| {
        r.push
            .iter()
            .map(|p| Bytes::from(p.proto.as_ref().expect("proto").body.clone()))
            .collect()
    });
    bodies.sort();
    let want: Vec<Bytes> = (0..6)
        .map(|i| push_frame(1000, format!("p{i}").as_bytes()))
        .collect();
    assert_eq!(bodies, want);
    eventually("job B acked them all", WAIT, || async {
        total_pending(&proxy).await == 0
    })
    .await;
    let stats = job_b.stats();
    assert_eq!(stats.claimed, 9, "every entry was claimed");
    assert_eq!(stats.acked, 9);
    // The dead instances' consumers leave the groups; live ones stay.
    eventually("job-a and job-ghost leave every group", WAIT, || async {
        let mut conn = proxy_conn(&proxy).await;
        let mut all = true;
        for key in queue::stream_keys(STREAMS) {
            let names: Vec<String> = group_consumers(&mut conn, &key).await.into_keys().collect();
            all &= names == ["job-b", "job-parked"];
        }
        all
    })
    .await;
    assert_eq!(job_b.stats().consumers_deleted, 2 * STREAMS as u64);

    job_b.shutdown().await;
    comets.close().await;
    stop.cancel();
    drop(blackhole);
}

/// What a job instance that died left pending is taken over as soon as its
/// registration is gone, not once `claim_min_idle` (60 s here) has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_entries_are_taken_over_without_waiting_for_claim_min_idle() {
    let cluster = Cluster::start().await;
    let proxy = cluster.proxy().await.to_string();
    let stop = CancellationToken::new();
    // comet-1 first accepts TCP and never answers: job A's calls hang.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let comets = Store::connect(&cluster.zk).await.expect("zk");
    register(
        &comets,
        "comet-1",
        &blackhole.local_addr().expect("addr").to_string(),
    )
    .await;
    let msgs: Vec<PushMsg> = (0..6)
        .map(|i| push("comet-1", &[&format!("k{i}")], 1000, &format!("p{i}")))
        .collect();
    xadd(&proxy, &msgs).await;
    let mut a = job_config(&cluster, &proxy, "job-a");
    a.comet.timeout = Duration::from_secs(120);
    a.queue.claim_min_idle = Duration::from_secs(60);
    let job_a = job::start(a).await.expect("job A starts");
    let mut b = job_config(&cluster, &proxy, "job-b");
    b.queue.claim_min_idle = Duration::from_secs(60);
    let job_b = job::start(b).await.expect("job B starts");
    eventually("job A reads every entry", WAIT, || async {
        let p = pending(&proxy).await;
        p.iter().all(|(c, _)| c == "job-a") && p.iter().map(|(_, n)| n).sum::<i64>() == 6
    })
    .await;

    let (c1, c1_addr) = serve_comet(&stop).await;
    register(&comets, "comet-1", &c1_addr).await;
    // Registered after comet-1 moved: once job B lists it, it knows the move.
    register(&comets, "comet-2", &c1_addr).await;
    eventually("job B knows where comet-1 is now", WAIT, || async {
        job_b.comets().contains(&"comet-2".to_string())
    })
    .await;
    job_a.kill();
    let killed = std::time::Instant::now();
    eventually(
        "job B delivers job A's entries",
        Duration::from_secs(10),
        || async { c1.with(|r| r.push.len() == 6) },
    )
    .await;
    println!("taken over and delivered {:?} after the kill", killed.elapsed());
    eventually("job B acked them all", WAIT, || async {
        total_pending(&proxy).await == 0
    })
    .await;
    assert_eq!(job_b.stats().claimed, 6);
    job_b.shutdown().await;
    comets.close().await;
    stop.cancel();
    drop(blackhole);
}

/// A cluster whose first queue stream holds one entry, added through the
/// proxy: the connection and that stream's key.
async fn cluster_with_one_queued_entry() -> (Cluster, common::RawConn, String) {
    let c = Cluster::start().await;
    let proxy = c.proxy().await.to_string();
    let mut r = common::RawConn::connect(&proxy).await;
    let first = queue::stream_key(0);
    assert!(matches!(
        r.call(&["XADD", first.as_str(), "*", queue::FIELD, "x"]).await,
        common::Resp::Bulk(Some(_))
    ));
    (c, r, first)
}

/// The dashboard's view of the queue (`GET /api/push`, the web UI's Push
/// view) lists the streams up to one it cannot read, and names that one with
/// the server's own error: here `goim-push-1` holds a string, so `XLEN`
/// answers `WRONGTYPE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_queue_view_names_a_stream_it_cannot_read() {
    let (c, mut r, first) = cluster_with_one_queued_entry().await;
    let second = queue::stream_key(1);
    assert_eq!(
        r.call(&["SET", second.as_str(), "not a stream"]).await,
        common::Resp::Simple("OK".into())
    );
    let topo = reborn::topo::watcher::load(&c.store).await.expect("topology");
    let view = reborn::topo::manager::push_queue::read(&topo, None).await;
    assert_eq!(view.streams.len(), 1, "{view:?}");
    assert_eq!(view.streams[0].key, first);
    assert_eq!(view.streams[0].length, 1);
    let error = view.error.expect("an error for goim-push-1");
    assert!(
        error.starts_with("goim-push-1: ") && error.contains("answered XLEN with: WRONGTYPE"),
        "{error}"
    );
}

/// A look the server refuses is reported, not taken for a missing stream
/// (which would end the view early, silently) or for a stream without lag:
/// the masters' default user loses `XINFO`, then `EXISTS` (ACL, as an
/// operator's mistake could).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_queue_view_reports_a_refused_look() {
    let (c, _r, _first) = cluster_with_one_queued_entry().await;
    let topo = reborn::topo::watcher::load(&c.store).await.expect("topology");
    let acl = async |rule: &[&str]| {
        for m in &c.masters {
            let mut conn = common::RawConn::connect(&m.addr()).await;
            let mut words = vec!["ACL", "SETUSER", "default"];
            words.extend_from_slice(rule);
            assert_eq!(conn.call(&words).await, common::Resp::Simple("OK".into()));
        }
    };
    for (rule, cmd) in [(&["-xinfo"][..], "XINFO"), (&["+xinfo", "-exists"][..], "EXISTS")] {
        acl(rule).await;
        let view = reborn::topo::manager::push_queue::read(&topo, None).await;
        assert!(view.streams.is_empty(), "{view:?}");
        let error = view.error.expect("an error for goim-push-0");
        assert!(
            error.starts_with("goim-push-0: ") && error.contains(&format!("answered {cmd} with: NOPERM")),
            "{error}"
        );
    }
}
