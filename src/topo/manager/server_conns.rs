//! Connections the dashboard keeps open to redis-servers, one per address, for
//! work that asks the same servers again and again: the failover leader looks
//! at every server twice a second, and would otherwise open (and leave in
//! `TIME_WAIT`) a connection per server per round. A connection is opened on
//! first use; one whose call failed is not given back, so the next use
//! reconnects rather than reading a late reply of the failed call.

use std::collections::HashMap;

use super::migrator::{Conn, MigrateError};

/// The open connections, by address.
pub(crate) struct ServerConns {
    auth: Option<String>,
    open: HashMap<String, Conn>,
}

impl ServerConns {
    /// None open yet; `auth` is the backend password.
    pub(crate) fn new(auth: Option<&str>) -> ServerConns {
        ServerConns {
            auth: auth.map(str::to_string),
            open: HashMap::new(),
        }
    }

    /// The backend password the connections authenticate with.
    pub(crate) fn auth(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    /// The connection to `addr`, opened now if there is none.
    ///
    /// # Errors
    /// The server could not be reached or refused the password.
    pub(crate) async fn get(&mut self, addr: &str) -> Result<&mut Conn, MigrateError> {
        let conn = match self.open.remove(addr) {
            Some(conn) => conn,
            None => Conn::connect(addr, self.auth.as_deref()).await?,
        };
        Ok(self.open.entry(addr.to_string()).or_insert(conn))
    }

    /// Takes the connection to `addr` out, if one is open, for a task of its
    /// own; [`ServerConns::give_back`] returns it once it is known to be in step.
    pub(crate) fn take(&mut self, addr: &str) -> Option<Conn> {
        self.open.remove(addr)
    }

    /// Keeps `conn` for the next use of its address.
    pub(crate) fn give_back(&mut self, conn: Conn) {
        self.open.insert(conn.addr().to_string(), conn);
    }

    /// Closes the connections to servers `keep` rejects (gone from the topology).
    pub(crate) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.open.retain(|addr, _| keep(addr));
    }
}
