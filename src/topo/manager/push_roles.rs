//! The push system's instances as the web UI's Push view shows them: every
//! comet, logic and job registered under `<product>/im/<kind>/<id>`.
//!
//! The nodes are read as plain JSON: the push roles (`crate::im`) build on the
//! topo core, so the manager does not import them back; the fields the UI
//! reads (`id`, `conn_count`, `ip_count`, `weight`, `offline`, `grpc`, `http`,
//! `updated`) are those of `im::discovery::Instance`. Imports the topo core.

use serde::Serialize;

use crate::topo::error::TopoError;
use crate::topo::store::Store;

/// `GET /api/push`.
#[derive(Serialize, Debug, Default)]
pub struct PushRoles {
    /// Registered comets, by id.
    pub comet: Vec<serde_json::Value>,
    /// Registered logics, by id.
    pub logic: Vec<serde_json::Value>,
    /// Registered jobs, by id.
    pub job: Vec<serde_json::Value>,
    /// The push queue's streams ([`super::push_queue`]).
    pub queue: super::push_queue::QueueView,
    /// The busiest rooms over every comet ([`super::push_rooms`]).
    pub rooms: super::push_rooms::RoomsView,
}

impl PushRoles {
    /// The server ids of the registered comets.
    pub fn comet_ids(&self) -> Vec<String> {
        self.comet
            .iter()
            .filter_map(|c| c.get("id").and_then(serde_json::Value::as_str))
            .map(str::to_string)
            .collect()
    }
}

/// Reads every registered instance; a kind nobody registered is empty.
///
/// # Errors
/// ZooKeeper errors other than a missing directory.
pub async fn read(store: &Store) -> Result<PushRoles, TopoError> {
    let mut out = PushRoles::default();
    let kinds = [
        ("comet", &mut out.comet),
        ("logic", &mut out.logic),
        ("job", &mut out.job),
    ];
    for (kind, found) in kinds {
        let dir = store.paths().im_instances(kind);
        let ids = match store.children(&dir).await {
            Ok(ids) => ids,
            Err(TopoError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        for id in ids {
            // An instance that left since the listing is skipped.
            match store.get_json(&store.paths().im_instance(kind, &id)).await {
                Ok(v) => found.push(v),
                Err(TopoError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}
