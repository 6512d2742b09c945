//! Loading a role's TOML config file.
//!
//! Each role owns a config struct with `#[serde(default, deny_unknown_fields)]`,
//! its defaults in `impl Default` and a `validate()`; this module only reads and
//! parses the file, so every role reports a bad file the same way.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("bad config {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Overrides `dst` with a command-line flag, when the flag was given.
pub fn set_from<T>(dst: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *dst = v;
    }
}

/// Reads `path` as TOML into `T`. With no path, returns `T::default()`.
///
/// # Errors
/// The file cannot be read, or is not valid TOML for `T` (unknown keys included).
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        port: u16,
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.toml");
        std::fs::write(&p, "port = 7\nprot = 8\n").expect("write");
        let err = load::<Sample>(Some(&p)).expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("x.toml") && msg.contains("prot"), "{msg}");
        std::fs::write(&p, "port = 7\n").expect("write");
        assert_eq!(load::<Sample>(Some(&p)).expect("ok").port, 7);
        assert_eq!(load::<Sample>(None).expect("default").port, 0);
    }
}
