//! Proves the test harness (`tests/common`) and the process helpers of
//! `reborn::up` work against real ZooKeeper and redis-server processes, so a
//! failure elsewhere is about reborn, not about the harness.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::{RawConn, Resp};
use reborn::up::{RedisServer, UpError, ZooKeeper};
use redis::AsyncCommands;

#[test]
fn zookeeper_answers_ruok() {
    let addr = common::zk();
    let mut stream = std::net::TcpStream::connect(&addr).expect("connect to ZooKeeper");
    stream.write_all(b"ruok").expect("send ruok");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    assert_eq!(answer, "imok");
}

#[test]
fn zookeeper_is_shared_and_roots_are_unique() {
    assert_eq!(common::zk(), common::zk());
    let (a, b) = (common::unique_root(), common::unique_root());
    assert_ne!(a, b);
    assert!(a.starts_with(&format!("/t{}_", std::process::id())), "{a}");
}

#[tokio::test]
async fn our_zookeeper_client_connects_under_a_unique_root() {
    let cfg = common::zk_config();
    let store = reborn::topo::Store::connect(&cfg)
        .await
        .expect("connect to the harness ZooKeeper");
    let root = cfg.root.clone();
    store.mkdir_p(&root).await.expect("create the test root");
    assert!(store.exists(&root).await.expect("exists"));
    store.close().await;
}

#[test]
fn free_ports_are_never_handed_twice() {
    let ports: Vec<u16> = (0..200).map(|_| common::free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len());
}

#[tokio::test]
async fn two_redis_servers_run_on_distinct_ports() {
    let (a, b) = (common::redis(), common::redis());
    assert_ne!(a.port(), b.port());
    for server in [&a, &b] {
        let mut conn = common::client(&server.addr()).await;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.expect("PING");
        assert_eq!(pong, "PONG");
    }
}

#[tokio::test]
async fn replicaof_replicates_a_key() {
    let master = common::redis();
    let mut replica = common::redis();
    replica.replicaof(&master.addr()).expect("replicaof");

    let mut m = common::client(&master.addr()).await;
    let () = m.set("greeting", "hello").await.expect("SET on master");
    let mut r = common::client(&replica.addr()).await;
    common::eventually("the key reaches the replica", Duration::from_secs(10), || {
        let mut r = r.clone();
        async move {
            let v: Option<String> = r.get("greeting").await.unwrap_or(None);
            v.as_deref() == Some("hello")
        }
    })
    .await;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut r).await.expect("ROLE");
    assert_eq!(role.first(), Some(&redis::Value::BulkString(b"slave".to_vec())));
}

#[tokio::test]
async fn kill_and_restart_a_redis_server() {
    let mut server = common::redis();
    let addr = server.addr();
    let mut conn = common::client(&addr).await;
    let () = conn.set("k", "v").await.expect("SET");
    let first_pid = server.pid().expect("running");

    server.kill();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "a killed server must not accept connections"
    );

    server.restart().expect("restart");
    assert!(server.is_running());
    assert_ne!(server.pid(), Some(first_pid));
    assert_eq!(server.addr(), addr, "same port after restart");
    let mut conn = common::client(&addr).await;
    let v: Option<String> = conn.get("k").await.expect("GET");
    assert_eq!(v, None, "nothing is persisted across a crash");
}

#[test]
fn a_taken_port_is_refused_clearly() {
    let port = common::free_port();
    let _squatter = TcpListener::bind(("127.0.0.1", port)).expect("bind");

    let err = RedisServer::start_in_temp_dir(port).expect_err("port is taken");
    assert!(
        matches!(err, UpError::PortInUse { port: p, .. } if p == port),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("port {port} is already in use")),
        "{err}"
    );

    // Refused before java starts: instant.
    let err = ZooKeeper::start_in_temp_dir(port).expect_err("port is taken");
    assert!(matches!(err, UpError::PortInUse { .. }), "{err:?}");
}

#[test]
fn stopping_removes_a_temp_dir_but_keeps_a_given_one() {
    let mut temp = common::redis();
    let temp_dir = temp.dir().to_path_buf();
    assert!(temp_dir.is_dir());
    temp.stop();
    assert!(!temp.is_running());
    drop(temp);
    assert!(!temp_dir.exists(), "{} left behind", temp_dir.display());

    let given = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(common::free_port(), given.path()).expect("start");
    let log = server.log_file();
    drop(server);
    assert!(log.is_file(), "the log of a given dir is kept: {}", log.display());
}

#[tokio::test]
async fn raw_resp_helpers_speak_to_redis() {
    let server = common::redis();
    let addr = server.addr();

    assert_eq!(
        common::send_raw(&addr, b"*1\r\n$4\r\nPING\r\n").await,
        b"+PONG\r\n"
    );

    let mut pipeline = common::cmd(&["SET", "a", "1"]);
    pipeline.extend(common::cmd(&["GET", "a"]));
    pipeline.extend(common::cmd(&["GET", "missing"]));
    assert_eq!(
        common::send_raw(&addr, &pipeline).await,
        b"+OK\r\n$1\r\n1\r\n$-1\r\n"
    );

    // Not RESP: redis answers with a protocol error and closes.
    let reply = common::send_raw(&addr, b"*x\r\n").await;
    assert!(
        reply.starts_with(b"-ERR Protocol error"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    let mut conn = RawConn::connect(&addr).await;
    // A command split across two writes.
    conn.send(b"*2\r\n$4\r\nECHO\r\n$5\r\nhel").await;
    conn.send(b"lo\r\n").await;
    assert_eq!(conn.read_reply().await, Resp::bulk("hello"));
    assert_eq!(
        conn.call(&["MGET", "a", "missing"]).await,
        Resp::Array(Some(vec![Resp::bulk("1"), Resp::Bulk(None)]))
    );
    assert_eq!(conn.call(&["INCR", "a"]).await, Resp::Int(2));
    assert!(matches!(conn.call(&["NOSUCHCMD"]).await, Resp::Error(e) if e.contains("unknown command")));
}

#[test]
fn raw_replies_tell_null_bulks_from_null_arrays() {
    let parse = |b: &[u8]| Resp::parse(b).expect("RESP");
    assert_eq!(parse(b"*-1\r\n"), Some((Resp::Array(None), 5)));
    assert_eq!(parse(b"$-1\r\n"), Some((Resp::Bulk(None), 5)));
    let nested = b"*4\r\n$-1\r\n*-1\r\n*1\r\n$-1\r\n*-1\r\n";
    let want = Resp::Array(Some(vec![
        Resp::Bulk(None),
        Resp::Array(None),
        Resp::Array(Some(vec![Resp::Bulk(None)])),
        Resp::Array(None),
    ]));
    assert_eq!(parse(nested), Some((want, nested.len())));
    assert_eq!(parse(b"$5\r\nhel"), None, "incomplete");
    assert!(Resp::parse(b"%1\r\n").is_err(), "RESP3 is not a RESP2 value");
    assert_eq!(common::count_frames(b"+OK\r\n:1\r\n"), Some(2));
    assert_eq!(common::count_frames(b"+OK\r\n:1"), None);
}

#[tokio::test]
async fn password_protected_servers_replicate() {
    let master = common::redis_with_password("s3cret");
    let mut replica = common::redis_with_password("s3cret");

    let reply = common::send_raw(&master.addr(), &common::cmd(&["PING"])).await;
    assert!(
        reply.starts_with(b"-NOAUTH"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    replica
        .replicaof(&master.addr())
        .expect("replica syncs with masterauth");
    let mut conn = RawConn::connect(&replica.addr()).await;
    assert_eq!(conn.call(&["AUTH", "s3cret"]).await, Resp::Simple("OK".into()));
    assert_eq!(conn.call(&["PING"]).await, Resp::Simple("PONG".into()));
}

/// Runs `reborn load ARGS` (the benchmarks' open-loop generator) to its end;
/// returns whether it succeeded and its summary (stderr).
async fn reborn_load(args: &[&str]) -> (bool, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_reborn"))
        .arg("load")
        .args(args)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("reborn load ended")
        .expect("run reborn load");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `reborn load` sends exactly its rate, evenly spaced, and gets a reply for
/// every request.
#[tokio::test]
async fn reborn_load_sends_its_rate_evenly_and_counts_every_reply() {
    let server = common::redis();
    let dir = tempfile::tempdir().expect("tempdir");
    let samples = dir.path().join("samples");
    let samples_arg = samples.to_str().expect("utf-8 path");
    let (ok, stderr) = reborn_load(&[
        "--addr",
        &server.addr(),
        "--rate",
        "2000",
        "--secs",
        "2",
        "--keys",
        "1000",
        "--conns",
        "4",
        "--samples",
        samples_arg,
    ])
    .await;
    assert!(ok, "reborn load failed: {stderr}");
    assert!(
        stderr.contains("4000 requests at 2000/s over 4 connections, 0 errors"),
        "{stderr}"
    );

    let text = std::fs::read_to_string(&samples).expect("read samples");
    let mut intended: Vec<u64> = Vec::new();
    for line in text.lines() {
        let f: Vec<u64> = line.split(' ').map(|x| x.parse().expect("a number")).collect();
        assert_eq!(f.len(), 4, "{line}");
        assert_eq!(f[2], 0, "an error reply: {line}");
        assert!(f[3] < 1024, "slot {line}");
        intended.push(f[0]);
    }
    assert_eq!(intended.len(), 4000);
    // One request every 500 µs, whatever the connection.
    intended.sort_unstable();
    for pair in intended.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((499..=501).contains(&gap), "requests {gap} µs apart");
    }
    // Half of them were SETs of keys below 1000.
    let mut conn = common::client(&server.addr()).await;
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.expect("DBSIZE");
    assert!(
        (500..=1000).contains(&keys),
        "{keys} keys after 2000 SETs of 1000 keys"
    );
}

/// A server that stops answering (a redis-server under SIGSTOP) ends the run
/// with errors, not a hang.
#[tokio::test]
async fn reborn_load_counts_unanswered_requests_as_errors() {
    let server = common::redis();
    let pid = server.pid().expect("pid").to_string();
    let kill = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {pid}");
    };
    kill("-STOP");
    let (ok, stderr) = reborn_load(&[
        "--addr",
        &server.addr(),
        "--rate",
        "100",
        "--secs",
        "1",
        "--conns",
        "2",
    ])
    .await;
    kill("-CONT");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("100 requests at 100/s over 2 connections, 100 errors"),
        "{stderr}"
    );
}
