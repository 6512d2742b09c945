//! Password guessing from one address over many connections.
//!
//! `local.rs` slows a connection that keeps failing `AUTH` and closes it at
//! the tenth failure, but a client that reconnects after every guess, or
//! guesses on many connections at once, is not slowed by that (a security
//! walk-through made 2,182 guesses a second by reconnecting). So the proxy
//! also keeps, per client IP address with recent failures, a queue of
//! attempt slots: every `AUTH` (or `HELLO … AUTH`) from such an address takes
//! the next slot and is answered only then, the connection's later requests
//! waiting behind it, so one address learns at most one outcome per slot,
//! whatever its connections. Slots are [`spacing`] apart: none after the
//! first failure (a typo), then 100 ms doubling to 1 s. An attempt that would
//! wait more than [`MAX_WAIT`] is refused unchecked and its connection closed.
//!
//! An address is forgotten [`FORGET_AFTER`] after its last failure; at most
//! [`MAX_ADDRESSES`] are kept, so a flood of addresses cannot grow the map
//! (past it, new addresses are not throttled by address, only per
//! connection). A success does not clear an address: an attacker could
//! otherwise interleave the password of an account it holds.
//!
//! Clients that share an address with a guesser (behind one NAT) wait with
//! it: the price of any per-address throttle, as with fail2ban.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The longest an attempt waits for its slot; later ones are refused.
pub const MAX_WAIT: Duration = Duration::from_secs(10);
/// How long an address's failures are remembered after the last one.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Most addresses remembered at once.
pub const MAX_ADDRESSES: usize = 65_536;

/// One address's recent failures.
struct Strikes {
    failures: u32,
    /// The next free attempt slot.
    next: Instant,
    /// The last slot given out: an attempt is checked when it arrives but
    /// answered then, so its failure counts from then.
    last_slot: Instant,
    last_failure: Instant,
}

/// What an `AUTH` attempt from an address must do before it is checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Check and answer now.
    Open,
    /// Check now, but answer (and serve the connection's next request) only
    /// at this instant.
    At(Instant),
    /// Too many attempts queued for this address: refuse without checking.
    Full,
}

/// The time between attempt slots after `failures` failures.
pub fn spacing(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => (Duration::from_millis(100) * (1 << (n - 2).min(4))).min(Duration::from_secs(1)),
    }
}

/// Attempt slots by client address (see the module docs).
#[derive(Default)]
pub struct AuthThrottle {
    addresses: Mutex<HashMap<IpAddr, Strikes>>,
}

impl AuthThrottle {
    /// An attempt from `ip` at `now` takes its slot.
    pub fn reserve(&self, ip: IpAddr, now: Instant) -> Gate {
        let mut addresses = self.addresses.lock();
        let Some(s) = addresses.get_mut(&ip) else {
            return Gate::Open;
        };
        if now.duration_since(s.last_failure) > FORGET_AFTER {
            addresses.remove(&ip);
            return Gate::Open;
        }
        let gap = spacing(s.failures);
        if gap.is_zero() {
            return Gate::Open;
        }
        let at = s.next.max(now);
        if at > now + MAX_WAIT {
            return Gate::Full;
        }
        s.next = at + gap;
        s.last_slot = at;
        if at == now { Gate::Open } else { Gate::At(at) }
    }

    /// An attempt from `ip` failed at `now`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut addresses = self.addresses.lock();
        if !addresses.contains_key(&ip) && addresses.len() >= MAX_ADDRESSES {
            addresses.retain(|_, s| now.duration_since(s.last_failure) <= FORGET_AFTER);
            if addresses.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let s = addresses.entry(ip).or_insert(Strikes {
            failures: 0,
            next: now,
            last_slot: now,
            last_failure: now,
        });
        if now.duration_since(s.last_failure) > FORGET_AFTER {
            s.failures = 0;
        }
        s.failures = s.failures.saturating_add(1);
        s.last_failure = now;
        // The slot after this failure is a full spacing after its answer.
        s.next = s.next.max(now.max(s.last_slot) + spacing(s.failures));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn the_first_failure_is_free_then_attempts_are_spaced() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        assert_eq!(t.reserve(IP, now), Gate::Open);
        t.failed(IP, now);
        assert_eq!(t.reserve(IP, now), Gate::Open, "one failure: a typo");
        t.failed(IP, now);
        // Two failures: slots 100 ms apart, whatever the connections.
        let ms = |n| now + Duration::from_millis(n);
        assert_eq!(t.reserve(IP, now), Gate::At(ms(100)));
        assert_eq!(t.reserve(IP, now), Gate::At(ms(200)));
        assert_eq!(t.reserve(IP, now), Gate::At(ms(300)));
        // Another address is not slowed.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(t.reserve(other, now), Gate::Open);
    }

    #[test]
    fn a_full_queue_refuses_and_old_failures_are_forgotten() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        for _ in 0..20 {
            t.failed(IP, now);
        }
        assert_eq!(spacing(20), Duration::from_secs(1));
        let gates: Vec<Gate> = (0..12).map(|_| t.reserve(IP, now)).collect();
        assert!(matches!(gates[0], Gate::At(_)));
        assert_eq!(gates.iter().filter(|g| **g == Gate::Full).count(), 2, "{gates:?}");
        let later = now + FORGET_AFTER + Duration::from_secs(20);
        assert_eq!(t.reserve(IP, later), Gate::Open);
    }
}
