//! Real client libraries, with their default settings, through the proxy:
//! redis-py 8 (RESP3 by default) runs `tests/clients/redis_py.py` against a
//! two-group cluster and its proxy, in the virtualenv `scripts/pyenv.sh` makes
//! (`target/pyenv`; `scripts/test.sh` makes it before `cargo test`, and this
//! test makes it itself when it is missing). No virtualenv and no way to make
//! one is a failure with the reason, never a silent skip.
//!
//! ioredis 5 (RESP2) runs `tests/clients/ioredis.js` the same way, with the
//! packages `scripts/nodeenv.sh` installs into `target/nodeenv`. Only a machine
//! without `node` skips it, saying so; with node, a missing environment that
//! `scripts/nodeenv.sh` cannot make is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use common::cluster::Cluster;
use reborn::libs::hash::slot_of;

/// The checks of `redis_py.py` that must pass on this branch.
const ENABLED: &[&str] = &[
    "ping",
    "resp3",
    "set_get",
    "types",
    "pipeline",
    "client",
    "lock",
    "script",
    "transaction",
    "scan_iter",
    "pubsub",
];

/// Checks that wait for work still to come; switch each on (move it to
/// `ENABLED`) once it lands. `REBORN_PY_CHECKS=a,b` runs any set.
const PENDING: &[&str] = &[];

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/redis_py.py");

/// The checks of `ioredis.js`; all must pass. `REBORN_JS_CHECKS=a,b` runs any set.
const JS_CHECKS: &[&str] = &[
    "ping",
    "set_get",
    "pipeline",
    "transaction",
    "lock",
    "script",
    "pubsub",
    "scan_stream",
];

const JS_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/ioredis.js");

/// The virtualenv's python: `$REBORN_PYENV` or `target/pyenv`, made by
/// `scripts/pyenv.sh` if it does not work yet. Once per test process: the
/// tests run at once, and two `python3 -m venv --clear` of one directory
/// break each other.
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(make_python).clone()
}

fn make_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var_os("REBORN_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/pyenv"));
    let python = venv.join("bin/python");
    let works = |py: &Path| {
        std::process::Command::new(py)
            .args(["-c", "import redis"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !works(&python) {
        let made = std::process::Command::new(root.join("scripts/pyenv.sh"))
            .env("REBORN_PYENV", &venv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/pyenv.sh: {e}"));
        assert!(
            made.status.success() && works(&python),
            "no redis-py virtualenv at {} and scripts/pyenv.sh could not make one \
             (python3 and python3-venv are needed: scripts/install-deps.sh installs them):\n{}{}",
            venv.display(),
            String::from_utf8_lossy(&made.stdout),
            String::from_utf8_lossy(&made.stderr),
        );
    }
    python
}

/// Runs `redis_py.py` with `args`, for at most two minutes.
async fn run_script(args: &[String]) -> Output {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(SCRIPT).args(args).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("redis_py.py finished within 2 minutes")
        .expect("run redis_py.py")
}

/// `node`, if this machine has it (`node --version` runs).
fn node() -> Option<PathBuf> {
    let node = PathBuf::from("node");
    std::process::Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(node)
}

/// The `node_modules` holding ioredis: `$REBORN_NODEENV` or `target/nodeenv`,
/// made by `scripts/nodeenv.sh` (which also checks the pinned version), once
/// per test process so that two tests never run `npm install` into it at once.
fn node_modules() -> PathBuf {
    static NODE_MODULES: OnceLock<PathBuf> = OnceLock::new();
    NODE_MODULES.get_or_init(make_node_modules).clone()
}

fn make_node_modules() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("REBORN_NODEENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/nodeenv"));
    let made = std::process::Command::new(root.join("scripts/nodeenv.sh"))
        .env("REBORN_NODEENV", &dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/nodeenv.sh: {e}"));
    assert!(
        made.status.success(),
        "no ioredis at {} and scripts/nodeenv.sh could not install it \
         (npm and the npm registry are needed):\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&made.stdout),
        String::from_utf8_lossy(&made.stderr),
    );
    dir.join("node_modules")
}

/// Runs `ioredis.js` with `args` under `node`, for at most two minutes.
async fn run_js(node: &Path, args: &[String]) -> Output {
    let mut cmd = tokio::process::Command::new(node);
    cmd.arg(JS_SCRIPT)
        .args(args)
        .env("NODE_PATH", node_modules())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("ioredis.js finished within 2 minutes")
        .expect("run ioredis.js")
}

/// A key whose slot group 1 (`true`) or group 2 owns.
fn key_on(prefix: &str, group_1: bool) -> String {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| (slot_of(k.as_bytes()) < 512) == group_1)
        .expect("some key hashes there")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_with_default_settings_works_through_the_proxy() {
    let checks = std::env::var("REBORN_PY_CHECKS").unwrap_or_else(|_| ENABLED.join(","));
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let keys = format!("{},{}", key_on("py", true), key_on("py", false));
    let out = run_script(&[
        "--host".into(),
        proxy.ip().to_string(),
        "--port".into(),
        proxy.port().to_string(),
        "--keys".into(),
        keys,
        "--checks".into(),
        checks.clone(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "redis_py.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for check in checks.split(',').filter(|c| !c.is_empty()) {
        assert!(
            stdout.lines().any(|l| l == format!("ok {check}")),
            "check {check} did not report ok:\n{stdout}\n{stderr}"
        );
    }
}

#[tokio::test]
async fn every_check_of_the_script_is_enabled_or_pending() {
    let out = run_script(&["--list".into()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    listed.sort();
    let mut known: Vec<String> = ENABLED.iter().chain(PENDING).map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(listed, known);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ioredis_with_default_settings_works_through_the_proxy() {
    let Some(node) = node() else {
        eprintln!(
            "SKIPPED: `node` is not installed, so ioredis cannot run (scripts/install-deps.sh installs it)"
        );
        return;
    };
    let checks = std::env::var("REBORN_JS_CHECKS").unwrap_or_else(|_| JS_CHECKS.join(","));
    let c = Cluster::start().await;
    let proxy = c.proxy().await;
    let keys = format!("{},{}", key_on("js", true), key_on("js", false));
    let out = run_js(
        &node,
        &[
            "--host".into(),
            proxy.ip().to_string(),
            "--port".into(),
            proxy.port().to_string(),
            "--keys".into(),
            keys,
            "--checks".into(),
            checks.clone(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ioredis.js failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for check in checks.split(',').filter(|c| !c.is_empty()) {
        assert!(
            stdout.lines().any(|l| l == format!("ok {check}")),
            "check {check} did not report ok:\n{stdout}\n{stderr}"
        );
    }
}

#[tokio::test]
async fn every_check_of_the_js_script_is_listed() {
    let Some(node) = node() else {
        eprintln!("SKIPPED: `node` is not installed");
        return;
    };
    let out = run_js(&node, &["--list".into()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    listed.sort();
    let mut known: Vec<String> = JS_CHECKS.iter().map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(listed, known);
}
