//! What every session of a proxy shares (config, router, stats, the client
//! list), and what each client connection keeps for itself (auth state,
//! protocol, dedicated connections, transaction).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{Semaphore, oneshot};

use super::auth_throttle::AuthThrottle;
use super::blocked::{ByClient, Dedicated, Lane, Registry};
use super::clients::{Clients, Connection};
use super::config::ProxyConfig;
use super::lease::Lease;
use super::migrate::{Migrator, MoveOptions, MovedKeys};
use super::output::Meter;
use super::pinned::SpareLines;
use super::policy::Policy;
use super::pubsub::PubSubHub;
use super::router::Router;
use super::server_version::ServerVersion;
use super::stats::Stats;
use super::subscription::Subscriptions;
use super::transaction::Transaction;
use crate::libs::protocol::Protocol;
use crate::libs::resp::Limits;

/// The state sessions of one worker thread share through an `Arc`: the proxy-wide
/// parts (config, stats, limits) plus the worker's own router, whose backend
/// connections live on that worker's runtime.
pub struct Context {
    pub config: ProxyConfig,
    pub proxy_id: String,
    pub router: Router,
    pub stats: Arc<Stats>,
    /// Every client connection of the proxy (CLIENT LIST, KILL, PAUSE).
    pub clients: Arc<Clients>,
    pub limits: Limits,
    /// Permits for dedicated (blocking-command) backend connections.
    pub blocking: Arc<Semaphore>,
    /// This worker's blocking calls out on dedicated connections, so a slot
    /// switch can interrupt them (see `blocked.rs`).
    pub blocked: Arc<Registry>,
    /// Each client's blocking call out, proxy-wide (`CLIENT UNBLOCK`).
    pub by_client: Arc<ByClient>,
    /// This worker's keys known to have left the source of their migrating
    /// slot (see `migrate.rs`).
    pub moved: Arc<MovedKeys>,
    /// Permits for requests held while their slot switches groups.
    pub held: Arc<Semaphore>,
    /// This worker's idle transaction connections (see `pinned.rs`).
    pub spare_lines: SpareLines,
    pub started: Instant,
    /// Slot traffic is served only within this ZooKeeper lease.
    pub lease: Arc<Lease>,
    /// The operator's denied and renamed commands.
    pub policy: Arc<Policy>,
    /// This worker's shared upstream subscriptions (see `pubsub.rs`).
    pub pubsub: Arc<PubSubHub>,
    /// The masters' Redis version, as `HELLO` reports it.
    pub server_version: Arc<ServerVersion>,
    /// `AUTH` attempts by client address, proxy-wide (`auth_throttle.rs`).
    pub auth_throttle: Arc<AuthThrottle>,
    next_client_id: Arc<AtomicU64>,
}

impl Context {
    /// Builds the shared state from a validated config.
    pub fn new(config: ProxyConfig, router: Router) -> Context {
        let limits = Limits {
            max_bulk_len: config.max_bulk_len,
            ..Limits::default()
        };
        let policy = Arc::new(Policy::new(&config.commands));
        let stats = Arc::new(Stats::default());
        Context {
            pubsub: PubSubHub::new(stats.clone()),
            proxy_id: config.proxy_id(),
            blocking: Arc::new(Semaphore::new(config.max_blocking)),
            blocked: Arc::default(),
            by_client: Arc::default(),
            moved: Arc::default(),
            held: Arc::new(Semaphore::new(config.max_held)),
            spare_lines: SpareLines::default(),
            config,
            router,
            stats,
            clients: Arc::default(),
            limits,
            started: Instant::now(),
            lease: Arc::new(Lease::default()),
            policy,
            server_version: Arc::default(),
            auth_throttle: Arc::default(),
            next_client_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The context of another worker: same config, stats, limits and client ids,
    /// its own router.
    pub fn with_router(&self, router: Router) -> Context {
        Context {
            config: self.config.clone(),
            proxy_id: self.proxy_id.clone(),
            router,
            stats: self.stats.clone(),
            clients: self.clients.clone(),
            limits: self.limits,
            blocking: self.blocking.clone(),
            blocked: Arc::default(),
            by_client: self.by_client.clone(),
            moved: Arc::default(),
            held: self.held.clone(),
            spare_lines: SpareLines::default(),
            started: self.started,
            lease: self.lease.clone(),
            policy: self.policy.clone(),
            pubsub: PubSubHub::new(self.stats.clone()),
            server_version: self.server_version.clone(),
            auth_throttle: self.auth_throttle.clone(),
            next_client_id: self.next_client_id.clone(),
        }
    }

    /// A fresh id for a client connection (CLIENT ID, HELLO).
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Per-connection client state.
pub struct Client {
    pub id: u64,
    pub authed: bool,
    /// Failed `AUTH`s in a row on this connection (`local.rs` throttles them).
    pub auth_failures: u32,
    /// What `CLIENT LIST` shows of this client (name included).
    pub conn: Arc<Connection>,
    /// The protocol the client speaks (`HELLO 3` switches to RESP3). Its
    /// requests go to backend connections of the same protocol.
    pub protocol: Protocol,
    /// Set when `HELLO` switched the protocol: requests sent before then went
    /// to the other protocol's connections, so the session lets them finish
    /// before it dispatches the next one (see `session.rs`).
    pub fence: bool,
    /// Dedicated connections for blocking commands, by backend address.
    pub dedicated: HashMap<String, Dedicated>,
    /// FIFO for requests of migrating slots, started on first use.
    migrator: Option<Migrator>,
    /// What this client's blocking calls share, made on first use; dropped
    /// with the client, which ends its re-issued calls.
    lane: Option<Lane>,
    /// WATCH / MULTI state, while there is any (see `transaction.rs`).
    pub txn: Option<Box<Transaction>>,
    /// Set by a request the session must see answered before it reads the
    /// next one (WATCH, EXEC): fires, or is dropped, when it is.
    pub barrier: Option<oneshot::Receiver<()>>,
    /// Pub/sub subscriptions, from the first one (see `subscription.rs`).
    pub pubsub: Option<Box<Subscriptions>>,
    /// What this client has not read yet (`output.rs`), shared with its
    /// session's writer and with the backends its replies come from.
    pub output: Arc<Meter>,
}

impl Client {
    /// A new client not bound to a socket (tests); it starts authenticated
    /// when the proxy has no password.
    pub fn new(ctx: &Context) -> Client {
        Client::on(ctx, Connection::detached(ctx.next_client_id()))
    }

    /// The client of connection `conn` (see `Connection::new`, which takes
    /// its id from [`Context::next_client_id`]).
    pub fn on(ctx: &Context, conn: Arc<Connection>) -> Client {
        Client {
            id: conn.id,
            authed: ctx.config.auth.is_empty(),
            auth_failures: 0,
            conn,
            protocol: Protocol::Resp2,
            fence: false,
            dedicated: HashMap::new(),
            migrator: None,
            lane: None,
            txn: None,
            barrier: None,
            pubsub: None,
            output: Arc::new(
                Meter::new(
                    ctx.config.max_pipeline,
                    ctx.config.client_output_limit,
                    ctx.stats.output_memory.clone(),
                )
                .capped(ctx.config.max_output_memory),
            ),
        }
    }

    /// This client's blocking-call lane.
    pub fn lane(&mut self) -> &Lane {
        self.lane.get_or_insert_with(Lane::new)
    }

    /// Ends this client's blocking calls' lane (see `Lane::end`); false if it
    /// never made a blocking call, so there is nothing to end.
    pub fn end_lane(&self) -> bool {
        self.lane.as_ref().map(Lane::end).is_some()
    }

    /// This client's migrate-on-access queue.
    pub fn migrator(&mut self, ctx: &Context) -> &Migrator {
        self.migrator
            .get_or_insert_with(|| Migrator::spawn(self.id, MoveOptions::of(&ctx.config), ctx.moved.clone()))
    }
}
