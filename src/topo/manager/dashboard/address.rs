//! Where a product's dashboard is: the address its leader publishes in its
//! ephemeral node, `<root>/<product>/dashboard` (see [`super::leader`]). This is
//! how `reborn admin` reaches the dashboard of the `--zk`/`--zk-root`/`--product`
//! it was given, rather than whatever listens on a default port.
//!
//! Imports `topo`'s kernel.

use super::leader::DashboardInfo;
use crate::topo::error::TopoError;
use crate::topo::store::{Store, ZkConfig};

/// Why the dashboard's address could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// ZooKeeper unreachable, or a read failed.
    #[error("cannot find the dashboard of product {product:?}: {source}")]
    Topo {
        /// The product.
        product: String,
        /// What failed.
        #[source]
        source: TopoError,
    },

    /// The product does not exist under that root.
    #[error(
        "product {product:?} does not exist in ZooKeeper at {zk} (no node {path}); check --zk, --zk-root and --product, or run `reborn admin init`"
    )]
    NoProduct {
        /// The product.
        product: String,
        /// The connect string.
        zk: String,
        /// The product's node.
        path: String,
    },

    /// No dashboard leads the product now.
    #[error(
        "product {product:?} has no running dashboard: no leader node {path} in ZooKeeper at {zk}. Start one (`reborn dashboard --zk {zk} --product {product}`), or name one with --dashboard host:port"
    )]
    NoDashboard {
        /// The product.
        product: String,
        /// The connect string.
        zk: String,
        /// The leader node that is missing.
        path: String,
    },
}

/// The `host:port` of the dashboard that leads `cfg`'s product now.
///
/// # Errors
/// [`LocateError`], naming the product and the ZooKeeper address.
pub async fn locate(cfg: &ZkConfig) -> Result<String, LocateError> {
    let topo = |source| LocateError::Topo {
        product: cfg.product.clone(),
        source,
    };
    let store = Store::connect(cfg).await.map_err(topo)?;
    let found = read(&store, cfg).await;
    store.close().await;
    found
}

async fn read(store: &Store, cfg: &ZkConfig) -> Result<String, LocateError> {
    let paths = store.paths();
    let topo = |source| LocateError::Topo {
        product: cfg.product.clone(),
        source,
    };
    match store.get_json::<DashboardInfo>(&paths.dashboard()).await {
        Ok(info) => Ok(info.addr),
        Err(e) if e.is_not_found() => {
            if store.exists(paths.product()).await.map_err(topo)? {
                Err(LocateError::NoDashboard {
                    product: cfg.product.clone(),
                    zk: cfg.addr.clone(),
                    path: paths.dashboard(),
                })
            } else {
                Err(LocateError::NoProduct {
                    product: cfg.product.clone(),
                    zk: cfg.addr.clone(),
                    path: paths.product().to_string(),
                })
            }
        }
        Err(e) => Err(topo(e)),
    }
}
