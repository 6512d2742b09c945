//! A recurring failure, logged by its start and its end rather than by every
//! retry: a loop that retries each second through a 30 s outage would
//! otherwise write 30 warnings per loop, and the push roles run dozens of
//! such loops. The first failure of an outage is a warning, the retries are
//! debug lines, and the first success after it says how long it lasted and how
//! many attempts failed.

use std::fmt::Display;
use std::time::Instant;

/// The failures of one retry loop since its last success.
#[derive(Debug, Default)]
pub struct Outage {
    /// When the first failure of the current outage happened, and how many
    /// attempts have failed since (that one included).
    began: Option<(Instant, u64)>,
}

impl Outage {
    /// Records a failed attempt of `what` (e.g. `"queue read on goim-push-3"`):
    /// a warning when it starts an outage, a debug line otherwise.
    pub fn failed(&mut self, what: &str, error: &dyn Display) {
        match &mut self.began {
            None => {
                self.began = Some((Instant::now(), 1));
                tracing::warn!(error = %error, "{what} failed; retrying (further failures are logged at debug)");
            }
            Some((_, failures)) => {
                *failures += 1;
                tracing::debug!(error = %error, "{what} failed again; retrying");
            }
        }
    }

    /// Records a successful attempt: ends the outage, if there was one, with
    /// a line that says how long it lasted.
    pub fn succeeded(&mut self, what: &str) {
        if let Some((since, failures)) = self.began.take() {
            let lasted = since.elapsed();
            tracing::info!("{what} works again after {lasted:.1?} and {failures} failed attempt(s)");
        }
    }

    /// True while the last attempt failed.
    pub fn is_on(&self) -> bool {
        self.began.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_runs_from_the_first_failure_to_the_next_success() {
        let mut o = Outage::default();
        o.succeeded("x");
        assert!(!o.is_on());
        o.failed("x", &"refused");
        o.failed("x", &"refused");
        assert_eq!(o.began.map(|(_, n)| n), Some(2));
        o.succeeded("x");
        assert!(!o.is_on());
        o.failed("x", &"refused");
        assert_eq!(o.began.map(|(_, n)| n), Some(1), "a new outage counts afresh");
    }
}
