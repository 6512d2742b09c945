//! The two-phase slot switch against real processes: ZooKeeper, redis-servers,
//! in-process proxies and `reborn proxy` child processes that are paused or
//! killed. The background migrator is not involved here: keys move on access.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, client, signal};
use reborn::libs::hash::slot_of;
use reborn::topo::action::{begin_migration, finish_migration};
use reborn::topo::model::SlotState;
use reborn::topo::{TopoError, watcher};
use redis::AsyncCommands;
use tokio::task::JoinHandle;

/// Writes (or pipelined rounds) each writer had acknowledged so far, one
/// counter per writer.
type Acks = Arc<Vec<AtomicU64>>;

fn acks(writers: usize) -> Acks {
    Arc::new((0..writers).map(|_| AtomicU64::new(0)).collect())
}

/// What every writer had acknowledged at this moment.
fn acked_now(acks: &Acks) -> Vec<u64> {
    acks.iter().map(|a| a.load(Ordering::Relaxed)).collect()
}

/// Waits until every writer had `n` more acknowledged than in `since` (from
/// [`acked_now`]). A writer that ended (it panicked: they run until told to
/// stop) fails the wait at once.
async fn every_writer_acked<T>(writers: &[JoinHandle<T>], acks: &Acks, since: &[u64], n: u64, what: &str) {
    common::eventually(what, Duration::from_secs(20), async || {
        assert!(!writers.iter().any(JoinHandle::is_finished), "a writer failed");
        acked_now(acks)
            .iter()
            .zip(since)
            .all(|(now, then)| *now >= then + n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_under_load_loses_no_acknowledged_write() {
    let c = Cluster::start().await;
    let proxies = [c.proxy().await, c.proxy().await];
    // 40 hashtags, their slots all on group 1: these slots move to group 2.
    let tags: Vec<String> = (0..2000)
        .map(|i| format!("t{i}"))
        .filter(|t| slot_of(t.as_bytes()) < 512)
        .take(40)
        .collect();
    let mut slots: Vec<u16> = tags.iter().map(|t| slot_of(t.as_bytes())).collect();
    slots.sort_unstable();
    slots.dedup();

    // Writers on both proxies INCR keys of the moving slots and count what was
    // acknowledged; any error fails the test.
    let running = Arc::new(AtomicBool::new(true));
    let acked = acks(4);
    let mut writers = Vec::new();
    for (w, &addr) in proxies.iter().cycle().take(4).enumerate() {
        let keys: Vec<String> = tags.iter().map(|t| format!("{{{t}}}w{w}")).collect();
        let (running, acks) = (running.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut conn = client(addr).await;
            let mut acked: BTreeMap<String, i64> = BTreeMap::new();
            let mut i = 0usize;
            while running.load(Ordering::Relaxed) {
                let key = &keys[i % keys.len()];
                let n: i64 = conn
                    .incr(key, 1)
                    .await
                    .unwrap_or_else(|e| panic!("INCR {key}: {e}"));
                let count = acked.entry(key.clone()).or_default();
                *count += 1;
                assert_eq!(n, *count, "{key}: a write was lost or doubled");
                acks[w].fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            acked
        }));
    }
    every_writer_acked(
        &writers,
        &acked,
        &[0; 4],
        10,
        "every writer writes before the switch",
    )
    .await;
    let t = Instant::now();
    begin_migration(&c.store, &slots, 2, Duration::from_secs(5))
        .await
        .expect("switch");
    let switched_in = t.elapsed();
    // Each writer cycles through its keys: twice round them after the switch,
    // every key was written (and so moved on access) under the new routing.
    let keys_per_writer = tags.len() as u64;
    let at_switch = acked_now(&acked);
    every_writer_acked(
        &writers,
        &acked,
        &at_switch,
        2 * keys_per_writer,
        "every writer writes each of its keys after the switch",
    )
    .await;
    running.store(false, Ordering::Relaxed);
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for w in writers {
        totals.extend(w.await.expect("writer"));
    }
    assert!(
        totals.values().sum::<i64>() > 200,
        "writers barely ran: {totals:?}"
    );
    assert!(
        switched_in < Duration::from_secs(2),
        "the switch took {switched_in:?}"
    );

    // Every written key now lives on group 2 with its exact count (keys moved on
    // access), and group 1 holds none of them.
    let mut g1 = common::client(&c.masters[0].addr()).await;
    let mut g2 = common::client(&c.masters[1].addr()).await;
    for (key, count) in &totals {
        let on2: Option<i64> = g2.get(key).await.expect("get g2");
        assert_eq!(on2, Some(*count), "{key}");
        let on1: bool = g1.exists(key).await.expect("exists g1");
        assert!(!on1, "{key} left on the source");
    }
    assert_eq!(c.slot_state(slots[0]).await, (2, SlotState::Migrate));
    finish_migration(&c.store, &slots, Duration::from_secs(5))
        .await
        .expect("finish");
    assert_eq!(c.slot_state(slots[0]).await, (2, SlotState::Online));
    let mut p = client(proxies[0]).await;
    let (key, count) = totals.iter().next().expect("a key");
    let v: i64 = p.get(key).await.expect("served online at the target");
    assert_eq!(v, *count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_proxy_makes_the_switch_roll_back_and_a_retry_succeeds() {
    let c = Cluster::start().await;
    let live = c.proxy().await;
    let (paused, paused_id, _conf) = c.proxy_process(Duration::from_secs(20)).await;
    let slot = slot_of(b"foo");
    let mut p = client(live).await;
    let _: () = p.set("foo", "before").await.expect("set");

    signal(paused.id(), "-STOP");
    let err = begin_migration(&c.store, &[slot], 2, Duration::from_millis(1500))
        .await
        .expect_err("a paused proxy cannot acknowledge");
    match err {
        TopoError::AckTimeout { missing, .. } => assert_eq!(missing, vec![paused_id.clone()]),
        other => panic!("unexpected error: {other}"),
    }
    assert_eq!(
        c.slot_state(slot).await,
        (1, SlotState::Online),
        "not rolled back"
    );
    // Clients of the live proxy kept working and still do, on the source.
    let v: String = p.get("foo").await.expect("served after the rollback");
    assert_eq!(v, "before");

    signal(paused.id(), "-CONT");
    begin_migration(&c.store, &[slot], 2, Duration::from_secs(5))
        .await
        .expect("the retry succeeds once it acknowledges");
    let v: String = p.get("foo").await.expect("served while migrating");
    assert_eq!(v, "before");
    assert_eq!(c.slot_state(slot).await, (2, SlotState::Migrate));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_does_not_block_the_next_action() {
    let c = Cluster::start().await;
    let _live = c.proxy().await;
    let (mut victim, victim_id, _conf) = c.proxy_process(Duration::from_secs(2)).await;
    victim.kill().expect("SIGKILL");
    let _ = victim.wait();
    // Its node lingers until the session expires; the action waits for that
    // (ack timeout longer than the session), then proceeds.
    let t = Instant::now();
    begin_migration(&c.store, &[slot_of(b"foo")], 2, Duration::from_secs(10))
        .await
        .expect("proceeds once the dead proxy's session is gone");
    assert!(t.elapsed() < Duration::from_secs(8), "took {:?}", t.elapsed());
    c.wait_proxy(&victim_id, false).await;
}

/// Queues a migration through the dashboard at `dash`, retrying until that
/// dashboard leads (a freshly started one campaigns first).
async fn migrate_when_leading(
    dash: &str,
    start: u16,
    end: u16,
    to: u32,
) -> reborn::topo::manager::task::Task {
    use reborn::topo::manager::dashboard::client;
    let body = serde_json::json!({ "start": start, "end": end, "to": to });
    common::eventually_ok(
        "the dashboard leads and queues the migration",
        Duration::from_secs(20),
        async || match client::post(dash, "/api/migrate", &body).await {
            Ok(r) if r.error().is_none() => Ok(r.into_json().expect("task")),
            Ok(r) => Err(format!("{:?}", r.error())),
            Err(e) => Err(e.to_string()),
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_512_slots_under_load_loses_nothing() {
    use reborn::topo::manager::dashboard::client;
    use reborn::topo::manager::task::{Task, TaskState};
    let c = Cluster::start().await;
    let dash = c.dashboard().await;
    let proxies = [c.proxy().await, c.proxy().await];

    // 50k counters and 50k checksummed values; every fourth key hashtagged.
    let key = |kind: &str, i: usize| {
        if i.is_multiple_of(4) {
            format!("{{tag{}}}{kind}{i}", i % 97)
        } else {
            format!("{kind}{i}")
        }
    };
    let n = 50_000;
    let mut load = client(proxies[0]).await;
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.set(key("c", i), 0).ignore();
            pipe.set(key("s", i), format!("{}:0", key("s", i))).ignore();
        }
        let () = pipe.query_async(&mut load).await.expect("preload");
    }

    // Four writers, two per proxy, each owning a quarter of the keys.
    let running = Arc::new(AtomicBool::new(true));
    let rounds = acks(4);
    let mut writers = Vec::new();
    for w in 0..4usize {
        let addr = proxies[w % 2];
        let (running, rounds) = (running.clone(), rounds.clone());
        writers.push(tokio::spawn(async move {
            let mut conn = client(addr).await;
            let mut counts: BTreeMap<usize, i64> = BTreeMap::new();
            let mut last: BTreeMap<usize, u64> = BTreeMap::new();
            let mut round = 0u64;
            while running.load(Ordering::Relaxed) {
                round += 1;
                let mut pipe = redis::pipe();
                let picks: Vec<usize> = (0..50)
                    .map(|j| ((round as usize * 7919 + j * 104_729) % (n / 4)) * 4 + w)
                    .collect();
                for &i in &picks {
                    pipe.incr(key("c", i), 1).ignore();
                    pipe.set(key("s", i), format!("{}:{round}", key("s", i))).ignore();
                }
                let () = pipe
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("writer {w}: {e}"));
                for &i in &picks {
                    *counts.entry(i).or_default() += 1;
                    last.insert(i, round);
                }
                rounds[w].fetch_add(1, Ordering::Relaxed);
            }
            (counts, last)
        }));
    }
    every_writer_acked(
        &writers,
        &rounds,
        &[0; 4],
        2,
        "every writer writes before the migration",
    )
    .await;
    let body = serde_json::json!({ "start": 0, "end": 511, "to": 2 });
    let reply = client::post(&dash, "/api/migrate", &body)
        .await
        .expect("POST /api/migrate");
    let task: Task = reply.into_json().expect("task");
    let done = common::eventually_ok("the task finishes", Duration::from_secs(120), async || {
        let tasks: Vec<Task> = client::get(&dash, "/api/tasks")
            .await
            .expect("tasks")
            .into_json()
            .expect("json");
        let t = tasks.into_iter().find(|t| t.id == task.id).expect("our task");
        if t.state == TaskState::Done {
            Ok(t)
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;
    running.store(false, Ordering::Relaxed);
    let (mut counts, mut last) = (BTreeMap::new(), BTreeMap::new());
    for w in writers {
        let (c_, l_) = w.await.expect("writer");
        counts.extend(c_);
        last.extend(l_);
    }
    assert!(
        done.progress.moved > 0,
        "the background migrator moved nothing: {done:?}"
    );
    assert!(counts.len() > 1000, "writers barely ran");

    // Group 1 owned exactly slots 0-511: it must now be empty.
    let mut g1 = common::client(&c.masters[0].addr()).await;
    let left: i64 = redis::cmd("DBSIZE").query_async(&mut g1).await.expect("dbsize");
    assert_eq!(left, 0, "group 1 still holds keys of migrated slots");
    // Every acknowledged write is there, through a proxy.
    let mut p = client(proxies[1]).await;
    for i in 0..n {
        let v: i64 = p.get(key("c", i)).await.expect("get counter");
        assert_eq!(v, counts.get(&i).copied().unwrap_or(0), "counter {}", key("c", i));
        let s: String = p.get(key("s", i)).await.expect("get value");
        assert_eq!(
            s,
            format!("{}:{}", key("s", i), last.get(&i).copied().unwrap_or(0)),
            "value {}",
            key("s", i)
        );
    }
    assert_eq!(c.slot_state(0).await, (2, SlotState::Online));
    assert_eq!(c.slot_state(511).await, (2, SlotState::Online));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dashboard_resumes_its_task_after_a_restart() {
    use reborn::topo::manager::dashboard::client;
    use reborn::topo::manager::task::{Task, TaskState};
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let mut p = client(proxy).await;
    let n = 40_000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.set(format!("k{i}"), i).ignore();
        }
        let () = pipe.query_async(&mut p).await.expect("preload");
    }

    // A dashboard process, throttled so the task is still running when killed.
    let port = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("dashboard.toml");
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\n[zk]\naddr = \"{}\"\nroot = \"{}\"\nproduct = \"{}\"\nsession_timeout = \"2s\"\n[migration]\nmax_keys_per_sec = 4000\n",
        c.zk.addr, c.zk.root, c.zk.product
    );
    std::fs::write(&conf, text).expect("config");
    let mut first = common::spawn_guarded(
        Command::new(env!("CARGO_BIN_EXE_reborn"))
            .args(["dashboard", "--config"])
            .arg(&conf)
            .env("RUST_LOG", "warn"),
    );
    let dash = format!("127.0.0.1:{port}");
    let task = migrate_when_leading(&dash, 0, 511, 2).await;
    // Kill it once keys are moving.
    common::eventually_ok("keys start moving", Duration::from_secs(30), async || {
        let tasks: Vec<Task> = client::get(&dash, "/api/tasks")
            .await
            .expect("tasks")
            .into_json()
            .expect("json");
        let t = tasks.iter().find(|t| t.id == task.id).expect("task");
        assert!(t.state != TaskState::Done, "finished before it could be killed");
        if t.state == TaskState::Migrating && t.progress.moved > 0 {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();

    // A new dashboard takes over once the old session is gone and finishes the task.
    let second = c.dashboard().await;
    common::eventually(
        "the task is resumed to the end",
        Duration::from_secs(90),
        async || {
            if let Ok(reply) = client::get(&second, "/api/tasks").await
                && let Ok(tasks) = reply.into_json::<Vec<Task>>()
            {
                tasks
                    .iter()
                    .any(|t| t.id == task.id && t.state == TaskState::Done)
            } else {
                false
            }
        },
    )
    .await;
    let mut g1 = common::client(&c.masters[0].addr()).await;
    let left: i64 = redis::cmd("DBSIZE").query_async(&mut g1).await.expect("dbsize");
    assert_eq!(left, 0, "keys left on the source");
    for i in (0..n).step_by(97) {
        let v: i64 = p.get(format!("k{i}")).await.expect("get");
        assert_eq!(v, i as i64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_under_write_load_keeps_every_acknowledged_write() {
    use reborn::topo::manager::promote::promote;
    // Printed only if it fails: what the proxy and the promote saw.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let c = Cluster::start().await;
    let replica = c.replica_of_group_1().await;
    let proxy = c.proxy().await;

    // Writers INCR keys of group 1 (slots < 512) through the proxy.
    let keys: Vec<String> = (0..5000)
        .map(|i| format!("p{i}"))
        .filter(|k| slot_of(k.as_bytes()) < 512)
        .take(200)
        .collect();
    let running = Arc::new(AtomicBool::new(true));
    let acked = acks(2);
    let mut writers = Vec::new();
    for w in 0..2usize {
        let keys: Vec<String> = keys.iter().skip(w).step_by(2).cloned().collect();
        let (running, acks) = (running.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut conn = client(proxy).await;
            let mut acked: BTreeMap<String, i64> = BTreeMap::new();
            let mut i = 0;
            while running.load(Ordering::Relaxed) {
                let k = &keys[i % keys.len()];
                let n: i64 = conn.incr(k, 1).await.unwrap_or_else(|e| panic!("INCR {k}: {e}"));
                let count = acked.entry(k.clone()).or_default();
                *count += 1;
                assert_eq!(n, *count, "{k}");
                acks[w].fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            acked
        }));
    }
    every_writer_acked(
        &writers,
        &acked,
        &[0; 2],
        20,
        "every writer writes before the promote",
    )
    .await;
    promote(&c.store, 1, &replica.addr(), None, Duration::from_secs(5))
        .await
        .expect("promote");
    // Once round its keys after the promote: each key was written to the new
    // master through the proxy.
    let keys_per_writer = (keys.len() / 2) as u64;
    let at_promote = acked_now(&acked);
    every_writer_acked(
        &writers,
        &acked,
        &at_promote,
        keys_per_writer,
        "every writer writes each of its keys after the promote",
    )
    .await;
    running.store(false, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(acked.values().sum::<i64>() > 100, "writers barely ran");

    // Every acknowledged write is on the new master, and the proxy routes there.
    let mut new_master = common::client(&replica.addr()).await;
    let mut p = client(proxy).await;
    for (k, n) in &acked {
        let direct: i64 = new_master.get(k).await.expect("get new master");
        assert_eq!(direct, *n, "{k} on the new master");
        let via: i64 = p.get(k).await.expect("get via proxy");
        assert_eq!(via, *n, "{k} via the proxy");
    }
    let role: String = redis::cmd("ROLE")
        .query_async::<Vec<redis::Value>>(&mut new_master)
        .await
        .ok()
        .and_then(|v| v.into_iter().next())
        .and_then(|r| redis::from_redis_value::<String>(r).ok())
        .unwrap_or_default();
    assert_eq!(role, "master");
    // The old master now replicates from the new one.
    let mut old = common::client(&c.masters[0].addr()).await;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut old)
        .await
        .expect("info");
    assert!(
        info.contains("role:slave") && info.contains(&format!("master_port:{}", replica.port())),
        "{info}"
    );
    let topo = watcher::load(&c.store).await.expect("load");
    assert_eq!(topo.groups[&1].master(), Some(replica.addr().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_task_stops_moving_keys_and_finishes_after_resume() {
    use reborn::topo::manager::dashboard::client;
    use reborn::topo::manager::task::{Task, TaskState};
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let mut p = client(proxy).await;
    let mut pipe = redis::pipe();
    for i in 0..20_000 {
        pipe.set(format!("q{i}"), i).ignore();
    }
    let () = pipe.query_async(&mut p).await.expect("preload");
    let dash = dashboard(&c, Some(3000)).await;
    let get_task = |id: u64| task_of(&dash, id);
    let task = migrate_when_leading(&dash, 0, 511, 2).await;
    common::eventually_ok("keys start moving", Duration::from_secs(20), async || {
        let t = get_task(task.id).await;
        if t.progress.moved > 0 {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;
    let paused: Task = client::post(
        &dash,
        &format!("/api/tasks/{}/pause", task.id),
        &serde_json::json!({}),
    )
    .await
    .expect("pause")
    .into_json()
    .expect("json");
    assert!(paused.paused);
    // The pass stops at the runner's next progress save, which finds the task
    // paused: the stored progress changes from what the pause returned once
    // the runner knows. The pass is over when its SCAN connection to the
    // source is closed: nothing of it can move a key any more.
    let mut g1 = common::client(&c.masters[0].addr()).await;
    common::eventually("the paused pass stops", Duration::from_secs(10), async || {
        get_task(task.id).await.progress != paused.progress && !scanning(&mut g1).await
    })
    .await;
    let left1: i64 = redis::cmd("DBSIZE").query_async(&mut g1).await.expect("dbsize");
    // Then nothing moves for a while: a window of time, as long as a pass
    // would need to move a few thousand keys (3000 keys/s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let left2: i64 = redis::cmd("DBSIZE").query_async(&mut g1).await.expect("dbsize");
    assert!(left1 > 0, "finished before the pause took effect");
    assert_eq!(left1, left2, "keys kept moving while paused");
    let t = get_task(task.id).await;
    assert_eq!((t.state, t.paused), (TaskState::Migrating, true));
    // The slots still serve, moving keys on access.
    let v: i64 = p.get("q1").await.expect("served while paused");
    assert_eq!(v, 1);

    client::post(
        &dash,
        &format!("/api/tasks/{}/resume", task.id),
        &serde_json::json!({}),
    )
    .await
    .expect("resume");
    common::eventually(
        "the task finishes after the resume",
        Duration::from_secs(60),
        async || get_task(task.id).await.state == TaskState::Done,
    )
    .await;
    let left: i64 = redis::cmd("DBSIZE").query_async(&mut g1).await.expect("dbsize");
    assert_eq!(left, 0);
}

/// An in-process dashboard of `c`'s product (`max_keys_per_sec` for its
/// migrator), stopped with the cluster; returns its address.
async fn dashboard(c: &Cluster, max_keys_per_sec: Option<u64>) -> String {
    use reborn::topo::manager::dashboard::{BoundDashboard, DashboardConfig};
    let mut cfg = DashboardConfig {
        listen: "127.0.0.1:0".into(),
        zk: c.zk.clone(),
        ..Default::default()
    };
    cfg.migration.max_keys_per_sec = max_keys_per_sec;
    let bound = BoundDashboard::bind(cfg).await.expect("bind");
    let dash = bound.local_addr().to_string();
    tokio::spawn(bound.run(c.stop.clone()));
    dash
}

/// Task `id` as the dashboard at `dash` lists it.
async fn task_of(dash: &str, id: u64) -> reborn::topo::manager::task::Task {
    use reborn::topo::manager::dashboard::client;
    let tasks: Vec<reborn::topo::manager::task::Task> = client::get(dash, "/api/tasks")
        .await
        .expect("tasks")
        .into_json()
        .expect("json");
    tasks.into_iter().find(|t| t.id == id).expect("task")
}

/// True if a client of the redis-server `conn` talks to last ran `SCAN`: only
/// the migrator scans here, on a connection its pass holds to the end.
async fn scanning(conn: &mut redis::aio::MultiplexedConnection) -> bool {
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .expect("CLIENT LIST");
    clients.lines().any(|l| l.contains(" cmd=scan "))
}

/// A queued task whose source master does not answer stays queued, saying
/// why, with its slots online at the source (a switch would put them where
/// nothing can cancel them, and where a promote refuses the group), and it
/// runs as soon as the master answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waits_to_start_while_its_source_master_is_silent() {
    use reborn::topo::manager::task::TaskState;
    let c = Cluster::start().await;
    let dash = dashboard(&c, None).await;
    let get_task = |id: u64| task_of(&dash, id);
    let source = c.masters[0].pid().expect("source pid");
    signal(source, "-STOP");
    let task = migrate_when_leading(&dash, 0, 3, 2).await;
    let waiting = common::eventually_some(
        "the task says why it waits",
        Duration::from_secs(20),
        async || {
            let t = get_task(task.id).await;
            t.error
                .filter(|e| e.starts_with("waiting to start"))
                .map(|e| (t.state, e))
        },
    )
    .await;
    assert_eq!(waiting.0, TaskState::Queued, "{waiting:?}");
    assert!(
        waiting.1.contains(&format!(
            "the master of group 1, {}, is down",
            c.masters[0].addr()
        )),
        "{waiting:?}"
    );
    // A few more looks: still queued, and the slots never left group 1.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let t = get_task(task.id).await;
    assert_eq!(t.state, TaskState::Queued, "{t:?}");
    let topo = watcher::load(&c.store).await.expect("load");
    for id in 0..=3 {
        let s = topo.slots.get(id).expect("slot");
        assert_eq!((s.group, s.state), (1, SlotState::Online), "slot {id}");
    }

    signal(source, "-CONT");
    common::eventually(
        "the task runs once the master answers",
        Duration::from_secs(30),
        async || get_task(task.id).await.state == TaskState::Done,
    )
    .await;
    let t = get_task(task.id).await;
    assert_eq!(t.error, None, "{t:?}");
    let topo = watcher::load(&c.store).await.expect("load");
    for id in 0..=3 {
        let s = topo.slots.get(id).expect("slot");
        assert_eq!((s.group, s.state), (2, SlotState::Online), "slot {id}");
    }
}
