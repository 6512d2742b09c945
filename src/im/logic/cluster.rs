//! The reborn proxy cluster as logic reaches it: one `RespPool` per configured
//! proxy address. Each call starts at the next proxy (round robin) and moves to
//! the following one only when the request certainly did not run (a connect
//! failure), so a dead proxy costs a connect attempt, never a doubled write.
//!
//! Sessions, online counts and the queue go through here, never to a
//! redis-server directly. Imports `libs::resp_client` only.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::libs::resp_client::{Frame, RespError, RespPool};

use super::config::LogicClusterConfig;

/// Pipelined RESP access to the proxies.
#[derive(Debug)]
pub struct ProxyCluster {
    pools: Vec<RespPool>,
    next: AtomicUsize,
}

impl ProxyCluster {
    /// Pools to every proxy of `config` (connections open lazily).
    pub fn new(config: &LogicClusterConfig) -> ProxyCluster {
        ProxyCluster {
            pools: config
                .addrs
                .iter()
                .map(|addr| RespPool::new(addr, config.conns, config.timeout))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Sends `frames` as one pipeline to one proxy and returns the replies in
    /// order. Error replies come back as `Frame::Error`, per command.
    ///
    /// # Errors
    /// The last proxy's error when none could be reached; or the error of the
    /// proxy that took the pipeline (then some commands may have run).
    pub async fn pipeline(&self, frames: Vec<Frame>) -> Result<Vec<Frame>, RespError> {
        let n = self.pools.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let Some(pool) = self.pools.get((start + i) % n) else {
                break;
            };
            match pool.pipeline(frames.clone()).await {
                Err(e) if e.is_retry_safe() => {
                    tracing::debug!(error = %e, "proxy unreachable; trying the next one");
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(RespError::Closed {
            addr: "no proxy configured".into(),
        }))
    }

    /// One command.
    ///
    /// # Errors
    /// As [`ProxyCluster::pipeline`].
    pub async fn call<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Frame, RespError> {
        let mut replies = self.pipeline(vec![crate::libs::resp_client::cmd(args)]).await?;
        replies
            .pop()
            .ok_or_else(|| RespError::Unexpected("no reply".into()))
    }
}
