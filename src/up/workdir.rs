//! The directory a local process keeps its data and log in.
//!
//! Either given by the caller (kept after the process stops, so its log can be
//! read) or a fresh directory under the system temp dir that we own and remove —
//! on drop, or through an [`OrphanGuard`] if we die without dropping it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::error::UpError;
use super::orphan_guard::OrphanGuard;

/// Numbers the temp dirs of one process, so two servers never share one.
static NEXT_TEMP: AtomicU32 = AtomicU32::new(0);

/// A data/log directory; removed on drop only if we created it as a temp dir.
#[derive(Debug)]
pub(crate) struct Workdir {
    path: PathBuf,
    owned: bool,
    /// For an owned dir: removes it if we exit without dropping this value.
    guard: Option<OrphanGuard>,
}

impl Workdir {
    /// Uses (and creates if needed) the caller's directory; it is kept afterwards.
    pub(crate) fn given(path: impl Into<PathBuf>) -> Result<Workdir, UpError> {
        let path = path.into();
        std::fs::create_dir_all(&path)
            .map_err(UpError::io(format!("create directory {}", path.display())))?;
        // Absolute, so the path we hand to a server is the one it reports back
        // (the ZooKeeper identity check compares them).
        let path = path
            .canonicalize()
            .map_err(UpError::io(format!("resolve directory {}", path.display())))?;
        Ok(Workdir {
            path,
            owned: false,
            guard: None,
        })
    }

    /// Creates a fresh `reborn-<label>-<pid>-<n>` directory under the temp dir; it
    /// is removed when this value is dropped.
    pub(crate) fn temp(label: &str) -> Result<Workdir, UpError> {
        let base = std::env::temp_dir();
        loop {
            let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("reborn-{label}-{}-{n}", std::process::id()));
            // create_dir (not _all) fails on a leftover of an earlier process that
            // had the same pid: skip to the next number instead of reusing it.
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let mut dir = Workdir::given(path)?;
                    dir.owned = true;
                    // Without a guard the dir may be left behind; not worth failing for.
                    dir.guard = OrphanGuard::remove_on_exit(&dir.path)
                        .inspect_err(|e| tracing::warn!("{e}; {} may be left behind", dir.path.display()))
                        .ok();
                    return Ok(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(UpError::io(format!("create directory {}", path.display()))(e));
                }
            }
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.owned {
            // Best effort: a leftover temp dir is not worth failing a shutdown for.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
