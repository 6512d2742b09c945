//! Settling a migration's two copies after its source group was promoted
//! without its old master's last writes (the master died, or the promote was
//! forced past a lagging replica).
//!
//! While the old source master lived, a key of a migrating slot on both
//! servers was authoritative on the source (`restore`, `proxy::source_call`).
//! The promoted replica may have missed the old master's last `DEL`s, and
//! every such key was one the old master deleted *after* the target had it
//! (a `MIGRATE`, or a confirmed batch), so the target's copy, which clients may
//! have written since, is the one that counts. If the replica kept it, it
//! would be served stale and then moved back over the target's copy.
//!
//! The exception is a key the migrator copied and had not seen deleted
//! ([`Unconfirmed`](super::Unconfirmed)): the source may have kept it (a
//! client wrote it there meanwhile), and the target's copy is then ours, never
//! served. If the target still holds exactly the copy we sent, the source's
//! copy stays; if it holds another, a client wrote it there after the move, so
//! it counts. A key we copied with `MIGRATE … COPY` ([`Sent::MigrateCopy`])
//! has no bytes to compare: its source copy stays unless our guarded `DEL` of
//! it may have run.
//!
//! So, with the slots held by every proxy: each key of the slots on the new
//! source master that the target also holds is deleted from the source,
//! except an unconfirmed one whose copy on the target is unchanged.
//!
//! What this cannot see: a key the old master moved whose `DEL` the replica
//! missed, and that a client then deleted on the target. The replica's copy
//! comes back. The window is the replication lag at the master's death
//! (docs/reliability.md).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;

use super::SlotSet;
use super::conn::Conn;
use super::error::MigrateError;
use super::restore::{copy_commands, read_copy};
use super::unconfirmed::Sent;
use crate::libs::hash::slot_of;
use crate::libs::resp_client::{Frame, cmd};

/// Keys asked of `SCAN` at a time.
const SCAN_COUNT: usize = 1000;
/// How long each pipelined step may take.
const WAIT: Duration = Duration::from_secs(10);

/// What a settle found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Keys of the slots on the new source master.
    pub found: u64,
    /// Of those, deleted because the target's copy counts.
    pub dropped: u64,
    /// Of those, kept although the target holds a copy: unconfirmed keys
    /// whose copy on the target is still the one the migrator sent (or a
    /// `MIGRATE … COPY` of ours not followed by our `DEL`).
    pub kept: u64,
}

/// Settles `slots` between `source` (the new master of the source group) and
/// `target` (the master of the group they migrate to), as the module docs
/// say. `sent`: the copies the migrator had sent from the old master and not
/// seen deleted.
///
/// # Errors
/// A failure of either connection; nothing is deleted past it, and the
/// settle can be run again.
pub async fn settle_promoted_source(
    source: &str,
    target: &str,
    slots: &BTreeSet<u16>,
    sent: &HashMap<Bytes, Sent>,
    auth: Option<&str>,
) -> Result<Settled, MigrateError> {
    let slots = SlotSet::new(slots)?;
    let mut src = Conn::connect(source, auth).await?;
    let mut dst = Conn::connect(target, auth).await?;
    let mut done = Settled::default();
    let mut cursor = 0;
    loop {
        let (next, keys) = src.scan(cursor, SCAN_COUNT).await?;
        let keys: Vec<Bytes> = keys.into_iter().filter(|k| slots.contains(slot_of(k))).collect();
        done.found += keys.len() as u64;
        if !keys.is_empty() {
            let drop = judge(&mut dst, &keys, sent, &mut done).await?;
            if !drop.is_empty() {
                let mut del: Vec<&[u8]> = vec![b"DEL"];
                del.extend(drop.iter().map(|k| k.as_ref()));
                let reply = src.call(&del, "DEL", WAIT).await?;
                if !matches!(reply, Frame::Integer(_)) {
                    return Err(src.unexpected("DEL", &reply));
                }
                done.dropped += drop.len() as u64;
            }
        }
        if next == 0 {
            return Ok(done);
        }
        cursor = next;
    }
}

/// The keys whose source copy must go: those the target holds, but an
/// unconfirmed one whose target copy is the one sent, or one we copied with
/// `MIGRATE … COPY` and did not delete.
async fn judge(
    dst: &mut Conn,
    keys: &[Bytes],
    sent: &HashMap<Bytes, Sent>,
    done: &mut Settled,
) -> Result<Vec<Bytes>, MigrateError> {
    let mut out = Vec::with_capacity(keys.len() * 2);
    for k in keys {
        if let Some(Sent::Restore(_)) = sent.get(k) {
            out.extend(copy_commands(k));
        } else {
            out.push(cmd(&[b"EXISTS".as_ref(), k]));
        }
    }
    dst.send(out).await?;
    let mut drop = Vec::new();
    for k in keys {
        let copy = match sent.get(k) {
            Some(Sent::Restore(copy)) => copy,
            other => {
                let ours = matches!(other, Some(Sent::MigrateCopy { deleting: false }));
                match dst.read("EXISTS", WAIT).await? {
                    Frame::Integer(1) if ours => done.kept += 1,
                    Frame::Integer(1) => drop.push(k.clone()),
                    Frame::Integer(_) => {}
                    other => return Err(dst.unexpected("EXISTS", &other)),
                }
                continue;
            }
        };
        match read_copy(dst, WAIT).await? {
            // Not on the target (any more): the source's copy is the only one.
            None => {}
            Some(there) if &there == copy => done.kept += 1,
            Some(_) => drop.push(k.clone()),
        }
    }
    Ok(drop)
}
