//! The push system: goim v2-compatible `comet`, `logic` and `job` roles.
//!
//! Clients hold connections to comet; business backends push through logic's
//! HTTP API; job fans queued pushes out to the comets. Sessions, online counts
//! and the push queue live in the reborn proxy cluster (reached as an ordinary
//! RESP client through `libs::resp_client`), and the roles find each other in
//! ZooKeeper ([`discovery`]). They call each other over gRPC ([`proto`], goim's
//! service and message names).
//!
//! It may import `libs` and the `topo` kernel, never `proxy`.

pub mod admin_http;
pub mod bench;
pub mod client;
pub mod comet;
pub mod discovery;
pub mod frame;
#[cfg(test)]
mod frame_properties;
pub mod grpc_server;
pub mod job;
pub mod logic;
pub mod proto;
pub mod proxies;
pub mod queue;
pub mod session_key;
