//! Connections to the masters of a topology for one reader of several keys
//! (the Push view's queue streams and room counts): each key is read on the
//! master of its slot, directly, with the backend password; a master's
//! connection is opened on first use and shared by its keys.

use super::migrator::{Conn, MigrateError};
use super::server_conns::ServerConns;
use crate::libs::hash::slot_of;
use crate::topo::model::Topology;

/// The open connections, by master address.
pub(crate) struct MasterConns<'a> {
    topo: &'a Topology,
    conns: ServerConns,
}

impl<'a> MasterConns<'a> {
    /// None open yet; `auth` is the backend password.
    pub(crate) fn new(topo: &'a Topology, auth: Option<&str>) -> MasterConns<'a> {
        MasterConns {
            topo,
            conns: ServerConns::new(auth),
        }
    }

    /// The connection to the master of `key`'s slot; `None` when no master
    /// serves it.
    ///
    /// # Errors
    /// The master could not be reached or refused the password.
    pub(crate) async fn for_key(&mut self, key: &str) -> Option<Result<&mut Conn, MigrateError>> {
        let master = self.topo.master_of_slot(slot_of(key.as_bytes()))?;
        Some(self.conns.get(master).await)
    }
}
