//! The migrator's connection to one redis-server: the framed RESP client
//! ([`RespConn`]) with the migrator's typed errors. Used strictly in request
//! order, pipelined: write commands, read their replies in order. Just what the
//! migrator and the topo checks need (`AUTH`, `SCAN`, `MIGRATE`, `DUMP`, `INFO`, …);
//! the proxy's backend connections live in `proxy/` and the dashboard may not
//! import them.
//!
//! Imports `libs::resp_client` and the migrator's error type.

use std::time::Duration;

use bytes::Bytes;

use super::error::MigrateError;
use crate::libs::resp_client::{self, Frame, RespConn, RespError};

/// How long opening a connection (and `AUTH`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one `SCAN` may take: it examines `COUNT` keys, milliseconds at most.
const SCAN_WAIT: Duration = Duration::from_secs(30);

/// One connection, used strictly in request order.
pub(crate) struct Conn {
    inner: RespConn,
}

impl Conn {
    /// Connects to `addr` and authenticates with `auth` if given.
    ///
    /// # Errors
    /// [`MigrateError::Connect`], or [`MigrateError::Auth`] if the password is refused.
    pub(crate) async fn connect(addr: &str, auth: Option<&str>) -> Result<Conn, MigrateError> {
        let inner = RespConn::connect(addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| lift(addr, "AUTH", e))?;
        let mut conn = Conn { inner };
        if let Some(pw) = auth {
            let reply = conn
                .call(&[b"AUTH".as_ref(), pw.as_bytes()], "AUTH", CONNECT_TIMEOUT)
                .await?;
            if let Frame::Error(message) = reply {
                return Err(MigrateError::Auth {
                    addr: addr.to_string(),
                    message: message.to_string(),
                });
            }
        }
        Ok(conn)
    }

    /// The server's `host:port`.
    pub(crate) fn addr(&self) -> &str {
        self.inner.addr()
    }

    /// Writes commands (see [`resp_client::cmd`]) in one go, without waiting
    /// for their replies: read them with [`Conn::read`], in order.
    pub(super) async fn send(&mut self, frames: Vec<Frame>) -> Result<(), MigrateError> {
        let sent = self.inner.send_frames(frames).await;
        sent.map_err(|e| self.lift("a pipeline", e))
    }

    /// Reads the next reply. `wait` bounds the time without a complete reply;
    /// `cmd` names the command in errors. An error reply is returned as
    /// `Ok(Frame::Error)`: what it means depends on the command.
    pub(super) async fn read(&mut self, cmd: &'static str, wait: Duration) -> Result<Frame, MigrateError> {
        let read = self.inner.read_within(wait).await;
        read.map_err(|e| self.lift(cmd, e))
    }

    /// Sends one command and reads its reply.
    pub(crate) async fn call<A: AsRef<[u8]>>(
        &mut self,
        args: &[A],
        cmd: &'static str,
        wait: Duration,
    ) -> Result<Frame, MigrateError> {
        self.send(vec![resp_client::cmd(args)]).await?;
        self.read(cmd, wait).await
    }

    /// `INFO [section]`: the reply's text, lossily decoded (`INFO` is ASCII).
    /// One reader for every `INFO` the dashboard makes (health, replication,
    /// the web UI's figures), each of which reads its fields with `InfoText`.
    ///
    /// # Errors
    /// Connection errors; [`MigrateError::Auth`] for `NOAUTH`/`WRONGPASS`;
    /// [`MigrateError::Redis`] for other error replies (`LOADING` among them);
    /// [`MigrateError::Protocol`] for a reply that is not a bulk string.
    pub(crate) async fn info(
        &mut self,
        section: Option<&str>,
        wait: Duration,
    ) -> Result<String, MigrateError> {
        let mut args = vec![b"INFO".as_ref()];
        args.extend(section.map(str::as_bytes));
        match self.call(&args, "INFO", wait).await? {
            Frame::BulkString(text) => Ok(String::from_utf8_lossy(&text).into_owned()),
            Frame::Error(message) => Err(self.refusal("INFO", message.to_string())),
            other => Err(MigrateError::Protocol {
                addr: self.addr().to_string(),
                cmd: "INFO",
                detail: format!("a reply that is not text: {}", reply_text(&other)),
            }),
        }
    }

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
        if let Frame::Error(message) = &reply {
            return Err(self.refusal("SCAN", message.to_string()));
        }
        let detail = reply_text(&reply);
        parse_scan(reply).ok_or_else(|| MigrateError::Protocol {
            addr: self.addr().to_string(),
            cmd: "SCAN",
            detail,
        })
    }

    /// The error for an error reply to `cmd`: a password problem is
    /// [`MigrateError::Auth`], anything else [`MigrateError::Redis`].
    fn refusal(&self, cmd: &'static str, message: String) -> MigrateError {
        let addr = self.addr().to_string();
        if message.starts_with("NOAUTH") || message.starts_with("WRONGPASS") {
            MigrateError::Auth { addr, message }
        } else {
            MigrateError::Redis { addr, cmd, message }
        }
    }

    /// The error for a reply to `cmd` that is not the one expected: an error
    /// reply is [`MigrateError::Redis`], anything else
    /// [`MigrateError::Protocol`].
    pub(crate) fn unexpected(&self, cmd: &'static str, reply: &Frame) -> MigrateError {
        let addr = self.addr().to_string();
        match reply {
            Frame::Error(message) => MigrateError::Redis {
                addr,
                cmd,
                message: message.to_string(),
            },
            other => MigrateError::Protocol {
                addr,
                cmd,
                detail: reply_text(other),
            },
        }
    }

    /// The migrator's error for a failure of the framed client.
    fn lift(&self, cmd: &'static str, e: RespError) -> MigrateError {
        lift(self.addr(), cmd, e)
    }
}

/// Maps the framed client's error onto the migrator's (whose
/// [`MigrateError::is_transient`] says whether to retry).
fn lift(addr: &str, cmd: &'static str, e: RespError) -> MigrateError {
    let addr = addr.to_string();
    match e {
        RespError::Connect { source, .. } => MigrateError::Connect { addr, source },
        RespError::Io { source, .. } => MigrateError::Io { addr, source },
        RespError::Closed { .. } => MigrateError::Closed { addr },
        RespError::Timeout { after, .. } => MigrateError::Timeout {
            addr,
            cmd,
            waited: after,
        },
        RespError::Protocol { detail, .. } | RespError::Unexpected(detail) => {
            MigrateError::Protocol { addr, cmd, detail }
        }
        RespError::Server(message) => MigrateError::Redis { addr, cmd, message },
    }
}

/// `[cursor, [key…]]` → (cursor, keys); the keys stay slices of the bytes read.
fn parse_scan(reply: Frame) -> Option<(u64, Vec<Bytes>)> {
    let Frame::Array(items) = reply else {
        return None;
    };
    let [Frame::BulkString(cursor), Frame::Array(keys)] = <[Frame; 2]>::try_from(items).ok()? else {
        return None;
    };
    let cursor = std::str::from_utf8(&cursor).ok()?.parse().ok()?;
    let keys = keys
        .into_iter()
        .map(|k| match k {
            Frame::BulkString(k) => Some(k),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((cursor, keys))
}

/// A reply as text for messages: an error's or a status's text, a bulk
/// string (lossily), an integer, `(nil)`, or a short description of an array.
pub(crate) fn reply_text(reply: &Frame) -> String {
    match reply {
        Frame::Error(e) => e.to_string(),
        Frame::SimpleString(b) | Frame::BulkString(b) => {
            String::from_utf8_lossy(&b[..b.len().min(100)]).into_owned()
        }
        Frame::Integer(i) => i.to_string(),
        Frame::Null => "(nil)".to_string(),
        Frame::Array(items) => format!("an array of {}", items.len()),
    }
}

/// True for the simple-string reply `+OK`.
pub(crate) fn is_ok(reply: &Frame) -> bool {
    matches!(reply, Frame::SimpleString(s) if s.as_ref() == b"OK")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &'static str) -> Frame {
        Frame::BulkString(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn reply_texts() {
        assert_eq!(reply_text(&Frame::Error("ERR no".into())), "ERR no");
        assert_eq!(reply_text(&Frame::Null), "(nil)");
        assert_eq!(reply_text(&Frame::Integer(-2)), "-2");
        assert!(is_ok(&Frame::SimpleString(Bytes::from_static(b"OK"))));
        assert!(!is_ok(&bulk("OK")));
    }

    #[test]
    fn scan_replies() {
        let r = Frame::Array(vec![bulk("17"), Frame::Array(vec![bulk("a"), bulk("{b}")])]);
        let (cursor, keys) = parse_scan(r).expect("scan reply");
        assert_eq!(cursor, 17);
        assert_eq!(keys, vec![&b"a"[..], b"{b}"]);
        assert!(parse_scan(Frame::Array(vec![bulk("0"), Frame::Array(vec![])])).is_some());
        assert!(parse_scan(Frame::Array(vec![bulk("0")])).is_none());
        assert!(parse_scan(Frame::Array(vec![bulk("x"), Frame::Array(vec![])])).is_none());
    }

    #[test]
    fn client_errors_keep_their_retry_meaning() {
        let timeout = RespError::Timeout {
            addr: "h:1".into(),
            after: Duration::from_secs(1),
        };
        let e = lift("h:1", "SCAN", timeout);
        assert!(matches!(e, MigrateError::Timeout { cmd: "SCAN", .. }), "{e:?}");
        assert!(e.is_transient());
        let refused = lift("h:1", "DUMP", RespError::Server("ERR nope".into()));
        assert!(matches!(&refused, MigrateError::Redis { message, .. } if message == "ERR nope"));
        assert!(!refused.is_transient());
    }
}
