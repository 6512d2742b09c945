//! The non-blocking way to move a batch: `DUMP` on the source, `RESTORE` on
//! the target, then a `DEL` on the source guarded by `WATCH`.
//!
//! # Why not `MIGRATE`
//!
//! Stock Redis runs `MIGRATE` synchronously: the source's event loop waits,
//! inside the command, for the target to restore the keys and answer. On a
//! busy host that wait includes the time the target process needs to get a
//! CPU, and every other client of the source waits with it. Measured on this
//! project's 2-core machine, 100-key `MIGRATE` batches made the p99 of
//! unrelated clients of the source 6–9× its value before the migration
//! (docs/benchmarks.md). Here each server only runs short commands it answers
//! at once, so the source serves its clients between our commands just as it
//! does between any other client's.
//!
//! # Why it loses nothing
//!
//! While a slot is in `migrate` a proxy runs a request on the source only if
//! the source holds all its keys, and otherwise moves them with
//! `MIGRATE … REPLACE` before it touches them on the target
//! (`proxy::migrate`). So a key that left the source never comes back, and
//! the source's copy is authoritative while it exists. The steps of a batch:
//!
//! 1. Source: `WATCH k…`, then `DUMP k` and `PEXPIRETIME k` for each key,
//!    in one write. A key that is gone (nil `DUMP`) needs nothing.
//! 2. Target: `RESTORE k <expiry> <payload> ABSTTL` for each dumped key,
//!    without `REPLACE` (with `write_ack = "replica"`, inside one script that
//!    leaves a key the target holds untouched, see [`restore_scripted`]). A
//!    `BUSYKEY` reply means the target has the key already: either a proxy
//!    moved it on access (and its client may have written it since, so it
//!    must not be overwritten) or an earlier attempt of ours lost
//!    its reply (or its `WAIT`, step 3, failed). The key is *contested*
//!    (below), unless the target acknowledged an earlier `RESTORE` of exactly
//!    the copy the source still holds and that copy still shows our mark:
//!    then it counts as restored, since the source held it all along and no
//!    client wrote the target's copy.
//! 3. With `write_ack = "replica"` on the proxies: `WAIT 1` on the target,
//!    so a replica of it has the keys before the source lets them go (see
//!    [`replica_has`]). No replica in time: the source keeps them.
//! 4. Source: `MULTI`, `DEL` of the restored keys, `EXEC`. `EXEC` runs only if
//!    no watched key was written, deleted or expired since the `WATCH`, so the
//!    source only ever deletes a copy that is byte for byte the one the target
//!    acknowledged. If it aborts (a client wrote one of the keys on the
//!    source meanwhile, or a proxy moved one), the keys are watched and dumped
//!    again: those that still equal what the target holds are deleted under
//!    the new guard, the others are contested, and those a client deleted
//!    have our copy taken back from the target ([`take_back`]).
//!
//! # A key deleted while its copy waits
//!
//! Once the source lacks a key, the proxies serve it from the target. So a
//! key a client deletes on the source between our `RESTORE` and our `DEL`
//! (or while a `WAIT` holds the batch, step 3) would come back from our copy.
//! The copy must go too, but "gone from the source" has two other causes that
//! leave the very same bytes on the target, which is then the only copy: a
//! proxy moved the key on access (`MIGRATE … REPLACE`), or our own `DEL` ran
//! and its reply was lost. So our copies carry a mark: `RESTORE … IDLETIME`
//! 60 s (`libs::copy_mark`), which no other write gives and any access of the key
//! clears (`OBJECT IDLETIME`, `EXISTS`, `PEXPIRETIME` do not touch it). A gone
//! key is taken back only if its note says our `DEL` cannot have run, and the
//! target's copy is idle for at least the mark plus the time since we sent
//! it: a key a proxy moved or a client wrote since is younger.
//! Redis shares the objects of small integers between keys (without
//! `maxmemory`), and a shared object's idle time is every holder's: such a
//! copy is never taken back.
//! With an LFU `maxmemory-policy` Redis tracks no idle time; copies are then
//! never taken back.
//!
//! Every copy sent stays noted in [`Unconfirmed`] until the source's `DEL`
//! of it is confirmed: if the source master dies in between, a promote of
//! its replica needs to know which keys the target may hold a copy of that
//! is older than the source's (`settle`).
//!
//! Contested keys go back to the caller, who moves them with
//! `MIGRATE … REPLACE` (with `write_ack = "replica"`, as `contested`
//! describes): its check-and-move is atomic on the source, so it
//! answers `NOKEY` if the source no longer holds a key, and otherwise
//! overwrites the target with the source's copy, which is authoritative while
//! the source holds it. Nothing is deleted from the source before the target
//! acknowledged it, so a failure at any step leaves at worst a copy on both
//! servers, which the retry settles the same way.

use std::time::Duration;

use bytes::Bytes;

use super::batch::Key;
use super::conn::{Conn, is_ok, reply_text};
use super::error::MigrateError;
use super::unconfirmed::{Earlier, KeyCopy, Unconfirmed};
use crate::libs::resp_client::{Frame, cmd};
use crate::libs::{copy_mark, wait_mark};

/// What one transfer did.
#[derive(Debug, Default)]
pub(super) struct Transferred {
    /// Keys now on the target and deleted from the source.
    pub(super) moved: usize,
    /// Indexes (into the batch's keys) of the keys to settle with
    /// `MIGRATE … REPLACE` (see the module docs).
    pub(super) contested: Vec<usize>,
}

/// Why a transfer stopped. The source still holds every key it did not
/// delete, so each case is retried.
#[derive(Debug)]
pub(super) enum Failure {
    /// The source connection failed; it must be reopened.
    Source(MigrateError),
    /// The target connection failed (down, timeout); it must be reopened.
    Target(MigrateError),
    /// The target refused a `RESTORE` (out of memory, wrong password, a
    /// payload of a newer Redis): its error text.
    Refused(String),
    /// With `write_ack = "replica"`: no replica of the target confirmed the
    /// restored keys in time, so the source kept them (the retry finds them
    /// restored and waits again).
    Unreplicated(String),
}

impl Failure {
    /// [`MigrateError::NotMaster`] when the source or the target answered
    /// `READONLY`: it became a replica while keys moved.
    pub(super) fn not_master(&self, source: &str, target: &str) -> Option<MigrateError> {
        let (addr, message) = match self {
            Failure::Source(MigrateError::Redis { message, .. }) => (source, message),
            Failure::Target(MigrateError::Redis { message, .. }) => (target, message),
            Failure::Refused(why) => (target, why),
            _ => return None,
        };
        message.starts_with("READONLY").then(|| MigrateError::NotMaster {
            addr: addr.to_string(),
            message: message.clone(),
        })
    }
}

/// How many times an aborted `EXEC` is followed by a re-check of the keys
/// (see [`transfer`]) before the rest are left to `MIGRATE`.
const RECHECKS: usize = 2;

/// Moves `keys` from `source` to `target` as the module docs describe.
/// `wait` bounds each step's replies. `replicated`: a replica of the target
/// must have the keys before the source deletes them ([`replica_has`]).
///
/// An aborted `EXEC` usually means one key of the batch was written on the
/// source meanwhile (a client served there, see `proxy::source_call`). Rather
/// than hand the whole batch to `MIGRATE`, the keys are `WATCH`ed and dumped
/// again: those whose payload and expiry still equal what the target holds
/// are deleted under the new guard, only the others are contested.
pub(super) async fn transfer(
    source: &mut Conn,
    target: &mut Conn,
    keys: &[Key],
    wait: Duration,
    noted: &Unconfirmed,
    replicated: bool,
) -> Result<Transferred, Failure> {
    let all: Vec<(usize, &[u8])> = keys.iter().map(|k| k.name.as_ref()).enumerate().collect();
    let dumped = dump(source, &all, wait).await.map_err(Failure::Source)?;
    let from = source.addr().to_string();
    take_back_gone((source, target), &all, &dumped, wait, noted).await?;
    let mut done = Transferred::default();
    if dumped.is_empty() {
        // Nothing watched is left to delete: clear the WATCH for the next batch.
        unwatch(source, wait).await.map_err(Failure::Source)?;
        return Ok(done);
    }
    let earlier = noted.sending(&from, dumped.iter().map(|d| (d.name, &d.copy)));
    // Taken before the `RESTORE`s are sent, so that the age `take_back`
    // expects of a copy never exceeds its own: a key a proxy moved after our
    // `RESTORE` is younger than that, however slow the replies were.
    let restored_at = std::time::Instant::now();
    let OnTarget { busy, foreign } = match restore(target, &dumped, &earlier, wait, replicated).await {
        Ok(found) => found,
        Err(failure) => return Err(unwatched(source, failure, wait).await),
    };
    let mut restored = Vec::with_capacity(dumped.len());
    let mut theirs = Vec::new();
    // Keys an earlier attempt restored, whose `WAIT` this one must cover.
    let mut restored_before = false;
    for (d, earlier) in dumped.into_iter().zip(earlier) {
        if foreign.contains(&d.index) {
            // Our acknowledged copy was replaced or read since: no longer
            // provably ours. Its note stays: a settle still compares bytes.
            done.contested.push(d.index);
        } else if !busy.contains(&d.index) {
            restored.push(d);
        } else if let Earlier::Restored(_) = earlier {
            // The target acknowledged this very copy before (an attempt whose
            // `WAIT` or `DEL` failed): it is ours, no `MIGRATE` needed.
            restored_before = true;
            restored.push(d);
        } else {
            if earlier == Earlier::Nothing {
                // The target had it already: not our copy there.
                theirs.push(d.name);
            }
            done.contested.push(d.index);
        }
    }
    noted.forget(&from, theirs.into_iter());
    noted.restored(
        &from,
        restored_at,
        // Those the target acknowledged just now, not those it had.
        restored
            .iter()
            .filter(|d| !busy.contains(&d.index))
            .map(|d| (d.name, &d.copy)),
    );
    let steps = Steps {
        wait,
        noted,
        replicated,
    };
    commit((source, target), restored, restored_before, steps, done).await
}

/// What the steps of a transfer share, beside its connections.
#[derive(Clone, Copy)]
pub(super) struct Steps<'a> {
    /// Bounds each step's replies.
    pub(super) wait: Duration,
    pub(super) noted: &'a Unconfirmed,
    /// A replica of the target must have the keys before the source deletes
    /// them ([`replica_has`]).
    pub(super) replicated: bool,
}

/// Takes back our copies of the keys of `all` that an earlier attempt left
/// on the target and a client deleted on the source since: those not in
/// `dumped` (see [`take_back`]).
pub(super) async fn take_back_gone(
    (source, target): (&mut Conn, &mut Conn),
    all: &[(usize, &[u8])],
    dumped: &[Dumped<'_>],
    wait: Duration,
    noted: &Unconfirmed,
) -> Result<(), Failure> {
    let from = source.addr().to_string();
    let held: std::collections::HashSet<usize> = dumped.iter().map(|d| d.index).collect();
    let gone = all
        .iter()
        .filter(|(i, _)| !held.contains(i))
        .map(|(_, name)| *name);
    let gone = noted.taken_back_candidates(&from, gone);
    if let Err(e) = take_back(target, &gone, wait).await {
        return Err(unwatched(source, Failure::Target(e), wait).await);
    }
    noted.forget(&from, gone.iter().map(|(name, _)| *name));
    Ok(())
}

/// Steps 3 and 4 for the keys the target now holds as we sent them
/// (`restored`, still watched on the source): the replica's `WAIT` if
/// needed, then the guarded `DEL`, re-checking the keys after an abort.
/// `restored_before`: some were restored by an earlier attempt. Adds what it
/// moved, and the keys left contested, to `done`.
pub(super) async fn commit(
    (source, target): (&mut Conn, &mut Conn),
    mut restored: Vec<Dumped<'_>>,
    restored_before: bool,
    Steps {
        wait,
        noted,
        replicated,
    }: Steps<'_>,
    mut done: Transferred,
) -> Result<Transferred, Failure> {
    let from = source.addr().to_string();
    if replicated
        && !restored.is_empty()
        && let Err(failure) = replica_has(target, restored_before, wait).await
    {
        return Err(unwatched(source, failure, wait).await);
    }
    for round in 0..=RECHECKS {
        let names: Vec<&[u8]> = restored.iter().map(|d| d.name).collect();
        // Until the `EXEC`'s reply says otherwise, our `DEL` may have run.
        noted.deleting(&from, names.iter().copied(), true);
        if guarded_del(source, &names, wait).await.map_err(Failure::Source)? {
            noted.forget(&from, names.into_iter());
            done.moved += restored.len();
            return Ok(done);
        }
        noted.deleting(&from, names.into_iter(), false);
        if round == RECHECKS {
            break;
        }
        let pairs: Vec<(usize, &[u8])> = restored.iter().map(|d| (d.index, d.name)).collect();
        let again = dump(source, &pairs, wait).await.map_err(Failure::Source)?;
        let (mut same, mut gone) = (Vec::new(), Vec::new());
        for d in restored {
            match again.iter().find(|a| a.index == d.index) {
                Some(a) if a.copy == d.copy => same.push(d),
                Some(_) => done.contested.push(d.index),
                // Gone from the source meanwhile: a client deleted it (our
                // copy goes too), or a proxy moved it (the copy is the
                // proxy's, and stays).
                None => gone.push(d.name),
            }
        }
        let gone = noted.taken_back_candidates(&from, gone.into_iter());
        if let Err(e) = take_back(target, &gone, wait).await {
            return Err(unwatched(source, Failure::Target(e), wait).await);
        }
        noted.forget(&from, gone.iter().map(|(name, _)| *name));
        restored = same;
    }
    unwatch(source, wait).await.map_err(Failure::Source)?;
    done.contested.extend(restored.iter().map(|d| d.index));
    Ok(done)
}

/// `failure`, after clearing the source's `WATCH` (or the failure to).
pub(super) async fn unwatched(source: &mut Conn, failure: Failure, wait: Duration) -> Failure {
    match unwatch(source, wait).await {
        Err(e) => Failure::Source(e),
        Ok(()) => failure,
    }
}

/// Step 3, with `write_ack = "replica"`: `WAIT 1` on the target, so that a
/// replica of the target has the restored keys before the source deletes
/// them. Else a target master dying within its replication lag would lose
/// keys whose last write a replica of the source had acknowledged.
///
/// `WAIT` covers this connection's own writes. Keys restored by an earlier
/// attempt (`restored_before`) were written on another connection, perhaps
/// one since closed, so a `PUBLISH` first makes this connection's last write
/// later than theirs (`libs::wait_mark`).
pub(super) async fn replica_has(
    target: &mut Conn,
    restored_before: bool,
    wait: Duration,
) -> Result<(), Failure> {
    let ms = wait.as_millis().max(1).to_string();
    let mut out = Vec::with_capacity(2);
    if restored_before {
        out.push(cmd(&[b"PUBLISH".as_ref(), wait_mark::CHANNEL, b""]));
    }
    out.push(cmd(&[b"WAIT".as_ref(), b"1", ms.as_bytes()]));
    target.send(out).await.map_err(Failure::Target)?;
    if restored_before {
        let reply = target.read("PUBLISH", wait).await.map_err(Failure::Target)?;
        if !matches!(reply, Frame::Integer(_)) {
            return Err(Failure::Target(target.unexpected("PUBLISH", &reply)));
        }
    }
    // `WAIT` itself takes up to `wait`: its reply gets as long again.
    let reply = target.read("WAIT", wait * 2).await.map_err(Failure::Target)?;
    match reply {
        Frame::Integer(n) if n >= 1 => Ok(()),
        Frame::Integer(_) => Err(Failure::Unreplicated(format!(
            "no replica of {} acknowledged the restored keys within {ms} ms",
            target.addr()
        ))),
        other => Err(Failure::Target(target.unexpected("WAIT", &other))),
    }
}

/// A key of the batch as `DUMP` and `PEXPIRETIME` gave it.
pub(super) struct Dumped<'a> {
    /// Its index in the batch.
    pub(super) index: usize,
    pub(super) name: &'a [u8],
    pub(super) copy: KeyCopy,
}

/// The commands whose replies [`read_copy`] reads: `DUMP k`, `PEXPIRETIME k`.
pub(super) fn copy_commands(name: &[u8]) -> [Frame; 2] {
    [
        cmd(&[b"DUMP".as_ref(), name]),
        cmd(&[b"PEXPIRETIME".as_ref(), name]),
    ]
}

/// Reads the replies to [`copy_commands`]: the key's copy, or `None` when
/// the key is gone (nil `DUMP`: moved on access, deleted or expired; or
/// expired between the two commands).
pub(super) async fn read_copy(conn: &mut Conn, wait: Duration) -> Result<Option<KeyCopy>, MigrateError> {
    let payload = conn.read("DUMP", wait).await?;
    let expiry = conn.read("PEXPIRETIME", wait).await?;
    let payload = match payload {
        Frame::BulkString(payload) => payload,
        Frame::Null => return Ok(None),
        other => return Err(conn.unexpected("DUMP", &other)),
    };
    match expiry {
        // `RESTORE … ABSTTL`'s "no expiry".
        Frame::Integer(-1) => Ok(Some(KeyCopy {
            payload,
            expire_at: 0,
        })),
        Frame::Integer(ms) if ms > 0 => Ok(Some(KeyCopy {
            payload,
            expire_at: ms,
        })),
        // -2: expired between the two commands.
        Frame::Integer(_) => Ok(None),
        other => Err(conn.unexpected("PEXPIRETIME", &other)),
    }
}

/// Step 1: `WATCH` the keys, then `DUMP` and `PEXPIRETIME` each; the keys
/// that exist.
pub(super) async fn dump<'a>(
    source: &mut Conn,
    keys: &[(usize, &'a [u8])],
    wait: Duration,
) -> Result<Vec<Dumped<'a>>, MigrateError> {
    let mut out = Vec::with_capacity(2 * keys.len() + 1);
    out.push(watch(keys.iter().map(|(_, name)| *name)));
    for (_, name) in keys {
        out.extend(copy_commands(name));
    }
    source.send(out).await?;
    expect_ok(source, "WATCH", wait).await?;
    let mut dumped = Vec::with_capacity(keys.len());
    for &(index, name) in keys {
        if let Some(copy) = read_copy(source, wait).await? {
            dumped.push(Dumped { index, name, copy });
        }
    }
    Ok(dumped)
}

/// What [`restore`] found on the target: indexes into the batch.
#[derive(Default)]
struct OnTarget {
    /// Keys the target had already (`BUSYKEY`), or still has from an earlier
    /// attempt of ours.
    busy: Vec<usize>,
    /// Keys whose copy the target acknowledged before but that now read
    /// younger than our mark allows: replaced (a proxy's copy ahead of a
    /// move on access, on a target that lost ours in a failover) or read
    /// since. Either way no longer provably ours: contested.
    foreign: Vec<usize>,
}

/// Step 2: `RESTORE … ABSTTL IDLETIME <mark>` each key on the target.
///
/// A key whose copy the target acknowledged before (`earlier` says
/// [`Earlier::Restored`]) is looked for with `OBJECT REFCOUNT` and
/// `OBJECT IDLETIME`, which leave our copy's mark alone where the `BUSYKEY`
/// check of a `RESTORE` would clear it: still marked, it counts as busy (ours);
/// lost (a target that failed over), it is restored again; younger than the
/// mark allows (replaced, or read), it is foreign, and not ours to count as
/// restored. A copy whose mark cannot be read (a shared small integer, an
/// LFU policy) counts as ours, as long as it is there.
async fn restore(
    target: &mut Conn,
    dumped: &[Dumped<'_>],
    earlier: &[Earlier],
    wait: Duration,
    replicated: bool,
) -> Result<OnTarget, Failure> {
    let (mut known, mut send) = (Vec::new(), Vec::with_capacity(dumped.len()));
    for (d, e) in dumped.iter().zip(earlier) {
        match e {
            Earlier::Restored(at) => known.push((d, *at)),
            _ => send.push(d),
        }
    }
    let mut found = OnTarget::default();
    if !known.is_empty() {
        let out = known
            .iter()
            .flat_map(|(d, _)| {
                [
                    cmd(&[b"OBJECT".as_ref(), b"REFCOUNT", d.name]),
                    cmd(&[b"OBJECT".as_ref(), b"IDLETIME", d.name]),
                ]
            })
            .collect();
        target.send(out).await.map_err(Failure::Target)?;
        for (d, at) in known {
            let refs = target
                .read("OBJECT REFCOUNT", wait)
                .await
                .map_err(Failure::Target)?;
            let idle = target
                .read("OBJECT IDLETIME", wait)
                .await
                .map_err(Failure::Target)?;
            match (refs, idle) {
                (Frame::Null, _) => send.push(d),
                (Frame::Integer(1), Frame::Integer(idle))
                    if idle.unsigned_abs() < copy_mark::min_idle(at.elapsed()) =>
                {
                    found.foreign.push(d.index)
                }
                (Frame::Integer(_), _) => found.busy.push(d.index),
                (other, _) => return Err(Failure::Target(target.unexpected("OBJECT REFCOUNT", &other))),
            }
        }
    }
    if send.is_empty() {
        return Ok(found);
    }
    if replicated {
        // Untouched where the target holds a key: a `RESTORE`'s `BUSYKEY`
        // check would wear the copy's mark (a proxy's copy ahead, which it
        // may have to take back) or its age (a stale copy, which
        // `contested` tells by it).
        let replies = restore_scripted(target, &send, 0, |_| -1, wait)
            .await
            .map_err(Failure::Target)?;
        let mut refused = None;
        for (d, reply) in send.iter().zip(replies) {
            match reply {
                Frame::Integer(1) => {}
                Frame::Integer(0) => found.busy.push(d.index),
                other => {
                    refused.get_or_insert_with(|| reply_text(&other));
                }
            }
        }
        return match refused {
            Some(why) => Err(Failure::Refused(why)),
            None => Ok(found),
        };
    }
    let mark = Bytes::from(copy_mark::SECS.to_string());
    let out = send
        .iter()
        .map(|d| {
            // The payload goes out as the slice it was read into, uncopied.
            Frame::Array(vec![
                Frame::BulkString(Bytes::from_static(b"RESTORE")),
                Frame::BulkString(Bytes::copy_from_slice(d.name)),
                Frame::BulkString(Bytes::from(d.copy.expire_at.to_string())),
                Frame::BulkString(d.copy.payload.clone()),
                Frame::BulkString(Bytes::from_static(b"ABSTTL")),
                Frame::BulkString(Bytes::from_static(b"IDLETIME")),
                Frame::BulkString(mark.clone()),
            ])
        })
        .collect();
    target.send(out).await.map_err(Failure::Target)?;
    let mut refused = None;
    // Every reply is read even after a refusal, so the connection stays in step.
    for d in send {
        let reply = target.read("RESTORE", wait).await.map_err(Failure::Target)?;
        match &reply {
            Frame::Error(e) if e.starts_with("BUSYKEY") => found.busy.push(d.index),
            _ if is_ok(&reply) => {}
            _ => {
                refused.get_or_insert_with(|| reply_text(&reply));
            }
        }
    }
    match refused {
        // The keys restored so far stay on both servers; the retry finds them
        // contested and MIGRATE settles them.
        Some(why) => Err(Failure::Refused(why)),
        None => Ok(found),
    }
}

/// Most payload bytes one [`restore_scripted`] `EVAL` carries (a key bigger
/// than this goes alone). Redis holds a whole command before it runs it, and
/// copies each argument into Lua, so one `EVAL` of a batch of big values
/// would need twice the batch in the target's memory at once, and could pass
/// its `client-query-buffer-limit`; pipelined `RESTORE`s never hold more
/// than one value.
const SCRIPT_BYTES: usize = 4 << 20;

/// `EVAL copy_mark::REPLACE_STALE` for `dumped`: our marked copy of each,
/// where the target holds what `found` says it is to find (`-1`: nothing;
/// else a stale copy's floor, seen at `at_ms` by the target's clock), in as
/// many `EVAL`s as [`SCRIPT_BYTES`] asks, pipelined. Its reply for each key:
/// `1` restored, `0` left alone, or an error's text.
pub(super) async fn restore_scripted(
    target: &mut Conn,
    dumped: &[&Dumped<'_>],
    at_ms: i64,
    found: impl Fn(&Dumped<'_>) -> i64,
    wait: Duration,
) -> Result<Vec<Frame>, MigrateError> {
    let chunks = by_bytes(dumped, SCRIPT_BYTES);
    let bulk = Frame::BulkString;
    let text = |s: String| Frame::BulkString(Bytes::from(s));
    let evals = chunks
        .iter()
        .map(|chunk| {
            let mut words = Vec::with_capacity(5 + 4 * chunk.len());
            words.push(bulk(Bytes::from_static(b"EVAL")));
            words.push(bulk(Bytes::from_static(copy_mark::REPLACE_STALE.as_bytes())));
            words.push(text(chunk.len().to_string()));
            words.extend(chunk.iter().map(|d| bulk(Bytes::copy_from_slice(d.name))));
            words.push(text(copy_mark::SECS.to_string()));
            words.push(text(at_ms.to_string()));
            for d in *chunk {
                words.push(text(d.copy.expire_at.to_string()));
                // The payload goes out as the slice it was read into, uncopied.
                words.push(bulk(d.copy.payload.clone()));
                words.push(text(found(d).to_string()));
            }
            Frame::Array(words)
        })
        .collect();
    target.send(evals).await?;
    let mut replies = Vec::with_capacity(dumped.len());
    let mut bad = None;
    // Every reply is read even after a bad one, so the connection stays in step.
    for chunk in &chunks {
        match target.read("EVAL", wait).await? {
            Frame::Array(items) if items.len() == chunk.len() => replies.extend(items),
            other => {
                bad.get_or_insert(other);
            }
        }
    }
    match bad {
        Some(other) => Err(target.unexpected("EVAL", &other)),
        None => Ok(replies),
    }
}

/// `dumped` cut in runs of at most `max` payload bytes each (one key at
/// least).
fn by_bytes<'a, 'b>(dumped: &'a [&'a Dumped<'b>], max: usize) -> Vec<&'a [&'a Dumped<'b>]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, d) in dumped.iter().enumerate() {
        let len = d.copy.payload.len();
        if i > start && bytes + len > max {
            chunks.push(&dumped[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < dumped.len() {
        chunks.push(&dumped[start..]);
    }
    chunks
}

/// Takes back from the target our copies of keys a client deleted on the
/// source while the copy waited there (see the module docs): `gone` are such
/// keys, with when our copy was sent. One script deletes each copy that
/// still shows our mark, unworn (`libs::copy_mark::TAKE_BACK`): a key a proxy
/// moved, or a client wrote or read since, is younger and stays. A key gone
/// from the source never comes back to it (`proxy::source_call`), so "gone"
/// stays true.
pub(super) async fn take_back(
    target: &mut Conn,
    gone: &[(&[u8], std::time::Instant)],
    wait: Duration,
) -> Result<(), MigrateError> {
    if gone.is_empty() {
        return Ok(());
    }
    let copies = gone.iter().map(|(name, at)| (*name, at.elapsed()));
    target
        .send(vec![copy_mark::take_back_words(copies, |w| cmd(w))])
        .await?;
    match target.read("EVAL", wait).await? {
        Frame::Integer(_) => Ok(()),
        other => Err(target.unexpected("EVAL", &other)),
    }
}

/// Step 4: `MULTI`, `DEL` the keys, `EXEC`. False if `EXEC` aborted because a
/// watched key changed (nothing was deleted then).
pub(super) async fn guarded_del(
    source: &mut Conn,
    keys: &[&[u8]],
    wait: Duration,
) -> Result<bool, MigrateError> {
    if keys.is_empty() {
        unwatch(source, wait).await?;
        return Ok(true);
    }
    let mut del: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
    del.push(b"DEL");
    del.extend_from_slice(keys);
    let out = vec![cmd(&[b"MULTI".as_ref()]), cmd(&del), cmd(&[b"EXEC".as_ref()])];
    source.send(out).await?;
    expect_ok(source, "MULTI", wait).await?;
    let queued = source.read("DEL", wait).await?;
    let exec = source.read("EXEC", wait).await?;
    if !matches!(&queued, Frame::SimpleString(s) if s.as_ref() == b"QUEUED") {
        return Err(source.unexpected("DEL", &queued));
    }
    match &exec {
        Frame::Null => Ok(false),
        Frame::Array(items) if matches!(items.as_slice(), [Frame::Integer(_)]) => Ok(true),
        _ => Err(source.unexpected("EXEC", &exec)),
    }
}

/// `WATCH k…`.
pub(super) fn watch<'a>(keys: impl Iterator<Item = &'a [u8]>) -> Frame {
    let mut words: Vec<&[u8]> = vec![b"WATCH"];
    words.extend(keys);
    cmd(&words)
}

/// Clears the connection's `WATCH`es, so they cannot abort the next batch.
pub(super) async fn unwatch(conn: &mut Conn, wait: Duration) -> Result<(), MigrateError> {
    let reply = conn.call(&[b"UNWATCH".as_ref()], "UNWATCH", wait).await?;
    if is_ok(&reply) {
        Ok(())
    } else {
        Err(conn.unexpected("UNWATCH", &reply))
    }
}

pub(super) async fn expect_ok(
    conn: &mut Conn,
    cmd: &'static str,
    wait: Duration,
) -> Result<(), MigrateError> {
    let reply = conn.read(cmd, wait).await?;
    if is_ok(&reply) {
        Ok(())
    } else {
        Err(conn.unexpected(cmd, &reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_restores_are_cut_by_payload_bytes() {
        let dumped: Vec<Dumped<'_>> = [3usize, 4, 2, 9, 1]
            .iter()
            .enumerate()
            .map(|(index, &len)| Dumped {
                index,
                name: b"k",
                copy: KeyCopy {
                    payload: Bytes::from(vec![0; len]),
                    expire_at: 0,
                },
            })
            .collect();
        let refs: Vec<&Dumped<'_>> = dumped.iter().collect();
        let sizes = |max| -> Vec<Vec<usize>> {
            by_bytes(&refs, max)
                .iter()
                .map(|c| c.iter().map(|d| d.index).collect())
                .collect()
        };
        assert_eq!(sizes(7), vec![vec![0, 1], vec![2], vec![3], vec![4]]);
        assert_eq!(sizes(100), vec![vec![0, 1, 2, 3, 4]]);
        assert_eq!(
            sizes(1),
            vec![vec![0], vec![1], vec![2], vec![3], vec![4]],
            "a bigger key goes alone"
        );
        assert!(by_bytes(&[], 10).is_empty());
    }
}
