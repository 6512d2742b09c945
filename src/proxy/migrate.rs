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
//! Requests of one client to one migrating slot must reach the target in the
//! order they were sent, and each waits for its own `MIGRATE`, so every client
//! gets one FIFO task ([`Migrator`]) for all its migrating requests. Requests to
//! other slots keep the fast path: reordering across slots cannot be observed,
//! because cross-slot commands are refused.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::reply::lost;
use super::router::Pool;
use super::source_call::{self, Answer};
use crate::libs::resp;

/// One request of a migrating slot.
struct Job {
    from: Arc<Pool>,
    to: Arc<Pool>,
    keys: Vec<Bytes>,
    req: Bytes,
    reply: oneshot::Sender<Bytes>,
}

/// A client's FIFO of migrating-slot requests, served by one task on the
/// client's worker. Dropping it ends the task after the queued jobs.
pub struct Migrator {
    tx: mpsc::UnboundedSender<Job>,
}

impl Migrator {
    /// Starts the task. `auth` is the backend password MIGRATE must present to
    /// the target.
    /// `client` picks the backend connections, as for the client's other
    /// requests (see `Pool::send`).
    pub fn spawn(client: u64, auth: Option<String>, timeout: Duration) -> Migrator {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, rx, auth, timeout));
        Migrator { tx }
    }

    /// Queues `req` (whose keys are `keys`): its keys move from `from` to `to`,
    /// then it is sent to `to`. The receiver yields the target's reply.
    pub fn send(
        &self,
        from: &Arc<Pool>,
        to: &Arc<Pool>,
        keys: Vec<Bytes>,
        req: Bytes,
    ) -> oneshot::Receiver<Bytes> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            from: from.clone(),
            to: to.clone(),
            keys,
            req,
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
            let _ = job.reply.send(resp::error("ERR migration queue closed"));
        }
        rx
    }
}

async fn run(client: u64, mut rx: mpsc::UnboundedReceiver<Job>, auth: Option<String>, timeout: Duration) {
    while let Some(job) = rx.recv().await {
        let reply = migrate_then_forward(client, &job, auth.as_deref(), timeout).await;
        // The client may have gone; its reply is dropped.
        let _ = job.reply.send(reply);
    }
}

async fn migrate_then_forward(client: u64, job: &Job, auth: Option<&str>, timeout: Duration) -> Bytes {
    if let Some(call) = source_call_of(job) {
        let reply = job.from.send(client, call).await.unwrap_or_else(|_| lost());
        match source_call::answer(reply) {
            Answer::Served(reply) => return reply,
            Answer::NoKeyHere => return forward(client, job).await,
            Answer::Classic => {}
        }
    }
    if !job.keys.is_empty() {
        let cmd = crate::libs::migrate::command(job.to.addr(), &job.keys, auth, timeout);
        let moved = job.from.send(client, cmd).await.unwrap_or_else(|_| lost());
        if resp::is_error(&moved) {
            let why = String::from_utf8_lossy(&moved[1..]).trim_end().to_string();
            return resp::error(&format!(
                "ERR cannot move keys from {} to {}: {why}",
                job.from.addr(),
                job.to.addr()
            ));
        }
    }
    forward(client, job).await
}

async fn forward(client: u64, job: &Job) -> Bytes {
    job.to
        .send(client, job.req.clone())
        .await
        .unwrap_or_else(|_| lost())
}

/// The source call of a job (see `source_call`), from its request's words.
fn source_call_of(job: &Job) -> Option<Bytes> {
    let mut raw = BytesMut::from(&job.req[..]);
    let req = resp::parse_request(&mut raw, &resp::Limits::default()).ok()??;
    source_call::command(&req.args, &job.keys)
}
