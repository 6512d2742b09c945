//! Coordination: the ZooKeeper core (the kernel every role links) and, in
//! [`manager`], the topology manager that runs inside the dashboard.
//!
//! The core:
//! * [`model`]: the plain data (slots, groups, proxies) and its JSON schema.
//! * [`path`]: every ZooKeeper path, in one place.
//! * [`store`]: a ZooKeeper session that survives disconnects and expiry,
//!   re-creating its ephemeral nodes.
//! * [`owner`]: who registered an ephemeral node, so a crashed process's node
//!   is removed at once by its successor on the same machine.
//! * [`session`]: the client of one session with JSON, CAS and `multi` helpers.
//! * [`watcher`]: follows a product and publishes immutable [`model::Topology`]
//!   snapshots.
//! * [`lock`]: the product-wide operator lock.
//! * [`operation`]: operator changes (groups, servers, slots, proxy state), each
//!   run under the lock and validated before anything is written.
//! * [`action`]: the two-phase action protocol and the proxies' acks.
//! * [`error`]: [`TopoError`], every way the core can fail.
//!
//! The core imports only `libs` (and itself); the proxy, the push system and
//! the manager depend on it, never the other way round. [`manager`] imports
//! `libs` and the core.

pub mod action;
pub mod error;
pub mod lock;
pub mod manager;
pub mod model;
pub mod operation;
pub mod owner;
pub mod path;
pub mod session;
pub mod store;
pub mod watcher;

pub use error::TopoError;
pub use model::Topology;
pub use model::{Group, GroupId, ProxyInfo, Role, Server, Slot, SlotState, SlotTable};
pub use path::Paths;
pub use session::ZkSession;
pub use store::{SessionEvent, Store, ZkArgs, ZkConfig};
pub use watcher::{load, watch};
