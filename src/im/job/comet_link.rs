//! The comets job delivers to: one gRPC client per comet id, following the set
//! registered in ZooKeeper, and the call discipline every delivery uses (a cap
//! on calls in flight per comet, retries of transient failures).
//!
//! Channels are lazy: a comet that registered but does not answer costs a
//! failed call, never a blocked start. A comet that leaves ZooKeeper is still
//! called for `leave_grace` (10 s), without retries: its node also goes when
//! its ZooKeeper session expires while it serves on, until it registers again.
//! After that it is removed, so pushes naming it are dropped and counted
//! instead of waiting for timeouts. A comet that is registered but does not answer (hung, or cut off
//! from job by a partition) is *silent* after one call timed out: calls to it
//! fail at once, counted like any call given up, until a probe (`Rooms`, every
//! [`PROBE_EVERY`]) is answered. Without that, every room batch and broadcast,
//! which wait for all comets, waited `timeout` for it, and so did the other
//! comets' clients. Imports `im::discovery`, `im::proto`, the `topo` store and
//! `libs`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::config::JobCometConfig;
use crate::im::discovery::{self, Instance, InstanceKind};
use crate::im::proto::comet::RoomsReq;
use crate::im::proto::comet::comet_client::CometClient;
use crate::libs::backoff::Backoff;
use crate::topo::store::Store;

/// The longest pause between two attempts of one call.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// How often a silent comet is probed, and the most a probe waits.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often comets whose grace period ran out are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Why a call to a comet was given up. The push is then dropped for that comet
/// (and counted); sending it again later is safe but pointless.
#[derive(Debug, thiserror::Error)]
#[error("comet {id}: {status}")]
pub struct CometCallError {
    /// The comet's server id.
    pub id: String,
    /// The last attempt's status.
    pub status: Status,
    /// Not sent at all: the comet is silent (the warning was logged when it
    /// went silent, not for each push).
    pub skipped: bool,
}

/// One comet: its id, address and client.
#[derive(Debug)]
pub struct CometLink {
    /// The server id (what `PushMsg.server` names).
    pub id: String,
    /// `host:port` of its gRPC server.
    pub grpc: String,
    client: CometClient<Channel>,
    in_flight: Semaphore,
    /// Set while the comet is silent (a call timed out, no probe answered
    /// since); the probe task holds it weakly, so it ends with the link.
    silent: Arc<AtomicBool>,
    /// When its registration went away, if it did: it is still called for
    /// `leave_grace` after (see [`CometLinks::update`]).
    left: parking_lot::Mutex<Option<Instant>>,
}

impl CometLink {
    /// True once its registration went away (within the grace period).
    pub fn departed(&self) -> bool {
        self.left.lock().is_some()
    }

    /// Still called: registered, or departed less than `grace` ago.
    fn serves(&self, grace: Duration, now: Instant) -> bool {
        self.left
            .lock()
            .is_none_or(|left| now.duration_since(left) < grace)
    }

    /// Marks the comet silent and probes it until it answers (or the link
    /// is dropped).
    fn silence(&self) {
        if self.silent.swap(true, Ordering::Relaxed) {
            return; // a probe runs already
        }
        tracing::warn!(comet = %self.id, "comet did not answer in time; skipping it until it does");
        let silent = Arc::downgrade(&self.silent);
        let (id, mut client) = (self.id.clone(), self.client.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(flag) = silent.upgrade() else { return };
                if let Ok(Ok(_)) = tokio::time::timeout(PROBE_EVERY, client.rooms(RoomsReq {})).await {
                    flag.store(false, Ordering::Relaxed);
                    tracing::warn!(comet = %id, "comet answers again");
                    return;
                }
            }
        });
    }
}

/// The live comets, by id; replaced as a whole when ZooKeeper changes.
pub type CometMap = HashMap<String, Arc<CometLink>>;

/// Every comet job knows of now.
#[derive(Debug)]
pub struct CometLinks {
    links: ArcSwap<CometMap>,
    config: JobCometConfig,
}

impl CometLinks {
    /// No comets yet.
    pub fn new(config: JobCometConfig) -> CometLinks {
        CometLinks {
            links: ArcSwap::from_pointee(CometMap::new()),
            config,
        }
    }

    /// Loads the registered comets, then follows ZooKeeper until `cancel`.
    /// The first load is awaited so that a job starting up does not drop
    /// pushes for comets it simply has not heard of yet.
    pub async fn follow(self: &Arc<Self>, store: Store, cancel: CancellationToken) {
        match discovery::list(&store, InstanceKind::Comet).await {
            Ok(now) => self.update(&now),
            Err(e) => tracing::warn!(error = %e, "listing comets failed; following ZooKeeper for them"),
        }
        let mut rx = discovery::follow(store, InstanceKind::Comet, cancel.clone());
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut prune = tokio::time::interval(PRUNE_EVERY);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let now = rx.borrow_and_update().clone();
                        me.update(&now);
                    }
                    // Drops the comets whose grace period ran out, when
                    // ZooKeeper has nothing new to say.
                    _ = prune.tick() => me.prune(),
                }
            }
        });
    }

    /// Makes `instances` the set of comets: new ones get a client, moved ones
    /// (same id, new address) get a new client, and gone ones are still
    /// called for `leave_grace`, then dropped. A comet's node goes when its
    /// ZooKeeper session expires, while the comet itself serves on and
    /// registers again on its next session; dropping it at once dropped the
    /// pushes for its clients read in between.
    pub fn update(&self, instances: &[Instance]) {
        let old = self.links.load();
        let mut next = CometMap::with_capacity(instances.len());
        for instance in instances {
            if instance.id.is_empty() || instance.grpc.is_empty() {
                continue;
            }
            if let Some(link) = old.get(&instance.id).filter(|l| l.grpc == instance.grpc) {
                if link.left.lock().take().is_some() {
                    tracing::info!(comet = %instance.id, "comet registered again");
                }
                next.insert(instance.id.clone(), Arc::clone(link));
                continue;
            }
            match self.link(instance) {
                Ok(link) => {
                    tracing::info!(comet = %instance.id, grpc = %instance.grpc, "comet joined");
                    next.insert(instance.id.clone(), Arc::new(link));
                }
                Err(e) => {
                    tracing::warn!(comet = %instance.id, grpc = %instance.grpc, error = %e, "bad comet address; skipped")
                }
            }
        }
        for (id, link) in old.iter() {
            if next.contains_key(id) {
                continue;
            }
            let mut left = link.left.lock();
            if left.is_none() {
                *left = Some(Instant::now());
                tracing::info!(comet = %id, grace = ?self.config.leave_grace, "comet's registration went away; still calling it for the grace period");
            }
            drop(left);
            next.insert(id.clone(), Arc::clone(link));
        }
        self.links.store(Arc::new(next));
        // Those that went away a grace period ago or more.
        self.prune();
    }

    /// Drops the comets whose grace period ran out.
    pub fn prune(&self) {
        let now = Instant::now();
        let grace = self.config.leave_grace;
        let old = self.links.load();
        if old.values().all(|l| l.serves(grace, now)) {
            return;
        }
        let mut next = CometMap::with_capacity(old.len());
        for (id, link) in old.iter() {
            if link.serves(grace, now) {
                next.insert(id.clone(), Arc::clone(link));
            } else {
                tracing::info!(comet = %id, "comet left");
            }
        }
        self.links.store(Arc::new(next));
    }

    fn link(&self, instance: &Instance) -> Result<CometLink, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{}", instance.grpc))?
            .connect_timeout(self.config.connect_timeout)
            .timeout(self.config.timeout)
            .connect_lazy();
        Ok(CometLink {
            id: instance.id.clone(),
            grpc: instance.grpc.clone(),
            client: CometClient::new(channel),
            in_flight: Semaphore::new(self.config.routine.max(1)),
            silent: Arc::default(),
            left: parking_lot::Mutex::new(None),
        })
    }

    /// The comet with server id `id`, if it is registered (or departed
    /// within the grace period).
    pub fn get(&self, id: &str) -> Option<Arc<CometLink>> {
        let now = Instant::now();
        self.links
            .load()
            .get(id)
            .filter(|l| l.serves(self.config.leave_grace, now))
            .cloned()
    }

    /// The comets whose registration went away, still called for the grace
    /// period.
    pub fn departed(&self) -> Vec<Arc<CometLink>> {
        self.all().into_iter().filter(|l| l.departed()).collect()
    }

    /// Every registered comet (and those departed within the grace period).
    pub fn all(&self) -> Vec<Arc<CometLink>> {
        let now = Instant::now();
        self.links
            .load()
            .values()
            .filter(|l| l.serves(self.config.leave_grace, now))
            .cloned()
            .collect()
    }

    /// Runs one call on `link`, holding one of its in-flight places, and tries
    /// again after a pause when it fails with `UNAVAILABLE` (the comet is
    /// restarting or the connection is being re-made), up to the configured
    /// retries. Other statuses are final: `RESOURCE_EXHAUSTED` means comet took
    /// the push and dropped it for a full connection, and a timeout may have
    /// delivered already. A timeout makes the comet silent (see the module
    /// docs); a call to a silent comet fails at once.
    ///
    /// # Errors
    /// The last status once the call is given up.
    pub async fn call<R, F, Fut>(&self, link: &CometLink, mut rpc: F) -> Result<R, CometCallError>
    where
        F: FnMut(CometClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let skipped = || CometCallError {
            id: link.id.clone(),
            status: Status::unavailable(
                "the comet did not answer in time; skipped until a probe is answered",
            ),
            skipped: true,
        };
        if link.silent.load(Ordering::Relaxed) {
            return Err(skipped());
        }
        let _place = link.in_flight.acquire().await;
        // It may have gone silent while this call waited for a place.
        if link.silent.load(Ordering::Relaxed) {
            return Err(skipped());
        }
        let mut backoff = Backoff::new(
            self.config.retry_backoff,
            MAX_RETRY_PAUSE.max(self.config.retry_backoff),
        );
        let mut attempt = 0;
        loop {
            match rpc(link.client.clone()).await {
                Ok(reply) => return Ok(reply.into_inner()),
                // A departed comet that refuses is most likely gone for good.
                Err(status)
                    if status.code() == Code::Unavailable
                        && attempt < self.config.retries
                        && !link.departed() =>
                {
                    attempt += 1;
                    tracing::debug!(comet = %link.id, %status, attempt, "comet unavailable; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(status) => {
                    if matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded) {
                        link.silence();
                    }
                    return Err(CometCallError {
                        id: link.id.clone(),
                        status,
                        skipped: false,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, grpc: &str) -> Instance {
        Instance {
            id: id.into(),
            grpc: grpc.into(),
            ..Instance::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_set_follows_registrations_and_keeps_unchanged_clients() {
        let links = CometLinks::new(JobCometConfig::default());
        links.update(&[instance("a", "127.0.0.1:1"), instance("b", "127.0.0.1:2")]);
        let a = links.get("a").expect("a known");
        assert_eq!(links.all().len(), 2);
        links.update(&[instance("a", "127.0.0.1:1"), instance("b", "127.0.0.1:3")]);
        assert!(
            Arc::ptr_eq(&a, &links.get("a").expect("a kept")),
            "same client reused"
        );
        assert_eq!(
            links.get("b").map(|b| b.grpc.clone()).as_deref(),
            Some("127.0.0.1:3")
        );
        links.update(&[instance("b", "127.0.0.1:3"), instance("", "x:1")]);
        // Gone from ZooKeeper: still called for the grace period (its
        // session may just have expired), without retries.
        let grace = JobCometConfig::default().leave_grace;
        tokio::time::sleep(grace / 2).await;
        let still = links.get("a").expect("a within the grace period");
        assert!(Arc::ptr_eq(&a, &still) && still.departed());
        assert_eq!(links.all().len(), 2);
        // Registered again (a new session): no longer departed.
        links.update(&[instance("a", "127.0.0.1:1"), instance("b", "127.0.0.1:3")]);
        assert!(!links.get("a").expect("a").departed(), "a is back");
        links.update(&[instance("b", "127.0.0.1:3")]);
        tokio::time::sleep(grace).await;
        assert!(links.get("a").is_none(), "a left for good");
        assert_eq!(links.all().len(), 1);
        links.prune();
        assert!(links.links.load().get("a").is_none(), "and is dropped");
    }

    #[tokio::test]
    async fn unavailable_is_retried_then_given_up_other_errors_are_not() {
        let config = JobCometConfig {
            retries: 2,
            retry_backoff: Duration::from_millis(1),
            ..JobCometConfig::default()
        };
        let links = CometLinks::new(config);
        links.update(&[instance("a", "127.0.0.1:1")]);
        let a = links.get("a").expect("a");
        let mut calls = 0;
        let r: Result<(), _> = links
            .call(&a, |_| {
                calls += 1;
                async { Err(Status::unavailable("down")) }
            })
            .await;
        assert_eq!(calls, 3, "one call and two retries");
        assert_eq!(r.err().map(|e| e.status.code()), Some(Code::Unavailable));
        let mut calls = 0;
        let r: Result<(), _> = links
            .call(&a, |_| {
                calls += 1;
                async { Err(Status::resource_exhausted("full")) }
            })
            .await;
        assert_eq!((calls, r.is_err()), (1, true));
    }

    /// A silent comet is probed while job knows it, and no longer once it
    /// left ZooKeeper: the probe ends with its link (and so does the link's
    /// connection, the runtime's only other task).
    #[tokio::test(start_paused = true)]
    async fn a_silent_comets_probe_ends_when_its_link_is_dropped() {
        // Accepts connections and never answers: a hung comet.
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = hung.local_addr().expect("addr").to_string();
        let links = CometLinks::new(JobCometConfig::default());
        links.update(&[instance("a", &addr)]);
        let a = links.get("a").expect("a");
        let r: Result<(), _> = links
            .call(&a, |_| async { Err(Status::deadline_exceeded("late")) })
            .await;
        assert_eq!(r.err().map(|e| e.skipped), Some(false), "sent, then timed out");
        let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
        tokio::time::sleep(PROBE_EVERY * 5).await;
        assert!(a.silent.load(Ordering::Relaxed), "no probe was answered");
        assert!(tasks() >= 1, "the probe runs");
        let r: Result<(), _> = links.call(&a, |_| async { Ok(tonic::Response::new(())) }).await;
        assert_eq!(r.err().map(|e| e.skipped), Some(true), "skipped while silent");

        // It left ZooKeeper: called for the grace period, then dropped.
        links.update(&[]);
        tokio::time::sleep(links.config.leave_grace).await;
        links.prune();
        drop(a);
        for _ in 0..10 {
            if tasks() == 0 {
                return;
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
        panic!(
            "{} tasks still alive 10 probe periods after the link was dropped",
            tasks()
        );
    }
}
