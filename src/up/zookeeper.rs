//! One ZooKeeper server started from the Debian `zookeeper` jars, standalone or
//! as a member of an [`Ensemble`](super::Ensemble), for `reborn up` and for the
//! integration tests.
//!
//! We call `java … QuorumPeerMain` directly rather than `zkServer.sh`: the script
//! daemonizes (we would lose the pid), logs under /var/log and turns on JMX. The
//! config is tuned for local use: `tickTime=500` allows 1 s sessions so expiry
//! tests are fast, the Jetty admin server (which would bind :8080 in every
//! instance) is off, and the four-letter words we probe with are whitelisted.
//! The one config writer serves both modes: a member's config adds the
//! ensemble's `server.N` lines, and its id goes to `data/myid`.

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

/// The three ports of one ensemble member: clients, the followers' link to
/// the leader (quorum), and leader election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberPorts {
    /// Where clients connect.
    pub client: u16,
    /// Where the leader listens for its followers.
    pub quorum: u16,
    /// Where members talk during leader election.
    pub election: u16,
}

impl MemberPorts {
    /// The three ports, with what each is for (for port checks and errors).
    pub fn named(&self) -> [(u16, &'static str); 3] {
        [
            (self.client, "ZooKeeper"),
            (self.quorum, "ZooKeeper's quorum port"),
            (self.election, "ZooKeeper's election port"),
        ]
    }
}

/// How a server runs: alone, or as member `id` (from 1) of the ensemble `peers`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Membership<'a> {
    Standalone,
    Member { id: usize, peers: &'a [MemberPorts] },
}

/// A running ZooKeeper server on `127.0.0.1:<port>`, standalone or one member
/// of an [`Ensemble`](super::Ensemble); stopped on drop.
#[derive(Debug)]
pub struct ZooKeeper {
    port: u16,
    /// The ports it binds: the client port, and a member's two peer ports.
    ports: Vec<(u16, &'static str)>,
    // Field order matters: the process stops before its directory is removed.
    process: Option<ChildProcess>,
    dir: Workdir,
}

impl ZooKeeper {
    /// Starts a standalone ZooKeeper on `127.0.0.1:port`, keeping its data and
    /// log in `dir` (created if needed, kept after stop). Returns once it serves.
    ///
    /// # Errors
    /// [`UpError::ZooKeeperNotInstalled`] / [`UpError::JavaNotInstalled`] with the
    /// package to install, [`UpError::PortInUse`], or a start-up failure with the
    /// tail of its log.
    pub fn start(port: u16, dir: impl Into<PathBuf>) -> Result<ZooKeeper, UpError> {
        let mut zk = ZooKeeper::spawn(port, Membership::Standalone, Workdir::given(dir)?)?;
        zk.wait_serving()?;
        Ok(zk)
    }

    /// Like [`start`](Self::start), in a fresh temp dir that is removed on stop.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_in_temp_dir(port: u16) -> Result<ZooKeeper, UpError> {
        let mut zk = ZooKeeper::spawn(
            port,
            Membership::Standalone,
            Workdir::temp(&format!("zk-{port}"))?,
        )?;
        zk.wait_serving()?;
        Ok(zk)
    }

    /// Writes the config (and a member's `myid`) into `dir` and starts the
    /// process, without waiting: a member serves only once a quorum of its
    /// ensemble runs, so an ensemble starts every member before it waits.
    pub(crate) fn spawn(port: u16, membership: Membership<'_>, dir: Workdir) -> Result<ZooKeeper, UpError> {
        if let Some(missing) = JARS.iter().map(Path::new).find(|j| !j.exists()) {
            return Err(UpError::ZooKeeperNotInstalled {
                missing: missing.to_path_buf(),
            });
        }
        let ports =
            match membership {
                Membership::Standalone => vec![(port, "ZooKeeper")],
                Membership::Member { id, peers } => peers
                    .get(id.wrapping_sub(1))
                    .map(|me| me.named().to_vec())
                    .ok_or_else(|| UpError::Invalid(format!("no ensemble member {id}")))?,
            };
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(UpError::io(format!("create {}", data.display())))?;
        if let Membership::Member { id, .. } = membership {
            let myid = data.join("myid");
            std::fs::write(&myid, format!("{id}\n"))
                .map_err(UpError::io(format!("write {}", myid.display())))?;
        }
        let cfg = dir.path().join("zoo.cfg");
        std::fs::write(&cfg, config(port, &data, membership))
            .map_err(UpError::io(format!("write {}", cfg.display())))?;
        let mut zk = ZooKeeper {
            port,
            ports,
            process: None,
            dir,
        };
        zk.launch()?;
        Ok(zk)
    }

    /// Starts the process on the config already written (first start, or a
    /// restart on the same data).
    fn launch(&mut self) -> Result<(), UpError> {
        for &(port, what) in &self.ports {
            port::ensure_free(port, what)?;
        }
        let cfg = self.dir.path().join("zoo.cfg");
        let process = ChildProcess::spawn(
            &self.what(),
            command(self.dir.path(), &cfg),
            &self.log_file(),
            STOP_GRACE,
            || UpError::JavaNotInstalled,
        )?;
        self.process = Some(process);
        Ok(())
    }

    /// Waits until the server serves requests: standalone, at once; a member,
    /// once it is in a quorum (leader or follower).
    ///
    /// # Errors
    /// [`UpError::NotReady`] after a minute, [`UpError::ExitedEarly`] with the
    /// log's tail, or [`UpError::Impostor`] if another ZooKeeper answers on our port.
    pub(crate) fn wait_serving(&mut self) -> Result<(), UpError> {
        let addr = self.addr();
        let data = self.dir.path().join("data");
        let what = self.what();
        let Some(process) = self.process.as_mut() else {
            return Err(UpError::NotRunning { what });
        };
        // `ruok` answers `imok` as soon as the port is open; `conf` only once the
        // server serves requests ("not currently serving" before, which is also
        // what a member out of quorum says), so that is our readiness probe.
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
                    port: self.port,
                    what: "ZooKeeper".into(),
                },
            });
        }
        tracing::debug!(%addr, pid = process.pid(), "ZooKeeper serving");
        Ok(())
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

    /// Sends a four-letter word (`srvr`, `cons`, `mntr`, …; see the whitelist in
    /// the config) and returns the answer, e.g. to see whether this member leads
    /// or which sessions it holds.
    ///
    /// # Errors
    /// No connection or no answer within 2 s.
    pub fn four_letter(&self, word: &str) -> std::io::Result<String> {
        probe::four_letter(&self.addr(), word)
    }

    /// Crashes the server with SIGKILL (for failure tests); its data stays.
    /// [`restart`](Self::restart) brings it back.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// The exit status if the server died by itself (a crash, a `kill` from
    /// outside), reaping it; `None` while it runs, and after [`stop`](Self::stop)
    /// or [`kill`](Self::kill).
    pub fn ended(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.process.as_mut()?.ended()?;
        self.process = None;
        Some(status)
    }

    /// Stops the server if it runs, starts it again on the same config and
    /// data, and waits until it serves (a member: until it has rejoined a quorum).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), UpError> {
        self.stop();
        self.launch()?;
        self.wait_serving()
    }

    /// Stops the server: SIGTERM, then SIGKILL after a few seconds. Idempotent;
    /// also done on drop.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    fn what(&self) -> String {
        format!("ZooKeeper {}", self.addr())
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `zoo.cfg` for a server on loopback: standalone, or a member of an ensemble
/// (its peers' `server.N` lines; its own id is in `data/myid`).
fn config(port: u16, data: &Path, membership: Membership<'_>) -> String {
    let mut cfg = format!(
        "# Written by reborn: a ZooKeeper for local use.\n\
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
    );
    if let Membership::Member { peers, .. } = membership {
        // In ticks: a follower has 5 s to sync with a new leader and is
        // dropped after 2.5 s without one.
        cfg.push_str("initLimit=10\nsyncLimit=5\n");
        for (i, p) in peers.iter().enumerate() {
            cfg.push_str(&format!(
                "server.{}=127.0.0.1:{}:{}\n",
                i + 1,
                p.quorum,
                p.election
            ));
        }
    }
    cfg
}

/// `java … QuorumPeerMain zoo.cfg`, logging to the console (our log file).
fn command(dir: &Path, cfg: &Path) -> Command {
    let mut classpath = vec![CONF_DIR];
    classpath.extend(JARS);
    let mut cmd = Command::new("java");
    // C1 only (`TieredStopAtLevel=1`): the C2 compiler of a fresh JVM takes a
    // core in bursts for minutes, and here it shares the machine with the
    // proxy and every redis-server; it tripled clients' p99 in
    // scripts/bench_migration.sh (docs/benchmarks.md). C1 code is ample for
    // a local cluster's coordination load.
    cmd.args([
        "-Xms32m",
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
    ])
    .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
    .arg("-Dzookeeper.root.logger=INFO,CONSOLE")
    .arg("-cp")
    .arg(classpath.join(":"))
    .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
    .arg(cfg)
    .current_dir(dir);
    cmd
}
