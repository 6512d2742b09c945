//! `reborn up` as a newcomer runs it: the real binary, real ZooKeeper and
//! redis-servers, the push system (logic, comet, job) in front of the proxy,
//! stopped by SIGTERM (clean, ordered) or SIGKILL (the orphan guards must still
//! take every server down).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};

use common::GuardedChild;
use common::http;
use common::im::logic_json;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reborn::im::client::ImClient;
use reborn::topo::{Store, ZkConfig, watcher};
use serde_json::Value;

/// A `reborn up` child process whose banner has been printed.
struct Up {
    child: GuardedChild,
    banner: String,
    stderr: Arc<Mutex<String>>,
}

/// Ports of one `reborn up`: four redis, proxy, proxy admin, dashboard, and
/// the push roles' (logic HTTP + gRPC, comet TCP + WS + gRPC + admin, job
/// admin).
struct Ports {
    redis: [u16; 4],
    proxy: u16,
    admin: u16,
    dashboard: u16,
    logic_http: u16,
    logic_grpc: u16,
    comet_tcp: u16,
    comet_ws: u16,
    comet_grpc: u16,
    comet_admin: u16,
    job_admin: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            redis: [(); 4].map(|_| common::free_port()),
            proxy: common::free_port(),
            admin: common::free_port(),
            dashboard: common::free_port(),
            logic_http: common::free_port(),
            logic_grpc: common::free_port(),
            comet_tcp: common::free_port(),
            comet_ws: common::free_port(),
            comet_grpc: common::free_port(),
            comet_admin: common::free_port(),
            job_admin: common::free_port(),
        }
    }

    fn push(&self) -> [u16; 7] {
        [
            self.logic_http,
            self.logic_grpc,
            self.comet_tcp,
            self.comet_ws,
            self.comet_grpc,
            self.comet_admin,
            self.job_admin,
        ]
    }

    fn args(&self) -> Vec<String> {
        let redis: Vec<String> = self.redis.iter().map(u16::to_string).collect();
        vec![
            "--redis-ports".into(),
            redis.join(","),
            "--proxy".into(),
            format!("127.0.0.1:{}", self.proxy),
            "--proxy-admin".into(),
            format!("127.0.0.1:{}", self.admin),
            "--dashboard".into(),
            format!("127.0.0.1:{}", self.dashboard),
            "--logic-http-port".into(),
            self.logic_http.to_string(),
            "--logic-grpc-port".into(),
            self.logic_grpc.to_string(),
            "--comet-tcp-port".into(),
            self.comet_tcp.to_string(),
            "--comet-ws-port".into(),
            self.comet_ws.to_string(),
            "--comet-grpc-port".into(),
            self.comet_grpc.to_string(),
            "--comet-admin-port".into(),
            self.comet_admin.to_string(),
            "--job-admin-port".into(),
            self.job_admin.to_string(),
        ]
    }
}

impl Up {
    /// Starts `reborn up ARGS` and waits (up to 60 s) for its banner.
    fn start(args: &[String]) -> Up {
        let mut child = common::spawn_guarded(
            Command::new(env!("CARGO_BIN_EXE_reborn"))
                .arg("up")
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("stderr")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut up = Up {
            child,
            banner: String::new(),
            stderr,
        };
        // The banner ends with the "Try:" hints and an empty line.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut in_hints = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    in_hints |= line == "Try:";
                    let done = in_hints && line.is_empty();
                    up.banner.push_str(&line);
                    up.banner.push('\n');
                    if done {
                        return up;
                    }
                }
                Err(_) => panic!(
                    "no banner from reborn up; stdout so far:\n{}\nstderr:\n{}",
                    up.banner,
                    up.stderr()
                ),
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// The value printed after `label` in the banner's table.
    fn field(&self, label: &str) -> String {
        self.banner
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {label:?} in banner:\n{}", self.banner))
            .to_string()
    }

    /// SIGTERM, as Ctrl-C would do, and the exit status (within 30 s).
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("sh")
            .args(["-c", r#"kill -TERM "$1""#, "sh", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        self.wait(Duration::from_secs(30))
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "reborn up did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits until nothing listens on any of `ports` (servers stop asynchronously
/// after a SIGKILL of their owner).
fn assert_ports_freed(ports: &[u16], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for &port in ports {
        while !common::port_is_free(port) {
            assert!(Instant::now() < deadline, "port {port} still in use");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One call of logic's JSON API: its envelope, code 0 asserted.
async fn logic_api(addr: SocketAddr, method: &str, path: &str, body: &str) -> Value {
    let reply = logic_json(addr, method, path, body.as_bytes().to_vec()).await;
    assert_eq!(reply["code"], 0, "{method} {path}: {reply}");
    reply
}

/// The push system `reborn up` started: the comet registered, logic sends
/// clients to it on the ports given, and a push reaches a TCP client through
/// logic, the queue behind the proxy, job and the comet.
async fn check_push_roles(up: &Up, ports: &Ports) {
    let logic = SocketAddr::from(([127, 0, 0, 1], ports.logic_http));
    assert_eq!(up.field("logic HTTP"), format!("http://{logic}"));
    assert_eq!(up.field("comet TCP"), format!("127.0.0.1:{}", ports.comet_tcp));
    assert_eq!(
        up.field("comet WS"),
        format!("ws://127.0.0.1:{}/sub", ports.comet_ws)
    );
    assert_eq!(up.field("demo page"), format!("http://{logic}/demo"));
    assert!(
        up.banner.contains("/goim/push/mids?operation=1000&mids=123"),
        "{}",
        up.banner
    );

    // The comet is registered before the banner; logic follows ZooKeeper.
    let nodes = common::eventually_ok("logic knows the comet", Duration::from_secs(10), async || {
        let nodes = logic_api(logic, "GET", "/goim/nodes/weighted?platform=ip", "").await["data"].clone();
        if nodes["nodes"].as_array().is_some_and(|n| !n.is_empty()) {
            Ok(nodes)
        } else {
            Err(nodes)
        }
    })
    .await;
    assert_eq!(nodes["nodes"], serde_json::json!(["127.0.0.1"]), "{nodes}");
    assert_eq!(nodes["tcp_port"], ports.comet_tcp, "{nodes}");
    assert_eq!(
        nodes["ws_port"], ports.comet_ws,
        "what the demo page connects to: {nodes}"
    );

    let (status, page) = http::request(logic, "GET", "/demo", Vec::new()).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("new WebSocket("));

    let mut client = ImClient::tcp(&format!("127.0.0.1:{}", ports.comet_tcp))
        .await
        .expect("connect to the comet");
    client.set_timeout(Duration::from_secs(20));
    client
        .auth(br#"{"mid":123,"key":"","room_id":"live://1000","platform":"web","accepts":[1000]}"#)
        .await
        .expect("logic accepts the client");
    logic_api(
        logic,
        "POST",
        "/goim/push/mids?operation=1000&mids=123",
        "hello 123",
    )
    .await;
    let push = client.next_push().await.expect("the push arrives");
    assert_eq!((push.op, &push.body[..]), (1000, &b"hello 123"[..]));
    logic_api(
        logic,
        "POST",
        "/goim/push/room?operation=1000&type=live&room=1000",
        "hello room",
    )
    .await;
    let push = client.next_push().await.expect("the room push arrives");
    assert_eq!(&push.body[..], b"hello room");

    // What the demo page does: a WebSocket to nodes[0] on the advertised ws_port.
    let url = format!(
        "ws://{}:{}/sub",
        nodes["nodes"][0].as_str().unwrap_or_default(),
        nodes["ws_port"]
    );
    let mut browser = ImClient::ws(&url)
        .await
        .expect("the demo page's WebSocket address");
    browser.set_timeout(Duration::from_secs(20));
    browser
        .auth(br#"{"mid":124,"key":"","room_id":"live://1000","platform":"web","accepts":[1000]}"#)
        .await
        .expect("logic accepts the WebSocket client");
    logic_api(
        logic,
        "POST",
        "/goim/push/mids?operation=1000&mids=124",
        "hello ws",
    )
    .await;
    let push = browser
        .next_push()
        .await
        .expect("the push arrives over WebSocket");
    assert_eq!(&push.body[..], b"hello ws");

    // The session is in the cluster, read through the proxy like any key.
    let mut proxy = common::client(&format!("127.0.0.1:{}", ports.proxy)).await;
    let session: std::collections::HashMap<String, String> =
        redis::AsyncCommands::hgetall(&mut proxy, "mid_123")
            .await
            .expect("HGETALL");
    assert_eq!(session.len(), 1, "{session:?}");
    assert!(
        session
            .values()
            .all(|server| server.ends_with(&format!("-{}", ports.comet_tcp))),
        "{session:?}"
    );

    // The comet's and the job's admin ports count what just happened.
    let comet_admin = SocketAddr::from(([127, 0, 0, 1], ports.comet_admin));
    let job_admin = SocketAddr::from(([127, 0, 0, 1], ports.job_admin));
    assert_eq!(up.field("comet admin"), format!("http://{comet_admin}"));
    assert_eq!(up.field("job admin"), format!("http://{job_admin}"));
    let (status, page) = http::request(comet_admin, "GET", "/metrics", Vec::new()).await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("\nreborn_comet_connections 2\n"), "{page}");
    assert!(page.contains("\nreborn_comet_auth_ok_total 2\n"), "{page}");
    let (status, stats) = http::request(comet_admin, "GET", "/stats", Vec::new()).await;
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_slice(&stats).expect("comet /stats is JSON");
    assert_eq!(stats["counters"]["accepted_ws"], 1, "{stats}");
    // Job handed the comet the two key pushes and the room message.
    let stats = common::eventually_ok("job's counters", Duration::from_secs(5), async || {
        let (_, stats) = http::request(job_admin, "GET", "/stats", Vec::new()).await;
        let stats: Value = serde_json::from_slice(&stats).map_err(|e| e.to_string())?;
        if stats["counters"]["pushed"] == 2 && stats["counters"]["room_messages"] == 1 {
            Ok(stats)
        } else {
            Err(stats.to_string())
        }
    })
    .await;
    assert_eq!(stats["comets"], 1, "{stats}");
    let (status, page) = http::request(job_admin, "GET", "/metrics", Vec::new()).await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("\nreborn_job_pushed_total 2\n"), "{page}");
    assert!(
        page.contains("# TYPE reborn_job_comets gauge\nreborn_job_comets 1\n"),
        "{page}"
    );
}

async fn load(addr: &str, root: &str) -> reborn::topo::Topology {
    let cfg = ZkConfig {
        addr: addr.to_string(),
        root: root.to_string(),
        product: "demo".into(),
        ..ZkConfig::default()
    };
    let store = Store::connect(&cfg).await.expect("connect to ZooKeeper");
    let topo = watcher::load(&store).await.expect("product demo exists");
    store.close().await;
    topo
}

#[tokio::test(flavor = "multi_thread")]
async fn up_runs_a_whole_cluster_and_stops_it_in_order() {
    let ports = Ports::new();
    let zk_port = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = ports.args();
    args.extend([
        "--zk-port".into(),
        zk_port.to_string(),
        "--dir".into(),
        dir.path().display().to_string(),
    ]);
    let mut up = Up::start(&args);
    let zk_addr = format!("127.0.0.1:{zk_port}");
    assert_eq!(up.field("ZooKeeper"), zk_addr);

    // The product as the proxies will see it.
    let topo = load(&zk_addr, "/reborn").await;
    let addr = |i: usize| format!("127.0.0.1:{}", ports.redis[i]);
    assert_eq!(topo.groups.len(), 2);
    assert_eq!(topo.groups[&1].master(), Some(addr(0).as_str()));
    assert_eq!(topo.groups[&2].master(), Some(addr(2).as_str()));
    assert_eq!(topo.groups[&1].servers.len(), 2);
    assert_eq!(topo.master_of_slot(0), Some(addr(0).as_str()));
    assert_eq!(topo.master_of_slot(511), Some(addr(0).as_str()));
    assert_eq!(topo.master_of_slot(512), Some(addr(2).as_str()));
    assert_eq!(topo.master_of_slot(1023), Some(addr(2).as_str()));

    // Replication is wired: a key written on a master reaches its replica.
    let mut master = common::client(&addr(2)).await;
    let () = redis::AsyncCommands::set(&mut master, "k", "v")
        .await
        .expect("SET");
    let replica = common::client(&addr(3)).await;
    common::eventually("replica 4 has the key", Duration::from_secs(10), || {
        let mut r = replica.clone();
        async move {
            let v: Option<String> = redis::AsyncCommands::get(&mut r, "k").await.unwrap_or(None);
            v.is_some()
        }
    })
    .await;
    // The proxy routes by slot: "foo" is slot 289 (group 1), "hello" slot 646 (group 2).
    let proxy_addr = format!("127.0.0.1:{}", ports.proxy);
    assert_eq!(up.field("proxy "), proxy_addr);
    let mut proxy = common::client(&proxy_addr).await;
    let () = redis::cmd("MSET")
        .arg(&["foo", "1", "hello", "2"])
        .query_async(&mut proxy)
        .await
        .expect("MSET through the proxy");
    let got: Vec<String> = redis::cmd("MGET")
        .arg(&["foo", "hello"])
        .query_async(&mut proxy)
        .await
        .expect("MGET through the proxy");
    assert_eq!(got, ["1", "2"]);
    let mut g1 = common::client(&addr(0)).await;
    let on_g1: Option<String> = redis::AsyncCommands::get(&mut g1, "foo").await.expect("GET");
    assert_eq!(on_g1.as_deref(), Some("1"), "foo lives in group 1");
    let not_on_g1: Option<String> = redis::AsyncCommands::get(&mut g1, "hello").await.expect("GET");
    assert_eq!(not_on_g1, None, "hello lives in group 2");
    // The servers keep an AOF, and rehash a growing keyspace on access only.
    for (name, want) in [("appendonly", "yes"), ("activerehashing", "no")] {
        let got: Vec<String> = redis::cmd("CONFIG")
            .arg(&["GET", name])
            .query_async(&mut g1)
            .await
            .expect("CONFIG GET");
        assert_eq!(got, [name, want]);
    }
    assert!(
        up.banner.contains(&format!("redis-cli -p {} ", ports.proxy)),
        "{}",
        up.banner
    );

    for sub in ["groups", "slots", "proxies"] {
        let hint = format!("admin --zk {zk_addr} {sub}");
        assert!(up.banner.contains(&hint), "{hint:?} missing from:\n{}", up.banner);
    }

    // The dashboard leads and serves the same product.
    let dashboard = format!("127.0.0.1:{}", ports.dashboard);
    assert_eq!(up.field("dashboard"), format!("http://{dashboard}"));
    let hint = format!("admin rebalance --dry-run --dashboard {dashboard}");
    assert!(up.banner.contains(&hint), "{hint:?} missing from:\n{}", up.banner);
    // It may still be taking the leadership a few milliseconds after the banner.
    let groups = common::eventually_ok("the dashboard leads", Duration::from_secs(5), async || {
        let reply = reborn::topo::manager::dashboard::client::get(&dashboard, "/api/groups")
            .await
            .expect("dashboard answers");
        if reply.status == 200 {
            Ok(reply)
        } else {
            Err(format!("{} {:?}", reply.status, reply.body))
        }
    })
    .await;
    assert_eq!(groups.body.as_array().map(Vec::len), Some(2), "{:?}", groups.body);
    assert_eq!(groups.body[0]["slots"], 512);

    check_push_roles(&up, &ports).await;
    a_killed_master_is_replaced_then_started_again_as_a_replica(&up, &zk_addr, &ports).await;

    // Slots moved now must show in the banner of the next start, which
    // reuses the product (a raw assignment will do: nothing reads slots 0-3).
    let store = Store::connect(&ZkConfig {
        addr: zk_addr.clone(),
        product: "demo".into(),
        ..ZkConfig::default()
    })
    .await
    .expect("connect to ZooKeeper");
    reborn::topo::operation::assign_slots(&store, 0, 3, 2)
        .await
        .expect("assign slots 0-3 to group 2");
    store.close().await;

    let status = up.terminate();
    assert!(status.success(), "exit {status}; stderr:\n{}", up.stderr());
    let stderr = up.stderr();
    let order: Vec<usize> = [
        "stopping job",
        "stopping comet",
        "stopping logic",
        "stopping proxy",
    ]
    .iter()
    .map(|s| stderr.find(s).unwrap_or_else(|| panic!("no {s:?} in:\n{stderr}")))
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "push roles stop before the proxy, in reverse order"
    );
    let mut all = ports.redis.to_vec();
    all.extend([zk_port, ports.proxy, ports.admin, ports.dashboard]);
    all.extend(ports.push());
    assert_ports_freed(&all, Duration::from_secs(1));
    assert!(
        dir.path().join("zookeeper/zookeeper.log").is_file(),
        "--dir is kept"
    );

    // Same --dir again: ZooKeeper's data survived, so the product is reused.
    let mut again = Up::start(&args);
    assert!(
        again.banner.contains("already existed in ZooKeeper"),
        "{}",
        again.banner
    );
    assert!(!again.banner.contains("warning:"), "{}", again.banner);
    // Each server kept its role through the restart: the failover's, not the
    // plan's (no server was re-pointed at the one that had been replaced).
    let after_failover = format!(
        "group 2's master is 127.0.0.1:{} now, no longer 127.0.0.1:{}",
        ports.redis[3], ports.redis[2]
    );
    assert!(again.banner.contains(&after_failover), "{}", again.banner);
    for (i, role) in [(2, "replica"), (3, "master")] {
        let line = format!("127.0.0.1:{}", ports.redis[i]);
        let row = again
            .banner
            .lines()
            .find(|l| l.contains(&line))
            .expect("server row");
        assert!(row.contains(role), "{row:?} should say {role}");
    }
    let mut g2 = common::client(&format!("127.0.0.1:{}", ports.redis[3])).await;
    let v: Option<String> = redis::AsyncCommands::get(&mut g2, "k").await.expect("GET");
    assert_eq!(v.as_deref(), Some("v"), "group 2's data survived both restarts");
    assert_eq!(
        again.field("slots"),
        "0-3",
        "the banner shows the slots as ZooKeeper has them:\n{}",
        again.banner
    );
    assert!(
        again
            .banner
            .contains("0-3 -> group 2, 4-511 -> group 1, 512-1023 -> group 2"),
        "{}",
        again.banner
    );
    assert!(again.terminate().success());
}

/// `reborn up` reaps a redis-server that dies (no zombie), the failover
/// replaces it, and `reborn up` starts it again with its AOF, after the
/// failover: it comes back as a replica of the new master, with its data.
async fn a_killed_master_is_replaced_then_started_again_as_a_replica(up: &Up, zk_addr: &str, ports: &Ports) {
    let old = format!("127.0.0.1:{}", ports.redis[2]);
    let new = format!("127.0.0.1:{}", ports.redis[3]);
    let pid_of = async |addr: &str| -> Option<u32> {
        let mut c = redis::Client::open(format!("redis://{addr}/"))
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut c).await.ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
    };
    let pid = pid_of(&old).await.expect("the master's pid");
    let killed = Command::new("sh")
        .args(["-c", r#"kill -KILL "$1""#, "sh", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let at = Instant::now();
    // A zombie keeps its /proc entry until its parent reaps it.
    common::eventually("the dead master is reaped", Duration::from_secs(5), async || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    common::eventually(
        "the failover makes the replica master",
        Duration::from_secs(10),
        async || load(zk_addr, "/reborn").await.groups[&2].master() == Some(new.as_str()),
    )
    .await;
    let replaced = at.elapsed();
    common::eventually_ok(
        "the old master is back as a replica",
        Duration::from_secs(40),
        async || {
            let Some(now) = pid_of(&old).await else {
                return Err("not running yet".to_string());
            };
            let mut c = common::client(&old).await;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            let following = info.contains("role:slave")
                && info.contains(&format!("master_port:{}", ports.redis[3]))
                && info.contains("master_link_status:up");
            if now != pid && following {
                Ok(())
            } else {
                Err(info)
            }
        },
    )
    .await;
    let back = at.elapsed();
    assert!(
        back >= Duration::from_secs(10),
        "started again only after the restart delay (replaced after {replaced:?}, back after {back:?})"
    );
    let mut c = common::client(&old).await;
    let v: Option<String> = redis::AsyncCommands::get(&mut c, "k").await.expect("GET");
    assert_eq!(v.as_deref(), Some("v"), "its data came back with it");
    let stderr = up.stderr();
    assert!(stderr.contains(&format!("redis-server {old} died")), "{stderr}");
    assert!(
        stderr.contains(&format!("redis-server {old} started again")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_an_existing_zookeeper_removes_its_temp_dir() {
    let ports = Ports::new();
    let root = common::unique_root();
    let mut args = ports.args();
    args.extend([
        "--zk".into(),
        common::zk(),
        "--zk-root".into(),
        root.clone(),
        "--no-push".into(),
    ]);
    let mut up = Up::start(&args);
    assert!(up.banner.contains("not started here"), "{}", up.banner);
    // --no-push: no push role listens, and the banner says so.
    assert!(up.banner.contains("not running (--no-push)"), "{}", up.banner);
    assert!(!up.banner.contains("logic HTTP"), "{}", up.banner);
    for port in ports.push() {
        assert!(common::port_is_free(port), "port {port} is taken with --no-push");
    }
    let dir = std::path::PathBuf::from(up.field("data + logs"));
    assert!(dir.is_dir());
    assert!(up.banner.contains(&format!("--zk-root {root}")), "{}", up.banner);

    assert!(up.terminate().success(), "stderr:\n{}", up.stderr());
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_ports_freed(&ports.redis, Duration::from_secs(1));
    // The product stays in the ZooKeeper we did not own.
    assert_eq!(load(&common::zk(), &root).await.groups.len(), 2);
}

#[test]
fn a_killed_up_leaves_no_server_behind() {
    let ports = Ports::new();
    let mut args = ports.args();
    args.extend([
        "--zk".into(),
        common::zk(),
        "--zk-root".into(),
        common::unique_root(),
    ]);
    let mut up = Up::start(&args);
    assert!(!common::port_is_free(ports.redis[0]));
    let dir = std::path::PathBuf::from(up.field("data + logs"));

    // SIGKILL: no destructor runs; the orphan guards must stop the servers and
    // remove the temp dir.
    up.child.kill().expect("SIGKILL");
    let _ = up.child.wait();
    assert_ports_freed(&ports.redis, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.exists() {
        assert!(Instant::now() < deadline, "{} left behind", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn up_refuses_a_taken_port_before_starting_anything() {
    let ports = Ports::new();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", ports.proxy)).expect("bind");
    let mut args = ports.args();
    args.extend(["--zk".into(), common::zk()]);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_reborn"))
        .arg("up")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run reborn up");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("port {} is already in use", ports.proxy)),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(common::port_is_free(ports.redis[0]), "no redis was started");
}

#[test]
fn up_refuses_a_taken_push_port_and_a_port_given_twice() {
    let ports = Ports::new();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", ports.comet_ws)).expect("bind");
    let mut args = ports.args();
    args.extend(["--zk".into(), common::zk()]);
    let run = |args: &[String]| {
        let out = Command::new(env!("CARGO_BIN_EXE_reborn"))
            .arg("up")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run reborn up");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run(&args);
    assert!(
        stderr.contains(&format!("port {} is already in use", ports.comet_ws)),
        "{stderr}"
    );
    assert!(stderr.contains("--comet-ws-port"), "{stderr}");

    let mut twice = Ports::new();
    twice.logic_grpc = twice.dashboard;
    let mut args = twice.args();
    args.extend(["--zk".into(), common::zk()]);
    let stderr = run(&args);
    assert!(
        stderr.contains(&format!(
            "port {} is given to both the dashboard",
            twice.dashboard
        )),
        "{stderr}"
    );
    assert!(common::port_is_free(twice.redis[0]), "no redis was started");
}

/// A port `p` such that `p + o` is free for every offset `o` (the ports of
/// consecutive ensemble members).
/// The pid of the ZooKeeper (java) process whose command line names a file
/// under `dir`, if one runs.
fn zk_pid_with(dir: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains("zookeeper") && cmdline.contains(dir)).then_some(pid)
    })
}

/// A ZooKeeper four-letter word's answer, if the server gives one.
fn four_letter(addr: &str, word: &str) -> Option<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(word.as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn free_ports_at(offsets: &[u16]) -> u16 {
    loop {
        let p = common::free_port();
        if p < 30000 && offsets.iter().all(|&o| common::port_is_free(p + o)) {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_three_zookeeper_nodes_runs_the_cluster_on_the_ensemble() {
    let ports = Ports::new();
    let zk_port = free_ports_at(&[0, 1, 2]);
    let peer_port = free_ports_at(&[0, 1, 2, 1000, 1001, 1002]);
    let mut args = ports.args();
    args.extend([
        "--zk-nodes".into(),
        "3".into(),
        "--zk-port".into(),
        zk_port.to_string(),
        "--zk-peer-port".into(),
        peer_port.to_string(),
    ]);
    let mut up = Up::start(&args);
    let connect = format!(
        "127.0.0.1:{zk_port},127.0.0.1:{},127.0.0.1:{}",
        zk_port + 1,
        zk_port + 2
    );
    assert_eq!(up.field("ZooKeeper"), connect);
    assert!(up.banner.contains("member 3"), "{}", up.banner);
    assert!(
        up.banner.contains(&format!("admin --zk {connect} groups")),
        "{}",
        up.banner
    );

    let proxy_addr = format!("127.0.0.1:{}", ports.proxy);
    let mut proxy = common::client(&proxy_addr).await;
    let () = redis::AsyncCommands::set(&mut proxy, "hello", "ensemble")
        .await
        .expect("SET through the proxy");
    let got: String = redis::AsyncCommands::get(&mut proxy, "hello")
        .await
        .expect("GET through the proxy");
    assert_eq!(got, "ensemble");

    // Every member serves the same product: it is one ensemble, not three servers.
    for i in 0..3 {
        let member = format!("127.0.0.1:{}", zk_port + i);
        assert_eq!(load(&member, "/reborn").await.groups.len(), 2, "through {member}");
    }
    // The dashboard shows the connect string.
    let dashboard = format!("127.0.0.1:{}", ports.dashboard);
    let status = reborn::topo::manager::dashboard::client::get(&dashboard, "/api/dashboard")
        .await
        .expect("dashboard answers");
    assert_eq!(status.body["zk"], connect.as_str(), "{:?}", status.body);
    // Every role runs on the connect string: the push roles and the admin CLI too.
    check_push_roles(&up, &ports).await;
    let admin = Command::new(env!("CARGO_BIN_EXE_reborn"))
        .args(["admin", "--zk", &connect, "groups"])
        .output()
        .expect("run reborn admin");
    let listed = String::from_utf8_lossy(&admin.stdout);
    assert!(
        admin.status.success(),
        "{}",
        String::from_utf8_lossy(&admin.stderr)
    );
    assert!(
        listed.contains(&format!("127.0.0.1:{}", ports.redis[0])),
        "{listed}"
    );

    // A member killed is reaped and started again at once; it rejoins the
    // ensemble, and clients never noticed.
    let dir = up.field("data + logs");
    let member_dir = format!("{dir}/zookeeper-3/");
    let pid = zk_pid_with(&member_dir).unwrap_or_else(|| panic!("no ZooKeeper running from {member_dir}"));
    let killed = Command::new("sh")
        .args(["-c", r#"kill -KILL "$1""#, "sh", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let member = format!("127.0.0.1:{}", zk_port + 2);
    common::eventually("the member is reaped", Duration::from_secs(5), async || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    common::eventually("the member serves again", Duration::from_secs(60), async || {
        zk_pid_with(&member_dir).is_some_and(|p| p != pid)
            && four_letter(&member, "srvr")
                .is_some_and(|a| a.contains("Mode: follower") || a.contains("Mode: leader"))
    })
    .await;
    let got: String = redis::AsyncCommands::get(&mut proxy, "hello")
        .await
        .expect("GET through the proxy");
    assert_eq!(got, "ensemble");
    // Logged once the member is back in its quorum, which may come just
    // after it first answers `srvr`.
    let restarted = format!("ZooKeeper {member} started again");
    common::eventually(&restarted, Duration::from_secs(30), async || {
        up.stderr().contains(&restarted)
    })
    .await;

    assert!(up.terminate().success(), "stderr:\n{}", up.stderr());
    let mut all: Vec<u16> = (0..3).map(|i| zk_port + i).collect();
    all.extend((0..3).flat_map(|i| [peer_port + i, peer_port + 1000 + i]));
    all.extend(ports.push());
    assert_ports_freed(&all, Duration::from_secs(1));
}

#[test]
fn up_refuses_an_even_zookeeper_ensemble_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_reborn"))
        .args(["up", "--zk-nodes", "2"])
        .stdin(Stdio::null())
        .output()
        .expect("run reborn up");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("use an odd number"), "{stderr}");
}
