//! The dashboard's web UI in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium-driver`, through `fantoccini`), against real clusters:
//! ZooKeeper, redis-servers, proxies and a dashboard, as the other tests start
//! them.
//!
//! What the page shows is checked against what ZooKeeper and the servers say
//! (slot map against the slot table, key counts against `DBSIZE`), and the
//! changes are made by clicking, as an operator would: a migration, a promote,
//! a rebalance. Every view must load without an error: the page records
//! uncaught errors, failed loads and `console.error` in `window.rebornErrors`
//! (`dashboard/errors.js`), read here after each step.
//!
//! Without Chromium the tests print a loud notice and pass, except under
//! `CI=true`, where they fail: CI must run them (`scripts/install-deps.sh`
//! installs chromium and chromium-driver). With `UPDATE_SCREENSHOTS=1` they
//! save the screenshots of `docs/dashboard.md` to `docs/img/`.

mod common;
// In a folder of its own: a file directly in tests/ would be a test binary.
#[path = "ui/page.rs"]
mod page;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::{Cluster, client, keys_in, set_all, signal};
use common::{eventually, spawn_guarded};
use fantoccini::Locator;
use page::{Page, SHOW, browser_installed, screenshots_wanted, wait_leader};
use reborn::topo::manager::task;
use reborn::topo::model::{Role, SlotState};
use reborn::topo::{operation, watcher};
use serde_json::{Value, json};

/// `DBSIZE` of the redis-server at `addr`.
async fn dbsize(addr: &str) -> i64 {
    let mut c = common::client(addr).await;
    redis::cmd("DBSIZE").query_async(&mut c).await.expect("DBSIZE")
}

/// The master of `group` as ZooKeeper says.
async fn master_of(cluster: &Cluster, group: u32) -> String {
    common::cluster::master_of(&cluster.store, group)
        .await
        .unwrap_or_default()
}

/// A script: the newest task's row is in `state`.
fn task_row_in(state: &str) -> String {
    format!(
        "const r = document.querySelector('#tasks tr[data-task]'); \
         return !!r && r.dataset.state === '{state}';"
    )
}

const VIEWS: [&str; 7] = [
    "overview",
    "slots",
    "groups",
    "proxies",
    "tasks",
    "rebalance",
    "push",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_view_loads_without_errors_at_1280_and_800_px() {
    let cluster = Cluster::start().await;
    let _replica = cluster.replica_of_group_1().await;
    cluster.proxy().await;
    let dashboard = cluster.dashboard().await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };
    for width in [1280, 800] {
        page.resize(width).await;
        for view in VIEWS {
            page.view(view).await;
            page.assert_no_errors(&format!("{view} at {width} px")).await;
            // Readable: nothing wider than the window (wide tables scroll
            // inside their panel, the slot map folds to 32 columns).
            let overflow = page
                .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
                .await;
            assert!(
                overflow.as_i64().unwrap_or(i64::MAX) <= 0,
                "{view} is wider than {width} px by {overflow}"
            );
            if width == 800 && view == "slots" {
                page.screenshot("slots-800").await;
            }
        }
    }
    // The header says what ZooKeeper says.
    let product = page
        .js("return document.getElementById('product').textContent;")
        .await;
    assert_eq!(product, "mig");
    let zk = page.js("return document.getElementById('zk').textContent;").await;
    assert_eq!(zk, "ZooKeeper connected");
    page.finish("every view").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_shows_where_the_leader_is() {
    let cluster = Cluster::start().await;
    let leader = cluster.dashboard().await;
    wait_leader(&leader).await;
    let standby = cluster.dashboard_with(|cfg| cfg.standby = true).await;
    if !browser_installed() {
        return;
    }
    let page = Page::start(&standby).await;
    page.client
        .goto(&format!("{}/#slots", page.base))
        .await
        .expect("goto");
    page.until(
        "the banner links to the leader",
        &format!(
            "const b = document.getElementById('banner'); \
             return !b.hidden && !!b.querySelector('a[href=\"http://{leader}/\"]');"
        ),
    )
    .await;
    let role = page
        .js("return document.getElementById('leadership').textContent;")
        .await;
    assert_eq!(role, "standby");
    // The 503s of a standby are expected, not page errors.
    page.finish("a standby").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slot_map_and_the_key_counts_are_what_zookeeper_and_the_servers_say() {
    let cluster = Cluster::start().await;
    // Three colours to tell apart: group 1, group 2, and unassigned slots.
    operation::assign_slots(&cluster.store, 1000, 1023, 0)
        .await
        .expect("unassign");
    let proxy = cluster.proxy().await;
    let mut c = client(proxy).await;
    set_all(&mut c, &keys_in(1, "a", 70)).await;
    let in_assigned = |k: &String| reborn::libs::hash::slot_of(k.as_bytes()) < 1000;
    let group_2: Vec<String> = keys_in(2, "b", 40).into_iter().filter(in_assigned).collect();
    set_all(&mut c, &group_2).await;
    let dashboard = cluster.dashboard().await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };

    page.view("slots").await;
    let drawn = page
        .js("const sw = {}; \
             document.querySelectorAll('.legend .swatch[data-group]').forEach(s => \
               sw[s.dataset.group] = getComputedStyle(s).backgroundColor); \
             const cells = [...document.querySelectorAll('.slotmap .slot')].map(c => \
               [Number(c.dataset.slot), Number(c.dataset.group), getComputedStyle(c).backgroundColor]); \
             return {cells, sw};")
        .await;
    let topo = watcher::load(&cluster.store).await.expect("load");
    let cells = drawn["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 1024, "one cell per slot");
    for cell in cells {
        let slot = cell[0].as_u64().expect("slot") as u16;
        let group = cell[1].as_u64().expect("group") as u32;
        let zk_group = topo.slots.get(slot).expect("slot").group;
        assert_eq!(group, zk_group, "slot {slot}'s cell shows the wrong group");
        let legend = &drawn["sw"][group.to_string()];
        assert_eq!(
            &cell[2], legend,
            "slot {slot} is not coloured as group {group} in the legend"
        );
    }
    let colours: std::collections::BTreeSet<String> = ["0", "1", "2"]
        .iter()
        .map(|g| drawn["sw"][*g].to_string())
        .collect();
    assert_eq!(
        colours.len(),
        3,
        "groups 0, 1 and 2 have distinct colours: {colours:?}"
    );
    // Hovering a slot tells its group and master.
    page.click(".slotmap .slot[data-slot='600']").await;
    let master = page
        .js("return document.querySelector('#slot-detail [data-field=master]').textContent;")
        .await;
    assert_eq!(master, cluster.masters[1].addr().as_str());
    page.screenshot("slots").await;

    page.view("groups").await;
    for (g, m) in [(1, &cluster.masters[0]), (2, &cluster.masters[1])] {
        let want = dbsize(&m.addr()).await;
        assert!(want > 0, "group {g} holds keys");
        page.until(
            &format!("group {g} shows DBSIZE {want}"),
            &format!(
                "const e = document.querySelector('section[data-group=\"{g}\"] [data-group-keys]'); \
                      return !!e && e.dataset.groupKeys === '{want}';"
            ),
        )
        .await;
    }
    page.screenshot("groups").await;
    page.finish("slots and groups").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_started_from_the_ui_moves_its_slots() {
    let cluster = Cluster::start().await;
    let proxy = cluster.proxy().await;
    let mut c = client(proxy).await;
    let keys = keys_in(1, "m", 400);
    set_all(&mut c, &keys).await;
    let dashboard = cluster.dashboard().await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };

    page.view("tasks").await;
    page.fill("#start-migration input[name=start]", "0").await;
    page.fill("#start-migration input[name=end]", "31").await;
    let select = page
        .client
        .find(Locator::Css("#start-migration select[name=to]"))
        .await
        .expect("group select");
    select.select_by_value("2").await.expect("choose group 2");
    page.click("#start-migration button").await;
    page.confirm().await;
    page.until(
        "the task is done with a full progress bar",
        "const r = document.querySelector('#tasks tr[data-task]'); \
         return !!r && r.dataset.state === 'done' && \
           r.querySelector('[data-progress]').dataset.progress === '100';",
    )
    .await;
    page.screenshot("tasks").await;

    // ZooKeeper and the page agree: slots 0-31 belong to group 2 now.
    for slot in [0, 17, 31] {
        assert_eq!(cluster.slot_state(slot).await.0, 2, "slot {slot} moved");
    }
    assert_eq!(cluster.slot_state(32).await.0, 1, "slot 32 stayed");
    page.view("slots").await;
    let groups = page
        .js("return [0, 31, 32].map(i => document.querySelector(`.slot[data-slot='${i}']`).dataset.group);")
        .await;
    assert_eq!(groups, json!(["2", "2", "1"]));
    // And the keys went with them (group 2 held none of them before).
    let moved = keys
        .iter()
        .filter(|k| reborn::libs::hash::slot_of(k.as_bytes()) < 32)
        .count() as i64;
    assert!(moved > 0, "some keys were in slots 0-31");
    assert_eq!(dbsize(&cluster.masters[1].addr()).await, moved);

    // The estimate of a task half the source's slots wide, 92% done: 100,000
    // keys over 200 slots at the start, 46,000 of its 50,000 moved, 54,000
    // left on the source (4,000 of them the task's). It read 63% when it
    // spread the source's keys over all its slots.
    let share = page
        .js("return import('/views/tasks.js').then((m) => { \
               const task = { state: 'migrating', from: 1, slots: [...Array(100).keys()], progress: { moved: 46000 } }; \
               const slots = [...Array(200).keys()].map((i) => ({ group: 1, state: i < 100 ? 'migrating' : 'online' })); \
               return m.estimate(task, slots, new Map([[1, 54000]])); });")
        .await;
    assert_eq!(share["left"], json!(4000), "{share}");
    let pct = share["share"].as_f64().unwrap_or_default();
    assert!((0.91..0.93).contains(&pct), "{share}");
    page.finish("a migration").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_is_paused_and_resumed_from_the_ui() {
    let cluster = Cluster::start().await;
    let proxy = cluster.proxy().await;
    let mut c = client(proxy).await;
    // ~100 keys in slots 0-127 at 20 keys/s: several seconds to pause in.
    set_all(&mut c, &keys_in(1, "p", 400)).await;
    let dashboard = cluster
        .dashboard_with(|cfg| {
            cfg.migration.max_keys_per_sec = Some(20);
            cfg.migration.batch_keys = 5;
        })
        .await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };
    let started = reborn::topo::manager::dashboard::client::post(
        &dashboard,
        "/api/migrate",
        &json!({"start": 0, "end": 127, "to": 2}),
    )
    .await
    .expect("migrate");
    assert_eq!(started.status, 201, "{:?}", started.body);

    page.view("tasks").await;
    page.until("the task migrates", &task_row_in("migrating")).await;
    page.click("#tasks tr[data-task] button[data-action=pause]").await;
    eventually("ZooKeeper records the pause", SHOW, || async {
        task::list(&cluster.store).await.is_ok_and(|t| t[0].paused)
    })
    .await;
    page.until(
        "the page shows it paused, with a resume button",
        "const r = document.querySelector('#tasks tr[data-task]'); \
         return !!r && r.textContent.includes('(paused)') && !!r.querySelector('button[data-action=resume]');",
    )
    .await;
    // Meanwhile the slot map marks the migrating slots, and tells where
    // they are going.
    assert_eq!(cluster.slot_state(0).await.1, SlotState::Migrate);
    page.view("slots").await;
    let marked = page
        .js("return [0, 127, 128].map(i => \
               document.querySelector(`.slot[data-slot='${i}']`).classList.contains('migrate'));")
        .await;
    assert_eq!(
        marked,
        json!([true, true, false]),
        "slots 0-127 are marked migrate"
    );
    page.click(".slotmap .slot[data-slot='5']").await;
    let going = page
        .js("return document.querySelector('#slot-detail [data-field=going]').textContent;")
        .await;
    assert_eq!(going, "moving from group 1 to group 2");
    page.view("tasks").await;
    page.click("#tasks tr[data-task] button[data-action=resume]")
        .await;
    page.until("the resumed task is done", &task_row_in("done")).await;
    assert_eq!(cluster.slot_state(127).await.0, 2, "slot 127 moved");
    page.finish("pause and resume").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_and_a_server_are_added_from_the_ui() {
    let cluster = Cluster::start().await;
    let third = common::redis();
    let dashboard = cluster.dashboard().await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };
    page.view("groups").await;
    // A double click: one group, one success, and no "already exists" for
    // the second click of a change that succeeded.
    page.fill("#add-group input[name=group-id]", "3").await;
    page.js("const b = document.querySelector('#add-group button'); b.click(); b.click(); return true;")
        .await;
    page.until(
        "group 3 is listed",
        "return !!document.querySelector('section[data-group=\"3\"]');",
    )
    .await;
    page.until(
        "the change is reported done",
        "return [...document.querySelectorAll('#messages .message')].some(m => m.textContent.includes('group 3'));",
    )
    .await;
    let refused = page
        .js("return [...document.querySelectorAll('#messages .message.error')].map(m => m.textContent);")
        .await;
    assert_eq!(refused, json!([]), "a double click reported a refusal");
    page.fill("#add-server input[name=server-addr]", &third.addr())
        .await;
    page.fill("#add-server input[name=server-group]", "3").await;
    page.click("#add-server button").await;
    let addr = third.addr();
    page.until(
        "the new master is listed as up",
        &format!(
            "const s = document.querySelector('section[data-group=\"3\"]'); \
             return !!s && s.dataset.master === '{addr}' && s.querySelector('td.ok') !== null;"
        ),
    )
    .await;
    assert_eq!(master_of(&cluster, 3).await, addr, "ZooKeeper has it");
    page.finish("adding a group and a server").await;
}

/// What `reborn admin slots-assign` and `failovers` do, from the browser:
/// slots assigned in the Slots view change owner (and only that), and a
/// failover the dashboard ran after a master was killed is listed in the
/// Groups view.
#[tokio::test(flavor = "multi_thread")]
async fn slots_are_assigned_from_the_ui_and_a_failover_is_listed() {
    let (mut cluster, replicas) = Cluster::with_persistent_replicas().await;
    let _proxy = cluster.proxy().await;
    let dashboard = cluster.dashboard().await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };
    assert_eq!(cluster.slot_state(1000).await, (2, SlotState::Online));
    page.view("slots").await;
    page.fill("#assign-slots input[name=assign-start]", "1000").await;
    page.fill("#assign-slots input[name=assign-end]", "1023").await;
    page.fill("#assign-slots input[name=assign-group]", "1").await;
    page.click("#assign-slots button").await;
    page.confirm().await;
    page.until(
        "the map shows slots 1000-1023 in group 1",
        "return [1000, 1023].every(i => document.querySelector(`.slot[data-slot='${i}']`).dataset.group === '1');",
    )
    .await;
    for slot in [1000, 1023] {
        assert_eq!(
            cluster.slot_state(slot).await,
            (1, SlotState::Online),
            "slot {slot}"
        );
    }
    assert_eq!(
        cluster.slot_state(999).await,
        (2, SlotState::Online),
        "slot 999 stayed"
    );

    page.view("groups").await;
    page.until(
        "the empty failover history says so",
        "return document.querySelector('#failovers tbody').textContent.includes('No automatic failover');",
    )
    .await;
    let old = cluster.masters[0].addr();
    cluster.masters[0].kill();
    page.until(
        "the failover is listed",
        "return !!document.querySelector('#failovers tr[data-failover]');",
    )
    .await;
    let row = page.rows("#failovers tr[data-failover]").await[0].clone();
    assert_eq!(
        (&row[2], &row[3], &row[4], &row[7]),
        (
            &json!("1"),
            &json!(old),
            &json!(replicas[0].addr()),
            &json!("promoted")
        ),
        "{row}"
    );
    page.finish("assigning slots and a failover").await;
}

/// Submits the Groups view's "add group" form for group `id`.
async fn add_group(page: &Page, id: &str) {
    page.fill("#add-group input[name=group-id]", id).await;
    page.click("#add-group button").await;
}

/// Waits for the token prompt, types `token` and confirms, or cancels
/// without one.
async fn answer_token(page: &Page, token: Option<&str>) {
    page.until(
        "the token prompt opens",
        "return document.getElementById('token-dialog').open;",
    )
    .await;
    match token {
        Some(t) => {
            page.fill("#token-input", t).await;
            page.click("#token-ok").await;
        }
        None => page.click("#token-dialog button[value=cancel]").await,
    }
    page.until(
        "the token prompt closes",
        "return !document.getElementById('token-dialog').open;",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_without_the_token_is_refused_and_goes_through_with_it() {
    let cluster = Cluster::start().await;
    let third = common::redis();
    let dashboard = cluster
        .dashboard_with(|cfg| cfg.auth.token = "s3cret".into())
        .await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };
    // Reads stay open: the view loads without a token.
    page.view("groups").await;
    let group_3 = || async {
        let topo = watcher::load(&cluster.store).await.expect("load");
        topo.groups.contains_key(&3)
    };
    let refusals = |n: usize| format!("return document.querySelectorAll('.message.error').length === {n};");

    // No token: refused, nothing changes.
    add_group(&page, "3").await;
    answer_token(&page, None).await;
    page.until("the refusal is shown", &refusals(1)).await;
    // A wrong token: refused too, and forgotten.
    add_group(&page, "3").await;
    answer_token(&page, Some("wrong")).await;
    page.until("the second refusal is shown", &refusals(2)).await;
    assert!(!group_3().await, "no group was created without the right token");
    let kept = page.js("return sessionStorage.getItem('reborn.token');").await;
    assert_eq!(kept, Value::Null, "a refused token is not kept");

    // The right token: the change goes through, and the token is kept for
    // the tab, so the next change does not ask again. The prompt says the
    // last one was wrong (that refusal went to the footer, behind it).
    add_group(&page, "3").await;
    page.until(
        "the prompt says the last token was wrong",
        "return document.getElementById('token-dialog').open && \
                document.getElementById('token-reason').textContent.includes('was wrong');",
    )
    .await;
    answer_token(&page, Some("s3cret")).await;
    eventually("group 3 is created", SHOW, group_3).await;
    page.fill("#add-server input[name=server-addr]", &third.addr())
        .await;
    page.fill("#add-server input[name=server-group]", "3").await;
    page.click("#add-server button").await;
    let addr = third.addr();
    eventually("the server is added without a second prompt", SHOW, || {
        let (cluster, addr) = (&cluster, addr.clone());
        async move { master_of(cluster, 3).await == addr }
    })
    .await;
    let asked = page
        .js("return document.getElementById('token-dialog').open;")
        .await;
    assert_eq!(asked, json!(false));
    page.finish("changes with a token").await;
}

/// With `read_auth`, the page asks for the token. Cancelling used to be
/// undone within a second: the next refresh's refused read opened the prompt
/// again. Now it stays closed, the footer says why, and a change asks again.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_the_token_prompt_closes_it_until_a_change() {
    if !page::browser_installed() {
        return;
    }
    let cluster = Cluster::start().await;
    let dashboard = cluster
        .dashboard_with(|cfg| {
            cfg.auth.token = "s3cret".into();
            cfg.auth.read_auth = true;
        })
        .await;
    let api = reborn::topo::manager::dashboard::client::DashboardClient::new(&dashboard)
        .with_token(Some("s3cret".into()));
    eventually("the dashboard leads", SHOW, async || {
        api.get("/api/dashboard")
            .await
            .is_ok_and(|r| r.body["role"] == "leader")
    })
    .await;
    let page = Page::start(&dashboard).await;
    page.client
        .goto(&format!("http://{dashboard}/#groups"))
        .await
        .expect("open the page");
    answer_token(&page, None).await;
    // Three seconds of refreshes (one a second): the prompt must not open.
    let reopened = page
        .js("const d = document.getElementById('token-dialog'); \
             return new Promise((done) => { \
               let opened = false; \
               const seen = new MutationObserver(() => { opened = opened || d.open; }); \
               seen.observe(d, { attributes: true }); \
               setTimeout(() => { seen.disconnect(); done(opened || d.open); }, 3000); });")
        .await;
    assert_eq!(reopened, json!(false), "the prompt opened again by itself");
    let status = page
        .js("return document.getElementById('status').textContent;")
        .await;
    assert!(status.as_str().is_some_and(|s| s.contains("token")), "{status}");
    // A change, the operator's own click, asks again.
    add_group(&page, "3").await;
    answer_token(&page, Some("s3cret")).await;
    eventually("group 3 is created", SHOW, async || {
        watcher::load(&cluster.store)
            .await
            .is_ok_and(|t| t.groups.contains_key(&3))
    })
    .await;
    // The refused reads were logged; nothing else went wrong.
    let errors = page.errors().await;
    assert!(errors.iter().all(|e| e.contains("refresh failed")), "{errors:?}");
    page.js("window.rebornErrors = []; return true;").await;
    page.finish("cancelling the token prompt").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promote_from_the_ui_changes_the_master() {
    let cluster = Cluster::start().await;
    let replica = cluster.replica_of_group_1().await;
    common::wait_replica_streaming(&cluster.masters[0].addr()).await;
    cluster.proxy().await;
    let dashboard = cluster.dashboard().await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };

    page.view("groups").await;
    let button = format!(
        "section[data-group='1'] tr[data-addr='{}'] button[data-action=promote]",
        replica.addr()
    );
    page.click(&button).await;
    page.confirm().await;
    let addr = replica.addr();
    eventually("ZooKeeper names the replica master", SHOW, || {
        let (cluster, addr) = (&cluster, addr.clone());
        async move { master_of(cluster, 1).await == addr }
    })
    .await;
    page.until(
        "the page shows the new master",
        &format!("const s = document.querySelector('section[data-group=\"1\"]'); return !!s && s.dataset.master === '{addr}';"),
    )
    .await;
    page.finish("a promote").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_moves_while_redis_benchmark_runs() {
    let cluster = Cluster::start().await;
    let proxy = cluster.proxy().await;
    let dashboard = cluster.dashboard().await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };
    page.view("overview").await;
    let idle = page
        .js("return Number(document.getElementById('chart').dataset.maxOps);")
        .await;
    assert_eq!(idle, json!(0), "no traffic yet");

    let _load = spawn_guarded(
        Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &proxy.port().to_string()])
            .args(["-c", "4", "-n", "100000000", "-t", "set,get", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    page.until(
        "the chart shows ops/s",
        "const c = document.getElementById('chart'); \
         return Number(c.dataset.lastOps) > 100 && Number(c.dataset.lastP99) > 0 && \
           Number(c.dataset.points) > 2;",
    )
    .await;
    if screenshots_wanted() {
        // A picture worth keeping: some history under load.
        page.until(
            "twenty seconds of load are drawn",
            "return Number(document.getElementById('chart').dataset.points) > 20;",
        )
        .await;
    }
    page.screenshot("overview").await;
    let ops = page
        .js("return Number(document.querySelector('[data-card=ops]').textContent.replace(/,/g, ''));")
        .await;
    assert!(ops.as_u64().unwrap_or(0) > 0, "the ops/s card moves too: {ops}");
    page.finish("load").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_that_stops_answering_is_marked() {
    let cluster = Cluster::start().await;
    cluster.proxy().await;
    // A long session: the stopped proxy stays registered, just silent.
    let (child, id, _dir) = cluster.proxy_process(Duration::from_secs(30)).await;
    let dashboard = cluster.dashboard().await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };
    page.view("proxies").await;
    // Waits until proxy `id`'s row exists and `holds` (a JS expression of `r`).
    let row_until = async |what: &str, id: &str, holds: &str| {
        let row = format!("#proxies tr[data-proxy='{id}']");
        let script = format!("const r = document.querySelector(\"{row}\"); return !!r && {holds};");
        page.until(what, &script).await;
    };
    let answers = "r.dataset.answering === 'true'";
    row_until("the proxy answers", &id, answers).await;
    signal(child.id(), "-STOP");
    row_until(
        "the stopped proxy is marked silent",
        &id,
        "r.dataset.answering === 'false' && r.textContent.includes('silent for')",
    )
    .await;
    page.screenshot("proxies").await;
    signal(child.id(), "-CONT");
    let answering = page
        .js("return [...document.querySelectorAll('#proxies tr[data-proxy]')].filter(r => r.dataset.answering === 'true').length;")
        .await;
    assert_eq!(answering, json!(1), "the in-process proxy is still answering");

    // A proxy that crashes loses its ZooKeeper node a session later: it is
    // listed as gone, not dropped from the table as if it never ran.
    let (crashed, crashed_id, _dir2) = cluster.proxy_process(Duration::from_secs(2)).await;
    row_until("the second proxy answers", &crashed_id, answers).await;
    signal(crashed.id(), "-KILL");
    row_until(
        "the crashed proxy is listed as gone",
        &crashed_id,
        "r.dataset.gone === 'true' && r.textContent.includes('gone')",
    )
    .await;
    page.view("overview").await;
    page.until(
        "the overview names it",
        "return document.body.textContent.includes('(1 gone)');",
    )
    .await;
    page.finish("a silent proxy").await;
}

/// A ZooKeeper that stalls makes the reads that go to it hang. The page used
/// to wait on them with no bound: frozen for the whole stall, the header still
/// green, the last figures shown as current. Now the view is dimmed and the
/// footer says its data is old, and it comes back by itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_zookeeper_dims_the_view_instead_of_freezing_the_page() {
    let zk = tokio::task::block_in_place(|| common::ensemble(1));
    let pid = zk.members()[0].pid().expect("ZooKeeper runs");
    let cluster = Cluster::start_on(zk.connect_string()).await;
    let dashboard = cluster.dashboard().await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };
    page.view("groups").await;
    signal(pid, "-STOP");
    page.until(
        "the view is marked old while ZooKeeper stalls",
        "return document.getElementById('view').classList.contains('stale') && \
                document.getElementById('status').textContent.includes('showing data of');",
    )
    .await;
    signal(pid, "-CONT");
    page.until(
        "the view is fresh again",
        "return !document.getElementById('view').classList.contains('stale') && \
                document.getElementById('status').textContent.startsWith('updated');",
    )
    .await;
    // The failed refreshes were logged; nothing else went wrong.
    let errors = page.errors().await;
    assert!(errors.iter().all(|e| e.contains("refresh failed")), "{errors:?}");
    page.js("window.rebornErrors = []; return true;").await;
    page.finish("a ZooKeeper stall").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_dry_run_is_drawn_on_the_slot_map_then_applied() {
    let cluster = Cluster::start().await;
    let third = common::redis();
    operation::create_group(&cluster.store, 3).await.expect("group 3");
    operation::add_server(&cluster.store, 3, &third.addr(), Role::Master)
        .await
        .expect("master of group 3");
    let dashboard = cluster.dashboard().await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };
    page.view("rebalance").await;
    page.click("#dry-run").await;
    page.until(
        "the plan is drawn",
        "return document.querySelectorAll('#plan-moves li').length > 0;",
    )
    .await;
    // The diff on the map is the dashboard's own plan.
    let plan =
        reborn::topo::manager::dashboard::client::get(&dashboard, "/api/rebalance/plan?weights=1:1,2:1,3:1")
            .await
            .expect("plan")
            .body;
    let mut want = Vec::new();
    for m in plan["moves"].as_array().expect("moves") {
        for slot in m["start"].as_u64().unwrap_or(0)..=m["end"].as_u64().unwrap_or(0) {
            want.push((slot, m["to"].to_string()));
        }
    }
    want.sort();
    assert!(!want.is_empty(), "group 3 gets slots");
    let want: Vec<Value> = want.into_iter().map(|(slot, to)| json!([slot, to])).collect();
    let drawn = page
        .js("return [...document.querySelectorAll('.slot.moving')].map(c => [Number(c.dataset.slot), c.dataset.to]);")
        .await;
    assert_eq!(drawn, Value::Array(want), "the moving cells are the plan's");
    page.screenshot("rebalance").await;

    page.click("#apply-plan").await;
    page.confirm().await;
    eventually("the plan's tasks are queued", SHOW, || async {
        task::list(&cluster.store)
            .await
            .is_ok_and(|t| !t.is_empty() && t.iter().all(|t| t.to == 3))
    })
    .await;
    page.finish("a rebalance").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_push_view_lists_the_registered_push_roles() {
    let up = common::im::LogicUp::start(|_| {}).await;
    up.register_comet(reborn::im::discovery::Instance {
        id: "comet-ui-1".into(),
        conn_count: 42,
        ip_count: 7,
        weight: 10,
        ..Default::default()
    })
    .await;
    // Two streams of the queue, as logic writes them, with job's group on
    // the first: 3 entries, none delivered yet.
    assert_eq!(
        reborn::topo::manager::push_queue::stream_key(1),
        reborn::im::queue::stream_key(1),
        "the dashboard reads the queue's layout"
    );
    let mut r = up.resp().await;
    for (stream, n) in [(0, 3), (1, 1)] {
        let key = reborn::im::queue::stream_key(stream);
        for _ in 0..n {
            r.call(&["XADD", key.as_str(), "*", reborn::im::queue::FIELD, "x"])
                .await
                .expect("XADD");
        }
    }
    let first = reborn::im::queue::stream_key(0);
    r.call(&["XGROUP", "CREATE", first.as_str(), reborn::im::queue::GROUP, "0"])
        .await
        .expect("XGROUP CREATE");
    // The comet's room counts, as logic stores them: two shards of ol_,
    // reported now (logic deletes stale reports).
    let ol = reborn::im::logic::mapping::online_key("comet-ui-1");
    assert_eq!(ol, reborn::topo::manager::push_rooms::online_key("comet-ui-1"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for (shard, rooms) in [
        ("3", r#"{"live://1000":30,"live://7":3}"#),
        ("9", r#"{"chat://5":12}"#),
    ] {
        let json = format!(r#"{{"server":"comet-ui-1","room_count":{rooms},"updated":{now}}}"#);
        r.call(&["HSET", ol.as_str(), shard, json.as_str()])
            .await
            .expect("HSET ol_");
    }
    let dashboard = up.cluster.dashboard().await;
    let Some(page) = Page::open(&dashboard).await else {
        return;
    };
    page.view("push").await;
    let queue = page.rows("#queue tr[data-stream]").await;
    assert_eq!(
        queue,
        json!([
            ["goim-push-0", "3", "3", "0"],
            ["goim-push-1", "1", "unknown", "0"]
        ]),
        "each stream's length, lag and pending"
    );
    page.until(
        "the comet and the logic are listed",
        "return !!document.querySelector('#comets tr[data-comet=\"comet-ui-1\"]') && \
                document.querySelectorAll('#logics tr[data-logic]').length === 1;",
    )
    .await;
    let logic = page
        .js("return document.querySelector('#logics tr[data-logic]').dataset.logic;")
        .await;
    assert_eq!(logic, up.logic().id());
    let conns = page
        .js("return document.querySelector('#comets tr[data-comet=\"comet-ui-1\"]').children[3].textContent;")
        .await;
    assert_eq!(conns, "42");
    page.until(
        "the comet's rooms are listed",
        "return document.querySelectorAll('#rooms tr[data-room]').length === 3;",
    )
    .await;
    let rooms = page.rows("#rooms tr[data-room]").await;
    assert_eq!(
        rooms,
        json!([["live://1000", "30"], ["chat://5", "12"], ["live://7", "3"]]),
        "the top rooms, busiest first"
    );
    page.screenshot("push").await;
    page.finish("the push view").await;
}
