//! Coordination: the cluster model as kept in ZooKeeper, and everything that reads
//! or writes it.
//!
//! * [`model`]: the plain data (slots, groups, proxies) and its JSON schema.
//! * [`path`]: every ZooKeeper path, in one place.
//! * [`store`]: a ZooKeeper session that survives disconnects and expiry,
//!   re-creating its ephemeral nodes.
//! * [`session`]: the client of one session with JSON, CAS and `multi` helpers.
//! * [`watcher`]: follows a product and publishes immutable [`model::Topology`]
//!   snapshots.
//! * [`lock`]: the product-wide operator lock.
//! * [`operation`]: operator changes (groups, servers, slots, proxy state), each
//!   run under the lock and validated before anything is written.
//! * [`rebalance`]: the pure planner that evens out slots per group.
//! * [`task`]: the queue of migration tasks; [`runner`] drives it.
//! * [`health`]: a short probe of a redis-server (up, down, loading).
//! * [`dashboard`]: `reborn dashboard`, the leader-elected HTTP service, and
//!   [`api`], its JSON API over the operations.
//! * [`admin`]: the `reborn admin` command line.
//!
//! Imports only `libs`. The proxy and the push system depend on this module, never
//! the other way round.

pub mod action;
pub mod admin;
pub mod api;
pub mod candidate;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod lock;
pub mod migrator;
pub mod model;
pub mod operation;
pub mod path;
pub mod promote;
pub mod rebalance;
pub mod replication;
pub mod runner;
pub mod session;
pub mod store;
pub mod task;
pub mod watcher;

pub use error::TopoError;
pub use model::Topology;
pub use model::{Group, GroupId, ProxyInfo, Role, Server, Slot, SlotState, SlotTable};
pub use path::Paths;
pub use session::ZkSession;
pub use store::{SessionEvent, Store, ZkConfig};
pub use watcher::{load, watch};
