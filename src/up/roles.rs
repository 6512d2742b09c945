//! The reborn roles `reborn up` runs in its own process, as tokio tasks: the
//! dashboard, the proxy, and the push system's logic, comet and job.
//!
//! Each role gets its own cancellation token, so shutdown can stop them one at a
//! time in reverse start order (a role may depend on one started before it, as
//! logic and job do on the proxy, and comet on logic).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use super::error::UpError;
use super::role_error;
use crate::proxy::ProxyError;
use crate::topo::manager::dashboard::DashboardError;

/// How long a role may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a role may take to stop after being cancelled before it is aborted.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a role stopped with an error: its own error type, one variant per role.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(transparent)]
    Dashboard(#[from] DashboardError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Logic(#[from] crate::im::logic::LogicError),
    #[error(transparent)]
    Comet(#[from] crate::im::comet::CometError),
    #[error(transparent)]
    Job(#[from] crate::im::job::JobError),
}

/// A role's main future: runs until its token is cancelled, or fails.
pub type RoleFuture = Pin<Box<dyn Future<Output = Result<(), RoleError>> + Send>>;

/// How a role that has no single port to probe says it is up: sent once its
/// `start` returned (listeners bound, registered in ZooKeeper).
pub type Ready = tokio::sync::oneshot::Sender<()>;

/// A running role.
struct Running {
    name: &'static str,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), RoleError>>,
}

/// The roles started so far, in start order.
#[derive(Default)]
pub struct Roles {
    running: Vec<Running>,
}

impl Roles {
    /// Spawns a role. `make` receives the role's token; `listen` is the address it
    /// serves on, polled until it accepts a connection so the banner never shows
    /// an address that is not answering yet.
    ///
    /// # Errors
    /// [`UpError::Role`] if the role ends or is not listening in time.
    pub async fn start(
        &mut self,
        name: &'static str,
        listen: SocketAddr,
        make: impl FnOnce(CancellationToken) -> RoleFuture,
    ) -> Result<(), UpError> {
        let cancel = CancellationToken::new();
        let mut task = tokio::spawn(make(cancel.clone()));
        let failed = |message: String| role_error(name, message);
        let probe = if listen.ip().is_unspecified() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port()))
        } else {
            listen
        };
        let listening = async {
            while tokio::net::TcpStream::connect(probe).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            joined = &mut task => return Err(failed(format!("did not start: {}", describe(joined)))),
            ready = tokio::time::timeout(READY_TIMEOUT, listening) => {
                if ready.is_err() {
                    cancel.cancel();
                    task.abort();
                    return Err(failed(format!(
                        "not accepting connections on {listen} after {READY_TIMEOUT:?}"
                    )));
                }
            }
        }
        self.running.push(Running { name, cancel, task });
        Ok(())
    }

    /// Spawns a role that signals its own readiness through [`Ready`] (the push
    /// roles: job listens on nothing, and comet and logic are up only once
    /// every listener is bound and they are registered).
    ///
    /// # Errors
    /// [`UpError::Role`] if the role ends or does not signal in time.
    pub async fn start_signalled(
        &mut self,
        name: &'static str,
        make: impl FnOnce(CancellationToken, Ready) -> RoleFuture,
    ) -> Result<(), UpError> {
        let cancel = CancellationToken::new();
        let (ready, signalled) = tokio::sync::oneshot::channel();
        let mut task = tokio::spawn(make(cancel.clone(), ready));
        let failed = |message: String| role_error(name, message);
        tokio::select! {
            joined = &mut task => return Err(failed(format!("did not start: {}", describe(joined)))),
            ready = tokio::time::timeout(READY_TIMEOUT, signalled) => match ready {
                Ok(Ok(())) => {}
                // The signal is dropped only by a role that returned: say why.
                Ok(Err(_)) => return Err(failed(format!("did not start: {}", describe(task.await)))),
                Err(_) => {
                    cancel.cancel();
                    task.abort();
                    return Err(failed(format!("not started after {READY_TIMEOUT:?}")));
                }
            }
        }
        self.running.push(Running { name, cancel, task });
        Ok(())
    }

    /// Waits until a role ends by itself (they should not), forgets it, and says
    /// which and why. Pending forever while no role runs.
    pub async fn any_ended(&mut self) -> UpError {
        let (index, joined) = std::future::poll_fn(|cx| {
            for (i, role) in self.running.iter_mut().enumerate() {
                if let Poll::Ready(joined) = Pin::new(&mut role.task).poll(cx) {
                    return Poll::Ready((i, joined));
                }
            }
            Poll::Pending
        })
        .await;
        // Removed: a JoinHandle must not be polled again after it completed.
        let role = self.running.remove(index);
        role_error(role.name, format!("stopped: {}", describe(joined)))
    }

    /// Stops the roles one by one, last started first.
    pub async fn stop(&mut self) {
        while let Some(mut role) = self.running.pop() {
            tracing::info!("stopping {}", role.name);
            role.cancel.cancel();
            match tokio::time::timeout(STOP_TIMEOUT, &mut role.task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(joined) => {
                    tracing::warn!("{} stopped with an error: {}", role.name, describe(joined));
                }
                Err(_) => {
                    tracing::warn!("{} did not stop within {STOP_TIMEOUT:?}; aborting it", role.name);
                    role.task.abort();
                }
            }
        }
    }
}

/// How a role's task ended, in words.
fn describe(joined: Result<Result<(), RoleError>, JoinError>) -> String {
    match joined {
        Ok(Ok(())) => "it returned without an error".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("task failed: {e}"),
    }
}
