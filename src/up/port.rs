//! "Is this port free?", asked before starting anything on it.
//!
//! Checking first matters: a redis-server that cannot bind exits, and a readiness
//! `PING` to the port is then answered by whoever holds it — the classic trap of
//! tests that pass against the wrong server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::error::UpError;

/// Fails with [`UpError::PortInUse`] if something listens on `127.0.0.1:port`.
pub(crate) fn ensure_free(port: u16, what: &str) -> Result<(), UpError> {
    ensure_addr_free(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), what)
}

/// Fails with [`UpError::PortInUse`] if `addr` cannot be listened on.
pub(crate) fn ensure_addr_free(addr: SocketAddr, what: &str) -> Result<(), UpError> {
    let in_use = || UpError::PortInUse {
        port: addr.port(),
        what: what.to_string(),
    };
    // A listener on the wildcard address is reachable through loopback.
    let probe = if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    };
    // Both checks: the connect catches a listener we could still bind next to
    // (SO_REUSEPORT), the bind catches one we cannot reach from here.
    if TcpStream::connect_timeout(&probe, Duration::from_millis(300)).is_ok() {
        return Err(in_use());
    }
    match TcpListener::bind(addr) {
        Ok(listener) => {
            drop(listener);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(in_use()),
        Err(e) => Err(UpError::io(format!("bind {addr} for {what}"))(e)),
    }
}
