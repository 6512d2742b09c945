//! The reborn proxy cluster as logic and job reach it: one `RespPool` per
//! configured proxy address, and a failover policy ([`Failover`]) saying where
//! a call starts and when it may move on to the next proxy. Sessions, online
//! counts and the queue go through here, never to a redis-server directly.
//!
//! * logic ([`Failover::Spread`]): each call starts at the next proxy (round
//!   robin) and moves on only when the request certainly did not run (a
//!   connect failure), so a dead proxy costs a connect attempt, never a
//!   doubled write (`HSET`, `XADD`, ...).
//! * job ([`Failover::Sticky`]): calls stay on one proxy (a random one at
//!   first) until it fails; a broken connection moves every caller on and the
//!   call is sent again, so only for commands that may run twice (`XACK`,
//!   `XAUTOCLAIM`, `XGROUP`, `XINFO`). Dedicated connections for blocking
//!   reads come from [`ProxySet::connect`].
//!
//! A pooled connection the proxy closed while it sat idle (a proxy restart)
//! is never used: `RespPool` checks each one before a call and reconnects,
//! and a failing reconnect is a connect failure, which both policies pass on
//! to the next proxy. So a restarted or stopped proxy costs no call as long
//! as another proxy (or a fresh connection) can serve it.
//!
//! Imports `libs::resp_client`, and the topo kernel's address check.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::libs::config::ConfigError;
use crate::libs::resp_client::{Frame, RespConn, RespError, RespPool, cmd};
use crate::topo::operation::check_server_addr;

/// Where a call starts and when it moves to the next proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failover {
    /// Round robin; the next proxy only after a connect failure (the request
    /// was not sent): safe for any command.
    Spread,
    /// The current proxy until it fails; the next one after any broken
    /// connection, sending again: for commands that may run twice.
    Sticky,
}

impl Failover {
    /// Whether a call that failed with `e` may go to the next proxy.
    fn may_resend(self, e: &RespError) -> bool {
        match self {
            Failover::Spread => e.is_retry_safe(),
            Failover::Sticky => e.breaks_connection(),
        }
    }
}

/// The proxies of one cluster.
#[derive(Debug)]
pub struct ProxySet {
    pools: Vec<RespPool>,
    timeout: Duration,
    failover: Failover,
    /// Spread: the next call's start. Sticky: the proxy in use; moves on when
    /// it fails.
    cursor: AtomicUsize,
}

/// What a call reports when no proxy is configured.
fn no_proxy() -> RespError {
    RespError::Closed {
        addr: "no proxy configured".into(),
    }
}

impl ProxySet {
    /// The set, logging every connection in with `password` (a proxy with
    /// `auth`; none when empty).
    pub fn with_auth(mut self, password: &str) -> ProxySet {
        self.pools = self.pools.into_iter().map(|p| p.with_auth(password)).collect();
        self
    }

    /// Pools of `conns` connections to each of `addrs`, whose calls time out
    /// after `timeout` (nothing is connected yet).
    pub fn new(addrs: &[String], conns: usize, timeout: Duration, failover: Failover) -> ProxySet {
        ProxySet {
            pools: addrs.iter().map(|a| RespPool::new(a, conns, timeout)).collect(),
            timeout,
            failover,
            cursor: AtomicUsize::new(fastrand::usize(..addrs.len().max(1))),
        }
    }

    /// The index of the proxy the `attempt`-th try of a call goes to, `start`
    /// being the first try's.
    fn pick(&self, start: usize, attempt: usize) -> usize {
        let n = self.pools.len().max(1);
        match self.failover {
            Failover::Spread => (start + attempt) % n,
            // Another caller may have moved on meanwhile: follow it.
            Failover::Sticky => self.cursor.load(Ordering::Relaxed) % n,
        }
    }

    /// Where a call starts.
    fn start(&self) -> usize {
        match self.failover {
            Failover::Spread => self.cursor.fetch_add(1, Ordering::Relaxed),
            Failover::Sticky => self.cursor.load(Ordering::Relaxed),
        }
    }

    /// Proxy `failed` failed: a sticky set moves past it, unless another
    /// caller already did.
    fn failed(&self, failed: usize) {
        if self.failover == Failover::Sticky {
            let _ = self
                .cursor
                .compare_exchange(failed, failed + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Sends `frames` as one pipeline to one proxy and returns the replies in
    /// order. Error replies come back as `Frame::Error`, per command.
    ///
    /// # Errors
    /// The last proxy's error when every proxy failed; or the error that the
    /// policy does not resend (then some commands may have run).
    pub async fn pipeline(&self, frames: Vec<Frame>) -> Result<Vec<Frame>, RespError> {
        let start = self.start();
        let mut last = None;
        for attempt in 0..self.pools.len() {
            let i = self.pick(start, attempt);
            let Some(pool) = self.pools.get(i) else { break };
            match pool.pipeline(frames.clone()).await {
                Err(e) if self.failover.may_resend(&e) => {
                    tracing::debug!(proxy = pool.addr(), error = %e, "proxy call failed; trying the next proxy");
                    self.failed(i);
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(no_proxy))
    }

    /// One command.
    ///
    /// # Errors
    /// As [`ProxySet::pipeline`].
    pub async fn call<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Frame, RespError> {
        let mut replies = self.pipeline(vec![cmd(args)]).await?;
        replies
            .pop()
            .ok_or_else(|| RespError::Unexpected("no reply".into()))
    }

    /// A connection of its own (for a blocking read), to the first proxy that
    /// answers, starting where a call would.
    ///
    /// # Errors
    /// The last proxy's error when none could be reached.
    pub async fn connect(&self) -> Result<RespConn, RespError> {
        let start = self.start();
        let mut last = None;
        for attempt in 0..self.pools.len() {
            let i = self.pick(start, attempt);
            let Some(pool) = self.pools.get(i) else { break };
            match pool.open().await {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    self.failed(i);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(no_proxy))
    }

    /// The reply deadline of calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A dedicated connection to `addr` broke: a sticky set moves past that
    /// proxy if it is the one in use.
    pub fn failed_at(&self, addr: &str) {
        let i = self.cursor.load(Ordering::Relaxed);
        if self.pools.get(i % self.pools.len().max(1)).map(RespPool::addr) == Some(addr) {
            self.failed(i);
        }
    }
}

/// Checks logic's and job's `cluster.addrs` (`--proxy`) at start: a
/// malformed address would only fail at the first call, after start-up and
/// registration in ZooKeeper, then on every call. The message names the key
/// and the value, with the check the dashboard applies to server addresses.
///
/// # Errors
/// The first address that is not `host:port`, in words.
pub fn check_addrs(addrs: &[String]) -> Result<(), ConfigError> {
    for addr in addrs {
        check_server_addr(addr).map_err(|e| ConfigError::Invalid(format!("cluster.addrs (--proxy): {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake proxy that answers every command with `+PONG`; its address.
    async fn pong_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(b"+PONG\r\n").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn both_policies_skip_a_dead_proxy() {
        let live = pong_server().await;
        let (_held, dead) = crate::libs::reachable::refused_addr();
        for failover in [Failover::Spread, Failover::Sticky] {
            let set = ProxySet::new(&[dead.clone(), live.clone()], 1, Duration::from_secs(1), failover);
            for _ in 0..3 {
                let reply = set.call(&["PING"]).await.expect("a live proxy answers");
                assert_eq!(reply, Frame::SimpleString("PONG".into()), "{failover:?}");
            }
            let conn = set.connect().await.expect("connect");
            assert_eq!(conn.addr(), live, "{failover:?}");
            let all_dead = ProxySet::new(std::slice::from_ref(&dead), 1, Duration::from_secs(1), failover);
            assert!(all_dead.call(&["PING"]).await.is_err(), "{failover:?}");
        }
        let none = ProxySet::new(&[], 1, Duration::from_secs(1), Failover::Spread);
        assert!(none.call(&["PING"]).await.is_err());
    }

    #[tokio::test]
    async fn spread_starts_each_call_at_the_next_proxy_and_sticky_stays() {
        let (a, b) = (pong_server().await, pong_server().await);
        let addrs = [a.clone(), b.clone()];
        let spread = ProxySet::new(&addrs, 1, Duration::from_secs(1), Failover::Spread);
        let firsts: Vec<usize> = (0..4).map(|_| spread.start() % 2).collect();
        assert_ne!(firsts[0], firsts[1], "round robin: {firsts:?}");
        assert_eq!(firsts[0], firsts[2], "round robin: {firsts:?}");
        let sticky = ProxySet::new(&addrs, 1, Duration::from_secs(1), Failover::Sticky);
        let first = sticky.start();
        assert_eq!(sticky.start(), first, "sticky stays");
        let using = sticky.pools[first % 2].addr().to_string();
        sticky.failed_at(&using);
        assert_ne!(sticky.start() % 2, first % 2, "moved past the failed proxy");
        sticky.failed_at("127.0.0.1:1");
        assert_ne!(sticky.start() % 2, first % 2, "another address changes nothing");
    }
}
