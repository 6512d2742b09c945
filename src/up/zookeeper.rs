//! A standalone ZooKeeper server started from the Debian `zookeeper` jars, for
//! `reborn up` and for the integration tests.
//!
//! We call `java … QuorumPeerMain` directly rather than `zkServer.sh`: the script
//! daemonizes (we would lose the pid), logs under /var/log and turns on JMX. The
//! config is tuned for local use: `tickTime=500` allows 1 s sessions so expiry
//! tests are fast, the Jetty admin server (which would bind :8080 in every
//! instance) is off, and the four-letter words we probe with are whitelisted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::error::UpError;
use super::port;
use super::probe;
use super::process::ChildProcess;
use super::workdir::Workdir;

/// The Debian jars: the server (its manifest's Class-Path pulls in the rest) and
/// the log4j binding, without which ZooKeeper logs nothing at all.
const JARS: [&str; 3] = [
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
];

/// Holds `log4j.properties`; optional (without it we only lose the log format).
const CONF_DIR: &str = "/etc/zookeeper/conf";

/// Start-up takes 0.8 s idle and ~3 s under load; leave room for a busy CI box.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// SIGTERM takes ZooKeeper about 2 s; then SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A running standalone ZooKeeper on `127.0.0.1:<port>`; stopped on drop.
#[derive(Debug)]
pub struct ZooKeeper {
    port: u16,
    // Field order matters: the process stops before its directory is removed.
    process: Option<ChildProcess>,
    dir: Workdir,
}

impl ZooKeeper {
    /// Starts ZooKeeper on `127.0.0.1:port`, keeping its data and log in `dir`
    /// (created if needed, kept after stop). Returns once it answers `ruok`.
    ///
    /// # Errors
    /// [`UpError::ZooKeeperNotInstalled`] / [`UpError::JavaNotInstalled`] with the
    /// package to install, [`UpError::PortInUse`], or a start-up failure with the
    /// tail of its log.
    pub fn start(port: u16, dir: impl Into<PathBuf>) -> Result<ZooKeeper, UpError> {
        ZooKeeper::launch(port, Workdir::given(dir)?)
    }

    /// Like [`start`](Self::start), in a fresh temp dir that is removed on stop.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_in_temp_dir(port: u16) -> Result<ZooKeeper, UpError> {
        ZooKeeper::launch(port, Workdir::temp(&format!("zk-{port}"))?)
    }

    fn launch(port: u16, dir: Workdir) -> Result<ZooKeeper, UpError> {
        if let Some(missing) = JARS.iter().map(Path::new).find(|j| !j.exists()) {
            return Err(UpError::ZooKeeperNotInstalled {
                missing: missing.to_path_buf(),
            });
        }
        port::ensure_free(port, "ZooKeeper")?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(UpError::io(format!("create {}", data.display())))?;
        let cfg = dir.path().join("zoo.cfg");
        std::fs::write(&cfg, config(port, &data)).map_err(UpError::io(format!("write {}", cfg.display())))?;

        let what = format!("ZooKeeper 127.0.0.1:{port}");
        let log = dir.path().join("zookeeper.log");
        let mut process = ChildProcess::spawn(&what, command(dir.path(), &cfg), &log, STOP_GRACE, || {
            UpError::JavaNotInstalled
        })?;
        let addr = format!("127.0.0.1:{port}");
        // `ruok` answers `imok` as soon as the port is open; `conf` only once the
        // server serves requests, so that is our readiness probe.
        let mut conf = String::new();
        process.wait_until(READY_TIMEOUT, || {
            conf = probe::four_letter(&addr, "conf").unwrap_or_default();
            conf.contains("dataDir=") && probe::four_letter(&addr, "ruok").is_ok_and(|a| a == "imok")
        })?;
        // The answer may come from a ZooKeeper that grabbed the port after our
        // check (ours then exits on bind). Only ours reports our data dir.
        if !conf.contains(&format!("dataDir={}", data.display())) {
            return Err(match process.exited() {
                Some(status) => process.exited_early(status),
                None => UpError::Impostor {
                    port,
                    what: "ZooKeeper".into(),
                },
            });
        }
        tracing::debug!(%addr, pid = process.pid(), "ZooKeeper ready");
        Ok(ZooKeeper {
            port,
            process: Some(process),
            dir,
        })
    }

    /// `127.0.0.1:<port>`, the connect string for clients.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding `zoo.cfg`, `data/` and `zookeeper.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("zookeeper.log")
    }

    /// The java process id, or `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// Stops the server: SIGTERM, then SIGKILL after a few seconds. Idempotent;
    /// also done on drop.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `zoo.cfg` for a standalone server on loopback.
fn config(port: u16, data: &Path) -> String {
    format!(
        "# Written by reborn: a standalone ZooKeeper for local use.\n\
         # tickTime 500 ms => sessions may be as short as 1 s (fast expiry tests).\n\
         tickTime=500\n\
         minSessionTimeout=1000\n\
         maxSessionTimeout=60000\n\
         dataDir={}\n\
         clientPort={port}\n\
         clientPortAddress=127.0.0.1\n\
         # The Jetty admin server would bind :8080 in every instance.\n\
         admin.enableServer=false\n\
         # 3.8 whitelists only srvr; we probe with ruok and conf.\n\
         4lw.commands.whitelist=ruok,srvr,mntr,stat,cons,conf\n\
         maxClientCnxns=0\n",
        data.display()
    )
}

/// `java … QuorumPeerMain zoo.cfg`, logging to the console (our log file).
fn command(dir: &Path, cfg: &Path) -> Command {
    let mut classpath = vec![CONF_DIR];
    classpath.extend(JARS);
    let mut cmd = Command::new("java");
    cmd.args(["-Xms32m", "-Xmx256m", "-XX:+UseSerialGC"])
        .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
        .arg("-Dzookeeper.root.logger=INFO,CONSOLE")
        .arg("-cp")
        .arg(classpath.join(":"))
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(cfg)
        .current_dir(dir);
    cmd
}
