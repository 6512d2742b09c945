//! The gRPC services and messages between the push roles, generated from
//! `proto/goim/*.proto` by `build.rs`. Packages, services, messages and fields
//! carry goim v2's names so operators recognise them.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The client frame inside gRPC calls.
pub mod protocol {
    tonic::include_proto!("goim.protocol");
}

/// comet's service (called by job).
pub mod comet {
    tonic::include_proto!("goim.comet");
}

/// logic's service (called by comet), and the queued push message.
pub mod logic {
    tonic::include_proto!("goim.logic");
}
