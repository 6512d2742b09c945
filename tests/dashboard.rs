//! `reborn dashboard` against a real ZooKeeper: the leader serves the JSON API
//! (and refuses bad input without touching ZooKeeper), a standby takes over when
//! the leader stops or is cut off, a leader that may have lost its session steps
//! down before anyone else can lead, `standby = false` refuses clearly, and the
//! rebalance plan reaches `reborn admin`.

mod common;

use std::time::{Duration, Instant};

use axum::http::Method;
use reborn::topo::manager::dashboard::client::{self, ApiReply};
use reborn::topo::manager::dashboard::{BoundDashboard, DashboardConfig, DashboardError, DashboardInfo};
use reborn::topo::manager::rebalance::{Move, Plan};
use reborn::topo::operation::{add_server, assign_slots, create_group, init_product};
use reborn::topo::{Role, Store, Topology, ZkConfig, watcher};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An in-process dashboard on a free port.
struct Dashboard {
    addr: String,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), DashboardError>>,
}

impl Dashboard {
    async fn start(zk: &ZkConfig, standby: bool) -> Dashboard {
        let config = DashboardConfig {
            listen: "127.0.0.1:0".into(),
            zk: zk.clone(),
            standby,
            ..DashboardConfig::default()
        };
        let bound = BoundDashboard::bind(config).await.expect("bind");
        let addr = bound.local_addr().to_string();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(bound.run(cancel.clone()));
        Dashboard { addr, cancel, task }
    }

    /// Stops it and checks that it stopped cleanly.
    async fn stop(self) {
        self.cancel.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stops within 10 s")
            .expect("task");
        assert!(ended.is_ok(), "{ended:?}");
    }

    /// `role` and the leader's address from `GET /api/dashboard`.
    async fn role(&self) -> (String, Option<String>) {
        let body = get(&self.addr, "/api/dashboard").await.body;
        let role = body["role"].as_str().unwrap_or_default().to_string();
        (role, body["leader"]["addr"].as_str().map(str::to_string))
    }

    /// Waits until its role is `want`; returns how long that took.
    async fn wait_role(&self, want: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        common::eventually(&format!("{} is {want}", self.addr), timeout, async || {
            self.role().await.0 == want
        })
        .await;
        started.elapsed()
    }
}

async fn call(addr: &str, method: Method, path: &str, body: Option<Value>) -> ApiReply {
    client::call(addr, method, path, body.as_ref())
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn get(addr: &str, path: &str) -> ApiReply {
    call(addr, Method::GET, path, None).await
}

async fn post(addr: &str, path: &str, body: Value) -> ApiReply {
    call(addr, Method::POST, path, Some(body)).await
}

/// A store on a fresh, initialized product.
async fn initialized(cfg: &ZkConfig) -> Store {
    let store = Store::connect(cfg).await.expect("connect");
    init_product(&store).await.expect("init");
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_serves_every_topology_operation() {
    let cfg = common::zk_config();
    let store = initialized(&cfg).await;
    let d = Dashboard::start(&cfg, true).await;
    d.wait_role("leader", Duration::from_secs(5)).await;
    let a = d.addr.as_str();

    let expect = |r: ApiReply, status: u16, message: &str| {
        assert_eq!(r.status, status, "{:?}", r.body);
        assert_eq!(r.body["message"], message);
    };
    expect(
        post(a, "/api/groups", json!({"id": 1})).await,
        201,
        "group 1 created",
    );
    expect(
        post(a, "/api/groups", json!({"id": 2})).await,
        201,
        "group 2 created",
    );
    let master = json!({"addr": "127.0.0.1:7001", "role": "master"});
    let r = post(a, "/api/groups/1/servers", master).await;
    expect(r, 201, "127.0.0.1:7001 added to group 1 as master");
    // Nothing listens there: it is added, and the reply says it could not
    // be looked at (a replica that holds keys is refused, tests/admin.rs).
    let replica = json!({"addr": "127.0.0.1:7002", "role": "replica"});
    let r = post(a, "/api/groups/1/servers", replica).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let message = r.body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "127.0.0.1:7002 added to group 1 as replica (not looked at: 127.0.0.1:7002 does not answer"
        ),
        "{message}"
    );
    let assign = json!({"start": 0, "end": 1023, "group": 1});
    expect(
        post(a, "/api/slots/assign", assign).await,
        200,
        "slots 0-1023 assigned to group 1",
    );

    // The API shows what ZooKeeper holds.
    let topo: Topology = get(a, "/api/topology").await.into_json().expect("topology");
    assert_eq!(topo, watcher::load(&store).await.expect("load"));
    assert_eq!(topo.master_of_slot(1023), Some("127.0.0.1:7001"));
    assert_eq!(topo.groups[&1].servers[1].role, Role::Replica);
    let groups = get(a, "/api/groups").await.body;
    assert_eq!(groups[0]["slots"], 1024);
    assert_eq!(groups[1], json!({"id": 2, "servers": [], "slots": 0}));
    let slots = get(a, "/api/slots").await.body;
    assert_eq!(
        slots,
        json!([{"start": 0, "end": 1023, "group": 1, "state": "online"}])
    );

    // Refused requests: a clear status and message, and ZooKeeper untouched.
    let before = watcher::load(&store).await.expect("load");
    let bad: Vec<(Method, &str, Option<Value>, u16, &str)> = vec![
        (
            Method::POST,
            "/api/groups",
            Some(json!({"id": 0})),
            400,
            "out of range",
        ),
        (
            Method::POST,
            "/api/groups",
            Some(json!({"id": "x"})),
            400,
            "invalid type",
        ),
        (
            Method::POST,
            "/api/groups",
            Some(json!({"id": 3, "x": 1})),
            400,
            "unknown field",
        ),
        (
            Method::POST,
            "/api/groups",
            Some(json!({"id": 1})),
            409,
            "group 1 already exists",
        ),
        (
            Method::POST,
            "/api/groups/1/servers",
            Some(json!({"addr": "nonsense"})),
            400,
            "host:port",
        ),
        (
            Method::POST,
            "/api/groups/1/servers",
            Some(json!({"addr": "127.0.0.1:7003"})),
            400,
            "already has master 127.0.0.1:7001",
        ),
        (
            Method::POST,
            "/api/groups/2/servers",
            Some(json!({"addr": "127.0.0.1:7001"})),
            409,
            "(in group 1) already exists",
        ),
        (
            Method::POST,
            "/api/groups/9/servers",
            Some(json!({"addr": "h:1"})),
            404,
            "group 9 does not exist",
        ),
        (
            Method::POST,
            "/api/slots/assign",
            Some(json!({"start": 0, "end": 1024, "group": 1})),
            400,
            "not within 0-1023",
        ),
        (
            Method::POST,
            "/api/slots/assign",
            Some(json!({"start": 0, "end": 9, "group": 2})),
            400,
            "group 2 has no master",
        ),
        (
            Method::DELETE,
            "/api/groups/1",
            None,
            400,
            "still owns slots 0-1023",
        ),
        (
            Method::DELETE,
            "/api/groups/9",
            None,
            404,
            "group 9 does not exist",
        ),
        (Method::DELETE, "/api/groups/abc", None, 400, "abc"),
        (
            Method::DELETE,
            "/api/groups/1/servers/127.0.0.1:7001",
            None,
            400,
            "which owns slots 0-1023",
        ),
        (Method::PUT, "/api/groups", None, 405, "method not allowed"),
        (Method::GET, "/api/no-such-thing", None, 404, "no such endpoint"),
        (
            Method::POST,
            "/api/groups",
            Some(json!({"id": 3, "pad": "x".repeat(3 << 20)})),
            413,
            "length limit exceeded",
        ),
        (
            Method::POST,
            "/api/groups/0/promote",
            Some(json!({})),
            400,
            "group id 0 is out of range",
        ),
        (
            Method::GET,
            "/api/rebalance/plan?weights=1=2",
            None,
            400,
            "group:weight",
        ),
    ];
    for (method, path, body, status, needle) in bad {
        let r = call(a, method.clone(), path, body.clone()).await;
        let error = r.error().unwrap_or_default();
        assert_eq!(r.status, status, "{method} {path} {body:?}: {:?}", r.body);
        assert!(
            error.contains(needle),
            "{method} {path} {body:?}: {error:?} lacks {needle:?}"
        );
    }
    assert_eq!(
        watcher::load(&store).await.expect("load"),
        before,
        "refusals wrote nothing"
    );

    // Proxies are set offline and online again (the marker works before a
    // proxy runs), servers and groups removed.
    // The answer says no such proxy runs: a mistyped id does not pass unnoticed.
    expect(
        post(a, "/api/proxies/p1/offline", json!(null)).await,
        200,
        "proxy p1 set offline; no proxy p1 is running, so it will start offline \
         (check the id with `proxies`; `proxy-online p1` removes the mark)",
    );
    let proxies = get(a, "/api/proxies").await.body;
    assert_eq!(
        proxies,
        json!([{"id": "p1", "online": false, "running": false, "info": null}])
    );
    expect(
        post(a, "/api/proxies/p1/online", json!(null)).await,
        200,
        "proxy p1 set online (no proxy p1 is running)",
    );
    assert_eq!(get(a, "/api/proxies").await.body, json!([]));
    let r = call(a, Method::DELETE, "/api/groups/1/servers/127.0.0.1:7002", None).await;
    expect(r, 200, "127.0.0.1:7002 removed from group 1");
    expect(
        call(a, Method::DELETE, "/api/groups/2", None).await,
        200,
        "group 2 removed",
    );
    let after = watcher::load(&store).await.expect("load");
    assert_eq!(after.groups.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(after.groups[&1].servers.len(), 1);

    d.stop().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_answers_503_and_takes_over_when_the_leader_stops() {
    let cfg = common::zk_config();
    let store = initialized(&cfg).await;
    let first = Dashboard::start(&cfg, true).await;
    first.wait_role("leader", Duration::from_secs(5)).await;
    let second = Dashboard::start(&cfg, true).await;
    second.wait_role("standby", Duration::from_secs(5)).await;
    common::eventually(
        "the standby to name the leader",
        Duration::from_secs(5),
        || async { second.role().await.1.as_deref() == Some(first.addr.as_str()) },
    )
    .await;

    let refused = get(&second.addr, "/api/groups").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body["leader"], first.addr.as_str());
    let error = refused.error().unwrap_or_default();
    assert!(
        error.contains("standby") && error.contains(&first.addr),
        "{error}"
    );
    let node: DashboardInfo = store.get_json(&store.paths().dashboard()).await.expect("node");
    assert_eq!(
        (node.addr.as_str(), node.pid),
        (first.addr.as_str(), std::process::id())
    );

    // The leader stops (and deletes its node): the standby leads at once.
    first.stop().await;
    let took = second.wait_role("leader", Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(1), "takeover took {took:?}");
    assert_eq!(get(&second.addr, "/api/groups").await.status, 200);
    let node: DashboardInfo = store.get_json(&store.paths().dashboard()).await.expect("node");
    assert_eq!(node.addr, second.addr);

    second.stop().await;
    assert!(
        !store.exists(&store.paths().dashboard()).await.expect("exists"),
        "resigned"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_standby_a_second_dashboard_refuses_naming_the_leader() {
    let cfg = common::zk_config();
    let store = initialized(&cfg).await;
    let first = Dashboard::start(&cfg, true).await;
    first.wait_role("leader", Duration::from_secs(5)).await;

    let second = Dashboard::start(&cfg, false).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), second.task)
        .await
        .expect("refuses quickly")
        .expect("task");
    let msg = ended.expect_err("refused").to_string();
    assert!(msg.contains("already has a dashboard"), "{msg}");
    assert!(msg.contains(&first.addr) && msg.contains("pid"), "{msg}");
    // Undisturbed.
    assert_eq!(first.role().await.0, "leader");
    assert_eq!(get(&first.addr, "/api/groups").await.status, 200);

    // Nor does a dashboard start for a product nobody created.
    let mut missing = cfg.clone();
    missing.product = "nope".into();
    let err = Dashboard::start(&missing, true).await.task.await.expect("task");
    let msg = err.expect_err("not initialized").to_string();
    assert!(
        msg.contains("not initialized") && msg.contains("reborn admin init"),
        "{msg}"
    );

    first.stop().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_steps_down_before_the_standby_takes_over() {
    let cfg = common::zk_config();
    let observer = initialized(&cfg).await;
    let relay = common::relay::Relay::start(common::zk()).await;
    let cut_cfg = ZkConfig {
        addr: relay.addr.to_string(),
        ..cfg.clone()
    };
    let old = Dashboard::start(&cut_cfg, true).await;
    old.wait_role("leader", Duration::from_secs(5)).await;
    let new = Dashboard::start(&cfg, true).await;
    new.wait_role("standby", Duration::from_secs(5)).await;

    // Never two leaders: sample both roles until the handover is done.
    let (old_addr, new_addr) = (old.addr.clone(), new.addr.clone());
    let sampler = tokio::spawn(async move {
        let role = |addr: String| async move { get(&addr, "/api/dashboard").await.body["role"].clone() };
        let mut stepped_down = None;
        loop {
            let (a, b) = (role(old_addr.clone()).await, role(new_addr.clone()).await);
            assert!(!(a == "leader" && b == "leader"), "two leaders at once");
            if a == "standby" && stepped_down.is_none() {
                stepped_down = Some(Instant::now());
            }
            if b == "leader" {
                return stepped_down.expect("the new leader leads only after the old one stepped down");
            }
            // A sampling rate: every sample is checked, not only the last.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    relay.cut();
    let cut = Instant::now();
    // The old leader cannot prove its session alive: it steps down within two
    // thirds of the session timeout (2 s), before the server can expire it.
    old.wait_role("standby", Duration::from_secs(5)).await;
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "stepped down after {:?}",
        cut.elapsed()
    );
    // The server expires the session and its node; the standby leads within a second.
    let path = observer.paths().dashboard();
    common::eventually("the cut session to expire", Duration::from_secs(20), || async {
        let node: Result<DashboardInfo, _> = observer.get_json(&path).await;
        !matches!(node, Ok(info) if info.addr == old.addr)
    })
    .await;
    let gone = Instant::now();
    new.wait_role("leader", Duration::from_secs(2)).await;
    assert!(
        gone.elapsed() < Duration::from_secs(1),
        "took over {:?} after the node went",
        gone.elapsed()
    );
    let stepped_down = tokio::time::timeout(Duration::from_secs(5), sampler)
        .await
        .expect("sampler ends")
        .expect("sampler");
    assert!(
        stepped_down < gone,
        "the old leader stepped down only after the node went"
    );

    // Back online, the old leader gets a new session, finds the node taken and
    // stays a standby behind the new leader.
    relay.restore();
    common::eventually(
        "the old leader to follow the new one",
        Duration::from_secs(20),
        || async { old.role().await == ("standby".to_string(), Some(new.addr.clone())) },
    )
    .await;
    // And stays so: a window of time in which nothing may change.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(old.role().await.0, "standby");
    assert_eq!(new.role().await.0, "leader");
    let node: DashboardInfo = observer.get_json(&path).await.expect("node");
    assert_eq!(node.addr, new.addr);

    // On its new session, the old leader leads again once the new one stops.
    new.stop().await;
    old.wait_role("leader", Duration::from_secs(2)).await;
    assert_eq!(get(&old.addr, "/api/groups").await.status, 200);
    old.stop().await;
    observer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebalance_plan_reaches_the_api_and_the_admin_command() {
    let cfg = common::zk_config();
    let store = initialized(&cfg).await;
    for id in 1..=3 {
        create_group(&store, id).await.expect("group");
        add_server(&store, id, &format!("127.0.0.1:{}", 7000 + id), Role::Master)
            .await
            .expect("master");
    }
    assign_slots(&store, 0, 1023, 1).await.expect("assign");
    let before = watcher::load(&store).await.expect("load");
    let d = Dashboard::start(&cfg, true).await;
    d.wait_role("leader", Duration::from_secs(5)).await;

    let mv = |start, end, from, to| Move { start, end, from, to };
    let plan: Plan = get(&d.addr, "/api/rebalance/plan")
        .await
        .into_json()
        .expect("plan");
    assert_eq!(plan.moves, vec![mv(342, 682, 1, 2), mv(683, 1023, 1, 3)]);
    let plan: Plan = get(&d.addr, "/api/rebalance/plan?weights=1:2,2:1")
        .await
        .into_json()
        .expect("weighted plan");
    assert_eq!(plan.moves, vec![mv(512, 767, 1, 2), mv(768, 1023, 1, 3)]);
    let r = get(&d.addr, "/api/rebalance/plan?weights=9:1").await;
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .unwrap_or_default()
            .contains("group 9, which does not exist"),
        "{:?}",
        r.body
    );
    assert_eq!(
        watcher::load(&store).await.expect("load"),
        before,
        "a plan changes nothing"
    );

    // `reborn admin rebalance --dry-run` prints it; without --dry-run it is
    // applied as one migration task per move.
    let admin = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_reborn"));
        cmd.arg("admin").arg("rebalance").args(args);
        cmd.output()
    };
    let out = admin(&["--dry-run", "--weights", "1:2,2:1", "--dashboard", &d.addr])
        .await
        .expect("run admin");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("MOVE SLOTS") && stdout.contains("512-767"),
        "{stdout}"
    );
    assert!(stdout.contains("512 slots move in 2 ranges."), "{stdout}");
    let out = admin(&["--dry-run", "--weights", "9:1", "--dashboard", &d.addr])
        .await
        .expect("run admin");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("group 9"));
    let out = admin(&["--dashboard", &d.addr]).await.expect("run admin");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("queued task 1: slots 342-682 to group 2")
            && stdout.contains("queued task 2: slots 683-1023 to group 3"),
        "{stdout}"
    );
    let tasks: Vec<reborn::topo::manager::task::Task> =
        get(&d.addr, "/api/tasks").await.into_json().expect("tasks");
    assert_eq!(tasks.len(), 2);

    d.stop().await;
    store.close().await;
}

/// A leader node this very process left on a session it has since replaced
/// (a ZooKeeper restart keeps such a node until that old session's timeout)
/// does not keep the dashboard waiting behind itself: nobody else can lead
/// meanwhile, so it removes the node and leads at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_this_process_left_on_an_old_session_is_taken_over_at_once() {
    let cfg = common::zk_config();
    let store = initialized(&cfg).await;
    let config = DashboardConfig {
        listen: "127.0.0.1:0".into(),
        zk: cfg.clone(),
        standby: true,
        ..DashboardConfig::default()
    };
    let bound = BoundDashboard::bind(config).await.expect("bind");
    let addr = bound.local_addr().to_string();
    // The old session: another one of this process, still open, holding a
    // node that describes this dashboard.
    let old = Store::connect(&cfg).await.expect("connect");
    common::plant_leader(&old, &DashboardInfo::for_this_process(addr.clone())).await;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(bound.run(cancel.clone()));
    let d = Dashboard { addr, cancel, task };
    let took = d.wait_role("leader", Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "led after {took:?}");
    // A node of another dashboard is still waited for (the standby tests
    // above), so only this process's own is removed.
    d.stop().await;
    old.close().await;
    store.close().await;
}

/// A leader of this machine that crashed (its session still open, as for a
/// session timeout after a SIGKILL) is replaced by a standby at once: the
/// product is not left without a dashboard, or failover, meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_of_this_machine_that_has_ended_is_replaced_at_once() {
    let cfg = common::zk_config();
    let store = initialized(&cfg).await;
    let crashed = Store::connect(&cfg).await.expect("connect");
    let mut info = DashboardInfo::for_this_process("127.0.0.1:1".into());
    info.pid = common::ended_pid();
    common::plant_leader(&crashed, &info).await;
    let d = Dashboard::start(&cfg, true).await;
    let took = d.wait_role("leader", Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "led after {took:?}");
    d.stop().await;
    crashed.close().await;
    store.close().await;
}
