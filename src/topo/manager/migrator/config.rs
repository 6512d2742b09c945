//! Settings of the background migrator, with their defaults in one place.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::MigrateError;

/// The largest `MIGRATE` timeout: the most a configured timeout may be, and
/// what a slow batch's timeout grows to at most.
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// How a batch of keys moves from the source to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// `DUMP` on the source, `RESTORE` on the target, then a `DEL` guarded by
    /// `WATCH` (see `restore`): neither server ever waits for the other, so
    /// their clients are served between our commands. Keys that race with a
    /// proxy's migrate-on-access fall back to `MIGRATE`.
    DumpRestore,
    /// `MIGRATE … KEYS`: one command per batch, but the source serves nobody
    /// until the target has restored the whole batch.
    Migrate,
}

/// How a migration task scans and moves keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigratorConfig {
    /// How batches move (see [`Method`]).
    pub method: Method,
    /// `SCAN … COUNT`: keys the source examines per `SCAN` call.
    pub scan_count: usize,
    /// Most keys per batch.
    pub batch_keys: usize,
    /// Batches moving at once. `dump-restore`: lanes, each a source and a
    /// target connection of its own moving one batch (its guard, `WATCH`,
    /// belongs to the connection). `migrate`: `MIGRATE` batches sent to the
    /// source before the first reply is read.
    pub inflight: usize,
    /// How long a fresh batch may take per step: the `MIGRATE` timeout, which
    /// Redis applies to each socket operation with the target, or the wait for
    /// each `DUMP`/`RESTORE` reply. A batch that times out is retried in halves
    /// with a doubled timeout, up to 60 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Keys per second at most (sent, retries included); `None`: unlimited.
    pub max_keys_per_sec: Option<u64>,
    /// How long the source may keep its own clients waiting because of us:
    /// the migrator pings the source while it moves keys and halves its rate
    /// and batch size when the pings take longer, growing them back when they
    /// do not (`pacer.rs`). `0s` turns pacing off.
    #[serde(with = "humantime_serde")]
    pub latency_budget: Duration,
    /// The backend password: used to connect to the source and given to
    /// `MIGRATE … AUTH` for the target. Never serialized, so a task record
    /// written to ZooKeeper cannot leak it.
    #[serde(skip_serializing)]
    pub auth: Option<String>,
    /// How many switches in a row a task may fail (a live proxy that does not
    /// acknowledge, each rolled back) before the task is failed, freeing the
    /// queue. A task that can never run (its target group is gone) fails at once.
    pub switch_attempts: u32,
    /// Not a setting: true while a live proxy runs `write_ack = "replica"`
    /// (the task runner reads it from the proxies' nodes). Then a replica of
    /// the target must confirm each batch (`WAIT 1 <timeout>`) before the
    /// source deletes it, and batches always move by `dump-restore`, because
    /// `MIGRATE` deletes from the source before anyone could wait.
    #[serde(skip)]
    pub replica_ack: bool,
}

impl Default for MigratorConfig {
    fn default() -> Self {
        MigratorConfig {
            method: Method::DumpRestore,
            // One SCAN call is one stretch in which the source serves nobody
            // else: ~0.6 ms at COUNT 1000 on a 500k-key source, more than
            // half the default latency budget, so the pacer kept halving the
            // rate for it. At 200 a call takes ~0.12 ms, and the migrator
            // moved ~25k keys/s instead of ~13k, for ~10% more client p99
            // during the task (docs/benchmarks.md).
            scan_count: 200,
            // A batch is one unbroken stretch of work for the source, the
            // target and each replica, and a client thread queued on that
            // CPU waits it out, even while the other core is idle (perf sched
            // on the 2-core benchmark host). At 100 keys the stretches took
            // 0.3-0.7 ms and client p99 during a task was ~1.8 ms, even at 5k
            // keys/s; at 20 they stay near 0.1 ms, p99 during was a median
            // of 1.14 ms, and the pacer let the rate rise to ~27k keys/s
            // (docs/benchmarks.md). One batch at a time for the same reason:
            // a second lane raised the p99 again.
            batch_keys: 20,
            inflight: 1,
            timeout: Duration::from_secs(5),
            max_keys_per_sec: None,
            latency_budget: Duration::from_millis(1),
            auth: None,
            switch_attempts: 5,
            replica_ack: false,
        }
    }
}

impl MigratorConfig {
    /// How batches move: `method`, but `dump-restore` with [`replica_ack`](Self::replica_ack).
    pub(super) fn method(&self) -> Method {
        if self.replica_ack {
            Method::DumpRestore
        } else {
            self.method
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`MigrateError::Config`] naming the first bad field.
    pub fn validate(&self) -> Result<(), MigrateError> {
        let bad = |what: &str| Err(MigrateError::Config(what.to_string()));
        if self.scan_count == 0 {
            return bad("scan_count must be at least 1");
        }
        if self.batch_keys == 0 {
            return bad("batch_keys must be at least 1");
        }
        if self.inflight == 0 {
            return bad("inflight must be at least 1");
        }
        if self.timeout < Duration::from_millis(1) || self.timeout > MAX_TIMEOUT {
            return bad("timeout must be between 1 ms and 60 s");
        }
        if self.switch_attempts == 0 {
            return bad("switch_attempts must be at least 1");
        }
        if self.max_keys_per_sec == Some(0) {
            return bad("max_keys_per_sec must be at least 1 (or unset for no limit)");
        }
        Ok(())
    }
}

// By hand, so the password never reaches a log line.
impl fmt::Debug for MigratorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigratorConfig")
            .field("method", &self.method)
            .field("scan_count", &self.scan_count)
            .field("batch_keys", &self.batch_keys)
            .field("inflight", &self.inflight)
            .field("timeout", &self.timeout)
            .field("max_keys_per_sec", &self.max_keys_per_sec)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("switch_attempts", &self.switch_attempts)
            .field("replica_ack", &self.replica_ack)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_the_password_stays_private() {
        let cfg = MigratorConfig {
            auth: Some("s3cret".into()),
            ..MigratorConfig::default()
        };
        assert!(cfg.validate().is_ok());
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let json = serde_json::to_string(&cfg).expect("serialize");
        assert!(!json.contains("s3cret"), "{json}");
        let back: MigratorConfig = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.timeout, Duration::from_secs(5));
        let partial: MigratorConfig = serde_json::from_str(r#"{"batch_keys": 10}"#).expect("partial");
        assert_eq!(
            (partial.batch_keys, partial.inflight),
            (10, MigratorConfig::default().inflight)
        );
        for broken in [
            MigratorConfig {
                inflight: 0,
                ..MigratorConfig::default()
            },
            MigratorConfig {
                timeout: Duration::ZERO,
                ..MigratorConfig::default()
            },
            MigratorConfig {
                max_keys_per_sec: Some(0),
                ..MigratorConfig::default()
            },
        ] {
            assert!(broken.validate().is_err());
        }
    }
}
