//! `reborn proxy`: the RESP data plane.
//!
//! [`server`] runs the proxy's life cycle (bind, join ZooKeeper, start, drain)
//! from its [`config`] (errors: [`error`]); each [`worker`] thread accepts
//! clients through the shared role service (`libs::listener`, bounded by
//! `max_clients`). What the sessions share, and what each client keeps, is the
//! [`context`]. A request flows through these files, in order:
//!
//! 1. [`worker`]: accepts the connection;
//! 2. [`session`]: parses requests (`libs::resp`) and keeps replies in order;
//! 3. [`dispatch`]: classifies the command ([`command`], from the table in
//!    `commands.json`), answers local ones ([`local`]), refuses unsafe ones,
//!    splits multi-key ones, and routes the rest by slot through the [`router`]
//!    snapshot;
//! 4. [`backend`]: pipelined connections to redis-servers, shared by sessions;
//! 5. [`reply`]: the pending reply the session writer waits on, merged for split
//!    commands.
//!
//! Blocking commands run on dedicated connections and follow a slot switch
//! ([`blocked`], reading their words with [`blocking_args`]); requests of a
//! migrating slot go through the client's FIFO ([`migrate`], [`source_call`]);
//! [`ack`] acknowledges ZooKeeper actions once their slots are drained, and
//! [`lease`] stops slot traffic when the ZooKeeper session cannot be proven
//! alive. [`observer`] reports masters that stopped answering, the proxy's vote
//! towards an automatic failover.
//! Transactions (`MULTI`/`EXEC`/`WATCH`) are queued by [`transaction`] and run
//! whole on a dedicated connection, or not at all, by [`pinned`].
//!
//! [`clients`] lists every client connection of the proxy for `CLIENT LIST`,
//! `KILL` and `PAUSE` ([`client_command`]).
//! Cluster-wide commands are sent to every group and merged ([`fanout`],
//! [`merge`], [`info`], [`scan`], [`keyless_script`], [`wait`]); the operator's deny and
//! rename lists are the [`policy`].
//!
//! Pub/sub commands ([`subscription`]) share one upstream subscription per
//! channel and master between a worker's clients ([`pubsub`], [`upstream`]).
//!
//! [`admin`] serves `/stats` and `/metrics` from [`stats`]. Imports `libs` and the
//! `topo` kernel, never `im`.

pub mod ack;
pub mod admin;
pub mod auth_throttle;
pub mod backend;
pub mod blocked;
pub mod blocking_args;
pub mod client_command;
pub mod clients;
pub mod command;
pub mod config;
pub mod context;
pub mod dispatch;
pub mod error;
pub mod fanout;
pub mod info;
pub mod keyless_script;
pub mod lease;
pub mod local;
pub mod merge;
pub mod migrate;
pub mod observer;
pub mod output;
pub mod pinned;
pub mod policy;
pub mod pubsub;
pub mod reply;
pub mod router;
pub mod scan;
pub mod script_watch;
pub mod server;
pub mod server_version;
pub mod session;
pub mod source_call;
pub mod stats;
pub mod subscription;
pub mod transaction;
pub mod upstream;
pub mod wait;
pub mod worker;

pub use config::{ProxyArgs, ProxyConfig};
pub use error::ProxyError;
pub use server::{Bound, run};

/// Runs a proxy until SIGINT or SIGTERM, then shuts it down cleanly.
///
/// # Errors
/// See [`run`].
pub async fn run_until_signal(config: ProxyConfig) -> Result<(), ProxyError> {
    let cancel = crate::libs::shutdown::on_signal();
    run(config, cancel).await
}
