//! comet's calls to logic (`goim.logic.Logic`): Connect, Disconnect, Heartbeat,
//! RenewOnline and Receive. Logic instances are found through ZooKeeper
//! ([`crate::im::discovery::follow`]); calls go round robin over the live ones,
//! and a call that could not reach one instance is tried on the next (it never
//! reached logic, so retrying is safe). A call that timed out, or whose
//! connection broke under it, is tried on the next too, unless doing it twice
//! would matter ([`OnTimeout`]): a logic that
//! hangs, or that this comet cannot reach while ZooKeeper still lists it (a
//! partition), must not fail one call in N for as long as it lasts. Such a
//! call is also *hedged*: not answered within `hedge_after` (100 ms; logic
//! answers in a few), it goes to the next instance too and the first answer
//! wins, so the calls that reach a logic as it hangs wait `hedge_after`, not
//! the whole `timeout` (half of 16 logins at once did, before). At most
//! [`HEDGES_IN_FLIGHT`] run at once. An instance that failed a call, or was
//! slow enough to be hedged, is *suspect* for [`SUSPECT_FOR`]: calls try the
//! others first. Channels are lazy: a dead logic never blocks comet's start.
//! Imports `im::discovery`, `im::proto`, the `topo` store.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel as GrpcChannel, Endpoint};
use tonic::{Code, Response, Status};

use super::config::CometLogicConfig;
use crate::im::discovery::{self, Instance, InstanceKind};
use crate::im::proto::logic::logic_client::LogicClient;
use crate::im::proto::logic::{ConnectReply, ConnectReq, DisconnectReq, HeartbeatReq, OnlineReq, ReceiveReq};
use crate::im::proto::protocol::Proto;
use crate::topo::store::Store;

/// The pause before the last try of a call every logic answered
/// "unavailable".
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Calls to logic in flight at once, from this comet. Thousands of clients
/// leaving together must queue here, not inside logic: a call's timeout
/// starts when it is sent, so a queue behind it would time out calls logic
/// never saw. Far more than logic needs to be kept busy.
const CALLS_IN_FLIGHT: usize = 256;
/// How long an instance that timed out or refused a connection is tried only
/// after the others.
pub const SUSPECT_FOR: Duration = Duration::from_secs(5);
/// Calls of this comet running on a second instance at once (hedged, see
/// the module docs): if logic is slow for everyone, hedging would only double
/// its load, so past this many a slow call waits for its own answer.
const HEDGES_IN_FLIGHT: usize = 32;
/// Tries of a `Disconnect` that timed out or found logic unreachable: it is
/// idempotent, and a lost one leaves a session until its TTL.
const DISCONNECT_TRIES: u32 = 3;
/// Why a call to logic failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No logic instance is registered (safe to retry later).
    #[error("no logic instance is registered in ZooKeeper")]
    NoLogic,
    /// The call took too long; logic may or may not have done it.
    #[error("logic {addr} did not answer within {after:?}")]
    Timeout {
        /// The instance called.
        addr: String,
        /// The configured timeout.
        after: Duration,
    },
    /// Logic refused to authenticate the connection (its message is for the client).
    #[error("refused by logic: {0}")]
    Refused(String),
    /// Logic answered with an error.
    #[error("logic {addr}: {status}")]
    Status {
        /// The instance called.
        addr: String,
        /// Its answer.
        status: Status,
    },
}

impl LinkError {
    /// True when logic may simply not have been reached or not have answered
    /// in time (another try may succeed), false when it decided.
    pub fn is_transient(&self) -> bool {
        match self {
            LinkError::NoLogic | LinkError::Timeout { .. } => true,
            LinkError::Refused(_) => false,
            LinkError::Status { status, .. } => {
                matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
            }
        }
    }
}

/// What a call does when its instance did not answer in time: logic may have
/// done it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnTimeout {
    /// Try the next instance: doing it twice leaves the same state (a
    /// session written again, a TTL renewed again, room counts replaced).
    TryNext,
    /// Give up: a second run would be seen (an upstream message).
    GiveUp,
}

/// One logic instance and a lazy channel to it.
#[derive(Clone)]
struct LogicPeer {
    grpc: String,
    client: LogicClient<GrpcChannel>,
    /// Until when the instance is tried after the others (shared by clones).
    suspect_until: Arc<parking_lot::Mutex<Option<Instant>>>,
}

impl LogicPeer {
    fn is_suspect(&self, now: Instant) -> bool {
        self.suspect_until.lock().is_some_and(|until| now < until)
    }

    /// It refused a connection or did not answer in time.
    fn suspect(&self) {
        *self.suspect_until.lock() = Some(Instant::now() + SUSPECT_FOR);
    }
}

/// The way to logic: the live instances, followed in ZooKeeper.
pub struct LogicLink {
    peers: watch::Receiver<Arc<Vec<LogicPeer>>>,
    next: AtomicUsize,
    timeout: Duration,
    hedge_after: Duration,
    in_flight: Semaphore,
    hedges: Semaphore,
}

impl LogicLink {
    /// Follows logic instances under `store`'s product until `cancel`.
    pub fn follow(store: Store, cfg: &CometLogicConfig, cancel: CancellationToken) -> LogicLink {
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let connect_timeout = cfg.connect_timeout;
        tokio::spawn(async move {
            let mut found = discovery::follow(store, InstanceKind::Logic, cancel.clone());
            loop {
                let instances = found.borrow_and_update().clone();
                let known = tx.borrow().clone();
                tx.send_replace(Arc::new(peers_for(&instances, &known, connect_timeout)));
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = found.changed() => if r.is_err() { return },
                }
            }
        });
        LogicLink {
            peers: rx,
            next: AtomicUsize::new(0),
            timeout: cfg.timeout,
            hedge_after: cfg.hedge_after,
            in_flight: Semaphore::new(CALLS_IN_FLIGHT),
            hedges: Semaphore::new(HEDGES_IN_FLIGHT),
        }
    }

    /// A link that never finds a logic (unit tests of the parts around it).
    #[cfg(test)]
    pub(crate) fn detached(cfg: &CometLogicConfig) -> LogicLink {
        let (_tx, rx) = watch::channel(Arc::new(Vec::new()));
        LogicLink {
            peers: rx,
            next: AtomicUsize::new(0),
            timeout: cfg.timeout,
            hedge_after: cfg.hedge_after,
            in_flight: Semaphore::new(CALLS_IN_FLIGHT),
            hedges: Semaphore::new(HEDGES_IN_FLIGHT),
        }
    }

    /// Authenticates a connection: `token` is the raw op-7 body.
    ///
    /// # Errors
    /// [`LinkError::Refused`] when logic says the client is not allowed in;
    /// any other variant when logic could not decide.
    pub async fn connect(&self, server: &str, cookie: &str, token: &[u8]) -> Result<ConnectReply, LinkError> {
        let req = ConnectReq {
            server: server.to_string(),
            cookie: cookie.to_string(),
            token: token.to_vec(),
            // Drawn here, once, for every try of this call: a client that
            // sent no key gets this one from whichever logic answers, so a
            // try that also ran (timed out, or hedged) wrote the same session
            // rather than a second one under another key.
            key: uuid::Uuid::new_v4().to_string(),
        };
        self.call(OnTimeout::TryNext, move |mut c| {
            let req = req.clone();
            async move { c.connect(req).await }
        })
        .await
    }

    /// Forgets a closed connection's session; true if logic still had it.
    ///
    /// # Errors
    /// Logic unreachable or failing.
    pub async fn disconnect(&self, mid: i64, key: &str, server: &str) -> Result<bool, LinkError> {
        let req = DisconnectReq {
            mid,
            key: key.to_string(),
            server: server.to_string(),
        };
        let mut tries = 1;
        loop {
            let req = req.clone();
            let reply = self
                .call(OnTimeout::TryNext, move |mut c| {
                    let req = req.clone();
                    async move { c.disconnect(req).await }
                })
                .await;
            match reply {
                Ok(reply) => return Ok(reply.has),
                Err(e) if tries < DISCONNECT_TRIES && e.is_transient() => {
                    tries += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Renews a connection's session TTL.
    ///
    /// # Errors
    /// Logic unreachable or failing.
    pub async fn heartbeat(&self, mid: i64, key: &str, server: &str) -> Result<(), LinkError> {
        let req = HeartbeatReq {
            mid,
            key: key.to_string(),
            server: server.to_string(),
        };
        self.call(OnTimeout::TryNext, move |mut c| {
            let req = req.clone();
            async move { c.heartbeat(req).await }
        })
        .await
        .map(drop)
    }

    /// Reports this comet's room counts; returns the cluster-wide counts.
    ///
    /// # Errors
    /// Logic unreachable or failing.
    pub async fn renew_online(
        &self,
        server: &str,
        room_count: HashMap<String, i32>,
    ) -> Result<HashMap<String, i32>, LinkError> {
        let req = OnlineReq {
            server: server.to_string(),
            room_count,
        };
        let reply = self
            .call(OnTimeout::TryNext, move |mut c| {
                let req = req.clone();
                async move { c.renew_online(req).await }
            })
            .await?;
        Ok(reply.all_room_count)
    }

    /// Hands an upstream client frame to logic.
    ///
    /// # Errors
    /// Logic unreachable or failing.
    pub async fn receive(&self, mid: i64, proto: Proto) -> Result<(), LinkError> {
        let req = ReceiveReq {
            mid,
            proto: Some(proto),
        };
        self.call(OnTimeout::GiveUp, move |mut c| {
            let req = req.clone();
            async move { c.receive(req).await }
        })
        .await
        .map(drop)
    }

    /// Calls the next live instance, suspects after the others; on
    /// "unavailable" (the call never reached it), and on a timeout when
    /// `on_timeout` allows, tries the others in turn, then the first one once
    /// more after a short pause: a channel whose connection just broke (a
    /// logic restart, a reset) reconnects on the next call, and one logic
    /// alone must not turn that moment into refused logins. A call that may
    /// run twice and has not been answered within `hedge_after` is also sent
    /// to the next instance, and the first answer wins (see the module docs).
    async fn call<T, F, Fut>(&self, on_timeout: OnTimeout, f: F) -> Result<T, LinkError>
    where
        F: Fn(LogicClient<GrpcChannel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let peers = self.live_peers().await?;
        // Never closed, so this only waits.
        let Ok(_permit) = self.in_flight.acquire().await else {
            return Err(LinkError::NoLogic);
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut order: Vec<&LogicPeer> = (0..peers.len())
            .map(|i| &peers[(start + i) % peers.len()])
            .collect();
        // Stable: the round robin order stays within each kind.
        order.sort_by_key(|p| p.is_suspect(now));
        let attempt = |i: usize| {
            let peer = order[i % order.len()];
            let reply = tokio::time::timeout(self.timeout, f(peer.client.clone()));
            async move { (i, peer, reply.await) }
        };
        let mut running = FuturesUnordered::new();
        running.push(attempt(0));
        let mut launched = 1;
        let mut hedge_at = tokio::time::Instant::now() + self.hedge_after;
        // Whether this call has hedged (or found the budget spent), and the
        // place in the budget its hedge holds.
        let mut hedged = false;
        let mut _hedge_place = None;
        let mut first_timed_out = false;
        loop {
            // One call at most runs on two instances, and only within the
            // comet-wide budget of hedges.
            let may_hedge = on_timeout == OnTimeout::TryNext
                && !self.hedge_after.is_zero()
                && !hedged
                && launched < order.len()
                && running.len() == 1;
            tokio::select! {
                Some((i, peer, reply)) = running.next() => {
                    let failure = match reply {
                        Ok(Ok(reply)) => return Ok(reply.into_inner()),
                        Ok(Err(status)) if status.code() == Code::Unauthenticated => {
                            return Err(LinkError::Refused(status.message().to_string()));
                        }
                        // Unavailable: the call never reached logic. Unknown
                        // or Cancelled: the connection broke under it (a logic
                        // killed as the call went out; tonic reports the reset
                        // so), and logic may or may not have run it, as after
                        // a timeout, so only a call that may run twice goes on.
                        Ok(Err(status))
                            if status.code() == Code::Unavailable
                                || on_timeout == OnTimeout::TryNext
                                    && matches!(status.code(), Code::Unknown | Code::Cancelled) =>
                        {
                            tracing::debug!(logic = %peer.grpc, %status, "logic call failed; trying the next");
                            peer.suspect();
                            LinkError::Status {
                                addr: peer.grpc.clone(),
                                status,
                            }
                        }
                        Ok(Err(status)) => {
                            return Err(LinkError::Status {
                                addr: peer.grpc.clone(),
                                status,
                            });
                        }
                        Err(_) => {
                            peer.suspect();
                            first_timed_out |= i == 0;
                            let timeout = LinkError::Timeout {
                                addr: peer.grpc.clone(),
                                after: self.timeout,
                            };
                            if on_timeout == OnTimeout::GiveUp {
                                return Err(timeout);
                            }
                            tracing::warn!(logic = %peer.grpc, after = ?self.timeout, "logic did not answer; trying the next");
                            timeout
                        }
                    };
                    if !running.is_empty() {
                        continue; // the other instance may still answer
                    }
                    if launched == order.len() {
                        // The pause is for a broken channel to reconnect; an
                        // instance that did not answer in time gets no second wait.
                        if first_timed_out {
                            return Err(failure);
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    } else if launched > order.len() {
                        return Err(failure);
                    }
                    running.push(attempt(launched));
                    launched += 1;
                    hedge_at = tokio::time::Instant::now() + self.hedge_after;
                }
                () = tokio::time::sleep_until(hedge_at), if may_hedge => {
                    hedged = true;
                    let Ok(place) = self.hedges.try_acquire() else {
                        // The budget is spent (logic is slow for everyone):
                        // this call waits for its own answer.
                        continue;
                    };
                    _hedge_place = Some(place);
                    if let Some(slow) = order.get(launched - 1) {
                        tracing::debug!(logic = %slow.grpc, after = ?self.hedge_after, "logic slow to answer; asking the next too");
                        slow.suspect();
                    }
                    running.push(attempt(launched));
                    launched += 1;
                }
            }
        }
    }

    /// The live instances; waits up to the call timeout for a first one (a
    /// comet that just started has not read ZooKeeper yet).
    async fn live_peers(&self) -> Result<Arc<Vec<LogicPeer>>, LinkError> {
        let now = self.peers.borrow().clone();
        if !now.is_empty() {
            return Ok(now);
        }
        let mut rx = self.peers.clone();
        match tokio::time::timeout(self.timeout, rx.wait_for(|p| !p.is_empty())).await {
            Ok(Ok(peers)) => Ok(peers.clone()),
            _ => Err(LinkError::NoLogic),
        }
    }
}

/// Peers for `instances`, reusing the channels of `known` ones.
fn peers_for(instances: &[Instance], known: &[LogicPeer], connect_timeout: Duration) -> Vec<LogicPeer> {
    let mut out = Vec::with_capacity(instances.len());
    for inst in instances.iter().filter(|i| !i.grpc.is_empty()) {
        if let Some(p) = known.iter().find(|p| p.grpc == inst.grpc) {
            out.push(p.clone());
            continue;
        }
        match Endpoint::from_shared(format!("http://{}", inst.grpc)) {
            Ok(ep) => out.push(LogicPeer {
                grpc: inst.grpc.clone(),
                client: LogicClient::new(ep.connect_timeout(connect_timeout).connect_lazy()),
                suspect_until: Arc::default(),
            }),
            Err(e) => {
                tracing::warn!(logic = %inst.id, grpc = %inst.grpc, error = %e, "bad logic address; skipped")
            }
        }
    }
    out
}
