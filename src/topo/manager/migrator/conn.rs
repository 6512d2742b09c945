//! A minimal pipelined RESP connection to one redis-server: write commands,
//! read their replies in order. Just what the migrator needs (`AUTH`, `SCAN`,
//! `MIGRATE`); the proxy's backend connections live in `proxy/` and the
//! dashboard may not import them.
//!
//! Replies are framed with [`resp::reply_len`] and returned whole, zero-copy, so a
//! `SCAN` reply's keys stay slices of the bytes read from the socket.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::MigrateError;
use crate::libs::resp::{self, bulk_payload};

/// How long opening a connection (and `AUTH`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How much the read buffer grows by at a time.
const READ_CHUNK: usize = 64 * 1024;

/// How long one `SCAN` may take: it examines `COUNT` keys, milliseconds at most.
const SCAN_WAIT: Duration = Duration::from_secs(30);

/// One connection, used strictly in request order.
pub(crate) struct Conn {
    addr: String,
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Connects to `addr` and authenticates with `auth` if given.
    ///
    /// # Errors
    /// [`MigrateError::Connect`], or [`MigrateError::Auth`] if the password is refused.
    pub(crate) async fn connect(addr: &str, auth: Option<&str>) -> Result<Conn, MigrateError> {
        let connect_error = |source| MigrateError::Connect {
            addr: addr.to_string(),
            source,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_error)?;
        // Commands are written whole; do not let Nagle hold the last segment back.
        stream.set_nodelay(true).map_err(connect_error)?;
        let mut conn = Conn {
            addr: addr.to_string(),
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        };
        if let Some(pw) = auth {
            let reply = conn
                .call(&[b"AUTH".as_ref(), pw.as_bytes()], "AUTH", CONNECT_TIMEOUT)
                .await?;
            if resp::is_error(&reply) {
                return Err(MigrateError::Auth {
                    addr: addr.to_string(),
                    message: error_text(&reply),
                });
            }
        }
        Ok(conn)
    }

    /// The server's `host:port`.
    pub(super) fn addr(&self) -> &str {
        &self.addr
    }

    /// Writes one encoded command (see [`resp::encode_array`]).
    pub(super) async fn send(&mut self, cmd: &[u8]) -> Result<(), MigrateError> {
        self.stream
            .write_all(cmd)
            .await
            .map_err(|source| MigrateError::Io {
                addr: self.addr.clone(),
                source,
            })
    }

    /// Reads the next reply frame. `wait` bounds the time without a complete
    /// reply; `cmd` names the command in errors.
    pub(super) async fn read(&mut self, cmd: &'static str, wait: Duration) -> Result<Bytes, MigrateError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match resp::reply_len(&self.buf) {
                Ok(Some(len)) => return Ok(self.buf.split_to(len).freeze()),
                Ok(None) => {}
                Err(e) => {
                    return Err(MigrateError::Protocol {
                        addr: self.addr.clone(),
                        cmd,
                        detail: e.to_string(),
                    });
                }
            }
            self.buf.reserve(READ_CHUNK);
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => {
                    return Err(MigrateError::Timeout {
                        addr: self.addr.clone(),
                        cmd,
                        waited: wait,
                    });
                }
                Ok(Ok(0)) => {
                    return Err(MigrateError::Closed {
                        addr: self.addr.clone(),
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(source)) => {
                    return Err(MigrateError::Io {
                        addr: self.addr.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Sends one command and reads its reply.
    pub(crate) async fn call<A: AsRef<[u8]>>(
        &mut self,
        args: &[A],
        cmd: &'static str,
        wait: Duration,
    ) -> Result<Bytes, MigrateError> {
        self.send(&resp::encode_array(args)).await?;
        self.read(cmd, wait).await
    }
}

impl Conn {
    /// `SCAN <cursor> COUNT <count>`: the next cursor and the keys returned (which
    /// may repeat keys of earlier calls, as `SCAN` allows).
    ///
    /// # Errors
    /// Connection errors; [`MigrateError::Auth`] for `NOAUTH`; [`MigrateError::Redis`]
    /// for other error replies.
    pub(super) async fn scan(
        &mut self,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<Bytes>), MigrateError> {
        let cursor = cursor.to_string();
        let count = count.to_string();
        let args = [b"SCAN".as_ref(), cursor.as_bytes(), b"COUNT", count.as_bytes()];
        let reply = self.call(&args, "SCAN", SCAN_WAIT).await?;
        if resp::is_error(&reply) {
            let message = error_text(&reply);
            let addr = self.addr.clone();
            return Err(
                if message.starts_with("NOAUTH") || message.starts_with("WRONGPASS") {
                    MigrateError::Auth { addr, message }
                } else {
                    MigrateError::Redis {
                        addr,
                        cmd: "SCAN",
                        message,
                    }
                },
            );
        }
        parse_scan(&reply).ok_or_else(|| MigrateError::Protocol {
            addr: self.addr.clone(),
            cmd: "SCAN",
            detail: String::from_utf8_lossy(&reply[..reply.len().min(100)]).into_owned(),
        })
    }
}

/// `*2 $cursor *n $key…` → (cursor, keys).
fn parse_scan(reply: &Bytes) -> Option<(u64, Vec<Bytes>)> {
    let items = resp::array_items(reply)?;
    let [cursor, keys] = items.as_slice() else {
        return None;
    };
    let cursor = std::str::from_utf8(&bulk_payload(cursor)?).ok()?.parse().ok()?;
    let keys = resp::array_items(keys)?
        .iter()
        .map(bulk_payload)
        .collect::<Option<Vec<_>>>()?;
    Some((cursor, keys))
}

/// The text of an error or status reply, without the type byte and CRLF.
pub(crate) fn error_text(reply: &[u8]) -> String {
    let body = reply.get(1..).unwrap_or_default();
    let body = body.strip_suffix(b"\r\n").unwrap_or(body);
    String::from_utf8_lossy(body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts() {
        assert_eq!(error_text(b"-ERR no\r\n"), "ERR no");
        assert_eq!(error_text(b""), "");
    }

    #[test]
    fn scan_replies() {
        let r = Bytes::from_static(b"*2\r\n$2\r\n17\r\n*2\r\n$1\r\na\r\n$3\r\n{b}\r\n");
        let (cursor, keys) = parse_scan(&r).expect("scan reply");
        assert_eq!(cursor, 17);
        assert_eq!(keys, vec![&b"a"[..], b"{b}"]);
        assert!(parse_scan(&Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n")).is_some());
        assert!(parse_scan(&Bytes::from_static(b"*1\r\n$1\r\n0\r\n")).is_none());
        assert!(parse_scan(&Bytes::from_static(b"*2\r\n$1\r\nx\r\n*0\r\n")).is_none());
    }
}
