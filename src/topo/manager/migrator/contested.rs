//! Contested keys when a replica of the target must have each key before
//! the source lets it go (`write_ack = "replica"` on a proxy).
//!
//! A key is contested when the target holds a copy we cannot prove ours
//! while the source still holds the key (`restore`): a proxy's copy ahead of
//! a move on access, a copy of ours that someone read, a leftover. The
//! source's copy is authoritative then and the target's is never served, so
//! it may be overwritten, but not blindly: between our `DUMP` on the source
//! and our write on the target, a proxy may move the key (`MIGRATE`) and a
//! client write the moved copy. A plain `MIGRATE` checks and writes at once,
//! but it deletes the source's copy before any replica of the target has it,
//! and `MIGRATE … COPY` leaves a copy without our mark (`libs::copy_mark`):
//! a key a client deleted on the source while that copy waited for the
//! replica came back from it. So ([`move_contested`]):
//!
//! 1. Target: one script reads the target's clock, and whether each key is
//!    there and how long its copy has been idle (`copy_mark::OBSERVE`). The
//!    source held the key at that moment (it still does at step 2, and a key
//!    that left the source never comes back), so that copy is stale.
//! 2. Source: `WATCH`, `DUMP` and `PEXPIRETIME` of each key, as a transfer.
//! 3. Target: one script restores our marked copy over each copy that is
//!    still the one seen at step 1 (`copy_mark::REPLACE_STALE`): a value of
//!    its own, idle for as long as then plus the time since by the target's
//!    own clock. A copy a proxy moved or a client wrote since is younger and
//!    stays; its key is contested again.
//! 4. As a transfer: `WAIT 1` on the target, then the guarded `DEL`; a key a
//!    client deleted on the source meanwhile has our marked copy taken back.
//!
//! Three kinds of keys move by `MIGRATE … COPY` instead ([`migrate_copy`]),
//! whose copy is never taken back (docs/reliability.md):
//! * a copy younger than `copy_mark::AGED` at step 1 cannot be told from
//!   one written after it;
//! * a small integer cannot carry our mark;
//! * a copy that still carries a proxy's mark given a few seconds before
//!   (its copy ahead of a move on access, see [`observe`]) after up to
//!   [`AHEAD_WAIT`]: such a copy is waited for first, not replaced, as the
//!   proxy may take it back and would take ours in its stead. Its move
//!   normally ends within milliseconds (the key leaves the source, or the
//!   copy goes), and a mark [`copy_mark::AGED`] seconds old can be written
//!   over.

use std::time::{Duration, Instant};

use super::batch::{Key, Verdict, verdict};
use super::conn::{Conn, reply_text};
use super::error::MigrateError;
use super::restore::{
    Dumped, Failure, Steps, Transferred, commit, dump, expect_ok, guarded_del, replica_has, restore_scripted,
    take_back_gone, unwatch, unwatched, watch,
};
use super::unconfirmed::Unconfirmed;
use crate::libs::copy_mark;
use crate::libs::resp_client::Frame;

/// Moves contested `keys` from `source` to `target` (at `to`, with `auth` for
/// a `MIGRATE`), as the module docs describe. `wait` bounds each reply.
pub(super) async fn move_contested(
    source: &mut Conn,
    target: &mut Conn,
    keys: &[Key],
    (to, auth): (&str, Option<&str>),
    wait: Duration,
    noted: &Unconfirmed,
) -> Result<Transferred, Failure> {
    let names: Vec<&[u8]> = keys.iter().map(|k| k.name.as_ref()).collect();
    let from = source.addr().to_string();
    let ours = |i: usize| noted.acknowledged(&from, names[i]);
    let looked = Instant::now();
    let seen = loop {
        let seen = observe(target, &names, ours, wait)
            .await
            .map_err(Failure::Target)?;
        if !seen.keys.contains(&Found::Ahead) || looked.elapsed() >= AHEAD_WAIT {
            break seen;
        }
        tokio::time::sleep(AHEAD_POLL).await;
    };
    let mut by_copy: Vec<usize> = (0..keys.len())
        .filter(|&i| seen.keys[i].stale().is_none())
        .collect();
    let mut done = Transferred::default();
    if by_copy.len() < keys.len() {
        let steps = Steps {
            wait,
            noted,
            replicated: true,
        };
        let (part, shared) = overwrite((source, target), &names, &seen, steps).await?;
        done.moved += part.moved;
        done.contested.extend(part.contested);
        by_copy.extend(shared);
    }
    if !by_copy.is_empty() {
        by_copy.sort_unstable();
        let rest: Vec<Key> = by_copy.iter().map(|&i| keys[i].clone()).collect();
        let part = migrate_copy(source, target, &rest, (to, auth), wait, noted).await?;
        done.moved += part.moved;
        done.contested
            .extend(part.contested.into_iter().map(|j| by_copy[j]));
    }
    Ok(done)
}

/// How long a contested key waits for a proxy's copy ahead on the target
/// ([`Found::Ahead`]) to end, by its move or its take-back, before it moves
/// by `MIGRATE … COPY` anyway. A move on access normally ends within
/// milliseconds; a mark given [`copy_mark::AGED`] seconds and more before
/// can be written over anyway, so this only bounds a proxy that copies the
/// same key ahead again and again.
const AHEAD_WAIT: Duration = Duration::from_secs(10);
/// How often the target is looked at again meanwhile.
const AHEAD_POLL: Duration = Duration::from_millis(10);

/// What [`observe`] found on the target.
struct Seen {
    /// The target's clock when it looked (Unix ms).
    at_ms: i64,
    /// Per key.
    keys: Vec<Found>,
}

/// What the target holds of one contested key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// What `REPLACE_STALE` is to find there: `-1` nothing, else the stale
    /// copy's `copy_mark::stale_floor`.
    Stale(i64),
    /// A copy that cannot be told later from a newer one: it moves by
    /// `MIGRATE … COPY`.
    Unknowable,
    /// A copy that may carry a proxy's mark given a few seconds before: its
    /// copy ahead of a move on access, which the proxy may still take back.
    Ahead,
}

impl Found {
    /// What `REPLACE_STALE` is to find, for a copy it may write over.
    fn stale(self) -> Option<i64> {
        match self {
            Found::Stale(floor) => Some(floor),
            Found::Unknowable | Found::Ahead => None,
        }
    }
}

/// Step 1: what the target holds of `names` (`copy_mark::OBSERVE`). `ours`
/// says when the target acknowledged our copy of a key (by index), if it did.
///
/// A copy that may carry a mark given a few seconds before is overwritten
/// only if it is that copy of ours (as old as our mark allows): a proxy's
/// copy ahead of a move on access carries the same mark, and the proxy takes
/// it back if the source lost the key meanwhile, which would take our copy
/// in its stead once our `DEL` ran (`copy_mark::may_be_taken_back`). Such a
/// copy is [`Found::Ahead`].
async fn observe(
    target: &mut Conn,
    names: &[&[u8]],
    ours: impl Fn(usize) -> Option<Instant>,
    wait: Duration,
) -> Result<Seen, MigrateError> {
    let count = names.len().to_string();
    let mut words: Vec<&[u8]> = vec![b"EVAL", copy_mark::OBSERVE.as_bytes(), count.as_bytes()];
    words.extend_from_slice(names);
    let reply = target.call(&words, "EVAL", wait).await?;
    let Frame::Array(items) = &reply else {
        return Err(target.unexpected("EVAL", &reply));
    };
    let numbers: Option<Vec<i64>> = items
        .iter()
        .map(|f| match f {
            Frame::Integer(n) => Some(*n),
            _ => None,
        })
        .collect();
    let Some((&at_ms, found)) = numbers.as_deref().and_then(<[i64]>::split_first) else {
        return Err(target.unexpected("EVAL", &reply));
    };
    if found.len() != names.len() {
        return Err(target.unexpected("EVAL", &reply));
    }
    let keys = found
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let idle = match n {
                -1 => return Found::Stale(-1),
                idle if idle >= 0 => idle.unsigned_abs(),
                _ => return Found::Unknowable,
            };
            let mark_of_ours = || ours(i).is_some_and(|at| idle >= copy_mark::min_idle(at.elapsed()));
            if copy_mark::may_be_taken_back(idle) && !mark_of_ours() {
                return Found::Ahead;
            }
            match copy_mark::stale_floor(idle).and_then(|f| i64::try_from(f).ok()) {
                Some(floor) => Found::Stale(floor),
                None => Found::Unknowable,
            }
        })
        .collect();
    Ok(Seen { at_ms, keys })
}

/// Steps 2 to 4 for the keys `seen` can tell. Returns what moved, and the
/// keys (indexes into `names`) left to [`migrate_copy`]: small integers,
/// which cannot carry our mark.
async fn overwrite(
    (source, target): (&mut Conn, &mut Conn),
    names: &[&[u8]],
    seen: &Seen,
    steps: Steps<'_>,
) -> Result<(Transferred, Vec<usize>), Failure> {
    let Steps { wait, noted, .. } = steps;
    let all: Vec<(usize, &[u8])> = (0..names.len())
        .filter(|&i| seen.keys[i].stale().is_some())
        .map(|i| (i, names[i]))
        .collect();
    let dumped = dump(source, &all, wait).await.map_err(Failure::Source)?;
    take_back_gone((source, target), &all, &dumped, wait, noted).await?;
    let (shared, dumped): (Vec<Dumped<'_>>, Vec<Dumped<'_>>) = dumped
        .into_iter()
        .partition(|d| copy_mark::shared_integer(&d.copy.payload));
    let shared: Vec<usize> = shared.iter().map(|d| d.index).collect();
    if dumped.is_empty() {
        unwatch(source, wait).await.map_err(Failure::Source)?;
        return Ok((Transferred::default(), shared));
    }
    let from = source.addr().to_string();
    // Noted before it is sent, as a `MIGRATE … COPY` is: until the reply
    // says what it wrote, the target's copy may be ours.
    let prior = noted.migrate_copying(&from, dumped.iter().map(|d| d.name));
    let at = Instant::now();
    let sending: Vec<&Dumped<'_>> = dumped.iter().collect();
    // Every key dumped here is one of `all`, whose copy is stale.
    let found = |d: &Dumped<'_>| seen.keys[d.index].stale().unwrap_or(-1);
    let replies = match restore_scripted(target, &sending, seen.at_ms, found, wait).await {
        Ok(replies) => replies,
        Err(e) => return Err(unwatched(source, Failure::Target(e), wait).await),
    };
    let (mut restored, mut left, mut refused) = (Vec::new(), Vec::new(), None);
    let mut done = Transferred::default();
    for ((d, reply), prior) in dumped.into_iter().zip(replies).zip(prior) {
        match reply {
            Frame::Integer(1) => restored.push(d),
            Frame::Integer(0) => {
                done.contested.push(d.index);
                left.push((d.name, prior));
            }
            other => {
                refused.get_or_insert_with(|| reply_text(&other));
                left.push((d.name, prior));
            }
        }
    }
    // Nothing written: the notes are as they were.
    noted.put_back(&from, left.into_iter());
    noted.restored(&from, at, restored.iter().map(|d| (d.name, &d.copy)));
    if let Some(why) = refused {
        // The keys restored so far are ours, marked: the retry finds them.
        return Err(unwatched(source, Failure::Refused(why), wait).await);
    }
    let done = commit((source, target), restored, false, steps, done).await?;
    Ok((done, shared))
}

/// How long past `MIGRATE`'s own timeout, which Redis applies to each
/// socket operation with the target, its reply may take.
const MIGRATE_GRACE: Duration = Duration::from_secs(30);

/// Moves the contested `keys` whose target copy cannot be told later from a
/// newer one (see the module docs), which a plain `MIGRATE` would delete from
/// the source before a replica of the target has them:
///
/// 1. Source: `WATCH k…`, then `MIGRATE … COPY REPLACE KEYS k…` towards `to`:
///    the same atomic check as `MIGRATE` (the source's copy, authoritative
///    while it exists, overwrites the target's), but the source keeps its own.
/// 2. Target: `WAIT 1` after a `PUBLISH`, since the copies were written by
///    the source's connection, not ours ([`replica_has`]).
/// 3. Source: the guarded `DEL`. A key written there meanwhile aborts it:
///    every key comes back contested, to be tried again.
async fn migrate_copy(
    source: &mut Conn,
    target: &mut Conn,
    keys: &[Key],
    (to, auth): (&str, Option<&str>),
    wait: Duration,
    noted: &Unconfirmed,
) -> Result<Transferred, Failure> {
    let from = source.addr().to_string();
    let names: Vec<&[u8]> = keys.iter().map(|k| k.name.as_ref()).collect();
    // Noted before it is sent: once it ran, the target's copy is ours and
    // never served while the source keeps the key, whatever a settle finds.
    noted.migrate_copying(&from, names.iter().copied());
    let copy = crate::libs::migrate::copy_frame(to, &names, auth, wait);
    source
        .send(vec![watch(names.iter().copied()), copy])
        .await
        .map_err(Failure::Source)?;
    expect_ok(source, "WATCH", wait).await.map_err(Failure::Source)?;
    let reply = source
        .read("MIGRATE", wait * 4 + MIGRATE_GRACE)
        .await
        .map_err(Failure::Source)?;
    let failure = match verdict(&reply) {
        Some(Verdict::Moved) => None,
        Some(Verdict::NoKey) => {
            // None is on the source any more: nothing to wait for or delete.
            unwatch(source, wait).await.map_err(Failure::Source)?;
            noted.forget(&from, names.into_iter());
            return Ok(Transferred::default());
        }
        // Too slow: retried in halves with a longer timeout, as a `MIGRATE`.
        Some(Verdict::Slow(_)) => Some(Failure::Source(MigrateError::Timeout {
            addr: from.clone(),
            cmd: "MIGRATE",
            waited: wait,
        })),
        Some(Verdict::Refused(why)) => Some(Failure::Refused(why)),
        None => Some(Failure::Source(source.unexpected("MIGRATE", &reply))),
    };
    if let Some(failure) = failure {
        return Err(unwatched(source, failure, wait).await);
    }
    if let Err(failure) = replica_has(target, true, wait).await {
        return Err(unwatched(source, failure, wait).await);
    }
    // Until the `EXEC`'s reply says otherwise, our `DEL` may have run.
    noted.deleting(&from, names.iter().copied(), true);
    if guarded_del(source, &names, wait).await.map_err(Failure::Source)? {
        noted.forget(&from, names.into_iter());
        return Ok(Transferred {
            moved: keys.len(),
            contested: Vec::new(),
        });
    }
    noted.deleting(&from, names.into_iter(), false);
    // `EXEC` aborted (and cleared the `WATCH`): written on the source meanwhile.
    Ok(Transferred {
        moved: 0,
        contested: (0..keys.len()).collect(),
    })
}
