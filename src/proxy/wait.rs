//! WAIT through the proxy: how a client waits for its writes to reach the
//! replicas of every group without holding a shared backend connection.
//!
//! Redis answers `WAIT numreplicas timeout` for the writes of the connection
//! it is sent on (its replication offset after that connection's last
//! propagated command), and blocks that connection while it waits. The
//! proxy's backend connections are shared by many clients, so it cannot send
//! WAIT on them: one client's `WAIT 1 0` would stall everyone else's requests
//! behind it. For each master it therefore:
//!
//! 1. sends `PING` on the client's shared connection: when it answers, every
//!    request the client sent there before WAIT has run;
//! 2. opens a connection of its own and sends `libs::wait_mark::MARK` (a
//!    `PUBLISH` to a channel of ours, which Redis propagates to replicas), so
//!    that connection's replication offset becomes the master's current one,
//!    which covers those writes;
//! 3. sends the client's WAIT there, and closes the connection once it is
//!    answered, or as soon as the client is gone.
//!
//! The replies are merged by taking the minimum (`fanout.rs`). Imports
//! `backend`, `router` and `libs::resp`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::backend::{BackendConn, BackendOptions};
use super::reply::lost;
use super::router::Pool;
use crate::libs::resp;
use crate::libs::wait_mark::MARK;

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// Starts WAIT (`raw`) on every master of `pools` for `client`; one reply per
/// master, named by its address.
pub fn start(
    client: u64,
    pools: &[Arc<Pool>],
    opts: &BackendOptions,
    raw: &Bytes,
) -> Vec<(String, oneshot::Receiver<Bytes>)> {
    pools
        .iter()
        .map(|pool| {
            let barrier = pool.send(client, Bytes::from_static(PING));
            let addr = pool.addr().to_string();
            let (tx, rx) = oneshot::channel();
            tokio::spawn(on_master(addr.clone(), opts.clone(), barrier, raw.clone(), tx));
            (addr, rx)
        })
        .collect()
}

async fn on_master(
    addr: String,
    opts: BackendOptions,
    barrier: oneshot::Receiver<Bytes>,
    wait: Bytes,
    mut tx: oneshot::Sender<Bytes>,
) {
    let ping = barrier.await.unwrap_or_else(|_| lost());
    if resp::is_error(&ping) {
        let _ = tx.send(ping);
        return;
    }
    let (conn, kill) = BackendConn::spawn_with_handle(&addr, opts);
    let marked = conn.send(Bytes::from_static(MARK));
    let reply = conn.send(wait);
    let outcome = tokio::select! {
        r = reply => Some(r.unwrap_or_else(|_| lost())),
        _ = tx.closed() => None,
    };
    // An error on the mark (a server refusing PUBLISH) explains a WAIT that
    // then counts no write; pass it on rather than a misleading count.
    let marked = marked.await.unwrap_or_else(|_| lost());
    if let Some(reply) = outcome {
        let _ = tx.send(if resp::is_error(&marked) { marked } else { reply });
    }
    kill.abort();
}
