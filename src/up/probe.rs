//! Tiny blocking clients for the processes `reborn up` starts: ZooKeeper's
//! four-letter words, and one RESP command (`PING`, `INFO`, `REPLICAOF`) on a
//! fresh connection.
//!
//! Blocking, because start-up waits run on plain threads and the tests call
//! them from inside a runtime: a RESP call runs the framed client
//! ([`RespConn`]) on a one-off current-thread runtime on a thread of its own,
//! which works with or without an outer runtime. Imports `libs::resp_client`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::libs::resp_client::{Frame, RespConn, RespError};

/// Per-operation timeout of the probes (connecting, and each reply).
const TIMEOUT: Duration = Duration::from_secs(2);

/// Sends a ZooKeeper four-letter word (`ruok`, `conf`, …) and returns the answer.
pub(crate) fn four_letter(addr: &str, word: &str) -> std::io::Result<String> {
    let mut stream = connect(addr)?;
    stream.write_all(word.as_bytes())?;
    // ZooKeeper answers and closes the connection.
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Sends one command to the redis-server at `addr` on a fresh connection,
/// after `AUTH` if `password` is given. An error reply is `Ok(Frame::Error)`.
///
/// # Errors
/// No connection or no reply within 2 s, or a refused password
/// ([`RespError::Server`]).
pub(crate) fn redis_call(addr: &str, password: Option<&str>, args: &[&str]) -> Result<Frame, RespError> {
    let ask = async {
        let mut conn = RespConn::connect(addr, TIMEOUT).await?;
        if let Some(password) = password {
            conn.auth(password).await?;
        }
        conn.call(args).await
    };
    let no_runtime = |source| RespError::Connect {
        addr: addr.to_string(),
        source,
    };
    std::thread::scope(|s| {
        let asked = s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(no_runtime)?
                .block_on(ask)
        });
        // The thread only panics if the runtime does; report it as a lost reply.
        asked.join().unwrap_or_else(|_| {
            Err(RespError::Closed {
                addr: addr.to_string(),
            })
        })
    })
}

/// A reply as text (status, error, bulk; an array's items joined by spaces),
/// for messages and `INFO`.
pub(crate) fn text(reply: &Frame) -> String {
    match reply {
        Frame::SimpleString(b) | Frame::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Frame::Error(e) => e.to_string(),
        Frame::Integer(i) => i.to_string(),
        Frame::Null => "(nil)".into(),
        Frame::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(" "),
    }
}

/// True for the status reply `+<word>` (`+PONG`, `+OK`).
pub(crate) fn is_status(reply: &Frame, word: &str) -> bool {
    matches!(reply, Frame::SimpleString(s) if s.as_ref() == word.as_bytes())
}

/// Connects with timeouts on connect, read and write, so a wedged peer cannot
/// hang a start-up wait.
fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut last = std::io::Error::other(format!("{addr} resolves to no address"));
    for a in addrs {
        match TcpStream::connect_timeout(&a, TIMEOUT) {
            Ok(stream) => {
                stream.set_read_timeout(Some(TIMEOUT))?;
                stream.set_write_timeout(Some(TIMEOUT))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_as_text() {
        let bulk = Frame::BulkString(bytes::Bytes::from_static(b"role:master\r\n"));
        assert_eq!(text(&bulk), "role:master\r\n");
        assert_eq!(
            text(&Frame::Array(vec![Frame::Integer(1), Frame::Null])),
            "1 (nil)"
        );
        assert!(is_status(
            &Frame::SimpleString(bytes::Bytes::from_static(b"PONG")),
            "PONG"
        ));
        assert!(!is_status(&Frame::Error("PONG".into()), "PONG"));
    }

    #[test]
    fn a_call_works_inside_a_runtime_too() {
        // A connect error, not a panic about nested runtimes.
        let (_held, addr) = crate::libs::reachable::refused_addr();
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let got = outer.block_on(async { redis_call(&addr, None, &["PING"]) });
        assert!(matches!(got, Err(RespError::Connect { .. })), "{got:?}");
    }
}
