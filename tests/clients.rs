//! Real client libraries, with their default settings, through the proxy:
//! redis-py 8 (RESP3 by default) runs `tests/clients/redis_py.py` against a
//! two-group cluster and its proxy, in the virtualenv `scripts/pyenv.sh` makes
//! (`target/pyenv`; `scripts/test.sh` makes it before `cargo test`, and this
//! test makes it itself when it is missing). No virtualenv and no way to make
//! one is a failure with the reason, never a silent skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
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

/// The virtualenv's python: `$REBORN_PYENV` or `target/pyenv`, made by
/// `scripts/pyenv.sh` if it does not work yet.
fn python() -> PathBuf {
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
