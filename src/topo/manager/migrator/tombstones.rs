//! Clears the source's tombstones of a task's slots before the task moves
//! anything: one left by an earlier migration of the same slots would make
//! the proxies take a copy this task moves for a removed key's late copy, and
//! delete it (`libs::tombstone` says how tombstones work and why).

use super::conn::{Conn, is_ok};
use super::{MigrateError, MigratorConfig, SlotSet};
use crate::libs::hash::slot_of;
use crate::libs::resp_client::Frame;
use crate::libs::tombstone;

/// Deletes every tombstone on `source` whose key is in `slots`; how many it
/// deleted. A server with a single database has none.
///
/// # Errors
/// A failure of the source connection, or a refused `SCAN` or `DEL`.
pub(super) async fn clear(source: &str, slots: &SlotSet, cfg: &MigratorConfig) -> Result<u64, MigrateError> {
    let mut conn = Conn::connect(source, cfg.auth.as_deref()).await?;
    let db = tombstone::DB.to_string();
    let reply = conn
        .call(&[b"SELECT".as_ref(), db.as_bytes()], "SELECT", cfg.timeout)
        .await?;
    if !is_ok(&reply) {
        return Ok(0);
    }
    let (mut cursor, mut cleared) = (0, 0);
    loop {
        let (next, keys) = conn.scan(cursor, cfg.scan_count).await?;
        let mut del: Vec<&[u8]> = vec![b"DEL"];
        del.extend(
            keys.iter()
                .filter(|k| slots.contains(slot_of(k)))
                .map(|k| k.as_ref()),
        );
        if del.len() > 1 {
            match conn.call(&del, "DEL", cfg.timeout).await? {
                Frame::Integer(n) => cleared += n.unsigned_abs(),
                other => return Err(conn.unexpected("DEL", &other)),
            }
        }
        if next == 0 {
            return Ok(cleared);
        }
        cursor = next;
    }
}
