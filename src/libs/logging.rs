//! Logging setup: one `tracing` subscriber for the process, with a level that the
//! admin HTTP endpoint can change at run time.

use std::sync::OnceLock;

use tracing_subscriber::{EnvFilter, Registry, fmt, prelude::*, reload};

type Handle = reload::Handle<EnvFilter, Registry>;

static HANDLE: OnceLock<Handle> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG` wins over `default_level`.
/// Calling it twice is harmless (the second call does nothing).
pub fn init(default_level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(layer)
        .with(
            fmt::layer()
                .with_target(false)
                // Colour codes only make sense on a terminal, not in log files.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .try_init()
        .is_ok();
    if installed {
        let _ = HANDLE.set(handle);
    }
}

/// Changes the log filter at run time (e.g. `debug`, `reborn=trace`).
///
/// # Errors
/// The filter does not parse, or logging was not initialised through [`init`].
pub fn set_level(directive: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(directive).map_err(|e| format!("bad log level: {e}"))?;
    let handle = HANDLE.get().ok_or("logging is not initialised")?;
    handle.reload(filter).map_err(|e| e.to_string())
}
