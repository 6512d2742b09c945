//! The process's open-file limit: raised to its hard limit at start, and how
//! many clients fit under it.
//!
//! Why: past the limit, `accept` fails with `EMFILE` and the kernel keeps the
//! connection queued, so a client hangs with no answer. A role that knows its
//! limit refuses the extra clients with a clear error instead (the listener's
//! `max_connections`). Debian's default soft limit is 1024 although the hard
//! one is usually far higher; raising it is what Redis does at start too.

/// Descriptors kept for everything but clients (backend connections,
/// listeners, ZooKeeper, logs), at most half of the limit.
const RESERVE: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard one; returns the soft limit
/// now in force (unchanged if raising failed; `u64::MAX` when unlimited).
pub fn raise_to_hard() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let soft = now.current.unwrap_or(u64::MAX);
    if now.current < now.maximum || (now.maximum.is_none() && now.current.is_some()) {
        let wanted = Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        };
        if setrlimit(Resource::Nofile, wanted).is_ok() {
            return now.maximum.unwrap_or(u64::MAX);
        }
    }
    soft
}

/// Raises the limit ([`raise_to_hard`]) and returns `configured` capped to
/// the clients it allows, warning when that lowers it (`what` names the
/// setting).
pub fn cap_clients(configured: usize, what: &str) -> usize {
    let fds = raise_to_hard();
    let capped = configured.min(client_capacity(fds));
    if capped < configured {
        tracing::warn!(
            capped,
            configured,
            fds,
            "{what} lowered to what the open-file limit allows"
        );
    }
    capped
}

/// How many clients a process with `limit` descriptors can serve.
pub fn client_capacity(limit: u64) -> usize {
    let reserve = RESERVE.min(limit / 2);
    usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_keeps_a_reserve() {
        assert_eq!(client_capacity(128), 64);
        assert_eq!(client_capacity(1024), 768);
        assert_eq!(client_capacity(20_000), 19_744);
        assert!(raise_to_hard() > 0);
    }
}
