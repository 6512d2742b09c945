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

/// Why a log filter was refused; the current filter stays.
#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    /// A bare word that is not a level (`degub`): `tracing` would read it as a
    /// target name and silence everything else.
    #[error(
        "bad log level {0:?}: a bare word must be a level (trace, debug, info, warn, error, off); \
         for one module write target=level, e.g. reborn=debug"
    )]
    UnknownLevel(String),
    /// `target=level` whose level is not one.
    #[error(
        "bad log directive {directive:?}: {level:?} is not a level (trace, debug, info, warn, error, off)"
    )]
    BadDirective {
        /// The whole directive.
        directive: String,
        /// Its level part.
        level: String,
    },
    /// Nothing to set.
    #[error("empty log filter")]
    Empty,
    /// `tracing`'s own parser refused it.
    #[error("bad log filter {filter:?}: {reason}")]
    Parse {
        /// The filter.
        filter: String,
        /// The parser's message.
        reason: String,
    },
    /// [`init`] was not called (or another subscriber was installed first).
    #[error("logging is not initialised")]
    NotInitialised,
    /// The reload itself failed.
    #[error("cannot change the log filter: {0}")]
    Reload(String),
}

/// Parses a filter strictly: comma-separated directives, each a level or
/// `target=level` (`target[span{field}]=level` too). `EnvFilter` alone reads a
/// bare unknown word as a target, which turns all other logging off.
///
/// # Errors
/// [`LogLevelError`] naming the bad part.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, LogLevelError> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Err(LogLevelError::Empty);
    }
    let is_level =
        |s: &str| !s.trim().is_empty() && s.trim().parse::<tracing::level_filters::LevelFilter>().is_ok();
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    for &directive in &directives {
        match directive.rsplit_once('=') {
            None if is_level(directive) => {}
            None => return Err(LogLevelError::UnknownLevel(directive.to_string())),
            Some((target, level)) if !target.trim().is_empty() && is_level(level) => {}
            Some((_, level)) => {
                return Err(LogLevelError::BadDirective {
                    directive: directive.to_string(),
                    level: level.to_string(),
                });
            }
        }
    }
    EnvFilter::try_new(directives.join(",")).map_err(|e| LogLevelError::Parse {
        filter: filter.to_string(),
        reason: e.to_string(),
    })
}

/// Changes the log filter at run time (e.g. `debug`, `reborn=trace`,
/// `info,reborn::topo=debug`), after checking it with [`parse_filter`].
///
/// # Errors
/// The filter is refused, or logging was not initialised through [`init`].
pub fn set_level(directive: &str) -> Result<(), LogLevelError> {
    let filter = parse_filter(directive)?;
    let handle = HANDLE.get().ok_or(LogLevelError::NotInitialised)?;
    handle
        .reload(filter)
        .map_err(|e| LogLevelError::Reload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_levels_or_target_directives() {
        for good in [
            "debug",
            "INFO",
            "off",
            "reborn=trace",
            "info,reborn::topo=debug",
            "warn, reborn=debug",
            "4",
        ] {
            assert!(parse_filter(good).is_ok(), "{good:?}");
        }
        for bad in [
            "degub",
            "",
            "info,degub",
            "a=b=c",
            "reborn=",
            "=debug",
            "reborn=loud",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad:?}");
        }
        let e = parse_filter("degub").expect_err("typo").to_string();
        assert!(e.contains("\"degub\"") && e.contains("target=level"), "{e}");
    }
}
