//! job's way into the proxy cluster: the configured proxy addresses, a small
//! shared pool per address for acks and claims, and dedicated connections for
//! the blocking reads. A failing proxy is left for the next one.
//! Imports `libs::resp_client` only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::libs::resp_client::{Frame, RespConn, RespError, RespPool};

/// The proxies of one cluster.
#[derive(Debug)]
pub struct ProxyLink {
    pools: Vec<RespPool>,
    timeout: Duration,
    /// The address calls start at; moves on when a proxy fails.
    current: AtomicUsize,
}

impl ProxyLink {
    /// A link over `addrs` (at least one), `conns` shared connections each.
    /// Nothing is connected yet.
    pub fn new(addrs: &[String], conns: usize, timeout: Duration) -> ProxyLink {
        let start = fastrand::usize(..addrs.len().max(1));
        ProxyLink {
            pools: addrs.iter().map(|a| RespPool::new(a, conns, timeout)).collect(),
            timeout,
            current: AtomicUsize::new(start),
        }
    }

    /// One command on a shared connection. A broken connection moves on to the
    /// next proxy and sends again, so use it only for commands that may run
    /// twice (XACK, XAUTOCLAIM, XGROUP CREATE, XPENDING).
    ///
    /// # Errors
    /// The last proxy's error when every proxy failed, or an error reply.
    pub async fn call<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Frame, RespError> {
        let mut last = None;
        for _ in 0..self.pools.len() {
            let i = self.current.load(Ordering::Relaxed) % self.pools.len();
            match self.pools[i].call(args).await {
                Err(e) if e.breaks_connection() => {
                    tracing::debug!(error = %e, "proxy call failed; trying the next proxy");
                    self.advance(i);
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| RespError::Closed {
            addr: "no proxy configured".into(),
        }))
    }

    /// A connection of its own (for a blocking read), to the first proxy that
    /// answers, starting at the current one.
    ///
    /// # Errors
    /// The last proxy's error when none could be reached.
    pub async fn connect(&self) -> Result<RespConn, RespError> {
        let mut last = None;
        for _ in 0..self.pools.len() {
            let i = self.current.load(Ordering::Relaxed) % self.pools.len();
            match RespConn::connect(self.pools[i].addr(), self.timeout).await {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    self.advance(i);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| RespError::Closed {
            addr: "no proxy configured".into(),
        }))
    }

    /// The reply deadline of non-blocking calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Moves past proxy `failed` unless another task already did.
    pub fn advance(&self, failed: usize) {
        let _ = self
            .current
            .compare_exchange(failed, failed + 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Moves past the proxy `addr` (a dedicated connection to it broke).
    pub fn advance_from(&self, addr: &str) {
        let i = self.current.load(Ordering::Relaxed);
        if self.pools[i % self.pools.len()].addr() == addr {
            self.advance(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_fail_over_to_a_live_proxy() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let live = listener.local_addr().expect("addr").to_string();
        // A fake server that answers every command with +PONG.
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
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let link = ProxyLink::new(&[dead.clone(), live.clone()], 1, Duration::from_secs(1));
        for _ in 0..3 {
            let reply = link.call(&["PING"]).await.expect("a live proxy answers");
            assert_eq!(reply, Frame::SimpleString("PONG".into()));
        }
        let conn = link.connect().await.expect("connect");
        assert_eq!(conn.addr(), live);
        let all_dead = ProxyLink::new(&[dead], 1, Duration::from_secs(1));
        assert!(all_dead.call(&["PING"]).await.is_err());
    }
}
