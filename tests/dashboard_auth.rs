//! The dashboard's API token against a real ZooKeeper and redis-servers: a
//! change without the token (or with a wrong one) is refused with 401 and
//! changes nothing, the right token gets it done; reads stay open unless
//! `read_auth`; without a token the dashboard refuses a non-loopback address
//! unless `--insecure`; `reborn admin` sends the token from `--token` or
//! `REBORN_TOKEN` and says which is missing when the dashboard refuses.

mod common;

use std::process::Output;
use std::time::Duration;

use axum::http::Method;
use common::cluster::Cluster;
use reborn::topo::manager::dashboard::access::AuthConfig;
use reborn::topo::manager::dashboard::client::{self, DashboardClient};
use reborn::topo::manager::dashboard::{BoundDashboard, DashboardConfig, DashboardError};
use reborn::topo::manager::task;
use reborn::topo::watcher;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "s3cret-T0ken";

/// An in-process dashboard of `c` with `auth`; its address once it leads.
async fn dashboard(c: &Cluster, auth: AuthConfig) -> String {
    let addr = c.dashboard_with(|cfg| cfg.auth = auth).await;
    let api = DashboardClient::new(&addr).with_token(Some(TOKEN.into()));
    common::eventually("the dashboard to lead", Duration::from_secs(10), || async {
        matches!(api.get("/api/dashboard").await, Ok(r) if r.body["role"] == "leader")
    })
    .await;
    addr
}

fn token(read_auth: bool) -> AuthConfig {
    AuthConfig {
        token: TOKEN.into(),
        read_auth,
        insecure: false,
    }
}

/// A reply as it came over the wire: status, header lines, body.
struct Raw {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request with the exact `Authorization` header given (none for
/// `None`), read to the end: the tests need the headers of the reply, which
/// the client does not keep.
async fn raw(addr: &str, method: &str, path: &str, authorization: Option<&str>) -> Raw {
    let auth = authorization.map(|a| ("Authorization", a));
    raw_with(addr, method, path, addr, auth.as_slice()).await
}

/// [`raw`] with the `Host` given and other header lines.
async fn raw_with(addr: &str, method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> Raw {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let body = "{}";
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.expect("read");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    Raw {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Asserts that `r` is the API's 401: a bearer challenge and a JSON error.
fn assert_unauthorized(r: &Raw, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}\n{}", r.head, r.body);
    let challenge = r
        .head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(": ")?;
            name.eq_ignore_ascii_case("www-authenticate").then_some(value)
        })
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate in\n{}", r.head));
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    let body: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{what}: {e}: {}", r.body));
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("token")),
        "{what}: {body}"
    );
}

/// Every kind of change the API offers, by method.
const CHANGES: [(&str, &str); 7] = [
    ("POST", "/api/groups"),
    ("DELETE", "/api/groups/2"),
    ("POST", "/api/slots/assign"),
    ("POST", "/api/migrate"),
    ("POST", "/api/proxies/p1/offline"),
    ("POST", "/api/rebalance"),
    ("PUT", "/api/loglevel/debug"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_token_and_nothing_changes_without_it() {
    let c = Cluster::start().await;
    let dash = dashboard(&c, token(false)).await;
    let before = watcher::load(&c.store).await.expect("load");

    for (method, path) in CHANGES {
        for auth in [None, Some("Bearer wrong"), Some("Basic czNjcmV0"), Some(TOKEN)] {
            let r = raw(&dash, method, path, auth).await;
            assert_unauthorized(&r, &format!("{method} {path} with {auth:?}"));
        }
    }
    // The wrong-token refusal says so, for the operator who has one.
    let r = raw(&dash, "POST", "/api/groups", Some("Bearer wrong")).await;
    assert!(
        r.body.contains("wrong") && r.head.contains("invalid_token"),
        "{}",
        r.body
    );
    assert_eq!(
        watcher::load(&c.store).await.expect("load"),
        before,
        "a refused change changed ZooKeeper"
    );
    assert!(
        task::list(&c.store).await.expect("tasks").is_empty(),
        "a refused migrate was queued"
    );

    // Reads stay open, and so does the page (no UI here yet: 404, not 401).
    let groups = client::get(&dash, "/api/groups").await.expect("groups");
    assert_eq!(groups.status, 200, "{:?}", groups.body);
    assert_ne!(raw(&dash, "GET", "/", None).await.status, 401);

    // The right token gets the change done, whatever the scheme's case.
    let api = DashboardClient::new(&dash).with_token(Some(TOKEN.into()));
    let created = api.post("/api/groups", &json!({"id": 3})).await.expect("create");
    assert_eq!(created.status, 201, "{:?}", created.body);
    let r = raw(
        &dash,
        "POST",
        "/api/proxies/p1/offline",
        Some(&format!("bearer {TOKEN}")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let after = watcher::load(&c.store).await.expect("load");
    assert!(after.groups.contains_key(&3), "{after:?}");
    assert!(after.offline_proxies.contains("p1"), "{after:?}");
    let removed = api
        .call(Method::DELETE, "/api/groups/3", None)
        .await
        .expect("remove");
    assert_eq!(removed.status, 200, "{:?}", removed.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_auth_closes_the_reads_but_not_the_page() {
    let c = Cluster::start().await;
    let dash = dashboard(&c, token(true)).await;
    for path in ["/api/groups", "/api/tasks", "/api/dashboard", "/api/slots"] {
        for auth in [None, Some("Bearer wrong")] {
            assert_unauthorized(
                &raw(&dash, "GET", path, auth).await,
                &format!("GET {path} {auth:?}"),
            );
        }
        let r = raw(&dash, "GET", path, Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    }
    assert_ne!(raw(&dash, "GET", "/", None).await.status, 401);
    // The client reports a refused read as a missing token.
    let err = client::get(&dash, "/api/groups")
        .await
        .expect("a reply")
        .into_json::<Value>()
        .expect_err("refused");
    assert!(err.to_string().contains("--token or REBORN_TOKEN"), "{err}");
}

/// `reborn ARGS…` without `REBORN_TOKEN` from the test's environment, plus `env`.
async fn reborn(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_reborn"));
    cmd.args(args)
        .env_remove("REBORN_TOKEN")
        .envs(env.iter().copied());
    cmd.output().await.expect("run reborn")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sends_the_token_from_the_flag_or_the_environment() {
    let c = Cluster::start().await;
    let dash = dashboard(&c, token(false)).await;
    let migrate = [
        "admin",
        "migrate",
        "--slots",
        "0-3",
        "--to",
        "2",
        "--dashboard",
        &dash,
    ];

    let out = reborn(&migrate, &[]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the dashboard needs a token: --token or REBORN_TOKEN"),
        "{}",
        text(&out)
    );
    let out = reborn(&[&migrate[..], &["--token", "wrong"]].concat(), &[]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("needs a token") && text(&out).contains("wrong"),
        "{}",
        text(&out)
    );
    assert!(
        task::list(&c.store).await.expect("tasks").is_empty(),
        "refused, yet queued"
    );

    // From the environment.
    let out = reborn(&migrate, &[("REBORN_TOKEN", TOKEN)]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("queued task 1"), "{}", text(&out));
    // From the flag; reads need none.
    let out = reborn(
        &["admin", "pause", "1", "--dashboard", &dash, "--token", TOKEN],
        &[],
    )
    .await;
    assert!(
        out.status.success() || text(&out).contains("409"),
        "{}",
        text(&out)
    );
    let out = reborn(&["admin", "tasks", "--dashboard", &dash], &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("0-3"), "{}", text(&out));
    assert_eq!(task::list(&c.store).await.expect("tasks").len(), 1);
}

/// A web page elsewhere cannot use a visitor's browser to drive a dashboard
/// that has no token (loopback only): not by a cross-origin request (a
/// bodyless POST needs no preflight), nor by making its own name point at
/// 127.0.0.1. Before, a page set a proxy offline and started a rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_cannot_drive_a_dashboard_without_a_token() {
    let c = Cluster::start().await;
    let addr = dashboard(&c, AuthConfig::default()).await;
    let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
    let change = "/api/proxies/p1/offline";
    let evil = [("Origin", "http://evil.example")];
    let r = raw_with(&addr, "POST", change, &addr, &evil).await;
    assert_eq!(r.status, 403, "cross-origin: {}", r.body);
    assert!(r.body.contains("another origin"), "{}", r.body);
    let rebound = format!("evil.example:{port}");
    let origin = format!("http://{rebound}");
    let r = raw_with(&addr, "POST", change, &rebound, &[("Origin", &origin)]).await;
    assert_eq!(r.status, 403, "DNS rebinding: {}", r.body);
    assert!(r.body.contains("Host"), "{}", r.body);
    let proxies = raw(&addr, "GET", "/api/proxies", None).await;
    assert_eq!(
        (proxies.status, proxies.body.as_str()),
        (200, "[]"),
        "nothing was set offline"
    );
    // The dashboard's own page, and tools, are served.
    let own = format!("http://{addr}");
    let r = raw_with(&addr, "GET", "/api/dashboard", &addr, &[("Origin", &own)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let local = format!("localhost:{port}");
    let r = raw_with(&addr, "GET", "/api/dashboard", &local, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_loopback_is_served_unless_insecure() {
    let zk = common::zk_config();
    let config = |listen: &str, auth: AuthConfig| DashboardConfig {
        listen: listen.into(),
        zk: zk.clone(),
        auth,
        ..DashboardConfig::default()
    };
    // In-process: refused on every interface, allowed on loopback, with a
    // token, or when told.
    match BoundDashboard::bind(config("0.0.0.0:0", AuthConfig::default())).await {
        Err(e @ DashboardError::Exposed { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("[auth] token") && msg.contains("--insecure"),
                "{msg}"
            );
        }
        other => panic!("expected a refusal, got {:?}", other.map(|b| b.local_addr())),
    }
    BoundDashboard::bind(config("localhost:0", AuthConfig::default()))
        .await
        .expect("loopback by name");
    BoundDashboard::bind(config("0.0.0.0:0", token(false)))
        .await
        .expect("with a token");
    let insecure = AuthConfig {
        insecure: true,
        ..AuthConfig::default()
    };
    BoundDashboard::bind(config("0.0.0.0:0", insecure))
        .await
        .expect("insecure");

    // The binary: refuses with the fix named, and with --insecure serves.
    let store = reborn::topo::Store::connect(&zk).await.expect("zk");
    reborn::topo::operation::init_product(&store).await.expect("init");
    let port = common::free_port().to_string();
    let listen = format!("0.0.0.0:{port}");
    let args = [
        "dashboard",
        "--listen",
        &listen,
        "--zk",
        &zk.addr,
        "--zk-root",
        &zk.root,
        "--product",
        &zk.product,
    ];
    let out = reborn(&args, &[]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("--insecure") && text(&out).contains("[auth] token"),
        "{}",
        text(&out)
    );
    let _insecure = common::spawn_guarded(
        std::process::Command::new(env!("CARGO_BIN_EXE_reborn"))
            .args(args)
            .arg("--insecure")
            .env_remove("REBORN_TOKEN")
            .env("RUST_LOG", "warn"),
    );
    let local = format!("127.0.0.1:{port}");
    common::eventually(
        "the --insecure dashboard to lead",
        Duration::from_secs(10),
        || async {
            matches!(client::get(&local, "/api/dashboard").await, Ok(r) if r.body["role"] == "leader")
        },
    )
    .await;
    store.close().await;
}
