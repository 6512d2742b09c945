//! Promote's safety checks against real redis-servers, ZooKeeper, a proxy and a
//! dashboard: the wipe an operator could once cause (promoting an old master
//! that came back empty) is refused, a replica that is behind is refused with
//! its offsets, and `--force` promotes it while saying what is lost.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, client, keys_in, set_all};
use reborn::topo::manager::admin::{AdminCommand, ask_dashboard};
use reborn::topo::manager::dashboard::client::DashboardClient;
use reborn::topo::manager::dashboard::{BoundDashboard, DashboardConfig, client as http};
use reborn::topo::manager::promote::{PromoteRequest, promote_with};
use reborn::topo::model::{Role, SlotState};
use reborn::topo::{TopoError, watcher};
use redis::AsyncCommands;

const ACK: Duration = Duration::from_secs(5);

/// An in-process dashboard on a free port; returns its address once it leads.
async fn dashboard(c: &Cluster) -> String {
    let cfg = DashboardConfig {
        listen: "127.0.0.1:0".into(),
        zk: c.zk.clone(),
        ..DashboardConfig::default()
    };
    let bound = BoundDashboard::bind(cfg).await.expect("bind dashboard");
    let addr = bound.local_addr().to_string();
    tokio::spawn(bound.run(c.stop.clone()));
    common::eventually("the dashboard to lead", Duration::from_secs(10), || async {
        matches!(http::get(&addr, "/api/dashboard").await, Ok(r) if r.body["role"] == "leader")
    })
    .await;
    addr
}

async fn dbsize(addr: &str) -> i64 {
    let mut c = common::client(addr).await;
    redis::cmd("DBSIZE").query_async(&mut c).await.expect("DBSIZE")
}

async fn info_replication(addr: &str) -> String {
    let mut c = common::client(addr).await;
    redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .expect("INFO")
}

/// The master of group 1 in ZooKeeper.
async fn master_of_group_1(c: &Cluster) -> String {
    common::cluster::master_of(&c.store, 1)
        .await
        .expect("group 1 has a master")
}

async fn wait_synced(replica: &str, keys: i64) {
    common::eventually(
        "the replica to hold every key",
        Duration::from_secs(10),
        || async { dbsize(replica).await == keys },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_an_old_master_that_came_back_empty_is_refused() {
    let mut c = Cluster::start().await;
    let replica = c.replica_of_group_1().await;
    let (m, r) = (c.masters[0].addr(), replica.addr());
    let proxy = c.proxy().await;
    let dash = dashboard(&c).await;
    let mut p = client(proxy).await;
    let keys = keys_in(1, "w", 2000);
    set_all(&mut p, &keys).await;
    wait_synced(&r, keys.len() as i64).await;

    // The master dies. Promoting its replica is allowed: the master does not
    // answer and the replica applied the most (it is the only one).
    c.masters[0].kill();
    let promoted = promote_with(
        &c.store,
        1,
        &PromoteRequest {
            server: Some(r.clone()),
            force: false,
        },
        None,
        ACK,
    )
    .await
    .expect("promote the replica of a dead master");
    eprintln!("promoted: {}", promoted.message);
    assert_eq!(promoted.master, r);
    assert_eq!(promoted.keys, keys.len() as u64);
    assert!(promoted.forced.is_empty(), "{promoted:?}");
    // Naming it again is a state (409: a failover may have got there first),
    // naming a stranger a mistake in the request (400).
    let again = |server: &str| PromoteRequest {
        server: Some(server.to_string()),
        force: false,
    };
    let e = promote_with(&c.store, 1, &again(&r), None, ACK)
        .await
        .expect_err("promote the master");
    assert!(
        matches!(&e, TopoError::State(m) if m.contains("is already the master of group 1")),
        "{e:?}"
    );
    let e = promote_with(&c.store, 1, &again("127.0.0.1:1"), None, ACK)
        .await
        .expect_err("promote a stranger");
    assert!(
        matches!(&e, TopoError::Invalid(m) if m.contains("127.0.0.1:1 is not a server of group 1")),
        "{e:?}"
    );
    assert!(
        promoted
            .warnings
            .iter()
            .any(|w| w.contains(&m) && w.contains("not repointed")),
        "the dead master is reported as not repointed: {promoted:?}"
    );
    assert_eq!(master_of_group_1(&c).await, r);

    // It comes back empty on the same port, a standalone master: nothing
    // repoints it (the promote could not reach it).
    c.masters[0].restart().expect("restart the old master");
    let info = info_replication(&m).await;
    assert!(info.contains("role:master"), "{info}");
    assert_eq!(dbsize(&m).await, 0);

    // The operator asks to promote it (as the user did): refused,
    // through the CLI's path, naming why, and nothing changes.
    let command = AdminCommand::Promote {
        group: 1,
        server: Some(m.clone()),
        force: false,
    };
    let refusal = ask_dashboard(&DashboardClient::new(&dash), &command)
        .await
        .expect_err("refused")
        .to_string();
    eprintln!("refused: {refusal}");
    let why = format!("{m} is not a replica of the master {r} (it is a master with 0 keys");
    assert!(refusal.contains(&why), "{refusal}");
    assert!(refusal.contains("2,000 keys"), "{refusal}");
    let reply = http::post(&dash, "/api/groups/1/promote", &serde_json::json!({ "addr": m }))
        .await
        .expect("POST promote");
    assert_eq!(reply.status, 409, "{:?}", reply.body);

    // Without a name, no replica of the live master is linked to it: refused too.
    let err = promote_with(&c.store, 1, &PromoteRequest::default(), None, ACK)
        .await
        .expect_err("no linked replica");
    assert!(matches!(err, TopoError::State(_)), "{err}");
    assert!(err.to_string().contains("no replica is linked"), "{err}");

    assert_eq!(master_of_group_1(&c).await, r);
    assert!(info_replication(&r).await.contains("role:master"));
    assert_eq!(
        dbsize(&r).await,
        keys.len() as i64,
        "the new master kept its keys"
    );
    assert_eq!(c.slot_state(0).await, (1, SlotState::Online));
    for k in keys.iter().step_by(97) {
        let v: Option<String> = p.get(k).await.expect("GET through the proxy");
        assert_eq!(v.as_deref(), Some("v"), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_behind_is_refused_and_force_says_what_is_lost() {
    let c = Cluster::start().await;
    let replica = c.replica_of_group_1().await;
    let (m, r) = (c.masters[0].addr(), replica.addr());
    let dash = dashboard(&c).await;
    let mut master = common::client(&m).await;
    let first = keys_in(1, "a", 500);
    set_all(&mut master, &first).await;
    wait_synced(&r, first.len() as i64).await;

    // The replica stops applying the stream (its link stays up, it answers
    // INFO) while the master takes more writes.
    let mut rc = common::client(&r).await;
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "60000", "WRITE"])
        .query_async(&mut rc)
        .await
        .expect("CLIENT PAUSE");
    let more = keys_in(1, "b", 300);
    set_all(&mut master, &more).await;

    let err = promote_with(
        &c.store,
        1,
        &PromoteRequest {
            server: Some(r.clone()),
            force: false,
        },
        None,
        ACK,
    )
    .await
    .expect_err("a lagging replica is refused");
    let text = err.to_string();
    eprintln!("refused: {text}");
    assert!(matches!(err, TopoError::State(_)), "{text}");
    assert!(
        text.contains(&format!("{r} has not caught up with the master {m}"))
            && text.contains("bytes behind after 5 s"),
        "{text}"
    );
    assert!(
        text.contains("it has 500 keys") && text.contains("has 800"),
        "{text}"
    );
    assert!(text.contains("nothing was changed"), "{text}");
    // Nothing changed: ZooKeeper, the slots, and both servers' roles.
    assert_eq!(master_of_group_1(&c).await, m);
    assert_eq!(c.slot_state(0).await, (1, SlotState::Online));
    assert!(info_replication(&r).await.contains("role:slave"));
    assert!(info_replication(&m).await.contains("role:master"));

    // Forced, through the CLI's path: allowed, and the reply names the offsets
    // and the keys on each side.
    let command = AdminCommand::Promote {
        group: 1,
        server: Some(r.clone()),
        force: true,
    };
    let said = ask_dashboard(&DashboardClient::new(&dash), &command)
        .await
        .expect("forced promote");
    eprintln!("forced: {said}");
    assert!(
        said.starts_with(&format!("{r} is now the master of group 1")),
        "{said}"
    );
    assert!(
        said.contains("forced:") && said.contains("bytes behind"),
        "{said}"
    );
    assert!(said.contains(&format!("{m} (a master, offset")), "{said}");
    assert!(
        said.contains(&format!("its 800 keys are replaced by {r}'s 500")),
        "{said}"
    );
    assert_eq!(master_of_group_1(&c).await, r);
    // The history of master changes has it, beside the automatic failovers.
    let history = reborn::topo::manager::failover::list(&c.store)
        .await
        .expect("history");
    assert!(
        matches!(&history[..], [f] if f.group == 1 && f.old_master == m
            && f.new_master.as_deref() == Some(r.as_str())
            && f.reason == "promoted by an operator (forced)" && f.outcome == "promoted"
            && f.slots == [[0, 511]]),
        "{history:?}"
    );

    // What was lost is what it said: the old master follows the new one and
    // holds only what the replica had applied.
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut rc)
        .await
        .expect("CLIENT UNPAUSE");
    common::eventually(
        "the old master to follow the new one",
        Duration::from_secs(10),
        || async {
            let info = info_replication(&m).await;
            info.contains("role:slave") && info.contains("master_link_status:up")
        },
    )
    .await;
    assert_eq!(dbsize(&r).await, first.len() as i64);
    common::eventually(
        "the old master to hold the new master's keys",
        Duration::from_secs(10),
        || async { dbsize(&m).await == first.len() as i64 },
    )
    .await;
    let topo = watcher::load(&c.store).await.expect("load");
    let g = topo.groups.get(&1).expect("group 1");
    assert!(g.servers.iter().any(|s| s.addr == m && s.role == Role::Replica));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_master_dead_the_most_advanced_replica_is_chosen() {
    let mut c = Cluster::start().await;
    let behind = c.replica_of_group_1().await;
    let ahead = c.replica_of_group_1().await;
    let (m, b, a) = (c.masters[0].addr(), behind.addr(), ahead.addr());
    let mut master = common::client(&m).await;
    let first = keys_in(1, "a", 400);
    set_all(&mut master, &first).await;
    wait_synced(&b, first.len() as i64).await;
    wait_synced(&a, first.len() as i64).await;
    // `behind` stops applying; the master takes more writes, then dies.
    let mut bc = common::client(&b).await;
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "60000", "WRITE"])
        .query_async(&mut bc)
        .await
        .expect("CLIENT PAUSE");
    let more = keys_in(1, "b", 200);
    set_all(&mut master, &more).await;
    wait_synced(&a, (first.len() + more.len()) as i64).await;
    c.masters[0].kill();

    // Naming the replica that is behind is refused, naming the better one.
    let named = |server: &str| PromoteRequest {
        server: Some(server.to_string()),
        force: false,
    };
    let err = promote_with(&c.store, 1, &named(&b), None, ACK)
        .await
        .expect_err("the replica that is behind");
    eprintln!("refused: {err}");
    assert!(
        err.to_string()
            .contains(&format!("{b} (a replica of {m} (link down)")),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("is behind {a}")), "{err}");
    assert_eq!(master_of_group_1(&c).await, m);

    // Unnamed, the most advanced one is chosen; the other follows it (it has
    // applied less, so it loses nothing), the dead master is reported.
    let promoted = promote_with(&c.store, 1, &PromoteRequest::default(), None, ACK)
        .await
        .expect("promote the best replica");
    eprintln!("promoted: {}", promoted.message);
    assert_eq!(promoted.master, a);
    assert_eq!(promoted.keys, (first.len() + more.len()) as u64);
    assert!(promoted.warnings.iter().any(|w| w.contains(&m)), "{promoted:?}");
    assert_eq!(master_of_group_1(&c).await, a);
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut bc)
        .await
        .expect("CLIENT UNPAUSE");
    common::eventually(
        "the other replica to follow the new master",
        Duration::from_secs(10),
        || async {
            let info = info_replication(&b).await;
            info.contains(&format!("master_port:{}", ahead.port())) && info.contains("master_link_status:up")
        },
    )
    .await;
    wait_synced(&b, (first.len() + more.len()) as i64).await;
}

/// A key of slot 7 (a slot of group 1).
fn key_of_slot_7() -> String {
    (0..)
        .map(|i| format!("seven{i}"))
        .find(|k| reborn::libs::hash::slot_of(k.as_bytes()) == 7)
        .expect("a key of slot 7")
}

/// Rewrites the slot table with `change` applied to each of `slots`, as a
/// switch or a hold would leave it.
async fn set_slots(c: &Cluster, slots: impl IntoIterator<Item = u16>, change: (u32, Option<u32>, SlotState)) {
    use reborn::topo::model::SlotTable;
    let path = c.store.paths().slots();
    let (mut table, version) = c
        .store
        .get_json_with_version::<SlotTable>(&path)
        .await
        .expect("read slots");
    for id in slots {
        let s = table.get_mut(id).expect("slot");
        (s.group, s.from, s.state) = change;
    }
    c.store
        .set_json(&path, &table, version)
        .await
        .expect("write slots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_a_migrating_slot_is_promoted_and_the_slot_migrates_on() {
    let c = Cluster::start().await;
    let replica = c.replica_of_group_1().await;
    let (m, r) = (c.masters[0].addr(), replica.addr());
    let proxy = c.proxy().await;
    // Slot 7 is on its way from group 1 to group 2 (a task mid-way), and
    // one of its keys is on both masters: the source's copy is the one that
    // counts (the target's is a migrator's copy whose deletion never came).
    let key = key_of_slot_7();
    let mut source = common::client(&m).await;
    let () = source.set(&key, "the source's").await.expect("set");
    let mut target = common::client(&c.masters[1].addr()).await;
    let () = target.set(&key, "a stale copy").await.expect("set");
    wait_synced(&r, 1).await;
    set_slots(&c, [7], (2, Some(1), SlotState::Migrate)).await;

    let request = PromoteRequest {
        server: Some(r.clone()),
        force: false,
    };
    let promoted = promote_with(&c.store, 1, &request, None, ACK)
        .await
        .expect("a group with a migrating slot is promoted");
    assert_eq!(promoted.master, r);
    assert!(
        !c.store
            .exists(&c.store.paths().promoting())
            .await
            .expect("exists"),
        "the promote's plan outlived it"
    );
    // The replica had everything the live master had: nothing to settle.
    assert!(
        !promoted.warnings.iter().any(|w| w.contains("settle")),
        "{promoted:?}"
    );
    assert_eq!(master_of_group_1(&c).await, r);
    assert_eq!(c.slot_state(7).await, (2, SlotState::Migrate));
    let topo = watcher::load(&c.store).await.expect("load");
    assert_eq!(topo.slots.get(7).and_then(|s| s.from), Some(1));
    // Still served from the source group, now its new master.
    let mut p = client(proxy).await;
    let got: String = p.get(&key).await.expect("GET through the proxy");
    assert_eq!(got, "the source's");
    let mut promoted_master = common::client(&r).await;
    let there: Option<String> = promoted_master.get(&key).await.expect("get");
    assert_eq!(there.as_deref(), Some("the source's"));
}

/// A promote that will have to settle a migration's copies (the source's
/// master is dead) needs the target's master: without it, it is refused
/// before anything changes, naming the group to promote first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_that_must_settle_with_a_dead_target_is_refused() {
    let mut c = Cluster::start().await;
    let replica = c.replica_of_group_1().await;
    let (m, r) = (c.masters[0].addr(), replica.addr());
    set_slots(&c, [7], (2, Some(1), SlotState::Migrate)).await;
    c.masters[1].kill();
    c.masters[0].kill();
    common::eventually(
        "the replica sees its master gone",
        Duration::from_secs(10),
        || {
            let r = r.clone();
            async move { info_replication(&r).await.contains("master_link_status:down") }
        },
    )
    .await;

    let e = promote_with(&c.store, 1, &PromoteRequest::default(), None, ACK)
        .await
        .expect_err("the settle's target is down");
    assert!(
        matches!(&e, TopoError::State(msg) if msg.contains("Promote group 2 first") && msg.contains("nothing was changed")),
        "{e:?}"
    );
    assert_eq!(master_of_group_1(&c).await, m, "the topology changed");
    assert_eq!(c.slot_state(7).await, (2, SlotState::Migrate));
    assert!(
        info_replication(&r).await.contains("role:slave"),
        "the replica was promoted"
    );
}

/// What a promote of group 1 leaves when its process dies (or its ZooKeeper
/// session ends) after the switch and before it released anything (see
/// [`Cut`] for the other case): the
/// group names the promoted replica, its own slots and slot 7, migrating from
/// it to group 2, are held in `pre_migrate`, and its plan says the migration
/// needs a settle (the old master is dead). The replica holds a stale copy
/// of a key of slot 7 that had moved to group 2, where a client wrote it since.
struct CutShort {
    /// A client of the proxy.
    p: redis::aio::MultiplexedConnection,
    /// Keys of group 1's own slots, set to "v".
    own: Vec<String>,
    /// The key of slot 7.
    key: String,
    /// A client of the promoted replica.
    promoted: redis::aio::MultiplexedConnection,
}

/// Where a [`CutShort`] promote stopped.
#[derive(PartialEq)]
enum Cut {
    /// Before it switched anything: the old master lives and is still named.
    BeforeTheSwitch,
    /// After the switch (the module's [`CutShort`]).
    AfterTheSwitch,
}

async fn cut_short_promote(c: &mut Cluster, r: &str, cut: Cut) -> CutShort {
    use reborn::topo::manager::promote::{HeldMigration, Journal};
    use reborn::topo::model::Group;
    let m = c.masters[0].addr();
    let proxy = c.proxy().await;
    let own = keys_in(1, "own", 50);
    let mut p = client(proxy).await;
    set_all(&mut p, &own).await;
    let key = key_of_slot_7();
    let mut source = common::client(&m).await;
    let () = source.set(&key, "stale").await.expect("set");
    wait_synced(r, 51).await;
    let switched = cut == Cut::AfterTheSwitch;
    if switched {
        c.masters[0].kill();
        let mut target = common::client(&c.masters[1].addr()).await;
        let () = target.set(&key, "written at the target").await.expect("set");
    }
    let mut promoted = common::client(r).await;
    let paths = c.store.paths().clone();
    if switched {
        let () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query_async(&mut promoted)
            .await
            .expect("REPLICAOF NO ONE");
        let (mut group, version) = c
            .store
            .get_json_with_version::<Group>(&paths.group(1))
            .await
            .expect("group 1");
        for s in &mut group.servers {
            s.role = if s.addr == r { Role::Master } else { Role::Replica };
        }
        c.store
            .set_json(&paths.group(1), &group, version)
            .await
            .expect("write group 1");
    }
    set_slots(c, 0..512, (1, None, SlotState::PreMigrate)).await;
    let journal = Journal {
        group: 1,
        previous: Some(m),
        master: r.to_string(),
        own: (0..512).filter(|&s| s != 7).collect(),
        migrating: vec![HeldMigration {
            from: 1,
            to: 2,
            slots: vec![7],
        }],
        settle: switched,
        started: 0,
    };
    c.store
        .create_json(&paths.promoting(), &journal)
        .await
        .expect("write the plan");
    CutShort {
        p,
        own,
        key,
        promoted,
    }
}

impl CutShort {
    /// Starts a dashboard and waits until it finished the promote: the plan
    /// is gone, every slot is released and group 1's keys are served. The
    /// `resumed` failover record.
    async fn finished(&mut self, c: &Cluster) -> reborn::topo::model::FailoverRecord {
        let _dash = dashboard(c).await;
        let plan = c.store.paths().promoting();
        common::eventually("the promote is finished", Duration::from_secs(30), async || {
            !c.store.exists(&plan).await.expect("exists")
        })
        .await;
        assert_eq!(c.slot_state(0).await, (1, SlotState::Online));
        assert_eq!(c.slot_state(511).await, (1, SlotState::Online));
        assert_eq!(c.slot_state(7).await, (2, SlotState::Migrate));
        for k in &self.own {
            let v: String = self.p.get(k).await.expect("an own key is served again");
            assert_eq!(v, "v");
        }
        let records = reborn::topo::manager::failover::list(&c.store)
            .await
            .expect("records");
        let r = records
            .iter()
            .find(|f| f.outcome == "resumed")
            .cloned()
            .unwrap_or_else(|| panic!("no resume recorded: {records:?}"));
        assert_eq!(r.group, 1);
        r
    }
}

/// Nothing else would ever let a cut-short promote's slots go: the next
/// leader's migration runner must finish it, settle included (the replica's
/// stale copy of a key the target holds goes), and record it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_cut_short_after_its_switch_is_finished_by_the_leader() {
    let mut c = Cluster::start().await;
    let replica = c.replica_of_group_1().await;
    let mut cut = cut_short_promote(&mut c, &replica.addr(), Cut::AfterTheSwitch).await;
    let r = cut.finished(&c).await;
    assert!(
        r.notes
            .iter()
            .any(|n| n.starts_with("settled slots migrating from group 1 to group 2")),
        "{r:?}"
    );
    // Its own slots and slot 7, migrating to group 2: all of 0-511.
    assert_eq!(r.slots, [[0, 511]], "group 1's slots at the switch: {r:?}");
    let stale: Option<String> = cut.promoted.get(&cut.key).await.expect("get");
    assert_eq!(stale, None, "the stale copy was settled away");
    let got: String = cut.p.get(&cut.key).await.expect("GET through the proxy");
    assert_eq!(got, "written at the target");
}

/// A promote cut short before its switch (here: its plan written, its
/// slots held) is finished by releasing them on the master the group still
/// names: nothing is promoted, nothing settled, and every key is served from
/// where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_cut_short_before_its_switch_is_released_on_the_old_master() {
    let mut c = Cluster::start().await;
    let replica = c.replica_of_group_1().await;
    let m = master_of_group_1(&c).await;
    let mut cut = cut_short_promote(&mut c, &replica.addr(), Cut::BeforeTheSwitch).await;
    let r = cut.finished(&c).await;
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("before the switch: the master is unchanged")),
        "{r:?}"
    );
    assert!(!r.notes.iter().any(|n| n.contains("settle")), "{r:?}");
    assert!(r.slots.is_empty(), "no master changed: {r:?}");
    assert_eq!(master_of_group_1(&c).await, m, "the group's master changed");
    assert!(
        info_replication(&replica.addr()).await.contains("role:slave"),
        "the replica was promoted"
    );
    let got: String = cut.p.get(&cut.key).await.expect("GET through the proxy");
    assert_eq!(got, "stale", "the source's copy of a migrating key is served");
}

/// The settle of a resumed promote needs the target's master. Dead, the
/// settle is retried, then given up with a note that says what may be
/// served stale, and the slots are released all the same: held, they would
/// fail every request for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_promote_that_cannot_settle_says_so_and_releases_its_slots() {
    let mut c = Cluster::start().await;
    let replica = c.replica_of_group_1().await;
    let mut cut = cut_short_promote(&mut c, &replica.addr(), Cut::AfterTheSwitch).await;
    c.masters[1].kill();
    let r = cut.finished(&c).await;
    assert!(
        r.notes.iter().any(
            |n| n.starts_with("could not settle slots migrating from group 1 to group 2")
                && n.contains("may be served from here, stale")
        ),
        "{r:?}"
    );
    let stale: Option<String> = cut.promoted.get(&cut.key).await.expect("get");
    assert_eq!(stale.as_deref(), Some("stale"), "nothing was settled");
}
