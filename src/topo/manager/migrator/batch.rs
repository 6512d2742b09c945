//! One batch of keys: its keys, how and with what timeout it moves, the
//! `MIGRATE` command it becomes, what that command's reply means, and how a
//! batch is cut smaller when it is too slow.

use std::time::Duration;

use bytes::Bytes;

use super::config::{MAX_TIMEOUT, Method};
use super::error::MigrateError;
use crate::libs::resp_client::Frame;

/// How long [`Target::reachable`] waits for a TCP connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A key found by `SCAN`, tagged with the `SCAN` call that returned it, so the
/// pass knows when every key of that call is settled (see `ledger`).
#[derive(Debug, Clone)]
pub(super) struct Key {
    pub(super) name: Bytes,
    pub(super) scan: u64,
}

/// Where keys go: a checked `host:port`.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) addr: String,
}

impl Target {
    /// Parses `host:port` (`[v6]:port` too).
    pub(super) fn parse(addr: &str) -> Result<Target, MigrateError> {
        let bad = || MigrateError::Config(format!("target address {addr:?} is not host:port"));
        if !addr.contains(':') {
            return Err(bad());
        }
        let (host, port) = crate::libs::migrate::split_addr(addr);
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        Ok(Target {
            addr: addr.to_string(),
        })
    }

    /// Whether the target accepts a TCP connection from here.
    ///
    /// Needed to read an `-IOERR … writing/reading` reply: stock Redis reports a
    /// refused connection as a failed *write* (its blocking connect does not
    /// check the socket error), so the reply alone cannot tell a dead target
    /// from a transfer that was too slow.
    pub(super) async fn reachable(&self) -> bool {
        let connect = tokio::net::TcpStream::connect(self.addr.as_str());
        matches!(tokio::time::timeout(PROBE_TIMEOUT, connect).await, Ok(Ok(_)))
    }
}

/// Keys that move together.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) keys: Vec<Key>,
    /// How they move: the task's method, or `MIGRATE` for keys that raced
    /// with a proxy (see `restore`).
    pub(super) method: Method,
    /// The `MIGRATE` timeout, which Redis applies to each socket operation with
    /// the target (connect, each 64 KiB written, each reply line read); with
    /// `DUMP`/`RESTORE`, the wait for each reply.
    pub(super) timeout: Duration,
    /// `MIGRATE` batches with `replica_ack`: how many times a copy of them
    /// was aborted by a write on the source (`contested`).
    pub(super) copies: u8,
}

impl Batch {
    /// Number of keys.
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// `MIGRATE host port "" 0 <ms> [AUTH pw] REPLACE KEYS k…`.
    ///
    /// `REPLACE`: while a slot migrates the source copy is authoritative, and a
    /// key may already be on the target from an attempt whose reply we lost.
    pub(super) fn command(&self, target: &Target, auth: Option<&str>) -> Frame {
        let names: Vec<&[u8]> = self.keys.iter().map(|k| k.name.as_ref()).collect();
        crate::libs::migrate::frame(&target.addr, &names, auth, self.timeout)
    }

    /// After a timeout: the same keys in two halves, each with twice the
    /// timeout (capped at [`MAX_TIMEOUT`]); a single key just gets the longer
    /// timeout. Smaller batches block the source for less time each, and the
    /// halves without the big key go through at once.
    pub(super) fn split(mut self) -> Vec<Batch> {
        let timeout = (self.timeout * 2).min(MAX_TIMEOUT);
        if self.keys.len() <= 1 {
            self.timeout = timeout;
            return vec![self];
        }
        let second = self.keys.split_off(self.keys.len() / 2);
        vec![
            Batch {
                keys: self.keys,
                method: self.method,
                timeout,
                copies: self.copies,
            },
            Batch {
                keys: second,
                method: self.method,
                timeout,
                copies: self.copies,
            },
        ]
    }

    /// A short description for the error report: the key if there is one,
    /// otherwise the count and the first key.
    pub(super) fn describe(&self) -> String {
        let first = self.keys.first().map(|k| printable(&k.name)).unwrap_or_default();
        match self.keys.len() {
            1 => format!("key {first}"),
            n => format!("{n} keys (first {first})"),
        }
    }
}

/// A key for a message: lossy UTF-8, quoted, cut at 80 characters.
fn printable(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// What a `MIGRATE` reply means for its batch.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// `+OK`: the keys that existed are on the target and gone from the source.
    Moved,
    /// `+NOKEY`: none of the keys exists on the source any more.
    NoKey,
    /// The transfer failed part-way or timed out (`-IOERR … reading/writing`):
    /// retry smaller and with a longer timeout, if the target is reachable
    /// (see [`Target::reachable`]). Keys whose `RESTORE` was acknowledged
    /// before the failure are moved already (and answer `NOKEY` next time).
    Slow(String),
    /// Anything else the target or source refused (target down, OOM, wrong
    /// password): the keys stayed on the source; retry after a backoff.
    Refused(String),
}

/// Classifies one `MIGRATE` reply; `None` if it is not a reply `MIGRATE` gives.
pub(super) fn verdict(reply: &Frame) -> Option<Verdict> {
    match reply {
        Frame::SimpleString(s) if s.as_ref() == b"OK" => Some(Verdict::Moved),
        Frame::SimpleString(s) if s.as_ref() == b"NOKEY" => Some(Verdict::NoKey),
        Frame::Error(text) => {
            let text = text.to_string();
            // "IOERR error or timeout connecting to the client" is an unreachable
            // target: splitting would not help, waiting might.
            let slow = text.starts_with("IOERR") && (text.contains("reading") || text.contains("writing"));
            Some(if slow {
                Verdict::Slow(text)
            } else {
                Verdict::Refused(text)
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(names: &[&'static str], timeout: Duration) -> Batch {
        Batch {
            keys: names
                .iter()
                .map(|n| Key {
                    name: Bytes::from_static(n.as_bytes()),
                    scan: 0,
                })
                .collect(),
            method: Method::Migrate,
            timeout,
            copies: 0,
        }
    }

    #[test]
    fn command_is_the_shared_migrate_command() {
        // The command's shape is tested in libs::migrate; here, that a batch
        // passes its target, keys, password and timeout through.
        let target = Target::parse("10.0.0.1:6380").expect("addr");
        let cmd = batch(&["k1", "k2"], Duration::from_secs(5)).command(&target, Some("pw"));
        let want =
            crate::libs::migrate::frame("10.0.0.1:6380", &["k1", "k2"], Some("pw"), Duration::from_secs(5));
        assert_eq!(cmd, want);
    }

    #[test]
    fn targets() {
        let t = Target::parse("[::1]:7000").expect("v6");
        assert_eq!(crate::libs::migrate::split_addr(&t.addr), ("::1", "7000"));
        assert!(Target::parse("nohost").is_err());
        assert!(Target::parse("h:port").is_err());
        assert!(Target::parse(":1").is_err());
    }

    #[test]
    fn split_halves_down_to_one_key_and_caps_the_timeout() {
        let halves = batch(&["a", "b", "c"], Duration::from_secs(5)).split();
        assert_eq!(halves.iter().map(Batch::len).collect::<Vec<_>>(), vec![1, 2]);
        assert!(halves.iter().all(|b| b.timeout == Duration::from_secs(10)));
        let one = batch(&["a"], Duration::from_secs(50)).split();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].timeout, MAX_TIMEOUT);
    }

    #[test]
    fn verdicts() {
        let status = |s: &'static str| Frame::SimpleString(Bytes::from_static(s.as_bytes()));
        let error = |s: &'static str| Frame::Error(s.into());
        assert_eq!(verdict(&status("OK")), Some(Verdict::Moved));
        assert_eq!(verdict(&status("NOKEY")), Some(Verdict::NoKey));
        assert!(matches!(
            verdict(&error("IOERR error or timeout reading to target instance")),
            Some(Verdict::Slow(_))
        ));
        assert!(matches!(
            verdict(&error("IOERR error or timeout connecting to the client")),
            Some(Verdict::Refused(_))
        ));
        assert!(matches!(
            verdict(&error("ERR Target instance replied with error: OOM")),
            Some(Verdict::Refused(_))
        ));
        assert_eq!(verdict(&Frame::Integer(1)), None);
        assert_eq!(batch(&["k"], Duration::ZERO).describe(), "key \"k\"");
        assert_eq!(
            batch(&["k", "l"], Duration::ZERO).describe(),
            "2 keys (first \"k\")"
        );
    }
}
