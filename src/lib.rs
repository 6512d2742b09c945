//! reborn: a Redis-protocol cluster proxy coordinated through ZooKeeper, and the
//! push-messaging system that runs on it.
//!
//! # Layout
//!
//! The crate is layered; imports only ever point down this list:
//!
//! * [`libs`]: leaf utilities (RESP codec, slot hashing, config loading, shutdown,
//!   backoff, logging). Imports nothing from the crate.
//! * [`topo`]: the cluster model as stored in ZooKeeper, the store that owns every
//!   ZooKeeper path, the watcher that publishes immutable topology snapshots, and
//!   the operator operations (run under the ZooKeeper lock).
//! * [`proxy`]: the RESP data plane (`reborn proxy`). Imports `libs` and `topo`.
//! * [`im`]: the push system (`reborn comet/logic/job`). Imports `libs` and `topo`,
//!   never `proxy`.
//! * [`up`]: `reborn up`, a whole local cluster for a newcomer; it wires the roles
//!   together and so may import all of the above.
//!
//! `src/main.rs` is thin: it parses the command line, loads the role's config and
//! calls the role's `run`.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::panic))]

pub mod im;
pub mod libs;
pub mod proxy;
pub mod topo;
pub mod up;
