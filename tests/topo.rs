//! Integration tests of `topo` against a real ZooKeeper: the store's session
//! handling (ephemerals across close and expiry), the watcher's latency, the
//! operator lock, and every operation with its refusals (which must leave
//! ZooKeeper byte-for-byte unchanged). Each test works under its own root.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reborn::topo::lock;
use reborn::topo::manager::admin::{self, AdminCommand, SlotRangeArg};
use reborn::topo::operation::{
    add_server, assign_slots, create_group, init_product, remove_group, remove_server, set_proxy_online,
};
use reborn::topo::{
    ProxyInfo, Role, SlotState, SlotTable, Store, TopoError, Topology, ZkConfig, load, watch,
};
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;

const PRODUCT: &str = "demo";

fn config(addr: &str, root: &str) -> ZkConfig {
    ZkConfig {
        addr: addr.to_string(),
        root: root.to_string(),
        product: PRODUCT.to_string(),
        session_timeout: Duration::from_secs(6),
    }
}

async fn connect(root: &str) -> Store {
    Store::connect(&config(&common::zk(), root))
        .await
        .expect("connect to the test ZooKeeper")
}

/// A store on a fresh root with the product initialized.
async fn initialized() -> Store {
    let store = connect(&common::unique_root()).await;
    init_product(&store).await.expect("init");
    store
}

/// Every node under the product (but the transient lock) with its data: what a
/// refused operation must leave untouched.
async fn dump(store: &Store) -> BTreeMap<String, Vec<u8>> {
    let zk = store.zk().expect("session");
    let lock = store.paths().lock();
    let mut out = BTreeMap::new();
    let mut todo = vec![store.paths().product().to_string()];
    while let Some(path) = todo.pop() {
        if path == lock {
            continue;
        }
        let (data, _) = zk.get_raw(&path).await.expect("get");
        for child in zk.children(&path).await.expect("children") {
            todo.push(format!("{path}/{child}"));
        }
        out.insert(path, data);
    }
    out
}

/// Waits until the watched topology satisfies `pred`; returns how long it took.
async fn wait_topology(
    rx: &mut channel::Receiver<Arc<Topology>>,
    within: Duration,
    pred: impl Fn(&Topology) -> bool,
) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(within, rx.wait_for(|t| pred(t)))
        .await
        .expect("topology change not seen in time")
        .expect("watcher stopped");
    started.elapsed()
}

fn proxy_info(id: &str) -> ProxyInfo {
    ProxyInfo {
        id: id.to_string(),
        addr: id.to_string(),
        admin_addr: "127.0.0.1:11000".to_string(),
        pid: std::process::id(),
        pid_space: String::new(),
        start_time: 1,
        version: "test".to_string(),
        write_ack: Default::default(),
    }
}

#[tokio::test]
async fn init_is_idempotent_and_creates_an_unassigned_table() {
    let store = initialized().await;
    let first = dump(&store).await;
    init_product(&store).await.expect("second init");
    assert_eq!(dump(&store).await, first, "a second init changed something");

    let topo = load(&store).await.expect("load");
    assert_eq!(topo.product, PRODUCT);
    assert!(topo.slots.slots().iter().all(|s| s.group == 0));
    assert!(topo.groups.is_empty() && topo.proxies.is_empty());
    let product: serde_json::Value = store
        .get_json(store.paths().product())
        .await
        .expect("product node");
    assert_eq!(product["name"], PRODUCT);
    store.close().await;
}

#[tokio::test]
async fn an_uninitialized_product_is_reported_as_such() {
    let store = connect(&common::unique_root()).await;
    let err = load(&store).await.expect_err("not initialized");
    assert!(matches!(err, TopoError::NotInitialized { .. }), "{err}");
    assert!(err.to_string().contains("reborn admin init"), "{err}");
    let err = create_group(&store, 1).await.expect_err("not initialized");
    assert!(matches!(err, TopoError::NotInitialized { .. }), "{err}");
    store.close().await;
}

#[tokio::test]
async fn groups_servers_and_slots_can_be_set_up_and_torn_down() {
    let store = initialized().await;
    create_group(&store, 1).await.expect("group 1");
    create_group(&store, 2).await.expect("group 2");
    add_server(&store, 1, "127.0.0.1:16379", Role::Master)
        .await
        .expect("master 1");
    add_server(&store, 1, "127.0.0.1:16380", Role::Replica)
        .await
        .expect("replica 1");
    add_server(&store, 2, "127.0.0.1:16381", Role::Master)
        .await
        .expect("master 2");
    assign_slots(&store, 0, 511, 1).await.expect("assign 1");
    assign_slots(&store, 512, 1023, 2).await.expect("assign 2");

    let topo = load(&store).await.expect("load");
    assert_eq!(topo.master_of_slot(0), Some("127.0.0.1:16379"));
    assert_eq!(topo.master_of_slot(511), Some("127.0.0.1:16379"));
    assert_eq!(topo.master_of_slot(512), Some("127.0.0.1:16381"));
    assert_eq!(topo.groups[&1].servers.len(), 2);
    // The slot table is stored compactly: two ranges.
    assert_eq!(topo.slots.to_ranges().len(), 2);

    remove_server(&store, 1, "127.0.0.1:16380")
        .await
        .expect("remove replica");
    assign_slots(&store, 512, 1023, 0).await.expect("unassign");
    remove_server(&store, 2, "127.0.0.1:16381")
        .await
        .expect("remove last master");
    remove_group(&store, 2).await.expect("remove group 2");

    let topo = load(&store).await.expect("load");
    assert_eq!(topo.groups.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(topo.groups[&1].servers.len(), 1);
    assert!(topo.slots.slots()[512..].iter().all(|s| s.group == 0));
    store.close().await;
}

/// Runs `op`, expects it to fail as `expected` says, and checks that ZooKeeper
/// did not change at all.
async fn refused<T: std::fmt::Debug, F: std::future::Future<Output = Result<T, TopoError>>>(
    store: &Store,
    what: &str,
    op: F,
    expected: fn(&TopoError) -> bool,
) {
    let before = dump(store).await;
    let err = op.await.expect_err(what);
    assert!(expected(&err), "{what}: unexpected error {err:?}");
    assert!(!err.to_string().is_empty());
    assert_eq!(dump(store).await, before, "{what} changed ZooKeeper");
}

fn invalid(e: &TopoError) -> bool {
    matches!(e, TopoError::Invalid(_))
}
fn exists(e: &TopoError) -> bool {
    matches!(e, TopoError::Exists(_))
}
fn not_found(e: &TopoError) -> bool {
    matches!(e, TopoError::NotFound(_))
}

#[tokio::test]
async fn refused_operations_leave_zookeeper_unchanged() {
    let store = initialized().await;
    let s = &store;
    for id in [1, 2, 3, 4] {
        create_group(s, id).await.expect("group");
    }
    add_server(s, 1, "127.0.0.1:16379", Role::Master)
        .await
        .expect("m1");
    add_server(s, 3, "127.0.0.1:16383", Role::Master)
        .await
        .expect("m3");
    add_server(s, 4, "127.0.0.1:16384", Role::Master)
        .await
        .expect("m4");
    add_server(s, 4, "127.0.0.1:16385", Role::Replica)
        .await
        .expect("r4");
    assign_slots(s, 0, 511, 1).await.expect("assign");
    // Slot 600 migrates from group 3 to group 1 (as the migration manager will write it).
    let (mut slots, version) = s
        .get_json_with_version::<SlotTable>(&s.paths().slots())
        .await
        .expect("slots");
    if let Some(slot) = slots.get_mut(600) {
        slot.group = 1;
        slot.state = SlotState::Migrate;
        slot.from = Some(3);
    }
    s.set_json(&s.paths().slots(), &slots, version)
        .await
        .expect("write slots");

    refused(s, "duplicate group", create_group(s, 1), exists).await;
    refused(s, "group 0", create_group(s, 0), invalid).await;
    refused(s, "group 10000", create_group(s, 10000), invalid).await;
    refused(
        s,
        "second master",
        add_server(s, 1, "127.0.0.1:7000", Role::Master),
        invalid,
    )
    .await;
    refused(
        s,
        "addr in another group",
        add_server(s, 2, "127.0.0.1:16379", Role::Replica),
        exists,
    )
    .await;
    refused(
        s,
        "bad addr",
        add_server(s, 2, "localhost", Role::Master),
        invalid,
    )
    .await;
    refused(
        s,
        "server in missing group",
        add_server(s, 9, "127.0.0.1:7001", Role::Master),
        not_found,
    )
    .await;
    refused(
        s,
        "last master of a group with slots",
        remove_server(s, 1, "127.0.0.1:16379"),
        invalid,
    )
    .await;
    refused(
        s,
        "master of a group migrating slots out",
        remove_server(s, 3, "127.0.0.1:16383"),
        invalid,
    )
    .await;
    refused(
        s,
        "master with replicas",
        remove_server(s, 4, "127.0.0.1:16384"),
        invalid,
    )
    .await;
    refused(s, "unknown server", remove_server(s, 1, "127.0.0.1:9"), not_found).await;
    refused(
        s,
        "slots to a missing group",
        assign_slots(s, 0, 10, 9),
        not_found,
    )
    .await;
    refused(
        s,
        "slots to a group without master",
        assign_slots(s, 700, 710, 2),
        invalid,
    )
    .await;
    refused(s, "reversed range", assign_slots(s, 10, 5, 1), invalid).await;
    refused(s, "range past the end", assign_slots(s, 1000, 1024, 1), invalid).await;
    refused(s, "a migrating slot", assign_slots(s, 590, 610, 4), invalid).await;
    refused(s, "group owning slots", remove_group(s, 1), invalid).await;
    refused(s, "group migrating slots out", remove_group(s, 3), invalid).await;
    refused(s, "missing group", remove_group(s, 9), not_found).await;
    refused(s, "group with servers", remove_group(s, 4), invalid).await;
    refused(s, "bad proxy id", set_proxy_online(s, "a/b", false), invalid).await;

    // The refusals did not hold on to the lock.
    create_group(s, 5).await.expect("lock was released");
    store.close().await;
}

#[tokio::test]
async fn proxies_are_set_offline_and_online() {
    let store = initialized().await;
    let id = "127.0.0.1:19000";
    let marked = set_proxy_online(&store, id, false).await.expect("offline");
    assert!(!marked.running, "no proxy registered under {id} here");
    assert!(
        marked
            .to_string()
            .contains("no proxy 127.0.0.1:19000 is running, so it will start offline"),
        "a mistyped id does not pass unnoticed: {marked}"
    );
    set_proxy_online(&store, id, false).await.expect("offline again");
    assert!(load(&store).await.expect("load").offline_proxies.contains(id));
    set_proxy_online(&store, id, true).await.expect("online");
    set_proxy_online(&store, id, true).await.expect("online again");
    assert!(load(&store).await.expect("load").offline_proxies.is_empty());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_changes_of_another_store_within_a_second() {
    let root = common::unique_root();
    let writer = connect(&root).await;
    init_product(&writer).await.expect("init");
    let follower = connect(&root).await;
    let cancel = CancellationToken::new();
    let mut rx = watch(follower.clone(), cancel.clone()).await.expect("watch");
    assert!(rx.borrow().groups.is_empty(), "first snapshot is there at once");

    create_group(&writer, 7).await.expect("group");
    let took = wait_topology(&mut rx, Duration::from_secs(1), |t| t.groups.contains_key(&7)).await;
    eprintln!("group seen after {took:?}");

    let path = writer.paths().proxy("127.0.0.1:19000");
    let info = serde_json::to_vec(&proxy_info("127.0.0.1:19000")).expect("json");
    writer.register_ephemeral(&path, info).await.expect("register");
    wait_topology(&mut rx, Duration::from_secs(1), |t| {
        t.proxies.contains_key("127.0.0.1:19000")
    })
    .await;
    writer.close().await;
    let took = wait_topology(&mut rx, Duration::from_secs(1), |t| t.proxies.is_empty()).await;
    eprintln!("proxy departure seen after {took:?}");

    // Cancelling stops the follower, which drops its sender.
    cancel.cancel();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|_| false))
            .await
            .is_ok_and(|r| r.is_err()),
        "watcher did not stop on cancel"
    );
    follower.close().await;
}

#[tokio::test]
async fn an_ephemeral_disappears_after_close() {
    let root = common::unique_root();
    let owner = connect(&root).await;
    let observer = connect(&root).await;
    let path = format!("{root}/eph/node-1");
    owner
        .register_ephemeral(&path, b"x".to_vec())
        .await
        .expect("register");
    assert!(observer.exists(&path).await.expect("exists"));

    owner.close().await;
    assert!(matches!(owner.zk(), Err(TopoError::Closed)));
    common::eventually(
        "the ephemeral to go after close",
        Duration::from_secs(2),
        || async { !observer.exists(&path).await.expect("exists") },
    )
    .await;
    observer.close().await;
}

#[tokio::test]
async fn a_second_owner_of_an_ephemeral_is_refused_after_waiting() {
    let root = common::unique_root();
    let first = connect(&root).await;
    let mut cfg = config(&common::zk(), &root);
    cfg.session_timeout = Duration::from_secs(1);
    let second = Store::connect(&cfg).await.expect("connect");
    let path = format!("{root}/eph/p");
    first
        .register_ephemeral(&path, b"1".to_vec())
        .await
        .expect("first");
    let err = second
        .register_ephemeral(&path, b"2".to_vec())
        .await
        .expect_err("taken");
    assert!(matches!(err, TopoError::Exists(_)), "{err}");
    // Once the first owner is gone, the second one gets it.
    first.close().await;
    second
        .register_ephemeral(&path, b"2".to_vec())
        .await
        .expect("second");
    second.close().await;
}

/// A registration (`{"pid", "pid_space"}`) of a process that has ended, in
/// this machine's pid space or in another one.
fn registration_of_an_ended_process(pid_space: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"id": "p", "pid": common::ended_pid(), "pid_space": pid_space}))
        .expect("json")
}

#[tokio::test]
async fn a_node_left_by_a_process_of_this_machine_that_ended_is_taken_at_once() {
    let root = common::unique_root();
    // The crashed process's session is still open (it has not timed out).
    let crashed = connect(&root).await;
    let mut cfg = config(&common::zk(), &root);
    cfg.session_timeout = Duration::from_secs(20);
    let restarted = Store::connect(&cfg).await.expect("connect");
    let here = reborn::libs::pid_space::current();
    let path = format!("{root}/eph/p");
    crashed
        .register_ephemeral(&path, registration_of_an_ended_process(here))
        .await
        .expect("the crashed process's node");
    let start = Instant::now();
    restarted
        .register_ephemeral(&path, b"{}".to_vec())
        .await
        .expect("taken at once");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    let (data, _) = restarted.zk().expect("zk").get_raw(&path).await.expect("get");
    assert_eq!(data, b"{}");

    // A process of another machine (or container) is never judged: its
    // node is waited for, here until the wait runs out.
    let other = format!("{root}/eph/q");
    crashed
        .register_ephemeral(&other, registration_of_an_ended_process("another-boot/pid:[1]"))
        .await
        .expect("another machine's node");
    let mut cfg = config(&common::zk(), &root);
    cfg.session_timeout = Duration::from_secs(1);
    let patient = Store::connect(&cfg).await.expect("connect");
    let err = patient
        .register_ephemeral(&other, b"{}".to_vec())
        .await
        .expect_err("waited for");
    assert!(matches!(err, TopoError::Exists(_)), "{err}");
    for s in [crashed, restarted, patient] {
        s.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemerals_and_watches_come_back_after_session_expiry() {
    let root = common::unique_root();
    let observer = connect(&root).await;
    init_product(&observer).await.expect("init");
    let relay = common::relay::Relay::start(common::zk()).await;
    let mut cfg = config(&relay.addr.to_string(), &root);
    cfg.session_timeout = Duration::from_millis(1500);
    let store = Store::connect(&cfg).await.expect("connect through the relay");
    let mut session = store.session();
    assert_eq!(
        *session.borrow(),
        reborn::topo::SessionEvent {
            generation: 1,
            connected: true
        }
    );
    let cancel = CancellationToken::new();
    let mut topo = watch(store.clone(), cancel.clone()).await.expect("watch");
    let path = store.paths().proxy("p1");
    let info = serde_json::to_vec(&proxy_info("p1")).expect("json");
    store.register_ephemeral(&path, info).await.expect("register");

    relay.cut();
    tokio::time::timeout(Duration::from_secs(5), session.wait_for(|e| !e.connected))
        .await
        .expect("disconnect not reported")
        .expect("store gone");
    common::eventually(
        "the server to expire the cut session",
        Duration::from_secs(20),
        || async { !observer.exists(&path).await.expect("exists") },
    )
    .await;
    create_group(&observer, 3)
        .await
        .expect("change made during the outage");

    relay.restore();
    tokio::time::timeout(
        Duration::from_secs(20),
        session.wait_for(|e| e.generation == 2 && e.connected),
    )
    .await
    .expect("no new session")
    .expect("store gone");
    common::eventually(
        "the ephemeral to be re-created on the new session",
        Duration::from_secs(5),
        || async { observer.exists(&path).await.expect("exists") },
    )
    .await;
    // The watcher resynced (sees the change made while it was cut off) and follows again.
    wait_topology(&mut topo, Duration::from_secs(5), |t| t.groups.contains_key(&3)).await;
    create_group(&observer, 4).await.expect("change after recovery");
    wait_topology(&mut topo, Duration::from_secs(1), |t| t.groups.contains_key(&4)).await;

    cancel.cancel();
    store.close().await;
    observer.close().await;
}

#[tokio::test]
async fn a_held_lock_is_reported_with_its_holder() {
    let root = common::unique_root();
    let a = connect(&root).await;
    init_product(&a).await.expect("init");
    let b = connect(&root).await;

    let guard = lock::acquire(&a, "test holder").await.expect("lock");
    let started = Instant::now();
    let err = lock::acquire_within(&b, "second", Duration::from_millis(500))
        .await
        .expect_err("must be locked");
    assert!(started.elapsed() >= Duration::from_millis(400), "did not wait");
    match &err {
        TopoError::Locked { holder } => {
            assert!(holder.contains("test holder"), "{holder}");
            assert!(
                holder.contains(&format!("pid {}", std::process::id())),
                "{holder}"
            );
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(err.to_string().contains("test holder"));

    // Dropping the guard releases it in the background.
    drop(guard);
    let again = lock::acquire_within(&b, "second", Duration::from_secs(3))
        .await
        .expect("free");
    again.release().await.expect("release");
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn admin_prints_tables_and_fails_clearly() {
    let store = initialized().await;
    admin::execute(&store, &AdminCommand::GroupCreate { id: 1 })
        .await
        .expect("group");
    let add = AdminCommand::ServerAdd {
        group: 1,
        addr: "127.0.0.1:16379".into(),
        replica: false,
        force: false,
    };
    admin::execute(&store, &add).await.expect("server");
    let assign = AdminCommand::SlotsAssign {
        slots: SlotRangeArg { start: 0, end: 511 },
        group: 1,
    };
    admin::execute(&store, &assign).await.expect("assign");
    let slots = admin::execute(&store, &AdminCommand::Slots).await.expect("slots");
    assert!(
        slots.contains("0-511     1      online   127.0.0.1:16379"),
        "{slots}"
    );
    let json = admin::execute(&store, &AdminCommand::Topology { json: true })
        .await
        .expect("json");
    let topo: Topology = serde_json::from_str(&json).expect("topology json");
    assert_eq!(topo.master_of_slot(3), Some("127.0.0.1:16379"));
    store.close().await;

    // Not a dropped `bind(:0)` listener: the kernel handed its port at once
    // to the next test's ZooKeeper relay, and the "unreachable" address
    // answered (a CI failure). `free_port`'s ports are never handed twice.
    let addr = format!("127.0.0.1:{}", common::free_port());
    let args = admin::AdminArgs {
        zk: addr.clone(),
        root: "/x".into(),
        product: "p".into(),
        dashboard: None,
        token: None,
        command: AdminCommand::Groups,
    };
    let err = admin::run(args).await.expect_err("unreachable");
    assert!(err.to_string().contains(&addr), "{err}");
}

/// An action and the slot table it changed are written in one transaction: a
/// loaded topology must never pair an action with a table older than it (a
/// proxy would acknowledge a `pre_migrate` it does not route by). The writer
/// moves slot 0 to group k with action k; every snapshot must have slot 0 in
/// a group at least as new as its action's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_action_is_never_newer_than_its_slot_table() {
    use reborn::topo::model::Action;
    let store = initialized().await;
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            let zk = store.zk().expect("session");
            let paths = store.paths().clone();
            zk.mkdir_p(&paths.actions()).await.expect("actions");
            for k in 1..=150u32 {
                let (mut table, version): (SlotTable, i32) =
                    zk.get_json_with_version(&paths.slots()).await.expect("slots");
                let slot = table.get_mut(0).expect("slot 0");
                slot.group = k;
                slot.state = SlotState::PreMigrate;
                let seq = u64::try_from(version).expect("version") + 1;
                let action = Action {
                    seq,
                    phase: SlotState::PreMigrate,
                    slots: vec![0],
                    from: k,
                    to: k,
                    created: 0,
                    drain_target: false,
                };
                let mut txn = zk.txn();
                txn.set_json(&paths.slots(), &table, version).expect("set");
                txn.create_json(&paths.action(seq), &action).expect("create");
                txn.commit().await.expect("commit");
            }
        }
    });
    let mut checked = 0;
    while !writer.is_finished() {
        let topo = load(&store).await.expect("load");
        if let Some(a) = &topo.action {
            let group = topo.slots.get(0).expect("slot 0").group;
            assert!(
                group >= a.to,
                "action {} (slot 0 to group {}) loaded with an older table (slot 0 in group {group})",
                a.seq,
                a.to
            );
            checked += 1;
        }
    }
    writer.await.expect("writer");
    assert!(checked > 10, "only {checked} snapshots overlapped the writes");
}

#[tokio::test]
async fn a_multi_host_connect_string_with_a_chroot_keeps_the_product_under_it() {
    // The chroot node must exist, as with every ZooKeeper client.
    let chroot = common::unique_root();
    let plain = connect("/reborn").await;
    plain.mkdir_p(&chroot).await.expect("create the chroot");
    // The same server twice stands for an ensemble's members.
    let zk = common::zk();
    let rooted = Store::connect(&config(&format!("{zk},{zk}{chroot}"), "/reborn"))
        .await
        .expect("connect with a chroot");
    init_product(&rooted).await.expect("init under the chroot");
    assert!(rooted.exists(rooted.paths().product()).await.expect("exists"));
    let under = format!("{chroot}{}", rooted.paths().product());
    assert!(plain.exists(&under).await.expect("exists"), "{under} missing");
    rooted.close().await;
    plain.close().await;
}
