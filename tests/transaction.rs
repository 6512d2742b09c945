//! Transactions through the proxy against real processes (ZooKeeper, two
//! redis-server groups, an in-process proxy): `MULTI`/`EXEC`/`DISCARD`,
//! `WATCH` conflicts, Redis's queueing errors and `EXECABORT`, `CROSSSLOT`
//! inside a transaction (nothing of it runs: a retry applies it exactly once),
//! pipelined transactions, and a transaction open while its slot migrates
//! (aborted with `TRYAGAIN`, nothing written, and a retry runs on the target).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::cluster::{Cluster, client};
use common::{RawConn, Resp, cmd};
use reborn::libs::hash::slot_of;
use reborn::topo::action::{begin_migration, finish_migration};
use redis::AsyncCommands;

/// A hashtag whose slot belongs to group 1 (`low`) or group 2, distinct per
/// `prefix`.
fn tag(prefix: &str, low: bool) -> (String, u16) {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .map(|t| {
            let slot = slot_of(t.as_bytes());
            (t, slot)
        })
        .find(|(_, slot)| (*slot < 512) == low)
        .expect("some tag hashes there")
}

fn ok() -> Resp {
    Resp::Simple("OK".into())
}

fn queued() -> Resp {
    Resp::Simple("QUEUED".into())
}

fn error_starting(reply: &Resp, prefix: &str) -> bool {
    matches!(reply, Resp::Error(e) if e.starts_with(prefix))
}

async fn raw(proxy: SocketAddr) -> RawConn {
    RawConn::connect(&proxy.to_string()).await
}

/// A connection straight to a redis-server (with the long response timeout:
/// the machine may be busy).
async fn direct(addr: &str) -> redis::aio::MultiplexedConnection {
    client(addr.parse().expect("a socket address")).await
}

/// `GET key` straight on a master.
async fn get_direct(master: &str, key: &str) -> Option<String> {
    let mut c = direct(master).await;
    c.get(key).await.expect("direct get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_runs_queued_commands_whole_on_the_slots_master() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (t, _) = tag("a", false);
    let (k, other) = (format!("{{{t}}}n"), format!("{{{t}}}s"));
    let mut p = raw(proxy).await;
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["INCR", &k]).await, queued());
    assert_eq!(p.call(&["INCR", &k]).await, queued());
    // Commands the proxy answers itself keep their places in the array.
    assert_eq!(p.call(&["PING"]).await, queued());
    assert_eq!(p.call(&["SET", &other, "v"]).await, queued());
    assert_eq!(p.call(&["ECHO", "hi"]).await, queued());
    // A blocking command runs without blocking inside a transaction, as in Redis.
    assert_eq!(p.call(&["BLPOP", &format!("{{{t}}}empty"), "0"]).await, queued());
    // Nothing ran before EXEC.
    assert_eq!(get_direct(&c.masters[1].addr(), &k).await, None);
    assert_eq!(
        p.call(&["EXEC"]).await,
        Resp::Array(Some(vec![
            Resp::Int(1),
            Resp::Int(2),
            Resp::Simple("PONG".into()),
            ok(),
            Resp::bulk("hi"),
            Resp::Array(None),
        ]))
    );
    assert_eq!(get_direct(&c.masters[1].addr(), &k).await.as_deref(), Some("2"));
    assert_eq!(
        get_direct(&c.masters[1].addr(), &other).await.as_deref(),
        Some("v")
    );
    // EXEC with nothing queued, and with only proxy answers.
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["EXEC"]).await, Resp::Array(Some(vec![])));
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["PING", "x"]).await, queued());
    assert_eq!(p.call(&["EXEC"]).await, Resp::Array(Some(vec![Resp::bulk("x")])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_while_queueing_abort_the_transaction_as_in_redis() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (t, _) = tag("e", true);
    let k = format!("{{{t}}}k");
    let mut p = raw(proxy).await;
    assert_eq!(
        p.call(&["EXEC"]).await,
        Resp::Error("ERR EXEC without MULTI".into())
    );
    assert_eq!(
        p.call(&["DISCARD"]).await,
        Resp::Error("ERR DISCARD without MULTI".into())
    );

    // Nested MULTI and WATCH inside MULTI are refused without aborting.
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(
        p.call(&["MULTI"]).await,
        Resp::Error("ERR MULTI calls can not be nested".into())
    );
    assert_eq!(
        p.call(&["WATCH", &k]).await,
        Resp::Error("ERR WATCH inside MULTI is not allowed".into())
    );
    assert_eq!(p.call(&["SET", &k, "1"]).await, queued());
    assert_eq!(p.call(&["EXEC"]).await, Resp::Array(Some(vec![ok()])));

    // An unknown command, a wrong arity, a command without a key to route by,
    // a SORT pattern that may form keys of other slots (Redis would queue it
    // and read those keys as missing): each one alone makes EXEC answer
    // EXECABORT, and nothing runs.
    let execabort = Resp::Error("EXECABORT Transaction discarded because of previous errors.".into());
    let bad: [&[&str]; 5] = [
        &["NOSUCHCMD", "x"],
        &["GET"],
        &["KEYS", "*"],
        &["EVAL", "return 1", "0"],
        &["SORT", k.as_str(), "BY", "w_*"],
    ];
    for bad in bad {
        assert_eq!(p.call(&["MULTI"]).await, ok());
        assert_eq!(p.call(&["INCR", &k]).await, queued());
        let reply = p.call(bad).await;
        assert!(error_starting(&reply, "ERR"), "{bad:?}: {reply:?}");
        assert_eq!(p.call(&["INCR", &k]).await, queued());
        assert_eq!(p.call(&["EXEC"]).await, execabort, "{bad:?}");
    }
    assert_eq!(get_direct(&c.masters[0].addr(), &k).await.as_deref(), Some("1"));

    // DISCARD drops the queue.
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["SET", &k, "discarded"]).await, queued());
    assert_eq!(p.call(&["DISCARD"]).await, ok());
    assert_eq!(
        p.call(&["EXEC"]).await,
        Resp::Error("ERR EXEC without MULTI".into())
    );
    assert_eq!(get_direct(&c.masters[0].addr(), &k).await.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossslot_transaction_runs_nothing_and_its_retry_applies_once() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (t1, _) = tag("x", true);
    let (t2, _) = tag("y", false);
    let (a, b) = (format!("{{{t1}}}c"), format!("{{{t2}}}c"));
    let mut p = raw(proxy).await;
    let crossslot = Resp::Error("CROSSSLOT Keys in request don't hash to the same slot".into());
    // The second key is in another slot (and group): CROSSSLOT, then EXECABORT.
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["INCR", &a]).await, queued());
    assert_eq!(p.call(&["INCR", &b]).await, crossslot);
    assert_eq!(p.call(&["INCR", &a]).await, queued());
    let reply = p.call(&["EXEC"]).await;
    assert!(error_starting(&reply, "EXECABORT"), "{reply:?}");
    // Within one command too.
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["MSET", &a, "1", &b, "1"]).await, crossslot);
    assert!(error_starting(&p.call(&["EXEC"]).await, "EXECABORT"));
    // Nothing ran on either master.
    assert_eq!(get_direct(&c.masters[0].addr(), &a).await, None);
    assert_eq!(get_direct(&c.masters[1].addr(), &b).await, None);

    // The client retries with keys of one slot: applied exactly once.
    let b = format!("{{{t1}}}d");
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["INCR", &a]).await, queued());
    assert_eq!(p.call(&["INCR", &b]).await, queued());
    assert_eq!(
        p.call(&["EXEC"]).await,
        Resp::Array(Some(vec![Resp::Int(1), Resp::Int(1)]))
    );
    assert_eq!(get_direct(&c.masters[0].addr(), &a).await.as_deref(), Some("1"));
    assert_eq!(get_direct(&c.masters[0].addr(), &b).await.as_deref(), Some("1"));

    // A WATCH decides the slot too.
    assert_eq!(p.call(&["WATCH", &a]).await, ok());
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["INCR", &format!("{{{t2}}}c")]).await, crossslot);
    assert!(error_starting(&p.call(&["EXEC"]).await, "EXECABORT"));
    assert_eq!(
        get_direct(&c.masters[1].addr(), &format!("{{{t2}}}c")).await,
        None
    );
    assert_eq!(p.call(&["WATCH", &a, &format!("{{{t2}}}c")]).await, crossslot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_conflicts_work_as_on_one_redis() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (t, _) = tag("w", true);
    let k = format!("{{{t}}}k");
    let mut p = raw(proxy).await;
    let mut other = client(proxy).await;
    let _: () = other.set(&k, "0").await.expect("set");

    // Another client writes the watched key: EXEC returns nil, nothing applied.
    assert_eq!(p.call(&["WATCH", &k]).await, ok());
    let _: () = other.set(&k, "theirs").await.expect("set");
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["SET", &k, "mine"]).await, queued());
    assert_eq!(p.call(&["EXEC"]).await, Resp::Array(None));
    assert_eq!(
        get_direct(&c.masters[0].addr(), &k).await.as_deref(),
        Some("theirs")
    );

    // No conflict: applied. The watch ended with EXEC, so a later write does
    // not fail the next transaction.
    assert_eq!(p.call(&["WATCH", &k]).await, ok());
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["SET", &k, "mine"]).await, queued());
    assert_eq!(p.call(&["EXEC"]).await, Resp::Array(Some(vec![ok()])));
    let _: () = other.set(&k, "later").await.expect("set");
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["GET", &k]).await, queued());
    assert_eq!(
        p.call(&["EXEC"]).await,
        Resp::Array(Some(vec![Resp::bulk("later")]))
    );

    // The watching client's own write counts, as in Redis.
    assert_eq!(p.call(&["WATCH", &k]).await, ok());
    assert_eq!(p.call(&["SET", &k, "own"]).await, ok());
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["SET", &k, "txn"]).await, queued());
    assert_eq!(p.call(&["EXEC"]).await, Resp::Array(None));
    assert_eq!(get_direct(&c.masters[0].addr(), &k).await.as_deref(), Some("own"));

    // UNWATCH and DISCARD forget the watch.
    for forget in ["UNWATCH", "DISCARD"] {
        assert_eq!(p.call(&["WATCH", &k]).await, ok());
        if forget == "DISCARD" {
            assert_eq!(p.call(&["MULTI"]).await, ok());
        }
        assert_eq!(p.call(&[forget]).await, ok());
        let _: () = other.set(&k, forget).await.expect("set");
        assert_eq!(p.call(&["MULTI"]).await, ok());
        assert_eq!(p.call(&["SET", &k, "after"]).await, queued());
        assert_eq!(p.call(&["EXEC"]).await, Resp::Array(Some(vec![ok()])), "{forget}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_transaction_keeps_its_place_among_the_clients_requests() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (t, _) = tag("p", false);
    let k = format!("{{{t}}}k");
    let mut p = raw(proxy).await;
    // One write: a plain SET before (must run before the EXEC), the
    // transaction, and reads after (must see it).
    let mut burst = Vec::new();
    for args in [
        vec!["SET", k.as_str(), "10"],
        vec!["MULTI"],
        vec!["INCR", k.as_str()],
        vec!["INCRBY", k.as_str(), "5"],
        vec!["EXEC"],
        vec!["GET", k.as_str()],
        vec!["INCR", k.as_str()],
    ] {
        burst.extend(cmd(&args));
    }
    p.send(&burst).await;
    assert_eq!(
        p.read_replies(7).await,
        vec![
            ok(),
            ok(),
            queued(),
            queued(),
            Resp::Array(Some(vec![Resp::Int(11), Resp::Int(16)])),
            Resp::bulk("16"),
            Resp::Int(17),
        ]
    );

    // The redis crate's atomic pipeline (MULTI … EXEC in one write).
    let mut conn = client(proxy).await;
    let (a, b): (i64, String) = redis::pipe()
        .atomic()
        .incr(&k, 3)
        .set(format!("{{{t}}}s"), "x")
        .ignore()
        .get(format!("{{{t}}}s"))
        .query_async(&mut conn)
        .await
        .expect("atomic pipeline");
    assert_eq!((a, b.as_str()), (20, "x"));
}

/// Runs `MULTI; INCR a; INCR b; EXEC` on `conn`, one command at a time, and
/// returns EXEC's reply.
async fn incr_both_slowly(conn: &mut RawConn, a: &str, b: &str) -> Resp {
    assert_eq!(conn.call(&["MULTI"]).await, ok());
    assert_eq!(conn.call(&["INCR", a]).await, queued());
    assert_eq!(conn.call(&["INCR", b]).await, queued());
    conn.call(&["EXEC"]).await
}

/// Runs `MULTI; INCR a; INCR b; EXEC` on `conn` in one write and returns
/// EXEC's reply.
async fn incr_both(conn: &mut RawConn, a: &str, b: &str) -> Resp {
    let mut burst = cmd(&["MULTI"]);
    burst.extend(cmd(&["INCR", a]));
    burst.extend(cmd(&["INCR", b]));
    burst.extend(cmd(&["EXEC"]));
    conn.send(&burst).await;
    let replies = conn.read_replies(4).await;
    assert_eq!(replies[..3], [ok(), queued(), queued()]);
    replies[3].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_across_a_migration_aborts_retryably_and_writes_nothing() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (t, slot) = tag("m", true);
    let (a, b) = (format!("{{{t}}}a"), format!("{{{t}}}b"));
    let source = c.masters[0].addr();
    let target = c.masters[1].addr();
    let mut p = raw(proxy).await;
    let mut watcher = raw(proxy).await;
    let mut plain = client(proxy).await;
    let _: () = plain.set(&a, "5").await.expect("set");

    // One transaction queued, another watching, when the slot starts to move.
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["INCR", &a]).await, queued());
    assert_eq!(p.call(&["INCR", &b]).await, queued());
    assert_eq!(watcher.call(&["WATCH", &a]).await, ok());
    begin_migration(&c.store, &[slot], 2, Duration::from_secs(5))
        .await
        .expect("switch");
    assert_eq!(watcher.call(&["MULTI"]).await, ok());
    assert_eq!(watcher.call(&["SET", &a, "w"]).await, queued());
    for conn in [&mut p, &mut watcher] {
        let reply = conn.call(&["EXEC"]).await;
        assert!(error_starting(&reply, "TRYAGAIN"), "{reply:?}");
    }
    // Nothing of either ran, on either group.
    assert_eq!(get_direct(&source, &a).await.as_deref(), Some("5"));
    assert_eq!(get_direct(&target, &a).await, None);
    assert_eq!(get_direct(&source, &b).await, None);
    assert_eq!(get_direct(&target, &b).await, None);

    // Retried while the slot migrates: its keys move to the target first.
    assert_eq!(
        incr_both(&mut p, &a, &b).await,
        Resp::Array(Some(vec![Resp::Int(6), Resp::Int(1)]))
    );
    assert_eq!(get_direct(&target, &a).await.as_deref(), Some("6"));
    assert_eq!(get_direct(&source, &a).await, None);
    // A WATCH in the migrating slot runs on the target, and conflicts there.
    assert_eq!(watcher.call(&["WATCH", &a, &b]).await, ok());
    let _: i64 = plain.incr(&b, 1).await.expect("incr");
    assert_eq!(watcher.call(&["MULTI"]).await, ok());
    assert_eq!(watcher.call(&["SET", &a, "w"]).await, queued());
    assert_eq!(watcher.call(&["EXEC"]).await, Resp::Array(None));

    finish_migration(&c.store, &[slot], Duration::from_secs(5))
        .await
        .expect("finish");
    assert_eq!(
        incr_both(&mut p, &a, &b).await,
        Resp::Array(Some(vec![Resp::Int(7), Resp::Int(3)]))
    );
    assert_eq!(get_direct(&target, &b).await.as_deref(), Some("3"));
    assert_eq!(get_direct(&source, &b).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_racing_a_switch_are_applied_whole_or_not_at_all() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (t, slot) = tag("r", true);
    let (a, b) = (format!("{{{t}}}a"), format!("{{{t}}}b"));
    // Writers run MULTI INCR a INCR b EXEC back to back, pipelined or one
    // command at a time; each EXEC is applied whole ([n, n]) or answered
    // TRYAGAIN (nothing ran).
    let running = Arc::new(AtomicBool::new(true));
    // EXECs applied so far, per writer.
    let applied_by: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let mut writers = Vec::new();
    for w in 0..4 {
        let (a, b, running, applied_by) = (a.clone(), b.clone(), running.clone(), applied_by.clone());
        writers.push(tokio::spawn(async move {
            let mut conn = raw(proxy).await;
            let (mut applied, mut retried) = (0i64, 0i64);
            while running.load(Ordering::Relaxed) {
                let reply = if w % 2 == 0 {
                    incr_both(&mut conn, &a, &b).await
                } else {
                    incr_both_slowly(&mut conn, &a, &b).await
                };
                match reply {
                    Resp::Array(Some(v)) => {
                        assert!(matches!(v[..], [Resp::Int(x), Resp::Int(y)] if x == y), "{v:?}");
                        applied += 1;
                        applied_by[w].fetch_add(1, Ordering::Relaxed);
                    }
                    Resp::Error(e) if e.starts_with("TRYAGAIN") => retried += 1,
                    other => panic!("unexpected EXEC reply {other:?}"),
                }
            }
            (applied, retried)
        }));
    }
    // Every writer, pipelined and one command at a time, has EXECs applied
    // before the switch and again after it (then on the target).
    let applied_now = || -> Vec<u64> { applied_by.iter().map(|n| n.load(Ordering::Relaxed)).collect() };
    let each_applied = async |since: &[u64], n: u64, what: &str| {
        common::eventually(what, Duration::from_secs(20), async || {
            // They run until told to stop: one that ended panicked.
            assert!(!writers.iter().any(|w| w.is_finished()), "a writer failed");
            applied_now()
                .iter()
                .zip(since)
                .all(|(now, then)| *now >= then + n)
        })
        .await;
    };
    each_applied(&[0; 4], 8, "every writer has EXECs applied before the switch").await;
    begin_migration(&c.store, &[slot], 2, Duration::from_secs(5))
        .await
        .expect("switch");
    let at_switch = applied_now();
    each_applied(&at_switch, 8, "every writer has EXECs applied after the switch").await;
    running.store(false, Ordering::Relaxed);
    let (mut applied, mut retried) = (0, 0);
    for w in writers {
        let (a, r) = w.await.expect("writer");
        applied += a;
        retried += r;
    }
    assert!(applied > 50, "writers barely ran: {applied} ({retried} retried)");
    // Both counters moved to the target with exactly the applied count.
    let target = c.masters[1].addr();
    let source = c.masters[0].addr();
    let want = applied.to_string();
    assert_eq!(get_direct(&target, &a).await.as_deref(), Some(want.as_str()));
    assert_eq!(get_direct(&target, &b).await.as_deref(), Some(want.as_str()));
    assert_eq!(get_direct(&source, &a).await, None);
    assert_eq!(get_direct(&source, &b).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_connection_was_lost_never_runs_unwatched() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let (t, _) = tag("l", true);
    let k = format!("{{{t}}}k");
    let master = c.masters[0].addr();
    let mut p = raw(proxy).await;
    let mut other = client(proxy).await;
    assert_eq!(p.call(&["WATCH", &k]).await, ok());
    // The server closes the connection that holds the watch (its last
    // command was the proxy's CLIENT ID after the WATCH), then another client
    // writes the key: the server cannot tell the transaction any more.
    let mut m = direct(&master).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut m)
        .await
        .expect("client list");
    let id = list
        .lines()
        .find(|l| l.contains("cmd=client|id"))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("the watching connection")
        .to_string();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut m)
        .await
        .expect("client kill");
    assert_eq!(killed, 1);
    let _: () = other.set(&k, "theirs").await.expect("set");
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["SET", &k, "mine"]).await, queued());
    let reply = p.call(&["EXEC"]).await;
    assert!(error_starting(&reply, "TRYAGAIN"), "{reply:?}");
    assert_eq!(get_direct(&master, &k).await.as_deref(), Some("theirs"));
    // The retry watches afresh and runs.
    assert_eq!(p.call(&["WATCH", &k]).await, ok());
    assert_eq!(p.call(&["MULTI"]).await, ok());
    assert_eq!(p.call(&["SET", &k, "mine"]).await, queued());
    assert_eq!(p.call(&["EXEC"]).await, Resp::Array(Some(vec![ok()])));
    assert_eq!(get_direct(&master, &k).await.as_deref(), Some("mine"));
}

/// An `EXEC` reaches its server as promptly as any request: sent before
/// another client's write of a watched key, it runs first. Redis's own suite
/// counts on it ("BRPOPLPUSH does not affect WATCH while still blocked"):
/// while the proxy started an `EXEC` as a task of its own, a task hop behind
/// the other client's request, that test failed 2 runs in 3 on this 2-core
/// machine. One worker thread reads both clients, in the order they wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_sent_before_another_clients_write_runs_first() {
    let c = Cluster::start().await;
    let proxy = c.proxy_with(|cfg| cfg.threads = 1).await;
    let (t, _) = tag("order", true);
    let (watched, other) = (format!("{{{t}}}w"), format!("{{{t}}}x"));
    let (mut a, mut b) = (raw(proxy).await, raw(proxy).await);
    let mut aborted = 0;
    for _ in 0..100 {
        assert_eq!(a.call(&["WATCH", watched.as_str()]).await, ok());
        assert_eq!(a.call(&["MULTI"]).await, ok());
        assert_eq!(a.call(&["GET", other.as_str()]).await, queued());
        a.send(&cmd(&["EXEC"])).await;
        b.send(&cmd(&["SET", watched.as_str(), "b"])).await;
        let exec = a.read_reply().await;
        assert_eq!(b.read_reply().await, ok());
        match exec {
            Resp::Array(Some(_)) => {}
            Resp::Array(None) => aborted += 1,
            other => panic!("EXEC answered {other:?}"),
        }
    }
    assert_eq!(
        aborted, 0,
        "{aborted} of 100 EXECs aborted by a write sent after them"
    );
}
