//! `reborn job`: reads the push queue that logic fills (Redis Streams in the
//! proxy cluster, one consumer group shared by every job instance) and fans
//! each push out to the comets over gRPC, as goim's job does, with
//! at-least-once delivery where goim's was at-most-once: an entry is acked only
//! after its delivery was handed to the comets, and entries a dead instance
//! left pending are claimed by the others.
//!
//! The parts, one per file: [`config`] (TOML and flags), `consumer` (one
//! task per stream), `entry` (stream replies), `claim` (XAUTOCLAIM), `reaper`
//! (dead instances' consumers), `dispatch` (PUSH / BROADCAST / ROOM to calls),
//! `room` (batching), `acker` (XACK), `comet_link` (the comets from
//! ZooKeeper), `comet_order` (each comet's calls in order, none waiting for
//! another), `stats` (counters, served on the admin port with
//! `im::admin_http`); the proxies are `im::proxies` with sticky
//! failover (every command job sends through them may run twice). Each
//! instance registers in discovery (`im/job/<consumer>`), so the others know
//! which consumers are alive. Imports `libs`, the `topo` kernel and `im`'s
//! shared pieces (discovery, frame, proto, proxies, queue, admin_http), never
//! `proxy`.

pub mod acker;
pub mod claim;
pub mod comet_link;
pub mod comet_order;
pub mod config;
pub mod consumer;
pub mod dispatch;
pub mod entry;
pub mod reaper;
pub mod room;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{JobArgs, JobConfig};
pub use stats::{JobStats, JobStatsSnapshot};

use comet_link::CometLinks;
use consumer::StreamConsumer;
use dispatch::Dispatcher;

use crate::im::admin_http::{self, AdminReport};
use crate::im::discovery::{self, Instance, InstanceKind};
use crate::im::proxies::{Failover, ProxySet};
use crate::im::queue;
use crate::libs::config::ConfigError;
use crate::libs::counters::write_counters;
use crate::libs::prometheus::{Exposition, MetricKind};
use crate::topo::error::TopoError;
use crate::topo::store::Store;

/// Why a job instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The configuration makes no sense.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// ZooKeeper (where the comets are found) could not be reached, or
    /// another live instance registered the same consumer name.
    #[error(transparent)]
    Zk(#[from] TopoError),
    /// The admin port could not be bound.
    #[error("cannot listen for the admin port on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running job instance.
pub struct RunningJob {
    consumer: String,
    /// The admin port's address (`/stats`, `/metrics`), unless it is off.
    pub admin_addr: Option<SocketAddr>,
    stats: Arc<JobStats>,
    links: Arc<CometLinks>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    store: Store,
    drain_timeout: std::time::Duration,
}

impl std::fmt::Debug for RunningJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningJob")
            .field("consumer", &self.consumer)
            .finish()
    }
}

/// Starts a job instance: connects to ZooKeeper, loads the comets, and starts
/// one consumer per stream. The proxies need not be up yet (the consumers
/// retry).
///
/// # Errors
/// An invalid config, or ZooKeeper unreachable.
pub async fn start(config: JobConfig) -> Result<RunningJob, JobError> {
    config.validate()?;
    let bind_error = |source| JobError::Bind {
        addr: config.admin_listen.clone(),
        source,
    };
    let admin = admin_http::bind(&config.admin_listen).await.map_err(bind_error)?;
    let admin_addr = admin
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .map_err(bind_error)?;
    let store = Store::connect(&config.zk).await?;
    let stop = CancellationToken::new();
    let stats = Arc::new(JobStats::default());
    let links = Arc::new(CometLinks::new(config.comet.clone()));
    links.follow(store.clone(), stop.clone()).await;
    let link = Arc::new(
        ProxySet::new(
            &config.cluster.addrs,
            config.cluster.conns,
            config.cluster.timeout,
            Failover::Sticky,
        )
        .with_auth(&config.cluster.auth),
    );
    let dispatcher = Arc::new(Dispatcher::new(Arc::clone(&links), Arc::clone(&stats)));
    let consumer = config.consumer_name();
    // Registered before reading: an instance that reads is always listed, so
    // the others never delete its consumer (`reaper.rs`).
    let me = Instance {
        id: consumer.clone(),
        ..Instance::default()
    };
    if let Err(e) = discovery::register(&store, InstanceKind::Job, &me).await {
        stop.cancel();
        store.close().await;
        return Err(e.into());
    }
    let jobs = discovery::follow(store.clone(), InstanceKind::Job, stop.clone());
    let mut tasks = JoinSet::new();
    tasks.spawn(discovery::refresh_loop(
        store.clone(),
        InstanceKind::Job,
        me,
        stop.clone(),
    ));
    for stream in queue::stream_keys(config.queue.streams) {
        let c = StreamConsumer {
            stream,
            consumer: consumer.clone(),
            link: Arc::clone(&link),
            dispatcher: Arc::clone(&dispatcher),
            queue: config.queue.clone(),
            room: config.room.clone(),
            stats: Arc::clone(&stats),
            jobs: jobs.clone(),
        };
        tasks.spawn(c.run(stop.clone()));
    }
    if let Some(listener) = admin {
        let report = Arc::new(JobReport {
            consumer: consumer.clone(),
            stats: Arc::clone(&stats),
            links: Arc::clone(&links),
        });
        tasks.spawn(admin_http::serve(listener, report, stop.clone()));
    }
    tracing::info!(
        consumer,
        streams = config.queue.streams,
        comets = links.all().len(),
        "job consuming"
    );
    Ok(RunningJob {
        consumer,
        admin_addr,
        stats,
        links,
        stop,
        tasks,
        store,
        drain_timeout: config.drain_timeout,
    })
}

impl RunningJob {
    /// This instance's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The counters now.
    pub fn stats(&self) -> JobStatsSnapshot {
        self.stats.snapshot()
    }

    /// The server ids of the comets known now (those called: registered, or
    /// departed within the grace period).
    pub fn comets(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.links.all().iter().map(|l| l.id.clone()).collect();
        ids.sort();
        ids
    }

    /// The server ids of the comets whose registration went away and that
    /// are still called for the grace period (`comet.leave_grace`).
    pub fn departed_comets(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.links.departed().iter().map(|l| l.id.clone()).collect();
        ids.sort();
        ids
    }

    /// Stops reading, flushes the room batches, sends the last acks (waiting
    /// at most `drain_timeout`), then stops everything. Entries not acked by
    /// then stay pending and are claimed by another instance.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "deliveries still in flight after {:?}; they stay pending",
                self.drain_timeout
            );
        }
        self.tasks.abort_all();
        self.store.close().await;
    }

    /// Stops at once without acking anything more, as a crash would: what was
    /// read but not acked stays pending, and the ZooKeeper session ends (as it
    /// expires after a crash), taking the registration with it. For tests of
    /// the claim path.
    pub fn kill(mut self) {
        self.tasks.abort_all();
        self.stop.cancel();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            runtime.spawn(async move { store.close().await });
        }
    }
}

/// What the admin port shows: the counters and the comets known.
struct JobReport {
    consumer: String,
    stats: Arc<JobStats>,
    links: Arc<CometLinks>,
}

impl AdminReport for JobReport {
    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "consumer": self.consumer,
            "comets": self.links.all().len(),
            "comets_departed": self.links.departed().len(),
            "counters": self.stats.snapshot(),
        })
    }

    fn metrics(&self) -> String {
        let mut page = Exposition::new();
        page.single(
            "reborn_job_comets",
            "Comets called: registered in ZooKeeper, or departed within comet.leave_grace.",
            MetricKind::Gauge,
            self.links.all().len(),
        );
        page.single(
            "reborn_job_comets_departed",
            "Comets whose registration went away, still called for comet.leave_grace.",
            MetricKind::Gauge,
            self.links.departed().len(),
        );
        write_counters(&mut page, "reborn_job", &self.stats.snapshot().rows());
        page.finish()
    }
}

/// Runs a job instance until `shutdown` fires, then stops it cleanly.
///
/// # Errors
/// As [`start`].
pub async fn run(config: JobConfig, shutdown: CancellationToken) -> Result<(), JobError> {
    let job = start(config).await?;
    shutdown.cancelled().await;
    job.shutdown().await;
    Ok(())
}
