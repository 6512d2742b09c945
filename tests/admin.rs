//! Admin correctness against real ZooKeeper, redis-servers, dashboards and the
//! `reborn admin` binary: migrations that could never run are refused when
//! submitted; a task that cannot progress fails and frees the queue; cancel
//! works until a task's switch and is refused (saying to pause) after it;
//! `reborn admin` finds the dashboard of the product it is given through
//! ZooKeeper; `admin groups` and `GET /api/groups` show each server's health;
//! the dashboard's log-level switch refuses a typo.

mod common;

use std::process::Output;
use std::time::Duration;

use common::cluster::Cluster;
use reborn::libs::hash::slot_of;
use reborn::topo::manager::dashboard::client::{self, ApiReply};
use reborn::topo::manager::dashboard::{BoundDashboard, DashboardConfig};
use reborn::topo::manager::task::{self, Task, TaskState};
use reborn::topo::model::{Role, SlotState};
use reborn::topo::{Store, TopoError, ZkConfig, operation, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// An in-process dashboard of `zk`'s product on a free port, stopped with
/// `stop`; returns its address once it leads.
async fn dashboard(zk: &ZkConfig, max_keys_per_sec: Option<u64>, stop: &CancellationToken) -> String {
    dashboard_with(zk, stop, |cfg| cfg.migration.max_keys_per_sec = max_keys_per_sec).await
}

/// [`dashboard`], with its config adjusted by `adjust`.
async fn dashboard_with(
    zk: &ZkConfig,
    stop: &CancellationToken,
    adjust: impl FnOnce(&mut DashboardConfig),
) -> String {
    let mut cfg = DashboardConfig {
        listen: "127.0.0.1:0".into(),
        zk: zk.clone(),
        ..DashboardConfig::default()
    };
    adjust(&mut cfg);
    let bound = BoundDashboard::bind(cfg).await.expect("bind dashboard");
    let addr = bound.local_addr().to_string();
    tokio::spawn(bound.run(stop.clone()));
    common::eventually("the dashboard to lead", Duration::from_secs(10), || async {
        matches!(client::get(&addr, "/api/dashboard").await, Ok(r) if r.body["role"] == "leader")
    })
    .await;
    addr
}

async fn tasks(dash: &str) -> Vec<Task> {
    client::get(dash, "/api/tasks")
        .await
        .expect("GET /api/tasks")
        .into_json()
        .expect("tasks")
}

async fn post(dash: &str, path: &str, body: serde_json::Value) -> ApiReply {
    client::post(dash, path, &body)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Waits until task `id` is in `state`; returns it.
async fn wait_state(dash: &str, id: u64, state: TaskState, timeout: Duration) -> Task {
    let what = format!("task {id} to be {state:?}");
    common::eventually(&what, timeout, || async {
        tasks(dash).await.iter().any(|t| t.id == id && t.state == state)
    })
    .await;
    tasks(dash).await.into_iter().find(|t| t.id == id).expect("task")
}

/// Runs `reborn admin ARGS… --zk … --root … --product …` (the product's flags
/// last, as an operator would type them).
async fn admin(zk: &ZkConfig, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_reborn"))
        .arg("admin")
        .args(args)
        .args(["--zk", &zk.addr, "--zk-root", &zk.root, "--product", &zk.product])
        .output()
        .await
        .expect("run reborn admin")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_that_could_never_run_are_refused_and_nothing_is_queued() {
    let c = Cluster::start().await;
    operation::create_group(&c.store, 3)
        .await
        .expect("group 3, no master");
    let dash = dashboard(&c.zk, None, &c.stop).await;
    let before = watcher::load(&c.store).await.expect("load");

    let refused = [
        ((0, 3, 9), 404, "group 9 does not exist"),
        ((0, 3, 1), 400, "slots already belong to group 1"),
        ((0, 3, 3), 400, "group 3 has no master"),
        ((510, 513, 2), 400, "several groups"),
        ((0, 3, 0), 400, "out of range"),
    ];
    for ((start, end, to), status, needle) in refused {
        let r = post(
            &dash,
            "/api/migrate",
            json!({"start": start, "end": end, "to": to}),
        )
        .await;
        let error = r.error().unwrap_or_default();
        assert_eq!(r.status, status, "{start}-{end} to {to}: {:?}", r.body);
        assert!(
            error.contains(needle),
            "{start}-{end} to {to}: {error:?} lacks {needle:?}"
        );
    }
    // The command line prints the refusal and exits non-zero; it reaches this
    // product's dashboard through ZooKeeper (no --dashboard).
    let out = admin(&c.zk, &["migrate", "--slots", "0-3", "--to", "9"]).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("group 9 does not exist") && stderr.contains("404"),
        "{stderr}"
    );
    let out = admin(&c.zk, &["migrate", "--slots", "0-3", "--to", "1"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("already belong to group 1"),
        "{:?}",
        text(&out)
    );

    assert!(tasks(&dash).await.is_empty(), "a refused migration was queued");
    assert_eq!(
        watcher::load(&c.store).await.expect("load"),
        before,
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_of_an_unfinished_task_are_refused_until_it_ends() {
    let c = Cluster::start().await;
    // No dashboard yet: tasks stay queued.
    let first = task::enqueue(&c.store, (0..=3).collect(), 2)
        .await
        .expect("first");
    let err = task::enqueue(&c.store, (3..=5).collect(), 2)
        .await
        .expect_err("overlaps task 1");
    assert!(
        matches!(&err, TopoError::State(m) if m.contains("slots 3 belong to unfinished task 1")),
        "{err}"
    );
    // All or none: the second move is refused, so the first is not queued either.
    let err = task::enqueue_many(&c.store, vec![((8..=9).collect(), 2), ((1..=1).collect(), 2)])
        .await
        .expect_err("second overlaps");
    assert!(err.to_string().contains("task 1"), "{err}");
    assert_eq!(task::list(&c.store).await.expect("list").len(), 1);
    // Once cancelled, its slots are free again.
    task::cancel(&c.store, first.id).await.expect("cancel");
    let again = task::enqueue(&c.store, (3..=5).collect(), 2)
        .await
        .expect("free again");
    assert_eq!(again.id, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_target_group_disappears_fails_and_the_next_one_runs() {
    let c = Cluster::start().await;
    let third = common::redis();
    operation::create_group(&c.store, 3).await.expect("group 3");
    operation::add_server(&c.store, 3, &third.addr(), Role::Master)
        .await
        .expect("master of 3");
    // Queued while no dashboard runs, then the target group goes away.
    let doomed = task::enqueue(&c.store, (0..=3).collect(), 3).await.expect("to 3");
    let next = task::enqueue(&c.store, (4..=7).collect(), 2).await.expect("to 2");
    operation::remove_server(&c.store, 3, &third.addr())
        .await
        .expect("remove master");
    operation::remove_group(&c.store, 3)
        .await
        .expect("remove group 3");

    let dash = dashboard(&c.zk, None, &c.stop).await;
    let failed = wait_state(&dash, doomed.id, TaskState::Failed, Duration::from_secs(20)).await;
    let reason = failed.error.clone().unwrap_or_default();
    assert!(reason.contains("group 3 does not exist"), "{failed:?}");
    // The queue moved on: the next task ran to the end.
    wait_state(&dash, next.id, TaskState::Done, Duration::from_secs(30)).await;
    assert_eq!(c.slot_state(4).await, (2, SlotState::Online));
    // The failed task's slots never moved.
    assert_eq!(c.slot_state(0).await, (1, SlotState::Online));
    // It is final: it cannot be paused, resumed or cancelled.
    let r = post(&dash, &format!("/api/tasks/{}/cancel", doomed.id), json!({})).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(
        r.error().unwrap_or_default().contains("is failed"),
        "{:?}",
        r.body
    );
    let out = admin(&c.zk, &["tasks"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("failed") && stdout.contains("group 3 does not exist"),
        "{stdout}"
    );
    // For scripts: the same records as JSON.
    let out = admin(&c.zk, &["tasks", "--json"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let listed: Vec<Task> = serde_json::from_str(&stdout).expect("tasks as JSON");
    let failed = listed
        .iter()
        .find(|t| t.id == doomed.id)
        .expect("the failed task");
    assert_eq!(failed.state, TaskState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_works_until_the_switch_and_after_it_says_to_pause() {
    let c = Cluster::start().await;
    // Before any dashboard runs: a queued task, and one the runner had claimed
    // (`migrating`) but whose switch had not happened or was rolled back.
    let queued = task::enqueue(&c.store, (600..=601).collect(), 1)
        .await
        .expect("queued");
    let claimed = task::enqueue(&c.store, (602..=603).collect(), 1)
        .await
        .expect("claimed");
    let path = c.store.paths().task(claimed.id);
    let (mut record, version) = task::get(&c.store, claimed.id).await.expect("get");
    record.state = TaskState::Migrating;
    record.from = 2;
    c.store
        .set_json(&path, &record, version)
        .await
        .expect("claim by hand");
    let out = admin(
        &c.zk,
        &["cancel", &queued.id.to_string(), "--dashboard", "127.0.0.1:1"],
    )
    .await;
    assert!(!out.status.success(), "--dashboard overrides ZooKeeper");
    task::set_paused(&c.store, queued.id, true)
        .await
        .expect("pause queued");
    let t = task::cancel(&c.store, queued.id).await.expect("cancel queued");
    assert!(!t.paused, "an ended task is not paused");
    let t = task::cancel(&c.store, claimed.id)
        .await
        .expect("cancel unswitched");
    assert_eq!(t.state, TaskState::Cancelled);

    // Keys on group 1 for a switched task that moves slowly.
    let mut g1 = common::client(&c.masters[0].addr()).await;
    let keys: Vec<String> = (0..60_000)
        .map(|i| format!("k{i}"))
        .filter(|k| slot_of(k.as_bytes()) < 512)
        .take(12_000)
        .collect();
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.set(k, 1).ignore();
    }
    let () = pipe.query_async(&mut g1).await.expect("preload");
    let dash = dashboard(&c.zk, Some(3000), &c.stop).await;
    let out = admin(&c.zk, &["migrate", "--slots", "0-511", "--to", "2"]).await;
    assert!(out.status.success(), "{:?}", text(&out));
    let id = tasks(&dash).await.iter().map(|t| t.id).max().expect("queued");
    common::eventually("keys to move", Duration::from_secs(20), || async {
        tasks(&dash)
            .await
            .iter()
            .any(|t| t.id == id && t.progress.moved > 0)
    })
    .await;
    let cancel =
        |dash: String| async move { post(&dash, &format!("/api/tasks/{id}/cancel"), json!({})).await };
    let r = cancel(dash.clone()).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    let error = r.error().unwrap_or_default().to_string();
    assert!(
        error.contains("can only finish") && error.contains(&format!("reborn admin pause {id}")),
        "{error}"
    );
    // Paused, it is still not cancellable; the command line says so too.
    let out = admin(&c.zk, &["pause", &id.to_string()]).await;
    assert!(
        text(&out).0.contains(&format!("task {id} paused")),
        "{:?}",
        text(&out)
    );
    let out = admin(&c.zk, &["cancel", &id.to_string()]).await;
    assert!(!out.status.success());
    assert!(text(&out).1.contains("can only finish"), "{:?}", text(&out));
    assert_eq!(c.slot_state(0).await, (2, SlotState::Migrate));
    let t = tasks(&dash).await.into_iter().find(|t| t.id == id).expect("task");
    assert_eq!((t.state, t.paused), (TaskState::Migrating, true));
    // Resumed, it finishes; then cancel says it is done.
    let out = admin(&c.zk, &["resume", &id.to_string()]).await;
    assert!(out.status.success(), "{:?}", text(&out));
    wait_state(&dash, id, TaskState::Done, Duration::from_secs(60)).await;
    let r = cancel(dash.clone()).await;
    assert_eq!(r.status, 409);
    assert!(r.error().unwrap_or_default().contains("is done"), "{:?}", r.body);
    // The cancelled tasks never ran: their slots stayed at group 2.
    assert_eq!(c.slot_state(600).await, (2, SlotState::Online));
    assert_eq!(c.slot_state(603).await, (2, SlotState::Online));
    let list = tasks(&dash).await;
    let state = |id| list.iter().find(|t| t.id == id).map(|t| t.state);
    assert_eq!(state(queued.id), Some(TaskState::Cancelled));
    assert_eq!(state(claimed.id), Some(TaskState::Cancelled));
}

/// `migrate --wait` follows its task to the end: the moments it was claimed,
/// switched and done, and the keys moved; it exits 0 once the slots are
/// online at the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_wait_follows_the_task_to_its_end() {
    let c = Cluster::start().await;
    let mut g1 = common::client(&c.masters[0].addr()).await;
    let keys: Vec<String> = (0..200_000)
        .map(|i| format!("w{i}"))
        .filter(|k| slot_of(k.as_bytes()) < 4)
        .take(300)
        .collect();
    assert_eq!(keys.len(), 300);
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.set(k, 1).ignore();
    }
    let () = pipe.query_async(&mut g1).await.expect("preload");
    // Throttled, so the task is seen while it runs (the command asks every 0.1 s).
    let dash = dashboard(&c.zk, Some(500), &c.stop).await;
    let out = admin(&c.zk, &["migrate", "--slots", "0-3", "--to", "2", "--wait"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("queued task "), "{stdout}");
    let at = |what: &str| {
        lines
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in {stdout}"))
    };
    assert!(
        at(": migrating after") < at("switched, keys moving after"),
        "{stdout}"
    );
    assert!(at("switched, keys moving after") < at(": done after"), "{stdout}");
    assert_eq!(at(": done after"), lines.len() - 1, "{stdout}");
    assert!(stdout.ends_with(": 300 keys moved\n"), "{stdout}");
    assert_eq!(c.slot_state(0).await, (2, SlotState::Online));

    // A task that ends without being done makes it exit non-zero with why:
    // one queued behind a slow task (1,500 keys at 500 keys/s), cancelled.
    let slow: Vec<String> = (0..2_000_000)
        .map(|i| format!("s{i}"))
        .filter(|k| (4..8).contains(&slot_of(k.as_bytes())))
        .take(1_500)
        .collect();
    let mut pipe = redis::pipe();
    for k in &slow {
        pipe.set(k, 1).ignore();
    }
    let () = pipe.query_async(&mut g1).await.expect("preload");
    let ahead = task::enqueue(&c.store, (4..=7).collect(), 2)
        .await
        .expect("queue");
    wait_state(&dash, ahead.id, TaskState::Migrating, Duration::from_secs(10)).await;
    let zk = c.zk.clone();
    let waiting =
        tokio::spawn(async move { admin(&zk, &["migrate", "--slots", "8-9", "--to", "2", "--wait"]).await });
    let behind = async || tasks(&dash).await.into_iter().find(|t| t.slots.contains(&8));
    common::eventually("the second task is queued", Duration::from_secs(10), || async {
        behind().await.is_some()
    })
    .await;
    let id = behind().await.expect("queued").id;
    let r = post(&dash, &format!("/api/tasks/{id}/cancel"), json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let out = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("--wait ends once its task is cancelled")
        .expect("admin");
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("task {id} cancelled")),
        "{stdout}{stderr}"
    );
    assert_eq!(c.slot_state(8).await, (1, SlotState::Online));
}

/// A product under `root` with one group (fake master) owning every slot and an
/// empty group 2 (fake master), as far as ZooKeeper knows.
async fn product(zk_addr: &str, root: &str, name: &str) -> (ZkConfig, Store) {
    let cfg = ZkConfig {
        addr: zk_addr.to_string(),
        root: root.to_string(),
        product: name.to_string(),
        session_timeout: Duration::from_secs(2),
    };
    let store = Store::connect(&cfg).await.expect("connect");
    operation::init_product(&store).await.expect("init");
    (cfg, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reaches_the_dashboard_of_the_product_it_is_given() {
    let root = common::unique_root();
    let zk = common::zk();
    let (p1, s1) = product(&zk, &root, "one").await;
    let (p2, _s2) = product(&zk, &root, "two").await;
    let (p3, _s3) = product(&zk, &root, "three").await;
    // Product one has a (cancelled) task, product two none.
    for g in 1..=2 {
        operation::create_group(&s1, g).await.expect("group");
        operation::add_server(&s1, g, &format!("127.0.0.1:{}", 7000 + g), Role::Master)
            .await
            .expect("server");
    }
    operation::assign_slots(&s1, 0, 1023, 1).await.expect("assign");
    let t = task::enqueue(&s1, (0..=3).collect(), 2).await.expect("task");
    task::cancel(&s1, t.id).await.expect("cancel");

    let stop = CancellationToken::new();
    let d1 = dashboard(&p1, None, &stop).await;
    let d2 = dashboard(&p2, None, &stop).await;
    assert_ne!(d1, d2);

    let out = admin(&p1, &["tasks"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("cancelled") && stdout.contains("0-3"), "{stdout}");
    let out = admin(&p2, &["tasks"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("ID") && !stdout.contains("cancelled"),
        "{stdout}"
    );
    // --dashboard still overrides: product one's flags, product two's dashboard.
    let out = admin(&p1, &["tasks", "--dashboard", &d2]).await;
    assert!(!text(&out).0.contains("cancelled"), "{:?}", text(&out));

    // A product without a dashboard, and one that does not exist: clear errors.
    let out = admin(&p3, &["tasks"]).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("product \"three\" has no running dashboard") && stderr.contains(&zk),
        "{stderr}"
    );
    let mut p4 = p3.clone();
    p4.product = "four".into();
    let out = admin(&p4, &["rebalance", "--dry-run"]).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("product \"four\" does not exist") && stderr.contains(&zk),
        "{stderr}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_show_each_servers_health_and_the_log_level_is_checked() {
    let c = Cluster::start().await;
    let stopped = common::redis();
    let stopped_addr = stopped.addr();
    operation::add_server(&c.store, 2, &stopped_addr, Role::Replica)
        .await
        .expect("replica");
    drop(stopped);
    // A server with a password reborn does not have: alive, but every
    // request through the proxies would get NOAUTH. It once showed as up.
    let locked = common::redis_with_password("not-reborns");
    let locked_addr = locked.addr();
    operation::add_server(&c.store, 2, &locked_addr, Role::Replica)
        .await
        .expect("replica");
    let up = c.masters[0].addr();

    let out = admin(&c.zk, &["groups"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let line = |addr: &str| {
        stdout
            .lines()
            .find(|l| l.contains(addr))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        stdout.starts_with("GROUP") && stdout.contains("HEALTH"),
        "{stdout}"
    );
    assert!(line(&up).ends_with(" up"), "{stdout}");
    assert!(line(&stopped_addr).ends_with(" down"), "{stdout}");
    // The CLI has no backend password to judge by; the dashboard has.
    assert!(line(&locked_addr).ends_with(" up"), "{stdout}");

    let dash = dashboard(&c.zk, None, &c.stop).await;
    let groups = client::get(&dash, "/api/groups").await.expect("groups").body;
    let health = |addr: &str| {
        groups
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["servers"].as_array().cloned().unwrap_or_default())
            .find(|s| s["addr"] == addr)
            .map(|s| s["health"].clone())
    };
    assert_eq!(health(&up), Some(json!("up")), "{groups}");
    assert_eq!(health(&stopped_addr), Some(json!("down")), "{groups}");
    assert_eq!(health(&locked_addr), Some(json!("auth_refused")), "{groups}");

    // The same, for alerts: the dashboard's Prometheus page.
    let metrics = common::http::get_text(dash.parse().expect("addr"), "/metrics").await;
    for line in [
        "reborn_dashboard_leader 1".to_string(),
        format!("reborn_dashboard_server_up{{group=\"1\",addr=\"{up}\",role=\"master\"}} 1"),
        format!("reborn_dashboard_server_up{{group=\"2\",addr=\"{stopped_addr}\",role=\"replica\"}} 0"),
        format!("reborn_dashboard_server_role_ok{{group=\"1\",addr=\"{up}\",role=\"master\"}} 1"),
        "reborn_dashboard_tasks{state=\"queued\"} 0".to_string(),
        "reborn_dashboard_failovers_total{outcome=\"failed\"} 0".to_string(),
        "# TYPE reborn_dashboard_replica_lag_bytes gauge".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }

    // The dashboard's log switch: a typo is refused, a level accepted.
    reborn::libs::logging::init("warn");
    let put = |path: &'static str| {
        let dash = dash.clone();
        async move {
            client::call(&dash, axum::http::Method::PUT, path, None)
                .await
                .expect("PUT")
        }
    };
    let r = put("/api/loglevel/degub").await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.error().unwrap_or_default().contains("degub"), "{:?}", r.body);
    assert_eq!(put("/api/loglevel/debug").await.status, 200);
    assert_eq!(put("/api/loglevel/warn").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_that_keeps_failing_fails_the_task_and_frees_the_queue() {
    let c = Cluster::start().await;
    let _live = c.proxy().await;
    // A proxy that is alive to ZooKeeper (long session) but cannot acknowledge.
    let (paused, paused_id, _conf) = c.proxy_process(Duration::from_secs(30)).await;
    common::cluster::signal(paused.id(), "-STOP");
    let stuck = task::enqueue(&c.store, (0..=3).collect(), 2)
        .await
        .expect("first");
    let next = task::enqueue(&c.store, (4..=7).collect(), 2)
        .await
        .expect("second");
    let dash = dashboard_with(&c.zk, &c.stop, |cfg| cfg.migration.switch_attempts = 1).await;

    // One switch waits the ack timeout (10 s), is rolled back, and with
    // switch_attempts = 1 the task fails with the reason.
    let failed = wait_state(&dash, stuck.id, TaskState::Failed, Duration::from_secs(40)).await;
    let reason = failed.error.clone().unwrap_or_default();
    assert!(
        reason.contains("switch_attempts = 1") && reason.contains(&paused_id),
        "{failed:?}"
    );
    // The failed switch counts as the task's error, in the CLI's table too.
    assert_eq!((failed.switch_failures, failed.errors()), (1, 1), "{failed:?}");
    let (table, _) = text(&admin(&c.zk, &["tasks"]).await);
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{} ", stuck.id)))
        .unwrap_or_else(|| panic!("task {} in {table}", stuck.id));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells.get(1..8),
        Some(&["failed", "0-3", "1", "2", "0", "-", "1"][..]),
        "{table}"
    );
    assert_eq!(c.slot_state(0).await, (1, SlotState::Online), "rolled back");
    // The proxy recovers; the next task runs.
    common::cluster::signal(paused.id(), "-CONT");
    wait_state(&dash, next.id, TaskState::Done, Duration::from_secs(40)).await;
    assert_eq!(c.slot_state(4).await, (2, SlotState::Online));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_that_would_touch_a_pending_task_changes_nothing() {
    let c = Cluster::start().await;
    let third = common::redis();
    operation::create_group(&c.store, 3).await.expect("group 3");
    operation::add_server(&c.store, 3, &third.addr(), Role::Master)
        .await
        .expect("master of 3");
    // A paused task holds slot 1023 (the plan takes donors' highest slots).
    let pending = task::enqueue(&c.store, vec![1023], 1).await.expect("task");
    task::set_paused(&c.store, pending.id, true).await.expect("pause");
    let before = watcher::load(&c.store).await.expect("load");
    let dash = dashboard(&c.zk, None, &c.stop).await;

    let r = post(&dash, "/api/rebalance", json!({})).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    let error = r.error().unwrap_or_default();
    assert!(
        error.contains("slots 1023 belong to unfinished task 1"),
        "{error}"
    );
    let out = admin(&c.zk, &["rebalance"]).await;
    assert!(!out.status.success());
    assert!(text(&out).1.contains("unfinished task 1"), "{:?}", text(&out));
    // All or none: no task queued for the other move, nothing assigned.
    assert_eq!(tasks(&dash).await.len(), 1);
    assert_eq!(watcher::load(&c.store).await.expect("load"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_gives_up_mid_switch_releases_its_slots() {
    let c = Cluster::start().await;
    let third = common::redis();
    operation::create_group(&c.store, 3).await.expect("group 3");
    operation::add_server(&c.store, 3, &third.addr(), Role::Master)
        .await
        .expect("master of 3");
    let t = task::enqueue(&c.store, (0..=3).collect(), 3).await.expect("task");
    // As a dashboard that died between the switch's phases leaves it: the task
    // claimed, its slots held in pre_migrate.
    let (mut record, version) = task::get(&c.store, t.id).await.expect("get");
    record.state = TaskState::Migrating;
    record.from = 1;
    let path = c.store.paths().task(t.id);
    c.store.set_json(&path, &record, version).await.expect("claim");
    let slots_path = c.store.paths().slots();
    let (mut table, version) = c
        .store
        .get_json_with_version::<reborn::topo::SlotTable>(&slots_path)
        .await
        .expect("slots");
    for id in 0..=3 {
        table.get_mut(id).expect("slot").state = SlotState::PreMigrate;
    }
    c.store
        .set_json(&slots_path, &table, version)
        .await
        .expect("hold");
    // Then its target group goes.
    operation::remove_server(&c.store, 3, &third.addr())
        .await
        .expect("remove master");
    operation::remove_group(&c.store, 3).await.expect("remove group");

    let dash = dashboard(&c.zk, None, &c.stop).await;
    let failed = wait_state(&dash, t.id, TaskState::Failed, Duration::from_secs(20)).await;
    assert!(
        failed
            .error
            .unwrap_or_default()
            .contains("group 3 does not exist")
    );
    for slot in [0, 3] {
        assert_eq!(
            c.slot_state(slot).await,
            (1, SlotState::Online),
            "slot {slot} released"
        );
    }
}

/// A proxy SIGKILLed and started again at once is listed with its new pid
/// at once, not after the crashed one's session times out (20 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restarted_after_a_crash_is_listed_at_once() {
    let c = Cluster::start().await;
    let mut p = c.proxy_process_with(Duration::from_secs(20), None, "").await;
    let path = c.store.paths().proxy(&p.id);
    let pid_of_node = async || -> Option<u32> {
        let (data, _) = c.store.zk().ok()?.get_raw(&path).await.ok()?;
        serde_json::from_slice::<reborn::topo::model::ProxyInfo>(&data)
            .ok()
            .map(|i| i.pid)
    };
    assert_eq!(pid_of_node().await, Some(p.child.id()));
    p.restart();
    let new_pid = p.child.id();
    let started = std::time::Instant::now();
    common::eventually(
        "the node to name the restarted proxy",
        Duration::from_secs(5),
        async || pid_of_node().await == Some(new_pid),
    )
    .await;
    println!("listed again {:?} after the restart", started.elapsed());
}

/// A migration right after a proxy of this machine crashed (its session has
/// 20 s left) does not wait for it: its node is removed as soon as the switch
/// finds it missing, so the live proxy holds the moving slots only briefly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_does_not_wait_for_a_proxy_of_this_machine_that_crashed() {
    let c = Cluster::start().await;
    let live = c.proxy().await;
    let mut crashed = c.proxy_process_with(Duration::from_secs(20), None, "").await;
    let _ = crashed.child.kill();
    let _ = crashed.child.wait();
    let dash = dashboard(&c.zk, None, &c.stop).await;
    let mut client = common::client(&live.to_string()).await;
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| slot_of(k.as_bytes()) <= 3)
        .expect("a key of slots 0-3");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .query_async(&mut client)
        .await
        .expect("set");
    let started = std::time::Instant::now();
    let t = task::enqueue(&c.store, (0..=3).collect(), 2).await.expect("task");
    wait_state(&dash, t.id, TaskState::Done, Duration::from_secs(8)).await;
    let took = started.elapsed();
    println!("migrated in {took:?} with a crashed proxy still registered");
    assert!(took < Duration::from_secs(5), "the switch waited {took:?}");
    c.wait_proxy(&crashed.id, false).await;
    let got: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut client)
        .await
        .expect("get");
    assert_eq!(got, "v");
}

/// A leader that stopped answering (crashed on another machine: its node
/// stays until its session expires) does not fail `reborn admin` at once: it
/// waits, looking the leader up again, and runs the command on the standby
/// that takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_waits_for_the_standby_of_a_leader_that_does_not_answer() {
    use reborn::topo::manager::dashboard::leader::DashboardInfo;
    let c = Cluster::start().await;
    // The crashed leader: a node naming an address nothing listens on and a
    // process of another machine, on a session that is still open.
    let crashed = Store::connect(&c.zk).await.expect("connect");
    let mut info = DashboardInfo::for_this_process(format!("127.0.0.1:{}", common::free_port()));
    info.pid_space = "another-machine/pid:[1]".into();
    common::plant_leader(&crashed, &info).await;
    let asked = tokio::spawn({
        let zk = c.zk.clone();
        async move { admin(&zk, &["rebalance", "--dry-run"]).await }
    });
    // The standby campaigns behind the node; the session "expires".
    let expire = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        crashed.close().await;
    };
    tokio::join!(expire, dashboard(&c.zk, None, &c.stop));
    let out = asked.await.expect("admin");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("does not answer") && stderr.contains("waiting up to"),
        "{stderr}"
    );
    assert!(
        stdout.contains("slots move") || stdout.contains("Balanced already"),
        "{stdout}"
    );
}

/// A server that holds keys is not made a replica (the full sync would drop
/// them) unless forced, by `reborn admin server-add` and by the API alike;
/// an empty one is added. A refusal writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_holding_keys_is_not_added_as_a_replica_unless_forced() {
    let c = Cluster::start().await;
    let used = common::redis();
    let used_addr = used.addr();
    let mut conn = common::client(&used_addr).await;
    for i in 0..3 {
        let () = redis::cmd("SET")
            .arg(format!("someone's{i}"))
            .arg(i)
            .query_async(&mut conn)
            .await
            .expect("set");
    }
    let in_group_2 = async || {
        watcher::load(&c.store).await.expect("load").groups[&2]
            .servers
            .iter()
            .any(|s| s.addr == used_addr)
    };

    let out = admin(&c.zk, &["server-add", "2", &used_addr, "--replica"]).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{used_addr} holds 3 keys")) && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(!in_group_2().await, "a refusal wrote the server");

    let dash = dashboard(&c.zk, None, &c.stop).await;
    let r = post(
        &dash,
        "/api/groups/2/servers",
        json!({"addr": used_addr, "role": "replica"}),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(
        r.error().unwrap_or_default().contains("holds 3 keys"),
        "{:?}",
        r.body
    );
    assert!(!in_group_2().await, "a refusal wrote the server");
    let dbsize: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await.expect("dbsize");
    assert_eq!(dbsize, 3, "the keys were touched");

    let r = post(
        &dash,
        "/api/groups/2/servers",
        json!({"addr": used_addr, "role": "replica", "force": true}),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(in_group_2().await);

    let empty = common::redis();
    let out = admin(&c.zk, &["server-add", "1", &empty.addr(), "--replica"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("{} added to group 1 as replica", empty.addr())
    );
}
