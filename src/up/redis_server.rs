//! A stock `redis-server` on loopback, for `reborn up` and for the integration
//! tests: instant replication, and start/kill/restart so failure tests can
//! crash one. Throwaway by default (no persistence, no config file); a
//! [`persistent`](RedisServerBuilder::persistent) one (what `reborn up` runs)
//! keeps an AOF and a config file in its dir, so a restarted server keeps its
//! data, and `CONFIG REWRITE` can record that it is a replica.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::error::UpError;
use super::port;
use super::probe::{self, is_status, redis_call};
use super::process::ChildProcess;
use super::workdir::Workdir;
use crate::libs::resp_client::Frame;

/// redis-server is ready in ~20 ms; the margin is for a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`RedisServer::replicaof`] waits for the initial sync.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// Without persistence SIGTERM is near instant; then SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How to start a [`RedisServer`]; see [`RedisServer::builder`].
#[derive(Debug, Clone)]
pub struct RedisServerBuilder {
    port: u16,
    dir: Option<PathBuf>,
    password: Option<String>,
    persistent: bool,
    /// `databases`; Redis's default (16) when `None`.
    databases: Option<u32>,
}

impl RedisServerBuilder {
    /// Sets `databases`: with 1, the server has no room for a migration's
    /// tombstones (`libs::tombstone`), which reborn must live without.
    pub fn databases(mut self, n: u32) -> Self {
        self.databases = Some(n);
        self
    }

    /// Keeps data and log in `dir` (created if needed, kept after stop) instead of
    /// a temp dir removed on stop.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Sets `requirepass` and `masterauth` (one password per cluster, as Codis's
    /// product auth), so replicas of a protected master can sync.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Keeps an append-only file (fsync every second) and a config file in the
    /// dir: a restart brings the data back, and a `REPLICAOF` recorded with
    /// `CONFIG REWRITE` survives it.
    pub fn persistent(mut self) -> Self {
        self.persistent = true;
        self
    }

    /// Starts the server and waits until it answers `PING`.
    ///
    /// # Errors
    /// [`UpError::RedisNotInstalled`], [`UpError::PortInUse`] (checked before
    /// starting), or a start-up failure with the tail of its log.
    pub fn start(self) -> Result<RedisServer, UpError> {
        let dir = match self.dir {
            Some(dir) => Workdir::given(dir)?,
            None => Workdir::temp(&format!("redis-{}", self.port))?,
        };
        let mut server = RedisServer {
            port: self.port,
            password: self.password,
            persistent: self.persistent,
            databases: self.databases,
            resumed: false,
            process: None,
            dir,
        };
        server.resumed = server.persistent && server.config_file().exists();
        server.launch()?;
        Ok(server)
    }
}

/// A running `redis-server` on `127.0.0.1:<port>`; stopped on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    persistent: bool,
    databases: Option<u32>,
    /// Its first start found the config file of an earlier run (a kept dir).
    resumed: bool,
    // Field order matters: the process stops before its directory is removed.
    process: Option<ChildProcess>,
    dir: Workdir,
}

impl RedisServer {
    /// A builder for a server on `127.0.0.1:port` (temp dir, no password).
    pub fn builder(port: u16) -> RedisServerBuilder {
        RedisServerBuilder {
            port,
            dir: None,
            password: None,
            persistent: false,
            databases: None,
        }
    }

    /// Starts a server on `127.0.0.1:port` with data and log in `dir` (kept).
    ///
    /// # Errors
    /// As [`RedisServerBuilder::start`].
    pub fn start(port: u16, dir: impl Into<PathBuf>) -> Result<RedisServer, UpError> {
        RedisServer::builder(port).dir(dir).start()
    }

    /// Starts a server on `127.0.0.1:port` in a temp dir removed on stop.
    ///
    /// # Errors
    /// As [`RedisServerBuilder::start`].
    pub fn start_in_temp_dir(port: u16) -> Result<RedisServer, UpError> {
        RedisServer::builder(port).start()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the log (and a replica's received RDB).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.port))
    }

    /// The server's process id, or `None` while it is stopped or killed.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// Whether the process is still alive (false after [`kill`](Self::kill) or a crash).
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// Makes this server a replica of `master_addr` (`host:port`) and waits until
    /// the initial sync is done (`master_link_status:up`).
    ///
    /// # Errors
    /// [`UpError::Redis`] if the server refuses, [`UpError::NotReady`] if the sync
    /// does not finish in time, [`UpError::NotRunning`] after a kill.
    pub fn replicaof(&mut self, master_addr: &str) -> Result<(), UpError> {
        let (host, port) = master_addr
            .rsplit_once(':')
            .ok_or_else(|| UpError::Invalid(format!("master address {master_addr:?} is not host:port")))?;
        match self.call(&["REPLICAOF", host, port])? {
            Frame::SimpleString(_) => {}
            other => return Err(self.redis_error(format!("REPLICAOF: {}", probe::text(&other)))),
        }
        if self.persistent {
            // A restart must come back as a replica, never as an empty master.
            match self.call(&["CONFIG", "REWRITE"])? {
                Frame::SimpleString(_) => {}
                other => return Err(self.redis_error(format!("CONFIG REWRITE: {}", probe::text(&other)))),
            }
        }
        let addr = self.addr();
        let password = self.password.clone();
        let synced = move || {
            redis_call(&addr, password.as_deref(), &["INFO", "replication"])
                .is_ok_and(|info| probe::text(&info).contains("master_link_status:up"))
        };
        self.running()?.wait_until(SYNC_TIMEOUT, synced)
    }

    /// Crashes the server with SIGKILL (for failure tests). Data is lost: nothing
    /// is persisted. [`restart`](Self::restart) brings it back.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// True if this persistent server started from the config file an earlier
    /// run left in its dir: its role is what that file says (`replicaof`, kept
    /// by `CONFIG REWRITE` through failovers and promotes), not the plan's.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The exit status if the server died by itself (a crash, a `kill` from
    /// outside), reaping it; `None` while it runs, and after [`stop`](Self::stop)
    /// or [`kill`](Self::kill). [`restart`](Self::restart) brings it back.
    pub fn ended(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.process.as_mut()?.ended()?;
        self.process = None;
        Some(status)
    }

    /// Stops the server if it runs, then starts it again on the same port and dir.
    /// A throwaway one comes back empty and as a master, like a real
    /// redis-server whose `REPLICAOF` was never written to its config; a
    /// persistent one with its AOF and its (possibly rewritten) config.
    ///
    /// # Errors
    /// As [`RedisServerBuilder::start`].
    pub fn restart(&mut self) -> Result<(), UpError> {
        self.stop();
        self.launch()
    }

    /// Stops the server: SIGTERM, then SIGKILL after 2 s. Idempotent; also done
    /// on drop.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// The config file of a persistent server.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.conf", self.port))
    }

    fn launch(&mut self) -> Result<(), UpError> {
        port::ensure_free(self.port, "redis-server")?;
        let what = format!("redis-server {}", self.addr());
        let log = self.log_file();
        let command = if self.persistent {
            self.persistent_command()?
        } else {
            self.command()
        };
        let mut process =
            ChildProcess::spawn(&what, command, &log, STOP_GRACE, || UpError::RedisNotInstalled)?;
        let addr = self.addr();
        let password = self.password.clone();
        process.wait_until(READY_TIMEOUT, || {
            redis_call(&addr, password.as_deref(), &["PING"]).is_ok_and(|r| is_status(&r, "PONG"))
        })?;
        // The PONG may come from a server that took the port after our check
        // (ours then exits on bind). Only ours reports our pid.
        let pid = process.pid();
        let ours = redis_call(&addr, self.password.as_deref(), &["INFO", "server"])
            .is_ok_and(|info| probe::text(&info).contains(&format!("process_id:{pid}\r\n")));
        if !ours {
            return Err(match process.exited() {
                Some(status) => process.exited_early(status),
                None => UpError::Impostor {
                    port: self.port,
                    what: "redis-server".into(),
                },
            });
        }
        tracing::debug!(%addr, pid, "redis-server ready");
        self.process = Some(process);
        Ok(())
    }

    fn command(&self) -> Command {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            // Throwaway: never write RDB/AOF; a replica still writes the RDB it
            // receives, hence a per-port file name in our own dir.
            .args(["--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            // Redis 7 waits 5 s before a diskless sync by default.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--dbfilename", &format!("dump-{port}.rdb")])
            .arg("--logfile")
            .arg(self.log_file());
        if let Some(password) = &self.password {
            cmd.args(["--requirepass", password, "--masterauth", password]);
        }
        if let Some(n) = self.databases {
            cmd.args(["--databases", &n.to_string()]);
        }
        cmd
    }

    /// `redis-server <config file>`, writing the file on first start only: a
    /// later start must keep what `CONFIG REWRITE` recorded (`replicaof`).
    fn persistent_command(&self) -> Result<Command, UpError> {
        let file = self.config_file();
        if !file.exists() {
            let port = self.port;
            let mut text = format!(
                "# Written by reborn up; CONFIG REWRITE may add to it.\n\
                 port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                 dir {}\nlogfile {}\ndbfilename dump-{port}.rdb\n\
                 appendonly yes\nappendfilename appendonly-{port}.aof\nappenddirname aof-{port}\n\
                 appendfsync everysec\nsave \"\"\nrepl-diskless-sync-delay 0\n\
                 # A growing keyspace (a migration's target) is rehashed on access only,\n\
                 # not in 1-2 ms bursts every 100 ms (docs/migration.md).\n\
                 activerehashing no\n",
                self.dir.path().display(),
                self.log_file().display()
            );
            if let Some(password) = &self.password {
                text.push_str(&format!("requirepass {password}\nmasterauth {password}\n"));
            }
            if let Some(n) = self.databases {
                text.push_str(&format!("databases {n}\n"));
            }
            std::fs::write(&file, text).map_err(UpError::io(format!("write {}", file.display())))?;
        }
        let mut cmd = Command::new("redis-server");
        cmd.arg(&file);
        Ok(cmd)
    }

    /// Sends one command on a fresh connection.
    fn call(&mut self, args: &[&str]) -> Result<Frame, UpError> {
        self.running()?;
        redis_call(&self.addr(), self.password.as_deref(), args).map_err(|e| self.redis_error(e.to_string()))
    }

    fn running(&mut self) -> Result<&mut ChildProcess, UpError> {
        let what = format!("redis-server {}", self.addr());
        self.process.as_mut().ok_or(UpError::NotRunning { what })
    }

    fn redis_error(&self, message: String) -> UpError {
        UpError::Redis {
            addr: self.addr(),
            message,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
