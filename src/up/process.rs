//! A child process that this process owns: spawned detached from the terminal,
//! logged to a file, stopped gently (SIGTERM, then SIGKILL) and never left behind.
//!
//! Two details make "never left behind" hold even when we die without running
//! destructors (SIGKILL, a test binary whose statics are never dropped):
//!
//! * The child runs in its own process group, so a Ctrl-C in the terminal reaches
//!   only `reborn`, which then stops its children in order (proxy before the
//!   redis-servers before ZooKeeper) instead of all of them dying at once.
//! * Each child gets an [`OrphanGuard`], which stops it when we exit, however we
//!   exit. On a normal stop we disarm the guard first.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::error::UpError;
use super::orphan_guard::OrphanGuard;

/// How often start-up waits re-check the child and its readiness probe.
const POLL: Duration = Duration::from_millis(20);

/// A running child process; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub(crate) struct ChildProcess {
    what: String,
    child: Child,
    guard: Option<OrphanGuard>,
    log: PathBuf,
    grace: Duration,
    stopped: bool,
}

impl ChildProcess {
    /// Spawns `cmd` with stdin closed and stdout/stderr appended to `log`.
    ///
    /// `what` names it in errors ("redis-server 127.0.0.1:16379"); `grace` is how
    /// long [`stop`](Self::stop) waits after SIGTERM. A missing program maps to
    /// `not_found`.
    pub(crate) fn spawn(
        what: &str,
        mut cmd: Command,
        log: &Path,
        grace: Duration,
        not_found: impl FnOnce() -> UpError,
    ) -> Result<ChildProcess, UpError> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(UpError::io(format!("open log file {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(UpError::io(format!("open log file {}", log.display())))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                not_found()
            } else {
                UpError::Spawn {
                    what: what.to_string(),
                    source,
                }
            }
        })?;
        // Without a guard we still work, only less robustly: warn, do not fail.
        let guard = OrphanGuard::watch(child.id())
            .inspect_err(|e| tracing::warn!("{e}; pid {} may outlive us", child.id()))
            .ok();
        Ok(ChildProcess {
            what: what.to_string(),
            child,
            guard,
            log: log.to_path_buf(),
            grace,
            stopped: false,
        })
    }

    /// The child's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's exit status if it has exited (reaping it), `None` if running.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.try_wait() {
            Ok(status) => status,
            // Not our child any more or some OS oddity: treat as gone.
            Err(_) => Some(ExitStatus::default()),
        }
    }

    /// The exit status if the child has died by itself (a crash, a kill from
    /// outside), reaping it; `None` while it runs or after [`stop`](Self::stop).
    /// A dead child stays a zombie until reaped, which is how it is seen here
    /// first: the guard is then disarmed before the reaping, as
    /// [`disarm_guard`](Self::disarm_guard) requires.
    pub(crate) fn ended(&mut self) -> Option<ExitStatus> {
        if self.stopped || !crate::libs::pid_space::has_ended(self.child.id()) {
            return None;
        }
        self.disarm_guard();
        // Never a blocking wait: a wrong look must not hang the supervisor.
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.stopped = true;
                Some(status)
            }
            Ok(None) => None,
            Err(_) => {
                self.stopped = true;
                Some(ExitStatus::default())
            }
        }
    }

    /// Polls `ready` until it returns true, failing early if the child exits and
    /// with [`UpError::NotReady`] after `timeout`.
    pub(crate) fn wait_until(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), UpError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Err(self.exited_early(status));
            }
            if ready() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(UpError::NotReady {
                    what: self.what.clone(),
                    waited: timeout,
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The error for a child that exited during start-up, with its log's tail.
    pub(crate) fn exited_early(&self, status: ExitStatus) -> UpError {
        UpError::ExitedEarly {
            what: self.what.clone(),
            status: status.to_string(),
            log: self.log.clone(),
            tail: log_tail(&self.log, 15),
        }
    }

    /// SIGTERM, then SIGKILL if the child has not exited within the grace period.
    pub(crate) fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.disarm_guard();
        if self.exited().is_none() {
            terminate(self.child.id());
            let deadline = Instant::now() + self.grace;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        self.kill();
    }

    /// SIGKILL now (a crash, for failure tests) and reap the child.
    pub(crate) fn kill(&mut self) {
        if self.stopped {
            return;
        }
        self.disarm_guard();
        if self.exited().is_none() {
            // Errors mean it is already gone; wait() below then returns at once.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stopped = true;
    }

    /// Kills the orphan guard *before* the child is reaped, so the guard can never
    /// signal a recycled pid.
    fn disarm_guard(&mut self) {
        drop(self.guard.take());
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends SIGTERM through the shell's `kill` builtin: the crate forbids `unsafe`,
/// so no `libc::kill`, and `/usr/bin/kill` (procps) is missing on slim images.
fn terminate(pid: u32) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(r#"kill -TERM "$1" 2>/dev/null"#)
        .arg("reborn-stop")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .status();
}

/// The last `lines` lines of a log file (at most its last 8 KiB), or a note why not.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(8192)))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
