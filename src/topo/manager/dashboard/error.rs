//! Why `reborn dashboard` could not start or had to stop, worded for the operator.
//!
//! Imports `libs` (config errors) and `topo`'s error type.

use crate::libs::config::ConfigError;
use crate::topo::error::TopoError;

/// Why the dashboard failed.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// ZooKeeper unreachable, product not initialized, …
    #[error(transparent)]
    Topo(#[from] TopoError),

    /// The config file or flags are wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The HTTP address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from the config.
        addr: String,
        /// The OS error (address in use, …).
        #[source]
        source: std::io::Error,
    },

    /// The API would be open to the network: no token, a non-loopback
    /// address, and no `insecure`.
    #[error(
        "refusing to serve the dashboard API on {addr} without a token: anyone who reaches it could \
         change the cluster. Set [auth] token in the config (or --token / REBORN_TOKEN), listen on \
         a loopback address such as 127.0.0.1, or accept the risk with --insecure \
         ([auth] insecure = true)"
    )]
    Exposed {
        /// The address it bound.
        addr: std::net::SocketAddr,
    },

    /// Another dashboard leads the product and this one was told not to wait.
    #[error(
        "product {product:?} already has a dashboard: {holder}. Stop it first, or start this one with \
         standby = true to take over when it stops (a crashed dashboard's registration disappears \
         within the ZooKeeper session timeout)"
    )]
    Taken {
        /// The product.
        product: String,
        /// Who leads it (address, pid, host, for how long).
        holder: String,
    },

    /// Leadership was lost (session expired, node taken) and this dashboard
    /// was told not to wait as a standby.
    #[error("lost the dashboard leadership of product {product:?} ({reason}); standby = false, so stopping")]
    Lost {
        /// The product.
        product: String,
        /// What happened.
        reason: String,
    },

    /// The HTTP server ended by itself.
    #[error("the dashboard's HTTP server stopped: {0}")]
    Serve(String),
}
