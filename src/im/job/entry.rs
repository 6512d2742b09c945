//! One queue entry as job reads it, and the readers of the stream replies that
//! carry entries (`XREADGROUP`, `XAUTOCLAIM`). Imports `libs::resp_client` and
//! `im::queue`.

use bytes::Bytes;

use crate::im::queue;
use crate::libs::resp_client::{Frame, RespError, array, bytes};

/// One stream entry: its id and the value of its [`queue::FIELD`] field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id (`<ms>-<seq>`), what `XACK` takes.
    pub id: Bytes,
    /// The encoded push; `None` when the entry has no such field (it was
    /// written by something else, or deleted while pending).
    pub value: Option<Bytes>,
}

/// The entries of an `XREADGROUP` reply for one stream (nil on a timeout).
///
/// # Errors
/// An error reply (e.g. `NOGROUP`), or a reply of another shape.
pub fn from_read(reply: Frame) -> Result<Vec<StreamEntry>, RespError> {
    let mut out = Vec::new();
    for stream in array(reply)? {
        let mut parts = array(stream)?.into_iter();
        let _name = parts.next();
        if let Some(entries) = parts.next() {
            out.extend(entries_of(entries)?);
        }
    }
    Ok(out)
}

/// What one `XAUTOCLAIM` call returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Where the next call starts; `0-0` when the scan is complete.
    pub cursor: Bytes,
    /// The entries now owned by the caller.
    pub entries: Vec<StreamEntry>,
    /// Ids that were pending but no longer exist (Redis 7 drops them from the
    /// pending list itself).
    pub deleted: Vec<Bytes>,
}

/// Reads an `XAUTOCLAIM` reply: `[cursor, entries, deleted ids]`.
///
/// # Errors
/// An error reply, or a reply of another shape.
pub fn from_autoclaim(reply: Frame) -> Result<Claimed, RespError> {
    let mut parts = array(reply)?.into_iter();
    let cursor = parts
        .next()
        .map(bytes)
        .transpose()?
        .flatten()
        .ok_or_else(|| RespError::Unexpected("XAUTOCLAIM reply without a cursor".into()))?;
    let entries = match parts.next() {
        Some(frame) => entries_of(frame)?,
        None => Vec::new(),
    };
    let mut deleted = Vec::new();
    if let Some(frame) = parts.next() {
        for id in array(frame)? {
            deleted.extend(bytes(id)?);
        }
    }
    Ok(Claimed {
        cursor,
        entries,
        deleted,
    })
}

/// `[[id, [field, value, …]], …]`; a nil field list (a deleted entry) gives
/// an entry without a value.
/// Decodes an `XCLAIM` reply: the entries now owned by the caller.
///
/// # Errors
/// A reply of another shape.
pub fn from_claim(reply: Frame) -> Result<Vec<StreamEntry>, RespError> {
    entries_of(reply)
}

/// Decodes an `XRANGE` reply: the entries.
///
/// # Errors
/// A reply of another shape.
pub fn from_range(reply: Frame) -> Result<Vec<StreamEntry>, RespError> {
    entries_of(reply)
}

/// Decodes the ids of an extended `XPENDING` reply (`[id, consumer, idle,
/// deliveries]` each).
///
/// # Errors
/// A reply of another shape.
pub fn pending_ids(reply: Frame) -> Result<Vec<Bytes>, RespError> {
    let mut ids = Vec::new();
    for p in array(reply)? {
        if let Some(id) = array(p)?.into_iter().next().map(bytes).transpose()?.flatten() {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn entries_of(frame: Frame) -> Result<Vec<StreamEntry>, RespError> {
    let mut out = Vec::new();
    for entry in array(frame)? {
        let mut parts = array(entry)?.into_iter();
        let Some(id) = parts.next().map(bytes).transpose()?.flatten() else {
            return Err(RespError::Unexpected("stream entry without an id".into()));
        };
        let mut value = None;
        if let Some(fields) = parts.next() {
            let mut fields = array(fields)?.into_iter();
            while let (Some(name), Some(v)) = (fields.next(), fields.next()) {
                if bytes(name)?.as_deref() == Some(queue::FIELD.as_bytes()) {
                    value = bytes(v)?;
                }
            }
        }
        out.push(StreamEntry { id, value });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Frame {
        Frame::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn entry(id: &str, fields: &[&str]) -> Frame {
        Frame::Array(vec![
            bulk(id),
            Frame::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn read_replies_give_ids_and_the_push_field() {
        let reply = Frame::Array(vec![Frame::Array(vec![
            bulk("goim-push-0"),
            Frame::Array(vec![
                entry("1-0", &["m", "abc"]),
                entry("2-0", &["other", "x"]),
                Frame::Array(vec![bulk("3-0"), Frame::Null]),
            ]),
        ])]);
        let got = from_read(reply).expect("parses");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].value.as_deref(), Some(&b"abc"[..]));
        assert_eq!(got[1].value, None);
        assert_eq!(got[2].id, Bytes::from_static(b"3-0"));
        assert_eq!(from_read(Frame::Null).expect("timeout"), Vec::new());
        assert!(from_read(Frame::Error("NOGROUP x".into())).is_err());
    }

    #[test]
    fn autoclaim_replies_give_the_cursor_entries_and_deleted_ids() {
        let reply = Frame::Array(vec![
            bulk("0-0"),
            Frame::Array(vec![entry("5-1", &["m", "z"])]),
            Frame::Array(vec![bulk("4-0")]),
        ]);
        let c = from_autoclaim(reply).expect("parses");
        assert_eq!(c.cursor, Bytes::from_static(b"0-0"));
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.deleted, vec![Bytes::from_static(b"4-0")]);
        assert!(from_autoclaim(Frame::Array(vec![])).is_err());
    }
}
