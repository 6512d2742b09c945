//! Whether a server still accepts connections: what tells a busy Redis from
//! a dead one.
//!
//! Redis runs one command at a time, so a slow one (`KEYS` on a big keyspace,
//! a long script before `busy-reply-threshold`, a synchronous `SAVE`) leaves
//! every other client, a failover observer's `PING` too, without an answer
//! for its whole run. Its kernel still completes TCP handshakes into the
//! listen backlog meanwhile, while a dead server's port refuses them and a
//! lost host does not answer at all. Failover observers (`proxy::observer`,
//! `topo::manager::failover`) give a silent server that is still reachable
//! a longer grace (`busy_down_after`) before they report it down.

use std::time::Duration;

use tokio::net::TcpStream;

/// True if a TCP connection to `addr` opens within `timeout`. The
/// connection is closed at once; the server sees a client that left.
pub async fn accepts_connections(addr: &str, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// When an observer reports a server down, from how long it has gone
/// without an answer (`silent`) and without even accepting a connection
/// (`unreachable`).
#[derive(Clone, Copy, Debug)]
pub struct DownAfter {
    /// Silent and unreachable this long: down (dead, or its host lost).
    pub unreachable: Duration,
    /// Silent this long, however reachable: down (stopped, or busy too long).
    pub busy: Duration,
}

impl DownAfter {
    /// Whether a server silent for `silent` and unreachable for
    /// `unreachable` is down.
    pub fn is_down(&self, silent: Duration, unreachable: Duration) -> bool {
        silent >= self.busy || (silent >= self.unreachable && unreachable >= self.unreachable)
    }
}

/// A loopback address whose connections are refused, for tests: a socket
/// bound there that never listens. Holding it keeps the port from any other
/// test's `bind(:0)` meanwhile, which a dropped listener would not (the
/// kernel may hand its port to the next listener at once).
#[cfg(test)]
pub(crate) fn refused_addr() -> (tokio::net::TcpSocket, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("addr").to_string();
    (socket, addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listening_port_accepts_and_a_closed_one_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        // Never accepted: the kernel's backlog completes the handshake, as
        // for a Redis busy with a slow command.
        assert!(accepts_connections(&addr, Duration::from_secs(1)).await);
        let (_held, closed) = refused_addr();
        assert!(!accepts_connections(&closed, Duration::from_secs(1)).await);
    }

    #[test]
    fn a_reachable_silent_server_gets_the_longer_grace() {
        let s = Duration::from_secs;
        let d = DownAfter {
            unreachable: s(3),
            busy: s(30),
        };
        assert!(d.is_down(s(3), s(3)), "dead for 3 s");
        assert!(!d.is_down(s(3), s(0)), "busy for 3 s");
        assert!(!d.is_down(s(29), s(1)), "busy, then gone a second ago");
        assert!(d.is_down(s(30), s(0)), "silent for 30 s, reachable or not");
        assert!(!d.is_down(s(2), s(2)));
    }
}
