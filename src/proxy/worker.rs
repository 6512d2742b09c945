//! Data-plane worker threads: thread-per-core.
//!
//! Each worker is an OS thread running its own single-threaded tokio runtime. It
//! accepts from the shared listening socket and keeps everything of its clients
//! on that thread: sessions, its own router and its own backend connections. A
//! request therefore never crosses threads between the client socket and the
//! backend socket, and no futex wake-up is paid per request; on a loaded 2-core
//! machine that was the largest cost after the syscalls themselves.
//!
//! What is proxy-wide (stats, the client limit, the topology feed) is shared
//! through `Arc`s and watched channels. Accepting, the client limit and the
//! drain are the shared role service's ([`crate::libs::listener`]); this file
//! supplies the runtime and what a client connection is.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::session;
use crate::libs::listener::{ConnectionHandler, Drain, Listener};
use crate::topo::Topology;

/// What a worker needs to start.
pub struct WorkerSpec {
    pub index: usize,
    pub listener: std::net::TcpListener,
    pub ctx: Arc<Context>,
    pub topo: watch::Receiver<Arc<Topology>>,
    /// Client slots, shared by all workers (`max_clients`).
    pub clients: Arc<Semaphore>,
    pub cancel: CancellationToken,
}

/// A running worker: `ready` fires once it routes by the current topology,
/// `done` once it has drained its sessions after `cancel`.
pub struct Worker {
    pub ready: oneshot::Receiver<()>,
    pub done: oneshot::Receiver<()>,
}

/// Starts a worker thread.
///
/// # Errors
/// The thread or its runtime could not be created.
pub fn spawn(spec: WorkerSpec) -> std::io::Result<Worker> {
    let (ready_tx, ready) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("proxy-worker-{}", spec.index))
        .spawn(move || {
            runtime.block_on(run(spec, ready_tx));
            // Dropping the runtime here ends the worker's backend connections.
            drop(runtime);
            let _ = done_tx.send(());
        })?;
    Ok(Worker { ready, done })
}

async fn run(spec: WorkerSpec, ready: oneshot::Sender<()>) {
    let WorkerSpec {
        index,
        listener,
        ctx,
        mut topo,
        clients,
        cancel,
    } = spec;
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "worker cannot use the listener");
            return;
        }
    };
    ctx.router.bind_runtime();
    ctx.router.apply(&topo.borrow_and_update());
    let _ = ready.send(());

    let follow = ctx.clone();
    let follow_stop = cancel.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = topo.changed() => if changed.is_err() { return },
                _ = follow_stop.cancelled() => return,
            }
            let snapshot = topo.borrow_and_update().clone();
            follow.router.apply(&snapshot);
        }
    });

    let drained = Listener::new(listener)
        .max_connections(clients)
        .grace(ctx.config.drain_timeout)
        .serve(SessionHandler { ctx }, cancel)
        .await;
    if let Drain::TimedOut { remaining } = drained {
        tracing::warn!(
            worker = index,
            ?remaining,
            "drain timeout: closing remaining sessions"
        );
    }
}

/// Serves each accepted client as a [`session`] on this worker's runtime.
struct SessionHandler {
    ctx: Arc<Context>,
}

impl ConnectionHandler for SessionHandler {
    fn handle(
        &self,
        stream: TcpStream,
        _peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let ctx = self.ctx.clone();
        async move {
            ctx.stats.sessions_total.fetch_add(1, Relaxed);
            ctx.stats.sessions_alive.fetch_add(1, Relaxed);
            session::serve(stream, ctx.clone(), shutdown).await;
            ctx.stats.sessions_alive.fetch_sub(1, Relaxed);
        }
    }

    /// Beyond `max_clients`: say why, then close.
    fn refuse(&self, mut stream: TcpStream, _peer: SocketAddr) -> impl Future<Output = ()> + Send + 'static {
        self.ctx.stats.sessions_refused.fetch_add(1, Relaxed);
        async move {
            let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
            let _ = stream.shutdown().await;
        }
    }
}
