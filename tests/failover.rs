//! Automatic failover against real processes: ZooKeeper, persistent
//! redis-servers (AOF and config file, as `reborn up` runs them), an
//! in-process proxy (an observer) and an in-process dashboard (the leader that
//! decides). Masters are SIGKILLed under write load.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, client, freeze_and_cut_off, master_of, signal};
use reborn::libs::hash::slot_of;
use reborn::proxy::config::WriteAck;
use reborn::topo::manager::failover;
use reborn::topo::manager::task::{self, TaskState};
use reborn::topo::model::FailoverRecord;
use reborn::topo::model::{Observation, Role, SlotState};
use reborn::topo::{Store, watcher};
use reborn::up::RedisServer;

/// The bar: a dead master is replaced within this.
const REPLACED_WITHIN: Duration = Duration::from_secs(10);

/// Writers INCRing keys of the given groups through the proxy until `stop`;
/// an error is counted and the writer carries on (what a client does).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    writers: Vec<tokio::task::JoinHandle<BTreeMap<String, i64>>>,
}

impl Load {
    fn start(proxy: std::net::SocketAddr, keys: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut writers = Vec::new();
        for w in 0..2usize {
            let keys: Vec<String> = keys.iter().skip(w).step_by(2).cloned().collect();
            let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
            writers.push(tokio::spawn(async move {
                let mut conn = client(proxy).await;
                let mut counts: BTreeMap<String, i64> = BTreeMap::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let k = &keys[i % keys.len()];
                    i += 1;
                    match redis::AsyncCommands::incr::<_, _, i64>(&mut conn, k, 1).await {
                        Ok(_) => {
                            *counts.entry(k.clone()).or_default() += 1;
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                counts
            }));
        }
        Load {
            stop,
            acked,
            errors,
            writers,
        }
    }

    async fn at_least(&self, n: u64, what: &str) {
        let acked = self.acked.clone();
        common::eventually(what, Duration::from_secs(20), || {
            let acked = acked.clone();
            async move { acked.load(Ordering::Relaxed) >= n }
        })
        .await;
    }

    async fn finish(self) -> BTreeMap<String, i64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = BTreeMap::new();
        for w in self.writers {
            all.extend(w.await.expect("writer"));
        }
        all
    }
}

fn keys_of_groups(groups: &[u32], n: usize) -> Vec<String> {
    (0..100_000)
        .map(|i| format!("fo{i}"))
        .filter(|k| {
            let g = if slot_of(k.as_bytes()) < 512 { 1 } else { 2 };
            groups.contains(&g)
        })
        .take(n)
        .collect()
}

/// Waits until `group`'s master is no longer `old`; returns the new one.
async fn replaced(store: &Store, group: u32, old: &str, since: Instant) -> String {
    common::eventually_some(
        &format!("group {group}'s master {old} is replaced"),
        (REPLACED_WITHIN * 2).saturating_sub(since.elapsed()),
        async || master_of(store, group).await.filter(|m| m != old),
    )
    .await
}

/// Waits until a failover record matches `what`.
async fn recorded(store: &Store, what: &str, within: Duration, matches: fn(&FailoverRecord) -> bool) {
    common::eventually(&format!("{what} is recorded"), within, || {
        let store = store.clone();
        async move {
            failover::list(&store)
                .await
                .unwrap_or_default()
                .iter()
                .any(matches)
        }
    })
    .await;
}

/// Acknowledged INCRs (`acked`: key -> count) that `master` does not hold.
async fn lost_on(master: &str, acked: &BTreeMap<String, i64>) -> i64 {
    let mut m = common::client(master).await;
    let mut lost = 0;
    for (k, n) in acked {
        let v: i64 = redis::AsyncCommands::get(&mut m, k).await.expect("get");
        lost += (n - v).max(0);
    }
    lost
}

async fn role_of(addr: &str) -> String {
    let mut c = common::client(addr).await;
    redis::cmd("INFO")
        .arg("replication")
        .query_async::<String>(&mut c)
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_under_load_and_rejoins_as_a_replica() {
    let (mut c, replicas) = Cluster::with_persistent_replicas().await;
    let proxy = c.proxy().await;
    let _dash = c.dashboard().await;
    let old = c.masters[0].addr();
    let new = replicas[0].addr();
    let load = Load::start(proxy, keys_of_groups(&[1], 200));
    load.at_least(300, "writes before the kill").await;

    c.masters[0].kill();
    let killed = Instant::now();
    let got = replaced(&c.store, 1, &old, killed).await;
    let took = killed.elapsed();
    assert_eq!(got, new, "the group's only replica");
    assert!(took < REPLACED_WITHIN, "replaced after {took:?}");
    // Clients recover by themselves: writes go through again.
    let before = load.acked.load(Ordering::Relaxed);
    load.at_least(before + 300, "writes after the failover").await;
    let errors = load.errors.load(Ordering::Relaxed);
    let acked = load.finish().await;

    // What was acknowledged is on the new master, but for the writes that
    // had not reached the replica when the master died (the default mode's
    // window of loss, reported here).
    let lost = lost_on(&new, &acked).await;
    let records: Vec<FailoverRecord> = failover::list(&c.store).await.expect("records");
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (r.group, r.old_master.as_str(), r.new_master.as_deref()),
        (1, old.as_str(), Some(new.as_str()))
    );
    assert_eq!(r.outcome, "promoted");
    assert_eq!(r.slots, vec![[0, 511]], "group 1's slots at the switch");
    assert!(
        r.reason.contains("the dashboard") && r.reason.contains("proxy"),
        "{}",
        r.reason
    );
    eprintln!(
        "failover: replaced in {took:?} (detection {} ms, switch {} ms), {errors} client errors meanwhile, \
         {lost} of {} acknowledged INCRs lost",
        r.detection_ms,
        r.switch_ms,
        acked.values().sum::<i64>()
    );
    let shown = reborn::topo::manager::admin::render_failovers(&records);
    assert!(shown.contains(&old) && shown.contains("promoted"), "{shown}");

    // The old master comes back (with its AOF): it must rejoin as a replica
    // of the new one, and stay one across a restart.
    c.masters[0].restart().expect("restart");
    common::eventually(
        "the old master follows the new one",
        Duration::from_secs(15),
        || {
            let (old, port) = (old.clone(), replicas[0].port());
            async move {
                let info = role_of(&old).await;
                info.contains("role:slave") && info.contains(&format!("master_port:{port}"))
            }
        },
    )
    .await;
    let conf = std::fs::read_to_string(c.masters[0].config_file()).expect("config file");
    assert!(
        conf.contains(&format!("replicaof 127.0.0.1 {}", replicas[0].port())),
        "{conf}"
    );
    // The promoted replica's config file says it is a master now, so a crash
    // and restart cannot turn it back into a replica of the old master
    // (found by scripts/soak.sh: a READONLY "master" nobody could write to).
    let conf = std::fs::read_to_string(replicas[0].config_file()).expect("config file");
    assert!(!conf.contains("\nreplicaof "), "{conf}");
    let mut promoted = replicas;
    promoted[0].restart().expect("restart the new master");
    let info = role_of(&new).await;
    assert!(info.contains("role:master"), "after a restart: {info}");
    let topo = watcher::load(&c.store).await.expect("load");
    let servers: Vec<(String, Role)> = topo.groups[&1]
        .servers
        .iter()
        .map(|s| (s.addr.clone(), s.role))
        .collect();
    assert_eq!(
        servers,
        vec![(old.clone(), Role::Replica), (new.clone(), Role::Master)]
    );
}

/// Kills group 1's master while its replica is frozen (SIGSTOP) and cut off,
/// so the replica misses what the master acknowledged meanwhile, then thaws
/// it and lets the failover promote it. Returns (acknowledged INCRs lost, acknowledged).
async fn failover_with_a_lagging_replica(write_ack: WriteAck) -> (i64, i64) {
    let (mut c, replicas) = Cluster::with_persistent_replicas().await;
    common::wait_replica_streaming(&c.masters[0].addr()).await;
    let proxy = c
        .proxy_with(|cfg| {
            cfg.write_ack = write_ack;
            cfg.write_ack_timeout = Duration::from_millis(200);
        })
        .await;
    let _dash = c.dashboard().await;
    let old = c.masters[0].addr();
    let load = Load::start(proxy, keys_of_groups(&[1], 200));
    load.at_least(200, "writes before the freeze").await;
    let replica_pid = freeze_and_cut_off(&replicas[0], &old).await;
    // Writes the master applies from now on reach no replica: let the writers
    // have a few of them answered (acknowledged with write_ack = master,
    // refused for want of a replica's ack with write_ack = replica).
    let answered = || load.acked.load(Ordering::Relaxed) + load.errors.load(Ordering::Relaxed);
    let at_cut = answered();
    common::eventually(
        "writes answered after the cut",
        Duration::from_secs(10),
        async || answered() >= at_cut + 6,
    )
    .await;
    c.masters[0].kill();
    signal(replica_pid, "-CONT");
    let new = replaced(&c.store, 1, &old, Instant::now()).await;
    assert_eq!(new, replicas[0].addr());
    // The new master has no replica until the old one rejoins; in replica
    // mode nothing is acknowledged before.
    c.masters[0].restart().expect("restart");
    let before = load.acked.load(Ordering::Relaxed);
    load.at_least(before + 100, "writes acknowledged again after the failover")
        .await;
    let acked = load.finish().await;
    let lost = lost_on(&new, &acked).await;
    (lost, acked.values().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_ack_replica_a_failover_loses_no_acknowledged_write() {
    let (lost, acked) = failover_with_a_lagging_replica(WriteAck::Replica).await;
    eprintln!("write_ack = replica: {lost} of {acked} acknowledged INCRs lost");
    assert_eq!(lost, 0, "acknowledged writes lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_ack_master_a_failover_loses_what_the_replica_missed() {
    // The default mode's window of loss, made visible: what the master
    // acknowledged while its replica was frozen.
    let (lost, acked) = failover_with_a_lagging_replica(WriteAck::Master).await;
    eprintln!("write_ack = master: {lost} of {acked} acknowledged INCRs lost");
    assert!(lost > 0, "the frozen replica missed nothing?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_overlapping_failures_are_both_replaced() {
    let (mut c, replicas) = Cluster::with_persistent_replicas().await;
    let proxy = c.proxy().await;
    let _dash = c.dashboard().await;
    let load = Load::start(proxy, keys_of_groups(&[1, 2], 200));
    load.at_least(300, "writes before the kills").await;
    let old: Vec<String> = c.masters.iter().map(RedisServer::addr).collect();
    c.masters[0].kill();
    // A stagger of time, on purpose: the second failure strikes while the
    // first is being handled, not at the same instant nor after it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.masters[1].kill();
    let killed = Instant::now();
    for (i, g) in [1u32, 2].into_iter().enumerate() {
        let got = replaced(&c.store, g, &old[i], killed).await;
        assert_eq!(got, replicas[i].addr(), "group {g}");
    }
    assert!(
        killed.elapsed() < REPLACED_WITHIN,
        "both replaced after {:?}",
        killed.elapsed()
    );
    let before = load.acked.load(Ordering::Relaxed);
    load.at_least(before + 300, "writes to both groups after the failovers")
        .await;
    let acked = load.finish().await;
    assert!(
        acked.keys().any(|k| slot_of(k.as_bytes()) < 512)
            && acked.keys().any(|k| slot_of(k.as_bytes()) >= 512)
    );
    let records = failover::list(&c.store).await.expect("records");
    let groups: Vec<u32> = records
        .iter()
        .filter(|r| r.outcome == "promoted")
        .map(|r| r.group)
        .collect();
    assert_eq!(groups.len(), 2, "{records:?}");
    assert!(groups.contains(&1) && groups.contains(&2), "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_observer_alone_never_fails_a_group_over() {
    let (c, _replicas) = Cluster::with_persistent_replicas().await;
    let old = c.masters[0].addr();
    // A proxy that sees group 1's master down (a broken link of its own); the
    // dashboard still hears it. One vote of two observers is no majority.
    let mut seen = Observation::default();
    seen.down.insert(old.clone());
    let path = c.store.paths().observation("lonely-proxy");
    c.store
        .register_ephemeral(&path, serde_json::to_vec(&seen).expect("json"))
        .await
        .expect("observation");
    let _dash = c.dashboard().await;
    // Well past the dashboard's down_after (3 s) and several rounds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(master_of(&c.store, 1).await.as_deref(), Some(old.as_str()));
    assert!(failover::list(&c.store).await.expect("records").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_busy_with_a_slow_command_is_not_failed_over() {
    let (c, _replicas) = Cluster::with_persistent_replicas().await;
    let _proxy = c.proxy().await;
    let _dash = c.dashboard().await;
    let old = c.masters[0].addr();
    // Every observer's PING goes unanswered for 4.5 s, past down_after (3 s),
    // but the master's port still accepts connections. (Under Redis's
    // `busy-reply-threshold`, 5 s, so nobody gets even a `BUSY`.)
    // A raw socket: redis-rs gives up on a reply after 500 ms.
    let mut m = tokio::net::TcpStream::connect(&old).await.expect("connect");
    let eval = common::busy_eval(Duration::from_millis(4500), "busy");
    let started = Instant::now();
    tokio::io::AsyncWriteExt::write_all(&mut m, &eval)
        .await
        .expect("write");
    let mut reply = [0u8; 4];
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_exact(&mut m, &mut reply),
    )
    .await
    .expect("the script ends")
    .expect("read");
    assert_eq!(&reply, b":1\r\n");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // A few rounds more, for a vote taken at the end to count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(master_of(&c.store, 1).await.as_deref(), Some(old.as_str()));
    assert!(failover::list(&c.store).await.expect("records").is_empty());
    assert!(role_of(&old).await.contains("role:master"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_cannot_promote_changes_nothing_and_is_recorded() {
    let (mut c, mut replicas) = Cluster::with_persistent_replicas().await;
    let _proxy = c.proxy().await;
    let _dash = c.dashboard().await;
    let old = c.masters[1].addr();
    // Group 2 loses its replica, then its master: nothing is left to promote.
    replicas[1].kill();
    c.masters[1].kill();
    recorded(&c.store, "a failed failover", Duration::from_secs(20), |r| {
        r.group == 2 && r.outcome.starts_with("failed") && r.new_master.is_none()
    })
    .await;
    assert_eq!(
        master_of(&c.store, 2).await.as_deref(),
        Some(old.as_str()),
        "the topology changed"
    );
    // Group 1 was never touched.
    assert_eq!(master_of(&c.store, 1).await, Some(c.masters[0].addr()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_follows_another_server_is_made_master_again() {
    let (c, replicas) = Cluster::with_persistent_replicas().await;
    common::wait_replica_streaming(&c.masters[0].addr()).await;
    let proxy = c.proxy().await;
    let _dash = c.dashboard().await;
    let (master, replica) = (c.masters[0].addr(), replicas[0].addr());
    let load = Load::start(proxy, keys_of_groups(&[1], 200));
    load.at_least(300, "writes before the loop").await;

    // The master follows its own replica: what a restart with a stale
    // `replicaof` line, or an operator's REPLICAOF, leaves behind. Every write
    // to the group now gets READONLY.
    let mut m = common::client(&master).await;
    let reply: String = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(replicas[0].port())
        .query_async(&mut m)
        .await
        .expect("REPLICAOF");
    assert_eq!(reply, "OK");
    let looped = Instant::now();

    recorded(&c.store, "the repair", Duration::from_secs(15), |r| {
        r.outcome == "made a master again"
    })
    .await;
    let took = looped.elapsed();
    let info = role_of(&master).await;
    assert!(info.contains("role:master"), "{info}");
    // Its replica follows it again, and clients write again by themselves.
    common::eventually("the replica follows the master", Duration::from_secs(15), || {
        let (replica, port) = (replica.clone(), c.masters[0].port());
        async move {
            let info = role_of(&replica).await;
            info.contains("role:slave") && info.contains(&format!("master_port:{port}"))
        }
    })
    .await;
    let before = load.acked.load(Ordering::Relaxed);
    load.at_least(before + 300, "writes after the repair").await;
    let acked = load.finish().await;
    assert_eq!(lost_on(&master, &acked).await, 0, "acknowledged writes lost");

    // The topology never changed; the repair is recorded with what it followed.
    assert_eq!(master_of(&c.store, 1).await.as_deref(), Some(master.as_str()));
    let records = failover::list(&c.store).await.expect("records");
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (r.group, r.old_master.as_str(), r.new_master.as_deref()),
        (1, master.as_str(), Some(master.as_str()))
    );
    assert!(
        r.reason.contains(&format!("a replica of {replica}")),
        "{}",
        r.reason
    );
    // A restart keeps it a master: its config file lost the replicaof line.
    let conf = std::fs::read_to_string(c.masters[0].config_file()).expect("config file");
    assert!(!conf.contains("\nreplicaof "), "{conf}");
    eprintln!("master again after {took:?} (the round is 500 ms)");
}

/// The ids of the clients connected to the server `me` talks to, apart from
/// `me` and the replication link (flag `M`).
async fn other_clients(me: &mut redis::aio::MultiplexedConnection) -> BTreeSet<i64> {
    let mine: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(me)
        .await
        .expect("CLIENT ID");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(me)
        .await
        .expect("CLIENT LIST");
    let field = |line: &str, name: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    list.lines()
        .filter(|l| !field(l, "flags").is_some_and(|f| f.contains('M')))
        .filter_map(|l| field(l, "id")?.parse().ok())
        .filter(|&id| id != mine)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_keeps_its_connections_between_rounds() {
    let (c, replicas) = Cluster::with_persistent_replicas().await;
    let _dash = c.dashboard().await;
    // Everything is asked on one connection of ours: a count of connections
    // received would also count any reconnect of a test client under load.
    let mut me = common::client(&replicas[0].addr()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = common::eventually_some(
        "the leader connects to the replica",
        deadline - Instant::now(),
        async || Some(other_clients(&mut me).await).filter(|seen| !seen.is_empty()),
    )
    .await;
    // Six rounds: each runs one INFO on the replica (ours are counted apart:
    // each check counts the INFO calls of ours before it).
    let (start, mut ours) = (common::command_calls(&mut me, "info").await, 0);
    common::eventually(
        "the leader keeps looking at the replica",
        deadline.saturating_duration_since(Instant::now()),
        async || {
            ours += 1;
            common::command_calls(&mut me, "info").await - start - ours >= 6
        },
    )
    .await;
    assert_eq!(
        other_clients(&mut me).await,
        leader,
        "the leader's connections to the replica after six rounds"
    );
}

async fn dbsize(addr: &str) -> u64 {
    let mut c = common::client(addr).await;
    redis::cmd("DBSIZE").query_async(&mut c).await.expect("DBSIZE")
}

/// A migration under way: slots 0-127 of group 1 (3,000 keys) moving to
/// group 2 at 150 keys/s, 100 counters INCRed through the proxy all along, and
/// a first 300 keys at the target.
struct MidMigration {
    c: Cluster,
    replicas: Vec<RedisServer>,
    proxy: std::net::SocketAddr,
    p: redis::aio::MultiplexedConnection,
    filler: Vec<String>,
    /// 300 more counters, set to 0 and not written until a test says so.
    late: Vec<String>,
    /// The counters' writers, until a test finishes them.
    load: Option<Load>,
    task: u64,
}

impl MidMigration {
    async fn start() -> MidMigration {
        MidMigration::start_with(WriteAck::Master).await
    }

    /// With `write_ack = "replica"`, writes wait 200 ms for a replica, and
    /// so do the migrator's batches (500 ms).
    async fn start_with(write_ack: WriteAck) -> MidMigration {
        let (c, replicas) = Cluster::with_persistent_replicas().await;
        let target = c.masters[1].addr();
        common::wait_replica_streaming(&c.masters[0].addr()).await;
        common::wait_replica_streaming(&target).await;
        let proxy = c
            .proxy_with(|cfg| {
                cfg.write_ack = write_ack;
                cfg.write_ack_timeout = Duration::from_millis(200);
            })
            .await;
        c.dashboard_with(|cfg| {
            // About 20 s for the whole task: it still moves keys when a
            // master dies.
            cfg.migration.max_keys_per_sec = Some(150);
            cfg.migration.batch_keys = 10;
            cfg.migration.timeout = Duration::from_millis(500);
        })
        .await;
        let moving = |k: &String| slot_of(k.as_bytes()) < 128;
        let filler: Vec<String> = (0..)
            .map(|i| format!("fill{i}"))
            .filter(moving)
            .take(3000)
            .collect();
        let counters: Vec<String> = (0..)
            .map(|i| format!("ctr{i}"))
            .filter(moving)
            .take(100)
            .collect();
        let late: Vec<String> = (0..)
            .map(|i| format!("late{i}"))
            .filter(moving)
            .take(300)
            .collect();
        let mut p = client(proxy).await;
        common::cluster::set_all(&mut p, &filler).await;
        let mut pipe = redis::pipe();
        for k in &late {
            pipe.set(k, 0).ignore();
        }
        let () = pipe.query_async(&mut p).await.expect("set late counters");
        let load = Load::start(proxy, counters);
        load.at_least(200, "writes before the migration").await;
        common::wait_replica_streaming(&c.masters[0].addr()).await;
        let task = task::enqueue(&c.store, (0..128).collect(), 2)
            .await
            .expect("enqueue")
            .id;
        common::eventually("keys arrive at the target", Duration::from_secs(20), async || {
            dbsize(&target).await >= 300
        })
        .await;
        MidMigration {
            c,
            replicas,
            proxy,
            p,
            filler,
            late,
            load: Some(load),
            task,
        }
    }

    /// Waits for the task to finish; then every key of the slots is at group
    /// 2 once, with its value, and none is left on group 1's `master`.
    async fn finishes(&mut self, master: &str) -> task::Task {
        let done = common::eventually_some("the task finishes", Duration::from_secs(90), async || {
            let (t, _) = task::get(&self.c.store, self.task).await.ok()?;
            (t.state == TaskState::Done).then_some(t)
        })
        .await;
        let mut pipe = redis::pipe();
        for k in &self.filler {
            pipe.get(k);
        }
        let values: Vec<Option<String>> = pipe.query_async(&mut self.p).await.expect("get filler");
        let lost = values.iter().filter(|v| v.as_deref() != Some("v")).count();
        assert_eq!(lost, 0, "keys of the migrating slots lost");
        let mut m = common::client(master).await;
        let left: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut m)
            .await
            .expect("KEYS");
        assert!(
            left.iter().all(|k| slot_of(k.as_bytes()) >= 128),
            "left on group 1: {left:?}"
        );
        done
    }

    fn load(&self) -> &Load {
        self.load.as_ref().expect("the counters' writers run")
    }

    /// Stops the counters' writers: what each key had acknowledged.
    async fn finish_load(&mut self) -> BTreeMap<String, i64> {
        self.load
            .take()
            .expect("the counters' writers run")
            .finish()
            .await
    }

    /// Acknowledged INCRs (`acked`: key -> count) missing from what the
    /// proxy serves now.
    async fn lost(&mut self, acked: &BTreeMap<String, i64>) -> i64 {
        let mut lost = 0;
        for (k, n) in acked {
            let v: i64 = redis::AsyncCommands::get(&mut self.p, k).await.expect("get");
            lost += (n - v).max(0);
        }
        lost
    }

    /// Kills the master of group `i + 1` (`thaw`: a frozen replica to let go
    /// at once), waits for the failover (the bar: within 10 s), restarts the
    /// old master (it rejoins as a replica) and waits for writes to be
    /// acknowledged again. Returns the new master and how long it took.
    async fn kill_master(&mut self, i: usize, thaw: Option<u32>) -> (String, Duration) {
        let old = self.c.masters[i].addr();
        self.c.masters[i].kill();
        if let Some(pid) = thaw {
            signal(pid, "-CONT");
        }
        let killed = Instant::now();
        let new = replaced(&self.c.store, i as u32 + 1, &old, killed).await;
        let took = killed.elapsed();
        assert_eq!(new, self.replicas[i].addr());
        assert!(took < REPLACED_WITHIN, "replaced after {took:?}");
        self.c.masters[i].restart().expect("restart");
        let before = self.load().acked.load(Ordering::Relaxed);
        self.load()
            .at_least(before + 200, "writes acknowledged again after the failover")
            .await;
        (new, took)
    }

    /// The failover record of `group`, which must be a promote.
    async fn record(&self, group: u32) -> FailoverRecord {
        let records = failover::list(&self.c.store).await.expect("records");
        records
            .iter()
            .find(|r| r.group == group && r.outcome == "promoted")
            .cloned()
            .unwrap_or_else(|| panic!("no promote of group {group} recorded: {records:?}"))
    }
}

/// A source master dies while its slots migrate, its replica frozen and cut
/// off first, so that the replica misses the old master's deletions of keys
/// it had already moved, keys clients then went on INCRing on the target.
/// The failover must promote the replica anyway and settle those stale
/// copies: else they would be served, and moved back over the newer ones on
/// the target, losing every INCR made there (3,930 in a run without the
/// settle). The task must finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_master_killed_mid_migration_is_replaced_and_its_task_finishes_losing_nothing() {
    let mut mid = MidMigration::start().await;
    let (old, target) = (mid.c.masters[0].addr(), mid.c.masters[1].addr());

    // Freeze and cut off the replica; the migrator goes on moving keys and
    // deleting them from the old master, which the replica never hears.
    let replica_pid = freeze_and_cut_off(&mid.replicas[0], &old).await;
    let at_cut = dbsize(&target).await;
    common::eventually(
        "keys moved while the replica is cut off",
        Duration::from_secs(20),
        async || dbsize(&target).await >= at_cut + 200,
    )
    .await;
    // The late counters that moved meanwhile: clients INCR them on the target.
    let mut t_conn = common::client(&target).await;
    let mut moved_late = Vec::new();
    for k in &mid.late {
        let there: bool = redis::AsyncCommands::exists(&mut t_conn, k)
            .await
            .expect("EXISTS");
        if there {
            moved_late.push(k.clone());
        }
    }
    assert!(
        !moved_late.is_empty(),
        "no late counter moved while the replica was cut off"
    );
    let late_load = Load::start(mid.proxy, moved_late);
    late_load
        .at_least(100, "moved late counters INCRed on the target")
        .await;
    assert_eq!(
        mid.c.slot_state(0).await,
        (2, SlotState::Migrate),
        "the task ended too soon"
    );

    let (new, took) = mid.kill_master(0, Some(replica_pid)).await;
    let done = mid.finishes(&new).await;
    let errors = mid.load().errors.load(Ordering::Relaxed) + late_load.errors.load(Ordering::Relaxed);
    let late_acked = late_load.finish().await;
    // Every INCR acknowledged on the target after a move is there.
    let lost = mid.lost(&late_acked).await;
    assert_eq!(lost, 0, "INCRs acknowledged on the target lost");
    // The counters INCRed on the old master while its replica was cut off
    // are the default mode's window of loss (reported, see
    // `failover_with_a_lagging_replica`).
    let acked = mid.finish_load().await;
    let window = mid.lost(&acked).await;
    let r = mid.record(1).await;
    let settled = r
        .notes
        .iter()
        .find(|n| n.starts_with("settled slots migrating from group 1 to group 2"))
        .unwrap_or_else(|| panic!("no settle noted: {r:?}"));
    let dropped: u64 = settled
        .split(", ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{settled}"));
    eprintln!(
        "source failover mid-migration: replaced in {took:?} (detection {} ms, switch {} ms), {errors} client \
         errors, {lost} of {} INCRs acknowledged on the target lost, {window} of {} acknowledged on the old \
         master lost; {settled}; task moved {} keys",
        r.detection_ms,
        r.switch_ms,
        late_acked.values().sum::<i64>(),
        acked.values().sum::<i64>(),
        done.progress.moved
    );
    assert!(dropped >= 200, "the stale copies were not settled: {settled}");
}

/// With `write_ack = "replica"`, the target's replica is frozen and cut off
/// mid-migration, then the target master is killed and the replica promoted.
/// A key the migrator moved meanwhile would exist only on the dead master:
/// the migrator must have kept every key on the source until a replica of
/// the target had it, so nothing acknowledged is lost, moved keys included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_ack_replica_a_target_master_lost_with_its_replica_behind_loses_no_moved_key() {
    let mut mid = MidMigration::start_with(WriteAck::Replica).await;
    let (source, target) = (mid.c.masters[0].addr(), mid.c.masters[1].addr());
    let replica_pid = freeze_and_cut_off(&mid.replicas[1], &target).await;
    let task = mid.task;
    let store = mid.c.store.clone();
    common::eventually(
        "the migrator waits for the target's replica",
        Duration::from_secs(20),
        async || {
            task::get(&store, task)
                .await
                .ok()
                .and_then(|(t, _)| t.progress.last_error)
                .is_some_and(|e| e.contains("no replica"))
        },
    )
    .await;
    assert_eq!(
        mid.c.slot_state(0).await,
        (2, SlotState::Migrate),
        "the task ended too soon"
    );

    let (_, took) = mid.kill_master(1, Some(replica_pid)).await;
    // `finishes` checks that every key of the slots arrived.
    let done = mid.finishes(&source).await;
    let acked = mid.finish_load().await;
    let lost = mid.lost(&acked).await;
    assert_eq!(lost, 0, "acknowledged INCRs lost");
    eprintln!(
        "write_ack = replica, target failover with its replica behind: replaced in {took:?}, {lost} of {} \
         acknowledged INCRs lost, every one of the 3,000 keys arrived; task moved {} keys, {} errors",
        acked.values().sum::<i64>(),
        done.progress.moved,
        done.progress.errors
    );
}

/// With `write_ack = "replica"` and the target's replica frozen, the
/// migrator's copies wait on the target while the source keeps their keys. A
/// client that deletes such a key through a proxy and reads it right after
/// must find it gone, and it must stay gone once the task ends. Before the
/// proxy took such copies back, the read found the key on the target (the
/// source lacked it) and wore the copy's mark, so the migrator's own
/// take-back left it there: the key was back for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_ack_replica_a_key_deleted_while_its_copy_waits_reads_as_deleted_at_once() {
    let mut mid = MidMigration::start_with(WriteAck::Replica).await;
    let (source, target) = (mid.c.masters[0].addr(), mid.c.masters[1].addr());
    let replica_pid = freeze_and_cut_off(&mid.replicas[1], &target).await;
    let (mut s, mut t) = (common::client(&source).await, common::client(&target).await);
    let waiting = common::eventually_some("copies wait on the target", Duration::from_secs(20), async || {
        let copied: Vec<String> = redis::cmd("KEYS").arg("fill*").query_async(&mut t).await.ok()?;
        let mut pipe = redis::pipe();
        for k in &copied {
            pipe.exists(k);
        }
        let held: Vec<bool> = pipe.query_async(&mut s).await.ok()?;
        let both: Vec<String> = copied
            .into_iter()
            .zip(held)
            .filter_map(|(k, h)| h.then_some(k))
            .collect();
        (!both.is_empty()).then_some(both)
    })
    .await;
    let doomed: Vec<String> = waiting.iter().step_by(2).cloned().collect();
    for k in &doomed {
        let (deleted, read): (i64, Option<String>) = redis::pipe()
            .del(k)
            .get(k)
            .query_async(&mut mid.p)
            .await
            .expect("DEL, GET");
        assert_eq!(
            (deleted, read.as_deref()),
            (1, None),
            "{k} read back right after its delete"
        );
        let there: bool = redis::AsyncCommands::exists(&mut t, k).await.expect("exists");
        assert!(!there, "{k}: the copy stayed on the target");
    }

    signal(replica_pid, "-CONT");
    mid.filler.retain(|k| !doomed.contains(k));
    // `finishes` checks that every other key arrived.
    mid.finishes(&source).await;
    for k in &doomed {
        let read: Option<String> = redis::AsyncCommands::get(&mut mid.p, k).await.expect("get");
        assert_eq!(read, None, "{k} came back after the task ended");
    }
    let acked = mid.finish_load().await;
    assert_eq!(mid.lost(&acked).await, 0, "acknowledged INCRs lost");
    eprintln!(
        "{} of {} keys whose copies waited deleted, read back right after: none; all other keys moved",
        doomed.len(),
        waiting.len()
    );
}

/// The target master of a migration is killed: its replica replaces it, the
/// migrator goes on with it, and every key of the slots arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_master_killed_mid_migration_is_replaced_and_its_task_finishes() {
    let mut mid = MidMigration::start().await;
    let source = mid.c.masters[0].addr();
    assert_eq!(
        mid.c.slot_state(0).await,
        (2, SlotState::Migrate),
        "the task ended too soon"
    );

    let (_, took) = mid.kill_master(1, None).await;
    let done = mid.finishes(&source).await;
    let errors = mid.load().errors.load(Ordering::Relaxed);
    let acked = mid.finish_load().await;
    let lost = mid.lost(&acked).await;
    let r = mid.record(2).await;
    assert!(
        !r.notes.iter().any(|n| n.contains("settle")),
        "a target has nothing to settle: {r:?}"
    );
    eprintln!(
        "target failover mid-migration: replaced in {took:?} (detection {} ms, switch {} ms), {errors} client \
         errors, {lost} of {} acknowledged INCRs lost; task moved {} keys",
        r.detection_ms,
        r.switch_ms,
        acked.values().sum::<i64>(),
        done.progress.moved
    );
}
