//! SCAN through `reborn proxy` over a real two-group cluster (group 1: slots
//! 0-511, group 2: 512-1023): every key exactly once, with COUNT, MATCH and
//! TYPE, the cursor's edge cases, and a slot migrating into a group that owns
//! no other slot.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::cluster::{Cluster, client, keys_in, set_all};
use reborn::libs::hash::slot_of;
use reborn::topo::action::begin_migration;
use reborn::topo::model::Role;
use reborn::topo::operation;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

type Conn = MultiplexedConnection;

async fn dbsize(c: &mut Conn) -> i64 {
    redis::cmd("DBSIZE").query_async(c).await.expect("dbsize")
}

/// Every key of a full SCAN through the proxy with these options, in order
/// (duplicates kept), and how many calls it took.
async fn scan_all(p: &mut Conn, opts: &[&str]) -> (Vec<String>, usize) {
    let mut cursor = "0".to_string();
    let mut keys = Vec::new();
    let mut calls = 0;
    loop {
        let (next, mut batch): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg(opts)
            .query_async(p)
            .await
            .expect("scan");
        calls += 1;
        keys.append(&mut batch);
        if next == "0" {
            return (keys, calls);
        }
        assert!(calls < 10_000, "SCAN never finished");
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_returns_every_key_exactly_once_across_groups() {
    let c = Cluster::start().await;
    let mut p = client(c.proxy().await).await;
    let mut g1 = common::client(&c.masters[0].addr()).await;
    let mut g2 = common::client(&c.masters[1].addr()).await;
    // Group 1 gets far more keys than one COUNT, group 2 a few.
    let strings: Vec<String> = [
        keys_in(1, "s:a:", 150),
        keys_in(2, "s:a:", 5),
        keys_in(2, "s:b:", 40),
    ]
    .concat();
    set_all(&mut p, &strings).await;
    let hashes: Vec<String> = [keys_in(1, "h:", 4), keys_in(2, "h:", 6)].concat();
    for h in &hashes {
        let _: () = p.hset(h, "f", "v").await.expect("hset");
    }
    assert!(dbsize(&mut g1).await > 100 && dbsize(&mut g2).await > 40);
    let everything: BTreeSet<String> = strings.iter().chain(&hashes).cloned().collect();

    let exactly_once = |got: &[String], want: &BTreeSet<String>, what: &str| {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for k in got {
            *count.entry(k).or_default() += 1;
        }
        let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{what}: returned more than once: {twice:?}");
        let got: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(&got, want, "{what}");
    };
    let (got, calls) = scan_all(&mut p, &["COUNT", "10"]).await;
    exactly_once(&got, &everything, "SCAN COUNT 10");
    assert!(calls > 10, "group 1 alone needs several calls, took {calls}");
    let (got, _) = scan_all(&mut p, &[]).await;
    exactly_once(&got, &everything, "SCAN");
    let (got, _) = scan_all(&mut p, &["MATCH", "s:a:*", "COUNT", "7"]).await;
    let want: BTreeSet<String> = strings
        .iter()
        .filter(|k| k.starts_with("s:a:"))
        .cloned()
        .collect();
    exactly_once(&got, &want, "SCAN MATCH");
    let (got, _) = scan_all(&mut p, &["TYPE", "hash", "COUNT", "20"]).await;
    exactly_once(&got, &hashes.iter().cloned().collect(), "SCAN TYPE hash");

    // A malformed cursor gets Redis's error; a cursor naming a group that does
    // not exist (id 3) moves on past it, which here means done.
    let e = redis::cmd("SCAN")
        .arg("nope")
        .query_async::<redis::Value>(&mut p)
        .await
        .expect_err("bad cursor");
    assert!(e.to_string().contains("invalid cursor"), "{e}");
    let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
        .arg(5u64 << 14 | 3)
        .query_async(&mut p)
        .await
        .expect("scan");
    assert_eq!((next.as_str(), keys.len()), ("0", 0));
    // HSCAN still routes by key.
    let (next, fields): (String, Vec<String>) = redis::cmd("HSCAN")
        .arg(&hashes[9])
        .arg(0)
        .query_async(&mut p)
        .await
        .expect("hscan");
    assert_eq!(
        (next.as_str(), fields),
        ("0", vec!["f".to_string(), "v".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_slots_target_group_is_scanned_and_counted() {
    let c = Cluster::start().await;
    let addr = c.proxy().await;
    let mut p = client(addr).await;
    // Group 3 owns no slot: only a migration into it makes it part of the cluster.
    let g3_server = common::redis();
    operation::create_group(&c.store, 3).await.expect("group 3");
    operation::add_server(&c.store, 3, &g3_server.addr(), Role::Master)
        .await
        .expect("master 3");
    let tagged: Vec<String> = (0..20).map(|i| format!("{{mig}}k{i}")).collect();
    let slot = slot_of(b"mig");
    assert!(slot < 512, "{{mig}} is in group 1");
    let others = keys_in(2, "o", 10);
    set_all(&mut p, &[tagged.clone(), others.clone()].concat()).await;
    begin_migration(&c.store, &[slot], 3, Duration::from_secs(5))
        .await
        .expect("begin migration");
    // Half the slot's keys move to group 3, as the background migrator would.
    let mut g1 = common::client(&c.masters[0].addr()).await;
    let _: () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(g3_server.port())
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(&tagged[..10])
        .query_async(&mut g1)
        .await
        .expect("migrate");
    let want: BTreeSet<String> = tagged.iter().chain(&others).cloned().collect();
    // The proxy follows the migration through its watch.
    common::eventually(
        "SCAN sees both halves of the slot",
        Duration::from_secs(10),
        || async {
            let (got, _) = scan_all(&mut p.clone(), &["COUNT", "5"]).await;
            got.len() == want.len() && got.into_iter().collect::<BTreeSet<_>>() == want
        },
    )
    .await;
    assert_eq!(dbsize(&mut p).await, 30);
}
