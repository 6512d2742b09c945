//! Makes sure a process we started dies with us, even when we die without running
//! destructors (SIGKILL, a CI timeout, a test binary whose statics are never
//! dropped).
//!
//! The guard is a tiny `sh` blocked in `read` on a pipe whose write end only this
//! process holds. The kernel closes that end when we exit, however we exit; `read`
//! then returns and the guard stops the watched process (SIGTERM, SIGKILL after
//! 3 s) or removes the watched temp dir. No polling, and no `prctl(PR_SET_PDEATHSIG)`,
//! which would need `unsafe` in a `pre_exec` hook (the crate forbids it).

use std::path::Path;
use std::process::{Child, Command, Stdio};

use std::os::unix::process::CommandExt;

use super::error::UpError;

/// The guard. `$1` is a pid to stop or "", `$2` a directory to remove or "".
const SCRIPT: &str = r#"read never
if [ -n "$1" ]; then
  kill -TERM "$1" 2>/dev/null
  i=0
  while [ "$i" -lt 30 ] && kill -0 "$1" 2>/dev/null; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$1" 2>/dev/null
fi
if [ -n "$2" ]; then
  # The servers in the directory are being stopped by their own guards at this
  # very moment, and Redis re-opens its log file for every line it writes while
  # shutting down: retry until the directory stays gone (they are dead within
  # 3 s, when their guards SIGKILL them).
  j=0
  while [ -e "$2" ] && [ "$j" -lt 60 ]; do rm -rf "$2" 2>/dev/null || sleep 0.1; [ -e "$2" ] && sleep 0.1; j=$((j+1)); done
fi
"#;

/// Stops the watched process (or removes the watched directory) when this process
/// exits; dropping the guard disarms it (cleanup is then the caller's job).
///
/// Disarm *before* reaping the watched process, so the guard can never signal a
/// recycled pid.
#[derive(Debug)]
pub struct OrphanGuard {
    sh: Child,
}

impl OrphanGuard {
    /// Stops `pid` when this process exits.
    ///
    /// # Errors
    /// [`UpError::Spawn`] if `sh` cannot be started.
    pub fn watch(pid: u32) -> Result<OrphanGuard, UpError> {
        OrphanGuard::spawn(&pid.to_string(), "")
    }

    /// Removes `dir` (recursively) when this process exits.
    ///
    /// # Errors
    /// [`UpError::Spawn`] if `sh` cannot be started.
    pub fn remove_on_exit(dir: &Path) -> Result<OrphanGuard, UpError> {
        OrphanGuard::spawn("", &dir.display().to_string())
    }

    fn spawn(pid: &str, dir: &str) -> Result<OrphanGuard, UpError> {
        let sh = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("reborn-orphan-guard")
            .arg(pid)
            .arg(dir)
            // The write end stays in `sh.stdin` until we exit. std opens pipes
            // close-on-exec, so no other child inherits (and holds) it.
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group: a Ctrl-C must not kill the
            // guard while we are still stopping things in order.
            .process_group(0)
            .spawn()
            .map_err(|source| UpError::Spawn {
                what: "an orphan guard (sh)".into(),
                source,
            })?;
        Ok(OrphanGuard { sh })
    }
}

impl Drop for OrphanGuard {
    fn drop(&mut self) {
        // SIGKILL: the guard cannot run its script any more.
        let _ = self.sh.kill();
        let _ = self.sh.wait();
    }
}
