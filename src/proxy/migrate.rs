//! Migrate on access: serving a slot while its keys move between groups.
//!
//! For a slot in state `migrate`, a request's keys may still be on the source
//! master. The request is first offered to the source, which runs it only if it
//! holds every one of its keys ([`super::source_call`]); if it holds none, the
//! request goes straight to the target. Otherwise (some keys, or a command that
//! cannot run there), its keys are moved with
//! `MIGRATE <target> "" 0 <timeout> [AUTH pw] REPLACE KEYS k…` on the source
//! before the request is forwarded to the target.
//! `NOKEY` means they already moved (or never existed); stock Redis deletes the
//! source copy only after the target acknowledged it, so a failed `MIGRATE` loses
//! nothing and the request gets its error instead. `REPLACE` because the source is
//! authoritative while it still holds a key: every write of a migrating key goes
//! to the target only after the key left the source.
//!
//! A key of a migrating slot that the source does not hold never comes back
//! to it (see `source_call`), so once a request found its keys gone from the
//! source, this worker remembers them ([`MovedKeys`]) and later requests for
//! them go straight to the target, in one round trip. The memory is per
//! routing epoch: any change of the routes forgets it. Keys a client removed
//! during the migration are the exception: they have a tombstone on the
//! source (`libs::tombstone`), and each request for them asks again, so that
//! a mover's copy that lands late is taken back before it could be served.
//!
//! With `write_ack = "replica"` the move waits for a replica of the target
//! before the source lets its keys go ([`move_keys`]).
//!
//! Requests of one client to one migrating slot must reach the target in the
//! order they were sent, and each waits for its own `MIGRATE`, so every client
//! gets one FIFO task ([`Migrator`]) for all its migrating requests. Requests to
//! other slots keep the fast path: reordering across slots cannot be observed,
//! because cross-slot commands are refused.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::config::ProxyConfig;
use super::reply::lost;
use super::router::Pool;
use super::source_call::{self, Answer};
use crate::libs::copy_mark;
use crate::libs::protocol::Protocol;
use crate::libs::resp;
use crate::libs::tombstone;

/// Most keys a worker remembers as moved; past this it starts over (a
/// forgotten key only costs one source call again).
const MAX_MOVED: usize = 65_536;

/// Keys of migrating slots known to be gone from their source, for one routing
/// epoch (shared by a worker's clients).
#[derive(Default)]
pub struct MovedKeys {
    inner: parking_lot::Mutex<MovedSet>,
}

#[derive(Default)]
struct MovedSet {
    epoch: u64,
    keys: HashSet<Bytes>,
}

impl MovedKeys {
    /// True if every one of `keys` (routed at `epoch`) is known to have left
    /// its source.
    pub fn all_moved(&self, epoch: u64, keys: &[Bytes]) -> bool {
        let m = self.inner.lock();
        m.epoch == epoch && !keys.is_empty() && keys.iter().all(|k| m.keys.contains(k))
    }

    /// Remembers that `keys` (routed at `epoch`) left their source. Facts of an
    /// older epoch than the one remembered are dropped; a newer one starts over.
    pub fn remember(&self, epoch: u64, keys: &[Bytes]) {
        let mut m = self.inner.lock();
        if epoch < m.epoch {
            return;
        }
        if epoch > m.epoch || m.keys.len() + keys.len() > MAX_MOVED {
            m.keys.clear();
            m.epoch = epoch;
        }
        // Copies: a request's keys are slices of its client's read buffer,
        // which a remembered slice would keep alive.
        m.keys.extend(keys.iter().map(|k| Bytes::copy_from_slice(k)));
    }
}

/// One request of a migrating slot.
struct MoveRequest {
    from: Arc<Pool>,
    to: Arc<Pool>,
    /// The routing epoch it was routed at.
    epoch: u64,
    keys: Vec<Bytes>,
    req: Bytes,
    /// The client's protocol: the reply comes from a connection of it.
    protocol: Protocol,
    reply: oneshot::Sender<Bytes>,
}

/// A client's FIFO of migrating-slot requests, served by one task on the
/// client's worker. Dropping it ends the task after the queued jobs.
pub struct Migrator {
    tx: mpsc::UnboundedSender<MoveRequest>,
}

impl Migrator {
    /// Starts the task. `client` picks the backend connections, as for the
    /// client's other requests (see `Pool::send`); `how` is how its keys move;
    /// `moved` is the worker's memory of moved keys.
    pub fn spawn(client: u64, how: MoveOptions, moved: Arc<MovedKeys>) -> Migrator {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Mover { client, how, moved }, rx));
        Migrator { tx }
    }

    /// Queues `req` (whose keys are `keys`, routed at `epoch`, for a client
    /// speaking `protocol`): its keys move from `from` to `to`, then it is sent
    /// to `to`. The receiver yields the reply.
    pub fn send(
        &self,
        (from, to): (&Arc<Pool>, &Arc<Pool>),
        epoch: u64,
        (keys, req): (Vec<Bytes>, Bytes),
        protocol: Protocol,
    ) -> oneshot::Receiver<Bytes> {
        let (reply, rx) = oneshot::channel();
        let job = MoveRequest {
            from: from.clone(),
            to: to.clone(),
            epoch,
            keys,
            req,
            protocol,
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
            let _ = job.reply.send(resp::error("ERR migration queue closed"));
        }
        rx
    }
}

/// What a client's migrator task works with.
struct Mover {
    client: u64,
    how: MoveOptions,
    moved: Arc<MovedKeys>,
}

/// How keys move on access, from the proxy's config.
#[derive(Debug, Clone)]
pub struct MoveOptions {
    /// The backend password `MIGRATE` presents to the target.
    pub auth: Option<String>,
    /// `MIGRATE`'s timeout (`migrate_timeout`).
    pub timeout: Duration,
    /// `write_ack = "replica"`: a replica of the target must have the keys
    /// before the source lets them go.
    pub replicated: bool,
}

impl MoveOptions {
    /// The options a proxy with `cfg` moves keys with.
    pub fn of(cfg: &ProxyConfig) -> MoveOptions {
        MoveOptions {
            auth: (!cfg.backend_auth.is_empty()).then(|| cfg.backend_auth.clone()),
            timeout: cfg.migrate_timeout,
            replicated: cfg.replica_ack().is_some(),
        }
    }
}

async fn run(w: Mover, mut rx: mpsc::UnboundedReceiver<MoveRequest>) {
    while let Some(job) = rx.recv().await {
        let reply = if w.moved.all_moved(job.epoch, &job.keys) {
            forward(w.client, &job).await
        } else {
            migrate_then_forward(&w, &job).await
        };
        // The client may have gone; its reply is dropped.
        let _ = job.reply.send(reply);
    }
}

async fn migrate_then_forward(w: &Mover, job: &MoveRequest) -> Bytes {
    let client = w.client;
    if let Some(call) = source_call_of(job) {
        let sent = Instant::now();
        let mut reply = job
            .from
            .send(client, call.evalsha())
            .await
            .unwrap_or_else(|_| lost());
        if source_call::is_noscript(&reply) {
            reply = job
                .from
                .send(client, call.eval())
                .await
                .unwrap_or_else(|_| lost());
        }
        match source_call::answer(reply) {
            Answer::Served(reply) => return reply,
            Answer::ServedRemoving(reply, removed) => {
                // Copies of those keys a mover left on the target are
                // orphans now (see `take_back`): gone before the client hears
                // of the removal, so none of its later requests, nor any
                // request of whoever it tells, can be served one. The keys
                // are not remembered as moved: a copy may still land late,
                // and their next requests must see their tombstones.
                let keys = pick(&job.keys, &removed);
                let since = sent.elapsed();
                take_back(client, &job.to, keys.iter().map(|k| (k.as_ref(), since))).await;
                return reply;
            }
            Answer::NoKeyHere(removed) => {
                take_back_removed(client, &job.to, &pick(&job.keys, &removed)).await;
                w.moved.remember(job.epoch, &others(&job.keys, &removed));
                return forward(client, job).await;
            }
            Answer::Classic => {}
        }
    }
    let removed = match move_keys(client, (&job.from, &job.to), &job.keys, &w.how).await {
        Ok(removed) => removed,
        Err(reply) => return reply,
    };
    // None of the keys is on the source any more.
    w.moved.remember(job.epoch, &others(&job.keys, &removed));
    forward(client, job).await
}

/// Takes back, on `to`, every unworn mover's copy of `keys`, keys gone from
/// the source with a tombstone: a client removed them during this
/// migration, so such a copy is one that landed late, or that the removing
/// proxy has not taken back yet (`libs::tombstone`). Any age of mark will
/// do: a copy a client wrote since is younger than the tombstone, and so
/// than [`copy_mark::min_idle`] of zero.
async fn take_back_removed(client: u64, to: &Pool, keys: &[Bytes]) {
    take_back(client, to, keys.iter().map(|k| (k.as_ref(), Duration::ZERO))).await;
}

/// The keys at `indices`.
fn pick(keys: &[Bytes], indices: &[usize]) -> Vec<Bytes> {
    indices.iter().filter_map(|&i| keys.get(i).cloned()).collect()
}

/// The keys not at `indices`: those a request may remember as moved
/// (removed keys must keep asking the source, for their tombstones).
fn others<'a>(keys: &'a [Bytes], indices: &[usize]) -> std::borrow::Cow<'a, [Bytes]> {
    if indices.is_empty() {
        return keys.into();
    }
    let removed: HashSet<&Bytes> = indices.iter().filter_map(|&i| keys.get(i)).collect();
    keys.iter().filter(|k| !removed.contains(k)).cloned().collect()
}

/// Moves `keys` from `from` to `to` on the connections of `client`, with
/// `MIGRATE … REPLACE KEYS` on the source. `+OK` and `+NOKEY` both leave none
/// of them there.
///
/// With `write_ack = "replica"` ([`MoveOptions::replicated`]) that alone
/// would let a key's last acknowledged write rest on the target master only:
/// `MIGRATE` deletes the source's copy as soon as the target restored it, and
/// a read that moved the key has no `WAIT` behind it (a write run on the
/// target after the move does: its `WAIT` covers the restore too). A target
/// master dying before its replica got the key would lose it. So the keys
/// are first copied ahead ([`copy_ahead`]): restored on the target with our
/// mark (`libs::copy_mark`), on the target's shared connection, where a
/// `RESTORE` is a write and so waits for that connection's `WAIT 1`. Then
/// the `MIGRATE` restores the very same bytes over them, unless a client
/// wrote a key on the source in between.
///
/// A copy the target did not take from that `MIGRATE` (a client deleted the
/// key on the source meanwhile, or the `MIGRATE` failed and the source keeps
/// it) is taken back if it still shows our mark; a key another mover moved
/// since is younger and stays.
///
/// Right behind the `MIGRATE`, on the same connection, a read-only script
/// asks which of the keys have a tombstone (`libs::tombstone`: a client
/// removed them during this migration), and their marked copies on the
/// target are taken back before this returns, so that the request that
/// follows is not served a mover's late copy. Behind it, not ahead: a key
/// still on the source then has moved with the `MIGRATE`, so no client can
/// remove it from the source any more (a removal now goes to the target),
/// and one already gone had its tombstone before.
///
/// Returns the indices of the keys that had a tombstone: they are not to
/// be remembered as moved, so that their next requests ask again.
///
/// # Errors
/// The client's error reply when the `MIGRATE` fails (the keys stay on the
/// source).
pub async fn move_keys(
    client: u64,
    (from, to): (&Pool, &Pool),
    keys: &[Bytes],
    how: &MoveOptions,
) -> Result<Vec<usize>, Bytes> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let ahead = if how.replicated {
        Some(copy_ahead(client, (from, to), keys).await)
    } else {
        None
    };
    let cmd = crate::libs::migrate::command(to.addr(), keys, how.auth.as_deref(), how.timeout);
    let sent = from.send(client, cmd);
    let tombstones = from.send(client, tombstone::find(keys));
    let moved = migrated((from, to), sent.await.unwrap_or_else(|_| lost()));
    // One key that moved (`OK`) replaced our copy: nothing to take back.
    let replaced = keys.len() == 1 && moved == Ok(Migrated::Done);
    if let Some(ahead) = ahead
        && !replaced
    {
        ahead.take_back(client, to).await;
    }
    moved?;
    let removed = tombstone::found(&tombstones.await.unwrap_or_else(|_| lost()));
    take_back_removed(client, to, &pick(keys, &removed)).await;
    Ok(removed)
}

/// The copies [`copy_ahead`] left on the target.
struct CopiedAhead {
    keys: Vec<Bytes>,
    /// When their `RESTORE`s were sent.
    at: Instant,
}

impl CopiedAhead {
    /// Deletes those of the copies that still show our mark.
    async fn take_back(self, client: u64, to: &Pool) {
        let since = self.at.elapsed();
        take_back(client, to, self.keys.iter().map(|k| (k.as_ref(), since))).await;
    }
}

/// Deletes, on `to`, each of `copies` that still shows a mover's mark given
/// no later than its `Duration` ago (`libs::copy_mark::TAKE_BACK`). For:
/// * our own copies ahead, once the source kept their keys, or lost them
///   other than by our `MIGRATE`;
/// * the copies of keys a client just removed on the source (a source call
///   answered [`Answer::ServedRemoving`]), which a mover may have left waiting
///   on the target: the background migrator's batch, another proxy's copy
///   ahead. The source held each key until then, so no copy on the target
///   was one anybody could use, and only a mover's carries the mark; a copy
///   a client wrote or read since is younger, and stays.
async fn take_back<'a>(client: u64, to: &Pool, copies: impl Iterator<Item = (&'a [u8], Duration)>) {
    let mut n = 0;
    let eval = copy_mark::take_back_words(copies.inspect(|_| n += 1), |w| resp::encode_array(w));
    if n == 0 {
        return;
    }
    let reply = to.send(client, eval).await.unwrap_or_else(|_| lost());
    match resp::integer(&reply) {
        Some(0) => {}
        Some(n) => {
            tracing::debug!(target = %to.addr(), n, "took back copies of keys removed while they moved")
        }
        // It ran; only the replica's confirmation is missing.
        None if reply.starts_with(b"-NOREPLICAS") => {}
        None => tracing::warn!(
            target = %to.addr(),
            reply = %String::from_utf8_lossy(&reply).trim_end(),
            "could not take back copies of keys removed while they moved; such a key may come back"
        ),
    }
}

/// With `write_ack = "replica"`, before the `MIGRATE` (see [`move_keys`]):
/// `DUMP` and `PEXPIRETIME` of each key on the source, then
/// `RESTORE k <expiry> <payload> ABSTTL IDLETIME <mark>` on the target,
/// without `REPLACE`, so a copy the target holds already (a stale one: the
/// source's is authoritative while it exists) is left to the `MIGRATE`. Each
/// `RESTORE` is answered once a replica of the target confirmed it, or with
/// `NOREPLICAS` once `write_ack_timeout` passed: the key moves anyway then,
/// as in the default mode, rather than stay copied on both masters, where a
/// settle of the source group would take the target's copy for the newer.
/// A value Redis shares between keys cannot carry the mark, so it is not
/// copied ahead.
async fn copy_ahead(client: u64, (from, to): (&Pool, &Pool), keys: &[Bytes]) -> CopiedAhead {
    let reads: Vec<_> = keys
        .iter()
        .map(|k| {
            let dump = from.send(client, resp::encode_array(&[b"DUMP".as_ref(), k]));
            let expiry = from.send(client, resp::encode_array(&[b"PEXPIRETIME".as_ref(), k]));
            (k, dump, expiry)
        })
        .collect();
    let mark = copy_mark::SECS.to_string();
    let at = Instant::now();
    let mut restores = Vec::with_capacity(reads.len());
    for (k, dump, expiry) in reads {
        let (Ok(dump), Ok(expiry)) = (dump.await, expiry.await) else {
            continue;
        };
        // Nil: not on the source (moved, deleted, or never there).
        let (Some(payload), Some(expire_at)) = (resp::bulk_payload(&dump), resp::integer(&expiry)) else {
            continue;
        };
        if expire_at == -2 || copy_mark::shared_integer(&payload) {
            continue;
        }
        let expire_at = expire_at.max(0).to_string();
        let restore = resp::encode_array(&[
            b"RESTORE".as_ref(),
            k,
            expire_at.as_bytes(),
            &payload,
            b"ABSTTL",
            b"IDLETIME",
            mark.as_bytes(),
        ]);
        restores.push((k.clone(), to.send(client, restore)));
    }
    let mut keys = Vec::with_capacity(restores.len());
    for (k, restored) in restores {
        let reply = restored.await.unwrap_or_else(|_| lost());
        if reply.starts_with(b"-BUSYKEY") {
            continue;
        }
        if resp::is_error(&reply) && !reply.starts_with(b"-NOREPLICAS") {
            // Refused (out of memory, …), or the connection failed: the copy
            // may not be there; a take-back costs nothing if it is not.
            tracing::debug!(
                target = %to.addr(),
                reply = %String::from_utf8_lossy(&reply).trim_end(),
                "a copy ahead of a move on access failed"
            );
        }
        keys.push(k);
    }
    CopiedAhead { keys, at }
}

/// What a `MIGRATE` did.
#[derive(Debug, PartialEq, Eq)]
enum Migrated {
    /// `+OK`: the keys the source held are on the target.
    Done,
    /// `+NOKEY`: the source held none of them.
    NoKey,
}

/// What the `MIGRATE` of keys from `from` to `to` answered (`moved`).
///
/// # Errors
/// The client's error reply when it failed (the keys stay on the source).
fn migrated((from, to): (&Pool, &Pool), moved: Bytes) -> Result<Migrated, Bytes> {
    if resp::is_error(&moved) {
        let why = String::from_utf8_lossy(&moved[1..]).trim_end().to_string();
        return Err(resp::error(&format!(
            "ERR cannot move keys from {} to {}: {why}",
            from.addr(),
            to.addr()
        )));
    }
    Ok(if &moved[..] == b"+NOKEY\r\n" {
        Migrated::NoKey
    } else {
        Migrated::Done
    })
}

async fn forward(client: u64, job: &MoveRequest) -> Bytes {
    job.to
        .send_as(client, job.protocol, job.req.clone())
        .await
        .unwrap_or_else(|_| lost())
}

/// The source call of a job (see `source_call`), from its request's words.
/// None for a RESP3 client: the call's reply passes through Lua, which gives
/// RESP2 shapes (a map comes back as a flat array, a double as a string), so
/// such requests take the classic path and get the target's own reply.
fn source_call_of(job: &MoveRequest) -> Option<source_call::ScriptCall> {
    if job.protocol != Protocol::Resp2 {
        return None;
    }
    let mut raw = BytesMut::from(&job.req[..]);
    let req = resp::parse_request(&mut raw, &resp::Limits::default()).ok()??;
    let writes = super::command::named_writes(req.args.first()?);
    source_call::command(&req.args, &job.keys, writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&'static str]) -> Vec<Bytes> {
        names.iter().map(|n| Bytes::from_static(n.as_bytes())).collect()
    }

    #[test]
    fn moved_keys_are_remembered_for_one_epoch_only() {
        let m = MovedKeys::default();
        assert!(!m.all_moved(1, &keys(&["a"])));
        m.remember(1, &keys(&["a", "b"]));
        assert!(m.all_moved(1, &keys(&["a"])) && m.all_moved(1, &keys(&["b", "a"])));
        assert!(!m.all_moved(1, &keys(&["a", "c"])), "every key must be known");
        assert!(!m.all_moved(1, &[]), "a request without keys is never short-cut");
        assert!(!m.all_moved(2, &keys(&["a"])), "another epoch knows nothing");
        m.remember(2, &keys(&["c"]));
        assert!(!m.all_moved(2, &keys(&["a"])), "a new epoch forgets the old one");
        m.remember(1, &keys(&["d"]));
        assert!(
            !m.all_moved(2, &keys(&["d"])) && !m.all_moved(1, &keys(&["d"])),
            "stale facts are dropped"
        );
    }

    #[test]
    fn remembered_keys_do_not_pin_the_buffer_they_came_from() {
        let m = MovedKeys::default();
        let buffer = Bytes::from(vec![b'k'; 4096]);
        m.remember(1, &[buffer.slice(0..3)]);
        assert!(m.all_moved(1, &keys(&["kkk"])));
        assert!(
            buffer.try_into_mut().is_ok(),
            "the read buffer is still referenced"
        );
    }

    #[test]
    fn the_memory_starts_over_when_full() {
        let m = MovedKeys::default();
        let many: Vec<Bytes> = (0..MAX_MOVED).map(|i| Bytes::from(i.to_string())).collect();
        m.remember(1, &many);
        assert!(m.all_moved(1, &many[..10]));
        m.remember(1, &keys(&["x"]));
        assert!(m.all_moved(1, &keys(&["x"])) && !m.all_moved(1, &many[..1]));
    }
}
