//! The push queue as the web UI's Push view shows it: each stream's length,
//! and how far the job consumer group lags behind it.
//!
//! The queue is the stream keys `goim-push-0`, `goim-push-1`, … (the layout of
//! `im::queue`, which the manager cannot import: the push roles build on the
//! topo core). Their number is logic's and job's `[queue] streams`, which the
//! dashboard is not told, so streams are counted from 0 up to the first that
//! does not exist (job creates them all when it starts). Each stream is read
//! on the master of its slot ([`super::master_conns`]), so the figures do not
//! depend on a proxy or on its client password.
//!
//! Uses the migrator's RESP connection; imports `libs` and the topo kernel.

use std::time::Duration;

use serde::Serialize;

use super::master_conns::MasterConns;
use super::migrator::{Conn, MigrateError};
use crate::libs::resp_client::Frame;
use crate::topo::model::Topology;

/// The queue's stream keys are this prefix and a number (`im::queue::stream_key`).
pub const STREAM_PREFIX: &str = "goim-push-";

/// How many streams are looked at, at most: a bound on the work of one call.
const MAX_STREAMS: usize = 256;

/// How long one command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The name of stream `i`.
pub fn stream_key(i: usize) -> String {
    format!("{STREAM_PREFIX}{i}")
}

/// One stream of the queue.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct StreamView {
    /// The stream key.
    pub key: String,
    /// `XLEN`: entries kept (capped by logic's `maxlen`).
    pub length: u64,
    /// Entries not yet delivered to the job group (`XINFO GROUPS`'s `lag`);
    /// `None` when Redis cannot tell (after deletions) or no group exists.
    pub lag: Option<u64>,
    /// Entries delivered to a job but not acknowledged yet.
    pub pending: u64,
}

/// The queue: its streams, and why the list may be cut short.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct QueueView {
    /// Streams `0..n`, up to the first missing one.
    pub streams: Vec<StreamView>,
    /// Set when a master did not answer: the streams from there on are not
    /// listed, rather than shown as missing.
    pub error: Option<String>,
}

/// Reads every stream of the queue (`auth`: the backend password).
pub async fn read(topo: &Topology, auth: Option<&str>) -> QueueView {
    let mut out = QueueView::default();
    let mut masters = MasterConns::new(topo, auth);
    for i in 0..MAX_STREAMS {
        let key = stream_key(i);
        let conn = match masters.for_key(&key).await {
            None => break,
            Some(Ok(conn)) => conn,
            Some(Err(e)) => {
                out.error = Some(e.to_string());
                break;
            }
        };
        match look(conn, &key).await {
            Ok(Some(view)) => out.streams.push(view),
            Ok(None) => break,
            Err(e) => {
                out.error = Some(format!("{key}: {e}"));
                break;
            }
        }
    }
    out
}

/// One stream's figures; `None` if it does not exist.
async fn look(conn: &mut Conn, key: &str) -> Result<Option<StreamView>, MigrateError> {
    // An error reply is reported, never read as "no stream" or "no lag":
    // the view would silently end early or show a stream as caught up.
    match conn.call(&["EXISTS", key], "EXISTS", CALL_TIMEOUT).await? {
        Frame::Integer(0) => return Ok(None),
        Frame::Integer(_) => {}
        other => return Err(conn.unexpected("EXISTS", &other)),
    }
    let length = match conn.call(&["XLEN", key], "XLEN", CALL_TIMEOUT).await? {
        Frame::Integer(n) => u64::try_from(n).unwrap_or(0),
        other => return Err(conn.unexpected("XLEN", &other)),
    };
    let groups = conn
        .call(&["XINFO", "GROUPS", key], "XINFO", CALL_TIMEOUT)
        .await?;
    if matches!(groups, Frame::Error(_)) {
        return Err(conn.unexpected("XINFO", &groups));
    }
    let (lag, pending) = lag_and_pending(&groups);
    Ok(Some(StreamView {
        key: key.to_string(),
        length,
        lag,
        pending,
    }))
}

/// Reads an `XINFO GROUPS` reply: the largest `lag` and the summed `pending`
/// over the groups (there is one, job's).
fn lag_and_pending(reply: &Frame) -> (Option<u64>, u64) {
    let Frame::Array(groups) = reply else {
        return (None, 0);
    };
    let mut lag = None;
    let mut pending = 0;
    for group in groups {
        let Frame::Array(fields) = group else { continue };
        for pair in fields.chunks(2) {
            let [Frame::BulkString(name) | Frame::SimpleString(name), value] = pair else {
                continue;
            };
            let n = match value {
                Frame::Integer(n) => u64::try_from(*n).ok(),
                _ => None,
            };
            match name.as_ref() {
                b"lag" => lag = lag.max(n),
                b"pending" => pending += n.unwrap_or(0),
                _ => {}
            }
        }
    }
    (lag, pending)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn bulk(s: &'static str) -> Frame {
        Frame::BulkString(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn xinfo_groups_is_read() {
        let group = |pending, lag: Frame| {
            Frame::Array(vec![
                bulk("name"),
                bulk("goim-push-group-job"),
                bulk("pending"),
                Frame::Integer(pending),
                bulk("lag"),
                lag,
            ])
        };
        let reply = Frame::Array(vec![group(3, Frame::Integer(7)), group(2, Frame::Integer(1))]);
        assert_eq!(lag_and_pending(&reply), (Some(7), 5));
        let unknown = Frame::Array(vec![group(0, Frame::Null)]);
        assert_eq!(lag_and_pending(&unknown), (None, 0));
        assert_eq!(lag_and_pending(&Frame::Array(Vec::new())), (None, 0));
    }
}
