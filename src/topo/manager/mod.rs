//! The topology manager: the role that runs inside `reborn dashboard` (and the
//! `reborn admin` CLI that drives it), built on the ZooKeeper core in
//! [`crate::topo`], as Codis's topom sits on its models.
//!
//! * [`dashboard`]: `reborn dashboard`, the leader-elected HTTP service.
//! * [`api`]: its JSON API over the core's operations.
//! * [`admin`]: the `reborn admin` command line.
//! * [`task`]: the queue of migration tasks in ZooKeeper.
//! * [`runner`]: drives the task queue through the two-phase actions.
//! * [`migrator`]: moves the keys of a slot from one group to another.
//! * [`rebalance`]: the pure planner that evens out slots per group.
//! * [`promote`]: makes a replica its group's master, fenced by an action.
//! * [`promote_journal`]: a promote's plan, so one cut short is finished.
//! * [`candidate`]: picks the replica to promote from their replication state.
//! * [`replication`]: reads `INFO replication` and drives `REPLICAOF`.
//! * [`health`]: a short probe of a redis-server (up, down, loading).
//! * `server_conns`: connections kept open to redis-servers between rounds.
//! * `info_text`: reads the fields of an `INFO` reply.
//! * [`server_info`]: a redis-server's `INFO` figures for the web UI.
//! * [`traffic`]: the proxies' stats, sampled each second, ten minutes kept.
//! * [`metrics`]: the dashboard's `/metrics` (Prometheus), for alerts.
//! * [`push_roles`]: the push system's registered instances, for the web UI.
//! * [`push_queue`]: the push queue's streams, their length and lag, for the web UI.
//! * [`ui`]: the web UI's assets (the top-level `dashboard/` folder), embedded.
//!
//! Imports `libs` and the core (`crate::topo::*` outside this module); the core
//! never imports from here.

pub mod admin;
pub mod api;
pub mod candidate;
pub mod dashboard;
pub mod failover;
pub mod health;
pub(crate) mod info_text;
pub(crate) mod master_conns;
pub mod metrics;
pub mod migration_gate;
pub mod migrator;
pub mod promote;
pub mod promote_journal;
pub mod push_queue;
pub mod push_roles;
pub mod push_rooms;
pub mod rebalance;
pub mod replication;
pub mod runner;
pub(crate) mod server_conns;
pub mod server_info;
pub mod task;
pub mod traffic;
pub mod ui;
