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
//! through `Arc`s and watched channels.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::context::Context;
use super::session;
use crate::libs::backoff::Backoff;
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

    let sessions = TaskTracker::new();
    accept_loop(&listener, &ctx, &clients, &sessions, &cancel).await;
    drop(listener);
    sessions.close();
    if tokio::time::timeout(ctx.config.drain_timeout, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(worker = index, "drain timeout: closing remaining sessions");
    }
}

async fn accept_loop(
    listener: &TcpListener,
    ctx: &Arc<Context>,
    clients: &Arc<Semaphore>,
    sessions: &TaskTracker,
    cancel: &CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut backoff = Backoff::new(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_secs(1),
    );
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = cancel.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            ctx.stats.sessions_refused.fetch_add(1, Relaxed);
            tokio::spawn(refuse(stream));
            continue;
        };
        let ctx = ctx.clone();
        let shutdown = cancel.clone();
        sessions.spawn(async move {
            ctx.stats.sessions_total.fetch_add(1, Relaxed);
            ctx.stats.sessions_alive.fetch_add(1, Relaxed);
            session::serve(stream, ctx.clone(), shutdown).await;
            ctx.stats.sessions_alive.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
}

async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
    let _ = stream.shutdown().await;
}
